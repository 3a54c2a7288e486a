//! The screen-lock probe against real parts: dbus-daemon, dbusmock's logind, Xvfb,
//! xdotool and Debian's i3lock (see tests/src/desktop_rig.rs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use caretaker_agent::event::{EventSink, NewEvent};
use caretaker_agent::probe::screen_lock::{ScreenLockConfig, run};
use caretaker_proto::policy::{PolicyDocument, ScreenLockPolicy};
use caretaker_tests::desktop_rig::DesktopRig;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use zbus::zvariant::Value;

/// An account every Debian system has, so the locker can run as a real user.
const UID: u32 = 65534;
const USER: &str = "nobody";

struct Probe {
    events: mpsc::Receiver<NewEvent>,
    seen: Vec<NewEvent>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _policy: watch::Sender<Arc<PolicyDocument>>,
}

impl Probe {
    fn start(rig: &DesktopRig, policy: ScreenLockPolicy, cfg: ScreenLockConfig) -> Self {
        let (tx, events) = mpsc::channel(64);
        let (policy_tx, policy_rx) = watch::channel(Arc::new(PolicyDocument {
            screen_lock: policy,
            ..Default::default()
        }));
        let shutdown = CancellationToken::new();
        let cfg = ScreenLockConfig {
            system_bus_address: Some(rig.bus_address.clone()),
            ..cfg
        };
        let task = tokio::spawn(run(cfg, policy_rx, EventSink::new(tx), shutdown.clone()));
        Self {
            events,
            seen: Vec::new(),
            shutdown,
            task,
            _policy: policy_tx,
        }
    }

