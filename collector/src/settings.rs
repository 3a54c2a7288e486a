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

/// How long each kind of record is kept, in days; 0 keeps it for ever (a school's explicit
/// choice, never a default). The purge task (`crate::retention`) removes what is older.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Technical events (audience without the DSL) and closed technical incidents. 400 days:
    /// the governors' report compares a term with the one before and replays each device's
    /// state from up to 60 days before the earlier one, and a report of a whole school year
    /// (September to July, made in the summer holiday) needs about 335 days plus that
    /// lookback; 400 leaves a few weeks' slack. Shorter than the terms in the settings need is
    /// refused (`Retention::technical_days_needed`).
    pub technical_days: u32,
    /// Safeguarding events (the DSL's) and closed safeguarding incidents with their records.
    /// Seven years (2,557 days), the common schools' default for pupil records of concern.
    /// The IRMS toolkit keeps child-protection files much longer (until the child is 25, or
    /// more); a school may lengthen this, or hold a case (legal hold) so nothing about it
    /// expires.
    pub safeguarding_days: u32,
    /// The audit log. One year: long enough to answer "who looked at this pupil's record"
    /// across a school year and a complaint made after it; at least 90 days, so a short
    /// setting cannot wipe the trail of the change that set it.
    pub audit_days: u32,
    /// Digests and reports sent (their bodies name pupils). One year, like the audit log: the
    /// DSL's own record is the incident, the digest only a notification of it; at least 30
    /// days, which the digest engine's "sent once per due time" needs.
    pub digests_days: u32,
}

/// Days in seven years (two leap days).
pub const SEVEN_YEARS_DAYS: u32 = 7 * 365 + 2;
/// The least audit retention accepted (see `Retention::audit_days`).
pub const MIN_AUDIT_DAYS: u32 = 90;
/// The least digest retention accepted (see `Retention::digests_days`).
pub const MIN_DIGESTS_DAYS: u32 = 30;
/// The least technical retention accepted with no terms in the settings: a month's report
/// against the month before (62 days) plus the report's 60-day lookback, with slack.
pub const MIN_TECHNICAL_DAYS: u32 = 130;
/// How far before a period the governors' report replays state (`report::gather`'s
/// `LOOKBACK_DAYS`).
const REPORT_LOOKBACK_DAYS: i64 = 60;
/// How long after a term ends its report may still be made (a scheduled one goes at once; a
/// governors' meeting may be weeks later).
const REPORT_AFTER_TERM_DAYS: i64 = 30;

impl Default for Retention {
    fn default() -> Self {
        Self {
            technical_days: 400,
            safeguarding_days: SEVEN_YEARS_DAYS,
            audit_days: 365,
            digests_days: 365,
        }
    }
}

impl Retention {
    /// The technical retention the term reports need: for each term after the first, from 60
    /// days before the term before it starts to a month after the term ends.
    pub fn technical_days_needed(terms: &[Term]) -> (u32, Option<String>) {
        let mut sorted: Vec<&Term> = terms.iter().collect();
        sorted.sort_by_key(|t| t.start);
        let mut need = (MIN_TECHNICAL_DAYS, None);
        for w in sorted.windows(2) {
            let from = w[0].start - chrono::Duration::days(REPORT_LOOKBACK_DAYS);
            let to = w[1].end + chrono::Duration::days(REPORT_AFTER_TERM_DAYS);
            let days = u32::try_from((to - from).num_days()).unwrap_or(u32::MAX);
            if days > need.0 {
                need = (days, Some(w[1].name.clone()));
            }
        }
        need
    }

