//! What only PostgreSQL's privacy can show: whole expired partitions dropped, purges from two collectors beside an append, and an erasure that leaves no copy of the name in the database's files.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::super::PgStore;
use super::super::incidents::pg;
use super::super::rig::{DbGuard, test_database};
use crate::store::privacy::{Hold, HoldTarget, PrivacyStore, PurgeCounts, PurgeCutoffs};
use crate::store::{
    AccountStore, AuditEntry, Channel, DeviceBatch, DigestCursor, DigestRecord, DigestStatus,
    DigestStore, EntryAction, EventQuery, IncidentQuery, IncidentStore, Store, StoredEvent,
    test_device,
};

fn fresh() -> (PgStore, DbGuard) {
    let (url, guard) = test_database();
    (PgStore::connect(&url).expect("connect"), guard)
}

/// A month long past, so its partition is never the one being written to.
const OLD: &str = "2025-03-10T12:00:00Z";

fn old() -> DateTime<Utc> {
    OLD.parse().unwrap()
}

fn event(device: &str, seq: u64, at: DateTime<Utc>, dsl: bool) -> StoredEvent {
    StoredEvent {
        device_id: device.into(),
        seq,
        kind: "agent.heartbeat".into(),
        occurred_at: at,
        received_at: at,
        user: None,
        details: Default::default(),
        severity: "info".into(),
        audience: if dsl { vec!["dsl".into()] } else { vec![] },
        assessment: None,
    }
}

fn batch(device: &str, events: Vec<StoredEvent>) -> DeviceBatch {
    DeviceBatch {
        device_id: device.into(),
        events,
        facts: None,
        state: Default::default(),
        seen_at: Utc::now(),
    }
}

fn all_expired() -> PurgeCutoffs {
    let month = Some(Utc::now() - Duration::days(30));
    PurgeCutoffs {
        technical: month,
        safeguarding: month,
        audit: month,
        digests: month,
    }
}

fn partition_exists(s: &PgStore, name: &str) -> bool {
    let name = name.to_string();
    s.run(move |c| async move {
        Ok(c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map_err(pg)?
            .get(0))
    })
    .unwrap()
}

fn listed(s: &PgStore) -> Vec<(String, u64)> {
    s.events(&EventQuery {
        limit: 1000,
        ..Default::default()
    })
    .unwrap()
    .events
    .into_iter()
    .map(|e| (e.device_id, e.seq))
    .collect()
}

#[test]
fn a_partition_whose_events_have_all_expired_is_dropped_whole() {
    let (s, _guard) = fresh();
    s.insert_device(&test_device("a")).unwrap();
    s.insert_device(&test_device("b")).unwrap();
    let mut a: Vec<StoredEvent> = (1..=5).map(|i| event("a", i, old(), false)).collect();
    a.extend((6..=7).map(|i| event("a", i, Utc::now(), false)));
    s.append(&[
        batch("a", a),
        batch("b", (1..=3).map(|i| event("b", i, old(), true)).collect()),
    ])
    .unwrap();
    assert!(partition_exists(&s, "events_2025_03"));

    // A batch of 2, but the partition's eight go at once: a drop costs no more for more.
    let removed = s.purge_expired(&all_expired(), 2).unwrap();
    assert_eq!(
        removed,
        PurgeCounts {
            technical_events: 5,
            safeguarding_events: 3,
            ..Default::default()
        }
    );
    assert!(
        !partition_exists(&s, "events_2025_03"),
        "dropped, not emptied"
    );
    assert_eq!(s.purge_expired(&all_expired(), 2).unwrap().total(), 0);
    assert_eq!(listed(&s), [("a".to_string(), 7), ("a".into(), 6)]);
    let (da, db) = (
        s.device("a").unwrap().unwrap(),
        s.device("b").unwrap().unwrap(),
    );
    assert_eq!((da.event_count, da.highest_seq), (2, 7));
    assert_eq!((db.event_count, db.highest_seq), (0, 3), "the mark stays");
    // A resend of a dropped event is still a resend; the month's partition comes back for
    // an event received in it.
    let stored = s
        .append(&[batch(
            "b",
            (2..=4).map(|i| event("b", i, old(), false)).collect(),
        )])
        .unwrap();
    assert_eq!(stored, 1);
    assert!(partition_exists(&s, "events_2025_03"));
    assert_eq!(s.device("b").unwrap().unwrap().event_count, 1);
}

