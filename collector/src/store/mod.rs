//! The collector's durable record: devices, events, enrolment tokens and policy versions, behind a trait.
//!
//! `RedbStore` (one redb file in the data directory) is the embedded store; `PgStore` keeps
//! the record in a PostgreSQL database several collectors share. A data directory holding the
//! sled store of a collector from before 2026-11 is converted to redb at its first start
//! (`redb/migrate.rs`). Everything above this module talks to `dyn Store`.
//! Invariants: `append` returns only once the events are durable; events are kept in
//! arrival order, and a sequence at or below its device's high-water mark is a resend, so a
//! (device, seq) pair is stored at most once.

// First: the trait method lists below are built with its macros.
#[macro_use]
mod methods;
mod accounts;
#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod conformance_privacy;
mod digests;
mod incidents;
mod pg;
pub mod privacy;
mod redb;
mod reopen;
pub mod space;

pub(crate) use accounts::account_store_methods;
pub use accounts::{
    AccountStore, ApiTokenRecord, AuditEntry, AuditPage, SessionRecord, SettingsVersion, UserRecord,
};
pub(crate) use digests::digest_store_methods;
pub use digests::{Attachment, Channel, DigestCursor, DigestRecord, DigestStatus, DigestStore};
pub(crate) use incidents::incident_store_methods;
pub use incidents::{
    Category, EntryAction, Incident, IncidentEntry, IncidentQuery, IncidentStatus, IncidentStore,
};
#[cfg(test)]
pub(crate) use methods::forward_methods;
pub use pg::PgStore;
/// A real PostgreSQL for tests (a fresh database each): used by the store's tests and the end-to-end ones.
#[doc(hidden)]
pub use pg::rig as pg_rig;
pub(crate) use privacy::privacy_store_methods;
pub use privacy::{
    ErasureCounts, Held, Hold, HoldTarget, PrivacyStore, PurgeCounts, PurgeCutoffs, SubjectRecords,
};
pub use redb::RedbStore;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a collector's record lives: the embedded store in its data directory, or a
/// PostgreSQL database that several collectors share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded engine's directory (one collector process at a time).
    Embedded(std::path::PathBuf),
    /// A `postgres://` URL (any number of collectors).
    Postgres(String),
}

impl StoreLocation {
    /// Opens the store (for PostgreSQL: connects and applies the schema's migrations).
    pub fn open(&self) -> StoreResult<std::sync::Arc<dyn Store>> {
        match self {
            Self::Embedded(path) => Ok(std::sync::Arc::new(RedbStore::open(path)?)),
            Self::Postgres(url) => Ok(std::sync::Arc::new(PgStore::connect(url)?)),
        }
    }

    /// True when other collectors may write the same record, so what one holds in memory
    /// (devices, revocations, the policy, counts) must be re-read from the store now and then.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// For messages: the directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded(path) => path.display().to_string(),
            Self::Postgres(url) => pg::redact(url),
        }
    }
}

