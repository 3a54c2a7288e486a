//! The sled implementation of `AccountStore`: users, sessions, API tokens, enrolment token listing, the audit log.

use chrono::{DateTime, Utc};

use super::SettingsVersion;
use super::sled_store::{Engine, decode, encode, engine};

/// The key holding the latest settings version; sorts before every version key (u64 BE
/// starts at 1), so `last()` is always a version.
const LATEST: &[u8] = b"\x00";
use super::{
    AccountStore, ApiTokenRecord, AuditEntry, AuditPage, SessionRecord, StoreError, StoreResult,
    TokenRecord, UserRecord,
};

impl AccountStore for Engine {
    fn current_settings(&self) -> StoreResult<Option<SettingsVersion>> {
        self.settings
            .last()
            .map_err(engine)?
            .map(|(_, v)| decode("settings", &v))
            .transpose()
    }

    fn put_settings(
        &self,
        settings: serde_json::Value,
        changed_by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<SettingsVersion> {
        let result = self.settings.transaction(|t| {
            let version = match t.get(LATEST)? {
                Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) + 1,
                None => 1,
            };
            let sv = SettingsVersion {
                version,
                settings: settings.clone(),
                changed_by: changed_by.to_string(),
                changed_at: at,
            };
            t.insert(&version.to_be_bytes(), encode(&sv))?;
            t.insert(LATEST, &version.to_be_bytes())?;
            Ok(sv)
        });
        let sv = result.map_err(|e: sled::transaction::TransactionError<StoreError>| engine(e))?;
        self.flush()?;
        Ok(sv)
    }

    fn user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        self.users
            .get(username.as_bytes())
            .map_err(engine)?
            .map(|v| decode("user", &v))
            .transpose()
    }

    fn users(&self) -> StoreResult<Vec<UserRecord>> {
        self.users
            .iter()
            .map(|r| r.map_err(engine).and_then(|(_, v)| decode("user", &v)))
            .collect()
    }

    fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let inserted = self
            .users
            .compare_and_swap(user.username.as_bytes(), None::<&[u8]>, Some(encode(user)))
            .map_err(engine)?;
        if inserted.is_err() {
            return Err(StoreError::Conflict(format!(
                "there is already an account called {:?}",
                user.username
            )));
        }
        self.flush()
    }

    fn update_user(&self, user: &UserRecord) -> StoreResult<()> {
        if self.user(&user.username)?.is_none() {
            return Err(StoreError::Conflict(format!(
                "there is no account called {:?}",
                user.username
            )));
        }
        self.users
            .insert(user.username.as_bytes(), encode(user))
            .map_err(engine)?;
        self.flush()
    }

    fn insert_session(&self, hash: &str, session: &SessionRecord) -> StoreResult<()> {
        self.sessions
            .insert(hash.as_bytes(), encode(session))
            .map_err(engine)?;
        // A lost session only means signing in again: no fsync of its own.
        Ok(())
    }

    fn session(&self, hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.sessions
            .get(hash.as_bytes())
            .map_err(engine)?
            .map(|v| decode("session", &v))
            .transpose()
    }

    fn delete_session(&self, hash: &str) -> StoreResult<()> {
        self.sessions.remove(hash.as_bytes()).map_err(engine)?;
        self.flush()
    }

    fn delete_sessions_of(&self, username: &str) -> StoreResult<usize> {
        let mut n = 0;
        for item in self.sessions.iter() {
            let (k, v) = item.map_err(engine)?;
            let s: Option<SessionRecord> = serde_json::from_slice(&v).ok();
            if s.is_none_or(|s| s.username == username) {
                self.sessions.remove(k).map_err(engine)?;
                n += 1;
            }
        }
        self.flush()?;
        Ok(n)
    }

    fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<usize> {
        let mut n = 0;
        for item in self.sessions.iter() {
            let (k, v) = item.map_err(engine)?;
            let s: Option<SessionRecord> = serde_json::from_slice(&v).ok();
            if s.is_none_or(|s| s.expires_at <= now) {
                self.sessions.remove(k).map_err(engine)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()> {
        self.api_tokens
            .insert(token.hash.as_bytes(), encode(token))
            .map_err(engine)?;
        self.flush()
    }

    fn api_token(&self, hash: &str) -> StoreResult<Option<ApiTokenRecord>> {
        self.api_tokens
            .get(hash.as_bytes())
            .map_err(engine)?
            .map(|v| decode("api token", &v))
            .transpose()
    }

    fn enrolment_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let mut all: Vec<TokenRecord> = self
            .tokens_tree()
            .iter()
            .map(|r| r.map_err(engine).and_then(|(_, v)| decode("token", &v)))
            .collect::<StoreResult<_>>()?;
        all.sort_by_key(|t| std::cmp::Reverse(t.created_at));
        Ok(all)
    }

    fn audit(&self, entry: &AuditEntry) -> StoreResult<u64> {
        let id = self.audit_id()?;
        let mut e = entry.clone();
        e.id = id;
        self.audit
            .insert(id.to_be_bytes(), encode(&e))
            .map_err(engine)?;
        self.flush()?;
        Ok(id)
    }

    fn audit_log(&self, before: Option<u64>, limit: usize) -> StoreResult<AuditPage> {
        let upper = before.unwrap_or(u64::MAX);
        let mut entries = Vec::new();
        let mut next = None;
        for item in self.audit.range(..upper.to_be_bytes()).rev() {
            let (_, v) = item.map_err(engine)?;
            if entries.len() == limit {
                next = entries.last().map(|e: &AuditEntry| e.id);
                break;
            }
            entries.push(decode("audit entry", &v)?);
        }
        Ok(AuditPage { entries, next })
    }
}
