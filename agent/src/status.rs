//! What `caretaker-agent status` shows: the running agent keeps `status.json` current (throttled).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The agent's state as last written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub device_id: String,
    pub collector: String,
    pub connected: bool,
    pub connected_since: Option<DateTime<Utc>>,
    pub last_ack_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub spool_events: u64,
    pub spool_bytes: u64,
    pub policy_version: u64,
    pub updated_at: Option<DateTime<Utc>>,
    /// Probes that stopped making progress (`probe::liveness`); absent in older files.
    #[serde(default)]
    pub stalled_probes: Vec<StalledProbe>,
}

/// A probe the liveness supervisor has reported stalled and not yet seen move again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StalledProbe {
    pub probe: String,
    /// Its last beat before it stopped.
    pub since: DateTime<Utc>,
    pub restarts_last_hour: u32,
}

/// Shared, cheaply updated status; a task writes it out at most once a second.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Mutex<Status>>,
    dirty: Arc<Notify>,
}

impl StatusBoard {
    pub fn new(initial: Status) -> Self {
        Self {
            inner: Arc::new(Mutex::new(initial)),
            dirty: Arc::new(Notify::new()),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.inner.lock().expect("status lock"));
        self.dirty.notify_one();
    }

    pub fn snapshot(&self) -> Status {
        self.inner.lock().expect("status lock").clone()
    }

    /// Writes the file whenever something changed, coalescing bursts, until `shutdown`.
    pub async fn write_loop(self, path: PathBuf, shutdown: CancellationToken) {
        loop {
            let stop = tokio::select! {
                _ = self.dirty.notified() => false,
                _ = shutdown.cancelled() => true,
            };
            if !stop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            let mut s = self.snapshot();
            s.updated_at = Some(Utc::now());
            if stop {
                s.connected = false;
            }
            let bytes = serde_json::to_vec_pretty(&s).expect("status serialises");
            if let Err(e) = crate::state::write_atomic(&path, &bytes, 0o644) {
                tracing::warn!(error = %e, "Could not write the status file");
            }
            if stop {
                return;
            }
        }
    }
}
