//! Enrolment: tokens, and the devices that arrived with them.
use super::*;

struct CreatedToken {
    command: String,
    uses: u32,
    expires: String,
}

struct TokenView {
    label: String,
    uses: u32,
    max_uses: u32,
    created: String,
    expires: String,
    state: Badge,
}

#[derive(Template)]
#[template(path = "enrol.html")]
struct EnrolPage {
    chrome: Chrome,
    created: Option<CreatedToken>,
    error: Option<String>,
    tokens: Vec<TokenView>,
    arrivals: String,
}

#[derive(Template)]
#[template(path = "arrivals.html")]
struct ArrivalsFragment {
    rows: Vec<DeviceRow>,
}

fn arrivals_html(st: &AppState, desk: &Desk) -> Result<String, DeskError> {
    let now = Utc::now();
    let rows = desk
        .recent_enrolments(20)?
        .iter()
        .map(|d| DeviceRow::new(d, desk.is_online(d), tz(st), now))
        .collect();
    Ok(ArrivalsFragment { rows }.render().unwrap_or_default())
}

async fn enrol_page(
    st: &AppState,
    desk: &Desk,
    status: StatusCode,
    created: Option<CreatedToken>,
    error: Option<String>,
) -> PageResult {
    let tz = tz(st);
    let now = Utc::now();
    let tokens = desk
        .enrolment_tokens()
        .await?
        .into_iter()
        .take(50)
        .map(|t| TokenView {
            state: badge(if t.uses >= t.max_uses {
                "used_up"
            } else if t.expires_at <= now {
                "expired"
            } else {
                "current"
            }),
            label: t.label,
            uses: t.uses,
            max_uses: t.max_uses,
            created: timefmt::date_time(t.created_at, tz),
            expires: timefmt::date_time(t.expires_at, tz),
        })
        .collect();
    Ok(render(
        status,
        &EnrolPage {
            chrome: chrome(desk, st, "Enrolment", "/enrol"),
            arrivals: arrivals_html(st, desk)?,
            created,
            error,
            tokens,
        },
    ))
}

pub async fn enrol(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    enrol_page(&st, &desk, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    label: String,
    #[serde(default)]
    uses: String,
    #[serde(default)]
    days: String,
}

/// The host name the browser used, which laptops on the same network can usually reach too.
/// HTTP/2 carries it in the request's authority, HTTP/1.1 in `Host`.
fn request_host(uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    if let Some(host) = uri.host() {
        return host.to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    // Strip the web port; keep IPv6 brackets.
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => {
            h.to_string()
        }
        _ => host.to_string(),
    }
}

pub async fn create_token(
    State(st): State<AppState>,
    Extension(desk): D,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> PageResult {
    let parsed = (f.uses.trim().parse::<u32>(), f.days.trim().parse::<i64>());
    let (Ok(uses), Ok(days @ 1..=90)) = parsed else {
        return enrol_page(
            &st,
            &desk,
            StatusCode::BAD_REQUEST,
            None,
            Some("Give how many laptops (a number) and for how many days (1 to 90).".into()),
        )
        .await;
    };
    let expires_at = Utc::now() + chrono::Duration::days(days);
    match desk
        .create_enrolment_token(uses, expires_at, f.label.trim().to_string())
        .await
    {
        Ok(token) => {
            let command = format!(
                "caretaker-agent enroll --collector {}:{} --token {} --ca-fingerprint {}",
                request_host(&uri, &headers),
                st.options.grpc_port,
                token,
                desk.ca_fingerprint()
            );
            let created = CreatedToken {
                command,
                uses,
                expires: timefmt::date_time(expires_at, tz(&st)),
            };
            enrol_page(&st, &desk, StatusCode::OK, Some(created), None).await
        }
        Err(DeskError::Invalid(m)) => {
            enrol_page(&st, &desk, StatusCode::BAD_REQUEST, None, Some(m)).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn arrivals(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        arrivals_html(&st, &desk)?,
    )
        .into_response())
}
