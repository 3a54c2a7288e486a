//! Erasure on PostgreSQL: a name replaced by its pseudonym in every record no hold keeps, in one transaction, then the touched tables rewritten so no dead row version keeps the name.
//!
//! Lock order: the privacy lock, device rows, incident groups, incidents (sorted each time),
//! as the append's fold takes devices, groups and incidents; events are only ever inserted by
//! appends, so updating them meets no append. Device rows whose state names the person stay
//! locked (their appends wait) until the erasure commits.
//!
//! An `UPDATE` leaves the old row version in the table's file until a vacuum reuses its space,
//! and a plain `VACUUM` frees the space without overwriting it. So after the commit every
//! table (and events partition) that was changed is rewritten by `VACUUM FULL` (a new file;
//! the old one is truncated), which holds an exclusive lock on that table while it copies it:
//! appends to the month being written wait that long. `ANALYZE` then replaces the planner's
//! statistics, whose most common values can quote a name, and `pg_statistic` is rewritten in
//! turn. The write-ahead log still holds the name until PostgreSQL recycles those segments
//! (after the next checkpoints), and so do base backups and WAL archives taken before.

use std::collections::{BTreeSet, HashMap};

use deadpool_postgres::{Object, Transaction};
use serde_json::Value;
use tokio_postgres::Row;

use super::super::incidents::{INCIDENT_COLUMNS, big, entry_from_row, incident_from_row, pg};
use super::{
    EventsNaming, audit_naming, digests_naming, incidents_by_id, lock_and_read_holds,
    others_naming, plain_in_json,
};
use crate::store::StoreResult;
use crate::store::privacy::{
    ErasureCounts, Held, rename_in_event, rename_in_text, rename_in_value, text_names,
};

/// `text` with `user` replaced: the whole value when it is the name, else each whole word.
fn renamed(text: &str, user: &str, pseudonym: &str) -> Option<String> {
    if text == user {
        Some(pseudonym.to_string())
    } else {
        rename_in_text(text, user, pseudonym)
    }
}

