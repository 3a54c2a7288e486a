//! Device-facts probe: what a network manager records of an asset (model, serial, OS, kernel,
//! CPU, memory, root disk, boot time, battery health), sent as `device.facts` at start and again
//! only when a re-read differs meaningfully from what was last sent ([`decide`]).
//!
//! A steady machine sends one event per agent start; the collector keeps the latest on the
//! device record, and the dashboard works out uptime from the boot time.

pub mod decide;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::event::{EventSink, NewEvent};
use crate::os::facts::RawFacts;
use decide::{DeviceFacts, changed_meaningfully, device_facts};

pub const FACTS_EVENT: &str = "device.facts";

#[derive(Debug, Clone, PartialEq)]
pub struct FactsProbeConfig {
    /// Where DMI and power-supply attributes are read ("/sys"; a temp dir in tests).
    pub sys_root: PathBuf,
    /// How often to re-read; a re-read is sent only if it changed meaningfully.
    pub interval: Duration,
}

impl Default for FactsProbeConfig {
    fn default() -> Self {
        Self {
            sys_root: PathBuf::from("/sys"),
            interval: Duration::from_secs(15 * 60),
        }
    }
}

/// Reads the machine's facts; blocking, so it runs on tokio's blocking pool.
pub type Reader = Arc<dyn Fn() -> RawFacts + Send + Sync>;

pub async fn run(cfg: FactsProbeConfig, sink: EventSink, shutdown: CancellationToken) {
    let root = cfg.sys_root.clone();
    let reader: Reader = Arc::new(move || crate::os::facts::read(&root));
    run_with(cfg.interval, reader, sink, shutdown).await
}

/// The probe's loop over any reader (tests script one).
pub async fn run_with(
    interval: Duration,
    read: Reader,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let mut sent: Option<DeviceFacts> = None;
    let mut tick = tokio::time::interval(interval);
    // After a suspend, one re-read, not a burst.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        super::liveness::beat();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = super::liveness::idle() => continue,
            _ = tick.tick() => {}
        }
        let read = read.clone();
        let started = std::time::Instant::now();
        let raw = match tokio::task::spawn_blocking(move || read()).await {
            Ok(raw) => raw,
            Err(e) => {
                warn!(error = %e, "Reading the device facts failed");
                continue;
            }
        };
        debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "Read the device facts"
        );
        let facts = device_facts(&raw);
        if sent
            .as_ref()
            .is_some_and(|s| !changed_meaningfully(s, &facts))
        {
            continue;
        }
        if !sink
            .emit(NewEvent::now(FACTS_EVENT, None, facts.details()))
            .await
        {
            return;
        }
        sent = Some(facts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::facts::RawDisk;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    const GIB: u64 = 1 << 30;

    fn machine(free_gib: u64, kernel: &str) -> RawFacts {
        RawFacts {
            kernel: Some(kernel.into()),
            memory_bytes: 8 * GIB,
            root_disk: Some(RawDisk {
                total_bytes: 100 * GIB,
                available_bytes: free_gib * GIB,
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sends_at_start_then_only_meaningful_changes() {
        let now = Arc::new(Mutex::new(machine(50, "6.1.0")));
        let reads = Arc::new(Mutex::new(0u32));
        let reader: Reader = {
            let (now, reads) = (now.clone(), reads.clone());
            Arc::new(move || {
                *reads.lock().unwrap() += 1;
                now.lock().unwrap().clone()
            })
        };
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let interval = Duration::from_secs(15 * 60);
        let task = tokio::spawn(run_with(interval, reader, EventSink::new(tx), stop.clone()));
        // An expected event that never comes fails the test instead of hanging it.
        let next = async |rx: &mut mpsc::Receiver<NewEvent>| {
            tokio::time::timeout(interval * 2, rx.recv())
                .await
                .expect("an event within two intervals")
                .expect("the probe is running")
        };

        let first = next(&mut rx).await;
        assert_eq!(first.kind, FACTS_EVENT);
        assert_eq!(first.details["kernel"], "6.1.0");
        assert_eq!(first.user, None);

        // A day of re-reads, with free space wandering within the step (5 GiB here): silence.
        for free in [49, 47, 51, 46] {
            *now.lock().unwrap() = machine(free, "6.1.0");
            tokio::time::sleep(interval * 6).await;
        }
        assert!(rx.try_recv().is_err());
        assert!(*reads.lock().unwrap() >= 24, "it did re-read");

        // Compared with what was sent, not the last read: a slow drift is reported once it adds up.
        *now.lock().unwrap() = machine(44, "6.1.0");
        tokio::time::sleep(interval).await;
        let drift = next(&mut rx).await;
        assert_eq!(drift.details["disk_free_bytes"], 44 * GIB);

        *now.lock().unwrap() = machine(44, "6.1.0-27");
        tokio::time::sleep(interval).await;
        assert_eq!(next(&mut rx).await.details["kernel"], "6.1.0-27");
        tokio::time::sleep(interval * 4).await;
        assert!(rx.try_recv().is_err());

        stop.cancel();
        task.await.unwrap();
        assert!(rx.recv().await.is_none(), "nothing on stop");
    }
}
