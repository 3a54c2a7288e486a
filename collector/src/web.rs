//! The HTTPS JSON API under `/api/v1` (and, later, the dashboard), served over TLS from the web listener.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::service::{Collector, SetPolicyError, blocking};
use crate::store::{EventQuery, StoreError};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// A JSON error with an HTTP status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

pub fn router(collector: Arc<Collector>) -> Router {
    let api = Router::new()
        .route("/devices", get(devices))
        .route("/events", get(events))
        .route("/fleet", get(fleet))
        .route("/software", get(software))
        .route("/policy", get(get_policy).put(put_policy))
        .route("/policy/history", get(policy_history))
        .route_layer(middleware::from_fn_with_state(
            collector.clone(),
            require_admin,
        ));
    Router::new()
        .route("/", get(home))
        .route("/healthz", get(|| async { "ok" }))
        .nest("/api/v1", api)
        .with_state(collector)
}

async fn require_admin(
    State(c): State<Arc<Collector>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(token) if c.is_admin(token.trim()) => Ok(next.run(req).await),
        Some(_) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the API token is not valid".into(),
        )),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "an `Authorization: Bearer <token>` header is required".into(),
        )),
    }
}

async fn home() -> Html<&'static str> {
    Html(include_str!("home.html"))
}

async fn devices(State(c): State<Arc<Collector>>) -> ApiResult {
    let store = c.store.clone();
    let devices = blocking(move || store.devices()).await?;
    Ok(Json(json!({ "devices": devices })))
}

/// Fleet counts per state facet: how many devices report each status (antivirus current, stale, ...).
async fn fleet(State(c): State<Arc<Collector>>) -> ApiResult {
    let store = c.store.clone();
    let devices = blocking(move || store.devices()).await?;
    Ok(Json(crate::rules::fleet_counts(&devices)))
}

/// Installations per product across the fleet, for licence reconciliation.
async fn software(State(c): State<Arc<Collector>>) -> ApiResult {
    let products: Vec<Value> = c
        .software_installations()
        .into_iter()
        .map(|(source, name, devices)| json!({"source": source, "name": name, "devices": devices}))
        .collect();
    Ok(Json(json!({ "products": products })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    device: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn events(
    State(c): State<Arc<Collector>>,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(p) = params.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let since = p
        .since
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("`since` is not an RFC 3339 time: {e}"),
                    )
                })
        })
        .transpose()?;
    let query = EventQuery {
        device: p.device.filter(|d| !d.is_empty()),
        kind: p.kind.filter(|k| !k.is_empty()),
        since,
        limit: p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        cursor: p.cursor.filter(|c| !c.is_empty()),
    };
    let store = c.store.clone();
    let page = blocking(move || store.events(&query)).await?;
    Ok(Json(serde_json::to_value(page).expect("pages serialise")))
}

async fn get_policy(State(c): State<Arc<Collector>>) -> ApiResult {
    Ok(Json(
        serde_json::to_value(c.policy().as_ref()).expect("policies serialise"),
    ))
}

async fn policy_history(State(c): State<Arc<Collector>>) -> ApiResult {
    let store = c.store.clone();
    let history = blocking(move || store.policy_history()).await?;
    Ok(Json(json!({ "versions": history })))
}

async fn put_policy(State(c): State<Arc<Collector>>, body: Bytes) -> ApiResult {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let Some(doc) = v.get("policy").cloned() else {
        return Err(bad("the body must be {\"policy\": {...}}".into()));
    };
    match c.set_policy(doc, "administrator (API token)").await {
        Ok(pv) => Ok(Json(serde_json::to_value(pv).expect("policies serialise"))),
        Err(SetPolicyError::Invalid(e)) => Err(bad(e.to_string())),
        Err(SetPolicyError::Store(e)) => Err(e.into()),
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { debug!(error = %e, "Accept failed"); continue; }
            },
        };
        let acceptor = acceptor.clone();
        let svc = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        debug!(%remote, "Web TLS handshake failed");
                        return;
                    }
                };
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%remote, error = %e, "Web connection ended with an error") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
