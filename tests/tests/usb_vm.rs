//! Removable media with a real USB stick: QEMU hot-plugs it into a guest running the real static
//! agent, which reports to a real collector on this machine and scans through a real clamd.
//! Run on its own: `cargo test -p caretaker-tests --test usb_vm` (as root, after scripts/install-test-deps.sh).

use caretaker_tests::clamd_rig::{EICAR_SIGNATURE, eicar};
use caretaker_tests::usb_vm::UsbWorld;
use serde_json::json;

#[test]
fn a_real_stick_is_seen_blocked_permitted_and_scanned() {
    let mut w = UsbWorld::start();
    let serial_is = |s: &'static str| move |e: &serde_json::Value| e["details"]["serial"] == s;

    // Report only (the default policy): the insert, the desktop's mount (seen through the kernel's
    // mount-table notification), the scan on mount and the removal reach the collector.
    let plugged = w.plug("DESKTOP-0001", &[("notes.txt", b"homework")]);
    let ins = w.expect_event("usb.inserted", serial_is("DESKTOP-0001"));
    eprintln!("plug to stored usb.inserted: {:?}", plugged.elapsed());
    assert_eq!(ins["details"]["mass_storage"], true, "{ins}");
    assert_eq!(ins["details"]["vendor_id"], "46f4", "{ins}");
    let mounted = w.expect_event("media.mounted", serial_is("DESKTOP-0001"));
    // Neither the stick's label nor where it was mounted leaves the laptop: both can name a pupil.
    assert!(mounted["details"].get("label").is_none(), "{mounted}");
    assert!(mounted["details"].get("mount_point").is_none(), "{mounted}");
    assert_eq!(mounted["details"]["fs_type"], "vfat", "{mounted}");
    assert_eq!(mounted["details"]["by_agent"], false, "{mounted}");
    let scanned = w.expect_event("media.scanned", serial_is("DESKTOP-0001"));
    assert_eq!(scanned["details"]["result"], "clean", "{scanned}");
    w.vm.unplug();
    w.expect_event("usb.removed", serial_is("DESKTOP-0001"));

    // Enforced block for pupils (nobody logged in counts as a pupil).
    w.set_removable_media(
        json!({"enforce": true, "pupil_storage": "block", "staff_storage": "block"}),
    );
    w.plug("SN-TEST-0002", &[("notes.txt", b"homework")]);
    let blocked = w.expect_event("usb.blocked", serial_is("SN-TEST-0002"));
    assert_eq!(blocked["audience"], json!(["network_manager"]), "{blocked}");
    let ins = w.expect_event("usb.inserted", serial_is("SN-TEST-0002"));
    assert_eq!(
        ins["audience"],
        json!(["network_manager", "dsl"]),
        "pupil use without permission: {ins}"
    );
    assert!(
        w.wait_authorized("SN-TEST-0002", 0),
        "sysfs must show it unauthorised:\n{}",
        w.vm.serial_output()
    );

    // A permission granted centrally takes effect without re-plugging.
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    w.set_removable_media(
        json!({"enforce": true, "pupil_storage": "block", "staff_storage": "block",
        "permissions": [{"serial": "SN-TEST-0002", "until": until, "reason": "coursework"}]}),
    );
    assert!(
        w.wait_authorized("SN-TEST-0002", 1),
        "the permitted stick is authorised:\n{}",
        w.vm.serial_output()
    );

    // Allowed only after a clean scan: a clean stick is scanned for real; an infected one is detached.
    w.set_removable_media(json!({"enforce": true, "pupil_storage": "allow_after_scan", "staff_storage": "allow_after_scan"}));
    w.plug(
        "SN-TEST-0003",
        &[
            ("notes.txt", b"homework".as_slice()),
            ("more.txt", b"more homework".as_slice()),
        ],
    );
    let scanned = w.expect_event("media.scanned", serial_is("SN-TEST-0003"));
    assert_eq!(scanned["details"]["result"], "clean", "{scanned}");
    assert!(
        scanned["details"]["files_scanned"].as_u64().unwrap() >= 2,
        "{scanned}"
    );
    let bad = eicar();
    w.plug("SN-TEST-0004", &[("eicar.com", bad.as_slice())]);
    let infected = w.expect_event("media.infected", serial_is("SN-TEST-0004"));
    assert_eq!(
        infected["details"]["detections"],
        json!([EICAR_SIGNATURE]),
        "{infected}"
    );
    assert_eq!(infected["severity"], "critical");
    assert!(
        w.wait_authorized("SN-TEST-0004", 0),
        "the infected stick is detached:\n{}",
        w.vm.serial_output()
    );
}

/// The committed uevent recordings the USB probe's unit tests read are what the recorder makes
/// today: a stick plugged and unplugged gives the same uevents (action, subsystem, device type)
/// as `stick-serial-SN-TEST-0001.uevents.hex`, the USB ones in the same order (the SCSI
/// layer's probes run asynchronously, so their order varies from run to run). Re-record with
/// `caretaker-record-uevents` when a kernel change makes this fail.
#[test]
fn the_uevent_recorder_reproduces_the_committed_stick_recording() {
    use caretaker_tests::usb_vm::{Plug, record_uevents, uevent_outline};
    let committed: Vec<String> =
        include_str!("../../agent/src/probe/usb/testdata/stick-serial-SN-TEST-0001.uevents.hex")
            .lines()
            .map(str::to_string)
            .collect();
    let recorded = record_uevents(Plug::Stick("SN-TEST-0001"));
    let outline = uevent_outline(&recorded);
    assert!(
        outline
            .iter()
            .any(|(a, s, d)| a == "add" && s == "usb" && d == "usb_device"),
        "no usb_device add in the recording: {outline:?}"
    );
    let expected = uevent_outline(&committed);
    let usb_only = |o: &[(String, String, String)]| -> Vec<(String, String, String)> {
        o.iter().filter(|e| e.1 == "usb").cloned().collect()
    };
    assert_eq!(usb_only(&outline), usb_only(&expected));
    let sorted = |mut o: Vec<(String, String, String)>| {
        o.sort();
        o
    };
    assert_eq!(sorted(outline), sorted(expected));
}
