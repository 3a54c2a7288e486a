//! The PostgreSQL implementation of `PrivacyStore`: legal holds, subject access, and the entry points of the purge (`privacy/purge.rs`) and the erasure (`privacy/erase.rs`).
//!
//! Purges, erasures and hold changes each take one advisory lock (`LOCK_PRIVACY`) for their
//! transaction: each reads the holds in force and acts on them, so a hold placed while a purge
//! batch runs takes effect before the next batch, never half-way through one, and a purge and
//! an erasure never work on the same rows at once (which would also mean two lock orders).

mod erase;
mod purge;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::accounts::audit_from_row;
use super::digests::{DIGEST_COLUMNS, digest_from_row};
use super::events::{EVENT_COLUMNS, event_from_row};
use super::incidents::{
    INCIDENT_COLUMNS, big, entry_from_row, from_ns, incident_from_row, ns, pg, unsigned,
};
use super::{LOCK_PRIVACY, PgStore};
use crate::store::privacy::{
    ErasureCounts, Held, Hold, HoldTarget, PrivacyStore, PurgeCounts, PurgeCutoffs, SubjectRecords,
    audit_names, digest_names, entry_names, event_names, incident_names, text_names,
};
use crate::store::{AuditEntry, DigestRecord, Incident, StoreError, StoreResult, StoredEvent};

/// Events read per round trip when a scan looks for a name in events' details.
const PAGE: i64 = 1_000;

/// The audit log's columns as `audit_from_row` reads them.
const AUDIT_COLUMNS: &str = "id, at_ns, actor, action, target, detail, address";

/// Takes the privacy lock for this transaction and reads the holds in force and what they keep.
async fn lock_and_read_holds(tx: &Transaction<'_>) -> StoreResult<Held> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PRIVACY])
        .await
        .map_err(pg)?;
    let holds = read_holds(tx).await?;
    let ids: Vec<i64> = holds
        .iter()
        .filter_map(|h| match h.target {
            HoldTarget::Incident(id) => i64::try_from(id).ok(),
            _ => None,
        })
        .collect();
    let mut incidents = HashMap::new();
    if !ids.is_empty() {
        for i in incidents_by_id(tx, &ids).await? {
            incidents.insert(i.id, i);
        }
    }
    Held::new(&holds, |id| Ok(incidents.remove(&id)))
}

/// The incidents with these ids (those that exist), in no particular order.
async fn incidents_by_id(
    c: &impl deadpool_postgres::GenericClient,
    ids: &[i64],
) -> StoreResult<Vec<Incident>> {
    c.query(
        &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ANY($1)"),
        &[&ids],
    )
    .await
    .map_err(pg)?
    .iter()
    .map(incident_from_row)
    .collect()
}

async fn read_holds(c: &impl deadpool_postgres::GenericClient) -> StoreResult<Vec<Hold>> {
    c.query(
        "SELECT target, by_user, at_ns, reason FROM holds ORDER BY at_ns, target",
        &[],
    )
    .await
    .map_err(pg)?
    .iter()
    .map(|r| {
        let key: String = r.get(0);
        Ok(Hold {
            target: HoldTarget::parse(&key)
                .ok_or_else(|| StoreError::Corrupt(format!("hold target {key:?}")))?,
            by: r.get(1),
            at: from_ns(r.get(2)),
            reason: r.get(3),
        })
    })
    .collect()
}

/// What the holds keep, as statement parameters: a filter in SQL finds the records a hold
/// does not keep, so a batch is not filled with held ones and left with nothing to remove;
/// `Held`'s own tests then decide each record read.
struct HeldParams {
    devices: Vec<String>,
    users: Vec<String>,
    incident_devices: Vec<String>,
    incident_kinds: Vec<String>,
    incident_first: Vec<i64>,
    incident_last: Vec<i64>,
    incident_ids: Vec<i64>,
    /// How an audit entry names a held incident: `12` or `incident:12`.
    incident_targets: Vec<String>,
}

impl HeldParams {
    fn of(held: &Held) -> StoreResult<Self> {
        let mut p = HeldParams {
            devices: held.devices.iter().cloned().collect(),
            users: held.users.iter().cloned().collect(),
            incident_devices: Vec::new(),
            incident_kinds: Vec::new(),
            incident_first: Vec::new(),
            incident_last: Vec::new(),
            incident_ids: Vec::new(),
            incident_targets: Vec::new(),
        };
        for i in &held.incidents {
            p.incident_devices.push(i.device_id.clone());
            p.incident_kinds.push(i.kind.clone());
            p.incident_first.push(big("sequence", i.first_seq)?);
            p.incident_last.push(big("sequence", i.last_seq)?);
            p.incident_ids.push(big("incident id", i.id)?);
            p.incident_targets.push(i.id.to_string());
            p.incident_targets.push(format!("incident:{}", i.id));
        }
        Ok(p)
    }
}

