//! What the contract suite cannot show about incidents on PostgreSQL: two collectors on one database folding and annotating the same incidents at once.

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

/// `e` as seen by another rule: a different stick, kind or audience.
fn variant(
    device: &str,
    seq: u64,
    at: DateTime<Utc>,
    serial: &str,
    severity: &str,
    audience: &[&str],
) -> StoredEvent {
    let mut e = flagged(device, seq, at);
    e.details.insert("serial".into(), json!(serial));
    e.severity = severity.into();
    e.audience = audience.iter().map(|a| a.to_string()).collect();
    if audience.is_empty() {
        e.kind = "agent.heartbeat".into();
    }
    e
}

/// The events of both phases: repeats that join, one past the window that opens a second
/// incident of the same group (then joined itself), a late event that counts without moving
/// `last_at`, a higher severity and a new audience, a routine event, another device.
fn phases(t0: DateTime<Utc>) -> (Vec<StoredEvent>, Vec<StoredEvent>) {
    let h = chrono::Duration::hours;
    let nm = ["network_manager"];
    let both = ["network_manager", "dsl"];
    let first = vec![
        variant("d", 1, t0, "A", "warning", &nm),
        variant("d", 2, t0 + h(1), "A", "high", &both),
        variant("d", 3, t0, "B", "warning", &both),
        variant("d", 4, t0 + h(2), "X", "info", &[]),
        variant("d", 5, t0 + h(30), "A", "notice", &nm),
        variant("d", 6, t0 + h(29), "A", "warning", &nm),
        variant("e", 1, t0, "A", "warning", &nm),
    ];
    let second = vec![
        variant("d", 7, t0 + h(31), "A", "critical", &nm),
        variant("d", 8, t0 + h(3), "B", "warning", &both),
        variant("e", 2, t0 + h(1), "A", "warning", &both),
    ];
    (first, second)
}

fn all(s: &dyn IncidentStore) -> Vec<crate::store::Incident> {
    s.incidents(&IncidentQuery {
        limit: 100,
        ..Default::default()
    })
    .unwrap()
    .0
}

/// Folds `events` (with made-up arrival ids) in one call, in one committed transaction.
fn fold_all(store: &PgStore, events: Vec<StoredEvent>, first_arrival: i64) {
    store
        .run(move |mut c| async move {
            let tx = c.transaction().await.map_err(super::pg)?;
            let with_ids: Vec<(&StoredEvent, i64)> = events.iter().zip(first_arrival..).collect();
            super::fold::fold_events(&tx, &with_ids).await?;
            tx.commit().await.map_err(super::pg)
        })
        .unwrap();
}

#[test]
fn many_events_folded_at_once_make_the_incidents_the_embedded_store_makes() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = crate::store::RedbStore::open(dir.path()).unwrap();
    let (url, _guard) = test_database();
    let pg = PgStore::connect(&url).unwrap();
    let t0 = Utc::now();
    let (first, second) = phases(t0);
    let batches = |events: &[StoredEvent]| -> Vec<DeviceBatch> {
        ["d", "e"]
            .iter()
            .map(|d| DeviceBatch {
                device_id: d.to_string(),
                events: events
                    .iter()
                    .filter(|e| e.device_id == *d)
                    .cloned()
                    .collect(),
                facts: None,
                state: Default::default(),
                seen_at: t0,
            })
            .collect()
    };
    for d in ["d", "e"] {
        embedded.insert_device(&test_device(d)).unwrap();
    }

    embedded.append(&batches(&first)).unwrap();
    fold_all(&pg, first, 1);
    let made = all(&pg);
    assert_eq!(made, all(&embedded));
    assert_eq!(made.len(), 4, "{made:#?}");

    // Between the phases the first incident of group (d, A) is closed, and (d, B) noted:
    // the second phase reads what the first wrote, closed or not.
    for s in [&embedded as &dyn IncidentStore, &pg] {
        s.add_incident_entry(1, t0, "dsl", EntryAction::Closed, "done")
            .unwrap();
        s.add_incident_entry(3, t0, "dsl", EntryAction::Note, "seen")
            .unwrap();
    }
    embedded.append(&batches(&second)).unwrap();
    fold_all(&pg, second, 100);
    let made = all(&pg);
    assert_eq!(made, all(&embedded));
    for group in [("d", "A"), ("d", "B"), ("e", "A"), ("d", "X")] {
        let key = crate::incidents::group_key(group.0, "usb.inserted", group.1);
        assert_eq!(
            pg.incident_for_group(&key).unwrap(),
            embedded.incident_for_group(&key).unwrap(),
            "{group:?}"
        );
    }
}

#[test]
fn an_incident_closed_while_a_fold_waits_for_it_is_not_extended_but_followed() {
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
    let first = incidents[0].id;
    let id = first as i64;

    // Collector a closes the incident, holding its row as add_incident_entry does, and commits
    // only once collector b's fold of the next event is waiting for that row.
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (go, wait_for_go) = tokio::sync::oneshot::channel::<()>();
    let closer = {
        let a = a.clone();
        std::thread::spawn(move || {
            a.run(move |mut c| async move {
                let tx = c.transaction().await.map_err(super::pg)?;
                tx.execute("SELECT 1 FROM incidents WHERE id = $1 FOR UPDATE", &[&id])
                    .await
                    .map_err(super::pg)?;
                locked.send(()).expect("the test waits");
                wait_for_go.await.expect("the test says go");
                tx.execute(
                    "UPDATE incidents SET status = 'closed' WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(super::pg)?;
                tx.commit().await.map_err(super::pg)
            })
        })
    };
    is_locked.recv().unwrap();
    let folding = {
        let b = b.clone();
        std::thread::spawn(move || b.append(&group(&["d".to_string()], 2..=2, t0)).unwrap())
    };
    loop {
        let waiting: i64 = a
            .run(|c| async move {
                c.query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .map_err(super::pg)
            })
            .unwrap();
        if waiting > 0 {
            break;
        }
        std::thread::yield_now();
    }
    go.send(()).unwrap();
    closer.join().unwrap().unwrap();
    assert_eq!(folding.join().unwrap(), 1);

    let closed = a.incident(first).unwrap().unwrap();
    assert_eq!(
        (closed.count, closed.last_seq),
        (1, 1),
        "a fold that read the incident before it closed would have counted into it"
    );
    let (all, _) = a
        .incidents(&IncidentQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let next = &all[0];
    assert_ne!(next.id, first);
    assert_eq!(
        (next.first_seq, next.count),
        (2, 1),
        "the event opened a new incident"
    );
}
