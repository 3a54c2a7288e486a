//! The dashboard's monitoring report: the page for the signed-in role (a governor only ever gets the governors' version) and its PDF, HTML and CSV downloads.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::pages::PageError;
use super::views::{Chrome, render};
use crate::auth::Permission;
use crate::desk::{Desk, DeskError};
use crate::report::{Audience, Format, PeriodKind, PeriodSpec, ReportRequest};

/// What the report form and download links carry, all in the URL.
#[derive(Debug, Deserialize, Default)]
pub struct ReportParams {
    period: Option<String>,
    from: Option<String>,
    to: Option<String>,
    audience: Option<String>,
    format: Option<String>,
    table: Option<String>,
}

const TABLES: &[&str] = &[
    "summary",
    "trends",
    "compliance",
    "removable_media",
    "incidents",
    "licences",
    "policy_changes",
];
const DSL_TABLES: &[&str] = &["safeguarding_incidents", "silent_devices"];

fn date(s: &Option<String>) -> Result<Option<chrono::NaiveDate>, DeskError> {
    match s.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(d) => d
            .parse()
            .map(Some)
            .map_err(|_| DeskError::Invalid(format!("\"{d}\" is not a date (YYYY-MM-DD)."))),
    }
}

impl ReportParams {
    fn period(&self) -> &str {
        self.period.as_deref().unwrap_or("month")
    }

    /// The version asked for; a governor gets the governors' whatever the address says (the
    /// desk refuses the other anyway).
    fn audience(&self, desk: &Desk) -> Audience {
        match self.audience.as_deref() {
            Some("dsl") if desk.may(Permission::Safeguarding) => Audience::Dsl,
            _ => Audience::Governors,
        }
    }

    fn spec(&self) -> Result<PeriodSpec, DeskError> {
        Ok(PeriodSpec {
            kind: Some(PeriodKind::parse(self.period()).ok_or_else(|| {
                DeskError::Invalid("The period must be week, month or term.".into())
            })?),
            from: date(&self.from)?,
            to: date(&self.to)?,
        })
    }

    fn query(&self, audience: Audience) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("period", self.period());
        for (k, v) in [("from", &self.from), ("to", &self.to)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                q.append_pair(k, v);
            }
        }
        q.append_pair("audience", audience.as_str());
        q.finish()
    }
}

#[derive(Template)]
#[template(path = "report_page.html")]
struct ReportPage {
    chrome: Chrome,
    periods: Vec<(&'static str, &'static str)>,
    period: String,
    from: String,
    to: String,
    audience: &'static str,
    may_name: bool,
    query: String,
    tables: Vec<&'static str>,
    error: Option<String>,
    body: String,
}

/// GET /report: the report on the page, with the form and download links.
pub async fn report(
    State(st): State<AppState>,
    Extension(desk): Extension<Arc<Desk>>,
    Query(p): Query<ReportParams>,
) -> Result<Response, PageError> {
    let audience = p.audience(&desk);
    let tz = st.options.time_zone;
    let (error, body) = match p.spec() {
        Err(DeskError::Invalid(m)) => (Some(m), String::new()),
        Err(e) => return Err(e.into()),
        Ok(spec) => match desk.report_fragment(spec, audience, tz).await {
            Ok((_, body)) => (None, body),
            // A period that cannot be worked out (no terms yet) is a message on the page.
            Err(DeskError::Invalid(m)) => (Some(m), String::new()),
            Err(e) => return Err(e.into()),
        },
    };
    let mut chrome = Chrome::new(&desk, "Monitoring report", "/report");
    chrome.tz = tz.name().to_string();
    let mut tables = TABLES.to_vec();
    if audience == Audience::Dsl {
        tables.extend_from_slice(DSL_TABLES);
    }
    Ok(render(
        StatusCode::OK,
        &ReportPage {
            chrome,
            periods: vec![("week", "Week"), ("month", "Month"), ("term", "Term")],
            period: p.period().to_string(),
            from: p.from.clone().unwrap_or_default(),
            to: p.to.clone().unwrap_or_default(),
            audience: audience.as_str(),
            may_name: desk.may(Permission::Safeguarding),
            query: p.query(audience),
            tables,
            error,
            body,
        },
    ))
}

/// GET /report/download: the PDF, the standalone HTML, or one CSV table.
pub async fn download(
    State(st): State<AppState>,
    Extension(desk): Extension<Arc<Desk>>,
    Query(p): Query<ReportParams>,
) -> Result<Response, PageError> {
    let format = Format::parse(p.format.as_deref().unwrap_or("html"))
        .ok_or_else(|| DeskError::Invalid("The format must be pdf, html or csv.".into()))?;
    let audience = p.audience(&desk);
    let req = ReportRequest {
        period: p.spec()?,
        audience,
        format,
    };
    let files = desk.report(req, st.options.time_zone).await?;
    let wanted = match format {
        Format::Csv => format!("{}.csv", p.table.as_deref().unwrap_or("summary")),
        Format::Html => "report.html".into(),
        Format::Pdf => "report.pdf".into(),
    };
    let file = files
        .into_iter()
        .find(|f| f.name == wanted)
        .ok_or_else(|| DeskError::NotFound(format!("This report has no table called {wanted}.")))?;
    let download = format!(
        "attachment; filename=\"caretaker-{}-{}-{}\"",
        audience.as_str(),
        p.period(),
        file.name
    );
    Ok((
        [
            (header::CONTENT_TYPE, file.content_type),
            (header::CONTENT_DISPOSITION, download),
        ],
        file.bytes,
    )
        .into_response())
}

/// GET /static/report.css.
pub async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        crate::report::output::CSS,
    )
        .into_response()
}
