//! The one-time conversion of a school's sled store directory into `caretaker.redb`, at start, with progress, leaving the sled files aside.
//!
//! Everything is copied as it is, under the same ids: events under their sled timeline id
//! as arrival id (so the timeline's order, every `t<id>` cursor and each digest recipient's
//! cursor, which are timeline ids, keep their meaning), incidents with their records and
//! group map (re-folding the events would not give them back: a closed incident makes the
//! next flagged event of its group open a new one, and the people's entries hang off the
//! incident numbers), audit entries and digests under their ids, devices with their counts,
//! high-water marks and state. Only the indexes are rebuilt, from the copied records.
//!
//! The copy goes into `caretaker.redb.partial` in bounded transactions, and becomes
//! `caretaker.redb` by a rename once complete and durable; the sled files are then moved into
//! `sled-retired-<date>/`, which is marked complete by its `README.txt`. A crash before the
//! rename leaves the sled store as it was, and the partial file is discarded at the next
//! start; a crash after it finishes the move at the next start.
//!
//! A store from before sled's layout 2 has no incidents yet: its events are folded into
//! incidents as they are copied, as the sled backend did when it opened such a store.

#[path = "sled_source.rs"]
mod sled_source;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use redb::{Database, Durability, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::super::{Incident, StoreError, StoreResult, StoredEvent};
use super::accounts::{API_TOKENS, AUDIT, SESSIONS, SETTINGS, USERS};
use super::digests::{DIGEST_CURSORS, DIGEST_PENDING, DIGESTS};
use super::incidents::{DEVICE_INCIDENTS, INCIDENT_LOG, INCIDENT_OPEN, INCIDENTS};
use super::{
    BY_DEVICE, CACHE_BYTES, DERIVED, DEVICES, EVENTS, Engine, FILE, IDX, IDX_AUDIENCE, IDX_KIND,
    IDX_USER, META, META_NEXT_ARRIVAL, POLICIES, TOKENS, decode, encode, engine, idx_key,
    redb_failure,
};
use sled_source::{
    LAYOUT_WITH_INCIDENTS, SledSource, be_u64, entry_of, group_of, id_of, sled_failure,
    split_event_key, text,
};

/// Events copied per write transaction: bounded, so memory does not grow with the store.
const CHUNK: usize = 10_000;
/// Bytes of other records copied per write transaction, for the same reason.
const CHUNK_BYTES: usize = 16 << 20;
/// Events between two progress lines in the log.
const PROGRESS_EVERY: u64 = 100_000;
/// The file the copy is written to until it is complete.
const PARTIAL_SUFFIX: &str = ".partial";
/// Written last into the retired directory: its presence says the move is complete.
const RETIRED_NOTE: &str = "README.txt";

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub devices: u64,
    pub events: u64,
    pub incidents: u64,
    /// Where the sled files went.
    pub retired_to: PathBuf,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::engine(format!("{what} {}", path.display()), e)
}

