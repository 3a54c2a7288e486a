//! End to end with real processes: init, enrol, stream, query the API, change policy, CLI behaviour.

use std::process::Command;
use std::time::Duration;

use caretaker_tests::*;
use serde_json::json;

#[test]
fn enrolled_agent_streams_its_lifecycle_and_follows_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let agent = start_agent(&state, "heartbeat_interval = \"200ms\"\n");
    let api = collector.api();

    let events = wait_for(Duration::from_secs(20), "started and heartbeats", || {
        let ev = api.all_events(&device);
        (ev.iter().filter(|e| e["kind"] == "agent.heartbeat").count() >= 2).then_some(ev)
    });
    let started = events
        .iter()
        .find(|e| e["kind"] == "agent.started")
        .expect("agent.started");
    for field in [
        "device_id",
        "seq",
        "kind",
        "occurred_at",
        "received_at",
        "user",
        "details",
        "severity",
        "audience",
    ] {
        assert!(
            started.get(field).is_some(),
            "event lacks {field}: {started}"
        );
    }
    assert_eq!(started["device_id"], device.as_str());
    assert_eq!(started["audience"], json!([]));
    assert_eq!(
        started["details"]["agent_version"],
        env!("CARGO_PKG_VERSION")
    );

    let d = api.device(&device).expect("device listed");
    for field in [
        "id",
        "hostname",
        "os",
        "agent_version",
        "enrolled_at",
        "last_seen",
    ] {
        assert!(!d[field].is_null(), "device lacks {field}: {d}");
    }

    // A policy change is versioned, attributed, and reaches the running agent.
    let (st, bad) = api.put("/api/v1/policy", &json!({"policy": {"description": 5}}));
    assert_eq!(st, 400, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("description"),
        "{bad}"
    );
    let (st, pv) = api.put(
        "/api/v1/policy",
        &json!({"policy": {"description": "Spring term"}}),
    );
    assert_eq!(st, 200, "{pv}");
    assert_eq!(pv["version"], 2);
    assert_eq!(pv["changed_by"], "administrator (admin.token)");
    wait_for(Duration::from_secs(10), "policy v2 at the agent", || {
        let s = std::fs::read_to_string(state.join("policy.json")).ok()?;
        s.contains("Spring term").then_some(())
    });
    let (_, current) = api.get("/api/v1/policy");
    assert_eq!(current["version"], 2);
    let (_, history) = api.get("/api/v1/policy/history");
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);

    // `status` reports the running agent.
    wait_drained(&state, Duration::from_secs(10));
    let (ok, out, _) = run(Command::new(bin("caretaker-agent"))
        .args(["status", "--json", "--state-dir"])
        .arg(&state));
    assert!(ok);
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["running"], true, "{s}");
    assert_eq!(s["status"]["policy_version"], 2, "{s}");

    // A clean stop is recorded.
    stop_agent_and_wait_for_stopping(agent, &api, &device);
}

#[test]
fn api_refuses_without_the_admin_token_and_rejects_bad_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let ca = std::fs::read(collector.dir.join("ca.pem")).unwrap();
    let base = format!("https://localhost:{}", collector.web.port());
    let (st, v) = Api::new(&base, "wrong", &ca).get("/api/v1/devices");
    assert_eq!(st, 401, "{v}");
    let api = collector.api();
    let (st, v) = api.get("/api/v1/events?since=yesterday");
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("since"));
    let (st, _) = api.get("/api/v1/events?limit=5");
    assert_eq!(st, 200);
}

#[test]
fn init_refuses_to_overwrite_and_tokens_work_with_or_without_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let (ok, _, err) = run(Command::new(bin("caretaker-collector"))
        .args(["init", "--data-dir"])
        .arg(&collector.dir));
    assert!(!ok);
    assert!(err.contains("refusing to overwrite"), "{err}");

    // While serving, the CLI asks the server over the admin socket.
    let (t1, fp) = collector.token(&["--uses", "2", "--label", "room 5"]);
    assert!(t1.starts_with("cte_") && fp.starts_with("sha256:"));
    collector.stop();
    // Stopped: the CLI opens the store itself.
    let (t2, fp2) = collector.token(&[]);
    assert_ne!(t1, t2);
    assert_eq!(fp, fp2);
    collector.serve();
    let state = tmp.path().join("agent");
    let (ok, out, err) = run(Command::new(bin("caretaker-agent"))
        .args([
            "enroll",
            "--collector",
            &collector.grpc_addr(),
            "--token",
            &t2,
            "--ca-fingerprint",
            &fp,
            "--state-dir",
        ])
        .arg(&state));
    assert!(ok, "a token made offline enrols: {out}{err}");
}

#[test]
fn bad_agent_config_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(&cfg, "heartbeat_interval = \"often\"\n").unwrap();
    let (ok, _, err) = run(Command::new(bin("caretaker-agent"))
        .args(["run", "--config"])
        .arg(&cfg));
    assert!(!ok);
    assert!(err.contains("heartbeat_interval"), "{err}");
    let (ok, _, err) = run(Command::new(bin("caretaker-agent"))
        .args(["run", "--state-dir"])
        .arg(tmp.path()));
    assert!(!ok);
    assert!(err.contains("not enrolled"), "{err}");
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): the real agent says it is ready, sends
/// keep-alives at half the watchdog period, and says it is stopping.
#[test]
fn the_agent_speaks_systemds_notify_protocol() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state);
    let sock_path = tmp.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let agent = start_agent_with_env(
        &state,
        "[antivirus]\nenabled = false\n[software]\nenabled = false\n[screen_lock]\nenabled = false\n[usb]\nenabled = false\n",
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let next = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    // Five keep-alives at 100 ms (half of 200 ms): about 0.4 s, certainly under 5.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(agent.stop().success());
    let mut last = next();
    while last == "WATCHDOG=1" {
        last = next();
    }
    assert_eq!(last, "STOPPING=1");
}
