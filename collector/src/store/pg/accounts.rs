//! The PostgreSQL implementation of `AccountStore`: settings versions, users, sessions, API tokens, enrolment token listing, the audit log.
//!
//! Every write is one statement or one transaction that locks what it changes: an account name
//! is taken by `INSERT ... ON CONFLICT DO NOTHING`, never by looking first. Settings versions
//! and audit ids come from a `counters` row bumped inside the writing transaction, which holds
//! that row's lock until it commits: the numbers are gapless and increase in commit order even
//! with several collectors writing, so a reader paging the audit log newest first never sees an
//! id before a smaller one has committed.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::super::{
    AccountStore, ApiTokenRecord, AuditEntry, AuditPage, SessionRecord, SettingsVersion,
    StoreError, StoreResult, TokenRecord, UserRecord,
};
use super::PgStore;
use super::incidents::{from_ns, ns, pg, unsigned};

/// A page size as a SQL LIMIT, with room for the one row that says whether more remain.
pub(super) fn limit_plus_one(limit: usize) -> i64 {
    i64::try_from(limit)
        .unwrap_or(i64::MAX - 1)
        .saturating_add(1)
}

const USER_COLUMNS: &str = "username, role, password_hash, disabled, email, \
     must_change_password, created_at_ns, created_by, updated_at_ns";

fn user_from_row(r: &Row) -> UserRecord {
    UserRecord {
        username: r.get(0),
        role: r.get(1),
        password_hash: r.get(2),
        disabled: r.get(3),
        email: r.get(4),
        must_change_password: r.get(5),
        created_at: from_ns(r.get(6)),
        created_by: r.get(7),
        updated_at: from_ns(r.get(8)),
    }
}

fn session_from_row(r: &Row) -> SessionRecord {
    SessionRecord {
        username: r.get(0),
        created_at: from_ns(r.get(1)),
        last_seen: from_ns(r.get(2)),
        expires_at: from_ns(r.get(3)),
        csrf: r.get(4),
    }
}

fn api_token_from_row(r: &Row) -> ApiTokenRecord {
    ApiTokenRecord {
        hash: r.get(0),
        label: r.get(1),
        role: r.get(2),
        created_at: from_ns(r.get(3)),
        created_by: r.get(4),
        revoked_at: r.get::<_, Option<i64>>(5).map(from_ns),
    }
}

fn audit_from_row(r: &Row) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        id: unsigned("audit id", r.get(0))?,
        at: from_ns(r.get(1)),
        actor: r.get(2),
        action: r.get(3),
        target: r.get(4),
        detail: r.get(5),
        address: r.get(6),
    })
}

fn settings_from_row(r: &Row) -> StoreResult<SettingsVersion> {
    Ok(SettingsVersion {
        version: unsigned("settings version", r.get(0))?,
        settings: r.get(1),
        changed_by: r.get(2),
        changed_at: from_ns(r.get(3)),
    })
}

impl AccountStore for PgStore {
    fn current_settings(&self) -> StoreResult<Option<SettingsVersion>> {
        self.run(move |c| async move {
            c.query_opt(
                "SELECT version, settings, changed_by, changed_at_ns FROM settings_versions \
                 ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(pg)?
            .map(|r| settings_from_row(&r))
            .transpose()
        })
    }

    fn put_settings(
        &self,
        settings: serde_json::Value,
        changed_by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<SettingsVersion> {
        let at_ns = ns(at)?;
        let changed_by = changed_by.to_string();
        self.run(move |c| async move {
            // One statement, so one transaction: the counter row stays locked until the version
            // it numbered has committed.
            let row = c
                .query_one(
                    "WITH n AS (INSERT INTO counters (name, value) VALUES ('settings', 1) \
                     ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 \
                     RETURNING value) \
                     INSERT INTO settings_versions (version, settings, changed_by, changed_at_ns) \
                     SELECT value, $1, $2, $3 FROM n \
                     RETURNING version, settings, changed_by, changed_at_ns",
                    &[&settings, &changed_by, &at_ns],
                )
                .await
                .map_err(pg)?;
            settings_from_row(&row)
        })
    }

    fn user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let username = username.to_string();
        self.run(move |c| async move {
            Ok(c.query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1"),
                &[&username],
            )
            .await
            .map_err(pg)?
            .map(|r| user_from_row(&r)))
        })
    }

