//! The redb implementation of `AccountStore`: users, sessions, API tokens, enrolment token listing, settings versions, the audit log.

use chrono::{DateTime, Utc};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::super::{
    AccountStore, ApiTokenRecord, AuditEntry, AuditPage, SessionRecord, SettingsVersion,
    StoreError, StoreResult, TokenRecord, UserRecord,
};
use super::{Engine, decode, encode, engine};

/// Settings version → the version (JSON); the current one is the last.
pub(super) const SETTINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("settings");
/// Username → account (JSON).
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// SHA-256 of the session cookie → session (JSON).
pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// SHA-256 of the API token → token record (JSON).
pub(super) const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");
/// Audit id → entry (JSON). Ids are the last one plus one, so they increase and are never
/// given out twice (entries are never removed).
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Creates this module's tables, so that a read before the first write finds them empty.
pub(super) fn create_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(SETTINGS).map_err(engine)?;
    txn.open_table(USERS).map_err(engine)?;
    txn.open_table(SESSIONS).map_err(engine)?;
    txn.open_table(API_TOKENS).map_err(engine)?;
    txn.open_table(AUDIT).map_err(engine)?;
    Ok(())
}

/// How a write is committed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Commit {
    /// Durable when the commit returns (fsync).
    Durable,
    /// Durable with the next durable commit: for what costs only a sign-in when lost.
    Lazy,
}

/// Runs `f` in one write transaction and commits it if `f` succeeds; an error drops the
/// transaction, which aborts it, so nothing of it is written.
pub(super) fn write<T>(
    store: &Engine,
    sync: Commit,
    f: impl FnOnce(&WriteTransaction) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut txn = store.db.begin_write().map_err(engine)?;
    if sync == Commit::Lazy {
        txn.set_durability(Durability::None).map_err(engine)?;
    }
    let out = f(&txn)?;
    txn.commit().map_err(engine)?;
    Ok(out)
}

fn get_json<T: serde::de::DeserializeOwned>(
    store: &Engine,
    table: TableDefinition<&str, &[u8]>,
    what: &str,
    key: &str,
) -> StoreResult<Option<T>> {
    let txn = store.db.begin_read().map_err(engine)?;
    let t = txn.open_table(table).map_err(engine)?;
    t.get(key)
        .map_err(engine)?
        .map(|v| decode(what, v.value()))
        .transpose()
}

