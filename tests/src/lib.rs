//! Harness for end-to-end tests: real collector and agent processes, the JSON API, and raw TLS clients.
//!
//! Every process is killed when its handle drops, so a failing test leaves
//! nothing running.

pub mod browser_rig;
pub mod clamd_rig;
pub mod deb;
pub mod desktop_rig;
pub mod laptop_rig;
pub mod pg_rig;
pub mod smtp_rig;
pub mod usb_vm;
pub mod vm_rig;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// The directory holding the workspace's built binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A workspace binary; panics with a clear message if it was not built, or was built before
/// a change to its sources (a test of stale code passes or fails for the wrong reason).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    let built = std::fs::metadata(&p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --workspace --bins` first",
                p.display()
            )
        });
    check_fresh(name, &p, built);
    p
}

/// The source folders a workspace binary is built from.
fn sources_of(name: &str) -> &'static [&'static str] {
    match name {
        "caretaker-collector" => &[
            "collector/src",
            "collector/migrations",
            "proto/src",
            "proto/proto",
        ],
        "caretaker-agent" => &["agent/src", "proto/src", "proto/proto"],
        "caretaker-installer" => &["installer/src", "proto/src"],
        _ => &["tests/src", "agent/src", "proto/src"],
    }
}

/// Panics when a source file of `name` is newer than the binary; checked once per binary.
fn check_fresh(name: &str, path: &Path, built: std::time::SystemTime) {
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if checked.iter().any(|c| c == name) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stack: Vec<PathBuf> = sources_of(name).iter().map(|d| root.join(d)).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.modified().is_ok_and(|m| m > built) {
                panic!(
                    "{} is older than {}: run `cargo build --workspace --bins` first",
                    path.display(),
                    e.path().display()
                );
            }
        }
    }
    checked.push(name.to_string());
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on loopback for a server that cannot bind port 0 and report it.
///
/// Picked below the kernel's ephemeral range, so no outgoing connection (an agent's, a
/// browser's) can be given it between this check and the server's bind, and never the same
/// twice in one process. The collector needs none of this: it binds port 0 and says which
/// ports it got (see `Collector::serve_through`).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(12_000));
    let span = u32::from(high - low);
    // Each process starts at a different place, so concurrent test binaries rarely meet.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = TAKEN.fetch_add(1, Ordering::SeqCst);
        let port = low + ((start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {low} and {high}");
}

/// Fails the test at once, saying what needs root, when it is not running as root: better
/// than a `mount` or `ip netns` failing later with a message about something else.
pub fn require_root(what: &str) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    assert!(
        uid == "0",
        "this test needs root to {what} (effective uid {uid}); run scripts/test.sh as root"
    );
}

