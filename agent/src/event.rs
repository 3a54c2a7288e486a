//! Events as probes produce them, and the sink that carries them to the spool writer.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// One thing a probe saw, before the spool gives it a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Dotted kind, e.g. `antivirus.status`.
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    /// The logged-in user the event concerns.
    pub user: Option<String>,
    /// Kind-specific structured fields.
    pub details: Map<String, Value>,
}

impl NewEvent {
    /// An event happening now.
    pub fn now(kind: &str, user: Option<String>, details: Map<String, Value>) -> Self {
        Self {
            kind: kind.to_string(),
            occurred_at: Utc::now(),
            user,
            details,
        }
    }
}

/// Where probes send events; the agent writes each to its durable spool.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<NewEvent>,
}

impl EventSink {
    pub fn new(tx: mpsc::Sender<NewEvent>) -> Self {
        Self { tx }
    }

    /// Sends an event to the spool writer; returns false if the agent is shutting down.
    pub async fn emit(&self, event: NewEvent) -> bool {
        self.tx.send(event).await.is_ok()
    }
}

/// Builds a details map from `key => value` pairs.
#[macro_export]
macro_rules! details {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_string(), serde_json::json!($v)); )*
        m
    }};
}
