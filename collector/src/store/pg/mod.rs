//! PostgreSQL behind the store traits, for a trust running several collectors against one database: the connection pool, the sync-to-async bridge and the schema migrations.
//!
//! The traits are synchronous and are called from the collector's tokio worker threads, as
//! redb's blocking calls are. So the store owns a small runtime of its own that holds the pool
//! and drives the connections; each call spawns its future there and waits for it with
//! `futures::executor::block_on` (a `Runtime::block_on` inside the caller's runtime would
//! panic). A panic inside a call comes back as `StoreError::Engine`, never as a poisoned lock.
//!
//! Collectors share nothing but the database: every invariant that the embedded store keeps
//! with one process's transactions is kept here with row locks (see `events.rs` for the
//! exactly-once high-water mark and the commit-ordered arrival ids). The migrations in
//! `collector/migrations/postgres/` are embedded and applied at connect, each in its own
//! transaction under an advisory lock, so collectors starting together apply each once.

mod accounts;
mod append;
mod digests;
mod events;
mod incidents;
mod leader;
mod listing;
mod privacy;
#[doc(hidden)]
pub mod rig;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{StoreError, StoreResult};
use incidents::pg;

/// The schema, in order: (version, name, SQL). A version once released is never edited; a
/// change is a new file.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "core",
        include_str!("../../../migrations/postgres/0001_core.sql"),
    ),
    (
        2,
        "accounts_incidents_digests",
        include_str!("../../../migrations/postgres/0002_accounts_incidents_digests.sql"),
    ),
    (
        3,
        "privacy",
        include_str!("../../../migrations/postgres/0003_privacy.sql"),
    ),
];

/// Advisory lock keys (transaction-level), one per thing collectors must not do at once.
/// The high bytes spell "care" so they do not meet another application's keys.
const LOCK_MIGRATE: i64 = 0x6361_7265_0000_0001;
const LOCK_POLICY: i64 = 0x6361_7265_0000_0002;
const LOCK_PARTITION: i64 = 0x6361_7265_0000_0003;
/// Purges, erasures and hold changes: each reads the holds in force and must not meet another.
const LOCK_PRIVACY: i64 = 0x6361_7265_0000_0004;

/// Connections per collector: appends, the API's listings and the dashboard's reads at once,
/// well under PostgreSQL's default of 100 connections for a handful of collectors.
const POOL_SIZE: usize = 8;

