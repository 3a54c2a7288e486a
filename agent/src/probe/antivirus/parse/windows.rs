//! Windows' formats: Defender's `Get-MpComputerStatus` and Security Center's
//! `AntiVirusProduct` records, as PowerShell's `ConvertTo-Json` prints them.

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use super::{Parsed, ProductReport};

/// Defender's signature-age sentinels for "never updated".
const DEFENDER_AGE_NEVER: [u64; 2] = [65_535, 4_294_967_295];

fn json_bool(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

fn json_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

/// PowerShell dates: 5.1 writes `/Date(1732345678000)/` (its JSON shows `\/Date(...)\/`);
/// 7 writes ISO 8601; `Select-Object` output can wrap it as `{"value": ..., "DateTime": ...}`.
pub fn parse_powershell_date(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => {
            let s = s.trim();
            if let Some(inner) = s.strip_prefix("/Date(").and_then(|r| r.strip_suffix(")/")) {
                // An optional `+0100` offset follows the milliseconds; the milliseconds are UTC.
                let digits_end = inner
                    .char_indices()
                    .skip(1)
                    .find(|(_, c)| *c == '+' || *c == '-')
                    .map_or(inner.len(), |(i, _)| i);
                let ms: i64 = inner[..digits_end].parse().ok()?;
                return Utc.timestamp_millis_opt(ms).single();
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            // ISO without an offset (Kind=Unspecified): Defender keeps these in UTC.
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        }
        Value::Object(o) => o.get("value").and_then(parse_powershell_date),
        _ => None,
    }
}

/// ConvertTo-Json of a single object gives an object, of several an array.
fn single_object<'a>(
    v: &'a Value,
    what: &str,
    warnings: &mut Vec<String>,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(o) => Some(o),
        Value::Array(items) => {
            if items.len() > 1 {
                warnings.push(format!("{what}: {} records, using the first", items.len()));
            }
            items.first().and_then(Value::as_object)
        }
        _ => None,
    }
}

/// Interprets `Get-MpComputerStatus | ConvertTo-Json`, captured at `observed_at`.
pub fn parse_defender_status(json_text: &str, observed_at: DateTime<Utc>) -> Parsed<ProductReport> {
    let root: Value = match serde_json::from_str(json_text.trim_start_matches('\u{feff}')) {
        Ok(v) => v,
        Err(e) => return Parsed::fail(format!("Defender status is not JSON: {e}")),
    };
    let mut warnings = Vec::new();
    let Some(o) = single_object(&root, "Defender status", &mut warnings) else {
        return Parsed::fail("Defender status is not a JSON object");
    };
    if !o.contains_key("AntivirusSignatureVersion") && !o.contains_key("AMServiceEnabled") {
        return Parsed::fail("Defender status has none of the expected fields");
    }
    let mut p = ProductReport::named("Microsoft Defender Antivirus");
    p.realtime_required = true;
    p.engine_version = json_string(o.get("AMEngineVersion"));
    p.signature_version = json_string(o.get("AntivirusSignatureVersion"));
    p.realtime_protection = json_bool(o.get("RealTimeProtectionEnabled"));
    p.service_responding = json_bool(o.get("AMServiceEnabled"));
    p.signatures_up_to_date = json_bool(o.get("DefenderSignaturesOutOfDate")).map(|b| !b);

    let mode = json_string(o.get("AMRunningMode"));
    let passive = mode
        .as_deref()
        .is_some_and(|m| m.contains("Passive") || m.contains("EDR Block") || m == "Not running");
    p.enabled = match json_bool(o.get("AntivirusEnabled")) {
        Some(true) if passive => Some(false),
        other => other,
    };
    if let Some(m) = mode.filter(|_| passive) {
        p.notes.push(format!("running mode {m}"));
    }

    let last_updated = o.get("AntivirusSignatureLastUpdated").and_then(|v| {
        let t = parse_powershell_date(v);
        if t.is_none() && !v.is_null() {
            warnings.push(format!("unreadable AntivirusSignatureLastUpdated {v}"));
        }
        t
    });
    let from_age = match o.get("AntivirusSignatureAge").and_then(Value::as_u64) {
        Some(d) if DEFENDER_AGE_NEVER.contains(&d) => {
            p.notes.push("signatures never updated".into());
            None
        }
        Some(d) => i64::try_from(d)
            .ok()
            .and_then(Duration::try_days)
            // Checked: an age of millions of days reaches before any date chrono can hold.
            .and_then(|age| observed_at.checked_sub_signed(age)),
        None => None,
    };
    // LastUpdated is when signatures were installed; the day-granular age is how old they are.
    // The earlier of the two is the conservative build time.
    p.signatures_built_at = match (last_updated, from_age) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Parsed {
        value: Some(p),
        warnings,
    }
}

