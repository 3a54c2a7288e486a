//! Pure interpretation for the antivirus probe: ClamAV database headers, clamd and freshclam text,
//! Defender / Security Center / XProtect records, and the normalisation into one status.
//!
//! Nothing here touches the OS, so every platform's interpreter is tested on Linux. Parsers of
//! real-world input return what they could read plus warnings; they never panic.

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value, json};

/// What a parser could read, and what it could not (for the log and for `unknown` reasons).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub value: Option<T>,
    pub warnings: Vec<String>,
}

impl<T> Parsed<T> {
    fn fail(warning: impl Into<String>) -> Self {
        Self {
            value: None,
            warnings: vec![warning.into()],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ClamAV database header
// ---------------------------------------------------------------------------------------------

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
// The normalised product report and status
// ---------------------------------------------------------------------------------------------

/// The one status the collector sees per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AvStatus {
    Current,
    Stale,
    Disabled,
    Missing,
    Unknown,
}

impl AvStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AvStatus::Current => "current",
            AvStatus::Stale => "stale",
            AvStatus::Disabled => "disabled",
            AvStatus::Missing => "missing",
            AvStatus::Unknown => "unknown",
        }
    }

    /// Lower is better protected. With several products (Windows with a third-party suite and
    /// Defender in passive mode) the device is as good as its best product. A stale product
    /// outranks an unknown one because it is a definite, actionable finding.
    fn rank(self) -> u8 {
        match self {
            AvStatus::Current => 0,
            AvStatus::Stale => 1,
            AvStatus::Unknown => 2,
            AvStatus::Disabled => 3,
            AvStatus::Missing => 4,
        }
    }
}

/// How a keeper of signatures (freshclam) is doing; informational, it does not change status.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdaterInfo {
    pub name: String,
    pub running: Option<bool>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_run_ok: Option<bool>,
    pub last_error: Option<String>,
}

/// One antivirus product as every platform's interpreter reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductReport {
    pub name: String,
    pub engine_version: Option<String>,
    pub signature_version: Option<String>,
    pub signatures_built_at: Option<DateTime<Utc>>,
    pub realtime_protection: Option<bool>,
    pub service_responding: Option<bool>,
    /// The product's own on/off verdict (Defender `AntivirusEnabled`, Security Center state).
    pub enabled: Option<bool>,
    /// The product's own verdict on its signatures; used only when no build time is known.
    pub signatures_up_to_date: Option<bool>,
    /// Whether real-time protection being off makes the product `disabled`. True on Windows,
    /// where it is the norm; false for ClamAV, whose on-access scanning is opt-in on Linux.
    pub realtime_required: bool,
    pub updater: Option<UpdaterInfo>,
    /// Why something could not be read; these become the `unknown` / `disabled` reason.
    pub notes: Vec<String>,
}

impl ProductReport {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            engine_version: None,
            signature_version: None,
            signatures_built_at: None,
            realtime_protection: None,
            service_responding: None,
            enabled: None,
            signatures_up_to_date: None,
            realtime_required: false,
            updater: None,
            notes: Vec::new(),
        }
    }
}

/// A clock that is wrong by less than this is not worth an `unknown`.
const FUTURE_TOLERANCE_HOURS: i64 = 24;

fn with_notes(msg: String, notes: &[String]) -> String {
    if notes.is_empty() {
        msg
    } else {
        format!("{msg} ({})", notes.join("; "))
    }
}

/// Signature age in whole hours (negative ages, from small clock skews, count as 0).
pub fn signature_age_hours(built_at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (now - built_at).num_hours().max(0)
}

