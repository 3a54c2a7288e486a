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

pub async fn devices(Extension(desk): D) -> ApiResult {
    Ok(Json(json!({ "devices": desk.all_devices()? })))
}

/// Fleet counts per state facet: how many devices report each status (antivirus current, stale, ...).
pub async fn fleet(Extension(desk): D) -> ApiResult {
    Ok(Json(desk.fleet_counts()?))
}

/// Installations per product across the fleet, for licence reconciliation.
pub async fn software(Extension(desk): D) -> ApiResult {
    let products: Vec<Value> = desk
        .software()?
        .into_iter()
        .map(|(source, name, devices)| json!({"source": source, "name": name, "devices": devices}))
        .collect();
    Ok(Json(json!({ "products": products })))
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
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

fn time_param(name: &str, v: Option<String>) -> Result<Option<DateTime<Utc>>, String> {
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
    Err(format!(
        "`{name}` is not a time: use RFC 3339 (2026-11-30T09:00:00Z) or a date (2026-11-30)"
    ))
}

impl EventsParams {
    pub fn query(self) -> Result<EventQuery, String> {
        let some = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(EventQuery {
            since: time_param("since", self.since)?,
            until: time_param("until", self.until)?,
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
    let page = desk.events(p.query().map_err(bad)?).await?;
    Ok(Json(serde_json::to_value(page).expect("pages serialise")))
}

pub async fn get_policy(Extension(desk): D) -> ApiResult {
    Ok(Json(
        serde_json::to_value(desk.policy()?.as_ref()).expect("policies serialise"),
    ))
}

pub async fn policy_history(Extension(desk): D) -> ApiResult {
    Ok(Json(json!({ "versions": desk.policy_history().await? })))
}

pub async fn put_policy(Extension(desk): D, body: Bytes) -> ApiResult {
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let Some(doc) = v.get("policy").cloned() else {
        return Err(bad("the body must be {\"policy\": {...}}"));
    };
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
    pub fn query(self) -> Result<IncidentQuery, String> {
        let category = match self.category.as_deref().unwrap_or("") {
            "" => None,
            "safeguarding" => Some(Category::Safeguarding),
            "technical" => Some(Category::Technical),
            other => {
                return Err(format!(
                    "category {other:?} is not safeguarding or technical"
                ));
            }
        };
        let (status, open_only) = match self.status.as_deref().unwrap_or("") {
            "" | "unresolved" => (None, true),
            "all" => (None, false),
            "open" => (Some(IncidentStatus::Open), false),
            "acknowledged" => (Some(IncidentStatus::Acknowledged), false),
            "actioned" => (Some(IncidentStatus::Actioned), false),
            "closed" => (Some(IncidentStatus::Closed), false),
            other => {
                return Err(format!(
                    "status {other:?} is not one of unresolved, all, open, acknowledged, actioned, closed"
                ));
            }
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
    let (incidents, next) = desk.incidents(p.query().map_err(bad)?).await?;
    Ok(Json(json!({"incidents": incidents, "next": next})))
}

pub async fn incident(Extension(desk): D, Path(id): Path<u64>) -> ApiResult {
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
pub async fn digests(Extension(desk): D) -> ApiResult {
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