/// Runs a command to completion, returning (status ok, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("spawn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `caretaker-agent status` prints for the agent in `state`; panics if it fails.
pub fn agent_status(state: &Path) -> String {
    let (ok, out, err) = run(Command::new(bin("caretaker-agent"))
        .args(["status", "--state-dir"])
        .arg(state));
    assert!(ok, "caretaker-agent status failed: {err}");
    out
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        signal(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9: the process gets no chance to clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// The addresses in the collector's ready line, `caretaker-collector: grpc=A web=https://B`.
fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("caretaker-collector: grpc=")?;
    let (grpc, web) = rest.split_once(" web=https://")?;
    Some((grpc.parse().ok()?, web.parse().ok()?))
}

/// A collector data directory and, while serving, its process.
pub struct Collector {
    pub dir: PathBuf,
    pub grpc: SocketAddr,
    pub web: SocketAddr,
    pub proc: Option<Proc>,
}

impl Collector {
    /// `init` in `dir`, then `serve` on loopback ports the collector picks (restarts reuse them).
    pub fn start(dir: &Path) -> Self {
        Self::start_with_names(dir, &[])
    }

    /// As `start`, with the server certificate naming `names` (`init --hostname`).
    pub fn start_with_names(dir: &Path, names: &[&str]) -> Self {
        let args: Vec<&str> = names.iter().flat_map(|n| ["--hostname", n]).collect();
        Self::start_with_init(dir, &args)
    }

    /// As `start`, with extra `init` options (`--store URL`, `--join DIR`, `--hostname`).
    pub fn start_with_init(dir: &Path, init_args: &[&str]) -> Self {
        let mut init = Command::new(bin("caretaker-collector"));
        init.args(["init", "--data-dir"]).arg(dir).args(init_args);
        let (ok, out, err) = run(&mut init);
        assert!(ok, "init failed: {out}{err}");
        let mut c = Collector {
            dir: dir.to_path_buf(),
            // Port 0: the collector binds and reports the ports it got (`serve_through`
            // learns them from its ready line), so no other process can take them between
            // a probe and the bind; restarts then reuse them.
            grpc: "127.0.0.1:0".parse().unwrap(),
            web: "127.0.0.1:0".parse().unwrap(),
            proc: None,
        };
        c.serve();
        c
    }

    /// Starts `serve` and waits until it is listening.
    pub fn serve(&mut self) {
        self.serve_with_env(&[]);
    }

    /// Starts `serve` with extra environment variables (test hooks).
    pub fn serve_with_env(&mut self, env: &[(&str, &str)]) {
        self.serve_with_args(&[], env);
    }

    /// Starts `serve` with extra options and environment variables.
    pub fn serve_with_args(&mut self, args: &[&str], env: &[(&str, &str)]) {
        self.serve_through(
            Command::new(bin("caretaker-collector")),
            args,
            env,
            Stdio::inherit(),
        );
    }

    /// Starts `serve` through `cmd`: the collector itself, or a launcher whose arguments end
    /// with it (such as `prlimit --nofile=N -- caretaker-collector`), with extra options, its
    /// log to `stderr`; waits until it is listening.
    pub fn serve_through(
        &mut self,
        mut cmd: Command,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: impl Into<Stdio>,
    ) {
        assert!(self.proc.is_none(), "already serving");
        let mut child = cmd
            .args(["serve", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--grpc-listen",
                &self.grpc.to_string(),
                "--web-listen",
                &self.web.to_string(),
            ])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let (grpc, web) =
            parse_ready_line(&line).unwrap_or_else(|| panic!("collector did not start: {line:?}"));
        (self.grpc, self.web) = (grpc, web);
        self.proc = Some(Proc {
            child,
            name: "collector".into(),
        });
    }

    pub fn kill9(&mut self) {
        self.proc.take().expect("serving").kill9();
    }

    /// True once the serving process has exited on its own.
    pub fn has_exited(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| p.child.try_wait().ok().flatten().is_some())
    }

    /// Drops the handle of a process that has already exited, so `serve` can start another.
    pub fn forget_process(&mut self) {
        self.proc.take();
    }

    pub fn stop(&mut self) {
        let st = self.proc.take().expect("serving").stop();
        assert!(st.success(), "collector exited with {st}");
    }

    pub fn grpc_addr(&self) -> String {
        format!("localhost:{}", self.grpc.port())
    }

    /// Creates an enrolment token with `token create --json`; returns (token, fingerprint).
    pub fn token(&self, extra: &[&str]) -> (String, String) {
        let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
            .args(["token", "create", "--json", "--data-dir"])
            .arg(&self.dir)
            .args(extra));
        assert!(ok, "token create failed: {err}");
        let v: Value = serde_json::from_str(out.trim()).expect("one JSON line");
        (
            v["token"].as_str().unwrap().into(),
            v["ca_fingerprint"].as_str().unwrap().into(),
        )
    }

    /// Adds a dashboard account with `user add --password-stdin`; returns its password.
    pub fn add_user(&self, role: &str, username: &str) -> String {
        use std::io::Write;
        let password = format!("{username}-pass-0123456789");
        let mut child = Command::new(bin("caretaker-collector"))
            .args([
                "user",
                "add",
                "--role",
                role,
                "--username",
                username,
                "--password-stdin",
                "--data-dir",
            ])
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        password
    }

    /// Creates an API token with a role (`token create-api`); returns the token.
    pub fn api_token(&self, role: &str) -> String {
        let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
            .args([
                "token",
                "create-api",
                "--role",
                role,
                "--label",
                &format!("test {role}"),
                "--data-dir",
            ])
            .arg(&self.dir));
        assert!(ok, "token create-api failed: {err}");
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with("cta_"))
            .expect("the token line")
            .to_string()
    }

    pub fn api(&self) -> Api {
        Api::new(
            &format!("https://localhost:{}", self.web.port()),
            std::fs::read_to_string(self.dir.join("admin.token"))
                .unwrap()
                .trim(),
            &std::fs::read(self.dir.join("ca.pem")).unwrap(),
        )
    }

    /// Enrols an agent state dir; panics on failure.
    pub fn enroll(&self, state: &Path) -> String {
        let (token, fp) = self.token(&[]);
        let (ok, out, err) = run(Command::new(bin("caretaker-agent"))
            .args([
                "enroll",
                "--collector",
                &self.grpc_addr(),
                "--token",
                &token,
                "--ca-fingerprint",
                &fp,
                "--state-dir",
            ])
            .arg(state));
        assert!(ok, "enroll failed: {out}{err}");
        let e: Value =
            serde_json::from_slice(&std::fs::read(state.join("enrollment.json")).unwrap()).unwrap();
        e["device_id"].as_str().unwrap().to_string()
    }
}