/// Store failures. Callers report them; they never mean partial writes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine (redb, sled, PostgreSQL, the filesystem) failed. `what` says what was being
    /// done; `source` is the engine's own error, kept so a caller can look inside it (a full
    /// disk, see `is_storage_full`) and a user sees the whole chain.
    #[error("store I/O failed: {}", engine_detail(what, source.as_deref()))]
    Engine {
        what: String,
        #[source]
        source: Option<EngineSource>,
    },
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("no device with id {0}")]
    NoSuchDevice(String),
    #[error("{0}")]
    Conflict(String),
    /// A paging cursor this store did not hand out (or not for this listing): refused, so a
    /// paging client is told instead of silently starting again from the first page.
    #[error("{0}")]
    BadCursor(String),
    /// A write failed (a full disk, say) and the store was closed so that nothing unwritten is
    /// read back; it reopens from disk by itself (`Store::recover`).
    #[error(
        "the store is closed after a failed write ({0}); it reopens by itself once it can write"
    )]
    Closed(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What an engine failure carries as its cause.
pub type EngineSource = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// An engine failure caused by `source`, with `what` saying what was being done (empty when
    /// the engine's own message says it all).
    pub fn engine(what: impl Into<String>, source: impl Into<EngineSource>) -> Self {
        Self::Engine {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// An engine failure this code detected itself, with no underlying error.
    pub fn engine_msg(what: impl Into<String>) -> Self {
        Self::Engine {
            what: what.into(),
            source: None,
        }
    }

    /// Whether an engine error comes from a full filesystem (`ENOSPC`) somewhere in its chain,
    /// as opposed to, say, a corrupt record or a lost connection.
    pub fn is_storage_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::StorageFull
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// An engine error's message without the "store I/O failed" prefix.
    pub fn engine_reason(&self) -> Option<String> {
        match self {
            Self::Engine { what, source } => Some(engine_detail(what, source.as_deref())),
            _ => None,
        }
    }
}

/// An engine's error under a message of our own (the engine's is too terse, or leaves out the
/// part of its chain that matters), still reachable as the source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Described<E: std::error::Error + 'static> {
    pub message: String,
    #[source]
    pub source: E,
}

/// The message of an engine failure: what was being done and, after it, the engine's own
/// message. The cause is written out here (and also kept as `source`) because most callers show
/// this error with `to_string()`, which must stay as readable as a one-line reason.
fn engine_detail(
    what: &str,
    source: Option<&(dyn std::error::Error + Send + Sync + 'static)>,
) -> String {
    match source {
        Some(source) if what.is_empty() => source.to_string(),
        Some(source) => format!("{what}: {source}"),
        None => what.to_string(),
    }
}

/// An enrolled laptop, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Which token label enrolled it (helps the technician trace roll-outs).
    pub enrolled_with: String,
    pub revoked_at: Option<DateTime<Utc>>,
    /// How many distinct events are stored for it.
    pub event_count: u64,
    /// The highest sequence number stored for it.
    pub highest_seq: u64,
    /// The latest state each probe reported (antivirus, screen lock, ...),
    /// keyed by facet, for the dashboard and fleet counts.
    #[serde(default)]
    pub state: Map<String, Value>,
}

impl Device {
    /// What a batch tells about its device besides its events, once they are counted in: when
    /// it was last seen, its host facts, and its state facets. The facets come from the
    /// batch's events, so only a batch that stored something new (`stored_new`) may set them:
    /// from a batch that was all resends (its ack lost) they are older than what is stored,
    /// and a stream sends in sequence order, so a batch with new events has the newest.
    pub(crate) fn seen_in(&mut self, batch: &DeviceBatch, stored_new: bool) {
        self.last_seen = Some(batch.seen_at);
        if let Some(f) = &batch.facts {
            self.hostname.clone_from(&f.hostname);
            self.os.clone_from(&f.os);
            self.agent_version.clone_from(&f.agent_version);
        }
        if stored_new {
            for (k, v) in &batch.state {
                self.state.insert(k.clone(), v.clone());
            }
        }
    }
}

/// An event as stored and served by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub device_id: String,
    pub seq: u64,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub user: Option<String>,
    pub details: Map<String, Value>,
    pub severity: String,
    pub audience: Vec<String>,
    /// The collector's reasoning when it flagged the event (which rule or catalogue entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assessment: Option<Value>,
}

/// Host facts an agent reports when it connects.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentFacts {
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
}

/// One stream's batch within a group commit.
#[derive(Debug, Clone)]
pub struct DeviceBatch {
    pub device_id: String,
    pub events: Vec<StoredEvent>,
    pub facts: Option<AgentFacts>,
    /// Device state facets to overwrite (from state-report events).
    pub state: Map<String, Value>,
    pub seen_at: DateTime<Utc>,
}

/// What to list, newest first. Filters combine (all must hold).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub device: Option<String>,
    pub kind: Option<String>,
    /// The user the event names (a pupil's or member of staff's login).
    pub user: Option<String>,
    pub severity: Option<String>,
    /// Only events whose audience includes this role (`dsl`, `network_manager`).
    pub audience: Option<String>,
    /// Only events whose audience does not include this role (a technician's view leaves out
    /// the DSL's).
    pub exclude_audience: Option<String>,
    /// Occurred at or after.
    pub since: Option<DateTime<Utc>>,
    /// Occurred before.
    pub until: Option<DateTime<Utc>>,
    /// Received by the collector at or after (the collector's clock, not the laptop's).
    pub received_since: Option<DateTime<Utc>>,
    /// Received by the collector before.
    pub received_until: Option<DateTime<Utc>>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// Which way a listing walks: the most selective filter's index, or the timeline. Every
