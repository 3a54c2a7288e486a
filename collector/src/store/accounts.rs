//! Records of the people who use the dashboard: accounts, sign-in sessions, API tokens with a role, the audit log.
//!
//! Secrets are never stored: passwords as argon2 hashes, session and API tokens as SHA-256
//! hashes. The audit log only grows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{StoreResult, TokenRecord};

/// A dashboard account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub username: String,
    /// `network_manager`, `technician`, `dsl` or `governor`.
    pub role: String,
    /// argon2id, PHC string format.
    pub password_hash: String,
    pub disabled: bool,
    /// Where digests and reports are e-mailed (empty: none).
    #[serde(default)]
    pub email: String,
    /// Set for a one-time password: the next sign-in must choose a new one.
    pub must_change_password: bool,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
}

/// A signed-in browser, keyed by the hash of its cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub username: String,
    pub created_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The anti-forgery token every form of this session carries.
    pub csrf: String,
}

/// An API token with a role, keyed by its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub hash: String,
    pub label: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One line of the audit log: who did what to what, from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub id: u64,
    pub at: DateTime<Utc>,
    /// The account or token label, or `system`.
    pub actor: String,
    /// `sign_in`, `sign_in_failed`, `incident_viewed`, `policy_changed`, ...
    pub action: String,
    /// What it was done to (an incident number, a username, a device id), if anything.
    pub target: String,
    /// A short readable detail; never event content beyond what the action needs.
    pub detail: String,
    /// The client address, when it came over the network.
    pub address: String,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<u64>,
}

/// A stored version of the settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsVersion {
    pub version: u64,
    pub settings: serde_json::Value,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
}

/// `AccountStore`'s methods that a handle forwards to its engine, written once (see `methods.rs`).
macro_rules! account_store_methods {
    ($then:ident $(, $($lead:tt)*)?) => {
        $then! {
            $($($lead)*)?
            fn current_settings(&self) -> StoreResult<Option<SettingsVersion>>;
            /// Stores `settings` as the next version and returns it.
            fn put_settings(
                &self,
                settings: serde_json::Value,
                changed_by: &str,
                at: DateTime<Utc>,
            ) -> StoreResult<SettingsVersion>;

            fn user(&self, username: &str) -> StoreResult<Option<UserRecord>>;
            fn users(&self) -> StoreResult<Vec<UserRecord>>;
            /// Inserts a new account; `Conflict` if the name is taken.
            fn insert_user(&self, user: &UserRecord) -> StoreResult<()>;
            /// Overwrites an existing account.
            fn update_user(&self, user: &UserRecord) -> StoreResult<()>;

            fn insert_session(&self, hash: &str, session: &SessionRecord) -> StoreResult<()>;
            fn session(&self, hash: &str) -> StoreResult<Option<SessionRecord>>;
            fn delete_session(&self, hash: &str) -> StoreResult<()>;
            /// Ends every session of `username` (disabled account, reset password); returns how
            /// many.
            fn delete_sessions_of(&self, username: &str) -> StoreResult<usize>;
            /// Removes sessions expired at `now`; returns how many.
            fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<usize>;

            fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()>;
            fn api_token(&self, hash: &str) -> StoreResult<Option<ApiTokenRecord>>;

            /// Enrolment tokens (hashes and counts only), newest first.
            fn enrolment_tokens(&self) -> StoreResult<Vec<TokenRecord>>;

            /// Appends to the audit log (durably); returns the entry's id.
            fn audit(&self, entry: &AuditEntry) -> StoreResult<u64>;
            /// Entries with an id below `before` (all when `None`), newest first.
            fn audit_log(&self, before: Option<u64>, limit: usize) -> StoreResult<AuditPage>;
        }
    };
}
pub(crate) use account_store_methods;

/// Accounts, sessions, API tokens, settings and the audit log.
pub trait AccountStore {
    account_store_methods!(declare_methods);
}
