//! The store contract as tests: one suite every backend passes, instantiated per backend with `store_conformance!`.
//!
//! Each test takes a fresh, empty store as `&dyn Store`, so it can only rely on what the traits
//! promise, never on an engine's layout. A backend joins with one line in its own tests:
//! `crate::store::conformance::store_conformance!(make);`, where `make()` returns a fresh
//! store and a guard (its temporary directory, say) kept alive for the test. What belongs to
//! one engine alone (redb's file lock, the migration from the old sled layout, the erasure's
//! file rewrite) stays in that engine's tests.
//!
//! `store_conformance_append_order!` adds the contract of the arrival-order layout (issue 15):
//! a device's high-water mark decides what is a resend, so a sequence at or below it is
//! skipped even if it was never stored, and gaps above it are stored. Both backends
//! (redb and PostgreSQL) have that layout and run both lists.

use chrono::{Duration, Utc};
use serde_json::{Map, Value, json};

use super::{
    DeviceBatch, EventQuery, IncidentQuery, Store, StoreError, StoredEvent, test_device as device,
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

mod accounts;
mod incidents;
pub use accounts::*;
pub use incidents::*;

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

fn all_incidents(s: &dyn Store) -> Vec<super::Incident> {
    s.incidents(&IncidentQuery {
        limit: 100,
        ..Default::default()
    })
    .unwrap()
    .0
}
