//! Signing in and out, and changing one's own password.
use super::*;

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage {
    csrf: String,
    next: String,
    username: String,
    error: Option<String>,
}

/// Only a path on this site may be a redirect target.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") {
        next
    } else {
        "/"
    }
}

fn cookie(name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax{age}"
    ))
    .expect("cookie values are URL-safe base64")
}

fn signin_form(status: StatusCode, next: &str, username: &str, error: Option<String>) -> Response {
    let csrf = random_secret("");
    let mut res = render(
        status,
        &SigninPage {
            csrf: csrf.clone(),
            next: safe_next(next).to_string(),
            username: username.to_string(),
            error,
        },
    );
    res.headers_mut()
        .append(header::SET_COOKIE, cookie(SIGNIN_COOKIE, &csrf, Some(3600)));
    res
}

#[derive(Deserialize, Default)]
pub struct NextParam {
    #[serde(default)]
    next: String,
}

pub async fn signin_page(desk: Option<D>, Query(p): Query<NextParam>) -> Response {
    if desk.is_some() {
        return Redirect::to(safe_next(&p.next)).into_response();
    }
    signin_form(StatusCode::OK, &p.next, "", None)
}

#[derive(Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

pub async fn signin(
    State(st): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    Form(f): Form<SigninForm>,
) -> Response {
    let from = client.map(|Extension(c)| c.0);
    let store = st.collector.store.clone();
    let (username, password) = (f.username.trim().to_string(), f.password);
    let c = st.collector.clone();
    let user = username.clone();
    let result = tokio::task::spawn_blocking(move || {
        accounts::sign_in(store.as_ref(), &c.sign_in_limiter, &user, &password, from)
    })
    .await
    .unwrap_or_else(|e| Err(SignInError::Store(crate::store::StoreError::engine("", e))));
    match result {
        Ok(session) => {
            let to = if session.must_change_password {
                "/account/password"
            } else {
                safe_next(&f.next)
            };
            let mut res = Redirect::to(to).into_response();
            let h = res.headers_mut();
            h.append(
                header::SET_COOKIE,
                cookie(
                    SESSION_COOKIE,
                    &session.cookie,
                    Some(accounts::SESSION_LIFETIME.num_seconds()),
                ),
            );
            h.append(header::SET_COOKIE, cookie(SIGNIN_COOKIE, "", Some(0)));
            res
        }
        Err(e @ SignInError::Wrong) => signin_form(
            StatusCode::UNAUTHORIZED,
            &f.next,
            &username,
            Some(e.to_string()),
        ),
        Err(e @ SignInError::Slowed(_)) => signin_form(
            StatusCode::TOO_MANY_REQUESTS,
            &f.next,
            &username,
            Some(e.to_string()),
        ),
        Err(SignInError::Store(e)) => {
            tracing::warn!(error = %e, "Sign-in could not read the store");
            signin_form(
                StatusCode::SERVICE_UNAVAILABLE,
                &f.next,
                &username,
                Some("The collector cannot read its store just now. Try again in a minute.".into()),
            )
        }
    }
}

pub async fn signout(Extension(desk): D) -> Response {
    if let Err(e) = desk.sign_out().await {
        tracing::warn!(error = %e, "Sign-out could not end the session in the store");
    }
    let mut res = Redirect::to("/signin").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, cookie(SESSION_COOKIE, "", Some(0)));
    res
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    chrome: Chrome,
    must_change: bool,
    error: Option<String>,
    done: bool,
}

pub async fn password_page(State(st): State<AppState>, Extension(desk): D) -> Response {
    render(
        StatusCode::OK,
        &PasswordPage {
            chrome: chrome(&desk, &st, "Change your password", ""),
            must_change: desk.actor.must_change_password,
            error: None,
            done: false,
        },
    )
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
}

pub async fn change_password(
    State(st): State<AppState>,
    Extension(desk): D,
    Form(f): Form<PasswordForm>,
) -> Response {
    let result = if f.new != f.confirm {
        Err(DeskError::Invalid("The two new passwords differ.".into()))
    } else {
        desk.change_own_password(f.current, f.new).await
    };
    match result {
        Ok(()) if desk.actor.must_change_password => Redirect::to("/").into_response(),
        Ok(()) => render(
            StatusCode::OK,
            &PasswordPage {
                chrome: chrome(&desk, &st, "Change your password", ""),
                must_change: false,
                error: None,
                done: true,
            },
        ),
        Err(DeskError::Invalid(m)) => render(
            StatusCode::BAD_REQUEST,
            &PasswordPage {
                chrome: chrome(&desk, &st, "Change your password", ""),
                must_change: desk.actor.must_change_password,
                error: Some(m),
                done: false,
            },
        ),
        Err(e) => PageError(e).into_response(),
    }
}
