//! `RedbStore`: the embedded store on redb, with events kept in arrival order and exactly-once decided by each device's high-water mark.
//!
//! One file, `<store dir>/caretaker.redb`. Events are keyed by an increasing arrival id, so a
//! group commit appends at the right edge of the `events` B-tree instead of landing on a random
//! page per event (what kept the `(device, seq)` layout at a tenth of the rate). A device's
//! `highest_seq` decides what is new: a sequence at or below it is a resend (even one that was
//! never stored: a full spool drops its oldest and says so), one above it is stored, gaps
//! allowed. That holds because each device has one live stream, which sends in sequence order.
//!
//! Tables (this module's; `accounts.rs`, `incidents.rs` and `digests.rs` define theirs):
//! `devices` (id → JSON), `events` (arrival id → JSON), `device_runs` ((device, first seq) → (first
//! arrival id, count), one run per batch: per-device listing and `device_events_after`; `runs.rs`), `idx` (`tag len value arrival-id` → (): the
//! kind, audience and user indexes, each value's entries contiguous and in arrival order),
//! `tokens` (hash → JSON), `policies` (version → JSON), `derived` (`name/device` → JSON),
//! `meta` (the layout version and the next arrival id). A group commit is one write
//! transaction over them and the incident tables, committed with `Durability::Immediate` (one
//! fsync) before `append` returns.
//!
//! `Engine` is the engine; the store is `RedbStore`, the engine behind the handle that reopens
//! it after a failed write (`reopen.rs`). The other store traits are implemented for `Engine`
//! in the sibling files, which share `engine`, `encode`, `decode` and `all` below; `rewrite.rs`
//! is the file rewrite after an erasure (`Backend::rewrite_clean`).

mod accounts;
mod digests;
mod erase;
mod events;
mod incidents;
mod meta;
pub(super) mod migrate;
mod privacy;
#[cfg(test)]
mod privacy_tests;
mod rewrite;
mod runs;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{StoreError, StoreResult};
pub(super) use runs::BY_DEVICE;

/// The store as the rest of the collector holds it.
pub type RedbStore = super::reopen::Reopening<Engine>;

/// The database file inside the store directory.
pub const FILE: &str = "caretaker.redb";

/// redb's page cache. Its default (1 GiB) is more than the collector's whole memory budget;
/// appends touch only the right edge of `events` and the indexes, so a smaller cache costs
/// little there, and listings read recent events, which it keeps.
const CACHE_BYTES: usize = 256 << 20;

/// The layout version this code writes.
const LAYOUT: u64 = 1;

