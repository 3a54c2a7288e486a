//! Subject access and erasure on redb: finding every record that names a person, renaming them in one write transaction, and rewriting the file so no old copy of the name survives.
//!
//! redb writes copy-on-write: a renamed record's old version stays in a freed page until that
//! page is reused, and `Database::compact` moves live pages without clearing the free ones
//! left below the new end. So after an erasure the whole database is copied, table by table,
//! into a fresh `caretaker.redb.erasing`, made durable and renamed over `caretaker.redb`
//! (`rewrite`); the fresh file only ever held the records as they are after the erasure.

use std::path::Path;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle, Value as RedbValue, WriteTransaction,
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
use super::accounts::{API_TOKENS, AUDIT, SESSIONS, SETTINGS, USERS};
use super::digests::{DIGEST_CURSORS, DIGEST_PENDING, DIGESTS};
use super::incidents::{DEVICE_INCIDENTS, INCIDENT_LOG, INCIDENT_OPEN, INCIDENTS};
use super::privacy::{HOLDS, held_in_write};
use super::{
    BY_DEVICE, DERIVED, DEVICES, EVENTS, Engine, FILE, IDX, IDX_USER, META, POLICIES, TOKENS,
    decode, encode, engine, idx_key,
};

/// The fresh copy an erasure writes before it replaces the store's file.
const ERASING: &str = "caretaker.redb.erasing";

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
    erase_events(&txn, &held, user, pseudonym, &mut counts)?;
    erase_incidents(&txn, &held, user, pseudonym, &mut counts)?;
    erase_entries(&txn, &held, user, pseudonym, &mut counts)?;
    let mut dropped = 0u64;
    rewrite_each(&txn, AUDIT, "audit entry", any, |_, a: &mut AuditEntry| {
        if !audit_names(a, user) {
            return Ok(false);
        }
        if held.keeps_audit(a) {
            counts.kept_audit_entries += 1;
            return Ok(false);
        }
        for t in [&mut a.actor, &mut a.target, &mut a.detail] {
            if let Some(r) = renamed(t, user, pseudonym) {
                *t = r;
            }
        }
        counts.audit_entries += 1;
        Ok(true)
    })?;
    rewrite_each(&txn, DIGESTS, "digest", any, |_, d: &mut DigestRecord| {
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
    })?;
    erase_device_state(&txn, &held, user, pseudonym, &mut counts)?;
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

fn erase_events(
    txn: &WriteTransaction,
    held: &Held,
    user: &str,
    pseudonym: &str,
    counts: &mut ErasureCounts,
) -> StoreResult<()> {
    let mut was_user = Vec::new();
    counts.events += rewrite_each(
        txn,
        EVENTS,
        "event",
        |_, raw| may_name(raw, user),
        |&id, e: &mut StoredEvent| {
            if !event_names(e, user) {
                return Ok(false);
            }
            if held.keeps_event(e) {
                counts.kept_events += 1;
                return Ok(false);
            }
            if e.user.as_deref() == Some(user) {
                was_user.push(id);
            }
            rename_in_event(e, user, pseudonym);
            Ok(true)
        },
    )?;
    let mut idx = txn.open_table(IDX).map_err(engine)?;
    for id in was_user {
        idx.remove(idx_key(IDX_USER, user, id).as_slice())
            .map_err(engine)?;
        idx.insert(idx_key(IDX_USER, pseudonym, id).as_slice(), ())
            .map_err(engine)?;
    }
    Ok(())
}

