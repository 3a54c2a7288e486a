//! The antivirus probe on Windows: Defender's status and Security Center's product list, each
//! read through Windows PowerShell (`os::windows::powershell`), interpreted by `parse::windows`
//! and judged by `decide` as on Linux.
//!
//! [`report`] is pure and built on every OS (its tests run on Linux and under Wine); only
//! [`check`], which asks Windows, is Windows-only. When neither read answered, the status is
//! `unknown` with both reasons: saying `missing` would claim Windows has no antivirus when the
//! agent could not ask (Wine's PowerShell is a stub, so this is what Wine shows).

use chrono::{DateTime, Utc};

use super::CheckReport;
use super::decide::{self, Assessment, AvStatus};
use super::parse::{self, ProductReport};
use caretaker_proto::policy::AntivirusPolicy;

/// When Security Center works and lists nothing, and Defender reports nothing either.
const ABSENT: &str = "neither Defender nor Security Center lists an antivirus product";

/// The check from the two reads' answers (their JSON, or why there is none).
pub fn report(
    defender: Result<String, String>,
    security_center: Result<String, String>,
    policy: &AntivirusPolicy,
    checked_at: DateTime<Utc>,
) -> CheckReport {
    let mut warnings = Vec::new();
    let mut failed = Vec::new();
    let defender_product: Option<ProductReport> = match &defender {
        Ok(text) => {
            let parsed = parse::parse_defender_status(text, checked_at);
            warnings.extend(
                parsed
                    .warnings
                    .into_iter()
                    .map(|w| format!("Defender: {w}")),
            );
            parsed.value
        }
        Err(why) => {
            failed.push(format!("Defender: {why}"));
            None
        }
    };
    let listed: Vec<ProductReport> = match &security_center {
        Ok(text) => {
            let parsed = parse::parse_security_center(text);
            warnings.extend(parsed.warnings);
            parsed.value.unwrap_or_default()
        }
        Err(why) => {
            failed.push(format!("Security Center: {why}"));
            Vec::new()
        }
    };
    let products = parse::windows_products(defender_product, listed);
    let max = policy.max_signature_age_hours;
    let assessment = if products.is_empty() && defender.is_err() && security_center.is_err() {
        Assessment {
            status: AvStatus::Unknown,
            reason: format!("Windows could not be asked: {}", failed.join("; ")),
            per_product: Vec::new(),
        }
    } else {
        decide::normalise(&products, max, checked_at, ABSENT)
    };
    warnings.extend(failed);
    CheckReport {
        checked_at,
        max_signature_age_hours: max,
        products,
        assessment,
        warnings,
    }
}

/// Runs one check now: both reads at once, each given a minute.
#[cfg(windows)]
pub async fn check(_config: &super::AntivirusProbeConfig, policy: &AntivirusPolicy) -> CheckReport {
    use crate::os::windows::powershell::{self, DEFENDER_STATUS, SECURITY_CENTER_PRODUCTS};
    let limit = std::time::Duration::from_secs(60);
    let (defender, security_center) = tokio::join!(
        powershell::json(DEFENDER_STATUS, limit),
        powershell::json(SECURITY_CENTER_PRODUCTS, limit)
    );
    let text = |r: Result<String, powershell::PowerShellError>| r.map_err(|e| e.to_string());
    report(text(defender), text(security_center), policy, Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::antivirus::parse::fixtures::{fixture_text, t};

    const NOW: &str = "2026-11-23T10:00:00Z";

    fn policy() -> AntivirusPolicy {
        AntivirusPolicy {
            max_signature_age_hours: 72,
            check_interval_secs: 3600,
        }
    }

    #[test]
    fn defender_healthy_and_listed_by_security_center_counts_once() {
        let sc = r#"[{"displayName": "Windows Defender", "productState": 397568}]"#;
        let r = report(
            Ok(fixture_text("defender-healthy.json")),
            Ok(sc.into()),
            &policy(),
            t(NOW),
        );
        assert_eq!(r.status(), AvStatus::Current, "{}", r.assessment.reason);
        assert_eq!(r.products.len(), 1);
        assert_eq!(r.products[0].name, "Microsoft Defender Antivirus");
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn a_third_party_product_counts_when_defender_cannot_be_read() {
        let r = report(
            Err("`Get-MpComputerStatus | ConvertTo-Json` failed (exit code: 1): 0x800106ba".into()),
            Ok(fixture_text("securitycenter2-sophos-and-defender.json")),
            &policy(),
            t(NOW),
        );
        assert_eq!(r.status(), AvStatus::Current, "{}", r.assessment.reason);
        assert!(
            r.assessment.reason.starts_with("Sophos"),
            "{}",
            r.assessment.reason
        );
        assert!(r.warnings.iter().any(|w| w.starts_with("Defender: ")));
    }

    #[test]
    fn stale_defender_is_stale() {
        let r = report(
            Ok(fixture_text("defender-stale-9-days.json")),
            Ok("[]".into()),
            &policy(),
            t(NOW),
        );
        assert_eq!(r.status(), AvStatus::Stale);
        assert_eq!(r.details()["status"], "stale");
    }

    #[test]
    fn nothing_listed_is_missing_but_nothing_answered_is_unknown() {
        let r = report(
            Err("`Get-MpComputerStatus | ConvertTo-Json` printed nothing".into()),
            Ok("[]".into()),
            &policy(),
            t(NOW),
        );
        assert_eq!(r.status(), AvStatus::Missing);
        assert_eq!(r.assessment.reason, ABSENT);

        let r = report(
            Err("`Get-MpComputerStatus | ConvertTo-Json` printed nothing".into()),
            Err("`ConvertTo-Json ...` printed nothing".into()),
            &policy(),
            t(NOW),
        );
        assert_eq!(r.status(), AvStatus::Unknown);
        assert_eq!(
            r.assessment.reason,
            "Windows could not be asked: Defender: `Get-MpComputerStatus | ConvertTo-Json` printed nothing; Security Center: `ConvertTo-Json ...` printed nothing"
        );
        assert_eq!(r.warnings.len(), 2);
    }

    #[test]
    fn malformed_answers_are_warnings_not_products() {
        let r = report(
            Ok(fixture_text("defender-malformed.json")),
            Ok(fixture_text("securitycenter2-malformed.json")),
            &policy(),
            t(NOW),
        );
        assert!(!r.warnings.is_empty());
        assert_ne!(r.status(), AvStatus::Current);
    }
}
