//! Screen lock on Windows: not in this slice. A service in session 0 cannot see the user's
//! input, so this needs a helper in each interactive session (issue 11); until then the
//! probe says so once and reports nothing, rather than report every session as idle.

use std::sync::Arc;

use caretaker_proto::policy::PolicyDocument;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ScreenLockConfig;
use crate::event::EventSink;

/// The probe as the agent spawns it: a warning, then waits for shutdown.
pub async fn run(
    _config: ScreenLockConfig,
    _policy: watch::Receiver<Arc<PolicyDocument>>,
    _sink: EventSink,
    shutdown: CancellationToken,
) {
    crate::probe::pending::not_yet_implemented("screen_lock", shutdown).await;
}