// ---------------------------------------------------------------------------------------------
// Windows: Security Center (root\SecurityCenter2 AntiVirusProduct)
// ---------------------------------------------------------------------------------------------

/// The widely used reading of the undocumented `productState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductState {
    /// Bits 12–15: 0 off, 1 on, 2 snoozed, 3 expired.
    pub enabled: Option<bool>,
    pub state_name: &'static str,
    /// Bits 4–7: 0 up to date, 1 out of date.
    pub signatures_up_to_date: Option<bool>,
}

pub fn decode_product_state(state: u32) -> ProductState {
    let (enabled, state_name) = match (state >> 12) & 0xF {
        0 => (Some(false), "off"),
        1 => (Some(true), "on"),
        2 => (Some(false), "snoozed"),
        3 => (Some(false), "expired"),
        _ => (None, "unrecognised"),
    };
    let signatures_up_to_date = match (state >> 4) & 0xF {
        0 => Some(true),
        1 => Some(false),
        _ => None,
    };
    ProductState {
        enabled,
        state_name,
        signatures_up_to_date,
    }
}

/// Interprets `Get-CimInstance -Namespace root/SecurityCenter2 -ClassName AntiVirusProduct |
/// ConvertTo-Json`. Records without a readable name or state are skipped with a warning.
pub fn parse_security_center(json_text: &str) -> Parsed<Vec<ProductReport>> {
    let root: Value = match serde_json::from_str(json_text.trim_start_matches('\u{feff}')) {
        Ok(v) => v,
        Err(e) => return Parsed::fail(format!("SecurityCenter2 output is not JSON: {e}")),
    };
    let records: Vec<&Value> = match &root {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![&root],
        Value::Null => Vec::new(), // no product registered: PowerShell prints nothing
        _ => return Parsed::fail("SecurityCenter2 output is neither an object nor an array"),
    };
    let mut warnings = Vec::new();
    let mut products = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let Some(name) = json_string(r.get("displayName")) else {
            warnings.push(format!("SecurityCenter2 record {i} has no displayName"));
            continue;
        };
        let state = match r.get("productState") {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let Some(state) = state else {
            warnings.push(format!(
                "SecurityCenter2 record {name:?} has no readable productState"
            ));
            continue;
        };
        let decoded = decode_product_state(state);
        let mut p = ProductReport::named(&name);
        p.realtime_required = true;
        p.enabled = decoded.enabled;
        // Security Center's "on" is the product's real-time protection being on.
        p.realtime_protection = decoded.enabled;
        p.signatures_up_to_date = decoded.signatures_up_to_date;
        if decoded.enabled.is_none() || decoded.signatures_up_to_date.is_none() {
            p.notes
                .push(format!("productState 0x{state:06X} not understood"));
        }
        if decoded.state_name == "snoozed" || decoded.state_name == "expired" {
            p.notes.push(decoded.state_name.into());
        }
        products.push(p);
    }
    Parsed {
        value: Some(products),
        warnings,
    }
}

