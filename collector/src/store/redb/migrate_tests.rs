//! Tests of the sled-to-redb conversion: a sled store filled through its own trait methods answers every listing the same after conversion, and a crash at any step loses nothing.

use std::path::Path;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::super::super::sled_store::Engine as SledEngine;
use super::super::super::{
    AccountStore, AgentFacts, ApiTokenRecord, AuditEntry, Channel, DeviceBatch, DigestRecord,
    DigestStatus, EntryAction, EventQuery, IncidentQuery, IncidentStore, SessionRecord, SledStore,
    Store, StoredEvent, TokenRecord, UserRecord, test_device,
};
use super::super::{FILE, RedbStore};
use super::{PARTIAL_SUFFIX, RETIRED_NOTE, convert, from_sled_if_present};

const DEVICES: usize = 5;
const ROUNDS: u64 = 30;
const PER_BATCH: u64 = 20;

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 1, 8, 0, 0).unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Heartbeats, software installs for the network manager, and USB sticks flagged for the DSL
/// too (which make incidents), five minutes apart, so groups also split at the 24-hour window.
fn event(device: usize, seq: u64) -> StoredEvent {
    let at = base() + Duration::minutes(5 * seq as i64);
    let (kind, audience, user, severity, details) = match seq % 4 {
        0 => (
            "usb.inserted",
            vec!["network_manager", "dsl"],
            Some(format!("pupil{}", seq % 3)),
            "warning",
            json!({"serial": format!("S{}", seq % 7), "product": "Stick", "decision": "block"}),
        ),
        1 => (
            "software.installed",
            vec!["network_manager"],
            Some("staff1".to_string()),
            "info",
            json!({"name": format!("pkg{}", seq % 5), "version": "1.0"}),
        ),
        _ => ("agent.heartbeat", vec![], None, "info", json!({})),
    };
    StoredEvent {
        device_id: format!("d{device}"),
        seq,
        kind: kind.into(),
        occurred_at: at,
        received_at: at + Duration::seconds(3),
        user,
        details: obj(details),
        severity: severity.into(),
        audience: audience.into_iter().map(String::from).collect(),
        assessment: seq.is_multiple_of(4).then(|| json!({"rule": "usb"})),
    }
}

