//! `caretaker-installer install`: on this laptop, install the agent package (if given), enrol with
//! the bundle through the installed `caretaker-agent enroll`, then enable and start the service.
//! Every run ends in one `Outcome` line, in words or (`--json`) for `rollout` to read.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use caretaker_proto::bundle::Bundle;
use chrono::Utc;
use serde::{Deserialize, Serialize};

/// Paths on the laptop; only tests change them.
#[derive(Debug, Clone)]
pub struct Layout {
    pub agent_bin: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    /// Where the agent's output goes when there is no systemd to start it.
    pub log: PathBuf,
    /// Present when systemd is the running init (`sd_booted()`'s test).
    pub systemd_marker: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            agent_bin: "/usr/bin/caretaker-agent".into(),
            state_dir: "/var/lib/caretaker-agent".into(),
            config: "/etc/caretaker/agent.toml".into(),
            log: "/var/log/caretaker-agent.log".into(),
            systemd_marker: "/run/systemd/system".into(),
        }
    }
}

/// Why a laptop did not end up enrolled. `Display` is the technician's sentence; `reason()` the
/// short class that `rollout` tabulates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Bundle(String),
    #[error("dpkg could not install the package: {0}")]
    Dpkg(String),
    #[error(
        "caretaker-agent is not installed ({0} is missing): pass --package caretaker-agent_VERSION_amd64.deb"
    )]
    NotInstalled(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    CollectorUnreachable(String),
    #[error("enrolled, but the agent did not start: {0}")]
    Start(String),
    #[error("{0}")]
    Other(String),
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Bundle(_) => "bundle unusable",
            Failure::Dpkg(_) | Failure::NotInstalled(_) => "dpkg error",
            Failure::Refused(_) => "enrolment refused",
            Failure::CollectorUnreachable(_) => "collector unreachable",
            Failure::Start(_) => "agent did not start",
            Failure::Other(_) => "other",
        }
    }
}

/// How the agent was started (or found running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Started {
    /// `systemctl enable --now`: it starts at every boot.
    Systemd,
    /// No systemd on this machine (a container): started in the background, not at boot.
    Detached,
    AlreadyRunning,
}

/// The one line of result, also the JSON `rollout` reads back (`result` says which).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Enrolled {
        device_id: String,
        collector: String,
        started: Started,
    },
    AlreadyEnrolled {
        device_id: String,
        collector: String,
        started: Started,
    },
    Failed {
        reason: String,
        message: String,
    },
}

impl Outcome {
    pub fn sentence(&self) -> String {
        let how = |s: &Started| match s {
            Started::Systemd => "the agent is enabled and running",
            Started::Detached => {
                "the agent is running (no systemd here: started in the background, not at boot)"
            }
            Started::AlreadyRunning => "the agent is running",
        };
        match self {
            Outcome::Enrolled {
                device_id,
                collector,
                started,
            } => format!(
                "Enrolled as device {device_id} with {collector}; {}.",
                how(started)
            ),
            Outcome::AlreadyEnrolled {
                device_id,
                collector,
                started,
            } => format!(
                "Already enrolled as device {device_id} with {collector}; {}. Nothing changed.",
                how(started)
            ),
            Outcome::Failed { message, .. } => format!("Not enrolled: {message}"),
        }
    }
}

impl From<Failure> for Outcome {
    fn from(f: Failure) -> Self {
        Outcome::Failed {
            reason: f.reason().to_string(),
            message: f.to_string(),
        }
    }
}

/// The whole `install`: never panics, always an outcome.
pub fn install(layout: &Layout, bundle_path: &Path, package: Option<&Path>) -> Outcome {
    match try_install(layout, bundle_path, package) {
        Ok(o) => o,
        Err(f) => f.into(),
    }
}

fn try_install(
    layout: &Layout,
    bundle_path: &Path,
    package: Option<&Path>,
) -> Result<Outcome, Failure> {
    let shown = bundle_path.display().to_string();
    let bytes = std::fs::read(bundle_path)
        .map_err(|e| Failure::Bundle(format!("cannot read the bundle {shown}: {e}")))?;
    let bundle = Bundle::parse(&shown, &bytes).map_err(|e| Failure::Bundle(e.to_string()))?;
    if let Some(deb) = package {
        dpkg_install(deb)?;
    }
    if !layout.agent_bin.exists() {
        return Err(Failure::NotInstalled(
            layout.agent_bin.display().to_string(),
        ));
    }
    if let Some((device_id, collector)) = enrolled(layout)? {
        let started = start(layout)?;
        return Ok(Outcome::AlreadyEnrolled {
            device_id,
            collector,
            started,
        });
    }
    // Checked only now: an expired bundle on an enrolled laptop is harmless.
    bundle
        .check_usable(&shown, Utc::now())
        .map_err(|e| Failure::Bundle(e.to_string()))?;
    let (device_id, collector) = enroll(layout, &bundle)?;
    let started = start(layout)?;
    Ok(Outcome::Enrolled {
        device_id,
        collector,
        started,
    })
}

