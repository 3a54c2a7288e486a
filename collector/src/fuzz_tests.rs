//! Property-based fuzzing of what the collector parses from outside: event batches from agents
//! (bytes decoded as the protobuf message, and structurally valid batches with hostile details,
//! through validation and judging into the real store) and the school's settings document.
//!
//! The one place outside `proto` that names protobuf types: the fuzzer has to make the bytes an
//! agent could send. `PROPTEST_CASES=N` runs longer (see BENCHMARKS.md).

#[path = "../../proto/tests/support/fuzz.rs"]
mod support;

use std::sync::Arc;

use caretaker_proto::convert::{struct_from_json, timestamp_from};
use caretaker_proto::pb;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use prost::Message;
use serde_json::{Map, Value, json};
use support::*;

use crate::grpc::incoming;
use crate::service::Collector;
use crate::settings::Settings;
use crate::store::{EventQuery, RedbStore, Store};

/// A collector over a real store, with a policy whose software lists and removable-media rules
/// give the judges something to match.
struct Rig {
    rt: tokio::runtime::Runtime,
    collector: Arc<Collector>,
    store: Arc<dyn Store>,
    /// Each case speaks as a new device, so sequence numbers from earlier cases do not collide.
    devices: std::sync::atomic::AtomicU64,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let collector = rt.block_on(async {
        let (ca, _) = crate::ca::SchoolCa::generate("Fuzz").unwrap();
        let c = Arc::new(Collector::new(store.clone(), ca, Default::default(), "t").unwrap());
        c.set_policy(
            json!({"software": {"approved": ["firefox*"], "denied": ["tor", "*vpn*", "[a-c]?x"]},
                   "removable_media": {"enforce": true, "pupil_storage": "block",
                                       "pupils": {"groups": ["pupils"], "username_patterns": ["pupil-*"]}}}),
            "fuzz",
        )
        .await
        .unwrap();
        c
    });
    Rig {
        rt,
        collector,
        store,
        devices: Default::default(),
        _dir: dir,
    }
}

/// Kinds the rules look into, with details shaped as the agent sends them.
fn realistic() -> Vec<(&'static str, Value)> {
    vec![
        (
            "usb.inserted",
            json!({"mass_storage": true, "account": "pupil", "decision": "block",
                                "antivirus_current": true, "serial": "SN1", "product": "Cruzer"}),
        ),
        (
            "software.installed",
            json!({"source": "dpkg", "name": "tor", "version": "0.4.7"}),
        ),
        (
            "software.removed",
            json!({"source": "dpkg", "name": "openvpn", "version": "2.6"}),
        ),
        (
            "software.inventory",
            json!({"items": {"dpkg": [["firefox-esr", "128.5"], ["tor", "0.4"]],
                                                "flatpak": [["org.torproject.torbrowser-launcher", "1"]]}}),
        ),
        (
            "executable.in_user_area",
            json!({"path": "/home/pupil/Downloads/tor-browser.AppImage",
                                           "type": "appimage", "sha256": "ab"}),
        ),
        (
            "antivirus.status",
            json!({"status": "stale", "reason": "signatures are 100 h old"}),
        ),
        (
            "screen.compliance",
            json!({"state": "unlocked_in_lesson", "reason": "idle 600 s"}),
        ),
        (
            "media.scanned",
            json!({"result": "infected", "detections": ["Eicar"]}),
        ),
        ("agent.started", json!({"version": "0.1.0"})),
        ("agent.stopping", json!({})),
        ("agent.uninstalled", json!({})),
        (
            "device.facts",
            json!({"model": "T14", "os": "Debian 12", "memory_bytes": 8_000_000_000u64}),
        ),
    ]
}

const DETAIL_KEYS: &[&str] = &[
    "name",
    "source",
    "path",
    "items",
    "status",
    "state",
    "result",
    "mass_storage",
    "account",
    "decision",
    "antivirus_current",
    "reason",
    "serial",
    "version",
];

/// An event as an agent could send it: a real kind (or any), real details mutated (or any JSON),
/// any user, and a time that may be out of range.
fn event() -> impl Strategy<Value = pb::Event> {
    let kinds = realistic();
    (
        prop::sample::select(kinds),
        prop_oneof![4 => Just(None), 1 => "[a-z._]{0,12}".prop_map(Some), 1 => text(20).prop_map(Some)],
        prop::collection::vec(json_edit_seed(), 0..4),
        prop_oneof![8 => 1..1000u64, 1 => Just(0u64), 1 => any::<u64>()],
        prop_oneof![4 => Just(String::new()), 2 => "pupil-[a-z]{1,6}", 1 => text(300)],
        prop_oneof![
            8 => (1_600_000_000i64..1_900_000_000, 0..1_000_000_000i32),
            1 => (any::<i64>(), any::<i32>()),
        ],
        prop::option::weighted(0.95, Just(())),
    )
        .prop_map(|((kind, details), other_kind, edits, seq, user, (seconds, nanos), has_time)| {
            let details = apply_json(&details, &edits);
            let details = match details {
                Value::Object(o) => o,
                other => [("value".to_string(), other)].into_iter().collect::<Map<_, _>>(),
            };
            pb::Event {
                seq,
                occurred_at: has_time.map(|_| prost_types::Timestamp { seconds, nanos }),
                user,
                kind: other_kind.unwrap_or_else(|| kind.to_string()),
                details: Some(struct_from_json(&details)),
            }
        })
}

