//! The redb file rewritten after an erasure, so no old copy of an erased name survives in it.
//!
//! redb writes copy-on-write: a renamed record's old version stays in a freed page until that
//! page is reused, and `Database::compact` moves live pages without clearing the free ones
//! left below the new end. So after an erasure the whole database is copied, table by table,
//! into a fresh `caretaker.redb.erasing`, made durable and renamed over `caretaker.redb`
//! (`rewrite`); the fresh file only ever held the records as they are after the erasure.

use std::path::Path;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle, Value as RedbValue,
};

use super::super::{StoreError, StoreResult};
use super::accounts::{API_TOKENS, AUDIT, SESSIONS, SETTINGS, USERS};
use super::digests::{DIGEST_CURSORS, DIGEST_PENDING, DIGESTS};
use super::incidents::{DEVICE_INCIDENTS, INCIDENT_LOG, INCIDENT_OPEN, INCIDENTS};
use super::privacy::HOLDS;
use super::{
    BY_DEVICE, DERIVED, DEVICES, EVENTS, Engine, FILE, IDX, META, POLICIES, TOKENS, engine,
};

/// The fresh copy an erasure writes before it replaces the store's file.
const ERASING: &str = "caretaker.redb.erasing";

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