/// The status of one product and why.
pub fn assess_product(
    p: &ProductReport,
    max_age_hours: u32,
    now: DateTime<Utc>,
) -> (AvStatus, String) {
    if p.enabled == Some(false) {
        return (
            AvStatus::Disabled,
            with_notes("turned off".into(), &p.notes),
        );
    }
    if p.service_responding == Some(false) {
        return (
            AvStatus::Disabled,
            with_notes("service not responding".into(), &p.notes),
        );
    }
    if p.realtime_required && p.realtime_protection == Some(false) {
        return (
            AvStatus::Disabled,
            with_notes("real-time protection is off".into(), &p.notes),
        );
    }
    match (p.signatures_built_at, p.signatures_up_to_date) {
        (Some(built), _) => {
            if built - now > Duration::hours(FUTURE_TOLERANCE_HOURS) {
                return (
                    AvStatus::Unknown,
                    format!(
                        "signatures claim to be built in the future ({}); is the clock wrong?",
                        built.to_rfc3339()
                    ),
                );
            }
            let age = signature_age_hours(built, now);
            if now - built > Duration::hours(i64::from(max_age_hours)) {
                (
                    AvStatus::Stale,
                    format!("signatures are {age} h old (limit {max_age_hours} h)"),
                )
            } else {
                (
                    AvStatus::Current,
                    format!("signatures are {age} h old (limit {max_age_hours} h)"),
                )
            }
        }
        (None, Some(false)) => (
            AvStatus::Stale,
            "the product reports its signatures out of date".into(),
        ),
        (None, Some(true)) => (
            AvStatus::Current,
            "the product reports its signatures up to date".into(),
        ),
        (None, None) => (
            AvStatus::Unknown,
            with_notes("signature build time unknown".into(), &p.notes),
        ),
    }
}

/// The device's status over all products.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub status: AvStatus,
    pub reason: String,
    /// Per product, in the order given: its own status and reason.
    pub per_product: Vec<(AvStatus, String)>,
}

/// Normalises the products into one status. `absent_reason` says what was looked for when
/// no product was found (e.g. which database directory and socket).
pub fn normalise(
    products: &[ProductReport],
    max_age_hours: u32,
    now: DateTime<Utc>,
    absent_reason: &str,
) -> Assessment {
    let per_product: Vec<(AvStatus, String)> = products
        .iter()
        .map(|p| assess_product(p, max_age_hours, now))
        .collect();
    let Some(best) = per_product.iter().map(|(s, _)| *s).min_by_key(|s| s.rank()) else {
        return Assessment {
            status: AvStatus::Missing,
            reason: absent_reason.to_owned(),
            per_product,
        };
    };
    // The best product's reason first, so the headline explains the headline status.
    let mut order: Vec<usize> = (0..products.len()).collect();
    order.sort_by_key(|&i| per_product[i].0.rank());
    let reason = order
        .iter()
        .map(|&i| format!("{}: {}", products[i].name, per_product[i].1))
        .collect::<Vec<_>>()
        .join("; ");
    Assessment {
        status: best,
        reason,
        per_product,
    }
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

fn opt_bool(v: Option<bool>) -> Value {
    v.map_or(Value::Null, Value::Bool)
}

fn opt_time(v: Option<DateTime<Utc>>) -> Value {
    v.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    })
}

/// The `antivirus.status` event's details.
pub fn status_details(
    products: &[ProductReport],
    assessment: &Assessment,
    max_age_hours: u32,
    now: DateTime<Utc>,
) -> Map<String, Value> {
    let products_json: Vec<Value> = products
        .iter()
        .zip(&assessment.per_product)
        .map(|(p, (status, reason))| {
            let mut m = json!({
                "name": p.name,
                "engine_version": opt_str(&p.engine_version),
                "signature_version": opt_str(&p.signature_version),
                "signatures_built_at": opt_time(p.signatures_built_at),
                "signature_age_hours": p.signatures_built_at.map(|b| signature_age_hours(b, now)),
                "realtime_protection": opt_bool(p.realtime_protection),
                "service_responding": opt_bool(p.service_responding),
                "status": status.as_str(),
                "reason": reason,
            });
            if let (Some(u), Value::Object(obj)) = (&p.updater, &mut m) {
                obj.insert(
                    "updater".into(),
                    json!({
                        "name": u.name,
                        "running": opt_bool(u.running),
                        "last_run_at": opt_time(u.last_run_at),
                        "last_run_ok": opt_bool(u.last_run_ok),
                        "last_error": opt_str(&u.last_error),
                    }),
                );
            }
            m
        })
        .collect();
    let mut details = Map::new();
    details.insert("products".into(), Value::Array(products_json));
    details.insert("status".into(), assessment.status.as_str().into());
    details.insert("reason".into(), assessment.reason.clone().into());
    details.insert("max_signature_age_hours".into(), max_age_hours.into());
    details
}

// ---------------------------------------------------------------------------------------------
// ClamAV: from observations to a product
// ---------------------------------------------------------------------------------------------

