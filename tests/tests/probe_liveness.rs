//! A stuck probe is seen: the real agent with its antivirus probe blocked in a read that never returns (freshclam's log is a FIFO nobody writes), reported to the collector, restarted, left reported, and seen moving again.
//!
//! A FIFO stands in for any call that does not come back (a wedged clamd socket, a dying
//! disk): opening one for reading blocks in the kernel until a writer appears, which is the
//! case abort cannot interrupt. `probe_stall_after = "2s"` shortens every probe's expected gap
//! so the test takes seconds; the detection and restart logic is the production one.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use caretaker_tests::*;
use serde_json::{Value, json};

struct StuckAntivirus {
    dir: PathBuf,
}

impl StuckAntivirus {
    /// An antivirus probe whose check blocks opening `freshclam.log` (a FIFO).
    fn new(root: &Path) -> Self {
        let dir = root.join("av");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let (ok, _, err) = run(Command::new("mkfifo").arg(dir.join("freshclam.log")));
        assert!(ok, "mkfifo: {err}");
        Self { dir }
    }

    fn config(&self) -> String {
        format!(
            "probe_stall_after = \"2s\"\n\
             [antivirus]\ndatabase_dir = {:?}\nclamd_socket = {:?}\nfreshclam_log = {:?}\n\
             [usb]\nenabled = false\n[screen_lock]\nenabled = false\n\
             [software]\nenabled = false\n[facts]\nenabled = false\n",
            self.dir.join("db"),
            self.dir.join("no-clamd.sock"),
            self.dir.join("freshclam.log"),
        )
    }

    /// Lets every blocked open through (they see an empty log) and puts a plain file in the
    /// FIFO's place, so later checks read normally.
    fn release(&self) {
        let fifo = self.dir.join("freshclam.log");
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("a reader is blocked on the FIFO");
        std::fs::write(self.dir.join("plain.log"), "").unwrap();
        std::fs::rename(self.dir.join("plain.log"), &fifo).unwrap();
        drop(writer);
    }
}

fn events_of(api: &Api, device: &str, kind: &str) -> Vec<Value> {
    let mut v: Vec<Value> = api
        .all_events(device)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect();
    v.sort_by_key(|e| e["seq"].as_u64());
    v
}

#[test]
fn a_stuck_probe_is_reported_restarted_left_and_seen_recovering() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let av = StuckAntivirus::new(tmp.path());
    let agent = start_agent(&state, &av.config());
    let api = collector.api();

    // Restarted three times (each new start blocks again), then left reported.
    let stalls = wait_for(Duration::from_secs(40), "four stall reports", || {
        let v = events_of(&api, &device, "agent.probe_stalled");
        (v.len() >= 4).then_some(v)
    });
    let actions: Vec<&Value> = stalls.iter().map(|e| &e["details"]["action"]).collect();
    assert_eq!(
        actions,
        [
            &json!("restarted"),
            &json!("restarted"),
            &json!("restarted"),
            &json!("reported")
        ],
        "{stalls:?}"
    );
    for e in &stalls {
        assert_eq!(e["details"]["probe"], "antivirus", "{e}");
        assert!(e["details"]["stalled_secs"].as_u64().unwrap() >= 2, "{e}");
        assert_eq!(e["severity"], "warning", "{e}");
        assert_eq!(e["audience"], json!(["network_manager"]), "{e}");
    }
    // The lifecycle probe, waiting for its next heartbeat, is alive all along.
    assert!(
        api.all_events(&device)
            .iter()
            .all(|e| e["details"]["probe"] != "lifecycle")
    );
    assert!(events_of(&api, &device, "antivirus.status").is_empty());
    let shown = wait_for(Duration::from_secs(10), "the stall in status", || {
        let s = agent_status(&state);
        s.contains("Probe stalled: antivirus").then_some(s)
    });
    assert!(shown.contains("restarted 3 time(s)"), "{shown}");

    // It moves again: its check finishes, and the recovery reaches the collector.
    av.release();
    let recovered = wait_for(Duration::from_secs(20), "agent.probe_recovered", || {
        events_of(&api, &device, "agent.probe_recovered")
            .into_iter()
            .next()
    });
    assert_eq!(recovered["details"]["probe"], "antivirus", "{recovered}");
    assert_eq!(recovered["severity"], "info", "{recovered}");
    wait_for(Duration::from_secs(10), "antivirus.status", || {
        events_of(&api, &device, "antivirus.status")
            .into_iter()
            .next()
    });
    wait_for(
        Duration::from_secs(10),
        "the stall gone from status",
        || (!agent_status(&state).contains("Probe stalled")).then_some(()),
    );
    stop_agent_and_wait_for_stopping(agent, &api, &device);
    // Nothing more was reported after the recovery.
    assert_eq!(events_of(&api, &device, "agent.probe_stalled").len(), 4);
}

#[test]
fn an_agent_with_a_probe_stuck_in_the_kernel_still_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let av = StuckAntivirus::new(tmp.path());
    let agent = start_agent(&state, &av.config());
    let api = collector.api();
    wait_for(Duration::from_secs(20), "a stall report", || {
        events_of(&api, &device, "agent.probe_stalled")
            .into_iter()
            .next()
    });
    // Threads blocked opening the FIFO cannot be interrupted; the stop must not wait for them.
    stop_agent_and_wait_for_stopping(agent, &api, &device);
    // Unblock the leftover opens' FIFO so nothing else waits on it (the agent is gone).
    let _ = std::fs::remove_file(av.dir.join("freshclam.log"));
}
