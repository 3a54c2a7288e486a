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

/// A page of at most `limit` records from rows read with `limit_plus_one`, and the cursor
/// for the next page (the last record's id) when there was a row beyond it.
pub(super) fn page_of<T>(
    rows: &[Row],
    limit: usize,
    from_row: impl Fn(&Row) -> StoreResult<T>,
    id: impl Fn(&T) -> u64,
) -> StoreResult<(Vec<T>, Option<u64>)> {
    let page = rows
        .iter()
        .take(limit)
        .map(from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let next = if rows.len() > limit {
        page.last().map(id)
    } else {
        None
    };
    Ok((page, next))
}

/// A statement's opening that takes the next number of `counter` (a `counters` row) as
/// `n(value)`. The rest of the statement inserts what it numbers: one statement, so one
/// transaction, and the counter row stays locked until that commits, which keeps the numbers
/// gapless and in commit order across collectors.
fn next_number(counter: &str) -> String {
    format!(
        "WITH n AS (INSERT INTO counters (name, value) VALUES ('{counter}', 1) \
         ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value)"
    )
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

pub(super) fn audit_from_row(r: &Row) -> StoreResult<AuditEntry> {
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
        self.one(
            "SELECT version, settings, changed_by, changed_at_ns FROM settings_versions \
             ORDER BY version DESC LIMIT 1"
                .into(),
            vec![],
            settings_from_row,
        )
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
            let row = c
                .query_one(
                    &format!(
                        "{} INSERT INTO settings_versions \
                         (version, settings, changed_by, changed_at_ns) \
                         SELECT value, $1, $2, $3 FROM n \
                         RETURNING version, settings, changed_by, changed_at_ns",
                        next_number("settings")
                    ),
                    &[&settings, &changed_by, &at_ns],
                )
                .await
                .map_err(pg)?;
            settings_from_row(&row)
        })
    }

    fn user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        self.one(
            format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1"),
            vec![Box::new(username.to_string())],
            |r| Ok(user_from_row(r)),
        )
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
        let sql = format!(
            "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (username) DO NOTHING"
        );
        if self.write_user(sql, user)? == 0 {
            return Err(StoreError::Conflict(format!(
                "there is already an account called {:?}",
                user.username
            )));
        }
        Ok(())
    }

    fn update_user(&self, user: &UserRecord) -> StoreResult<()> {
        let sql = "UPDATE users SET role = $2, password_hash = $3, disabled = $4, email = $5, \
                   must_change_password = $6, created_at_ns = $7, created_by = $8, \
                   updated_at_ns = $9 WHERE username = $1";
        if self.write_user(sql.to_string(), user)? == 0 {
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
        self.one(
            "SELECT username, created_at_ns, last_seen_ns, expires_at_ns, csrf \
             FROM sessions WHERE hash = $1"
                .into(),
            vec![Box::new(hash.to_string())],
            |r| Ok(session_from_row(r)),
        )
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
        self.one(
            "SELECT hash, label, role, created_at_ns, created_by, revoked_at_ns \
             FROM api_tokens WHERE hash = $1"
                .into(),
            vec![Box::new(hash.to_string())],
            |r| Ok(api_token_from_row(r)),
        )
    }

    fn enrolment_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.enrolment_token_list()
    }

    fn audit(&self, entry: &AuditEntry) -> StoreResult<u64> {
        let e = entry.clone();
        let at = ns(e.at)?;
        self.run(move |c| async move {
            let st = c
                .prepare_cached(&format!(
                    "{} INSERT INTO audit (id, at_ns, actor, action, target, detail, address) \
                     SELECT value, $1, $2, $3, $4, $5, $6 FROM n RETURNING id",
                    next_number("audit")
                ))
                .await
                .map_err(pg)?;
            let id: i64 = c
                .query_one(
                    &st,
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
            let (entries, next) = page_of(&rows, limit, audit_from_row, |e| e.id)?;
            Ok(AuditPage { entries, next })
        })
    }
}

impl PgStore {
    /// Runs `sql` with the user's fields as `$1`..`$9`, in `USER_COLUMNS` order; returns the
    /// rows it wrote (0: the insert met an existing name, or the update found none).
    fn write_user(&self, sql: String, user: &UserRecord) -> StoreResult<u64> {
        let u = user.clone();
        let (created, updated) = (ns(u.created_at)?, ns(u.updated_at)?);
        self.run(move |c| async move {
            c.execute(
                &sql,
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
        })
    }
}

#[cfg(test)]
mod tests {
    //! What the contract suite cannot show: numbers handed out by two collectors writing at once.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use chrono::Utc;
    use serde_json::json;

    use super::super::PgStore;
    use super::super::rig::{DbGuard, test_database};
    use crate::store::{AccountStore, AuditEntry, StoreError, UserRecord};