/// backend picks by this one order; `EventQuery::matches` then applies the other filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessPath<'q> {
    Audience(&'q str),
    User(&'q str),
    Device(&'q str),
    Kind(&'q str),
    Timeline,
}

impl EventQuery {
    /// The listing's access path (see `AccessPath`).
    pub(crate) fn access_path(&self) -> AccessPath<'_> {
        if let Some(a) = &self.audience {
            AccessPath::Audience(a)
        } else if let Some(u) = &self.user {
            AccessPath::User(u)
        } else if let Some(d) = &self.device {
            AccessPath::Device(d)
        } else if let Some(k) = &self.kind {
            AccessPath::Kind(k)
        } else {
            AccessPath::Timeline
        }
    }

    /// Whether `e` passes every filter (the backends walk the most selective path, then this).
    pub(crate) fn matches(&self, e: &StoredEvent) -> bool {
        self.device.as_ref().is_none_or(|d| &e.device_id == d)
            && self.kind.as_ref().is_none_or(|k| &e.kind == k)
            && self.since.is_none_or(|s| e.occurred_at >= s)
            && self.until.is_none_or(|u| e.occurred_at < u)
            && self.received_since.is_none_or(|s| e.received_at >= s)
            && self.received_until.is_none_or(|u| e.received_at < u)
            && self
                .user
                .as_ref()
                .is_none_or(|u| e.user.as_ref() == Some(u))
            && self.severity.as_ref().is_none_or(|s| &e.severity == s)
            && self
                .audience
                .as_ref()
                .is_none_or(|a| e.audience.contains(a))
            && self
                .exclude_audience
                .as_ref()
                .is_none_or(|a| !e.audience.contains(a))
    }

    /// The position in the cursor for a listing whose cursors start with `tag` (`t` arrival
    /// id, `s` sequence number). Anything else is refused rather than read as "from the start".
    pub(crate) fn cursor_position(&self, tag: char) -> StoreResult<Option<u64>> {
        let Some(c) = self.cursor.as_deref() else {
            return Ok(None);
        };
        c.strip_prefix(tag)
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                StoreError::BadCursor(format!(
                    "cursor {c:?} is not one this listing handed out: pass `next` from the \
                     previous page unchanged, with the same filters"
                ))
            })
    }
}

/// Whether a stored event's JSON names a kind starting with `kind_prefix` (a byte search, so
/// most events are skipped undecoded).
pub(crate) fn json_kind_starts_with(json: &[u8], kind_prefix: &str) -> bool {
    let needle = format!("\"kind\":\"{kind_prefix}");
    json.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// One page of events and the cursor for the next.
#[derive(Debug, Clone, Serialize)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    pub next: Option<String>,
}

/// An enrolment token as stored: only its hash, never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub hash: String,
    pub label: String,
    pub max_uses: u32,
    pub uses: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Why a token could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired,
    UsedUp,
}

/// A stored version of the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub policy: Value,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
}

/// A freshly enrolled device, for tests.
#[cfg(test)]
pub(crate) fn test_device(id: &str) -> Device {
    Device {
        id: id.into(),
        hostname: "h".into(),
        os: "linux".into(),
        agent_version: "0".into(),
        enrolled_at: Utc::now(),
        last_seen: None,
        enrolled_with: "t".into(),
        revoked_at: None,
        event_count: 0,
        highest_seq: 0,
        state: Default::default(),
    }
}

