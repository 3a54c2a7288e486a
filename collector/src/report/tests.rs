//! The report over a real store (the embedded default): figures from events and incident records, and no name in any governors' format.

use chrono::{Duration, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::*;
use crate::store::{
    AccountStore, Device, DeviceBatch, EntryAction, IncidentQuery, IncidentStore, RedbStore,
    StoredEvent,
};

const PUPIL: &str = "zz.quillfeather";
const HOST: &str = "QUILL-LAPTOP-7";
const SERIAL: &str = "SN-QUILL-0042";

fn ev(
    seq: u64,
    at: chrono::DateTime<Utc>,
    kind: &str,
    user: Option<&str>,
    d: Value,
    audience: &[&str],
) -> StoredEvent {
    let Value::Object(details) = d else {
        unreachable!()
    };
    StoredEvent {
        device_id: "dev-1".into(),
        seq,
        kind: kind.into(),
        occurred_at: at,
        received_at: at,
        user: user.map(str::to_string),
        details,
        severity: if audience.is_empty() {
            "info"
        } else {
            "warning"
        }
        .into(),
        audience: audience.iter().map(|a| a.to_string()).collect(),
        assessment: None,
    }
}

/// One laptop: enforcing the lock from Monday, failing from Wednesday; a pupil's stick refused
/// twice on Tuesday (one incident, acknowledged on Thursday); a policy change by "manager".
fn store_with_a_week(dir: &std::path::Path) -> RedbStore {
    let store = RedbStore::open(dir).unwrap();
    let monday = Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap();
    let mut dev: Device = crate::store::test_device("dev-1");
    dev.hostname = HOST.into();
    dev.enrolled_at = monday - Duration::days(30);
    store.insert_device(&dev).unwrap();
    let stick = json!({"mass_storage": true, "account": "pupil", "decision": "block",
                       "serial": SERIAL, "product": "Cruzer"});
    let events = vec![
        ev(
            1,
            monday - Duration::days(10),
            "screen.compliance",
            None,
            json!({"state": "enforced"}),
            &[],
        ),
        ev(
            2,
            monday + Duration::days(2),
            "screen.compliance",
            None,
            json!({"state": "cannot_enforce"}),
            &["network_manager"],
        ),
        ev(
            3,
            monday + Duration::days(1),
            "usb.inserted",
            Some(PUPIL),
            stick.clone(),
            &["network_manager", "dsl"],
        ),
        ev(
            4,
            monday + Duration::days(1) + Duration::minutes(5),
            "usb.inserted",
            Some(PUPIL),
            stick,
            &["network_manager", "dsl"],
        ),
        ev(
            5,
            monday,
            "antivirus.status",
            None,
            json!({"status": "current"}),
            &[],
        ),
        ev(
            6,
            monday,
            "software.installed",
            Some(PUPIL),
            json!({"source": "dpkg", "name": "gimp", "version": "2.10"}),
            &["network_manager"],
        ),
    ];
    store
        .append(&[DeviceBatch {
            device_id: "dev-1".into(),
            events,
            facts: None,
            state: Map::new(),
            seen_at: monday + Duration::days(2),
        }])
        .unwrap();
    let (incidents, _) = store
        .incidents(&IncidentQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        incidents.len(),
        3,
        "the stick (twice), the lock and the software: {incidents:?}"
    );
    let stick = incidents.iter().find(|i| i.kind == "usb.inserted").unwrap();
    store
        .add_incident_entry(
            stick.id,
            monday + Duration::days(3),
            "dsl.lead",
            EntryAction::Acknowledged,
            "spoke to the pupil",
        )
        .unwrap();
    store
        .put_policy(
            json!({}),
            "caretaker-collector (default)",
            monday - Duration::days(20),
        )
        .unwrap();
    store
        .put_policy(
            json!({"screen_lock": {"idle_timeout_secs": 300}}),
            "staff.quillon",
            monday + Duration::days(1),
        )
        .unwrap();
    store
        .put_settings(
            json!({"school_name": "Hillside Primary", "licences": [{"product": "gimp", "count": 30}]}),
            "manager",
            monday,
        )
        .unwrap();
    store
}

fn week() -> PeriodSpec {
    PeriodSpec {
        kind: Some(PeriodKind::Week),
        from: Some("2026-11-04".parse().unwrap()),
        to: None,
    }
}

fn sources(store: &RedbStore) -> Sources<'_> {
    let mut src = Sources::offline(store, chrono_tz::Europe::London).unwrap();
    src.now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    src
}

#[test]
fn the_week_replays_compliance_day_by_day_and_counts_incidents_by_their_record() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_a_week(tmp.path());
    let r = governors(&sources(&store), &week()).unwrap();
    assert_eq!(r.meta.period_label, "Week of 2 Nov 2026");
    assert_eq!(r.meta.school, "Hillside Primary");
    let lock = &r.counts.compliance[0];
    // Enforcing Monday and Tuesday (from the report ten days before), failing from Wednesday.
    let goods: Vec<u32> = lock.days.iter().map(|d| d.good).collect();
    assert_eq!(goods, vec![1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(lock.days[6].bad, 1);
    let sg = r
        .counts
        .incidents
        .iter()
        .find(|l| l.category == "Safeguarding")
        .unwrap();
    assert_eq!(
        (sg.kind, sg.incidents, sg.events, sg.acknowledged, sg.open),
        ("USB devices", 1, 2, 1, 0)
    );
    assert_eq!(r.counts.safeguarding_incidents, 1);
    assert_eq!(r.counts.media.iter().map(|m| m.refused).sum::<u32>(), 2);
    assert_eq!(r.counts.policy_changes.len(), 1);
    assert_eq!(r.counts.policy_changes[0].sections, vec!["Screen lock"]);
    // Offline, installations are folded from the store's events: one laptop has gimp.
    assert_eq!(r.counts.licences[0].installed, 1);
    assert_eq!(r.counts.licences[0].status(), "29 spare");
    let trend = r
        .counts
        .trends
        .iter()
        .find(|t| t.measure == "Safeguarding incidents")
        .unwrap();
    assert_eq!(
        (trend.this, trend.previous, trend.verdict()),
        (1, 0, "worse")
    );
    // Silent: last heard on Wednesday, more than three days before the week's end.
    assert_eq!(r.counts.silent, 1);
}

#[test]
fn no_governors_format_carries_a_name_and_the_dsls_does() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_a_week(tmp.path());
    let src = sources(&store);
    for format in [Format::Html, Format::Csv] {
        let req = |audience| ReportRequest {
            period: week(),
            audience,
            format,
        };
        let gov: Vec<u8> = render(&src, &req(Audience::Governors))
            .unwrap()
            .into_iter()
            .flat_map(|f| f.bytes)
            .collect();
        let gov = String::from_utf8(gov).unwrap();
        for name in [PUPIL, HOST, SERIAL, "staff.quillon", "dsl.lead", "dev-1"] {
            assert!(!gov.contains(name), "{format:?} names {name}");
        }
        assert!(gov.contains("Network manager") || gov.contains("Staff member"));
        let dsl: Vec<u8> = render(&src, &req(Audience::Dsl))
            .unwrap()
            .into_iter()
            .flat_map(|f| f.bytes)
            .collect();
        let dsl = String::from_utf8(dsl).unwrap();
        for name in [PUPIL, HOST, "staff.quillon"] {
            assert!(dsl.contains(name), "the DSL's {format:?} lacks {name}");
        }
    }
}
