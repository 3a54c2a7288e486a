//! Group commit: one writer task stores the batches of every stream together, one fsync per group.
//!
//! While a group is being written, new batches queue; the next group takes
//! them all. Under load that amortises the fsync over many agents with no
//! timer adding latency; when idle a batch is written alone at once.
//!
//! The `Gate` in front of it refuses new batches while the store cannot take them (closed
//! after a failed write, or its filesystem below the free-space floor), so agents keep their
//! events and retry later instead of filling the disk to the last byte; `check` keeps it
//! current and reopens a closed store.

use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::metrics::metrics;
use crate::store::space::{self, SpaceFloor};
use crate::store::{DeviceBatch, Store, StoreError, StoreResult};

/// Most events written in one group (bounds one transaction's memory).
const MAX_GROUP_EVENTS: usize = 50_000;

struct Submission {
    batch: DeviceBatch,
    /// The stream it came from, if any: once one of a stream's batches fails, its later
    /// batches are refused unwritten (see `Broken`).
    stream: Option<StreamId>,
    done: oneshot::Sender<StoreResult<()>>,
}

/// One event stream's identity for the writer (unique for the process's life).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(u64);

impl StreamId {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for StreamId {
    fn default() -> Self {
        Self::new()
    }
}

/// Streams one of whose batches failed to store.
///
/// The store keeps exactly-once with each device's high-water mark: a sequence at or below the
/// highest stored is a resend. So a stream's batches must be stored in order, and none after
/// one that failed: were batch 2 stored after batch 1 failed, batch 1's resend would read as a
/// duplicate and be lost. Batches already queued behind a failed one are therefore refused
/// unwritten (the agent resends them all on its next stream). Entries are forgotten after
/// `BROKEN_FOR`, long after anything queued by that stream has been through the writer.
#[derive(Default)]
struct Broken(std::collections::HashMap<StreamId, std::time::Instant>);

const BROKEN_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl Broken {
    fn mark(&mut self, stream: Option<StreamId>) {
        if let Some(s) = stream {
            let now = std::time::Instant::now();
            self.0.retain(|_, at| now.duration_since(*at) < BROKEN_FOR);
            self.0.insert(s, now);
        }
    }

    fn holds(&self, stream: Option<StreamId>) -> bool {
        stream.is_some_and(|s| self.0.contains_key(&s))
    }
}

fn broken_refusal() -> StoreError {
    StoreError::Conflict(
        "an earlier batch of this stream was not stored, so this one was not written either; \
         the agent resends both"
            .into(),
    )
}

/// Called with every group once it is durable, in the order it was stored (on a blocking
/// thread, before any submitter hears back): derived state folds events here, in store order.
pub type OnStored = Arc<dyn Fn(&[DeviceBatch]) + Send + Sync>;

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Submission>,
    gate: Arc<Gate>,
}

/// Whether new batches are accepted: read for every batch, so it is one lock and a clone.
#[derive(Debug, Default)]
pub struct Gate {
    refusal: RwLock<Option<String>>,
    /// The last reopen's error, so a store that keeps failing to open is logged once per
    /// distinct error, not every second.
    reopen_error: std::sync::Mutex<Option<String>>,
}

impl Gate {
    /// Why new batches are refused now, or `None`.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.read().expect("intake gate lock").clone()
    }

    fn reopen_failed(&self, error: String) {
        let mut last = self.reopen_error.lock().expect("reopen error lock");
        if last.as_deref() != Some(error.as_str()) {
            tracing::warn!(error = %error, "Store not reopened; trying again every second");
            *last = Some(error);
        }
    }

    fn set(&self, refusal: Option<String>) {
        let mut current = self.refusal.write().expect("intake gate lock");
        match (&*current, &refusal) {
            (None, Some(why)) => {
                tracing::warn!(reason = %why, "Refusing new events until the store can take them")
            }
            (Some(_), None) => tracing::info!("Accepting events again"),
            _ => {}
        }
        metrics().store_writable.set(i64::from(refusal.is_none()));
        *current = refusal;
    }
}

/// What a closed store means for agents.
fn closed_refusal(why: &str) -> String {
    format!(
        "the collector's store cannot write ({why}); events stay on the laptop and are sent \
         once it recovers"
    )
}

