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
pub mod clamd;
pub mod decide;
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
use clamd::ClamdAddr;
use decide::{Decision, UsbDeviceFacts, UserInfo, decide};
use media::{ScanDone, ScanWatch, blockdev};
use parse::{MountEntry, Uevent};

/// Everything the probe touches, overridable for tests.
#[derive(Debug, Clone)]
pub struct UsbProbeConfig {
    /// "/sys".
    pub sys_root: PathBuf,
    /// "/proc/self/mountinfo".
    pub mountinfo: PathBuf,
    /// "/etc/group" (pupil groups).
    pub etc_group: PathBuf,
    /// "/dev" (block nodes for blockdev and mount).
    pub dev_root: PathBuf,
    /// None: no scanning.
    pub clamd: Option<ClamdAddr>,
    /// Write authorized_default/authorized (needs root). False: report only, whatever the policy.
    pub manage_authorization: bool,
    /// Private directory for the agent's own read-only mounts (allow_after_scan).
    pub scan_mount_dir: PathBuf,
    /// Extra mount options for the agent's mounts, e.g. "iocharset=iso8859-1" without nls_utf8.
    pub mount_options: String,
    /// How often mountinfo is re-read when the kernel cannot signal changes to it (a plain file
    /// in tests); the real `/proc/self/mountinfo` signals POLLPRI and is read only on change.
    pub mount_poll: Duration,
    /// The longest a medium's scan may go without progress (a directory listed, a file opened,
    /// bytes read for clamd) before it is aborted as stalled. Longer than clamd's 150 s I/O
    /// timeout, so a clamd that stops answering ends the scan as incomplete by that timeout
    /// first; what reaches this is a hang nothing else bounds (`mount`, a listing or an open
    /// on a dead stick).
    pub scan_stall_after: Duration,
    /// Runs a scan (tests put a fake one here).
    pub scanner: scan::Scanner,
    /// Live inputs from the rest of the agent.
    pub inputs: UsbProbeInputs,
}

impl Default for UsbProbeConfig {
    fn default() -> Self {
        Self {
            sys_root: "/sys".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            etc_group: "/etc/group".into(),
            dev_root: "/dev".into(),
            clamd: Some(ClamdAddr::Unix("/var/run/clamav/clamd.ctl".into())),
            manage_authorization: true,
            scan_mount_dir: "/run/caretaker/media".into(),
            mount_options: String::new(),
            mount_poll: Duration::from_secs(1),
            scan_stall_after: Duration::from_secs(5 * 60),
            scanner: scan::Scanner::default(),
            inputs: UsbProbeInputs::default(),
        }
    }
}

/// Live inputs from elsewhere in the agent.
#[derive(Debug, Clone)]
pub struct UsbProbeInputs {
    /// The user logged in at the console, if known.
    pub user: watch::Receiver<Option<String>>,
    /// None when the antivirus is current; Some(reason) when not (flagged on every insert).
    pub antivirus_problem: watch::Receiver<Option<String>>,
}

impl Default for UsbProbeInputs {
    /// Nobody known to be logged in, antivirus assumed current (fixed values).
    fn default() -> Self {
        Self {
            user: watch::channel(None).1,
            antivirus_problem: watch::channel(None).1,
        }
    }
}

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

fn decision_name(d: &Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::AllowAfterScan => "allow_after_scan",
        Decision::Block(_) => "block",
    }
}

impl State {
    fn enforcing(&self, pol: &RemovableMediaPolicy) -> bool {
        self.cfg.manage_authorization && pol.enforce
    }

    /// Holds new devices on every root hub while enforcing; releases them otherwise.
    fn apply_hub_default(&mut self, pol: &RemovableMediaPolicy) {
        if self.enforcing(pol) {
            for hub in sysfs::root_hubs(&self.cfg.sys_root) {
                if self.hubs_held.contains(&hub) {
                    continue;
                }
                match sysfs::set_authorized_default(&self.cfg.sys_root, &hub, false) {
                    Ok(()) => self.hubs_held.push(hub),
                    Err(e) => tracing::warn!("usb probe: cannot hold new devices on {hub}: {e}"),
                }
            }
        } else {
            for hub in std::mem::take(&mut self.hubs_held) {
                let _ = sysfs::set_authorized_default(&self.cfg.sys_root, &hub, true);
            }
        }
    }

