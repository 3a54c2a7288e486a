//! End to end with real processes: the API refuses what it does not understand (cursors, bodies, oversized policies), pages every long list, and a laptop whose clock is wrong still connects and is flagged.

use std::collections::HashSet;
use std::time::Duration;

use caretaker_tests::*;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

/// Follows `next` from `first` (a path ending in `cursor=`) and returns every page's `field`.
fn all_pages(api: &Api, first: &str, field: &str) -> (Vec<Value>, usize) {
    let (mut out, mut pages, mut cursor) = (Vec::new(), 0, String::new());
    loop {
        let (st, v) = api.get(&format!("{first}{cursor}"));
        assert_eq!(st, 200, "{v}");
        pages += 1;
        out.extend(v[field].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return (out, pages),
        }
    }
}

#[test]
fn the_api_refuses_what_it_does_not_understand_and_pages_long_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let api = collector.api();
    let devices: Vec<String> = (0..3)
        .map(|i| collector.enroll(&tmp.path().join(format!("agent{i}"))))
        .collect();
    let state0 = tmp.path().join("agent0");
    let events = (1..=5)
        .map(|seq| pb_event(seq, "agent.heartbeat", Default::default()))
        .collect();
    send_as_device(&collector, &state0, "lab-01", events);

    // A cursor the collector never handed out is an error, not "start again from the top".
    for path in [
        "/api/v1/events?cursor=garbage",
        "/api/v1/events?cursor=s3",
        &format!("/api/v1/events?device={}&cursor=t3", devices[0]),
        "/api/v1/devices?cursor=garbage",
        "/api/v1/software?cursor=garbage",
        "/api/v1/policy/history?cursor=garbage",
    ] {
        let (st, v) = api.get(path);
        assert_eq!(st, 400, "{path}: {v}");
        assert!(error_of(&v).contains("cursor"), "{path}: {v}");
    }
    // So is a parameter it does not know, on every call, whether or not it takes others.
    for path in [
        "/api/v1/devices",
        "/api/v1/events",
        "/api/v1/fleet",
        "/api/v1/software",
        "/api/v1/policy",
        "/api/v1/policy/history",
        "/api/v1/digests",
        "/api/v1/incidents",
        "/api/v1/audit",
    ] {
        let (st, v) = api.get(&format!("{path}?colour=red"));
        assert_eq!(st, 400, "{path}: {v}");
        assert!(error_of(&v).contains("colour"), "{path}: {v}");
        assert_eq!(api.get(path).0, 200, "{path}");
    }

    // The body is parsed as strictly as the policy in it; a refusal keeps the old policy.
    let (st, v) = api.put("/api/v1/policy", &json!({"policy": {}, "evil": 1}));
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("unknown field `evil`"), "{v}");

    // 150,000 entries (1.6 MB) is refused by name, before it is stored or pushed anywhere.
    let huge: Vec<String> = (0..150_000).map(|i| format!("prog-{i}")).collect();
    let (st, v) = api.put(
        "/api/v1/policy",
        &json!({"policy": {"software": {"approved": huge}}}),
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        error_of(&v),
        "policy too large: software.approved has 150000 entries; at most 2000 are allowed"
    );
    let (_, current) = api.get("/api/v1/policy");
    assert_eq!(current["version"], 1, "{current}");
    // A real school's list fits.
    let full: Vec<String> = (0..2000).map(|i| format!("prog-{i}")).collect();
    let (st, v) = api.put(
        "/api/v1/policy",
        &json!({"policy": {"software": {"approved": full}}}),
    );
    assert_eq!(st, 200, "{v}");

    // The history pages newest first, every version once.
    for i in 0..4 {
        let (st, v) = api.put(
            "/api/v1/policy",
            &json!({"policy": {"description": format!("v{i}")}}),
        );
        assert_eq!(st, 200, "{v}");
    }
    let (versions, pages) = all_pages(&api, "/api/v1/policy/history?limit=2&cursor=", "versions");
    let numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(pages, 3);
    let (_, first) = api.get("/api/v1/policy/history");
    assert_eq!(first["versions"].as_array().unwrap().len(), 6);
    assert!(first["next"].is_null(), "{first}");

    // Devices page the same way, in enrolment order.
    let (listed, pages) = all_pages(&api, "/api/v1/devices?limit=2&cursor=", "devices");
    let ids: Vec<&str> = listed.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, devices.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(pages, 2);
    let (products, _) = all_pages(&api, "/api/v1/software?limit=1&cursor=", "products");
    assert!(products.is_empty(), "{products:?}");
}

/// The agent under libfaketime (Debian package `faketime`, installed by
/// scripts/install-test-deps.sh) with its clock two days behind the collector's.
#[test]
fn a_laptop_two_days_behind_still_connects_and_is_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let api = collector.api();
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let before = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    std::thread::sleep(Duration::from_secs(1));

    let _agent = start_agent_with_clock(&state, "heartbeat_interval = \"200ms\"\n", "-2d");

    // It connects (the server certificate was valid days before `init`) and its device is
    // flagged with how far behind it is.
    let d = wait_for(Duration::from_secs(30), "the clock flagged", || {
        let d = api.device(&device)?;
        (d["state"]["clock"]["status"] == "behind").then_some(d)
    });
    let offset = d["state"]["clock"]["offset_secs"].as_i64().unwrap();
    assert!(
        (-2 * 86_400 - 600..=-2 * 86_400 + 600).contains(&offset),
        "{d}"
    );

    // `since` is the laptop's clock, so its events look two days old; `received_since` is the
    // collector's, and finds them.
    let (st, by_laptop) = api.get(&format!("/api/v1/events?device={device}&since={before}"));
    assert_eq!(st, 200, "{by_laptop}");
    assert_eq!(by_laptop["events"], json!([]), "{by_laptop}");
    let (st, by_collector) = api.get(&format!(
        "/api/v1/events?device={device}&received_since={before}"
    ));
    assert_eq!(st, 200, "{by_collector}");
    let kinds: HashSet<&str> = by_collector["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains("agent.started"), "{by_collector}");
}