/// Looks at the store once: reopens it if a write closed it, and refuses new batches while it
/// is closed or the free space on its filesystem (`statvfs` of `path`) is below `floor`.
/// After a reopen, `reread` runs before the gate opens, so what the caller holds in memory is
/// read again from the disk before any new batch can change it. Blocking.
pub fn check(
    store: &dyn Store,
    path: &Path,
    floor: SpaceFloor,
    gate: &Gate,
    reread: impl FnOnce(),
) {
    let space = space::space(path);
    // Reopening needs room (`space::OPEN_ROOM`); waiting for the floor as well means the store
    // does not open only to refuse events.
    let room = space
        .as_ref()
        .is_ok_and(|s| s.free >= floor.bytes(s.total).max(space::OPEN_ROOM));
    if room && store.closed_because().is_some() {
        match store.recover() {
            Ok(true) => reread(),
            Ok(false) => {}
            Err(e) => gate.reopen_failed(e.to_string()),
        }
    }
    let refusal = match store.closed_because() {
        Some(why) => Some(closed_refusal(&why)),
        None => match space {
            Ok(s) => space::below_floor(s, floor).map(|why| {
                format!("{why}; events stay on the laptop and are sent once there is room")
            }),
            Err(e) => {
                // Not knowing is no reason to refuse: the store itself still fails safely.
                tracing::debug!(error = %e, "Free space on the store's filesystem unknown");
                None
            }
        },
    };
    gate.set(refusal);
}

impl Ingest {
    /// Starts the writer on `tasks`. It stops once every handle is dropped and what was
    /// queued is stored.
    pub fn start(
        store: Arc<dyn Store>,
        on_stored: OnStored,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let gate = Arc::new(Gate::default());
        tasks.spawn(writer(store, on_stored, rx, gate.clone()));
        Self { tx, gate }
    }

    /// The gate in front of the writer.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Stores a batch; resolves once it is durable.
    pub async fn commit(&self, batch: DeviceBatch) -> StoreResult<()> {
        self.submit(batch, None).await?.await
    }

    /// Queues a batch of `stream` for the writer and returns what resolves once it is
    /// durable. A stream's batches are written in the order they were queued, so a caller
    /// pipelining several must queue them one after another (await this before the next).
    pub async fn submit(
        &self,
        batch: DeviceBatch,
        stream: Option<StreamId>,
    ) -> StoreResult<impl Future<Output = StoreResult<()>> + use<>> {
        let (done, rx) = oneshot::channel();
        let closed = || StoreError::engine_msg("the store writer has stopped");
        self.tx
            .send(Submission {
                batch,
                stream,
                done,
            })
            .await
            .map_err(|_| closed())?;
        Ok(async move { rx.await.map_err(|_| closed())? })
    }
}

/// Stores a group and, once it is durable, hands it to `on_stored`.
///
/// A panic in `on_stored` is caught here: the events are durable and must be acknowledged,
/// and what the hook keeps (derived state) is an optimisation its owner rebuilds from the
/// events. Left to unwind, it would fail this group's acks though the events are stored, and
/// whatever lock the hook held would stay poisoned and fail every later group too.
fn append_then(
    store: &dyn Store,
    on_stored: &OnStored,
    batches: &[DeviceBatch],
) -> StoreResult<u64> {
    let n = store.append(batches)?;
    crate::metrics::metrics().events_stored.inc_by(n);
    if let Err(panic) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_stored(batches)))
    {
        let error = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        error!(%error, batches = batches.len(), "Derived state not updated for a stored group; the events are acknowledged");
    }
    Ok(n)
}

