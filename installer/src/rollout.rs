//! `caretaker-installer rollout`: the agent package and a bundle to many laptops over the system
//! `ssh`/`scp`, N at a time, with retries of transient failures, a progress bar, a summary table
//! and the same summary as CSV. Each host's result is one `HostResult` row.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::install::Outcome;

mod hosts;
pub use hosts::{BadHost, Host, HostsError, parse_hosts};

/// Where the files go on each laptop; removed again at the end (the bundle holds a token).
pub const REMOTE_DIR: &str = "/var/tmp/caretaker-rollout";

/// Why a host failed, as the summary and CSV name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Unreachable,
    Authentication,
    DpkgError,
    EnrolmentRefused,
    /// The laptop was reached but could not reach the collector.
    CollectorUnreachable,
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::Authentication => "authentication",
            Reason::DpkgError => "dpkg error",
            Reason::EnrolmentRefused => "enrolment refused",
            Reason::CollectorUnreachable => "collector unreachable",
            Reason::Other => "other",
        }
    }

    /// Worth another try after a pause: the laptop may be waking, or dpkg busy with an update.
    fn transient(self, detail: &str) -> bool {
        match self {
            Reason::Unreachable | Reason::CollectorUnreachable => true,
            Reason::DpkgError => detail.contains("lock"),
            _ => false,
        }
    }

    fn from_install(reason: &str) -> Self {
        match reason {
            "dpkg error" => Reason::DpkgError,
            "enrolment refused" | "bundle unusable" => Reason::EnrolmentRefused,
            "collector unreachable" => Reason::CollectorUnreachable,
            _ => Reason::Other,
        }
    }
}

/// Reads an `ssh`/`scp` failure (exit 255, or scp's 1) from its standard error.
pub fn classify_ssh(stderr: &str) -> Reason {
    let s = stderr.to_ascii_lowercase();
    const AUTH: [&str; 5] = [
        "permission denied",
        "too many authentication failures",
        "host key verification failed",
        "no supported authentication methods",
        "authentication failed",
    ];
    const UNREACHABLE: [&str; 10] = [
        "connection timed out",
        "no route to host",
        "connection refused",
        "network is unreachable",
        "could not resolve hostname",
        "name or service not known",
        "connection closed by",
        "connection reset",
        "operation timed out",
        "broken pipe",
    ];
    if AUTH.iter().any(|p| s.contains(p)) {
        Reason::Authentication
    } else if UNREACHABLE.iter().any(|p| s.contains(p)) {
        Reason::Unreachable
    } else {
        Reason::Other
    }
}

/// The end of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Enrolled,
    AlreadyEnrolled,
    Failed(Reason),
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Enrolled => "enrolled",
            Status::AlreadyEnrolled => "already enrolled",
            Status::Failed(_) => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HostResult {
    pub host: String,
    pub status: Status,
    pub device_id: String,
    pub attempts: u32,
    pub seconds: f64,
    pub detail: String,
}

/// How to reach the laptops.
#[derive(Debug, Clone)]
pub struct Options {
    pub bundle: PathBuf,
    pub package: PathBuf,
    pub parallel: usize,
    /// Tries after the first, for transient failures.
    pub retries: u32,
    /// Pause before the first retry; doubled for each further one.
    pub retry_pause: Duration,
    pub connect_timeout: Duration,
    pub default_user: Option<String>,
    pub identity: Option<PathBuf>,
    /// Extra `-o KEY=VALUE` options for both ssh and scp.
    pub ssh_options: Vec<String>,
    /// Where ssh keeps its multiplexing sockets for the run (short path: sockets are limited to ~100 bytes).
    pub control_dir: PathBuf,
    pub progress: bool,
}

