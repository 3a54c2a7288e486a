//! One agent per state folder: an exclusive `flock` on `agent.lock`, held for the process's life.
//!
//! A second agent on the same folder would open the live spool, find it busy, move it
//! aside as "corrupt" and lose the first agent's unsent events, so it must refuse to
//! start before it touches anything (as osquery's and USBGuard's lock files do). The
//! kernel drops an `flock` when its holder exits, however it exits, so a crash never
//! leaves a stale lock behind; the pid written inside is only for the message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state folder.
pub const LOCK_FILE: &str = "agent.lock";

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "another caretaker-agent{} is already running with the state folder {dir}; stop it first (systemctl stop caretaker-agent) or give this one its own --state-dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or exiting) lets another agent start.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

/// Takes the state folder's lock without waiting, or says who holds it.
pub fn lock(state_dir: &Path) -> Result<InstanceLock, InstanceError> {
    let path = state_dir.join(LOCK_FILE);
    let io = |source| InstanceError::Io {
        path: path.clone(),
        source,
    };
    // Not truncated on open: that would wipe the holder's pid before we know we hold it.
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    crate::os::perms::with_mode(&mut opts, 0o644);
    let mut file = crate::os::perms::no_follow(&mut opts)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(InstanceError::AlreadyRunning {
                dir: state_dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(InstanceLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_and_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let _first = lock(d.path()).unwrap();
        // flock locks belong to the open file description, so a second open in the
        // same process conflicts just as another process would. (Release on exit is
        // tested with real processes in tests/tests/agent_hardening.rs: here a fork by
        // a concurrent test could hold the descriptor until its exec.)
        match lock(d.path()) {
            Err(InstanceError::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
