//! Unit tests of pseudonyms, edge pseudonymisation, the export's rendering and what an erasure reports.

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::store::privacy::{Hold, HoldTarget, SubjectRecords};
use crate::store::{AuditEntry, Category, Incident, IncidentStatus, StoredEvent};

fn key(b: u8) -> PseudonymKey {
    PseudonymKey::from_bytes([b; 32])
}

fn event(user: Option<&str>, audience: &[&str], details: serde_json::Value) -> StoredEvent {
    StoredEvent {
        device_id: "laptop-1".into(),
        seq: 7,
        kind: "software.installed".into(),
        occurred_at: Utc.with_ymd_and_hms(2026, 11, 30, 9, 15, 0).unwrap(),
        received_at: Utc.with_ymd_and_hms(2026, 11, 30, 9, 15, 1).unwrap(),
        user: user.map(str::to_string),
        details: details.as_object().unwrap().clone(),
        severity: "info".into(),
        audience: audience.iter().map(|a| a.to_string()).collect(),
        assessment: None,
    }
}

#[test]
fn a_pseudonym_is_stable_keyed_and_hides_the_name() {
    let p = pseudonym(&key(1), "alice");
    assert_eq!(p, pseudonym(&key(1), "alice"), "the same for a school");
    assert!(p.starts_with("user-") && p.len() == 5 + 16, "{p}");
    assert!(p[5..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(p, pseudonym(&key(2), "alice"), "another school's differs");
    assert_ne!(p, pseudonym(&key(1), "al"), "another name's differs");
    assert!(!p.contains("alice"));
    // HMAC-SHA256 with a 32-byte key of 0x01 over "alice", first 8 bytes: pinned, so a
    // change of derivation (which would split every pupil's history in two) fails here.
    let mac = caretaker_proto::uninstall::hmac_sha256(&[1; 32], b"alice");
    assert_eq!(p, format!("user-{}", hex::encode(&mac[..8])));
}

#[test]
fn every_collector_of_a_trust_derives_the_same_key_from_the_shared_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, key_pem) = SchoolCa::generate("Test School").unwrap();
    let (cert, keyf) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&cert, ca.cert_pem()).unwrap();
    std::fs::write(&keyf, key_pem).unwrap();
    let loaded = SchoolCa::load(&cert, &keyf).unwrap();
    assert_eq!(
        pseudonym(&PseudonymKey::from_ca(&ca), "alice"),
        pseudonym(&PseudonymKey::from_ca(&loaded), "alice")
    );
    let (other, _) = SchoolCa::generate("Other School").unwrap();
    assert_ne!(
        pseudonym(&PseudonymKey::from_ca(&ca), "alice"),
        pseudonym(&PseudonymKey::from_ca(&other), "alice")
    );
}

#[test]
fn technical_events_are_pseudonymised_and_the_dsls_keep_names() {
    let k = key(3);
    let p = pseudonym(&k, "alice");
    let details = json!({"path": "/home/alice/bin/tool", "requested_by": {"user": "alice"},
                         "note": "malice is not alice."});
    let mut tech = event(Some("alice"), &["network_manager"], details.clone());
    assert!(pseudonymise_technical(&k, &mut tech));
    assert_eq!(tech.user.as_deref(), Some(p.as_str()));
    assert_eq!(
        serde_json::Value::Object(tech.details.clone()),
        json!({"path": format!("/home/{p}/bin/tool"), "requested_by": {"user": p},
               "note": format!("malice is not {p}.")})
    );
    let mut dsl = event(Some("alice"), &["network_manager", "dsl"], details.clone());
    let before = dsl.clone();
    assert!(!pseudonymise_technical(&k, &mut dsl));
    assert_eq!(dsl, before, "the DSL's event keeps the name");
    let mut nobody = event(None, &[], details);
    assert!(
        !pseudonymise_technical(&k, &mut nobody),
        "no user, nothing to hide"
    );
}

fn incident(id: u64, user: &str) -> Incident {
    let at = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
    Incident {
        id,
        category: Category::Safeguarding,
        device_id: "laptop-1".into(),
        user: Some(user.into()),
        kind: "usb.blocked".into(),
        subject: "SN1".into(),
        title: "Blocked USB stick <Cruzer>".into(),
        severity: "warning".into(),
        audience: vec!["dsl".into()],
        first_at: at,
        last_at: at,
        count: 1,
        first_seq: 5,
        last_seq: 9,
        status: IncidentStatus::Open,
        updated_at: at,
    }
}

