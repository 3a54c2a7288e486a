//! The dashboard's pages: server-rendered HTML from askama templates, each handler asking the signed-in person's `Desk`.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::Utc;
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value;

use super::api::{EventsParams, IncidentParams};
use super::guard::{SESSION_COOKIE, SIGNIN_COOKIE};
use super::policy_form::{self, Fields};
use super::views::{
    self, Badge, Chrome, DeviceRow, EntryRow, EventRow, Fact, IncidentRow, badge, render,
};
use super::{AppState, ClientAddr};
use crate::accounts::{self, SignInError};
use crate::auth::{Permission, Role};
use crate::datadir::random_secret;
use crate::desk::{Desk, DeskError, DeviceFilter};
use crate::store::{Category, EventQuery, Incident, IncidentQuery};
use crate::timefmt;

type D = Extension<Arc<Desk>>;

/// A desk error as a page.
pub struct PageError(pub(super) DeskError);

impl From<DeskError> for PageError {
    fn from(e: DeskError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self.0 {
            DeskError::Forbidden(role) => views::error_page(
                StatusCode::FORBIDDEN,
                "Not part of your role",
                &format!(
                    "Your role ({role}) does not include this. Ask the network manager if you need it."
                ),
            ),
            DeskError::NotFound(m) => views::error_page(StatusCode::NOT_FOUND, "Not found", &m),
            DeskError::Invalid(m) => {
                views::error_page(StatusCode::BAD_REQUEST, "That cannot be done", &m)
            }
            DeskError::Store(e) => {
                tracing::warn!(error = %e, "A page could not read the store");
                views::error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The collector cannot read its store",
                    "Try again in a minute; if it persists, the network manager should check the collector's log.",
                )
            }
        }
    }
}

pub(super) type PageResult = Result<Response, PageError>;

pub(super) fn chrome(desk: &Desk, st: &AppState, title: &str, section: &str) -> Chrome {
    let mut c = Chrome::new(desk, title, section);
    c.tz = st.options.time_zone.name().to_string();
    c
}

fn tz(st: &AppState) -> Tz {
    st.options.time_zone
}

pub async fn not_found() -> Response {
    views::error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no page at this address.",
    )
}

pub async fn css() -> Response {
    static_asset(
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    )
}

pub async fn js() -> Response {
    static_asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/app.js"),
    )
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Each role's start page.
pub async fn home(Extension(desk): D) -> Response {
    let to = if desk.may(Permission::ViewFleet) {
        "/fleet"
    } else if desk.may(Permission::Safeguarding) {
        "/incidents"
    } else {
        "/report"
    };
    Redirect::to(to).into_response()
}

// ---- Sign-in and account ----

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage {
    csrf: String,
    next: String,
    username: String,
    error: Option<String>,
}

/// Only a path on this site may be a redirect target.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") {
        next
    } else {
        "/"
    }
}

fn cookie(name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax{age}"
    ))
    .expect("cookie values are URL-safe base64")
}

fn signin_form(status: StatusCode, next: &str, username: &str, error: Option<String>) -> Response {
    let csrf = random_secret("");
    let mut res = render(
        status,
        &SigninPage {
            csrf: csrf.clone(),
            next: safe_next(next).to_string(),
            username: username.to_string(),
            error,
        },
    );
    res.headers_mut()
        .append(header::SET_COOKIE, cookie(SIGNIN_COOKIE, &csrf, Some(3600)));
    res
}

#[derive(Deserialize, Default)]
pub struct NextParam {
    #[serde(default)]
    next: String,
}

pub async fn signin_page(desk: Option<D>, Query(p): Query<NextParam>) -> Response {
    if desk.is_some() {
        return Redirect::to(safe_next(&p.next)).into_response();
    }
    signin_form(StatusCode::OK, &p.next, "", None)
}

#[derive(Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

pub async fn signin(
    State(st): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    Form(f): Form<SigninForm>,
) -> Response {
    let from = client.map(|Extension(c)| c.0);
    let store = st.collector.store.clone();
    let (username, password) = (f.username.trim().to_string(), f.password);
    let c = st.collector.clone();
    let user = username.clone();
    let result = tokio::task::spawn_blocking(move || {
        accounts::sign_in(store.as_ref(), &c.sign_in_limiter, &user, &password, from)
    })
    .await
    .unwrap_or_else(|e| {
        Err(SignInError::Store(crate::store::StoreError::Engine(
            e.to_string(),
        )))
    });
    match result {
        Ok(session) => {
            let to = if session.must_change_password {
                "/account/password"
            } else {
                safe_next(&f.next)
            };
            let mut res = Redirect::to(to).into_response();
            let h = res.headers_mut();
            h.append(
                header::SET_COOKIE,
                cookie(
                    SESSION_COOKIE,
                    &session.cookie,
                    Some(accounts::SESSION_LIFETIME.num_seconds()),
                ),
            );
            h.append(header::SET_COOKIE, cookie(SIGNIN_COOKIE, "", Some(0)));
            res
        }
        Err(e @ SignInError::Wrong) => signin_form(
            StatusCode::UNAUTHORIZED,
            &f.next,
            &username,
            Some(e.to_string()),
        ),
        Err(e @ SignInError::Slowed(_)) => signin_form(
            StatusCode::TOO_MANY_REQUESTS,
            &f.next,
            &username,
            Some(e.to_string()),
        ),
        Err(SignInError::Store(e)) => {
            tracing::warn!(error = %e, "Sign-in could not read the store");
            signin_form(
                StatusCode::SERVICE_UNAVAILABLE,
                &f.next,
                &username,
                Some("The collector cannot read its store just now. Try again in a minute.".into()),
            )
        }
    }
}

