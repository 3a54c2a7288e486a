//! Tests of the redb store: the store contract (fresh and after a reopen), and what is redb's alone.

use chrono::Utc;
use serde_json::json;

use super::super::{DeviceBatch, DigestStore, EventQuery, Store, StoredEvent, test_device};
use super::{DERIVED, Engine, FILE, RedbStore};

/// A fresh store in its own directory, which lives as long as the test.
fn fresh() -> (RedbStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (RedbStore::open(dir.path()).unwrap(), dir)
}

crate::store::conformance::store_conformance!(fresh);
crate::store::conformance::store_conformance_append_order!(fresh);
crate::store::conformance_privacy::store_conformance_privacy!(fresh);

/// The contract holds for a handle reopened after a failed write, too: every table and
/// counter comes back with the engine.
mod after_a_reopen {
    use super::*;

    fn reopened() -> (RedbStore, tempfile::TempDir) {
        let (s, dir) = fresh();
        s.close_as_if_failed("a write failed (test)");
        assert!(s.closed_because().is_some());
        assert!(s.recover().unwrap(), "reopened");
        (s, dir)
    }

    crate::store::conformance::store_conformance!(reopened);
    crate::store::conformance::store_conformance_append_order!(reopened);
    crate::store::conformance_privacy::store_conformance_privacy!(reopened);
}

fn event(device: &str, seq: u64) -> StoredEvent {
    StoredEvent {
        device_id: device.into(),
        seq,
        kind: "agent.heartbeat".into(),
        occurred_at: Utc::now(),
        received_at: Utc::now(),
        user: None,
        details: Default::default(),
        severity: "info".into(),
        audience: vec![],
        assessment: None,
    }
}

fn batch(device: &str, seqs: std::ops::RangeInclusive<u64>) -> DeviceBatch {
    DeviceBatch {
        device_id: device.into(),
        events: seqs.map(|s| event(device, s)).collect(),
        facts: None,
        state: Default::default(),
        seen_at: Utc::now(),
    }
}

#[test]
fn the_store_is_one_file_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let s = RedbStore::open(&store_dir).unwrap();
    s.insert_device(&test_device("a")).unwrap();
    let names: Vec<String> = std::fs::read_dir(&store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [FILE]);
}

#[test]
fn a_store_held_elsewhere_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let _held = RedbStore::open(dir.path()).unwrap();
    let err = RedbStore::open(dir.path()).err().expect("the lock is held");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

/// Arrival ids go on from where they were after a reopen, so the timeline stays in arrival
/// order and a digest cursor taken before the restart still points at the next event.
#[test]
fn arrival_ids_and_marks_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RedbStore::open(dir.path()).unwrap();
        for d in ["a", "b"] {
            s.insert_device(&test_device(d)).unwrap();
        }
        s.append(&[batch("a", 1..=3), batch("b", 1..=2)]).unwrap();
        assert_eq!(s.next_timeline_id().unwrap(), 5);
    }
    let s = RedbStore::open(dir.path()).unwrap();
    assert_eq!(s.next_timeline_id().unwrap(), 5);
    assert_eq!(
        s.append(&[batch("b", 2..=3), batch("a", 3..=4)]).unwrap(),
        2
    );
    assert_eq!(s.next_timeline_id().unwrap(), 7);
    let page = s
        .events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let order: Vec<(&str, u64)> = page
        .events
        .iter()
        .map(|e| (e.device_id.as_str(), e.seq))
        .collect();
    assert_eq!(
        order,
        [
            ("a", 4),
            ("b", 3),
            ("b", 2),
            ("b", 1),
            ("a", 3),
            ("a", 2),
            ("a", 1)
        ]
    );
}

#[test]
fn a_damaged_derived_state_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(dir.path()).unwrap();
    s.put_derived("software", "a", 7, &json!({"x": 1})).unwrap();
    s.put_derived("software", "b", 9, &json!({"x": 2})).unwrap();
    s.put_derived("softwarez", "c", 1, &json!({"x": 3}))
        .unwrap();
    let txn = s.db.begin_write().unwrap();
    txn.open_table(DERIVED)
        .unwrap()
        .insert("software/c", b"{not json".as_slice())
        .unwrap();
    txn.commit().unwrap();
    let got = s.derived("software").unwrap();
    assert_eq!(
        got,
        [
            ("a".to_string(), 7, json!({"x": 1})),
            ("b".to_string(), 9, json!({"x": 2}))
        ]
    );
    // A derived state outlives the store's handle once a durable write follows it.
    s.insert_device(&test_device("d")).unwrap();
    drop(s);
    let s = Engine::open(dir.path()).unwrap();
    assert_eq!(s.derived("software").unwrap().len(), 2);
}

/// A copy of the file taken while the store is open is what a crash leaves (redb marks a clean
/// close in the file): it opens, after redb's repair, with every committed group.
#[test]
fn what_a_crash_leaves_opens_with_every_committed_group() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    s.insert_device(&test_device("a")).unwrap();
    for from in (1..=91).step_by(10) {
        s.append(&[batch("a", from..=from + 9)]).unwrap();
    }
    std::fs::copy(dir.path().join(FILE), crashed.path().join(FILE)).unwrap();
    s.append(&[batch("a", 101..=110)]).unwrap();
    let c = RedbStore::open(crashed.path()).unwrap();
    let d = c.device("a").unwrap().unwrap();
    assert_eq!((d.event_count, d.highest_seq), (100, 100));
    assert_eq!(c.next_timeline_id().unwrap(), 100);
    assert_eq!(c.append(&[batch("a", 95..=105)]).unwrap(), 5);
}

/// A write that fails for want of space keeps the `io::Error` behind redb's error reachable,
/// so a caller can tell a full disk from a corrupt record, and the message reads as before.
#[test]
fn a_full_disk_keeps_its_io_error_in_the_chain() {
    use std::error::Error as _;

    let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
    let err = super::engine(redb::StorageError::Io(full));
    assert!(err.is_storage_full(), "{err}");
    assert_eq!(
        err.to_string(),
        "store I/O failed: I/O error: No space left on device"
    );
    let redb = err.source().expect("redb's error is the source");
    let io = redb.source().expect("the io::Error is under it");
    let io = io.downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);

    let corrupt = super::engine(redb::StorageError::Corrupted("bad page".into()));
    assert!(!corrupt.is_storage_full(), "{corrupt}");
    assert!(corrupt.source().unwrap().source().is_none());
    assert!(!super::super::StoreError::Corrupt("event".into()).is_storage_full());
}

/// An error with a context of ours says both, and the cause stays reachable.
#[test]
fn an_engine_error_with_context_names_both() {
    use std::error::Error as _;

    let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
    let err = super::super::StoreError::engine("cannot sync /data/store.redb", full);
    assert_eq!(
        err.to_string(),
        "store I/O failed: cannot sync /data/store.redb: No space left on device"
    );
    assert!(err.is_storage_full());
    assert!(err.source().unwrap().is::<std::io::Error>());
    let plain = super::super::StoreError::engine_msg("the store writer has stopped");
    assert_eq!(
        plain.to_string(),
        "store I/O failed: the store writer has stopped"
    );
    assert!(plain.source().is_none() && !plain.is_storage_full());
}
