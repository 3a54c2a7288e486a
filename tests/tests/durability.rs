//! Nothing lost, nothing doubled: collector outages and kill -9 on either side, with real processes.
//!
//! The agent is run with a 20 ms heartbeat so that events are always in
//! flight when a process is killed.

use std::collections::BTreeSet;
use std::time::Duration;

use caretaker_tests::*;

const FAST: &str = "heartbeat_interval = \"20ms\"\n";

/// After a clean stop and drain: the device's events are exactly 1..=N, ending in agent.stopping.
fn assert_contiguous_and_complete(api: &Api, device: &str) -> Vec<u64> {
    let events = api.all_events(device);
    let s = seqs(&events);
    let n = *s.last().expect("some events");
    assert_eq!(s, (1..=n).collect::<Vec<_>>(), "a gap means a lost event");
    let newest = events.iter().max_by_key(|e| e["seq"].as_u64()).unwrap();
    assert_eq!(newest["kind"], "agent.stopping");
    assert_eq!(
        api.device(device).unwrap()["event_count"].as_u64(),
        Some(n),
        "count agrees with the listing"
    );
    s
}

#[test]
fn collector_down_for_a_while_then_every_event_arrives_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let agent = start_agent(&state, FAST);
    let api = collector.api();
    wait_for(Duration::from_secs(20), "first events", || {
        (api.device(&device)?["event_count"].as_u64()? > 5).then_some(())
    });

    collector.stop();
    std::thread::sleep(Duration::from_secs(3));
    let waiting = wait_for(
        Duration::from_secs(10),
        "events to pile up in the spool",
        || {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()?;
            let n = v["spool_events"].as_u64()?;
            (v["connected"] == false && n > 20).then_some(n)
        },
    );
    assert!(
        waiting > 20,
        "the agent spooled while the collector was down"
    );
    collector.serve();
    wait_drained(&state, Duration::from_secs(30));
    stop_agent_and_wait_for_stopping(agent, &api, &device);
    let s = assert_contiguous_and_complete(&api, &device);
    assert!(s.len() as u64 > waiting);
}

#[test]
fn collector_kill9_mid_stream_loses_no_acknowledged_event_and_duplicates_none() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let agent = start_agent(&state, FAST);
    let api = collector.api();
    for round in 0..3 {
        wait_for(Duration::from_secs(20), "events flowing", || {
            (api.device(&device)?["event_count"].as_u64()? > 20 * (round + 1)).then_some(())
        });
        let before: BTreeSet<u64> = seqs(&api.all_events(&device)).into_iter().collect();
        collector.kill9();
        std::thread::sleep(Duration::from_millis(300));
        collector.serve();
        // Every event the collector had acknowledged (and so listed) survived the kill.
        let after: BTreeSet<u64> = seqs(&api.all_events(&device)).into_iter().collect();
        assert!(
            before.is_subset(&after),
            "acknowledged events were lost in round {round}"
        );
    }
    wait_drained(&state, Duration::from_secs(30));
    // Drained is not connected: a kill can land after the last ack, leaving the agent in its
    // reconnect backoff (seconds after three kills), and its `agent.stopping` has only the
    // 3 s a clean stop gives to be delivered.
    wait_for(Duration::from_secs(30), "the agent connected again", || {
        agent_status(&state)
            .contains("connected since")
            .then_some(())
    });
    stop_agent_and_wait_for_stopping(agent, &api, &device);
    assert_contiguous_and_complete(&api, &device);
}

#[test]
fn agent_kill9_mid_stream_then_every_spooled_event_arrives_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let api = collector.api();

    // Collector down, so the spool certainly holds unsent events at the kill.
    let agent = start_agent(&state, FAST);
    wait_for(Duration::from_secs(20), "first events", || {
        (api.device(&device)?["event_count"].as_u64()? > 5).then_some(())
    });
    collector.stop();
    wait_for(Duration::from_secs(10), "spooled events", || {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()?;
        (v["spool_events"].as_u64()? > 20).then_some(())
    });
    agent.kill9();
    collector.serve();
    let stored_before: BTreeSet<u64> = seqs(&api.all_events(&device)).into_iter().collect();
    let spooled: BTreeSet<u64> = spooled_seqs(&state).unwrap().into_iter().collect();
    assert!(spooled.len() > 20, "the kill left events in the spool");

    let agent = start_agent(&state, FAST);
    wait_drained(&state, Duration::from_secs(30));
    stop_agent_and_wait_for_stopping(agent, &api, &device);
    let events = api.all_events(&device);
    let all: BTreeSet<u64> = seqs(&events).into_iter().collect(); // seqs() fails on any duplicate
    assert!(
        stored_before.is_subset(&all),
        "events stored before the kill were lost"
    );
    assert!(
        spooled.is_subset(&all),
        "events spooled at the kill were lost: {:?}",
        spooled.difference(&all).collect::<Vec<_>>()
    );
    let max_old = stored_before.iter().chain(&spooled).max().copied().unwrap();
    // Numbers after the restart are new: none reuses an old number.
    let fresh: Vec<&u64> = all
        .iter()
        .filter(|s| !stored_before.contains(s) && !spooled.contains(s))
        .collect();
    assert!(
        fresh.iter().all(|&&s| s > max_old),
        "a sequence number was reused after the kill"
    );
    assert_eq!(
        api.device(&device).unwrap()["event_count"].as_u64(),
        Some(all.len() as u64)
    );
}

#[test]
fn a_corrupt_spool_is_reported_moved_aside_and_the_agent_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let agent = start_agent(&state, FAST);
    let api = collector.api();
    wait_for(Duration::from_secs(20), "first events", || {
        (api.device(&device)?["event_count"].as_u64()? > 5).then_some(())
    });
    assert!(agent.stop().success());
    for entry in std::fs::read_dir(state.join("spool")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::write(&p, b"\x00garbage where a spool was").unwrap();
        }
    }
    let before = api.device(&device).unwrap()["event_count"]
        .as_u64()
        .unwrap();
    let agent = start_agent(&state, FAST);
    let note = wait_for(Duration::from_secs(20), "agent.spool_recovered", || {
        api.all_events(&device)
            .into_iter()
            .find(|e| e["kind"] == "agent.spool_recovered")
    });
    assert_eq!(note["audience"], serde_json::json!(["network_manager"]));
    let moved = note["details"]["moved_to"].as_str().unwrap();
    assert!(
        std::path::Path::new(moved).exists(),
        "the damaged spool is kept for inspection"
    );
    wait_for(Duration::from_secs(20), "heartbeats after recovery", || {
        (api.device(&device)?["event_count"].as_u64()? > before + 10).then_some(())
    });
    assert!(agent.stop().success());
    seqs(&api.all_events(&device));
}