#[test]
fn a_partition_with_a_held_or_unexpired_event_is_purged_row_by_row() {
    let (s, _guard) = fresh();
    for d in ["a", "b", "c"] {
        s.insert_device(&test_device(d)).unwrap();
    }
    s.append(&[
        batch("a", (1..=4).map(|i| event("a", i, old(), false)).collect()),
        batch("b", vec![event("b", 1, old(), false)]),
        batch("c", vec![event("c", 1, old(), true)]),
    ])
    .unwrap();
    let on_b = HoldTarget::Device("b".into());
    s.put_hold(&Hold {
        target: on_b.clone(),
        by: "dsl1".into(),
        at: Utc::now(),
        reason: "case 4".into(),
    })
    .unwrap();
    let technical = PurgeCutoffs {
        technical: all_expired().technical,
        ..Default::default()
    };
    let removed = s.purge_expired(&technical, 100).unwrap();
    assert_eq!(removed.technical_events, 4, "a's; b's is held");
    assert!(partition_exists(&s, "events_2025_03"));
    assert!(s.release_hold(&on_b).unwrap());
    // c's is the DSL's, which this purge does not expire: b's goes as a row.
    let removed = s.purge_expired(&technical, 100).unwrap();
    assert_eq!(removed.technical_events, 1);
    assert!(partition_exists(&s, "events_2025_03"));
    assert_eq!(listed(&s), [("c".to_string(), 1)]);
    let removed = s.purge_expired(&all_expired(), 100).unwrap();
    assert_eq!(removed.safeguarding_events, 1);
    assert!(!partition_exists(&s, "events_2025_03"));
    for d in ["a", "b", "c"] {
        assert_eq!(s.device(d).unwrap().unwrap().event_count, 0, "{d}");
    }
}

