//! The antivirus probe on Windows, until its WMI reader lands: Defender
//! (`root\Microsoft\Windows\Defender` `MSFT_MpComputerStatus`) and Security Center
//! (`root\SecurityCenter2` `AntiVirusProduct`) are to feed `parse::windows` and `decide`,
//! which already read recordings of both. Reporting "no antivirus" without asking would be
//! false, so until then the probe says once that it is not implemented and reports nothing.

use std::sync::Arc;

use caretaker_proto::policy::PolicyDocument;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AntivirusProbeConfig;
use crate::event::EventSink;

/// The probe as the agent spawns it: a warning, then waits for shutdown.
pub async fn run(
    _config: AntivirusProbeConfig,
    _policy: watch::Receiver<Arc<PolicyDocument>>,
    _sink: EventSink,
    shutdown: CancellationToken,
) {
    crate::probe::pending::not_yet_implemented("antivirus", shutdown).await;
}
