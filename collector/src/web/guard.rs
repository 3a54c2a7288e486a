//! The check before every handler: who is asking, may they, and did this form come from our own page.
//!
//! Pages are signed in by a session cookie only, the API by a bearer token only, so a page
//! can never be driven by a token and the API never by a cookie another site could make a
//! browser send. Every non-GET request that a cookie authenticates must carry the session's
//! anti-forgery token in its form body; the sign-in form carries a double-submit token.
//! Wrong bearer tokens are counted per address like wrong enrolment tokens: after five in a
//! minute the address gets 429 with `Retry-After` until the minute is out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::{Access, AppState, ClientAddr, RouteRule, views};
use crate::accounts::Actor;
use crate::desk::{self, Desk};
use crate::metrics::AuthKind;
use crate::security;

/// The session cookie. `__Host-` makes browsers insist on Secure, Path=/ and no Domain.
pub const SESSION_COOKIE: &str = "__Host-caretaker";
/// The sign-in form's double-submit cookie.
pub const SIGNIN_COOKIE: &str = "__Host-caretaker-signin";
/// The form field every form carries.
pub const CSRF_FIELD: &str = "_csrf";

/// Largest form body accepted (policy lists are the biggest).
const MAX_FORM: usize = 256 * 1024;

pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

fn api_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// Reads a form body, returning the bytes (to hand on) and its anti-forgery field.
async fn form_token(req: Request) -> Result<(Request, Option<String>), Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| {
        views::error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too much to save at once",
            "The form was larger than the collector accepts. Shorten the lists and try again.",
        )
    })?;
    let token = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned());
    Ok((Request::from_parts(parts, Body::from(bytes)), token))
}

fn same_secret(a: &str, b: &str) -> bool {
    // Compare hashes so the time taken says nothing about how much matched.
    crate::tokens::hash(a) == crate::tokens::hash(b)
}

fn forgery_refused() -> Response {
    views::error_page(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The page was open too long, or came from somewhere else. Go back, reload the page and try again.",
    )
}

/// The middleware in front of every route.
pub async fn guard(
    State((state, rule)): State<(AppState, RouteRule)>,
    mut req: Request,
    next: Next,
) -> Response {
    let is_api = rule.path.starts_with("/api/");
    let from = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let (cookie, token) = if is_api {
        (None, bearer(req.headers()))
    } else {
        (cookie_value(req.headers(), SESSION_COOKIE), None)
    };
    let had_credentials = cookie.is_some() || token.is_some();
    let guessing = is_api && token.is_some();
    // Checked before the token is, so a locked-out address learns nothing, right or wrong.
    if guessing
        && let Some(ip) = from
        && let Err(wait) = state.api_limiter.check(ip, Instant::now())
    {
        security::auth_failed(
            AuthKind::ApiLockedOut,
            from,
            "API request refused: too many wrong tokens from this address",
        );
        return locked_out(wait);
    }
    let actor = match desk::identify(&state.collector, cookie, token, from).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "Could not check who is asking");
            return if is_api {
                api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
            } else {
                views::error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The collector cannot read its store",
                    "Try again in a minute; if it persists, the network manager should check the collector's log.",
                )
            };
        }
    };
    let unsafe_method = req.method() != Method::GET && req.method() != Method::HEAD;
    if rule.access == Access::Public {
        if unsafe_method {
            let signin_cookie = cookie_value(req.headers(), SIGNIN_COOKIE);
            let (r, field) = match form_token(req).await {
                Ok(x) => x,
                Err(resp) => return resp,
            };
            req = r;
            match (signin_cookie, field) {
                (Some(c), Some(f)) if same_secret(&c, &f) => {}
                _ => return forgery_refused(),
            }
        }
        if let Some(actor) = actor {
            req.extensions_mut()
                .insert(Arc::new(Desk::new(state.collector.clone(), actor)));
        }
        return next.run(req).await;
    }
    if guessing && actor.is_none() {
        if let Some(ip) = from {
            state.api_limiter.record_failure(ip, Instant::now());
        }
        security::auth_failed(
            AuthKind::ApiToken,
            from,
            "API request with a bearer token that is not valid",
        );
    }
    let Some(actor) = actor else {
        if is_api {
            return api_error(
                StatusCode::UNAUTHORIZED,
                if had_credentials {
                    "the API token is not valid"
                } else {
                    "an `Authorization: Bearer <token>` header is required"
                },
            );
        }
        let next_url = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let target = if req.method() == Method::GET {
            format!("/signin?next={}", urlencode(&next_url))
        } else {
            "/signin".to_string()
        };
        return Redirect::to(&target).into_response();
    };
    if actor.must_change_password
        && !matches!(
            rule.path,
            "/account/password" | "/signout" | "/static/app.css"
        )
    {
        return Redirect::to("/account/password").into_response();
    }
    if let Access::AnyOf(perms) = rule.access
        && !perms.iter().any(|p| actor.role.may(*p))
    {
        return forbidden(&actor, is_api);
    }
    if unsafe_method && !is_api {
        let (r, field) = match form_token(req).await {
            Ok(x) => x,
            Err(resp) => return resp,
        };
        req = r;
        let expected = actor.session.as_ref().map(|(_, csrf)| csrf.as_str());
        match (expected, field) {
            (Some(e), Some(f)) if same_secret(e, &f) => {}
            _ => return forgery_refused(),
        }
    }
    req.extensions_mut()
        .insert(Arc::new(Desk::new(state.collector.clone(), actor)));
    next.run(req).await
}