    fn two_collectors() -> (Arc<PgStore>, Arc<PgStore>, DbGuard) {
        let (url, guard) = test_database();
        let a = PgStore::connect(&url).expect("first collector connects");
        let b = PgStore::connect(&url).expect("second collector connects");
        (Arc::new(a), Arc::new(b), guard)
    }

    fn entry(actor: &str, n: usize) -> AuditEntry {
        AuditEntry {
            id: 0,
            at: Utc::now(),
            actor: actor.into(),
            action: "incident_viewed".into(),
            target: n.to_string(),
            detail: String::new(),
            address: "192.0.2.1".into(),
        }
    }

    #[test]
    fn audit_ids_from_two_collectors_are_gapless_and_committed_in_order() {
        let (a, b, _guard) = two_collectors();
        const EACH: usize = 60;
        let done = Arc::new(AtomicBool::new(false));
        // A reader paging the log newest first must never see an id before every smaller one
        // has committed: that is what lets it take "below the last id I saw" as complete.
        let reader = {
            let (a, done) = (a.clone(), done.clone());
            std::thread::spawn(move || {
                let mut looks = 0;
                while !done.load(Ordering::SeqCst) || looks == 0 {
                    let ids: Vec<u64> = a
                        .audit_log(None, 100_000)
                        .unwrap()
                        .entries
                        .iter()
                        .map(|e| e.id)
                        .collect();
                    let expected: Vec<u64> = (1..=ids.len() as u64).rev().collect();
                    assert_eq!(ids, expected, "a hole in the audit log as read");
                    looks += 1;
                }
                looks
            })
        };
        let writers: Vec<_> = [
            (a.clone(), "ann"),
            (a.clone(), "amy"),
            (b.clone(), "bob"),
            (b.clone(), "bea"),
        ]
        .into_iter()
        .map(|(store, actor)| {
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|n| store.audit(&entry(actor, n)).unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
        let mut all: Vec<u64> = Vec::new();
        for w in writers {
            let ids = w.join().unwrap();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "one writer's ids increase: {ids:?}"
            );
            all.extend(ids);
        }
        done.store(true, Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=4 * EACH as u64).collect::<Vec<_>>(),
            "unique and gapless"
        );
        let log = b.audit_log(None, 4 * EACH).unwrap();
        for actor in ["ann", "amy", "bob", "bea"] {
            let targets: Vec<String> = log
                .entries
                .iter()
                .rev()
                .filter(|e| e.actor == actor)
                .map(|e| e.target.clone())
                .collect();
            let expected: Vec<String> = (0..EACH).map(|n| n.to_string()).collect();
            assert_eq!(targets, expected, "{actor}'s entries, each once, in order");
        }
    }

    #[test]
    fn settings_versions_from_two_collectors_are_numbered_once_each() {
        let (a, b, _guard) = two_collectors();
        const EACH: u64 = 30;
        let put = |store: Arc<PgStore>, who: &'static str| {
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|n| {
                        store
                            .put_settings(json!({"by": who, "n": n}), who, Utc::now())
                            .unwrap()
                            .version
                    })
                    .collect::<Vec<u64>>()
            })
        };
        let (ta, tb) = (put(a.clone(), "ann"), put(b.clone(), "bob"));
        let mut versions = ta.join().unwrap();
        versions.extend(tb.join().unwrap());
        versions.sort_unstable();
        assert_eq!(versions, (1..=2 * EACH).collect::<Vec<_>>());
        assert_eq!(a.current_settings().unwrap().unwrap().version, 2 * EACH);
    }

    #[test]
    fn one_name_taken_by_two_collectors_at_once_goes_to_one_of_them() {
        let (a, b, _guard) = two_collectors();
        let user = |role: &str| UserRecord {
            username: "ann".into(),
            role: role.into(),
            password_hash: "$argon2id$stand-in".into(),
            disabled: false,
            email: String::new(),
            must_change_password: true,
            created_at: Utc::now(),
            created_by: "test".into(),
            updated_at: Utc::now(),
        };
        let take = |store: Arc<PgStore>, role: &'static str| {
            let u = user(role);
            std::thread::spawn(move || store.insert_user(&u))
        };
        let (ta, tb) = (take(a.clone(), "dsl"), take(b.clone(), "technician"));
        let results = [ta.join().unwrap(), tb.join().unwrap()];
        let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        let lost = &results[1 - won[0]];
        assert!(matches!(lost, Err(StoreError::Conflict(_))), "{lost:?}");
        let stored = a.user("ann").unwrap().unwrap();
        assert_eq!(
            stored.role,
            ["dsl", "technician"][won[0]],
            "the winner's record stands"
        );
    }
}
