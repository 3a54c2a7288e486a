//! The JSON API under `/api/v1`: devices, events, fleet, software, policy and incidents, each through the asker's `Desk`.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::desk::{Desk, DeskError};
use crate::store::{Category, EventQuery, IncidentQuery, IncidentStatus};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// A JSON error with an HTTP status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<DeskError> for ApiError {
    fn from(e: DeskError) -> Self {
        let status = match &e {
            DeskError::Forbidden(_) => StatusCode::FORBIDDEN,
            DeskError::NotFound(_) => StatusCode::NOT_FOUND,
            DeskError::Invalid(_) => StatusCode::BAD_REQUEST,
            DeskError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;
type D = Extension<Arc<Desk>>;

fn bad(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, m.into())
}

/// `limit` and `cursor` for the listings that page by a key (devices, software, policy
/// history), the same scheme as the events: follow `next` as `cursor` until it is null.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

type Params<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// For the calls that take no query parameters: one given is a mistake worth hearing about
/// (`?devce=x` would otherwise quietly answer for everything).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

fn bad_cursor(c: &str) -> ApiError {
    bad(format!(
        "cursor {c:?} is not one this listing handed out: pass `next` from the previous page unchanged"
    ))
}

/// A key-position cursor: `tag` then the hex of the last key shown (hex, so it needs no URL
/// escaping whatever a hostname or product name holds).
fn key_cursor(tag: char, key: &str) -> String {
    format!("{tag}{}", hex::encode(key))
}

fn parse_key_cursor(tag: char, c: &str) -> Result<String, ApiError> {
    c.strip_prefix(tag)
        .filter(|h| !h.is_empty())
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad_cursor(c))
}

/// One page of `items` (already in listing order) after the cursor's key, and the next cursor.
fn page_by_key<T>(
    items: Vec<T>,
    tag: char,
    p: PageParams,
    default_limit: usize,
    key: impl Fn(&T) -> String,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = p.limit.unwrap_or(default_limit).clamp(1, MAX_LIMIT);
    let after = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(parse_key_cursor(tag, c)?),
        None => None,
    };
    let mut rest = items
        .into_iter()
        .skip_while(|i| after.as_ref().is_some_and(|a| key(i) <= *a))
        .peekable();
    let page: Vec<T> = rest.by_ref().take(limit).collect();
    let next = if rest.peek().is_some() {
        page.last().map(|i| key_cursor(tag, &key(i)))
    } else {
        None
    };
    Ok((page, next))
}

/// How many devices and products a page holds unless `limit` says otherwise: a whole school
/// in one request, a trust in a few.
const DEFAULT_LIST_LIMIT: usize = 500;

pub async fn devices(Extension(desk): D, params: Params<PageParams>) -> ApiResult {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let mut all = desk.all_devices()?;
    // Enrolment order, as always; the id breaks ties so the key is unique.
    let key = |d: &crate::store::Device| {
        format!("{:020}/{}", d.enrolled_at.timestamp_micros().max(0), d.id)
    };
    all.sort_by_cached_key(key);
    let (devices, next) = page_by_key(all, 'd', p, DEFAULT_LIST_LIMIT, key)?;
    Ok(Json(json!({ "devices": devices, "next": next })))
}

/// Fleet counts per state facet: how many devices report each status (antivirus current, stale, ...).
pub async fn fleet(Extension(desk): D, params: Params<NoParams>) -> ApiResult {
    params.map_err(|e| bad(e.body_text()))?;
    Ok(Json(desk.fleet_counts()?))
}

/// Installations per product across the fleet, for licence reconciliation.
pub async fn software(Extension(desk): D, params: Params<PageParams>) -> ApiResult {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let key = |(source, name, _): &(String, String, usize)| format!("{source}\0{name}");
    let mut all = desk.software()?;
    all.sort_by_cached_key(key);
    let (page, next) = page_by_key(all, 'p', p, DEFAULT_LIST_LIMIT, key)?;
    let products: Vec<Value> = page
        .into_iter()
        .map(|(source, name, devices)| json!({"source": source, "name": name, "devices": devices}))
        .collect();
    Ok(Json(json!({ "products": products, "next": next })))
}

/// The event filters shared by the API and the events page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    pub device: Option<String>,
    pub kind: Option<String>,
    pub user: Option<String>,
    pub severity: Option<String>,
    pub audience: Option<String>,
    /// When it happened by the laptop's clock (`occurred_at`).
    pub since: Option<String>,
    pub until: Option<String>,
    /// When the collector received it, by the collector's clock (`received_at`): right even
    /// when a laptop's clock is wrong.
    pub received_since: Option<String>,
    pub received_until: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// A filter of the events or incidents listing that cannot be used; the message (a 400's
/// body, or the page's notice) names the parameter and what it takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("`{name}` is not a time: use RFC 3339 (2026-11-30T09:00:00Z) or a date (2026-11-30)")]
    NotATime { name: &'static str },
    #[error("category {0:?} is not safeguarding or technical")]
    Category(String),
    #[error("status {0:?} is not one of unresolved, all, open, acknowledged, actioned, closed")]
    Status(String),
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        bad(e.to_string())
    }
}

fn time_param(name: &'static str, v: Option<String>) -> Result<Option<DateTime<Utc>>, ParamError> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(&v) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    // The page's date and datetime-local inputs send these.
    for fmt in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&v, fmt) {
            return Ok(Some(t.and_utc()));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d") {
        return Ok(Some(
            d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc(),
        ));
    }
    Err(ParamError::NotATime { name })
}

