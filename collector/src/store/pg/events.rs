//! The PostgreSQL implementation of `Store`: devices, derived states, enrolment tokens and policy versions, and the entry points of the append (`append.rs`) and the listings (`listing.rs`).
//!
//! Several collectors share these rows: every read-modify-write is one statement (`UPDATE ...
//! RETURNING`, `ON CONFLICT`) or holds a lock to its commit.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio_postgres::Row;

use super::incidents::{big, from_ns, ns, pg, unsigned};
use super::{LOCK_POLICY, PgStore};
use crate::store::{
    Device, DeviceBatch, EventPage, EventQuery, PolicyVersion, Store, StoreError, StoreResult,
    StoredEvent, TokenRecord, TokenRefusal,
};

pub(super) const DEVICE_COLUMNS: &str = "id, hostname, os, agent_version, enrolled_at_ns, last_seen_ns, \
     enrolled_with, revoked_at_ns, event_count, highest_seq, state";

pub(super) const EVENT_COLUMNS: &str = "id, device_id, seq, kind, occurred_at_ns, received_at_ns, \"user\", \
     severity, audience, details, assessment";

const TOKEN_COLUMNS: &str = "hash, label, max_uses, uses, created_at_ns, expires_at_ns";

fn object(what: &str, v: Value) -> StoreResult<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(StoreError::Corrupt(format!(
            "{what} is not a JSON object: {other}"
        ))),
    }
}

pub(super) fn device_from_row(r: &Row) -> StoreResult<Device> {
    Ok(Device {
        id: r.get(0),
        hostname: r.get(1),
        os: r.get(2),
        agent_version: r.get(3),
        enrolled_at: from_ns(r.get(4)),
        last_seen: r.get::<_, Option<i64>>(5).map(from_ns),
        enrolled_with: r.get(6),
        revoked_at: r.get::<_, Option<i64>>(7).map(from_ns),
        event_count: unsigned("event count", r.get(8))?,
        highest_seq: unsigned("highest sequence", r.get(9))?,
        state: object("device state", r.get(10))?,
    })
}

/// An event row (`EVENT_COLUMNS`) as its arrival id and the event.
pub(super) fn event_from_row(r: &Row) -> StoreResult<(i64, StoredEvent)> {
    Ok((
        r.get(0),
        StoredEvent {
            device_id: r.get(1),
            seq: unsigned("sequence", r.get(2))?,
            kind: r.get(3),
            occurred_at: from_ns(r.get(4)),
            received_at: from_ns(r.get(5)),
            user: r.get(6),
            severity: r.get(7),
            audience: r.get(8),
            details: object("event details", r.get(9))?,
            assessment: r.get(10),
        },
    ))
}

fn token_from_row(r: &Row) -> StoreResult<TokenRecord> {
    Ok(TokenRecord {
        hash: r.get(0),
        label: r.get(1),
        max_uses: u32::try_from(r.get::<_, i64>(2))
            .map_err(|_| StoreError::Corrupt("token max_uses".into()))?,
        uses: u32::try_from(r.get::<_, i64>(3))
            .map_err(|_| StoreError::Corrupt("token uses".into()))?,
        created_at: from_ns(r.get(4)),
        expires_at: from_ns(r.get(5)),
    })
}

fn policy_from_row(r: &Row) -> StoreResult<PolicyVersion> {
    Ok(PolicyVersion {
        version: unsigned("policy version", r.get(0))?,
        policy: r.get(1),
        changed_by: r.get(2),
        changed_at: from_ns(r.get(3)),
    })
}