/// The store on a PostgreSQL database.
pub struct PgStore {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// The URL without its password, for messages.
    target: Arc<str>,
    /// Months whose event partition exists (made by this collector or another).
    partitions: Arc<Mutex<HashSet<i64>>>,
    /// How to open a connection outside the pool (the digests' leader keeps one).
    config: tokio_postgres::Config,
    /// This collector's claim to send the digests (`leader.rs`).
    leader: Arc<leader::Leader>,
    /// Whether a purge drops a monthly partition whose events have all expired (always, but
    /// in the tests that hold a purge to its batch size; see `privacy/purge.rs`).
    drop_partitions: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// `url` with any password (`user:password@` or `?password=`) replaced, so it can go into a
/// log line or an error.
pub(crate) fn redact(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{host}{path}")
                }
                _ => head.to_string(),
            }
        }
        None => head.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<&str> = query
            .split('&')
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@/db?host=/socket/dir&port=N` for a
    /// unix socket, or `postgres://user:password@host:port/db`) and brings its schema up to
    /// date. Fails with the reason, naming the URL without its password, when the database
    /// cannot be reached.
    pub fn connect(url: &str) -> StoreResult<PgStore> {
        let target: Arc<str> = redact(url).into();
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::engine(format!("{target} is not a PostgreSQL URL"), e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("caretaker-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::engine("cannot start the PostgreSQL runtime", e))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // Each connection is checked with a round trip when taken from the pool, so
                // one the server closed (a restart, a failover) is replaced, not handed out.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::engine(format!("cannot build the pool for {target}"), e))?;
        let store = PgStore {
            runtime: Some(runtime),
            pool,
            target,
            partitions: Arc::default(),
            config,
            leader: Arc::default(),
            drop_partitions: true,
        };
        store.run(migrate)?;
        Ok(store)
    }

    /// Runs `f` with a pooled connection on the store's runtime and waits for its result.
    /// `f` itself runs on the caller's thread (so it may borrow), its future on the runtime.
    pub(super) fn run<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = StoreResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let client = Self::wait(runtime.spawn(async move { pool.get().await }))?
            .map_err(|e| unreachable_db(&self.target, e))?;
        Self::wait(runtime.spawn(f(client)))?
    }

    /// The row `sql` finds with `params`, read by `from_row`, or `None`. The statement is
    /// prepared once per connection: these are the reads of one record by its key, which
    /// every signed-in page and API call makes.
    pub(super) fn one<T: Send + 'static>(
        &self,
        sql: String,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
        from_row: fn(&Row) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        self.run(move |c| async move {
            let statement = c.prepare_cached(&sql).await.map_err(pg)?;
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            c.query_opt(&statement, &refs)
                .await
                .map_err(pg)?
                .map(|r| from_row(&r))
                .transpose()
        })
    }

    /// Waits on this thread for a task on the store's runtime.
    ///
    /// The caller is often a task of the collector's own runtime, and tokio's cooperative
    /// budget belongs to that task: polling a `JoinHandle` from inside it spends the budget,
    /// and once it is spent the handle answers "not yet" for ever, because the caller's task
    /// never yields to reset it (a collector starting over 100 devices hung here on its 129th
    /// call). So the wait is taken out of the budget.
    fn wait<T>(task: tokio::task::JoinHandle<T>) -> StoreResult<T> {
        futures::executor::block_on(tokio::task::unconstrained(task))
            .map_err(|e| StoreError::engine("a PostgreSQL call failed", e))
    }

    /// This store with purges that delete rows only, never a whole partition: the shared
    /// privacy suite holds every purge call to its batch size, which a dropped partition is
    /// not (`privacy/purge.rs`); the partition path has tests of its own.
    #[cfg(test)]
    pub(crate) fn rows_only(mut self) -> Self {
        self.drop_partitions = false;
        self
    }

    /// The months whose event partition is known to exist, shared by this store's calls.
    fn partitions(&self) -> Arc<Mutex<HashSet<i64>>> {
        self.partitions.clone()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime from inside another's worker thread panics; shutting it down in the
        // background does not, and ends the connections' tasks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A pool error, as the reason the database could not be reached.
fn unreachable_db(target: &str, e: deadpool_postgres::PoolError) -> StoreError {
    let reason = match &e {
        deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => {
                // "error connecting to server: Connection refused (os error 111)" and the like:
                // the source chain holds the reason.
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    reason = format!("{reason}: {s}");
                    source = s.source();
                }
                reason
            }
        },
        other => other.to_string(),
    };
    let what = format!("cannot reach PostgreSQL at {target}");
    // The pool's wrapper adds only "Error occurred while creating a new object": the cause kept
    // is the connection's own error.
    match e {
        deadpool_postgres::PoolError::Backend(source) => StoreError::engine(
            what,
            super::Described {
                message: reason,
                source,
            },
        ),
        source => StoreError::engine(
            what,
            super::Described {
                message: reason,
                source,
            },
        ),
    }
}

/// Applies the migrations this database has not had, in order, each in one transaction.
async fn migrate(mut client: Object) -> StoreResult<()> {
    for &(version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(pg)?;
        // Held to the commit: a second collector starting now waits, then finds it applied.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
            .await
            .map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
                 version bigint PRIMARY KEY, \
                 name text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg)?;
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await
            .map_err(pg)?
            .is_some();
        if !applied {
            tx.batch_execute(sql).await.map_err(|e| {
                StoreError::engine(format!("migration {version:04}_{name} failed"), e)
            })?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&version, &name],
            )
            .await
            .map_err(pg)?;
            tracing::info!(version, name, "Database schema migrated");
        }
        tx.commit().await.map_err(pg)?;
    }
    Ok(())
}
