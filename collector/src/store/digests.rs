//! Digests as records: each is written (with the events it covers) before it is sent, then marked sent or failed, so none is lost.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{StoreResult, StoredEvent};

/// Where a digest goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Channel {
    Email { address: String },
    Webhook { url: String, kind: String },
}

/// Where a digest stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestStatus {
    /// Recorded, not yet delivered (or failed and waiting to retry).
    Pending,
    Sent,
}

/// One digest for one recipient and channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestRecord {
    pub id: u64,
    /// The DSL account it is for.
    pub recipient: String,
    pub channel: Channel,
    /// `scheduled` or `urgent`.
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub subject: String,
    /// Plain text, HTML and JSON bodies, built once when recorded so a retry sends the same.
    pub text: String,
    pub html: String,
    pub json: serde_json::Value,
    /// How many flagged events it covers.
    pub events: u64,
    pub status: DigestStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    /// A file sent with it (a scheduled report's PDF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// A file attached to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub data_base64: String,
}

/// How far each recipient's digests have got: the first timeline id not yet covered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DigestCursor {
    /// Scheduled digests cover DSL events from this timeline id on.
    pub scheduled_from: u64,
    /// Urgent messages cover urgent events from this one on.
    pub urgent_from: u64,
    /// When the last scheduled digest was due (so each due time runs once).
    pub last_due: Option<DateTime<Utc>>,
    /// When urgent messages went out in the last hour (the cap).
    #[serde(default)]
    pub urgent_sent: Vec<DateTime<Utc>>,
}

/// `DigestStore`'s methods that a handle forwards to its engine, written once (see `methods.rs`).
macro_rules! digest_store_methods {
    ($then:ident $(, $($lead:tt)*)?) => {
        $then! {
            $($($lead)*)?
            /// Events for `audience` stored at or after timeline id `from`, oldest first, at most
            /// `limit`: `(timeline id, event)`.
            fn audience_events_from(
                &self,
                audience: &str,
                from: u64,
                limit: usize,
            ) -> StoreResult<Vec<(u64, StoredEvent)>>;
            /// The timeline id the next stored event will have at the least (0 when empty).
            fn next_timeline_id(&self) -> StoreResult<u64>;
            /// The incident currently grouping events with this key, if any.
            fn incident_for_group(&self, group_key: &str) -> StoreResult<Option<u64>>;

            fn digest_cursor(&self, recipient: &str) -> StoreResult<DigestCursor>;
            /// Records new digests and moves the recipient's cursor, in one durable transaction:
            /// the events are then covered exactly once. Assigns ids; returns the records.
            fn record_digests(
                &self,
                recipient: &str,
                cursor: &DigestCursor,
                digests: Vec<DigestRecord>,
            ) -> StoreResult<Vec<DigestRecord>>;
            /// Moves a cursor without a digest (nothing to say).
            fn put_digest_cursor(&self, recipient: &str, cursor: &DigestCursor) -> StoreResult<()>;
            /// Overwrites a digest's delivery state (durably).
            fn update_digest(&self, digest: &DigestRecord) -> StoreResult<()>;
            fn digest(&self, id: u64) -> StoreResult<Option<DigestRecord>>;
            /// Newest first, below `before`.
            fn digests(&self, before: Option<u64>, limit: usize) -> StoreResult<Vec<DigestRecord>>;
            fn pending_digests(&self) -> StoreResult<Vec<DigestRecord>>;
        }
    };
}
pub(crate) use digest_store_methods;

/// Digests, their cursors, and the reads that build them.
pub trait DigestStore {
    digest_store_methods!(declare_methods);

    /// Whether this process leads the digests now: plans and sends them. Several collectors
    /// sharing a store would otherwise each send the DSL the same digest. An embedded store has
    /// one process, which always leads; a shared one lets one holder at a time lead, and
    /// another take over when it goes.
    fn lead_digests(&self) -> StoreResult<bool> {
        Ok(true)
    }
}
