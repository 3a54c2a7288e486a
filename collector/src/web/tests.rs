//! Route × role: every route in the access table, asked by every role, signed out, and with forged forms; a new route without a row here fails.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;
use tower::ServiceExt;

use super::test_rig::{self, PASSWORD};
use super::{Access, SESSION_COOKIE, SIGNIN_COOKIE, WebOptions, router, routes};
use crate::accounts::{self, Actor};
use crate::auth::{Role, SignInLimiter};
use crate::service::{Collector, IncomingEvent};
use crate::store::test_device;

/// Roles in the order of the table's columns.
const ROLES: [Role; 4] = [
    Role::NetworkManager,
    Role::Technician,
    Role::Dsl,
    Role::Governor,
];

/// For each route, may each role (network manager, technician, DSL, governor) use it, as the
/// concrete request below makes it? `{id}` of an incident is a safeguarding incident, and
/// `{id}` of a device is the device it concerns, so the DSL may open that device and the
/// technician may not open that incident.
const EXPECTED: &[(&str, &str, [bool; 4])] = &[
    ("GET", "/", [true, true, true, true]),
    ("GET", "/healthz", [true, true, true, true]),
    ("GET", "/static/app.css", [true, true, true, true]),
    ("GET", "/static/app.js", [true, true, true, true]),
    ("GET", "/signin", [true, true, true, true]),
    ("POST", "/signin", [true, true, true, true]),
    ("POST", "/signout", [true, true, true, true]),
    ("GET", "/account/password", [true, true, true, true]),
    ("POST", "/account/password", [true, true, true, true]),
    ("GET", "/fleet", [true, true, false, false]),
    ("GET", "/devices", [true, true, false, false]),
    ("GET", "/devices/{id}", [true, true, true, false]),
    ("POST", "/devices/{id}/revoke", [true, true, false, false]),
    (
        "GET",
        "/devices/{id}/uninstall-code",
        [true, true, false, false],
    ),
    ("GET", "/events", [true, true, true, false]),
    ("GET", "/incidents", [true, true, true, false]),
    ("GET", "/incidents/{id}", [true, false, true, false]),
    (
        "POST",
        "/incidents/{id}/entries",
        [true, false, true, false],
    ),
    (
        "GET",
        "/incidents/{id}/record.csv",
        [true, false, true, false],
    ),
    ("GET", "/pupils/{user}", [true, false, true, false]),
    ("GET", "/policy", [true, false, false, false]),
    ("POST", "/policy/{section}", [true, false, false, false]),
    ("GET", "/policy/history", [true, false, false, false]),
    ("GET", "/enrol", [true, true, false, false]),
    ("POST", "/enrol", [true, true, false, false]),
    ("GET", "/enrol/arrivals", [true, true, false, false]),
    ("GET", "/users", [true, false, false, false]),
    ("POST", "/users", [true, false, false, false]),
    (
        "POST",
        "/users/{name}/{action}",
        [true, false, false, false],
    ),
    ("POST", "/api-tokens", [true, false, false, false]),
    ("GET", "/audit", [true, false, false, false]),
    ("GET", "/subject", [true, false, true, false]),
    (
        "GET",
        "/subject/{user}/export.json",
        [true, false, true, false],
    ),
    (
        "GET",
        "/subject/{user}/export.html",
        [true, false, true, false],
    ),
    ("POST", "/subject/{user}/erase", [true, false, false, false]),
    ("GET", "/settings", [true, false, false, false]),
    ("POST", "/settings/{section}", [true, false, false, false]),
    ("GET", "/digests", [true, false, true, false]),
    ("GET", "/report", [true, false, true, true]),
    ("GET", "/report/download", [true, false, true, true]),
    ("GET", "/static/report.css", [true, true, true, true]),
    ("GET", "/api/v1/devices", [true, true, false, false]),
    ("GET", "/api/v1/events", [true, true, true, false]),
    ("GET", "/api/v1/fleet", [true, true, false, false]),
    ("GET", "/api/v1/software", [true, true, false, false]),
    ("GET", "/api/v1/policy", [true, false, false, false]),
    ("PUT", "/api/v1/policy", [true, false, false, false]),
    ("GET", "/api/v1/policy/history", [true, false, false, false]),
    ("GET", "/api/v1/audit", [true, false, false, false]),
    ("GET", "/api/v1/subject/{user}", [true, false, true, false]),
    (
        "POST",
        "/api/v1/subject/{user}/erase",
        [true, false, false, false],
    ),
    ("GET", "/api/v1/digests", [true, false, true, false]),
    ("GET", "/api/v1/incidents", [true, true, true, false]),
    ("GET", "/api/v1/incidents/{id}", [true, false, true, false]),
    (
        "POST",
        "/api/v1/incidents/{id}/entries",
        [true, false, true, false],
    ),
    ("GET", "/api/v1/metrics", [true, true, false, false]),
    ("GET", "/holds", [true, false, true, false]),
    ("POST", "/holds", [false, false, true, false]),
    ("POST", "/holds/release", [false, false, true, false]),
    ("GET", "/api/v1/holds", [true, false, true, false]),
    ("POST", "/api/v1/holds", [false, false, true, false]),
    (
        "DELETE",
        "/api/v1/holds/{target}",
        [false, false, true, false],
    ),
];