pub async fn signout(Extension(desk): D) -> Response {
    if let Err(e) = desk.sign_out().await {
        tracing::warn!(error = %e, "Sign-out could not end the session in the store");
    }
    let mut res = Redirect::to("/signin").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, cookie(SESSION_COOKIE, "", Some(0)));
    res
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    chrome: Chrome,
    must_change: bool,
    error: Option<String>,
    done: bool,
}

pub async fn password_page(State(st): State<AppState>, Extension(desk): D) -> Response {
    render(
        StatusCode::OK,
        &PasswordPage {
            chrome: chrome(&desk, &st, "Change your password", ""),
            must_change: desk.actor.must_change_password,
            error: None,
            done: false,
        },
    )
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
}

pub async fn change_password(
    State(st): State<AppState>,
    Extension(desk): D,
    Form(f): Form<PasswordForm>,
) -> Response {
    let result = if f.new != f.confirm {
        Err(DeskError::Invalid("The two new passwords differ.".into()))
    } else {
        desk.change_own_password(f.current, f.new).await
    };
    match result {
        Ok(()) if desk.actor.must_change_password => Redirect::to("/").into_response(),
        Ok(()) => render(
            StatusCode::OK,
            &PasswordPage {
                chrome: chrome(&desk, &st, "Change your password", ""),
                must_change: false,
                error: None,
                done: true,
            },
        ),
        Err(DeskError::Invalid(m)) => render(
            StatusCode::BAD_REQUEST,
            &PasswordPage {
                chrome: chrome(&desk, &st, "Change your password", ""),
                must_change: desk.actor.must_change_password,
                error: Some(m),
                done: false,
            },
        ),
        Err(e) => PageError(e).into_response(),
    }
}

// ---- Fleet and devices ----

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    chrome: Chrome,
    fleet: crate::desk::FleetView,
    attention: Vec<IncidentRow>,
    silent: Vec<DeviceRow>,
    lock_class: &'static str,
    av_class: &'static str,
    software_class: &'static str,
}

fn share_class(n: usize, of: usize) -> &'static str {
    match (n, of) {
        (_, 0) => "neutral",
        (n, of) if n == of => "ok",
        (n, of) if n * 10 >= of * 9 => "warn",
        _ => "bad",
    }
}

fn hostname(desk: &Desk, id: &str) -> String {
    desk.device_hostname(id)
}

pub async fn fleet(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    let f = desk.fleet(tz(&st)).await?;
    let now = Utc::now();
    let tz = tz(&st);
    let attention = f
        .attention
        .iter()
        .map(|i| IncidentRow::new(i, hostname(&desk, &i.device_id), tz))
        .collect();
    let silent = f
        .silent
        .iter()
        .map(|d| DeviceRow::new(d, false, tz, now))
        .collect();
    Ok(render(
        StatusCode::OK,
        &FleetPage {
            chrome: chrome(&desk, &st, "Overview", "/fleet"),
            lock_class: share_class(f.screen_lock_enforced, f.devices),
            av_class: share_class(f.antivirus_current, f.devices),
            software_class: share_class(f.no_unapproved_software, f.devices),
            fleet: f,
            attention,
            silent,
        },
    ))
}

#[derive(Deserialize, Default)]
pub struct DevicesParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    after: Option<String>,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    chrome: Chrome,
    q: String,
    status: String,
    statuses: Vec<(&'static str, &'static str)>,
    rows: Vec<DeviceRow>,
    total: usize,
    total_enrolled: usize,
    next: Option<String>,
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

