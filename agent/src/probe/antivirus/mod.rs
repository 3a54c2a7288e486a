//! Antivirus-currency probe: finds the antivirus product, how old its signatures are and whether
//! it is running, and emits `antivirus.status` when the normalised status changes.
//!
//! Linux (ClamAV) is observed here through the OS's thin readers (`os::linux::files` for the
//! databases and freshclam's log, `os::linux::proc` for processes) and [`clamd`]; all
//! interpretation is in [`parse`]
//! (one file per platform's formats: the Windows (Defender, Security Center) and macOS
//! (XProtect) interpreters are there for those platforms' backends to feed) and the status is
//! decided in [`decide`]. [`clamd::scan_stream`] is the INSTREAM client other
//! features (removable media) use; they report findings with [`detection_event`].
//!
//! On Windows the check is [`windows::check`] (Defender and Security Center); the ClamAV
//! readers below are Linux's. The loop, [`run`], is the same on both.
#![cfg_attr(not(target_os = "linux"), allow(unused_imports))]

pub mod clamd;
pub mod decide;
pub mod parse;
pub mod windows;
#[cfg(windows)]
use windows::check;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::event::{EventSink, NewEvent};
#[cfg(target_os = "linux")]
use crate::os::linux::files;
use caretaker_proto::policy::{AntivirusPolicy, PolicyDocument};
use decide::{Assessment, AvStatus};
use parse::{ClamavObservation, CvdHeader, ProductReport};

pub const STATUS_EVENT: &str = "antivirus.status";
pub const DETECTION_EVENT: &str = "antivirus.detection";

/// Where the probe looks; every root is overridable so tests use temp dirs and a private clamd.
#[derive(Debug, Clone, PartialEq)]
pub struct AntivirusProbeConfig {
    /// ClamAV's database directory (`DatabaseDirectory` in clamd.conf).
    pub database_dir: PathBuf,
    /// clamd's `LocalSocket`.
    pub clamd_socket: PathBuf,
    /// freshclam's `UpdateLogFile`; only its tail is read.
    pub freshclam_log: PathBuf,
    /// Where to look for running `freshclam` / `clamonacc` processes.
    pub proc_root: PathBuf,
    /// How long clamd may take to answer PING / VERSION before it counts as not responding.
    pub clamd_timeout: Duration,
}

impl Default for AntivirusProbeConfig {
    fn default() -> Self {
        Self {
            database_dir: PathBuf::from("/var/lib/clamav"),
            clamd_socket: PathBuf::from("/var/run/clamav/clamd.ctl"),
            freshclam_log: PathBuf::from("/var/log/clamav/freshclam.log"),
            proc_root: PathBuf::from("/proc"),
            clamd_timeout: Duration::from_secs(5),
        }
    }
}

/// Daily databases in the order ClamAV prefers them; `.cud` is the unsigned form sigtool builds
/// (test rigs and private mirrors), which clamd loads like the others.
#[cfg(target_os = "linux")]
const DAILY_FILES: [&str; 3] = ["daily.cld", "daily.cvd", "daily.cud"];
#[cfg(target_os = "linux")]
const MAIN_FILES: [&str; 3] = ["main.cld", "main.cvd", "main.cud"];
/// Enough of freshclam's log for its last few runs, however long the log has grown.
#[cfg(target_os = "linux")]
const FRESHCLAM_LOG_TAIL: u64 = 64 * 1024;

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub checked_at: DateTime<Utc>,
    pub max_signature_age_hours: u32,
    pub products: Vec<ProductReport>,
    pub assessment: Assessment,
    /// Problems the readers met; logged, and already folded into the products' reasons.
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn status(&self) -> AvStatus {
        self.assessment.status
    }

    /// The `antivirus.status` event's details (see [`decide::status_details`]).
    pub fn details(&self) -> Map<String, Value> {
        decide::status_details(
            &self.products,
            &self.assessment,
            self.max_signature_age_hours,
            self.checked_at,
        )
    }

    pub fn to_event(&self) -> NewEvent {
        let mut event = NewEvent::now(STATUS_EVENT, None, self.details());
        event.occurred_at = self.checked_at;
        event
    }
}

/// The event another feature emits when a scan it asked for found something. `subject` says
/// what was scanned in words the network manager can act on (e.g. "USB stick SN-0001: /report.doc").
pub fn detection_event(subject: &str, signatures: &[String], user: Option<String>) -> NewEvent {
    let mut details = Map::new();
    details.insert("product".into(), "ClamAV".into());
    details.insert("subject".into(), subject.into());
    details.insert(
        "signatures".into(),
        Value::Array(signatures.iter().cloned().map(Value::String).collect()),
    );
    NewEvent::now(DETECTION_EVENT, user, details)
}

