//! The PostgreSQL implementation of `IncidentStore`, and the fold that opens and extends incidents inside the append transaction.
//!
//! Several collectors share the database, so nothing here reads and then blindly writes: the
//! fold (`fold.rs`) locks the groups' rows and their incidents' rows before it changes them,
//! and an entry locks its incident's row, which also numbers the entries without gaps. New
//! incidents' ids come from a sequence: unique and increasing, but not in commit order (only
//! the audit log's paging needs that).

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::super::{
    Category, EntryAction, Incident, IncidentEntry, IncidentQuery, IncidentStatus, IncidentStore,
    StoreError, StoreResult,
};
use super::PgStore;
use super::accounts::{limit_plus_one, page_of};

mod fold;
// `append` should call `fold_events` once per group: a call per event costs about 1.3 ms
// each (1,000 flagged events: 1.3 s one by one, 10-20 ms at once, debug build, local socket).
#[allow(unused_imports)]
pub(super) use fold::fold_events;

/// A time as stored: nanoseconds since the Unix epoch (see the migration for why not
/// timestamptz).
pub(super) fn ns(t: DateTime<Utc>) -> StoreResult<i64> {
    t.timestamp_nanos_opt()
        .ok_or_else(|| StoreError::Conflict(format!("{t} is outside the storable years")))
}

pub(super) fn from_ns(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(n)
}

/// A u64 the collector hands over, as a bigint.
pub(super) fn big(what: &str, v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Conflict(format!("{what} {v} is too large to store")))
}

/// A bigint read back as the u64 it was written from.
pub(super) fn unsigned(what: &str, v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative ({v})")))
}

pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::engine("postgres", e)
}

/// A snake_case label written from one of the store's enums, read back through its serde names.
fn label<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> StoreResult<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| StoreError::Corrupt(format!("unknown {what} {s:?}")))
}

/// The columns `incident_from_row` reads, in order.
pub(super) const INCIDENT_COLUMNS: &str = "id, category, device_id, user_name, kind, subject, \
     title, severity, audience, first_at_ns, last_at_ns, count, first_seq, last_seq, status, \
     updated_at_ns";

pub(super) fn incident_from_row(r: &Row) -> StoreResult<Incident> {
    let category: String = r.get(1);
    let status: String = r.get(14);
    Ok(Incident {
        id: unsigned("incident id", r.get(0))?,
        category: label::<Category>("category", &category)?,
        device_id: r.get(2),
        user: r.get(3),
        kind: r.get(4),
        subject: r.get(5),
        title: r.get(6),
        severity: r.get(7),
        audience: r.get(8),
        first_at: from_ns(r.get(9)),
        last_at: from_ns(r.get(10)),
        count: unsigned("incident count", r.get(11))?,
        first_seq: unsigned("incident first_seq", r.get(12))?,
        last_seq: unsigned("incident last_seq", r.get(13))?,
        status: label::<IncidentStatus>("incident status", &status)?,
        updated_at: from_ns(r.get(15)),
    })
}

pub(super) fn entry_from_row(r: &Row) -> StoreResult<IncidentEntry> {
    let action: String = r.get(4);
    let n: i32 = r.get(1);
    Ok(IncidentEntry {
        incident: unsigned("incident id", r.get(0))?,
        n: u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("entry number {n}")))?,
        at: from_ns(r.get(2)),
        by: r.get(3),
        action: EntryAction::parse(&action)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown entry action {action:?}")))?,
        text: r.get(5),
    })
}

impl IncidentStore for PgStore {
    fn incident(&self, id: u64) -> StoreResult<Option<Incident>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.one(
            format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"),
            vec![Box::new(id)],
            incident_from_row,
        )
    }

    fn incidents(&self, q: &IncidentQuery) -> StoreResult<(Vec<Incident>, Option<u64>)> {
        let upper = q
            .before
            .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let category = q.category.map(Category::as_str);
        let status = q.status.map(IncidentStatus::as_str);
        let open_only = q.open_only;
        let device = q.device.clone();
        let user = q.user.clone();
        let limit = q.limit;
        self.run(move |c| async move {
            // A NULL parameter leaves its filter out. The statement is prepared for this call
            // alone, so it is planned with its values bound: a device's page walks
            // incidents_by_device, the default view incidents_open.
            let rows = c
                .query(
                    &format!(
                        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id < $1 \
                         AND ($2::text IS NULL OR category = $2) \
                         AND ($3::text IS NULL OR status = $3) \
                         AND (NOT $4 OR status <> 'closed') \
                         AND ($5::text IS NULL OR device_id = $5) \
                         AND ($6::text IS NULL OR user_name = $6) \
                         ORDER BY id DESC LIMIT $7"
                    ),
                    &[
                        &upper,
                        &category,
                        &status,
                        &open_only,
                        &device,
                        &user,
                        &limit_plus_one(limit),
                    ],
                )
                .await
                .map_err(pg)?;
            page_of(&rows, limit, incident_from_row, |i| i.id)
        })
    }

    fn add_incident_entry(
        &self,
        incident: u64,
        at: DateTime<Utc>,
        by: &str,
        action: EntryAction,
        text: &str,
    ) -> StoreResult<IncidentEntry> {
        let missing = move || StoreError::Conflict(format!("there is no incident {incident}"));
        let id = i64::try_from(incident).map_err(|_| missing())?;
        let at_ns = ns(at)?;
        let by = by.to_string();
        let text = text.to_string();
        self.run(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg)?;
            // The incident's row lock serialises entries (and folds) on it, so `n` is the next
            // number and the status is computed from the latest one.
            let Some(row) = tx
                .query_opt(
                    "SELECT status FROM incidents WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(pg)?
            else {
                return Err(missing());
            };
            let before: IncidentStatus = label("incident status", row.get(0))?;
            let n: i32 = tx
                .query_one(
                    "SELECT coalesce(max(n), 0) + 1 FROM incident_entries WHERE incident = $1",
                    &[&id],
                )
                .await
                .map_err(pg)?
                .get(0);
            tx.execute(
                "INSERT INTO incident_entries (incident, n, at_ns, author, action, body) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&id, &n, &at_ns, &by, &action.as_str(), &text],
            )
            .await
            .map_err(pg)?;
            tx.execute(
                "UPDATE incidents SET status = $2, updated_at_ns = $3 WHERE id = $1",
                &[&id, &action.status_after(before).as_str(), &at_ns],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(IncidentEntry {
                incident,
                n: u32::try_from(n)
                    .map_err(|_| StoreError::Corrupt(format!("entry number {n}")))?,
                at,
                by,
                action,
                text,
            })
        })
    }

    fn incident_entries(&self, incident: u64) -> StoreResult<Vec<IncidentEntry>> {
        let Ok(id) = i64::try_from(incident) else {
            return Ok(Vec::new());
        };
        self.run(move |c| async move {
            c.query(
                "SELECT incident, n, at_ns, author, action, body FROM incident_entries \
                 WHERE incident = $1 ORDER BY n",
                &[&id],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(entry_from_row)
            .collect()
        })
    }
}

#[cfg(test)]
mod tests;
