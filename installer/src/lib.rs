//! Roll-out for the Caretaker services: the systemd units (which carry safety decisions: releasing
//! the USB hold after a crash, keeping screen lockers alive across an agent restart), `install` on
//! one laptop and `rollout` to many. The `.deb` packages are built by `scripts/build-debs.sh` from
//! the files in `debian/` beside this crate.

pub mod install;
pub mod rollout;

/// `caretaker-agent.service`, for `/etc/systemd/system/`.
pub const AGENT_UNIT: &str = include_str!("../systemd/caretaker-agent.service");

/// `caretaker-collector.service`, for `/etc/systemd/system/`.
pub const COLLECTOR_UNIT: &str = include_str!("../systemd/caretaker-collector.service");

/// The values of every `key=` line in a unit's `[section]`, in order.
pub fn unit_values<'a>(unit: &'a str, section: &str, key: &str) -> Vec<&'a str> {
    let header = format!("[{section}]");
    let mut inside = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
        } else if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            out.push(v.trim());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// systemd's own parser: unknown keys, bad values and missing binaries are all reported.
    fn verify(name: &str, unit: &str) {
        let dir = tempfile::tempdir().unwrap();
        // verify checks that ExecStart's program exists: point it at one that does.
        let unit = unit
            .replace("/usr/bin/caretaker-agent", "/bin/true")
            .replace("/usr/bin/caretaker-collector", "/bin/true");
        let path = dir.path().join(name);
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze runs (package systemd, from scripts/install-test-deps.sh)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{name}: {stderr}"
        );
    }

    #[test]
    fn the_units_pass_systemd_analyze_verify() {
        verify("caretaker-agent.service", AGENT_UNIT);
        verify("caretaker-collector.service", COLLECTOR_UNIT);
    }

    #[test]
    fn verify_catches_a_mistyped_key() {
        let broken = AGENT_UNIT.replace("RestartSec=", "RestartSecs=");
        let r = std::panic::catch_unwind(|| verify("caretaker-agent.service", &broken));
        assert!(r.is_err(), "a mistyped key must fail verification");
    }

    #[test]
    fn the_agent_unit_keeps_lockers_and_restarts_a_hung_agent() {
        assert_eq!(unit_values(AGENT_UNIT, "Service", "KillMode"), ["process"]);
        assert_eq!(unit_values(AGENT_UNIT, "Service", "Restart"), ["always"]);
        // The agent's side of this (READY=1, keep-alives) is tested in tests/tests/pipeline.rs.
        assert_eq!(unit_values(AGENT_UNIT, "Service", "Type"), ["notify"]);
        assert_eq!(unit_values(AGENT_UNIT, "Service", "WatchdogSec"), ["30"]);
    }

    /// The shipped ExecStopPost line, run the way systemd runs it, over a stand-in for
    /// /sys/bus/usb/devices: every held root hub is released, and a missing bus is no error.
    #[test]
    fn exec_stop_post_releases_every_held_hub() {
        let line = unit_values(AGENT_UNIT, "Service", "ExecStopPost");
        assert_eq!(line.len(), 1);
        let script = line[0]
            .strip_prefix("/bin/sh -c '")
            .and_then(|s| s.strip_suffix('\''))
            .expect("ExecStopPost is /bin/sh -c '...'");
        let sys = tempfile::tempdir().unwrap();
        for hub in ["usb1", "usb2", "usb3"] {
            std::fs::create_dir(sys.path().join(hub)).unwrap();
            std::fs::write(sys.path().join(hub).join("authorized_default"), "0\n").unwrap();
        }
        std::fs::create_dir(sys.path().join("1-1")).unwrap();
        let run = |dir: &Path| {
            let script = script.replace("/sys/bus/usb/devices", dir.to_str().unwrap());
            Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .status()
                .unwrap()
        };
        assert!(run(sys.path()).success());
        for hub in ["usb1", "usb2", "usb3"] {
            let v = std::fs::read_to_string(sys.path().join(hub).join("authorized_default"));
            assert_eq!(v.unwrap().trim(), "1", "{hub}");
        }
        assert!(!sys.path().join("1-1/authorized_default").exists());
        // A machine with no USB controller: the glob matches nothing, and the stop still succeeds.
        let empty = tempfile::tempdir().unwrap();
        assert!(run(empty.path()).success());
    }
}