/// Security Center also lists Defender; when Get-MpComputerStatus gave the detailed report, the
/// Security Center copy is dropped so Defender is not counted twice.
pub fn windows_products(
    defender: Option<ProductReport>,
    security_center: Vec<ProductReport>,
) -> Vec<ProductReport> {
    let mut out = Vec::new();
    let have_defender = defender.is_some();
    out.extend(defender);
    out.extend(
        security_center
            .into_iter()
            .filter(|p| !(have_defender && p.name.contains("Defender"))),
    );
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::antivirus::decide::{AvStatus, assess_product, normalise};
    use crate::probe::antivirus::parse::fixtures::{fixture_text, t};
    use serde_json::json;

    // --- Defender ---

    const OBSERVED: &str = "2026-11-23T10:00:00Z";

    #[test]
    fn defender_healthy() {
        let parsed = parse_defender_status(&fixture_text("defender-healthy.json"), t(OBSERVED));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        let p = parsed.value.unwrap();
        assert_eq!(
            p,
            ProductReport {
                name: "Microsoft Defender Antivirus".into(),
                engine_version: Some("1.1.24090.11".into()),
                signature_version: Some("1.421.1576.0".into()),
                signatures_built_at: Some(t("2026-11-23T06:12:45Z")),
                realtime_protection: Some(true),
                service_responding: Some(true),
                enabled: Some(true),
                signatures_up_to_date: Some(true),
                realtime_required: true,
                updater: None,
                notes: vec![],
            }
        );
        assert_eq!(assess_product(&p, 72, t(OBSERVED)).0, AvStatus::Current);
    }

    #[test]
    fn defender_signatures_nine_days_old_is_stale() {
        let p = parse_defender_status(&fixture_text("defender-stale-9-days.json"), t(OBSERVED))
            .value
            .unwrap();
        assert_eq!(p.signatures_built_at, Some(t("2026-11-14T08:31:10Z")));
        assert_eq!(p.signatures_up_to_date, Some(false));
        assert_eq!(
            assess_product(&p, 72, t(OBSERVED)),
            (
                AvStatus::Stale,
                "signatures are 217 h old (limit 72 h)".into()
            )
        );
    }

    #[test]
    fn defender_realtime_off_is_disabled() {
        let p = parse_defender_status(&fixture_text("defender-realtime-off.json"), t(OBSERVED))
            .value
            .unwrap();
        assert_eq!(p.realtime_protection, Some(false));
        assert_eq!(
            assess_product(&p, 72, t(OBSERVED)),
            (AvStatus::Disabled, "real-time protection is off".into())
        );
    }

    #[test]
    fn defender_passive_mode_and_powershell7_dates() {
        let p = parse_defender_status(&fixture_text("defender-passive-ps7.json"), t(OBSERVED))
            .value
            .unwrap();
        assert_eq!(p.enabled, Some(false));
        assert_eq!(p.signatures_built_at, Some(t("2026-11-23T05:40:02Z")));
        assert_eq!(
            assess_product(&p, 72, t(OBSERVED)),
            (
                AvStatus::Disabled,
                "turned off (running mode Passive Mode)".into()
            )
        );
    }

    #[test]
    fn powershell_date_forms() {
        assert_eq!(
            parse_powershell_date(&json!("/Date(1795438924000)/")),
            Some(t("2026-11-23T13:02:04Z"))
        );
        assert_eq!(
            parse_powershell_date(&json!("/Date(1795438924000+0100)/")),
            Some(t("2026-11-23T13:02:04Z"))
        );
        assert_eq!(
            parse_powershell_date(&json!("2026-11-23T13:02:04.1234567+01:00")),
            Some(t("2026-11-23T12:02:04.1234567Z"))
        );
        assert_eq!(
            parse_powershell_date(
                &json!({"value": "/Date(0)/", "DateTime": "Thursday, 1 January 1970"})
            ),
            Some(t("1970-01-01T00:00:00Z"))
        );
        assert_eq!(parse_powershell_date(&json!("23/11/2026")), None);
        assert_eq!(parse_powershell_date(&json!(12)), None);
    }

    #[test]
    fn defender_malformed_inputs() {
        let now = t(OBSERVED);
        assert!(
            parse_defender_status(&fixture_text("defender-malformed.json"), now)
                .value
                .is_none()
        );
        assert_eq!(
            parse_defender_status("[]", now),
            Parsed::fail("Defender status is not a JSON object")
        );
        assert_eq!(
            parse_defender_status(r#"{"Name": "x"}"#, now),
            Parsed::fail("Defender status has none of the expected fields")
        );
        let p = parse_defender_status(
            r#"{"AMServiceEnabled": true, "AntivirusSignatureLastUpdated": "soon", "AntivirusSignatureAge": 65535}"#,
            now,
        );
        assert_eq!(
            p.warnings,
            vec!["unreadable AntivirusSignatureLastUpdated \"soon\""]
        );
        let p = p.value.unwrap();
        assert_eq!(p.signatures_built_at, None);
        assert_eq!(
            assess_product(&p, 72, now),
            (
                AvStatus::Unknown,
                "signature build time unknown (signatures never updated)".into()
            )
        );
    }

    /// Found by fuzzing (`agent/tests/fuzz.rs`): an age of 100,000,000 days put the build time
    /// before any date chrono can hold, and the subtraction panicked.
    #[test]
    fn defender_signature_age_beyond_the_calendar() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let p = parse_defender_status(
            r#"{"AMServiceEnabled": true, "AntivirusSignatureAge": 100000000}"#,
            now,
        );
        let p = p.value.unwrap();
        assert_eq!(p.signatures_built_at, None);
        assert_eq!(assess_product(&p, 72, now).0, AvStatus::Unknown);
    }

    // --- Security Center ---

    #[test]
    fn product_state_bits() {
        assert_eq!(
            decode_product_state(397_568), // 0x061100: Defender, on, up to date
            ProductState {
                enabled: Some(true),
                state_name: "on",
                signatures_up_to_date: Some(true)
            }
        );
        assert_eq!(
            decode_product_state(397_584), // 0x061110: on, out of date
            ProductState {
                enabled: Some(true),
                state_name: "on",
                signatures_up_to_date: Some(false)
            }
        );
        assert_eq!(decode_product_state(393_472).enabled, Some(false)); // 0x060100 off
        assert_eq!(decode_product_state(0x42000).state_name, "snoozed");
        assert_eq!(decode_product_state(0x43000).state_name, "expired");
        assert_eq!(
            decode_product_state(0x4F0F0),
            ProductState {
                enabled: None,
                state_name: "unrecognised",
                signatures_up_to_date: None
            }
        );
    }

    #[test]
    fn security_center_third_party_and_defender() {
        let parsed =
            parse_security_center(&fixture_text("securitycenter2-sophos-and-defender.json"));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        let products = parsed.value.unwrap();
        let names: Vec<&str> = products.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Windows Defender", "Sophos Anti-Virus"]);
        assert_eq!(products[0].enabled, Some(false));
        assert_eq!(products[1].enabled, Some(true));
        assert_eq!(products[1].signatures_up_to_date, Some(true));
        let a = normalise(&products, 72, t(OBSERVED), "");
        assert_eq!(a.status, AvStatus::Current);
        assert_eq!(
            a.per_product,
            vec![
                (AvStatus::Disabled, "turned off".into()),
                (
                    AvStatus::Current,
                    "the product reports its signatures up to date".into()
                )
            ]
        );
        // With Defender's own report present, Security Center's copy of it is dropped.
        let defender =
            parse_defender_status(&fixture_text("defender-passive-ps7.json"), t(OBSERVED))
                .value
                .unwrap();
        let merged = windows_products(Some(defender), products);
        let names: Vec<&str> = merged.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Microsoft Defender Antivirus", "Sophos Anti-Virus"]);
    }

    #[test]
    fn security_center_single_object_out_of_date() {
        let products =
            parse_security_center(&fixture_text("securitycenter2-eset-out-of-date.json"))
                .value
                .unwrap();
        assert_eq!(products.len(), 1);
        assert_eq!(
            assess_product(&products[0], 72, t(OBSERVED)),
            (
                AvStatus::Stale,
                "the product reports its signatures out of date".into()
            )
        );
    }

    #[test]
    fn security_center_malformed() {
        assert!(parse_security_center("not json").value.is_none());
        assert_eq!(parse_security_center("null").value, Some(vec![]));
        let p = parse_security_center(&fixture_text("securitycenter2-malformed.json"));
        assert_eq!(p.value.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            p.warnings,
            vec![
                "SecurityCenter2 record 0 has no displayName",
                "SecurityCenter2 record \"Odd AV\" has no readable productState"
            ]
        );
        assert_eq!(
            p.value.unwrap()[0].notes,
            vec!["productState 0x0FF0F0 not understood"]
        );
    }
}