/// Starts `caretaker-agent run` with a config file written from `config_toml`.
pub fn start_agent(state: &Path, config_toml: &str) -> Proc {
    start_agent_with_env(state, config_toml, &[])
}

/// As `start_agent`, with extra environment variables (as systemd would set).
pub fn start_agent_with_env(state: &Path, config_toml: &str, env: &[(&str, &str)]) -> Proc {
    let cfg = state.with_extension("toml");
    std::fs::write(&cfg, config_toml).unwrap();
    let child = Command::new(bin("caretaker-agent"))
        .args(["run", "--state-dir"])
        .arg(state)
        .arg("--config")
        .arg(&cfg)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc {
        child,
        name: "agent".into(),
    }
}

/// As `start_agent`, with the laptop's wall clock `offset` from the real one (libfaketime's
/// syntax: `-2d`, `-400d`), timers unaffected, as on a laptop whose date is wrong. libfaketime
/// is preloaded into the agent itself, not run through the `faketime` wrapper, so killing the
/// process kills the agent (Debian package `faketime`, installed by scripts/install-test-deps.sh).
pub fn start_agent_with_clock(state: &Path, config_toml: &str, offset: &str) -> Proc {
    let lib = ["x86_64", "aarch64"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketimeMT.so.1"))
        .find(|p| Path::new(p).exists())
        .expect("libfaketime: apt-get install faketime (scripts/install-test-deps.sh)");
    start_agent_with_env(
        state,
        config_toml,
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", offset),
            // Only the wall clock is wrong on such a laptop; timers keep running.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

/// Stops an agent cleanly and waits until its `agent.stopping` is stored.
pub fn stop_agent_and_wait_for_stopping(agent: Proc, api: &Api, device: &str) {
    assert!(agent.stop().success(), "the agent did not exit cleanly");
    wait_for(Duration::from_secs(10), "agent.stopping", || {
        api.all_events(device)
            .iter()
            .any(|e| e["kind"] == "agent.stopping")
            .then_some(())
    });
}

/// An enrolled agent with only the software probe on (home folders under `home`), after its
/// start-up inventory has reached the collector. Returns (device id, agent).
pub fn start_software_agent(collector: &Collector, state: &Path, home: &Path) -> (String, Proc) {
    let device = collector.enroll(state);
    std::fs::create_dir_all(home).unwrap();
    let config = format!(
        "[antivirus]\nenabled = false\n[screen_lock]\nenabled = false\n[usb]\nenabled = false\n[software]\nhome_root = {home:?}\n"
    );
    let agent = start_agent(state, &config);
    let api = collector.api();
    wait_for(Duration::from_secs(30), "the start-up inventory", || {
        api.all_events(&device)
            .iter()
            .any(|e| e["kind"] == "software.inventory")
            .then_some(())
    });
    (device, agent)
}

/// A blocking client for the collector's JSON API.
pub struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Api {
    pub fn new(base: &str, token: &str, ca_pem: &[u8]) -> Self {
        let ca = reqwest::Certificate::from_pem(ca_pem).expect("CA PEM");
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .use_rustls_tls()
            // Collectors are restarted mid-test: never reuse a connection to a dead one.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            base: base.to_string(),
            token: token.to_string(),
            client,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// GET `path` (under the base URL); returns (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.send(
            self.client
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.token),
        )
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.client
                .put(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(body),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(body),
        )
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.send(
            self.client
                .delete(format!("{}{path}", self.base))
                .bearer_auth(&self.token),
        )
    }

    /// GET `path` as a signed-in browser would (its session cookie, no token); returns
    /// (status, body text).
    pub fn get_with_cookie(&self, path: &str, cookie: &str) -> (u16, String) {
        self.rt.block_on(async {
            let resp = self
                .client
                .get(format!("{}{path}", self.base))
                .header(reqwest::header::COOKIE, cookie)
                .send()
                .await
                .expect("page request");
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        })
    }

    /// The same API as another token holder (a role's API token).
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            base: self.base.clone(),
            token: token.to_string(),
            client: self.client.clone(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        self.rt.block_on(async {
            let resp = req.send().await.expect("API request");
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        })
    }

    /// One device as the API lists it, following the device list's pages.
    pub fn device(&self, id: &str) -> Option<Value> {
        let mut cursor = String::new();
        loop {
            let (st, v) = self.get(&format!("/api/v1/devices?limit=1000&cursor={cursor}"));
            assert_eq!(st, 200, "{v}");
            let found = v["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id);
            if let Some(d) = found {
                return Some(d.clone());
            }
            match v["next"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return None,
            }
        }
    }

    /// Every event of a device, following cursors, newest first.
    pub fn all_events(&self, device: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let (st, v) = self.get(&format!(
                "/api/v1/events?device={device}&limit=1000&cursor={cursor}"
            ));
            assert_eq!(st, 200, "{v}");
            out.extend(v["events"].as_array().unwrap().iter().cloned());
            match v["next"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return out,
            }
        }
    }
}

/// Sequence numbers of events, sorted; panics if any appears twice.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    let mut s: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    s.sort_unstable();
    let before = s.len();
    s.dedup();
    assert_eq!(before, s.len(), "an event was stored twice");
    s
}

