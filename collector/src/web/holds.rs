//! Legal holds on the web: the JSON API (`/api/v1/holds`), the "Legal holds" page, and the place/release forms the incident and device pages carry.

use std::sync::Arc;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::api::ApiError;
use super::pages::{PageResult, chrome};
use super::views::{Chrome, render};
use crate::auth::Permission;
use crate::desk::{Desk, DeskError};
use crate::store::{Hold, HoldTarget};
use crate::timefmt;

type D = Extension<Arc<Desk>>;

/// A hold as the API shows it: the target as its key (`incident:12`), who, when, why.
fn hold_json(h: &Hold) -> Value {
    json!({"target": h.target.key(), "by": h.by, "at": h.at, "reason": h.reason})
}

fn invalid(m: String) -> ApiError {
    DeskError::Invalid(m).into()
}

/// `GET /api/v1/holds`: the holds in force, newest first.
pub async fn list(Extension(desk): D) -> Result<Json<Value>, ApiError> {
    let holds: Vec<Value> = desk.holds().await?.iter().map(hold_json).collect();
    Ok(Json(json!({"holds": holds})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceBody {
    target: String,
    reason: String,
}

/// `POST /api/v1/holds` with `{"target": "incident:12", "reason": "..."}`.
pub async fn place(Extension(desk): D, body: Bytes) -> Result<Response, ApiError> {
    let b: PlaceBody = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "the body must be {{\"target\": \"incident:12\", \"reason\": ...}}: {e}"
        ))
    })?;
    let hold = desk.place_hold(&b.target, &b.reason).await?;
    Ok((StatusCode::CREATED, Json(json!({"hold": hold_json(&hold)}))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    reason: Option<String>,
}

/// `DELETE /api/v1/holds/{target}?reason=...`: a release says why, like a hold.
pub async fn release(
    Extension(desk): D,
    Path(target): Path<String>,
    params: Result<Query<ReleaseParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| invalid(e.body_text()))?;
    desk.release_hold(&target, p.reason.as_deref().unwrap_or(""))
        .await?;
    Ok(Json(json!({"released": target})))
}

/// One hold as the page lists it.
pub struct HoldRow {
    pub target: String,
    pub what: String,
    pub link: Option<String>,
    pub by: String,
    pub when: String,
    pub reason: String,
}

impl HoldRow {
    pub fn new(h: &Hold, desk: &Desk, tz: chrono_tz::Tz) -> Self {
        let (what, link) = match &h.target {
            HoldTarget::Incident(id) => {
                (format!("Incident #{id}"), Some(format!("/incidents/{id}")))
            }
            HoldTarget::Device(d) => (
                format!("Device {}", desk.device_hostname(d)),
                Some(format!("/devices/{d}")),
            ),
            HoldTarget::User(u) => (format!("Everything about {u}"), None),
        };
        Self {
            target: h.target.key(),
            what,
            link,
            by: h.by.clone(),
            when: timefmt::date_time(h.at, tz),
            reason: h.reason.clone(),
        }
    }
}

/// What the incident and device pages show about a hold.
pub struct HoldBox {
    /// The target's key, for the forms.
    pub target: String,
    pub hold: Option<HoldRow>,
    pub can_manage: bool,
    /// Whether to show the box at all (the asker may see holds).
    pub shown: bool,
}

impl HoldBox {
    /// The box for `target` as `desk` sees it. A store that cannot say is logged and shown as
    /// not held, so the page itself still opens.
    pub async fn load(desk: &Desk, target: HoldTarget, tz: chrono_tz::Tz) -> Self {
        let shown = desk.may(Permission::ViewHolds);
        let hold = if shown {
            match desk.hold_on(&target).await {
                Ok(h) => h.map(|h| HoldRow::new(&h, desk, tz)),
                Err(e) => {
                    tracing::warn!(error = %e, "Legal holds not read for a page");
                    None
                }
            }
        } else {
            None
        };
        Self {
            target: target.key(),
            hold,
            can_manage: desk.may(Permission::ManageHolds),
            shown,
        }
    }
}

#[derive(Template)]
#[template(path = "holds.html")]
struct HoldsPage {
    chrome: Chrome,
    rows: Vec<HoldRow>,
    can_manage: bool,
}

