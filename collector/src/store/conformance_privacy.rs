//! The privacy contract as tests (retention, legal holds, subject access and erasure): one suite every backend passes, instantiated with `store_conformance_privacy!`.
//!
//! Like `conformance.rs`, each test takes a fresh, empty store as `&dyn Store` and relies only
//! on what the traits promise. A backend joins with one line:
//! `crate::store::conformance_privacy::store_conformance_privacy!(make);`.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::{
    Attachment, AuditEntry, DeviceBatch, DigestCursor, DigestRecord, DigestStatus, EntryAction,
    EventQuery, Held, Hold, HoldTarget, IncidentQuery, IncidentStatus, PurgeCounts, PurgeCutoffs,
    Store, StoredEvent, SubjectRecords, test_device as device,
};

/// Instantiates every test below as a `#[test]` for one backend.
macro_rules! store_conformance_privacy {
    ($make:expr) => {
        $crate::store::conformance_privacy::store_conformance_privacy!(@each $make;
            purge_removes_exactly_the_expired_events_in_bounded_batches,
            purge_from_the_middle_of_a_batch_keeps_device_listings_right,
            expired_closed_incidents_go_with_their_records_and_open_ones_stay,
            audit_and_sent_digests_expire_and_pending_digests_never,
            holds_round_trip_and_keep_what_they_hold_from_the_purge,
            subject_records_find_every_record_naming_a_user_and_no_other,
            erasure_renames_everywhere_outside_holds_and_is_idempotent,
            a_hold_on_the_user_keeps_every_record_from_erasure,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (store, _guard) = $make();
                $crate::store::conformance_privacy::$name(&store);
            }
        )*
    };
}
pub(crate) use store_conformance_privacy;

fn days_ago(d: i64) -> DateTime<Utc> {
    Utc::now() - Duration::days(d)
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// A routine (technical, no incident) event at `at`.
fn tech(device: &str, seq: u64, at: DateTime<Utc>, user: Option<&str>) -> StoredEvent {
    StoredEvent {
        device_id: device.into(),
        seq,
        kind: "agent.heartbeat".into(),
        occurred_at: at,
        received_at: at,
        user: user.map(Into::into),
        details: Default::default(),
        severity: "info".into(),
        audience: vec![],
        assessment: None,
    }
}

/// A flagged removable-media event (the DSL's: it opens or counts into an incident).
fn flagged(
    device: &str,
    seq: u64,
    serial: &str,
    at: DateTime<Utc>,
    user: Option<&str>,
) -> StoredEvent {
    StoredEvent {
        device_id: device.into(),
        seq,
        kind: "usb.inserted".into(),
        occurred_at: at,
        received_at: at,
        user: user.map(Into::into),
        details: object(json!({"serial": serial, "product": "Stick", "decision": "block"})),
        severity: "warning".into(),
        audience: vec!["network_manager".into(), "dsl".into()],
        assessment: None,
    }
}

fn batch_of(device: &str, events: Vec<StoredEvent>) -> DeviceBatch {
    DeviceBatch {
        device_id: device.into(),
        events,
        facts: None,
        state: Default::default(),
        seen_at: Utc::now(),
    }
}

/// Purges to the end in batches of `limit`, checking each stays within it.
fn purge_all(s: &dyn Store, cutoffs: &PurgeCutoffs, limit: usize) -> PurgeCounts {
    let mut total = PurgeCounts::default();
    for _ in 0..10_000 {
        let c = s.purge_expired(cutoffs, limit).unwrap();
        // An incident goes with its whole record, so its entries ride over the limit.
        assert!(
            c.total() - c.incident_entries <= limit as u64,
            "{c:?} over the limit {limit}"
        );
        if c.total() == 0 {
            return total;
        }
        total.add(&c);
    }
    panic!("the purge never finished");
}

/// Every page of `q`, as (device, seq), newest first.
fn listed(s: &dyn Store, q: EventQuery) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .events(&EventQuery {
                cursor: cursor.clone(),
                limit: 3,
                ..q.clone()
            })
            .unwrap();
        seen.extend(page.events.iter().map(|e| (e.device_id.clone(), e.seq)));
        cursor = page.next;
        if cursor.is_none() {
            return seen;
        }
    }
}

