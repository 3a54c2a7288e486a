//! Probes: each watches one thing on the laptop and turns what it sees into events.
//!
//! A closed set: `ProbeConfig` lists them and `spawn` builds each. No plug-in
//! registry; a new probe is a new variant and a new module.

pub mod antivirus;
pub mod facts;
pub mod lifecycle;
pub mod screen_lock;
pub mod software;
pub mod usb;

use std::sync::Arc;

use caretaker_proto::policy::PolicyDocument;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::EventSink;

/// What every probe gets from the agent.
#[derive(Clone)]
pub struct ProbeContext {
    pub sink: EventSink,
    pub policy: watch::Receiver<Arc<PolicyDocument>>,
    pub shutdown: CancellationToken,
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

/// Starts every probe on `tracker`.
pub fn spawn(probes: Vec<ProbeConfig>, ctx: ProbeContext, tracker: &TaskTracker) {
    for p in probes {
        let ctx = ctx.clone();
        match p {
            ProbeConfig::Lifecycle(cfg) => {
                tracker.spawn(lifecycle::run(cfg, ctx.sink, ctx.shutdown))
            }
            ProbeConfig::Antivirus(cfg) => {
                tracker.spawn(antivirus::run(cfg, ctx.policy, ctx.sink, ctx.shutdown))
            }
            ProbeConfig::Usb(cfg) => {
                tracker.spawn(usb::run(cfg, ctx.policy, ctx.sink, ctx.shutdown))
            }
            ProbeConfig::ScreenLock(cfg) => {
                tracker.spawn(screen_lock::run(cfg, ctx.policy, ctx.sink, ctx.shutdown))
            }
            ProbeConfig::Software(cfg) => {
                tracker.spawn(software::run(cfg, ctx.policy, ctx.sink, ctx.shutdown))
            }
            ProbeConfig::Facts(cfg) => tracker.spawn(facts::run(cfg, ctx.sink, ctx.shutdown)),
        };
    }
}
