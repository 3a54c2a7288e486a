//! The agent's state directory: identity (key, certificate, CA), enrolment record, spool, cached policy, status, uninstall-code hash.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(not(windows))]
pub const DEFAULT_STATE_DIR: &str = "/var/lib/caretaker-agent";
/// Used only when `%ProgramData%` is unset (`default_state_dir` reads it).
#[cfg(windows)]
pub const DEFAULT_STATE_DIR: &str = r"C:\ProgramData\Caretaker";

/// Where state lives unless the config or `--state-dir` says otherwise: on Windows under
/// `%ProgramData%\Caretaker` (not always on `C:`), elsewhere [`DEFAULT_STATE_DIR`].
pub fn default_state_dir() -> PathBuf {
    #[cfg(windows)]
    if let Some(data) = crate::os::windows::program_data() {
        return data.join("Caretaker");
    }
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// The config file `run` reads when none is named: on Windows `agent.toml` in the state folder
/// if it exists (the installer puts it there); elsewhere none (the package names its own).
pub fn default_config_file() -> Option<PathBuf> {
    #[cfg(windows)]
    {
        let path = default_state_dir().join("agent.toml");
        if path.is_file() {
            return Some(path);
        }
    }
    None
}

/// What enrolment recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    pub device_id: String,
    /// `host:port` of the collector's gRPC listener.
    pub collector: String,
    pub ca_fingerprint: String,
    pub enrolled_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("device.key")
    }
    pub fn cert(&self) -> PathBuf {
        self.root.join("device.pem")
    }
    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn enrollment(&self) -> PathBuf {
        self.root.join("enrollment.json")
    }
    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }
    pub fn seq_floor(&self) -> PathBuf {
        self.root.join("seq.floor")
    }
    pub fn policy(&self) -> PathBuf {
        self.root.join("policy.json")
    }
    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }
    /// The hash an uninstall code is checked against (`crate::uninstall`).
    pub fn uninstall_hash(&self) -> PathBuf {
        self.root.join("uninstall.sha256")
    }
    /// Present while the package is being removed with the code.
    pub fn uninstalling(&self) -> PathBuf {
        self.root.join("uninstalling.json")
    }
    /// Tamper reports waiting for the agent to spool them.
    pub fn reports(&self) -> PathBuf {
        self.root.join("reports")
    }

    /// Creates the directory, readable only by the agent's user.
    pub fn create(&self) -> std::io::Result<()> {
        crate::os::perms::create_private_dir(&self.root)
    }

    /// The enrolment record; `None` before enrolment.
    pub fn load_enrollment(&self) -> Result<Option<Enrollment>, StateError> {
        let path = self.enrollment();
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StateError::Damaged { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }
}

/// Why a file in the state folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is damaged; enrol again", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Replaces `path` atomically (write, fsync, rename), with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = crate::os::perms::with_mode(
        OpenOptions::new().write(true).create(true).truncate(true),
        mode,
    )
    .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}
