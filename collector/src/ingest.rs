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

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Submission>,
}

impl Ingest {
    /// Starts the writer. It stops when every handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(writer(store, rx));
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

async fn writer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Submission>) {
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
        let store2 = store.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = store2.append(&batches);
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
            let store2 = store.clone();
            let r = tokio::task::spawn_blocking(move || store2.append(std::slice::from_ref(&b)))
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