pub(super) const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(super) const IDX: TableDefinition<&[u8], ()> = TableDefinition::new("idx");
pub(super) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
pub(super) const POLICIES: TableDefinition<u64, &[u8]> = TableDefinition::new("policies");
pub(super) const DERIVED: TableDefinition<&str, &[u8]> = TableDefinition::new("derived");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` keys.
pub(super) const META_LAYOUT: &str = "layout";
/// The arrival id the next stored event gets.
pub(super) const META_NEXT_ARRIVAL: &str = "next_arrival";

pub(super) const IDX_AUDIENCE: u8 = b'a';
pub(super) const IDX_USER: u8 = b'u';
pub(super) const IDX_KIND: u8 = b'k';

/// A secondary index key: `tag`, the value's length and bytes, then the arrival id, so one
/// value's entries are contiguous and in arrival order (the scheme sled's `idx` tree uses).
pub(super) fn idx_key(tag: u8, value: &str, id: u64) -> Vec<u8> {
    let mut k = idx_prefix(tag, value);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn idx_prefix(tag: u8, value: &str) -> Vec<u8> {
    let v = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
    let mut k = Vec::with_capacity(v.len() + 11);
    k.push(tag);
    k.extend_from_slice(&(v.len() as u16).to_be_bytes());
    k.extend_from_slice(v);
    k
}

/// The arrival id at the end of an index key.
pub(super) fn idx_id(key: &[u8]) -> StoreResult<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("index key".into()))
}

/// A redb failure as a store error. redb's error types do not expose the `std::io::Error`
/// inside them as a `source()`, so it is taken out here, under redb's own message, for
/// `StoreError::is_storage_full` and the chain a user sees.
pub(super) fn engine<E: std::fmt::Display + Into<redb::Error>>(e: E) -> StoreError {
    StoreError::engine("", redb_failure(e))
}

pub(super) fn redb_failure<E: std::fmt::Display + Into<redb::Error>>(e: E) -> RedbFailure {
    let message = e.to_string();
    let io = match e.into() {
        redb::Error::Io(io) => Some(io),
        _ => None,
    };
    RedbFailure { message, io }
}

/// redb's message, with the I/O error behind it when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct RedbFailure {
    message: String,
    #[source]
    io: Option<std::io::Error>,
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always serialise")
}

pub(super) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Every record of `table`, decoded, in key order.
pub(super) fn all<K: redb::Key + 'static, R: DeserializeOwned>(
    table: &impl ReadableTable<K, &'static [u8]>,
    what: &str,
) -> StoreResult<Vec<R>> {
    table
        .iter()
        .map_err(engine)?
        .map(|r| {
            let (_, v) = r.map_err(engine)?;
            decode(what, v.value())
        })
        .collect()
}

/// The redb engine: one database file.
pub struct Engine {
    pub(super) db: Database,
    /// Where the retention purge's pass has got (`privacy.rs`).
    purge: privacy::PurgeState,
}

impl Engine {
    /// The engine over an open database.
    pub(super) fn new(db: Database) -> Self {
        Self {
            db,
            purge: Default::default(),
        }
    }
}

/// The id after the highest one a table (whose ids are its last key plus one) ever gave out:
/// after `last`, and after what a purge removed (`floor`, a `meta` key), so none is reused.
pub(super) fn next_id(txn: &WriteTransaction, last: Option<u64>, floor: &str) -> StoreResult<u64> {
    let meta = txn.open_table(META).map_err(engine)?;
    let floor = meta.get(floor).map_err(engine)?.map_or(0, |v| v.value());
    Ok(last.unwrap_or(0).max(floor) + 1)
}

impl Engine {
    /// Opens (or creates) the store in the directory `dir`.
    ///
    /// redb locks the file for one process. A store this process dropped a moment ago is still
    /// locked while an operation finishes on it, so a held lock is retried for a few seconds
    /// before being reported as another process's.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::engine(
                format!("cannot create the store directory {}", dir.display()),
                e,
            )
        })?;
        // A school upgrading from the sled store: converted once, here, before the file opens.
        migrate::from_sled_if_present(dir)?;
        rewrite::discard_partial(dir)?;
        let file = dir.join(FILE);
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        // After an unclean stop (kill -9, power loss, a failed write) redb walks the whole file
        // to rebuild its allocator state before it opens, which takes a while on a large store:
        // say so, and how far it has got, so a slow start is not mistaken for a hang.
        let shown = AtomicU32::new(u32::MAX);
        let shown_file = file.clone();
        builder.set_repair_callback(move |session| {
            let tenth = (session.progress() * 10.0) as u32;
            if shown.swap(tenth, Ordering::Relaxed) != tenth {
                tracing::warn!(
                    path = %shown_file.display(),
                    done_percent = tenth * 10,
                    "Store being repaired after an unclean stop"
                );
            }
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        let db = loop {
            match builder.create(&file) {
                Ok(db) => break db,
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::engine_msg(format!(
                        "the store {} is in use by another process \
                         (is `caretaker-collector serve` running?)",
                        file.display()
                    )));
                }
                Err(e) => {
                    return Err(StoreError::engine(
                        format!("opening {}", file.display()),
                        redb_failure(e),
                    ));
                }
            }
        };
        let store = Self::new(db);
        store.prepare()?;
        Ok(store)
    }

    /// Creates every table, so that a read before the first write finds them empty rather than
    /// missing, and records the layout.
    fn prepare(&self) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(engine)?;
        create_tables(&txn)?;
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            let layout = meta.get(META_LAYOUT).map_err(engine)?.map(|v| v.value());
            match layout {
                Some(l) if l > LAYOUT => {
                    return Err(StoreError::Corrupt(format!(
                        "the store has layout {l}, newer than this collector's ({LAYOUT}): \
                         run the collector that wrote it"
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert(META_LAYOUT, LAYOUT).map_err(engine)?;
                }
            }
        }
        txn.commit().map_err(engine)
    }
}

fn create_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(DEVICES).map_err(engine)?;
    txn.open_table(EVENTS).map_err(engine)?;
    txn.open_table(BY_DEVICE).map_err(engine)?;
    txn.open_table(IDX).map_err(engine)?;
    txn.open_table(TOKENS).map_err(engine)?;
    txn.open_table(POLICIES).map_err(engine)?;
    txn.open_table(DERIVED).map_err(engine)?;
    txn.open_table(META).map_err(engine)?;
    accounts::create_tables(txn)?;
    incidents::create_tables(txn)?;
    digests::create_tables(txn)?;
    privacy::create_tables(txn)?;
    Ok(())
}

impl super::reopen::Backend for Engine {
    fn open(path: &Path) -> StoreResult<Self> {
        Engine::open(path)
    }

    fn rewrite_clean(self, path: &Path) -> StoreResult<Self> {
        rewrite::rewrite(self, path)
    }
}
