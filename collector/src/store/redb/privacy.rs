//! The redb `PrivacyStore`: the retention purge in bounded batches, and legal holds (the `holds` table).
//!
//! A purge call first looks for expired records in read transactions (which never hold up a
//! group commit), at most `SCAN` entries each, resuming where the previous call stopped; then
//! it removes what it found in one write transaction, checking each record again there
//! against the holds then in force. Records are keyed in arrival (or id) order, so a pass walks
//! each table oldest first; a call that finds nothing until every table's pass is complete
//! returns zero counts, and the next pass starts at the front again. Subject access and
//! erasure are in `erase.rs`.

use std::collections::HashMap;
use std::sync::Mutex;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::super::privacy::{Held, Hold, HoldTarget, PurgeCounts, PurgeCutoffs};
use super::super::{
    AuditEntry, Device, DigestRecord, ErasureCounts, Incident, PrivacyStore, StoreResult,
    StoredEvent, SubjectRecords,
};
use super::accounts::AUDIT;
use super::digests::{DIGEST_PENDING, DIGESTS};
use super::incidents::{DEVICE_INCIDENTS, INCIDENT_LOG, INCIDENT_OPEN, INCIDENTS};
use super::{BY_DEVICE, DEVICES, EVENTS, Engine, IDX, META, decode, encode, engine};

/// Hold key (`HoldTarget::key`) → the hold (JSON).
pub(super) const HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("holds");

/// `meta` keys: the highest id a purge removed from a table whose next id is "last plus
/// one", so that an id is never given out twice once its record is gone.
pub(super) const FLOOR_INCIDENTS: &str = "floor_incidents";
pub(super) const FLOOR_AUDIT: &str = "floor_audit";
pub(super) const FLOOR_DIGESTS: &str = "floor_digests";

/// Most entries one read transaction of the purge looks at.
const SCAN: usize = 50_000;

/// Where the purge's current pass has got in each table: the next key to look at, or `None`
/// once that table's pass is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PurgeCursor {
    events: Option<u64>,
    incidents: Option<u64>,
    audit: Option<u64>,
    digests: Option<u64>,
}

impl Default for PurgeCursor {
    fn default() -> Self {
        Self {
            events: Some(0),
            incidents: Some(0),
            audit: Some(0),
            digests: Some(0),
        }
    }
}

impl PurgeCursor {
    fn complete(&self) -> bool {
        self.events.is_none()
            && self.incidents.is_none()
            && self.audit.is_none()
            && self.digests.is_none()
    }
}

/// The purge's cursor, kept by the engine (a reopened engine starts a new pass).
pub(super) type PurgeState = Mutex<PurgeCursor>;

/// Ids a read transaction found expired, to remove (after checking again) in a write one.
#[derive(Default)]
struct Found {
    events: Vec<u64>,
    incidents: Vec<u64>,
    audit: Vec<u64>,
    digests: Vec<u64>,
}

impl Found {
    fn len(&self) -> usize {
        self.events.len() + self.incidents.len() + self.audit.len() + self.digests.len()
    }
}

/// Creates this module's tables.
pub(super) fn create_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(HOLDS).map_err(engine)?;
    Ok(())
}

/// The holds in force, as read by `txn`.
pub(super) fn holds_in<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
) -> StoreResult<Vec<Hold>> {
    super::all(table, "hold")
}

/// What the holds in force keep, read in a write transaction.
pub(super) fn held_in_write(txn: &WriteTransaction) -> StoreResult<Held> {
    let holds = holds_in(&txn.open_table(HOLDS).map_err(engine)?)?;
    let incidents = txn.open_table(INCIDENTS).map_err(engine)?;
    Held::new(&holds, |id| incident_in(&incidents, id))
}

fn held_in_read(txn: &ReadTransaction) -> StoreResult<Held> {
    let holds = holds_in(&txn.open_table(HOLDS).map_err(engine)?)?;
    let incidents = txn.open_table(INCIDENTS).map_err(engine)?;
    Held::new(&holds, |id| incident_in(&incidents, id))
}

pub(super) fn incident_in<T: ReadableTable<u64, &'static [u8]>>(
    table: &T,
    id: u64,
) -> StoreResult<Option<Incident>> {
    table
        .get(id)
        .map_err(engine)?
        .map(|v| decode("incident", v.value()))
        .transpose()
}