/// 429 with `Retry-After`: the address tried too many wrong tokens.
fn locked_out(wait: Duration) -> Response {
    let secs = wait.as_secs().max(1);
    let mut res = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("too many wrong API tokens from this address; try again in {secs} s"),
    );
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    res
}

pub fn forbidden(actor: &Actor, is_api: bool) -> Response {
    let message = format!(
        "Your role ({}) does not include this. Ask the network manager if you need it.",
        actor.role.label()
    );
    if is_api {
        api_error(StatusCode::FORBIDDEN, &message)
    } else {
        views::error_page(StatusCode::FORBIDDEN, "Not part of your role", &message)
    }
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A request body that, dropped unread (a handler refused it as too large), hands itself to
/// [`hold_unread_body`] instead of going away at once.
struct KeepOnDrop {
    inner: Option<Body>,
    keep: Option<tokio::sync::oneshot::Sender<Body>>,
}

impl hyper::body::Body for KeepOnDrop {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

impl Drop for KeepOnDrop {
    fn drop(&mut self) {
        if let (Some(body), Some(keep)) = (self.inner.take(), self.keep.take())
            && !hyper::body::Body::is_end_stream(&body)
        {
            let _ = keep.send(body);
        }
    }
}

/// Most of an unread request body read and thrown away so that its client sees the answer.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
/// The longest spent doing so.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads to its end a request body the handler left unread (it refused it as too large), up to
/// [`DRAIN_LIMIT`] and [`DRAIN_TIME`], before the response goes out. Over HTTP/2, dropping it
/// resets the stream (CANCEL) before the response leaves, and clients still sending (curl with
/// 50 MB) report the reset, not the 413. Past the limits the body is held until the response
/// has been sent, so the stream at least ends as RFC 9113 section 8.1 says: the response, then
/// `RST_STREAM(NO_ERROR)`.
pub async fn hold_unread_body(req: Request, next: Next) -> Response {
    use futures::StreamExt;
    let (parts, body) = req.into_parts();
    let (keep, kept) = tokio::sync::oneshot::channel();
    let body = Body::new(KeepOnDrop {
        inner: Some(body),
        keep: Some(keep),
    });
    let res = next.run(Request::from_parts(parts, body)).await;
    let mut kept = kept;
    let Ok(unread) = kept.try_recv() else {
        return res;
    };
    let mut unread = unread.into_data_stream();
    let drain = async {
        let mut drained = 0;
        while drained < DRAIN_LIMIT {
            match unread.next().await {
                Some(Ok(chunk)) => drained += chunk.len(),
                _ => return true,
            }
        }
        false
    };
    if let Ok(true) = tokio::time::timeout(DRAIN_TIME, drain).await {
        return res;
    }
    let (parts, body) = res.into_parts();
    // Dropped with the response body, once hyper has sent its end.
    let body = body.into_data_stream().map(move |chunk| {
        let _ = &unread;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}
