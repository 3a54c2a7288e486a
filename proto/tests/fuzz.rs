//! Property-based fuzzing of what `caretaker-proto` parses from outside: the policy document, the
//! enrolment bundle, the uninstall code, protobuf details and timestamps. Never a panic; where there
//! is an inverse, it holds. `PROPTEST_CASES=N` runs longer (see BENCHMARKS.md).

#[path = "support/fuzz.rs"]
mod support;

use caretaker_proto::bundle::{BUNDLE_VERSION, Bundle};
use caretaker_proto::convert::{json_from_struct, struct_from_json, time_from, timestamp_from};
use caretaker_proto::policy::PolicyDocument;
use caretaker_proto::policy::software::NamePattern;
use caretaker_proto::uninstall;
use proptest::prelude::*;
use prost::Message;
use serde_json::{Value, json};
use support::*;

/// A policy with every section filled in, so mutations reach every validator.
fn full_policy() -> Value {
    json!({
        "description": "Fuzz school",
        "screen_lock": {
            "enabled": true, "idle_timeout_secs": 300,
            "locker_commands": ["xdg-screensaver lock", "loginctl lock-session"],
            "school_hours": {"start": "08:30", "end": "15:30", "days": ["mon", "tue", "wed", "thu", "fri"]}
        },
        "antivirus": {"max_signature_age_hours": 72, "check_interval_secs": 3600},
        "software": {
            "approved": ["firefox*", "libreoffice-[a-z]*"], "denied": ["tor", "*vpn*"],
            "rescan_interval_secs": 3600, "watch_home_executables": true
        },
        "removable_media": {
            "enforce": true, "pupil_storage": "allow_after_scan", "staff_storage": "allow",
            "pupils": {"groups": ["pupils"], "username_patterns": ["pupil-*"]},
            "allowed_devices": ["0781:5567"], "allowed_serials": ["SN1"],
            "permissions": [{"serial": "SN2", "until": "2026-12-01T12:00:00Z", "reason": "lesson"}],
            "scan_on_mount": true
        }
    })
}

const POLICY_KEYS: &[&str] = &[
    "description",
    "screen_lock",
    "enabled",
    "idle_timeout_secs",
    "locker_commands",
    "school_hours",
    "start",
    "end",
    "days",
    "antivirus",
    "max_signature_age_hours",
    "software",
    "approved",
    "denied",
    "rescan_interval_secs",
    "removable_media",
    "permissions",
    "until",
    "device_id",
    "serial",
    "user",
    "pupil_storage",
];

/// The seeds are valid, so the mutations start from something the parsers accept.
#[test]
fn seeds_are_valid() {
    PolicyDocument::parse_strict(&full_policy()).unwrap();
    Bundle::parse("b", &sample_bundle().to_json()).unwrap();
}

