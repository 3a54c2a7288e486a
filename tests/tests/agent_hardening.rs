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
