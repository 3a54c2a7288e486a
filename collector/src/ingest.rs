//! Group commit: one writer task stores the batches of every stream together, one fsync per group.
//!
//! While a group is being written, new batches queue; the next group takes
//! them all. Under load that amortises the fsync over many agents with no
//! timer adding latency; when idle a batch is written alone at once.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::error;

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
}

impl Ingest {
    /// Starts the writer. It stops when every handle is dropped.
    pub fn start(store: Arc<dyn Store>, on_stored: OnStored) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(writer(store, on_stored, rx));
        Self { tx }
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
fn append_then(
    store: &dyn Store,
    on_stored: &OnStored,
    batches: &[DeviceBatch],
) -> StoreResult<u64> {
    let n = store.append(batches)?;
    crate::metrics::metrics().events_stored.inc_by(n);
    on_stored(batches);
    Ok(n)
}

async fn writer(store: Arc<dyn Store>, on_stored: OnStored, mut rx: mpsc::Receiver<Submission>) {
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
                error!(error = %e, "Events could not be stored; the agent keeps them and will resend");
            }
            let _ = done.send(r);
        }
    }
}
