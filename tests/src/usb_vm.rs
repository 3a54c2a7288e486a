//! A whole removable-media world: a real collector on this machine, a real clamd, and the real
//! static `caretaker-agent` in a QEMU guest reaching both through QEMU's user network (10.0.2.2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::clamd_rig::ClamdRig;
use crate::vm_rig::{GuestFile, Vm, make_stick_image};
use crate::{Api, Collector, free_port, wait_for};

/// Builds `caretaker-agent` statically for the guest (its own target dir: the flags differ).
pub fn guest_agent() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "-p",
            "caretaker-agent",
            "--bin",
            "caretaker-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(st.success(), "static build of caretaker-agent failed");
    target.join("x86_64-unknown-linux-gnu/debug/caretaker-agent")
}

pub struct UsbWorld {
    pub collector: Collector,
    pub api: Api,
    pub device: String,
    pub vm: Vm,
    _clamd: ClamdRig,
    tmp: tempfile::TempDir,
    sticks: u32,
}

impl UsbWorld {
    /// Boots the guest agent, enrolled with a fresh collector, and waits until it reports.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut clamd = ClamdRig::with_fresh_database();
        let clamd_port = free_port();
        clamd.extra_conf.push(format!("TCPSocket {clamd_port}"));
        clamd.extra_conf.push("TCPAddr 127.0.0.1".into());
        clamd.start();
        // The guest dials the collector at 10.0.2.2, so its certificate must name that address.
        let collector = Collector::start_with_names(
            &tmp.path().join("collector"),
            &["localhost", "127.0.0.1", "10.0.2.2"],
        );
        let state = tmp.path().join("agent");
        let device = collector.enroll(&state);
        let config = format!(
            "state_dir = \"/state\"\ncollector = \"10.0.2.2:{}\"\n[antivirus]\nenabled = false\n[software]\nenabled = false\n\
             [screen_lock]\nenabled = false\n[usb]\nclamd_tcp = \"10.0.2.2:{clamd_port}\"\nmount_options = \"iocharset=iso8859-1\"\n",
            collector.grpc.port()
        );
        let mut files: Vec<GuestFile> = vec![(
            "etc/caretaker/agent.toml".into(),
            0o644,
            config.into_bytes(),
        )];
        for f in ["device.key", "device.pem", "ca.pem", "enrollment.json"] {
            files.push((
                format!("state/{f}"),
                0o600,
                std::fs::read(state.join(f)).unwrap(),
            ));
        }
        let vm = Vm::boot_with_files(
            &guest_agent(),
            &["run", "--config", "/etc/caretaker/agent.toml"],
            &files,
        );
        let api = collector.api();
        let world = Self {
            collector,
            api,
            device,
            vm,
            _clamd: clamd,
            tmp,
            sticks: 0,
        };
        let found = world.wait_event(Duration::from_secs(120), "agent.started", |_| true);
        assert!(
            found.is_some(),
            "the guest agent never reported:\n{}",
            world.vm.serial_output()
        );
        world
    }

    /// Plugs a new stick holding `files`; returns when QEMU has added it.
    pub fn plug(&mut self, serial: &str, files: &[(&str, &[u8])]) -> Instant {
        self.sticks += 1;
        let image = self.tmp.path().join(format!("stick{}.img", self.sticks));
        make_stick_image(&image, 16, "CARETAKER", files);
        let start = Instant::now();
        self.vm.plug_stick(&image, serial);
        start
    }

    /// The first stored event of `kind` matching `pred`.
    pub fn wait_event(
        &self,
        timeout: Duration,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let start = Instant::now();
        loop {
            let (_, page) = self.api.get(&format!(
                "/api/v1/events?device={}&kind={kind}&limit=100",
                self.device
            ));
            if let Some(e) = page["events"]
                .as_array()
                .and_then(|a| a.iter().find(|e| pred(e)).cloned())
            {
                return Some(e);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for an event or fails with the guest's console.
    pub fn expect_event(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_event(Duration::from_secs(60), kind, pred)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} at the collector; guest console:\n{}",
                    self.vm.serial_output()
                )
            })
    }

    /// Sets the policy's `removable_media` section and waits until the guest agent applied it.
    pub fn set_removable_media(&mut self, section: Value) {
        let (_, current) = self.api.get("/api/v1/policy");
        let mut policy = current["policy"].clone();
        policy["removable_media"] = section;
        let (st, v) = self
            .api
            .put("/api/v1/policy", &serde_json::json!({ "policy": policy }));
        assert_eq!(st, 200, "{v}");
        let applied = format!("version={}", v["version"]);
        wait_for(
            Duration::from_secs(60),
            "the guest to apply the policy",
            || {
                let console = strip_ansi(&self.vm.serial_output());
                console
                    .lines()
                    .any(|l| l.contains("Policy applied") && l.contains(&applied))
                    .then_some(())
            },
        );
    }

    /// True once the guest's console showed the stick's `authorized` as `value`.
    pub fn wait_authorized(&mut self, serial: &str, value: u8) -> bool {
        self.vm.wait_serial(
            &format!("USBAUTH {serial} {value}"),
            Duration::from_secs(60),
        )
    }
}

/// The console with terminal colour codes removed.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What to do to a guest while its uevents are recorded.
pub enum Plug {
    /// A 16 MiB FAT stick with this USB serial (empty: none), plugged then unplugged.
    Stick(&'static str),
    /// A USB keyboard, plugged then unplugged.
    Keyboard,
}

/// Records the kernel uevents a guest receives while `plug` happens: boots the static agent's
/// `record-uevents` diagnostic (the same socket code the USB probe reads), plugs and unplugs,
/// and returns each datagram in hex once the guest has been quiet for two seconds. This is
/// how `agent/src/probe/usb/testdata/*.uevents.hex` are made (`caretaker-record-uevents`).
pub fn record_uevents(plug: Plug) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let mut vm = Vm::boot(&guest_agent(), &["record-uevents"]);
    assert!(
        vm.wait_serial("recording uevents", Duration::from_secs(120)),
        "the recorder did not start:\n{}",
        vm.serial_output()
    );
    match plug {
        Plug::Stick(serial) => {
            let image = tmp.path().join("stick.img");
            make_stick_image(&image, 16, "CARETAKER", &[]);
            vm.plug_stick(&image, serial);
        }
        Plug::Keyboard => vm.plug_keyboard(),
    }
    let lines = |vm: &Vm| -> Vec<String> {
        vm.serial_output()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("uevent ").map(str::to_string))
            .collect()
    };
    let settled = |vm: &mut Vm| {
        let (mut seen, mut quiet_since) = (0, Instant::now());
        let start = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "uevents never settled"
            );
            let now = lines(vm).len();
            if now != seen {
                (seen, quiet_since) = (now, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    settled(&mut vm);
    vm.unplug();
    settled(&mut vm);
    lines(&vm)
}

/// `(ACTION, SUBSYSTEM, DEVTYPE)` of each recorded uevent (hex, as `record_uevents` returns).
pub fn uevent_outline(hex_lines: &[String]) -> Vec<(String, String, String)> {
    hex_lines
        .iter()
        .map(|h| {
            let bytes = hex::decode(h.trim()).expect("hex");
            let field = |k: &str| {
                bytes
                    .split(|b| *b == 0)
                    .filter_map(|f| std::str::from_utf8(f).ok())
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                    .unwrap_or("")
                    .to_string()
            };
            (field("ACTION"), field("SUBSYSTEM"), field("DEVTYPE"))
        })
        .collect()
}
