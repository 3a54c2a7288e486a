//! Pure interpretation for the antivirus probe, one file per platform's formats: ClamAV
//! database headers, clamd replies and freshclam logs ([`clamav`]), Defender and Security
//! Center records ([`windows`]), XProtect property lists ([`macos`]). Each turns what it read
//! into [`ProductReport`]s, which [`super::decide`] judges.
//!
//! Nothing here touches the OS, so every platform's interpreter is tested on Linux. Parsers of
//! real-world input return what they could read plus warnings; they never panic.

pub mod clamav;
pub mod macos;
pub mod windows;

use chrono::{DateTime, Utc};

pub use clamav::*;
pub use macos::*;
pub use windows::*;
// The decision's names stay reachable as `parse::...`, the path the fuzz and end-to-end tests
// were written against before the decision had a module of its own.
pub use super::decide::{
    Assessment, AvStatus, assess_product, normalise, signature_age_hours, status_details,
};

/// What a parser could read, and what it could not (for the log and for `unknown` reasons).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub value: Option<T>,
    pub warnings: Vec<String>,
}

impl<T> Parsed<T> {
    fn fail(warning: impl Into<String>) -> Self {
        Self {
            value: None,
            warnings: vec![warning.into()],
        }
    }
}

/// How a keeper of signatures (freshclam) is doing; informational, it does not change status.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdaterInfo {
    pub name: String,
    pub running: Option<bool>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_run_ok: Option<bool>,
    pub last_error: Option<String>,
}

/// One antivirus product as every platform's interpreter reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductReport {
    pub name: String,
    pub engine_version: Option<String>,
    pub signature_version: Option<String>,
    pub signatures_built_at: Option<DateTime<Utc>>,
    pub realtime_protection: Option<bool>,
    pub service_responding: Option<bool>,
    /// The product's own on/off verdict (Defender `AntivirusEnabled`, Security Center state).
    pub enabled: Option<bool>,
    /// The product's own verdict on its signatures; used only when no build time is known.
    pub signatures_up_to_date: Option<bool>,
    /// Whether real-time protection being off makes the product `disabled`. True on Windows,
    /// where it is the norm; false for ClamAV, whose on-access scanning is opt-in on Linux.
    pub realtime_required: bool,
    pub updater: Option<UpdaterInfo>,
    /// Why something could not be read; these become the `unknown` / `disabled` reason.
    pub notes: Vec<String>,
}

impl ProductReport {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            engine_version: None,
            signature_version: None,
            signatures_built_at: None,
            realtime_protection: None,
            service_responding: None,
            enabled: None,
            signatures_up_to_date: None,
            realtime_required: false,
            updater: None,
            notes: Vec::new(),
        }
    }
}

#[cfg(test)]
pub(super) mod fixtures {
    use chrono::{DateTime, Utc};

    pub fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    pub fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/src/probe/antivirus/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub fn fixture_text(name: &str) -> String {
        String::from_utf8(fixture(name)).unwrap()
    }
}