fn erase_incidents(
    txn: &WriteTransaction,
    held: &Held,
    user: &str,
    pseudonym: &str,
    counts: &mut ErasureCounts,
) -> StoreResult<()> {
    let mut moved_groups: Vec<(String, String, u64)> = Vec::new();
    rewrite_each(txn, INCIDENTS, "incident", any, |_, i: &mut Incident| {
        if !incident_names(i, user) {
            return Ok(false);
        }
        if held.keeps_incident(i) {
            counts.kept_incidents += 1;
            return Ok(false);
        }
        if i.user.as_deref() == Some(user) {
            i.user = Some(pseudonym.to_string());
        }
        if let Some(t) = rename_in_text(&i.title, user, pseudonym) {
            i.title = t;
        }
        // The subject (a path, say) is part of the group key: the group's entry moves with it.
        if let Some(s) = rename_in_text(&i.subject, user, pseudonym) {
            let old = crate::incidents::group_key(&i.device_id, &i.kind, &i.subject);
            let new = crate::incidents::group_key(&i.device_id, &i.kind, &s);
            moved_groups.push((old, new, i.id));
            i.subject = s;
        }
        counts.incidents += 1;
        Ok(true)
    })?;
    let mut open = txn.open_table(INCIDENT_OPEN).map_err(engine)?;
    for (old, new, id) in moved_groups {
        let current = open.get(old.as_str()).map_err(engine)?.map(|v| v.value());
        if current == Some(id) {
            open.remove(old.as_str()).map_err(engine)?;
            open.insert(new.as_str(), id).map_err(engine)?;
        }
    }
    Ok(())
}

