//! Tests of the sled-to-redb conversion: a copy of an old collector's sled store (`collector/testdata/sled-v1/`) converts into a redb store holding exactly its records under the same ids, and a crash at any step loses nothing.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::super::super::{
    AccountStore, ApiTokenRecord, AuditEntry, Device, DeviceBatch, DigestCursor, DigestRecord,
    DigestStore, EventQuery, Incident, IncidentEntry, IncidentQuery, IncidentStore, PolicyVersion,
    SessionRecord, SettingsVersion, Store, StoredEvent, TokenRecord, UserRecord, test_device,
};
use super::super::{FILE, RedbStore};
use super::sled_source::SledSource;
use super::{PARTIAL_SUFFIX, RETIRED_NOTE, convert, from_sled_if_present};

/// What the fixture's store holds (its `README.md` says how both were made).
#[derive(Debug, PartialEq, Deserialize)]
struct Content {
    devices: Vec<Device>,
    /// `(timeline id, event)`, in timeline order.
    events: Vec<(u64, StoredEvent)>,
    next_timeline_id: u64,
    /// Newest first.
    incidents: Vec<Incident>,
    incident_entries: Vec<IncidentEntry>,
    groups: Vec<(String, Option<u64>)>,
    tokens: Vec<TokenRecord>,
    policies: Vec<PolicyVersion>,
    derived: Vec<(String, u64, Value)>,
    users: Vec<UserRecord>,
    sessions: Vec<(String, Option<SessionRecord>)>,
    api_tokens: Vec<(String, Option<ApiTokenRecord>)>,
    /// Newest first.
    audit: Vec<AuditEntry>,
    settings: Option<SettingsVersion>,
    /// Newest first.
    digests: Vec<DigestRecord>,
    pending_digests: Vec<u64>,
    digest_cursors: Vec<(String, DigestCursor)>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sled-v1")
}

fn expected() -> Content {
    let json = std::fs::read(fixture_dir().join("content.json")).unwrap();
    serde_json::from_slice(&json).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A data directory's store as an old collector left it: a copy of the fixture.
fn sled_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir().join("store"), dir.path());
    dir
}

/// Every page of a listing, newest first.
fn walk(s: &dyn Store, q: EventQuery) -> Vec<StoredEvent> {
    let mut q = EventQuery { limit: 7, ..q };
    let mut out = Vec::new();
    loop {
        let page = s.events(&q).unwrap();
        out.extend(page.events);
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => return out,
        }
    }
}