fn dpkg_install(deb: &Path) -> Result<(), Failure> {
    let out = Command::new("dpkg")
        .arg("-i")
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::Dpkg(format!("cannot run dpkg: {e}")))?;
    if !out.status.success() {
        return Err(Failure::Dpkg(last_lines(&out.stderr, 3)));
    }
    Ok(())
}

/// `(device id, collector)` if `caretaker-agent status --json` says this machine is enrolled.
fn enrolled(layout: &Layout) -> Result<Option<(String, String)>, Failure> {
    let v = agent_status(layout)?;
    if v["enrolled"].as_bool() != Some(true) {
        return Ok(None);
    }
    let e = &v["enrollment"];
    Ok(Some((
        e["device_id"].as_str().unwrap_or("?").to_string(),
        e["collector"].as_str().unwrap_or("?").to_string(),
    )))
}

fn agent_status(layout: &Layout) -> Result<serde_json::Value, Failure> {
    let out = Command::new(&layout.agent_bin)
        .args(["status", "--json", "--state-dir"])
        .arg(&layout.state_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::Other(format!("cannot run {}: {e}", layout.agent_bin.display())))?;
    if !out.status.success() {
        return Err(Failure::Other(format!(
            "`caretaker-agent status` failed: {}",
            last_lines(&out.stderr, 2)
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| Failure::Other(format!("`caretaker-agent status --json` said no JSON: {e}")))
}

/// Tries each address in the bundle in order; the first that answers decides.
fn enroll(layout: &Layout, bundle: &Bundle) -> Result<(String, String), Failure> {
    let mut unreachable = Vec::new();
    for addr in &bundle.collectors {
        let out = Command::new(&layout.agent_bin)
            .args(["enroll", "--collector", addr, "--ca-fingerprint"])
            .arg(&bundle.ca_fingerprint)
            .arg("--state-dir")
            .arg(&layout.state_dir)
            .env("CARETAKER_ENROLL_TOKEN", &bundle.token)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                Failure::Other(format!("cannot run {}: {e}", layout.agent_bin.display()))
            })?;
        if out.status.success() {
            return match enrolled(layout)? {
                Some(id) => Ok(id),
                None => Err(Failure::Other(
                    "`caretaker-agent enroll` succeeded but the machine is not enrolled".into(),
                )),
            };
        }
        let err = last_lines(&out.stderr, 1);
        match classify_enroll_error(&err, bundle) {
            EnrollFailure::Unreachable => unreachable.push(err),
            EnrollFailure::AlreadyEnrolled => {
                if let Some(id) = enrolled(layout)? {
                    return Ok(id);
                }
                return Err(Failure::Other(err));
            }
            EnrollFailure::Final(f) => return Err(f),
        }
    }
    Err(Failure::CollectorUnreachable(format!(
        "could not reach the collector at {}: {}; check this laptop's network, or that the addresses in the bundle are right",
        bundle.collectors.join(", "),
        unreachable.join("; ")
    )))
}

#[derive(Debug, PartialEq, Eq)]
enum EnrollFailure {
    Unreachable,
    AlreadyEnrolled,
    Final(Failure),
}

/// Reads `caretaker-agent enroll`'s error line (its messages are in `agent/src/enroll.rs` and the
/// collector's `service::EnrollError`) and adds what the technician should do with a bundle.
fn classify_enroll_error(line: &str, bundle: &Bundle) -> EnrollFailure {
    let remake = format!(
        "make a new bundle on the collector: caretaker-collector bundle create --uses {} --expires 14d --label \"{}\" --out FILE",
        bundle.uses.max(1),
        bundle.label
    );
    if line.contains("cannot reach the collector") {
        EnrollFailure::Unreachable
    } else if line.contains("already enrolled") {
        EnrollFailure::AlreadyEnrolled
    } else if line.contains("used its maximum number of times") {
        EnrollFailure::Final(Failure::Refused(format!(
            "the collector refused: this bundle (\"{}\") has been used for all of its {} enrolment(s); {remake}",
            bundle.label, bundle.uses
        )))
    } else if line.contains("has expired") {
        EnrollFailure::Final(Failure::Refused(format!(
            "the collector refused: this bundle (\"{}\") expired at {}; {remake}",
            bundle.label, bundle.expires_at
        )))
    } else if line.contains("not recognised") {
        EnrollFailure::Final(Failure::Refused(format!(
            "the collector does not know this bundle's token (was it made by another collector, or edited?); {remake}"
        )))
    } else if line.contains("refused enrolment") || line.contains("CA fingerprint") {
        EnrollFailure::Final(Failure::Refused(strip_prefix(line)))
    } else {
        EnrollFailure::Final(Failure::Other(strip_prefix(line)))
    }
}

fn strip_prefix(line: &str) -> String {
    line.trim()
        .strip_prefix("caretaker-agent: ")
        .unwrap_or(line.trim())
        .to_string()
}

/// Starts the agent unless it runs already: through systemd where systemd is init, otherwise in
/// the background with its output in the log (containers, chroots).
fn start(layout: &Layout) -> Result<Started, Failure> {
    if layout.systemd_marker.is_dir() {
        let out = Command::new("systemctl")
            .args(["enable", "--now", "caretaker-agent.service"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Failure::Start(format!("cannot run systemctl: {e}")))?;
        if !out.status.success() {
            return Err(Failure::Start(format!(
                "systemctl enable --now caretaker-agent.service: {}; see `journalctl -u caretaker-agent`",
                last_lines(&out.stderr, 2)
            )));
        }
        return Ok(Started::Systemd);
    }
    // Enabled for the next boot under systemd all the same (`systemctl enable` only writes the
    // symlinks when systemd is not running); best effort: without systemctl there is no systemd
    // to boot either.
    let _ = Command::new("systemctl")
        .args(["enable", "--quiet", "caretaker-agent.service"])
        .stdin(Stdio::null())
        .output();
    if agent_status(layout)?["running"].as_bool() == Some(true) || !running_agents().is_empty() {
        return Ok(Started::AlreadyRunning);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&layout.log)
        .map_err(|e| Failure::Start(format!("cannot open {}: {e}", layout.log.display())))?;
    let mut cmd = Command::new("setsid");
    cmd.arg("-f").arg(&layout.agent_bin).arg("run");
    cmd.arg("--state-dir").arg(&layout.state_dir);
    if layout.config.exists() {
        cmd.arg("--config").arg(&layout.config);
    }
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| Failure::Start(e.to_string()))?)
        .stderr(log)
        .status()
        .map_err(|e| Failure::Start(format!("cannot run setsid: {e}")))?;
    if !status.success() {
        return Err(Failure::Start(format!(
            "setsid caretaker-agent run exited with {status}; see {}",
            layout.log.display()
        )));
    }
    Ok(Started::Detached)
}

