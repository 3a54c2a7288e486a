//! Which collector leads the digests: the one holding a session-level advisory lock, on a connection of its own that stays open while it leads.
//!
//! Several collectors share the database, and each runs the digest loop; only the leader plans
//! and sends, or the DSL would get every digest once per collector. PostgreSQL releases a
//! session's advisory locks when the session ends, so a leader that dies (kill -9, a lost
//! network) hands over by itself: the next collector to ask takes the lock.

use tokio_postgres::{Client, Config, NoTls};

use super::PgStore;
use crate::store::{StoreError, StoreResult};

/// The digests' lock key ("care" in the high bytes, like the transaction-level keys).
const LOCK_DIGESTS: i64 = 0x6361_7265_0000_0010;

/// The leader's connection, and whether it holds the lock.
#[derive(Default)]
pub(super) struct Leader(tokio::sync::Mutex<Option<(Client, bool)>>);

impl PgStore {
    /// True while this store's session holds the digests' lock (taking it when free).
    pub(super) fn lead(&self) -> StoreResult<bool> {
        let (config, leader) = (self.config.clone(), self.leader.clone());
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        Self::wait(runtime.spawn(async move { lead(&config, &leader).await }))?
    }
}

async fn lead(config: &Config, leader: &Leader) -> StoreResult<bool> {
    let mut slot = leader.0.lock().await;
    // A closed session has lost its lock; so has one that no longer answers.
    if let Some((client, _)) = slot.as_ref()
        && (client.is_closed() || client.simple_query("SELECT 1").await.is_err())
    {
        *slot = None;
    }
    if slot.is_none() {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::engine("cannot connect to lead the digests", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "The digests' leader connection ended");
            }
        });
        *slot = Some((client, false));
    }
    let (client, held) = slot.as_mut().expect("connected above");
    if !*held {
        *held = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_DIGESTS])
            .await
            .map_err(|e| StoreError::engine("cannot take the digests' lock", e))?
            .get(0);
        if *held {
            tracing::info!("This collector now sends the DSL's digests");
        }
    }
    Ok(*held)
}

#[cfg(test)]
mod tests {
    use super::super::rig::test_database;
    use crate::store::{DigestStore, PgStore};

    /// Of two collectors on one database one leads, and keeps leading; when it goes (its
    /// sessions end), the other takes over at its next ask.
    #[test]
    fn one_collector_leads_the_digests_and_another_takes_over_when_it_goes() {
        let (url, _guard) = test_database();
        let first = PgStore::connect(&url).unwrap();
        let second = PgStore::connect(&url).unwrap();
        assert!(first.lead_digests().unwrap());
        assert!(!second.lead_digests().unwrap());
        assert!(first.lead_digests().unwrap(), "the leader keeps leading");
        assert!(!second.lead_digests().unwrap());
        drop(first);
        // The server notices the closed session at once over a Unix socket; allow a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !second.lead_digests().unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the second never took over"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
