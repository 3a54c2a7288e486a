//! The purge task: removes records past their retention (the settings' `retention` section) in bounded batches that leave the store to ingest between them, and records what went (counts only) in the audit log.
//!
//! The store decides what is expired and what a legal hold keeps (`store::privacy`); this
//! decides when. One collector purges a shared store: the one leading the digests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::accounts::{self, Actor};
use crate::auth::Role;
use crate::service::{Collector, blocking};
use crate::store::{PurgeCounts, PurgeCutoffs, StoreError};

/// How often the purge runs by default.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(3600);
/// Records removed per store call (one transaction each).
pub const DEFAULT_BATCH: usize = 5_000;
/// The first run comes this soon after start (or after one period, if that is shorter).
const FIRST_RUN_AFTER: Duration = Duration::from_secs(60);
/// The least pause between batches.
const MIN_PAUSE: Duration = Duration::from_millis(20);

/// When and how much the purge removes.
#[derive(Debug, Clone, Copy)]
pub struct PurgeOptions {
    pub every: Duration,
    pub batch: usize,
}

impl Default for PurgeOptions {
    fn default() -> Self {
        Self {
            every: DEFAULT_EVERY,
            batch: DEFAULT_BATCH,
        }
    }
}

/// Why a purge run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the collector is stopping")]
    Stopping,
}

/// What one run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeRun {
    pub counts: PurgeCounts,
    pub batches: u64,
}

/// The audit entry's detail: counts per kind of record, never content.
pub fn audit_detail(c: &PurgeCounts) -> String {
    format!(
        "technical_events={} safeguarding_events={} incidents={} incident_entries={} \
         audit_entries={} digests={}",
        c.technical_events,
        c.safeguarding_events,
        c.incidents,
        c.incident_entries,
        c.audit_entries,
        c.digests
    )
}

/// The pause after a batch that took `took`: as long again (at least `MIN_PAUSE`), so the
/// writer's group commits get the store at least half the time and ingest never stalls
/// behind a purge.
pub fn pause_after(took: Duration) -> Duration {
    took.max(MIN_PAUSE)
}

fn system() -> Actor {
    Actor {
        name: "system".into(),
        role: Role::NetworkManager,
        address: None,
        session: None,
        must_change_password: false,
    }
}

/// One purge run: batches until nothing more has expired. `cutoffs` come from the settings
/// as they are when the run starts.
pub async fn purge_once(
    c: &Arc<Collector>,
    cutoffs: PurgeCutoffs,
    batch: usize,
    shutdown: &CancellationToken,
) -> Result<PurgeRun, PurgeError> {
    // Saved software state must cover every event a batch may remove, or a rebuild from it
    // (the next start, a panicking fold) would fold fewer installs. The ingest hook saves it
    // after each group; this repairs any save that failed, and an embedded store's first
    // (durable) purge commit makes them durable before any event goes.
    let c2 = c.clone();
    blocking(move || Ok(c2.save_software_states())).await?;
    let mut run = PurgeRun::default();
    loop {
        if shutdown.is_cancelled() {
            return Err(PurgeError::Stopping);
        }
        let (store, cut) = (c.store.clone(), cutoffs.clone());
        let started = Instant::now();
        let removed = blocking(move || store.purge_expired(&cut, batch)).await?;
        if removed.total() == 0 {
            return Ok(run);
        }
        run.batches += 1;
        run.counts.add(&removed);
        crate::metrics::metrics().purged(&removed);
        tokio::select! {
            _ = shutdown.cancelled() => return Err(PurgeError::Stopping),
            _ = tokio::time::sleep(pause_after(started.elapsed())) => {}
        }
    }
}

/// Runs one purge if this collector should, and records it.
async fn tick(c: &Arc<Collector>, batch: usize, shutdown: &CancellationToken) {
    if c.store.closed_because().is_some() {
        return; // logged by the store; the purge waits for it to reopen
    }
    let store = c.store.clone();
    match blocking(move || store.lead_digests()).await {
        Ok(true) => {}
        Ok(false) => return, // another collector sharing the store purges it
        Err(e) => {
            tracing::warn!(error = %e, "Expired records not purged: cannot tell which collector leads");
            return;
        }
    }
    let c2 = c.clone();
    let settings = match blocking(move || c2.settings()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Expired records not purged: settings unreadable");
            return;
        }
    };
    let cutoffs = settings.retention.cutoffs(Utc::now());
    let started = Instant::now();
    let (run, failed) = match purge_once(c, cutoffs, batch, shutdown).await {
        Ok(run) => (run, None),
        Err(PurgeError::Stopping) => return,
        Err(e) => (PurgeRun::default(), Some(e)),
    };
    if let Some(e) = failed {
        tracing::warn!(error = %e, "Expired records not purged");
        return;
    }
    let n = run.counts;
    if n.total() == 0 {
        tracing::debug!("Nothing has expired");
        return;
    }
    let c2 = c.clone();
    if let Err(e) = blocking(move || c2.reload_devices()).await {
        tracing::warn!(error = %e, "Devices not re-read after the purge; their event counts are stale");
    }
    let (store, detail) = (c.store.clone(), audit_detail(&n));
    let _ = blocking(move || {
        accounts::audit(store.as_ref(), &system(), "records_purged", "", &detail);
        Ok(())
    })
    .await;
    tracing::info!(
        technical_events = n.technical_events,
        safeguarding_events = n.safeguarding_events,
        incidents = n.incidents,
        incident_entries = n.incident_entries,
        audit_entries = n.audit_entries,
        digests = n.digests,
        batches = run.batches,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Expired records purged"
    );
}

/// Runs the purge every `opts.every` (the first soon after start) until `shutdown`.
pub async fn run(c: Arc<Collector>, opts: PurgeOptions, shutdown: CancellationToken) {
    let first = tokio::time::Instant::now() + opts.every.min(FIRST_RUN_AFTER);
    let mut every = tokio::time::interval_at(first, opts.every);
    // A long purge is not followed by a burst of catch-up runs.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        tick(&c, opts.batch.max(1), &shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_detail_is_counts_only() {
        let c = PurgeCounts {
            technical_events: 3,
            safeguarding_events: 1,
            incidents: 2,
            incident_entries: 5,
            audit_entries: 0,
            digests: 4,
        };
        assert_eq!(
            audit_detail(&c),
            "technical_events=3 safeguarding_events=1 incidents=2 incident_entries=5 \
             audit_entries=0 digests=4"
        );
    }

    #[test]
    fn ingest_gets_the_store_at_least_as_long_as_a_batch_held_it() {
        assert_eq!(pause_after(Duration::from_millis(1)), MIN_PAUSE);
        assert_eq!(
            pause_after(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }
}