impl PgStore {
    /// Every enrolment token, newest first.
    pub(super) fn enrolment_token_list(&self) -> StoreResult<Vec<TokenRecord>> {
        self.run(|c| async move {
            c.query(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at_ns DESC, hash"),
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(token_from_row)
            .collect()
        })
    }
}

impl Store for PgStore {
    fn insert_device(&self, device: &Device) -> StoreResult<()> {
        let d = device.clone();
        let enrolled = ns(d.enrolled_at)?;
        let last_seen = d.last_seen.map(ns).transpose()?;
        let revoked = d.revoked_at.map(ns).transpose()?;
        let count = big("event count", d.event_count)?;
        let highest = big("highest sequence", d.highest_seq)?;
        self.run(move |c| async move {
            let state = Value::Object(d.state);
            c.execute(
                &format!(
                    "INSERT INTO devices ({DEVICE_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, \
                         os = EXCLUDED.os, agent_version = EXCLUDED.agent_version, \
                         enrolled_at_ns = EXCLUDED.enrolled_at_ns, \
                         last_seen_ns = EXCLUDED.last_seen_ns, \
                         enrolled_with = EXCLUDED.enrolled_with, \
                         revoked_at_ns = EXCLUDED.revoked_at_ns, \
                         event_count = EXCLUDED.event_count, \
                         highest_seq = EXCLUDED.highest_seq, state = EXCLUDED.state"
                ),
                &[
                    &d.id,
                    &d.hostname,
                    &d.os,
                    &d.agent_version,
                    &enrolled,
                    &last_seen,
                    &d.enrolled_with,
                    &revoked,
                    &count,
                    &highest,
                    &state,
                ],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn device(&self, id: &str) -> StoreResult<Option<Device>> {
        self.one(
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"),
            vec![Box::new(id.to_string())],
            device_from_row,
        )
    }

    fn devices(&self) -> StoreResult<Vec<Device>> {
        self.run(|c| async move {
            c.query(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"),
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(device_from_row)
            .collect()
        })
    }

    fn revoke_device(&self, id: &str, at: DateTime<Utc>) -> StoreResult<Device> {
        let id = id.to_string();
        let at = ns(at)?;
        self.run(move |c| async move {
            // One statement: an append holding the row waits or goes first, and neither undoes
            // the other's write. The first revocation stands.
            let row = c
                .query_opt(
                    &format!(
                        "UPDATE devices SET revoked_at_ns = coalesce(revoked_at_ns, $2) \
                         WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
                    ),
                    &[&id, &at],
                )
                .await
                .map_err(pg)?;
            match row {
                Some(r) => device_from_row(&r),
                None => Err(StoreError::NoSuchDevice(id)),
            }
        })
    }

    fn append(&self, group: &[DeviceBatch]) -> StoreResult<u64> {
        if group.is_empty() {
            return Ok(0);
        }
        let group = group.to_vec();
        let partitions = self.partitions();
        self.run(move |c| super::append::append(c, partitions, group))
    }

    fn events(&self, query: &EventQuery) -> StoreResult<EventPage> {
        self.event_page(query)
    }

    fn device_events_after(
        &self,
        device: &str,
        after_seq: u64,
        kind_prefix: &str,
        visit: &mut dyn FnMut(&StoredEvent),
    ) -> StoreResult<u64> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(after_seq); // nothing is stored above a bigint
        };
        let Some(highest) = self.highest_seq_above(device, after)? else {
            return Ok(after_seq);
        };
        // A chunk at a time, so a device with years of events is never read into memory whole.
        let mut from = after;
        loop {
            let (chunk, full) = self.device_chunk(device, (from, highest), kind_prefix)?;
            for e in &chunk {
                visit(e);
            }
            match chunk.last() {
                Some(e) if full => from = e.seq as i64,
                _ => break,
            }
        }
        Ok(highest as u64)
    }

    fn put_derived(
        &self,
        name: &str,
        device: &str,
        through_seq: u64,
        state: &Value,
    ) -> StoreResult<()> {
        let (name, device, state) = (name.to_string(), device.to_string(), state.clone());
        let through = big("derived sequence", through_seq)?;
        self.run(move |c| async move {
            c.execute(
                "INSERT INTO derived (name, device_id, through_seq, state) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name, device_id) DO UPDATE \
                     SET through_seq = EXCLUDED.through_seq, state = EXCLUDED.state",
                &[&name, &device, &through, &state],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn derived_of(&self, name: &str, device: &str) -> StoreResult<Option<(u64, Value)>> {
        let (name, device) = (name.to_string(), device.to_string());
        self.run(move |c| async move {
            c.query_opt(
                "SELECT through_seq, state FROM derived WHERE name = $1 AND device_id = $2",
                &[&name, &device],
            )
            .await
            .map_err(pg)?
            .map(|r| Ok((unsigned("derived sequence", r.get(0))?, r.get(1))))
            .transpose()
        })
    }

    fn derived(&self, name: &str) -> StoreResult<Vec<(String, u64, Value)>> {
        let name = name.to_string();
        self.run(move |c| async move {
            c.query(
                "SELECT device_id, through_seq, state FROM derived WHERE name = $1 \
                 ORDER BY device_id",
                &[&name],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| Ok((r.get(0), unsigned("derived sequence", r.get(1))?, r.get(2))))
            .collect()
        })
    }

    fn insert_token(&self, token: &TokenRecord) -> StoreResult<()> {
        let t = token.clone();
        let (created, expires) = (ns(t.created_at)?, ns(t.expires_at)?);
        self.run(move |c| async move {
            c.execute(
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (hash) DO UPDATE SET label = EXCLUDED.label, \
                         max_uses = EXCLUDED.max_uses, uses = EXCLUDED.uses, \
                         created_at_ns = EXCLUDED.created_at_ns, \
                         expires_at_ns = EXCLUDED.expires_at_ns"
                ),
                &[
                    &t.hash,
                    &t.label,
                    &i64::from(t.max_uses),
                    &i64::from(t.uses),
                    &created,
                    &expires,
                ],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn use_token(
        &self,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<TokenRecord, TokenRefusal>> {
        let hash = hash.to_string();
        let now = ns(now)?;
        self.run(move |c| async move {
            // The check and the count in one statement: two collectors enrolling with the last
            // use of a token at once cannot both have it.
            let used = c
                .query_opt(
                    &format!(
                        "UPDATE tokens SET uses = uses + 1 \
                         WHERE hash = $1 AND uses < max_uses AND expires_at_ns > $2 \
                         RETURNING {TOKEN_COLUMNS}"
                    ),
                    &[&hash, &now],
                )
                .await
                .map_err(pg)?;
            if let Some(r) = used {
                return Ok(Ok(token_from_row(&r)?));
            }
            let found = c
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"),
                    &[&hash],
                )
                .await
                .map_err(pg)?;
            Ok(Err(match found {
                None => TokenRefusal::Unknown,
                Some(r) if ns(token_from_row(&r)?.expires_at)? <= now => TokenRefusal::Expired,
                Some(_) => TokenRefusal::UsedUp,
            }))
        })
    }

    fn current_policy(&self) -> StoreResult<Option<PolicyVersion>> {
        self.run(|c| async move {
            c.query_opt(
                "SELECT version, policy, changed_by, changed_at_ns FROM policies \
                 ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(pg)?
            .map(|r| policy_from_row(&r))
            .transpose()
        })
    }

    fn put_policy(
        &self,
        policy: Value,
        changed_by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<PolicyVersion> {
        let changed_by = changed_by.to_string();
        let at = ns(at)?;
        self.run(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg)?;
            // Held to the commit, so the next writer's max() sees this version: two
            // collectors never number two policies alike.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_POLICY])
                .await
                .map_err(pg)?;
            let row = tx
                .query_one(
                    "INSERT INTO policies (version, policy, changed_by, changed_at_ns) \
                     SELECT coalesce(max(version), 0) + 1, $1, $2, $3 FROM policies \
                     RETURNING version, policy, changed_by, changed_at_ns",
                    &[&policy, &changed_by, &at],
                )
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            policy_from_row(&row)
        })
    }

    fn policy_history(&self) -> StoreResult<Vec<PolicyVersion>> {
        self.run(|c| async move {
            c.query(
                "SELECT version, policy, changed_by, changed_at_ns FROM policies ORDER BY version",
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(policy_from_row)
            .collect()
        })
    }

    fn policy_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<PolicyVersion>, bool)> {
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let mut page = self.run(move |c| async move {
            c.query(
                "SELECT version, policy, changed_by, changed_at_ns FROM policies \
                 WHERE version < $1 ORDER BY version DESC LIMIT $2",
                &[&before, &fetch],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(policy_from_row)
            .collect::<StoreResult<Vec<_>>>()
        })?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }
}
