//! Antivirus currency end to end: a real clamd with a ten-day-old database, the real agent process, a running collector.

use std::time::Duration;

use caretaker_tests::clamd_rig::ClamdRig;
use caretaker_tests::*;
use serde_json::json;

#[test]
fn stale_signatures_reach_the_collector_flagged_for_the_network_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);

    let mut rig = ClamdRig::new();
    rig.install_daily(27000, Some(10));
    rig.start();
    let config = format!(
        "[antivirus]\ndatabase_dir = {:?}\nclamd_socket = {:?}\nfreshclam_log = {:?}\n",
        rig.db_dir(),
        rig.socket(),
        rig.dir().join("freshclam.log")
    );
    let agent = start_agent(&state, &config);
    let api = collector.api();
    let event = wait_for(Duration::from_secs(30), "antivirus.status", || {
        api.all_events(&device)
            .into_iter()
            .find(|e| e["kind"] == "antivirus.status")
    });
    assert_eq!(event["details"]["status"], "stale", "{event}");
    assert_eq!(event["audience"], json!(["network_manager"]));
    let age = event["details"]["products"][0]["signature_age_hours"]
        .as_f64()
        .unwrap();
    assert!((239.0..=241.5).contains(&age), "ten days old: {age}");

    // The device's state and the fleet counts follow.
    assert_eq!(
        api.device(&device).unwrap()["state"]["antivirus"]["status"],
        "stale"
    );
    let (st, fleet) = api.get("/api/v1/fleet");
    assert_eq!(st, 200);
    assert_eq!(fleet["antivirus"]["stale"], 1, "{fleet}");
    assert_eq!(fleet["antivirus"]["current"], 0, "{fleet}");
    assert!(agent.stop().success());
}