/// Waits for an agent's `status.json` to report an empty spool while connected.
pub fn wait_drained(state: &Path, timeout: Duration) {
    wait_for(timeout, "the agent's spool to drain", || {
        let v: Value =
            serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()?;
        (v["connected"] == true && v["spool_events"] == 0).then_some(())
    });
}

/// Reads every event left in a stopped agent's spool (seq numbers).
pub fn spooled_seqs(state: &Path) -> anyhow::Result<Vec<u64>> {
    let (spool, note) = caretaker_agent::spool::Spool::open(
        &state.join("spool"),
        &state.join("seq.floor.probe"),
        u64::MAX,
    )?;
    // A probe's own reservation file is new, so only damage counts here.
    use caretaker_agent::spool::OpenNote;
    if note
        .iter()
        .any(|n| matches!(n, OpenNote::MovedAside { .. } | OpenNote::Damaged { .. }))
    {
        bail!("spool was unreadable");
    }
    let events = spool
        .read_after(0, usize::MAX, usize::MAX)
        .context("read spool")?;
    Ok(events.iter().map(|e| e.seq).collect())
}

/// A gRPC channel to the collector speaking as the device enrolled in `state`.
pub async fn device_channel(state: &Path, addr: &str) -> tonic::transport::Channel {
    use caretaker_agent::tls;
    let read = |n: &str| std::fs::read_to_string(state.join(n)).unwrap();
    let ca = tls::certs_from_pem(&read("ca.pem")).unwrap().remove(0);
    let cfg = tls::device_config(
        ca,
        tls::certs_from_pem(&read("device.pem")).unwrap(),
        tls::key_from_pem(&read("device.key")).unwrap(),
    )
    .unwrap();
    caretaker_agent::connect::channel(addr, cfg)
        .await
        .expect("device channel")
}

/// Sends `events` in one batch as the enrolled device in `state`, naming itself `hostname` as
/// its agent would, and waits for the acknowledgement of the last.
pub fn send_as_device(
    collector: &Collector,
    state: &Path,
    hostname: &str,
    events: Vec<caretaker_proto::pb::Event>,
) {
    use caretaker_proto::pb;
    let addr = collector.grpc_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = events.iter().map(|e| e.seq).max().unwrap();
    rt.block_on(async {
        let mut client =
            pb::telemetry_client::TelemetryClient::new(device_channel(state, &addr).await);
        let batch = pb::EventBatch {
            events,
            agent: Some(pb::AgentInfo {
                hostname: hostname.into(),
                os: "Debian GNU/Linux 12".into(),
                agent_version: "test".into(),
            }),
        };
        let mut acks = client
            .stream_events(tokio_stream::iter(vec![batch]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acks.message().await.unwrap().unwrap().through_seq, n);
    });
}

/// A pupil's USB stick refused by the policy (`usb.inserted`, decision `block`): a
/// safeguarding matter for the DSL.
pub fn pupil_stick(seq: u64, user: &str, serial: &str) -> caretaker_proto::pb::Event {
    let d = serde_json::json!({"mass_storage": true, "account": "pupil", "decision": "block",
        "antivirus_current": true, "serial": serial, "product": "Cruzer Blade"});
    let mut e = pb_event(seq, "usb.inserted", d.as_object().unwrap().clone());
    e.user = user.into();
    e
}

/// A protobuf event for hand-made batches.
pub fn pb_event(
    seq: u64,
    kind: &str,
    details: serde_json::Map<String, Value>,
) -> caretaker_proto::pb::Event {
    caretaker_proto::pb::Event {
        seq,
        occurred_at: Some(caretaker_proto::convert::timestamp_from(chrono::Utc::now())),
        user: String::new(),
        kind: kind.into(),
        details: Some(caretaker_proto::convert::struct_from_json(&details)),
    }
}

/// Opens TLS to `addr` with `config`, then tries to use the connection.
/// Returns the error the server's refusal produced, or `None` if the server accepted.
pub async fn tls_refusal(addr: SocketAddr, config: rustls::ClientConfig) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    // In TLS 1.3 the server judges the client certificate after the client
    // finishes its side, so the refusal arrives as an alert on the first read.
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => None,
    }
}