/// Runs the roll-out: every host gets a result, in the order of the hosts file.
pub fn rollout(hosts: &[Host], opts: &Options) -> Vec<HostResult> {
    let queue: Arc<Mutex<VecDeque<(usize, Host)>>> =
        Arc::new(Mutex::new(hosts.iter().cloned().enumerate().collect()));
    let results: Arc<Mutex<Vec<Option<HostResult>>>> =
        Arc::new(Mutex::new(vec![None; hosts.len()]));
    let bar = if opts.progress {
        ProgressBar::new(hosts.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let counts = Arc::new(Mutex::new((0u32, 0u32)));
    std::thread::scope(|scope| {
        for _ in 0..opts.parallel.clamp(1, hosts.len().max(1)) {
            let (queue, results, bar, counts) = (&queue, &results, &bar, &counts);
            scope.spawn(move || {
                loop {
                    let Some((i, host)) = queue.lock().expect("queue").pop_front() else {
                        break;
                    };
                    let r = run_host(&host, opts);
                    let msg = {
                        let mut c = counts.lock().expect("counts");
                        match r.status {
                            Status::Failed(_) => c.1 += 1,
                            _ => c.0 += 1,
                        }
                        format!(
                            "{} ok, {} failed (last: {} {})",
                            c.0,
                            c.1,
                            r.host,
                            r.status.as_str()
                        )
                    };
                    bar.set_message(msg);
                    bar.inc(1);
                    results.lock().expect("results")[i] = Some(r);
                }
            });
        }
    });
    bar.finish();
    Arc::try_unwrap(results)
        .expect("workers done")
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every host ran"))
        .collect()
}

/// One host, with retries of transient failures.
fn run_host(host: &Host, opts: &Options) -> HostResult {
    let start = Instant::now();
    let mut attempts = 0;
    let (status, device_id, detail) = loop {
        attempts += 1;
        let (status, device_id, detail) = attempt(host, opts);
        let again = match &status {
            Status::Failed(r) => r.transient(&detail) && attempts <= opts.retries,
            _ => false,
        };
        if !again {
            break (status, device_id, detail);
        }
        std::thread::sleep(opts.retry_pause * 2u32.pow(attempts - 1));
    };
    // Close the shared connection, if one was made.
    let _ = ssh(host, opts, true)
        .args(["-O", "exit"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    HostResult {
        host: host.label(),
        status,
        device_id,
        attempts,
        seconds: start.elapsed().as_secs_f64(),
        detail,
    }
}

/// One try: make the remote folder, copy the two files, install and enrol, clean up.
fn attempt(host: &Host, opts: &Options) -> (Status, String, String) {
    let fail = |r: Reason, d: String| (Status::Failed(r), String::new(), d);
    let deb_name = file_name(&opts.package);
    let step = |out: std::io::Result<Output>, what: &str| -> Result<Output, (Reason, String)> {
        let out = out.map_err(|e| (Reason::Other, format!("cannot run {what}: {e}")))?;
        match out.status.code() {
            Some(0) => Ok(out),
            _ => {
                let err = crate::install::last_lines(&out.stderr, 2);
                Err((classify_ssh(&err), format!("{what}: {err}")))
            }
        }
    };
    let sudo = sudo_needed(host, opts);
    let mkdir = ssh(host, opts, false)
        .arg(if sudo {
            format!("sudo -n sh -c 'umask 077 && mkdir -p {REMOTE_DIR}'")
        } else {
            format!("umask 077 && mkdir -p {REMOTE_DIR}")
        })
        .output();
    if let Err((r, d)) = step(mkdir, "ssh") {
        return fail(r, d);
    }
    // The bundle is copied under a fixed name so the script can find it. With sudo the folder is
    // root's, so the login user copies into its home and the script moves the files.
    let dest = |name: &str| {
        if sudo {
            format!("{}:{name}", target(host, true))
        } else {
            format!("{}:{REMOTE_DIR}/{name}", target(host, true))
        }
    };
    let copy = scp(host, opts)
        .arg(&opts.package)
        .arg(dest(&deb_name))
        .output();
    if let Err((r, d)) = step(copy, "scp") {
        return fail(r, d);
    }
    let copy = scp(host, opts)
        .arg(&opts.bundle)
        .arg(dest("bundle.caretaker"))
        .output();
    if let Err((r, d)) = step(copy, "scp") {
        return fail(r, d);
    }
    let script = remote_script(&deb_name, sudo);
    let run = ssh(host, opts, false).arg(script).output();
    let out = match run {
        Ok(o) => o,
        Err(e) => return fail(Reason::Other, format!("cannot run ssh: {e}")),
    };
    if out.status.code() == Some(255) {
        let err = crate::install::last_lines(&out.stderr, 2);
        return fail(classify_ssh(&err), format!("ssh: {err}"));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        let err = crate::install::last_lines(&out.stderr, 2);
        return fail(
            Reason::Other,
            format!("caretaker-installer gave no result: {err}"),
        );
    };
    match serde_json::from_str::<Outcome>(line) {
        Ok(Outcome::Enrolled { device_id, .. }) => (Status::Enrolled, device_id, String::new()),
        Ok(Outcome::AlreadyEnrolled { device_id, .. }) => {
            (Status::AlreadyEnrolled, device_id, String::new())
        }
        Ok(Outcome::Failed { reason, message }) => fail(Reason::from_install(&reason), message),
        Err(e) => fail(Reason::Other, format!("unreadable result `{line}`: {e}")),
    }
}

/// Installs with dpkg and enrols with the installer the package brought, then removes the copies.
/// A dpkg failure is reported in the installer's own JSON form so both read the same way.
fn remote_script(deb: &str, sudo: bool) -> String {
    let s = if sudo { "sudo -n " } else { "" };
    let d = REMOTE_DIR;
    let fetch = if sudo {
        format!("{s}mv -f ~/{deb} ~/bundle.caretaker {d}/ && ")
    } else {
        String::new()
    };
    format!(
        "{fetch}\
         if ! out=$({s}env DEBIAN_FRONTEND=noninteractive dpkg -i {d}/{deb} 2>&1); then \
           {s}rm -rf {d}; \
           msg=$(printf '%s\\n' \"$out\" | sed -n '/^dpkg: /,$p' | sed '/^Errors were encountered/,$d' | grep -v -e '^ *$' -e 'paste subprocess' | head -n 2 | tr '\\n\"\\\\' '   '); \
           printf '{{\"result\":\"failed\",\"reason\":\"dpkg error\",\"message\":\"%s\"}}\\n' \"$msg\"; \
           exit 0; \
         fi; \
         {s}caretaker-installer install --json --bundle {d}/bundle.caretaker; \
         {s}rm -rf {d}"
    )
}

fn sudo_needed(host: &Host, opts: &Options) -> bool {
    let user = host.user.as_ref().or(opts.default_user.as_ref());
    user.is_some_and(|u| u != "root")
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "caretaker-agent.deb".into())
}

/// The host as ssh and scp take it (the user goes in `-o User=`; scp wants IPv6 in brackets).
fn target(host: &Host, brackets: bool) -> String {
    if brackets && host.host.contains(':') {
        format!("[{}]", host.host)
    } else {
        host.host.clone()
    }
}

fn common(cmd: &mut Command, host: &Host, opts: &Options) {
    cmd.args(["-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!(
            "ConnectTimeout={}",
            opts.connect_timeout.as_secs().max(1)
        ))
        // First contact with a laptop: trust and record its key; a changed key still fails.
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60"])
        .arg("-o")
        .arg(format!("ControlPath={}/%C", opts.control_dir.display()))
        .args(["-o", "ServerAliveInterval=15"])
        // Only errors on stderr: they become the failure's detail.
        .args(["-o", "LogLevel=ERROR"]);
    if let Some(u) = host.user.as_ref().or(opts.default_user.as_ref()) {
        cmd.arg("-o").arg(format!("User={u}"));
    }
    if let Some(i) = &opts.identity {
        cmd.arg("-i").arg(i).args(["-o", "IdentitiesOnly=yes"]);
    }
    for o in &opts.ssh_options {
        cmd.arg("-o").arg(o);
    }
    cmd.stdin(Stdio::null());
}

fn ssh(host: &Host, opts: &Options, control_only: bool) -> Command {
    let mut cmd = Command::new("ssh");
    common(&mut cmd, host, opts);
    if let Some(p) = host.port {
        cmd.arg("-p").arg(p.to_string());
    }
    cmd.arg(target(host, false));
    if !control_only {
        cmd.arg("--");
    }
    cmd
}

fn scp(host: &Host, opts: &Options) -> Command {
    let mut cmd = Command::new("scp");
    cmd.arg("-q");
    common(&mut cmd, host, opts);
    if let Some(p) = host.port {
        cmd.arg("-P").arg(p.to_string());
    }
    cmd
}

/// The summary table, widths fitted to the contents.
pub fn table(results: &[HostResult]) -> String {
    let rows: Vec<[String; 5]> = results
        .iter()
        .map(|r| {
            [
                r.host.clone(),
                r.status.as_str().to_string(),
                match r.status {
                    Status::Failed(reason) => reason.as_str().to_string(),
                    _ => r.device_id.clone(),
                },
                r.attempts.to_string(),
                format!("{:.1}", r.seconds),
            ]
        })
        .collect();
    let head = ["HOST", "RESULT", "DEVICE / REASON", "TRIES", "SECONDS"];
    let mut w = head.map(str::len);
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 5]| {
        let _ = writeln!(
            out,
            "{:<a$}  {:<b$}  {:<c$}  {:>d$}  {:>e$}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4]
        );
    };
    line(&mut out, head);
    for row in &rows {
        line(&mut out, row.each_ref().map(String::as_str));
    }
    let ok = results
        .iter()
        .filter(|r| !matches!(r.status, Status::Failed(_)))
        .count();
    let _ = writeln!(
        out,
        "{} host(s): {} enrolled, {} already enrolled, {} failed",
        results.len(),
        results
            .iter()
            .filter(|r| r.status == Status::Enrolled)
            .count(),
        results
            .iter()
            .filter(|r| r.status == Status::AlreadyEnrolled)
            .count(),
        results.len() - ok
    );
    for r in results {
        if let Status::Failed(_) = r.status {
            let _ = writeln!(out, "  {}: {}", r.host, r.detail);
        }
    }
    out
}

/// The same summary for a spreadsheet (RFC 4180 quoting).
pub fn csv(results: &[HostResult]) -> String {
    let mut out = String::from("host,result,reason,device_id,attempts,seconds,detail\r\n");
    for r in results {
        let reason = match r.status {
            Status::Failed(reason) => reason.as_str(),
            _ => "",
        };
        let cells = [
            r.host.as_str(),
            r.status.as_str(),
            reason,
            r.device_id.as_str(),
            &r.attempts.to_string(),
            &format!("{:.1}", r.seconds),
            r.detail.as_str(),
        ]
        .map(csv_cell);
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real messages from OpenSSH 9.2's ssh and scp.
    #[test]
    fn ssh_failures_are_classified_from_what_ssh_says() {
        for (msg, want) in [
            (
                "root@10.9.0.3: Permission denied (publickey).",
                Reason::Authentication,
            ),
            ("Host key verification failed.", Reason::Authentication),
            (
                "ssh: connect to host 10.9.0.9 port 22: No route to host",
                Reason::Unreachable,
            ),
            (
                "ssh: connect to host 10.9.0.9 port 22: Connection timed out",
                Reason::Unreachable,
            ),
            (
                "ssh: connect to host 10.9.0.9 port 22: Connection refused",
                Reason::Unreachable,
            ),
            (
                "ssh: Could not resolve hostname laptop-99: Name or service not known",
                Reason::Unreachable,
            ),
            ("Connection closed by 10.9.0.3 port 22", Reason::Unreachable),
            ("scp: /var/tmp/x: No space left on device", Reason::Other),
        ] {
            assert_eq!(classify_ssh(msg), want, "{msg}");
        }
        assert!(Reason::Unreachable.transient(""));
        assert!(!Reason::Authentication.transient(""));
        assert!(Reason::DpkgError.transient("dpkg frontend lock was locked by another process"));
        assert!(!Reason::DpkgError.transient("dependency problems"));
    }

    fn result(host: &str, status: Status, detail: &str) -> HostResult {
        HostResult {
            host: host.into(),
            status,
            device_id: "dev-1".into(),
            attempts: 1,
            seconds: 2.25,
            detail: detail.into(),
        }
    }

    #[test]
    fn the_summary_counts_and_names_each_failure_and_the_csv_quotes() {
        let rs = vec![
            result("laptop-01", Status::Enrolled, ""),
            result("laptop-02", Status::AlreadyEnrolled, ""),
            result(
                "laptop-03",
                Status::Failed(Reason::DpkgError),
                "dpkg: error, \"bad\" package",
            ),
        ];
        let t = table(&rs);
        assert!(
            t.contains("3 host(s): 1 enrolled, 1 already enrolled, 1 failed"),
            "{t}"
        );
        assert!(t.contains("laptop-03  failed            dpkg error"), "{t}");
        let c = csv(&rs);
        let lines: Vec<&str> = c.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "host,result,reason,device_id,attempts,seconds,detail"
        );
        assert_eq!(lines[1], "laptop-01,enrolled,,dev-1,1,2.2,");
        assert_eq!(
            lines[3],
            "laptop-03,failed,dpkg error,dev-1,1,2.2,\"dpkg: error, \"\"bad\"\" package\""
        );
    }

    #[test]
    fn the_remote_script_reports_a_dpkg_failure_as_an_installer_result() {
        let tmp = tempfile::tempdir().unwrap();
        // Run the script's dpkg branch with a dpkg that fails, as a laptop's shell would.
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let fake = bin.join("dpkg");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'dpkg: dependency problems prevent configuration of caretaker-agent:' >&2\necho ' caretaker-agent depends on \"libfoo\"; however:' >&2\necho 'Errors were encountered while processing:' >&2\necho ' caretaker-agent' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = remote_script("caretaker-agent_0.1.0_amd64.deb", false)
            .replace(REMOTE_DIR, tmp.path().join("r").to_str().unwrap());
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let o: Outcome = serde_json::from_str(line.trim()).expect("one JSON line");
        let Outcome::Failed { reason, message } = o else {
            panic!("{line}")
        };
        assert_eq!(reason, "dpkg error");
        assert!(message.contains("depends on  libfoo"), "{message}");
    }
}
