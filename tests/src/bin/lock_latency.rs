//! Benchmark: time from a session's idle timeout to a display really held by a locker,
//! median of 10 runs, each on a fresh rig (private bus, dbusmock logind, Xvfb) with a
//! silent desktop, so the probe asks logind, then starts i3lock itself.
//!
//! Run: cargo run --release -p caretaker-tests --bin caretaker-lock-latency   (as root, with the rig's Debian packages)

use std::sync::Arc;
use std::time::{Duration, Instant};

use caretaker_agent::event::EventSink;
use caretaker_agent::probe::screen_lock::{ScreenLockConfig, run};
use caretaker_proto::policy::{PolicyDocument, ScreenLockPolicy};
use caretaker_tests::desktop_rig::DesktopRig;
use tokio_util::sync::CancellationToken;

const RUNS: usize = 10;
const TIMEOUT_SECS: u64 = 2;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut latencies = Vec::new();
    for i in 0..RUNS {
        let rig = DesktopRig::start().await;
        rig.add_session("c1", 65534, "nobody", "x11", &rig.display)
            .await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let (_ptx, prx) = tokio::sync::watch::channel(Arc::new(PolicyDocument {
            screen_lock: ScreenLockPolicy {
                idle_timeout_secs: TIMEOUT_SECS,
                ..Default::default()
            },
            ..Default::default()
        }));
        let shutdown = CancellationToken::new();
        let cfg = ScreenLockConfig {
            system_bus_address: Some(rig.bus_address.clone()),
            ..Default::default()
        };
        let task = tokio::spawn(run(cfg, prx, EventSink::new(tx), shutdown.clone()));
        // Last input now: the timeout falls exactly TIMEOUT_SECS later.
        rig.input();
        let due = Instant::now() + Duration::from_secs(TIMEOUT_SECS);
        let give_up = due + Duration::from_secs(10);
        let locked_at = loop {
            // Time of the first failed grab, confirmed by a second one 100 ms later (a
            // probe's momentary test grab is not a lock).
            if rig.keyboard_grabbed_once() {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(100)).await;
                if rig.keyboard_grabbed_once() {
                    break Some(t);
                }
            }
            if Instant::now() > give_up {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        shutdown.cancel();
        let _ = task.await;
        match locked_at {
            Some(t) => {
                let ms = t.saturating_duration_since(due).as_millis();
                println!("run {}: locked {ms} ms after the timeout", i + 1);
                latencies.push(ms);
            }
            None => println!("run {}: not locked within 10 s of the timeout", i + 1),
        }
        drop(rig);
    }
    latencies.sort_unstable();
    if latencies.is_empty() {
        println!("no run locked");
        std::process::exit(1);
    }
    let median = if latencies.len() % 2 == 0 {
        (latencies[latencies.len() / 2 - 1] + latencies[latencies.len() / 2]) / 2
    } else {
        latencies[latencies.len() / 2]
    };
    println!(
        "median {median} ms over {} runs (min {}, max {}); target < 1000 ms",
        latencies.len(),
        latencies[0],
        latencies[latencies.len() - 1]
    );
}
