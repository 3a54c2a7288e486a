//! `caretaker-record-uevents DIR`: re-records the USB probe's uevent test data in a QEMU guest (see `usb_vm::record_uevents`).
//!
//! Run as root after scripts/install-test-deps.sh, from the workspace root:
//! `cargo run -p caretaker-tests --bin caretaker-record-uevents -- agent/src/probe/usb/testdata`.

use std::path::PathBuf;

use caretaker_tests::usb_vm::{Plug, record_uevents};

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "agent/src/probe/usb/testdata".into()),
    );
    for (file, plug) in [
        (
            "stick-serial-SN-TEST-0001.uevents.hex",
            Plug::Stick("SN-TEST-0001"),
        ),
        ("stick-empty-serial.uevents.hex", Plug::Stick("")),
        ("keyboard-usb-kbd.uevents.hex", Plug::Keyboard),
    ] {
        let lines = record_uevents(plug);
        let path = dir.join(file);
        std::fs::write(&path, lines.join("\n") + "\n")
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("{}: {} uevents", path.display(), lines.len());
    }
}
