//! The antivirus probe's pure decision: each product's status and why, the device's one status
//! over all its products, and the `antivirus.status` event's details.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::parse::ProductReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AvStatus {
    Current,
    Stale,
    Disabled,
    Missing,
    Unknown,
}

impl AvStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AvStatus::Current => "current",
            AvStatus::Stale => "stale",
            AvStatus::Disabled => "disabled",
            AvStatus::Missing => "missing",
            AvStatus::Unknown => "unknown",
        }
    }

    /// Lower is better protected. With several products (Windows with a third-party suite and
    /// Defender in passive mode) the device is as good as its best product. A stale product
    /// outranks an unknown one because it is a definite, actionable finding.
    fn rank(self) -> u8 {
        match self {
            AvStatus::Current => 0,
            AvStatus::Stale => 1,
            AvStatus::Unknown => 2,
            AvStatus::Disabled => 3,
            AvStatus::Missing => 4,
        }
    }
}

/// A clock that is wrong by less than this is not worth an `unknown`.
const FUTURE_TOLERANCE_HOURS: i64 = 24;

fn with_notes(msg: String, notes: &[String]) -> String {
    if notes.is_empty() {
        msg
    } else {
        format!("{msg} ({})", notes.join("; "))
    }
}

/// Signature age in whole hours (negative ages, from small clock skews, count as 0).
pub fn signature_age_hours(built_at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (now - built_at).num_hours().max(0)
}

/// The status of one product and why.
pub fn assess_product(
    p: &ProductReport,
    max_age_hours: u32,
    now: DateTime<Utc>,
) -> (AvStatus, String) {
    if p.enabled == Some(false) {
        return (
            AvStatus::Disabled,
            with_notes("turned off".into(), &p.notes),
        );
    }
    if p.service_responding == Some(false) {
        return (
            AvStatus::Disabled,
            with_notes("service not responding".into(), &p.notes),
        );
    }
    if p.realtime_required && p.realtime_protection == Some(false) {
        return (
            AvStatus::Disabled,
            with_notes("real-time protection is off".into(), &p.notes),
        );
    }
    match (p.signatures_built_at, p.signatures_up_to_date) {
        (Some(built), _) => {
            if built - now > Duration::hours(FUTURE_TOLERANCE_HOURS) {
                return (
                    AvStatus::Unknown,
                    format!(
                        "signatures claim to be built in the future ({}); is the clock wrong?",
                        built.to_rfc3339()
                    ),
                );
            }
            let age = signature_age_hours(built, now);
            if now - built > Duration::hours(i64::from(max_age_hours)) {
                (
                    AvStatus::Stale,
                    format!("signatures are {age} h old (limit {max_age_hours} h)"),
                )
            } else {
                (
                    AvStatus::Current,
                    format!("signatures are {age} h old (limit {max_age_hours} h)"),
                )
            }
        }
        (None, Some(false)) => (
            AvStatus::Stale,
            "the product reports its signatures out of date".into(),
        ),
        (None, Some(true)) => (
            AvStatus::Current,
            "the product reports its signatures up to date".into(),
        ),
        (None, None) => (
            AvStatus::Unknown,
            with_notes("signature build time unknown".into(), &p.notes),
        ),
    }
}

/// The device's status over all products.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub status: AvStatus,
    pub reason: String,
    /// Per product, in the order given: its own status and reason.
    pub per_product: Vec<(AvStatus, String)>,
}

