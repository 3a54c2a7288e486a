//! The store contract for incidents, the audience feed and digests.

use chrono::{Duration, Utc};
use serde_json::json;

use super::super::{
    Category, DigestCursor, DigestRecord, DigestStatus, EntryAction, IncidentQuery, IncidentStatus,
    Store,
};
use super::{all_incidents, batch_of, device, event, flagged};

pub fn incidents_group_repeats_and_resends_do_not_count(s: &dyn Store) {
    s.insert_device(&device("d")).unwrap();
    let t0 = Utc::now();
    s.append(&[batch_of(
        "d",
        (1..=3).map(|i| flagged("d", i, "A", t0)).collect(),
    )])
    .unwrap();
    s.append(&[batch_of("d", vec![flagged("d", 2, "A", t0)])])
        .unwrap();
    let inc = all_incidents(s);
    assert_eq!(inc.len(), 1);
    assert_eq!((inc[0].count, inc[0].category), (3, Category::Safeguarding));
    assert_eq!((inc[0].first_seq, inc[0].last_seq), (1, 3));
    let first = inc[0].id;

    s.append(&[batch_of("d", vec![flagged("d", 4, "B", t0), event("d", 5)])])
        .unwrap();
    assert_eq!(
        all_incidents(s).len(),
        2,
        "another stick is another incident; routine is none"
    );

    let entry = s
        .add_incident_entry(first, t0, "dsl", EntryAction::Closed, "done")
        .unwrap();
    assert_eq!((entry.incident, entry.action), (first, EntryAction::Closed));
    assert_eq!(
        s.incident(first).unwrap().unwrap().status,
        IncidentStatus::Closed
    );
    s.append(&[batch_of("d", vec![flagged("d", 6, "A", t0)])])
        .unwrap();
    let later = t0 + crate::incidents::GROUP_WINDOW + Duration::hours(1);
    s.append(&[batch_of("d", vec![flagged("d", 7, "B", later)])])
        .unwrap();
    assert_eq!(
        all_incidents(s).len(),
        4,
        "after closing, and after the window, a new incident"
    );
    assert_eq!(
        s.incident(first).unwrap().unwrap().count,
        3,
        "the closed one is untouched"
    );
    assert_eq!(s.incident_entries(first).unwrap(), [entry]);
    assert_eq!(s.incident(999_999).unwrap(), None);

    // Filters and pages: newest first, `before` from the previous page.
    let (page, next) = s
        .incidents(&IncidentQuery {
            device: Some("d".into()),
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.len(), 3);
    assert!(page.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let (rest, _) = s
        .incidents(&IncidentQuery {
            device: Some("d".into()),
            limit: 3,
            before: next,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].id < page[2].id);
    let open = s
        .incidents(&IncidentQuery {
            open_only: true,
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .0;
    assert_eq!(open.len(), 3);
    assert!(
        s.incidents(&IncidentQuery {
            device: Some("other".into()),
            limit: 3,
            ..Default::default()
        })
        .unwrap()
        .0
        .is_empty()
    );
}

pub fn the_audience_feed_follows_arrival_order(s: &dyn Store) {
    s.insert_device(&device("d")).unwrap();
    let start = s.next_timeline_id().unwrap();
    let t0 = Utc::now();
    s.append(&[batch_of(
        "d",
        vec![
            event("d", 1),
            flagged("d", 2, "A", t0),
            event("d", 3),
            flagged("d", 4, "B", t0),
        ],
    )])
    .unwrap();
    assert!(s.next_timeline_id().unwrap() > start);
    let feed = s.audience_events_from("dsl", start, 100).unwrap();
    assert_eq!(
        feed.iter().map(|(_, e)| e.seq).collect::<Vec<_>>(),
        [2, 4],
        "the DSL's, oldest first"
    );
    assert!(feed[0].0 < feed[1].0);
    let after = s.audience_events_from("dsl", feed[0].0 + 1, 100).unwrap();
    assert_eq!(after.iter().map(|(_, e)| e.seq).collect::<Vec<_>>(), [4]);
    assert_eq!(s.audience_events_from("dsl", start, 1).unwrap().len(), 1);
    assert!(
        s.audience_events_from("dsl", s.next_timeline_id().unwrap(), 100)
            .unwrap()
            .is_empty()
    );

    let e = &feed[0].1;
    let group = crate::incidents::group_key(
        &e.device_id,
        &e.kind,
        &crate::incidents::subject(&e.kind, &e.details),
    );
    let id = s.incident_for_group(&group).unwrap().expect("its incident");
    assert_eq!(s.incident(id).unwrap().unwrap().first_seq, 2);
    assert_eq!(s.incident_for_group("no such group").unwrap(), None);
}

fn digest(subject: &str) -> DigestRecord {
    DigestRecord {
        id: 0,
        recipient: "ann".into(),
        channel: super::super::Channel::Email {
            address: "ann@school.example".into(),
        },
        kind: "daily".into(),
        created_at: Utc::now(),
        subject: subject.into(),
        text: "text".into(),
        html: "<p>html</p>".into(),
        json: json!({"events": 1}),
        events: 1,
        status: DigestStatus::Pending,
        attempts: 0,
        last_error: None,
        next_attempt: None,
        sent_at: None,
        attachment: None,
    }
}

pub fn digests_are_recorded_with_their_cursor_and_leave_pending_once_sent(s: &dyn Store) {
    assert_eq!(s.digest_cursor("ann").unwrap(), DigestCursor::default());
    let cursor = DigestCursor {
        scheduled_from: 7,
        urgent_from: 3,
        last_due: Some(Utc::now()),
        urgent_sent: vec![],
    };
    let recorded = s
        .record_digests("ann", &cursor, vec![digest("one"), digest("two")])
        .unwrap();
    assert_eq!(recorded.len(), 2);
    assert!(recorded[0].id < recorded[1].id, "ids given in order");
    assert_eq!(
        s.digest_cursor("ann").unwrap(),
        cursor,
        "moved with the digests"
    );
    assert_eq!(s.digest_cursor("bob").unwrap(), DigestCursor::default());
    assert_eq!(s.pending_digests().unwrap(), recorded);

    let mut sent = recorded[0].clone();
    sent.status = DigestStatus::Sent;
    sent.attempts = 1;
    sent.sent_at = Some(Utc::now());
    s.update_digest(&sent).unwrap();
    assert_eq!(s.digest(sent.id).unwrap().as_ref(), Some(&sent));
    assert_eq!(s.pending_digests().unwrap(), [recorded[1].clone()]);
    assert_eq!(s.digests(None, 1).unwrap(), [recorded[1].clone()]);
    assert_eq!(
        s.digests(Some(recorded[1].id), 10).unwrap(),
        [sent],
        "newest first, before an id"
    );

    let moved = DigestCursor {
        scheduled_from: 9,
        ..cursor
    };
    s.put_digest_cursor("ann", &moved).unwrap();
    assert_eq!(s.digest_cursor("ann").unwrap(), moved);
}
