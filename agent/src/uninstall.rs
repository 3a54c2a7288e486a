//! The laptop's side of uninstall codes: checking a code offline against the hash the collector sent, leaving a report of a refused removal for the running agent to spool, and the note that makes the agent's last word `agent.uninstalled`.
//!
//! A refused removal is reported through a file in `reports/` (written by the package's
//! `prerm` through `caretaker-agent uninstall-check`): it survives an agent that is offline or
//! not running, and the agent moves each report into its spool (durably) before deleting it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::event::NewEvent;
use crate::spool::Spool;
use crate::state::{StateDir, StateError, write_atomic};

/// The result of checking a code on this laptop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not enrolled: there is nothing to protect.
    NotEnrolled,
    /// Enrolled, but the collector's hash has not arrived yet (enrolled before codes existed
    /// and not connected since): the removal is let through and said to be unverified.
    NoCodeYet,
    Accepted,
    Missing,
    Wrong,
}

impl Check {
    /// Whether removal may go ahead.
    pub fn allows(self) -> bool {
        matches!(
            self,
            Check::NotEnrolled | Check::NoCodeYet | Check::Accepted
        )
    }
}

/// Checks `code` (as typed) against the stored hash.
pub fn check(state: &StateDir, code: Option<&str>) -> Result<Check, StateError> {
    let Some(enrollment) = state.load_enrollment()? else {
        return Ok(Check::NotEnrolled);
    };
    let hash = match std::fs::read_to_string(state.uninstall_hash()) {
        Ok(h) if !h.trim().is_empty() => h,
        Ok(_) => return Ok(Check::NoCodeYet),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Check::NoCodeYet),
        Err(source) => {
            return Err(StateError::Read {
                path: state.uninstall_hash(),
                source,
            });
        }
    };
    Ok(match code.map(str::trim).filter(|c| !c.is_empty()) {
        None => Check::Missing,
        Some(c) if caretaker_proto::uninstall::verify(&enrollment.device_id, c, &hash) => {
            Check::Accepted
        }
        Some(_) => Check::Wrong,
    })
}

/// Keeps the hash the collector sent, if it is new. Returns whether it changed.
pub fn store_hash(state: &StateDir, hash: &str) -> std::io::Result<bool> {
    let hash = hash.trim();
    if hash.is_empty() {
        return Ok(false);
    }
    if std::fs::read_to_string(state.uninstall_hash()).is_ok_and(|h| h.trim() == hash) {
        return Ok(false);
    }
    write_atomic(&state.uninstall_hash(), hash.as_bytes(), 0o600)?;
    Ok(true)
}

/// What `reports/*.json` and `uninstalling.json` hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub details: Map<String, Value>,
}

impl Report {
    fn into_event(self) -> NewEvent {
        let event = NewEvent {
            kind: self.kind,
            occurred_at: self.occurred_at,
            user: self.user,
            details: self.details,
        };
        event.assert_in_inventory();
        event
    }
}

/// Who is removing the package, when sudo says (a name, never more).
pub fn acting_user() -> Option<String> {
    std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty())
}

/// Leaves a report for the agent to spool. The file is complete when it appears (written
/// aside and renamed), so the agent never reads half of one.
pub fn leave_report(state: &StateDir, report: &Report) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(state.reports())?;
    let name = format!(
        "{}-{}.json",
        report.occurred_at.timestamp_nanos_opt().unwrap_or_default(),
        std::process::id()
    );
    let path = state.reports().join(name);
    write_atomic(
        &path,
        &serde_json::to_vec(report).expect("serialises"),
        0o600,
    )?;
    Ok(path)
}

/// Records that the package is being removed with the code, so the agent's last event says
/// so (`agent.uninstalled`) rather than `agent.stopping`.
pub fn mark_uninstalling(state: &StateDir, report: &Report) -> std::io::Result<()> {
    write_atomic(
        &state.uninstalling(),
        &serde_json::to_vec(report).expect("serialises"),
        0o600,
    )
}

/// The removal note, if the package is being removed.
pub fn uninstalling(path: &Path) -> Option<NewEvent> {
    let bytes = std::fs::read(path).ok()?;
    let report: Report = serde_json::from_slice(&bytes).ok()?;
    Some(report.into_event())
}