pub async fn devices(
    State(st): State<AppState>,
    Extension(desk): D,
    Query(p): Query<DevicesParams>,
) -> PageResult {
    let list = desk.devices(&DeviceFilter {
        search: p.q.clone(),
        status: p.status.clone(),
        after: p.after.clone(),
        limit: 50,
    })?;
    let total_enrolled = if list.total == 0 {
        desk.devices(&DeviceFilter {
            limit: 1,
            ..Default::default()
        })?
        .total
    } else {
        list.total
    };
    let now = Utc::now();
    let rows = list
        .devices
        .iter()
        .map(|d| DeviceRow::new(d, desk.is_online(d), tz(&st), now))
        .collect();
    let next = list.next.map(|after| {
        format!(
            "/devices?{}",
            query_string(&[("q", &p.q), ("status", &p.status), ("after", &after)])
        )
    });
    Ok(render(
        StatusCode::OK,
        &DevicesPage {
            chrome: chrome(&desk, &st, "Devices", "/devices"),
            q: p.q,
            status: p.status,
            statuses: vec![
                ("", "all"),
                ("online", "online"),
                ("offline", "offline"),
                ("attention", "needs attention"),
                ("revoked", "revoked"),
            ],
            rows,
            total: list.total,
            total_enrolled,
            next,
        },
    ))
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    chrome: Chrome,
    row: DeviceRow,
    facts: Vec<Fact>,
    antivirus_detail: String,
    lock_detail: String,
    /// The laptop's clock as the collector judges it (`crate::clock`).
    clock: views::Badge,
    clock_detail: String,
    can_list: bool,
    can_revoke: bool,
    revoked: bool,
    incidents: Vec<IncidentRow>,
    events: Vec<EventRow>,
    next: Option<String>,
    message: Option<String>,
    holdbox: super::holds::HoldBox,
}

#[derive(Deserialize, Default)]
pub struct CursorParam {
    cursor: Option<String>,
}