/// Runs one check of ClamAV now.
#[cfg(target_os = "linux")]
pub async fn check(config: &AntivirusProbeConfig, policy: &AntivirusPolicy) -> CheckReport {
    let obs = observe_clamav(config).await;
    let warnings = obs.warnings.clone();
    let products: Vec<ProductReport> = parse::clamav_product(&obs, &local_to_utc)
        .into_iter()
        .collect();
    let checked_at = Utc::now();
    let absent = format!(
        "no ClamAV database in {} and clamd not answering on {}",
        config.database_dir.display(),
        config.clamd_socket.display()
    );
    let assessment = decide::normalise(
        &products,
        policy.max_signature_age_hours,
        checked_at,
        &absent,
    );
    CheckReport {
        checked_at,
        max_signature_age_hours: policy.max_signature_age_hours,
        products,
        assessment,
        warnings,
    }
}

/// The probe: checks at start, every `check_interval_secs`, and whenever the policy changes;
/// emits `antivirus.status` at start and then only when the status changes.
pub async fn run(
    config: AntivirusProbeConfig,
    mut policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let mut last: Option<AvStatus> = None;
    let mut policy_open = true;
    loop {
        super::liveness::beat();
        let current = effective_policy(&policy.borrow_and_update());
        let report = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = check(&config, &current) => r,
        };
        let changed = last != Some(report.status());
        for w in &report.warnings {
            // Repeating the same warning every hour would drown the log; say it when it matters.
            if changed {
                tracing::warn!(warning = %w, "Antivirus check could not read everything.");
            } else {
                tracing::debug!(warning = %w, "Antivirus check could not read everything.");
            }
        }
        if changed {
            tracing::debug!(status = report.status().as_str(), reason = %report.assessment.reason, "Antivirus status changed.");
            if !sink.emit(report.to_event()).await {
                return; // the agent is shutting down
            }
            last = Some(report.status());
        }
        let next_check = tokio::time::sleep(Duration::from_secs(current.check_interval_secs));
        tokio::pin!(next_check);
        loop {
            super::liveness::beat();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = super::liveness::idle() => continue,
                _ = &mut next_check => {}
                r = policy.changed(), if policy_open => {
                    // A closed policy channel means the agent keeps the last policy; stop watching it.
                    if r.is_err() {
                        policy_open = false;
                    }
                }
            }
            break;
        }
    }
}

/// The policy section to use; an invalid one (the collector should never send it) falls back
/// to the defaults rather than stopping the probe.
fn effective_policy(doc: &PolicyDocument) -> AntivirusPolicy {
    match doc.antivirus.validate() {
        Ok(()) => doc.antivirus.clone(),
        Err(why) => {
            tracing::warn!(error = %why, "Invalid antivirus policy; using defaults.");
            AntivirusPolicy::default()
        }
    }
}