/// Whether `dir` holds a sled database (sled always writes `conf` and `db`).
fn holds_sled(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// Whether a directory entry is one of sled's files.
fn is_sled_file(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// Converts the sled store in `dir` into `dir/caretaker.redb` if there is one and no redb file
/// yet; `None` when there was nothing to convert. Call it before opening the redb file.
pub fn from_sled_if_present(dir: &Path) -> StoreResult<Option<MigrationReport>> {
    let file = dir.join(FILE);
    let partial = dir.join(format!("{FILE}{PARTIAL_SUFFIX}"));
    if file.exists() {
        if any_sled_file(dir)? || unfinished_retirement(dir)?.is_some() {
            // The conversion completed but the move of the sled files did not.
            retire(dir)?;
        }
        return Ok(None);
    }
    if !holds_sled(dir) {
        return Ok(None);
    }
    // sled's lock first: a second process started at the same moment stops here instead of
    // discarding the first one's partial file under it.
    let sled = SledSource::open(dir)?;
    if partial.exists() {
        tracing::warn!(
            path = %partial.display(),
            "Discarding an unfinished store conversion; it starts again from the sled store"
        );
        fs::remove_file(&partial).map_err(|e| io("cannot remove", &partial, e))?;
    }
    let started = Instant::now();
    tracing::info!(dir = %dir.display(), "Converting the sled store to redb; this runs once");
    let converted = convert(&sled, &partial).and_then(|report| {
        drop(sled);
        fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("cannot sync", &partial, e))?;
        fs::rename(&partial, &file).map_err(|e| io("cannot rename", &partial, e))?;
        sync_dir(dir)?;
        Ok(report)
    });
    // A full disk is the likely cause (the copy needs about the sled store's size again):
    // say that nothing was lost and that the next start tries again.
    let mut report = converted.map_err(|e| {
        // Best effort, to give the space back now; the next start discards it anyway.
        let _ = fs::remove_file(&partial);
        StoreError::engine(
            format!(
                "converting the sled store in {} to redb failed (the sled store is unchanged, \
                 and the conversion starts again at the next start)",
                dir.display()
            ),
            e,
        )
    })?;
    report.retired_to = retire(dir)?;
    tracing::info!(
        devices = report.devices,
        events = report.events,
        incidents = report.incidents,
        seconds = started.elapsed().as_secs(),
        retired_to = %report.retired_to.display(),
        "Store converted to redb; the old sled files were moved aside and can be removed once \
         the school is satisfied nothing is missing"
    );
    Ok(Some(report))
}

fn sync_dir(dir: &Path) -> StoreResult<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync the directory", dir, e))
}

/// Whether any of sled's files is in `dir`.
fn any_sled_file(dir: &Path) -> StoreResult<bool> {
    Ok(fs::read_dir(dir)
        .map_err(|e| io("cannot read", dir, e))?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_str().is_some_and(is_sled_file)))
}

/// A `sled-retired-*` directory without its note: a move that a crash interrupted.
fn unfinished_retirement(dir: &Path) -> StoreResult<Option<PathBuf>> {
    Ok(fs::read_dir(dir)
        .map_err(|e| io("cannot read", dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sled-retired-"))
                && !p.join(RETIRED_NOTE).exists()
        }))
}

/// Moves the sled files of `dir` into `sled-retired-<date>/` (resuming an unfinished move
/// into its directory), writes the note that marks it complete, and returns its path.
fn retire(dir: &Path) -> StoreResult<PathBuf> {
    let unfinished = unfinished_retirement(dir)?;
    let target = match unfinished {
        Some(t) => t,
        None => {
            let date = chrono::Utc::now().format("%Y-%m-%d");
            let mut t = dir.join(format!("sled-retired-{date}"));
            let mut n = 2;
            while t.exists() {
                t = dir.join(format!("sled-retired-{date}-{n}"));
                n += 1;
            }
            fs::create_dir(&t).map_err(|e| io("cannot create", &t, e))?;
            t
        }
    };
    for entry in fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))? {
        let entry = entry.map_err(|e| io("cannot read", dir, e))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(is_sled_file) {
            let to = target.join(&name);
            fs::rename(entry.path(), &to).map_err(|e| io("cannot move", &entry.path(), e))?;
        }
    }
    let note = target.join(RETIRED_NOTE);
    fs::write(
        &note,
        "This is the collector's store as it was before it was converted to redb \
         (caretaker.redb, one directory up).\nThe collector no longer reads it. Keep it until \
         the school is satisfied that nothing is missing, then remove this directory.\n",
    )
    .and_then(|()| fs::File::open(&note)?.sync_all())
    .map_err(|e| io("cannot write", &note, e))?;
    sync_dir(&target)?;
    sync_dir(dir)?;
    Ok(target)
}