struct Rig {
    _dir: tempfile::TempDir,
    collector: Arc<Collector>,
    app: Router,
    device: String,
    incident: u64,
}

/// A collector on a temporary store with one account per role and a governor named
/// "victim", two devices, and a safeguarding incident on laptop-1 (a pupil's blocked USB
/// stick).
async fn rig() -> Rig {
    let (collector, incident, dir) = test_rig::refused_stick(&ROLES).await;
    let store = collector.store.as_ref();
    accounts::add_user(
        store,
        &Actor::local_cli(),
        "victim",
        Role::Governor,
        Some(PASSWORD),
    )
    .unwrap();
    store.insert_device(&test_device("laptop-2")).unwrap();
    Rig {
        app: router(collector.clone(), WebOptions::default()),
        incident,
        collector,
        device: "laptop-1".into(),
        _dir: dir,
    }
}

/// A browser session: the cookie and the form token.
struct Session {
    cookie: String,
    csrf: String,
}

fn sign_in(rig: &Rig, role: Role) -> Session {
    let s = accounts::sign_in(
        rig.collector.store.as_ref(),
        &SignInLimiter::default(),
        role.as_str(),
        PASSWORD,
        None,
    )
    .unwrap();
    Session {
        cookie: s.cookie,
        csrf: s.record.csrf,
    }
}

fn api_token(rig: &Rig, role: Role) -> String {
    accounts::create_api_token(
        rig.collector.store.as_ref(),
        &Actor::local_cli(),
        &format!("test {}", role.as_str()),
        role,
    )
    .unwrap()
}

/// The concrete path and body for a route in the table.
fn request_for(
    rig: &Rig,
    method: &str,
    path: &str,
    csrf: &str,
) -> (String, Option<(String, &'static str)>) {
    let concrete = path
        .replace("/devices/{id}/revoke", "/devices/laptop-2/revoke")
        .replace(
            "{id}",
            if path.contains("incidents") {
                "INC"
            } else {
                &rig.device
            },
        )
        .replace("INC", &rig.incident.to_string())
        .replace(
            "{target}",
            &format!("incident:{}?reason=closed", rig.incident),
        )
        .replace("{user}", "pupil1")
        .replace("{section}", "antivirus")
        .replace("{name}/{action}", "victim/enable");
    let body = match (method, path) {
        ("GET", _) => None,
        ("PUT", "/api/v1/policy") => Some((
            json!({"policy": {"antivirus": {"max_signature_age_hours": 48}}}).to_string(),
            "application/json",
        )),
        ("POST", "/api/v1/holds") => Some((
            json!({"target": format!("incident:{}", rig.incident), "reason": "CP-1"}).to_string(),
            "application/json",
        )),
        ("POST", "/holds" | "/holds/release") => Some((
            format!(
                "_csrf={csrf}&target=incident%3A{}&reason=CP-1",
                rig.incident
            ),
            "application/x-www-form-urlencoded",
        )),
        ("POST", p) if p.starts_with("/api/") => Some((
            json!({"action": "note", "text": "checked"}).to_string(),
            "application/json",
        )),
        ("POST", "/policy/{section}") => Some((
            format!("_csrf={csrf}&max_age_hours=48&check_minutes=60"),
            "application/x-www-form-urlencoded",
        )),
        ("POST", "/incidents/{id}/entries") => Some((
            format!("_csrf={csrf}&action=note&text=seen"),
            "application/x-www-form-urlencoded",
        )),
        ("POST", "/enrol") => Some((
            format!("_csrf={csrf}&label=t&uses=1&days=1"),
            "application/x-www-form-urlencoded",
        )),
        ("POST", "/users") => Some((
            format!(
                "_csrf={csrf}&username=new-{}&role=governor",
                csrf.len() % 97
            ),
            "application/x-www-form-urlencoded",
        )),
        ("POST", "/api-tokens") => Some((
            format!("_csrf={csrf}&label=script&role=governor"),
            "application/x-www-form-urlencoded",
        )),
        _ => Some((format!("_csrf={csrf}"), "application/x-www-form-urlencoded")),
    };
    (concrete, body)
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<(String, &'static str)>,
    cookies: &[(&str, &str)],
    bearer: Option<&str>,
) -> axum::response::Response {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path);
    if !cookies.is_empty() {
        let c: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        req = req.header(header::COOKIE, c.join("; "));
    }
    if let Some(t) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some((b, ct)) => req.header(header::CONTENT_TYPE, ct).body(Body::from(b)),
        None => req.body(Body::empty()),
    }
    .unwrap();
    app.clone().oneshot(req).await.unwrap()
}

