//! The web listener: the dashboard's pages and the JSON API under `/api/v1`, over TLS, every route behind one access table.
//!
//! `routes()` is the whole table: each route's method, path and the access it needs. The
//! router is built from it, so a route cannot exist without a rule, and the route × role test
//! walks the same table. `guard` runs before every handler: it finds who is asking (session
//! cookie or bearer token), applies the rule, checks the anti-forgery token on every form post,
//! and hands the handler a `Desk` for that person.

mod api;
mod guard;
mod holds;
mod pages;
mod policy_form;
mod report_pages;
mod settings_form;
mod settings_pages;
mod subject_pages;
mod uninstall;
mod views;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use axum::middleware;
use axum::routing::{MethodRouter, delete, get, post, put};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::auth::Permission::{self, *};
use crate::service::Collector;

pub use guard::{CSRF_FIELD, SESSION_COOKIE, SIGNIN_COOKIE};

/// What a route needs from whoever asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not (sign-in page, assets, health).
    Public,
    /// Anyone signed in, whatever the role (their own account, sign-out).
    SignedIn,
    /// A role with any of these permissions. The desk checks again, more finely.
    AnyOf(&'static [Permission]),
}

/// One row of the access table.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// Settings of the web side.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Where agents reach the collector's gRPC port, for the enrolment command shown.
    pub grpc_port: u16,
    pub time_zone: chrono_tz::Tz,
}

impl Default for WebOptions {
    fn default() -> Self {
        Self {
            grpc_port: 7443,
            time_zone: crate::timefmt::DEFAULT_TZ,
        }
    }
}

/// The state every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub collector: Arc<Collector>,
    pub options: Arc<WebOptions>,
    /// Wrong API bearer tokens per address (the same limits as enrolment tokens).
    pub api_limiter: Arc<crate::tokens::FailureLimiter>,
}

