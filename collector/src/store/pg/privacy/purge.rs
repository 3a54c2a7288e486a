//! The retention purge on PostgreSQL: whole monthly partitions dropped where every event in them has expired, then a bounded batch of rows of each kind in one transaction.
//!
//! Lock order, the same as the append's so neither waits for the other in a cycle: the
//! privacy lock, then device rows (sorted), then incident groups (sorted), then incidents
//! (sorted). The append takes device rows, the arrival clock, groups, incidents; a purge never
//! takes the clock, and holds no group or incident while it waits for a device.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{Datelike, Utc};
use deadpool_postgres::{Object, Transaction};
use tokio_postgres::types::ToSql;

use super::super::events::{EVENT_COLUMNS, event_from_row};
use super::super::incidents::{INCIDENT_COLUMNS, big, incident_from_row, pg};
use super::{AUDIT_COLUMNS, HeldParams, audit_from_row, count, cutoff_ns, event_not_held};
use crate::store::privacy::{Held, PurgeCounts, PurgeCutoffs, SAFEGUARDING_AUDIENCE};
use crate::store::{Category, StoreResult};

/// "Expired by its category's cutoff" for an event row `e`, the technical cutoff in $1 and
/// the safeguarding one in $2.
const EVENT_EXPIRED: &str = "(CASE WHEN e.audience @> ARRAY['dsl']::text[] \
     THEN e.occurred_at_ns < $2 ELSE e.occurred_at_ns < $1 END)";

/// One purge call: at most one whole partition (when `partitions`, the store's known months,
/// is given), then one batch of at most about `limit` rows.
///
/// A dropped partition's events are not held to `limit`: its `DETACH` and `DROP` cost the
/// same for a million events as for ten, and waiting until fewer than `limit` were left
/// would mean deleting them row by row after all.
pub(super) async fn purge(
    mut client: Object,
    partitions: Option<Arc<Mutex<HashSet<i64>>>>,
    cutoffs: PurgeCutoffs,
    limit: usize,
) -> StoreResult<PurgeCounts> {
    debug_assert_eq!(
        SAFEGUARDING_AUDIENCE, "dsl",
        "EVENT_EXPIRED names the audience"
    );
    let dropped = match partitions {
        Some(known) => drop_expired_partition(&mut client, &known, &cutoffs).await?,
        None => PurgeCounts::default(),
    };
    // The batch's budget is in rows; a dropped partition cost no row's work.
    let mut counts = PurgeCounts::default();
    let tx = client.transaction().await.map_err(pg)?;
    let held = super::lock_and_read_holds(&tx).await?;
    let params = HeldParams::of(&held)?;
    let batch = Batch {
        tx: &tx,
        cutoffs: &cutoffs,
        held: &held,
        p: &params,
    };
    // Each kind gets what the kinds before it left of the budget.
    let left = |counts: &PurgeCounts| {
        limit
            .max(1)
            .saturating_sub(usize::try_from(counts.total()).unwrap_or(usize::MAX))
    };
    batch.events(left(&counts), &mut counts).await?;
    batch.incidents(left(&counts), &mut counts).await?;
    batch.audit(left(&counts), &mut counts).await?;
    batch.digests(left(&counts), &mut counts).await?;
    tx.commit().await.map_err(pg)?;
    counts.add(&dropped);
    Ok(counts)
}

