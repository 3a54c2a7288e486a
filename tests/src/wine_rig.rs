//! Wine for the Windows agent's end-to-end tests: a fresh Wine prefix per test (made by `scripts/windows.sh prefix`, with its stand-in `bcryptprimitives.dll`), the `.exe` and `.msi` that `scripts/windows.sh build` and `msi` made, and commands run in that prefix.
//!
//! Wine runs the real Windows build; what Wine itself lacks (Defender's WMI classes,
//! `LockWorkStation`, real input, device notifications) is not exercised here: see the README's
//! list of what is proven under Wine and what only on recordings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Proc, check_fresh};

const TARGET_DIR: &str = "target/windows/x86_64-pc-windows-gnu/debug";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// A file `scripts/windows.sh` built, checked to be newer than its sources.
fn built(file: &str, key: &str, rebuild: &str) -> PathBuf {
    let p = root().join(TARGET_DIR).join(file);
    let when = std::fs::metadata(&p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: run `{rebuild}` first", p.display()));
    check_fresh(key, &p, when, rebuild);
    p
}

/// The Windows agent, `caretaker-agent.exe`.
pub fn agent_exe() -> PathBuf {
    built(
        "caretaker-agent.exe",
        "caretaker-agent.exe",
        "scripts/windows.sh build",
    )
}

/// The agent's MSI, built around the current `.exe`.
pub fn agent_msi() -> PathBuf {
    let version = env!("CARGO_PKG_VERSION");
    let msi = built(
        &format!("caretaker-agent-{version}.msi"),
        "caretaker-agent.msi",
        "scripts/windows.sh msi",
    );
    let exe = agent_exe();
    let older = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).unwrap();
    assert!(
        older(&msi) >= older(&exe),
        "{} is older than {}: run `scripts/windows.sh msi` first",
        msi.display(),
        exe.display()
    );
    msi
}

/// A Wine prefix of this test's own, removed (and its wineserver stopped) when dropped.
pub struct Wine {
    dir: tempfile::TempDir,
    /// A user's process for the prefix's life: when the last one ends, Wine shuts its services
    /// down (a service stopped by `msiexec /x` would be killed before its goodbye is sent, as
    /// no Windows with someone's session open would do).
    session: Option<std::process::Child>,
    /// Numbers each `run`'s output files.
    runs: std::sync::atomic::AtomicUsize,
}

impl Wine {
    /// Makes a fresh prefix (about 10 s: `wineboot`).
    pub fn fresh() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Wine {
            dir,
            session: None,
            runs: Default::default(),
        };
        let out = Command::new(root().join("scripts/windows.sh"))
            .arg("prefix")
            .env("CARETAKER_WINEPREFIX", w.prefix())
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/windows.sh prefix");
        assert!(
            out.status.success(),
            "scripts/windows.sh prefix: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `cmd` waiting on a pipe this side never writes to nor closes.
        w.session = Some(
            w.command(&["cmd"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a session process under Wine"),
        );
        w
    }

    pub fn prefix(&self) -> PathBuf {
        self.dir.path().join("prefix")
    }

    /// `C:\` as a folder on this machine.
    pub fn c_drive(&self) -> PathBuf {
        self.prefix().join("drive_c")
    }

    /// A Wine command in this prefix: `wine64 ARGS...`.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(root().join("scripts/windows.sh"));
        c.arg("wine")
            .args(args)
            .env("CARETAKER_WINEPREFIX", self.prefix())
            .stdin(Stdio::null());
        c
    }

    /// Runs a Wine command to its end: (success, stdout, stderr). Its output goes through
    /// files, not pipes: a Wine command may start the prefix's wineserver and services, which
    /// inherit its output and outlive it, so waiting for a pipe's end could wait for ever.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> (bool, String, String) {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out_path = self.dir.path().join(format!("run-{n}.out"));
        let err_path = self.dir.path().join(format!("run-{n}.err"));
        let status = self
            .command(args)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .expect("run a Wine command");
        let read =
            |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        (status.success(), read(&out_path), read(&err_path))
    }

    /// Runs the agent's `.exe` with `args` to its end.
    pub fn agent(&self, args: &[&str]) -> (bool, String, String) {
        let exe = agent_exe();
        let mut all = vec![exe.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Starts the agent's `.exe` with `args` in the background (killed on drop).
    pub fn spawn_agent(&self, args: &[&str]) -> Proc {
        let exe = agent_exe();
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        let child = self
            .command(&[exe.as_os_str()])
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the agent under Wine");
        Proc {
            child,
            name: "caretaker-agent.exe".into(),
        }
    }

    /// What the agent started by `spawn_agent` has logged so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// What the agent running as a service has logged (`%ProgramData%\\Caretaker\\agent.log`).
    pub fn service_log(&self) -> String {
        std::fs::read_to_string(self.c_drive().join("ProgramData/Caretaker/agent.log"))
            .unwrap_or_default()
    }

    /// `reg import` of a `.reg` file with these contents.
    pub fn reg_import(&self, contents: &str) {
        let file = self.c_drive().join("import.reg");
        std::fs::write(
            &file,
            format!("Windows Registry Editor Version 5.00\r\n\r\n{contents}"),
        )
        .unwrap();
        let (ok, out, err) = self.run(&["reg", "import", r"C:\import.reg"]);
        assert!(ok, "reg import: {out}{err}");
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = session.kill();
            let _ = session.wait();
        }
        let _ = Command::new("/usr/lib/wine/wineserver")
            .arg("-k")
            .env("WINEPREFIX", self.prefix())
            .status();
    }
}
