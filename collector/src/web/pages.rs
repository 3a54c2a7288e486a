//! The dashboard's pages: server-rendered HTML from askama templates, each handler asking the
//! signed-in person's `Desk`. What every page shares (errors, chrome, static assets) is here;
//! the pages, one file per family, are under `pages/` and re-exported for the router.

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

fn hostname(desk: &Desk, id: &str) -> String {
    desk.device_hostname(id)
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

#[derive(Deserialize, Default)]
pub struct CursorParam {
    cursor: Option<String>,
}

mod account;
mod audit;
mod devices;
mod enrol;
mod events;
mod incidents;
mod policy;
mod users;

pub use account::*;
pub use audit::*;
pub use devices::*;
pub use enrol::*;
pub use events::*;
pub use incidents::*;
pub use policy::*;
pub use users::*;