/// Two collectors purging the same expired events while a third appends to the same
/// devices: no deadlock, each event removed and counted once, and every device's stored
/// count is what it holds.
#[test]
fn two_purges_and_an_append_at_once_remove_each_expired_event_once() {
    let (url, _guard) = test_database();
    let stores: Vec<Arc<PgStore>> = (0..3)
        .map(|_| Arc::new(PgStore::connect(&url).unwrap().rows_only()))
        .collect();
    let devices: Vec<String> = (0..4).map(|i| format!("d{i}")).collect();
    let long_ago = Utc::now() - Duration::days(100);
    for d in &devices {
        stores[0].insert_device(&test_device(d)).unwrap();
        // Received now, so in this month's partition: the rows path.
        let events = (1..=300)
            .map(|i| StoredEvent {
                received_at: Utc::now(),
                ..event(d, i, long_ago, i % 10 == 0)
            })
            .collect();
        stores[0].append(&[batch(d, events)]).unwrap();
    }
    let rounds = 40u64;
    let totals: Vec<PurgeCounts> = std::thread::scope(|scope| {
        let appender = {
            let (store, devices) = (&stores[2], &devices);
            scope.spawn(move || {
                for r in 0..rounds {
                    let group: Vec<DeviceBatch> = devices
                        .iter()
                        .map(|d| {
                            let seqs = 300 + r * 5 + 1..=300 + (r + 1) * 5;
                            batch(d, seqs.map(|i| event(d, i, Utc::now(), false)).collect())
                        })
                        .collect();
                    store.append(&group).unwrap();
                }
            })
        };
        let purgers: Vec<_> = stores[..2]
            .iter()
            .map(|store| {
                scope.spawn(move || {
                    let mut total = PurgeCounts::default();
                    loop {
                        let c = store.purge_expired(&all_expired(), 37).unwrap();
                        if c.total() == 0 {
                            return total;
                        }
                        total.add(&c);
                    }
                })
            })
            .collect();
        appender.join().unwrap();
        purgers.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let technical: u64 = totals.iter().map(|t| t.technical_events).sum();
    let safeguarding: u64 = totals.iter().map(|t| t.safeguarding_events).sum();
    assert_eq!((technical, safeguarding), (4 * 270, 4 * 30));
    for d in &devices {
        let mut left = Vec::new();
        stores[1]
            .device_events_after(d, 0, "", &mut |e| left.push(e.seq))
            .unwrap();
        assert_eq!(left, (301..=300 + rounds * 5).collect::<Vec<_>>(), "{d}");
        let dev = stores[1].device(d).unwrap().unwrap();
        assert_eq!(
            (dev.event_count, dev.highest_seq),
            (rounds * 5, 300 + rounds * 5),
            "{d}"
        );
    }
}

/// The bytes of every file of this test's database (not the WAL) that contain `needle`.
fn files_naming(s: &PgStore, needle: &str) -> Vec<String> {
    let (dir, oid): (String, u32) = s
        .run(|c| async move {
            c.batch_execute("CHECKPOINT").await.map_err(pg)?;
            let dir = c
                .query_one("SHOW data_directory", &[])
                .await
                .map_err(pg)?
                .get(0);
            let oid = c
                .query_one(
                    "SELECT oid FROM pg_database WHERE datname = current_database()",
                    &[],
                )
                .await
                .map_err(pg)?
                .get(0);
            Ok((dir, oid))
        })
        .unwrap();
    let base = std::path::Path::new(&dir)
        .join("base")
        .join(oid.to_string());
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&base).expect("the database's directory") {
        let path = entry.unwrap().path();
        // A relation dropped since the checkpoint may vanish while we look.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            found.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    // Named by their relations, so a failure says which table kept it.
    found
        .into_iter()
        .map(|file| {
            let node: u32 = file
                .split(['.', '_'])
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let relation: Option<String> = s
                .run(move |c| async move {
                    Ok(c.query_opt(
                        "SELECT relname::text FROM pg_class WHERE pg_relation_filenode(oid) = $1",
                        &[&node],
                    )
                    .await
                    .map_err(pg)?
                    .map(|r| r.get(0)))
                })
                .unwrap();
            format!(
                "{file} ({})",
                relation.unwrap_or_else(|| "no relation".into())
            )
        })
        .collect()
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn erasure_leaves_no_copy_of_the_name_in_the_database_files() {
    let (s, _guard) = fresh();
    let name = "zorbalina";
    s.insert_device(&test_device("a")).unwrap();
    let now = Utc::now();
    // More than two pages of the scan (`PAGE`), so paging is what finds them all.
    let n = 2 * super::PAGE as u64 + 500;
    let mut events: Vec<StoredEvent> = (1..=n)
        .map(|i| StoredEvent {
            user: Some(if i % 2 == 0 { name } else { "bob" }.into()),
            details: object(json!({"path": format!("/home/{name}/file{i}")})),
            ..event("a", i, now, false)
        })
        .collect();
    events.push(StoredEvent {
        kind: "executable.in_user_area".into(),
        user: Some(name.into()),
        details: object(json!({"path": format!("/home/{name}/Downloads/x.AppImage")})),
        audience: vec!["network_manager".into(), "dsl".into()],
        severity: "warning".into(),
        ..event("a", n + 1, now, true)
    });
    let mut state = Map::new();
    state.insert("session".into(), json!({"user": name}));
    s.append(&[DeviceBatch {
        state,
        ..batch("a", events)
    }])
    .unwrap();
    s.put_derived(
        "software",
        "a",
        n + 1,
        &json!({"paths": [format!("/home/{name}/bin")]}),
    )
    .unwrap();
    let incident = s
        .incidents(&IncidentQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .0
        .first()
        .expect("the flagged event opened an incident")
        .id;
    s.add_incident_entry(
        incident,
        now,
        "dsl1",
        EntryAction::Note,
        &format!("spoke to {name}"),
    )
    .unwrap();
    s.audit(&AuditEntry {
        id: 0,
        at: now,
        actor: "dsl1".into(),
        action: "subject_exported".into(),
        target: name.into(),
        detail: format!("records of {name}"),
        address: String::new(),
    })
    .unwrap();
    s.record_digests(
        "dsl1",
        &DigestCursor::default(),
        vec![DigestRecord {
            id: 0,
            recipient: "dsl1".into(),
            channel: Channel::Email {
                address: "dsl1@school.example".into(),
            },
            kind: "scheduled".into(),
            created_at: now,
            subject: "Digest".into(),
            text: format!("{name} saved a program"),
            html: format!("<p>{name} saved a program</p>"),
            json: json!({"lines": [name]}),
            events: 1,
            status: DigestStatus::Sent,
            attempts: 1,
            last_error: None,
            next_attempt: None,
            sent_at: Some(now),
            attachment: None,
        }],
    )
    .unwrap();
    // The planner's statistics quote common values: let them hold the name too.
    s.run(|c| async move { c.batch_execute("ANALYZE").await.map_err(pg) })
        .unwrap();
    assert!(
        !files_naming(&s, name).is_empty(),
        "the name is in the files before (else this test could not fail)"
    );

    let counts = s.erase_subject(name, "user-5e1d").unwrap();
    assert_eq!(
        (counts.events, counts.incidents, counts.devices),
        (n + 1, 1, 1)
    );
    assert_eq!(files_naming(&s, name), Vec::<String>::new());
    assert!(!files_naming(&s, "user-5e1d").is_empty());
    assert_eq!(
        s.subject_records("user-5e1d").unwrap().events.len() as u64,
        n + 1
    );
    assert!(s.subject_records(name).unwrap().events.is_empty());
}