/// `Store`'s methods that a handle forwards to its engine, written once (see `methods.rs`).
macro_rules! store_methods {
    ($then:ident $(, $($lead:tt)*)?) => {
        $then! {
            $($($lead)*)?
            fn insert_device(&self, device: &Device) -> StoreResult<()>;
            fn device(&self, id: &str) -> StoreResult<Option<Device>>;
            fn devices(&self) -> StoreResult<Vec<Device>>;
            /// Marks a device revoked; returns the updated device.
            fn revoke_device(&self, id: &str, at: DateTime<Utc>) -> StoreResult<Device>;

            /// Stores a group of batches atomically and durably; events already stored
            /// (same device and seq) are skipped. Returns how many were new.
            fn append(&self, group: &[DeviceBatch]) -> StoreResult<u64>;
            fn events(&self, query: &EventQuery) -> StoreResult<EventPage>;
            /// Visits `device`'s stored events with a sequence above `after_seq`, in sequence
            /// order, and returns the highest sequence visited (or `after_seq` if none).
            /// `kind_prefix` filters (cheaply, before decoding) which events are decoded and
            /// handed to `visit`.
            fn device_events_after(
                &self,
                device: &str,
                after_seq: u64,
                kind_prefix: &str,
                visit: &mut dyn FnMut(&StoredEvent),
            ) -> StoreResult<u64>;

            /// Saves a derived per-device state (for example the device's software
            /// installations) computed from its events up to `through_seq`. Not flushed on its
            /// own: losing it only means replaying those events again at the next start.
            fn put_derived(
                &self,
                name: &str,
                device: &str,
                through_seq: u64,
                state: &Value,
            ) -> StoreResult<()>;
            /// Every saved derived state called `name`: `(device, through_seq, state)`.
            fn derived(&self, name: &str) -> StoreResult<Vec<(String, u64, Value)>>;

            fn insert_token(&self, token: &TokenRecord) -> StoreResult<()>;
            /// Uses a token once if it is valid at `now`; atomic against concurrent use.
            fn use_token(
                &self,
                hash: &str,
                now: DateTime<Utc>,
            ) -> StoreResult<Result<TokenRecord, TokenRefusal>>;

            fn current_policy(&self) -> StoreResult<Option<PolicyVersion>>;
            /// Stores `policy` as the next version and returns it.
            fn put_policy(
                &self,
                policy: Value,
                changed_by: &str,
                at: DateTime<Utc>,
            ) -> StoreResult<PolicyVersion>;
            fn policy_history(&self) -> StoreResult<Vec<PolicyVersion>>;
            /// Up to `limit` policy versions below `before` (all when `None`), newest first,
            /// and whether older ones remain. The default reads the whole history; a store
            /// should override it to read only the page.
            fn policy_page(
                &self,
                before: Option<u64>,
                limit: usize,
            ) -> StoreResult<(Vec<PolicyVersion>, bool)> {
                let mut older: Vec<PolicyVersion> = self
                    .policy_history()?
                    .into_iter()
                    .filter(|v| before.is_none_or(|b| v.version < b))
                    .collect();
                older.reverse();
                let more = older.len() > limit;
                older.truncate(limit);
                Ok((older, more))
            }
        }
    };
}
pub(crate) use store_methods;

/// The durable record. Implementations must be safe to share between tasks.
///
/// Accounts (users, sessions, API tokens, the audit log) and incidents are separate traits so
/// each stays readable; a store implements all three.
pub trait Store:
    AccountStore + IncidentStore + DigestStore + PrivacyStore + Send + Sync + 'static
{
    store_methods!(declare_methods);

    /// The saved derived state `name` of one device: `(through_seq, state)`. The default reads
    /// them all; a store shared by several collectors, where a device's state is re-read each
    /// time its stream opens, should read only the one.
    fn derived_of(&self, name: &str, device: &str) -> StoreResult<Option<(u64, Value)>> {
        Ok(self
            .derived(name)?
            .into_iter()
            .find(|(d, _, _)| d == device)
            .map(|(_, through, state)| (through, state)))
    }

    /// Why the store cannot write now (a write failed and it was closed), or `None`.
    fn closed_because(&self) -> Option<String> {
        None
    }
    /// Reopens a closed store from disk, which yields exactly what is durable. `Ok(true)` when
    /// it was reopened by this call, `Ok(false)` when it was open; an error leaves it closed.
    fn recover(&self) -> StoreResult<bool> {
        Ok(false)
    }
}