pub(super) async fn erase(
    mut client: Object,
    user: String,
    pseudonym: String,
) -> StoreResult<ErasureCounts> {
    let mut counts = ErasureCounts::default();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    {
        let tx = client.transaction().await.map_err(pg)?;
        let held = lock_and_read_holds(&tx).await?;
        if held.users.contains(&user) {
            // The person is under hold: nothing about them changes; say what is kept.
            let mut pages = EventsNaming::new(&user);
            while let Some(page) = pages.next(&tx).await? {
                counts.kept_events += page.len() as u64;
            }
            let others = others_naming(&tx, &user).await?;
            counts.kept_incidents = others.incidents.len() as u64;
            counts.kept_audit_entries = others.audit.len() as u64;
            tx.commit().await.map_err(pg)?;
            return Ok(counts);
        }
        let (u, p) = (user.as_str(), pseudonym.as_str());
        let erasure = Erasure {
            tx: &tx,
            held: &held,
            user: u,
            pseudonym: p,
        };
        if erasure.devices(&mut counts).await? {
            touched.insert("devices".into());
        }
        if erasure.derived().await? {
            touched.insert("derived".into());
        }
        erasure.incidents(&mut counts, &mut touched).await?;
        let mut pages = EventsNaming::new(u);
        while let Some(page) = pages.next(&tx).await? {
            let (mut ids, mut users, mut details) = (Vec::new(), Vec::new(), Vec::new());
            for (id, partition, mut e) in page {
                if held.keeps_event(&e) {
                    counts.kept_events += 1;
                    continue;
                }
                if rename_in_event(&mut e, u, p) {
                    ids.push(id);
                    users.push(e.user);
                    details.push(Value::Object(e.details));
                    touched.insert(partition);
                }
            }
            if !ids.is_empty() {
                counts.events += tx
                    .execute(
                        "UPDATE events e SET \"user\" = u.usr, details = u.details \
                         FROM unnest($1::bigint[], $2::text[], $3::json[]) \
                             AS u(id, usr, details) WHERE e.id = u.id",
                        &[&ids, &users, &details],
                    )
                    .await
                    .map_err(pg)?;
            }
        }
        for mut a in audit_naming(&tx, u).await? {
            if held.keeps_audit(&a) {
                counts.kept_audit_entries += 1;
                continue;
            }
            if a.actor == u {
                a.actor = p.to_string();
            }
            a.target = renamed(&a.target, u, p).unwrap_or(a.target);
            a.detail = rename_in_text(&a.detail, u, p).unwrap_or(a.detail);
            counts.audit_entries += tx
                .execute(
                    "UPDATE audit SET actor = $2, target = $3, detail = $4 WHERE id = $1",
                    &[&big("audit id", a.id)?, &a.actor, &a.target, &a.detail],
                )
                .await
                .map_err(pg)?;
            touched.insert("audit".into());
        }
        for mut d in digests_naming(&tx, u).await? {
            d.subject = rename_in_text(&d.subject, u, p).unwrap_or(d.subject);
            d.text = rename_in_text(&d.text, u, p).unwrap_or(d.text);
            d.html = rename_in_text(&d.html, u, p).unwrap_or(d.html);
            rename_in_value(&mut d.json, u, p);
            // An attachment (a report's PDF) cannot be searched for the name, so a digest
            // that named the person loses it; the bodies say what it was.
            counts.digests += tx
                .execute(
                    "UPDATE digests SET subject = $2, body_text = $3, body_html = $4, \
                         body_json = $5, attachment = NULL WHERE id = $1",
                    &[
                        &big("digest id", d.id)?,
                        &d.subject,
                        &d.text,
                        &d.html,
                        &d.json,
                    ],
                )
                .await
                .map_err(pg)?;
            touched.insert("digests".into());
        }
        // A DSL report's PDF names pupils where no search reaches (see `carries_dsl_report`).
        let reports = tx
            .execute(
                "UPDATE digests SET attachment = NULL WHERE attachment->>'name' LIKE $1",
                &[&format!(
                    "{}%",
                    crate::store::privacy::DSL_REPORT_ATTACHMENT
                )],
            )
            .await
            .map_err(pg)?;
        if reports > 0 {
            tracing::info!(
                digest_attachments_dropped = reports,
                "DSL report copies dropped"
            );
            touched.insert("digests".into());
        }
        tx.commit().await.map_err(pg)?;
    }
    rewrite(&client, &touched).await;
    Ok(counts)
}

/// One erasure's renaming, in the transaction that holds the privacy lock.
#[derive(Clone, Copy)]
struct Erasure<'a, 't> {
    tx: &'a Transaction<'t>,
    held: &'a Held,
    user: &'a str,
    pseudonym: &'a str,
}

impl Erasure<'_, '_> {
    /// Locks and reads the rows of `select` (`SELECT ... FROM table`, whose last two columns
    /// are a device id and a JSON `state`) whose state names the person, with the state
    /// renamed; a held device's rows are left out. Only rows whose state may name them are
    /// read: a substring test where the name is written in JSON as it is, else every row.
    async fn renamed_states(&self, select: &str, order: &str) -> StoreResult<Vec<(Row, Value)>> {
        let filter = if plain_in_json(self.user) {
            "strpos(state::text, $1) > 0"
        } else {
            "true"
        };
        let rows = self
            .tx
            .query(
                &format!("{select} WHERE {filter} {order} FOR UPDATE"),
                &[&self.user],
            )
            .await
            .map_err(pg)?;
        let mut renamed = Vec::new();
        for r in rows {
            let n = r.len();
            let (device, mut state): (String, Value) = (r.get(n - 2), r.get(n - 1));
            if !self.held.devices.contains(&device)
                && rename_in_value(&mut state, self.user, self.pseudonym)
            {
                renamed.push((r, state));
            }
        }
        Ok(renamed)
    }

    /// Device state facets naming the person (a held device's are kept). `true` if any changed.
    async fn devices(&self, counts: &mut ErasureCounts) -> StoreResult<bool> {
        let (ids, states): (Vec<String>, Vec<Value>) = self
            .renamed_states("SELECT id, state FROM devices", "ORDER BY id")
            .await?
            .into_iter()
            .map(|(r, state)| (r.get(0), state))
            .unzip();
        if ids.is_empty() {
            return Ok(false);
        }
        counts.devices += self
            .tx
            .execute(
                "UPDATE devices d SET state = u.state \
                 FROM unnest($1::text[], $2::json[]) AS u(id, state) WHERE d.id = u.id",
                &[&ids, &states],
            )
            .await
            .map_err(pg)?;
        Ok(true)
    }

