//! Dashboard users, their roles, and API tokens.
use super::*;

struct UserView {
    username: String,
    role: String,
    email: String,
    disabled: bool,
    state: Badge,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    chrome: Chrome,
    users: Vec<UserView>,
    roles: Vec<(&'static str, &'static str)>,
    message: Option<String>,
    secret: Option<String>,
    error: Option<String>,
}

async fn users_page(
    st: &AppState,
    desk: &Desk,
    status: StatusCode,
    message: Option<String>,
    secret: Option<String>,
    error: Option<String>,
) -> PageResult {
    let users = desk
        .users()
        .await?
        .into_iter()
        .map(|u| UserView {
            state: badge(if u.disabled {
                "disabled"
            } else if u.must_change_password {
                "one-time password"
            } else {
                "active"
            }),
            username: u.username,
            role: u.role,
            email: u.email,
            disabled: u.disabled,
        })
        .collect();
    Ok(render(
        status,
        &UsersPage {
            chrome: chrome(desk, st, "Users", "/users"),
            users,
            roles: Role::ALL.iter().map(|r| (r.as_str(), r.label())).collect(),
            message,
            secret,
            error,
        },
    ))
}

pub async fn users(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    users_page(&st, &desk, StatusCode::OK, None, None, None).await
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
}

fn parse_role(s: &str) -> Result<Role, DeskError> {
    Role::parse(s).ok_or_else(|| DeskError::Invalid(format!("{s:?} is not a role.")))
}

/// Renders the users page after an action: its message, or its error in the page.
async fn after_user_action(
    st: &AppState,
    desk: &Desk,
    result: Result<(String, Option<String>), DeskError>,
) -> PageResult {
    match result {
        Ok((message, secret)) => {
            users_page(st, desk, StatusCode::OK, Some(message), secret, None).await
        }
        Err(DeskError::Invalid(m)) | Err(DeskError::NotFound(m)) => {
            users_page(st, desk, StatusCode::BAD_REQUEST, None, None, Some(m)).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn add_user(
    State(st): State<AppState>,
    Extension(desk): D,
    Form(f): Form<UserForm>,
) -> PageResult {
    let username = f.username.trim().to_string();
    let result = async {
        let role = parse_role(&f.role)?;
        let p = desk.add_user(username.clone(), role).await?;
        Ok((
            format!(
                "Added {username} as {}. Their one-time password:",
                role.label()
            ),
            Some(p),
        ))
    }
    .await;
    after_user_action(&st, &desk, result).await
}

#[derive(Deserialize, Default)]
pub struct RoleForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    email: String,
}

pub async fn user_action(
    State(st): State<AppState>,
    Extension(desk): D,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<RoleForm>,
) -> PageResult {
    let result = async {
        match action.as_str() {
            "disable" => {
                desk.set_user_disabled(name.clone(), true).await?;
                Ok((format!("{name} is disabled and signed out."), None))
            }
            "enable" => {
                desk.set_user_disabled(name.clone(), false).await?;
                Ok((format!("{name} can sign in again."), None))
            }
            "reset" => {
                let p = desk.reset_password(name.clone()).await?;
                Ok((
                    format!("{name} is signed out. Their new one-time password:"),
                    Some(p),
                ))
            }
            "email" => {
                desk.set_user_email(name.clone(), f.email.clone()).await?;
                Ok((
                    if f.email.trim().is_empty() {
                        format!("{name} has no e-mail address now.")
                    } else {
                        format!("{name}'s e-mail address is {}.", f.email.trim())
                    },
                    None,
                ))
            }
            "role" => {
                let role = parse_role(&f.role)?;
                desk.change_role(name.clone(), role).await?;
                Ok((format!("{name} is now {}.", role.label()), None))
            }
            other => Err(DeskError::NotFound(format!(
                "There is no user action {other:?}."
            ))),
        }
    }
    .await;
    after_user_action(&st, &desk, result).await
}

#[derive(Deserialize)]
pub struct ApiTokenForm {
    #[serde(default)]
    label: String,
    #[serde(default)]
    role: String,
}

pub async fn create_api_token(
    State(st): State<AppState>,
    Extension(desk): D,
    Form(f): Form<ApiTokenForm>,
) -> PageResult {
    let result = async {
        let role = parse_role(&f.role)?;
        let t = desk
            .create_api_token(f.label.trim().to_string(), role)
            .await?;
        Ok((
            format!(
                "API token \"{}\" created with the {} role. Send it as `Authorization: Bearer <token>`:",
                f.label.trim(),
                role.label()
            ),
            Some(t),
        ))
    }
    .await;
    after_user_action(&st, &desk, result).await
}
