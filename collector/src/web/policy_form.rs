//! The policy page's forms: one per section, turned into the policy document's JSON, and a readable diff between two versions.
//!
//! A form changes only its own section; the document is then validated exactly as the API
//! validates it, so the page cannot store what the API would refuse.

use serde_json::{Map, Value, json};

/// A submitted form: every (name, value) pair, in order (checkbox groups repeat a name).
pub type Fields = Vec<(String, String)>;

/// Why a section's form (policy or settings) could not become a document. Each message is
/// what the form shows above the section, so it names the field and what it takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// The address names no section: a stale page or a hand-made request, not a typing slip.
    #[error("There is no {document} section called {section:?}.")]
    NoSection {
        document: &'static str,
        section: String,
    },
    #[error("{what} must be a whole number.")]
    NotANumber { what: &'static str },
    #[error("{what} must be a whole number of days (0 keeps them).")]
    NotDays { what: &'static str },
    /// A line of a list field without its parts; `line` counts from 1.
    #[error("{what} line {line} should read {shape}.")]
    BadLine {
        what: &'static str,
        line: usize,
        shape: &'static str,
    },
    /// Anything else typed that cannot be used, in words for the person.
    #[error("{0}")]
    Invalid(&'static str),
}

/// The first value the form sent under `name`, trimmed; empty when it sent none.
pub(super) fn one<'a>(f: &'a Fields, name: &str) -> &'a str {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

fn all<'a>(f: &'a Fields, name: &str) -> Vec<&'a str> {
    f.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .collect()
}

fn checked(f: &Fields, name: &str) -> bool {
    !one(f, name).is_empty()
}

/// The field `name` as a whole number; `what` names it in the error.
pub(super) fn number(f: &Fields, name: &str, what: &'static str) -> Result<u64, FormError> {
    one(f, name)
        .parse::<u64>()
        .map_err(|_| FormError::NotANumber { what })
}

/// One entry a line, blank lines and surrounding spaces dropped.
pub fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn section_mut<'a>(doc: &'a mut Value, name: &str) -> &'a mut Map<String, Value> {
    if !doc.is_object() {
        *doc = json!({});
    }
    let obj = doc.as_object_mut().expect("made an object above");
    let entry = obj.entry(name.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("made an object above")
}

/// Applies one section's form to a copy of the current document.
pub fn apply(
    current: &Value,
    section: &str,
    f: &Fields,
    now: chrono::DateTime<chrono::Utc>,
    tz: chrono_tz::Tz,
) -> Result<Value, FormError> {
    let mut doc = current.clone();
    match section {
        "screen-lock" => {
            let minutes = number(f, "idle_minutes", "The idle time")?;
            let s = section_mut(&mut doc, "screen_lock");
            s.insert("enabled".into(), json!(checked(f, "enabled")));
            s.insert(
                "idle_timeout_secs".into(),
                json!(minutes.saturating_mul(60)),
            );
            s.insert(
                "inhibitor_excuses_lock".into(),
                json!(checked(f, "inhibitor")),
            );
            s.insert(
                "windows_inactivity_limit".into(),
                json!(checked(f, "windows_limit")),
            );
            s.insert(
                "school_hours".into(),
                json!({"start": one(f, "start"), "end": one(f, "end"), "days": all(f, "day")}),
            );
        }
        "antivirus" => {
            let hours = number(f, "max_age_hours", "The signature age")?;
            let minutes = number(f, "check_minutes", "The check interval")?;
            let s = section_mut(&mut doc, "antivirus");
            s.insert("max_signature_age_hours".into(), json!(hours));
            s.insert(
                "check_interval_secs".into(),
                json!(minutes.saturating_mul(60)),
            );
        }
        "software" => {
            let minutes = number(f, "rescan_minutes", "The rescan interval")?;
            let s = section_mut(&mut doc, "software");
            s.insert("approved".into(), json!(lines(one(f, "approved"))));
            s.insert("denied".into(), json!(lines(one(f, "denied"))));
            s.insert(
                "watch_home_executables".into(),
                json!(checked(f, "watch_home")),
            );
            s.insert(
                "rescan_interval_secs".into(),
                json!(minutes.saturating_mul(60)),
            );
        }
        "removable-media" => {
            let s = section_mut(&mut doc, "removable_media");
            s.insert("enforce".into(), json!(checked(f, "enforce")));
            s.insert("pupil_storage".into(), json!(one(f, "pupil_storage")));
            s.insert("staff_storage".into(), json!(one(f, "staff_storage")));
            s.insert(
                "pupils".into(),
                json!({"groups": lines(one(f, "pupil_groups")), "username_patterns": lines(one(f, "pupil_patterns"))}),
            );
            s.insert(
                "allowed_serials".into(),
                json!(lines(one(f, "allowed_serials"))),
            );
            s.insert("scan_on_mount".into(), json!(checked(f, "scan_on_mount")));
            let remove: Vec<usize> = all(f, "remove")
                .iter()
                .filter_map(|v| v.parse().ok())
                .collect();
            let mut permissions: Vec<Value> = s
                .get("permissions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !remove.contains(i))
                .map(|(_, p)| p)
                .collect();
            let serial = one(f, "perm_serial");
            let user = one(f, "perm_user");
            let until = one(f, "perm_until");
            if !serial.is_empty() || !user.is_empty() || !until.is_empty() {
                if serial.is_empty() && user.is_empty() {
                    return Err(FormError::Invalid(
                        "A permission needs a stick serial or a user.",
                    ));
                }
                let local = chrono::NaiveDateTime::parse_from_str(until, "%Y-%m-%dT%H:%M")
                    .map_err(|_| FormError::Invalid("Say until when the permission lasts."))?;
                let until = local
                    .and_local_timezone(tz)
                    .earliest()
                    .ok_or(FormError::Invalid(
                        "That time does not exist in the school's time zone.",
                    ))?
                    .with_timezone(&chrono::Utc);
                if until <= now {
                    return Err(FormError::Invalid(
                        "A new permission must end in the future.",
                    ));
                }
                let mut p = json!({"until": until.to_rfc3339()});
                let reason = one(f, "perm_reason");
                for (k, v) in [("serial", serial), ("user", user), ("reason", reason)] {
                    if !v.is_empty() {
                        p[k] = json!(v);
                    }
                }
                permissions.push(p);
            }
            s.insert("permissions".into(), Value::Array(permissions));
        }
        other => {
            return Err(FormError::NoSection {
                document: "policy",
                section: other.to_string(),
            });
        }
    }
    Ok(doc)
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "nothing".into(),
        other => other.to_string(),
    }
}

