//! Probes: each watches one thing on the laptop and turns what it sees into events.
//!
//! A closed set: `ProbeConfig` lists them and `spawn` builds each. No plug-in
//! registry; a new probe is a new variant and a new module.

pub mod antivirus;
pub mod facts;
pub mod lifecycle;
pub mod liveness;
pub mod screen_lock;
pub mod software;
#[cfg(target_os = "linux")]
pub mod usb;
#[cfg(windows)]
#[path = "usb_windows/mod.rs"]
pub mod usb;

use std::sync::Arc;
use std::time::Duration;

use caretaker_proto::policy::PolicyDocument;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::EventSink;
use crate::status::StatusBoard;
use liveness::Supervised;

/// What every probe gets from the agent.
#[derive(Clone)]
pub struct ProbeContext {
    pub sink: EventSink,
    pub policy: watch::Receiver<Arc<PolicyDocument>>,
    pub shutdown: CancellationToken,
    /// Where stalled probes are shown (`caretaker-agent status`).
    pub status: StatusBoard,
    /// Replaces every probe's longest expected gap (`probe_stall_after`; tests, slow machines).
    pub stall_after: Option<Duration>,
}

/// One configured probe.
#[derive(Debug, Clone)]
pub enum ProbeConfig {
    Lifecycle(lifecycle::LifecycleConfig),
    Antivirus(antivirus::AntivirusProbeConfig),
    Software(software::SoftwareProbeConfig),
    ScreenLock(screen_lock::ScreenLockConfig),
    Usb(usb::UsbProbeConfig),
    Facts(facts::FactsProbeConfig),
}

const MINUTE: Duration = Duration::from_secs(60);

impl ProbeConfig {
    /// Name, longest expected gap between two beats while working normally, and whether
    /// aborting the probe and starting it afresh is safe.
    fn liveness(&self) -> (&'static str, Duration, bool) {
        match self {
            // Restarting would send a second `agent.started`, which the collector reads as
            // the whole agent restarting: report only.
            ProbeConfig::Lifecycle(_) => ("lifecycle", 2 * MINUTE, false),
            // A check is bounded by clamd's 5 s timeouts and a few small reads; a restart
            // checks again and sends the status it finds.
            ProbeConfig::Antivirus(_) => ("antivirus", 2 * MINUTE, true),
            // The first inventory walks every home folder, hashing what it finds; a restart
            // sends the inventory again, which the collector folds like any inventory.
            ProbeConfig::Software(_) => ("software", 15 * MINUTE, true),
            // Locking waits seconds for a confirmation. Not restarted: it may have a locker
            // running on a session, and a fresh start would not know it was ours.
            ProbeConfig::ScreenLock(_) => ("screen_lock", 3 * MINUTE, false),
            // Handling a device is sysfs reads and writes, `blockdev` and a 2 KiB read; a
            // restart re-enumerates and re-decides every attached device, as at agent start.
            ProbeConfig::Usb(_) => ("usb", 2 * MINUTE, true),
            ProbeConfig::Facts(_) => ("facts", 2 * MINUTE, true),
        }
    }
}

/// Starts every probe under the liveness supervisor, itself a task on `tracker`.
pub fn spawn(probes: Vec<ProbeConfig>, ctx: ProbeContext, tracker: &TaskTracker) {
    let supervised = probes
        .into_iter()
        .map(|p| {
            let (name, gap, restart) = p.liveness();
            let ctx2 = ctx.clone();
            Supervised {
                name,
                max_gap: ctx.stall_after.unwrap_or(gap),
                restart,
                start: Box::new(move || start(p.clone(), ctx2.clone())),
            }
        })
        .collect();
    tracker.spawn(liveness::supervise(
        supervised,
        ctx.sink,
        ctx.status,
        ctx.shutdown,
    ));
}

/// One probe's future; built again for each restart, with the policy as it is then.
fn start(p: ProbeConfig, ctx: ProbeContext) -> liveness::ProbeFuture {
    match p {
        ProbeConfig::Lifecycle(cfg) => Box::pin(lifecycle::run(cfg, ctx.sink, ctx.shutdown)),
        ProbeConfig::Antivirus(cfg) => {
            Box::pin(antivirus::run(cfg, ctx.policy, ctx.sink, ctx.shutdown))
        }
        ProbeConfig::Usb(cfg) => Box::pin(usb::run(cfg, ctx.policy, ctx.sink, ctx.shutdown)),
        ProbeConfig::ScreenLock(cfg) => {
            Box::pin(screen_lock::run(cfg, ctx.policy, ctx.sink, ctx.shutdown))
        }
        ProbeConfig::Software(cfg) => {
            Box::pin(software::run(cfg, ctx.policy, ctx.sink, ctx.shutdown))
        }
        ProbeConfig::Facts(cfg) => Box::pin(facts::run(cfg, ctx.sink, ctx.shutdown)),
    }
}