/// One read transaction's look for expired records: how many more it may find, and how
/// many more entries it may read.
struct Look<'t> {
    txn: &'t ReadTransaction,
    want: usize,
    budget: usize,
}

impl Look<'_> {
    /// Moves one kind's `cursor` on: pushes the keys `expired` picks from `table`'s entries
    /// into `out` until the look wants no more or has read its budget, and leaves `cursor` at
    /// where to go on next time (`None`: the table's end was reached). A cursor already at the
    /// end, or a look that is full, is left as it is; a kind with no cutoff (`enabled` false)
    /// has nothing to find, so its pass is complete at once.
    fn scan<R: serde::de::DeserializeOwned>(
        &mut self,
        table: TableDefinition<u64, &'static [u8]>,
        cursor: &mut Option<u64>,
        out: &mut Vec<u64>,
        what: &str,
        enabled: bool,
        mut expired: impl FnMut(&R) -> bool,
    ) -> StoreResult<()> {
        let Some(from) = *cursor else { return Ok(()) };
        if self.want == 0 {
            return Ok(());
        }
        if !enabled {
            *cursor = None;
            return Ok(());
        }
        let before = out.len();
        *cursor = None;
        let table = self.txn.open_table(table).map_err(engine)?;
        for r in table.range(from..).map_err(engine)? {
            let (k, v) = r.map_err(engine)?;
            if out.len() - before >= self.want || self.budget == 0 {
                *cursor = Some(k.value());
                break;
            }
            self.budget -= 1;
            if expired(&decode::<R>(what, v.value())?) {
                out.push(k.value());
            }
        }
        self.want -= out.len() - before;
        Ok(())
    }
}

/// Raises a table's id floor to `last` (its highest id before a purge removed from it).
fn raise_floor(txn: &WriteTransaction, key: &str, last: Option<u64>) -> StoreResult<()> {
    let Some(last) = last else { return Ok(()) };
    let mut meta = txn.open_table(META).map_err(engine)?;
    let floor = meta.get(key).map_err(engine)?.map_or(0, |v| v.value());
    if last > floor {
        meta.insert(key, last).map_err(engine)?;
    }
    Ok(())
}

fn last_key<T: ReadableTable<u64, &'static [u8]>>(table: &T) -> StoreResult<Option<u64>> {
    Ok(table.last().map_err(engine)?.map(|(k, _)| k.value()))
}

impl Engine {
    /// One read transaction's look for expired records, from `cur` on; returns what it found
    /// and where the next look starts.
    fn find_expired(
        &self,
        cutoffs: &PurgeCutoffs,
        limit: usize,
        cur: PurgeCursor,
    ) -> StoreResult<(Found, PurgeCursor)> {
        let txn = self.db.begin_read().map_err(engine)?;
        let held = held_in_read(&txn)?;
        let mut found = Found::default();
        let mut next = cur;
        let mut look = Look {
            txn: &txn,
            want: limit,
            budget: SCAN,
        };
        look.scan(
            EVENTS,
            &mut next.events,
            &mut found.events,
            "event",
            cutoffs.technical.is_some() || cutoffs.safeguarding.is_some(),
            |e| cutoffs.event_expired(e) && !held.keeps_event(e),
        )?;
        look.scan(
            INCIDENTS,
            &mut next.incidents,
            &mut found.incidents,
            "incident",
            true,
            |i: &Incident| cutoffs.incident_expired(i) && !held.keeps_incident(i),
        )?;
        look.scan(
            AUDIT,
            &mut next.audit,
            &mut found.audit,
            "audit entry",
            cutoffs.audit.is_some(),
            |a: &AuditEntry| cutoffs.audit_expired(a) && !held.keeps_audit(a),
        )?;
        look.scan(
            DIGESTS,
            &mut next.digests,
            &mut found.digests,
            "digest",
            cutoffs.digests.is_some(),
            |d: &DigestRecord| cutoffs.digest_expired(d),
        )?;
        Ok((found, next))
    }