    /// The next event of `kind`, waiting at most `limit`; every event received is kept.
    async fn wait_for(&mut self, kind: &str, limit: Duration) -> Option<NewEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            self.seen.push(e.clone());
            if e.kind == kind {
                return Some(e);
            }
        }
    }

    /// The kinds seen so far. The evening "left logged on" report is left out: whether it
    /// fires depends on the wall clock (after school hours), so these tests, which run at any
    /// hour, do not count it; `decide.rs` tests it with paused time.
    fn drain(&mut self) -> Vec<String> {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
        self.seen
            .iter()
            .map(|e| e.kind.clone())
            .filter(|k| k != "session.left_logged_on")
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

fn policy(timeout: u64) -> ScreenLockPolicy {
    ScreenLockPolicy {
        idle_timeout_secs: timeout,
        ..Default::default()
    }
}

fn detail<'a>(e: &'a NewEvent, key: &str) -> &'a str {
    e.details
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{} has no string {key}: {e:?}", e.kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_x11_session_is_locked_by_a_real_locker() {
    let rig = DesktopRig::start().await;
    rig.add_session("c1", UID, USER, "x11", &rig.display).await;
    let timeout = 3;
    // No input since Xvfb started, so the timeout falls before started + timeout.
    let started = tokio::time::Instant::now();
    let mut probe = Probe::start(&rig, policy(timeout), ScreenLockConfig::default());

    let compliance = probe
        .wait_for("screen.compliance", Duration::from_secs(10))
        .await
        .expect("compliance at start");
    assert_eq!(detail(&compliance, "state"), "enforced");

    let limit = (started + Duration::from_secs(timeout + 2)) - tokio::time::Instant::now();
    let locked = probe.wait_for("screen.locked_by_policy", limit).await;
    let locked = locked.unwrap_or_else(|| {
        probe.drain();
        panic!("not locked within timeout + 2 s; events: {:?}", probe.seen)
    });
    assert_eq!(locked.user.as_deref(), Some(USER));
    assert_eq!(detail(&locked, "method"), "locker:i3lock -n");
    assert_eq!(detail(&locked, "session"), "c1");
    assert!(locked.details["idle_seconds"].as_u64().unwrap() >= timeout);
    // logind was asked first; nobody answered (no desktop), so the agent's locker did it.
    assert_eq!(rig.lock_calls("c1").await, 1);
    assert!(
        rig.display_locked(),
        "a second client could grab the keyboard"
    );
    assert!(!probe.drain().contains(&"screen.lock_failed".to_string()));
    probe.stop().await;
    // An agent restart must not unlock the session: the locker outlives the probe (and, under
    // systemd, the unit's KillMode=process leaves it running).
    assert!(
        rig.display_locked(),
        "stopping the agent released the display"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_every_second_prevents_the_lock() {
    let rig = DesktopRig::start().await;
    rig.add_session("c1", UID, USER, "x11", &rig.display).await;
    rig.input();
    let timeout = 3;
    let mut probe = Probe::start(&rig, policy(timeout), ScreenLockConfig::default());
    for _ in 0..(2 * timeout + 1) {
        rig.input();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let kinds = probe.drain();
    assert_eq!(kinds, vec!["screen.compliance"], "{:?}", probe.seen);
    assert_eq!(rig.lock_calls("c1").await, 0);
    assert!(!rig.display_locked());
    probe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_hint_asks_logind_to_lock_and_a_desktop_confirms() {
    let rig = DesktopRig::start().await;
    rig.add_session("h1", 1000, "pupil", "wayland", "").await;
    let desktop = rig.answer_lock_like_a_desktop("h1").await;
    rig.set_idle_hint("h1", Duration::from_secs(600)).await;
    let mut probe = Probe::start(&rig, policy(300), ScreenLockConfig::default());

    let locked = probe
        .wait_for("screen.locked_by_policy", Duration::from_secs(15))
        .await
        .expect("locked by policy");
    assert_eq!(detail(&locked, "method"), "logind");
    assert_eq!(locked.user.as_deref(), Some("pupil"));
    let idle = locked.details["idle_seconds"].as_u64().unwrap();
    assert!((600..700).contains(&idle), "idle_seconds {idle}");
    assert_eq!(rig.lock_calls("h1").await, 1);
    // The desktop locked it: the agent started no locker of its own.
    assert!(!rig.display_locked());
    desktop.abort();
    probe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_already_locked_is_left_alone() {
    let rig = DesktopRig::start().await;
    rig.add_session("h1", 1000, "pupil", "wayland", "").await;
    rig.set_session_property("h1", "LockedHint", Value::from(true))
        .await;
    rig.set_idle_hint("h1", Duration::from_secs(600)).await;
    let mut probe = Probe::start(&rig, policy(300), ScreenLockConfig::default());
    // Compliance is the last action of the first decision, after any lock it decided.
    probe
        .wait_for("screen.compliance", Duration::from_secs(10))
        .await
        .expect("compliance");
    // Another round, triggered by a signal, must not change its mind either.
    rig.set_idle_hint("h1", Duration::from_secs(900)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.lock_calls("h1").await, 0);
    assert_eq!(probe.drain(), vec!["screen.compliance"]);
    probe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_can_lock_reports_lock_failed() {
    let rig = DesktopRig::start().await;
    rig.add_session("c1", UID, USER, "x11", &rig.display).await;
    let empty = tempfile::tempdir().unwrap();
    let cfg = ScreenLockConfig {
        locker_search_path: vec![PathBuf::from(empty.path())],
        ..Default::default()
    };
    let mut probe = Probe::start(&rig, policy(2), cfg);
    let start = probe
        .wait_for("screen.compliance", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(detail(&start, "state"), "enforced");
    assert!(detail(&start, "reason").contains("no locker command installed"));

    let failed = probe
        .wait_for("screen.lock_failed", Duration::from_secs(15))
        .await
        .expect("lock_failed");
    let reason = detail(&failed, "reason");
    assert!(reason.contains("logind Lock not confirmed"), "{reason}");
    assert!(
        reason.contains(
            "no locker command installed (tried: i3lock -n, xsecurelock, xdg-screensaver lock)"
        ),
        "{reason}"
    );
    assert_eq!(failed.user.as_deref(), Some(USER));
    let after = probe
        .wait_for("screen.compliance", Duration::from_secs(5))
        .await
        .expect("compliance change");
    assert_eq!(detail(&after, "state"), "cannot_enforce");
    assert!(detail(&after, "reason").starts_with("lock failed in session c1"));
    assert!(!rig.display_locked());
    assert!(
        !probe
            .drain()
            .contains(&"screen.locked_by_policy".to_string())
    );
    probe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmeasurable_session_makes_the_device_non_compliant() {
    let rig = DesktopRig::start().await;
    // Wayland, no hints maintained, no X display: no idle source.
    rig.add_session("w1", 1000, "pupil", "wayland", "").await;
    let mut probe = Probe::start(&rig, policy(300), ScreenLockConfig::default());
    let c = probe
        .wait_for("screen.compliance", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(detail(&c, "state"), "cannot_enforce");
    assert_eq!(
        detail(&c, "reason"),
        "cannot measure idle time of session w1 (wayland)"
    );
    probe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rig_kills_its_processes_when_a_test_panics() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let rig = DesktopRig::start().await;
        tx.send(rig.pids()).unwrap();
        panic!("a failing test");
    });
    assert!(failing.await.unwrap_err().is_panic());
    let pids = rx.await.unwrap();
    assert_eq!(pids.len(), 3);
    for pid in pids {
        // Killed and reaped: not even a zombie is left.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
}