    fn validate(&self, terms: &[Term]) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(m));
        let (need, term) = Self::technical_days_needed(terms);
        if self.technical_days != 0 && self.technical_days < need {
            return bad(match term {
                Some(t) => format!(
                    "retention.technical_days is {} but the report for {t} compared with the \
                     term before needs {need} days of technical events",
                    self.technical_days
                ),
                None => format!(
                    "retention.technical_days must be at least {need} (a month's report against \
                     the month before, with its 60-day lookback), or 0 to keep them",
                ),
            });
        }
        if self.safeguarding_days != 0 && self.safeguarding_days < self.technical_days {
            return bad(format!(
                "retention.safeguarding_days ({}) must not be shorter than \
                 retention.technical_days ({})",
                self.safeguarding_days, self.technical_days
            ));
        }
        if self.audit_days != 0 && self.audit_days < MIN_AUDIT_DAYS {
            return bad(format!(
                "retention.audit_days must be at least {MIN_AUDIT_DAYS}, or 0 to keep it"
            ));
        }
        if self.digests_days != 0 && self.digests_days < MIN_DIGESTS_DAYS {
            return bad(format!(
                "retention.digests_days must be at least {MIN_DIGESTS_DAYS}, or 0 to keep them"
            ));
        }
        Ok(())
    }

    /// What has expired at `now` (a period of 0 keeps that kind for ever).
    pub fn cutoffs(&self, now: chrono::DateTime<chrono::Utc>) -> crate::store::PurgeCutoffs {
        let before = |days: u32| (days > 0).then(|| now - chrono::Duration::days(days.into()));
        crate::store::PurgeCutoffs {
            technical: before(self.technical_days),
            safeguarding: before(self.safeguarding_days),
            audit: before(self.audit_days),
            digests: before(self.digests_days),
        }
    }
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
    pub retention: Retention,
    /// Store a keyed pseudonym (`user-` and 16 hex digits, `crate::subject::pseudonym`)
    /// instead of the login name in technical events (those not meant for the DSL), in their
    /// user and wherever their details name it. Off by default: a technician matching a
    /// laptop's problem to the pupil in front of them needs the name, and a school turns this
    /// on when it decides it does not. The DSL's records always keep names.
    pub pseudonymise_usernames: bool,
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
            retention: Retention::default(),
            pseudonymise_usernames: false,
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

    /// The store's current settings, read leniently; the defaults until any are set.
    pub fn current(store: &dyn crate::store::Store) -> Result<Self, crate::store::StoreError> {
        Ok(store
            .current_settings()?
            .map(|v| Self::parse_lenient(&v.settings))
            .unwrap_or_default())
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
        self.retention.validate(&self.terms)?;
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

    #[test]
    fn retention_defaults_and_what_has_expired() {
        let s = Settings::parse_strict(&json!({"retention": {"audit_days": 0}})).unwrap();
        assert_eq!(s.retention.technical_days, 400);
        assert_eq!(s.retention.safeguarding_days, 2557);
        let now = chrono::DateTime::parse_from_rfc3339("2027-01-10T12:00:00Z")
            .unwrap()
            .to_utc();
        let c = s.retention.cutoffs(now);
        assert_eq!(c.technical, Some(now - chrono::Duration::days(400)));
        assert_eq!(c.digests, Some(now - chrono::Duration::days(365)));
        assert_eq!(c.audit, None, "0 keeps the audit log");
    }

    #[test]
    fn the_data_inventory_states_the_retention_defaults() {
        let kept = caretaker_proto::inventory::KEPT;
        let r = Retention::default();
        assert!(
            kept.contains(&format!("| {} days |", r.technical_days)),
            "{kept}"
        );
        assert_eq!(r.safeguarding_days, 2557);
        assert!(kept.contains("| 7 years (2,557 days) |"), "{kept}");
        assert_eq!((r.audit_days, r.digests_days), (365, 365));
        assert!(
            kept.contains(&format!("At least {MIN_AUDIT_DAYS} days")),
            "{kept}"
        );
        assert!(
            kept.contains(&format!("At least {MIN_DIGESTS_DAYS} days")),
            "{kept}"
        );
    }

    #[test]
    fn a_retention_too_short_for_the_reports_names_its_field() {
        let e = Settings::parse_strict(&json!({"retention": {"technical_days": 90}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention.technical_days must be at least 130"),
            "{e}"
        );
        // Autumn compared with summer: 60 days before 20 April to a month after 18 December.
        let terms = json!([
            {"name": "Summer 2026", "start": "2026-04-20", "end": "2026-07-22"},
            {"name": "Autumn 2026", "start": "2026-09-03", "end": "2026-12-18"},
        ]);
        let (need, term) = Retention::technical_days_needed(
            &serde_json::from_value::<Vec<Term>>(terms.clone()).unwrap(),
        );
        assert_eq!((need, term.as_deref()), (332, Some("Autumn 2026")));
        let e =
            Settings::parse_strict(&json!({"terms": terms, "retention": {"technical_days": 300}}))
                .unwrap_err()
                .to_string();
        assert!(e.contains("retention.technical_days is 300"), "{e}");
        assert!(e.contains("Autumn 2026") && e.contains("332"), "{e}");
        assert!(
            Settings::parse_strict(&json!({"terms": terms, "retention": {"technical_days": 0}}))
                .is_ok()
        );
        let e = Settings::parse_strict(&json!({"retention": {"audit_days": 7}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("retention.audit_days"), "{e}");
        let e = Settings::parse_strict(&json!({"retention": {"safeguarding_days": 200}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("retention.safeguarding_days"), "{e}");
        let e = Settings::parse_strict(&json!({"retention": {"technical_day": 400}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("retention.technical_day"), "{e}");
    }
}