/// A write transaction for the bulk copy: not fsynced, since the partial file is thrown away
/// after a crash anyway; the last transaction is durable and makes all of them so.
fn bulk(db: &Database) -> StoreResult<WriteTransaction> {
    let mut txn = db.begin_write().map_err(engine)?;
    txn.set_durability(Durability::None).map_err(engine)?;
    Ok(txn)
}

/// The index entries one stored event gets: the same as `events.rs` writes at append.
fn index_keys(e: &StoredEvent, id: u64) -> Vec<Vec<u8>> {
    let mut keys = vec![idx_key(IDX_KIND, &e.kind, id)];
    keys.extend(e.audience.iter().map(|a| idx_key(IDX_AUDIENCE, a, id)));
    if let Some(u) = &e.user {
        keys.push(idx_key(IDX_USER, u, id));
    }
    keys
}

/// The tables an event is written to, opened once per transaction.
struct EventTables<'t> {
    events: redb::Table<'t, u64, &'static [u8]>,
    by_device: redb::Table<'t, (&'static str, u64), (u64, u64)>,
    idx: redb::Table<'t, &'static [u8], ()>,
}

impl<'t> EventTables<'t> {
    fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
        Ok(Self {
            events: txn.open_table(EVENTS).map_err(engine)?,
            by_device: txn.open_table(BY_DEVICE).map_err(engine)?,
            idx: txn.open_table(IDX).map_err(engine)?,
        })
    }

    /// Writes one event under `id` with its device entry and indexes, and returns it. A record
    /// that does not decode is kept as it is, without index entries: it then reads back as
    /// corrupt, as it did from sled, instead of being dropped.
    fn put(&mut self, id: u64, key: &[u8], raw: &[u8]) -> StoreResult<Option<StoredEvent>> {
        let (device, seq) = split_event_key(key)?;
        self.events.insert(id, raw).map_err(engine)?;
        super::runs::put(&mut self.by_device, device, seq, id, 1)?;
        match decode::<StoredEvent>("event", raw) {
            Ok(e) => {
                for k in index_keys(&e, id) {
                    self.idx.insert(k.as_slice(), ()).map_err(engine)?;
                }
                Ok(Some(e))
            }
            Err(error) => {
                tracing::warn!(
                    %device,
                    seq,
                    %error,
                    "Copied an unreadable event as it is, unindexed"
                );
                Ok(None)
            }
        }
    }
}

/// Events copied in one transaction, to be folded into incidents once its tables are closed
/// (the fold opens them itself); `None` when the store has its incidents already.
struct Folding(Option<Vec<(u64, StoredEvent)>>);

impl Folding {
    fn keep(&mut self, id: u64, e: Option<StoredEvent>) {
        if let (Some(events), Some(e)) = (&mut self.0, e) {
            events.push((id, e));
        }
    }

    /// Folds the kept events, in the order copied, as the sled backend did when it opened a
    /// store from before incidents.
    fn fold(&mut self, txn: &WriteTransaction) -> StoreResult<()> {
        for (id, e) in self.0.iter_mut().flat_map(|events| events.drain(..)) {
            super::incidents::fold_event(txn, &e, id)?;
        }
        Ok(())
    }
}

fn convert(sled: &SledSource, partial: &Path) -> StoreResult<MigrationReport> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    let db = builder.create(partial).map_err(|e| {
        StoreError::engine(format!("creating {}", partial.display()), redb_failure(e))
    })?;
    let target = Engine::new(db);
    target.prepare()?;
    let events = copy_events(sled, &target.db)?;
    let devices = copy_records(sled, &target.db)?;
    copy_incidents(sled, &target.db)?;
    // The last transaction is durable, and with it all the ones before.
    let txn = target.db.begin_write().map_err(engine)?;
    txn.open_table(META)
        .map_err(engine)?
        .insert(META_NEXT_ARRIVAL, events.next_arrival)
        .map_err(engine)?;
    let incidents = txn
        .open_table(INCIDENTS)
        .map_err(engine)?
        .len()
        .map_err(engine)?;
    txn.commit().map_err(engine)?;
    Ok(MigrationReport {
        devices,
        events: events.copied,
        incidents,
        retired_to: PathBuf::new(),
    })
}

