//! The enrolment bundle: one small JSON file (`*.caretaker`) a technician carries to laptops, written
//! by `caretaker-collector bundle create` and read by `caretaker-installer`.
//!
//! It holds everything `caretaker-agent enroll` needs: the collector's addresses, the CA fingerprint
//! the first connection is pinned to, and an enrolment token. It is not signed: a laptop has no
//! trust anchor before enrolment to check a signature against (the fingerprint inside *is* the
//! anchor), so the bundle is protected like the token it contains: written 0600, carried by the
//! technician, and limited by its uses and expiry. Anyone able to alter it could equally read the
//! token out of it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The format version this code writes and reads. A reader refuses any other version with a
/// message saying which side to upgrade.
pub const BUNDLE_VERSION: u32 = 1;

/// The conventional file extension (`school.caretaker`).
pub const BUNDLE_EXTENSION: &str = "caretaker";

/// Where the agent package's `postinst` looks for a bundle dropped before installing.
pub const DROPPED_BUNDLE_PATH: &str = "/etc/caretaker/enrol.caretaker";

/// The contents of a bundle file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always `BUNDLE_VERSION` when written by this code.
    pub caretaker_bundle: u32,
    /// The technician's label, also recorded against each device enrolled with it.
    pub label: String,
    /// `HOST:PORT` of the collector's gRPC listener, tried in order.
    pub collectors: Vec<String>,
    /// `sha256:` + 64 hex digits: the school CA the first connection is pinned to.
    pub ca_fingerprint: String,
    /// The enrolment token (`cte_...`).
    pub token: String,
    /// How many devices the token admits (the collector counts; this is for messages).
    pub uses: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Why a bundle file cannot be used, in words a technician can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error(
        "{path} is not a Caretaker enrolment bundle ({reason}); make one on the collector with `caretaker-collector bundle create`"
    )]
    Malformed { path: String, reason: String },
    #[error(
        "{path} is a version {found} enrolment bundle and this installer reads version {BUNDLE_VERSION}; {advice}"
    )]
    Version {
        path: String,
        found: u32,
        advice: &'static str,
    },
    #[error(
        "the enrolment bundle {path} (\"{label}\") expired at {expires_at}; make a new one on the collector with `caretaker-collector bundle create --uses N --expires 14d --out FILE`"
    )]
    Expired {
        path: String,
        label: String,
        expires_at: DateTime<Utc>,
    },
}

impl Bundle {
    /// The file's bytes: pretty JSON, so a technician can read what it points at.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a bundle serialises");
        v.push(b'\n');
        v
    }

    /// Reads a bundle's bytes; `path` is only for messages. Does not check expiry (see `check_usable`).
    pub fn parse(path: &str, bytes: &[u8]) -> Result<Self, BundleError> {
        let malformed = |reason: String| BundleError::Malformed {
            path: path.to_string(),
            reason,
        };
        // Look at the version first, so a newer format is reported as such rather than as a
        // field this reader does not know.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let found = value
            .get("caretaker_bundle")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| malformed("no `caretaker_bundle` version field".into()))?;
        if found != u64::from(BUNDLE_VERSION) {
            return Err(BundleError::Version {
                path: path.to_string(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                advice: if found > u64::from(BUNDLE_VERSION) {
                    "install a newer caretaker-agent package"
                } else {
                    "make a new bundle with this collector's `bundle create`"
                },
            });
        }
        let b: Bundle = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
        if b.collectors.is_empty() {
            return Err(malformed("it names no collector address".into()));
        }
        if b.token.trim().is_empty() {
            return Err(malformed("it holds no token".into()));
        }
        Ok(b)
    }

    /// Refuses a bundle past its expiry, before any laptop spends time trying it.
    pub fn check_usable(&self, path: &str, now: DateTime<Utc>) -> Result<(), BundleError> {
        if now >= self.expires_at {
            return Err(BundleError::Expired {
                path: path.to_string(),
                label: self.label.clone(),
                expires_at: self.expires_at,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> Bundle {
        Bundle {
            caretaker_bundle: BUNDLE_VERSION,
            label: "Year 5 trolley".into(),
            collectors: vec!["caretaker.school.lan:7443".into(), "10.0.0.5:7443".into()],
            ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
            token: "cte_abc".into(),
            uses: 200,
            created_at: Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap(),
            expires_at: Utc.with_ymd_and_hms(2026, 1, 19, 9, 0, 0).unwrap(),
        }
    }

    #[test]
    fn a_bundle_round_trips_through_its_file_form() {
        let b = sample();
        assert_eq!(Bundle::parse("x", &b.to_json()).unwrap(), b);
    }

    #[test]
    fn a_newer_version_says_to_upgrade_the_agent_and_an_older_one_to_remake_the_bundle() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["caretaker_bundle"] = 2.into();
        v["something_new"] = true.into();
        let e = Bundle::parse("s.caretaker", v.to_string().as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("install a newer caretaker-agent"),
            "{e}"
        );
        v["caretaker_bundle"] = 0.into();
        let e = Bundle::parse("s.caretaker", v.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("make a new bundle"), "{e}");
    }

    #[test]
    fn junk_and_empty_bundles_are_refused_with_what_to_do() {
        for (bytes, why) in [
            (&b"PK\x03\x04"[..], "not JSON"),
            (&b"{}"[..], "version field"),
        ] {
            let e = Bundle::parse("s.caretaker", bytes).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("bundle create"), "{e}");
        }
        let mut b = sample();
        b.collectors.clear();
        let e = Bundle::parse("s", &b.to_json()).unwrap_err().to_string();
        assert!(e.contains("no collector address"), "{e}");
    }

    #[test]
    fn an_expired_bundle_names_its_expiry_and_how_to_make_another() {
        let b = sample();
        assert!(
            b.check_usable("s", b.expires_at - chrono::Duration::seconds(1))
                .is_ok()
        );
        let e = b.check_usable("s.caretaker", b.expires_at).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("expired at 2026-01-19 09:00:00 UTC"), "{msg}");
        assert!(msg.contains("Year 5 trolley"), "{msg}");
        assert!(msg.contains("caretaker-collector bundle create"), "{msg}");
    }
}
