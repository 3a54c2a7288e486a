//! The subject access and erasure half of the privacy contract (`store_conformance_privacy!`): records naming a person found across kinds, and renamed outside holds.

use serde_json::{Map, json};

use super::super::{
    Attachment, DeviceBatch, DigestCursor, DigestStatus, EntryAction, EventQuery, Held, HoldTarget,
    IncidentQuery, Store, SubjectRecords, test_device as device,
};
use super::{
    audit_entry, batch_of, digest, flagged, hold, incident_of, listed, object, seqs, tech,
};
use chrono::Utc;

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

/// A DSL report's PDF names pupils inside compressed text no search reaches, so an erasure
/// drops it from every digest, even one whose message does not name the person; a governors'
/// report (counts only) keeps its PDF.
pub fn an_erasure_drops_every_dsl_report_pdf_and_no_other_attachment(s: &dyn Store) {
    let t = Utc::now();
    let pdf = |name: &str| {
        let mut d = digest(
            t,
            "Your report for November is attached.",
            DigestStatus::Sent,
        );
        d.attachment = Some(Attachment {
            name: name.into(),
            content_type: "application/pdf".into(),
            data_base64: "JVBERi0=".into(),
        });
        d
    };
    s.record_digests(
        "dsl1",
        &DigestCursor::default(),
        vec![
            pdf("caretaker-dsl-2026-11-01.pdf"),
            pdf("caretaker-governors-2026-11-01.pdf"),
        ],
    )
    .unwrap();
    s.erase_subject("alice", "user-1234").unwrap();
    let kept: Vec<Option<String>> = s
        .digests(None, 10)
        .unwrap()
        .iter()
        .map(|d| d.attachment.as_ref().map(|a| a.name.clone()))
        .collect();
    assert!(kept.contains(&None), "the DSL report is dropped: {kept:?}");
    assert!(
        kept.contains(&Some("caretaker-governors-2026-11-01.pdf".into())),
        "{kept:?}"
    );
    assert_eq!(kept.len(), 2, "the digests themselves stay: {kept:?}");
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