/// `ok`, or 503 with the reason while the collector cannot store events (its store closed
/// after a failed write, or its disk below the free-space floor).
async fn healthz(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match s.collector.intake_refusal() {
        None => "ok".into_response(),
        Some(why) => (http::StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// The client's address, attached to each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

const FLEET: &[Permission] = &[ViewFleet];
const DEVICES: &[Permission] = &[ViewDevices];
/// Device pages: the DSL may open those a safeguarding incident concerns (the desk decides).
const DEVICE_PAGE: &[Permission] = &[ViewDevices, Safeguarding];
const EVENTS: &[Permission] = &[ViewTechnicalEvents, Safeguarding];
const INCIDENTS: &[Permission] = &[Safeguarding, TechnicalIncidents];
const SAFEGUARDING: &[Permission] = &[Safeguarding];
const POLICY: &[Permission] = &[ViewPolicy];
const EDIT_POLICY: &[Permission] = &[EditPolicy];
const ENROL: &[Permission] = &[Enrol];
const REVOKE: &[Permission] = &[RevokeDevice];
const USERS: &[Permission] = &[ManageUsers];
const AUDIT: &[Permission] = &[ViewAudit];
const REPORT: &[Permission] = &[GovernorsReport];
const SOFTWARE: &[Permission] = &[ViewSoftware];
const SETTINGS: &[Permission] = &[ManageSettings];
/// Prometheus scrapes with a technician's (or network manager's) API token.
const METRICS: &[Permission] = &[ViewMetrics];
const VIEW_HOLDS: &[Permission] = &[ViewHolds];
const MANAGE_HOLDS: &[Permission] = &[ManageHolds];
/// Subject access: the network manager and the DSL export; only the network manager erases.
const SUBJECT: &[Permission] = &[SubjectAccess];
const ERASE: &[Permission] = &[EraseSubject];
/// The network manager sees every digest; a DSL their own (the desk filters).
const DIGESTS: &[Permission] = &[ManageSettings, Safeguarding];

type Handler = MethodRouter<AppState>;

/// The access table and each route's handler: one line a route, kept as a table.
#[rustfmt::skip]
fn table() -> Vec<(RouteRule, Handler)> {
    use Access::*;
    let r = |method: Method, path: &'static str, access: Access, h: Handler| {
        (
            RouteRule {
                method,
                path,
                access,
            },
            h,
        )
    };
    vec![
        r(Method::GET, "/", SignedIn, get(pages::home)),
        r(Method::GET, "/healthz", Public, get(healthz)),
        r(Method::GET, "/static/app.css", Public, get(pages::css)),
        r(Method::GET, "/static/app.js", Public, get(pages::js)),
        r(Method::GET, "/signin", Public, get(pages::signin_page)),
        r(Method::POST, "/signin", Public, post(pages::signin)),
        r(Method::POST, "/signout", SignedIn, post(pages::signout)),
        r(Method::GET, "/account/password", SignedIn, get(pages::password_page)),
        r(Method::POST, "/account/password", SignedIn, post(pages::change_password)),
        r(Method::GET, "/fleet", AnyOf(FLEET), get(pages::fleet)),
        r(Method::GET, "/devices", AnyOf(DEVICES), get(pages::devices)),
        r(Method::GET, "/devices/{id}", AnyOf(DEVICE_PAGE), get(pages::device)),
        r(Method::POST, "/devices/{id}/revoke", AnyOf(REVOKE), post(pages::revoke)),
        r(Method::GET, "/devices/{id}/uninstall-code", AnyOf(REVOKE), get(uninstall::page)),
        r(Method::GET, "/events", AnyOf(EVENTS), get(pages::events)),
        r(Method::GET, "/incidents", AnyOf(INCIDENTS), get(pages::incidents)),
        r(Method::GET, "/incidents/{id}", AnyOf(INCIDENTS), get(pages::incident)),
        r(Method::POST, "/incidents/{id}/entries", AnyOf(INCIDENTS), post(pages::add_entry)),
        r(Method::GET, "/incidents/{id}/record.csv", AnyOf(INCIDENTS), get(pages::incident_csv)),
        r(Method::GET, "/pupils/{user}", AnyOf(SAFEGUARDING), get(pages::pupil)),
        r(Method::GET, "/policy", AnyOf(POLICY), get(pages::policy)),
        r(Method::POST, "/policy/{section}", AnyOf(EDIT_POLICY), post(pages::set_policy_section)),
        r(Method::GET, "/policy/history", AnyOf(POLICY), get(pages::policy_history)),
        r(Method::GET, "/enrol", AnyOf(ENROL), get(pages::enrol)),
        r(Method::POST, "/enrol", AnyOf(ENROL), post(pages::create_token)),
        r(Method::GET, "/enrol/arrivals", AnyOf(ENROL), get(pages::arrivals)),
        r(Method::GET, "/users", AnyOf(USERS), get(pages::users)),
        r(Method::POST, "/users", AnyOf(USERS), post(pages::add_user)),
        r(Method::POST, "/users/{name}/{action}", AnyOf(USERS), post(pages::user_action)),
        r(Method::POST, "/api-tokens", AnyOf(USERS), post(pages::create_api_token)),
        r(Method::GET, "/audit", AnyOf(AUDIT), get(pages::audit)),
        r(Method::GET, "/subject", AnyOf(SUBJECT), get(subject_pages::subject)),
        r(Method::GET, "/subject/{user}/export.json", AnyOf(SUBJECT), get(subject_pages::export_json)),
        r(Method::GET, "/subject/{user}/export.html", AnyOf(SUBJECT), get(subject_pages::export_html)),
        r(Method::POST, "/subject/{user}/erase", AnyOf(ERASE), post(subject_pages::erase)),
        r(Method::GET, "/settings", AnyOf(SETTINGS), get(settings_pages::settings)),
        r(Method::POST, "/settings/{section}", AnyOf(SETTINGS), post(settings_pages::set_settings_section)),
        r(Method::GET, "/digests", AnyOf(DIGESTS), get(settings_pages::digests)),
        r(Method::GET, "/report", AnyOf(REPORT), get(report_pages::report)),
        r(Method::GET, "/report/download", AnyOf(REPORT), get(report_pages::download)),
        r(Method::GET, "/static/report.css", Public, get(report_pages::css)),
        r(Method::GET, "/holds", AnyOf(VIEW_HOLDS), get(holds::page)),
        r(Method::POST, "/holds", AnyOf(MANAGE_HOLDS), post(holds::place_form)),
        r(Method::POST, "/holds/release", AnyOf(MANAGE_HOLDS), post(holds::release_form)),
        r(Method::GET, "/api/v1/devices", AnyOf(DEVICES), get(api::devices)),
        r(Method::GET, "/api/v1/events", AnyOf(EVENTS), get(api::events)),
        r(Method::GET, "/api/v1/fleet", AnyOf(FLEET), get(api::fleet)),
        r(Method::GET, "/api/v1/software", AnyOf(SOFTWARE), get(api::software)),
        r(Method::GET, "/api/v1/policy", AnyOf(POLICY), get(api::get_policy)),
        r(Method::PUT, "/api/v1/policy", AnyOf(EDIT_POLICY), put(api::put_policy)),
        r(Method::GET, "/api/v1/policy/history", AnyOf(POLICY), get(api::policy_history)),
        r(Method::GET, "/api/v1/audit", AnyOf(AUDIT), get(api::audit)),
        r(Method::GET, "/api/v1/subject/{user}", AnyOf(SUBJECT), get(subject_pages::api_export)),
        r(Method::POST, "/api/v1/subject/{user}/erase", AnyOf(ERASE), post(subject_pages::api_erase)),
        r(Method::GET, "/api/v1/metrics", AnyOf(METRICS), get(metrics)),
        r(Method::GET, "/api/v1/digests", AnyOf(DIGESTS), get(api::digests)),
        r(Method::GET, "/api/v1/incidents", AnyOf(INCIDENTS), get(api::incidents)),
        r(Method::GET, "/api/v1/incidents/{id}", AnyOf(INCIDENTS), get(api::incident)),
        r(Method::POST, "/api/v1/incidents/{id}/entries", AnyOf(INCIDENTS), post(api::add_entry)),
        r(Method::GET, "/api/v1/holds", AnyOf(VIEW_HOLDS), get(holds::list)),
        r(Method::POST, "/api/v1/holds", AnyOf(MANAGE_HOLDS), post(holds::place)),
        r(Method::DELETE, "/api/v1/holds/{target}", AnyOf(MANAGE_HOLDS), delete(holds::release)),
    ]
}

/// The access table alone (for tests and documentation).
pub fn routes() -> Vec<RouteRule> {
    table().into_iter().map(|(r, _)| r).collect()
}

/// The dashboard and API router.
pub fn router(collector: Arc<Collector>, options: WebOptions) -> Router {
    let state = AppState {
        collector,
        options: Arc::new(options),
        api_limiter: Default::default(),
    };
    let mut router = Router::new();
    for (rule, handler) in table() {
        let path = rule.path;
        let guarded = handler.route_layer(middleware::from_fn_with_state(
            (state.clone(), rule),
            guard::guard,
        ));
        router = router.route(path, guarded);
    }
    router
        .fallback(pages::not_found)
        .layer(middleware::map_response(security_headers))
        .layer(middleware::from_fn(guard::hold_unread_body))
        .with_state(state)
}

/// The Prometheus metrics (`crate::metrics`), in the OpenMetrics text format.
async fn metrics() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::metrics().render(),
    )
        .into_response()
}