/// Edits to apply to realistic details (strings with any character reach the name matchers).
fn json_edit_seed() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        (any::<usize>(), json(2)).prop_map(|(n, v)| JsonEdit::Replace(n, v)),
        (any::<usize>(), text(40).prop_map(Value::from)).prop_map(|(n, v)| JsonEdit::Replace(n, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(n, k)| JsonEdit::Remove(n, k)),
        (
            any::<usize>(),
            prop::sample::select(DETAIL_KEYS.to_vec()),
            json(1)
        )
            .prop_map(|(n, k, v)| JsonEdit::AddKey(n, k.to_string(), v)),
    ]
}

fn batch() -> impl Strategy<Value = pb::EventBatch> {
    prop::collection::vec(event(), 0..6).prop_map(|events| pb::EventBatch {
        events,
        ..Default::default()
    })
}

/// A batch the agent would really send: sequence from 1, valid kinds, times in range.
fn valid_batch() -> pb::EventBatch {
    let at = timestamp_from(Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap());
    pb::EventBatch {
        events: realistic()
            .into_iter()
            .enumerate()
            .map(|(i, (kind, details))| pb::Event {
                seq: i as u64 + 1,
                occurred_at: Some(at),
                user: "pupil-amy".into(),
                kind: kind.into(),
                details: Some(struct_from_json(details.as_object().unwrap())),
            })
            .collect(),
        ..Default::default()
    }
}

/// Judges a decoded batch as the stream does, from a device of its own; stores what is accepted
/// and reads it back: every event accepted is stored with the details sent.
fn feed(rig: &Rig, batch: pb::EventBatch, store: bool) -> Result<(), TestCaseError> {
    let n = rig
        .devices
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = format!("laptop-{n}");
    let events: Vec<_> = batch.events.into_iter().map(incoming).collect();
    let mut sent: Vec<(u64, Map<String, Value>)> = Vec::new();
    let mut highest = 0;
    for e in &events {
        // Resends are decided by the device's high-water mark: a seq at or below the highest
        // before it (in this batch, from a fresh device) is a resend and not stored. Agents
        // send in sequence order, so only a hostile batch has one out of order.
        if e.seq > highest {
            highest = e.seq;
            // The store keeps details as JSON text, and serde_json (without `float_roundtrip`)
            // may read a float back one unit in the last place away (found here: a subnormal
            // -2.1665000932007433e-308). The property is that storage loses nothing else.
            let as_stored = serde_json::from_str(&serde_json::to_string(&e.details).unwrap());
            sent.push((e.seq, as_stored.unwrap()));
        }
    }
    match rig.collector.prepare_batch(&device, events, None) {
        Ok(prepared) => {
            if store && !sent.is_empty() {
                rig.store
                    .insert_device(&crate::store::test_device(&device))
                    .unwrap();
                rig.rt.block_on(rig.collector.commit(prepared)).unwrap();
                let page = rig
                    .store
                    .events(&EventQuery {
                        device: Some(device.clone()),
                        limit: 1000,
                        ..Default::default()
                    })
                    .unwrap();
                prop_assert_eq!(page.events.len(), sent.len());
                for (seq, details) in sent {
                    let stored = page.events.iter().find(|e| e.seq == seq);
                    prop_assert_eq!(stored.map(|e| &e.details), Some(&details), "seq {}", seq);
                }
            }
        }
        Err(why) => prop_assert!(
            why.to_string().starts_with("event "),
            "the reason names the event: {}",
            why
        ),
    }
    Ok(())
}