async fn device_page(
    st: &AppState,
    desk: &Desk,
    id: &str,
    cursor: Option<String>,
    message: Option<String>,
) -> PageResult {
    let d = desk.device(id).await?;
    let tz = tz(st);
    let now = Utc::now();
    let events = desk
        .events(EventQuery {
            device: Some(d.id.clone()),
            limit: 50,
            cursor,
            ..Default::default()
        })
        .await?;
    let incidents = desk
        .incidents(IncidentQuery {
            device: Some(d.id.clone()),
            limit: 20,
            ..Default::default()
        })
        .await
        .map(|(i, _)| i)
        .unwrap_or_default();
    let detail = |facet: &str, key: &str| {
        d.state
            .get(facet)
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .map(|s| format!("({})", s.replace('_', " ")))
            .unwrap_or_default()
    };
    let next = events
        .next
        .map(|c| format!("/devices/{}?{}", d.id, query_string(&[("cursor", &c)])));
    Ok(render(
        StatusCode::OK,
        &DevicePage {
            chrome: chrome(desk, st, &d.hostname, "/devices"),
            facts: views::device_facts(&d, tz, now),
            antivirus_detail: detail("antivirus", "reason"),
            lock_detail: detail("screen_lock", "reason"),
            clock: views::badge(
                d.state
                    .get("clock")
                    .and_then(|c| c.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("not_reported"),
            ),
            clock_detail: crate::clock::describe(d.state.get("clock")),
            can_list: desk.may(Permission::ViewDevices),
            can_revoke: desk.may(Permission::RevokeDevice),
            revoked: d.revoked_at.is_some(),
            incidents: incidents
                .iter()
                .map(|i| IncidentRow::new(i, d.hostname.clone(), tz))
                .collect(),
            events: events.events.iter().map(|e| EventRow::new(e, tz)).collect(),
            row: DeviceRow::new(&d, desk.is_online(&d), tz, now),
            next,
            message,
            holdbox: super::holds::HoldBox::load(
                desk,
                crate::store::HoldTarget::Device(d.id.clone()),
                tz,
            )
            .await,
        },
    ))
}

pub async fn device(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(id): Path<String>,
    Query(p): Query<CursorParam>,
) -> PageResult {
    device_page(&st, &desk, &id, p.cursor, None).await
}

pub async fn revoke(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(id): Path<String>,
) -> PageResult {
    let d = desk.revoke(&id).await?;
    device_page(
        &st,
        &desk,
        &id,
        None,
        Some(format!(
            "{} is revoked: it cannot connect again until it is re-enrolled.",
            d.hostname
        )),
    )
    .await
}

// ---- Events ----

#[derive(Default)]
struct EventFilters {
    kind: String,
    device: String,
    user: String,
    severity: String,
    audience: String,
    since: String,
    until: String,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    chrome: Chrome,
    f: EventFilters,
    severities: Vec<&'static str>,
    audience_choice: bool,
    pupil_links: bool,
    rows: Vec<EventRow>,
    next: Option<String>,
    error: Option<String>,
}

pub async fn events(
    State(st): State<AppState>,
    Extension(desk): D,
    Query(p): Query<Vec<(String, String)>>,
) -> PageResult {
    let get = |k: &str| {
        p.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let f = EventFilters {
        kind: get("kind"),
        device: get("device"),
        user: get("user"),
        severity: get("severity"),
        audience: get("audience"),
        since: get("since"),
        until: get("until"),
    };
    let cursor = get("cursor");
    let params = EventsParams {
        device: Some(f.device.clone()),
        kind: Some(f.kind.clone()),
        user: Some(f.user.clone()),
        severity: Some(f.severity.clone()),
        audience: Some(f.audience.clone()),
        since: Some(f.since.clone()),
        // "Until 30 Nov" means to the end of that day.
        until: Some(f.until.clone()).filter(|u| !u.is_empty()).map(|u| {
            chrono::NaiveDate::parse_from_str(&u, "%Y-%m-%d")
                .map(|d| (d + chrono::Duration::days(1)).to_string())
                .unwrap_or(u)
        }),
        limit: Some(100),
        cursor: Some(cursor),
        ..Default::default()
    };
    let (rows, next, error) = match params.query() {
        Ok(q) => {
            let page = desk.events(q).await?;
            let next = page.next.map(|c| {
                format!(
                    "/events?{}",
                    query_string(&[
                        ("kind", &f.kind),
                        ("device", &f.device),
                        ("user", &f.user),
                        ("severity", &f.severity),
                        ("audience", &f.audience),
                        ("since", &f.since),
                        ("until", &f.until),
                        ("cursor", &c),
                    ])
                )
            });
            let tz = tz(&st);
            (
                page.events.iter().map(|e| EventRow::new(e, tz)).collect(),
                next,
                None,
            )
        }
        Err(e) => (Vec::new(), None, Some(e)),
    };
    Ok(render(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        &EventsPage {
            chrome: chrome(&desk, &st, "Events", "/events"),
            audience_choice: desk.may(Permission::ViewTechnicalEvents)
                && desk.may(Permission::Safeguarding),
            pupil_links: desk.may(Permission::Safeguarding),
            severities: vec!["", "info", "notice", "warning", "high", "critical"],
            f,
            rows,
            next,
            error,
        },
    ))
}

// ---- Incidents ----

#[derive(Template)]
#[template(path = "incidents.html")]
struct IncidentsPage {
    chrome: Chrome,
    categories: Vec<&'static str>,
    category: String,
    status: String,
    statuses: Vec<(&'static str, &'static str)>,
    rows: Vec<IncidentRow>,
    next: Option<String>,
}

fn incident_rows(desk: &Desk, list: &[Incident], tz: Tz) -> Vec<IncidentRow> {
    list.iter()
        .map(|i| IncidentRow::new(i, hostname(desk, &i.device_id), tz))
        .collect()
}

pub async fn incidents(
    State(st): State<AppState>,
    Extension(desk): D,
    Query(p): Query<IncidentParams>,
) -> PageResult {
    let category = p.category.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    let q = p.query().map_err(DeskError::Invalid)?;
    let (list, next) = desk.incidents(q).await?;
    let mut categories = Vec::new();
    if desk.may(Permission::Safeguarding) {
        categories.push(Category::Safeguarding.as_str());
    }
    if desk.may(Permission::TechnicalIncidents) {
        categories.push(Category::Technical.as_str());
    }
    let next = next.map(|b| {
        format!(
            "/incidents?{}",
            query_string(&[
                ("category", &category),
                ("status", &status),
                ("before", &b.to_string())
            ])
        )
    });
    Ok(render(
        StatusCode::OK,
        &IncidentsPage {
            chrome: chrome(&desk, &st, "Incidents", "/incidents"),
            rows: incident_rows(&desk, &list, tz(&st)),
            categories,
            category,
            status,
            statuses: vec![
                ("", "not closed"),
                ("open", "open"),
                ("acknowledged", "acknowledged"),
                ("actioned", "actioned"),
                ("closed", "closed"),
                ("all", "all"),
            ],
            next,
        },
    ))
}

#[derive(Template)]
#[template(path = "incident.html")]
struct IncidentPage {
    chrome: Chrome,
    i: IncidentRow,
    kind: String,
    access: String,
    device_link: bool,
    pupil_link: bool,
    entries: Vec<EntryRow>,
    actions: Vec<(&'static str, &'static str)>,
    error: Option<String>,
    holdbox: super::holds::HoldBox,
}

async fn incident_page(
    st: &AppState,
    desk: &Desk,
    id: u64,
    status: StatusCode,
    error: Option<String>,
) -> PageResult {
    let (inc, entries) = desk.incident(id).await?;
    let tz = tz(st);
    let access = match inc.category {
        Category::Safeguarding => "DSLs and the network manager",
        Category::Technical => "The network manager and technicians",
    };
    Ok(render(
        status,
        &IncidentPage {
            chrome: chrome(desk, st, &format!("Incident {id}"), "/incidents"),
            kind: inc.kind.clone(),
            i: IncidentRow::new(&inc, hostname(desk, &inc.device_id), tz),
            access: access.into(),
            device_link: true,
            pupil_link: inc.category == Category::Safeguarding
                && desk.may(Permission::Safeguarding),
            entries: entries.iter().map(|e| EntryRow::new(e, tz)).collect(),
            actions: vec![
                ("acknowledged", "Acknowledged"),
                ("note", "Note"),
                ("action_taken", "Action taken"),
                ("closed", "Closed"),
                ("reopened", "Reopened"),
            ],
            error,
            holdbox: super::holds::HoldBox::load(desk, crate::store::HoldTarget::Incident(id), tz)
                .await,
        },
    ))
}

pub async fn incident(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(id): Path<u64>,
) -> PageResult {
    incident_page(&st, &desk, id, StatusCode::OK, None).await
}

#[derive(Deserialize)]
pub struct EntryForm {
    action: String,
    #[serde(default)]
    text: String,
}

pub async fn add_entry(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(id): Path<u64>,
    Form(f): Form<EntryForm>,
) -> PageResult {
    match desk.add_incident_entry(id, &f.action, &f.text).await {
        Ok(_) => Ok(Redirect::to(&format!("/incidents/{id}#record")).into_response()),
        Err(DeskError::Invalid(m)) => {
            incident_page(&st, &desk, id, StatusCode::BAD_REQUEST, Some(m)).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn incident_csv(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(id): Path<u64>,
) -> PageResult {
    let csv = desk.incident_csv(id, tz(&st)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"caretaker-incident-{id}.csv\""),
            ),
        ],
        csv,
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "pupil.html")]
struct PupilPage {
    chrome: Chrome,
    user: String,
    incidents: Vec<IncidentRow>,
    events: Vec<EventRow>,
}

pub async fn pupil(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(user): Path<String>,
) -> PageResult {
    let (incidents, _) = desk
        .incidents(IncidentQuery {
            category: Some(Category::Safeguarding),
            user: Some(user.clone()),
            limit: 200,
            ..Default::default()
        })
        .await?;
    let events = desk
        .events(EventQuery {
            user: Some(user.clone()),
            audience: Some(crate::rules::DSL.into()),
            limit: 200,
            ..Default::default()
        })
        .await?;
    let tz = tz(&st);
    Ok(render(
        StatusCode::OK,
        &PupilPage {
            chrome: chrome(&desk, &st, &format!("Chronology: {user}"), "/incidents"),
            incidents: incident_rows(&desk, &incidents, tz),
            events: events.events.iter().map(|e| EventRow::new(e, tz)).collect(),
            user,
        },
    ))
}

// ---- Policy ----

struct ScreenLockView {
    enabled: bool,
    idle_minutes: u64,
    inhibitor: bool,
    start: String,
    end: String,
    days: Vec<(&'static str, &'static str, bool)>,
}

struct PermissionView {
    index: usize,
    serial: String,
    user: String,
    until_text: String,
    reason: String,
    expired: bool,
}

struct RemovableView {
    enforce: bool,
    pupil_storage: String,
    staff_storage: String,
    groups: String,
    patterns: String,
    serials: String,
    scan_on_mount: bool,
    permissions: Vec<PermissionView>,
}

#[derive(Template)]
#[template(path = "policy.html")]
struct PolicyPage {
    chrome: Chrome,
    version: u64,
    changed_by: String,
    changed_at: String,
    can_edit: bool,
    message: Option<String>,
    diff: Vec<String>,
    error_section: String,
    error: String,
    sl: ScreenLockView,
    av_max_age_hours: u32,
    av_check_minutes: u64,
    sw_approved: String,
    sw_denied: String,
    sw_watch_home: bool,
    sw_rescan_minutes: u64,
    rm: RemovableView,
    modes: Vec<(&'static str, &'static str)>,
}

fn policy_page(
    st: &AppState,
    desk: &Desk,
    doc_value: &Value,
    status: StatusCode,
    message: Option<String>,
    diff: Vec<String>,
    error: Option<(&str, String)>,
) -> PageResult {
    use caretaker_proto::policy::PolicyDocument;
    let current = desk.policy()?;
    // Shape only, no validation: a refused proposal is shown as typed, to be corrected.
    let doc: PolicyDocument = serde_json::from_value(doc_value.clone())
        .or_else(|_| serde_json::from_value(current.policy.clone()))
        .unwrap_or_default();
    let tz = tz(st);
    let now = Utc::now();
    let mode = |m: caretaker_proto::policy::removable_media::StorageMode| {
        serde_json::to_value(m)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let days = [
        ("mon", "Mon"),
        ("tue", "Tue"),
        ("wed", "Wed"),
        ("thu", "Thu"),
        ("fri", "Fri"),
        ("sat", "Sat"),
        ("sun", "Sun"),
    ];
    let sh = &doc.screen_lock.school_hours;
    let (error_section, error) = error.map(|(s, e)| (s.to_string(), e)).unwrap_or_default();
    Ok(render(
        status,
        &PolicyPage {
            chrome: chrome(desk, st, "Policy", "/policy"),
            version: current.version,
            changed_by: current.changed_by.clone(),
            changed_at: timefmt::date_time(current.changed_at, tz),
            can_edit: desk.may(Permission::EditPolicy),
            message,
            diff,
            error_section,
            error,
            sl: ScreenLockView {
                enabled: doc.screen_lock.enabled,
                idle_minutes: doc.screen_lock.idle_timeout_secs.div_ceil(60),
                inhibitor: doc.screen_lock.inhibitor_excuses_lock,
                start: sh.start.clone(),
                end: sh.end.clone(),
                days: days
                    .iter()
                    .map(|(v, l)| (*v, *l, sh.days.iter().any(|d| d == v)))
                    .collect(),
            },
            av_max_age_hours: doc.antivirus.max_signature_age_hours,
            av_check_minutes: doc.antivirus.check_interval_secs.div_ceil(60),
            sw_approved: doc.software.approved.join("\n"),
            sw_denied: doc.software.denied.join("\n"),
            sw_watch_home: doc.software.watch_home_executables,
            sw_rescan_minutes: doc.software.rescan_interval_secs.div_ceil(60),
            rm: RemovableView {
                enforce: doc.removable_media.enforce,
                pupil_storage: mode(doc.removable_media.pupil_storage),
                staff_storage: mode(doc.removable_media.staff_storage),
                groups: doc.removable_media.pupils.groups.join("\n"),
                patterns: doc.removable_media.pupils.username_patterns.join("\n"),
                serials: doc.removable_media.allowed_serials.join("\n"),
                scan_on_mount: doc.removable_media.scan_on_mount,
                permissions: doc
                    .removable_media
                    .permissions
                    .iter()
                    .enumerate()
                    .map(|(index, p)| PermissionView {
                        index,
                        serial: p.serial.clone().unwrap_or_default(),
                        user: p.user.clone().unwrap_or_default(),
                        until_text: timefmt::date_time(p.until, tz),
                        reason: p.reason.clone().unwrap_or_default(),
                        expired: p.until <= now,
                    })
                    .collect(),
            },
            modes: vec![
                ("block", "Blocked"),
                ("allow_after_scan", "Allowed after a clean scan"),
                ("allow", "Allowed"),
            ],
        },
    ))
}

pub async fn policy(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    let current = desk.policy()?;
    policy_page(
        &st,
        &desk,
        &current.policy,
        StatusCode::OK,
        None,
        vec![],
        None,
    )
}

pub async fn set_policy_section(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(section): Path<String>,
    Form(fields): Form<Fields>,
) -> PageResult {
    let current = desk.policy()?;
    let proposed = match policy_form::apply(&current.policy, &section, &fields, Utc::now(), tz(&st))
    {
        Ok(doc) => doc,
        Err(e) => {
            return policy_page(
                &st,
                &desk,
                &current.policy,
                StatusCode::BAD_REQUEST,
                None,
                vec![],
                Some((&section, e)),
            );
        }
    };
    match desk.set_policy(proposed.clone()).await {
        Ok(pv) => {
            let changes = policy_form::diff(&current.policy, &pv.policy);
            policy_page(
                &st,
                &desk,
                &pv.policy,
                StatusCode::OK,
                Some(format!(
                    "Saved as version {}. Connected laptops apply it within seconds.",
                    pv.version
                )),
                changes,
                None,
            )
        }
        Err(DeskError::Invalid(m)) => policy_page(
            &st,
            &desk,
            &proposed,
            StatusCode::BAD_REQUEST,
            None,
            vec![],
            Some((&section, format!("Not saved: {m}"))),
        ),
        Err(e) => Err(e.into()),
    }
}

struct VersionView {
    version: u64,
    when: String,
    by: String,
    changes: Vec<String>,
}

#[derive(Template)]
#[template(path = "policy_history.html")]
struct HistoryPage {
    chrome: Chrome,
    versions: Vec<VersionView>,
    /// The link to older changes, when there are any.
    next: Option<String>,
}

/// Versions a page of the change log shows; every version can be a whole policy, so the page
/// reads only these and the one before them, never the whole history.
const HISTORY_PAGE: usize = 50;

pub async fn policy_history(
    State(st): State<AppState>,
    Extension(desk): D,
    Query(p): Query<CursorParam>,
) -> PageResult {
    let before = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.strip_prefix('v')
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| DeskError::Invalid(format!("{c:?} is not a page of this log.")))?,
        ),
        None => None,
    };
    // One more than shown: the oldest shown is described against it.
    let (history, _) = desk.policy_history_page(before, HISTORY_PAGE + 1).await?;
    let tz = tz(&st);
    let shown = history.len().min(HISTORY_PAGE);
    let versions: Vec<VersionView> = history[..shown]
        .iter()
        .enumerate()
        .map(|(i, v)| VersionView {
            version: v.version,
            when: timefmt::date_time(v.changed_at, tz),
            by: v.changed_by.clone(),
            changes: match history.get(i + 1) {
                Some(older) => policy_form::diff(&older.policy, &v.policy),
                None => vec![],
            },
        })
        .collect();
    let next = (history.len() > HISTORY_PAGE)
        .then(|| {
            versions
                .last()
                .map(|v| format!("/policy/history?cursor=v{}", v.version))
        })
        .flatten();
    Ok(render(
        StatusCode::OK,
        &HistoryPage {
            chrome: chrome(&desk, &st, "Policy change log", "/policy"),
            versions,
            next,
        },
    ))
}

