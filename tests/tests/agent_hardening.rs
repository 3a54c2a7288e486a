//! The agent under an unlucky school (issue 12): a second agent on the same state folder, a
//! revoked certificate, a wrong clock, with real collector and agent processes.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use caretaker_tests::*;

const FAST: &str = "heartbeat_interval = \"50ms\"\n";

fn status_json(state: &std::path::Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()
}

#[test]
fn a_second_agent_on_the_same_state_folder_refuses_to_start_and_touches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let api = collector.api();
    let first = start_agent(&state, FAST);
    wait_for(
        Duration::from_secs(20),
        "the first agent to connect",
        || (status_json(&state)?["connected"] == true).then_some(()),
    );

    let cfg = state.with_extension("toml");
    let mut second = Proc {
        child: Command::new(bin("caretaker-agent"))
            .args(["run", "--state-dir"])
            .arg(&state)
            .arg("--config")
            .arg(&cfg)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        name: "second agent".into(),
    };
    let exited = wait_for(
        Duration::from_secs(20),
        "the second agent to give up",
        || second.child.try_wait().unwrap(),
    );
    assert!(
        !exited.success(),
        "a second agent ran on the same state folder"
    );
    let mut err = String::new();
    second
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let pid = first.child.id();
    assert!(
        err.contains(&format!(
            "another caretaker-agent (pid {pid}) is already running with the state folder"
        )),
        "unclear refusal: {err}"
    );
    // It stopped before the spool: nothing moved aside, no false corruption report.
    let moved: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert!(
        moved.is_empty(),
        "the live spool was moved aside: {moved:?}"
    );

    // The first agent carries on, and its lock goes with it.
    let before = api.device(&device).unwrap()["event_count"]
        .as_u64()
        .unwrap();
    wait_for(Duration::from_secs(20), "the first agent's events", || {
        (api.device(&device)?["event_count"].as_u64()? > before).then_some(())
    });
    stop_agent_and_wait_for_stopping(first, &api, &device);
    assert!(
        !api.all_events(&device)
            .iter()
            .any(|e| e["kind"] == "agent.spool_recovered"),
        "a corruption report was sent"
    );
    let second = start_agent(&state, FAST);
    let pid = second.child.id();
    wait_for(Duration::from_secs(20), "a new agent to start", || {
        (status_json(&state)?["pid"] == pid && status_json(&state)?["connected"] == true)
            .then_some(())
    });
    second.stop();
}

/// `caretaker-agent status` once the agent's status file reports an error containing `what`.
fn status_once_failing_with(state: &std::path::Path, what: &str) -> String {
    wait_for(Duration::from_secs(30), what, || {
        let e = status_json(state)?["last_error"].as_str()?.to_string();
        e.contains(what).then_some(())
    });
    agent_status(state)
}

#[test]
fn status_says_the_device_was_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let id = collector.enroll(&state);
    let _agent = start_agent(&state, FAST);
    wait_for(Duration::from_secs(20), "the agent to connect", || {
        (status_json(&state)?["connected"] == true).then_some(())
    });
    let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
        .args(["device", "revoke", &id, "--data-dir"])
        .arg(&collector.dir));
    assert!(ok, "{out}{err}");
    let out = status_once_failing_with(&state, "revoked");
    assert!(
        out.contains("not connected (this device has been revoked by the collector"),
        "{out}"
    );
}

#[test]
fn status_says_the_clock_is_wrong_and_events_wait_until_it_is_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let id = collector.enroll(&state);
    // A laptop whose clock is more than a year behind: before any certificate the collector
    // made was valid, however far it backdates them.
    let behind = start_agent_with_clock(&state, FAST, "-400d");
    let out = status_once_failing_with(&state, "clock");
    let year_ago = (chrono::Utc::now() - chrono::Duration::days(400)).format("%Y-%m-%d");
    assert!(
        out.contains(&format!("this computer's clock reads {year_ago}")),
        "{out}"
    );
    assert!(out.contains("set the date and time"), "{out}");
    let api = collector.api();
    assert!(
        api.all_events(&id).is_empty(),
        "connected despite the clock"
    );

    // Clock fixed: what waited in the spool is delivered.
    assert!(behind.stop().success());
    let fixed = start_agent(&state, FAST);
    wait_for(Duration::from_secs(20), "the waiting events", || {
        let events = api.all_events(&id);
        (events
            .iter()
            .filter(|e| e["kind"] == "agent.started")
            .count()
            == 2)
            .then_some(())
    });
    stop_agent_and_wait_for_stopping(fixed, &api, &id);
}

#[test]
fn a_garbage_seq_floor_never_reuses_a_number_the_collector_has() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let id = collector.enroll(&state);
    let api = collector.api();
    let agent = start_agent(&state, FAST);
    wait_for(Duration::from_secs(20), "some events stored", || {
        (api.device(&id)?["event_count"].as_u64()? >= 10).then_some(())
    });
    wait_drained(&state, Duration::from_secs(20));
    stop_agent_and_wait_for_stopping(agent, &api, &id);
    let before = seqs(&api.all_events(&id));
    let highest = *before.last().unwrap();

    // The worst case: the reservation file is garbage and the spool's ledger is gone too,
    // with every event acknowledged (an empty spool). Only the collector knows the numbers.
    std::fs::write(state.join("seq.floor"), b"\x00\x17garbage").unwrap();
    std::fs::remove_file(state.join("spool.tally")).unwrap();
    let agent = start_agent(&state, FAST);
    wait_for(
        Duration::from_secs(20),
        "the restarted agent's events",
        || {
            let events = api.all_events(&id);
            let started = events
                .iter()
                .filter(|e| e["kind"] == "agent.started")
                .count();
            (started == 2).then_some(())
        },
    );
    stop_agent_and_wait_for_stopping(agent, &api, &id);
    let events = api.all_events(&id);
    let after = seqs(&events);
    let new: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > highest)
        .collect();
    let kinds: Vec<&str> = new.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // Everything the restarted agent said was stored: none dropped as a resend.
    assert_eq!(after.len(), before.len() + new.len(), "{kinds:?}");
    for kind in ["agent.spool_recovered", "agent.started", "agent.stopping"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let checked = new
        .iter()
        .find(|e| e["details"]["collector_highest_seq"].as_u64().is_some())
        .expect("the check with the collector is reported");
    assert_eq!(
        checked["details"]["collector_highest_seq"].as_u64(),
        Some(highest)
    );
}
