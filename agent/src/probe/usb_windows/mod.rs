//! The removable-media probe on Windows, until its slice of issue 11 lands: the settings the
//! agent's config builds (the same names as Linux's `usb::UsbProbeConfig`, without the sysfs,
//! mount and scan roots that have no meaning here), the OS-neutral policy decision shared with
//! Linux, and a `run` that says once it is not implemented and reports nothing (device
//! notifications, SetupAPI facts and Removable Storage Access blocking come later).

#[path = "../usb/decide.rs"]
pub mod decide;
#[path = "../usb/inputs.rs"]
mod inputs;
pub use inputs::UsbProbeInputs;

/// The clamd address type the config names (`[usb] clamd_tcp`).
pub mod clamd {
    pub use crate::probe::antivirus::clamd::ClamdAddr;
}

use std::sync::Arc;

use caretaker_proto::policy::PolicyDocument;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::event::EventSink;
use clamd::ClamdAddr;

/// What the config file can say about the probe; kept so one `agent.toml` reads on both OSes.
#[derive(Debug, Clone)]
pub struct UsbProbeConfig {
    /// None: no scanning.
    pub clamd: Option<ClamdAddr>,
    /// False: report only, whatever the policy.
    pub manage_authorization: bool,
    /// Linux mount options; unused on Windows.
    pub mount_options: String,
    /// Live inputs from the rest of the agent.
    pub inputs: UsbProbeInputs,
}

impl Default for UsbProbeConfig {
    fn default() -> Self {
        Self {
            clamd: None,
            manage_authorization: true,
            mount_options: String::new(),
            inputs: UsbProbeInputs::default(),
        }
    }
}

/// Entry point the agent spawns: a warning, then waits for shutdown.
pub async fn run(
    _config: UsbProbeConfig,
    _policy: watch::Receiver<Arc<PolicyDocument>>,
    _sink: EventSink,
    shutdown: CancellationToken,
) {
    crate::probe::pending::not_yet_implemented("usb", shutdown).await;
}