/// Fills a store through the trait: devices, a few thousand events with resends, incidents
/// with entries (one closed mid-way, so its group opens a second), tokens, policy versions,
/// derived state, accounts, sessions, API tokens, audit, settings and digests.
fn fill(s: &dyn Store) {
    for d in 0..DEVICES {
        s.insert_device(&test_device(&format!("d{d}"))).unwrap();
    }
    for round in 0..ROUNDS {
        let group: Vec<DeviceBatch> = (0..DEVICES)
            .map(|d| {
                let first = round * PER_BATCH + 1;
                // Two resends of the previous batch's tail, then the new events.
                let events = (first.saturating_sub(2).max(1)..first + PER_BATCH)
                    .map(|seq| event(d, seq))
                    .collect();
                DeviceBatch {
                    device_id: format!("d{d}"),
                    events,
                    facts: (round % 10 == 0).then(|| AgentFacts {
                        hostname: format!("laptop-{d}"),
                        os: "debian".into(),
                        agent_version: format!("1.{round}"),
                    }),
                    state: obj(json!({"antivirus": {"round": round}})),
                    seen_at: base() + Duration::hours(round as i64),
                }
            })
            .collect();
        s.append(&group).unwrap();
        if round == 10 {
            let at = base() + Duration::days(1);
            s.add_incident_entry(1, at, "dsl1", EntryAction::Closed, "spoken to")
                .unwrap();
            s.add_incident_entry(2, at, "dsl1", EntryAction::Note, "watching")
                .unwrap();
            s.add_incident_entry(2, at, "dsl1", EntryAction::Acknowledged, "")
                .unwrap();
        }
    }
    s.revoke_device("d4", base() + Duration::days(3)).unwrap();
    for (i, label) in ["year7", "staff"].into_iter().enumerate() {
        s.insert_token(&TokenRecord {
            hash: format!("tokenhash{i}"),
            label: label.into(),
            max_uses: 10,
            uses: 0,
            created_at: base() + Duration::minutes(i as i64),
            expires_at: base() + Duration::days(30),
        })
        .unwrap();
    }
    s.use_token("tokenhash1", base()).unwrap().unwrap();
    for v in 0..3 {
        s.put_policy(json!({"version": v}), "nm", base() + Duration::hours(v))
            .unwrap();
    }
    s.put_derived("software", "d0", 40, &json!({"pkg1": "1.0"}))
        .unwrap();
    s.put_derived("software", "d1", 41, &json!({"pkg2": "1.0"}))
        .unwrap();
    for (name, role) in [("dsl1", "dsl"), ("nm", "network_manager")] {
        s.insert_user(&UserRecord {
            username: name.into(),
            role: role.into(),
            password_hash: "$argon2id$x".into(),
            disabled: false,
            email: format!("{name}@school.example"),
            must_change_password: false,
            created_at: base(),
            created_by: "init".into(),
            updated_at: base(),
        })
        .unwrap();
    }
    let mut u = s.user("nm").unwrap().unwrap();
    u.must_change_password = true;
    s.update_user(&u).unwrap();
    for (hash, user) in [("sess1", "dsl1"), ("sess2", "nm")] {
        s.insert_session(
            hash,
            &SessionRecord {
                username: user.into(),
                created_at: base(),
                last_seen: base(),
                expires_at: base() + Duration::days(1),
                csrf: format!("csrf-{hash}"),
            },
        )
        .unwrap();
    }
    s.insert_api_token(&ApiTokenRecord {
        hash: "apihash".into(),
        label: "mis".into(),
        role: "technician".into(),
        created_at: base(),
        created_by: "nm".into(),
        revoked_at: None,
    })
    .unwrap();
    for i in 0..7 {
        s.audit(&AuditEntry {
            id: 0,
            at: base() + Duration::minutes(i),
            actor: "nm".into(),
            action: "policy_changed".into(),
            target: format!("v{i}"),
            detail: String::new(),
            address: "10.0.0.5".into(),
        })
        .unwrap();
    }
    s.put_settings(json!({"school": "Hill"}), "nm", base())
        .unwrap();
    s.put_settings(json!({"school": "Hill Academy"}), "nm", base())
        .unwrap();
    let digest = |kind: &str| DigestRecord {
        id: 0,
        recipient: "dsl1".into(),
        channel: Channel::Email {
            address: "dsl1@school.example".into(),
        },
        kind: kind.into(),
        created_at: base(),
        subject: format!("{kind} digest"),
        text: "t".into(),
        html: "h".into(),
        json: json!({}),
        events: 3,
        status: DigestStatus::Pending,
        attempts: 0,
        last_error: None,
        next_attempt: None,
        sent_at: None,
        attachment: None,
    };
    let mut cursor = s.digest_cursor("dsl1").unwrap();
    cursor.scheduled_from = s.next_timeline_id().unwrap() - 40;
    let recorded = s
        .record_digests("dsl1", &cursor, vec![digest("scheduled"), digest("urgent")])
        .unwrap();
    let mut sent = recorded[0].clone();
    sent.status = DigestStatus::Sent;
    sent.sent_at = Some(base());
    s.update_digest(&sent).unwrap();
    cursor.urgent_from = 7;
    s.put_digest_cursor("dsl2", &cursor).unwrap();
}

/// Every page of a listing, newest first: the events and the cursor each page handed out.
fn walk(s: &dyn Store, q: &EventQuery) -> Vec<(Vec<StoredEvent>, Option<String>)> {
    let mut pages = Vec::new();
    let mut q = EventQuery {
        limit: 37,
        ..q.clone()
    };
    loop {
        let page = s.events(&q).unwrap();
        pages.push((page.events, page.next.clone()));
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => return pages,
        }
    }
}

