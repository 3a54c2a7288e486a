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
    done: oneshot::Sender<StoreResult<()>>,
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
    /// Starts the writer. It stops when every handle is dropped.
    pub fn start(store: Arc<dyn Store>, on_stored: OnStored) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let gate = Arc::new(Gate::default());
        tokio::spawn(writer(store, on_stored, rx, gate.clone()));
        Self { tx, gate }
    }

    /// The gate in front of the writer.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Stores a batch; resolves once it is durable.
    pub async fn commit(&self, batch: DeviceBatch) -> StoreResult<()> {
        let (done, rx) = oneshot::channel();
        let closed = || StoreError::Engine("the store writer has stopped".into());
        self.tx
            .send(Submission { batch, done })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
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
        let (batches, dones): (Vec<DeviceBatch>, Vec<_>) =
            group.into_iter().map(|s| (s.batch, s.done)).unzip();
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
        for (b, done) in batches.into_iter().zip(dones) {
            let (store2, hook) = (store.clone(), on_stored.clone());
            let r = tokio::task::spawn_blocking(move || {
                append_then(store2.as_ref(), &hook, std::slice::from_ref(&b))
            })
            .await
            .unwrap_or_else(|e| Err(StoreError::Engine(e.to_string())))
            .map(|_| ());
            if let Err(e) = &r {
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

    use crate::store::{SledStore, StoredEvent, test_device};

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

    /// A hook that panics (holding its lock, as the software fold does) costs only what the
    /// hook keeps: that group and every later one are acknowledged and stored.
    #[tokio::test]
    async fn a_panicking_hook_never_stops_acks() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        store.insert_device(&test_device("a")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook: OnStored = {
            let seen = seen.clone();
            Arc::new(move |group: &[DeviceBatch]| {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.push(group[0].events[0].seq);
                assert_ne!(group[0].events[0].seq, 2, "a bug in a derived-state fold");
            })
        };
        let ingest = Ingest::start(store.clone(), hook);
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