/// What the thin Linux readers saw; everything optional because any of it can be absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClamavObservation {
    /// Database files found (`daily.cvd`, `main.cld`, ...), by name.
    pub database_files: Vec<String>,
    /// The daily database chosen (highest version) and its header.
    pub daily: Option<(String, CvdHeader)>,
    /// `Ok(version reply)` when clamd answered PING; `Err(why)` otherwise.
    pub clamd: Option<Result<Option<ClamdVersion>, String>>,
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
        p.notes.push(why.clone());
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

// ---------------------------------------------------------------------------------------------
// Windows: Defender (Get-MpComputerStatus | ConvertTo-Json)
// ---------------------------------------------------------------------------------------------

/// Defender's signature-age sentinels for "never updated".
const DEFENDER_AGE_NEVER: [u64; 2] = [65_535, 4_294_967_295];

fn json_bool(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

fn json_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

/// PowerShell dates: 5.1 writes `/Date(1732345678000)/` (its JSON shows `\/Date(...)\/`);
/// 7 writes ISO 8601; `Select-Object` output can wrap it as `{"value": ..., "DateTime": ...}`.
pub fn parse_powershell_date(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => {
            let s = s.trim();
            if let Some(inner) = s.strip_prefix("/Date(").and_then(|r| r.strip_suffix(")/")) {
                // An optional `+0100` offset follows the milliseconds; the milliseconds are UTC.
                let digits_end = inner
                    .char_indices()
                    .skip(1)
                    .find(|(_, c)| *c == '+' || *c == '-')
                    .map_or(inner.len(), |(i, _)| i);
                let ms: i64 = inner[..digits_end].parse().ok()?;
                return Utc.timestamp_millis_opt(ms).single();
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            // ISO without an offset (Kind=Unspecified): Defender keeps these in UTC.
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        }
        Value::Object(o) => o.get("value").and_then(parse_powershell_date),
        _ => None,
    }
}

/// ConvertTo-Json of a single object gives an object, of several an array.
fn single_object<'a>(
    v: &'a Value,
    what: &str,
    warnings: &mut Vec<String>,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(o) => Some(o),
        Value::Array(items) => {
            if items.len() > 1 {
                warnings.push(format!("{what}: {} records, using the first", items.len()));
            }
            items.first().and_then(Value::as_object)
        }
        _ => None,
    }
}

/// Interprets `Get-MpComputerStatus | ConvertTo-Json`, captured at `observed_at`.
pub fn parse_defender_status(json_text: &str, observed_at: DateTime<Utc>) -> Parsed<ProductReport> {
    let root: Value = match serde_json::from_str(json_text.trim_start_matches('\u{feff}')) {
        Ok(v) => v,
        Err(e) => return Parsed::fail(format!("Defender status is not JSON: {e}")),
    };
    let mut warnings = Vec::new();
    let Some(o) = single_object(&root, "Defender status", &mut warnings) else {
        return Parsed::fail("Defender status is not a JSON object");
    };
    if !o.contains_key("AntivirusSignatureVersion") && !o.contains_key("AMServiceEnabled") {
        return Parsed::fail("Defender status has none of the expected fields");
    }
    let mut p = ProductReport::named("Microsoft Defender Antivirus");
    p.realtime_required = true;
    p.engine_version = json_string(o.get("AMEngineVersion"));
    p.signature_version = json_string(o.get("AntivirusSignatureVersion"));
    p.realtime_protection = json_bool(o.get("RealTimeProtectionEnabled"));
    p.service_responding = json_bool(o.get("AMServiceEnabled"));
    p.signatures_up_to_date = json_bool(o.get("DefenderSignaturesOutOfDate")).map(|b| !b);

    let mode = json_string(o.get("AMRunningMode"));
    let passive = mode
        .as_deref()
        .is_some_and(|m| m.contains("Passive") || m.contains("EDR Block") || m == "Not running");
    p.enabled = match json_bool(o.get("AntivirusEnabled")) {
        Some(true) if passive => Some(false),
        other => other,
    };
    if let Some(m) = mode.filter(|_| passive) {
        p.notes.push(format!("running mode {m}"));
    }

    let last_updated = o.get("AntivirusSignatureLastUpdated").and_then(|v| {
        let t = parse_powershell_date(v);
        if t.is_none() && !v.is_null() {
            warnings.push(format!("unreadable AntivirusSignatureLastUpdated {v}"));
        }
        t
    });
    let from_age = match o.get("AntivirusSignatureAge").and_then(Value::as_u64) {
        Some(d) if DEFENDER_AGE_NEVER.contains(&d) => {
            p.notes.push("signatures never updated".into());
            None
        }
        Some(d) => i64::try_from(d)
            .ok()
            .and_then(Duration::try_days)
            // Checked: an age of millions of days reaches before any date chrono can hold.
            .and_then(|age| observed_at.checked_sub_signed(age)),
        None => None,
    };
    // LastUpdated is when signatures were installed; the day-granular age is how old they are.
    // The earlier of the two is the conservative build time.
    p.signatures_built_at = match (last_updated, from_age) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Parsed {
        value: Some(p),
        warnings,
    }
}

