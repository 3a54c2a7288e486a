//! Incidents: the list, an incident's page and record, its entries, and a pupil's page.
use super::*;

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
    let q = p.query().map_err(|e| DeskError::Invalid(e.to_string()))?;
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
    holdbox: crate::web::holds::HoldBox,
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
            holdbox: crate::web::holds::HoldBox::load(
                desk,
                crate::store::HoldTarget::Incident(id),
                tz,
            )
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