/// `start` for the package's `postinst` on upgrade: starts the agent again if this machine is
/// enrolled, does nothing otherwise. Returns what it did, for the message.
pub fn start_if_enrolled(layout: &Layout) -> Result<Option<Started>, Failure> {
    if enrolled(layout)?.is_none() {
        return Ok(None);
    }
    start(layout).map(Some)
}

/// `stop` for the package's `prerm`: stops the agent cleanly (it delivers what it can and releases
/// any USB hold), through systemd or, without it, with SIGTERM to each `caretaker-agent run`.
pub fn stop(layout: &Layout) -> Result<(), Failure> {
    if layout.systemd_marker.is_dir() {
        let out = Command::new("systemctl")
            .args(["stop", "caretaker-agent.service"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Failure::Other(format!("cannot run systemctl: {e}")))?;
        if !out.status.success() {
            return Err(Failure::Other(format!(
                "systemctl stop caretaker-agent.service: {}",
                last_lines(&out.stderr, 2)
            )));
        }
        return Ok(());
    }
    for pid in running_agents() {
        stop_pid(&pid.to_string());
    }
    Ok(())
}

/// `caretaker-agent run` processes on this machine, found in /proc: a just-started agent has not
/// written its status file yet, so that file alone cannot say whether one runs.
pub fn running_agents() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let mut args = cmdline.split(|&b| b == 0);
        let exe = args.next()?;
        let is_agent = exe.ends_with(b"/caretaker-agent") || exe == b"caretaker-agent";
        (is_agent && args.next() == Some(b"run") && !zombie(pid)).then_some(pid)
    })
    .collect()
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

