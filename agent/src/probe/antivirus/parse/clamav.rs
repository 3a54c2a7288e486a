//! ClamAV's formats: the database header, clamd's replies, freshclam's log, and the ClamAV
//! product assembled from what the Linux readers saw.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use super::{Parsed, ProductReport, UpdaterInfo};
use crate::probe::antivirus::clamd::ClamdError;

/// The 512-byte ASCII header of a ClamAV `.cvd` / `.cld` / `.cud` database.
#[derive(Debug, Clone, PartialEq)]
pub struct CvdHeader {
    pub version: Option<u32>,
    pub built_at: Option<DateTime<Utc>>,
    pub signatures: Option<u64>,
    pub functionality_level: Option<u32>,
    pub builder: Option<String>,
}

const CVD_MAGIC: &str = "ClamAV-VDB:";
/// The header is exactly this long, space-padded; the compressed database follows it.
pub const CVD_HEADER_LEN: usize = 512;

/// Reads `ClamAV-VDB:<time>:<version>:<sigs>:<flevel>:<md5>:<dsig>:<builder>:<epoch>`.
///
/// The epoch field is preferred because the text time (`23 Nov 2026 13-02 +0000`) is only
/// minute-precise; the text is the fallback for old databases that lack the epoch.
pub fn parse_cvd_header(bytes: &[u8]) -> Parsed<CvdHeader> {
    let head = &bytes[..bytes.len().min(CVD_HEADER_LEN)];
    let Ok(text) = std::str::from_utf8(head) else {
        return Parsed::fail("database header is not ASCII text");
    };
    let Some(rest) = text.strip_prefix(CVD_MAGIC) else {
        return Parsed::fail("database header does not start with ClamAV-VDB:");
    };
    let rest = rest.trim_end_matches([' ', '\0', '\n', '\r']);
    let fields: Vec<&str> = rest.split(':').collect();
    let mut warnings = Vec::new();
    let field = |i: usize| fields.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());

    let version = match field(1).map(str::parse::<u32>) {
        Some(Ok(v)) => Some(v),
        other => {
            warnings.push(format!("database header has no valid version ({other:?})"));
            None
        }
    };
    let text_time = field(0).and_then(|t| DateTime::parse_from_str(t, "%d %b %Y %H-%M %z").ok());
    let epoch_time = field(7)
        .and_then(|e| e.parse::<i64>().ok())
        .and_then(|e| Utc.timestamp_opt(e, 0).single());
    let built_at = match (epoch_time, text_time) {
        (Some(e), Some(t)) => {
            if (e - t.with_timezone(&Utc)).num_hours().abs() > 24 {
                warnings.push(format!(
                    "database header build times disagree ({} vs {}); using the epoch",
                    e.to_rfc3339(),
                    t.to_rfc3339()
                ));
            }
            Some(e)
        }
        (Some(e), None) => Some(e),
        (None, Some(t)) => Some(t.with_timezone(&Utc)),
        (None, None) => {
            warnings.push("database header has no readable build time".to_owned());
            None
        }
    };
    let header = CvdHeader {
        version,
        built_at,
        signatures: field(2).and_then(|s| s.parse().ok()),
        functionality_level: field(3).and_then(|s| s.parse().ok()),
        builder: field(6).map(str::to_owned),
    };
    Parsed {
        value: Some(header),
        warnings,
    }
}

// ---------------------------------------------------------------------------------------------
// clamd replies
// ---------------------------------------------------------------------------------------------

/// A clamd reply as text: replies to `z` commands end in NUL, to `n` commands in newline.
pub fn reply_text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .trim_end_matches(['\0', '\n', '\r'])
        .to_owned()
}

/// `PING` is answered `PONG` by a working clamd; anything else means it is not serving.
pub fn parse_ping_reply(reply: &[u8]) -> bool {
    reply_text(reply).trim() == "PONG"
}

