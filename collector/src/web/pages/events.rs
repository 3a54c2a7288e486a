//! The event list and its filters.
use super::*;

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
        Err(e) => (Vec::new(), None, Some(e.to_string())),
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