#[test]
fn the_export_renders_every_record_as_json_and_escaped_html() {
    let records = SubjectRecords {
        events: vec![event(
            Some("alice"),
            &["dsl"],
            json!({"product": "<script>"}),
        )],
        incidents: vec![incident(4, "alice")],
        audit: vec![AuditEntry {
            id: 1,
            at: Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap(),
            actor: "dsl1".into(),
            action: "incident_viewed".into(),
            target: "4".into(),
            detail: String::new(),
            address: String::new(),
        }],
        ..Default::default()
    };
    let req = ExportRequest {
        user: "alice",
        school: "Hill School",
        time_zone: chrono_tz::Europe::London,
        made_at: Utc.with_ymd_and_hms(2026, 12, 1, 1, 30, 0).unwrap(),
    };
    let f = render(&records, &req, "user-0123456789abcdef", "nm").unwrap();
    assert_eq!(f.counts.total(), 3);
    let doc: serde_json::Value = serde_json::from_str(&f.json).unwrap();
    assert_eq!(doc["subject"], "alice");
    assert_eq!(doc["school"], "Hill School");
    assert_eq!(doc["made_by"], "nm");
    assert_eq!(doc["pseudonym"], "user-0123456789abcdef");
    assert_eq!(doc["counts"]["events"], 1);
    assert_eq!(doc["records"]["incidents"][0]["id"], 4);
    assert!(f.html.contains("Hill School") && f.html.contains("Records naming alice"));
    assert!(f.html.contains("Events (1)") && f.html.contains("Digests (0)"));
    // Summer time: 12:00 UTC on 1 July is 13:00 in London.
    assert!(f.html.contains("13:00"), "times in the school's zone");
    assert!(!f.html.contains("<script>"), "details are escaped");
    assert!(!f.html.contains("<Cruzer>"), "titles are escaped");
}

#[test]
fn an_erasure_explains_the_holds_that_keep_the_persons_records() {
    let records = SubjectRecords {
        events: vec![event(Some("alice"), &["dsl"], json!({}))],
        incidents: vec![incident(4, "alice")],
        ..Default::default()
    };
    let at = Utc.with_ymd_and_hms(2026, 11, 1, 10, 0, 0).unwrap();
    let hold = |target| Hold {
        target,
        by: "dsl1".into(),
        at,
        reason: "case 2026/14".into(),
    };
    let holds = vec![
        hold(HoldTarget::Incident(4)),
        hold(HoldTarget::Incident(99)),
        hold(HoldTarget::Device("laptop-1".into())),
        hold(HoldTarget::Device("laptop-9".into())),
        hold(HoldTarget::User("alice".into())),
        hold(HoldTarget::User("bob".into())),
    ];
    let why = holds_keeping(&records, &holds, "alice", chrono_tz::Europe::London);
    assert_eq!(
        why,
        vec![
            "incident 4, held by dsl1 since 1 Nov 2026: case 2026/14",
            "device laptop-1, held by dsl1 since 1 Nov 2026: case 2026/14",
            "this person, held by dsl1 since 1 Nov 2026: case 2026/14",
        ]
    );
    let report = ErasureReport {
        pseudonym: "user-00".into(),
        counts: crate::store::privacy::ErasureCounts {
            events: 3,
            kept_events: 1,
            kept_incidents: 1,
            ..Default::default()
        },
        holds: why,
        account: None,
    };
    let detail = audit_detail(&report, &holds, "alice");
    assert!(
        !detail.contains("alice"),
        "the audit log never keeps the name: {detail}"
    );
    assert!(
        detail.contains("incident:4") && detail.contains("the person"),
        "{detail}"
    );
    let lines = report.lines().join("\n");
    assert!(
        lines.contains("Kept under legal hold") && lines.contains("case 2026/14"),
        "{lines}"
    );
}

#[test]
fn names_the_store_could_not_hold_are_refused() {
    assert!(check_name("").is_err());
    assert!(check_name("  ").is_err());
    assert!(check_name("a\nb").is_err());
    assert!(check_name(&"a".repeat(300)).is_err());
    assert!(check_name("alice.smith@school").is_ok());
}

#[test]
fn records_under_the_pseudonym_join_the_persons_once() {
    let mut r = SubjectRecords {
        events: vec![event(Some("alice"), &[], json!({}))],
        incidents: vec![incident(4, "alice")],
        ..Default::default()
    };
    let mut later = event(Some("user-1"), &[], json!({}));
    later.seq = 9;
    later.occurred_at = Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap();
    let mut earlier = later.clone();
    earlier.seq = 3;
    earlier.occurred_at = Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap();
    let more = SubjectRecords {
        // The same event found twice (its details name both) counts once.
        events: vec![later, r.events[0].clone(), earlier],
        incidents: vec![incident(4, "user-1"), incident(5, "user-1")],
        ..Default::default()
    };
    merge(&mut r, more);
    let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![3, 7, 9], "each once, oldest first");
    let ids: Vec<u64> = r.incidents.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![4, 5]);
}