#[tokio::test]
async fn every_route_has_a_rule_and_every_role_gets_exactly_its_part() {
    let table = routes();
    for r in &table {
        assert!(
            EXPECTED
                .iter()
                .any(|(m, p, _)| *m == r.method.as_str() && *p == r.path),
            "route {} {} has no row in EXPECTED: say which roles may use it",
            r.method,
            r.path
        );
    }
    assert_eq!(
        table.len(),
        EXPECTED.len(),
        "EXPECTED lists a route that no longer exists"
    );

    let rig = rig().await;
    for (col, role) in ROLES.into_iter().enumerate() {
        let token = api_token(&rig, role);
        let mut session = sign_in(&rig, role);
        for (method, path, allowed) in EXPECTED {
            let signin_form = *method == "POST" && *path == "/signin";
            let (uri, body) = if signin_form {
                (
                    "/signin".to_string(),
                    Some((
                        format!(
                            "_csrf=pre&username={}&password={}",
                            role.as_str(),
                            PASSWORD.replace(' ', "+")
                        ),
                        "application/x-www-form-urlencoded",
                    )),
                )
            } else {
                request_for(&rig, method, path, &session.csrf)
            };
            let res = if path.starts_with("/api/") {
                send(&rig.app, method, &uri, body, &[], Some(&token)).await
            } else {
                send(
                    &rig.app,
                    method,
                    &uri,
                    body,
                    &[(SESSION_COOKIE, &session.cookie), (SIGNIN_COOKIE, "pre")],
                    None,
                )
                .await
            };
            let status = res.status();
            if allowed[col] {
                assert!(
                    status != StatusCode::FORBIDDEN
                        && status != StatusCode::UNAUTHORIZED
                        && !status.is_server_error(),
                    "{} may {method} {uri}, got {status}",
                    role.as_str()
                );
                if *method == "GET" && !path.starts_with("/signin") && *path != "/" {
                    assert!(
                        status.is_success(),
                        "{} {method} {uri}: {status}",
                        role.as_str()
                    );
                }
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{} must be refused {method} {uri}",
                    role.as_str()
                );
            }
            if *path == "/signout" {
                session = sign_in(&rig, role);
            }
        }
    }
}

#[tokio::test]
async fn signed_out_pages_go_to_sign_in_and_the_api_wants_a_token() {
    let rig = rig().await;
    for r in routes().into_iter().filter(|r| r.access != Access::Public) {
        let (uri, body) = request_for(&rig, r.method.as_str(), r.path, "x");
        let res = send(&rig.app, r.method.as_str(), &uri, body, &[], None).await;
        if r.path.starts_with("/api/") {
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{uri}");
        } else {
            assert_eq!(res.status(), StatusCode::SEE_OTHER, "{uri}");
            let to = res.headers()[header::LOCATION].to_str().unwrap();
            assert!(to.starts_with("/signin"), "{uri} → {to}");
        }
    }
}