/// What the store answers, read through the store traits as the fixture's generator read the
/// sled store; the events' ids through the cursor each one's page hands out below it.
fn read(s: &RedbStore, like: &Content) -> Content {
    let mut events: Vec<StoredEvent> = walk(s, EventQuery::default());
    events.reverse();
    let ids: Vec<u64> = like.events.iter().map(|(id, _)| *id).collect();
    for (id, e) in ids.iter().zip(&events) {
        let below = s
            .events(&EventQuery {
                cursor: Some(format!("t{}", id + 1)),
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            below.events,
            std::slice::from_ref(e),
            "event {id} under its id"
        );
    }
    let (incidents, _) = s
        .incidents(&IncidentQuery {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap();
    let mut incident_entries = Vec::new();
    let mut groups = Vec::new();
    for inc in &incidents {
        incident_entries.extend(s.incident_entries(inc.id).unwrap());
        let key = crate::incidents::group_key(&inc.device_id, &inc.kind, &inc.subject);
        groups.push((key.clone(), s.incident_for_group(&key).unwrap()));
    }
    let mut audit = Vec::new();
    let mut before = None;
    loop {
        let page = s.audit_log(before, 3).unwrap();
        audit.extend(page.entries);
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    let mut derived = s.derived("software").unwrap();
    derived.extend(s.derived("screen_lock").unwrap());
    Content {
        devices: s.devices().unwrap(),
        events: ids.into_iter().zip(events).collect(),
        next_timeline_id: s.next_timeline_id().unwrap(),
        incidents,
        incident_entries,
        groups,
        tokens: s.enrolment_tokens().unwrap(),
        policies: s.policy_history().unwrap(),
        derived,
        users: s.users().unwrap(),
        sessions: like
            .sessions
            .iter()
            .map(|(h, _)| (h.clone(), s.session(h).unwrap()))
            .collect(),
        api_tokens: like
            .api_tokens
            .iter()
            .map(|(h, _)| (h.clone(), s.api_token(h).unwrap()))
            .collect(),
        audit,
        settings: s.current_settings().unwrap(),
        digests: s.digests(None, 1_000).unwrap(),
        pending_digests: s.pending_digests().unwrap().iter().map(|d| d.id).collect(),
        digest_cursors: like
            .digest_cursors
            .iter()
            .map(|(r, _)| (r.clone(), s.digest_cursor(r).unwrap()))
            .collect(),
    }
}

/// The converted store holds exactly the fixture's records, field by field so a difference
/// names its kind of record, and its indexes find them: every listing by kind, audience, user
/// and device, and every device's incidents, are the fixture's records filtered the same way.
fn assert_holds_the_fixture(s: &RedbStore) {
    let want = expected();
    let got = read(s, &want);
    assert_eq!(got.devices, want.devices, "devices");
    assert_eq!(got.events.len(), want.events.len(), "events");
    assert_eq!(got.events, want.events, "events");
    assert_eq!(got.next_timeline_id, want.next_timeline_id);
    assert_eq!(got.incidents, want.incidents, "incidents");
    assert_eq!(
        got.incident_entries, want.incident_entries,
        "incident entries"
    );
    assert_eq!(got.groups, want.groups, "incident groups");
    assert_eq!(got.tokens, want.tokens, "enrolment tokens");
    assert_eq!(got.policies, want.policies, "policy versions");
    assert_eq!(got.derived, want.derived, "derived states");
    assert_eq!(got.users, want.users, "users");
    assert_eq!(got.sessions, want.sessions, "sessions");
    assert_eq!(got.api_tokens, want.api_tokens, "API tokens");
    assert_eq!(got.audit, want.audit, "audit");
    assert_eq!(got.settings, want.settings, "settings");
    assert_eq!(got.digests, want.digests, "digests");
    assert_eq!(got.pending_digests, want.pending_digests, "pending digests");
    assert_eq!(got.digest_cursors, want.digest_cursors, "digest cursors");
    assert_eq!(got, want);
    assert_eq!(
        s.current_policy().unwrap().as_ref(),
        want.policies.last(),
        "the current policy"
    );

    let newest_first: Vec<&StoredEvent> = want.events.iter().rev().map(|(_, e)| e).collect();
    let filtered = |keep: &dyn Fn(&StoredEvent) -> bool| -> Vec<StoredEvent> {
        newest_first
            .iter()
            .filter(|e| keep(e))
            .map(|e| (*e).clone())
            .collect()
    };
    for kind in ["usb.inserted", "software.installed", "agent.heartbeat"] {
        let q = EventQuery {
            kind: Some(kind.into()),
            ..Default::default()
        };
        assert_eq!(walk(s, q), filtered(&|e| e.kind == kind), "kind {kind}");
    }
    for role in ["dsl", "network_manager"] {
        let q = EventQuery {
            audience: Some(role.into()),
            ..Default::default()
        };
        let has = |e: &StoredEvent| e.audience.iter().any(|a| a == role);
        assert_eq!(walk(s, q), filtered(&has), "audience {role}");
        let (dsl_news, all) = (
            s.audience_events_from(role, 0, 10_000).unwrap(),
            &want.events,
        );
        let want_news: Vec<(u64, StoredEvent)> =
            all.iter().filter(|(_, e)| has(e)).cloned().collect();
        assert_eq!(dsl_news, want_news, "{role}'s events with their ids");
    }
    for user in ["pupil1", "staff1"] {
        let q = EventQuery {
            user: Some(user.into()),
            ..Default::default()
        };
        let by = |e: &StoredEvent| e.user.as_deref() == Some(user);
        assert_eq!(walk(s, q), filtered(&by), "user {user}");
    }
    for d in &want.devices {
        let q = EventQuery {
            device: Some(d.id.clone()),
            ..Default::default()
        };
        let of = |e: &StoredEvent| e.device_id == d.id;
        assert_eq!(walk(s, q), filtered(&of), "device {}", d.id);
        let mut after = Vec::new();
        s.device_events_after(&d.id, 17, "usb.", &mut |e| after.push(e.clone()))
            .unwrap();
        let mut want_after = filtered(&|e| of(e) && e.seq > 17 && e.kind.starts_with("usb."));
        want_after.reverse();
        assert_eq!(after, want_after, "device {} after 17", d.id);
        let (of_device, _) = s
            .incidents(&IncidentQuery {
                device: Some(d.id.clone()),
                limit: 10_000,
                ..Default::default()
            })
            .unwrap();
        let want_of: Vec<&Incident> = want
            .incidents
            .iter()
            .filter(|i| i.device_id == d.id)
            .collect();
        assert_eq!(
            of_device.iter().collect::<Vec<_>>(),
            want_of,
            "incidents of {}",
            d.id
        );
    }
}

/// The number of `sled-retired-*` directories in `dir`.
fn retired(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("sled-retired-"))
        .count()
}

fn batch(device: &str, events: Vec<StoredEvent>) -> DeviceBatch {
    DeviceBatch {
        device_id: device.into(),
        events,
        facts: None,
        state: Map::new(),
        seen_at: Utc::now(),
    }
}

#[test]
fn a_converted_store_holds_exactly_what_the_sled_store_held_and_carries_on() {
    let dir = sled_store();
    let report = from_sled_if_present(dir.path())
        .unwrap()
        .expect("converted");
    assert_eq!(
        (report.devices, report.events, report.incidents),
        (3, 120, 19)
    );
    assert!(dir.path().join(FILE).is_file());
    assert!(!dir.path().join("db").exists() && !dir.path().join("conf").exists());
    assert!(report.retired_to.starts_with(dir.path()));
    assert!(
        report.retired_to.join("db").is_file(),
        "the sled files kept"
    );
    assert!(report.retired_to.join(RETIRED_NOTE).is_file());

    let s = RedbStore::open(dir.path()).unwrap();
    assert_holds_the_fixture(&s);

    // It carries on where sled left off: resends still skipped, new ids above the old ones.
    let want = expected();
    let d0 = s.device("d0").unwrap().unwrap();
    let (_, resend) = want
        .events
        .iter()
        .rev()
        .find(|(_, e)| e.device_id == "d0")
        .unwrap();
    let resend = resend.clone();
    assert_eq!(resend.seq, d0.highest_seq);
    assert_eq!(s.append(&[batch("d0", vec![resend.clone()])]).unwrap(), 0);
    // A flagged stick, past a gap: the agent's spool dropped some.
    let mut fresh = StoredEvent {
        seq: d0.highest_seq + 5,
        ..resend
    };
    fresh.details = json!({"serial": "NEW", "decision": "block"})
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(s.append(&[batch("d0", vec![fresh.clone()])]).unwrap(), 1);
    assert_eq!(
        s.audience_events_from("dsl", want.next_timeline_id, 10)
            .unwrap(),
        [(want.next_timeline_id, fresh)],
        "the next arrival id after sled's last timeline id"
    );
    let newest = s
        .incidents(&IncidentQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap()
        .0;
    assert_eq!(newest[0].id, want.incidents[0].id + 1);
    assert_eq!(newest[0].subject, "NEW");
    let entry = AuditEntry {
        id: 0,
        at: Utc::now(),
        actor: "nm".into(),
        action: "sign_in".into(),
        target: String::new(),
        detail: String::new(),
        address: String::new(),
    };
    assert!(s.audit(&entry).unwrap() > want.audit[0].id);
    drop(s);

    assert_eq!(from_sled_if_present(dir.path()).unwrap(), None, "once only");
    assert_eq!(retired(dir.path()), 1);
}

#[test]
fn a_crash_mid_conversion_leaves_the_sled_store_as_it_was_and_the_next_start_converts_again() {
    let dir = sled_store();
    let partial = dir.path().join(format!("{FILE}{PARTIAL_SUFFIX}"));
    // The copy completed into the partial file, then the process died before the rename.
    convert(&SledSource::open(dir.path()).unwrap(), &partial).unwrap();
    assert!(partial.is_file());
    assert!(!dir.path().join(FILE).exists());
    {
        let sled = SledSource::open(dir.path()).unwrap();
        let want = expected();
        assert_eq!(sled.devices().unwrap(), want.devices);
        assert_eq!(sled.policy_history().unwrap(), want.policies);
        assert_eq!(sled.timeline.len(), want.events.len());
        assert_eq!(sled.events.len(), want.events.len());
    }
    // A start killed earlier still, leaving a torn file.
    std::fs::write(&partial, b"torn").unwrap();
    // Opening the store is what converts it.
    let s = RedbStore::open(dir.path()).unwrap();
    assert!(!partial.exists(), "the partial file discarded");
    assert!(
        !dir.path().join("db").exists(),
        "the sled files moved aside"
    );
    assert_holds_the_fixture(&s);
}

#[test]
fn a_crash_while_moving_the_sled_files_aside_finishes_the_move_at_the_next_start() {
    let dir = sled_store();
    let report = from_sled_if_present(dir.path())
        .unwrap()
        .expect("converted");
    // As if the process died after moving `conf` and before moving `db` and writing the note.
    std::fs::rename(report.retired_to.join("db"), dir.path().join("db")).unwrap();
    std::fs::remove_file(report.retired_to.join(RETIRED_NOTE)).unwrap();
    assert_eq!(from_sled_if_present(dir.path()).unwrap(), None);
    assert!(!dir.path().join("db").exists());
    assert!(
        report.retired_to.join("db").is_file(),
        "into the same directory"
    );
    assert!(report.retired_to.join(RETIRED_NOTE).is_file());
    assert_eq!(retired(dir.path()), 1);
    let s = RedbStore::open(dir.path()).unwrap();
    assert_holds_the_fixture(&s);
}

#[test]
fn nothing_to_convert_without_a_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(from_sled_if_present(dir.path()).unwrap(), None);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

#[test]
fn a_sled_store_held_by_another_collector_is_refused_with_the_reason_and_left_alone() {
    let dir = sled_store();
    let _held = SledSource::open(dir.path()).unwrap();
    let err = from_sled_if_present(dir.path()).expect_err("the lock is held");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    assert!(dir.path().join("db").is_file());
    assert!(!dir.path().join(FILE).exists());
    assert_eq!(retired(dir.path()), 0);
}

#[test]
fn an_event_missing_from_sleds_timeline_is_still_copied() {
    let dir = sled_store();
    let want = expected();
    let (missing_id, missing) = want.events[2].clone();
    {
        let sled = SledSource::open(dir.path()).unwrap();
        sled.timeline.remove(missing_id.to_be_bytes()).unwrap();
        sled.timeline.flush().unwrap();
    }
    let report = from_sled_if_present(dir.path())
        .unwrap()
        .expect("converted");
    assert_eq!(report.events, 120);
    let s = RedbStore::open(dir.path()).unwrap();
    let mut seqs = Vec::new();
    s.device_events_after(&missing.device_id, 0, "", &mut |e| seqs.push(e.seq))
        .unwrap();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "in its device's place");
    let newest = s
        .events(&EventQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        newest.events,
        [missing],
        "after the others, so newest in the timeline"
    );
}

/// A store from before sled's layout 2 has events only: the sled backend built its incidents
/// from them, in timeline order, when it opened it; the conversion does the same.
#[test]
fn a_store_from_before_incidents_gets_the_incidents_its_events_make() {
    let dir = sled_store();
    {
        let sled = SledSource::open(dir.path()).unwrap();
        sled.meta.remove("layout").unwrap();
        for tree in [&sled.incidents, &sled.incident_open, &sled.incident_log] {
            tree.clear().unwrap();
        }
        sled.meta.flush().unwrap();
    }
    let report = from_sled_if_present(dir.path())
        .unwrap()
        .expect("converted");
    let converted = RedbStore::open(dir.path()).unwrap();

    // The same events stored one by one into a new store fold into the incidents expected.
    let want = expected();
    let other = tempfile::tempdir().unwrap();
    let fresh = RedbStore::open(other.path()).unwrap();
    for d in &want.devices {
        fresh.insert_device(&test_device(&d.id)).unwrap();
    }
    for (_, e) in &want.events {
        fresh
            .append(&[batch(&e.device_id, vec![e.clone()])])
            .unwrap();
    }
    let all = |s: &RedbStore| {
        s.incidents(&IncidentQuery {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap()
        .0
    };
    let incidents = all(&converted);
    assert_eq!(incidents, all(&fresh));
    assert!(incidents.len() > 10, "{incidents:#?}");
    assert_eq!(report.incidents, incidents.len() as u64);
    for inc in &incidents {
        assert_eq!(converted.incident_entries(inc.id).unwrap(), []);
        let key = crate::incidents::group_key(&inc.device_id, &inc.kind, &inc.subject);
        assert_eq!(
            converted.incident_for_group(&key).unwrap(),
            fresh.incident_for_group(&key).unwrap()
        );
        let (of_device, _) = converted
            .incidents(&IncidentQuery {
                device: Some(inc.device_id.clone()),
                limit: 10_000,
                ..Default::default()
            })
            .unwrap();
        assert!(of_device.contains(inc), "indexed by device");
    }
}
