//! Software installs end to end: real packages installed with the real dpkg while the real agent runs.

use std::time::{Duration, Instant};

use caretaker_tests::deb::{self, Purge};
use caretaker_tests::*;
use serde_json::Value;

const PLAIN: &str = "caretaker-e2e-unapproved";
/// Matches the bypass catalogue's `openvpn*` pattern.
const BYPASS: &str = "openvpn-caretaker-e2e";

fn find(api: &Api, device: &str, kind: &str, name: &str) -> Option<Value> {
    api.all_events(device)
        .into_iter()
        .find(|e| e["kind"] == kind && e["details"]["name"] == name)
}

#[test]
fn installs_and_removals_reach_the_collector_classified() {
    let tmp = tempfile::tempdir().unwrap();
    let _purge = Purge(vec![PLAIN.into(), BYPASS.into()]);
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    // Home folders are a temp dir: this test is about dpkg.
    let home = tmp.path().join("home");
    let (device, agent) = start_software_agent(&collector, &state, &home);
    let api = collector.api();

    let plain = deb::build(tmp.path(), PLAIN, "1.0");
    let started = Instant::now();
    let out = deb::dpkg(&["-i", plain.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = wait_for(Duration::from_secs(20), "software.installed", || {
        find(&api, &device, "software.installed", PLAIN)
    });
    eprintln!("install-to-collector latency: {:?}", started.elapsed());
    assert_eq!(ev["details"]["version"], "1.0");
    assert_eq!(ev["details"]["source"], "dpkg");
    assert_eq!(
        ev["audience"],
        serde_json::json!(["network_manager"]),
        "unapproved: {ev}"
    );

    let bypass = deb::build(tmp.path(), BYPASS, "2.6");
    assert!(
        deb::dpkg(&["-i", bypass.to_str().unwrap()])
            .status
            .success()
    );
    let ev = wait_for(Duration::from_secs(20), "bypass tool installed", || {
        find(&api, &device, "software.installed", BYPASS)
    });
    let audience: Vec<&str> = ev["audience"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        audience.contains(&"dsl") && audience.contains(&"network_manager"),
        "{ev}"
    );
    assert_eq!(
        ev["assessment"]["software"][0]["classification"], "bypass_tool",
        "{ev}"
    );

    // Licence counts follow installs, and survive a collector restart (from the saved state).
    let devices_with = |api: &Api| {
        let (_, sw) = api.get("/api/v1/software");
        sw["products"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == PLAIN)
            .map(|p| p["devices"].clone())
    };
    wait_for(Duration::from_secs(5), "the install to be counted", || {
        (devices_with(&api) == Some(Value::from(1))).then_some(())
    });
    collector.stop();
    collector.serve();
    assert_eq!(devices_with(&api), Some(Value::from(1)), "after a restart");

    assert!(deb::dpkg(&["-r", PLAIN]).status.success());
    wait_for(Duration::from_secs(30), "software.removed", || {
        find(&api, &device, "software.removed", PLAIN)
    });
    // The count is folded just after the event is stored: allow for that moment.
    wait_for(
        Duration::from_secs(5),
        "the removal to uncount the device",
        || devices_with(&api).is_none().then_some(()),
    );
    assert!(agent.stop().success());
}

#[test]
fn an_executable_dropped_in_a_home_folder_is_reported_with_its_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("pupil1/Downloads")).unwrap();
    let (device, agent) = start_software_agent(&collector, &state, &home);
    let api = collector.api();
    std::fs::copy("/bin/true", home.join("pupil1/Downloads/game")).unwrap();
    let ev = wait_for(Duration::from_secs(20), "executable.in_user_area", || {
        api.all_events(&device)
            .into_iter()
            .find(|e| e["kind"] == "executable.in_user_area")
    });
    assert_eq!(ev["details"]["path"], "Downloads/game");
    assert_eq!(ev["details"]["type"], "elf");
    assert_eq!(ev["details"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(ev["audience"], serde_json::json!(["network_manager"]));
    assert!(agent.stop().success());
}
