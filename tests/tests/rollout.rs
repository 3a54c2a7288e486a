//! Roll-out end to end with real parts: the `.deb` packages built by `scripts/build-debs.sh` and
//! checked by lintian, installed, upgraded, removed and purged by the real dpkg in a laptop's own
//! root; `caretaker-installer install` and `rollout` over the real ssh to real sshd instances in
//! network namespaces (`caretaker_tests::laptop_rig`), against a real collector there.
//!
//! Needs root, and openssh-server, openssh-client, iproute2, lintian, dpkg-dev, binutils and curl
//! (scripts/install-test-deps.sh).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use caretaker_tests::laptop_rig::{Laptop, Network, ssh_key};
use caretaker_tests::{Proc, bin, bin_dir, run, wait_for};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// The agent and collector packages at two versions, built once from this build's binaries.
struct Debs {
    _dir: tempfile::TempDir,
    agent: PathBuf,
    agent_next: PathBuf,
    collector: PathBuf,
}

fn debs() -> &'static Debs {
    static DEBS: OnceLock<Debs> = OnceLock::new();
    DEBS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        for v in ["0.1.0", "0.1.1"] {
            let (ok, out, err) = run(Command::new(workspace().join("scripts/build-debs.sh"))
                .args(["--fast", "--version", v, "--bin-dir"])
                .arg(bin_dir())
                .arg("--out")
                .arg(dir.path()));
            assert!(ok, "build-debs.sh failed: {out}{err}");
        }
        let p = |n: &str| dir.path().join(n);
        Debs {
            agent: p("caretaker-agent_0.1.0_amd64.deb"),
            agent_next: p("caretaker-agent_0.1.1_amd64.deb"),
            collector: p("caretaker-collector_0.1.0_amd64.deb"),
            _dir: dir,
        }
    })
}

/// A collector serving on the school network's address.
struct SchoolCollector {
    dir: tempfile::TempDir,
    _proc: Proc,
    web: String,
}

