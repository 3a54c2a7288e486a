//! The incident fold on PostgreSQL: a group commit's flagged events open or extend incidents in a fixed handful of statements inside the append transaction.
//!
//! The rules are every backend's (`Incident::takes` and `count_in` in `store/incidents.rs`), applied event by event in
//! the order given, but to rows read once and written once: the groups' rows in
//! `incident_groups` are locked by one upsert, their latest incidents by one `SELECT ... FOR
//! UPDATE`, and every opened or extended incident is written by one upsert. The append holds
//! the arrival clock's lock while it folds, so the fold's cost is paid by every collector's
//! appends: three to five statements per event would make a group of 4,000 events with 1 %
//! flagged hold that lock for some 150 round trips.

use std::collections::HashMap;

use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::super::super::{Category, Incident, StoreResult, StoredEvent};
use super::{INCIDENT_COLUMNS, big, incident_from_row, ns, pg, unsigned};
use crate::incidents;

/// An incident as the fold works on it.
struct Working {
    inc: Incident,
    first_arrival: i64,
    last_arrival: i64,
    /// Opened by this fold (its id is given once all are known).
    opened: bool,
    /// Changed by this fold, so written back.
    changed: bool,
}

/// Folds newly stored events (each with its arrival id, in the order stored) into incidents.
/// Called by `append` inside its transaction, after it has locked the events' device rows, so
/// it happens exactly once per stored event. Events nobody needs to know about are passed over.
pub(in crate::store::pg) async fn fold_events(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[(&StoredEvent, i64)],
) -> StoreResult<()> {
    let flagged: Vec<(&StoredEvent, i64, Category, String, String)> = events
        .iter()
        .filter_map(|&(e, arrival)| {
            let category = incidents::category(&e.audience)?;
            let subject = incidents::subject(&e.kind, &e.details);
            let group = incidents::group_key(&e.device_id, &e.kind, &subject);
            Some((e, arrival, category, subject, group))
        })
        .collect();
    if flagged.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<&str> = flagged.iter().map(|f| f.4.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();

    // Locks each group's row (inserted, or the committed one another collector wrote) until
    // this transaction ends, in one order, so a second fold of the same group waits here and
    // then sees this one's incident.
    let lock_groups = tx
        .prepare_cached(
            "INSERT INTO incident_groups (group_key) \
             SELECT k FROM unnest($1::text[]) AS k ORDER BY k \
             ON CONFLICT (group_key) DO UPDATE SET group_key = EXCLUDED.group_key \
             RETURNING group_key, incident",
        )
        .await
        .map_err(pg)?;
    let mut latest: HashMap<String, i64> = HashMap::new();
    for row in tx.query(&lock_groups, &[&keys]).await.map_err(pg)? {
        if let Some(id) = row.get::<_, Option<i64>>(1) {
            latest.insert(row.get(0), id);
        }
    }

    let mut working: Vec<Working> = Vec::new();
    let mut current: HashMap<String, usize> = HashMap::new();
    if !latest.is_empty() {
        let by_id: HashMap<i64, String> = latest.into_iter().map(|(k, id)| (id, k)).collect();
        let ids: Vec<i64> = by_id.keys().copied().collect();
        let lock_incidents = tx
            .prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS}, first_arrival, last_arrival FROM incidents \
                 WHERE id = ANY($1) ORDER BY id FOR UPDATE"
            ))
            .await
            .map_err(pg)?;
        for row in tx.query(&lock_incidents, &[&ids]).await.map_err(pg)? {
            let inc = incident_from_row(&row)?;
            let id: i64 = row.get(0);
            current.insert(by_id[&id].clone(), working.len());
            working.push(Working {
                inc,
                first_arrival: row.get(16),
                last_arrival: row.get(17),
                opened: false,
                changed: false,
            });
        }
    }

    for (e, arrival, category, subject, group) in flagged {
        if let Some(&i) = current.get(&group) {
            let w = &mut working[i];
            if w.inc.takes(e) {
                if w.inc.count_in(e) {
                    w.last_arrival = arrival;
                }
                w.changed = true;
                continue;
            }
        }
        current.insert(group, working.len());
        working.push(Working {
            inc: Incident::opened_by(0, category, subject, e),
            first_arrival: arrival,
            last_arrival: arrival,
            opened: true,
            changed: true,
        });
    }

    let opened = working.iter().filter(|w| w.opened).count();
    let mut new_ids: Vec<i64> = Vec::new();
    if opened > 0 {
        let next_ids = tx
            .prepare_cached("SELECT nextval('incident_ids') FROM generate_series(1, $1::int)")
            .await
            .map_err(pg)?;
        new_ids = tx
            .query(&next_ids, &[&i32::try_from(opened).unwrap_or(i32::MAX)])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // In the order the events opened them, as the embedded store numbers them.
        new_ids.sort_unstable();
    }
    let mut new_ids = new_ids.into_iter();
    for w in working.iter_mut().filter(|w| w.opened) {
        let id = new_ids.next().expect("one id per opened incident");
        w.inc.id = unsigned("incident id", id)?;
    }

    write_incidents(tx, working.iter().filter(|w| w.changed)).await?;

    // Each group whose latest incident is a new one points at it (the incident row exists now).
    let mut group_keys: Vec<&str> = Vec::new();
    let mut group_ids: Vec<i64> = Vec::new();
    for (group, &i) in &current {
        if working[i].opened {
            group_keys.push(group);
            group_ids.push(big("incident id", working[i].inc.id)?);
        }
    }
    if !group_keys.is_empty() {
        let point = tx
            .prepare_cached(
                "UPDATE incident_groups g SET incident = u.id \
                 FROM unnest($1::text[], $2::bigint[]) AS u(k, id) WHERE g.group_key = u.k",
            )
            .await
            .map_err(pg)?;
        tx.execute(&point, &[&group_keys, &group_ids])
            .await
            .map_err(pg)?;
    }
    Ok(())
}

