//! Uninstall codes end to end with real processes: the code from `caretaker-collector device
//! uninstall-code` (through a running collector and without one), checked offline by
//! `caretaker-agent uninstall-check`; a laptop enrolled before codes learns its hash over the
//! policy stream; a refused attempt reaches the collector through the running agent; a removal
//! with the code ends in `agent.uninstalled` and the device's lifecycle says so.
//! (The package's prerm with the real dpkg is in `rollout.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use caretaker_tests::*;
use serde_json::Value;

fn uninstall_code(collector: &Collector, device: &str) -> String {
    let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
        .args(["device", "uninstall-code", device, "--data-dir"])
        .arg(&collector.dir));
    assert!(ok, "uninstall-code: {out}{err}");
    assert!(
        err.contains("CARETAKER_UNINSTALL_CODE="),
        "says how to use it: {err}"
    );
    out.trim().to_string()
}

/// `uninstall-check` with `code` (None: no code at all); returns (exit code, stderr + stdout).
fn check(state: &Path, code: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(bin("caretaker-agent"));
    cmd.args(["uninstall-check", "--state-dir"])
        .arg(state)
        .env_remove("CARETAKER_UNINSTALL_CODE");
    if let Some(c) = code {
        cmd.env("CARETAKER_UNINSTALL_CODE", c);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

fn audit_count(api: &Api, action: &str) -> usize {
    let (st, v) = api.get("/api/v1/audit?limit=200");
    assert_eq!(st, 200, "{v}");
    v.to_string().matches(action).count()
}

#[test]
fn codes_are_checked_offline_refusals_are_reported_and_a_removal_says_goodbye() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let api = collector.api();

    // Enrolment brought the hash (never the code); the collector's key is private.
    let hash_file = state.join("uninstall.sha256");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&hash_file), 0o600);
    assert_eq!(mode(&collector.dir.join("uninstall.key")), 0o600);
    let code = uninstall_code(&collector, &device);
    assert!(
        caretaker_proto::uninstall::verify(
            &device,
            &code,
            &std::fs::read_to_string(&hash_file).unwrap()
        ),
        "{code}"
    );

    // A laptop enrolled before codes existed holds no hash: removal goes ahead, said to be
    // unverified; once its agent connects, the policy stream brings the hash.
    std::fs::remove_file(&hash_file).unwrap();
    let (status, said) = check(&state, None);
    assert_eq!(status, 0, "{said}");
    assert!(said.contains("not yet received"), "{said}");
    let agent = start_agent(
        &state,
        "heartbeat_interval = \"1h\"\n[antivirus]\nenabled = false\n[software]\nenabled = false\n[screen_lock]\nenabled = false\n[usb]\nenabled = false\n",
    );
    wait_for(
        Duration::from_secs(20),
        "the hash over the policy stream",
        || hash_file.exists().then_some(()),
    );

    // Without the code, or with a wrong one: refused (exit 2, what to do), and the running
    // agent reports each attempt.
    let (status, said) = check(&state, None);
    assert_eq!(status, 2, "{said}");
    assert!(
        said.contains("refused (no code given)")
            && said.contains(&format!(
                "caretaker-collector device uninstall-code {device}"
            ))
            && said.contains("CARETAKER_UNINSTALL_CODE="),
        "{said}"
    );
    let wrong: String = code.chars().rev().collect();
    let (status, said) = check(&state, Some(&wrong));
    assert_eq!(status, 2, "{said}");
    assert!(said.contains("refused (wrong code)"), "{said}");
    let refused = wait_for(Duration::from_secs(20), "two refusals stored", || {
        let r: Vec<Value> = api
            .all_events(&device)
            .into_iter()
            .filter(|e| e["kind"] == "agent.uninstall_refused")
            .collect();
        (r.len() == 2).then_some(r)
    });
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["details"]["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"no code given") && reasons.contains(&"wrong code"),
        "{reasons:?}"
    );
    assert!(refused.iter().all(|e| e["severity"] == "warning"));
    assert!(
        std::fs::read_dir(state.join("reports")).unwrap().count() == 0,
        "reports are deleted once spooled"
    );
    // As the package runs it: the state folder is the one the agent's configuration names.
    let cfg = tmp.path().join("agent-config.toml");
    std::fs::write(
        &cfg,
        format!("state_dir = {:?}\n", state.display().to_string()),
    )
    .unwrap();
    let out = Command::new(bin("caretaker-agent"))
        .args(["uninstall-check", "--config"])
        .arg(&cfg)
        .env_remove("CARETAKER_UNINSTALL_CODE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("refused (no code given)"), "{said}");

    // With the code (typed loosely), then the service stops: the last word is agent.uninstalled.
    let (status, said) = check(&state, Some(&code.to_lowercase().replace('-', " ")));
    assert_eq!(status, 0, "{said}");
    assert!(said.contains("Uninstall code accepted"), "{said}");
    assert!(agent.stop().success());
    let goodbye = wait_for(Duration::from_secs(20), "agent.uninstalled", || {
        api.all_events(&device)
            .into_iter()
            .find(|e| e["kind"] == "agent.uninstalled")
    });
    assert_eq!(goodbye["details"]["code_verified"], true, "{goodbye}");
    assert!(
        !api.all_events(&device)
            .iter()
            .any(|e| e["kind"] == "agent.stopping"),
        "an uninstall is not also reported as a plain stop"
    );
    let d = api.device(&device).unwrap();
    assert_eq!(d["state"]["lifecycle"]["status"], "uninstalled", "{d}");

    // Without a running collector the CLI reads the same key and audits in the store.
    collector.stop();
    assert_eq!(uninstall_code(&collector, &device), code);
    collector.serve();
    let api = collector.api();
    assert_eq!(audit_count(&api, "uninstall_code_issued"), 2);
    let (ok, _, err) = run(Command::new(bin("caretaker-collector"))
        .args(["device", "uninstall-code", "no-such-device", "--data-dir"])
        .arg(&collector.dir));
    assert!(!ok && err.contains("no-such-device"), "{err}");
}
