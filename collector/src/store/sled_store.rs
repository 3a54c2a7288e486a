//! The embedded sled implementation of `Store`.
//!
//! Trees: `devices` (id → JSON), `events` (id '/' seq BE → JSON),
//! `timeline` (ingest id BE → events key, the newest-first order),
//! `tokens` (hash → JSON), `policies` (version BE → JSON), `idx` (secondary indexes:
//! audience, user and kind, each `tag len value tid` → events key, so the dashboard's filters
//! walk only matching events), `incidents` (id BE → JSON) with `incident_open` (group key →
//! latest incident id) and `incident_log` (id BE, n BE → entry), and the account trees
//! (`sled_accounts.rs`). A group commit is one transaction over devices, events, timeline,
//! indexes and incidents, then one fsync.
//!
//! Long, and left so: it is only what `migrate` reads an old sled store through to move it to
//! redb (and what tests write such stores with), kept whole as it shipped so the migration
//! reads exactly what was written; not worth restructuring for a path run once per install.

use super::AccessPath;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    Device, DeviceBatch, EventPage, EventQuery, PolicyVersion, Store, StoreError, StoreResult,
    StoredEvent, TokenRecord, TokenRefusal,
};

/// Most timeline entries one listing request scans before it returns a page
/// (possibly short) with a cursor, so a selective filter cannot stall the API.
const MAX_SCAN: usize = 200_000;

pub struct Engine {
    db: sled::Db,
    devices: sled::Tree,
    events: sled::Tree,
    timeline: sled::Tree,
    tokens: sled::Tree,
    policies: sled::Tree,
    /// States folded from events (`name/device` → through_seq and state), rebuilt from events
    /// when missing.
    derived: sled::Tree,
    pub(super) idx: sled::Tree,
    pub(super) incidents: sled::Tree,
    pub(super) incident_open: sled::Tree,
    pub(super) incident_log: sled::Tree,
    pub(super) users: sled::Tree,
    pub(super) sessions: sled::Tree,
    pub(super) api_tokens: sled::Tree,
    pub(super) audit: sled::Tree,
    pub(super) settings: sled::Tree,
    pub(super) digests: sled::Tree,
    pub(super) digest_pending: sled::Tree,
    pub(super) digest_cursors: sled::Tree,
    pub(super) meta: sled::Tree,
}

/// The layout version this code writes; older stores are brought up to it at open.
/// 2: secondary indexes and incidents. 3: incidents indexed by device.
const LAYOUT: u64 = 3;

pub(super) fn engine(e: impl Into<super::EngineSource>) -> StoreError {
    StoreError::engine("", e)
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always serialise")
}

pub(super) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn event_key(device: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 9);
    k.extend_from_slice(device.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn derived_key(name: &str, device: &str) -> Vec<u8> {
    format!("{name}/{device}").into_bytes()
}

fn device_prefix(device: &str) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(b'/');
    k
}

fn seq_of_key(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len() - 8..]
        .try_into()
        .expect("event keys end in 8 bytes");
    u64::from_be_bytes(tail)
}

/// A secondary index key: `tag`, the value's length and bytes, then the timeline id, so one
/// value's entries are contiguous and in arrival order.
pub(super) fn idx_key(tag: u8, value: &str, tid: u64) -> Vec<u8> {
    let mut k = idx_prefix(tag, value);
    k.extend_from_slice(&tid.to_be_bytes());
    k
}

fn idx_prefix(tag: u8, value: &str) -> Vec<u8> {
    let v = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
    let mut k = Vec::with_capacity(v.len() + 11);
    k.push(tag);
    k.extend_from_slice(&(v.len() as u16).to_be_bytes());
    k.extend_from_slice(v);
    k
}

pub(super) const IDX_AUDIENCE: u8 = b'a';
/// Incidents by device: `i len device incident-id` (the id in place of a timeline id).
pub(super) const IDX_DEVICE_INCIDENT: u8 = b'i';
const IDX_USER: u8 = b'u';
const IDX_KIND: u8 = b'k';

/// The index entries one stored event gets.
fn index_keys(e: &StoredEvent, tid: u64) -> Vec<Vec<u8>> {
    let mut keys = vec![idx_key(IDX_KIND, &e.kind, tid)];
    keys.extend(e.audience.iter().map(|a| idx_key(IDX_AUDIENCE, a, tid)));
    if let Some(u) = &e.user {
        keys.push(idx_key(IDX_USER, u, tid));
    }
    keys
}

