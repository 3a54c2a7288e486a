//! What a probe not yet built for this OS does: says so once, emits nothing (an event would
//! claim something was observed), and keeps beating until shutdown so the liveness
//! supervisor does not take it for stalled.

use tokio_util::sync::CancellationToken;

/// Logs once that `what` is not implemented on this OS, then waits for shutdown.
pub async fn not_yet_implemented(what: &'static str, shutdown: CancellationToken) {
    tracing::warn!(
        probe = what,
        os = std::env::consts::OS,
        "Probe is not yet implemented on this OS; it reports nothing."
    );
    loop {
        super::liveness::beat();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = super::liveness::idle() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_at_shutdown() {
        let stop = CancellationToken::new();
        let task = tokio::spawn(not_yet_implemented("test", stop.clone()));
        stop.cancel();
        task.await.unwrap();
    }
}