/// Any bytes, and a real batch's bytes mutated, decoded as the stream decodes them: a decode
/// error, or a batch that is judged (accepted, or refused naming the event).
#[test]
fn batches_from_bytes() {
    let rig = rig();
    let bytes = prop_oneof![
        bytes(600),
        mutated(
            valid_batch().encode_to_vec(),
            &[
                b"\x08",
                b"\x12",
                b"\x1a",
                b"\x22",
                b"\x2a",
                b"\xff\xff\xff\xff\x0f",
                b"\x80"
            ],
            8
        ),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(config(256));
    let result = runner.run(&bytes, |raw| match pb::EventBatch::decode(raw.as_slice()) {
        Ok(batch) => feed(&rig, batch, false),
        Err(_) => Ok(()),
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Structurally valid batches with hostile contents go through validation, the judges
/// (software lists, removable media, antivirus, screen lock, lifecycle) and the store.
#[test]
fn batches_are_judged_and_stored() {
    let rig = rig();
    let mut runner = proptest::test_runner::TestRunner::new(config(256));
    if let Err(e) = runner.run(&batch(), |b| feed(&rig, b, true)) {
        panic!("{e}");
    }
}

const SETTINGS_KEYS: &[&str] = &[
    "school_name",
    "terms",
    "licences",
    "smtp",
    "webhooks",
    "digests",
    "urgent",
    "reports",
    "start",
    "end",
    "at",
    "weekday",
    "frequency",
    "url",
    "kind",
    "security",
    "port",
    "count",
];

fn full_settings() -> Value {
    json!({
        "school_name": "Fuzz Primary", "dashboard_url": "https://caretaker.school.lan:8443",
        "terms": [{"name": "Autumn", "start": "2026-09-03", "end": "2026-12-18"}],
        "licences": [{"product": "Office", "count": 30}],
        "smtp": {"host": "mail.school.lan", "port": 587, "security": "starttls",
                 "username": "ct", "password_file": "/etc/caretaker/smtp", "from": "Caretaker <ct@school.lan>"},
        "webhooks": [{"url": "https://teams.example/hook", "kind": "teams", "owner": "dsl"}],
        "digests": [{"username": "dsl", "frequency": "weekly", "at": "16:00", "weekday": "fri"}],
        "urgent": {"kinds": ["media.infected"], "bypass_tools": true, "gather_secs": 120, "max_per_hour": 4},
        "reports": [{"audience": "governors", "period": "term", "recipients": ["gov"]}]
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// The settings document: what the strict parse accepts survives storage unchanged; the
    /// lenient parse of a stored document never panics.
    #[test]
    fn settings_strict_round_trips(doc in mutated_json(full_settings(), SETTINGS_KEYS, 4)) {
        let _ = Settings::parse_lenient(&doc);
        if let Ok(s) = Settings::parse_strict(&doc) {
            let stored = serde_json::to_value(&s).unwrap();
            prop_assert_eq!(Settings::parse_strict(&stored).expect("accepted again"), s.clone());
            prop_assert_eq!(Settings::parse_lenient(&stored), s);
        }
    }
}

#[test]
fn seeds_are_valid() {
    Settings::parse_strict(&full_settings()).unwrap();
    let rig = rig();
    let events: Vec<_> = valid_batch().events.into_iter().map(incoming).collect();
    rig.collector
        .prepare_batch("laptop", events, None)
        .expect("a real batch is accepted");
}

proptest! {
    #![proptest_config(config(512))]

    /// A digest schedule the settings accept has a due time for any moment in any zone,
    /// DST gaps and folds included: never after now, never more than a week back, and a daily
    /// one always has one.
    #[test]
    fn digest_due_times_in_any_zone(
        h in 0..24u32, m in 0..60u32, weekday in prop::sample::select(vec!["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
        weekly in any::<bool>(), secs in 0i64..4_102_444_800,
        tz in prop::sample::select(vec![
            chrono_tz::Europe::London, chrono_tz::UTC, chrono_tz::America::St_Johns,
            chrono_tz::Australia::Lord_Howe, chrono_tz::Pacific::Apia, chrono_tz::Asia::Kathmandu,
        ]),
    ) {
        let s: Settings = Settings::parse_strict(&json!({"digests": [{
            "username": "dsl", "frequency": if weekly { "weekly" } else { "daily" },
            "at": format!("{h:02}:{m:02}"), "weekday": weekday,
        }]})).unwrap();
        let now = Utc.timestamp_opt(secs, 0).unwrap();
        let due = crate::digest::last_due(&s.digests[0], now, tz);
        if let Some(t) = due {
            prop_assert!(t <= now);
            prop_assert!(now - t <= chrono::Duration::days(8));
        }
        prop_assert!(weekly || due.is_some(), "a daily digest is due within the last day");
    }
}

/// PEM armour for mutated DER (the enrolment request carries a CSR as PEM text).
fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                body.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                body.push('=');
            }
        }
    }
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A device's real certificate request, as the agent makes it.
fn real_csr_der() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    csr.der().to_vec()
}

/// The CSR an enrolling agent sends: any text, a real request's DER mutated and re-armoured.
/// Refused with a reason, or signed naming the device and nothing the request asked for.
#[test]
fn enrolment_csrs() {
    let (ca, _) = crate::ca::SchoolCa::generate("Fuzz").unwrap();
    let seed = real_csr_der();
    assert!(
        ca.sign_device_csr(&pem("CERTIFICATE REQUEST", &seed), "d")
            .is_ok()
    );
    let csrs = prop_oneof![
        text(600),
        mutated(
            seed.clone(),
            &[
                b"\x30\x82",
                b"\x06\x03\x55\x04\x03",
                b"\x0c\x01A",
                b"\xa0\x00",
                b"\x00"
            ],
            6
        )
        .prop_map(|der| pem("CERTIFICATE REQUEST", &der)),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(config(256));
    let result = runner.run(&csrs, |csr| {
        match ca.sign_device_csr(&csr, "device-1") {
            Ok(cert) => {
                let der = crate::ca::pem_to_der(&cert).expect("a certificate");
                let name = crate::ca::common_name(&der);
                prop_assert_eq!(name.as_deref(), Some("device-1"));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