struct Copied {
    copied: u64,
    next_arrival: u64,
}

/// Copies the events in timeline order, each under its timeline id.
fn copy_events(sled: &SledSource, db: &Database) -> StoreResult<Copied> {
    // What the devices count is what there is to copy (sled counts each event stored once),
    // without a pass over the whole timeline first.
    let total: u64 = sled.devices()?.iter().map(|d| d.event_count).sum();
    let mut folding = Folding((sled.layout()? < LAYOUT_WITH_INCIDENTS).then(Vec::new));
    let mut timeline = sled.timeline.iter();
    let mut copied = 0u64;
    let mut next_arrival = 0u64;
    let mut logged = 0u64;
    let mut more = true;
    while more {
        let txn = bulk(db)?;
        let mut tables = EventTables::open(&txn)?;
        for _ in 0..CHUNK {
            let Some(item) = timeline.next() else {
                more = false;
                break;
            };
            let (tid, key) = item.map_err(sled_failure)?;
            let tid = be_u64(&tid, "timeline key")?;
            let Some(raw) = sled.events.get(&key).map_err(sled_failure)? else {
                // The timeline names an event that is not there: nothing to copy.
                continue;
            };
            folding.keep(tid, tables.put(tid, &key, &raw)?);
            copied += 1;
            next_arrival = tid + 1;
        }
        drop(tables);
        folding.fold(&txn)?;
        txn.commit().map_err(engine)?;
        if copied >= logged + PROGRESS_EVERY {
            logged = copied;
            tracing::info!(done = copied, total, "Converting the store: events copied");
        }
    }
    // Every event is on the timeline (sled's append writes both in one transaction); should
    // one not be, it is still copied, after the others.
    if copied != total {
        let txn = bulk(db)?;
        {
            let mut tables = EventTables::open(&txn)?;
            for item in sled.events.iter() {
                let (key, raw) = item.map_err(sled_failure)?;
                let (device, seq) = split_event_key(&key)?;
                let known = super::runs::contains(&tables.by_device, device, seq)?;
                if !known {
                    folding.keep(next_arrival, tables.put(next_arrival, &key, &raw)?);
                    next_arrival += 1;
                    copied += 1;
                }
            }
        }
        folding.fold(&txn)?;
        txn.commit().map_err(engine)?;
    }
    tracing::info!(
        done = copied,
        total,
        "Converting the store: all events copied"
    );
    Ok(Copied {
        copied,
        next_arrival,
    })
}

/// Copies every record of a sled tree with `put`, in write transactions of at most
/// `CHUNK_BYTES` each (digests carry their bodies and attachments, the audit log only grows):
/// memory stays bounded whatever the tree's size. Returns how many records were read.
fn copy_tree(
    db: &Database,
    tree: &sled::Tree,
    mut put: impl FnMut(&WriteTransaction, &[u8], &[u8]) -> StoreResult<()>,
) -> StoreResult<u64> {
    let mut records = tree.iter();
    let mut n = 0;
    loop {
        let txn = bulk(db)?;
        let mut bytes = 0;
        let mut more = false;
        for item in records.by_ref() {
            let (k, v) = item.map_err(sled_failure)?;
            put(&txn, &k, &v)?;
            n += 1;
            bytes += k.len() + v.len();
            if bytes >= CHUNK_BYTES {
                more = true;
                break;
            }
        }
        txn.commit().map_err(engine)?;
        if !more {
            return Ok(n);
        }
    }
}

/// Copies a sled tree keyed by text whose values are JSON records, unchanged.
fn copy_text_keyed(
    db: &Database,
    tree: &sled::Tree,
    table: TableDefinition<&str, &[u8]>,
    what: &str,
) -> StoreResult<u64> {
    copy_tree(db, tree, |txn, k, v| {
        txn.open_table(table)
            .map_err(engine)?
            .insert(text(k, what)?, v)
            .map_err(engine)?;
        Ok(())
    })
}