type Tx = sled::transaction::TransactionalTree;
type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Indexes one newly stored event and opens or extends its incident, inside the transaction
/// that stores it.
fn index_and_fold(
    idx: &Tx,
    incidents: &Tx,
    open: &Tx,
    e: &StoredEvent,
    key: &[u8],
    tid: u64,
) -> TxResult<()> {
    for k in index_keys(e, tid) {
        idx.insert(k, key)?;
    }
    super::sled_incidents::fold_event(idx, incidents, open, e)
}

/// sled reports a held directory lock only as text (an `Other` I/O error wrapping EWOULDBLOCK).
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

impl Engine {
    /// Opens (or creates) the store at `path`.
    ///
    /// sled locks the directory for one process. A store dropped a moment ago in this process
    /// still holds the lock until sled's flush thread wakes (up to its 1 s interval), so a held
    /// lock is retried for a few seconds before being reported as another process's.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let config = sled::Config::new()
            .path(path)
            // The flush thread is not our durability: append() fsyncs itself.
            .flush_every_ms(Some(1000));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) if lock_held(&e) => {
                    return Err(StoreError::engine_msg(format!(
                        "the store in {} is in use by another process \
                         (is `caretaker-collector serve` running?)",
                        path.display()
                    )));
                }
                Err(e) => return Err(engine(e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(engine);
        let store = Self {
            devices: tree("devices")?,
            events: tree("events")?,
            timeline: tree("timeline")?,
            tokens: tree("tokens")?,
            policies: tree("policies")?,
            derived: tree("derived")?,
            idx: tree("idx")?,
            incidents: tree("incidents")?,
            incident_open: tree("incident_open")?,
            incident_log: tree("incident_log")?,
            users: tree("users")?,
            sessions: tree("sessions")?,
            api_tokens: tree("api_tokens")?,
            audit: tree("audit")?,
            settings: tree("settings")?,
            digests: tree("digests")?,
            digest_pending: tree("digest_pending")?,
            digest_cursors: tree("digest_cursors")?,
            meta: tree("meta")?,
            db,
        };
        store.upgrade()?;
        Ok(store)
    }

    /// Brings a store written by an older collector up to `LAYOUT`: indexes and incidents for
    /// the events it already holds, in arrival order, a bounded transaction at a time.
    fn upgrade(&self) -> StoreResult<()> {
        let layout = self
            .meta
            .get("layout")
            .map_err(engine)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes));
        if layout.is_some_and(|l| l >= LAYOUT) {
            return Ok(());
        }
        if layout == Some(2) {
            // Events are indexed and incidents built: only the device index is new.
            for item in self.incidents.iter() {
                let (k, v) = item.map_err(engine)?;
                let inc: super::Incident = decode("incident", &v)?;
                let id = u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("incident key".into()))?,
                );
                self.idx
                    .insert(idx_key(IDX_DEVICE_INCIDENT, &inc.device_id, id), &[])
                    .map_err(engine)?;
            }
            self.meta
                .insert("layout", &LAYOUT.to_be_bytes())
                .map_err(engine)?;
            return self.flush();
        }
        let mut from = 0u64;
        let mut done = 0u64;
        loop {
            let chunk: Vec<(u64, sled::IVec)> = self
                .timeline
                .range(from.to_be_bytes()..)
                .take(1000)
                .map(|r| {
                    let (k, v) = r.map_err(engine)?;
                    let tid = u64::from_be_bytes(
                        k.as_ref()
                            .try_into()
                            .map_err(|_| StoreError::Corrupt("timeline key".into()))?,
                    );
                    Ok((tid, v))
                })
                .collect::<StoreResult<_>>()?;
            let Some(&(last, _)) = chunk.last() else {
                break;
            };
            let mut items = Vec::with_capacity(chunk.len());
            for (tid, key) in chunk {
                if let Some(v) = self.events.get(&key).map_err(engine)? {
                    items.push((tid, key, decode::<StoredEvent>("event", &v)?));
                }
            }
            (&self.idx, &self.incidents, &self.incident_open)
                .transaction(|(idx, incidents, open)| {
                    for (tid, key, e) in &items {
                        index_and_fold(idx, incidents, open, e, key, *tid)?;
                    }
                    Ok(())
                })
                .map_err(|e: TransactionError<StoreError>| match e {
                    TransactionError::Abort(e) => e,
                    TransactionError::Storage(e) => engine(e),
                })?;
            done += items.len() as u64;
            from = last + 1;
        }
        self.meta
            .insert("layout", &LAYOUT.to_be_bytes())
            .map_err(engine)?;
        self.flush()?;
        if done > 0 {
            tracing::info!(
                events = done,
                "Store upgraded: events indexed and incidents built"
            );
        }
        Ok(())
    }

    /// Walks an index newest first from the cursor, returning the page.
    fn page_from_index(&self, q: &EventQuery, tag: u8, value: &str) -> StoreResult<EventPage> {
        let prefix = idx_prefix(tag, value);
        let upper = idx_key(tag, value, q.cursor_position('t')?.unwrap_or(u64::MAX));
        self.page_walk(q, self.idx.range(prefix.clone()..upper).rev(), |t| {
            self.idx
                .range(prefix.clone()..idx_key(tag, value, t))
                .next_back()
                .is_some()
        })
    }

    /// Reads entries whose keys end in a timeline id and whose values are event keys, newest
    /// first, keeping the events `q` matches until the page is full or `MAX_SCAN` entries were
    /// read (a selective filter then returns a short page with a cursor). `older(tid)` says
    /// whether any entry remains below that timeline id. Serves the timeline and every index.
    fn page_walk(
        &self,
        q: &EventQuery,
        entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        older: impl Fn(u64) -> bool,
    ) -> StoreResult<EventPage> {
        let mut out = Vec::new();
        let mut last_tid = None;
        for (scanned, item) in entries.enumerate() {
            let (k, ev_key) = item.map_err(engine)?;
            let tail: [u8; 8] = k
                .len()
                .checked_sub(8)
                .and_then(|at| k[at..].try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("timeline or index key".into()))?;
            last_tid = Some(u64::from_be_bytes(tail));
            let Some(v) = self.events.get(&ev_key).map_err(engine)? else {
                continue;
            };
            let e: StoredEvent = decode("event", &v)?;
            if q.matches(&e) {
                out.push(e);
                if out.len() == q.limit {
                    break;
                }
            }
            if scanned + 1 >= MAX_SCAN {
                break;
            }
        }
        Ok(EventPage {
            next: last_tid.filter(|&t| older(t)).map(|t| format!("t{t}")),
            events: out,
        })
    }

    pub(super) fn events_tree(&self) -> &sled::Tree {
        &self.events
    }

    pub(super) fn timeline_tree(&self) -> &sled::Tree {
        &self.timeline
    }

    /// A new, increasing id (sled persists the counter).
    pub(super) fn next_id(&self) -> StoreResult<u64> {
        self.db.generate_id().map_err(engine)
    }

    pub(super) fn tokens_tree(&self) -> &sled::Tree {
        &self.tokens
    }

    /// Every derived state, whatever its name: the conversion to redb copies them all.
    pub(super) fn derived_tree(&self) -> &sled::Tree {
        &self.derived
    }

    /// A new, increasing id for an audit entry (sled persists the counter).
    pub(super) fn audit_id(&self) -> StoreResult<u64> {
        self.db.generate_id().map_err(engine)
    }

    pub(super) fn flush(&self) -> StoreResult<()> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    fn page_for_device(&self, q: &EventQuery, device: &str) -> StoreResult<EventPage> {
        let prefix = device_prefix(device);
        let upper = match q.cursor_position('s')? {
            Some(s) => event_key(device, s),
            None => {
                let mut end = prefix.clone();
                *end.last_mut().expect("prefix is not empty") += 1;
                end
            }
        };
        let mut out = Vec::new();
        let mut last_seq = None;
        for (scanned, item) in self.events.range(prefix.clone()..upper).rev().enumerate() {
            let (k, v) = item.map_err(engine)?;
            last_seq = Some(seq_of_key(&k));
            let e: StoredEvent = decode("event", &v)?;
            if q.matches(&e) {
                out.push(e);
                if out.len() == q.limit {
                    break;
                }
            }
            if scanned + 1 >= MAX_SCAN {
                break;
            }
        }
        let more = last_seq.is_some_and(|s| {
            self.events
                .range(prefix..event_key(device, s))
                .next_back()
                .is_some()
        });
        Ok(EventPage {
            next: if more {
                last_seq.map(|s| format!("s{s}"))
            } else {
                None
            },
            events: out,
        })
    }

    fn page_for_fleet(&self, q: &EventQuery) -> StoreResult<EventPage> {
        let upper = q.cursor_position('t')?.unwrap_or(u64::MAX);
        self.page_walk(q, self.timeline.range(..upper.to_be_bytes()).rev(), |id| {
            self.timeline
                .range(..id.to_be_bytes())
                .next_back()
                .is_some()
        })
    }
}

