//! The school's settings: term dates, licence counts, mail delivery and who gets digests when; versioned like the policy, with who changed them.
//!
//! Unlike the policy these never reach a laptop. Parsed strictly (an unknown field is a typo to
//! report); every field has a default so an empty document is valid.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One school term, for reports by term.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Term {
    pub name: String,
    pub start: NaiveDate,
    /// The last day of the term (inclusive).
    pub end: NaiveDate,
}

/// Licences the school bought for a product, for reconciliation against installations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    /// The product's name as the software list shows it (exact, any case).
    pub product: String,
    pub count: u64,
}

/// How the collector sends mail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `starttls` (required upgrade), `tls` (implicit TLS, port 465), or `none` (plain, only
    /// for a relay on the same host).
    #[serde(default = "default_smtp_security")]
    pub security: String,
    #[serde(default)]
    pub username: String,
    /// A file holding the password (readable by the collector only), so the password is not
    /// in the settings history.
    #[serde(default)]
    pub password_file: String,
    /// The sender, e.g. "Caretaker <caretaker@school.example>".
    pub from: String,
    /// A PEM file with the CA that issued the relay's certificate, when it is the school's own
    /// rather than a public one.
    #[serde(default)]
    pub ca_file: String,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_smtp_security() -> String {
    "starttls".into()
}

/// A webhook the DSL team reads (e.g. a private Teams channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// `generic` (Caretaker's JSON) or `teams` (an Adaptive Card message).
    #[serde(default = "default_webhook_kind")]
    pub kind: String,
    /// Who reads it, for the record; must be a DSL account.
    pub owner: String,
}

fn default_webhook_kind() -> String {
    "generic".into()
}

/// When one DSL gets a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestSchedule {
    /// The DSL's account; the digest goes to that account's e-mail address.
    pub username: String,
    /// `daily` or `weekly`.
    #[serde(default = "default_frequency")]
    pub frequency: String,
    /// Local time, "HH:MM".
    #[serde(default = "default_digest_at")]
    pub at: String,
    /// For weekly digests: "mon" .. "sun".
    #[serde(default = "default_weekday")]
    pub weekday: String,
}

fn default_frequency() -> String {
    "daily".into()
}

fn default_digest_at() -> String {
    "16:00".into()
}

fn default_weekday() -> String {
    "fri".into()
}

/// What goes out at once, not in the next digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Urgent {
    /// Event kinds whose safeguarding incidents are sent at once.
    pub kinds: Vec<String>,
    /// Incidents whose software assessment names a bypass tool are urgent too.
    pub bypass_tools: bool,
    /// A burst within this many seconds becomes one message.
    pub gather_secs: u64,
    /// At most this many urgent messages per recipient per hour; the rest wait for the digest.
    pub max_per_hour: u32,
}

impl Default for Urgent {
    fn default() -> Self {
        Self {
            kinds: vec!["media.infected".into(), "antivirus.detection".into()],
            bypass_tools: true,
            gather_secs: 120,
            max_per_hour: 4,
        }
    }
}

/// A report sent on a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSchedule {
    /// `governors` or `dsl`.
    pub audience: String,
    /// `week`, `month` or `term`: sent after each one ends.
    pub period: String,
    /// Accounts it is e-mailed to (governors for the governors' version, DSLs for theirs).
    pub recipients: Vec<String>,
}

/// The settings document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub school_name: String,
    /// The dashboard's address as staff reach it, for links in digests and reports
    /// (e.g. "https://caretaker.school.lan:8443").
    pub dashboard_url: String,
    pub terms: Vec<Term>,
    pub licences: Vec<Licence>,
    pub smtp: Option<Smtp>,
    pub webhooks: Vec<Webhook>,
    pub digests: Vec<DigestSchedule>,
    pub urgent: Urgent,
    pub reports: Vec<ReportSchedule>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            school_name: "School".into(),
            dashboard_url: String::new(),
            terms: Vec::new(),
            licences: Vec::new(),
            smtp: None,
            webhooks: Vec::new(),
            digests: Vec::new(),
            urgent: Urgent::default(),
            reports: Vec::new(),
        }
    }
}

/// Why a settings document was refused; names the field.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings do not fit the schema at {0}")]
    Syntax(String),
    #[error("invalid settings: {0}")]
    Invalid(String),
}

fn hhmm(s: &str) -> bool {
    chrono::NaiveTime::parse_from_str(s, "%H:%M").is_ok()
}

impl Settings {
    /// Parses and checks a document from the network manager.
    pub fn parse_strict(value: &Value) -> Result<Self, SettingsError> {
        let s: Settings = serde_path_to_error::deserialize(value)
            .map_err(|e| SettingsError::Syntax(format!("{}: {}", e.path(), e.inner())))?;
        s.validate()?;
        Ok(s)
    }

    /// Reads a stored document, falling back to the defaults for anything unreadable.
    pub fn parse_lenient(value: &Value) -> Self {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(m));
        for (i, t) in self.terms.iter().enumerate() {
            if t.end < t.start {
                return bad(format!("terms[{i}] ({}) ends before it starts", t.name));
            }
        }
        for (i, d) in self.digests.iter().enumerate() {
            if !matches!(d.frequency.as_str(), "daily" | "weekly") {
                return bad(format!("digests[{i}].frequency must be daily or weekly"));
            }
            if !hhmm(&d.at) {
                return bad(format!("digests[{i}].at must be HH:MM"));
            }
            if caretaker_proto::policy::parse_day(&d.weekday).is_none() {
                return bad(format!("digests[{i}].weekday must be mon..sun"));
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if !w.url.starts_with("https://") && !w.url.starts_with("http://") {
                return bad(format!("webhooks[{i}].url must be an http(s) address"));
            }
            if !matches!(w.kind.as_str(), "generic" | "teams") {
                return bad(format!("webhooks[{i}].kind must be generic or teams"));
            }
        }
        if let Some(m) = &self.smtp
            && !matches!(m.security.as_str(), "starttls" | "tls" | "none")
        {
            return bad("smtp.security must be starttls, tls or none".into());
        }
        for (i, r) in self.reports.iter().enumerate() {
            if !matches!(r.audience.as_str(), "governors" | "dsl") {
                return bad(format!("reports[{i}].audience must be governors or dsl"));
            }
            if !matches!(r.period.as_str(), "week" | "month" | "term") {
                return bad(format!("reports[{i}].period must be week, month or term"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_empty_document_is_the_defaults() {
        assert_eq!(
            Settings::parse_strict(&json!({})).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn mistakes_name_their_field() {
        let e = Settings::parse_strict(
            &json!({"terms": [{"name": "Autumn", "start": "2026-09-03", "end": "nope"}]}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("terms[0].end"), "{e}");
        let e = Settings::parse_strict(&json!({"digest": []}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("digest"), "{e}");
        let e = Settings::parse_strict(&json!({"digests": [{"username": "dsl", "at": "25:00"}]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("digests[0].at"), "{e}");
    }
}
