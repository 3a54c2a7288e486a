//! The "Subject access" page and API: look up a login name, download its records as JSON or open them as printable HTML, and (the network manager) erase the name behind a typed confirmation.

use std::sync::Arc;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::api::ApiError;
use super::pages::{PageResult, chrome};
use super::views::{Chrome, render};
use crate::auth::Permission;
use crate::desk::{Desk, DeskError};
use crate::subject::{ExportFiles, SubjectSummary};

type D = Extension<Arc<Desk>>;

#[derive(Template)]
#[template(path = "subject.html")]
struct SubjectPage {
    chrome: Chrome,
    user: String,
    summary: Option<SubjectSummary>,
    /// The pseudonym an erasure would put in the name's place.
    pseudonym: String,
    may_erase: bool,
    /// What an erasure just did, line by line.
    erased: Vec<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LookUp {
    #[serde(default)]
    user: String,
}

async fn page(
    st: &AppState,
    desk: &Desk,
    user: String,
    status: StatusCode,
    erased: Vec<String>,
    error: Option<String>,
) -> PageResult {
    let user = user.trim().to_string();
    let (summary, error) = if user.is_empty() {
        (None, error)
    } else {
        match desk.subject_summary(&user).await {
            Ok(s) => (Some(s), error),
            Err(DeskError::Invalid(m)) => (None, Some(m)),
            Err(e) => return Err(e.into()),
        }
    };
    let pseudonym = if user.is_empty() {
        String::new()
    } else {
        crate::subject::pseudonym(st.collector.pseudonym_key(), &user)
    };
    Ok(render(
        status,
        &SubjectPage {
            chrome: chrome(desk, st, "Subject access", "/subject"),
            user,
            summary,
            pseudonym,
            may_erase: desk.may(Permission::EraseSubject),
            erased,
            error,
        },
    ))
}

/// `GET /subject?user=NAME`: the form, and with a name the counts of what names it.
pub async fn subject(
    State(st): State<AppState>,
    Extension(desk): D,
    Query(q): Query<LookUp>,
) -> PageResult {
    page(&st, &desk, q.user, StatusCode::OK, Vec::new(), None).await
}

fn file_name(user: &str, ext: &str) -> String {
    // Only characters safe in a header's quoted file name; the name is in the file anyway.
    let safe: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("subject-access-{safe}.{ext}")
}

async fn export(st: &AppState, desk: &Desk, user: &str) -> Result<ExportFiles, DeskError> {
    desk.subject_export(user, st.options.time_zone).await
}

/// `GET /subject/{user}/export.json`: the records as a download; audited.
pub async fn export_json(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(user): Path<String>,
) -> PageResult {
    let f = export(&st, &desk, &user).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", file_name(&user, "json")),
            ),
        ],
        f.json,
    )
        .into_response())
}

/// `GET /subject/{user}/export.html`: the printable page, opened in the browser; audited.
pub async fn export_html(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(user): Path<String>,
) -> PageResult {
    let f = export(&st, &desk, &user).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}\"", file_name(&user, "html")),
            ),
        ],
        f.html,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct EraseForm {
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    staff: Option<String>,
}

/// `POST /subject/{user}/erase`: the network manager's erasure, once the name is typed again.
pub async fn erase(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(user): Path<String>,
    Form(f): Form<EraseForm>,
) -> PageResult {
    match desk
        .subject_erase(
            &user,
            f.confirm.trim(),
            f.staff.is_some(),
            st.options.time_zone,
        )
        .await
    {
        Ok(report) => page(&st, &desk, user, StatusCode::OK, report.lines(), None).await,
        Err(DeskError::Invalid(m)) => {
            page(
                &st,
                &desk,
                user,
                StatusCode::BAD_REQUEST,
                Vec::new(),
                Some(m),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /api/v1/subject/{user}`: the export's JSON document; audited.
pub async fn api_export(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let f = export(&st, &desk, &user).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], f.json).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseBody {
    /// The login name again, as in the path.
    confirm: String,
    #[serde(default)]
    staff: bool,
}

/// `POST /api/v1/subject/{user}/erase` with `{"confirm": NAME, "staff": false}`.
pub async fn api_erase(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: EraseBody = serde_json::from_slice(&body).map_err(|e| {
        DeskError::Invalid(format!(
            "the body must be {{\"confirm\": the name again, \"staff\": false}}: {e}"
        ))
    })?;
    let report = desk
        .subject_erase(&user, &b.confirm, b.staff, st.options.time_zone)
        .await?;
    Ok(Json(json!({"lines": report.lines(), "erased": report})))
}
