//! Subject access and erasure on redb: finding every record that names a person, and renaming them in one write transaction.
//!
//! The file is rewritten afterwards (`rewrite.rs`), so no old copy of the name survives in a
//! freed page.

use redb::{
    Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde_json::Value;

use super::super::privacy::{
    Held, audit_names, carries_dsl_report, digest_names, entry_names, event_names, incident_names,
    rename_in_event, rename_in_text, rename_in_value,
};
use super::super::{
    AuditEntry, Device, DigestRecord, ErasureCounts, Incident, IncidentEntry, StoreError,
    StoreResult, StoredEvent, SubjectRecords,
};
use super::accounts::AUDIT;
use super::digests::DIGESTS;
use super::incidents::{INCIDENT_LOG, INCIDENT_OPEN, INCIDENTS};
use super::privacy::held_in_write;
use super::{DERIVED, DEVICES, EVENTS, Engine, IDX, IDX_USER, decode, encode, engine, idx_key};

/// Whether the stored JSON may name `user`: a byte search that lets most records be skipped
/// undecoded. JSON escapes only quotes, backslashes and control characters, so for any other
/// name a record naming it holds its bytes.
fn may_name(raw: &[u8], user: &str) -> bool {
    let n = user.as_bytes();
    if user.is_empty() || n.iter().any(|b| *b == b'"' || *b == b'\\' || *b < 0x20) {
        return true;
    }
    raw.windows(n.len()).any(|w| w == n)
}

/// `text` with `user` renamed (a whole field equal to the name, or whole words in it).
fn renamed(text: &str, user: &str, pseudonym: &str) -> Option<String> {
    if text == user {
        return Some(pseudonym.to_string());
    }
    rename_in_text(text, user, pseudonym)
}

/// Every record naming `user`, oldest first in each kind. One read transaction streams each
/// table (redb's reads never block the group commit), so memory holds only what names them.
pub(super) fn subject_records(store: &Engine, user: &str) -> StoreResult<SubjectRecords> {
    let txn = store.db.begin_read().map_err(engine)?;
    let named = |bytes: &[u8]| may_name(bytes, user);
    let incidents: Vec<Incident> = collect(
        &txn,
        INCIDENTS,
        "incident",
        |_| true,
        |i| incident_names(i, user),
    )?;
    let ids: std::collections::HashSet<u64> = incidents.iter().map(|i| i.id).collect();
    Ok(SubjectRecords {
        events: collect(&txn, EVENTS, "event", named, |e| event_names(e, user))?,
        // An entry of their incident need not name them: every entry is read (they are few).
        incident_entries: collect(
            &txn,
            INCIDENT_LOG,
            "incident entry",
            |_| true,
            |e: &IncidentEntry| ids.contains(&e.incident) || entry_names(e, user),
        )?,
        incidents,
        audit: collect(&txn, AUDIT, "audit entry", named, |a| audit_names(a, user))?,
        digests: collect(&txn, DIGESTS, "digest", named, |d| digest_names(d, user))?,
    })
}

/// The records of `def`, in key order, whose bytes pass `prefilter` (cheap, before decoding)
/// and which `keep` accepts once decoded.
fn collect<K: Key + 'static, R: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    def: TableDefinition<K, &[u8]>,
    what: &str,
    prefilter: impl Fn(&[u8]) -> bool,
    keep: impl Fn(&R) -> bool,
) -> StoreResult<Vec<R>> {
    let mut out = Vec::new();
    for r in txn
        .open_table(def)
        .map_err(engine)?
        .iter()
        .map_err(engine)?
    {
        let (_, v) = r.map_err(engine)?;
        if prefilter(v.value()) {
            let rec: R = decode(what, v.value())?;
            if keep(&rec) {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// Renames `user` to `pseudonym` in every record no hold keeps, in one write transaction (the
/// file is rewritten afterwards by `rewrite`, through the reopening handle). A hold on the user
/// keeps everything naming them: nothing changes, and the kept counts say what was kept.
pub(super) fn erase_subject(
    store: &Engine,
    user: &str,
    pseudonym: &str,
) -> StoreResult<ErasureCounts> {
    if user.is_empty() || pseudonym.is_empty() || user == pseudonym {
        return Err(StoreError::Conflict(
            "an erasure needs a name and a different, non-empty pseudonym".into(),
        ));
    }
    let txn = store.db.begin_write().map_err(engine)?;
    let held = held_in_write(&txn)?;
    let mut counts = ErasureCounts::default();
    if held.users.contains(user) {
        drop(txn);
        let all = subject_records(store, user)?;
        counts.kept_events = all.events.len() as u64;
        counts.kept_incidents = all.incidents.len() as u64;
        counts.kept_audit_entries = all.audit.len() as u64;
        tracing::info!(
            kept_events = counts.kept_events,
            kept_incidents = counts.kept_incidents,
            "Erasure kept everything: the person is under legal hold"
        );
        return Ok(counts);
    }
    let erasure = Erasure {
        txn: &txn,
        held: &held,
        user,
        pseudonym,
    };
    erasure.events(&mut counts)?;
    erasure.incidents(&mut counts)?;
    erasure.entries(&mut counts)?;
    erasure.audit(&mut counts)?;
    let dropped = erasure.digests(&mut counts)?;
    erasure.device_state(&mut counts)?;
    txn.commit().map_err(engine)?;
    tracing::info!(
        events = counts.events,
        incidents = counts.incidents,
        incident_entries = counts.incident_entries,
        audit_entries = counts.audit_entries,
        digests = counts.digests,
        digest_attachments_dropped = dropped,
        devices = counts.devices,
        kept_events = counts.kept_events,
        kept_incidents = counts.kept_incidents,
        kept_audit_entries = counts.kept_audit_entries,
        "Subject erased"
    );
    Ok(counts)
}

/// A table key kept past the read that produced it (changes are written after the walk).
trait OwnedKey: Key + 'static {
    type Owned;
    fn own(k: Self::SelfType<'_>) -> Self::Owned;
    fn key(o: &Self::Owned) -> Self::SelfType<'_>;
}

impl OwnedKey for u64 {
    type Owned = u64;
    fn own(k: u64) -> u64 {
        k
    }
    fn key(o: &u64) -> u64 {
        *o
    }
}

impl OwnedKey for (u64, u32) {
    type Owned = (u64, u32);
    fn own(k: (u64, u32)) -> (u64, u32) {
        k
    }
    fn key(o: &(u64, u32)) -> (u64, u32) {
        *o
    }
}

impl OwnedKey for &'static str {
    type Owned = String;
    fn own(k: &str) -> String {
        k.to_string()
    }
    fn key(o: &String) -> &str {
        o
    }
}

/// Walks `def`, handing `f` each record's key and bytes; `f` returns the record's new bytes,
/// or `None` to leave it. The changes are written back after the walk (a table is not written
/// while it is read). Returns how many records changed.
fn rewrite_table<K: OwnedKey>(
    txn: &WriteTransaction,
    def: TableDefinition<K, &[u8]>,
    mut f: impl FnMut(&K::Owned, &[u8]) -> StoreResult<Option<Vec<u8>>>,
) -> StoreResult<u64> {
    let mut table = txn.open_table(def).map_err(engine)?;
    let mut changed = Vec::new();
    for r in table.iter().map_err(engine)? {
        let (k, v) = r.map_err(engine)?;
        let key = K::own(k.value());
        if let Some(new) = f(&key, v.value())? {
            changed.push((key, new));
        }
    }
    for (k, v) in &changed {
        table.insert(K::key(k), v.as_slice()).map_err(engine)?;
    }
    Ok(changed.len() as u64)
}

/// `rewrite_table` over decoded records: each record whose key and bytes pass `prefilter`
/// (cheap, before decoding) is decoded and handed to `f` with its key, which changes it and
/// says whether it did. Returns how many records changed.
fn rewrite_each<K: OwnedKey, R: serde::de::DeserializeOwned + serde::Serialize>(
    txn: &WriteTransaction,
    def: TableDefinition<K, &[u8]>,
    what: &str,
    prefilter: impl Fn(&K::Owned, &[u8]) -> bool,
    mut f: impl FnMut(&K::Owned, &mut R) -> StoreResult<bool>,
) -> StoreResult<u64> {
    rewrite_table(txn, def, |key, raw| {
        if !prefilter(key, raw) {
            return Ok(None);
        }
        let mut rec: R = decode(what, raw)?;
        Ok(f(key, &mut rec)?.then(|| encode(&rec)))
    })
}

/// Every record, decoded (for `rewrite_each`'s `prefilter`).
fn any<K>(_: &K, _: &[u8]) -> bool {
    true
}

/// Whether a record is to be renamed: it names the person (`names`) and no hold keeps it
/// (`keeps`, asked only then; a kept record is counted in `kept`).
fn to_rename(names: bool, keeps: impl FnOnce() -> bool, kept: &mut u64) -> bool {
    if !names {
        return false;
    }
    if keeps() {
        *kept += 1;
        return false;
    }
    true
}

/// One erasure's renaming, in its write transaction.
#[derive(Clone, Copy)]
struct Erasure<'a> {
    txn: &'a WriteTransaction,
    held: &'a Held,
    user: &'a str,
    pseudonym: &'a str,
}

impl Erasure<'_> {
    /// Events, and their entries in the user index.
    fn events(&self, counts: &mut ErasureCounts) -> StoreResult<()> {
        let (user, pseudonym) = (self.user, self.pseudonym);
        let mut was_user = Vec::new();
        counts.events += rewrite_each(
            self.txn,
            EVENTS,
            "event",
            |_, raw| may_name(raw, user),
            |&id, e: &mut StoredEvent| {
                let kept = &mut counts.kept_events;
                if !to_rename(event_names(e, user), || self.held.keeps_event(e), kept) {
                    return Ok(false);
                }
                if e.user.as_deref() == Some(user) {
                    was_user.push(id);
                }
                rename_in_event(e, user, pseudonym);
                Ok(true)
            },
        )?;
        let mut idx = self.txn.open_table(IDX).map_err(engine)?;
        for id in was_user {
            idx.remove(idx_key(IDX_USER, user, id).as_slice())
                .map_err(engine)?;
            idx.insert(idx_key(IDX_USER, pseudonym, id).as_slice(), ())
                .map_err(engine)?;
        }
        Ok(())
    }

    /// Incidents, and their group's entry where the subject moves the group key.
    fn incidents(&self, counts: &mut ErasureCounts) -> StoreResult<()> {
        let (user, pseudonym) = (self.user, self.pseudonym);
        let mut moved_groups: Vec<(String, String, u64)> = Vec::new();
        rewrite_each(
            self.txn,
            INCIDENTS,
            "incident",
            any,
            |_, i: &mut Incident| {
                let kept = &mut counts.kept_incidents;
                if !to_rename(
                    incident_names(i, user),
                    || self.held.keeps_incident(i),
                    kept,
                ) {
                    return Ok(false);
                }
                if i.user.as_deref() == Some(user) {
                    i.user = Some(pseudonym.to_string());
                }
                if let Some(t) = rename_in_text(&i.title, user, pseudonym) {
                    i.title = t;
                }
                // The subject (a path, say) is part of the group key: the group's entry moves
                // with it.
                if let Some(s) = rename_in_text(&i.subject, user, pseudonym) {
                    let old = crate::incidents::group_key(&i.device_id, &i.kind, &i.subject);
                    let new = crate::incidents::group_key(&i.device_id, &i.kind, &s);
                    moved_groups.push((old, new, i.id));
                    i.subject = s;
                }
                counts.incidents += 1;
                Ok(true)
            },
        )?;
        let mut open = self.txn.open_table(INCIDENT_OPEN).map_err(engine)?;
        for (old, new, id) in moved_groups {
            let current = open.get(old.as_str()).map_err(engine)?.map(|v| v.value());
            if current == Some(id) {
                open.remove(old.as_str()).map_err(engine)?;
                open.insert(new.as_str(), id).map_err(engine)?;
            }
        }
        Ok(())
    }

    /// Incident entries (author, text), except those of an incident a hold keeps.
    fn entries(&self, counts: &mut ErasureCounts) -> StoreResult<()> {
        let (user, pseudonym) = (self.user, self.pseudonym);
        let incidents = self.txn.open_table(INCIDENTS).map_err(engine)?;
        counts.incident_entries += rewrite_each(
            self.txn,
            INCIDENT_LOG,
            "incident entry",
            |_, raw| may_name(raw, user),
            |_, e: &mut IncidentEntry| {
                if !entry_names(e, user) {
                    return Ok(false);
                }
                // An entry belongs to its incident's record: kept with it under a hold.
                let inc = super::privacy::incident_in(&incidents, e.incident)?;
                if inc.is_some_and(|i| self.held.keeps_incident(&i)) {
                    return Ok(false);
                }
                if let Some(b) = renamed(&e.by, user, pseudonym) {
                    e.by = b;
                }
                if let Some(t) = rename_in_text(&e.text, user, pseudonym) {
                    e.text = t;
                }
                Ok(true)
            },
        )?;
        Ok(())
    }

    /// Audit entries (actor, target, detail).
    fn audit(&self, counts: &mut ErasureCounts) -> StoreResult<()> {
        let (user, pseudonym) = (self.user, self.pseudonym);
        rewrite_each(
            self.txn,
            AUDIT,
            "audit entry",
            any,
            |_, a: &mut AuditEntry| {
                let kept = &mut counts.kept_audit_entries;
                if !to_rename(audit_names(a, user), || self.held.keeps_audit(a), kept) {
                    return Ok(false);
                }
                for t in [&mut a.actor, &mut a.target, &mut a.detail] {
                    if let Some(r) = renamed(t, user, pseudonym) {
                        *t = r;
                    }
                }
                counts.audit_entries += 1;
                Ok(true)
            },
        )?;
        Ok(())
    }

    /// Digests (subject, bodies); returns how many attachments went (see below).
    fn digests(&self, counts: &mut ErasureCounts) -> StoreResult<u64> {
        let (user, pseudonym) = (self.user, self.pseudonym);
        let mut dropped = 0u64;
        rewrite_each(
            self.txn,
            DIGESTS,
            "digest",
            any,
            |_, d: &mut DigestRecord| {
                let names = digest_names(d, user);
                if !names && !carries_dsl_report(d) {
                    return Ok(false);
                }
                if names {
                    for t in [&mut d.subject, &mut d.text, &mut d.html] {
                        if let Some(r) = rename_in_text(t, user, pseudonym) {
                            *t = r;
                        }
                    }
                    rename_in_value(&mut d.json, user, pseudonym);
                    counts.digests += 1;
                }
                // A report PDF cannot be renamed in place: it goes, and the log says how many.
                if d.attachment.take().is_some() {
                    dropped += 1;
                }
                Ok(true)
            },
        )?;
        Ok(dropped)
    }

    /// Device state facets and derived per-device states (a held device's are kept).
    fn device_state(&self, counts: &mut ErasureCounts) -> StoreResult<()> {
        let (user, pseudonym) = (self.user, self.pseudonym);
        let unheld_naming =
            |device: &str, raw: &[u8]| !self.held.devices.contains(device) && may_name(raw, user);
        counts.devices += rewrite_each(
            self.txn,
            DEVICES,
            "device",
            |id: &String, raw| unheld_naming(id, raw),
            |_, d: &mut Device| {
                let mut state = Value::Object(std::mem::take(&mut d.state));
                let did = rename_in_value(&mut state, user, pseudonym);
                if let Value::Object(m) = state {
                    d.state = m;
                }
                Ok(did)
            },
        )?;
        rewrite_table(self.txn, DERIVED, |key: &String, raw| {
            let device = key.split_once('/').map_or("", |(_, d)| d);
            if !unheld_naming(device, raw) {
                return Ok(None);
            }
            // A damaged record is left for its reader, which rebuilds it from the events.
            let Ok(mut record) = serde_json::from_slice::<Value>(raw) else {
                return Ok(None);
            };
            Ok(rename_in_value(&mut record, user, pseudonym).then(|| encode(&record)))
        })?;
        Ok(())
    }
}
