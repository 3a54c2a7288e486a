//! Dashboard accounts and sign-in: add, disable, reset and re-role users; sign in and out; resolve a cookie or API token to the person asking.
//!
//! Store-level operations, shared by the dashboard (through `desk.rs`), the admin socket and
//! the offline CLI, so `user add` works whether or not `serve` runs.

use std::net::IpAddr;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};

use crate::auth::{self, Role, SignInLimiter};
use crate::datadir::random_secret;
use crate::store::{ApiTokenRecord, AuditEntry, SessionRecord, Store, StoreError, UserRecord};
use crate::tokens;

mod ops;
pub use ops::{AccountOp, AccountOutcome, apply_op};

/// A session lasts this long from sign-in, however active.
pub const SESSION_LIFETIME: Duration = Duration::hours(10);
/// ...and ends after this long without a request.
pub const SESSION_IDLE: Duration = Duration::hours(2);

/// The person (or API token) behind a request.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub role: Role,
    pub address: Option<IpAddr>,
    /// Present when signed in with a browser: the session's hash and its anti-forgery token.
    pub session: Option<(String, String)>,
    /// A one-time password is in use: only the change-password page is open.
    pub must_change_password: bool,
}

impl Actor {
    /// The command line on this host (root or the collector's user).
    pub fn local_cli() -> Self {
        Self {
            name: "caretaker-collector (command line)".into(),
            role: Role::NetworkManager,
            address: None,
            session: None,
            must_change_password: false,
        }
    }
}

