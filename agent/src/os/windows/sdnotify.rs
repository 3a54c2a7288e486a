//! systemd's notifications do not exist on Windows: the service control manager learns of
//! start and stop from the service itself (a later slice). The same names as on Linux, doing
//! nothing, so the runtime needs no `cfg`.

use std::time::Duration;

/// Never built on Windows (`from_env` is always `None`).
#[derive(Debug)]
pub struct Notifier(());

impl Notifier {
    /// No `$NOTIFY_SOCKET` on Windows.
    pub fn from_env() -> Option<Self> {
        None
    }

    pub fn notify(&self, _state: &str) {}
}

/// No systemd watchdog on Windows.
pub fn watchdog_interval() -> Option<Duration> {
    None
}
