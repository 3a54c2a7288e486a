//! The software probe, run in process, against this machine's real dpkg: a package built by
//! `dpkg-deb` (`caretaker_tests::deb`) is installed, upgraded and removed with `dpkg`, and each
//! step must come out of the probe exactly once. Needs root (dpkg); installs and purges
//! `caretaker-sw-probe-test`.

use std::sync::Arc;
use std::time::Instant;

use caretaker_agent::event::{EventSink, NewEvent};
use caretaker_agent::probe::software::{SoftwareProbeConfig, run};
use caretaker_proto::policy::PolicyDocument;
use caretaker_tests::deb::{self, Purge};
use caretaker_tests::probe_events::ProbeEvents;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const TEST_PKG: &str = "caretaker-sw-probe-test";

/// The probe running in a task, and what it has sent.
struct Probe {
    events: ProbeEvents<NewEvent>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    fn start(cfg: SoftwareProbeConfig) -> Probe {
        let (tx, rx) = mpsc::channel(10_000);
        // The policy sender is dropped at once: the probe keeps its last policy.
        let (_, policy) = watch::channel(Arc::new(PolicyDocument::default()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(cfg, policy, EventSink::new(tx), shutdown.clone()));
        Probe {
            events: ProbeEvents::new(rx),
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn names(ev: &NewEvent, kind: &str) -> bool {
    ev.kind == kind && ev.details.get("name").and_then(Value::as_str) == Some(TEST_PKG)
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_dpkg_install_upgrade_and_removal_are_seen() {
    let _purge = Purge(vec![TEST_PKG.into()]);
    let _ = deb::dpkg(&["--purge", TEST_PKG]); // leftovers from an interrupted run
    let tmp = tempfile::tempdir().unwrap();
    let deb1 = deb::build(tmp.path(), TEST_PKG, "1.0");
    let deb2 = deb::build(tmp.path(), TEST_PKG, "1.1");
    // The machine's dpkg and apt log; empty stand-ins for Flatpak, homes and snapd, which
    // this test is not about.
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("flatpak/app")).unwrap();
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::fs::write(root.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    let mut probe = Probe::start(SoftwareProbeConfig {
        dpkg_dir: "/var/lib/dpkg".into(),
        apt_history_log: "/var/log/apt/history.log".into(),
        flatpak_system_dir: root.join("flatpak"),
        home_root: root.join("home"),
        passwd_file: root.join("passwd"),
        snapd_socket: root.join("no-snapd.socket"),
        snapd_snaps_dir: root.join("no-snaps"),
        ..Default::default()
    });
    let inv = probe
        .events
        .wait_for("inventory", |e| e.kind == "software.inventory")
        .await;
    let total = inv.details["total"].as_u64().unwrap();
    assert!(
        total > 300,
        "this machine has hundreds of packages, got {total}"
    );

    let started = Instant::now();
    assert_ok(&deb::dpkg(&["-i", deb1.to_str().unwrap()]));
    let dpkg_done = Instant::now();
    let ev = probe
        .events
        .wait_for("installed", |e| names(e, "software.installed"))
        .await;
    let seen = Instant::now();
    assert_eq!(ev.details["version"], json!("1.0"));
    assert_eq!(ev.details["architecture"], json!("all"));
    assert!(ev.details.get("installed_at").is_some());
    println!(
        "LATENCY install: dpkg -i took {:?}; event {:?} after dpkg exited ({:?} after it started)",
        dpkg_done - started,
        seen.saturating_duration_since(dpkg_done),
        seen - started
    );

    assert_ok(&deb::dpkg(&["-i", deb2.to_str().unwrap()]));
    let up = probe
        .events
        .wait_for("upgraded", |e| names(e, "software.upgraded"))
        .await;
    assert_eq!(
        (
            up.details["previous_version"].as_str(),
            up.details["version"].as_str()
        ),
        (Some("1.0"), Some("1.1"))
    );

    assert_ok(&deb::dpkg(&["-r", TEST_PKG]));
    let dpkg_done = Instant::now();
    let rm = probe
        .events
        .wait_for("removed", |e| names(e, "software.removed"))
        .await;
    assert_eq!(rm.details["version"], json!("1.1"));
    println!(
        "LATENCY removal: event {:?} after dpkg -r exited",
        Instant::now().saturating_duration_since(dpkg_done)
    );
    // Nothing about the test package was reported twice.
    let ours: Vec<&str> = probe
        .events
        .seen
        .iter()
        .filter(|e| e.details.get("name").and_then(Value::as_str) == Some(TEST_PKG))
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        ours,
        [
            "software.installed",
            "software.upgraded",
            "software.removed"
        ]
    );
    probe.stop().await;
}
