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

/// The two shapes of a subject export.
#[derive(Clone, Copy)]
enum Shape {
    /// The records as a download.
    Json,
    /// The printable page, opened in the browser.
    Html,
}

/// Makes the export; the desk audits it.
async fn export(st: &AppState, desk: &Desk, user: &str) -> Result<ExportFiles, DeskError> {
    desk.subject_export(user, st.options.time_zone).await
}

/// The export in `shape`, under a file name made from the login name.
async fn download(st: &AppState, desk: &Desk, user: &str, shape: Shape) -> PageResult {
    let f = export(st, desk, user).await?;
    let (body, content_type, disposition, ext) = match shape {
        Shape::Json => (f.json, "application/json", "attachment", "json"),
        Shape::Html => (f.html, "text/html; charset=utf-8", "inline", "html"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("{disposition}; filename=\"{}\"", file_name(user, ext)),
            ),
        ],
        body,
    )
        .into_response())
}

/// `GET /subject/{user}/export.json`: the records as a download; audited.
pub async fn export_json(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(user): Path<String>,
) -> PageResult {
    download(&st, &desk, &user, Shape::Json).await
}

/// `GET /subject/{user}/export.html`: the printable page, opened in the browser; audited.
pub async fn export_html(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(user): Path<String>,
) -> PageResult {
    download(&st, &desk, &user, Shape::Html).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::service::Collector;
    use crate::web::test_rig::{browse, refused_stick};
    use axum::http::header;

    /// A DSL and a network manager, and pupil1's refused stick on laptop-1.
    async fn rig() -> (axum::Router, Arc<Collector>, tempfile::TempDir) {
        let (c, _, dir) = refused_stick(&[Role::Dsl, Role::NetworkManager]).await;
        let app = super::super::router(c.clone(), Default::default());
        (app, c, dir)
    }

    fn audited(c: &Collector, action: &str) -> Vec<crate::store::AuditEntry> {
        c.store
            .audit_log(None, 100)
            .unwrap()
            .entries
            .into_iter()
            .filter(|a| a.action == action)
            .collect()
    }

    #[tokio::test]
    async fn the_dsl_exports_and_only_the_network_manager_erases_with_the_name_typed_again() {
        let (app, c, _dir) = rig().await;
        let p = crate::subject::pseudonym(c.pseudonym_key(), "pupil1");

        let (st, _, page) = browse(&app, &c, Role::Dsl, "GET", "/subject?user=pupil1", None).await;
        assert_eq!(st, StatusCode::OK);
        assert!(page.contains("Records naming pupil1") && page.contains("export.json"));
        assert!(
            !page.contains("Erase pupil1"),
            "the DSL is not offered erasure"
        );
        let (st, h, json) = browse(
            &app,
            &c,
            Role::Dsl,
            "GET",
            "/subject/pupil1/export.json",
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            h[header::CONTENT_DISPOSITION]
                .to_str()
                .unwrap()
                .starts_with("attachment")
        );
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["counts"]["events"], 1, "{doc}");
        let (st, _, html) = browse(
            &app,
            &c,
            Role::Dsl,
            "GET",
            "/subject/pupil1/export.html",
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert!(html.contains("Records naming pupil1"));
        let exports = audited(&c, "subject_exported");
        assert_eq!(exports.len(), 2, "each export is audited");
        assert!(exports.iter().all(|a| a.target == p && a.actor == "dsl"));

        let (st, _, page) = browse(
            &app,
            &c,
            Role::NetworkManager,
            "GET",
            "/subject?user=pupil1",
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            page.contains("Erase pupil1") && page.contains(&p),
            "names the change"
        );
        let erase = "/subject/pupil1/erase";
        let (st, _, _) = browse(&app, &c, Role::Dsl, "POST", erase, Some("confirm=pupil1")).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, _, page) = browse(
            &app,
            &c,
            Role::NetworkManager,
            "POST",
            erase,
            Some("confirm=pupil"),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(page.contains("type the login name exactly"), "{page}");
        assert_eq!(c.store.subject_records("pupil1").unwrap().events.len(), 1);
        assert!(audited(&c, "subject_erased").is_empty(), "nothing happened");

        let (st, _, page) = browse(
            &app,
            &c,
            Role::NetworkManager,
            "POST",
            erase,
            Some("confirm=pupil1"),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{page}");
        assert!(
            page.contains("Erased") && page.contains(&format!("by {p}")),
            "{page}"
        );
        assert!(
            !page.contains("Erase pupil1"),
            "nothing names the name any more, so nothing is left to erase: {page}"
        );
        let left = c.store.subject_records("pupil1").unwrap();
        assert!(left.events.is_empty() && left.incidents.is_empty());
        assert_eq!(c.store.subject_records(&p).unwrap().incidents.len(), 1);
        let erased = audited(&c, "subject_erased");
        assert_eq!(erased.len(), 1);
        assert_eq!(
            (erased[0].actor.as_str(), erased[0].target.as_str()),
            ("network_manager", p.as_str())
        );
    }
}
