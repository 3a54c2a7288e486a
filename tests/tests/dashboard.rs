//! The dashboard in a real browser: each role signs in to a real collector and sees its part, a real agent enrols from the page and applies a policy changed in the form, the DSL keeps an incident record that only grows, and password guessing is slowed.
//!
//! Headless Chromium from Debian, driven over WebDriver (see `browser_rig`). Screenshots of
//! the main pages land in `target/screenshots/dashboard-*.png`.

use std::time::Duration;

use caretaker_proto::pb;
use caretaker_tests::browser_rig::Browser;
use caretaker_tests::{Collector, bin, run, send_as_device, start_agent, wait_for};
use serde_json::{Value, json};

const QUIET_AGENT: &str = "heartbeat_interval = \"1s\"\n[antivirus]\nenabled = false\n[software]\nenabled = false\n[screen_lock]\nenabled = false\n[usb]\nenabled = false\n";

fn base(c: &Collector) -> String {
    format!("https://127.0.0.1:{}", c.web.port())
}

/// A pupil's USB stick, blocked by the policy: a safeguarding matter.
fn blocked_stick(seq: u64) -> pb::Event {
    caretaker_tests::pupil_stick(seq, "pupil7", "SN-CRUZER-1")
}

#[test]
fn a_network_manager_enrols_a_real_agent_from_the_page_and_changes_its_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let base = base(&collector);
    let password = collector.add_user("network_manager", "manager");
    let b = Browser::start();

    // A newcomer opens the address and is asked to sign in, then lands on the overview.
    b.goto(&format!("{base}/"));
    assert!(b.current_url().contains("/signin"), "{}", b.current_url());
    b.screenshot("dashboard-signin");
    b.sign_in(&base, "manager", &password);
    b.wait_for_text("h1", "Overview", Duration::from_secs(10));
    assert!(
        b.text("main").contains("No devices yet"),
        "the empty overview teaches"
    );
    b.screenshot("dashboard-overview-empty");

    // Create a token in the page and run the command it shows, exactly.
    b.goto(&format!("{base}/enrol"));
    b.fill("#label", "Year 5 trolley");
    b.fill("#uses", "3");
    b.click("form[action='/enrol'] button[type=submit]");
    let command = b.wait_for_text(
        "#enrol-command",
        "caretaker-agent enroll",
        Duration::from_secs(10),
    );
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(&args[..2], ["caretaker-agent", "enroll"], "{command}");
    assert_eq!(
        args[3],
        collector.grpc.to_string(),
        "the command names the host the browser used and the agents' port"
    );
    let state = tmp.path().join("agent");
    let (ok, out, err) = run(std::process::Command::new(bin("caretaker-agent"))
        .args(&args[1..])
        .arg("--state-dir")
        .arg(&state));
    assert!(ok, "the page's command did not enrol: {out}{err}");
    let _agent = start_agent(&state, QUIET_AGENT);
    let device: Value =
        serde_json::from_slice(&std::fs::read(state.join("enrollment.json")).unwrap()).unwrap();
    let device_id = device["device_id"].as_str().unwrap().to_string();

    // The device appears in the page by itself (the list polls).
    let api = collector.api();
    let hostname = wait_for(Duration::from_secs(20), "the device in the API", || {
        api.device(&device_id)?["hostname"]
            .as_str()
            .map(str::to_string)
    });
    b.wait_for_text("#arrivals", &hostname, Duration::from_secs(15));
    assert!(
        b.text("main").contains("Year 5 trolley"),
        "the token is listed with its label"
    );
    b.screenshot("dashboard-enrolment");

    b.goto(&format!("{base}/devices"));
    b.wait_for_text("main", &hostname, Duration::from_secs(5));
    b.screenshot("dashboard-devices");
    b.goto(&format!("{base}/devices/{device_id}"));
    b.wait_for_text("h1", &hostname, Duration::from_secs(5));
    assert!(b.text("main").contains("Timeline"));
    b.screenshot("dashboard-device");
    // The uninstall code's page shows the removal command for this laptop's OS (Linux here).
    b.goto(&format!("{base}/devices/{device_id}/uninstall-code"));
    b.wait_for_text("h1", &hostname, Duration::from_secs(5));
    let command = b.text("#uninstall-command");
    assert!(
        command.starts_with("CARETAKER_UNINSTALL_CODE=")
            && command.ends_with(" apt remove caretaker-agent"),
        "{command}"
    );
    assert!(b.text("main").contains("On the laptop, as root:"));
    b.screenshot("dashboard-uninstall-code");

    // Change the idle timeout in the form; the running agent applies the new version.
    b.goto(&format!("{base}/policy"));
    b.fill("#idle_minutes", "7");
    b.click("form[action='/policy/screen-lock'] button[type=submit]");
    let saved = b.wait_for_text("main", "Saved as version 2", Duration::from_secs(10));
    assert!(
        saved.contains("screen_lock.idle_timeout_secs: 300 → 420"),
        "{saved}"
    );
    b.screenshot("dashboard-policy");
    wait_for(
        Duration::from_secs(20),
        "the agent to apply policy version 2",
        || {
            let s: Value =
                serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()?;
            (s["policy_version"] == 2).then_some(())
        },
    );
    let cached: Value =
        serde_json::from_slice(&std::fs::read(state.join("policy.json")).unwrap()).unwrap();
    assert_eq!(
        cached["document"]["screen_lock"]["idle_timeout_secs"], 420,
        "{cached}"
    );

    // A bad value is refused with the reason and the old version kept.
    // (The number fields carry the schema's limits, so the browser itself stops those; a
    // malformed pattern gets through to the collector.)
    b.goto(&format!("{base}/policy"));
    b.fill("#denied", "steam*\n[unclosed");
    b.click("form[action='/policy/software'] button[type=submit]");
    let refused = b.wait_for_text("#software .alert", "Not saved", Duration::from_secs(10));
    assert!(refused.contains("software.denied"), "{refused}");
    assert_eq!(
        b.text("#denied"),
        "steam*\n[unclosed",
        "what was typed is kept to correct"
    );
    assert_eq!(api.get("/api/v1/policy").1["version"], 2);

    // The change log and the audit log say who did it.
    b.goto(&format!("{base}/policy/history"));
    assert!(b.text("main").contains("by manager"));
    b.goto(&format!("{base}/audit"));
    let audit = b.text("main");
    for what in ["sign in", "enrolment token created", "policy changed"] {
        assert!(
            audit.contains(what),
            "the audit log lacks {what:?}: {audit}"
        );
    }
    b.screenshot("dashboard-audit");

    // On a phone the overview is one column and still readable.
    b.goto(&format!("{base}/fleet"));
    b.wait_for_text("main", "devices", Duration::from_secs(5));
    b.screenshot("dashboard-overview");
    b.set_window_size(390, 900);
    b.screenshot("dashboard-overview-phone");
    b.close();
}