/// What the store answers, listing by listing, labelled so a difference names its listing.
fn answers(s: &dyn Store) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |label: String, v: String| out.push((label, v));
    let devices = s.devices().unwrap();
    assert_eq!(devices.len(), DEVICES);
    put("devices".into(), format!("{devices:?}"));
    let mut queries = vec![("fleet".to_string(), EventQuery::default())];
    for d in &devices {
        queries.push((
            format!("device {}", d.id),
            EventQuery {
                device: Some(d.id.clone()),
                ..Default::default()
            },
        ));
        queries.push((
            format!("device {} usb", d.id),
            EventQuery {
                device: Some(d.id.clone()),
                kind: Some("usb.inserted".into()),
                ..Default::default()
            },
        ));
        let mut seqs = Vec::new();
        let highest = s
            .device_events_after(&d.id, 17, "", &mut |e| seqs.push(e.seq))
            .unwrap();
        put(format!("after {}", d.id), format!("{highest} {seqs:?}"));
        let mut usb = Vec::new();
        s.device_events_after(&d.id, 0, "usb.", &mut |e| usb.push(e.seq))
            .unwrap();
        put(format!("usb after {}", d.id), format!("{usb:?}"));
    }
    for kind in ["usb.inserted", "software.installed", "agent.heartbeat"] {
        queries.push((
            format!("kind {kind}"),
            EventQuery {
                kind: Some(kind.into()),
                ..Default::default()
            },
        ));
    }
    for role in ["dsl", "network_manager"] {
        queries.push((
            format!("audience {role}"),
            EventQuery {
                audience: Some(role.into()),
                ..Default::default()
            },
        ));
        queries.push((
            format!("not audience {role}"),
            EventQuery {
                exclude_audience: Some(role.into()),
                ..Default::default()
            },
        ));
    }
    for user in ["pupil1", "staff1"] {
        queries.push((
            format!("user {user}"),
            EventQuery {
                user: Some(user.into()),
                ..Default::default()
            },
        ));
    }
    queries.push((
        "warnings received in a window".into(),
        EventQuery {
            severity: Some("warning".into()),
            received_since: Some(base() + Duration::hours(10)),
            received_until: Some(base() + Duration::hours(30)),
            ..Default::default()
        },
    ));
    for (label, q) in &queries {
        put(format!("events {label}"), format!("{:?}", walk(s, q)));
    }
    let (incidents, _) = s
        .incidents(&IncidentQuery {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap();
    assert!(incidents.len() > 10, "the fill made incidents");
    for inc in &incidents {
        put(
            format!("incident {} entries", inc.id),
            format!("{:?}", s.incident_entries(inc.id).unwrap()),
        );
        let group = crate::incidents::group_key(&inc.device_id, &inc.kind, &inc.subject);
        put(
            format!("group of {}", inc.id),
            format!("{:?}", s.incident_for_group(&group).unwrap()),
        );
    }
    put("incidents".into(), format!("{incidents:?}"));
    for q in [
        IncidentQuery {
            limit: 4,
            device: Some("d2".into()),
            ..Default::default()
        },
        IncidentQuery {
            limit: 4,
            open_only: true,
            user: Some("pupil1".into()),
            ..Default::default()
        },
    ] {
        let mut pages = Vec::new();
        let mut q = q;
        loop {
            let (page, next) = s.incidents(&q).unwrap();
            pages.push((page, next));
            match next {
                Some(n) => q.before = Some(n),
                None => break,
            }
        }
        put(format!("incidents {q:?}"), format!("{pages:?}"));
    }
    let mut before = None;
    loop {
        let page = s.audit_log(before, 3).unwrap();
        put(format!("audit before {before:?}"), format!("{page:?}"));
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    put("users".into(), format!("{:?}", s.users().unwrap()));
    for h in ["sess1", "sess2"] {
        put(
            format!("session {h}"),
            format!("{:?}", s.session(h).unwrap()),
        );
    }
    put(
        "api token".into(),
        format!("{:?}", s.api_token("apihash").unwrap()),
    );
    put(
        "tokens".into(),
        format!("{:?}", s.enrolment_tokens().unwrap()),
    );
    put(
        "settings".into(),
        format!("{:?}", s.current_settings().unwrap()),
    );
    put(
        "policies".into(),
        format!("{:?}", s.policy_history().unwrap()),
    );
    put(
        "policy".into(),
        format!("{:?}", s.current_policy().unwrap()),
    );
    put(
        "policy page".into(),
        format!("{:?}", s.policy_page(Some(3), 1).unwrap()),
    );
    put(
        "derived".into(),
        format!("{:?}", s.derived("software").unwrap()),
    );
    put(
        "digests".into(),
        format!("{:?}", s.digests(None, 100).unwrap()),
    );
    put(
        "pending".into(),
        format!("{:?}", s.pending_digests().unwrap()),
    );
    for r in ["dsl1", "dsl2", "nobody"] {
        put(
            format!("cursor {r}"),
            format!("{:?}", s.digest_cursor(r).unwrap()),
        );
    }
    put(
        "next timeline id".into(),
        format!("{:?}", s.next_timeline_id().unwrap()),
    );
    put(
        "dsl's news".into(),
        format!("{:?}", s.audience_events_from("dsl", 100, 10_000).unwrap()),
    );
    out
}

fn assert_same(sled: &[(String, String)], redb: &[(String, String)]) {
    assert_eq!(sled.len(), redb.len());
    for ((label, a), (label_b, b)) in sled.iter().zip(redb) {
        assert_eq!(label, label_b);
        assert!(a == b, "{label} differs:\nsled: {a}\nredb: {b}");
    }
}

/// A sled store as a school has it, and what it answered.
fn sled_store(dir: &Path) -> Vec<(String, String)> {
    let s = SledStore::open(dir).unwrap();
    fill(&s);
    answers(&s)
}

#[test]
fn a_converted_store_answers_every_listing_as_the_sled_store_did_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let before = sled_store(dir.path());
    let report = from_sled_if_present(dir.path())
        .unwrap()
        .expect("converted");
    assert_eq!(report.devices, DEVICES as u64);
    assert_eq!(report.events, DEVICES as u64 * ROUNDS * PER_BATCH);
    assert!(dir.path().join(FILE).is_file());
    assert!(!dir.path().join("db").exists() && !dir.path().join("conf").exists());
    assert!(report.retired_to.starts_with(dir.path()));
    assert!(
        report.retired_to.join("db").is_file(),
        "the sled files kept"
    );
    assert!(report.retired_to.join(RETIRED_NOTE).is_file());

    let s = RedbStore::open(dir.path()).unwrap();
    let after = answers(&s);
    assert_same(&before, &after);
    assert_eq!(
        report.incidents,
        s.incidents(&IncidentQuery {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap()
        .0
        .len() as u64
    );

    // It carries on where sled left off: resends still skipped, new ids above the old ones.
    let d0 = s.device("d0").unwrap().unwrap();
    let last_incident = s
        .incidents(&IncidentQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap()
        .0[0]
        .id;
    // A flagged stick (every fourth seq), past a gap: the agent's spool dropped some.
    let mut fresh = event(0, (d0.highest_seq / 4 + 2) * 4);
    fresh.details = obj(json!({"serial": "NEW", "decision": "block"}));
    let group = |events| DeviceBatch {
        device_id: "d0".into(),
        events,
        facts: None,
        state: Map::new(),
        seen_at: Utc::now(),
    };
    assert_eq!(
        s.append(&[group(vec![event(0, d0.highest_seq)])]).unwrap(),
        0
    );
    assert_eq!(s.append(&[group(vec![fresh.clone()])]).unwrap(), 1);
    let newest = s
        .events(&EventQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(newest.events, [fresh]);
    let inc = s
        .incidents(&IncidentQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap()
        .0;
    assert_eq!(inc[0].id, last_incident + 1);
    assert_eq!(inc[0].subject, "NEW");
    let old_audit = s.audit_log(None, 1).unwrap().entries[0].id;
    let entry = AuditEntry {
        id: 0,
        at: Utc::now(),
        actor: "nm".into(),
        action: "sign_in".into(),
        target: String::new(),
        detail: String::new(),
        address: String::new(),
    };
    assert!(s.audit(&entry).unwrap() > old_audit);
    drop(s);

    assert_eq!(from_sled_if_present(dir.path()).unwrap(), None, "once only");
}

#[test]
fn a_crash_mid_conversion_leaves_the_sled_store_as_it_was_and_the_next_start_converts_again() {
    let dir = tempfile::tempdir().unwrap();
    let before = sled_store(dir.path());
    let partial = dir.path().join(format!("{FILE}{PARTIAL_SUFFIX}"));
    // The copy completed into the partial file, then the process died before the rename.
    convert(&SledEngine::open(dir.path()).unwrap(), &partial).unwrap();
    assert!(partial.is_file());
    {
        let s = SledStore::open(dir.path()).unwrap();
        assert_same(&before, &answers(&s));
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
    assert_same(&before, &answers(&s));
}

#[test]
fn a_crash_while_moving_the_sled_files_aside_finishes_the_move_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let before = sled_store(dir.path());
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
    let retired: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("sled-retired-"))
        .collect();
    assert_eq!(retired.len(), 1);
    let s = RedbStore::open(dir.path()).unwrap();
    assert_same(&before, &answers(&s));
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
fn an_event_missing_from_sleds_timeline_is_still_copied() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledEngine::open(dir.path()).unwrap();
        s.insert_device(&test_device("d0")).unwrap();
        let batch = DeviceBatch {
            device_id: "d0".into(),
            events: (1..=5).map(|seq| event(0, seq)).collect(),
            facts: None,
            state: Map::new(),
            seen_at: base(),
        };
        assert_eq!(s.append(&[batch]).unwrap(), 5);
        // Drop the timeline entry of seq 3, the third stored.
        let (tid, _) = s.timeline_tree().iter().nth(2).unwrap().unwrap();
        s.timeline_tree().remove(tid).unwrap();
        s.timeline_tree().flush().unwrap();
    }
    let report = from_sled_if_present(dir.path())
        .unwrap()
        .expect("converted");
    assert_eq!(report.events, 5);
    let s = RedbStore::open(dir.path()).unwrap();
    let mut seqs = Vec::new();
    s.device_events_after("d0", 0, "", &mut |e| seqs.push(e.seq))
        .unwrap();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let fleet = s
        .events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let order: Vec<u64> = fleet.events.iter().map(|e| e.seq).collect();
    assert_eq!(
        order,
        [3, 5, 4, 2, 1],
        "after the others, so newest in the timeline"
    );
}
