//! The `antivirus` section of the policy document: how old signatures may be and how often to check.
use serde::{Deserialize, Serialize};

/// Longest accepted signature age: a year. Anything larger is almost certainly a typo
/// (hours entered as minutes) and would silently stop `stale` from ever firing.
const MAX_AGE_LIMIT_HOURS: u32 = 24 * 365;
/// Checks are cheap but not free (they read a file and talk to clamd); once a minute is plenty.
const MIN_CHECK_INTERVAL_SECS: u64 = 60;
/// A day: slower checks would let a disabled antivirus go unnoticed for too long.
const MAX_CHECK_INTERVAL_SECS: u64 = 24 * 60 * 60;

/// What the school's policy says about antivirus currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AntivirusPolicy {
    /// Signatures built longer ago than this make the device `stale`.
    pub max_signature_age_hours: u32,
    /// How often the probe re-checks (it also checks at start and when the policy changes).
    pub check_interval_secs: u64,
}

impl Default for AntivirusPolicy {
    fn default() -> Self {
        Self {
            max_signature_age_hours: 72,
            check_interval_secs: 3600,
        }
    }
}

/// Why the `antivirus` section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AntivirusError {
    #[error("antivirus.{field} must be between {min} and {max}, got {got}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
}

/// Refuses `field`'s value `got` outside `min..=max`.
fn in_range(field: &'static str, got: u64, min: u64, max: u64) -> Result<(), AntivirusError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(AntivirusError::OutOfRange {
            field,
            min,
            max,
            got,
        })
    }
}

impl AntivirusPolicy {
    /// Checks the values make sense; the error says which one and why.
    pub fn validate(&self) -> Result<(), AntivirusError> {
        in_range(
            "max_signature_age_hours",
            self.max_signature_age_hours.into(),
            1,
            MAX_AGE_LIMIT_HOURS.into(),
        )?;
        in_range(
            "check_interval_secs",
            self.check_interval_secs,
            MIN_CHECK_INTERVAL_SECS,
            MAX_CHECK_INTERVAL_SECS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_72_hours_and_hourly_and_valid() {
        let p = AntivirusPolicy::default();
        assert_eq!(p.max_signature_age_hours, 72);
        assert_eq!(p.check_interval_secs, 3600);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn missing_fields_take_defaults() {
        let p: AntivirusPolicy =
            serde_json::from_str(r#"{"max_signature_age_hours": 48}"#).unwrap();
        assert_eq!(
            p,
            AntivirusPolicy {
                max_signature_age_hours: 48,
                check_interval_secs: 3600
            }
        );
        let p: AntivirusPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, AntivirusPolicy::default());
    }

    #[test]
    fn validate_rejects_out_of_range_values_with_reason() {
        let zero_age = AntivirusPolicy {
            max_signature_age_hours: 0,
            ..Default::default()
        };
        assert_eq!(
            zero_age.validate().unwrap_err().to_string(),
            "antivirus.max_signature_age_hours must be between 1 and 8760, got 0"
        );
        let too_fast = AntivirusPolicy {
            check_interval_secs: 5,
            ..Default::default()
        };
        assert_eq!(
            too_fast.validate().unwrap_err().to_string(),
            "antivirus.check_interval_secs must be between 60 and 86400, got 5"
        );
        let too_slow = AntivirusPolicy {
            check_interval_secs: 86_401,
            ..Default::default()
        };
        assert!(
            too_slow
                .validate()
                .unwrap_err()
                .to_string()
                .contains("86401")
        );
    }
}