/// Moves every waiting report into the spool, durably, then deletes it. Unreadable files
/// are set aside (`.bad`) rather than retried for ever.
pub fn sweep(dir: &Path, spool: &Mutex<Spool>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut moved = 0;
    for p in paths {
        let report = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
        let Some(report) = report else {
            warn!(path = %p.display(), "Unreadable tamper report set aside");
            let _ = std::fs::rename(&p, p.with_extension("bad"));
            continue;
        };
        let appended = spool
            .lock()
            .expect("spool lock")
            .append(vec![report.into_event()]);
        match appended {
            Ok(_) => {
                // Durable in the spool now; a crash before this line only repeats the event.
                let _ = std::fs::remove_file(&p);
                moved += 1;
            }
            Err(e) => {
                warn!(error = %e, "Could not spool a tamper report; it stays for the next try");
                break;
            }
        }
    }
    moved
}

/// Watches `reports/` (inotify, with a slow timer as backstop) and spools what appears,
/// until `stop`; a last sweep runs on the way out.
pub async fn watch_reports(
    state: StateDir,
    spool: Arc<Mutex<Spool>>,
    new_events: Arc<Notify>,
    stop: CancellationToken,
) {
    let dir = state.reports();
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).create(&dir) {
        warn!(error = %e, path = %dir.display(), "Cannot make the tamper report folder");
    }
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = {
        use notify::{RecursiveMode, Watcher};
        notify::recommended_watcher(move |_| {
            let _ = tx.try_send(());
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w))
    };
    if let Err(e) = &watcher {
        debug!(error = %e, "No inotify on the report folder; checking it every minute");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        let spool2 = spool.clone();
        let dir2 = dir.clone();
        if let Ok(n) = tokio::task::spawn_blocking(move || sweep(&dir2, &spool2)).await
            && n > 0
        {
            new_events.notify_one();
        }
        if stop.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = rx.recv() => {}
            _ = stop.cancelled() => {}
        }
    }
    drop(watcher);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Enrollment;
    use caretaker_proto::uninstall::{code_hash, derive_code};

    fn enrolled(dir: &Path) -> StateDir {
        let state = StateDir::new(dir);
        let e = Enrollment {
            device_id: "dev-1".into(),
            collector: "c:7443".into(),
            ca_fingerprint: "sha256:00".into(),
            enrolled_at: Utc::now(),
        };
        std::fs::write(state.enrollment(), serde_json::to_vec(&e).unwrap()).unwrap();
        state
    }

    #[test]
    fn a_code_is_checked_offline_against_the_stored_hash() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::new(d.path());
        assert_eq!(check(&state, None).unwrap(), Check::NotEnrolled);
        let state = enrolled(d.path());
        assert_eq!(check(&state, Some("x")).unwrap(), Check::NoCodeYet);
        let code = derive_code(b"school", "dev-1");
        assert!(store_hash(&state, &code_hash("dev-1", &code).unwrap()).unwrap());
        assert!(!store_hash(&state, &code_hash("dev-1", &code).unwrap()).unwrap());
        assert_eq!(check(&state, None).unwrap(), Check::Missing);
        assert_eq!(check(&state, Some("  ")).unwrap(), Check::Missing);
        assert_eq!(
            check(&state, Some(&derive_code(b"school", "dev-2"))).unwrap(),
            Check::Wrong
        );
        assert_eq!(
            check(&state, Some(&code.to_lowercase())).unwrap(),
            Check::Accepted
        );
        assert!(Check::Accepted.allows() && !Check::Wrong.allows() && !Check::Missing.allows());
    }

    #[test]
    fn reports_reach_the_spool_once_and_junk_is_set_aside() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::new(d.path());
        let (spool, _) = Spool::open(&state.spool(), &state.seq_floor(), 1 << 20).unwrap();
        let spool = Mutex::new(spool);
        let report = Report {
            kind: "agent.uninstall_refused".into(),
            occurred_at: Utc::now(),
            user: Some("tech".into()),
            details: crate::details! { "reason" => "no code" },
        };
        leave_report(&state, &report).unwrap();
        std::fs::write(state.reports().join("junk.json"), "{").unwrap();
        assert_eq!(sweep(&state.reports(), &spool), 1);
        assert_eq!(sweep(&state.reports(), &spool), 0);
        let events = spool.lock().unwrap().read_after(0, 10, 1 << 20).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "agent.uninstall_refused");
        assert_eq!(events[0].user.as_deref(), Some("tech"));
        assert!(state.reports().join("junk.bad").exists());
    }

    #[test]
    fn the_removal_note_becomes_the_last_event() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::new(d.path());
        assert!(uninstalling(&state.uninstalling()).is_none());
        let report = Report {
            kind: "agent.uninstalled".into(),
            occurred_at: Utc::now(),
            user: None,
            details: crate::details! { "code_verified" => true },
        };
        mark_uninstalling(&state, &report).unwrap();
        let e = uninstalling(&state.uninstalling()).unwrap();
        assert_eq!(e.kind, "agent.uninstalled");
        assert_eq!(e.details["code_verified"], true);
    }
}
