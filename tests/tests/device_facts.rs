//! End to end: a real agent's `device.facts` lands on its device record, and a steady machine,
//! re-read five times a second, sends it once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use caretaker_tests::*;
use serde_json::Value;

/// A stand-in /sys with a laptop's DMI and battery: test machines (VMs, containers) have neither.
fn laptop_sysfs(root: &Path) {
    for (rel, text) in [
        ("class/dmi/id/sys_vendor", "LENOVO\n"),
        ("class/dmi/id/product_name", "20L5CTO1WW\n"),
        ("class/dmi/id/product_serial", "PF1ABCDE\n"),
        ("class/power_supply/BAT0/energy_full", "45120000\n"),
        ("class/power_supply/BAT0/energy_full_design", "57020000\n"),
        ("class/power_supply/BAT0/cycle_count", "312\n"),
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn facts_events(api: &Api, device: &str) -> Vec<Value> {
    api.all_events(device)
        .into_iter()
        .filter(|e| e["kind"] == "device.facts")
        .collect()
}

#[test]
fn an_agent_reports_its_device_facts_once_and_the_record_keeps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let device = collector.enroll(&state);
    let sys = tmp.path().join("sys");
    laptop_sysfs(&sys);
    // Only the facts probe, re-reading every 200 ms: 3 s is fifteen chances to be noisy.
    let config = format!(
        "[antivirus]\nenabled = false\n[software]\nenabled = false\n[screen_lock]\nenabled = false\n[usb]\nenabled = false\n[facts]\ninterval = \"200ms\"\nsys_root = {sys:?}\n"
    );
    let agent = start_agent(&state, &config);
    let api = collector.api();

    let first = wait_for(Duration::from_secs(20), "device.facts", || {
        facts_events(&api, &device).into_iter().next()
    });
    let record = api.device(&device).expect("device listed");
    let facts = &record["state"]["facts"];
    assert_eq!(
        facts, &first["details"],
        "the record keeps the event's details"
    );

    let (ok, uname, _) = run(Command::new("uname").arg("-r"));
    assert!(ok);
    assert_eq!(facts["kernel"], uname.trim(), "{facts}");
    assert!(facts["memory_bytes"].as_u64().unwrap_or(0) > 0, "{facts}");
    assert!(
        facts["disk_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{facts}"
    );
    let booted = chrono::DateTime::parse_from_rfc3339(facts["boot_time"].as_str().unwrap())
        .expect("boot_time is RFC 3339");
    assert!(booted < chrono::Utc::now());
    // From the stand-in sysfs: 45.12 / 57.02 Wh is 79 %.
    assert_eq!(facts["vendor"], "LENOVO");
    assert_eq!(facts["model"], "20L5CTO1WW");
    assert_eq!(facts["serial"], "PF1ABCDE");
    assert_eq!(facts["battery_health_pct"], 79);
    assert_eq!(facts["battery_cycles"], 312);
    // Only these: nothing about users, processes or the network.
    for key in facts.as_object().unwrap().keys() {
        assert!(
            [
                "vendor",
                "model",
                "serial",
                "os_name",
                "os_version",
                "kernel",
                "cpu_model",
                "cpu_cores",
                "memory_bytes",
                "disk_total_bytes",
                "disk_free_bytes",
                "boot_time",
                "battery_health_pct",
                "battery_cycles",
            ]
            .contains(&key.as_str()),
            "unexpected key {key}"
        );
    }
    assert_eq!(first["user"], Value::Null, "{first}");

    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        facts_events(&api, &device).len(),
        1,
        "a steady machine sends its facts once"
    );
    stop_agent_and_wait_for_stopping(agent, &api, &device);
    assert_eq!(facts_events(&api, &device).len(), 1, "nothing more on stop");
}
