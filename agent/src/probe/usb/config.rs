//! The USB probe's configuration: what it touches (roots, clamd, its own mounts) and the live
//! inputs it takes from the rest of the agent.
use std::path::PathBuf;
use std::time::Duration;

use super::clamd::ClamdAddr;
use super::inputs::UsbProbeInputs;
use super::scan;

/// Everything the probe touches, overridable for tests.
#[derive(Debug, Clone)]
pub struct UsbProbeConfig {
    /// "/sys".
    pub sys_root: PathBuf,
    /// "/proc/self/mountinfo".
    pub mountinfo: PathBuf,
    /// "/etc/group" (pupil groups).
    pub etc_group: PathBuf,
    /// "/dev" (block nodes for blockdev and mount).
    pub dev_root: PathBuf,
    /// None: no scanning.
    pub clamd: Option<ClamdAddr>,
    /// Write authorized_default/authorized (needs root). False: report only, whatever the policy.
    pub manage_authorization: bool,
    /// Private directory for the agent's own read-only mounts (allow_after_scan).
    pub scan_mount_dir: PathBuf,
    /// Extra mount options for the agent's mounts, e.g. "iocharset=iso8859-1" without nls_utf8.
    pub mount_options: String,
    /// How often mountinfo is re-read when the kernel cannot signal changes to it (a plain file
    /// in tests); the real `/proc/self/mountinfo` signals POLLPRI and is read only on change.
    pub mount_poll: Duration,
    /// The longest a medium's scan may go without progress (a directory listed, a file opened,
    /// bytes read for clamd) before it is aborted as stalled. Longer than clamd's 150 s I/O
    /// timeout, so a clamd that stops answering ends the scan as incomplete by that timeout
    /// first; what reaches this is a hang nothing else bounds (`mount`, a listing or an open
    /// on a dead stick).
    pub scan_stall_after: Duration,
    /// Runs a scan (tests put a fake one here).
    pub scanner: scan::Scanner,
    /// Live inputs from the rest of the agent.
    pub inputs: UsbProbeInputs,
}

impl Default for UsbProbeConfig {
    fn default() -> Self {
        Self {
            sys_root: "/sys".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            etc_group: "/etc/group".into(),
            dev_root: "/dev".into(),
            clamd: Some(ClamdAddr::Unix("/var/run/clamav/clamd.ctl".into())),
            manage_authorization: true,
            scan_mount_dir: "/run/caretaker/media".into(),
            mount_options: String::new(),
            mount_poll: Duration::from_secs(1),
            scan_stall_after: Duration::from_secs(5 * 60),
            scanner: scan::Scanner::default(),
            inputs: UsbProbeInputs::default(),
        }
    }
}
