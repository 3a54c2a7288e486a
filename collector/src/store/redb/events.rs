//! The redb `Store`: devices, the group commit into arrival order, listings through the timeline and the indexes, derived state.

use super::super::AccessPath;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Bound;

use chrono::{DateTime, Utc};
use redb::{Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable};
use serde_json::Value;

use super::super::{
    Device, DeviceBatch, EventPage, EventQuery, PolicyVersion, Store, StoreError, StoreResult,
    StoredEvent, TokenRecord, TokenRefusal,
};
use super::{
    BY_DEVICE, DERIVED, DEVICES, EVENTS, Engine, IDX, IDX_AUDIENCE, IDX_KIND, IDX_USER, META,
    META_NEXT_ARRIVAL, decode, encode, engine, idx_id, idx_key, idx_prefix,
};

/// Most entries one listing request scans before it returns a page (possibly short) with a
/// cursor, so a selective filter cannot stall the API.
const MAX_SCAN: usize = 200_000;

type Events = ReadOnlyTable<u64, &'static [u8]>;

/// The index entries one stored event gets (the conversion from sled indexes with it too).
pub(super) fn index_keys(e: &StoredEvent, id: u64) -> Vec<Vec<u8>> {
    let mut keys = vec![idx_key(IDX_KIND, &e.kind, id)];
    keys.extend(e.audience.iter().map(|a| idx_key(IDX_AUDIENCE, a, id)));
    if let Some(u) = &e.user {
        keys.push(idx_key(IDX_USER, u, id));
    }
    keys
}

/// The event stored under arrival id `id`, if any.
fn load(events: &Events, id: u64) -> StoreResult<Option<StoredEvent>> {
    events
        .get(id)
        .map_err(engine)?
        .map(|v| decode("event", v.value()))
        .transpose()
}

/// Whether a range holds anything.
fn any<I: Iterator<Item = Result<T, redb::StorageError>>, T>(
    range: Result<I, redb::StorageError>,
) -> StoreResult<bool> {
    Ok(range
        .map_err(engine)?
        .next()
        .transpose()
        .map_err(engine)?
        .is_some())
}

/// Reads `(position, event)` entries newest first, keeping the events `q` matches until the
/// page is full or `MAX_SCAN` entries were read (a selective filter then returns a short page
/// with a cursor). The cursor is `tag` and the last position read, if `older(position)` says
/// entries remain below it. Serves the timeline, the device index and the secondary indexes.
fn page_walk(
    q: &EventQuery,
    tag: char,
    entries: impl Iterator<Item = StoreResult<(u64, Option<StoredEvent>)>>,
    older: impl FnOnce(u64) -> StoreResult<bool>,
) -> StoreResult<EventPage> {
    let mut out = Vec::new();
    let mut last = None;
    for (scanned, item) in entries.enumerate() {
        let (position, event) = item?;
        last = Some(position);
        if let Some(e) = event
            && q.matches(&e)
        {
            out.push(e);
            if out.len() == q.limit {
                break;
            }
        }
        if scanned + 1 >= MAX_SCAN {
            break;
        }
    }
    let next = match last {
        Some(p) if older(p)? => Some(format!("{tag}{p}")),
        _ => None,
    };
    Ok(EventPage { events: out, next })
}

impl Engine {
    fn read(&self) -> StoreResult<ReadTransaction> {
        self.db.begin_read().map_err(engine)
    }

    fn page_for_fleet(&self, q: &EventQuery) -> StoreResult<EventPage> {
        let upper = q.cursor_position('t')?.unwrap_or(u64::MAX);
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(engine)?;
        let entries = events.range(..upper).map_err(engine)?.rev().map(|r| {
            let (k, v) = r.map_err(engine)?;
            Ok((k.value(), Some(decode("event", v.value())?)))
        });
        page_walk(q, 't', entries, |id| any(events.range(..id)))
    }

    fn page_from_index(&self, q: &EventQuery, tag: u8, value: &str) -> StoreResult<EventPage> {
        let prefix = idx_prefix(tag, value);
        let upper = idx_key(tag, value, q.cursor_position('t')?.unwrap_or(u64::MAX));
        let txn = self.read()?;
        let idx = txn.open_table(IDX).map_err(engine)?;
        let events = txn.open_table(EVENTS).map_err(engine)?;
        let entries = idx
            .range(prefix.as_slice()..upper.as_slice())
            .map_err(engine)?
            .rev()
            .map(|r| {
                let (k, _) = r.map_err(engine)?;
                let id = idx_id(k.value())?;
                Ok((id, load(&events, id)?))
            });
        page_walk(q, 't', entries, |id| {
            let below = idx_key(tag, value, id);
            any(idx.range(prefix.as_slice()..below.as_slice()))
        })
    }