    fn users(&self) -> StoreResult<Vec<UserRecord>> {
        self.run(move |c| async move {
            Ok(c.query(
                &format!("SELECT {USER_COLUMNS} FROM users ORDER BY username"),
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(user_from_row)
            .collect())
        })
    }

    fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let u = user.clone();
        let (created, updated) = (ns(u.created_at)?, ns(u.updated_at)?);
        let inserted = self.run(move |c| async move {
            c.execute(
                &format!(
                    "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (username) DO NOTHING"
                ),
                &[
                    &u.username,
                    &u.role,
                    &u.password_hash,
                    &u.disabled,
                    &u.email,
                    &u.must_change_password,
                    &created,
                    &u.created_by,
                    &updated,
                ],
            )
            .await
            .map_err(pg)
        })?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "there is already an account called {:?}",
                user.username
            )));
        }
        Ok(())
    }

    fn update_user(&self, user: &UserRecord) -> StoreResult<()> {
        let u = user.clone();
        let (created, updated) = (ns(u.created_at)?, ns(u.updated_at)?);
        let changed = self.run(move |c| async move {
            c.execute(
                "UPDATE users SET role = $2, password_hash = $3, disabled = $4, email = $5, \
                 must_change_password = $6, created_at_ns = $7, created_by = $8, \
                 updated_at_ns = $9 WHERE username = $1",
                &[
                    &u.username,
                    &u.role,
                    &u.password_hash,
                    &u.disabled,
                    &u.email,
                    &u.must_change_password,
                    &created,
                    &u.created_by,
                    &updated,
                ],
            )
            .await
            .map_err(pg)
        })?;
        if changed == 0 {
            return Err(StoreError::Conflict(format!(
                "there is no account called {:?}",
                user.username
            )));
        }
        Ok(())
    }

    fn insert_session(&self, hash: &str, session: &SessionRecord) -> StoreResult<()> {
        let hash = hash.to_string();
        let s = session.clone();
        let times = [ns(s.created_at)?, ns(s.last_seen)?, ns(s.expires_at)?];
        self.run(move |c| async move {
            c.execute(
                "INSERT INTO sessions (hash, username, created_at_ns, last_seen_ns, \
                 expires_at_ns, csrf) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (hash) DO UPDATE SET username = EXCLUDED.username, \
                 created_at_ns = EXCLUDED.created_at_ns, last_seen_ns = EXCLUDED.last_seen_ns, \
                 expires_at_ns = EXCLUDED.expires_at_ns, csrf = EXCLUDED.csrf",
                &[&hash, &s.username, &times[0], &times[1], &times[2], &s.csrf],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn session(&self, hash: &str) -> StoreResult<Option<SessionRecord>> {
        let hash = hash.to_string();
        self.run(move |c| async move {
            Ok(c.query_opt(
                "SELECT username, created_at_ns, last_seen_ns, expires_at_ns, csrf \
                 FROM sessions WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(pg)?
            .map(|r| session_from_row(&r)))
        })
    }

    fn delete_session(&self, hash: &str) -> StoreResult<()> {
        let hash = hash.to_string();
        self.run(move |c| async move {
            c.execute("DELETE FROM sessions WHERE hash = $1", &[&hash])
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn delete_sessions_of(&self, username: &str) -> StoreResult<usize> {
        let username = username.to_string();
        self.run(move |c| async move {
            let n = c
                .execute("DELETE FROM sessions WHERE username = $1", &[&username])
                .await
                .map_err(pg)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<usize> {
        let now = ns(now)?;
        self.run(move |c| async move {
            let n = c
                .execute("DELETE FROM sessions WHERE expires_at_ns <= $1", &[&now])
                .await
                .map_err(pg)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()> {
        let t = token.clone();
        let created = ns(t.created_at)?;
        let revoked = t.revoked_at.map(ns).transpose()?;
        self.run(move |c| async move {
            // An upsert: revoking a token writes its record again with `revoked_at` set.
            c.execute(
                "INSERT INTO api_tokens (hash, label, role, created_at_ns, created_by, \
                 revoked_at_ns) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (hash) DO UPDATE SET label = EXCLUDED.label, role = EXCLUDED.role, \
                 created_at_ns = EXCLUDED.created_at_ns, created_by = EXCLUDED.created_by, \
                 revoked_at_ns = EXCLUDED.revoked_at_ns",
                &[
                    &t.hash,
                    &t.label,
                    &t.role,
                    &created,
                    &t.created_by,
                    &revoked,
                ],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn api_token(&self, hash: &str) -> StoreResult<Option<ApiTokenRecord>> {
        let hash = hash.to_string();
        self.run(move |c| async move {
            Ok(c.query_opt(
                "SELECT hash, label, role, created_at_ns, created_by, revoked_at_ns \
                 FROM api_tokens WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(pg)?
            .map(|r| api_token_from_row(&r)))
        })
    }

    fn enrolment_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.enrolment_token_list()
    }

    fn audit(&self, entry: &AuditEntry) -> StoreResult<u64> {
        let e = entry.clone();
        let at = ns(e.at)?;
        self.run(move |c| async move {
            // One statement, so one transaction: the counter row stays locked until the entry
            // it numbered has committed, which keeps ids in commit order across collectors.
            let id: i64 = c
                .query_one(
                    "WITH n AS (INSERT INTO counters (name, value) VALUES ('audit', 1) \
                     ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 \
                     RETURNING value) \
                     INSERT INTO audit (id, at_ns, actor, action, target, detail, address) \
                     SELECT value, $1, $2, $3, $4, $5, $6 FROM n RETURNING id",
                    &[&at, &e.actor, &e.action, &e.target, &e.detail, &e.address],
                )
                .await
                .map_err(pg)?
                .get(0);
            unsigned("audit id", id)
        })
    }

    fn audit_log(&self, before: Option<u64>, limit: usize) -> StoreResult<AuditPage> {
        let upper = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        self.run(move |c| async move {
            let rows = c
                .query(
                    "SELECT id, at_ns, actor, action, target, detail, address FROM audit \
                     WHERE id < $1 ORDER BY id DESC LIMIT $2",
                    &[&upper, &limit_plus_one(limit)],
                )
                .await
                .map_err(pg)?;
            let more = rows.len() > limit;
            let entries = rows
                .iter()
                .take(limit)
                .map(audit_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
            let next = if more {
                entries.last().map(|e| e.id)
            } else {
                None
            };
            Ok(AuditPage { entries, next })
        })
    }
}
