//! The agent's own lifecycle: `agent.started`, periodic `agent.heartbeat`, and a goodbye on a clean stop: `agent.stopping`, or `agent.uninstalled` when the package is being removed with the uninstall code.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::details;
use crate::event::{EventSink, NewEvent};
use crate::os::HostFacts;

#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    pub heartbeat_interval: Duration,
    pub facts: HostFacts,
    /// The note `caretaker-agent uninstall-check` leaves when the code was accepted.
    pub uninstall_note: Option<std::path::PathBuf>,
}

pub async fn run(cfg: LifecycleConfig, sink: EventSink, shutdown: CancellationToken) {
    let started = Instant::now();
    let hello = details! {
        "agent_version" => env!("CARGO_PKG_VERSION"),
        "hostname" => cfg.facts.hostname,
        "os" => cfg.facts.os,
    };
    if !sink.emit(NewEvent::now("agent.started", None, hello)).await {
        return;
    }
    let mut tick =
        tokio::time::interval_at(started + cfg.heartbeat_interval, cfg.heartbeat_interval);
    // After a suspend, send one heartbeat, not a burst of missed ones.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        super::liveness::beat();
        tokio::select! {
            _ = super::liveness::idle() => {}
            _ = tick.tick() => {
                let d = details! { "uptime_secs" => started.elapsed().as_secs() };
                if !sink.emit(NewEvent::now("agent.heartbeat", None, d)).await {
                    return;
                }
            }
            _ = shutdown.cancelled() => {
                let goodbye = cfg
                    .uninstall_note
                    .as_deref()
                    .and_then(crate::uninstall::uninstalling)
                    .unwrap_or_else(|| {
                        NewEvent::now("agent.stopping", None, details! { "reason" => "service stopped" })
                    });
                sink.emit(goodbye).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[tokio::test(start_paused = true)]
    async fn started_then_heartbeats_then_stopping() {
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let cfg = LifecycleConfig {
            heartbeat_interval: Duration::from_secs(60),
            facts: HostFacts {
                hostname: "h".into(),
                os: "o".into(),
            },
            uninstall_note: None,
        };
        let task = tokio::spawn(run(cfg, EventSink::new(tx), stop.clone()));
        assert_eq!(rx.recv().await.unwrap().kind, "agent.started");
        tokio::time::sleep(Duration::from_secs(150)).await;
        assert_eq!(rx.recv().await.unwrap().kind, "agent.heartbeat");
        assert_eq!(rx.recv().await.unwrap().kind, "agent.heartbeat");
        assert!(rx.try_recv().is_err());
        stop.cancel();
        task.await.unwrap();
        assert_eq!(rx.recv().await.unwrap().kind, "agent.stopping");
    }
}
