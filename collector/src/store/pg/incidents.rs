//! The PostgreSQL implementation of `IncidentStore`, and the fold that opens and extends incidents inside the append transaction.
//!
//! Several collectors share the database, so the fold never reads and then blindly writes:
//! the group's row in `incident_groups` is locked by an upsert and the incident's row by
//! `SELECT ... FOR UPDATE` before it is changed, and a new incident's id comes from a sequence.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::super::{
    Category, EntryAction, Incident, IncidentEntry, IncidentQuery, IncidentStatus, IncidentStore,
    StoreError, StoreResult, StoredEvent,
};
use super::PgStore;
use super::accounts::limit_plus_one;
use crate::incidents;

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
    StoreError::Engine(format!("postgres: {e}"))
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

/// Opens an incident for a flagged event, or counts it into its group's open incident if the
/// last one was recent. Called by `append` for each newly stored event, inside its transaction
/// and after the device's row is locked, so it happens exactly once per stored event.
pub(super) async fn fold_event(
    tx: &tokio_postgres::Transaction<'_>,
    e: &StoredEvent,
    arrival_id: i64,
) -> StoreResult<()> {
    let Some(category) = incidents::category(&e.audience) else {
        return Ok(());
    };
    let subject = incidents::subject(&e.kind, &e.details);
    let group = incidents::group_key(&e.device_id, &e.kind, &subject);
    // The upsert locks the group's row (inserted, or the committed one another collector wrote)
    // until this transaction ends, so a second fold of the same group waits here and then sees
    // this one's incident.
    let latest: Option<i64> = tx
        .query_one(
            "INSERT INTO incident_groups (group_key) VALUES ($1) \
             ON CONFLICT (group_key) DO UPDATE SET group_key = EXCLUDED.group_key \
             RETURNING incident",
            &[&group],
        )
        .await
        .map_err(pg)?
        .get(0);
    let seq = big("sequence", e.seq)?;
    let occurred = ns(e.occurred_at)?;
    let received = ns(e.received_at)?;
    if let Some(id) = latest {
        let row = tx
            .query_opt(
                &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = row {
            let mut inc = incident_from_row(&row)?;
            let recent = (e.occurred_at - inc.last_at).abs() <= incidents::GROUP_WINDOW;
            if inc.status != IncidentStatus::Closed && recent {
                let mut last_arrival = None;
                if e.occurred_at >= inc.last_at {
                    inc.last_at = e.occurred_at;
                    inc.last_seq = e.seq;
                    last_arrival = Some(arrival_id);
                    if e.user.is_some() {
                        inc.user.clone_from(&e.user);
                    }
                }
                if incidents::severity_rank(&e.severity) > incidents::severity_rank(&inc.severity) {
                    inc.severity.clone_from(&e.severity);
                }
                for a in &e.audience {
                    if !inc.audience.contains(a) {
                        inc.audience.push(a.clone());
                    }
                }
                tx.execute(
                    "UPDATE incidents SET count = count + 1, last_at_ns = $2, last_seq = $3, \
                     user_name = $4, severity = $5, audience = $6, updated_at_ns = $7, \
                     last_arrival = coalesce($8, last_arrival) WHERE id = $1",
                    &[
                        &id,
                        &ns(inc.last_at)?,
                        &big("sequence", inc.last_seq)?,
                        &inc.user,
                        &inc.severity,
                        &inc.audience,
                        &received,
                        &last_arrival,
                    ],
                )
                .await
                .map_err(pg)?;
                return Ok(());
            }
        }
    }
    let id: i64 = tx
        .query_one(
            "INSERT INTO incidents (id, category, device_id, user_name, kind, subject, title, \
             severity, audience, first_at_ns, last_at_ns, count, first_seq, last_seq, status, \
             updated_at_ns, first_arrival, last_arrival) \
             VALUES (nextval('incident_ids'), $1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 1, $10, \
             $10, 'open', $11, $12, $12) RETURNING id",
            &[
                &category.as_str(),
                &e.device_id,
                &e.user,
                &e.kind,
                &subject,
                &incidents::title(&e.kind, &e.details),
                &e.severity,
                &e.audience,
                &occurred,
                &seq,
                &received,
                &arrival_id,
            ],
        )
        .await
        .map_err(pg)?
        .get(0);
    tx.execute(
        "UPDATE incident_groups SET incident = $2 WHERE group_key = $1",
        &[&group, &id],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

impl IncidentStore for PgStore {
    fn incident(&self, id: u64) -> StoreResult<Option<Incident>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.run(move |c| async move {
            c.query_opt(
                &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg)?
            .map(|r| incident_from_row(&r))
            .transpose()
        })
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
            // A NULL parameter leaves its filter out. The statement is unnamed, so it is planned
            // with its values bound and a device's page can use incidents_by_device.
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
            let more = rows.len() > limit;
            let page = rows
                .iter()
                .take(limit)
                .map(incident_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
            let next = if more {
                page.last().map(|i| i.id)
            } else {
                None
            };
            Ok((page, next))
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
mod tests {
    //! What the contract suite cannot show: two collectors on one database folding and
    //! annotating the same incidents at once.

    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::super::PgStore;
    use super::super::rig::{DbGuard, test_database};
    use crate::store::{
        DeviceBatch, DigestStore, EntryAction, IncidentQuery, IncidentStore, Store, StoredEvent,
        test_device,
    };

    fn two_collectors() -> (Arc<PgStore>, Arc<PgStore>, DbGuard) {
        let (url, guard) = test_database();
        let a = PgStore::connect(&url).expect("first collector connects");
        let b = PgStore::connect(&url).expect("second collector connects");
        (Arc::new(a), Arc::new(b), guard)
    }

    fn flagged(device: &str, seq: u64, at: DateTime<Utc>) -> StoredEvent {
        StoredEvent {
            device_id: device.into(),
            seq,
            kind: "usb.inserted".into(),
            occurred_at: at,
            received_at: at,
            user: Some("pupil1".into()),
            details: json!({"serial": "S1", "product": "Stick", "decision": "block"})
                .as_object()
                .expect("an object")
                .clone(),
            severity: "warning".into(),
            audience: vec!["network_manager".into(), "dsl".into()],
            assessment: None,
        }
    }

    /// One group commit: a batch of `seqs` for each device, in the order given.
    fn group(
        devices: &[String],
        seqs: std::ops::RangeInclusive<u64>,
        at: DateTime<Utc>,
    ) -> Vec<DeviceBatch> {
        devices
            .iter()
            .map(|d| DeviceBatch {
                device_id: d.clone(),
                events: seqs.clone().map(|s| flagged(d, s, at)).collect(),
                facts: None,
                state: Default::default(),
                seen_at: at,
            })
            .collect()
    }

    #[test]
    fn two_collectors_folding_the_same_groups_make_one_incident_each_counting_every_event_once() {
        let (a, b, _guard) = two_collectors();
        let devices: Vec<String> = (0..6).map(|i| format!("d{i}")).collect();
        for d in &devices {
            a.insert_device(&test_device(d)).unwrap();
        }
        let t0 = Utc::now();
        const EVENTS: u64 = 120;
        const BATCH: u64 = 4;
        // Both collectors are sent every device's whole stream (as after a reconnection that
        // resends what was not acknowledged), one with the devices in the opposite order, so
        // each event is new to whichever stores it first and a resend to the other.
        let send = |store: Arc<PgStore>, reversed: bool| {
            let mut devices = devices.clone();
            if reversed {
                devices.reverse();
            }
            std::thread::spawn(move || {
                let mut stored = 0;
                for start in (1..=EVENTS).step_by(BATCH as usize) {
                    stored += store
                        .append(&group(&devices, start..=start + BATCH - 1, t0))
                        .unwrap();
                }
                stored
            })
        };
        let (ta, tb) = (send(a.clone(), false), send(b.clone(), true));
        let stored = ta.join().unwrap() + tb.join().unwrap();
        assert_eq!(
            stored,
            EVENTS * devices.len() as u64,
            "each event stored once"
        );

        let (incidents, _) = b
            .incidents(&IncidentQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let mut per_device: Vec<(String, u64, u64, u64)> = incidents
            .iter()
            .map(|i| (i.device_id.clone(), i.count, i.first_seq, i.last_seq))
            .collect();
        per_device.sort();
        let expected: Vec<(String, u64, u64, u64)> = devices
            .iter()
            .map(|d| (d.clone(), EVENTS, 1, EVENTS))
            .collect();
        assert_eq!(
            per_device, expected,
            "one incident a device, every event counted once"
        );
        for d in &devices {
            let group = crate::incidents::group_key(d, "usb.inserted", "S1");
            let id = a
                .incident_for_group(&group)
                .unwrap()
                .expect("the group's incident");
            assert_eq!(a.incident(id).unwrap().unwrap().device_id, *d);
        }
    }

    #[test]
    fn entries_added_through_two_collectors_at_once_are_numbered_without_gaps() {
        let (a, b, _guard) = two_collectors();
        a.insert_device(&test_device("d")).unwrap();
        let t0 = Utc::now();
        a.append(&group(&["d".to_string()], 1..=1, t0)).unwrap();
        let (incidents, _) = a
            .incidents(&IncidentQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        let id = incidents[0].id;
        const EACH: usize = 40;
        let annotate = |store: Arc<PgStore>, who: &'static str| {
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        store
                            .add_incident_entry(
                                id,
                                Utc::now(),
                                who,
                                EntryAction::Note,
                                &format!("{who} {i}"),
                            )
                            .unwrap()
                            .n
                    })
                    .collect::<Vec<u32>>()
            })
        };
        // A third writer folds more events into the same incident meanwhile.
        let folding = {
            let b = b.clone();
            std::thread::spawn(move || {
                for s in 2..=41 {
                    b.append(&group(&["d".to_string()], s..=s, t0)).unwrap();
                }
            })
        };
        let (ta, tb) = (annotate(a.clone(), "ann"), annotate(b.clone(), "bob"));
        let (na, nb) = (ta.join().unwrap(), tb.join().unwrap());
        folding.join().unwrap();
        assert!(na.windows(2).all(|w| w[0] < w[1]), "{na:?}");
        assert!(nb.windows(2).all(|w| w[0] < w[1]), "{nb:?}");

        let entries = b.incident_entries(id).unwrap();
        let numbers: Vec<u32> = entries.iter().map(|e| e.n).collect();
        assert_eq!(numbers, (1..=2 * EACH as u32).collect::<Vec<_>>());
        for who in ["ann", "bob"] {
            let texts: Vec<&str> = entries
                .iter()
                .filter(|e| e.by == who)
                .map(|e| e.text.as_str())
                .collect();
            let expected: Vec<String> = (0..EACH).map(|i| format!("{who} {i}")).collect();
            assert_eq!(
                texts, expected,
                "each of {who}'s entries once, in the order written"
            );
        }
        let inc = a.incident(id).unwrap().unwrap();
        assert_eq!(
            (inc.count, inc.last_seq),
            (41, 41),
            "the folds and the entries both kept"
        );
    }
}