/// Writes one record under a text key, in a transaction of its own committed as `commit` says.
pub(super) fn put_json<T: serde::Serialize>(
    store: &Engine,
    commit: Commit,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> StoreResult<()> {
    write(store, commit, |txn| {
        txn.open_table(table)
            .map_err(engine)?
            .insert(key, encode(value).as_slice())
            .map_err(engine)?;
        Ok(())
    })
}

/// Removes the sessions `doomed` picks (an unreadable one always); returns how many.
fn remove_sessions(
    store: &Engine,
    sync: Commit,
    doomed: impl Fn(&SessionRecord) -> bool,
) -> StoreResult<usize> {
    write(store, sync, |txn| {
        let mut t = txn.open_table(SESSIONS).map_err(engine)?;
        let mut removed = 0;
        t.retain(|_, v| {
            let s: Option<SessionRecord> = serde_json::from_slice(v).ok();
            let keep = !s.is_none_or(|s| doomed(&s));
            removed += usize::from(!keep);
            keep
        })
        .map_err(engine)?;
        Ok(removed)
    })
}

/// Writes an account that must (`existing`) or must not already be there; `Conflict` if not.
fn put_user(s: &Engine, user: &UserRecord, existing: bool) -> StoreResult<()> {
    write(s, Commit::Durable, |txn| {
        let mut t = txn.open_table(USERS).map_err(engine)?;
        let there = t.get(user.username.as_str()).map_err(engine)?.is_some();
        if there != existing {
            let which = if there { "already an" } else { "no" };
            return Err(StoreError::Conflict(format!(
                "there is {which} account called {:?}",
                user.username
            )));
        }
        t.insert(user.username.as_str(), encode(user).as_slice())
            .map_err(engine)?;
        Ok(())
    })
}

impl AccountStore for Engine {
    fn current_settings(&self) -> StoreResult<Option<SettingsVersion>> {
        let txn = self.db.begin_read().map_err(engine)?;
        let t = txn.open_table(SETTINGS).map_err(engine)?;
        t.last()
            .map_err(engine)?
            .map(|(_, v)| decode("settings", v.value()))
            .transpose()
    }

    fn put_settings(
        &self,
        settings: serde_json::Value,
        changed_by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<SettingsVersion> {
        write(self, Commit::Durable, |txn| {
            let mut t = txn.open_table(SETTINGS).map_err(engine)?;
            let version = t.last().map_err(engine)?.map_or(0, |(k, _)| k.value()) + 1;
            let sv = SettingsVersion {
                version,
                settings,
                changed_by: changed_by.to_string(),
                changed_at: at,
            };
            t.insert(version, encode(&sv).as_slice()).map_err(engine)?;
            Ok(sv)
        })
    }

    fn user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        get_json(self, USERS, "user", username)
    }

    fn users(&self) -> StoreResult<Vec<UserRecord>> {
        let txn = self.db.begin_read().map_err(engine)?;
        super::all(&txn.open_table(USERS).map_err(engine)?, "user")
    }

    fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        put_user(self, user, false)
    }

    fn update_user(&self, user: &UserRecord) -> StoreResult<()> {
        put_user(self, user, true)
    }

    fn insert_session(&self, hash: &str, session: &SessionRecord) -> StoreResult<()> {
        // A lost session only means signing in again: no fsync of its own.
        put_json(self, Commit::Lazy, SESSIONS, hash, session)
    }

    fn session(&self, hash: &str) -> StoreResult<Option<SessionRecord>> {
        get_json(self, SESSIONS, "session", hash)
    }

    fn delete_session(&self, hash: &str) -> StoreResult<()> {
        // Durable: a signed-out session must not come back after a crash.
        write(self, Commit::Durable, |txn| {
            txn.open_table(SESSIONS)
                .map_err(engine)?
                .remove(hash)
                .map_err(engine)?;
            Ok(())
        })
    }

    fn delete_sessions_of(&self, username: &str) -> StoreResult<usize> {
        remove_sessions(self, Commit::Durable, |s| s.username == username)
    }

    fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<usize> {
        // An expired session is refused anyway: its removal need not be durable at once.
        remove_sessions(self, Commit::Lazy, |s| s.expires_at <= now)
    }

    fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()> {
        put_json(self, Commit::Durable, API_TOKENS, &token.hash, token)
    }

    fn api_token(&self, hash: &str) -> StoreResult<Option<ApiTokenRecord>> {
        get_json(self, API_TOKENS, "api token", hash)
    }

    fn enrolment_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let txn = self.db.begin_read().map_err(engine)?;
        let mut all: Vec<TokenRecord> =
            super::all(&txn.open_table(super::TOKENS).map_err(engine)?, "token")?;
        all.sort_by_key(|t| std::cmp::Reverse(t.created_at));
        Ok(all)
    }

    fn audit(&self, entry: &AuditEntry) -> StoreResult<u64> {
        write(self, Commit::Durable, |txn| {
            let mut t = txn.open_table(AUDIT).map_err(engine)?;
            let last = t.last().map_err(engine)?.map(|(k, _)| k.value());
            let id = super::next_id(txn, last, super::privacy::FLOOR_AUDIT)?;
            let mut e = entry.clone();
            e.id = id;
            t.insert(id, encode(&e).as_slice()).map_err(engine)?;
            Ok(id)
        })
    }

    fn audit_log(&self, before: Option<u64>, limit: usize) -> StoreResult<AuditPage> {
        let upper = before.unwrap_or(u64::MAX);
        let txn = self.db.begin_read().map_err(engine)?;
        let t = txn.open_table(AUDIT).map_err(engine)?;
        let mut entries = Vec::new();
        let mut next = None;
        for item in t.range(..upper).map_err(engine)?.rev() {
            let (_, v) = item.map_err(engine)?;
            if entries.len() == limit {
                next = entries.last().map(|e: &AuditEntry| e.id);
                break;
            }
            entries.push(decode("audit entry", v.value())?);
        }
        Ok(AuditPage { entries, next })
    }
}