fn stop_pid(pid: &str) {
    let _ = Command::new("kill").args(["-TERM", pid]).status();
    // The agent gets 3 s to deliver and then stops; allow it the unit's TimeoutStopSec.
    for _ in 0..200 {
        // Gone, or a zombie its parent has not reaped yet.
        let gone = pid.parse().map_or(true, zombie) || !Path::new("/proc").join(pid).exists();
        if gone {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-KILL", pid]).status();
}

/// The last `n` non-empty lines of a command's output, joined with " | ".
pub fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use caretaker_proto::bundle::BUNDLE_VERSION;

    fn bundle() -> Bundle {
        Bundle {
            caretaker_bundle: BUNDLE_VERSION,
            label: "Year 5 trolley".into(),
            collectors: vec!["a:7443".into()],
            ca_fingerprint: "sha256:00".into(),
            token: "cte_x".into(),
            uses: 30,
            created_at: Utc::now(),
            expires_at: Utc::now(),
        }
    }

    /// The agent's own error lines, as `caretaker-agent enroll` prints them.
    #[test]
    fn enrolment_errors_become_a_reason_and_what_to_do() {
        let b = bundle();
        assert_eq!(
            classify_enroll_error(
                "caretaker-agent: cannot reach the collector at a:7443: connection refused",
                &b
            ),
            EnrollFailure::Unreachable
        );
        let EnrollFailure::Final(f) = classify_enroll_error(
            "caretaker-agent: the collector refused enrolment: the enrolment token has already been used its maximum number of times",
            &b,
        ) else {
            panic!("used up is final")
        };
        assert_eq!(f.reason(), "enrolment refused");
        let msg = f.to_string();
        assert!(msg.contains("all of its 30 enrolment(s)"), "{msg}");
        assert!(
            msg.contains("caretaker-collector bundle create --uses 30"),
            "{msg}"
        );
        let EnrollFailure::Final(f) = classify_enroll_error(
            "caretaker-agent: the collector refused enrolment: the enrolment token has expired; create a new one with `caretaker-collector token create`",
            &b,
        ) else {
            panic!("expired is final")
        };
        assert!(f.to_string().contains("expired at"), "{f}");
        assert_eq!(
            classify_enroll_error(
                "caretaker-agent: this machine is already enrolled as device d1; remove x to enrol it again",
                &b
            ),
            EnrollFailure::AlreadyEnrolled
        );
        let EnrollFailure::Final(f) = classify_enroll_error("caretaker-agent: boom", &b) else {
            panic!()
        };
        assert_eq!((f.reason(), f.to_string().as_str()), ("other", "boom"));
    }

    #[test]
    fn outcomes_read_back_from_their_json_line() {
        let o = Outcome::Enrolled {
            device_id: "d1".into(),
            collector: "a:7443".into(),
            started: Started::Detached,
        };
        let line = serde_json::to_string(&o).unwrap();
        assert!(line.contains(r#""result":"enrolled""#), "{line}");
        assert_eq!(serde_json::from_str::<Outcome>(&line).unwrap(), o);
        let f: Outcome = Failure::Dpkg("dependency problems".into()).into();
        assert_eq!(
            serde_json::to_value(&f).unwrap()["reason"],
            serde_json::json!("dpkg error")
        );
    }

    #[test]
    fn a_missing_or_junk_bundle_is_refused_before_anything_is_installed() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout {
            agent_bin: tmp.path().join("no-agent"),
            ..Layout::default()
        };
        let o = install(&layout, &tmp.path().join("missing.caretaker"), None);
        assert!(
            matches!(&o, Outcome::Failed { reason, message } if reason == "bundle unusable" && message.contains("cannot read the bundle")),
            "{o:?}"
        );
        let junk = tmp.path().join("junk.caretaker");
        std::fs::write(&junk, "hello").unwrap();
        let o = install(&layout, &junk, None);
        assert!(o.sentence().contains("bundle create"), "{o:?}");
        // A good bundle but no agent installed: say how to install it.
        let good = tmp.path().join("good.caretaker");
        std::fs::write(&good, bundle().to_json()).unwrap();
        let o = install(&layout, &good, None);
        assert!(o.sentence().contains("pass --package"), "{o:?}");
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines(b"a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines(b"", 2), "");
    }
}