/// Why an account operation was refused, in words for the person.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(String),
    #[error("there is no account called {0:?}")]
    NoSuchUser(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a sign-in failed. The wording never says whether the account exists.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("The username or password is not right.")]
    Wrong,
    #[error("Too many failed sign-ins. Wait {0} seconds, then try again.")]
    Slowed(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A valid username: what a school's directory would use.
fn check_username(name: &str) -> Result<(), AccountError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AccountError::Invalid(format!(
            "{name:?} is not a usable username: use 1-64 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

pub fn audit(store: &dyn Store, actor: &Actor, action: &str, target: &str, detail: &str) {
    let entry = AuditEntry {
        id: 0,
        at: Utc::now(),
        actor: actor.name.clone(),
        action: action.into(),
        target: target.into(),
        detail: detail.into(),
        address: actor.address.map(|a| a.to_string()).unwrap_or_default(),
    };
    if let Err(e) = store.audit(&entry) {
        // The audit log is part of the record: an operator must know it is failing.
        tracing::error!(error = %e, %action, "Audit entry not written");
    }
}

/// Creates an account. With `password` `None` a one-time password is made (and returned),
/// which must be changed at first sign-in.
pub fn add_user(
    store: &dyn Store,
    by: &Actor,
    username: &str,
    role: Role,
    password: Option<&str>,
) -> Result<Option<String>, AccountError> {
    check_username(username)?;
    let (password, one_time) = match password {
        Some(p) => {
            if let Some(why) = auth::password_problem(p, username) {
                return Err(AccountError::Invalid(why));
            }
            (p.to_string(), None)
        }
        None => {
            let p = auth::one_time_password();
            (p.clone(), Some(p))
        }
    };
    let now = Utc::now();
    store
        .insert_user(&UserRecord {
            username: username.into(),
            role: role.as_str().into(),
            password_hash: auth::hash_password(&password),
            disabled: false,
            email: String::new(),
            must_change_password: one_time.is_some(),
            created_at: now,
            created_by: by.name.clone(),
            updated_at: now,
        })
        .map_err(|e| match e {
            StoreError::Conflict(m) => AccountError::Invalid(m),
            e => e.into(),
        })?;
    audit(store, by, "user_added", username, role.label());
    Ok(one_time)
}

fn existing(store: &dyn Store, username: &str) -> Result<UserRecord, AccountError> {
    store
        .user(username)?
        .ok_or_else(|| AccountError::NoSuchUser(username.into()))
}

/// Disables or re-enables an account; disabling ends its sessions at once.
pub fn set_disabled(
    store: &dyn Store,
    by: &Actor,
    username: &str,
    disabled: bool,
) -> Result<(), AccountError> {
    let mut u = existing(store, username)?;
    if disabled && by.name == username {
        return Err(AccountError::Invalid(
            "You cannot disable your own account.".into(),
        ));
    }
    u.disabled = disabled;
    u.updated_at = Utc::now();
    store.update_user(&u)?;
    if disabled {
        store.delete_sessions_of(username)?;
    }
    audit(
        store,
        by,
        if disabled {
            "user_disabled"
        } else {
            "user_enabled"
        },
        username,
        "",
    );
    Ok(())
}

/// Gives an account a new one-time password and ends its sessions; returns the password.
pub fn reset_password(
    store: &dyn Store,
    by: &Actor,
    username: &str,
) -> Result<String, AccountError> {
    let mut u = existing(store, username)?;
    let p = auth::one_time_password();
    u.password_hash = auth::hash_password(&p);
    u.must_change_password = true;
    u.updated_at = Utc::now();
    store.update_user(&u)?;
    store.delete_sessions_of(username)?;
    audit(store, by, "password_reset", username, "");
    Ok(p)
}

/// Sets where an account's digests and reports are e-mailed (empty: nowhere).
pub fn set_email(
    store: &dyn Store,
    by: &Actor,
    username: &str,
    email: &str,
) -> Result<(), AccountError> {
    let email = email.trim();
    let plausible = email.is_empty()
        || (email.len() <= 254
            && email.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.contains('.') && !email.contains(char::is_whitespace)
            }));
    if !plausible {
        return Err(AccountError::Invalid(format!(
            "{email:?} is not an e-mail address."
        )));
    }
    let mut u = existing(store, username)?;
    u.email = email.to_string();
    u.updated_at = Utc::now();
    store.update_user(&u)?;
    audit(store, by, "email_changed", username, email);
    Ok(())
}

pub fn change_role(
    store: &dyn Store,
    by: &Actor,
    username: &str,
    role: Role,
) -> Result<(), AccountError> {
    let mut u = existing(store, username)?;
    if by.name == username && role != Role::NetworkManager {
        return Err(AccountError::Invalid(
            "You cannot take the network manager role from yourself; ask another network manager."
                .into(),
        ));
    }
    let before = u.role.clone();
    u.role = role.as_str().into();
    u.updated_at = Utc::now();
    store.update_user(&u)?;
    audit(
        store,
        by,
        "role_changed",
        username,
        &format!("{before} → {}", role.as_str()),
    );
    Ok(())
}

/// The signed-in person's own password change (also ends a one-time password).
pub fn change_own_password(
    store: &dyn Store,
    actor: &Actor,
    current: &str,
    new: &str,
) -> Result<(), AccountError> {
    let mut u = existing(store, &actor.name)?;
    if !auth::verify_password(current, &u.password_hash) {
        return Err(AccountError::Invalid(
            "The current password is not right.".into(),
        ));
    }
    if let Some(why) = auth::password_problem(new, &u.username) {
        return Err(AccountError::Invalid(why));
    }
    if new == current {
        return Err(AccountError::Invalid(
            "Choose a password different from the current one.".into(),
        ));
    }
    u.password_hash = auth::hash_password(new);
    u.must_change_password = false;
    u.updated_at = Utc::now();
    store.update_user(&u)?;
    audit(store, actor, "password_changed", &actor.name, "");
    Ok(())
}

/// Creates an API token with a role; returns the token (shown once).
pub fn create_api_token(
    store: &dyn Store,
    by: &Actor,
    label: &str,
    role: Role,
) -> Result<String, AccountError> {
    if label.trim().is_empty() {
        return Err(AccountError::Invalid(
            "Give the token a label that says who or what uses it.".into(),
        ));
    }
    let token = random_secret("cta_");
    store.insert_api_token(&ApiTokenRecord {
        hash: tokens::hash(&token),
        label: label.into(),
        role: role.as_str().into(),
        created_at: Utc::now(),
        created_by: by.name.clone(),
        revoked_at: None,
    })?;
    audit(store, by, "api_token_created", label, role.label());
    Ok(token)
}

/// A new browser session: the cookie value and its record.
#[derive(Debug)]
pub struct NewSession {
    pub cookie: String,
    pub record: SessionRecord,
    pub must_change_password: bool,
}

/// Checks a username and password (slowed per account and address) and opens a session.
pub fn sign_in(
    store: &dyn Store,
    limiter: &SignInLimiter,
    username: &str,
    password: &str,
    from: Option<IpAddr>,
) -> Result<NewSession, SignInError> {
    let now_i = Instant::now();
    let who = Actor {
        name: username.chars().take(64).collect(),
        role: Role::Governor,
        address: from,
        session: None,
        must_change_password: false,
    };
    if let Err(wait) = limiter.check(username, from, now_i) {
        audit(
            store,
            &who,
            "sign_in_refused",
            username,
            "too many failures",
        );
        crate::security::auth_failed(
            crate::metrics::AuthKind::SignIn,
            from,
            "Dashboard sign-in refused: too many failures for this account or address",
        );
        return Err(SignInError::Slowed(wait.as_secs().max(1)));
    }
    let user = store.user(username)?;
    let ok = match &user {
        Some(u) => auth::verify_password(password, &u.password_hash) && !u.disabled,
        None => {
            // Spend the same time as a real check, so timing does not reveal which names exist.
            auth::verify_password(password, DUMMY_HASH.as_str());
            false
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        limiter.record_failure(username, from, now_i);
        crate::security::auth_failed(
            crate::metrics::AuthKind::SignIn,
            from,
            "Dashboard sign-in with a wrong username or password",
        );
        audit(store, &who, "sign_in_failed", username, "");
        return Err(SignInError::Wrong);
    };
    limiter.record_success(username);
    let now = Utc::now();
    let cookie = random_secret("cts_");
    let record = SessionRecord {
        username: user.username.clone(),
        created_at: now,
        last_seen: now,
        expires_at: now + SESSION_LIFETIME,
        csrf: random_secret(""),
    };
    store.insert_session(&tokens::hash(&cookie), &record)?;
    audit(store, &who, "sign_in", &user.username, "");
    Ok(NewSession {
        cookie,
        record,
        must_change_password: user.must_change_password,
    })
}

static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| auth::hash_password("caretaker-no-such-account"));

/// The person behind a session cookie, if the session is valid at `now` and the account is
/// still enabled. Refreshes the idle timer at most once a minute.
pub fn session_actor(
    store: &dyn Store,
    cookie: &str,
    from: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<Option<Actor>, StoreError> {
    let hash = tokens::hash(cookie);
    let Some(mut s) = store.session(&hash)? else {
        return Ok(None);
    };
    if now >= s.expires_at || now - s.last_seen > SESSION_IDLE {
        store.delete_session(&hash)?;
        return Ok(None);
    }
    let Some(user) = store.user(&s.username)?.filter(|u| !u.disabled) else {
        return Ok(None);
    };
    let Some(role) = Role::parse(&user.role) else {
        return Ok(None);
    };
    if now - s.last_seen > Duration::minutes(1) {
        s.last_seen = now;
        store.insert_session(&hash, &s)?;
    }
    Ok(Some(Actor {
        name: user.username,
        role,
        address: from,
        session: Some((hash, s.csrf)),
        must_change_password: user.must_change_password,
    }))
}

/// The holder of an API token with a role, if it is valid.
pub fn token_actor(
    store: &dyn Store,
    token: &str,
    from: Option<IpAddr>,
) -> Result<Option<Actor>, StoreError> {
    let Some(t) = store.api_token(&tokens::hash(token))? else {
        return Ok(None);
    };
    if t.revoked_at.is_some() {
        return Ok(None);
    }
    Ok(Role::parse(&t.role).map(|role| Actor {
        name: format!("API token \"{}\"", t.label),
        role,
        address: from,
        session: None,
        must_change_password: false,
    }))
}

/// Ends a session (sign-out).
pub fn sign_out(store: &dyn Store, actor: &Actor) -> Result<(), StoreError> {
    if let Some((hash, _)) = &actor.session {
        store.delete_session(hash)?;
        audit(store, actor, "sign_out", &actor.name, "");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountStore, RedbStore};

    const PW: &str = "twelve chars or more";

    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn sessions_end_when_idle_expired_disabled_or_signed_out() {
        let (_d, s) = store();
        let by = Actor::local_cli();
        add_user(&s, &by, "dsl", Role::Dsl, Some(PW)).unwrap();
        let limiter = SignInLimiter::default();
        let new = sign_in(&s, &limiter, "dsl", PW, None).unwrap();
        let now = Utc::now();
        let who = session_actor(&s, &new.cookie, None, now).unwrap().unwrap();
        assert_eq!((who.name.as_str(), who.role), ("dsl", Role::Dsl));
        assert!(
            session_actor(
                &s,
                &new.cookie,
                None,
                now + SESSION_IDLE + Duration::minutes(1)
            )
            .unwrap()
            .is_none(),
            "idle too long"
        );
        assert!(
            session_actor(&s, &new.cookie, None, now).unwrap().is_none(),
            "an ended session stays ended"
        );

        let second = sign_in(&s, &limiter, "dsl", PW, None).unwrap();
        set_disabled(&s, &by, "dsl", true).unwrap();
        assert!(
            session_actor(&s, &second.cookie, None, now)
                .unwrap()
                .is_none()
        );
        set_disabled(&s, &by, "dsl", false).unwrap();

        let third = sign_in(&s, &limiter, "dsl", PW, None).unwrap();
        let who = session_actor(&s, &third.cookie, None, now)
            .unwrap()
            .unwrap();
        sign_out(&s, &who).unwrap();
        assert!(
            session_actor(&s, &third.cookie, None, now)
                .unwrap()
                .is_none()
        );

        sign_in(&s, &limiter, "dsl", PW, None).unwrap();
        assert_eq!(s.purge_sessions(now).unwrap(), 0);
        assert_eq!(
            s.purge_sessions(now + SESSION_LIFETIME + Duration::minutes(1))
                .unwrap(),
            1
        );
    }

    #[test]
    fn one_time_passwords_must_be_changed_and_wrong_ones_do_not_tell_who_exists() {
        let (_d, s) = store();
        let by = Actor::local_cli();
        let otp = add_user(&s, &by, "tech", Role::Technician, None)
            .unwrap()
            .expect("a one-time password");
        let limiter = SignInLimiter::default();
        let new = sign_in(&s, &limiter, "tech", &otp, None).unwrap();
        assert!(new.must_change_password);
        let who = session_actor(&s, &new.cookie, None, Utc::now())
            .unwrap()
            .unwrap();
        assert!(who.must_change_password);
        assert!(change_own_password(&s, &who, &otp, "short").is_err());
        change_own_password(&s, &who, &otp, "a much better password").unwrap();
        let again = sign_in(&s, &limiter, "tech", "a much better password", None).unwrap();
        assert!(!again.must_change_password);
        let unknown = sign_in(&s, &limiter, "nobody", PW, None).unwrap_err();
        let wrong = sign_in(&s, &limiter, "tech", PW, None).unwrap_err();
        assert_eq!(unknown.to_string(), wrong.to_string());
        let log = s.audit_log(None, 100).unwrap();
        assert!(log.entries.iter().any(|e| e.action == "password_changed"));
        assert_eq!(
            log.entries
                .iter()
                .filter(|e| e.action == "sign_in_failed")
                .count(),
            2
        );
    }

    #[test]
    fn usernames_and_roles_are_checked() {
        let (_d, s) = store();
        let by = Actor::local_cli();
        assert!(add_user(&s, &by, "a b", Role::Dsl, None).is_err());
        assert!(add_user(&s, &by, "", Role::Dsl, None).is_err());
        add_user(&s, &by, "ok.name", Role::Dsl, None).unwrap();
        assert!(
            add_user(&s, &by, "ok.name", Role::Dsl, None).is_err(),
            "taken"
        );
        assert!(
            apply_op(
                &s,
                &AccountOp::Add {
                    username: "x".into(),
                    role: "admin".into(),
                    password: None
                }
            )
            .is_err()
        );
    }
}
