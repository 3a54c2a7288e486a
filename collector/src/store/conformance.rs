//! The store contract as tests: one suite every backend passes, instantiated per backend with `store_conformance!`.
//!
//! Each test takes a fresh, empty store as `&dyn Store`, so it can only rely on what the traits
//! promise, never on an engine's layout. A backend joins with one line in its own tests:
//! `crate::store::conformance::store_conformance!(make);`, where `make()` returns a fresh
//! store and a guard (its temporary directory, say) kept alive for the test. What belongs to
//! one engine alone (sled's directory lock, its layout upgrades, a damaged record planted in
//! one of its trees) stays in that engine's tests.
//!
//! `store_conformance_append_order!` adds the contract of the arrival-order layout (issue 15):
//! a device's high-water mark decides what is a resend, so a sequence at or below it is
//! skipped even if it was never stored, and gaps above it are stored. The backends with that
//! layout (redb) run both lists; sled keeps its `(device, seq)` layout, which stores a gap's
//! late sequence, and runs only the first while it is being retired as the default.

use chrono::{Duration, Utc};
use serde_json::{Map, Value, json};

use super::{
    ApiTokenRecord, AuditEntry, Category, DeviceBatch, DigestCursor, DigestRecord, DigestStatus,
    EntryAction, EventQuery, IncidentQuery, IncidentStatus, PolicyVersion, SessionRecord, Store,
    StoreError, StoredEvent, TokenRecord, TokenRefusal, UserRecord, test_device as device,
};

/// Instantiates every test below as a `#[test]` for one backend.
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store::conformance::store_conformance!(@each $make;
            devices_are_inserted_listed_and_revoked,
            revoking_while_appending_keeps_every_count,
            resent_events_are_stored_once_and_counted_once,
            an_unknown_device_aborts_the_whole_group,
            state_facets_come_only_with_new_events,
            pages_walk_newest_first_without_gaps_or_repeats,
            filters_select_through_every_access_path,
            a_cursor_not_handed_out_is_refused_not_read_as_the_start,
            device_events_after_reads_one_device_from_a_sequence_on,
            tokens_obey_uses_and_expiry,
            policy_versions_count_up_and_page_newest_first,
            derived_states_round_trip_per_name_and_device,
            users_are_unique_and_updated_in_place,
            sessions_expire_and_are_deleted_per_user,
            api_tokens_are_found_by_hash,
            the_audit_log_only_grows_and_pages_newest_first,
            settings_versions_count_up,
            incidents_group_repeats_and_resends_do_not_count,
            the_audience_feed_follows_arrival_order,
            digests_are_recorded_with_their_cursor_and_leave_pending_once_sent,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (store, _guard) = $make();
                $crate::store::conformance::$name(&store);
            }
        )*
    };
}
pub(crate) use store_conformance;

/// Instantiates the tests of the arrival-order layout (exactly-once by each device's
/// high-water mark) for one backend, beside `store_conformance!`.
macro_rules! store_conformance_append_order {
    ($make:expr) => {
        $crate::store::conformance::store_conformance!(@each $make;
            a_sequence_at_or_below_the_high_water_mark_is_a_resend_and_gaps_above_are_stored,
            a_group_holding_one_device_twice_sees_its_own_mark,
            a_resend_mixed_into_a_new_batch_is_skipped_and_the_rest_stored,
        );
    };
}
pub(crate) use store_conformance_append_order;

fn event(device: &str, seq: u64) -> StoredEvent {
    StoredEvent {
        device_id: device.into(),
        seq,
        kind: if seq.is_multiple_of(2) { "even" } else { "odd" }.into(),
        occurred_at: Utc::now(),
        received_at: Utc::now(),
        user: None,
        details: Default::default(),
        severity: "info".into(),
        audience: vec![],
        assessment: None,
    }
}