fn seqs(device: &str, r: impl DoubleEndedIterator<Item = u64>) -> Vec<(String, u64)> {
    r.rev().map(|s| (device.to_string(), s)).collect()
}

fn after(s: &dyn Store, device: &str) -> Vec<u64> {
    let mut seen = Vec::new();
    s.device_events_after(device, 0, "", &mut |e| seen.push(e.seq))
        .unwrap();
    seen
}

pub fn purge_removes_exactly_the_expired_events_in_bounded_batches(s: &dyn Store) {
    s.insert_device(&device("a")).unwrap();
    s.insert_device(&device("b")).unwrap();
    let old = days_ago(100);
    let mut a: Vec<StoredEvent> = (1..=30).map(|i| tech("a", i, old, Some("pat"))).collect();
    a.extend((31..=35).map(|i| flagged("a", i, "S", old, Some("pat"))));
    a.extend((36..=40).map(|i| tech("a", i, Utc::now(), Some("pat"))));
    s.append(&[batch_of("a", a)]).unwrap();
    s.append(&[batch_of(
        "b",
        (1..=10).map(|i| tech("b", i, old, None)).collect(),
    )])
    .unwrap();
    assert_eq!(
        s.purge_expired(&PurgeCutoffs::default(), 100).unwrap(),
        PurgeCounts::default(),
        "no cutoff: nothing expires"
    );

    let technical = PurgeCutoffs {
        technical: Some(days_ago(30)),
        ..Default::default()
    };
    let removed = purge_all(s, &technical, 7);
    assert_eq!(
        removed,
        PurgeCounts {
            technical_events: 40,
            ..Default::default()
        }
    );
    assert_eq!(
        listed(s, EventQuery::default()),
        seqs("a", 31..=40),
        "the timeline"
    );
    let of = |d: &str| EventQuery {
        device: Some(d.into()),
        ..Default::default()
    };
    assert_eq!(listed(s, of("a")), seqs("a", 31..=40));
    assert!(listed(s, of("b")).is_empty());
    let by_kind = EventQuery {
        kind: Some("agent.heartbeat".into()),
        ..Default::default()
    };
    assert_eq!(listed(s, by_kind), seqs("a", 36..=40));
    let by_user = EventQuery {
        user: Some("pat".into()),
        ..Default::default()
    };
    assert_eq!(listed(s, by_user), seqs("a", 31..=40));
    let dsl = EventQuery {
        audience: Some("dsl".into()),
        ..Default::default()
    };
    assert_eq!(listed(s, dsl.clone()), seqs("a", 31..=35));
    assert_eq!(after(s, "a"), (31..=40).collect::<Vec<_>>());
    assert!(after(s, "b").is_empty());
    let (da, db) = (
        s.device("a").unwrap().unwrap(),
        s.device("b").unwrap().unwrap(),
    );
    assert_eq!((da.event_count, da.highest_seq), (10, 40));
    assert_eq!((db.event_count, db.highest_seq), (0, 10), "highest kept");

    // Exactly once still holds for a purged sequence.
    assert_eq!(
        s.append(&[batch_of(
            "b",
            (5..=12).map(|i| tech("b", i, old, None)).collect()
        )])
        .unwrap(),
        2
    );
    assert_eq!(after(s, "b"), [11, 12]);
    assert_eq!(s.device("b").unwrap().unwrap().event_count, 2);

    let safeguarding = PurgeCutoffs {
        safeguarding: Some(days_ago(30)),
        ..Default::default()
    };
    let removed = purge_all(s, &safeguarding, 2);
    assert_eq!(
        (removed.safeguarding_events, removed.technical_events),
        (5, 0),
        "only the DSL's, and b's late ones are technical"
    );
    assert_eq!(
        removed.incidents, 0,
        "the open incident stays though its events went"
    );
    assert!(listed(s, dsl).is_empty());
    assert_eq!(s.device("a").unwrap().unwrap().event_count, 5);
}