    /// Derived states (per device) naming the person. `true` if any changed.
    async fn derived(&self) -> StoreResult<bool> {
        let renamed = self
            .renamed_states("SELECT name, device_id, state FROM derived", "")
            .await?;
        for (r, state) in &renamed {
            let (name, device): (String, String) = (r.get(0), r.get(1));
            self.tx
                .execute(
                    "UPDATE derived SET state = $3 WHERE name = $1 AND device_id = $2",
                    &[&name, &device, &state],
                )
                .await
                .map_err(pg)?;
        }
        Ok(!renamed.is_empty())
    }

    /// Incidents (user, title, subject), their groups' keys (which quote the subject) and
    /// incident entries (author, text), except those of incidents a hold keeps.
    async fn incidents(
        &self,
        counts: &mut ErasureCounts,
        touched: &mut BTreeSet<String>,
    ) -> StoreResult<()> {
        let Erasure {
            tx,
            held,
            user,
            pseudonym,
        } = *self;
        let name = user.to_string();
        // Groups first, sorted, as the fold locks them.
        let groups: Vec<(String, Option<i64>)> = tx
            .query(
                "SELECT group_key, incident FROM incident_groups \
                 WHERE strpos(group_key, $1) > 0 ORDER BY group_key FOR UPDATE",
                &[&name],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let ids: Vec<i64> = groups.iter().filter_map(|g| g.1).collect();
        let mut kept_groups = BTreeSet::new();
        for i in incidents_by_id(tx, &ids).await? {
            if held.keeps_incident(&i) {
                kept_groups.insert(big("incident id", i.id)?);
            }
        }
        for (key, incident) in &groups {
            if incident.is_some_and(|i| kept_groups.contains(&i)) {
                continue;
            }
            let Some(new_key) = rename_in_text(key, user, pseudonym) else {
                continue;
            };
            tx.execute(
                "UPDATE incident_groups SET group_key = $2 WHERE group_key = $1",
                &[key, &new_key],
            )
            .await
            .map_err(pg)?;
            touched.insert("incident_groups".into());
        }

        let rows = tx
            .query(
                &format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE user_name = $1 \
                     OR strpos(title, $1) > 0 OR strpos(subject, $1) > 0 ORDER BY id FOR UPDATE"
                ),
                &[&name],
            )
            .await
            .map_err(pg)?;
        for r in &rows {
            let mut i = incident_from_row(r)?;
            let mut changed = false;
            if held.keeps_incident(&i) {
                if i.user.as_deref() == Some(user)
                    || text_names(&i.title, user)
                    || text_names(&i.subject, user)
                {
                    counts.kept_incidents += 1;
                }
                continue;
            }
            if i.user.as_deref() == Some(user) {
                i.user = Some(pseudonym.to_string());
                changed = true;
            }
            for field in [&mut i.title, &mut i.subject] {
                if let Some(r) = rename_in_text(field, user, pseudonym) {
                    *field = r;
                    changed = true;
                }
            }
            if changed {
                counts.incidents += tx
                    .execute(
                        "UPDATE incidents SET user_name = $2, title = $3, subject = $4 \
                         WHERE id = $1",
                        &[&big("incident id", i.id)?, &i.user, &i.title, &i.subject],
                    )
                    .await
                    .map_err(pg)?;
                touched.insert("incidents".into());
            }
        }

        let entries = tx
            .query(
                "SELECT incident, n, at_ns, author, action, body FROM incident_entries \
                 WHERE author = $1 OR strpos(body, $1) > 0 ORDER BY incident, n",
                &[&name],
            )
            .await
            .map_err(pg)?;
        // Whether each entry's incident is kept by a hold, read once per incident.
        let mut kept: HashMap<u64, bool> = HashMap::new();
        for r in &entries {
            let mut e = entry_from_row(r)?;
            let keeps = match kept.get(&e.incident) {
                Some(&k) => k,
                None => {
                    let k = tx
                        .query_opt(
                            &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"),
                            &[&big("incident id", e.incident)?],
                        )
                        .await
                        .map_err(pg)?
                        .map(|r| incident_from_row(&r))
                        .transpose()?
                        .is_some_and(|i| held.keeps_incident(&i));
                    kept.insert(e.incident, k);
                    k
                }
            };
            if keeps {
                continue;
            }
            let author = renamed(&e.by, user, pseudonym);
            let text = rename_in_text(&e.text, user, pseudonym);
            if author.is_none() && text.is_none() {
                continue;
            }
            e.by = author.unwrap_or(e.by);
            e.text = text.unwrap_or(e.text);
            counts.incident_entries += tx
                .execute(
                    "UPDATE incident_entries SET author = $3, body = $4 \
                     WHERE incident = $1 AND n = $2",
                    &[
                        &big("incident id", e.incident)?,
                        &i32::try_from(e.n).unwrap_or(i32::MAX),
                        &e.by,
                        &e.text,
                    ],
                )
                .await
                .map_err(pg)?;
            touched.insert("incident_entries".into());
        }
        Ok(())
    }
}

