//! Screen locking end to end: the real agent process, a real X server and i3lock, logind on a
//! private bus (dbusmock), and a running collector whose policy change reaches the agent live.

use std::time::{Duration, Instant};

use caretaker_tests::desktop_rig::DesktopRig;
use caretaker_tests::*;
use serde_json::json;

#[test]
fn a_policy_change_makes_the_running_agent_lock_an_idle_session() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rig = rt.block_on(DesktopRig::start());
    rt.block_on(rig.add_session("c1", 65534, "nobody", "x11", &rig.display));

    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let config = format!(
        "[screen_lock]\nsystem_bus_address = {:?}\n[antivirus]\nenabled = false\n[software]\nenabled = false\n",
        rig.bus_address
    );
    let agent = start_agent(&state, &config);
    let api = collector.api();
    let compliance = wait_for(Duration::from_secs(30), "screen.compliance", || {
        api.all_events(&device)
            .into_iter()
            .find(|e| e["kind"] == "screen.compliance")
    });
    assert_eq!(compliance["details"]["state"], "enforced", "{compliance}");
    assert_eq!(
        api.device(&device).unwrap()["state"]["screen_lock"]["status"],
        "enforced"
    );
    assert!(
        !rig.display_locked(),
        "default policy (300 s) must not lock yet"
    );

    // The network manager shortens the timeout; the running agent applies it.
    let (_, current) = api.get("/api/v1/policy");
    let mut policy = current["policy"].clone();
    policy["screen_lock"]["idle_timeout_secs"] = json!(3);
    let (st, v) = api.put("/api/v1/policy", &json!({ "policy": policy }));
    assert_eq!(st, 200, "{v}");
    let changed = Instant::now();
    let locked = wait_for(Duration::from_secs(20), "screen.locked_by_policy", || {
        api.all_events(&device)
            .into_iter()
            .find(|e| e["kind"] == "screen.locked_by_policy")
    });
    eprintln!(
        "policy change to stored lock event: {:?}",
        changed.elapsed()
    );
    assert_eq!(locked["user"], "nobody");
    assert_eq!(locked["details"]["method"], "locker:i3lock -n");
    assert_eq!(
        locked["audience"],
        json!([]),
        "the policy working is not noise"
    );
    assert!(rig.display_locked(), "i3lock must really hold the display");
    let (_, fleet) = api.get("/api/v1/fleet");
    assert_eq!(fleet["screen_lock"]["enforced"], 1, "{fleet}");
    assert!(agent.stop().success());
    drop(rig);
}