impl SchoolCollector {
    fn start(net: &Network) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--hostname", &net.addr.to_string()]));
        assert!(ok, "init: {out}{err}");
        let mut child = net
            .command(bin("caretaker-collector"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--grpc-listen", &format!("{}:7443", net.addr)])
            .args(["--web-listen", &format!("{}:8443", net.addr)])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("caretaker-collector: grpc="), "{line:?}");
        SchoolCollector {
            dir,
            _proc: Proc {
                child,
                name: "collector".into(),
            },
            web: format!("https://{}:8443", net.addr),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `bundle create`, returning the file.
    fn bundle(&self, name: &str, uses: u32, expires: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        let (ok, stdout, err) = run(Command::new(bin("caretaker-collector"))
            .args(["bundle", "create", "--data-dir"])
            .arg(self.data())
            .args(["--uses", &uses.to_string(), "--expires", expires])
            .args(["--label", "Year 5 trolley", "--out"])
            .arg(&out));
        assert!(ok, "bundle create: {stdout}{err}");
        assert!(
            stdout.contains("caretaker-installer install --bundle"),
            "{stdout}"
        );
        out
    }

    /// GET on the API from inside the school network (curl: the API is not reachable from outside).
    fn get(&self, net: &Network, path: &str) -> Value {
        let token = std::fs::read_to_string(self.data().join("admin.token")).unwrap();
        let out = net
            .command("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(self.data().join("ca.pem"))
            .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
            .arg(format!("{}/api/v1{path}", self.web))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "GET {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Devices that have stored an event of `kind`.
    fn devices_with(&self, net: &Network, kind: &str) -> Vec<String> {
        let v = self.get(net, &format!("/events?kind={kind}&limit=500"));
        let events = v["events"].as_array().cloned().unwrap_or_default();
        events
            .iter()
            .filter_map(|e| e["device_id"].as_str().map(str::to_string))
            .collect()
    }
}

/// Waits until the collector has stored an event of `kind` from `device`; on timeout shows the
/// laptop's agent log.
fn wait_heard(c: &SchoolCollector, net: &Network, l: &Laptop, kind: &str, device: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if c.devices_with(net, kind).iter().any(|d| d == device) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(l.path("/var/log/caretaker-agent.log")).unwrap_or_default();
    panic!(
        "no {kind} from {device} ({}) within 20 s; agent log:\n{log}",
        l.name
    );
}

fn stat(l: &Laptop, path: &str) -> String {
    l.exec_ok(&format!("stat -c '%U:%G %a' {path}"))
        .trim()
        .to_string()
}

fn agent_pid(l: &Laptop) -> Option<u64> {
    let v: Value = serde_json::from_str(
        &l.exec("caretaker-agent status --json")
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect::<String>(),
    )
    .ok()?;
    (v["running"] == true).then(|| v["status"]["pid"].as_u64())?
}

/// lintian as a Debian maintainer would run it: no errors, and no warnings but the missing manual
/// pages (every command has complete --help instead).
#[test]
fn the_packages_pass_lintian() {
    let d = debs();
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&d.agent)
        .arg(&d.collector)
        .output()
        .expect("lintian runs (scripts/install-test-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .filter(|l| !l.contains("no-manual-page"))
        .collect();
    assert!(complaints.is_empty(), "lintian: {complaints:#?}");
    // The check can fail: a package with a bogus maintainer is an error.
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(Command::new(workspace().join("scripts/build-debs.sh"))
        .args(["--fast", "--bin-dir"])
        .arg(bin_dir())
        .arg("--out")
        .arg(dir.path())
        .env("CARETAKER_DEB_MAINTAINER", "Nobody <nobody@localhost>"));
    assert!(ok, "{err}");
    let out = Command::new("lintian")
        .arg(dir.path().join("caretaker-collector_0.1.0_amd64.deb"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("E: caretaker-collector: bogus-mail-host"),
        "lintian must catch a bogus maintainer"
    );
}

/// One laptop through a package's life: install (files, owners, modes, conffile), the unit
/// verified where it is installed, an expired bundle refused, enrol, enrol again (harmless),
/// upgrade keeping enrolment and an edited conffile, removal without the uninstall code or
/// with a wrong one refused and reported, remove with the code keeping state (a clean removal
/// recorded), purge, and a used-up bundle refused. Then the collector's package.
#[test]
fn a_laptop_installs_enrols_upgrades_removes_and_purges_the_agent_package() {
    let d = debs();
    let net = Network::new();
    let collector = SchoolCollector::start(&net);
    let keydir = tempfile::tempdir().unwrap();
    let (_, public) = ssh_key(keydir.path(), "id_unused");
    let l = net.laptop("lab-01", &public);

    // An expired bundle is refused before anything else, with what to do.
    let expired = collector.bundle("old.caretaker", 5, "1s");
    let good = collector.bundle("school.caretaker", 1, "1h");
    l.put(&expired, "/root/old.caretaker");
    l.put(&good, "/root/school.caretaker");
    l.put(&d.agent, "/root/caretaker-agent_0.1.0_amd64.deb");
    l.put(&d.agent_next, "/root/caretaker-agent_0.1.1_amd64.deb");
    l.put(&d.collector, "/root/caretaker-collector_0.1.0_amd64.deb");

    let out = l.exec_ok("dpkg -i /root/caretaker-agent_0.1.0_amd64.deb 2>&1");
    assert!(out.contains("Enrol this laptop with"), "{out}");
    assert_eq!(stat(&l, "/usr/bin/caretaker-agent"), "root:root 755");
    assert_eq!(stat(&l, "/usr/bin/caretaker-installer"), "root:root 755");
    assert_eq!(
        stat(&l, "/lib/systemd/system/caretaker-agent.service"),
        "root:root 644"
    );
    assert_eq!(stat(&l, "/etc/caretaker/agent.toml"), "root:root 644");
    assert_eq!(stat(&l, "/var/lib/caretaker-agent"), "root:root 700");
    let conffiles = l.exec_ok("dpkg-query -W -f='${Conffiles}' caretaker-agent");
    assert!(
        conffiles.contains("/etc/caretaker/agent.toml"),
        "{conffiles}"
    );
    // The installed unit, as systemd reads it.
    l.exec_ok("systemd-analyze verify /lib/systemd/system/caretaker-agent.service");

    std::thread::sleep(Duration::from_millis(1100));
    let out = l.exec("caretaker-installer install --bundle /root/old.caretaker");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.starts_with("Not enrolled: the enrolment bundle /root/old.caretaker (\"Year 5 trolley\") expired at ")
            && said.contains("caretaker-collector bundle create"),
        "{said}"
    );

    // Enrol: one line, and the agent runs and is heard.
    let said = l.exec_ok("caretaker-installer install --bundle /root/school.caretaker");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.starts_with("Enrolled as device "), "{said}");
    assert!(said.contains(&format!("with {}:7443", net.addr)), "{said}");
    assert!(said.contains("no systemd here"), "{said}");
    let device = said["Enrolled as device ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    wait_heard(&collector, &net, &l, "agent.started", &device);
    // The unit is enabled for the next boot even without systemd running now.
    assert!(
        l.path("/etc/systemd/system/multi-user.target.wants/caretaker-agent.service")
            .symlink_metadata()
            .is_ok(),
        "enabled after enrolment"
    );

    // Again: harmless, and says so.
    let said = l.exec_ok("caretaker-installer install --bundle /root/school.caretaker");
    assert_eq!(
        said.trim(),
        format!(
            "Already enrolled as device {device} with {}:7443; the agent is running. Nothing changed.",
            net.addr
        )
    );

    // Upgrade: the enrolment, and the technician's edit to the conffile, survive; a new agent runs.
    let enrollment = std::fs::read(l.path("/var/lib/caretaker-agent/enrollment.json")).unwrap();
    l.exec_ok("echo 'heartbeat_interval = \"1m\"' >> /etc/caretaker/agent.toml");
    let old_pid = wait_for(Duration::from_secs(10), "the agent's status", || {
        agent_pid(&l)
    });
    l.exec_ok("dpkg -i /root/caretaker-agent_0.1.1_amd64.deb");
    assert_eq!(
        l.exec_ok("dpkg-query -W -f='${Version}' caretaker-agent"),
        "0.1.1"
    );
    assert_eq!(
        std::fs::read(l.path("/var/lib/caretaker-agent/enrollment.json")).unwrap(),
        enrollment
    );
    assert!(
        std::fs::read_to_string(l.path("/etc/caretaker/agent.toml"))
            .unwrap()
            .contains("heartbeat_interval = \"1m\"")
    );
    let new_pid = wait_for(Duration::from_secs(10), "the upgraded agent", || {
        agent_pid(&l).filter(|&p| p != old_pid)
    });
    assert!(
        !l.exec(&format!("test -d /proc/{old_pid}")).status.success()
            || l.exec_ok(&format!("cat /proc/{old_pid}/stat"))
                .contains(") Z"),
        "the old agent stopped"
    );

    // Removing without the uninstall code: refused by prerm, saying where the code comes from;
    // the package stays, the agent keeps running, and the collector hears of the attempt.
    let out = l.exec("dpkg -r caretaker-agent 2>&1");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refused (no code given)")
            && said.contains(&format!(
                "caretaker-collector device uninstall-code {device}"
            )),
        "{said}"
    );
    assert_eq!(
        l.exec_ok("dpkg-query -W -f='${db:Status-Status}' caretaker-agent"),
        "installed"
    );
    assert!(l.path("/usr/bin/caretaker-agent").exists());
    assert_eq!(agent_pid(&l), Some(new_pid), "the agent kept running");
    wait_heard(&collector, &net, &l, "agent.uninstall_refused", &device);
    let refused = collector.get(
        &net,
        &format!("/events?kind=agent.uninstall_refused&device={device}"),
    );
    let refused = &refused["events"][0];
    assert_eq!(refused["details"]["reason"], "no code given", "{refused}");
    assert_eq!(refused["severity"], "warning", "{refused}");
    assert_eq!(
        refused["audience"],
        serde_json::json!(["network_manager"]),
        "{refused}"
    );

    // The code, from the collector (through its admin socket while it runs; audited).
    let (ok, code, err) = run(Command::new(bin("caretaker-collector"))
        .args(["device", "uninstall-code", &device, "--data-dir"])
        .arg(collector.data()));
    assert!(ok, "uninstall-code: {code}{err}");
    let code = code.trim().to_string();
    assert_eq!(code.len(), 14, "{code:?}");
    let audit = collector.get(&net, "/audit?limit=20");
    assert!(
        audit.to_string().contains("uninstall_code_issued"),
        "{audit}"
    );

    // A wrong code (the right one backwards) is refused too.
    let wrong: String = code.chars().rev().collect();
    let out = l.exec(&format!(
        "CARETAKER_UNINSTALL_CODE={wrong} dpkg -r caretaker-agent 2>&1"
    ));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("refused (wrong code)"),
        "{said}"
    );
    assert_eq!(agent_pid(&l), Some(new_pid), "the agent kept running");

    // Remove with the code (typed loosely): stops the agent cleanly, which says goodbye as an
    // uninstall, keeps state and conffile.
    l.exec_ok(&format!(
        "CARETAKER_UNINSTALL_CODE='{}' dpkg -r caretaker-agent",
        code.to_lowercase()
    ));
    assert!(!l.path("/usr/bin/caretaker-agent").exists());
    assert!(l.path("/var/lib/caretaker-agent/enrollment.json").exists());
    assert!(l.path("/etc/caretaker/agent.toml").exists());
    assert!(
        !l.exec(&format!("test -d /proc/{new_pid}")).status.success()
            || l.exec_ok(&format!("cat /proc/{new_pid}/stat"))
                .contains(") Z"),
        "the agent stopped on remove"
    );
    wait_heard(&collector, &net, &l, "agent.uninstalled", &device);
    let devices = collector.get(&net, "/devices");
    let me = devices["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["id"] == device.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        me["state"]["lifecycle"]["status"], "uninstalled",
        "{devices}"
    );
    let refused = collector.devices_with(&net, "agent.uninstall_refused");
    assert_eq!(refused.len(), 2, "both refusals reported: {refused:?}");

    // Purge: state, conffile and the folder go.
    l.exec_ok("dpkg -P caretaker-agent");
    assert!(!l.path("/var/lib/caretaker-agent").exists());
    assert!(!l.path("/etc/caretaker").exists());

    // A fresh install with the spent one-use bundle: refused, with what to do.
    l.exec_ok("dpkg -i /root/caretaker-agent_0.1.1_amd64.deb");
    let out = l.exec("caretaker-installer install --bundle /root/school.caretaker");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        said.contains("has been used for all of its 1 enrolment(s)")
            && said.contains("caretaker-collector bundle create --uses 1"),
        "{said}"
    );

    // The collector's package: installs, says what to do next; purge keeps the school's record.
    let out = l.exec_ok("dpkg -i /root/caretaker-collector_0.1.0_amd64.deb 2>&1");
    assert!(out.contains("caretaker-collector init"), "{out}");
    assert_eq!(stat(&l, "/usr/bin/caretaker-collector"), "root:root 755");
    l.exec_ok("systemd-analyze verify /lib/systemd/system/caretaker-collector.service");
    l.exec_ok("caretaker-collector init --data-dir /var/lib/caretaker-collector >/dev/null");
    let out = l.exec_ok("dpkg -P caretaker-collector 2>&1");
    assert!(out.contains("kept /var/lib/caretaker-collector"), "{out}");
    assert!(l.path("/var/lib/caretaker-collector/ca.pem").exists());
}

/// A tiny package that owns /usr/bin/caretaker-agent: the file conflict dpkg refuses.
fn squatter(dir: &Path) -> PathBuf {
    caretaker_tests::deb::build_with(
        dir,
        "caretaker-e2e-squatter",
        "1",
        &[("usr/bin/caretaker-agent", b"#!/bin/sh\n")],
    )
}

/// Parses the CSV into host → (result, reason, device, attempts, detail).
fn read_csv(path: &Path) -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    assert_eq!(
        lines.next().unwrap(),
        "host,result,reason,device_id,attempts,seconds,detail"
    );
    lines
        .map(|l| {
            // Details may be quoted and hold commas; the first six cells never do.
            let cells: Vec<String> = l.splitn(7, ',').map(str::to_string).collect();
            (cells[0].clone(), cells)
        })
        .collect()
}