/// What changed from `old` to `new`, one readable line per setting (lists by item).
pub fn diff(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                walk(&join(k), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for item in b.iter().filter(|i| !a.contains(i)) {
                out.push(format!("{path}: added {}", show(item)));
            }
            for item in a.iter().filter(|i| !b.contains(i)) {
                out.push(format!("{path}: removed {}", show(item)));
            }
        }
        _ => out.push(format!("{path}: {} → {}", show(old), show(new))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::test_rig::fields;
    use caretaker_proto::policy::PolicyDocument;

    fn default_doc() -> Value {
        serde_json::to_value(PolicyDocument::default()).unwrap()
    }

    #[test]
    fn the_screen_lock_form_sets_only_its_section_and_validates() {
        let f = fields(&[
            ("enabled", "1"),
            ("idle_minutes", "10"),
            ("start", "08:30"),
            ("end", "15:30"),
            ("day", "mon"),
            ("day", "tue"),
        ]);
        let doc = apply(
            &default_doc(),
            "screen-lock",
            &f,
            chrono::Utc::now(),
            crate::timefmt::DEFAULT_TZ,
        )
        .unwrap();
        assert_eq!(doc["screen_lock"]["idle_timeout_secs"], 600);
        assert_eq!(
            doc["screen_lock"]["school_hours"]["days"],
            json!(["mon", "tue"])
        );
        assert_eq!(doc["antivirus"], default_doc()["antivirus"]);
        PolicyDocument::parse_strict(&doc).expect("valid");
        let d = diff(&default_doc(), &doc);
        assert!(
            d.contains(&"screen_lock.idle_timeout_secs: 300 → 600".to_string()),
            "{d:?}"
        );
        assert!(
            d.contains(&"screen_lock.school_hours.days: removed \"wed\"".to_string()),
            "{d:?}"
        );
        // The Windows inactivity limit box was left unticked: the limit is not set.
        assert_eq!(doc["screen_lock"]["windows_inactivity_limit"], false);
        assert!(
            d.contains(&"screen_lock.windows_inactivity_limit: true → false".to_string()),
            "{d:?}"
        );
    }

    #[test]
    fn lists_are_one_a_line_and_a_bad_pattern_is_refused_by_the_schema() {
        let f = fields(&[
            ("approved", "gimp\n\n  libreoffice* \n"),
            ("denied", "[steam"),
            ("rescan_minutes", "60"),
        ]);
        let doc = apply(
            &default_doc(),
            "software",
            &f,
            chrono::Utc::now(),
            crate::timefmt::DEFAULT_TZ,
        )
        .unwrap();
        assert_eq!(doc["software"]["approved"], json!(["gimp", "libreoffice*"]));
        assert!(PolicyDocument::parse_strict(&doc).is_err());
    }

    #[test]
    fn permissions_are_added_in_school_time_and_removed_by_index() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-06-01T08:00:00Z")
            .unwrap()
            .to_utc();
        let modes = [("pupil_storage", "block"), ("staff_storage", "allow")];
        let f = fields(&[
            modes[0],
            modes[1],
            ("perm_serial", "SN1"),
            ("perm_until", "2026-06-01T15:00"),
            ("perm_reason", "art"),
        ]);
        let doc = apply(
            &default_doc(),
            "removable-media",
            &f,
            now,
            crate::timefmt::DEFAULT_TZ,
        )
        .unwrap();
        let p = &doc["removable_media"]["permissions"][0];
        assert_eq!(
            p["until"], "2026-06-01T14:00:00+00:00",
            "15:00 BST is 14:00 UTC"
        );
        assert_eq!(p["serial"], "SN1");
        PolicyDocument::parse_strict(&doc).expect("valid");
        let doc2 = apply(
            &doc,
            "removable-media",
            &fields(&[modes[0], modes[1], ("remove", "0")]),
            now,
            crate::timefmt::DEFAULT_TZ,
        )
        .unwrap();
        assert_eq!(doc2["removable_media"]["permissions"], json!([]));
        let past = fields(&[("perm_serial", "SN1"), ("perm_until", "2026-05-01T15:00")]);
        assert!(
            apply(
                &default_doc(),
                "removable-media",
                &past,
                now,
                crate::timefmt::DEFAULT_TZ
            )
            .is_err()
        );
    }

    #[test]
    fn a_bad_number_says_which() {
        let err = apply(
            &default_doc(),
            "antivirus",
            &fields(&[("max_age_hours", "x")]),
            chrono::Utc::now(),
            crate::timefmt::DEFAULT_TZ,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("signature age"), "{err}");
    }
}
