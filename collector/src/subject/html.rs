//! The subject access export as printable HTML: the school, when it was made, and a section per kind of record with its count, times in the school's zone.

use askama::Template;

use super::{ExportRequest, RecordCounts, SubjectError};
use crate::store::privacy::SubjectRecords;
use crate::timefmt::date_time;

struct EventRow {
    at: String,
    device: String,
    kind: String,
    severity: String,
    user: String,
    details: String,
}

struct IncidentRow {
    id: u64,
    category: &'static str,
    title: String,
    status: &'static str,
    first: String,
    last: String,
    count: u64,
}

struct EntryRow {
    incident: u64,
    n: u32,
    at: String,
    by: String,
    action: &'static str,
    text: String,
}

struct AuditRow {
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

struct DigestRow {
    id: u64,
    at: String,
    recipient: String,
    subject: String,
    status: String,
}

#[derive(Template)]
#[template(path = "subject_export.html")]
struct ExportHtml<'a> {
    css: &'static str,
    subject: &'a str,
    pseudonym: &'a str,
    school: &'a str,
    made_at: String,
    time_zone: &'a str,
    counts: RecordCounts,
    events: Vec<EventRow>,
    incidents: Vec<IncidentRow>,
    entries: Vec<EntryRow>,
    audit: Vec<AuditRow>,
    digests: Vec<DigestRow>,
}

/// Renders the records as one standalone page (its stylesheet inlined, so the file reads the
/// same wherever it is opened).
pub fn render(
    r: &SubjectRecords,
    req: &ExportRequest<'_>,
    pseudonym: &str,
    counts: RecordCounts,
) -> Result<String, SubjectError> {
    let tz = req.time_zone;
    let page = ExportHtml {
        css: crate::report::output::CSS,
        subject: req.user,
        pseudonym,
        school: req.school,
        made_at: date_time(req.made_at, tz),
        time_zone: tz.name(),
        counts,
        events: r
            .events
            .iter()
            .map(|e| EventRow {
                at: date_time(e.occurred_at, tz),
                device: e.device_id.clone(),
                kind: e.kind.clone(),
                severity: e.severity.clone(),
                user: e.user.clone().unwrap_or_default(),
                details: serde_json::Value::Object(e.details.clone()).to_string(),
            })
            .collect(),
        incidents: r
            .incidents
            .iter()
            .map(|i| IncidentRow {
                id: i.id,
                category: i.category.as_str(),
                title: i.title.clone(),
                status: i.status.as_str(),
                first: date_time(i.first_at, tz),
                last: date_time(i.last_at, tz),
                count: i.count,
            })
            .collect(),
        entries: r
            .incident_entries
            .iter()
            .map(|e| EntryRow {
                incident: e.incident,
                n: e.n,
                at: date_time(e.at, tz),
                by: e.by.clone(),
                action: e.action.as_str(),
                text: e.text.clone(),
            })
            .collect(),
        audit: r
            .audit
            .iter()
            .map(|a| AuditRow {
                at: date_time(a.at, tz),
                actor: a.actor.clone(),
                action: a.action.clone(),
                target: a.target.clone(),
                detail: a.detail.clone(),
            })
            .collect(),
        digests: r
            .digests
            .iter()
            .map(|d| DigestRow {
                id: d.id,
                at: date_time(d.created_at, tz),
                recipient: d.recipient.clone(),
                subject: d.subject.clone(),
                status: format!("{:?}", d.status).to_lowercase(),
            })
            .collect(),
    };
    page.render()
        .map_err(|e| SubjectError::Render(e.to_string()))
}