    fn page_for_device(&self, q: &EventQuery, device: &str) -> StoreResult<EventPage> {
        let below = match q.cursor_position('s')? {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        let txn = self.read()?;
        let by_device = txn.open_table(BY_DEVICE).map_err(engine)?;
        let events = txn.open_table(EVENTS).map_err(engine)?;
        let entries =
            super::runs::pairs(&by_device, device, Bound::Unbounded, below, true)?.map(|r| {
                let (seq, id) = r?;
                Ok((seq, load(&events, id)?))
            });
        page_walk(q, 's', entries, |seq| {
            super::runs::any_below(&by_device, device, seq)
        })
    }

    /// Events for `audience` stored at or after arrival id `from`, oldest first, at most
    /// `limit`: `(arrival id, event)`. The DSL's digests read their news with it.
    pub(super) fn audience_events_from_arrival(
        &self,
        audience: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, StoredEvent)>> {
        let from = idx_key(IDX_AUDIENCE, audience, from);
        let to = idx_key(IDX_AUDIENCE, audience, u64::MAX);
        let txn = self.read()?;
        let idx = txn.open_table(IDX).map_err(engine)?;
        let events = txn.open_table(EVENTS).map_err(engine)?;
        let mut out = Vec::new();
        for r in idx
            .range(from.as_slice()..to.as_slice())
            .map_err(engine)?
            .take(limit)
        {
            let (k, _) = r.map_err(engine)?;
            let id = idx_id(k.value())?;
            if let Some(e) = load(&events, id)? {
                out.push((id, e));
            }
        }
        Ok(out)
    }

    /// The arrival id the next stored event gets (0 when none was ever stored).
    pub(super) fn next_arrival_id(&self) -> StoreResult<u64> {
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(engine)?;
        Ok(meta
            .get(META_NEXT_ARRIVAL)
            .map_err(engine)?
            .map_or(0, |v| v.value()))
    }

    /// Writes the group inside `txn`: what is new by each device's high-water mark, its
    /// indexes and incidents, and the devices' records. Returns how many events were new.
    fn append_in(&self, txn: &redb::WriteTransaction, group: &[DeviceBatch]) -> StoreResult<u64> {
        // The events to fold into incidents once this block's tables are closed (the fold opens
        // its own tables from the transaction), with their arrival ids.
        let mut stored: Vec<(&StoredEvent, u64)> = Vec::new();
        {
            let mut devices = txn.open_table(DEVICES).map_err(engine)?;
            let mut events = txn.open_table(EVENTS).map_err(engine)?;
            let mut by_device = txn.open_table(BY_DEVICE).map_err(engine)?;
            let mut idx = txn.open_table(IDX).map_err(engine)?;
            let mut meta = txn.open_table(META).map_err(engine)?;
            let mut next = meta
                .get(META_NEXT_ARRIVAL)
                .map_err(engine)?
                .map_or(0, |v| v.value());
            // One read and one write of each device's record per group, whatever the number of
            // its batches and events; a second batch of the same device sees the first's mark.
            let mut touched: HashMap<&str, Device> = HashMap::new();
            for batch in group {
                let device = match touched.entry(batch.device_id.as_str()) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
                        let Some(raw) = devices.get(v.key()).map_err(engine)? else {
                            // Dropping the transaction uncommitted aborts the whole group.
                            return Err(StoreError::NoSuchDevice(batch.device_id.clone()));
                        };
                        let d: Device = decode("device", raw.value())?;
                        v.insert(d)
                    }
                };
                let mut fresh = 0u64;
                let mut placed: Vec<(u64, u64)> = Vec::new();
                for e in &batch.events {
                    if e.seq <= device.highest_seq {
                        continue; // a resend, or below a gap the agent reported: stored once
                    }
                    let id = next;
                    next += 1;
                    events.insert(id, encode(e).as_slice()).map_err(engine)?;
                    placed.push((e.seq, id));
                    for k in index_keys(e, id) {
                        idx.insert(k.as_slice(), ()).map_err(engine)?;
                    }
                    device.event_count += 1;
                    device.highest_seq = e.seq;
                    fresh += 1;
                    stored.push((e, id));
                }
                for (seq, id, n) in super::runs::coalesce(placed) {
                    super::runs::put(&mut by_device, &batch.device_id, seq, id, n)?;
                }
                device.seen_in(batch, fresh > 0);
            }
            for (id, device) in &touched {
                devices
                    .insert(*id, encode(device).as_slice())
                    .map_err(engine)?;
            }
            meta.insert(META_NEXT_ARRIVAL, next).map_err(engine)?;
        }
        for (e, id) in &stored {
            super::incidents::fold_event(txn, e, *id)?;
        }
        Ok(stored.len() as u64)
    }
}