    /// Removes what `find_expired` found that is still expired and unheld, in one write
    /// transaction.
    fn remove_expired(&self, cutoffs: &PurgeCutoffs, found: &Found) -> StoreResult<PurgeCounts> {
        let txn = self.db.begin_write().map_err(engine)?;
        let held = held_in_write(&txn)?;
        let mut counts = PurgeCounts::default();
        let removal = Removal {
            txn: &txn,
            cutoffs,
            held: &held,
        };
        removal.events(&found.events, &mut counts)?;
        removal.incidents(&found.incidents, &mut counts)?;
        let audit =
            remove_still_expired(&txn, AUDIT, FLOOR_AUDIT, "audit entry", &found.audit, |a| {
                cutoffs.audit_expired(a) && !held.keeps_audit(a)
            })?;
        counts.audit_entries += audit.len() as u64;
        let digests = remove_still_expired(
            &txn,
            DIGESTS,
            FLOOR_DIGESTS,
            "digest",
            &found.digests,
            |d| cutoffs.digest_expired(d),
        )?;
        let mut pending = txn.open_table(DIGEST_PENDING).map_err(engine)?;
        for &id in &digests {
            pending.remove(id).map_err(engine)?;
        }
        drop(pending);
        counts.digests += digests.len() as u64;
        txn.commit().map_err(engine)?;
        Ok(counts)
    }
}

/// Removes from `def` each of `ids` whose record, read again in this write transaction, is
/// still to go by `still`, and then raises the table's id floor (`floor`) to the highest id
/// it held. Returns the ids removed.
fn remove_still_expired<R: serde::de::DeserializeOwned>(
    txn: &WriteTransaction,
    def: TableDefinition<u64, &[u8]>,
    floor: &str,
    what: &str,
    ids: &[u64],
    still: impl Fn(&R) -> bool,
) -> StoreResult<Vec<u64>> {
    let mut table = txn.open_table(def).map_err(engine)?;
    let last = last_key(&table)?;
    let mut removed = Vec::new();
    for &id in ids {
        let Some(record) = table
            .get(id)
            .map_err(engine)?
            .map(|v| decode::<R>(what, v.value()))
            .transpose()?
        else {
            continue;
        };
        if still(&record) {
            table.remove(id).map_err(engine)?;
            removed.push(id);
        }
    }
    drop(table);
    if !removed.is_empty() {
        raise_floor(txn, floor, last)?;
    }
    Ok(removed)
}

/// One purge call's removal of what its looks found, in one write transaction: each record is
/// checked again there against the cutoffs and the holds then in force.
struct Removal<'a> {
    txn: &'a WriteTransaction,
    cutoffs: &'a PurgeCutoffs,
    held: &'a Held,
}

