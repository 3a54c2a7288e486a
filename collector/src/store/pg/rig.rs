//! A real PostgreSQL for tests: a fresh database per test, in the cluster `scripts/test.sh` started or, when run by plain `cargo test`, in a private one this process starts once.
//!
//! `scripts/test.sh` starts one cluster for the whole run and names it in `CARETAKER_TEST_PG`
//! (`socket-dir:port`). Without it, the first test to ask starts a cluster in a temporary
//! directory (`initdb` and `pg_ctl` of Debian's PostgreSQL 15, as the `postgres` user when
//! running as root, since PostgreSQL refuses root), and a detached reaper stops it and removes
//! the directory once this process is gone, however it ended.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A running cluster: its socket directory and port.
#[derive(Debug)]
struct Cluster {
    socket_dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

/// Drops its database when dropped (with `--force`: a store may still hold connections).
#[derive(Debug)]
pub struct DbGuard {
    name: String,
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        let c = cluster();
        let out = client_tool(c, "dropdb")
            .args(["--force", &self.name])
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!(
                "rig: dropdb {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A fresh, empty database of its own: its URL and the guard that drops it.
pub fn test_database() -> (String, DbGuard) {
    static N: AtomicU64 = AtomicU64::new(0);
    let c = cluster();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let out = client_tool(c, "createdb")
        .arg(&name)
        .output()
        .expect("createdb runs");
    assert!(
        out.status.success(),
        "createdb {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (url(c, &name), DbGuard { name })
}

fn url(c: &Cluster, db: &str) -> String {
    format!(
        "postgres://postgres@/{db}?host={}&port={}",
        c.socket_dir.display(),
        c.port
    )
}

/// `createdb`/`dropdb` against the cluster, as the `postgres` role (trust authentication).
fn client_tool(c: &Cluster, tool: &str) -> Command {
    let mut cmd = Command::new(c.bin.join(tool));
    cmd.arg("-h")
        .arg(&c.socket_dir)
        .arg("-p")
        .arg(c.port.to_string())
        .args(["-U", "postgres"]);
    cmd
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let bin = pg_bin();
        match std::env::var("CARETAKER_TEST_PG") {
            Ok(v) => {
                let (dir, port) = v
                    .rsplit_once(':')
                    .and_then(|(d, p)| Some((d, p.parse().ok()?)))
                    .unwrap_or_else(|| panic!("CARETAKER_TEST_PG={v:?} is not socket-dir:port"));
                Cluster {
                    socket_dir: dir.into(),
                    port,
                    bin,
                }
            }
            Err(_) => start_private(bin),
        }
    })
}

/// Debian's PostgreSQL binaries (`CARETAKER_PG_BIN` overrides).
fn pg_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("CARETAKER_PG_BIN") {
        return b.into();
    }
    let default = PathBuf::from("/usr/lib/postgresql/15/bin");
    if default.join("pg_ctl").exists() {
        return default;
    }
    // Another major version, if that is what is installed.
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|b| b.join("pg_ctl").exists())
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL under /usr/lib/postgresql: run scripts/install-test-deps.sh \
                 (it installs the `postgresql` package)"
            )
        })
}

/// A command run as the `postgres` user when this process is root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_private(bin: PathBuf) -> Cluster {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("caretaker-pg-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).expect("a directory for the test cluster");
    if nix::unistd::geteuid().is_root() {
        let pg = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("the postgres user (from the postgresql package)");
        nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).expect("chown the cluster directory");
    }
    let data = dir.join("data");
    let mut initdb = as_postgres(&bin.join("initdb"));
    // --no-sync only skips initdb's own fsyncs; the server runs with fsync on.
    initdb.arg("-D").arg(&data).args([
        "--auth=trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]);
    run(initdb, "initdb");
    let port = 5432;
    let mut start = as_postgres(&bin.join("pg_ctl"));
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .arg("-o")
        .arg(format!(
            "-k {} -c listen_addresses='' -p {port} -c fsync=on -c max_connections=300",
            dir.display()
        ))
        .args(["-w", "start"]);
    run(start, "pg_ctl start");
    // The reaper: `setsid -f` forks it into a session of its own (so a signal to this
    // process's group does not take it too) and returns at once.
    let reaper = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         {runas}{pg_ctl} -D {data} -m immediate stop; rm -rf {dir}",
        pid = std::process::id(),
        runas = if nix::unistd::geteuid().is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        },
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", &reaper])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the cluster's reaper starts");
    assert!(started.success(), "the cluster's reaper starts: {started}");
    Cluster {
        socket_dir: dir,
        port,
        bin,
    }
}
