//! Test seeding the web modules share: a collector with accounts and a pupil's refused stick, a signed-in browser, and form fields.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use serde_json::json;
use tower::ServiceExt;

use crate::accounts::{self, Actor};
use crate::auth::{Role, SignInLimiter};
use crate::ca::SchoolCa;
use crate::service::{Collector, IncomingEvent};
use crate::store::{Category, IncidentQuery, RedbStore, Store, test_device};

/// Every account the rig makes has this password.
pub(crate) const PASSWORD: &str = "a long enough password";

/// A collector on a temporary store with an account per role in `roles` (named as the role)
/// and laptop-1, where pupil1's stick was refused: a safeguarding incident, whose id is
/// returned. The folder holds the store.
pub(crate) async fn refused_stick(roles: &[Role]) -> (Arc<Collector>, u64, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
    let (ca, _) = SchoolCa::generate("Test School").unwrap();
    let c = Arc::new(Collector::new(store.clone(), ca, Default::default(), "admin-token").unwrap());
    for &role in roles {
        accounts::add_user(
            store.as_ref(),
            &Actor::local_cli(),
            role.as_str(),
            role,
            Some(PASSWORD),
        )
        .unwrap();
    }
    store.insert_device(&test_device("laptop-1")).unwrap();
    let details = json!({"mass_storage": true, "account": "pupil", "decision": "block",
                         "antivirus_current": true, "serial": "SN1", "product": "Cruzer"});
    let batch = c
        .prepare_batch(
            "laptop-1",
            vec![IncomingEvent {
                seq: 1,
                occurred_at: Some(chrono::Utc::now()),
                user: "pupil1".into(),
                kind: "usb.inserted".into(),
                details: details.as_object().unwrap().clone(),
            }],
            None,
        )
        .unwrap();
    c.commit(batch).await.unwrap();
    let (incidents, _) = store
        .incidents(&IncidentQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(incidents.len(), 1, "the pupil's stick opened one incident");
    assert_eq!(incidents[0].category, Category::Safeguarding);
    (c, incidents[0].id, dir)
}

/// Sends a request as `role`'s signed-in browser (a form post carries the session's
/// anti-forgery token); returns the status, headers and body.
pub(crate) async fn browse(
    app: &axum::Router,
    c: &Collector,
    role: Role,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let s = accounts::sign_in(
        c.store.as_ref(),
        &SignInLimiter::default(),
        role.as_str(),
        PASSWORD,
        None,
    )
    .unwrap();
    let req = Request::builder().method(method).uri(path).header(
        header::COOKIE,
        format!("{}={}", super::SESSION_COOKIE, s.cookie),
    );
    let req = match form {
        Some(f) => req
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("_csrf={}&{f}", s.record.csrf))),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A posted form's fields, as the form handlers receive them.
pub(crate) fn fields(pairs: &[(&str, &str)]) -> super::policy_form::Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