/// A flagged removable-media event: the DSL's, so it opens or counts into an incident.
fn flagged(device: &str, seq: u64, serial: &str, at: chrono::DateTime<Utc>) -> StoredEvent {
    StoredEvent {
        device_id: device.into(),
        seq,
        kind: "usb.inserted".into(),
        occurred_at: at,
        received_at: at,
        user: Some("pupil1".into()),
        details: object(json!({"serial": serial, "product": "Stick", "decision": "block"})),
        severity: "warning".into(),
        audience: vec!["network_manager".into(), "dsl".into()],
        assessment: None,
    }
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
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

fn batch(device: &str, seqs: impl Iterator<Item = u64>) -> DeviceBatch {
    batch_of(device, seqs.map(|s| event(device, s)).collect())
}

/// Every page of `q`, as (device, seq) in listing order.
fn walk(s: &dyn Store, q: &EventQuery) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .events(&EventQuery {
                cursor: cursor.clone(),
                ..q.clone()
            })
            .unwrap();
        assert!(page.events.len() <= q.limit, "{q:?}");
        seen.extend(page.events.iter().map(|e| (e.device_id.clone(), e.seq)));
        cursor = page.next;
        if cursor.is_none() {
            return seen;
        }
    }
}

pub fn devices_are_inserted_listed_and_revoked(s: &dyn Store) {
    let a = device("a");
    s.insert_device(&a).unwrap();
    s.insert_device(&device("b")).unwrap();
    assert_eq!(s.device("a").unwrap().as_ref(), Some(&a));
    assert_eq!(s.device("nobody").unwrap(), None);
    let mut ids: Vec<String> = s.devices().unwrap().into_iter().map(|d| d.id).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);

    s.append(&[batch("a", 1..=3)]).unwrap();
    let at = Utc::now();
    let revoked = s.revoke_device("a", at).unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
    assert_eq!(
        (revoked.event_count, revoked.highest_seq),
        (3, 3),
        "revoking keeps what the appends counted"
    );
    let again = s.revoke_device("a", at + Duration::hours(1)).unwrap();
    assert_eq!(again.revoked_at, Some(at), "the first revocation stands");
    assert_eq!(s.device("a").unwrap().unwrap().revoked_at, Some(at));
    assert_eq!(s.device("b").unwrap().unwrap().revoked_at, None);
    assert!(matches!(
        s.revoke_device("ghost", at),
        Err(StoreError::NoSuchDevice(_))
    ));
}

/// A revocation racing group commits for the same device: both rewrite its record, so each
/// must read and write it atomically or one undoes the other's update.
pub fn revoking_while_appending_keeps_every_count(s: &dyn Store) {
    let at = Utc::now();
    // Several devices, so a store that reads and writes apart loses a count in one of them
    // almost surely (one race each).
    for id in ["a", "b", "c", "d", "e", "f"] {
        s.insert_device(&device(id)).unwrap();
        std::thread::scope(|scope| {
            let appender = scope.spawn(|| {
                for chunk in 0..100u64 {
                    s.append(&[batch(id, chunk * 5 + 1..=chunk * 5 + 5)])
                        .unwrap();
                }
            });
            // Revoke (the one write) while the appends stream, not before they start.
            while !appender.is_finished() && s.device(id).unwrap().unwrap().event_count < 100 {
                std::thread::yield_now();
            }
            s.revoke_device(id, at).unwrap();
            appender.join().unwrap();
        });
        s.revoke_device(id, at).unwrap();
        let d = s.device(id).unwrap().unwrap();
        assert_eq!((d.event_count, d.highest_seq), (500, 500), "device {id}");
        assert_eq!(d.revoked_at, Some(at));
    }
}

