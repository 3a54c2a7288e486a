//! Erasure on redb down to the bytes: after `erase_subject` no file in the store directory holds the erased name, except in records a hold keeps.

use std::path::Path;

use chrono::Utc;
use serde_json::json;

use super::super::{
    AccountStore, AuditEntry, DeviceBatch, DigestCursor, DigestRecord, DigestStatus, DigestStore,
    EntryAction, EventQuery, Hold, HoldTarget, IncidentQuery, IncidentStore, PrivacyStore, Store,
    StoredEvent, test_device,
};
use super::RedbStore;

const NAME: &str = "zebulon";

/// Every file under `dir` whose bytes hold `needle`.
fn files_naming(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_naming(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

fn event(seq: u64, user: Option<&str>, details: serde_json::Value, dsl: bool) -> StoredEvent {
    StoredEvent {
        device_id: "d".into(),
        seq,
        kind: if dsl {
            "usb.inserted"
        } else {
            "agent.heartbeat"
        }
        .into(),
        occurred_at: Utc::now(),
        received_at: Utc::now(),
        user: user.map(Into::into),
        details: details.as_object().unwrap().clone(),
        severity: "warning".into(),
        audience: if dsl { vec!["dsl".into()] } else { vec![] },
        assessment: None,
    }
}

/// A store naming `NAME` in every kind of record, with old versions of some of them left in
/// freed pages (records rewritten several times), and a retired sled copy naming them too.
fn seeded() -> (RedbStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let retired = dir.path().join("sled-retired-2026-11-01");
    std::fs::create_dir(&retired).unwrap();
    std::fs::write(retired.join("db"), format!("old sled record of {NAME}")).unwrap();
    std::fs::write(retired.join("README.txt"), "retired").unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    s.insert_device(&test_device("d")).unwrap();
    let mut state = serde_json::Map::new();
    state.insert("session".into(), json!({"user": NAME}));
    s.append(&[DeviceBatch {
        device_id: "d".into(),
        events: vec![
            event(1, Some(NAME), json!({"serial": "A"}), true),
            event(2, None, json!({"path": format!("/home/{NAME}/x")}), false),
            event(3, Some("someone"), json!({}), false),
        ],
        facts: None,
        state,
        seen_at: Utc::now(),
    }])
    .unwrap();
    let incident = s
        .incidents(&IncidentQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .0[0]
        .id;
    s.add_incident_entry(
        incident,
        Utc::now(),
        "dsl1",
        EntryAction::Note,
        &format!("spoke to {NAME}"),
    )
    .unwrap();
    s.audit(&AuditEntry {
        id: 0,
        at: Utc::now(),
        actor: "dsl1".into(),
        action: "incident_viewed".into(),
        target: NAME.into(),
        detail: String::new(),
        address: String::new(),
    })
    .unwrap();
    let digest = DigestRecord {
        id: 0,
        recipient: "dsl1".into(),
        channel: super::super::Channel::Email {
            address: "dsl1@school.example".into(),
        },
        kind: "scheduled".into(),
        created_at: Utc::now(),
        subject: "Digest".into(),
        text: format!("{NAME} inserted a stick"),
        html: String::new(),
        json: json!({}),
        events: 1,
        status: DigestStatus::Pending,
        attempts: 0,
        last_error: None,
        next_attempt: None,
        sent_at: None,
        attachment: None,
    };
    let mut d = s
        .record_digests("dsl1", &DigestCursor::default(), vec![digest])
        .unwrap()
        .remove(0);
    for attempt in 1..=5 {
        d.attempts = attempt;
        s.update_digest(&d).unwrap();
    }
    s.put_derived("software", "d", 3, &json!([format!("/home/{NAME}/bin")]))
        .unwrap();
    (s, dir)
}

#[test]
fn an_erased_name_is_in_no_file_of_the_store_afterwards() {
    let (s, dir) = seeded();
    assert!(
        !files_naming(dir.path(), NAME).is_empty(),
        "the name is stored before the erasure"
    );
    let counts = s.erase_subject(NAME, "user-5c1e").unwrap();
    assert_eq!((counts.events, counts.digests, counts.devices), (2, 1, 1));
    assert_eq!(files_naming(dir.path(), NAME), Vec::<String>::new());
    assert!(
        !dir.path().join("sled-retired-2026-11-01").exists(),
        "the retired sled copy is gone"
    );

    // The same handle goes on serving the rewritten store.
    let listed = s
        .events(&EventQuery {
            user: Some("user-5c1e".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.events.len(), 1);
    let next = DeviceBatch {
        device_id: "d".into(),
        events: vec![event(4, Some("other"), json!({}), false)],
        facts: None,
        state: Default::default(),
        seen_at: Utc::now(),
    };
    assert_eq!(s.append(&[next]).unwrap(), 1);
    assert_eq!(s.device("d").unwrap().unwrap().event_count, 4);
    drop(s);
    let reopened = RedbStore::open(dir.path()).unwrap();
    assert_eq!(reopened.device("d").unwrap().unwrap().highest_seq, 4);
}

#[test]
fn a_held_name_stays_in_the_store_file() {
    let (s, dir) = seeded();
    s.put_hold(&Hold {
        target: HoldTarget::User(NAME.into()),
        by: "dsl1".into(),
        at: Utc::now(),
        reason: "case 4".into(),
    })
    .unwrap();
    let counts = s.erase_subject(NAME, "user-5c1e").unwrap();
    assert_eq!((counts.events, counts.kept_events), (0, 2));
    let naming = files_naming(dir.path(), NAME);
    assert!(
        naming.iter().any(|f| f.ends_with(super::FILE)),
        "held records keep the name: {naming:?}"
    );
}

/// A copy an erasure was writing when the process stopped is discarded at the next open; the
/// store opens on its own file, whole.
#[test]
fn an_unfinished_rewrite_is_discarded_at_open() {
    let (s, dir) = seeded();
    drop(s);
    let partial = dir.path().join("caretaker.redb.erasing");
    std::fs::write(&partial, b"half a copy").unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    assert!(!partial.exists());
    assert_eq!(s.device("d").unwrap().unwrap().event_count, 3);
}