fn rollout_hosts(n: usize) -> usize {
    std::env::var("CARETAKER_ROLLOUT_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

/// Several laptops at once over the real ssh: the good ones enrol and their agents are heard; one
/// switched off (unreachable, retried), one refusing our key (authentication) and one whose dpkg
/// refuses the package (a file conflict) are each reported as such in the table and the CSV.
/// Run again, an enrolled laptop is reported as already enrolled.
///
/// `CARETAKER_ROLLOUT_HOSTS=20` makes twenty good laptops (the BENCHMARKS.md figure).
#[test]
fn rollout_enrols_the_reachable_laptops_and_says_why_the_others_failed() {
    let d = debs();
    let good_count = rollout_hosts(3);
    let net = Network::new();
    let collector = SchoolCollector::start(&net);
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(tmp.path(), "id_technician");
    let (_, other_public) = ssh_key(tmp.path(), "id_someone_else");
    let started = Instant::now();
    let good: Vec<Laptop> = (1..=good_count)
        .map(|i| net.laptop(&format!("lab-{i:02}"), &public))
        .collect();
    let dpkg_broken = net.laptop("lab-dpkg", &public);
    let locked = net.laptop("lab-key", &other_public);
    eprintln!(
        "{} laptops up in {:.1} s",
        good_count + 2,
        started.elapsed().as_secs_f64()
    );
    dpkg_broken.put(&squatter(tmp.path()), "/root/squatter.deb");
    dpkg_broken.exec_ok("dpkg -i /root/squatter.deb");

    let hosts = tmp.path().join("hosts.txt");
    let mut list = String::from("# Year 5 trolley\n");
    for l in &good {
        list.push_str(&format!("root@{}\n", l.addr));
    }
    list.push_str(&format!(
        "{}\n{}\n{}  # switched off\n",
        dpkg_broken.addr,
        locked.addr,
        net.unused_address()
    ));
    std::fs::write(&hosts, list).unwrap();
    let bundle = collector.bundle("school.caretaker", 50, "1h");
    let csv = tmp.path().join("rollout.csv");
    let rollout = |hosts: &Path, csv: &Path| {
        net.command(bin("caretaker-installer"))
            .args(["rollout", "--parallel", "10", "--retries", "1"])
            .args(["--retry-pause", "1s", "--connect-timeout", "5s"])
            .arg("--hosts")
            .arg(hosts)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--package")
            .arg(&d.agent)
            .arg("-i")
            .arg(&key)
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                tmp.path().join("known_hosts").display()
            ))
            .arg("--csv")
            .arg(csv)
            .output()
            .unwrap()
    };
    let t = Instant::now();
    let out = rollout(&hosts, &csv);
    let wall = t.elapsed();
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    assert!(!out.status.success(), "failures make a non-zero exit");
    assert!(
        table.contains(&format!(
            "{} host(s): {good_count} enrolled, 0 already enrolled, 3 failed",
            good_count + 3
        )),
        "{table}"
    );

    let rows = read_csv(&csv);
    assert_eq!(rows.len(), good_count + 3);
    let mut devices = Vec::new();
    let mut per_host = Vec::new();
    for l in &good {
        let r = &rows[&format!("root@{}", l.addr)];
        assert_eq!((r[1].as_str(), r[2].as_str()), ("enrolled", ""), "{r:?}");
        assert!(!r[3].is_empty());
        devices.push(r[3].clone());
        per_host.push(r[5].parse::<f64>().unwrap());
    }
    let r = &rows[&dpkg_broken.addr.to_string()];
    assert_eq!(
        (r[1].as_str(), r[2].as_str()),
        ("failed", "dpkg error"),
        "{r:?}"
    );
    assert!(r[6].contains("caretaker-e2e-squatter"), "{r:?}");
    let r = &rows[&locked.addr.to_string()];
    assert_eq!(
        (r[1].as_str(), r[2].as_str(), r[4].as_str()),
        ("failed", "authentication", "1"),
        "authentication is not retried: {r:?}"
    );
    let r = &rows[&net.unused_address().to_string()];
    assert_eq!(
        (r[1].as_str(), r[2].as_str(), r[4].as_str()),
        ("failed", "unreachable", "2"),
        "unreachable is retried once: {r:?}"
    );

    // Every enrolled laptop's agent has been heard from.
    wait_for(
        Duration::from_secs(30),
        "agent.started from every laptop",
        || {
            let heard = collector.devices_with(&net, "agent.started");
            devices.iter().all(|d| heard.contains(d)).then_some(())
        },
    );
    let mut hostnames: Vec<String> = collector.get(&net, "/devices")["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["hostname"].as_str().unwrap_or("").to_string())
        .collect();
    hostnames.sort();
    let mut want: Vec<String> = good.iter().map(|l| l.name.clone()).collect();
    want.sort();
    assert_eq!(hostnames, want);
    // The token left no copy behind.
    assert!(!good[0].path("/var/tmp/caretaker-rollout").exists());

    per_host.sort_by(f64::total_cmp);
    eprintln!(
        "rollout to {good_count} good laptop(s) + 3 failing, --parallel 10: wall {:.1} s; per good host median {:.1} s, max {:.1} s",
        wall.as_secs_f64(),
        per_host[per_host.len() / 2],
        per_host[per_host.len() - 1]
    );

    // Again, to an enrolled laptop: harmless, and reported as already enrolled.
    let again = tmp.path().join("again.txt");
    std::fs::write(&again, format!("root@{}\n", good[0].addr)).unwrap();
    let csv2 = tmp.path().join("again.csv");
    let out = rollout(&again, &csv2);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = &read_csv(&csv2)[&format!("root@{}", good[0].addr)];
    assert_eq!(
        (r[1].as_str(), r[3].as_str()),
        ("already enrolled", devices[0].as_str())
    );
}