impl EventsParams {
    pub fn query(self) -> Result<EventQuery, ParamError> {
        let some = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(EventQuery {
            since: time_param("since", self.since)?,
            until: time_param("until", self.until)?,
            received_since: time_param("received_since", self.received_since)?,
            received_until: time_param("received_until", self.received_until)?,
            device: some(self.device),
            kind: some(self.kind),
            user: some(self.user),
            severity: some(self.severity),
            audience: some(self.audience),
            exclude_audience: None,
            limit: self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
            cursor: some(self.cursor),
        })
    }
}

pub async fn events(
    Extension(desk): D,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let page = desk.events(p.query()?).await?;
    Ok(Json(serde_json::to_value(page).expect("pages serialise")))
}

pub async fn get_policy(Extension(desk): D, params: Params<NoParams>) -> ApiResult {
    params.map_err(|e| bad(e.body_text()))?;
    Ok(Json(
        serde_json::to_value(desk.policy()?.as_ref()).expect("policies serialise"),
    ))
}

/// Policy versions newest first; each can be as large as a whole policy, so fewer a page.
const DEFAULT_HISTORY_LIMIT: usize = 20;
const MAX_HISTORY_LIMIT: usize = 100;

pub async fn policy_history(Extension(desk): D, params: Params<PageParams>) -> ApiResult {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let before = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.strip_prefix('v')
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad_cursor(c))?,
        ),
        None => None,
    };
    let limit = p
        .limit
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .clamp(1, MAX_HISTORY_LIMIT);
    let (versions, next) = desk.policy_history_page(before, limit).await?;
    Ok(Json(
        json!({ "versions": versions, "next": next.map(|v| format!("v{v}")) }),
    ))
}

/// `PUT /policy`'s body, parsed as strictly as the policy inside it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    policy: Value,
}

pub async fn put_policy(Extension(desk): D, body: Bytes) -> ApiResult {
    let PolicyBody { policy: doc } = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the body must be {{\"policy\": {{...}}}} and nothing else: {e}"
        ))
    })?;
    let pv = desk.set_policy(doc).await?;
    Ok(Json(serde_json::to_value(pv).expect("policies serialise")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentParams {
    pub category: Option<String>,
    pub status: Option<String>,
    pub device: Option<String>,
    pub user: Option<String>,
    pub before: Option<u64>,
    pub limit: Option<usize>,
}

impl IncidentParams {
    pub fn query(self) -> Result<IncidentQuery, ParamError> {
        let category = match self.category.as_deref().unwrap_or("") {
            "" => None,
            "safeguarding" => Some(Category::Safeguarding),
            "technical" => Some(Category::Technical),
            other => return Err(ParamError::Category(other.to_string())),
        };
        let (status, open_only) = match self.status.as_deref().unwrap_or("") {
            "" | "unresolved" => (None, true),
            "all" => (None, false),
            "open" => (Some(IncidentStatus::Open), false),
            "acknowledged" => (Some(IncidentStatus::Acknowledged), false),
            "actioned" => (Some(IncidentStatus::Actioned), false),
            "closed" => (Some(IncidentStatus::Closed), false),
            other => return Err(ParamError::Status(other.to_string())),
        };
        Ok(IncidentQuery {
            category,
            status,
            open_only,
            device: self.device.filter(|s| !s.is_empty()),
            user: self.user.filter(|s| !s.is_empty()),
            before: self.before,
            limit: self.limit.unwrap_or(50).clamp(1, 500),
        })
    }
}

pub async fn incidents(
    Extension(desk): D,
    params: Result<Query<IncidentParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let (incidents, next) = desk.incidents(p.query()?).await?;
    Ok(Json(json!({"incidents": incidents, "next": next})))
}

pub async fn incident(
    Extension(desk): D,
    Path(id): Path<u64>,
    params: Params<NoParams>,
) -> ApiResult {
    params.map_err(|e| bad(e.body_text()))?;
    let (incident, record) = desk.incident(id).await?;
    Ok(Json(json!({"incident": incident, "record": record})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    pub action: String,
    #[serde(default)]
    pub text: String,
}

pub async fn add_entry(Extension(desk): D, Path(id): Path<u64>, body: Bytes) -> ApiResult {
    let b: EntryBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the body must be {{\"action\": ..., \"text\": ...}}: {e}"
        ))
    })?;
    let entry = desk.add_incident_entry(id, &b.action, &b.text).await?;
    Ok(Json(json!({"entry": entry})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub before: Option<u64>,
    pub limit: Option<usize>,
}

/// The audit log, newest first; follow `next` as `before`.
pub async fn audit(
    Extension(desk): D,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(p) = params.map_err(|e| bad(e.body_text()))?;
    let page = desk
        .audit_log(
            p.before,
            p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        )
        .await?;
    Ok(Json(serde_json::to_value(page).expect("pages serialise")))
}

/// Digests and their delivery state, newest first (a DSL's token sees only theirs).
pub async fn digests(Extension(desk): D, params: Params<NoParams>) -> ApiResult {
    params.map_err(|e| bad(e.body_text()))?;
    let list: Vec<Value> = desk
        .digests(200)
        .await?
        .into_iter()
        .map(|d| {
            json!({"id": d.id, "recipient": d.recipient, "channel": d.channel, "kind": d.kind,
                   "created_at": d.created_at, "subject": d.subject, "events": d.events,
                   "status": d.status, "attempts": d.attempts, "last_error": d.last_error,
                   "next_attempt": d.next_attempt, "sent_at": d.sent_at})
        })
        .collect();
    Ok(Json(json!({ "digests": list })))
}