/// Headers on every response: no framing, no inline script, no sniffing, no caching of pages
/// that carry names.
async fn security_headers(mut res: axum::response::Response) -> axum::response::Response {
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    res
}

/// Serves `router` over TLS on `listener` until `shutdown`, within `gate`'s caps and timeouts.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    gate: Arc<crate::listen::Gate>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
) {
    use crate::listen::{Guarded, accept_loop, handshake};
    let acceptor = TlsAcceptor::from(tls);
    let timeouts = gate.limits().timeouts;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeouts.keepalive_interval())
        .keep_alive_timeout(timeouts.keepalive_timeout())
        .max_concurrent_streams(100);
    let builder = Arc::new(builder);
    accept_loop(listener, gate, shutdown.clone(), move |tcp, remote, slot| {
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let Ok(tls) = handshake(&slot, remote, acceptor.accept(tcp)).await else {
                return;
            };
            // A connection proves itself by being answered once; until then it counts
            // against its address and is the first closed when the listener is full.
            let proof = slot.clone();
            let svc = tower::ServiceBuilder::new()
                .map_response(move |res: axum::response::Response| {
                    proof.prove();
                    res
                })
                .layer(axum::Extension(ClientAddr(remote.ip())))
                .service(router);
            let svc = TowerToHyperService::new(svc);
            let conn =
                builder.serve_connection_with_upgrades(TokioIo::new(Guarded::new(tls, slot)), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%remote, error = %e, "Web connection ended with an error") },
                _ = shutdown.cancelled() => {}
            }
        });
    })
    .await;
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod test_rig;