/// clamd and freshclam print local times without a zone; this machine's zone is theirs.
#[cfg(target_os = "linux")]
fn local_to_utc(n: NaiveDateTime) -> Option<DateTime<Utc>> {
    chrono::Local
        .from_local_datetime(&n)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

// ---------------------------------------------------------------------------------------------
// What the OS shows of ClamAV (the reads themselves are in `os::linux`)
// ---------------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
async fn observe_clamav(config: &AntivirusProbeConfig) -> ClamavObservation {
    let mut obs = ClamavObservation::default();

    let mut dailies: Vec<(String, CvdHeader)> = Vec::new();
    for name in DAILY_FILES.iter().chain(MAIN_FILES.iter()) {
        match files::read_head(&config.database_dir.join(name), parse::CVD_HEADER_LEN).await {
            Ok(None) => {}
            Ok(Some(bytes)) => {
                obs.database_files.push((*name).to_owned());
                if name.starts_with("daily") {
                    let parsed = parse::parse_cvd_header(&bytes);
                    obs.warnings
                        .extend(parsed.warnings.into_iter().map(|w| format!("{name}: {w}")));
                    if let Some(h) = parsed.value {
                        dailies.push(((*name).to_owned(), h));
                    }
                }
            }
            Err(e) => {
                // It exists but cannot be read: ClamAV is there, its age is not known.
                obs.database_files.push((*name).to_owned());
                obs.warnings.push(format!("cannot read {name}: {e}"));
            }
        }
    }
    // Normally only one daily file exists; if several do, the newest version is the one in use.
    obs.daily = dailies.into_iter().max_by_key(|(_, h)| h.version);

    let (clamd, clamd_warnings) = ask_clamd(&config.clamd_socket, config.clamd_timeout).await;
    obs.clamd = Some(clamd);
    obs.warnings.extend(clamd_warnings);

    match crate::os::linux::proc::process_names(&config.proc_root).await {
        Some(names) => {
            obs.onaccess_running = Some(names.contains("clamonacc"));
            obs.freshclam_running = Some(names.contains("freshclam"));
        }
        None => obs.warnings.push(format!(
            "cannot list processes in {}",
            config.proc_root.display()
        )),
    }

    if let Some(tail) = files::read_tail(&config.freshclam_log, FRESHCLAM_LOG_TAIL).await {
        let parsed = parse::parse_freshclam_log(&tail);
        obs.warnings.extend(parsed.warnings);
        obs.freshclam_last = parsed.value;
    }
    obs
}

/// PING, then VERSION. `Ok` means clamd is serving; `Err` says why not, for the reason.
#[cfg(target_os = "linux")]
async fn ask_clamd(
    socket: &Path,
    timeout: Duration,
) -> (
    Result<Option<parse::ClamdVersion>, parse::ClamdVersionError>,
    Vec<String>,
) {
    match clamd::ping(socket, timeout).await {
        Ok(true) => {}
        Ok(false) => {
            let why = parse::ClamdVersionError::NoPong {
                socket: socket.to_path_buf(),
            };
            return (Err(why), Vec::new());
        }
        Err(e) => {
            let why = parse::ClamdVersionError::NotAnswering(std::sync::Arc::new(e));
            return (Err(why), Vec::new());
        }
    }
    match clamd::version(socket, timeout).await {
        Ok(reply) => {
            let parsed = parse::parse_version_reply(&reply);
            (Ok(parsed.value), parsed.warnings)
        }
        // It answered PING a moment ago: responding, version unknown.
        Err(e) => (
            Ok(None),
            vec![format!("clamd VERSION failed after PING: {e}")],
        ),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn observe_reports_processes_and_freshclam_from_configured_roots() {
        let root = tempfile::tempdir().unwrap();
        let proc_root = root.path().join("proc");
        std::fs::create_dir_all(proc_root.join("77")).unwrap();
        std::fs::write(proc_root.join("77/comm"), "clamonacc\n").unwrap();
        let db = root.path().join("db");
        std::fs::create_dir(&db).unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/probe/antivirus/testdata/daily-official.header"
            ),
            db.join("daily.cvd"),
        )
        .unwrap();
        let config = AntivirusProbeConfig {
            database_dir: db,
            clamd_socket: root.path().join("no.sock"),
            freshclam_log: root.path().join("absent.log"),
            proc_root,
            clamd_timeout: Duration::from_secs(1),
        };
        let obs = observe_clamav(&config).await;
        assert_eq!(obs.database_files, ["daily.cvd"]);
        assert_eq!(obs.daily.as_ref().unwrap().1.version, Some(27462));
        assert_eq!(obs.onaccess_running, Some(true));
        assert_eq!(obs.freshclam_running, Some(false));
        assert_eq!(obs.freshclam_last, None);
        assert!(
            matches!(&obs.clamd, Some(Err(e)) if e.to_string().contains("no.sock")),
            "{:?}",
            obs.clamd
        );
    }

    #[test]
    fn invalid_policy_falls_back_to_defaults() {
        let doc = PolicyDocument {
            antivirus: AntivirusPolicy {
                max_signature_age_hours: 0,
                check_interval_secs: 1,
            },
            ..Default::default()
        };
        assert_eq!(effective_policy(&doc), AntivirusPolicy::default());
        let good = PolicyDocument {
            antivirus: AntivirusPolicy {
                max_signature_age_hours: 24,
                check_interval_secs: 600,
            },
            ..Default::default()
        };
        assert_eq!(effective_policy(&good), good.antivirus);
    }

    #[test]
    fn detection_event_details() {
        let e = detection_event(
            "USB stick SN-TEST-0001: /homework.doc",
            &["Test.EICAR.HDB.UNOFFICIAL".to_owned()],
            Some("pupil01".into()),
        );
        assert_eq!(e.kind, "antivirus.detection");
        assert_eq!(e.user.as_deref(), Some("pupil01"));
        assert_eq!(
            Value::Object(e.details),
            serde_json::json!({
                "product": "ClamAV",
                "subject": "USB stick SN-TEST-0001: /homework.doc",
                "signatures": ["Test.EICAR.HDB.UNOFFICIAL"]
            })
        );
    }
}