pub fn resent_events_are_stored_once_and_counted_once(s: &dyn Store) {
    s.insert_device(&device("a")).unwrap();
    assert_eq!(s.append(&[batch("a", 1..=5)]).unwrap(), 5);
    // Resends within one group and across groups.
    assert_eq!(
        s.append(&[batch("a", 3..=8), batch("a", 8..=9)]).unwrap(),
        4
    );
    let d = s.device("a").unwrap().unwrap();
    assert_eq!((d.event_count, d.highest_seq), (9, 9));
    let listed = walk(
        s,
        &EventQuery {
            device: Some("a".into()),
            limit: 4,
            ..Default::default()
        },
    );
    assert_eq!(
        listed.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        (1..=9).rev().collect::<Vec<_>>(),
        "each stored once"
    );
    let fleet = walk(
        s,
        &EventQuery {
            limit: 100,
            ..Default::default()
        },
    );
    assert_eq!(fleet.len(), 9, "and once in the fleet's timeline");
}

/// The sequence numbers of every event `q` lists, in listing order, walking all its pages.
fn seqs_of(s: &dyn Store, q: EventQuery) -> Vec<u64> {
    walk(s, &q).into_iter().map(|(_, seq)| seq).collect()
}

fn of_device(d: &str, limit: usize) -> EventQuery {
    EventQuery {
        device: Some(d.into()),
        limit,
        ..Default::default()
    }
}

/// An agent whose spool was full dropped its oldest events and numbers on: the collector sees
/// a gap, stores what is above it, and from then on anything at or below its highest stored
/// sequence is a resend, whether or not it was ever stored.
pub fn a_sequence_at_or_below_the_high_water_mark_is_a_resend_and_gaps_above_are_stored(
    s: &dyn Store,
) {
    s.insert_device(&device("a")).unwrap();
    assert_eq!(s.append(&[batch("a", 1..=3)]).unwrap(), 3);
    assert_eq!(s.append(&[batch("a", 10..=11)]).unwrap(), 2, "a gap");
    assert_eq!(
        s.append(&[batch("a", 5..=5)]).unwrap(),
        0,
        "below the mark: a resend though never stored"
    );
    assert_eq!(s.append(&[batch("a", [7, 11, 12].into_iter())]).unwrap(), 1);
    let d = s.device("a").unwrap().unwrap();
    assert_eq!((d.event_count, d.highest_seq), (6, 12));
    assert_eq!(seqs_of(s, of_device("a", 2)), [12, 11, 10, 3, 2, 1]);
    let fleet = EventQuery {
        limit: 4,
        ..Default::default()
    };
    assert_eq!(seqs_of(s, fleet), [12, 11, 10, 3, 2, 1]);
    let mut visited = Vec::new();
    let highest = s
        .device_events_after("a", 2, "", &mut |e| visited.push(e.seq))
        .unwrap();
    assert_eq!(visited, [3, 10, 11, 12]);
    assert_eq!(highest, 12);
    assert_eq!(
        s.device_events_after("a", 4, "", &mut |_| {}).unwrap(),
        12,
        "from inside the gap"
    );
}

/// One group commit may carry two batches of one device (two streams' batches queued, or a
/// reconnect): the second is judged against the mark the first raised, and the device's
/// record keeps both batches' counts and the state of the one that stored something.
pub fn a_group_holding_one_device_twice_sees_its_own_mark(s: &dyn Store) {
    for d in ["a", "b"] {
        s.insert_device(&device(d)).unwrap();
    }
    let with_state = |seqs: std::ops::RangeInclusive<u64>, av: &str| DeviceBatch {
        state: object(json!({"antivirus": {"status": av}})),
        ..batch("a", seqs)
    };
    let new = s
        .append(&[
            batch("a", 1..=3),
            batch("b", 1..=2),
            with_state(2..=5, "second"),
        ])
        .unwrap();
    assert_eq!(new, 3 + 2 + 2);
    let a = s.device("a").unwrap().unwrap();
    assert_eq!((a.event_count, a.highest_seq), (5, 5));
    assert_eq!(a.state["antivirus"]["status"], "second");
    let b = s.device("b").unwrap().unwrap();
    assert_eq!((b.event_count, b.highest_seq), (2, 2));
    // The fleet's timeline is arrival order, not sequence order.
    let fleet = walk(
        s,
        &EventQuery {
            limit: 3,
            ..Default::default()
        },
    );
    let expect: Vec<(String, u64)> = [("a", 5), ("a", 4), ("b", 2), ("b", 1)]
        .into_iter()
        .chain((1..=3).rev().map(|n| ("a", n)))
        .map(|(d, n)| (d.to_string(), n))
        .collect();
    assert_eq!(fleet, expect);
    // New events, then the same device's resends in the same group: the resends' older
    // state must not overwrite the new.
    let new = s
        .append(&[with_state(6..=6, "newest"), with_state(4..=6, "stale")])
        .unwrap();
    assert_eq!(new, 1);
    let a = s.device("a").unwrap().unwrap();
    assert_eq!((a.event_count, a.highest_seq), (6, 6));
    assert_eq!(a.state["antivirus"]["status"], "newest");
    assert_eq!(seqs_of(s, of_device("a", 10)), [6, 5, 4, 3, 2, 1]);
}

