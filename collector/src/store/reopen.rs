//! `Reopening`: a store engine behind a handle that closes it at its first failed write and reopens it from disk.
//!
//! The embedded engine cannot be trusted after a failed write (ENOSPC, say): redb refuses every
//! later write with `PreviousIo` until the database is opened again. So at the first engine error
//! this handle drops the engine: nothing is read from it after that (callers get
//! `StoreError::Closed`), and `recover` opens the store again, which yields exactly what is
//! durable. Every holder of the store shares this one handle, so all of them see the reopened
//! engine. `RedbStore` is this handle over its engine.
//!
//! Every trait method in the traits' method lists (`methods.rs`) is forwarded through `with`;
//! the few outside them (`closed_because`, `recover`, `erase_subject`) are this handle's own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::space;
use super::{
    AccountStore, ApiTokenRecord, AuditEntry, AuditPage, Device, DeviceBatch, DigestCursor,
    DigestRecord, DigestStore, EntryAction, EventPage, EventQuery, Incident, IncidentEntry,
    IncidentQuery, IncidentStore, PolicyVersion, SessionRecord, SettingsVersion, Store, StoreError,
    StoreResult, StoredEvent, TokenRecord, TokenRefusal, UserRecord,
};
use super::{
    ErasureCounts, Hold, HoldTarget, PrivacyStore, PurgeCounts, PurgeCutoffs, SubjectRecords,
};
use super::{
    account_store_methods, digest_store_methods, incident_store_methods, privacy_store_methods,
    store_methods,
};

/// A store engine that can be opened from a path: what `Reopening` needs to reopen it.
pub trait Backend: Store + Sized {
    /// Opens (or creates) the engine's store at `path`. A store still held by an engine this
    /// process dropped a moment ago (an operation finishing on it) is waited for briefly.
    fn open(path: &Path) -> StoreResult<Self>;

    /// Rewrites the store's files so that nothing an erasure renamed survives in them (old
    /// copies in freed pages), and returns the engine opened again on them. `Reopening`
    /// calls it with no other holder of the engine.
    fn rewrite_clean(self, path: &Path) -> StoreResult<Self>;
}

/// An embedded store at one path, reopened after a failed write.
pub struct Reopening<E> {
    path: PathBuf,
    state: RwLock<State<E>>,
    /// One reopen at a time (a second caller waits and then finds the store open).
    reopening: Mutex<()>,
}

enum State<E> {
    Open(Arc<E>),
    /// Closed after a failed write; the reason is the engine's error.
    Closed(String),
}

impl<E: Backend> Reopening<E> {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        room_to_open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            state: RwLock::new(State::Open(Arc::new(E::open(path)?))),
            reopening: Mutex::new(()),
        })
    }

    fn engine(&self) -> StoreResult<Arc<E>> {
        match &*self.state.read().expect("store state lock") {
            State::Open(e) => Ok(e.clone()),
            State::Closed(why) => Err(StoreError::Closed(why.clone())),
        }
    }

    /// Runs `f` on the open engine; an engine error closes it.
    fn with<T>(&self, f: impl FnOnce(&E) -> StoreResult<T>) -> StoreResult<T> {
        let engine = self.engine()?;
        let result = f(&engine);
        if let Err(e) = &result
            && let Some(why) = e.engine_reason()
        {
            // Said plainly where it is so (the refusals, /healthz and the API show it): the
            // operator's remedy, room on the disk, is not a damaged store's.
            let why = if e.is_storage_full() {
                format!("the collector's disk is full: {why}")
            } else {
                why
            };
            self.close(&engine, &why);
        }
        result
    }

    fn close(&self, failed: &Arc<E>, why: &str) {
        let mut state = self.state.write().expect("store state lock");
        // Only the engine that failed: a reopened one must not be closed by a late error from
        // an operation that began on the old one.
        if matches!(&*state, State::Open(e) if Arc::ptr_eq(e, failed)) {
            *state = State::Closed(why.to_string());
            tracing::error!(
                error = %why,
                "Store write failed; the store is closed until it can be reopened from disk"
            );
        }
    }
}

#[cfg(test)]
impl<E: Backend> Reopening<E> {
    /// Closes the store as a failed write does, so tests can reach what follows one.
    pub(crate) fn close_as_if_failed(&self, why: &str) {
        let engine = self.engine().expect("the store is open");
        self.close(&engine, why);
    }
}