/// Normalises the products into one status. `absent_reason` says what was looked for when
/// no product was found (e.g. which database directory and socket).
pub fn normalise(
    products: &[ProductReport],
    max_age_hours: u32,
    now: DateTime<Utc>,
    absent_reason: &str,
) -> Assessment {
    let per_product: Vec<(AvStatus, String)> = products
        .iter()
        .map(|p| assess_product(p, max_age_hours, now))
        .collect();
    let Some(best) = per_product.iter().map(|(s, _)| *s).min_by_key(|s| s.rank()) else {
        return Assessment {
            status: AvStatus::Missing,
            reason: absent_reason.to_owned(),
            per_product,
        };
    };
    // The best product's reason first, so the headline explains the headline status.
    let mut order: Vec<usize> = (0..products.len()).collect();
    order.sort_by_key(|&i| per_product[i].0.rank());
    let reason = order
        .iter()
        .map(|&i| format!("{}: {}", products[i].name, per_product[i].1))
        .collect::<Vec<_>>()
        .join("; ");
    Assessment {
        status: best,
        reason,
        per_product,
    }
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

fn opt_bool(v: Option<bool>) -> Value {
    v.map_or(Value::Null, Value::Bool)
}

fn opt_time(v: Option<DateTime<Utc>>) -> Value {
    v.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    })
}