/// A batch that starts with events already stored (its predecessor's ack was lost) and goes
/// on with new ones: only the new are stored, counted, indexed and in the timeline.
pub fn a_resend_mixed_into_a_new_batch_is_skipped_and_the_rest_stored(s: &dyn Store) {
    s.insert_device(&device("a")).unwrap();
    let flagged_batch = |seqs: std::ops::RangeInclusive<u64>| {
        let at = Utc::now();
        batch_of(
            "a",
            seqs.map(|n| flagged("a", n, "S1", at)).collect::<Vec<_>>(),
        )
    };
    assert_eq!(s.append(&[flagged_batch(1..=5)]).unwrap(), 5);
    assert_eq!(s.append(&[flagged_batch(4..=7)]).unwrap(), 2);
    let d = s.device("a").unwrap().unwrap();
    assert_eq!((d.event_count, d.highest_seq), (7, 7));
    let all: Vec<u64> = (1..=7).rev().collect();
    assert_eq!(seqs_of(s, of_device("a", 3)), all);
    for q in [
        EventQuery {
            limit: 3,
            ..Default::default()
        },
        EventQuery {
            limit: 3,
            audience: Some("dsl".into()),
            ..Default::default()
        },
        EventQuery {
            limit: 3,
            kind: Some("usb.inserted".into()),
            ..Default::default()
        },
        EventQuery {
            limit: 3,
            user: Some("pupil1".into()),
            ..Default::default()
        },
    ] {
        assert_eq!(seqs_of(s, q.clone()), all, "{q:?}");
    }
    let feed: Vec<u64> = s
        .audience_events_from("dsl", 0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.seq)
        .collect();
    assert_eq!(
        feed,
        (1..=7).collect::<Vec<_>>(),
        "the DSL's feed, once each"
    );
    let incidents = all_incidents(s);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].count, 7, "each stored event counted once");
}

pub fn an_unknown_device_aborts_the_whole_group(s: &dyn Store) {
    s.insert_device(&device("a")).unwrap();
    let err = s
        .append(&[batch("a", 1..=2), batch("ghost", 1..=1)])
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchDevice(_)), "{err}");
    assert_eq!(s.device("a").unwrap().unwrap().event_count, 0);
    let listed = s
        .events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(listed.events.is_empty(), "nothing of the group is stored");
}

/// A batch's state facets come from its events, so a batch whose events were all stored
/// before (a resend after a lost ack) must not put its older state back over a newer one.
pub fn state_facets_come_only_with_new_events(s: &dyn Store) {
    s.insert_device(&device("a")).unwrap();
    let with_state = |seqs: std::ops::RangeInclusive<u64>, av: &str| DeviceBatch {
        state: object(json!({"antivirus": {"status": av}})),
        ..batch("a", seqs)
    };
    s.append(&[with_state(1..=2, "stale")]).unwrap();
    s.append(&[with_state(3..=3, "current")]).unwrap();
    let before = s.device("a").unwrap().unwrap();
    let resend = with_state(1..=2, "stale");
    assert_eq!(s.append(std::slice::from_ref(&resend)).unwrap(), 0);
    let after = s.device("a").unwrap().unwrap();
    assert_eq!(
        after.state["antivirus"]["status"], "current",
        "a resend's state is older than the stored one"
    );
    assert_eq!(after.event_count, before.event_count);
    assert_eq!(
        after.last_seen,
        Some(resend.seen_at),
        "the device was heard all the same"
    );
    // A batch with new events among resends carries its state.
    s.append(&[with_state(3..=4, "newest")]).unwrap();
    assert_eq!(
        s.device("a").unwrap().unwrap().state["antivirus"]["status"],
        "newest"
    );
}

