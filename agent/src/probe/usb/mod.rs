//! Removable-media probe: reports USB devices and media, holds storage the policy forbids
//! (authorized_default = 0, as USBGuard does) and scans permitted media through clamd.
//!
//! Failure modes (the requirement left these to us):
//! - Devices that are not mass storage (keyboards, mice, hubs, cameras) are authorised the moment
//!   they appear; only class-8 interfaces fall under the storage rule.
//! - Clean stop: `authorized_default` is put back to 1 on every root hub we changed.
//! - Crash/kill -9: `authorized_default` stays 0, so a USB keyboard plugged in before the agent
//!   restarts stays dead (already-attached ones keep working; laptop keyboards are not USB).
//!   The shipped unit (`installer/systemd/caretaker-agent.service`) therefore has
//!   `Restart=always` and an `ExecStopPost=` that writes 1 to every
//!   `/sys/bus/usb/devices/usb*/authorized_default` (systemd runs ExecStopPost after crashes too).
//!   At start the agent re-enumerates and re-decides every attached device, so storage that slipped
//!   through during the gap is detached again.
//!   A hung, not dead, agent stops sending systemd's watchdog keep-alives (`os::sdnotify`);
//!   the unit's `WatchdogSec=30` then kills it, and the same ExecStopPost and restart follow.
//! - Composite devices (e.g. keyboard + storage in one, "BadUSB") fall under the storage rule as a
//!   whole: authorisation is per device, not per interface.
//! - A controller that appears later (a dock) gets authorized_default=0 when its root hub arrives.
//! - Lost uevents (ENOBUFS) trigger a resync from sysfs that reports arrivals and departures.
//! - allow_after_scan: the device is authorised, every block device on it is set read-only
//!   (`blockdev --setro`) before anything else can mount it read-write, the agent mounts each
//!   filesystem read-only in a private directory and scans it; clean → `blockdev --setrw`;
//!   infected → the device is deauthorised (detached). Incomplete scan (clamd down) → stays read-only.
//! - A permission that expires while its stick is attached does not eject it (that would corrupt
//!   writes in progress); expiry applies from the next insertion.
//! - Nobody logged in → pupil rules.
//! - A scan that stops moving (a `mount` or a read on a dead stick that never returns): each
//!   scan is a task the probe owns (`scan.rs`) with its own progress clock; one that has not
//!   moved for `scan_stall_after` is aborted (a mount still under way is detached the moment
//!   it returns, `os::linux::mount`) and reported as
//!   `agent.probe_stalled` with the device; a gated stick is detached and stays so until it is
//!   plugged in again, never let through unscanned. A restart of the probe aborts its scans.
//!
//! This file is the loop, its state, and blocks and mounts; `config.rs` what the probe touches,
//! `devices.rs` each device's decision and authorisation, `media.rs` the medium scans.
pub mod clamd;
mod config;
pub mod decide;
mod devices;
mod inputs;
mod media;
pub mod parse;
pub mod scan;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::{EventSink, NewEvent};
use crate::os::linux::usb_sysfs::{self as sysfs, BlockFacts};
use caretaker_proto::policy::PolicyDocument;
use caretaker_proto::policy::removable_media::RemovableMediaPolicy;
pub use config::UsbProbeConfig;
use decide::{Decision, UsbDeviceFacts};
pub use inputs::UsbProbeInputs;
use media::{ScanDone, ScanWatch, blockdev};
use parse::{MountEntry, Uevent};

/// Entry point the agent spawns: opens the kernel uevent socket and runs until `shutdown`.
pub async fn run(
    config: UsbProbeConfig,
    policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(256);
    let sock = match crate::os::linux::uevent::UeventSocket::open() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("usb probe: cannot open the uevent socket: {e}");
            return;
        }
    };
    let reader_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                _ = reader_stop.cancelled() => break,
                r = sock.recv(&mut buf) => match r {
                    Ok(n) => {
                        let (ev, warnings) = parse::parse_uevent(&buf[..n]);
                        for w in warnings { tracing::debug!("uevent: {w}"); }
                        if let Some(ev) = ev && tx.send(ev).await.is_err() { break; }
                    }
                    Err(e) => {
                        tracing::warn!("uevent socket: {e}");
                        // ENOBUFS: the kernel dropped uevents; rebuild the picture from sysfs.
                        if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error())
                            && tx.send(resync_event()).await.is_err()
                        {
                            break;
                        }
                    }
                }
            }
        }
    });
    run_with_events(config, policy, sink, shutdown, rx).await
}

/// Pseudo-uevent asking the loop to re-read sysfs (after the socket overflowed).
pub const RESYNC: &str = "caretaker-resync";