#[test]
fn each_role_sees_its_part_and_the_dsl_keeps_a_record_that_only_grows() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let base = base(&collector);
    let state = tmp.path().join("device");
    let device_id = collector.enroll(&state);
    // Three attempts with the same stick: one incident, counted three times.
    send_as_device(
        &collector,
        &state,
        "y5-laptop-07",
        (1..=3).map(blocked_stick).collect(),
    );

    let pw: Vec<(&str, &str, String)> = [
        ("network_manager", "manager"),
        ("technician", "tech"),
        ("dsl", "dsl"),
        ("governor", "governor"),
    ]
    .into_iter()
    .map(|(role, name)| (role, name, collector.add_user(role, name)))
    .collect();
    let password = |name: &str| pw.iter().find(|p| p.1 == name).unwrap().2.clone();
    let api = collector.api();
    let b = Browser::start();

    // The DSL starts at the incidents, opens the pupil's one, and records what was done.
    b.sign_in(&base, "dsl", &password("dsl"));
    b.wait_for_text("h1", "Incidents", Duration::from_secs(10));
    let list = b.text("main");
    assert!(list.contains("USB storage blocked: Cruzer Blade"), "{list}");
    assert!(list.contains("pupil7"), "{list}");
    b.screenshot("dashboard-incidents");
    b.click("main table a");
    b.wait_for_text("h1", "USB storage blocked", Duration::from_secs(5));
    assert!(b.text("main").contains("3 time(s)"), "{}", b.text("main"));
    b.fill(
        "#text",
        "Spoke to the pupil with the form tutor; stick returned to parent.",
    );
    b.click("form[action$='/entries'] button[type=submit]");
    let record = b.wait_for_text("#record ol", "Spoke to the pupil", Duration::from_secs(10));
    assert!(record.contains("Acknowledged by dsl"), "{record}");
    b.screenshot("dashboard-incident");

    // Nothing in the record can be edited: the only form adds, and no route changes an entry.
    assert_eq!(
        b.count("#record ol input, #record ol textarea, #record ol button"),
        0
    );
    assert_eq!(b.count("form[action$='/entries']"), 1);
    let dsl_cookie = b.session_cookie();
    let incident_url = b.current_url();
    let id = incident_url
        .trim_end_matches("#record")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    for attempt in [
        format!("/incidents/{id}/entries/1"),
        format!("/api/v1/incidents/{id}/entries/1"),
    ] {
        let (status, _) = api.get_with_cookie(&attempt, &dsl_cookie);
        assert_eq!(status, 404, "{attempt} must not exist");
    }
    // The record exports as CSV for the school's safeguarding system, with the zone named.
    let (status, csv) = api.get_with_cookie(&format!("/incidents/{id}/record.csv"), &dsl_cookie);
    assert_eq!(status, 200);
    assert!(
        csv.starts_with("incident,row,time (Europe/London)"),
        "{csv}"
    );
    assert!(csv.contains("acknowledged,Spoke to the pupil"), "{csv}");

    // A legal hold from the incident page (a case reference required): it shows there as
    // held, and on the Legal holds page.
    b.goto(&incident_url);
    b.fill("#hold-reason", "CP-2026-14 police request");
    b.click("form[action='/holds'] button[type=submit]");
    let held = b.wait_for_text("#hold", "On legal hold", Duration::from_secs(10));
    assert!(held.contains("CP-2026-14 police request"), "{held}");
    b.screenshot("dashboard-incident-held");
    b.goto(&format!("{base}/holds"));
    b.wait_for_text("main", "CP-2026-14", Duration::from_secs(5));
    b.screenshot("dashboard-holds");
    // Subject access: the DSL may export a pupil's records, not erase them.
    b.goto(&format!("{base}/subject?user=pupil7"));
    b.wait_for_text("main", "Download the records", Duration::from_secs(5));
    assert_eq!(
        b.count("form[action$='/erase']"),
        0,
        "erasure is the network manager's"
    );
    b.screenshot("dashboard-subject");

    // The pupil's chronology, and the device the incident concerns, are open to the DSL.
    b.goto(&format!("{base}/pupils/pupil7"));
    assert!(b.text("main").contains("USB storage blocked"));
    b.goto(&format!("{base}/devices/{device_id}"));
    b.wait_for_text("h1", "y5-laptop-07", Duration::from_secs(5));
    // ...but not the policy, users, tokens or the fleet: by link and by typed address.
    for path in [
        "/policy", "/users", "/enrol", "/fleet", "/audit", "/devices",
    ] {
        let (status, body) = api.get_with_cookie(path, &dsl_cookie);
        assert_eq!(status, 403, "DSL {path}");
        assert!(body.contains("Not part of your role"), "{body}");
    }
    b.goto(&format!("{base}/policy"));
    assert!(b.text("main").contains("Not part of your role"));
    b.goto(&format!("{base}/incidents"));
    let nav = b.text("header nav");
    assert!(!nav.contains("Policy") && !nav.contains("Users"), "{nav}");
    b.sign_out();

    // The technician sees devices and technical incidents, not the safeguarding one.
    b.sign_in(&base, "tech", &password("tech"));
    b.wait_for_text("h1", "Overview", Duration::from_secs(10));
    b.goto(&format!("{base}/incidents"));
    assert!(!b.text("main").contains("pupil7"), "{}", b.text("main"));
    let tech_cookie = b.session_cookie();
    for (path, want) in [
        (format!("/incidents/{id}"), 403),
        ("/policy".into(), 403),
        ("/users".into(), 403),
        ("/enrol".into(), 200),
        (format!("/devices/{device_id}"), 200),
    ] {
        assert_eq!(
            api.get_with_cookie(&path, &tech_cookie).0,
            want,
            "technician {path}"
        );
    }
    b.sign_out();

    // Governors get counts and no names.
    b.sign_in(&base, "governor", &password("governor"));
    b.wait_for_text("h1", "Monitoring report", Duration::from_secs(10));
    let report = b.page_source();
    assert!(report.to_lowercase().contains("safeguarding"), "{report}");
    for name in ["pupil7", "y5-laptop-07", &device_id] {
        assert!(!report.contains(name), "the governors' page names {name}");
    }
    b.screenshot("dashboard-report");
    let gov_cookie = b.session_cookie();
    for path in ["/fleet", "/incidents", "/devices", "/events"] {
        assert_eq!(
            api.get_with_cookie(path, &gov_cookie).0,
            403,
            "governor {path}"
        );
    }
    b.sign_out();

    // API tokens carry their role too.
    let governor = api.with_token(&collector.api_token("governor"));
    assert_eq!(governor.get("/api/v1/devices").0, 403);
    let dsl = api.with_token(&collector.api_token("dsl"));
    let (status, v) = dsl.get("/api/v1/events");
    assert_eq!(status, 200);
    let events = v["events"].as_array().unwrap();
    assert_eq!(
        events.len(),
        3,
        "the DSL's view holds the pupil's three attempts: {v}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["audience"].as_array().unwrap().contains(&json!("dsl")))
    );
    assert_eq!(dsl.put("/api/v1/policy", &json!({"policy": {}})).0, 403);
    b.close();
}

