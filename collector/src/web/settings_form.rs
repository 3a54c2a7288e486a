//! The settings page's forms: one per section, turned into the settings document, which is then checked exactly as the command line checks it.

use serde_json::{Value, json};

use super::policy_form::{Fields, FormError, lines, number, one};

/// Splits a "a, b, c" line into at most `n` trimmed parts.
fn parts(line: &str, n: usize) -> Vec<String> {
    line.splitn(n, ',').map(|p| p.trim().to_string()).collect()
}

/// The field `name`'s lines as a JSON list: each split into exactly `n` parts and made into
/// an entry by `entry`; a line with fewer parts, or that `entry` refuses, is an error that
/// names it: "{what} line 2 should read {shape}.".
fn rows(
    f: &Fields,
    name: &str,
    n: usize,
    what: &'static str,
    shape: &'static str,
    entry: impl Fn(&[String]) -> Option<Value>,
) -> Result<Value, FormError> {
    lines(one(f, name))
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = parts(l, n);
            (p.len() == n)
                .then(|| entry(&p))
                .flatten()
                .ok_or(FormError::BadLine {
                    what,
                    line: i + 1,
                    shape,
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// Applies one section's form to a copy of the current settings document.
pub fn apply(current: &Value, section: &str, f: &Fields) -> Result<Value, FormError> {
    let mut doc = current.clone();
    if !doc.is_object() {
        doc = json!({});
    }
    let set = |doc: &mut Value, k: &str, v: Value| {
        doc.as_object_mut().expect("an object").insert(k.into(), v);
    };
    match section {
        "school" => {
            set(&mut doc, "school_name", json!(one(f, "school_name")));
            set(&mut doc, "dashboard_url", json!(one(f, "dashboard_url")));
        }
        "terms" => {
            let terms = rows(
                f,
                "terms",
                3,
                "Term",
                "\"Name, first day, last day\" (dates as 2026-09-03)",
                |p| Some(json!({"name": p[0], "start": p[1], "end": p[2]})),
            )?;
            set(&mut doc, "terms", terms);
        }
        "licences" => {
            let licences = rows(
                f,
                "licences",
                2,
                "Licence",
                "\"product, number of licences\"",
                |p| {
                    let count = p[1].parse::<u64>().ok()?;
                    (!p[0].is_empty()).then(|| json!({"product": p[0], "count": count}))
                },
            )?;
            set(&mut doc, "licences", licences);
        }
        "mail" => {
            if one(f, "host").is_empty() {
                set(&mut doc, "smtp", Value::Null);
            } else {
                let port: u16 = one(f, "port").parse().map_err(|_| {
                    FormError::Invalid("The port must be a number (587 for STARTTLS).")
                })?;
                set(
                    &mut doc,
                    "smtp",
                    json!({"host": one(f, "host"), "port": port, "security": one(f, "security"),
                           "username": one(f, "username"), "password_file": one(f, "password_file"),
                           "from": one(f, "from"), "ca_file": one(f, "ca_file")}),
                );
            }
        }
        "digests" => {
            let mut out = Vec::new();
            for user in f
                .iter()
                .filter(|(k, _)| k == "dsl")
                .map(|(_, v)| v.as_str())
            {
                if one(f, &format!("on.{user}")).is_empty() {
                    continue;
                }
                out.push(json!({
                    "username": user,
                    "frequency": one(f, &format!("frequency.{user}")),
                    "at": one(f, &format!("at.{user}")),
                    "weekday": one(f, &format!("weekday.{user}")),
                }));
            }
            set(&mut doc, "digests", json!(out));
        }
        "webhooks" => {
            let out = rows(
                f,
                "webhooks",
                3,
                "Webhook",
                "\"generic or teams, address, DSL's username\"",
                |p| Some(json!({"kind": p[0], "url": p[1], "owner": p[2]})),
            )?;
            set(&mut doc, "webhooks", out);
        }
        "urgent" => {
            set(
                &mut doc,
                "urgent",
                json!({"kinds": lines(one(f, "kinds")), "bypass_tools": !one(f, "bypass_tools").is_empty(),
                       "gather_secs": number(f, "gather_secs", "The gathering time")?,
                       "max_per_hour": number(f, "max_per_hour", "The hourly cap")?}),
            );
        }
        "reports" => {
            let out = rows(
                f,
                "reports",
                3,
                "Report",
                "\"governors or dsl, week or month or term, usernames\"",
                |p| {
                    let recipients: Vec<&str> = p[2].split_whitespace().collect();
                    Some(json!({"audience": p[0], "period": p[1], "recipients": recipients}))
                },
            )?;
            set(&mut doc, "reports", out);
        }
        "retention" => {
            let days = |k: &str, what: &'static str| {
                one(f, k)
                    .parse::<u32>()
                    .map_err(|_| FormError::NotDays { what })
            };
            set(
                &mut doc,
                "retention",
                json!({"technical_days": days("technical_days", "Technical events")?,
                       "safeguarding_days": days("safeguarding_days", "Safeguarding records")?,
                       "audit_days": days("audit_days", "The audit log")?,
                       "digests_days": days("digests_days", "Digests")?}),
            );
        }
        // A checkbox sends nothing when unticked.
        "usernames" => set(
            &mut doc,
            "pseudonymise_usernames",
            json!(one(f, "pseudonymise_usernames") == "yes"),
        ),
        other => {
            return Err(FormError::NoSection {
                document: "settings",
                section: other.to_string(),
            });
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::web::test_rig::fields;

    #[test]
    fn lines_become_terms_and_licences_and_mistakes_say_which_line() {
        let doc = apply(
            &json!({}),
            "terms",
            &fields(&[("terms", "Autumn 2026, 2026-09-03, 2026-12-18\n")]),
        )
        .unwrap();
        let s = Settings::parse_strict(&doc).unwrap();
        assert_eq!(s.terms[0].name, "Autumn 2026");
        let err = apply(
            &json!({}),
            "licences",
            &fields(&[("licences", "office, 300\nbad line")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn retention_days_from_the_form_and_a_short_one_refused_by_name() {
        let f = |tech: &str| {
            fields(&[
                ("technical_days", tech),
                ("safeguarding_days", "2557"),
                ("audit_days", "365"),
                ("digests_days", "365"),
            ])
        };
        let doc = apply(&json!({}), "retention", &f("450")).unwrap();
        assert_eq!(
            Settings::parse_strict(&doc)
                .unwrap()
                .retention
                .technical_days,
            450
        );
        let doc = apply(&json!({}), "retention", &f("30")).unwrap();
        let e = Settings::parse_strict(&doc).unwrap_err().to_string();
        assert!(e.contains("retention.technical_days"), "{e}");
        assert!(apply(&json!({}), "retention", &f("a year")).is_err());
    }

    #[test]
    fn pseudonymising_usernames_is_a_checkbox_that_keeps_the_rest() {
        let on = fields(&[("pseudonymise_usernames", "yes")]);
        let doc = apply(&json!({"school_name": "Hill"}), "usernames", &on).unwrap();
        let s = Settings::parse_strict(&doc).unwrap();
        assert!(s.pseudonymise_usernames);
        assert_eq!(s.school_name, "Hill");
        let doc = apply(&doc, "usernames", &fields(&[])).unwrap();
        assert!(!Settings::parse_strict(&doc).unwrap().pseudonymise_usernames);
    }

    #[test]
    fn digest_rows_for_each_dsl() {
        let f = fields(&[
            ("dsl", "amy"),
            ("on.amy", "1"),
            ("frequency.amy", "weekly"),
            ("at.amy", "15:30"),
            ("weekday.amy", "fri"),
            ("dsl", "ben"),
            ("frequency.ben", "daily"),
            ("at.ben", "08:00"),
            ("weekday.ben", "mon"),
        ]);
        let doc = apply(&json!({}), "digests", &f).unwrap();
        let s = Settings::parse_strict(&doc).unwrap();
        assert_eq!(s.digests.len(), 1, "ben's box is not ticked");
        assert_eq!(
            (s.digests[0].frequency.as_str(), s.digests[0].at.as_str()),
            ("weekly", "15:30")
        );
    }
}