// ---------------------------------------------------------------------------------------------
// Windows: Security Center (root\SecurityCenter2 AntiVirusProduct)
// ---------------------------------------------------------------------------------------------

/// The widely used reading of the undocumented `productState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductState {
    /// Bits 12–15: 0 off, 1 on, 2 snoozed, 3 expired.
    pub enabled: Option<bool>,
    pub state_name: &'static str,
    /// Bits 4–7: 0 up to date, 1 out of date.
    pub signatures_up_to_date: Option<bool>,
}

pub fn decode_product_state(state: u32) -> ProductState {
    let (enabled, state_name) = match (state >> 12) & 0xF {
        0 => (Some(false), "off"),
        1 => (Some(true), "on"),
        2 => (Some(false), "snoozed"),
        3 => (Some(false), "expired"),
        _ => (None, "unrecognised"),
    };
    let signatures_up_to_date = match (state >> 4) & 0xF {
        0 => Some(true),
        1 => Some(false),
        _ => None,
    };
    ProductState {
        enabled,
        state_name,
        signatures_up_to_date,
    }
}

/// Interprets `Get-CimInstance -Namespace root/SecurityCenter2 -ClassName AntiVirusProduct |
/// ConvertTo-Json`. Records without a readable name or state are skipped with a warning.
pub fn parse_security_center(json_text: &str) -> Parsed<Vec<ProductReport>> {
    let root: Value = match serde_json::from_str(json_text.trim_start_matches('\u{feff}')) {
        Ok(v) => v,
        Err(e) => return Parsed::fail(format!("SecurityCenter2 output is not JSON: {e}")),
    };
    let records: Vec<&Value> = match &root {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![&root],
        Value::Null => Vec::new(), // no product registered: PowerShell prints nothing
        _ => return Parsed::fail("SecurityCenter2 output is neither an object nor an array"),
    };
    let mut warnings = Vec::new();
    let mut products = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let Some(name) = json_string(r.get("displayName")) else {
            warnings.push(format!("SecurityCenter2 record {i} has no displayName"));
            continue;
        };
        let state = match r.get("productState") {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let Some(state) = state else {
            warnings.push(format!(
                "SecurityCenter2 record {name:?} has no readable productState"
            ));
            continue;
        };
        let decoded = decode_product_state(state);
        let mut p = ProductReport::named(&name);
        p.realtime_required = true;
        p.enabled = decoded.enabled;
        // Security Center's "on" is the product's real-time protection being on.
        p.realtime_protection = decoded.enabled;
        p.signatures_up_to_date = decoded.signatures_up_to_date;
        if decoded.enabled.is_none() || decoded.signatures_up_to_date.is_none() {
            p.notes
                .push(format!("productState 0x{state:06X} not understood"));
        }
        if decoded.state_name == "snoozed" || decoded.state_name == "expired" {
            p.notes.push(decoded.state_name.into());
        }
        products.push(p);
    }
    Parsed {
        value: Some(products),
        warnings,
    }
}