/// Refuses to open the store with less than `space::OPEN_ROOM` free on its filesystem.
fn room_to_open(path: &Path) -> StoreResult<()> {
    // A store about to be created is measured on the directory that will hold it.
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return Ok(());
    };
    match space::space(existing) {
        Ok(s) if s.free < space::OPEN_ROOM => Err(StoreError::engine_msg(format!(
            "only {} MiB is free on the filesystem of {}: the store needs {} MiB free to open \
             safely (its recovery writes, and running out of space there can damage it)",
            s.free >> 20,
            path.display(),
            space::OPEN_ROOM >> 20
        ))),
        _ => Ok(()),
    }
}

impl<E: Backend> Store for Reopening<E> {
    store_methods!(forward_methods, via with;);

    fn closed_because(&self) -> Option<String> {
        match &*self.state.read().expect("store state lock") {
            State::Open(_) => None,
            State::Closed(why) => Some(why.clone()),
        }
    }

    fn recover(&self) -> StoreResult<bool> {
        let _one = self.reopening.lock().expect("store reopen lock");
        if self.closed_because().is_none() {
            return Ok(false);
        }
        // The failed engine was dropped when it was closed; an operation still running on it
        // holds the engine's lock a moment longer, which `Backend::open` waits out.
        room_to_open(&self.path)?;
        let engine = E::open(&self.path)?;
        *self.state.write().expect("store state lock") = State::Open(Arc::new(engine));
        tracing::warn!(path = %self.path.display(), "Store reopened from disk after a failed write");
        Ok(true)
    }
}

impl<E: Backend> AccountStore for Reopening<E> {
    account_store_methods!(forward_methods, via with;);
}

impl<E: Backend> IncidentStore for Reopening<E> {
    incident_store_methods!(forward_methods, via with;);
}

impl<E: Backend> DigestStore for Reopening<E> {
    digest_store_methods!(forward_methods, via with;);
}

/// How long an erasure waits for operations already running on the engine to finish before
/// it rewrites the file.
const REWRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl<E: Backend> PrivacyStore for Reopening<E> {
    privacy_store_methods!(forward_methods, via with;);

    /// Renames in the engine, then has the engine rewrite its files with no one else using
    /// it: callers wait on the state lock meanwhile (they are not refused), and operations
    /// already running are waited for, since a write finishing on the old file after the
    /// rewrite would be lost.
    fn erase_subject(&self, user: &str, pseudonym: &str) -> StoreResult<ErasureCounts> {
        let counts = self.with(|e| e.erase_subject(user, pseudonym))?;
        let _one = self.reopening.lock().expect("store reopen lock");
        let mut state = self.state.write().expect("store state lock");
        let rewriting = State::Closed("the store file is being rewritten after an erasure".into());
        let State::Open(shared) = std::mem::replace(&mut *state, rewriting) else {
            let State::Closed(why) = &*state else {
                unreachable!("replaced by Closed")
            };
            return Err(StoreError::Closed(why.clone()));
        };
        let deadline = std::time::Instant::now() + REWRITE_WAIT;
        let mut shared = shared;
        let engine = loop {
            match Arc::try_unwrap(shared) {
                Ok(e) => break e,
                Err(still) if std::time::Instant::now() < deadline => {
                    shared = still;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(still) => {
                    *state = State::Open(still);
                    return Err(StoreError::Conflict(
                        "the name was replaced, but the store stayed busy, so its file may still \
                         hold old copies of it: run the erasure again"
                            .into(),
                    ));
                }
            }
        };
        match engine.rewrite_clean(&self.path) {
            Ok(e) => {
                *state = State::Open(Arc::new(e));
                Ok(counts)
            }
            Err(err) => {
                // The engine was consumed: leave the store closed for `recover` to reopen
                // from disk (the file is the old one, or the complete new one).
                *state = State::Closed(err.to_string());
                tracing::error!(error = %err, "Store rewrite after an erasure failed; the store is closed until it reopens");
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::RedbStore;
    use super::*;

    /// A write that failed for want of space closes the store saying the disk is full, with
    /// the engine's own message; any other engine failure closes it with that message alone.
    #[test]
    fn a_full_disk_closes_the_store_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let failed = store.with(|_| Err::<(), _>(StoreError::engine("cannot write", full)));
        assert!(failed.unwrap_err().is_storage_full());
        assert_eq!(
            store.closed_because().as_deref(),
            Some("the collector's disk is full: cannot write: No space left on device")
        );
        assert!(matches!(store.devices(), Err(StoreError::Closed(_))));

        assert!(store.recover().unwrap());
        let other = std::io::Error::other("bad page");
        let _ = store.with(|_| Err::<(), _>(StoreError::engine("cannot read", other)));
        assert_eq!(
            store.closed_because().as_deref(),
            Some("cannot read: bad page")
        );
    }
}
