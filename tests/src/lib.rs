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
pub mod probe_events;
pub mod smtp_rig;
pub mod usb_vm;
pub mod vm_rig;
pub mod wine_rig;

mod agent;
mod api;
mod collector;
mod device;

pub use agent::*;
pub use api::*;
pub use collector::*;
pub use device::*;

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
    check_fresh(name, &p, built, "cargo build --workspace --bins");
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
        "caretaker-agent.exe" => &["agent/src", "proto/src", "proto/proto"],
        "caretaker-agent.msi" => &["installer/windows"],
        _ => &["tests/src", "agent/src", "proto/src"],
    }
}

/// Panics when a source file of `name` is newer than the binary, naming the command that
/// rebuilds it; checked once per binary.
pub(crate) fn check_fresh(name: &str, path: &Path, built: std::time::SystemTime, rebuild: &str) {
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
                    "{} is older than {}: run `{rebuild}` first",
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