#[tokio::test]
async fn a_form_without_its_token_is_refused_and_changes_nothing() {
    let rig = rig().await;
    let s = sign_in(&rig, Role::NetworkManager);
    let before = rig.collector.policy().version;
    for body in [
        "max_age_hours=1&check_minutes=60".to_string(),
        "_csrf=forged&max_age_hours=1&check_minutes=60".to_string(),
    ] {
        let res = send(
            &rig.app,
            "POST",
            "/policy/antivirus",
            Some((body, "application/x-www-form-urlencoded")),
            &[(SESSION_COOKIE, &s.cookie)],
            None,
        )
        .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(rig.collector.policy().version, before, "nothing was saved");
    // The sign-in form needs its own double-submit token.
    let res = send(
        &rig.app,
        "POST",
        "/signin",
        Some((
            format!("username=network_manager&password={PASSWORD}"),
            "application/x-www-form-urlencoded",
        )),
        &[],
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cookies_do_not_drive_the_api_and_tokens_do_not_drive_pages() {
    let rig = rig().await;
    let s = sign_in(&rig, Role::NetworkManager);
    let res = send(
        &rig.app,
        "GET",
        "/api/v1/devices",
        None,
        &[(SESSION_COOKIE, &s.cookie)],
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = send(&rig.app, "GET", "/fleet", None, &[], Some("admin-token")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = send(
        &rig.app,
        "GET",
        "/api/v1/devices",
        None,
        &[],
        Some("admin-token"),
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "admin.token stays the network manager's"
    );
}

#[tokio::test]
async fn pages_carry_the_security_headers_and_sign_in_sets_a_strict_cookie() {
    let rig = rig().await;
    let page = send(&rig.app, "GET", "/signin", None, &[], None).await;
    let h = page.headers();
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    let pre = h[header::SET_COOKIE].to_str().unwrap().to_string();
    let token = pre
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let res = send(
        &rig.app,
        "POST",
        "/signin",
        Some((
            format!(
                "_csrf={token}&username=dsl&password={}&next=/incidents",
                PASSWORD.replace(' ', "+")
            ),
            "application/x-www-form-urlencoded",
        )),
        &[(SIGNIN_COOKIE, &token)],
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/incidents");
    let session = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with(SESSION_COOKIE))
        .expect("a session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
}

#[tokio::test]
async fn an_incident_record_only_grows() {
    let rig = rig().await;
    let desk = crate::desk::Desk::new(
        rig.collector.clone(),
        Actor {
            name: "dsl".into(),
            role: Role::Dsl,
            address: None,
            session: None,
            must_change_password: false,
        },
    );
    desk.add_incident_entry(rig.incident, "acknowledged", "")
        .await
        .unwrap();
    desk.add_incident_entry(rig.incident, "note", "spoke to the pupil")
        .await
        .unwrap();
    desk.add_incident_entry(rig.incident, "note", "correction: spoke to the form tutor")
        .await
        .unwrap();
    let (inc, entries) = desk.incident(rig.incident).await.unwrap();
    assert_eq!(inc.status, crate::store::IncidentStatus::Acknowledged);
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.n, e.text.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, ""),
            (2, "spoke to the pupil"),
            (3, "correction: spoke to the form tutor")
        ]
    );
    assert!(
        desk.add_incident_entry(rig.incident, "note", "  ")
            .await
            .is_err(),
        "an empty note says nothing"
    );
    // The routes offer no way to change or remove an entry: only POST to add.
    for r in routes() {
        if r.path.contains("entries") {
            assert_eq!(r.method, Method::POST);
        }
    }
}

#[tokio::test]
async fn the_overview_puts_the_most_serious_first_and_counts_every_flagged_device() {
    let rig = rig().await;
    let events = vec![
        ("antivirus.status", json!({"status": "stale"})),
        (
            "antivirus.detection",
            json!({"name": "Eicar-Test-Signature"}),
        ),
        (
            "software.installed",
            json!({"source": "dpkg", "name": "steam", "version": "1"}),
        ),
    ];
    for (seq, (kind, details)) in events.into_iter().enumerate() {
        let batch = rig
            .collector
            .prepare_batch(
                "laptop-2",
                vec![IncomingEvent {
                    seq: seq as u64 + 1,
                    occurred_at: Some(chrono::Utc::now()),
                    user: String::new(),
                    kind: kind.into(),
                    details: details.as_object().unwrap().clone(),
                }],
                None,
            )
            .unwrap();
        rig.collector.commit(batch).await.unwrap();
    }
    rig.collector.refresh_open_incidents().unwrap();
    let desk = crate::desk::Desk::new(rig.collector.clone(), Actor::local_cli());
    let fleet = desk.fleet(crate::timefmt::DEFAULT_TZ).await.unwrap();
    let kinds: Vec<&str> = fleet.attention.iter().map(|i| i.kind.as_str()).collect();
    assert_eq!(kinds[0], "antivirus.detection", "critical first: {kinds:?}");
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(fleet.devices, 2);
    assert_eq!(fleet.no_unapproved_software, 1, "laptop-2 has steam");
}

#[tokio::test]
async fn a_clock_two_days_behind_is_flagged_once_on_the_device_page_and_in_the_api() {
    let rig = rig().await;
    let behind = chrono::Utc::now() - chrono::Duration::days(2);
    // Two tail batches (a heartbeat each), as a running agent with that clock sends them.
    for seq in 1..=2 {
        let batch = rig
            .collector
            .prepare_batch(
                "laptop-2",
                vec![IncomingEvent {
                    seq,
                    occurred_at: Some(behind),
                    user: String::new(),
                    kind: "agent.heartbeat".into(),
                    details: Default::default(),
                }],
                None,
            )
            .unwrap();
        // Only the batch that changes the judgement carries it.
        assert_eq!(batch.state.contains_key("clock"), seq == 2, "batch {seq}");
        rig.collector.commit(batch).await.unwrap();
    }
    let token = api_token(&rig, Role::NetworkManager);
    let resp = send(&rig.app, "GET", "/api/v1/devices", None, &[], Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let d = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "laptop-2")
        .unwrap();
    assert_eq!(d["state"]["clock"]["status"], "behind", "{d}");

    let s = sign_in(&rig, Role::NetworkManager);
    let resp = send(
        &rig.app,
        "GET",
        "/devices/laptop-2",
        None,
        &[(SESSION_COOKIE, &s.cookie)],
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        page.contains(
            "<dt>Clock</dt><dd><span class=\"badge warn\">behind</span> (2 days 0 h behind)"
        ),
        "{page}"
    );
}

#[tokio::test]
async fn the_policy_change_log_pages_and_describes_each_change_against_the_one_before() {
    let rig = rig().await;
    for hours in 1..=60 {
        rig.collector
            .set_policy(
                json!({"antivirus": {"max_signature_age_hours": hours}}),
                "tester",
            )
            .await
            .unwrap();
    }
    let s = sign_in(&rig, Role::NetworkManager);
    let get = |path: String| {
        let app = rig.app.clone();
        let cookie = s.cookie.clone();
        async move {
            let resp = send(&app, "GET", &path, None, &[(SESSION_COOKIE, &cookie)], None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            String::from_utf8(body.to_vec()).unwrap()
        }
    };
    // 61 versions (the default and 60 changes): the newest 50 first, then the rest.
    let first = get("/policy/history".into()).await;
    assert!(first.contains("Version 61 "), "{first}");
    assert!(first.contains("Version 12 "), "{first}");
    assert!(!first.contains("Version 11 "), "{first}");
    let link = "/policy/history?cursor=v12";
    assert!(first.contains(link), "{first}");
    let older = get(link.into()).await;
    assert!(
        older.contains("Version 11 ") && older.contains("Version 1 "),
        "{older}"
    );
    assert!(older.contains("The first policy."), "{older}");
    assert!(!older.contains("Older changes"), "{older}");
    // Version 12 is described against version 11, though 11 is on the next page.
    let v12 = &first[first.find("Version 12 ").unwrap()..];
    assert!(v12.contains("<ul class=\"diff\">"), "{v12}");
}