// ---- Enrolment ----

struct CreatedToken {
    command: String,
    uses: u32,
    expires: String,
}

struct TokenView {
    label: String,
    uses: u32,
    max_uses: u32,
    created: String,
    expires: String,
    state: Badge,
}

#[derive(Template)]
#[template(path = "enrol.html")]
struct EnrolPage {
    chrome: Chrome,
    created: Option<CreatedToken>,
    error: Option<String>,
    tokens: Vec<TokenView>,
    arrivals: String,
}

#[derive(Template)]
#[template(path = "arrivals.html")]
struct ArrivalsFragment {
    rows: Vec<DeviceRow>,
}

fn arrivals_html(st: &AppState, desk: &Desk) -> Result<String, DeskError> {
    let now = Utc::now();
    let rows = desk
        .recent_enrolments(20)?
        .iter()
        .map(|d| DeviceRow::new(d, desk.is_online(d), tz(st), now))
        .collect();
    Ok(ArrivalsFragment { rows }.render().unwrap_or_default())
}

async fn enrol_page(
    st: &AppState,
    desk: &Desk,
    status: StatusCode,
    created: Option<CreatedToken>,
    error: Option<String>,
) -> PageResult {
    let tz = tz(st);
    let now = Utc::now();
    let tokens = desk
        .enrolment_tokens()
        .await?
        .into_iter()
        .take(50)
        .map(|t| TokenView {
            state: badge(if t.uses >= t.max_uses {
                "used_up"
            } else if t.expires_at <= now {
                "expired"
            } else {
                "current"
            }),
            label: t.label,
            uses: t.uses,
            max_uses: t.max_uses,
            created: timefmt::date_time(t.created_at, tz),
            expires: timefmt::date_time(t.expires_at, tz),
        })
        .collect();
    Ok(render(
        status,
        &EnrolPage {
            chrome: chrome(desk, st, "Enrolment", "/enrol"),
            arrivals: arrivals_html(st, desk)?,
            created,
            error,
            tokens,
        },
    ))
}