#[test]
fn wrong_passwords_are_slowed_down_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let base = base(&collector);
    let password = collector.add_user("network_manager", "manager");
    let b = Browser::start();
    for _ in 1..=5 {
        b.sign_in(&base, "manager", "not-the-password");
        b.wait_for_text(".alert", "not right", Duration::from_secs(10));
    }
    // The fifth failure makes the next try wait, even with the right password.
    b.sign_in(&base, "manager", &password);
    let alert = b.wait_for_text(".alert", "Too many", Duration::from_secs(10));
    assert!(alert.contains("Too many failed sign-ins. Wait"), "{alert}");
    assert!(b.current_url().contains("/signin"));
    b.screenshot("dashboard-signin-slowed");
    b.close();

    // Every failure and the refusal are in the audit log, with the address they came from.
    let (status, log) = collector.api().get("/api/v1/audit");
    assert_eq!(status, 200, "{log}");
    let entries = log["entries"].as_array().unwrap();
    let count = |action: &str| entries.iter().filter(|e| e["action"] == action).count();
    assert_eq!(count("sign_in_failed"), 5, "{log}");
    assert_eq!(count("sign_in_refused"), 1, "{log}");
    assert_eq!(count("sign_in"), 0, "{log}");
    assert!(
        entries
            .iter()
            .filter(|e| e["action"].as_str().unwrap().starts_with("sign_in"))
            .all(|e| e["address"] == "127.0.0.1"),
        "{log}"
    );
}