async fn writer(
    store: Arc<dyn Store>,
    on_stored: OnStored,
    mut rx: mpsc::Receiver<Submission>,
    gate: Arc<Gate>,
) {
    let mut broken = Broken::default();
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut events = group[0].batch.events.len();
        while events < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(s) => {
                    events += s.batch.events.len();
                    group.push(s);
                }
                Err(_) => break,
            }
        }
        group.retain_mut(|s| {
            if !broken.holds(s.stream) {
                return true;
            }
            let (done, _) = oneshot::channel();
            let _ = std::mem::replace(&mut s.done, done).send(Err(broken_refusal()));
            false
        });
        if group.is_empty() {
            continue;
        }
        let (batches, rest): (Vec<DeviceBatch>, Vec<_>) = group
            .into_iter()
            .map(|s| (s.batch, (s.stream, s.done)))
            .unzip();
        let (streams, dones): (Vec<_>, Vec<_>) = rest.into_iter().unzip();
        let (store2, hook) = (store.clone(), on_stored.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let r = append_then(store2.as_ref(), &hook, &batches);
            (batches, r)
        })
        .await;
        let Ok((batches, result)) = joined else {
            error!("The store writer panicked; affected agents will resend");
            continue;
        };
        if result.is_ok() {
            for done in dones {
                let _ = done.send(Ok(()));
            }
            continue;
        }
        if let Some(why) = store.closed_because() {
            for &s in &streams {
                broken.mark(s);
            }
            // The engine failed (a full disk, say) and the store closed: every batch would fail
            // the same way. Refuse new ones at once rather than at the next check.
            error!(error = %why, batches = dones.len(), "Events could not be stored; the agents keep them and will resend");
            metrics().store_errors.inc_by(dones.len() as u64);
            gate.set(Some(closed_refusal(&why)));
            for done in dones {
                let _ = done.send(Err(StoreError::Closed(why.clone())));
            }
            continue;
        }
        // One bad batch (say, a device deleted meanwhile) must not fail the
        // others: write them one by one so each gets its own answer.
        for ((b, done), stream) in batches.into_iter().zip(dones).zip(streams) {
            if broken.holds(stream) {
                let _ = done.send(Err(broken_refusal()));
                continue;
            }
            let (store2, hook) = (store.clone(), on_stored.clone());
            let r = tokio::task::spawn_blocking(move || {
                append_then(store2.as_ref(), &hook, std::slice::from_ref(&b))
            })
            .await
            .unwrap_or_else(|e| Err(StoreError::engine("", e)))
            .map(|_| ());
            if let Err(e) = &r {
                broken.mark(stream);
                metrics().store_errors.inc();
                error!(error = %e, "Events could not be stored; the agent keeps them and will resend");
            }
            let _ = done.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use chrono::Utc;

    use crate::store::{RedbStore, StoredEvent, test_device};

    fn batch(device: &str, seq: u64) -> DeviceBatch {
        DeviceBatch {
            device_id: device.into(),
            events: vec![StoredEvent {
                device_id: device.into(),
                seq,
                kind: "load.synthetic".into(),
                occurred_at: Utc::now(),
                received_at: Utc::now(),
                user: None,
                details: Default::default(),
                severity: "info".into(),
                audience: vec![],
                assessment: None,
            }],
            facts: None,
            state: Default::default(),
            seen_at: Utc::now(),
        }
    }

    /// A writer over a fresh store holding device "a", calling `hook` after each group.
    fn started(hook: OnStored) -> (tempfile::TempDir, Arc<dyn Store>, Ingest) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        store.insert_device(&test_device("a")).unwrap();
        let ingest = Ingest::start(store.clone(), hook, &tokio_util::task::TaskTracker::new());
        (dir, store, ingest)
    }

    /// After one of a stream's batches failed, its later ones are held back (they would raise
    /// the device's high-water mark over the failed one's resend), others' are not, and the
    /// mark is forgotten once nothing of that stream can still be queued.
    #[test]
    fn a_stream_with_a_failed_batch_writes_nothing_more() {
        let (failed, other) = (StreamId::new(), StreamId::new());
        let mut broken = Broken::default();
        broken.mark(Some(failed));
        broken.mark(None);
        assert!(broken.holds(Some(failed)));
        assert!(!broken.holds(Some(other)));
        assert!(!broken.holds(None), "a batch from no stream stands alone");
        broken
            .0
            .insert(failed, std::time::Instant::now() - BROKEN_FOR);
        broken.mark(Some(other));
        assert!(!broken.holds(Some(failed)), "forgotten after BROKEN_FOR");
    }

    /// Batches queued with `submit` are written in the order queued.
    #[tokio::test]
    async fn submitted_batches_are_stored_in_queue_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let hook: OnStored = {
            let order = order.clone();
            Arc::new(move |group: &[DeviceBatch]| {
                let mut order = order.lock().unwrap();
                order.extend(group.iter().flat_map(|b| b.events.iter().map(|e| e.seq)));
            })
        };
        let (_dir, _store, ingest) = started(hook);
        let stream = StreamId::new();
        let mut waits = Vec::new();
        for seq in 1..=50 {
            waits.push(ingest.submit(batch("a", seq), Some(stream)).await.unwrap());
        }
        for w in waits.into_iter().rev() {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (1..=50).collect::<Vec<_>>());
    }

    /// A hook that panics (holding its lock, as the software fold does) costs only what the
    /// hook keeps: that group and every later one are acknowledged and stored.
    #[tokio::test]
    async fn a_panicking_hook_never_stops_acks() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook: OnStored = {
            let seen = seen.clone();
            Arc::new(move |group: &[DeviceBatch]| {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.push(group[0].events[0].seq);
                assert_ne!(group[0].events[0].seq, 2, "a bug in a derived-state fold");
            })
        };
        let (_dir, store, ingest) = started(hook);
        for seq in 1..=4 {
            ingest
                .commit(batch("a", seq))
                .await
                .unwrap_or_else(|e| panic!("seq {seq} not acknowledged: {e}"));
        }
        assert_eq!(store.device("a").unwrap().unwrap().highest_seq, 4);
        assert_eq!(
            *seen.lock().unwrap_or_else(|p| p.into_inner()),
            [1, 2, 3, 4]
        );
    }
}