pub async fn enrol(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    enrol_page(&st, &desk, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    label: String,
    #[serde(default)]
    uses: String,
    #[serde(default)]
    days: String,
}

/// The host name the browser used, which laptops on the same network can usually reach too.
/// HTTP/2 carries it in the request's authority, HTTP/1.1 in `Host`.
fn request_host(uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    if let Some(host) = uri.host() {
        return host.to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    // Strip the web port; keep IPv6 brackets.
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => {
            h.to_string()
        }
        _ => host.to_string(),
    }
}

pub async fn create_token(
    State(st): State<AppState>,
    Extension(desk): D,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> PageResult {
    let parsed = (f.uses.trim().parse::<u32>(), f.days.trim().parse::<i64>());
    let (Ok(uses), Ok(days @ 1..=90)) = parsed else {
        return enrol_page(
            &st,
            &desk,
            StatusCode::BAD_REQUEST,
            None,
            Some("Give how many laptops (a number) and for how many days (1 to 90).".into()),
        )
        .await;
    };
    let expires_at = Utc::now() + chrono::Duration::days(days);
    match desk
        .create_enrolment_token(uses, expires_at, f.label.trim().to_string())
        .await
    {
        Ok(token) => {
            let command = format!(
                "caretaker-agent enroll --collector {}:{} --token {} --ca-fingerprint {}",
                request_host(&uri, &headers),
                st.options.grpc_port,
                token,
                desk.ca_fingerprint()
            );
            let created = CreatedToken {
                command,
                uses,
                expires: timefmt::date_time(expires_at, tz(&st)),
            };
            enrol_page(&st, &desk, StatusCode::OK, Some(created), None).await
        }
        Err(DeskError::Invalid(m)) => {
            enrol_page(&st, &desk, StatusCode::BAD_REQUEST, None, Some(m)).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn arrivals(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        arrivals_html(&st, &desk)?,
    )
        .into_response())
}

// ---- Users ----

struct UserView {
    username: String,
    role: String,
    email: String,
    disabled: bool,
    state: Badge,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    chrome: Chrome,
    users: Vec<UserView>,
    roles: Vec<(&'static str, &'static str)>,
    message: Option<String>,
    secret: Option<String>,
    error: Option<String>,
}

async fn users_page(
    st: &AppState,
    desk: &Desk,
    status: StatusCode,
    message: Option<String>,
    secret: Option<String>,
    error: Option<String>,
) -> PageResult {
    let users = desk
        .users()
        .await?
        .into_iter()
        .map(|u| UserView {
            state: badge(if u.disabled {
                "disabled"
            } else if u.must_change_password {
                "one-time password"
            } else {
                "active"
            }),
            username: u.username,
            role: u.role,
            email: u.email,
            disabled: u.disabled,
        })
        .collect();
    Ok(render(
        status,
        &UsersPage {
            chrome: chrome(desk, st, "Users", "/users"),
            users,
            roles: Role::ALL.iter().map(|r| (r.as_str(), r.label())).collect(),
            message,
            secret,
            error,
        },
    ))
}

pub async fn users(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    users_page(&st, &desk, StatusCode::OK, None, None, None).await
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
}

fn parse_role(s: &str) -> Result<Role, DeskError> {
    Role::parse(s).ok_or_else(|| DeskError::Invalid(format!("{s:?} is not a role.")))
}

/// Renders the users page after an action: its message, or its error in the page.
async fn after_user_action(
    st: &AppState,
    desk: &Desk,
    result: Result<(String, Option<String>), DeskError>,
) -> PageResult {
    match result {
        Ok((message, secret)) => {
            users_page(st, desk, StatusCode::OK, Some(message), secret, None).await
        }
        Err(DeskError::Invalid(m)) | Err(DeskError::NotFound(m)) => {
            users_page(st, desk, StatusCode::BAD_REQUEST, None, None, Some(m)).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn add_user(
    State(st): State<AppState>,
    Extension(desk): D,
    Form(f): Form<UserForm>,
) -> PageResult {
    let username = f.username.trim().to_string();
    let result = async {
        let role = parse_role(&f.role)?;
        let p = desk.add_user(username.clone(), role).await?;
        Ok((
            format!(
                "Added {username} as {}. Their one-time password:",
                role.label()
            ),
            Some(p),
        ))
    }
    .await;
    after_user_action(&st, &desk, result).await
}

#[derive(Deserialize, Default)]
pub struct RoleForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    email: String,
}

pub async fn user_action(
    State(st): State<AppState>,
    Extension(desk): D,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<RoleForm>,
) -> PageResult {
    let result = async {
        match action.as_str() {
            "disable" => {
                desk.set_user_disabled(name.clone(), true).await?;
                Ok((format!("{name} is disabled and signed out."), None))
            }
            "enable" => {
                desk.set_user_disabled(name.clone(), false).await?;
                Ok((format!("{name} can sign in again."), None))
            }
            "reset" => {
                let p = desk.reset_password(name.clone()).await?;
                Ok((
                    format!("{name} is signed out. Their new one-time password:"),
                    Some(p),
                ))
            }
            "email" => {
                desk.set_user_email(name.clone(), f.email.clone()).await?;
                Ok((
                    if f.email.trim().is_empty() {
                        format!("{name} has no e-mail address now.")
                    } else {
                        format!("{name}'s e-mail address is {}.", f.email.trim())
                    },
                    None,
                ))
            }
            "role" => {
                let role = parse_role(&f.role)?;
                desk.change_role(name.clone(), role).await?;
                Ok((format!("{name} is now {}.", role.label()), None))
            }
            other => Err(DeskError::NotFound(format!(
                "There is no user action {other:?}."
            ))),
        }
    }
    .await;
    after_user_action(&st, &desk, result).await
}

#[derive(Deserialize)]
pub struct ApiTokenForm {
    #[serde(default)]
    label: String,
    #[serde(default)]
    role: String,
}

pub async fn create_api_token(
    State(st): State<AppState>,
    Extension(desk): D,
    Form(f): Form<ApiTokenForm>,
) -> PageResult {
    let result = async {
        let role = parse_role(&f.role)?;
        let t = desk
            .create_api_token(f.label.trim().to_string(), role)
            .await?;
        Ok((
            format!(
                "API token \"{}\" created with the {} role. Send it as `Authorization: Bearer <token>`:",
                f.label.trim(),
                role.label()
            ),
            Some(t),
        ))
    }
    .await;
    after_user_action(&st, &desk, result).await
}

// ---- Audit log ----

struct AuditView {
    when: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    address: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    rows: Vec<AuditView>,
    next: Option<u64>,
}

#[derive(Deserialize, Default)]
pub struct BeforeParam {
    before: Option<u64>,
}

pub async fn audit(
    State(st): State<AppState>,
    Extension(desk): D,
    Query(p): Query<BeforeParam>,
) -> PageResult {
    let page = desk.audit_log(p.before, 100).await?;
    let tz = tz(&st);
    Ok(render(
        StatusCode::OK,
        &AuditPage {
            chrome: chrome(&desk, &st, "Audit log", "/audit"),
            rows: page
                .entries
                .into_iter()
                .map(|a| AuditView {
                    when: timefmt::date_time(a.at, tz),
                    actor: a.actor,
                    action: a.action.replace('_', " "),
                    target: a.target,
                    detail: a.detail,
                    address: a.address,
                })
                .collect(),
            next: page.next,
        },
    ))
}