/// `GET /holds`: the holds in force.
pub async fn page(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    let tz = st.options.time_zone;
    let rows = desk
        .holds()
        .await?
        .iter()
        .map(|h| HoldRow::new(h, &desk, tz))
        .collect();
    Ok(render(
        StatusCode::OK,
        &HoldsPage {
            chrome: chrome(&desk, &st, "Legal holds", "/holds"),
            rows,
            can_manage: desk.may(Permission::ManageHolds),
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct HoldForm {
    target: String,
    #[serde(default)]
    reason: String,
}

/// Where a hold form returns to: the held incident's or device's page, else the list.
fn back_to(target: &str) -> String {
    match HoldTarget::parse(target.trim()) {
        Some(HoldTarget::Incident(id)) => format!("/incidents/{id}#hold"),
        Some(HoldTarget::Device(d)) if !d.contains(['/', '?', '#']) => format!("/devices/{d}#hold"),
        _ => "/holds".into(),
    }
}

/// `POST /holds`: places a hold from a form.
pub async fn place_form(Extension(desk): D, Form(f): Form<HoldForm>) -> PageResult {
    desk.place_hold(&f.target, &f.reason).await?;
    Ok(Redirect::to(&back_to(&f.target)).into_response())
}

/// `POST /holds/release`: releases a hold from a form.
pub async fn release_form(Extension(desk): D, Form(f): Form<HoldForm>) -> PageResult {
    desk.release_hold(&f.target, &f.reason).await?;
    Ok(Redirect::to(&back_to(&f.target)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::service::Collector;
    use crate::web::test_rig::{browse, refused_stick};

    /// A DSL and a network manager, and a pupil's refused stick on laptop-1 (a safeguarding
    /// incident); returns the app, the incident, the collector and the store's folder.
    async fn rig() -> (axum::Router, u64, Arc<Collector>, tempfile::TempDir) {
        let (c, id, dir) = refused_stick(&[Role::Dsl, Role::NetworkManager]).await;
        let app = super::super::router(c.clone(), Default::default());
        (app, id, c, dir)
    }

    #[tokio::test]
    async fn the_dsl_holds_an_incident_from_its_page_and_it_shows_as_held() {
        let (app, id, c, _dir) = rig().await;
        let page = format!("/incidents/{id}");
        let (st, _, body) = browse(&app, &c, Role::Dsl, "GET", &page, None).await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            body.contains("Place legal hold") && !body.contains("On legal hold"),
            "{body}"
        );
        let form = format!("target=incident%3A{id}&reason=CP-2026-14");
        let (st, _, _) = browse(&app, &c, Role::Dsl, "POST", "/holds", Some(&form)).await;
        assert_eq!(st, StatusCode::SEE_OTHER);
        let (_, _, body) = browse(&app, &c, Role::Dsl, "GET", &page, None).await;
        assert!(
            body.contains("On legal hold") && body.contains("CP-2026-14"),
            "{body}"
        );
        assert!(body.contains("Release hold"), "{body}");
        // The network manager sees the hold, on the page and in the list, but cannot release it.
        let (_, _, body) = browse(&app, &c, Role::NetworkManager, "GET", &page, None).await;
        assert!(
            body.contains("On legal hold") && !body.contains("Release hold"),
            "{body}"
        );
        let (st, _, body) = browse(&app, &c, Role::NetworkManager, "GET", "/holds", None).await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            body.contains(&format!("Incident #{id}")) && body.contains("1 hold(s)"),
            "{body}"
        );
        // A release without a reason changes nothing.
        let bare = format!("target=incident%3A{id}&reason=");
        let (st, _, _) = browse(&app, &c, Role::Dsl, "POST", "/holds/release", Some(&bare)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert_eq!(c.store.holds().unwrap().len(), 1);
        let done = format!("target=incident%3A{id}&reason=case+closed");
        browse(&app, &c, Role::Dsl, "POST", "/holds/release", Some(&done)).await;
        assert!(c.store.holds().unwrap().is_empty());
        let audit = c.store.audit_log(None, 50).unwrap().entries;
        let target = format!("incident:{id}");
        for (action, detail) in [
            ("hold_placed", "CP-2026-14"),
            ("hold_released", "case closed"),
        ] {
            assert!(
                audit
                    .iter()
                    .any(|a| a.action == action && a.target == target && a.detail == detail),
                "{action}: {audit:?}"
            );
        }
    }

    #[test]
    fn a_form_returns_to_what_it_held() {
        assert_eq!(back_to("incident:12"), "/incidents/12#hold");
        assert_eq!(back_to("device:d-1"), "/devices/d-1#hold");
        assert_eq!(back_to("user:alice"), "/holds");
        assert_eq!(back_to("device://evil.example"), "/holds");
    }
}