/// Locks the devices' rows (sorted, as the append does) and takes `n` events off each's count.
async fn uncount_events(
    tx: &Transaction<'_>,
    per_device: &BTreeMap<String, i64>,
) -> StoreResult<()> {
    if per_device.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = per_device.keys().map(String::as_str).collect();
    let ns: Vec<i64> = per_device.values().copied().collect();
    tx.query(
        "SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "UPDATE devices d SET event_count = d.event_count - u.n \
         FROM unnest($1::text[], $2::bigint[]) AS u(id, n) WHERE d.id = u.id",
        &[&ids, &ns],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// The technical and safeguarding cutoffs as statement parameters (`EVENT_EXPIRED`'s $1 and
/// $2), or `None` when neither kind of event expires.
fn category_cutoffs(cutoffs: &PurgeCutoffs) -> StoreResult<Option<(i64, i64)>> {
    if cutoffs.technical.is_none() && cutoffs.safeguarding.is_none() {
        return Ok(None);
    }
    Ok(Some((
        cutoff_ns(cutoffs.technical)?,
        cutoff_ns(cutoffs.safeguarding)?,
    )))
}

/// The parameters of `EVENT_EXPIRED` and `event_not_held(3)`, $1 to $8.
fn event_params<'a>(cut: &'a (i64, i64), p: &'a HeldParams) -> Vec<&'a (dyn ToSql + Sync)> {
    vec![
        &cut.0,
        &cut.1,
        &p.devices,
        &p.users,
        &p.incident_devices,
        &p.incident_kinds,
        &p.incident_first,
        &p.incident_last,
    ]
}

/// One purge call's batch of rows, in the transaction that holds the privacy lock: each kind
/// removes its oldest expired rows no hold keeps, at most `budget` (none when it is 0).
struct Batch<'a, 't> {
    tx: &'a Transaction<'t>,
    cutoffs: &'a PurgeCutoffs,
    held: &'a Held,
    p: &'a HeldParams,
}

impl Batch<'_, '_> {
    /// The oldest expired events no hold keeps.
    async fn events(&self, budget: usize, counts: &mut PurgeCounts) -> StoreResult<()> {
        let Some(cut) = category_cutoffs(self.cutoffs)?.filter(|_| budget > 0) else {
            return Ok(());
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE {EVENT_EXPIRED} AND {} \
             ORDER BY e.occurred_at_ns LIMIT $9",
            event_not_held(3)
        );
        let limit = budget as i64;
        let mut params = event_params(&cut, self.p);
        params.push(&limit);
        let mut doomed = Vec::new();
        for r in self.tx.query(&sql, &params).await.map_err(pg)? {
            let (id, e) = event_from_row(&r)?;
            // The shared rules decide; the SQL above only keeps held events out of the batch.
            if self.cutoffs.event_expired(&e) && !self.held.keeps_event(&e) {
                doomed.push(id);
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        // Counted by what was deleted. Deleting first is safe: an append never locks a stored
        // event, and the counts are taken off whatever the devices' rows hold when locked.
        let gone = self
            .tx
            .query(
                "DELETE FROM events WHERE id = ANY($1) \
                 RETURNING device_id, audience @> ARRAY['dsl']::text[]",
                &[&doomed],
            )
            .await
            .map_err(pg)?;
        let mut per_device: BTreeMap<String, i64> = BTreeMap::new();
        for r in &gone {
            *per_device.entry(r.get(0)).or_default() += 1;
            if r.get::<_, bool>(1) {
                counts.safeguarding_events += 1;
            } else {
                counts.technical_events += 1;
            }
        }
        uncount_events(self.tx, &per_device).await
    }

    /// The oldest expired incidents no hold keeps, with their records and their group's
    /// pointer.
    async fn incidents(&self, budget: usize, counts: &mut PurgeCounts) -> StoreResult<()> {
        let Some(cut) = category_cutoffs(self.cutoffs)?.filter(|_| budget > 0) else {
            return Ok(());
        };
        let expired = format!(
            "status = 'closed' AND CASE WHEN category = '{sg}' \
             THEN updated_at_ns < $2 AND last_at_ns < $2 \
             ELSE updated_at_ns < $1 AND last_at_ns < $1 END \
         AND NOT (id = ANY($3)) AND NOT (device_id = ANY($4)) \
         AND NOT coalesce(user_name = ANY($5), false)",
            sg = Category::Safeguarding.as_str()
        );
        let limit = budget as i64;
        let candidates: Vec<i64> = self
            .tx
            .query(
                &format!(
                    "SELECT id FROM incidents WHERE {expired} ORDER BY updated_at_ns, id LIMIT $6"
                ),
                &[
                    &cut.0,
                    &cut.1,
                    &self.p.incident_ids,
                    &self.p.devices,
                    &self.p.users,
                    &limit,
                ],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        // Groups before incidents, both sorted, as the fold locks them. A group whose latest
        // incident goes is removed with it, so the group's next event opens a new incident.
        self.tx
            .query(
                "SELECT group_key FROM incident_groups WHERE incident = ANY($1) \
                 ORDER BY group_key FOR UPDATE",
                &[&candidates],
            )
            .await
            .map_err(pg)?;
        let mut doomed = Vec::new();
        for r in self
            .tx
            .query(
                &format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ANY($1) \
                     ORDER BY id FOR UPDATE"
                ),
                &[&candidates],
            )
            .await
            .map_err(pg)?
        {
            // Read again under the lock: an entry may have reopened it meanwhile.
            let i = incident_from_row(&r)?;
            if self.cutoffs.incident_expired(&i) && !self.held.keeps_incident(&i) {
                doomed.push(big("incident id", i.id)?);
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        counts.incident_entries += self
            .tx
            .execute(
                "DELETE FROM incident_entries WHERE incident = ANY($1)",
                &[&doomed],
            )
            .await
            .map_err(pg)?;
        self.tx
            .execute(
                "DELETE FROM incident_groups WHERE incident = ANY($1)",
                &[&doomed],
            )
            .await
            .map_err(pg)?;
        counts.incidents += self
            .tx
            .execute("DELETE FROM incidents WHERE id = ANY($1)", &[&doomed])
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// The oldest expired audit entries no hold keeps.
    async fn audit(&self, budget: usize, counts: &mut PurgeCounts) -> StoreResult<()> {
        let Some(cutoff) = self.cutoffs.audit.filter(|_| budget > 0) else {
            return Ok(());
        };
        let limit = budget as i64;
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit WHERE at_ns < $1 \
                     AND NOT (actor = ANY($2) OR target = ANY($2) OR target = ANY($3) \
                         OR target = ANY($4)) \
                     ORDER BY at_ns, id LIMIT $5"
                ),
                &[
                    &super::ns(cutoff)?,
                    &self.p.users,
                    &self.p.devices,
                    &self.p.incident_targets,
                    &limit,
                ],
            )
            .await
            .map_err(pg)?;
        let mut doomed = Vec::new();
        for r in &rows {
            let a = audit_from_row(r)?;
            if self.cutoffs.audit_expired(&a) && !self.held.keeps_audit(&a) {
                doomed.push(big("audit id", a.id)?);
            }
        }
        if !doomed.is_empty() {
            counts.audit_entries += self
                .tx
                .execute("DELETE FROM audit WHERE id = ANY($1)", &[&doomed])
                .await
                .map_err(pg)?;
        }
        Ok(())
    }

    /// The oldest sent digests past their cutoff (a pending one is never purged).
    async fn digests(&self, budget: usize, counts: &mut PurgeCounts) -> StoreResult<()> {
        let Some(cutoff) = self.cutoffs.digests.filter(|_| budget > 0) else {
            return Ok(());
        };
        counts.digests += self
            .tx
            .execute(
                "DELETE FROM digests WHERE id IN (SELECT id FROM digests \
                 WHERE status = 'sent' AND created_at_ns < $1 \
                 ORDER BY created_at_ns, id LIMIT $2)",
                &[&super::ns(cutoff)?, &(budget as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}

/// Months since year 0 of a partition named `events_YYYY_MM` (`append.rs` names them so).
fn partition_month(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("events_")?;
    let (y, m) = rest.split_once('_')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i64, i64) = (y.parse().ok()?, m.parse().ok()?);
    (1..=12).contains(&m).then_some(y * 12 + m - 1)
}

/// Drops the oldest monthly partition of a past month whose every event has expired and
/// is kept by no hold, after taking its events off their devices' counts; what it held, or
/// nothing. One `DETACH` and `DROP` cost the same for a million events as for one, where
/// deleting them row by row would write every row's death to the WAL and leave the table
/// to vacuum.
async fn drop_expired_partition(
    client: &mut Object,
    known: &Mutex<HashSet<i64>>,
    cutoffs: &PurgeCutoffs,
) -> StoreResult<PurgeCounts> {
    // Below the later cutoff, every event of either kind with a cutoff has expired.
    let Some(latest) = [cutoffs.technical, cutoffs.safeguarding]
        .into_iter()
        .flatten()
        .max()
    else {
        return Ok(PurgeCounts::default());
    };
    let latest = super::ns(latest)?;
    let now = Utc::now();
    let this_month = i64::from(now.year()) * 12 + i64::from(now.month0());
    let mut past: Vec<(i64, String)> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'events'::regclass",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            // The month being written to is never dropped, however old its events.
            partition_month(&name)
                .filter(|m| *m < this_month)
                .map(|m| (m, name))
        })
        .collect();
    past.sort();
    let Some(cut) = category_cutoffs(cutoffs)? else {
        return Ok(PurgeCounts::default());
    };
    for (month, name) in past {
        // The newest occurrence, through the index: most partitions are ruled out here.
        let newest: Option<i64> = client
            .query_one(&format!("SELECT max(occurred_at_ns) FROM {name}"), &[])
            .await
            .map_err(pg)?
            .get(0);
        if newest.is_some_and(|t| t >= latest) {
            continue;
        }
        let tx = client.transaction().await.map_err(pg)?;
        let held = super::lock_and_read_holds(&tx).await?;
        let p = HeldParams::of(&held)?;
        // No row can come or go while it is judged (a past month receives nothing new).
        tx.batch_execute(&format!("LOCK TABLE {name} IN SHARE MODE"))
            .await
            .map_err(pg)?;
        let params = event_params(&cut, &p);
        let keeps_some: bool = tx
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {name} e \
                     WHERE NOT ({EVENT_EXPIRED} AND {}))",
                    event_not_held(3)
                ),
                &params,
            )
            .await
            .map_err(pg)?
            .get(0);
        if keeps_some {
            tx.rollback().await.map_err(pg)?;
            continue;
        }
        let mut counts = PurgeCounts::default();
        let mut per_device = BTreeMap::new();
        for r in tx
            .query(
                &format!(
                    "SELECT device_id, count(*) FILTER (WHERE audience @> ARRAY['dsl']::text[]), \
                         count(*) FROM {name} GROUP BY device_id"
                ),
                &[],
            )
            .await
            .map_err(pg)?
        {
            let (safeguarding, all): (i64, i64) = (r.get(1), r.get(2));
            counts.safeguarding_events += count("event count", safeguarding)?;
            counts.technical_events += count("event count", all - safeguarding)?;
            per_device.insert(r.get::<_, String>(0), all);
        }
        uncount_events(&tx, &per_device).await?;
        tx.batch_execute(&format!(
            "ALTER TABLE events DETACH PARTITION {name}; DROP TABLE {name}"
        ))
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&month);
        tracing::info!(partition = %name, events = counts.total(), "Expired event partition dropped");
        return Ok(counts);
    }
    Ok(PurgeCounts::default())
}
