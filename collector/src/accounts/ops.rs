//! The account commands of the command line (`user ...`, `settings`, `token create-api`): one operation type that goes over the admin socket or straight to the store, applied as the local administrator.

use chrono::Utc;

use super::{
    AccountError, Actor, add_user, audit, create_api_token, reset_password, set_disabled, set_email,
};
use crate::auth::Role;
use crate::store::Store;

/// An account operation from the command line, carried over the admin socket to a running
/// collector or applied to the store directly when none runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "account_op", rename_all = "snake_case")]
pub enum AccountOp {
    Add {
        username: String,
        role: String,
        password: Option<String>,
    },
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
    Reset {
        username: String,
    },
    List,
    SetEmail {
        username: String,
        email: String,
    },
    /// Record a digest of what is new for a DSL now, whatever the schedule.
    DigestNow {
        username: String,
    },
    /// Print the settings document.
    SettingsShow,
    /// Replace the settings document (checked strictly).
    SettingsSet {
        document: serde_json::Value,
    },
    CreateApiToken {
        label: String,
        role: String,
    },
}

/// What an account operation produced, for the command line to print.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AccountOutcome {
    /// One line saying what happened.
    pub message: String,
    /// A one-time password or token, shown once.
    pub secret: Option<String>,
    /// For `List`: (username, role, state).
    #[serde(default)]
    pub users: Vec<(String, String, String)>,
}

fn role_of(s: &str) -> Result<Role, AccountError> {
    Role::parse(s).ok_or_else(|| {
        AccountError::Invalid(format!(
            "{s:?} is not a role: use network_manager, technician, dsl or governor"
        ))
    })
}

/// Applies a command-line account operation as the local administrator.
pub fn apply_op(store: &dyn Store, op: &AccountOp) -> Result<AccountOutcome, AccountError> {
    let by = Actor::local_cli();
    let done = |message: String, secret: Option<String>| AccountOutcome {
        message,
        secret,
        users: vec![],
    };
    Ok(match op {
        AccountOp::Add {
            username,
            role,
            password,
        } => {
            let role = role_of(role)?;
            let otp = add_user(store, &by, username, role, password.as_deref())?;
            done(format!("Added {username} as {}.", role.label()), otp)
        }
        AccountOp::Disable { username } => {
            set_disabled(store, &by, username, true)?;
            done(
                format!("Disabled {username} and ended their sessions."),
                None,
            )
        }
        AccountOp::Enable { username } => {
            set_disabled(store, &by, username, false)?;
            done(format!("{username} can sign in again."), None)
        }
        AccountOp::Reset { username } => {
            let p = reset_password(store, &by, username)?;
            done(
                format!("Reset {username}'s password and ended their sessions."),
                Some(p),
            )
        }
        AccountOp::List => AccountOutcome {
            message: String::new(),
            secret: None,
            users: store
                .users()?
                .into_iter()
                .map(|u| {
                    let state = if u.disabled {
                        "disabled"
                    } else if u.must_change_password {
                        "one-time password"
                    } else {
                        "active"
                    };
                    (u.username, u.role, state.to_string())
                })
                .collect(),
        },
        AccountOp::SetEmail { username, email } => {
            set_email(store, &by, username, email)?;
            done(
                format!("{username}'s e-mail address is now {email:?}."),
                None,
            )
        }
        AccountOp::DigestNow { username } => {
            let settings = crate::settings::Settings::current(store)?;
            let n = crate::digest::digest_now(
                &|id| crate::digest::store_hostname(store, id),
                store,
                username,
                &settings,
                crate::timefmt::DEFAULT_TZ,
                Utc::now(),
            )?;
            audit(
                store,
                &by,
                "digest_requested",
                username,
                &format!("{n} recorded"),
            );
            done(
                match n {
                    0 => format!(
                        "Nothing to send to {username}: nothing new, or the account is not a DSL with an e-mail address (and mail set up) or a webhook."
                    ),
                    n => format!(
                        "Recorded {n} digest(s) for {username}; the running collector sends them within seconds."
                    ),
                },
                None,
            )
        }
        AccountOp::SettingsShow => {
            let doc = store
                .current_settings()?
                .map(|v| v.settings)
                .unwrap_or_else(|| {
                    serde_json::to_value(crate::settings::Settings::default())
                        .expect("settings serialise")
                });
            done(
                serde_json::to_string_pretty(&doc).expect("settings serialise"),
                None,
            )
        }
        AccountOp::SettingsSet { document } => {
            let parsed = crate::settings::Settings::parse_strict(document)
                .map_err(|e| AccountError::Invalid(e.to_string()))?;
            let v = store.put_settings(
                serde_json::to_value(&parsed).expect("settings serialise"),
                &by.name,
                Utc::now(),
            )?;
            audit(
                store,
                &by,
                "settings_changed",
                &format!("version {}", v.version),
                "",
            );
            done(format!("Settings saved as version {}.", v.version), None)
        }
        AccountOp::CreateApiToken { label, role } => {
            let role = role_of(role)?;
            let t = create_api_token(store, &by, label, role)?;
            done(
                format!(
                    "API token \"{label}\" created with the {} role.",
                    role.label()
                ),
                Some(t),
            )
        }
    })
}