    fn user_info(&self, inputs: &UsbProbeInputs) -> Option<UserInfo> {
        let name = inputs.user.borrow().clone()?;
        let groups = std::fs::read_to_string(&self.cfg.etc_group)
            .map(|g| parse::groups_of(&name, &g))
            .unwrap_or_default();
        Some(UserInfo { name, groups })
    }

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

    /// Reconciles with sysfs: reports devices that came or went while uevents were lost.
    async fn resync(&mut self, pol: &RemovableMediaPolicy, inputs: &UsbProbeInputs) {
        let present = sysfs::enumerate_usb_devices(&self.cfg.sys_root);
        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|k| !present.contains(k))
            .cloned()
            .collect();
        for dp in gone {
            if let Some(t) = self.devices.remove(&dp) {
                self.emit("usb.removed", self.current_user(), t.facts.details())
                    .await;
            }
        }
        for dp in present {
            self.device_added(&dp, false, pol, inputs).await;
        }
        let blocks = sysfs::enumerate_block(&self.cfg.sys_root);
        self.blocks.retain(|_, b| blocks.contains(&b.devpath));
        for dp in blocks {
            if !self.blocks.values().any(|b| b.devpath == dp) {
                self.block_added(&dp).await;
            }
        }
    }

    async fn device_added(
        &mut self,
        devpath: &str,
        at_start: bool,
        pol: &RemovableMediaPolicy,
        inputs: &UsbProbeInputs,
    ) {
        let (facts, warnings) =
            parse::usb_device_facts(&sysfs::read_usb_device(&self.cfg.sys_root, devpath));
        for w in warnings {
            tracing::debug!("usb probe: {w}");
        }
        if facts.is_root_hub() {
            // A controller arriving later (a dock): hold its bus too.
            self.apply_hub_default(pol);
            return;
        }
        if self.devices.contains_key(devpath) {
            return;
        }
        let user = self.user_info(inputs);
        let decision = decide(&facts, user.as_ref(), pol, chrono::Utc::now());
        let mut d = facts.details();
        d.insert("decision".into(), json!(decision_name(&decision)));
        // What the collector needs to route it: storage or not, and whose rules applied
        // (nobody logged in counts as pupil: the stricter audience).
        d.insert("mass_storage".into(), json!(facts.is_mass_storage()));
        let pupil = user.is_none() || decide::is_pupil(user.as_ref(), &pol.pupils);
        d.insert(
            "account".into(),
            json!(if pupil { "pupil" } else { "staff" }),
        );
        if let Decision::Block(r) = &decision {
            d.insert("reason".into(), json!(r));
        }
        d.insert("present_at_start".into(), json!(at_start));
        let av = inputs.antivirus_problem.borrow().clone();
        d.insert("antivirus_current".into(), json!(av.is_none()));
        if let Some(p) = av {
            d.insert("antivirus_problem".into(), json!(p));
        }
        self.emit("usb.inserted", user.as_ref().map(|u| u.name.clone()), d)
            .await;
        let mut t = Tracked {
            facts,
            decision: decision.clone(),
            hold: Hold::Held,
        };
        self.enact(&mut t, user.map(|u| u.name)).await;
        self.devices.insert(devpath.to_owned(), t);
    }

    /// Makes the device's authorisation match its decision.
    async fn enact(&self, t: &mut Tracked, user: Option<String>) {
        let authorized = t.facts.authorized.unwrap_or(true);
        match &t.decision {
            Decision::Allow | Decision::AllowAfterScan => {
                if !authorized && self.cfg.manage_authorization {
                    match sysfs::set_authorized(&self.cfg.sys_root, &t.facts.devpath, true) {
                        Ok(()) => t.facts.authorized = Some(true),
                        Err(e) => {
                            tracing::warn!("usb probe: cannot authorise {}: {e}", t.facts.devpath)
                        }
                    }
                }
                t.hold = Hold::Through;
            }
            Decision::Block(reason) => {
                if authorized && self.cfg.manage_authorization {
                    match sysfs::set_authorized(&self.cfg.sys_root, &t.facts.devpath, false) {
                        Ok(()) => t.facts.authorized = Some(false),
                        Err(e) => {
                            tracing::warn!("usb probe: cannot detach {}: {e}", t.facts.devpath)
                        }
                    }
                }
                t.hold = Hold::Held;
                let mut d = t.facts.details();
                d.insert("reason".into(), json!(reason));
                d.insert(
                    "enforced".into(),
                    json!(self.cfg.manage_authorization && t.facts.authorized == Some(false)),
                );
                self.emit("usb.blocked", user, d).await;
            }
        }
    }

    /// Policy or user changed: let held devices through if now permitted (no re-plug needed).
    async fn reevaluate(&mut self, pol: &RemovableMediaPolicy, inputs: &UsbProbeInputs) {
        let user = self.user_info(inputs);
        let held: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, t)| t.hold == Hold::Held)
            .map(|(k, _)| k.clone())
            .collect();
        for dp in held {
            let Some(mut t) = self.devices.remove(&dp) else {
                continue;
            };
            let decision = decide(&t.facts, user.as_ref(), pol, chrono::Utc::now());
            if !matches!(decision, Decision::Block(_)) {
                t.decision = decision;
                self.enact(&mut t, user.as_ref().map(|u| u.name.clone()))
                    .await;
            }
            self.devices.insert(dp, t);
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
mod tests {
    use super::*;
    use caretaker_proto::policy::removable_media::{StorageMode, TemporaryPermission};
    use clamd::ScanSummary;

    use parse::tests::{KEYBOARD, NO_SERIAL, STICK, recorded};
    use std::fs;

    const PCI: &str = "/devices/pci0000:00/0000:00:02.0";

    fn put(root: &Path, devpath: &str, files: &[(&str, &[u8])]) {
        let d = root.join(devpath.trim_start_matches('/'));
        fs::create_dir_all(&d).unwrap();
        for (n, v) in files {
            fs::write(d.join(n), v).unwrap();
        }
    }

    fn descriptors(class: u8) -> Vec<u8> {
        let mut d = vec![18u8, 1];
        d.extend([0u8; 16]);
        d.extend([
            9, 2, 25, 0, 1, 1, 0, 0x80, 50, 9, 4, 0, 0, 1, class, 1, 1, 0, 7, 5, 0x81, 3, 8, 0, 10,
        ]);
        d
    }

    /// A fake /sys matching the recorded devpaths: two root hubs (only they are enumerated at start)
    /// and, not yet linked into /sys/bus, the devices the recordings add (all unauthorised, as
    /// authorized_default=0 leaves them).
    fn fake_sys() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("bus/usb/devices")).unwrap();
        for hub in ["usb1", "usb2"] {
            put(
                r,
                &format!("{PCI}/{hub}"),
                &[
                    ("idVendor", b"1d6b\n"),
                    ("idProduct", b"0002\n"),
                    ("bDeviceClass", b"09\n"),
                    ("authorized_default", b"1\n"),
                    ("authorized", b"1\n"),
                ],
            );
            std::os::unix::fs::symlink(
                format!("../../..{PCI}/{hub}"),
                r.join("bus/usb/devices").join(hub),
            )
            .unwrap();
        }
        let stick = descriptors(8);
        put(
            r,
            &format!("{PCI}/usb2/2-1"),
            &[
                ("idVendor", b"46f4\n"),
                ("idProduct", b"0001\n"),
                ("serial", b"SN-TEST-0001\n"),
                ("product", b"QEMU USB HARDDRIVE\n"),
                ("authorized", b"0\n"),
                ("descriptors", &stick),
            ],
        );
        put(
            r,
            &format!("{PCI}/usb2/2-3"),
            &[
                ("idVendor", b"46f4\n"),
                ("idProduct", b"0001\n"),
                ("authorized", b"0\n"),
                ("descriptors", &stick),
            ],
        );
        put(
            r,
            &format!("{PCI}/usb1/1-2"),
            &[
                ("idVendor", b"0627\n"),
                ("idProduct", b"0001\n"),
                ("serial", b"42\n"),
                ("authorized", b"0\n"),
                ("descriptors", &descriptors(3)),
            ],
        );
        put(
            r,
            &format!("{PCI}/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0/block/sda"),
            &[("removable", b"1\n"), ("size", b"32768\n")],
        );
        t
    }

    fn read(root: &Path, devpath: &str, attr: &str) -> String {
        fs::read_to_string(root.join(devpath.trim_start_matches('/')).join(attr))
            .unwrap()
            .trim()
            .to_owned()
    }

    struct Rig {
        ev_tx: mpsc::Sender<Uevent>,
        out: mpsc::Receiver<NewEvent>,
        policy_tx: watch::Sender<Arc<PolicyDocument>>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Rig {
        fn start(cfg: UsbProbeConfig, pol: RemovableMediaPolicy) -> Rig {
            let (ev_tx, ev_rx) = mpsc::channel(512);
            let (tx, out) = mpsc::channel(64);
            let (policy_tx, policy_rx) = watch::channel(Arc::new(PolicyDocument {
                removable_media: pol,
                ..Default::default()
            }));
            let stop = CancellationToken::new();
            let task = tokio::spawn(run_with_events(
                cfg,
                policy_rx,
                EventSink::new(tx),
                stop.clone(),
                ev_rx,
            ));
            Rig {
                ev_tx,
                out,
                policy_tx,
                stop,
                task,
            }
        }
        async fn feed(&self, recording: &str, range: std::ops::Range<usize>) {
            for raw in &recorded(recording)[range] {
                self.ev_tx
                    .send(parse::parse_uevent(raw).0.unwrap())
                    .await
                    .unwrap();
            }
        }
        async fn next(&mut self, kind: &str) -> NewEvent {
            loop {
                let e = self.out.recv().await.expect("probe alive");
                if e.kind == kind {
                    return e;
                }
            }
        }
    }

    /// Waits (yielding to the probe) until a sysfs attribute reads `want`.
    async fn until_attr(root: &Path, devpath: &str, attr: &str, want: &str) {
        for _ in 0..10_000 {
            if read(root, devpath, attr) == want {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{devpath}/{attr} never became {want}");
    }

    fn cfg(sys: &Path) -> UsbProbeConfig {
        UsbProbeConfig {
            sys_root: sys.to_path_buf(),
            mountinfo: sys.join("no-mountinfo"),
            etc_group: sys.join("no-group"),
            dev_root: sys.join("dev"),
            clamd: None,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn holds_storage_lets_keyboard_through_and_releases_on_permission() {
        let sys = fake_sys();
        let r = sys.path();
        let (av_tx, av_rx) = watch::channel(Some("ClamAV signatures 9 days old".to_string()));
        let mut c = cfg(r);
        c.inputs.antivirus_problem = av_rx;
        let pol = RemovableMediaPolicy {
            enforce: true,
            pupil_storage: StorageMode::Block,
            staff_storage: StorageMode::Allow,
            ..Default::default()
        };
        let mut rig = Rig::start(c, pol.clone());

        // Keyboard: authorised at once, whatever the storage rule.
        rig.feed(KEYBOARD, 0..3).await;
        let kbd = rig.next("usb.inserted").await;
        assert_eq!(kbd.details["interface_classes"], json!([3]));
        assert_eq!(kbd.details["decision"], "allow");
        assert_eq!(kbd.details["antivirus_current"], false);
        assert_eq!(
            kbd.details["antivirus_problem"],
            "ClamAV signatures 9 days old"
        );
        until_attr(r, &format!("{PCI}/usb1/1-2"), "authorized", "1").await;
        // Startup held new devices on both buses.
        assert_eq!(read(r, &format!("{PCI}/usb1"), "authorized_default"), "0");
        assert_eq!(read(r, &format!("{PCI}/usb2"), "authorized_default"), "0");

        // Stick: held (stays unauthorised) and reported.
        drop(av_tx);
        rig.feed(STICK, 0..15).await;
        let ins = rig.next("usb.inserted").await;
        assert_eq!(ins.details["serial"], "SN-TEST-0001");
        assert_eq!(ins.details["decision"], "block");
        let blk = rig.next("usb.blocked").await;
        assert_eq!(blk.details["enforced"], true);
        assert!(
            blk.details["reason"]
                .as_str()
                .unwrap()
                .contains("nobody logged in")
        );
        assert_eq!(read(r, &format!("{PCI}/usb2/2-1"), "authorized"), "0");

        // A permission granted centrally lets it through without re-plugging.
        let mut granted = pol.clone();
        granted.permissions.push(TemporaryPermission {
            serial: Some("SN-TEST-0001".into()),
            device_id: None,
            user: None,
            until: chrono::Utc::now() + chrono::Duration::hours(1),
            reason: Some("exam coursework".into()),
        });
        rig.policy_tx
            .send(Arc::new(PolicyDocument {
                removable_media: granted,
                ..Default::default()
            }))
            .unwrap();
        until_attr(r, &format!("{PCI}/usb2/2-1"), "authorized", "1").await;

        // Removal reports the attributes cached at add, although sysfs no longer has them.
        fs::remove_dir_all(r.join(PCI.trim_start_matches('/')).join("usb2/2-1")).unwrap();
        rig.feed(STICK, 15..31).await;
        let rem = rig.next("usb.removed").await;
        assert_eq!(rem.details["serial"], "SN-TEST-0001");
        assert_eq!(rem.details["device_id"], "46f4:0001");

        // The stick without a serial cannot match a serial permission: held.
        rig.feed(NO_SERIAL, 0..15).await;
        let ns = rig.next("usb.inserted").await;
        assert_eq!(ns.details["serial"], Value::Null);
        assert_eq!(ns.details["decision"], "block");

        // Clean stop gives new keyboards back.
        rig.stop.cancel();
        rig.task.await.unwrap();
        assert_eq!(read(r, &format!("{PCI}/usb1"), "authorized_default"), "1");
        assert_eq!(read(r, &format!("{PCI}/usb2"), "authorized_default"), "1");
    }

    #[tokio::test]
    async fn report_only_policy_changes_nothing_and_enumerates_at_start() {
        let sys = fake_sys();
        let r = sys.path();
        std::os::unix::fs::symlink(
            format!("../../..{PCI}/usb2/2-1"),
            r.join("bus/usb/devices/2-1"),
        )
        .unwrap();
        let mut rig = Rig::start(cfg(r), RemovableMediaPolicy::default());
        let ins = rig.next("usb.inserted").await;
        assert_eq!(ins.details["present_at_start"], true);
        assert_eq!(ins.details["decision"], "allow");
        assert_eq!(read(r, &format!("{PCI}/usb2"), "authorized_default"), "1");
        rig.stop.cancel();
        rig.task.await.unwrap();
    }

    #[tokio::test]
    async fn resync_after_lost_uevents_reports_arrivals_and_departures() {
        let sys = fake_sys();
        let r = sys.path();
        let mut rig = Rig::start(cfg(r), RemovableMediaPolicy::default());
        rig.feed(KEYBOARD, 0..3).await;
        rig.next("usb.inserted").await;
        // Lost: the keyboard's removal and the stick's arrival.
        std::os::unix::fs::symlink(
            format!("../../..{PCI}/usb2/2-1"),
            r.join("bus/usb/devices/2-1"),
        )
        .unwrap();
        rig.ev_tx.send(resync_event()).await.unwrap();
        let rem = rig.next("usb.removed").await;
        assert_eq!(rem.details["device_id"], "0627:0001");
        let ins = rig.next("usb.inserted").await;
        assert_eq!(ins.details["serial"], "SN-TEST-0001");
        rig.stop.cancel();
        rig.task.await.unwrap();
    }

    /// Counts the fake scans alive: up on start, down when the scan's future is dropped.
    struct Alive(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A gated (scan-before-use) stick whose scan runs `step`; returns the rig, the fake
    /// /sys and how many scans are alive.
    fn gated_rig(
        step: impl Fn(scan::ScanJob) -> scan::ScanFuture + Send + Sync + 'static,
    ) -> (Rig, tempfile::TempDir, Arc<std::sync::atomic::AtomicUsize>) {
        let sys = fake_sys();
        let alive = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut c = cfg(sys.path());
        c.clamd = Some(ClamdAddr::Unix(sys.path().join("no-clamd.sock")));
        c.scan_mount_dir = sys.path().join("media");
        c.scan_stall_after = Duration::from_secs(300);
        let counter = alive.clone();
        c.scanner = scan::Scanner::new(move |_, job| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let guard = Alive(counter.clone());
            let run = step(job);
            Box::pin(async move {
                let _guard = guard;
                run.await
            })
        });
        let pol = RemovableMediaPolicy {
            enforce: true,
            pupil_storage: StorageMode::AllowAfterScan,
            ..Default::default()
        };
        (Rig::start(c, pol), sys, alive)
    }

    /// The next event of `kind`; a missing one fails the test instead of hanging it (time is
    /// paused, so the hour passes at once).
    async fn within_an_hour(rig: &mut Rig, kind: &str) -> NewEvent {
        tokio::time::timeout(Duration::from_secs(3600), rig.next(kind))
            .await
            .unwrap_or_else(|_| panic!("no {kind} within an hour"))
    }

    /// Yields until `alive` reads `want` (aborted tasks drop their futures when next run).
    async fn until_alive(alive: &std::sync::atomic::AtomicUsize, want: usize) {
        for _ in 0..10_000 {
            if alive.load(std::sync::atomic::Ordering::SeqCst) == want {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("scans alive: {alive:?}, wanted {want}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_scan_is_aborted_reported_and_its_stick_left_blocked() {
        let (mut rig, sys, alive) = gated_rig(|_| Box::pin(std::future::pending()));
        let r = sys.path();
        rig.feed(STICK, 0..15).await;
        let ins = within_an_hour(&mut rig, "usb.inserted").await;
        assert_eq!(ins.details["decision"], "allow_after_scan");
        // Let through read-only to be scanned; the scan starts and never moves.
        until_attr(r, &format!("{PCI}/usb2/2-1"), "authorized", "1").await;
        until_alive(&alive, 1).await;
        let started = tokio::time::Instant::now();

        let e = within_an_hour(&mut rig, "agent.probe_stalled").await;
        let waited = started.elapsed().as_secs();
        // Within the gap plus a quarter (the check period); time is paused, so this is exact.
        assert!((300..=375).contains(&waited), "reported after {waited} s");
        assert_eq!(e.details["probe"], "usb");
        assert_eq!(e.details["unit"], "medium_scan");
        assert_eq!(e.details["action"], "aborted");
        assert_eq!(e.details["block"], "sda");
        assert_eq!(e.details["serial"], "SN-TEST-0001");
        assert_eq!(e.details["device_id"], "46f4:0001");
        assert_eq!(e.details["stick"], "blocked");
        assert!(e.details["stalled_secs"].as_u64().unwrap() >= 300);
        let s = within_an_hour(&mut rig, "media.scanned").await;
        assert_eq!(s.details["result"], "incomplete");
        let b = within_an_hour(&mut rig, "usb.blocked").await;
        assert_eq!(b.details["enforced"], true);
        assert!(
            b.details["reason"]
                .as_str()
                .unwrap()
                .contains("scan stalled")
        );
        // Detached, and the scan's task is gone.
        assert_eq!(read(r, &format!("{PCI}/usb2/2-1"), "authorized"), "0");
        until_alive(&alive, 0).await;

        // A policy change does not let it through unscanned, nor is the stall reported twice.
        rig.policy_tx
            .send(Arc::new(PolicyDocument {
                removable_media: RemovableMediaPolicy {
                    enforce: true,
                    pupil_storage: StorageMode::Allow,
                    ..Default::default()
                },
                ..Default::default()
            }))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(read(r, &format!("{PCI}/usb2/2-1"), "authorized"), "0");
        while let Ok(e) = rig.out.try_recv() {
            assert_ne!(e.kind, "agent.probe_stalled");
            assert_ne!(e.kind, "usb.blocked");
        }
        rig.stop.cancel();
        rig.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_scan_that_keeps_moving_is_not_aborted() {
        // Twenty minutes, moving every two: four times the gap in all, never the gap between.
        let (mut rig, sys, alive) = gated_rig(|job| {
            Box::pin(async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    job.progress.made();
                }
                ScanSummary {
                    files: 10,
                    ..Default::default()
                }
            })
        });
        rig.feed(STICK, 0..15).await;
        until_alive(&alive, 1).await;
        let s = within_an_hour(&mut rig, "media.scanned").await;
        assert_eq!(s.details["result"], "clean");
        assert_eq!(s.details["files_scanned"], 10);
        while let Ok(e) = rig.out.try_recv() {
            assert_ne!(e.kind, "agent.probe_stalled");
        }
        assert_eq!(
            read(sys.path(), &format!("{PCI}/usb2/2-1"), "authorized"),
            "1"
        );
        until_alive(&alive, 0).await;
        rig.stop.cancel();
        rig.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn aborting_the_probe_as_a_restart_does_aborts_its_scans() {
        let (rig, _sys, alive) = gated_rig(|_| Box::pin(std::future::pending()));
        rig.feed(STICK, 0..15).await;
        until_alive(&alive, 1).await;
        rig.task.abort();
        assert!(rig.task.await.unwrap_err().is_cancelled());
        until_alive(&alive, 0).await;
    }

    #[tokio::test]
    async fn mounted_medium_is_reported_and_scanned_by_real_clamd() {
        let clamd = clamd::tests::real_clamd();
        let sys = fake_sys();
        let r = sys.path();
        // The medium: a mounted directory with EICAR, and /dev/sda holding a FAT boot sector.
        let media = tempfile::tempdir().unwrap();
        fs::write(media.path().join("report.docx"), b"coursework").unwrap();
        fs::write(media.path().join("eicar.com"), clamd::tests::eicar()).unwrap();
        fs::create_dir_all(r.join("dev")).unwrap();
        fs::write(
            r.join("dev/sda"),
            include_bytes!("testdata/fat16-label-CARETAKER.head"),
        )
        .unwrap();
        let mut c = cfg(r);
        c.clamd = Some(ClamdAddr::Unix(clamd.socket()));
        c.mountinfo = r.join("mountinfo");
        c.mount_poll = Duration::from_millis(5);
        fs::write(&c.mountinfo, "").unwrap();
        let mut rig = Rig::start(c.clone(), RemovableMediaPolicy::default());
        rig.feed(STICK, 0..15).await;
        rig.next("usb.inserted").await;
        // The desktop mounts it.
        fs::write(
            &c.mountinfo,
            format!(
                "40 22 8:0 / {} rw,nosuid - vfat /dev/sda rw\n",
                media.path().display()
            ),
        )
        .unwrap();
        let m = rig.next("media.mounted").await;
        assert!(m.details.get("label").is_none() && m.details.get("mount_point").is_none());
        assert_eq!(m.details["fs_type"], "vfat");
        assert_eq!(m.details["removable"], true);
        assert_eq!(m.details["size_bytes"], 32768 * 512);
        assert_eq!(m.details["by_agent"], false);
        let s = rig.next("media.scanned").await;
        assert_eq!(s.details["result"], "infected");
        assert_eq!(s.details["files_scanned"], 2);
        let inf = rig.next("media.infected").await;
        assert_eq!(
            inf.details["detections"],
            json!([clamd::tests::EICAR_SIGNATURE])
        );
        assert_eq!(
            inf.details["action"], "reported",
            "allow mode reports, it does not detach"
        );
        rig.stop.cancel();
        rig.task.await.unwrap();
    }
}