/// An event row `e` no hold keeps, given `HeldParams`' event arrays bound from `$first` on
/// (devices, users, then the held incidents' devices, kinds, first and last sequences).
fn event_not_held(first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        "NOT (e.device_id = ANY({d}::text[])) \
         AND NOT coalesce(e.\"user\" = ANY({u}::text[]), false) \
         AND NOT EXISTS (SELECT 1 FROM unnest({hd}::text[], {hk}::text[], {hf}::bigint[], \
             {hl}::bigint[]) AS h(d, k, f, l) \
             WHERE h.d = e.device_id AND h.k = e.kind AND e.seq BETWEEN h.f AND h.l)",
        d = p(0),
        u = p(1),
        hd = p(2),
        hk = p(3),
        hf = p(4),
        hl = p(5),
    )
}

/// A cutoff as a bound no stored time is below when there is none (kept for ever).
fn cutoff_ns(c: Option<chrono::DateTime<chrono::Utc>>) -> StoreResult<i64> {
    c.map_or(Ok(i64::MIN), ns)
}

/// Whether `name` is written in a JSON document's text as it is (no escapes), so that a
/// substring search of the stored text finds every document naming it. Otherwise the scans
/// read every row and leave the test to `event_names` alone.
fn plain_in_json(name: &str) -> bool {
    serde_json::to_string(name).is_ok_and(|j| j.len() == name.len() + 2)
}

/// Reads, a page of `PAGE` at a time in arrival order, the events whose user is `user` or
/// whose stored text contains it; each page holds those naming `user` (by `event_names`),
/// with their arrival id and the partition they are in. A page at a time keeps memory to a
/// page however large the store.
struct EventsNaming {
    sql: String,
    user: String,
    after: i64,
    done: bool,
}

impl EventsNaming {
    fn new(user: &str) -> Self {
        let text_filter = if plain_in_json(user) {
            "strpos(details::text, $1) > 0"
        } else {
            "true"
        };
        EventsNaming {
            sql: format!(
                "SELECT {EVENT_COLUMNS}, tableoid::regclass::text FROM events \
                 WHERE id > $2 AND (\"user\" = $1 OR {text_filter}) ORDER BY id LIMIT $3"
            ),
            user: user.to_string(),
            after: i64::MIN,
            done: false,
        }
    }

    /// The next page (possibly empty while the scan goes on), or `None` at the end.
    async fn next(
        &mut self,
        tx: &Transaction<'_>,
    ) -> StoreResult<Option<Vec<(i64, String, StoredEvent)>>> {
        if self.done {
            return Ok(None);
        }
        let rows = tx
            .query(&self.sql, &[&self.user, &self.after, &PAGE])
            .await
            .map_err(pg)?;
        self.done = (rows.len() as i64) < PAGE;
        let mut page = Vec::new();
        for r in &rows {
            let (id, e) = event_from_row(r)?;
            self.after = id;
            if event_names(&e, &self.user) {
                page.push((id, r.get::<_, String>(11), e));
            }
        }
        Ok(Some(page))
    }
}

/// Every record naming `user` but the events (see `SubjectRecords`), oldest first.
async fn others_naming(tx: &Transaction<'_>, user: &str) -> StoreResult<SubjectRecords> {
    let name = user.to_string();
    let incidents: Vec<Incident> = tx
        .query(
            &format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE user_name = $1 \
                 OR strpos(title, $1) > 0 OR strpos(subject, $1) > 0 ORDER BY first_at_ns, id"
            ),
            &[&name],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(incident_from_row)
        .filter(|i| i.as_ref().map_or(true, |i| incident_names(i, user)))
        .collect::<StoreResult<_>>()?;
    let ids: Vec<i64> = incidents
        .iter()
        .map(|i| big("incident id", i.id))
        .collect::<StoreResult<_>>()?;
    let incident_entries = tx
        .query(
            "SELECT incident, n, at_ns, author, action, body FROM incident_entries \
             WHERE incident = ANY($1) OR strpos(author, $2) > 0 OR strpos(body, $2) > 0 \
             ORDER BY at_ns, incident, n",
            &[&ids, &name],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(entry_from_row)
        .filter(|e| {
            e.as_ref().map_or(true, |e| {
                ids.contains(&(e.incident as i64)) || entry_names(e, user)
            })
        })
        .collect::<StoreResult<_>>()?;
    Ok(SubjectRecords {
        events: Vec::new(),
        incidents,
        incident_entries,
        audit: audit_naming(tx, user).await?,
        digests: digests_naming(tx, user).await?,
    })
}

/// The records `sql` finds with `user` as $1 (a cheap prefilter, a substring test), read by
/// `from_row`, that `names` says do name them (whole words, the shared rule).
async fn naming<T>(
    tx: &Transaction<'_>,
    sql: &str,
    user: &str,
    from_row: fn(&Row) -> StoreResult<T>,
    names: fn(&T, &str) -> bool,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    for r in &tx.query(sql, &[&user]).await.map_err(pg)? {
        let record = from_row(r)?;
        if names(&record, user) {
            out.push(record);
        }
    }
    Ok(out)
}

async fn audit_naming(tx: &Transaction<'_>, user: &str) -> StoreResult<Vec<AuditEntry>> {
    let sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE strpos(actor, $1) > 0 \
         OR strpos(target, $1) > 0 OR strpos(detail, $1) > 0 ORDER BY id"
    );
    naming(tx, &sql, user, audit_from_row, audit_names).await
}