pub fn purge_from_the_middle_of_a_batch_keeps_device_listings_right(s: &dyn Store) {
    s.insert_device(&device("a")).unwrap();
    // One batch, so one run of sequences: odd ones expired, even ones fresh.
    let mixed = (1..=20)
        .map(|i| {
            let at = if i % 2 == 1 {
                days_ago(100)
            } else {
                Utc::now()
            };
            tech("a", i, at, None)
        })
        .collect();
    s.append(&[batch_of("a", mixed)]).unwrap();
    s.append(&[batch_of(
        "a",
        (21..=22).map(|i| tech("a", i, Utc::now(), None)).collect(),
    )])
    .unwrap();
    let technical = PurgeCutoffs {
        technical: Some(days_ago(30)),
        ..Default::default()
    };
    assert_eq!(purge_all(s, &technical, 3).technical_events, 10);
    let evens: Vec<u64> = (1..=22).filter(|i| i % 2 == 0 || *i > 20).collect();
    let of_a = EventQuery {
        device: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(
        listed(s, of_a),
        evens
            .iter()
            .rev()
            .map(|i| ("a".into(), *i))
            .collect::<Vec<_>>()
    );
    assert_eq!(after(s, "a"), evens);
    let mut from_ten = Vec::new();
    let highest = s
        .device_events_after("a", 10, "", &mut |e| from_ten.push(e.seq))
        .unwrap();
    assert_eq!((from_ten, highest), (vec![12, 14, 16, 18, 20, 21, 22], 22));
    assert_eq!(s.device("a").unwrap().unwrap().event_count, 12);
    assert_eq!(
        s.append(&[batch_of("a", vec![tech("a", 23, Utc::now(), None)])])
            .unwrap(),
        1
    );
    assert_eq!(after(s, "a").last(), Some(&23));
}

fn closed_incident(s: &dyn Store, id: u64, at: DateTime<Utc>, by: &str, text: &str) {
    s.add_incident_entry(id, at, by, EntryAction::Note, text)
        .unwrap();
    s.add_incident_entry(id, at, by, EntryAction::Closed, "done")
        .unwrap();
}

fn incident_of(s: &dyn Store, device: &str, serial: &str) -> Option<u64> {
    let e = flagged(device, 1, serial, Utc::now(), None);
    let subject = crate::incidents::subject(&e.kind, &e.details);
    s.incident_for_group(&crate::incidents::group_key(device, &e.kind, &subject))
        .unwrap()
}

pub fn expired_closed_incidents_go_with_their_records_and_open_ones_stay(s: &dyn Store) {
    s.insert_device(&device("a")).unwrap();
    let old = days_ago(100);
    s.append(&[batch_of(
        "a",
        vec![
            flagged("a", 1, "OPEN", old, Some("pat")),
            flagged("a", 2, "GONE", old, Some("pat")),
        ],
    )])
    .unwrap();
    let open = incident_of(s, "a", "OPEN").unwrap();
    let gone = incident_of(s, "a", "GONE").unwrap();
    assert!(gone > open, "the expiring one has the highest id");
    closed_incident(s, gone, old, "dsl1", "spoke to the pupil");
    let cutoffs = PurgeCutoffs {
        safeguarding: Some(days_ago(30)),
        ..Default::default()
    };
    let removed = purge_all(s, &cutoffs, 1);
    assert_eq!(
        (
            removed.incidents,
            removed.incident_entries,
            removed.safeguarding_events
        ),
        (1, 2, 2)
    );
    assert_eq!(s.incident(gone).unwrap(), None);
    assert!(s.incident_entries(gone).unwrap().is_empty());
    assert_eq!(incident_of(s, "a", "GONE"), None, "its group opens anew");
    let still = s.incident(open).unwrap().expect("the open one stays");
    assert_eq!(still.status, IncidentStatus::Open);
    let listed = s
        .incidents(&IncidentQuery {
            device: Some("a".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .0;
    assert_eq!(listed.iter().map(|i| i.id).collect::<Vec<_>>(), [open]);

    s.append(&[batch_of(
        "a",
        vec![flagged("a", 3, "GONE", Utc::now(), None)],
    )])
    .unwrap();
    let fresh = incident_of(s, "a", "GONE").expect("a new incident");
    assert!(fresh > gone, "an id is never given out twice");
    assert_eq!(s.incident(fresh).unwrap().unwrap().count, 1);
}

fn audit_entry(at: DateTime<Utc>, actor: &str, target: &str, detail: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        at,
        actor: actor.into(),
        action: "incident_viewed".into(),
        target: target.into(),
        detail: detail.into(),
        address: String::new(),
    }
}

fn digest(created: DateTime<Utc>, text: &str, status: DigestStatus) -> DigestRecord {
    DigestRecord {
        id: 0,
        recipient: "dsl1".into(),
        channel: super::Channel::Email {
            address: "dsl1@school.example".into(),
        },
        kind: "scheduled".into(),
        created_at: created,
        subject: "Safeguarding digest".into(),
        text: text.into(),
        html: format!("<p>{text}</p>"),
        json: json!({"lines": [text]}),
        events: 1,
        sent_at: (status == DigestStatus::Sent).then_some(created),
        status,
        attempts: 0,
        last_error: None,
        next_attempt: None,
        attachment: None,
    }
}

pub fn audit_and_sent_digests_expire_and_pending_digests_never(s: &dyn Store) {
    let old = days_ago(400);
    let first = s.audit(&audit_entry(old, "dsl1", "", "old")).unwrap();
    s.audit(&audit_entry(Utc::now(), "dsl1", "", "new"))
        .unwrap();
    let last = s.audit(&audit_entry(old, "dsl1", "", "old too")).unwrap();
    let recorded = s
        .record_digests(
            "dsl1",
            &DigestCursor::default(),
            vec![
                digest(old, "sent long ago", DigestStatus::Sent),
                digest(old, "never delivered", DigestStatus::Pending),
                digest(Utc::now(), "sent today", DigestStatus::Sent),
                digest(old, "sent long ago too", DigestStatus::Sent),
            ],
        )
        .unwrap();
    let cutoffs = PurgeCutoffs {
        audit: Some(days_ago(365)),
        digests: Some(days_ago(365)),
        ..Default::default()
    };
    let removed = purge_all(s, &cutoffs, 1);
    assert_eq!((removed.audit_entries, removed.digests), (2, 2));
    let log = s.audit_log(None, 10).unwrap().entries;
    assert_eq!(
        log.iter().map(|a| a.detail.as_str()).collect::<Vec<_>>(),
        ["new"]
    );
    let after = s.audit(&audit_entry(Utc::now(), "dsl1", "", "x")).unwrap();
    assert!(
        after > last && last > first,
        "an id is never given out twice"
    );
    let kept: Vec<String> = s
        .digests(None, 10)
        .unwrap()
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(kept, ["sent today", "never delivered"]);
    assert_eq!(s.pending_digests().unwrap().len(), 1);
    let more = s
        .record_digests(
            "dsl1",
            &DigestCursor::default(),
            vec![digest(Utc::now(), "n", DigestStatus::Pending)],
        )
        .unwrap();
    assert!(more[0].id > recorded[3].id, "a digest id is never reused");
}

fn hold(target: HoldTarget, reason: &str) -> Hold {
    Hold {
        target,
        by: "dsl1".into(),
        at: Utc::now(),
        reason: reason.into(),
    }
}

pub fn holds_round_trip_and_keep_what_they_hold_from_the_purge(s: &dyn Store) {
    assert!(s.holds().unwrap().is_empty());
    let on_b = hold(HoldTarget::Device("b".into()), "case 1");
    s.put_hold(&on_b).unwrap();
    s.put_hold(&hold(HoldTarget::Device("b".into()), "case 2"))
        .unwrap();
    let holds = s.holds().unwrap();
    assert_eq!(holds.len(), 1, "placing again replaces");
    assert_eq!(holds[0].reason, "case 2");
    assert!(s.release_hold(&on_b.target).unwrap());
    assert!(!s.release_hold(&on_b.target).unwrap(), "none left");
    assert!(s.holds().unwrap().is_empty());

    for d in ["a", "b", "c"] {
        s.insert_device(&device(d)).unwrap();
    }
    let old = days_ago(100);
    s.append(&[
        batch_of(
            "a",
            vec![
                flagged("a", 1, "HELD", old, Some("pat")),
                flagged("a", 2, "HELD", old, Some("pat")),
                flagged("a", 3, "FREE", old, Some("pat")),
                tech("a", 4, old, Some("carol")),
                tech("a", 5, old, Some("pat")),
            ],
        ),
        batch_of("b", (1..=3).map(|i| tech("b", i, old, None)).collect()),
        batch_of("c", (1..=3).map(|i| tech("c", i, old, None)).collect()),
    ])
    .unwrap();
    let held_incident = incident_of(s, "a", "HELD").unwrap();
    let free_incident = incident_of(s, "a", "FREE").unwrap();
    closed_incident(s, held_incident, old, "dsl1", "note");
    closed_incident(s, free_incident, old, "dsl1", "note");
    s.audit(&audit_entry(old, "dsl1", "carol", "about carol"))
        .unwrap();
    s.audit(&audit_entry(
        old,
        "dsl1",
        &format!("incident:{held_incident}"),
        "held",
    ))
    .unwrap();
    s.audit(&audit_entry(old, "dsl1", "pat", "not held"))
        .unwrap();
    for target in [
        HoldTarget::Incident(held_incident),
        HoldTarget::Device("b".into()),
        HoldTarget::User("carol".into()),
    ] {
        s.put_hold(&hold(target, "case 7")).unwrap();
    }
    assert_eq!(s.holds().unwrap().len(), 3);

    let all = PurgeCutoffs {
        technical: Some(days_ago(30)),
        safeguarding: Some(days_ago(30)),
        audit: Some(days_ago(30)),
        digests: Some(days_ago(30)),
    };
    let removed = purge_all(s, &all, 2);
    assert_eq!(
        (
            removed.technical_events,
            removed.safeguarding_events,
            removed.incidents,
            removed.incident_entries,
            removed.audit_entries
        ),
        (4, 1, 1, 2, 1),
        "a5 and c's three; a3; the free incident and its record; the audit entry about pat"
    );
    let everything = listed(s, EventQuery::default());
    assert_eq!(
        everything,
        [
            ("b".to_string(), 3),
            ("b".into(), 2),
            ("b".into(), 1),
            ("a".into(), 4),
            ("a".into(), 2),
            ("a".into(), 1)
        ]
    );
    assert!(s.incident(held_incident).unwrap().is_some());
    assert_eq!(s.incident_entries(held_incident).unwrap().len(), 2);
    assert_eq!(s.incident(free_incident).unwrap(), None);
    assert_eq!(s.audit_log(None, 10).unwrap().entries.len(), 2);

    for h in s.holds().unwrap() {
        assert!(s.release_hold(&h.target).unwrap());
    }
    let removed = purge_all(s, &all, 100);
    assert_eq!((removed.total(), removed.incidents), (11, 1));
    assert!(listed(s, EventQuery::default()).is_empty());
    assert_eq!(s.device("b").unwrap().unwrap().event_count, 0);
}

/// Records naming `al` across kinds, and records naming only `alice` (who must never be
/// found for `al`). Returns the id of one of al's incidents (`HELD` serial) and another.
fn seed_subjects(s: &dyn Store) -> (u64, u64) {
    s.insert_device(&device("a")).unwrap();
    let t = Utc::now();
    let mut named = tech("a", 3, t, None);
    named.details = object(json!({"requested_by": {"user": "al", "uid": 1001}}));
    let mut path = tech("a", 4, t, None);
    path.details = object(json!({"path": "/home/al/Downloads/x.AppImage"}));
    let mut alices = tech("a", 6, t, None);
    alices.details = object(json!({"path": "/home/alice/x", "note": "malice"}));
    let mut state = Map::new();
    state.insert("session".into(), json!({"user": "al", "home": "/home/al"}));
    s.append(&[DeviceBatch {
        state,
        ..batch_of(
            "a",
            vec![
                tech("a", 1, t, Some("al")),
                flagged("a", 2, "HELD", t, Some("al")),
                named,
                path,
                tech("a", 5, t, Some("alice")),
                alices,
                flagged("a", 7, "ALICE", t, Some("alice")),
                flagged("a", 8, "FREE", t, Some("al")),
            ],
        )
    }])
    .unwrap();
    s.put_derived("software", "a", 8, &json!({"paths": ["/home/al/bin/x"]}))
        .unwrap();
    let held = incident_of(s, "a", "HELD").unwrap();
    let alice = incident_of(s, "a", "ALICE").unwrap();
    let free = incident_of(s, "a", "FREE").unwrap();
    s.add_incident_entry(held, t, "dsl1", EntryAction::Note, "spoke to al")
        .unwrap();
    s.add_incident_entry(alice, t, "dsl1", EntryAction::Note, "spoke to alice")
        .unwrap();
    s.add_incident_entry(alice, t, "al", EntryAction::Note, "written by al")
        .unwrap();
    s.add_incident_entry(free, t, "dsl1", EntryAction::Acknowledged, "seen")
        .unwrap();
    s.audit(&audit_entry(t, "al", "", "signed in")).unwrap();
    s.audit(&audit_entry(t, "dsl1", "al", "viewed")).unwrap();
    s.audit(&audit_entry(t, "dsl1", "", "exported records of al."))
        .unwrap();
    s.audit(&audit_entry(t, "alice", "alice", "alice and malice"))
        .unwrap();
    let mut with_pdf = digest(t, "al inserted a stick", DigestStatus::Sent);
    with_pdf.attachment = Some(Attachment {
        name: "report.pdf".into(),
        content_type: "application/pdf".into(),
        data_base64: "JVBERi0=".into(),
    });
    s.record_digests(
        "dsl1",
        &DigestCursor::default(),
        vec![
            with_pdf,
            digest(t, "alice inserted a stick", DigestStatus::Sent),
        ],
    )
    .unwrap();
    (held, free)
}

fn event_seqs(r: &SubjectRecords) -> Vec<u64> {
    r.events.iter().map(|e| e.seq).collect()
}

pub fn subject_records_find_every_record_naming_a_user_and_no_other(s: &dyn Store) {
    let (held, free) = seed_subjects(s);
    let r = s.subject_records("al").unwrap();
    assert_eq!(event_seqs(&r), [1, 2, 3, 4, 8], "oldest first");
    let mut incidents: Vec<u64> = r.incidents.iter().map(|i| i.id).collect();
    incidents.sort();
    assert_eq!(incidents, [held, free]);
    let mut entries: Vec<&str> = r.incident_entries.iter().map(|e| e.text.as_str()).collect();
    entries.sort();
    assert_eq!(entries, ["seen", "spoke to al", "written by al"]);
    let mut audit: Vec<&str> = r.audit.iter().map(|a| a.detail.as_str()).collect();
    audit.sort();
    assert_eq!(audit, ["exported records of al.", "signed in", "viewed"]);
    assert_eq!(
        r.digests
            .iter()
            .map(|d| d.text.as_str())
            .collect::<Vec<_>>(),
        ["al inserted a stick"]
    );

    let alice = s.subject_records("alice").unwrap();
    assert_eq!(event_seqs(&alice), [5, 6, 7]);
    assert_eq!(alice.incidents.len(), 1);
    assert_eq!(alice.audit.len(), 1);
    assert_eq!(alice.digests.len(), 1);
    let nobody = s.subject_records("zed").unwrap();
    assert!(nobody.events.is_empty() && nobody.incidents.is_empty() && nobody.audit.is_empty());
}

fn held_now(s: &dyn Store) -> Held {
    Held::new(&s.holds().unwrap(), |id| s.incident(id)).unwrap()
}

pub fn erasure_renames_everywhere_outside_holds_and_is_idempotent(s: &dyn Store) {
    let (held, free) = seed_subjects(s);
    s.put_hold(&hold(HoldTarget::Incident(held), "case 9"))
        .unwrap();
    let before = s.subject_records("al").unwrap();
    let counts = s.erase_subject("al", "user-7f3a").unwrap();
    assert_eq!(
        (counts.events, counts.kept_events),
        (4, 1),
        "seq 2 is the held incident's"
    );
    assert_eq!((counts.incidents, counts.kept_incidents), (1, 1));
    assert_eq!(counts.audit_entries, 3);
    assert_eq!(counts.digests, 1);
    assert_eq!(counts.devices, 1);

    let left = s.subject_records("al").unwrap();
    let h = held_now(s);
    assert_eq!(event_seqs(&left), [2]);
    assert!(left.events.iter().all(|e| h.keeps_event(e)));
    assert_eq!(
        left.incidents.iter().map(|i| i.id).collect::<Vec<_>>(),
        [held]
    );
    assert_eq!(
        left.incident_entries
            .iter()
            .map(|e| e.text.as_str())
            .collect::<Vec<_>>(),
        ["spoke to al"],
        "the held incident's record is kept as it was"
    );
    assert!(left.audit.is_empty() && left.digests.is_empty());

    let moved = s.subject_records("user-7f3a").unwrap();
    assert_eq!(event_seqs(&moved), [1, 3, 4, 8]);
    assert_eq!(
        moved.incidents.iter().map(|i| i.id).collect::<Vec<_>>(),
        [free]
    );
    assert_eq!(moved.audit.len(), 3);
    assert_eq!(moved.digests.len(), 1);
    assert_eq!(moved.digests[0].text, "user-7f3a inserted a stick");
    assert_eq!(
        moved.digests[0].attachment, None,
        "a PDF naming them is dropped"
    );
    assert_eq!(
        moved.events[2].details["path"],
        json!("/home/user-7f3a/Downloads/x.AppImage")
    );
    assert_eq!(moved.events.len() + left.events.len(), before.events.len());
    let by_user = |u: &str| {
        listed(
            s,
            EventQuery {
                user: Some(u.into()),
                ..Default::default()
            },
        )
    };
    assert_eq!(by_user("user-7f3a"), seqs("a", [1u64, 8].into_iter()));
    assert_eq!(by_user("al"), seqs("a", [2u64].into_iter()), "the held one");
    assert_eq!(
        s.incidents(&IncidentQuery {
            user: Some("user-7f3a".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .0
        .len(),
        1
    );
    let d = s.device("a").unwrap().unwrap();
    assert_eq!(
        d.state["session"],
        json!({"user": "user-7f3a", "home": "/home/user-7f3a"})
    );
    assert_eq!(
        s.derived("software").unwrap()[0].2,
        json!({"paths": ["/home/user-7f3a/bin/x"]})
    );
    let alice = s.subject_records("alice").unwrap();
    assert_eq!(event_seqs(&alice), [5, 6, 7], "alice untouched");
    assert_eq!(alice.events[1].details["path"], json!("/home/alice/x"));

    let again = s.erase_subject("al", "user-7f3a").unwrap();
    assert_eq!(
        (
            again.events,
            again.incidents,
            again.audit_entries,
            again.digests,
            again.devices
        ),
        (0, 0, 0, 0, 0),
        "nothing left to rename"
    );
    assert_eq!(again.kept_events, 1);
    assert_eq!(
        event_seqs(&s.subject_records("user-7f3a").unwrap()),
        [1, 3, 4, 8]
    );
}

pub fn a_hold_on_the_user_keeps_every_record_from_erasure(s: &dyn Store) {
    seed_subjects(s);
    s.put_hold(&hold(HoldTarget::User("al".into()), "case 3"))
        .unwrap();
    let before = s.subject_records("al").unwrap();
    let counts = s.erase_subject("al", "user-1").unwrap();
    assert_eq!(
        (
            counts.events,
            counts.incidents,
            counts.incident_entries,
            counts.audit_entries
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        (counts.digests, counts.devices),
        (0, 0),
        "digests and device state name a held user too"
    );
    assert_eq!(counts.kept_events, before.events.len() as u64);
    assert_eq!(counts.kept_incidents, 2);
    assert_eq!(counts.kept_audit_entries, 3);
    let after = s.subject_records("al").unwrap();
    assert_eq!(event_seqs(&after), event_seqs(&before));
    assert_eq!(after.digests.len(), 1);
    assert!(after.digests[0].attachment.is_some());
    assert!(s.subject_records("user-1").unwrap().events.is_empty());
}