/// Copies a sled tree keyed by a big-endian id whose values are JSON records, unchanged,
/// leaving the tree's own bookkeeping behind (`id_of`).
fn copy_id_keyed(
    db: &Database,
    tree: &sled::Tree,
    table: TableDefinition<u64, &[u8]>,
) -> StoreResult<u64> {
    copy_tree(db, tree, |txn, k, v| {
        if let Some(id) = id_of(k) {
            txn.open_table(table)
                .map_err(engine)?
                .insert(id, v)
                .map_err(engine)?;
        }
        Ok(())
    })
}

/// Devices, tokens, policies, derived states, accounts, settings, audit and digests.
fn copy_records(sled: &SledSource, db: &Database) -> StoreResult<u64> {
    let devices = sled.devices()?;
    let txn = bulk(db)?;
    {
        let mut t = txn.open_table(DEVICES).map_err(engine)?;
        for d in &devices {
            t.insert(d.id.as_str(), encode(d).as_slice())
                .map_err(engine)?;
        }
        let mut t = txn.open_table(POLICIES).map_err(engine)?;
        for p in sled.policy_history()? {
            t.insert(p.version, encode(&p).as_slice()).map_err(engine)?;
        }
    }
    txn.commit().map_err(engine)?;
    copy_text_keyed(db, &sled.tokens, TOKENS, "token hash")?;
    copy_text_keyed(db, &sled.derived, DERIVED, "derived state key")?;
    copy_text_keyed(db, &sled.users, USERS, "username")?;
    copy_text_keyed(db, &sled.sessions, SESSIONS, "session hash")?;
    copy_text_keyed(db, &sled.api_tokens, API_TOKENS, "api token hash")?;
    copy_text_keyed(db, &sled.digest_cursors, DIGEST_CURSORS, "digest recipient")?;
    copy_id_keyed(db, &sled.settings, SETTINGS)?;
    copy_id_keyed(db, &sled.audit, AUDIT)?;
    copy_id_keyed(db, &sled.digests, DIGESTS)?;
    copy_tree(db, &sled.digest_pending, |txn, k, _| {
        txn.open_table(DIGEST_PENDING)
            .map_err(engine)?
            .insert(be_u64(k, "pending digest id")?, ())
            .map_err(engine)?;
        Ok(())
    })?;
    Ok(devices.len() as u64)
}

/// Incidents, their group map, their records and the device index.
fn copy_incidents(sled: &SledSource, db: &Database) -> StoreResult<()> {
    copy_tree(db, &sled.incidents, |txn, k, v| {
        let id = be_u64(k, "incident id")?;
        txn.open_table(INCIDENTS)
            .map_err(engine)?
            .insert(id, v)
            .map_err(engine)?;
        // Like an unreadable event, an unreadable incident is kept as it is, unindexed.
        match decode::<Incident>("incident", v) {
            Ok(inc) => {
                txn.open_table(DEVICE_INCIDENTS)
                    .map_err(engine)?
                    .insert((inc.device_id.as_str(), id), ())
                    .map_err(engine)?;
            }
            Err(error) => {
                tracing::warn!(
                    incident = id,
                    %error,
                    "Copied an unreadable incident as it is, unindexed"
                );
            }
        }
        Ok(())
    })?;
    copy_tree(db, &sled.incident_open, |txn, k, v| {
        if let Some(group) = group_of(k) {
            txn.open_table(INCIDENT_OPEN)
                .map_err(engine)?
                .insert(group, be_u64(v, "incident id")?)
                .map_err(engine)?;
        }
        Ok(())
    })?;
    copy_tree(db, &sled.incident_log, |txn, k, v| {
        if let Some(entry) = entry_of(k)? {
            txn.open_table(INCIDENT_LOG)
                .map_err(engine)?
                .insert(entry, v)
                .map_err(engine)?;
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;