impl Store for Engine {
    fn insert_device(&self, device: &Device) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(engine)?;
        txn.open_table(DEVICES)
            .map_err(engine)?
            .insert(device.id.as_str(), encode(device).as_slice())
            .map_err(engine)?;
        txn.commit().map_err(engine)
    }

    fn device(&self, id: &str) -> StoreResult<Option<Device>> {
        let txn = self.read()?;
        let devices = txn.open_table(DEVICES).map_err(engine)?;
        devices
            .get(id)
            .map_err(engine)?
            .map(|v| decode("device", v.value()))
            .transpose()
    }

    fn devices(&self) -> StoreResult<Vec<Device>> {
        let txn = self.read()?;
        super::all(&txn.open_table(DEVICES).map_err(engine)?, "device")
    }

    fn revoke_device(&self, id: &str, at: DateTime<Utc>) -> StoreResult<Device> {
        // In the write transaction: a group commit for this device rewrites its record (counts,
        // state), and redb runs one write transaction at a time, so neither undoes the other.
        let txn = self.db.begin_write().map_err(engine)?;
        let device = {
            let mut devices = txn.open_table(DEVICES).map_err(engine)?;
            let mut device: Device = match devices.get(id).map_err(engine)? {
                Some(raw) => decode("device", raw.value())?,
                None => return Err(StoreError::NoSuchDevice(id.to_string())),
            };
            if device.revoked_at.is_none() {
                device.revoked_at = Some(at);
                devices
                    .insert(id, encode(&device).as_slice())
                    .map_err(engine)?;
            }
            device
        };
        txn.commit().map_err(engine)?;
        Ok(device)
    }

    fn append(&self, group: &[DeviceBatch]) -> StoreResult<u64> {
        // Durability::Immediate (redb's default): the commit returns once it is on disk.
        let txn = self.db.begin_write().map_err(engine)?;
        let new = self.append_in(&txn, group)?;
        txn.commit().map_err(engine)?;
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
        if after_seq == u64::MAX {
            return Ok(after_seq);
        }
        let txn = self.read()?;
        let by_device = txn.open_table(BY_DEVICE).map_err(engine)?;
        let events = txn.open_table(EVENTS).map_err(engine)?;
        let mut highest = after_seq;
        for r in super::runs::pairs(
            &by_device,
            device,
            Bound::Excluded(after_seq),
            Bound::Unbounded,
            false,
        )? {
            let (seq, id) = r?;
            highest = highest.max(seq);
            let Some(v) = events.get(id).map_err(engine)? else {
                continue;
            };
            if super::super::json_kind_starts_with(v.value(), kind_prefix) {
                let e: StoredEvent = decode("event", v.value())?;
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
        let mut txn = self.db.begin_write().map_err(engine)?;
        // Not flushed on its own: the next group commit makes it durable, and losing it costs
        // only a replay of the device's events at start.
        txn.set_durability(Durability::None).map_err(engine)?;
        txn.open_table(DERIVED)
            .map_err(engine)?
            .insert(
                derived_key(name, device).as_str(),
                encode(&record).as_slice(),
            )
            .map_err(engine)?;
        txn.commit().map_err(engine)
    }

    fn derived(&self, name: &str) -> StoreResult<Vec<(String, u64, Value)>> {
        let prefix = derived_key(name, "");
        let txn = self.read()?;
        let derived = txn.open_table(DERIVED).map_err(engine)?;
        let mut out = Vec::new();
        for r in derived.range(prefix.as_str()..).map_err(engine)? {
            let (k, v) = r.map_err(engine)?;
            let Some(device) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            let device = device.to_string();
            // A damaged record is skipped, not fatal: the caller rebuilds it from the events.
            let record: Option<Value> = serde_json::from_slice(v.value()).ok();
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
        super::meta::insert_token(self, token)
    }

    fn use_token(
        &self,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<TokenRecord, TokenRefusal>> {
        super::meta::use_token(self, hash, now)
    }

    fn current_policy(&self) -> StoreResult<Option<PolicyVersion>> {
        super::meta::current_policy(self)
    }

    fn put_policy(
        &self,
        policy: Value,
        changed_by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<PolicyVersion> {
        super::meta::put_policy(self, policy, changed_by, at)
    }

    fn policy_history(&self) -> StoreResult<Vec<PolicyVersion>> {
        super::meta::policy_history(self)
    }

    fn policy_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<PolicyVersion>, bool)> {
        super::meta::policy_page(self, before, limit)
    }
}

pub(super) fn derived_key(name: &str, device: &str) -> String {
    format!("{name}/{device}")
}
