//! The fleet overview, the device list and a device's page, and revoking a device.
use super::*;

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
    holdbox: crate::web::holds::HoldBox,
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
            holdbox: crate::web::holds::HoldBox::load(
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
