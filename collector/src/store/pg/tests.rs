//! The PostgreSQL store's tests: the store contract on a real PostgreSQL, then what only several collectors on one database can show.

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;

use super::PgStore;
use super::rig::{DbGuard, test_database};
use crate::store::{DeviceBatch, EventQuery, Store, StoreError, StoredEvent, test_device};

/// A store on a fresh database of its own, which lives as long as the test.
fn fresh() -> (PgStore, DbGuard) {
    let (url, guard) = test_database();
    (PgStore::connect(&url).expect("connect"), guard)
}

crate::store::conformance::store_conformance!(fresh);
crate::store::conformance::store_conformance_append_order!(fresh);

/// The privacy suite holds each purge call to its batch size, so it runs on the rows path;
/// dropping whole partitions has its own tests (`privacy/tests.rs`).
fn fresh_rows_only() -> (PgStore, DbGuard) {
    let (store, guard) = fresh();
    (store.rows_only(), guard)
}
crate::store::conformance_privacy::store_conformance_privacy!(fresh_rows_only);

fn event(device: &str, seq: u64) -> StoredEvent {
    StoredEvent {
        device_id: device.into(),
        seq,
        kind: "probe.state".into(),
        occurred_at: Utc::now(),
        received_at: Utc::now(),
        user: None,
        details: Default::default(),
        severity: "info".into(),
        audience: vec![],
        assessment: None,
    }
}

fn batch(device: &str, seqs: impl Iterator<Item = u64>) -> DeviceBatch {
    DeviceBatch {
        device_id: device.into(),
        events: seqs.map(|s| event(device, s)).collect(),
        facts: None,
        state: Default::default(),
        seen_at: Utc::now(),
    }
}

