//! Test rig: a real clamd on a private socket in a temp dir, with locally built databases.
//!
//! Used by the end-to-end tests (`caretaker_tests::clamd_rig`) and, included by path, by the
//! agent's own unit tests (`agent/src/probe/usb/clamd.rs`): std and `tempfile` only.
//! Needs Debian packages `clamav` (sigtool), `clamav-daemon` (clamd) and `faketime` (old
//! databases); a missing tool fails the test with the package to install, it never skips.
//! Databases are built with `sigtool --unsigned` (a `.cud` file clamd loads without a
//! signature) from a one-signature hash database that detects the EICAR test file as
//! `Test.EICAR.HDB.UNOFFICIAL`. Nothing touches the network or the system's clamd.
#![allow(dead_code)] // each test binary uses a different part of the rig

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name clamd reports for the EICAR file with the rig's database.
pub const EICAR_SIGNATURE: &str = "Test.EICAR.HDB.UNOFFICIAL";
/// The daily version the rig builds unless told otherwise.
pub const DEFAULT_DAILY_VERSION: u32 = 27000;
/// clamd loads the one-signature database in well under a second here; this only bounds a
/// broken start so the test fails with clamd's log instead of hanging.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The EICAR test file, kept reversed in the source so that antivirus scanners on developer
/// machines and CI do not quarantine this file.
pub fn eicar() -> Vec<u8> {
    let reversed = r"*H+H$!ELIF-TSET-SURIVITNA-DRADNATS-RACIE$}7)CC7)^P(45XZP\4[PA@%P!O5X";
    reversed.bytes().rev().collect()
}

/// Fails (never skips) when a tool is missing, naming the Debian package that provides it.
pub fn require_tools() {
    for (tool, package) in [
        ("clamd", "clamav-daemon"),
        ("sigtool", "clamav"),
        ("faketime", "faketime"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{tool}` is not installed: these tests need a real ClamAV. \
             Install it with `apt-get install -y {package}` (all of: clamav clamav-daemon faketime)."
        );
    }
}

/// Builds `daily.cud` (version `version`) in `out_dir`. With `days_old`, sigtool runs under
/// `faketime` so the header's build time is genuinely that old (editing a header breaks it).
pub fn build_daily(out_dir: &Path, version: u32, days_old: Option<u32>) -> PathBuf {
    require_tools();
    let work = tempfile::Builder::new()
        .prefix("sigtool")
        .tempdir()
        .expect("temp dir for sigtool");
    let eicar_path = work.path().join("eicar.bin");
    std::fs::write(&eicar_path, eicar()).unwrap();
    // `sigtool --md5 FILE` prints `md5:size:FILE`; the name must look like a signature name,
    // not a file name, or clamd calls the database malformed.
    let out = Command::new("sigtool")
        .arg("--md5")
        .arg("eicar.bin")
        .current_dir(work.path())
        .output()
        .expect("run sigtool --md5");
    assert!(out.status.success(), "sigtool --md5 failed: {out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let hash_size = line
        .trim()
        .rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .expect("sigtool --md5 output md5:size:name");
    std::fs::write(
        work.path().join("daily.hdb"),
        format!("{hash_size}:Test.EICAR.HDB\n"),
    )
    .unwrap();
    // sigtool insists on a COPYING file next to the sources.
    std::fs::write(work.path().join("COPYING"), "test database\n").unwrap();

    let mut cmd = match days_old {
        Some(days) => {
            let mut c = Command::new("faketime");
            c.arg("-f").arg(format!("-{days}d")).arg("sigtool");
            c
        }
        None => Command::new("sigtool"),
    };
    cmd.arg("--build=daily.cud")
        .arg("--unsigned")
        .arg(format!("--cvd-version={version}"))
        .arg(format!("--datadir={}", work.path().display()))
        .current_dir(work.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run sigtool --build");
    // sigtool asks for the builder's name on stdin.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"caretaker-test\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let built = work.path().join("daily.cud");
    assert!(built.exists(), "sigtool --build made no daily.cud: {out:?}");
    std::fs::create_dir_all(out_dir).unwrap();
    let dest = out_dir.join("daily.cud");
    std::fs::copy(&built, &dest).unwrap();
    dest
}

/// A private clamd: its own temp dir, database dir, config, log and socket.
pub struct ClamdRig {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra `clamd.conf` lines (e.g. `StreamMaxLength 1M`).
    pub extra_conf: Vec<String>,
}

impl ClamdRig {
    /// An empty rig: no databases, clamd not started.
    pub fn new() -> Self {
        require_tools();
        // Unix socket paths are limited to 108 bytes, so stay in /tmp whatever TMPDIR says.
        let dir = tempfile::Builder::new()
            .prefix("clamd-rig")
            .tempdir_in("/tmp")
            .expect("temp dir for clamd");
        std::fs::create_dir(dir.path().join("db")).unwrap();
        Self {
            dir,
            child: None,
            extra_conf: Vec::new(),
        }
    }

    /// A rig whose database is a fresh daily of [`DEFAULT_DAILY_VERSION`].
    pub fn with_fresh_database() -> Self {
        let rig = Self::new();
        rig.install_daily(DEFAULT_DAILY_VERSION, None);
        rig
    }

    /// Replaces the database with a daily built `days_old` days ago (`None`: now).
    pub fn install_daily(&self, version: u32, days_old: Option<u32>) {
        build_daily(&self.db_dir(), version, days_old);
    }

    /// Removes every database file.
    pub fn clear_databases(&self) {
        for entry in std::fs::read_dir(self.db_dir()).unwrap().flatten() {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn db_dir(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("clamd.log")
    }

    /// clamd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Writes clamd.conf, starts clamd in the foreground and waits until it answers PING.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "clamd already running");
        let _ = std::fs::remove_file(self.socket());
        let conf = self.dir.path().join("clamd.conf");
        let mut text = format!(
            "LocalSocket {socket}\nDatabaseDirectory {db}\nLogFile {log}\nTemporaryDirectory {tmp}\n\
             Foreground yes\nLogTime yes\n",
            socket = self.socket().display(),
            db = self.db_dir().display(),
            log = self.log_path().display(),
            tmp = self.dir.path().display(),
        );
        for line in &self.extra_conf {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new("clamd")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clamd");
        self.child = Some(child);

        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "clamd exited ({status}) while starting; its log:\n{}",
                    self.log()
                );
            }
            if self.ping() {
                return;
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "clamd did not answer PING within {START_LIMIT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether clamd answers PING right now (the rig's own check, independent of the code
    /// under test).
    pub fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"zPING\0").is_err() {
            return false;
        }
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        reply.starts_with(b"PONG")
    }

    /// Stops clamd (SIGKILL, then reaped): the socket file stays behind, as after a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Default for ClamdRig {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ClamdRig {
    fn drop(&mut self) {
        self.stop();
    }
}