pub fn resync_event() -> Uevent {
    Uevent {
        action: RESYNC.into(),
        devpath: String::new(),
        subsystem: String::new(),
        devtype: None,
        seqnum: None,
        vars: Default::default(),
    }
}

/// Where a tracked device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Authorised (by us or already).
    Through,
    /// Left or made unauthorised by policy; re-evaluated when policy or user changes.
    Held,
    /// Detached because a scan found malware; not re-authorised by policy changes.
    Quarantined,
    /// Detached because its scan stalled; not re-authorised until it is plugged in again.
    Unscanned,
}

struct Tracked {
    facts: UsbDeviceFacts,
    decision: Decision,
    hold: Hold,
}

struct State {
    cfg: UsbProbeConfig,
    sink: EventSink,
    devices: HashMap<String, Tracked>,
    blocks: HashMap<String, BlockFacts>,
    mounts: HashSet<(String, String)>,
    scanned: HashSet<String>,
    hubs_held: Vec<String>,
    user: watch::Receiver<Option<String>>,
    /// Scans in progress: owned here, so dropping the probe (a restart) aborts them.
    scans: JoinSet<ScanDone>,
    scan_watch: HashMap<tokio::task::Id, ScanWatch>,
    shutdown: CancellationToken,
}

/// The probe's loop over a stream of parsed uevents (tests feed recorded ones over a fake /sys).
pub async fn run_with_events(
    cfg: UsbProbeConfig,
    mut policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
    mut events: mpsc::Receiver<Uevent>,
) {
    let mut inputs = cfg.inputs.clone();
    let mut user_live = true;
    let mut st = State {
        cfg,
        sink,
        devices: HashMap::new(),
        blocks: HashMap::new(),
        mounts: HashSet::new(),
        scanned: HashSet::new(),
        hubs_held: Vec::new(),
        user: inputs.user.clone(),
        scans: JoinSet::new(),
        scan_watch: HashMap::new(),
        shutdown: shutdown.clone(),
    };
    let pol = policy.borrow_and_update().removable_media.clone();
    st.apply_hub_default(&pol);
    // What is already attached: devices first, then their block devices.
    for dp in sysfs::enumerate_usb_devices(&st.cfg.sys_root) {
        st.device_added(&dp, true, &pol, &inputs).await;
    }
    for dp in sysfs::enumerate_block(&st.cfg.sys_root) {
        st.block_added(&dp).await;
    }
    st.poll_mounts(&pol).await;
    let mut mounts_changed =
        crate::os::linux::mountwatch::MountWatch::new(&st.cfg.mountinfo, st.cfg.mount_poll);
    // A quarter of the gap: a stalled scan is aborted at most a quarter late.
    let mut scan_check =
        tokio::time::interval((st.cfg.scan_stall_after / 4).max(Duration::from_millis(10)));
    scan_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        crate::probe::liveness::beat();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = crate::probe::liveness::idle() => {}
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let pol = policy.borrow().removable_media.clone();
                st.handle(ev, &pol, &inputs).await;
            }
            r = policy.changed() => {
                if r.is_err() { break; }
                let pol = policy.borrow_and_update().removable_media.clone();
                st.apply_hub_default(&pol);
                st.reevaluate(&pol, &inputs).await;
            }
            r = inputs.user.changed(), if user_live => {
                if r.is_err() { user_live = false; continue; }
                let pol = policy.borrow().removable_media.clone();
                st.reevaluate(&pol, &inputs).await;
            }
            Some(joined) = st.scans.join_next_with_id(), if !st.scans.is_empty() => {
                st.scan_joined(joined).await
            }
            _ = scan_check.tick(), if !st.scan_watch.is_empty() => st.check_scans().await,
            _ = mounts_changed.changed() => {
                let pol = policy.borrow().removable_media.clone();
                st.poll_mounts(&pol).await;
            }
        }
    }
    // Scans saw the stop (their token is a child of it) and unmount on the way out; a stuck
    // one is aborted when `st` drops.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while st.scans.join_next().await.is_some() {}
    })
    .await;
    // Clean stop: never leave the machine refusing new keyboards.
    for hub in std::mem::take(&mut st.hubs_held) {
        if let Err(e) = sysfs::set_authorized_default(&st.cfg.sys_root, &hub, true) {
            tracing::error!("usb probe: cannot restore authorized_default on {hub}: {e}");
        }
    }
}

impl State {
    fn current_user(&self) -> Option<String> {
        self.user.borrow().clone()
    }

    async fn emit(&self, kind: &str, user: Option<String>, details: Map<String, Value>) {
        self.sink.emit(NewEvent::now(kind, user, details)).await;
    }

