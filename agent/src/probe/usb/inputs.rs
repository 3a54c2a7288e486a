//! What the USB probe takes live from the rest of the agent (the console user, the antivirus
//! status); OS-neutral, so the Windows probe includes this same file.

use tokio::sync::watch;

/// Live inputs from elsewhere in the agent.
#[derive(Debug, Clone)]
pub struct UsbProbeInputs {
    /// The user logged in at the console, if known.
    pub user: watch::Receiver<Option<String>>,
    /// None when the antivirus is current; Some(reason) when not (flagged on every insert).
    pub antivirus_problem: watch::Receiver<Option<String>>,
}

impl Default for UsbProbeInputs {
    /// Nobody known to be logged in, antivirus assumed current (fixed values).
    fn default() -> Self {
        Self {
            user: watch::channel(None).1,
            antivirus_problem: watch::channel(None).1,
        }
    }
}