impl Removal<'_> {
    /// Removes the expired, unheld events among `ids` with their index entries and their place in
    /// the device's runs, and lowers their devices' counts (never their high-water marks).
    fn events(&self, ids: &[u64], counts: &mut PurgeCounts) -> StoreResult<()> {
        let (txn, cutoffs, held) = (self.txn, self.cutoffs, self.held);
        let mut events = txn.open_table(EVENTS).map_err(engine)?;
        let mut idx = txn.open_table(IDX).map_err(engine)?;
        let mut runs = txn.open_table(BY_DEVICE).map_err(engine)?;
        let mut per_device: HashMap<String, Vec<u64>> = HashMap::new();
        for &id in ids {
            // Removed first and put back in the rare case it is no longer to go (a hold placed
            // since it was found): one lookup per event instead of two.
            let Some(raw) = events
                .remove(id)
                .map_err(engine)?
                .map(|v| v.value().to_vec())
            else {
                continue;
            };
            let e: StoredEvent = decode("event", &raw)?;
            if !cutoffs.event_expired(&e) || held.keeps_event(&e) {
                events.insert(id, raw.as_slice()).map_err(engine)?;
                continue;
            }
            for k in super::events::index_keys(&e, id) {
                idx.remove(k.as_slice()).map_err(engine)?;
            }
            per_device
                .entry(e.device_id.clone())
                .or_default()
                .push(e.seq);
            counts.count_event(&e);
        }
        let mut devices = txn.open_table(DEVICES).map_err(engine)?;
        for (id, mut seqs) in per_device {
            seqs.sort_unstable();
            super::runs::remove_many(&mut runs, &id, &seqs)?;
            let n = seqs.len() as u64;
            let raw = devices.get(id.as_str()).map_err(engine)?;
            let Some(raw) = raw.map(|v| v.value().to_vec()) else {
                continue;
            };
            let mut d: Device = decode("device", &raw)?;
            d.event_count = d.event_count.saturating_sub(n);
            devices
                .insert(id.as_str(), encode(&d).as_slice())
                .map_err(engine)?;
        }
        Ok(())
    }

    /// Removes the expired (closed), unheld incidents among `ids` with their records, their
    /// device index entry and, if it still points at them, their group's entry (so the group's
    /// next flagged event opens a new incident).
    fn incidents(&self, ids: &[u64], counts: &mut PurgeCounts) -> StoreResult<()> {
        let (txn, cutoffs, held) = (self.txn, self.cutoffs, self.held);
        let mut incidents = txn.open_table(INCIDENTS).map_err(engine)?;
        let mut log = txn.open_table(INCIDENT_LOG).map_err(engine)?;
        let mut by_device = txn.open_table(DEVICE_INCIDENTS).map_err(engine)?;
        let mut open = txn.open_table(INCIDENT_OPEN).map_err(engine)?;
        let last = last_key(&incidents)?;
        let removed_before = counts.incidents;
        for &id in ids {
            let Some(i) = incident_in(&incidents, id)? else {
                continue;
            };
            if !cutoffs.incident_expired(&i) || held.keeps_incident(&i) {
                continue;
            }
            incidents.remove(id).map_err(engine)?;
            let entries: Vec<(u64, u32)> = log
                .range((id, 0)..=(id, u32::MAX))
                .map_err(engine)?
                .map(|r| r.map(|(k, _)| k.value()).map_err(engine))
                .collect::<StoreResult<_>>()?;
            for k in &entries {
                log.remove(*k).map_err(engine)?;
            }
            counts.incident_entries += entries.len() as u64;
            by_device
                .remove((i.device_id.as_str(), id))
                .map_err(engine)?;
            let group = crate::incidents::group_key(&i.device_id, &i.kind, &i.subject);
            let current = open.get(group.as_str()).map_err(engine)?.map(|v| v.value());
            if current == Some(id) {
                open.remove(group.as_str()).map_err(engine)?;
            }
            counts.incidents += 1;
        }
        drop((incidents, log, by_device, open));
        if counts.incidents > removed_before {
            raise_floor(txn, FLOOR_INCIDENTS, last)?;
        }
        Ok(())
    }
}

impl PrivacyStore for Engine {
    fn purge_expired(&self, cutoffs: &PurgeCutoffs, limit: usize) -> StoreResult<PurgeCounts> {
        let limit = limit.max(1);
        let mut cur = self.purge.lock().expect("purge cursor lock");
        loop {
            let (found, next) = self.find_expired(cutoffs, limit, *cur)?;
            if found.len() == 0 {
                if next.complete() {
                    *cur = PurgeCursor::default();
                    return Ok(PurgeCounts::default());
                }
                // Nothing in this window: look on (a new read transaction) before saying so.
                *cur = next;
                continue;
            }
            let counts = self.remove_expired(cutoffs, &found)?;
            *cur = next;
            if counts.total() > 0 {
                return Ok(counts);
            }
        }
    }

    fn put_hold(&self, hold: &Hold) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(engine)?;
        txn.open_table(HOLDS)
            .map_err(engine)?
            .insert(hold.target.key().as_str(), encode(hold).as_slice())
            .map_err(engine)?;
        txn.commit().map_err(engine)
    }

    fn release_hold(&self, target: &HoldTarget) -> StoreResult<bool> {
        let txn = self.db.begin_write().map_err(engine)?;
        let existed = txn
            .open_table(HOLDS)
            .map_err(engine)?
            .remove(target.key().as_str())
            .map_err(engine)?
            .is_some();
        txn.commit().map_err(engine)?;
        Ok(existed)
    }

    fn holds(&self) -> StoreResult<Vec<Hold>> {
        let txn = self.db.begin_read().map_err(engine)?;
        holds_in(&txn.open_table(HOLDS).map_err(engine)?)
    }

    fn subject_records(&self, user: &str) -> StoreResult<SubjectRecords> {
        super::erase::subject_records(self, user)
    }

    fn erase_subject(&self, user: &str, pseudonym: &str) -> StoreResult<ErasureCounts> {
        super::erase::erase_subject(self, user, pseudonym)
    }
}