proptest! {
    #![proptest_config(config(512))]

    /// The collector's strict parse never panics; what it accepts survives a round trip through
    /// storage (JSON text) and the agent's lenient parse unchanged.
    #[test]
    fn policy_strict_accepts_only_what_round_trips(doc in mutated_json(full_policy(), POLICY_KEYS, 4)) {
        if let Ok(p) = PolicyDocument::parse_strict(&doc) {
            let text = serde_json::to_string(&p).unwrap();
            let again = PolicyDocument::parse_lenient(&text).expect("an accepted policy reads back");
            prop_assert_eq!(&again, &p);
            let strict = PolicyDocument::parse_strict(&serde_json::to_value(&p).unwrap())
                .expect("an accepted policy is accepted again");
            prop_assert_eq!(strict, p);
        }
    }

    /// The agent's lenient parse of a cached or received policy: any text, no panic.
    #[test]
    fn policy_lenient_takes_any_text(text in prop_oneof![
        text(2000),
        mutated(full_policy().to_string().into_bytes(), &[b"{", b"}", b"\"", b":", b",", b"[", b"]", b"null", b"1e999"], 6)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        if let Ok(p) = PolicyDocument::parse_lenient(&text) {
            prop_assert!(p.validate().is_ok());
        }
    }

    /// Name patterns: compiling and matching any text never panics, a pattern without
    /// wildcards matches its own text in any case, and `*` matches everything.
    #[test]
    fn name_patterns_never_panic(pattern in text(40), name in text(60)) {
        if let Ok(p) = NamePattern::new(&pattern) {
            let _ = p.matches(&name);
            if p.is_exact() {
                prop_assert!(p.matches(&pattern));
            }
        }
        prop_assert!(NamePattern::new("*").unwrap().matches(&name));
    }

    /// A typed uninstall code: any text is refused or normalised to twelve alphabet characters.
    #[test]
    fn uninstall_normalise_gives_a_code_or_nothing(typed in text(40)) {
        if let Some(code) = uninstall::normalise(&typed) {
            prop_assert_eq!(code.len(), uninstall::CODE_LEN);
            prop_assert!(code.bytes().all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)));
            prop_assert_eq!(uninstall::normalise(&code), Some(code.clone()));
        }
        let _ = uninstall::verify("device", &typed, &"0".repeat(64));
    }

    /// The code a collector derives verifies on the laptop however it is typed (case, spaces,
    /// dashes, O/I/L), and a code with one character changed does not.
    #[test]
    fn uninstall_code_verifies_as_typed(
        secret in bytes(80), device in "[a-z0-9-]{1,40}", lower in any::<bool>(),
        spaced in any::<bool>(), change in 0..12usize, to in 0..31u8,
    ) {
        let code = uninstall::derive_code(&secret, &device);
        let hash = uninstall::code_hash(&device, &code).expect("a derived code is a code");
        let mut typed = code.replace('0', "O").replace('1', "l");
        if lower { typed = typed.to_lowercase(); }
        if spaced { typed = typed.replace('-', " "); }
        prop_assert!(uninstall::verify(&device, &typed, &hash));
        let canon = uninstall::normalise(&code).unwrap();
        let alphabet = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let old = canon.as_bytes()[change];
        let pos = alphabet.iter().position(|c| *c == old).unwrap();
        let new = alphabet[(pos + 1 + to as usize) % 32] as char;
        let mut wrong = canon.clone();
        wrong.replace_range(change..change + 1, &new.to_string());
        prop_assert!(!uninstall::verify(&device, &wrong, &hash));
    }

    /// An enrolment bundle from disk: any bytes give a bundle or a clear error; an accepted one
    /// writes back to the same bundle.
    #[test]
    fn bundle_parse_never_panics(raw in prop_oneof![
        bytes(600),
        mutated(sample_bundle().to_json(), &[b"\"", b":", b",", b"{", b"}", b"2", b"null", b"-1"], 6),
        mutated_json(serde_json::to_value(sample_bundle()).unwrap(), &["caretaker_bundle", "token", "collectors", "expires_at"], 3)
            .prop_map(|v| v.to_string().into_bytes()),
    ]) {
        match Bundle::parse("b.caretaker", &raw) {
            Ok(b) => {
                prop_assert_eq!(Bundle::parse("b", &b.to_json()).unwrap(), b.clone());
                let _ = b.check_usable("b", chrono::Utc::now());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Event details cross the wire as a protobuf Struct: JSON with integers (below 2^53) and
    /// fractional floats comes back equal; any Struct decoded from bytes converts without panic.
    #[test]
    fn details_round_trip_through_struct(v in json(4), raw in bytes(300)) {
        let exact = exact_numbers(&v);
        let obj = match exact {
            Value::Object(o) => o,
            other => [("v".to_string(), other)].into_iter().collect(),
        };
        prop_assert_eq!(json_from_struct(&struct_from_json(&obj)), obj.clone());
        if let Ok(s) = prost_types::Struct::decode(raw.as_slice()) {
            let _ = json_from_struct(&s);
        }
    }

    /// Timestamps from the wire: out of range is `None`, in range round-trips.
    #[test]
    fn timestamps_in_range_round_trip(seconds in any::<i64>(), nanos in any::<i32>(), near in -1i64 << 40..1i64 << 40) {
        for ts in [
            prost_types::Timestamp { seconds, nanos },
            prost_types::Timestamp { seconds: near, nanos: nanos.rem_euclid(1_000_000_000) },
        ] {
            if let Some(t) = time_from(&ts) {
                prop_assert_eq!(timestamp_from(t), ts);
            }
        }
    }
}

/// Makes every number one the Struct conversion keeps exactly (it carries doubles).
fn exact_numbers(v: &Value) -> Value {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() != 0.0 {
                Value::from(f)
            } else if f.abs() < 9_007_199_254_740_992.0 {
                Value::from(f as i64)
            } else {
                Value::from(0)
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(exact_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), exact_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn sample_bundle() -> Bundle {
    use chrono::TimeZone;
    Bundle {
        caretaker_bundle: BUNDLE_VERSION,
        label: "Year 5 trolley".into(),
        collectors: vec!["caretaker.school.lan:7443".into(), "10.0.0.5:7443".into()],
        ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
        token: "cte_abc".into(),
        uses: 30,
        created_at: chrono::Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap(),
        expires_at: chrono::Utc.with_ymd_and_hms(2026, 11, 15, 9, 0, 0).unwrap(),
    }
}