/// What clamd's `VERSION` says: `ClamAV 1.4.3/27000/Mon Nov 23 13:02:04 2026`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClamdVersion {
    pub engine: String,
    pub daily_version: Option<u32>,
    /// clamd prints the daily database's build time with `ctime`, i.e. in its local time zone
    /// and without saying which; the caller converts it (see [`ClamavObservation`]).
    pub daily_built_local: Option<NaiveDateTime>,
}

pub fn parse_version_reply(reply: &[u8]) -> Parsed<ClamdVersion> {
    let text = reply_text(reply);
    let Some(rest) = text.trim().strip_prefix("ClamAV ") else {
        return Parsed::fail(format!("unexpected clamd VERSION reply {text:?}"));
    };
    let mut parts = rest.splitn(3, '/');
    let engine = parts.next().unwrap_or_default().trim().to_owned();
    let mut warnings = Vec::new();
    let daily_version = match parts.next().map(|v| v.trim().parse::<u32>()) {
        None => None, // no daily database loaded: clamd prints the engine only
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            warnings.push(format!(
                "clamd VERSION has an unreadable database version: {text:?}"
            ));
            None
        }
    };
    let daily_built_local = match parts.next() {
        None => None,
        Some(date) => {
            let parsed = parse_ctime(date);
            if parsed.is_none() {
                warnings.push(format!("clamd VERSION has an unreadable date: {date:?}"));
            }
            parsed
        }
    };
    if engine.is_empty() {
        warnings.push(format!("clamd VERSION has no engine version: {text:?}"));
    }
    Parsed {
        value: Some(ClamdVersion {
            engine,
            daily_version,
            daily_built_local,
        }),
        warnings,
    }
}

/// `ctime` format (`Mon Nov  3 13:02:04 2026`; days are space-padded, hence the re-spacing).
fn parse_ctime(text: &str) -> Option<NaiveDateTime> {
    let spaced = text.split_whitespace().collect::<Vec<_>>().join(" ");
    NaiveDateTime::parse_from_str(&spaced, "%a %b %d %H:%M:%S %Y").ok()
}

/// The outcome of streaming bytes to clamd with `INSTREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanResult {
    Clean,
    /// Signature names, e.g. `Win.Test.EICAR_HDB-1`.
    Found(Vec<String>),
    Error(String),
}