/// Security Center also lists Defender; when Get-MpComputerStatus gave the detailed report, the
/// Security Center copy is dropped so Defender is not counted twice.
pub fn windows_products(
    defender: Option<ProductReport>,
    security_center: Vec<ProductReport>,
) -> Vec<ProductReport> {
    let mut out = Vec::new();
    let have_defender = defender.is_some();
    out.extend(defender);
    out.extend(
        security_center
            .into_iter()
            .filter(|p| !(have_defender && p.name.contains("Defender"))),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// macOS: XProtect
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct XProtectInfo {
    pub version: String,
    pub bundle_version: Option<String>,
}

/// Finds `<key>NAME</key>` followed by `<string>VALUE</string>` in an XML property list.
fn plist_string(text: &str, key: &str) -> Option<String> {
    let marker = format!("<key>{key}</key>");
    let after = &text[text.find(&marker)? + marker.len()..];
    let after = after.trim_start();
    let value = after.strip_prefix("<string>")?;
    let end = value.find("</string>")?;
    let raw = value[..end].trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Reads XProtect's `Info.plist` (XML form). Binary plists are reported, not decoded: the
/// macOS backend can convert them with `plutil -convert xml1` first.
pub fn parse_xprotect_plist(bytes: &[u8]) -> Parsed<XProtectInfo> {
    if bytes.starts_with(b"bplist") {
        return Parsed::fail("XProtect Info.plist is a binary plist; convert it to XML first");
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Parsed::fail("XProtect Info.plist is not UTF-8");
    };
    match plist_string(text, "CFBundleShortVersionString").filter(|v| !v.is_empty()) {
        Some(version) => Parsed {
            value: Some(XProtectInfo {
                version,
                bundle_version: plist_string(text, "CFBundleVersion"),
            }),
            warnings: Vec::new(),
        },
        None => Parsed::fail("XProtect Info.plist has no CFBundleShortVersionString"),
    }
}

/// XProtect has no build time of its own in the plist: the backend passes the bundle's
/// modification time (when the update was installed) as the best available stand-in.
pub fn xprotect_product(info: &XProtectInfo, installed_at: Option<DateTime<Utc>>) -> ProductReport {
    let mut p = ProductReport::named("XProtect");
    p.signature_version = Some(info.version.clone());
    p.signatures_built_at = installed_at;
    if installed_at.is_none() {
        p.notes.push("XProtect install time unknown".into());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/src/probe/antivirus/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn fixture_text(name: &str) -> String {
        String::from_utf8(fixture(name)).unwrap()
    }

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

    // --- normalisation ---

    fn clam(built: &str) -> ProductReport {
        let mut p = ProductReport::named("ClamAV");
        p.signatures_built_at = Some(t(built));
        p.service_responding = Some(true);
        p.realtime_protection = Some(false);
        p
    }

    const NOW: &str = "2026-11-23T12:00:00Z";

    #[test]
    fn assess_current_stale_and_boundary() {
        let now = t(NOW);
        assert_eq!(
            assess_product(&clam("2026-11-23T07:00:00Z"), 72, now),
            (
                AvStatus::Current,
                "signatures are 5 h old (limit 72 h)".into()
            )
        );
        assert_eq!(
            assess_product(&clam("2026-11-20T12:00:00Z"), 72, now),
            (
                AvStatus::Current,
                "signatures are 72 h old (limit 72 h)".into()
            )
        );
        assert_eq!(
            assess_product(&clam("2026-11-20T11:59:00Z"), 72, now),
            (
                AvStatus::Stale,
                "signatures are 72 h old (limit 72 h)".into()
            )
        );
        assert_eq!(
            assess_product(&clam("2026-11-13T12:00:00Z"), 72, now),
            (
                AvStatus::Stale,
                "signatures are 240 h old (limit 72 h)".into()
            )
        );
    }

    #[test]
    fn assess_disabled_unknown_and_clock_skew() {
        let now = t(NOW);
        let mut down = clam("2026-11-23T07:00:00Z");
        down.service_responding = Some(false);
        down.notes
            .push("clamd not answering on /run/x.ctl: connection refused".into());
        assert_eq!(
            assess_product(&down, 72, now),
            (
                AvStatus::Disabled,
                "service not responding (clamd not answering on /run/x.ctl: connection refused)"
                    .into()
            )
        );
        let mut no_time = clam("2026-11-23T07:00:00Z");
        no_time.signatures_built_at = None;
        no_time
            .notes
            .push("database header has no readable build time".into());
        assert_eq!(
            assess_product(&no_time, 72, now),
            (
                AvStatus::Unknown,
                "signature build time unknown (database header has no readable build time)".into()
            )
        );
        assert_eq!(
            assess_product(&clam("2026-11-23T14:00:00Z"), 72, now).0,
            AvStatus::Current
        );
        assert_eq!(
            assess_product(&clam("2026-11-30T00:00:00Z"), 72, now).0,
            AvStatus::Unknown
        );
        // ClamAV without on-access scanning is not disabled; a Windows product would be.
        let mut rt = clam("2026-11-23T07:00:00Z");
        assert_eq!(assess_product(&rt, 72, now).0, AvStatus::Current);
        rt.realtime_required = true;
        assert_eq!(
            assess_product(&rt, 72, now),
            (AvStatus::Disabled, "real-time protection is off".into())
        );
    }

    #[test]
    fn normalise_combines_products_best_first() {
        let now = t(NOW);
        assert_eq!(
            normalise(&[], 72, now, "nothing in /var/lib/clamav"),
            Assessment {
                status: AvStatus::Missing,
                reason: "nothing in /var/lib/clamav".into(),
                per_product: vec![]
            }
        );
        let mut defender_passive = ProductReport::named("Microsoft Defender Antivirus");
        defender_passive.enabled = Some(false);
        let mut sophos = ProductReport::named("Sophos Anti-Virus");
        sophos.enabled = Some(true);
        sophos.signatures_up_to_date = Some(true);
        let a = normalise(&[defender_passive.clone(), sophos.clone()], 72, now, "");
        assert_eq!(a.status, AvStatus::Current);
        assert_eq!(
            a.reason,
            "Sophos Anti-Virus: the product reports its signatures up to date; \
             Microsoft Defender Antivirus: turned off"
        );
        sophos.signatures_up_to_date = None;
        let a = normalise(&[defender_passive, sophos], 72, now, "");
        assert_eq!(a.status, AvStatus::Unknown);
    }

    #[test]
    fn status_details_shape() {
        let now = t(NOW);
        let mut p = clam("2026-11-23T07:00:00Z");
        p.engine_version = Some("1.4.3".into());
        p.signature_version = Some("27000".into());
        p.updater = Some(UpdaterInfo {
            name: "freshclam".into(),
            running: Some(true),
            last_run_at: Some(t("2026-11-23T11:00:01Z")),
            last_run_ok: Some(true),
            last_error: None,
        });
        let a = normalise(std::slice::from_ref(&p), 72, now, "");
        let d = status_details(&[p], &a, 72, now);
        assert_eq!(
            Value::Object(d),
            json!({
                "products": [{
                    "name": "ClamAV",
                    "engine_version": "1.4.3",
                    "signature_version": "27000",
                    "signatures_built_at": "2026-11-23T07:00:00Z",
                    "signature_age_hours": 5,
                    "realtime_protection": false,
                    "service_responding": true,
                    "status": "current",
                    "reason": "signatures are 5 h old (limit 72 h)",
                    "updater": {
                        "name": "freshclam",
                        "running": true,
                        "last_run_at": "2026-11-23T11:00:01Z",
                        "last_run_ok": true,
                        "last_error": null
                    }
                }],
                "status": "current",
                "reason": "ClamAV: signatures are 5 h old (limit 72 h)",
                "max_signature_age_hours": 72
            })
        );
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
            clamd: Some(Err("clamd not answering".into())),
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
            clamd: Some(Err(
                "clamd not answering on /x: No such file or directory".into()
            )),
            ..Default::default()
        };
        let p = clamav_product(&obs, &utc).unwrap();
        assert_eq!(p.service_responding, Some(false));
        assert_eq!(
            assess_product(&p, 72, t(NOW)).1,
            "service not responding (clamd not answering on /x: No such file or directory; \
             no daily database)"
        );
    }

    // --- Defender ---

    const OBSERVED: &str = "2026-11-23T10:00:00Z";

    #[test]
    fn defender_healthy() {
        let parsed = parse_defender_status(&fixture_text("defender-healthy.json"), t(OBSERVED));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        let p = parsed.value.unwrap();
        assert_eq!(
            p,
            ProductReport {
                name: "Microsoft Defender Antivirus".into(),
                engine_version: Some("1.1.24090.11".into()),
                signature_version: Some("1.421.1576.0".into()),
                signatures_built_at: Some(t("2026-11-23T06:12:45Z")),
                realtime_protection: Some(true),
                service_responding: Some(true),
                enabled: Some(true),
                signatures_up_to_date: Some(true),
                realtime_required: true,
                updater: None,
                notes: vec![],
            }
        );
        assert_eq!(assess_product(&p, 72, t(OBSERVED)).0, AvStatus::Current);
    }

    #[test]
    fn defender_signatures_nine_days_old_is_stale() {
        let p = parse_defender_status(&fixture_text("defender-stale-9-days.json"), t(OBSERVED))
            .value
            .unwrap();
        assert_eq!(p.signatures_built_at, Some(t("2026-11-14T08:31:10Z")));
        assert_eq!(p.signatures_up_to_date, Some(false));
        assert_eq!(
            assess_product(&p, 72, t(OBSERVED)),
            (
                AvStatus::Stale,
                "signatures are 217 h old (limit 72 h)".into()
            )
        );
    }

    #[test]
    fn defender_realtime_off_is_disabled() {
        let p = parse_defender_status(&fixture_text("defender-realtime-off.json"), t(OBSERVED))
            .value
            .unwrap();
        assert_eq!(p.realtime_protection, Some(false));
        assert_eq!(
            assess_product(&p, 72, t(OBSERVED)),
            (AvStatus::Disabled, "real-time protection is off".into())
        );
    }

    #[test]
    fn defender_passive_mode_and_powershell7_dates() {
        let p = parse_defender_status(&fixture_text("defender-passive-ps7.json"), t(OBSERVED))
            .value
            .unwrap();
        assert_eq!(p.enabled, Some(false));
        assert_eq!(p.signatures_built_at, Some(t("2026-11-23T05:40:02Z")));
        assert_eq!(
            assess_product(&p, 72, t(OBSERVED)),
            (
                AvStatus::Disabled,
                "turned off (running mode Passive Mode)".into()
            )
        );
    }

    #[test]
    fn powershell_date_forms() {
        assert_eq!(
            parse_powershell_date(&json!("/Date(1795438924000)/")),
            Some(t("2026-11-23T13:02:04Z"))
        );
        assert_eq!(
            parse_powershell_date(&json!("/Date(1795438924000+0100)/")),
            Some(t("2026-11-23T13:02:04Z"))
        );
        assert_eq!(
            parse_powershell_date(&json!("2026-11-23T13:02:04.1234567+01:00")),
            Some(t("2026-11-23T12:02:04.1234567Z"))
        );
        assert_eq!(
            parse_powershell_date(
                &json!({"value": "/Date(0)/", "DateTime": "Thursday, 1 January 1970"})
            ),
            Some(t("1970-01-01T00:00:00Z"))
        );
        assert_eq!(parse_powershell_date(&json!("23/11/2026")), None);
        assert_eq!(parse_powershell_date(&json!(12)), None);
    }

    #[test]
    fn defender_malformed_inputs() {
        let now = t(OBSERVED);
        assert!(
            parse_defender_status(&fixture_text("defender-malformed.json"), now)
                .value
                .is_none()
        );
        assert_eq!(
            parse_defender_status("[]", now),
            Parsed::fail("Defender status is not a JSON object")
        );
        assert_eq!(
            parse_defender_status(r#"{"Name": "x"}"#, now),
            Parsed::fail("Defender status has none of the expected fields")
        );
        let p = parse_defender_status(
            r#"{"AMServiceEnabled": true, "AntivirusSignatureLastUpdated": "soon", "AntivirusSignatureAge": 65535}"#,
            now,
        );
        assert_eq!(
            p.warnings,
            vec!["unreadable AntivirusSignatureLastUpdated \"soon\""]
        );
        let p = p.value.unwrap();
        assert_eq!(p.signatures_built_at, None);
        assert_eq!(
            assess_product(&p, 72, now),
            (
                AvStatus::Unknown,
                "signature build time unknown (signatures never updated)".into()
            )
        );
    }

    /// Found by fuzzing (`agent/tests/fuzz.rs`): an age of 100,000,000 days put the build time
    /// before any date chrono can hold, and the subtraction panicked.
    #[test]
    fn defender_signature_age_beyond_the_calendar() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let p = parse_defender_status(
            r#"{"AMServiceEnabled": true, "AntivirusSignatureAge": 100000000}"#,
            now,
        );
        let p = p.value.unwrap();
        assert_eq!(p.signatures_built_at, None);
        assert_eq!(assess_product(&p, 72, now).0, AvStatus::Unknown);
    }

    // --- Security Center ---

    #[test]
    fn product_state_bits() {
        assert_eq!(
            decode_product_state(397_568), // 0x061100: Defender, on, up to date
            ProductState {
                enabled: Some(true),
                state_name: "on",
                signatures_up_to_date: Some(true)
            }
        );
        assert_eq!(
            decode_product_state(397_584), // 0x061110: on, out of date
            ProductState {
                enabled: Some(true),
                state_name: "on",
                signatures_up_to_date: Some(false)
            }
        );
        assert_eq!(decode_product_state(393_472).enabled, Some(false)); // 0x060100 off
        assert_eq!(decode_product_state(0x42000).state_name, "snoozed");
        assert_eq!(decode_product_state(0x43000).state_name, "expired");
        assert_eq!(
            decode_product_state(0x4F0F0),
            ProductState {
                enabled: None,
                state_name: "unrecognised",
                signatures_up_to_date: None
            }
        );
    }

    #[test]
    fn security_center_third_party_and_defender() {
        let parsed =
            parse_security_center(&fixture_text("securitycenter2-sophos-and-defender.json"));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        let products = parsed.value.unwrap();
        let names: Vec<&str> = products.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Windows Defender", "Sophos Anti-Virus"]);
        assert_eq!(products[0].enabled, Some(false));
        assert_eq!(products[1].enabled, Some(true));
        assert_eq!(products[1].signatures_up_to_date, Some(true));
        let a = normalise(&products, 72, t(OBSERVED), "");
        assert_eq!(a.status, AvStatus::Current);
        assert_eq!(
            a.per_product,
            vec![
                (AvStatus::Disabled, "turned off".into()),
                (
                    AvStatus::Current,
                    "the product reports its signatures up to date".into()
                )
            ]
        );
        // With Defender's own report present, Security Center's copy of it is dropped.
        let defender =
            parse_defender_status(&fixture_text("defender-passive-ps7.json"), t(OBSERVED))
                .value
                .unwrap();
        let merged = windows_products(Some(defender), products);
        let names: Vec<&str> = merged.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Microsoft Defender Antivirus", "Sophos Anti-Virus"]);
    }

    #[test]
    fn security_center_single_object_out_of_date() {
        let products =
            parse_security_center(&fixture_text("securitycenter2-eset-out-of-date.json"))
                .value
                .unwrap();
        assert_eq!(products.len(), 1);
        assert_eq!(
            assess_product(&products[0], 72, t(OBSERVED)),
            (
                AvStatus::Stale,
                "the product reports its signatures out of date".into()
            )
        );
    }

    #[test]
    fn security_center_malformed() {
        assert!(parse_security_center("not json").value.is_none());
        assert_eq!(parse_security_center("null").value, Some(vec![]));
        let p = parse_security_center(&fixture_text("securitycenter2-malformed.json"));
        assert_eq!(p.value.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            p.warnings,
            vec![
                "SecurityCenter2 record 0 has no displayName",
                "SecurityCenter2 record \"Odd AV\" has no readable productState"
            ]
        );
        assert_eq!(
            p.value.unwrap()[0].notes,
            vec!["productState 0x0FF0F0 not understood"]
        );
    }

    // --- XProtect ---

    #[test]
    fn xprotect_plist() {
        let parsed = parse_xprotect_plist(&fixture("xprotect-Info.plist"));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        let info = parsed.value.unwrap();
        assert_eq!(
            info,
            XProtectInfo {
                version: "5272".into(),
                bundle_version: Some("5272".into())
            }
        );
        let p = xprotect_product(&info, Some(t("2026-11-20T10:00:00Z")));
        assert_eq!(p.signature_version.as_deref(), Some("5272"));
        assert_eq!(assess_product(&p, 72, t(OBSERVED)).0, AvStatus::Current);
        let p = xprotect_product(&info, None);
        assert_eq!(
            assess_product(&p, 72, t(OBSERVED)),
            (
                AvStatus::Unknown,
                "signature build time unknown (XProtect install time unknown)".into()
            )
        );
    }

    #[test]
    fn xprotect_malformed() {
        assert_eq!(
            parse_xprotect_plist(&fixture("xprotect-malformed.plist")),
            Parsed::fail("XProtect Info.plist has no CFBundleShortVersionString")
        );
        assert_eq!(
            parse_xprotect_plist(b"bplist00\xd1\x01\x02"),
            Parsed::fail("XProtect Info.plist is a binary plist; convert it to XML first")
        );
        assert_eq!(
            parse_xprotect_plist(b"\xff\xfe<plist>"),
            Parsed::fail("XProtect Info.plist is not UTF-8")
        );
    }
}