#[test]
fn migrations_apply_once_and_a_second_collector_finds_them_applied() {
    let (url, _guard) = test_database();
    let first = PgStore::connect(&url).unwrap();
    first.insert_device(&test_device("a")).unwrap();
    first.append(&[batch("a", 1..=3)]).unwrap();
    // Connecting again (another collector, or a restart) applies nothing and loses nothing.
    let second = PgStore::connect(&url).unwrap();
    assert_eq!(second.device("a").unwrap().unwrap().event_count, 3);
    let applied: Vec<(i64, String)> = second
        .run(|c| async move {
            Ok(c.query(
                "SELECT version, name FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .map_err(super::pg)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
        .unwrap();
    let expected: Vec<(i64, String)> = super::MIGRATIONS
        .iter()
        .map(|(v, n, _)| (*v, n.to_string()))
        .collect();
    assert_eq!(applied, expected, "each migration recorded once");
}

#[test]
fn collectors_starting_together_migrate_once() {
    let (url, _guard) = test_database();
    let stores: Vec<PgStore> = std::thread::scope(|s| {
        let starts: Vec<_> = (0..3).map(|_| s.spawn(|| PgStore::connect(&url))).collect();
        starts
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    stores[0].insert_device(&test_device("a")).unwrap();
    assert!(stores[2].device("a").unwrap().is_some());
}

#[test]
fn an_unreachable_database_is_named_without_its_password() {
    let dir = std::env::temp_dir().join(format!("caretaker-no-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = PgStore::connect(&format!(
        "postgres://care:s3cret@/caretaker?host={}&port=1",
        dir.display()
    ))
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Engine { .. }), "{msg}");
    assert!(
        msg.contains("cannot reach PostgreSQL at postgres://care:***@"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
    let bad = PgStore::connect("postgres://care@host:notaport/db").unwrap_err();
    assert!(bad.to_string().contains("is not a PostgreSQL URL"), "{bad}");
}

/// Events land in a partition per month they were received in; the default one stays empty.
#[test]
fn events_go_to_the_partition_of_their_month() {
    let (s, _guard) = fresh();
    s.insert_device(&test_device("a")).unwrap();
    let mut old = event("a", 1);
    old.received_at = "2026-01-15T10:00:00Z".parse().unwrap();
    let mut new = event("a", 2);
    new.received_at = "2026-02-01T00:00:00Z".parse().unwrap();
    s.append(&[DeviceBatch {
        events: vec![old, new],
        ..batch("a", std::iter::empty())
    }])
    .unwrap();
    let placed: Vec<(String, i64)> = s
        .run(|c| async move {
            Ok(c.query(
                "SELECT tableoid::regclass::text, seq FROM events ORDER BY seq",
                &[],
            )
            .await
            .map_err(super::pg)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
        .unwrap();
    assert_eq!(
        placed,
        [
            ("events_2026_01".to_string(), 1),
            ("events_2026_02".to_string(), 2)
        ]
    );
}

/// Two collectors on one database, appending for the same devices at once, each group a mix
/// of new events and resends of the other's: every event is stored exactly once, and a reader
/// polling "after the last id I saw" (as the DSL's digests do) misses none, because ids are
/// handed out in commit order.
#[test]
fn two_collectors_store_each_event_once_and_ids_follow_commits() {
    let (url, _guard) = test_database();
    let a = Arc::new(PgStore::connect(&url).unwrap());
    let b = Arc::new(PgStore::connect(&url).unwrap());
    let devices: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    for d in &devices {
        a.insert_device(&test_device(d)).unwrap();
    }
    let rounds = 60u64;
    let per = 10u64;
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen_by_poller = std::thread::scope(|scope| {
        let appenders: Vec<_> = [(&a, 0usize), (&b, 3usize)]
            .into_iter()
            .map(|(store, shift)| {
                let devices = &devices;
                scope.spawn(move || {
                    for r in 0..rounds {
                        // Both collectors send the same sequences for every device (a device that
                        // reconnected to the other collector resends what was not acked), in a
                        // different device order.
                        let mut group: Vec<DeviceBatch> = (0..devices.len())
                            .map(|i| {
                                let d = &devices[(i + shift) % devices.len()];
                                batch(d, r * per + 1..=(r + 1) * per)
                            })
                            .collect();
                        if shift > 0 {
                            group.reverse();
                        }
                        store.append(&group).unwrap();
                    }
                })
            })
            .collect();
        // The poller reads the DSL-style feed by id: the fleet listing from its last id on.
        let poller = scope.spawn(|| {
            let mut seen = Vec::new();
            let mut next_id = 0u64;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let ids = ids_from(&a, next_id);
                if let Some(&last) = ids.last() {
                    next_id = last + 1;
                }
                seen.extend(ids);
                if finished {
                    return seen;
                }
            }
        });
        for appender in appenders {
            appender.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        poller.join().unwrap()
    });
    let total = devices.len() as u64 * rounds * per;
    for d in &devices {
        let dev = a.device(d).unwrap().unwrap();
        assert_eq!(
            (dev.event_count, dev.highest_seq),
            (rounds * per, rounds * per),
            "{d}"
        );
        let listed = all_events(&b, Some(d));
        let mut seqs: Vec<u64> = listed.iter().map(|e| e.seq).collect();
        seqs.reverse();
        assert_eq!(
            seqs,
            (1..=rounds * per).collect::<Vec<_>>(),
            "{d}: each once, by listing"
        );
    }
    assert_eq!(
        all_events(&a, None).len() as u64,
        total,
        "the fleet listing"
    );
    let mut sorted = seen_by_poller.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, seen_by_poller, "the poller saw ids only increasing");
    assert_eq!(
        seen_by_poller.len() as u64,
        total,
        "the poller, reading only after the last id it saw, missed none"
    );
}

/// Arrival ids from `from` on, oldest first, as one poll of a feed would read them.
fn ids_from(s: &PgStore, from: u64) -> Vec<u64> {
    let from = from as i64;
    s.run(move |c| async move {
        Ok(
            c.query("SELECT id FROM events WHERE id >= $1 ORDER BY id", &[&from])
                .await
                .map_err(super::pg)?
                .iter()
                .map(|r| r.get::<_, i64>(0) as u64)
                .collect(),
        )
    })
    .unwrap()
}

fn all_events(s: &PgStore, device: Option<&String>) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .events(&EventQuery {
                device: device.cloned(),
                limit: 500,
                cursor,
                ..Default::default()
            })
            .unwrap();
        out.extend(page.events);
        cursor = page.next;
        if cursor.is_none() {
            return out;
        }
    }
}

/// Two collectors enrolling with the last use of a token, and saving policies, at once.
#[test]
fn tokens_and_policy_versions_hold_across_collectors() {
    let (url, _guard) = test_database();
    let a = PgStore::connect(&url).unwrap();
    let b = PgStore::connect(&url).unwrap();
    let now = Utc::now();
    a.insert_token(&crate::store::TokenRecord {
        hash: "h".into(),
        label: "roll-out".into(),
        max_uses: 10,
        uses: 0,
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
    })
    .unwrap();
    let (granted, versions) = std::thread::scope(|scope| {
        let runs: Vec<_> = [&a, &b]
            .into_iter()
            .map(|s| {
                scope.spawn(move || {
                    let mut granted = 0;
                    let mut versions = Vec::new();
                    for i in 0..15 {
                        if s.use_token("h", now).unwrap().is_ok() {
                            granted += 1;
                        }
                        versions.push(s.put_policy(json!({"i": i}), "admin", now).unwrap().version);
                    }
                    (granted, versions)
                })
            })
            .collect();
        runs.into_iter().fold((0, Vec::new()), |(g, mut v), h| {
            let (granted, versions) = h.join().unwrap();
            v.extend(versions);
            (g + granted, v)
        })
    });
    assert_eq!(granted, 10, "a token is used at most max_uses times in all");
    let mut versions = versions;
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=30).collect::<Vec<u64>>(),
        "no two policies share a version"
    );
}

#[test]
fn a_password_never_reaches_a_message() {
    assert_eq!(
        super::redact("postgres://care:s3cret@db.example:5432/caretaker"),
        "postgres://care:***@db.example:5432/caretaker"
    );
    assert_eq!(
        super::redact("postgres://care@/caretaker?host=/run/pg&password=s3cret&port=5433"),
        "postgres://care@/caretaker?host=/run/pg&password=***&port=5433"
    );
    assert_eq!(
        super::redact("postgres://care@/caretaker?host=/run/pg"),
        "postgres://care@/caretaker?host=/run/pg"
    );
}

/// A string with U+0000 in an event's details or a device's state (which `jsonb` and `text`
/// refuse) is stored and read back as it came, so it cannot fail every group it travels in.
#[test]
fn a_nul_character_in_details_and_state_is_stored_as_sent() {
    let (s, _guard) = fresh();
    s.insert_device(&test_device("a")).unwrap();
    let mut e = event("a", 1);
    e.details = json!({"product": "Stick\u{0}Pro"})
        .as_object()
        .unwrap()
        .clone();
    e.assessment = Some(json!({"rule": "x\u{0}"}));
    s.append(&[DeviceBatch {
        events: vec![e.clone()],
        state: json!({"usb": {"label": "\u{0}"}})
            .as_object()
            .unwrap()
            .clone(),
        ..batch("a", std::iter::empty())
    }])
    .unwrap();
    let page = s
        .events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.events, [e]);
    assert_eq!(
        s.device("a").unwrap().unwrap().state["usb"]["label"],
        "\u{0}"
    );
}

/// The store is called from the collector's own tasks: a task that makes many calls without
/// yielding must not run out of tokio's cooperative budget on the way (it hung on the 129th
/// call when each wait polled a JoinHandle within the caller's budget).
#[tokio::test]
async fn a_task_making_many_calls_without_yielding_is_not_starved() {
    let (s, _g) = fresh();
    s.insert_device(&test_device("d")).unwrap();
    for _ in 0..300 {
        s.device("d").unwrap().expect("the device");
    }
}