/// Reads `stream: OK`, `stream: <name> FOUND` (one record per match when clamd runs with
/// AllMatch) or `... ERROR`. A detection wins over an error in the same reply: it is certain.
pub fn parse_scan_reply(reply: &[u8]) -> ScanResult {
    let text = String::from_utf8_lossy(reply);
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut clean = false;
    for record in text
        .split(['\0', '\n'])
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        let body = record.strip_prefix("stream:").map_or(record, str::trim);
        if let Some(name) = body.strip_suffix(" FOUND") {
            found.push(name.trim().to_owned());
        } else if body == "OK" {
            clean = true;
        } else if body.ends_with("ERROR") {
            errors.push(record.to_owned());
        } else {
            errors.push(format!("unexpected clamd reply {record:?}"));
        }
    }
    if !found.is_empty() {
        ScanResult::Found(found)
    } else if !errors.is_empty() {
        ScanResult::Error(errors.join("; "))
    } else if clean {
        ScanResult::Clean
    } else {
        ScanResult::Error("clamd closed the connection without a verdict".to_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// freshclam log
// ---------------------------------------------------------------------------------------------

/// The last freshclam run found in (the tail of) its log.
#[derive(Debug, Clone, PartialEq)]
pub struct FreshclamRun {
    /// Local time, as freshclam writes it (`ctime`).
    pub started_local: NaiveDateTime,
    /// `Some(true)` when the run reported databases up to date or updated, `Some(false)` on an
    /// ERROR line, `None` while it is still running (or the log was cut off).
    pub ok: Option<bool>,
    pub error: Option<String>,
}

const FRESHCLAM_START: &str = "update process started at ";

/// Finds the last `ClamAV update process started at <ctime>` and what followed it.
pub fn parse_freshclam_log(tail: &str) -> Parsed<FreshclamRun> {
    let lines: Vec<&str> = tail.lines().collect();
    let Some((idx, start_line)) = lines
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| l.contains(FRESHCLAM_START))
    else {
        // A fresh install, or a log freshclam does not write to: nothing to say, not an error.
        return Parsed {
            value: None,
            warnings: Vec::new(),
        };
    };
    let date = start_line.split(FRESHCLAM_START).nth(1).unwrap_or_default();
    let Some(started_local) = parse_ctime(date) else {
        return Parsed::fail(format!(
            "freshclam log has an unreadable start time: {date:?}"
        ));
    };
    let mut ok = None;
    let mut error = None;
    for line in &lines[idx + 1..] {
        // With `LogTime yes` each line is prefixed `<ctime> -> `.
        let msg = line.rsplit_once(" -> ").map_or(*line, |(_, m)| m).trim();
        if msg.starts_with("ERROR:") {
            ok = Some(false);
            error.get_or_insert_with(|| msg.to_owned());
        } else if ok.is_none()
            && (msg.contains("is up-to-date") || msg.contains(" updated (version"))
        {
            ok = Some(true);
        }
    }
    Parsed {
        value: Some(FreshclamRun {
            started_local,
            ok,
            error,
        }),
        warnings: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// ClamAV: from observations to a product
// ---------------------------------------------------------------------------------------------

/// Why clamd is not serving: an observation's `clamd: Some(Err(_))`, a note in the status.
/// `Clone` as the observation is: the cause is shared, not copied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClamdVersionError {
    #[error("clamd at {} did not answer PONG", socket.display())]
    NoPong { socket: PathBuf },
    #[error("clamd not answering: {0}")]
    NotAnswering(#[source] Arc<ClamdError>),
}

/// By message: the causes (`io::Error`s) have no equality of their own.
impl PartialEq for ClamdVersionError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// What the thin Linux readers saw; everything optional because any of it can be absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClamavObservation {
    /// Database files found (`daily.cvd`, `main.cld`, ...), by name.
    pub database_files: Vec<String>,
    /// The daily database chosen (highest version) and its header.
    pub daily: Option<(String, CvdHeader)>,
    /// `Ok(version reply)` when clamd answered PING; `Err(why)` otherwise.
    pub clamd: Option<Result<Option<ClamdVersion>, ClamdVersionError>>,
    pub onaccess_running: Option<bool>,
    pub freshclam_running: Option<bool>,
    pub freshclam_last: Option<FreshclamRun>,
    /// Problems the readers met (unreadable header, ...): they explain an `unknown`.
    pub warnings: Vec<String>,
}

/// Builds the ClamAV product, or `None` when nothing suggests ClamAV is installed (no database
/// and no clamd): that is `missing`. `to_utc` converts clamd's and freshclam's local times.
pub fn clamav_product(
    obs: &ClamavObservation,
    to_utc: &dyn Fn(NaiveDateTime) -> Option<DateTime<Utc>>,
) -> Option<ProductReport> {
    let clamd_answers = matches!(obs.clamd, Some(Ok(_)));
    if obs.database_files.is_empty() && !clamd_answers {
        return None;
    }
    let mut p = ProductReport::named("ClamAV");
    p.notes.extend(obs.warnings.iter().cloned());
    let loaded = match &obs.clamd {
        Some(Ok(v)) => v.as_ref(),
        _ => None,
    };
    p.engine_version = loaded.map(|v| v.engine.clone()).filter(|e| !e.is_empty());
    p.service_responding = obs.clamd.as_ref().map(Result::is_ok);
    if let Some(Err(why)) = &obs.clamd {
        p.notes.push(why.to_string());
    }
    p.realtime_protection = obs.onaccess_running;

    let file = obs.daily.as_ref().map(|(_, h)| h);
    let file_version = file.and_then(|h| h.version);
    p.signature_version = file_version
        .or(loaded.and_then(|v| v.daily_version))
        .map(|v| v.to_string());
    // The file is authoritative (it is what freshclam keeps current); clamd's own report is the
    // fallback when the directory cannot be read.
    p.signatures_built_at = file
        .and_then(|h| h.built_at)
        .or_else(|| loaded.and_then(|v| v.daily_built_local).and_then(to_utc));
    if let (Some(f), Some(l)) = (file_version, loaded.and_then(|v| v.daily_version))
        && l < f
    {
        p.notes.push(format!(
            "clamd still has daily {l} loaded; daily {f} is on disk (reload pending)"
        ));
    }
    if obs.daily.is_none() && !obs.database_files.is_empty() && p.signatures_built_at.is_none() {
        p.notes.push("no daily database".into());
    }
    if obs.freshclam_running.is_some() || obs.freshclam_last.is_some() {
        let last = obs.freshclam_last.as_ref();
        p.updater = Some(UpdaterInfo {
            name: "freshclam".into(),
            running: obs.freshclam_running,
            last_run_at: last.and_then(|r| to_utc(r.started_local)),
            last_run_ok: last.and_then(|r| r.ok),
            last_error: last.and_then(|r| r.error.clone()),
        });
    }
    Some(p)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::antivirus::decide::assess_product;
    use crate::probe::antivirus::parse::fixtures::{fixture, fixture_text, t};

    const NOW: &str = "2026-11-23T12:00:00Z";

    // --- CVD header ---

    #[test]
    fn cvd_header_from_sigtool_output() {
        let parsed = parse_cvd_header(&fixture("daily-sigtool-unsigned.header"));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        assert_eq!(
            parsed.value,
            Some(CvdHeader {
                version: Some(27000),
                built_at: Some(t("2026-11-23T13:02:04Z")),
                signatures: Some(1),
                functionality_level: Some(213),
                builder: Some("builder".into()),
            })
        );
    }

    #[test]
    fn cvd_header_of_an_official_daily_cvd() {
        let parsed = parse_cvd_header(&fixture("daily-official.header"));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        let h = parsed.value.unwrap();
        assert_eq!(h.version, Some(27462));
        assert_eq!(h.signatures, Some(2_069_452));
        assert_eq!(h.functionality_level, Some(90));
        assert_eq!(h.builder.as_deref(), Some("raynman"));
        assert_eq!(h.built_at, Some(t("2024-11-22T09:38:00Z")));
    }

    #[test]
    fn cvd_header_without_epoch_uses_text_time() {
        let h = parse_cvd_header(
            b"ClamAV-VDB:08 Jan 2024 04-28 -0500:27147:2048000:90:abc:def:raynman",
        )
        .value
        .unwrap();
        assert_eq!(h.built_at, Some(t("2024-01-08T09:28:00Z")));
        assert_eq!(h.version, Some(27147));
    }

    #[test]
    fn cvd_header_malformed_inputs_are_warnings() {
        for (input, warning) in [
            (&b""[..], "database header does not start with ClamAV-VDB:"),
            (
                b"PK\x03\x04garbage",
                "database header does not start with ClamAV-VDB:",
            ),
            (b"ClamAV-VDB:\xff\xfe", "database header is not ASCII text"),
        ] {
            assert_eq!(parse_cvd_header(input), Parsed::fail(warning), "{input:?}");
        }
        let partial = parse_cvd_header(b"ClamAV-VDB:yesterday:x");
        assert_eq!(
            partial.value,
            Some(CvdHeader {
                version: None,
                built_at: None,
                signatures: None,
                functionality_level: None,
                builder: None
            })
        );
        assert_eq!(partial.warnings.len(), 2);
    }

    #[test]
    fn cvd_header_without_any_build_time() {
        let parsed = parse_cvd_header(&fixture("daily-no-build-time.header"));
        let h = parsed.value.unwrap();
        assert_eq!(h.version, Some(27462));
        assert_eq!(h.built_at, None);
        assert_eq!(
            parsed.warnings,
            vec!["database header has no readable build time"]
        );
    }

    // --- clamd ---

    #[test]
    fn ping_reply() {
        assert!(parse_ping_reply(b"PONG\0"));
        assert!(parse_ping_reply(b"PONG\n"));
        assert!(!parse_ping_reply(b"UNKNOWN COMMAND\0"));
        assert!(!parse_ping_reply(b""));
    }

    #[test]
    fn version_reply_recorded_from_clamd_1_4_3() {
        let parsed = parse_version_reply(b"ClamAV 1.4.3/27000/Mon Nov 23 13:02:04 2026\0");
        assert_eq!(parsed.warnings, Vec::<String>::new());
        assert_eq!(
            parsed.value,
            Some(ClamdVersion {
                engine: "1.4.3".into(),
                daily_version: Some(27000),
                daily_built_local: Some(t("2026-11-23T13:02:04Z").naive_utc()),
            })
        );
    }

    #[test]
    fn version_reply_space_padded_day_and_engine_only() {
        let v = parse_version_reply(b"ClamAV 1.0.9/27100/Tue Nov  3 09:00:00 2026\n")
            .value
            .unwrap();
        assert_eq!(
            v.daily_built_local,
            Some(t("2026-11-03T09:00:00Z").naive_utc())
        );
        let v = parse_version_reply(b"ClamAV 1.4.3\0").value.unwrap();
        assert_eq!(
            v,
            ClamdVersion {
                engine: "1.4.3".into(),
                daily_version: None,
                daily_built_local: None
            }
        );
    }

    #[test]
    fn version_reply_malformed() {
        assert_eq!(
            parse_version_reply(b"PONG\0"),
            Parsed::fail("unexpected clamd VERSION reply \"PONG\"")
        );
        let p = parse_version_reply(b"ClamAV 1.4.3/abc/someday\0");
        assert_eq!(p.value.as_ref().unwrap().daily_version, None);
        assert_eq!(p.warnings.len(), 2);
    }

    #[test]
    fn scan_replies() {
        assert_eq!(parse_scan_reply(b"stream: OK\0"), ScanResult::Clean);
        assert_eq!(
            parse_scan_reply(b"stream: Test.EICAR.HDB.UNOFFICIAL FOUND\0"),
            ScanResult::Found(vec!["Test.EICAR.HDB.UNOFFICIAL".into()])
        );
        assert_eq!(
            parse_scan_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\0stream: Eicar-Sig FOUND\0"),
            ScanResult::Found(vec!["Win.Test.EICAR_HDB-1".into(), "Eicar-Sig".into()])
        );
        assert_eq!(
            parse_scan_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            ScanResult::Error("INSTREAM size limit exceeded. ERROR".into())
        );
        assert_eq!(
            parse_scan_reply(b""),
            ScanResult::Error("clamd closed the connection without a verdict".into())
        );
        assert_eq!(
            parse_scan_reply(b"hello\0"),
            ScanResult::Error("unexpected clamd reply \"hello\"".into())
        );
    }

    // --- freshclam ---

    #[test]
    fn freshclam_log_failed_run_recorded() {
        let parsed = parse_freshclam_log(&fixture_text("freshclam-unreachable-mirror.log"));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        assert_eq!(
            parsed.value,
            Some(FreshclamRun {
                started_local: t("2026-11-23T13:07:34Z").naive_utc(),
                ok: Some(false),
                // freshclam 1.4.3 writes two messages on one line here; the last one is kept.
                error: Some("ERROR:  Message: Couldn't connect to server".into()),
            })
        );
    }

    #[test]
    fn freshclam_log_successful_run_with_logtime() {
        let parsed = parse_freshclam_log(&fixture_text("freshclam-updated.log"));
        assert_eq!(
            parsed.value,
            Some(FreshclamRun {
                started_local: t("2026-11-23T11:00:01Z").naive_utc(),
                ok: Some(true),
                error: None,
            })
        );
    }

    #[test]
    fn freshclam_log_empty_or_garbled() {
        assert_eq!(
            parse_freshclam_log(""),
            Parsed {
                value: None,
                warnings: vec![]
            }
        );
        let p = parse_freshclam_log("ClamAV update process started at not-a-date\n");
        assert_eq!(p.value, None);
        assert_eq!(p.warnings.len(), 1);
    }

    // --- ClamAV assembly ---

    fn utc(n: NaiveDateTime) -> Option<DateTime<Utc>> {
        Some(n.and_utc())
    }

    fn header(version: u32, built: &str) -> CvdHeader {
        CvdHeader {
            version: Some(version),
            built_at: Some(t(built)),
            signatures: Some(1),
            functionality_level: Some(90),
            builder: None,
        }
    }

    #[test]
    fn clamav_product_absent_when_nothing_found() {
        let obs = ClamavObservation {
            clamd: Some(Err(ClamdVersionError::NotAnswering(Arc::new(
                ClamdError::Timeout(std::time::Duration::from_secs(1)),
            )))),
            ..Default::default()
        };
        assert_eq!(clamav_product(&obs, &utc), None);
    }

    #[test]
    fn clamav_product_from_file_and_clamd() {
        let obs = ClamavObservation {
            database_files: vec!["daily.cld".into(), "main.cvd".into()],
            daily: Some(("daily.cld".into(), header(27001, "2026-11-23T07:00:00Z"))),
            clamd: Some(Ok(Some(ClamdVersion {
                engine: "1.4.3".into(),
                daily_version: Some(27000),
                daily_built_local: None,
            }))),
            onaccess_running: Some(true),
            freshclam_running: Some(false),
            freshclam_last: None,
            warnings: vec![],
        };
        let p = clamav_product(&obs, &utc).unwrap();
        assert_eq!(p.engine_version.as_deref(), Some("1.4.3"));
        assert_eq!(p.signature_version.as_deref(), Some("27001"));
        assert_eq!(p.signatures_built_at, Some(t("2026-11-23T07:00:00Z")));
        assert_eq!(p.realtime_protection, Some(true));
        assert_eq!(p.service_responding, Some(true));
        assert_eq!(
            p.notes,
            vec!["clamd still has daily 27000 loaded; daily 27001 is on disk (reload pending)"]
        );
        assert_eq!(p.updater.unwrap().running, Some(false));
    }

    #[test]
    fn clamav_product_falls_back_to_clamd_date() {
        let obs = ClamavObservation {
            clamd: Some(Ok(Some(ClamdVersion {
                engine: "1.4.3".into(),
                daily_version: Some(27000),
                daily_built_local: Some(t("2026-11-23T13:02:04Z").naive_utc()),
            }))),
            ..Default::default()
        };
        let p = clamav_product(&obs, &utc).unwrap();
        assert_eq!(p.signature_version.as_deref(), Some("27000"));
        assert_eq!(p.signatures_built_at, Some(t("2026-11-23T13:02:04Z")));
    }

    #[test]
    fn clamav_product_main_only_is_unknown() {
        let obs = ClamavObservation {
            database_files: vec!["main.cvd".into()],
            clamd: Some(Err(ClamdVersionError::NotAnswering(Arc::new(
                ClamdError::Connect {
                    socket: "/x".into(),
                    source: std::io::Error::from_raw_os_error(2),
                },
            )))),
            ..Default::default()
        };
        let p = clamav_product(&obs, &utc).unwrap();
        assert_eq!(p.service_responding, Some(false));
        // The OS words ENOENT itself (Linux and Windows differ).
        let enoent = std::io::Error::from_raw_os_error(2);
        assert_eq!(
            assess_product(&p, 72, t(NOW)).1,
            format!(
                "service not responding (clamd not answering: cannot connect to clamd at /x: \
                 {enoent}; no daily database)"
            )
        );
    }
}