/// Counts `e` into an incident it joins (the embedded store's rules exactly).
/// Writes opened and extended incidents with one upsert (their rows are locked or new).
async fn write_incidents(
    tx: &deadpool_postgres::Transaction<'_>,
    changed: impl Iterator<Item = &Working>,
) -> StoreResult<()> {
    let mut id = Vec::new();
    let mut category = Vec::new();
    let mut device = Vec::new();
    let mut user = Vec::new();
    let mut kind = Vec::new();
    let mut subject = Vec::new();
    let mut title = Vec::new();
    let mut severity = Vec::new();
    let mut audience = Vec::new();
    let mut first_at = Vec::new();
    let mut last_at = Vec::new();
    let mut count = Vec::new();
    let mut first_seq = Vec::new();
    let mut last_seq = Vec::new();
    let mut updated_at = Vec::new();
    let mut first_arrival = Vec::new();
    let mut last_arrival = Vec::new();
    for w in changed {
        let inc = &w.inc;
        id.push(big("incident id", inc.id)?);
        category.push(inc.category.as_str());
        device.push(inc.device_id.as_str());
        user.push(inc.user.as_deref());
        kind.push(inc.kind.as_str());
        subject.push(inc.subject.as_str());
        title.push(inc.title.as_str());
        severity.push(inc.severity.as_str());
        // Rows' arrays differ in length and PostgreSQL's arrays are rectangular, so each
        // row's audience travels as a JSON array.
        audience.push(Value::from(inc.audience.clone()));
        first_at.push(ns(inc.first_at)?);
        last_at.push(ns(inc.last_at)?);
        count.push(big("incident count", inc.count)?);
        first_seq.push(big("sequence", inc.first_seq)?);
        last_seq.push(big("sequence", inc.last_seq)?);
        updated_at.push(ns(inc.updated_at)?);
        first_arrival.push(w.first_arrival);
        last_arrival.push(w.last_arrival);
    }
    if id.is_empty() {
        return Ok(());
    }
    let upsert = tx
        .prepare_cached(
            "INSERT INTO incidents (id, category, device_id, user_name, kind, subject, title, \
                 severity, audience, first_at_ns, last_at_ns, count, first_seq, last_seq, \
                 status, updated_at_ns, first_arrival, last_arrival) \
             SELECT u.id, u.category, u.device_id, u.user_name, u.kind, u.subject, u.title, \
                 u.severity, ARRAY(SELECT jsonb_array_elements_text(u.audience)), \
                 u.first_at_ns, u.last_at_ns, u.count, u.first_seq, u.last_seq, 'open', \
                 u.updated_at_ns, u.first_arrival, u.last_arrival \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::bigint[], \
                     $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], \
                     $15::bigint[], $16::bigint[], $17::bigint[]) \
                 AS u(id, category, device_id, user_name, kind, subject, title, severity, \
                     audience, first_at_ns, last_at_ns, count, first_seq, last_seq, \
                     updated_at_ns, first_arrival, last_arrival) \
             ON CONFLICT (id) DO UPDATE SET count = EXCLUDED.count, \
                 last_at_ns = EXCLUDED.last_at_ns, last_seq = EXCLUDED.last_seq, \
                 user_name = EXCLUDED.user_name, severity = EXCLUDED.severity, \
                 audience = EXCLUDED.audience, updated_at_ns = EXCLUDED.updated_at_ns, \
                 last_arrival = EXCLUDED.last_arrival",
        )
        .await
        .map_err(pg)?;
    let params: [&(dyn ToSql + Sync); 17] = [
        &id,
        &category,
        &device,
        &user,
        &kind,
        &subject,
        &title,
        &severity,
        &audience,
        &first_at,
        &last_at,
        &count,
        &first_seq,
        &last_seq,
        &updated_at,
        &first_arrival,
        &last_arrival,
    ];
    tx.execute(&upsert, &params).await.map_err(pg)?;
    Ok(())
}