/// The `antivirus.status` event's details.
pub fn status_details(
    products: &[ProductReport],
    assessment: &Assessment,
    max_age_hours: u32,
    now: DateTime<Utc>,
) -> Map<String, Value> {
    let products_json: Vec<Value> = products
        .iter()
        .zip(&assessment.per_product)
        .map(|(p, (status, reason))| {
            let mut m = json!({
                "name": p.name,
                "engine_version": opt_str(&p.engine_version),
                "signature_version": opt_str(&p.signature_version),
                "signatures_built_at": opt_time(p.signatures_built_at),
                "signature_age_hours": p.signatures_built_at.map(|b| signature_age_hours(b, now)),
                "realtime_protection": opt_bool(p.realtime_protection),
                "service_responding": opt_bool(p.service_responding),
                "status": status.as_str(),
                "reason": reason,
            });
            if let (Some(u), Value::Object(obj)) = (&p.updater, &mut m) {
                obj.insert(
                    "updater".into(),
                    json!({
                        "name": u.name,
                        "running": opt_bool(u.running),
                        "last_run_at": opt_time(u.last_run_at),
                        "last_run_ok": opt_bool(u.last_run_ok),
                        "last_error": opt_str(&u.last_error),
                    }),
                );
            }
            m
        })
        .collect();
    let mut details = Map::new();
    details.insert("products".into(), Value::Array(products_json));
    details.insert("status".into(), assessment.status.as_str().into());
    details.insert("reason".into(), assessment.reason.clone().into());
    details.insert("max_signature_age_hours".into(), max_age_hours.into());
    details
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::antivirus::parse::UpdaterInfo;
    use crate::probe::antivirus::parse::fixtures::t;

    fn clam(built: &str) -> ProductReport {
        let mut p = ProductReport::named("ClamAV");
        p.signatures_built_at = Some(t(built));
        p.service_responding = Some(true);
        p.realtime_protection = Some(false);
        p
    }

    const NOW: &str = "2026-11-23T12:00:00Z";

    #[test]
    fn assess_current_stale_and_boundary() {
        let now = t(NOW);
        assert_eq!(
            assess_product(&clam("2026-11-23T07:00:00Z"), 72, now),
            (
                AvStatus::Current,
                "signatures are 5 h old (limit 72 h)".into()
            )
        );
        assert_eq!(
            assess_product(&clam("2026-11-20T12:00:00Z"), 72, now),
            (
                AvStatus::Current,
                "signatures are 72 h old (limit 72 h)".into()
            )
        );
        assert_eq!(
            assess_product(&clam("2026-11-20T11:59:00Z"), 72, now),
            (
                AvStatus::Stale,
                "signatures are 72 h old (limit 72 h)".into()
            )
        );
        assert_eq!(
            assess_product(&clam("2026-11-13T12:00:00Z"), 72, now),
            (
                AvStatus::Stale,
                "signatures are 240 h old (limit 72 h)".into()
            )
        );
    }

    #[test]
    fn assess_disabled_unknown_and_clock_skew() {
        let now = t(NOW);
        let mut down = clam("2026-11-23T07:00:00Z");
        down.service_responding = Some(false);
        down.notes
            .push("clamd not answering on /run/x.ctl: connection refused".into());
        assert_eq!(
            assess_product(&down, 72, now),
            (
                AvStatus::Disabled,
                "service not responding (clamd not answering on /run/x.ctl: connection refused)"
                    .into()
            )
        );
        let mut no_time = clam("2026-11-23T07:00:00Z");
        no_time.signatures_built_at = None;
        no_time
            .notes
            .push("database header has no readable build time".into());
        assert_eq!(
            assess_product(&no_time, 72, now),
            (
                AvStatus::Unknown,
                "signature build time unknown (database header has no readable build time)".into()
            )
        );
        assert_eq!(
            assess_product(&clam("2026-11-23T14:00:00Z"), 72, now).0,
            AvStatus::Current
        );
        assert_eq!(
            assess_product(&clam("2026-11-30T00:00:00Z"), 72, now).0,
            AvStatus::Unknown
        );
        // ClamAV without on-access scanning is not disabled; a Windows product would be.
        let mut rt = clam("2026-11-23T07:00:00Z");
        assert_eq!(assess_product(&rt, 72, now).0, AvStatus::Current);
        rt.realtime_required = true;
        assert_eq!(
            assess_product(&rt, 72, now),
            (AvStatus::Disabled, "real-time protection is off".into())
        );
    }

    #[test]
    fn normalise_combines_products_best_first() {
        let now = t(NOW);
        assert_eq!(
            normalise(&[], 72, now, "nothing in /var/lib/clamav"),
            Assessment {
                status: AvStatus::Missing,
                reason: "nothing in /var/lib/clamav".into(),
                per_product: vec![]
            }
        );
        let mut defender_passive = ProductReport::named("Microsoft Defender Antivirus");
        defender_passive.enabled = Some(false);
        let mut sophos = ProductReport::named("Sophos Anti-Virus");
        sophos.enabled = Some(true);
        sophos.signatures_up_to_date = Some(true);
        let a = normalise(&[defender_passive.clone(), sophos.clone()], 72, now, "");
        assert_eq!(a.status, AvStatus::Current);
        assert_eq!(
            a.reason,
            "Sophos Anti-Virus: the product reports its signatures up to date; \
             Microsoft Defender Antivirus: turned off"
        );
        sophos.signatures_up_to_date = None;
        let a = normalise(&[defender_passive, sophos], 72, now, "");
        assert_eq!(a.status, AvStatus::Unknown);
    }

    #[test]
    fn status_details_shape() {
        let now = t(NOW);
        let mut p = clam("2026-11-23T07:00:00Z");
        p.engine_version = Some("1.4.3".into());
        p.signature_version = Some("27000".into());
        p.updater = Some(UpdaterInfo {
            name: "freshclam".into(),
            running: Some(true),
            last_run_at: Some(t("2026-11-23T11:00:01Z")),
            last_run_ok: Some(true),
            last_error: None,
        });
        let a = normalise(std::slice::from_ref(&p), 72, now, "");
        let d = status_details(&[p], &a, 72, now);
        assert_eq!(
            Value::Object(d),
            json!({
                "products": [{
                    "name": "ClamAV",
                    "engine_version": "1.4.3",
                    "signature_version": "27000",
                    "signatures_built_at": "2026-11-23T07:00:00Z",
                    "signature_age_hours": 5,
                    "realtime_protection": false,
                    "service_responding": true,
                    "status": "current",
                    "reason": "signatures are 5 h old (limit 72 h)",
                    "updater": {
                        "name": "freshclam",
                        "running": true,
                        "last_run_at": "2026-11-23T11:00:01Z",
                        "last_run_ok": true,
                        "last_error": null
                    }
                }],
                "status": "current",
                "reason": "ClamAV: signatures are 5 h old (limit 72 h)",
                "max_signature_age_hours": 72
            })
        );
    }
}
