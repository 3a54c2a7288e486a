//! The USB probe's loop over recorded uevents and a fake /sys.
use super::*;
use caretaker_proto::policy::removable_media::{StorageMode, TemporaryPermission};
use clamd::{ClamdAddr, ScanSummary};

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
