//! A private PostgreSQL cluster for a test: `initdb` and `pg_ctl` (Debian's PostgreSQL 15) on a Unix socket in a temporary directory, run as `postgres`, stopped when dropped.
//!
//! PostgreSQL refuses to run as root, and the tests run as root, so the cluster runs as the
//! `postgres` user (`runuser`) in a directory made over to it. It listens on no TCP port, only
//! on a socket in that directory; no system service is involved.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian keeps PostgreSQL 15's programs (the `postgresql-15` package).
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster; stopped (immediately) and removed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"])
        .arg(Path::new(BIN).join(program));
    c
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// Creates and starts a cluster (a second or two).
    pub fn start() -> Self {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed (scripts/install-test-deps.sh installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("caretaker-pg")
            .tempdir()
            .expect("temporary directory");
        run_ok(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
            "chown of the cluster directory",
        );
        let data = dir.path().join("data");
        run_ok(
            as_postgres("initdb")
                .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "-D"])
                .arg(&data),
            "initdb",
        );
        let port = crate::free_port();
        let opts = format!(
            "-k {} -c listen_addresses='' -p {port} -c max_connections=200",
            dir.path().display()
        );
        run_ok(
            as_postgres("pg_ctl")
                .args(["-w", "-D"])
                .arg(&data)
                .args(["-o", &opts, "-l"])
                .arg(dir.path().join("log"))
                .arg("start"),
            "pg_ctl start",
        );
        Self { dir, port }
    }

    /// The socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        run_ok(
            as_postgres("psql")
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-d", "postgres", "-c"])
                .arg(format!("CREATE DATABASE {name}")),
            "CREATE DATABASE",
        );
        format!(
            "postgres://postgres@/{name}?host={}&port={}",
            self.dir.path().display(),
            self.port
        )
    }

    /// Runs one SQL statement on `db` and returns psql's unaligned output.
    pub fn query(&self, db: &str, sql: &str) -> String {
        let out = as_postgres("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", db, "-At", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