fn erase_entries(
    txn: &WriteTransaction,
    held: &Held,
    user: &str,
    pseudonym: &str,
    counts: &mut ErasureCounts,
) -> StoreResult<()> {
    let incidents = txn.open_table(INCIDENTS).map_err(engine)?;
    counts.incident_entries += rewrite_each(
        txn,
        INCIDENT_LOG,
        "incident entry",
        |_, raw| may_name(raw, user),
        |_, e: &mut IncidentEntry| {
            if !entry_names(e, user) {
                return Ok(false);
            }
            // An entry belongs to its incident's record: kept with it under a hold.
            let inc = super::privacy::incident_in(&incidents, e.incident)?;
            if inc.is_some_and(|i| held.keeps_incident(&i)) {
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

/// Device state facets and derived per-device states (a held device's are kept).
fn erase_device_state(
    txn: &WriteTransaction,
    held: &Held,
    user: &str,
    pseudonym: &str,
    counts: &mut ErasureCounts,
) -> StoreResult<()> {
    let unheld_naming =
        |device: &str, raw: &[u8]| !held.devices.contains(device) && may_name(raw, user);
    counts.devices += rewrite_each(
        txn,
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
    rewrite_table(txn, DERIVED, |key: &String, raw| {
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

/// Copies one table in chunks of lazily committed transactions (the last commit of the copy
/// is durable and makes them all so).
fn copy<K: Key + 'static, V: RedbValue + 'static>(
    from: &ReadTransaction,
    to: &Database,
    def: TableDefinition<K, V>,
) -> StoreResult<u64> {
    const CHUNK: usize = 20_000;
    let src = from.open_table(def).map_err(engine)?;
    let mut rows = src.iter().map_err(engine)?;
    let mut copied = 0u64;
    loop {
        let mut txn = to.begin_write().map_err(engine)?;
        txn.set_durability(Durability::None).map_err(engine)?;
        let mut n = 0;
        {
            let mut dst = txn.open_table(def).map_err(engine)?;
            for r in rows.by_ref() {
                let (k, v) = r.map_err(engine)?;
                dst.insert(k.value(), v.value()).map_err(engine)?;
                n += 1;
                if n == CHUNK {
                    break;
                }
            }
        }
        txn.commit().map_err(engine)?;
        copied += n as u64;
        if n < CHUNK {
            return Ok(copied);
        }
    }
}

/// Every table of the layout, copied by `rewrite`. A table this list misses is refused
/// there rather than silently dropped.
fn copy_all(from: &ReadTransaction, to: &Database) -> StoreResult<usize> {
    let names: Vec<String> = from
        .list_tables()
        .map_err(engine)?
        .map(|t| t.name().to_string())
        .collect();
    let copied: Vec<String> = vec![
        copy_named(from, to, DEVICES)?,
        copy_named(from, to, EVENTS)?,
        copy_named(from, to, BY_DEVICE)?,
        copy_named(from, to, IDX)?,
        copy_named(from, to, TOKENS)?,
        copy_named(from, to, POLICIES)?,
        copy_named(from, to, DERIVED)?,
        copy_named(from, to, META)?,
        copy_named(from, to, SETTINGS)?,
        copy_named(from, to, USERS)?,
        copy_named(from, to, SESSIONS)?,
        copy_named(from, to, API_TOKENS)?,
        copy_named(from, to, AUDIT)?,
        copy_named(from, to, INCIDENTS)?,
        copy_named(from, to, INCIDENT_OPEN)?,
        copy_named(from, to, DEVICE_INCIDENTS)?,
        copy_named(from, to, INCIDENT_LOG)?,
        copy_named(from, to, DIGESTS)?,
        copy_named(from, to, DIGEST_PENDING)?,
        copy_named(from, to, DIGEST_CURSORS)?,
        copy_named(from, to, HOLDS)?,
    ];
    if let Some(missed) = names.iter().find(|n| !copied.contains(n)) {
        return Err(StoreError::engine_msg(format!(
            "the store has a table ({missed}) the erasure's rewrite does not know; \
             the store file was left as it was"
        )));
    }
    if from
        .list_multimap_tables()
        .map_err(engine)?
        .next()
        .is_some()
    {
        return Err(StoreError::engine_msg(
            "the store has a multimap table the erasure's rewrite does not know",
        ));
    }
    Ok(copied.len())
}

fn copy_named<K: Key + 'static, V: RedbValue + 'static>(
    from: &ReadTransaction,
    to: &Database,
    def: TableDefinition<'static, K, V>,
) -> StoreResult<String> {
    copy(from, to, def)?;
    Ok(def.name().to_string())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::engine(format!("{what} {}", path.display()), e)
}

fn sync_dir(dir: &Path) -> StoreResult<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

/// Removes the fresh copy an erasure was writing when the process stopped: the store's file is
/// still the complete one (renamed records, old copies in freed pages until the erasure runs
/// again), and the partial copy only takes room.
pub(super) fn discard_partial(dir: &Path) -> StoreResult<()> {
    let partial = dir.join(ERASING);
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(|e| io("cannot remove", &partial, e))?;
        tracing::warn!(
            path = %partial.display(),
            "Unfinished store rewrite of an erasure discarded; run the erasure again"
        );
    }
    Ok(())
}

/// Replaces the store's file by a fresh copy of its live records, so nothing an erasure
/// renamed survives in a freed page, removes the retired sled files (which hold the names
/// as they were before the conversion), and returns the engine opened on the new file. The
/// caller guarantees no one else uses `store` meanwhile.
pub(super) fn rewrite(store: Engine, dir: &Path) -> StoreResult<Engine> {
    let file = dir.join(FILE);
    let partial = dir.join(ERASING);
    discard_partial(dir)?;
    let tables = {
        let fresh = Database::create(&partial).map_err(engine)?;
        let from = store.db.begin_read().map_err(engine)?;
        let tables = copy_all(&from, &fresh)?;
        // Durable: makes every lazily committed chunk durable with it.
        fresh
            .begin_write()
            .map_err(engine)?
            .commit()
            .map_err(engine)?;
        tables
    };
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", &partial, e))?;
    drop(store);
    std::fs::rename(&partial, &file).map_err(|e| io("cannot rename", &partial, e))?;
    sync_dir(dir)?;
    remove_retired_sled(dir)?;
    tracing::info!(path = %file.display(), tables, "Store file rewritten after an erasure");
    Engine::open(dir)
}

/// The `sled-retired-*` safety copies of a converted sled store hold every record as it was:
/// an erasure removes them (they are only a fallback from the conversion).
fn remove_retired_sled(dir: &Path) -> StoreResult<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io("cannot list", dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("sled-retired-") && entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| io("cannot remove", &entry.path(), e))?;
            tracing::warn!(
                path = %entry.path().display(),
                "Retired sled store removed: it held records an erasure renamed"
            );
        }
    }
    sync_dir(dir)
}