impl super::reopen::Backend for Engine {
    fn open(path: &Path) -> StoreResult<Self> {
        Engine::open(path)
    }

    fn rewrite_clean(self, _path: &Path) -> StoreResult<Self> {
        Err(sled_is_read_only())
    }
}

/// The sled engine only converts old data directories to redb and is never served: retention,
/// holds and erasure are refused outright rather than half done.
fn sled_is_read_only() -> StoreError {
    StoreError::Conflict("the sled store is only read to convert it to redb".into())
}

impl super::PrivacyStore for Engine {
    fn purge_expired(
        &self,
        _cutoffs: &super::PurgeCutoffs,
        _limit: usize,
    ) -> StoreResult<super::PurgeCounts> {
        Err(sled_is_read_only())
    }
    fn put_hold(&self, _hold: &super::Hold) -> StoreResult<()> {
        Err(sled_is_read_only())
    }
    fn release_hold(&self, _target: &super::HoldTarget) -> StoreResult<bool> {
        Err(sled_is_read_only())
    }
    fn holds(&self) -> StoreResult<Vec<super::Hold>> {
        Err(sled_is_read_only())
    }
    fn subject_records(&self, _user: &str) -> StoreResult<super::SubjectRecords> {
        Err(sled_is_read_only())
    }
    fn erase_subject(&self, _user: &str, _pseudonym: &str) -> StoreResult<super::ErasureCounts> {
        Err(sled_is_read_only())
    }
}