/// Rewrites the changed tables so no dead row version keeps the name (see the module
/// comment). The erasure has committed by now; a table that cannot be rewritten (a lock
/// timeout, a lack of rights) leaves the name only in free space the next writes reuse, and
/// is logged for the operator.
async fn rewrite(client: &Object, touched: &BTreeSet<String>) {
    if touched.is_empty() {
        return;
    }
    settle(client).await;
    for table in touched {
        // The names are this schema's own (fixed, or a partition's `regclass` text, quoted as
        // needed), never input.
        if let Err(e) = client.batch_execute(&format!("VACUUM FULL {table}")).await {
            tracing::error!(table = %table, error = %e,
                "Erased rows not rewritten; old versions stay in free space until reused");
        }
    }
    // The planner's statistics can quote a common value: renew them, the partitioned table's
    // own (sampled across its partitions) too, then rewrite pg_statistic, where the old rows
    // stay as dead versions (the database's owner may rewrite it).
    let mut analyze: Vec<&str> = touched.iter().map(String::as_str).collect();
    if touched.iter().any(|t| t.starts_with("events")) {
        analyze.push("events");
    }
    for table in analyze {
        if let Err(e) = client.batch_execute(&format!("ANALYZE {table}")).await {
            tracing::warn!(table = %table, error = %e, "Statistics not renewed after an erasure");
        }
    }
    settle(client).await;
    if let Err(e) = client
        .batch_execute("VACUUM FULL pg_catalog.pg_statistic")
        .await
    {
        tracing::warn!(error = %e,
            "Planner statistics not rewritten after an erasure; old versions may quote the name");
    }
}

/// Longest an erasure waits for older transactions before it rewrites tables anyway.
const SETTLE_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until no transaction that began before now still runs. A rewrite copies every row
/// version a running transaction of this database may still see (a long report, an
/// autovacuum's ANALYZE), so one started before the erasure's commit would carry the old name
/// into the new file; and a snapshot (the rewrite's own too) sees back to the oldest
/// transaction running anywhere in the cluster, so other databases' writers count as well.
async fn settle(client: &Object) {
    let started = std::time::Instant::now();
    let marker: i64 = match client
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
    {
        Ok(r) => r.get(0),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot tell which transactions predate the erasure");
            return;
        }
    };
    loop {
        // `age` counts back from the next transaction id, so "began at or before the
        // marker" is an age at least the marker's (over-counted by transactions in flight).
        let older = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                 AND CASE WHEN datname = current_database() \
                     THEN greatest(age(backend_xmin), age(backend_xid)) \
                     ELSE age(backend_xid) END \
                     >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint - $1",
                &[&marker],
            )
            .await;
        match older {
            Ok(r) if r.get::<_, i64>(0) == 0 => return,
            Ok(r) if started.elapsed() >= SETTLE_FOR => {
                tracing::warn!(
                    transactions = r.get::<_, i64>(0),
                    "Transactions older than the erasure still run; rewriting anyway"
                );
                return;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot tell which transactions predate the erasure");
                return;
            }
        }
    }
}