    async fn handle(&mut self, ev: Uevent, pol: &RemovableMediaPolicy, inputs: &UsbProbeInputs) {
        match (
            ev.subsystem.as_str(),
            ev.devtype.as_deref(),
            ev.action.as_str(),
        ) {
            ("usb", Some("usb_device"), "add") => {
                self.device_added(&ev.devpath, false, pol, inputs).await
            }
            ("usb", Some("usb_device"), "remove") => {
                if let Some(t) = self.devices.remove(&ev.devpath) {
                    let mut d = t.facts.details();
                    d.insert("sys_name".into(), json!(ev.sys_name()));
                    let user = inputs.user.borrow().clone();
                    self.emit("usb.removed", user, d).await;
                }
            }
            ("block", _, "add") => {
                self.block_added(&ev.devpath).await;
                // The desktop may have mounted it before this uevent was handled (a busy
                // laptop): the mount-table change came first and was not yet this stick's.
                self.poll_mounts(pol).await;
            }
            (_, _, RESYNC) => self.resync(pol, inputs).await,
            ("block", _, "remove") => {
                let name = ev.sys_name().to_owned();
                self.blocks.remove(&name);
                self.scanned.remove(&name);
            }
            _ => {}
        }
    }

    async fn block_added(&mut self, devpath: &str) {
        let b = sysfs::read_block(&self.cfg.sys_root, devpath);
        let Some(usb) = b.usb_devpath.clone() else {
            return;
        };
        let gated = self
            .devices
            .get(&usb)
            .is_some_and(|t| t.decision == Decision::AllowAfterScan);
        self.blocks.insert(b.name.clone(), b.clone());
        // A disk holding partitions is not itself a filesystem: its partitions are gated instead
        // (making the disk read-only would also make them read-only).
        if gated && !b.has_partitions {
            // Read-only before the desktop (or anyone) can mount it read-write.
            blockdev(&self.cfg.dev_root, &b.name, true).await;
            if self.cfg.clamd.is_some() && self.scanned.insert(b.name.clone()) {
                self.spawn_scan(usb, b.name.clone(), None, true);
            }
        }
    }

    async fn poll_mounts(&mut self, pol: &RemovableMediaPolicy) {
        // Only USB block devices are reported: with none attached there is nothing to read. Forget
        // what was mounted, so a stick that comes back at the same mount point is reported again.
        if self.blocks.is_empty() {
            self.mounts.clear();
            return;
        }
        let Ok(text) = crate::os::linux::mountwatch::read(&self.cfg.mountinfo).await else {
            return;
        };
        let (entries, _) = parse::parse_mountinfo(&text);
        // Only mounts of known USB blocks are remembered: one whose block is not known yet is
        // reported once it is (`handle` polls again after a block arrives).
        let known = |m: &&MountEntry| {
            self.blocks
                .contains_key(m.source.rsplit('/').next().unwrap_or(""))
        };
        let now: HashSet<(String, String)> = entries
            .iter()
            .filter(known)
            .map(|m| (m.source.clone(), m.mount_point.clone()))
            .collect();
        for m in &entries {
            let key = (m.source.clone(), m.mount_point.clone());
            if self.mounts.contains(&key) {
                continue;
            }
            let name = m.source.rsplit('/').next().unwrap_or("").to_owned();
            if let Some(b) = self.blocks.get(&name).cloned() {
                self.media_mounted(&b, m, pol).await;
            }
        }
        self.mounts = now;
    }

    async fn media_mounted(&mut self, b: &BlockFacts, m: &MountEntry, pol: &RemovableMediaPolicy) {
        let usb = b.usb_devpath.clone().unwrap_or_default();
        let Some(t) = self.devices.get(&usb) else {
            return;
        };
        // No volume label and no mount point: people label sticks with their names, and
        // desktops mount under /media/<login>/<label>; no policy needs either (PRIVACY.md).
        let mut d = t.facts.details();
        d.insert("block".into(), json!(b.name));
        d.insert("removable".into(), json!(b.removable));
        d.insert("size_bytes".into(), json!(b.size_bytes));
        d.insert("fs_type".into(), json!(m.fs_type));
        d.insert("read_only".into(), json!(m.read_only));
        d.insert(
            "by_agent".into(),
            json!(Path::new(&m.mount_point).starts_with(&self.cfg.scan_mount_dir)),
        );
        self.emit("media.mounted", self.current_user(), d).await;
        let gated = t.decision == Decision::AllowAfterScan;
        if !gated
            && pol.scan_on_mount
            && self.cfg.clamd.is_some()
            && self.scanned.insert(b.name.clone())
        {
            self.spawn_scan(
                usb,
                b.name.clone(),
                Some(PathBuf::from(&m.mount_point)),
                false,
            );
        }
    }
}

#[cfg(test)]
mod tests;