/// Whether a digest's subject or bodies name `user`.
async fn digests_naming(tx: &Transaction<'_>, user: &str) -> StoreResult<Vec<DigestRecord>> {
    // `body_json` is jsonb, whose text is PostgreSQL's own rendering, so the substring test
    // is left out for names that rendering could escape.
    let json_filter = if plain_in_json(user) {
        "strpos(body_json::text, $1) > 0"
    } else {
        "true"
    };
    let sql = format!(
        "SELECT {DIGEST_COLUMNS} FROM digests WHERE strpos(subject, $1) > 0 \
         OR strpos(body_text, $1) > 0 OR strpos(body_html, $1) > 0 OR {json_filter} \
         ORDER BY created_at_ns, id"
    );
    naming(tx, &sql, user, digest_from_row, digest_names).await
}

impl PrivacyStore for PgStore {
    fn purge_expired(&self, cutoffs: &PurgeCutoffs, limit: usize) -> StoreResult<PurgeCounts> {
        let cutoffs = cutoffs.clone();
        let partitions = self.drop_partitions.then(|| self.partitions());
        self.run(move |c| purge::purge(c, partitions, cutoffs, limit))
    }

    fn put_hold(&self, hold: &Hold) -> StoreResult<()> {
        let h = hold.clone();
        let at = ns(h.at)?;
        self.run(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PRIVACY])
                .await
                .map_err(pg)?;
            tx.execute(
                "INSERT INTO holds (target, by_user, at_ns, reason) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (target) DO UPDATE SET by_user = EXCLUDED.by_user, \
                     at_ns = EXCLUDED.at_ns, reason = EXCLUDED.reason",
                &[&h.target.key(), &h.by, &at, &h.reason],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)
        })
    }

    fn release_hold(&self, target: &HoldTarget) -> StoreResult<bool> {
        let key = target.key();
        self.run(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PRIVACY])
                .await
                .map_err(pg)?;
            let n = tx
                .execute("DELETE FROM holds WHERE target = $1", &[&key])
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(n > 0)
        })
    }

    fn holds(&self) -> StoreResult<Vec<Hold>> {
        self.run(|c| async move { read_holds(&c).await })
    }

    fn subject_records(&self, user: &str) -> StoreResult<SubjectRecords> {
        let user = user.to_string();
        self.run(move |mut c| async move {
            // One snapshot for every kind of record, so the export is one moment's truth.
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg)?;
            let mut events = Vec::new();
            let mut pages = EventsNaming::new(&user);
            while let Some(page) = pages.next(&tx).await? {
                events.extend(page.into_iter().map(|(_, _, e)| e));
            }
            let mut out = others_naming(&tx, &user).await?;
            out.events = events;
            tx.commit().await.map_err(pg)?;
            Ok(out)
        })
    }

    fn erase_subject(&self, user: &str, pseudonym: &str) -> StoreResult<ErasureCounts> {
        if user.is_empty() || pseudonym.is_empty() || text_names(pseudonym, user) {
            return Err(StoreError::Conflict(format!(
                "cannot erase {user:?} as {pseudonym:?}: the pseudonym must differ from the name"
            )));
        }
        let (user, pseudonym) = (user.to_string(), pseudonym.to_string());
        self.run(move |c| erase::erase(c, user, pseudonym))
    }
}

/// A unsigned count from a row.
fn count(what: &str, v: i64) -> StoreResult<u64> {
    unsigned(what, v)
}