pub fn pages_walk_newest_first_without_gaps_or_repeats(s: &dyn Store) {
    for d in ["a", "b"] {
        s.insert_device(&device(d)).unwrap();
    }
    s.append(&[batch("a", 1..=7), batch("b", 1..=3)]).unwrap();
    for (q, expected) in [
        (
            EventQuery {
                limit: 3,
                ..Default::default()
            },
            10,
        ),
        (
            EventQuery {
                limit: 3,
                device: Some("a".into()),
                ..Default::default()
            },
            7,
        ),
        (
            EventQuery {
                limit: 2,
                kind: Some("odd".into()),
                ..Default::default()
            },
            4 + 2,
        ),
        (
            EventQuery {
                limit: 7,
                device: Some("a".into()),
                ..Default::default()
            },
            7,
        ),
    ] {
        let seen = walk(s, &q);
        assert_eq!(seen.len(), expected, "{q:?}");
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), seen.len(), "{q:?}");
    }
    let newest = s
        .events(&EventQuery {
            limit: 1,
            device: Some("a".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(newest.events[0].seq, 7);
    let exact = s
        .events(&EventQuery {
            limit: 7,
            device: Some("a".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        exact.next, None,
        "a page that ends the listing has no cursor"
    );
}

pub fn filters_select_through_every_access_path(s: &dyn Store) {
    s.insert_device(&device("d")).unwrap();
    let t0 = Utc::now();
    let events: Vec<StoredEvent> = (1..=50)
        .map(|i| {
            if i % 10 == 0 {
                flagged("d", i, &format!("S{i}"), t0)
            } else {
                StoredEvent {
                    occurred_at: t0 - Duration::days(1),
                    ..event("d", i)
                }
            }
        })
        .collect();
    s.append(&[batch_of("d", events)]).unwrap();
    let seqs = |q: EventQuery| -> Vec<u64> { walk(s, &q).into_iter().map(|(_, s)| s).collect() };
    let q = |f: fn(&mut EventQuery)| {
        let mut q = EventQuery {
            limit: 2,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    assert_eq!(
        seqs(q(|q| q.audience = Some("dsl".into()))),
        [50, 40, 30, 20, 10],
        "newest first, only the DSL's"
    );
    assert_eq!(seqs(q(|q| q.user = Some("pupil1".into()))).len(), 5);
    assert_eq!(
        seqs(q(|q| q.exclude_audience = Some("dsl".into()))).len(),
        45
    );
    assert_eq!(seqs(q(|q| q.severity = Some("warning".into()))).len(), 5);
    assert_eq!(seqs(q(|q| q.kind = Some("usb.inserted".into()))).len(), 5);
    let since = t0 - Duration::hours(1);
    let recent = walk(
        s,
        &EventQuery {
            since: Some(since),
            device: Some("d".into()),
            limit: 3,
            ..Default::default()
        },
    );
    assert_eq!(recent.len(), 5, "by when it happened");
    let none = s
        .events(&EventQuery {
            received_until: Some(t0 - Duration::days(30)),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(none.events.is_empty(), "by when it arrived");
    // The device combines with a filter served by another index: only that device's events.
    s.insert_device(&device("other")).unwrap();
    s.append(&[batch_of("other", vec![flagged("other", 1, "S1", t0)])])
        .unwrap();
    for f in [
        (|q: &mut EventQuery| q.audience = Some("dsl".into())) as fn(&mut EventQuery),
        |q| q.user = Some("pupil1".into()),
        |q| q.kind = Some("usb.inserted".into()),
    ] {
        let mut query = q(f);
        query.device = Some("d".into());
        assert_eq!(
            walk(s, &query).len(),
            5,
            "one device's through another index"
        );
    }
}

pub fn a_cursor_not_handed_out_is_refused_not_read_as_the_start(s: &dyn Store) {
    s.insert_device(&device("a")).unwrap();
    s.append(&[batch("a", 1..=3)]).unwrap();
    let by_device = |cursor: &str| EventQuery {
        limit: 1,
        device: Some("a".into()),
        cursor: Some(cursor.into()),
        ..Default::default()
    };
    let fleet = |cursor: &str| EventQuery {
        limit: 1,
        cursor: Some(cursor.into()),
        ..Default::default()
    };
    let kind = |cursor: &str| EventQuery {
        kind: Some("odd".into()),
        ..fleet(cursor)
    };
    let audience = |cursor: &str| EventQuery {
        audience: Some("dsl".into()),
        ..fleet(cursor)
    };
    // Garbage, a number without its tag, and one listing's cursor given to another (which
    // would start another listing's walk at a position that means something else there).
    for q in [
        fleet("garbage"),
        fleet("12"),
        fleet("t"),
        fleet(""),
        fleet("s2"),
        by_device("t2"),
        kind("tx"),
        audience("-1"),
        by_device("s-1"),
        by_device("\u{1F600}"),
    ] {
        let err = s.events(&q).unwrap_err();
        assert!(matches!(err, StoreError::BadCursor(_)), "{q:?}: {err}");
    }
    // The cursors this store hands out are taken back by the listing that gave them.
    let first = s.events(&by_device_no_cursor()).unwrap();
    let next = first.next.expect("more than one page");
    let second = s.events(&by_device(&next)).unwrap();
    assert_eq!(second.events[0].seq, 2);
}

fn by_device_no_cursor() -> EventQuery {
    EventQuery {
        limit: 1,
        device: Some("a".into()),
        ..Default::default()
    }
}

pub fn device_events_after_reads_one_device_from_a_sequence_on(s: &dyn Store) {
    for d in ["a", "b"] {
        s.insert_device(&device(d)).unwrap();
        s.append(&[batch(d, 1..=6)]).unwrap();
    }
    let mut seen = Vec::new();
    let highest = s
        .device_events_after("a", 2, "even", &mut |e| {
            seen.push((e.device_id.clone(), e.seq))
        })
        .unwrap();
    assert_eq!(seen, [("a".to_string(), 4), ("a".to_string(), 6)]);
    assert_eq!(highest, 6, "the highest read, whatever its kind");
    let none = s
        .device_events_after("a", 6, "", &mut |_| panic!("nothing after 6"))
        .unwrap();
    assert_eq!(none, 6);
    assert_eq!(
        s.device_events_after("nobody", 0, "", &mut |_| {}).unwrap(),
        0
    );
}

fn token(hash: &str, max_uses: u32, expires_in: Duration) -> TokenRecord {
    let now = Utc::now();
    TokenRecord {
        hash: hash.into(),
        label: format!("label {hash}"),
        max_uses,
        uses: 0,
        created_at: now,
        expires_at: now + expires_in,
    }
}

pub fn tokens_obey_uses_and_expiry(s: &dyn Store) {
    let now = Utc::now();
    s.insert_token(&token("h", 2, Duration::hours(1))).unwrap();
    assert_eq!(s.use_token("h", now).unwrap().unwrap().uses, 1);
    assert_eq!(s.use_token("h", now).unwrap().unwrap().uses, 2);
    assert_eq!(s.use_token("h", now).unwrap(), Err(TokenRefusal::UsedUp));
    assert_eq!(
        s.use_token("nope", now).unwrap(),
        Err(TokenRefusal::Unknown)
    );
    let mut old = token("old", 5, Duration::zero());
    old.created_at = now - Duration::hours(1);
    old.expires_at = now;
    s.insert_token(&old).unwrap();
    assert_eq!(s.use_token("old", now).unwrap(), Err(TokenRefusal::Expired));
    let listed: Vec<(String, u32)> = s
        .enrolment_tokens()
        .unwrap()
        .into_iter()
        .map(|t| (t.hash, t.uses))
        .collect();
    assert_eq!(
        listed,
        [("h".to_string(), 2), ("old".to_string(), 0)],
        "newest first, with their uses"
    );
}

pub fn policy_versions_count_up_and_page_newest_first(s: &dyn Store) {
    assert_eq!(s.current_policy().unwrap(), None);
    for i in 1..=5 {
        let v = s
            .put_policy(json!({"description": i}), &format!("by {i}"), Utc::now())
            .unwrap();
        assert_eq!(v.version, i);
    }
    let current = s.current_policy().unwrap().unwrap();
    assert_eq!(
        (current.version, current.policy["description"].as_u64()),
        (5, Some(5))
    );
    assert_eq!(current.changed_by, "by 5");
    let versions = |p: &[PolicyVersion]| p.iter().map(|v| v.version).collect::<Vec<_>>();
    assert_eq!(versions(&s.policy_history().unwrap()), [1, 2, 3, 4, 5]);
    let (first, more) = s.policy_page(None, 2).unwrap();
    assert_eq!((versions(&first), more), (vec![5, 4], true));
    let (last, more) = s.policy_page(Some(2), 2).unwrap();
    assert_eq!((versions(&last), more), (vec![1], false));
    let (exact, more) = s.policy_page(Some(3), 2).unwrap();
    assert_eq!((versions(&exact), more), (vec![2, 1], false));
}

pub fn derived_states_round_trip_per_name_and_device(s: &dyn Store) {
    assert!(s.derived("software").unwrap().is_empty());
    s.put_derived("software", "a", 3, &json!({"x": 0})).unwrap();
    s.put_derived("software", "a", 7, &json!({"x": 1})).unwrap();
    s.put_derived("software", "b", 9, &json!({"x": 2})).unwrap();
    s.put_derived("other", "a", 1, &json!(null)).unwrap();
    let mut got = s.derived("software").unwrap();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        [
            ("a".to_string(), 7, json!({"x": 1})),
            ("b".to_string(), 9, json!({"x": 2}))
        ],
        "the latest per device, and only this name's"
    );
    assert_eq!(
        s.derived_of("software", "a").unwrap(),
        Some((7, json!({"x": 1})))
    );
    assert_eq!(s.derived_of("other", "a").unwrap(), Some((1, json!(null))));
    assert_eq!(s.derived_of("software", "c").unwrap(), None);
}

fn user(name: &str, role: &str) -> UserRecord {
    let now = Utc::now();
    UserRecord {
        username: name.into(),
        role: role.into(),
        password_hash: "$argon2id$stand-in".into(),
        disabled: false,
        email: String::new(),
        must_change_password: true,
        created_at: now,
        created_by: "test".into(),
        updated_at: now,
    }
}

pub fn users_are_unique_and_updated_in_place(s: &dyn Store) {
    assert_eq!(s.user("ann").unwrap(), None);
    s.insert_user(&user("ann", "dsl")).unwrap();
    s.insert_user(&user("bob", "technician")).unwrap();
    let dup = s.insert_user(&user("ann", "technician")).unwrap_err();
    assert!(matches!(dup, StoreError::Conflict(_)), "{dup}");
    assert_eq!(s.user("ann").unwrap().unwrap().role, "dsl", "not replaced");

    let mut ann = s.user("ann").unwrap().unwrap();
    ann.disabled = true;
    ann.must_change_password = false;
    s.update_user(&ann).unwrap();
    assert_eq!(s.user("ann").unwrap().unwrap(), ann);
    let ghost = s.update_user(&user("ghost", "dsl")).unwrap_err();
    assert!(matches!(ghost, StoreError::Conflict(_)), "{ghost}");
    assert_eq!(s.user("ghost").unwrap(), None, "an update creates no one");

    let mut names: Vec<String> = s.users().unwrap().into_iter().map(|u| u.username).collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);
}

fn session(username: &str, expires_in: Duration) -> SessionRecord {
    let now = Utc::now();
    SessionRecord {
        username: username.into(),
        created_at: now,
        last_seen: now,
        expires_at: now + expires_in,
        csrf: format!("csrf-{username}"),
    }
}

pub fn sessions_expire_and_are_deleted_per_user(s: &dyn Store) {
    let live = session("ann", Duration::hours(1));
    s.insert_session("h1", &live).unwrap();
    s.insert_session("h2", &session("ann", -Duration::seconds(1)))
        .unwrap();
    s.insert_session("h3", &session("bob", Duration::hours(1)))
        .unwrap();
    assert_eq!(s.session("h1").unwrap(), Some(live));
    assert_eq!(s.session("nope").unwrap(), None);
    assert_eq!(s.purge_sessions(Utc::now()).unwrap(), 1, "only the expired");
    assert_eq!(s.session("h2").unwrap(), None);
    assert_eq!(s.delete_sessions_of("ann").unwrap(), 1);
    assert_eq!(s.session("h1").unwrap(), None);
    assert!(s.session("h3").unwrap().is_some(), "another user's stays");
    s.delete_session("h3").unwrap();
    assert_eq!(s.session("h3").unwrap(), None);
    s.delete_session("h3").unwrap();
}

pub fn api_tokens_are_found_by_hash(s: &dyn Store) {
    let t = ApiTokenRecord {
        hash: "abc".into(),
        label: "MIS sync".into(),
        role: "technician".into(),
        created_at: Utc::now(),
        created_by: "ann".into(),
        revoked_at: None,
    };
    s.insert_api_token(&t).unwrap();
    assert_eq!(s.api_token("abc").unwrap(), Some(t.clone()));
    assert_eq!(s.api_token("abd").unwrap(), None);
    let revoked = ApiTokenRecord {
        revoked_at: Some(Utc::now()),
        ..t
    };
    s.insert_api_token(&revoked).unwrap();
    assert_eq!(s.api_token("abc").unwrap(), Some(revoked));
}

pub fn the_audit_log_only_grows_and_pages_newest_first(s: &dyn Store) {
    let entry = |action: &str| AuditEntry {
        id: 0,
        at: Utc::now(),
        actor: "ann".into(),
        action: action.into(),
        target: "device a".into(),
        detail: String::new(),
        address: "192.0.2.1".into(),
    };
    let ids: Vec<u64> = ["first", "second", "third"]
        .iter()
        .map(|a| s.audit(&entry(a)).unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let page = s.audit_log(None, 2).unwrap();
    let actions = |p: &super::AuditPage| {
        p.entries
            .iter()
            .map(|e| (e.id, e.action.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        actions(&page),
        [
            (ids[2], "third".to_string()),
            (ids[1], "second".to_string())
        ]
    );
    let rest = s.audit_log(page.next, 2).unwrap();
    assert_eq!(actions(&rest), [(ids[0], "first".to_string())]);
    assert_eq!(rest.next, None);
}

pub fn settings_versions_count_up(s: &dyn Store) {
    assert_eq!(s.current_settings().unwrap(), None);
    let at = Utc::now();
    let v1 = s.put_settings(json!({"school": "A"}), "ann", at).unwrap();
    let v2 = s.put_settings(json!({"school": "B"}), "bob", at).unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    let current = s.current_settings().unwrap().unwrap();
    assert_eq!(current, v2);
    assert_eq!(current.settings["school"], "B");
}

fn all_incidents(s: &dyn Store) -> Vec<super::Incident> {
    s.incidents(&IncidentQuery {
        limit: 100,
        ..Default::default()
    })
    .unwrap()
    .0
}

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
        channel: super::Channel::Email {
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