impl Store for Engine {
    fn insert_device(&self, device: &Device) -> StoreResult<()> {
        self.devices
            .insert(device.id.as_bytes(), encode(device))
            .map_err(engine)?;
        self.flush()
    }

    fn device(&self, id: &str) -> StoreResult<Option<Device>> {
        self.devices
            .get(id.as_bytes())
            .map_err(engine)?
            .map(|v| decode("device", &v))
            .transpose()
    }

    fn devices(&self) -> StoreResult<Vec<Device>> {
        self.devices
            .iter()
            .map(|r| r.map_err(engine).and_then(|(_, v)| decode("device", &v)))
            .collect()
    }

    fn revoke_device(&self, id: &str, at: DateTime<Utc>) -> StoreResult<Device> {
        // In a transaction: a group commit for this device may be updating its record (counts,
        // state) at the same moment, and a plain read-then-write would undo that update.
        let result = self.devices.transaction(|devices| {
            let Some(raw) = devices.get(id.as_bytes())? else {
                return Err(ConflictableTransactionError::Abort(
                    StoreError::NoSuchDevice(id.to_string()),
                ));
            };
            let mut device: Device =
                decode("device", &raw).map_err(ConflictableTransactionError::Abort)?;
            if device.revoked_at.is_none() {
                device.revoked_at = Some(at);
                devices.insert(id.as_bytes(), encode(&device))?;
            }
            Ok(device)
        });
        let device = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => engine(e),
        })?;
        self.flush()?;
        Ok(device)
    }

    fn append(&self, group: &[DeviceBatch]) -> StoreResult<u64> {
        let result = (
            &self.devices,
            &self.events,
            &self.timeline,
            &self.idx,
            &self.incidents,
            &self.incident_open,
        )
            .transaction(|(devices, events, timeline, idx, incidents, open)| {
                let mut new_total = 0u64;
                for batch in group {
                    let Some(raw) = devices.get(batch.device_id.as_bytes())? else {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::NoSuchDevice(batch.device_id.clone()),
                        ));
                    };
                    let mut device: Device =
                        decode("device", &raw).map_err(ConflictableTransactionError::Abort)?;
                    let mut fresh = 0u64;
                    for e in &batch.events {
                        let key = event_key(&batch.device_id, e.seq);
                        if events.get(&key)?.is_some() {
                            continue; // a resend: stored once
                        }
                        fresh += 1;
                        let id = timeline.generate_id()?;
                        events.insert(key.as_slice(), encode(e))?;
                        timeline.insert(&id.to_be_bytes(), key.as_slice())?;
                        index_and_fold(idx, incidents, open, e, &key, id)?;
                        device.event_count += 1;
                        device.highest_seq = device.highest_seq.max(e.seq);
                        new_total += 1;
                    }
                    device.last_seen = Some(batch.seen_at);
                    if let Some(f) = &batch.facts {
                        device.hostname.clone_from(&f.hostname);
                        device.os.clone_from(&f.os);
                        device.agent_version.clone_from(&f.agent_version);
                    }
                    // The facets come from the batch's events: from a batch that was all
                    // resends (its ack lost) they are older than what is stored, so only a
                    // batch that stored something new may set them. A stream sends in
                    // sequence order, so a batch with new events has the newest facets.
                    if fresh > 0 {
                        for (k, v) in &batch.state {
                            device.state.insert(k.clone(), v.clone());
                        }
                    }
                    devices.insert(batch.device_id.as_bytes(), encode(&device))?;
                }
                Ok(new_total)
            });
        let new = match result {
            Ok(n) => n,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(engine(e)),
        };
        self.flush()?;
        Ok(new)
    }

    fn events(&self, query: &EventQuery) -> StoreResult<EventPage> {
        match query.access_path() {
            AccessPath::Audience(a) => self.page_from_index(query, IDX_AUDIENCE, a),
            AccessPath::User(u) => self.page_from_index(query, IDX_USER, u),
            AccessPath::Device(d) => self.page_for_device(query, d),
            AccessPath::Kind(k) => self.page_from_index(query, IDX_KIND, k),
            AccessPath::Timeline => self.page_for_fleet(query),
        }
    }

    fn device_events_after(
        &self,
        device: &str,
        after_seq: u64,
        kind_prefix: &str,
        visit: &mut dyn FnMut(&StoredEvent),
    ) -> StoreResult<u64> {
        // The kind is inside the JSON; a cheap byte search skips most events undecoded.
        if after_seq == u64::MAX {
            return Ok(after_seq);
        }
        let mut end = device_prefix(device);
        *end.last_mut().expect("prefix is not empty") += 1;
        let start = event_key(device, after_seq + 1);
        let mut highest = after_seq;
        for item in self.events.range(start..end) {
            let (k, v) = item.map_err(engine)?;
            highest = highest.max(seq_of_key(&k));
            if super::json_kind_starts_with(&v, kind_prefix) {
                let e: StoredEvent = decode("event", &v)?;
                if e.kind.starts_with(kind_prefix) {
                    visit(&e);
                }
            }
        }
        Ok(highest)
    }

    fn put_derived(
        &self,
        name: &str,
        device: &str,
        through_seq: u64,
        state: &Value,
    ) -> StoreResult<()> {
        let record = serde_json::json!({"through_seq": through_seq, "state": state});
        self.derived
            .insert(derived_key(name, device), encode(&record))
            .map_err(engine)?;
        Ok(())
    }

    fn derived(&self, name: &str) -> StoreResult<Vec<(String, u64, Value)>> {
        let prefix = derived_key(name, "");
        let mut out = Vec::new();
        for item in self.derived.scan_prefix(&prefix) {
            let (k, v) = item.map_err(engine)?;
            let device = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            // A damaged record is skipped, not fatal: the caller rebuilds it from the events.
            let record: Option<Value> = serde_json::from_slice(&v).ok();
            match record.and_then(|mut r| Some((r["through_seq"].as_u64()?, r["state"].take()))) {
                Some((through, state)) => out.push((device, through, state)),
                None => {
                    tracing::warn!(%name, %device, "Derived state unreadable; it will be rebuilt")
                }
            }
        }
        Ok(out)
    }

    fn insert_token(&self, token: &TokenRecord) -> StoreResult<()> {
        self.tokens
            .insert(token.hash.as_bytes(), encode(token))
            .map_err(engine)?;
        self.flush()
    }

    fn use_token(
        &self,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<TokenRecord, TokenRefusal>> {
        let result = self.tokens.transaction(|tokens| {
            let Some(raw) = tokens.get(hash.as_bytes())? else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            let mut t: TokenRecord =
                decode("token", &raw).map_err(ConflictableTransactionError::Abort)?;
            if now >= t.expires_at {
                return Ok(Err(TokenRefusal::Expired));
            }
            if t.uses >= t.max_uses {
                return Ok(Err(TokenRefusal::UsedUp));
            }
            t.uses += 1;
            tokens.insert(hash.as_bytes(), encode(&t))?;
            Ok(Ok(t))
        });
        let outcome = match result {
            Ok(o) => o,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(engine(e)),
        };
        self.flush()?;
        Ok(outcome)
    }

    fn current_policy(&self) -> StoreResult<Option<PolicyVersion>> {
        self.policies
            .range(..u64::MAX.to_be_bytes())
            .next_back()
            .transpose()
            .map_err(engine)?
            .map(|(_, v)| decode("policy", &v))
            .transpose()
    }

    fn put_policy(
        &self,
        policy: Value,
        changed_by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<PolicyVersion> {
        let result = self.policies.transaction(|policies| {
            let version = match policies.get(u64::MAX.to_be_bytes())? {
                // A marker key holds the latest version so the transaction can read it.
                Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) + 1,
                None => 1,
            };
            let pv = PolicyVersion {
                version,
                policy: policy.clone(),
                changed_by: changed_by.to_string(),
                changed_at: at,
            };
            policies.insert(&version.to_be_bytes(), encode(&pv))?;
            policies.insert(&u64::MAX.to_be_bytes(), &version.to_be_bytes())?;
            Ok(pv)
        });
        let pv = result.map_err(|e: TransactionError<StoreError>| engine(e))?;
        self.flush()?;
        Ok(pv)
    }

    fn policy_history(&self) -> StoreResult<Vec<PolicyVersion>> {
        self.policies
            .range(..u64::MAX.to_be_bytes())
            .map(|r| r.map_err(engine).and_then(|(_, v)| decode("policy", &v)))
            .collect()
    }

    fn policy_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<PolicyVersion>, bool)> {
        // `u64::MAX` holds the current version's number, not a version.
        let upper = before.unwrap_or(u64::MAX);
        let mut page = Vec::with_capacity(limit.min(100));
        let mut more = false;
        for r in self.policies.range(..upper.to_be_bytes()).rev() {
            if page.len() == limit {
                more = true;
                break;
            }
            let (_, v) = r.map_err(engine)?;
            page.push(decode("policy", &v)?);
        }
        Ok((page, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::store::SledStore;

    /// A fresh store in its own directory, which lives as long as the test.
    fn fresh() -> (SledStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (SledStore::open(dir.path()).unwrap(), dir)
    }

    // The store contract (`conformance.rs`); below, what is sled's alone.
    crate::store::conformance::store_conformance!(fresh);

    /// The contract holds for a handle reopened after a failed write, too: every tree and
    /// counter comes back with the engine.
    mod after_a_reopen {
        use super::*;

        fn reopened() -> (SledStore, tempfile::TempDir) {
            let (s, dir) = fresh();
            s.close_as_if_failed("a write failed (test)");
            assert!(s.closed_because().is_some());
            assert!(s.recover().unwrap(), "reopened");
            (s, dir)
        }

        crate::store::conformance::store_conformance!(reopened);
    }

    /// Never served, so retention and erasure are refused, not pretended: the store stays
    /// open and as it was.
    #[test]
    fn privacy_operations_are_refused_with_the_reason() {
        use crate::store::{PrivacyStore, PurgeCutoffs};
        let (s, _dir) = fresh();
        for err in [
            s.purge_expired(&PurgeCutoffs::default(), 10).err(),
            s.erase_subject("al", "p").err(),
            s.holds().err(),
        ] {
            let err = err.expect("refused");
            assert!(matches!(err, StoreError::Conflict(_)), "{err}");
            assert!(err.to_string().contains("only read to convert it to redb"));
        }
        assert!(
            s.closed_because().is_none(),
            "a refusal does not close the store"
        );
    }

    #[test]
    fn a_store_held_elsewhere_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).err().expect("the lock is held");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }

    #[test]
    fn policy_versions_count_up_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.current_policy().unwrap(), None);
            s.put_policy(json!({"a": 1}), "init", Utc::now()).unwrap();
            s.put_policy(json!({"a": 2}), "admin", Utc::now()).unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let cur = s.current_policy().unwrap().unwrap();
        assert_eq!((cur.version, cur.changed_by.as_str()), (2, "admin"));
        assert_eq!(s.policy_history().unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_derived_state_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Engine::open(dir.path()).unwrap();
        s.put_derived("software", "a", 7, &json!({"x": 1})).unwrap();
        s.put_derived("software", "b", 9, &json!({"x": 2})).unwrap();
        s.derived
            .insert(derived_key("software", "c"), b"{not json".as_slice())
            .unwrap();
        let got = s.derived("software").unwrap();
        assert_eq!(
            got,
            [
                ("a".to_string(), 7, json!({"x": 1})),
                ("b".to_string(), 9, json!({"x": 2}))
            ]
        );
    }
}
