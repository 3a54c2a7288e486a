//! Subject access and erasure: every record naming a person as JSON and printable HTML, their name replaced by a stable keyed pseudonym, and that pseudonym for usernames stored at the edge.
//!
//! The command line (`cli.rs`), the admin socket and the dashboard (`desk.rs`) all call
//! `export` and `erase` here, so they audit and explain the same way. The store finds and
//! rewrites the records (`store::privacy`); this module decides who may, what the pseudonym is,
//! and what to tell the person asking.

pub mod cli;
mod desk;
mod html;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::accounts::{self, Actor};
use crate::ca::SchoolCa;
use crate::store::privacy::{ErasureCounts, Hold, HoldTarget, SubjectRecords};
use crate::store::{Store, StoreError};

pub use desk::SubjectSummary;

/// What every pseudonym starts with, so a reader sees at once that a name was replaced.
pub const PSEUDONYM_PREFIX: &str = "user-";

/// The secret pseudonyms are keyed with.
///
/// Derived from the school CA's private key rather than kept in a file of its own: every
/// collector of a trust already holds that key (`init --join` copies it, and it never lives in
/// the shared database), so all of them give a name the same pseudonym with nothing new to
/// copy, back up or lose, including on data directories made before pseudonyms existed.
#[derive(Clone)]
pub struct PseudonymKey([u8; 32]);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

impl PseudonymKey {
    pub fn from_ca(ca: &SchoolCa) -> Self {
        Self(ca.derive_secret("caretaker-pseudonym/1"))
    }

    /// From the CA in a data directory (the command line with no collector running).
    pub fn load(dir: &crate::datadir::DataDir) -> Result<Self, SubjectError> {
        Ok(Self::from_ca(&SchoolCa::load(
            &dir.ca_cert(),
            &dir.ca_key(),
        )?))
    }

    #[cfg(test)]
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
}

/// A login name's pseudonym: `user-` and 16 hex digits of HMAC-SHA256(key, name). Stable for
/// a school (the same on every collector of a trust), so a pupil's pseudonymised records still
/// group together; not reversible without the key and a guess of the name.
pub fn pseudonym(key: &PseudonymKey, name: &str) -> String {
    let mac = caretaker_proto::uninstall::hmac_sha256(&key.0, name.as_bytes());
    format!("{PSEUDONYM_PREFIX}{}", hex::encode(&mac[..8]))
}

/// Pseudonymises a technical event at ingest (the settings' `pseudonymise_usernames`): its
/// user, and that name wherever its details carry it, become the pseudonym. A safeguarding
/// event (the DSL's) is left as it is: the DSL must know whom a concern is about. Returns
/// whether anything changed.
pub fn pseudonymise_technical(key: &PseudonymKey, e: &mut crate::store::StoredEvent) -> bool {
    if crate::store::privacy::is_safeguarding(e) {
        return false;
    }
    let Some(user) = e.user.clone() else {
        return false;
    };
    crate::store::privacy::rename_in_event(e, &user, &pseudonym(key, &user))
}

/// Why a subject request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{name} is a dashboard account ({role}), not only a pupil's login; erasing a member of staff also rewrites the audit log's record of what they did. If that is what you want, ask again with --staff (the dashboard: tick \"This is a member of staff\"); their account itself is kept until it is removed"
    )]
    StaffAccount { name: String, role: String },
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the school CA cannot be read: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("the export could not be written: {0}")]
    Render(String),
}

/// A login name the store could hold: the agent's limit, no control characters.
pub fn check_name(name: &str) -> Result<(), SubjectError> {
    if name.trim().is_empty() {
        return Err(SubjectError::Invalid(
            "say whose records: a login name".into(),
        ));
    }
    if name.len() > crate::service::MAX_USER || name.chars().any(char::is_control) {
        return Err(SubjectError::Invalid(format!(
            "{name:?} is not a login name the collector could have stored"
        )));
    }
    Ok(())
}

/// How many records of each kind an export holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounts {
    pub events: u64,
    pub incidents: u64,
    pub incident_entries: u64,
    pub audit_entries: u64,
    pub digests: u64,
}

impl RecordCounts {
    pub fn of(r: &SubjectRecords) -> Self {
        Self {
            events: r.events.len() as u64,
            incidents: r.incidents.len() as u64,
            incident_entries: r.incident_entries.len() as u64,
            audit_entries: r.audit.len() as u64,
            digests: r.digests.len() as u64,
        }
    }

    pub fn total(&self) -> u64 {
        self.events + self.incidents + self.incident_entries + self.audit_entries + self.digests
    }

    /// `events 3, incidents 1, ...` (counts only: safe for the audit log).
    pub fn summary(&self) -> String {
        format!(
            "events {}, incidents {}, incident entries {}, audit entries {}, digests {}",
            self.events, self.incidents, self.incident_entries, self.audit_entries, self.digests
        )
    }
}

/// One subject access export: the same records as JSON and as printable HTML.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportFiles {
    pub json: String,
    pub html: String,
    pub counts: RecordCounts,
}

/// Who asked, for whom, and how times are shown.
#[derive(Debug, Clone)]
pub struct ExportRequest<'a> {
    pub user: &'a str,
    pub school: &'a str,
    pub time_zone: Tz,
    pub made_at: DateTime<Utc>,
}

/// The JSON document's shape (the records as the store holds them).
#[derive(Serialize)]
struct ExportDocument<'a> {
    subject: &'a str,
    /// The name's pseudonym: records stored under it are the person's too.
    pseudonym: &'a str,
    school: &'a str,
    made_at: DateTime<Utc>,
    made_by: &'a str,
    time_zone: &'a str,
    counts: RecordCounts,
    records: &'a SubjectRecords,
}

/// Renders `records` as the JSON and HTML files (pure).
pub fn render(
    records: &SubjectRecords,
    req: &ExportRequest<'_>,
    pseudonym: &str,
    made_by: &str,
) -> Result<ExportFiles, SubjectError> {
    let counts = RecordCounts::of(records);
    let doc = ExportDocument {
        subject: req.user,
        pseudonym,
        school: req.school,
        made_at: req.made_at,
        made_by,
        time_zone: req.time_zone.name(),
        counts,
        records,
    };
    let json =
        serde_json::to_string_pretty(&doc).map_err(|e| SubjectError::Render(e.to_string()))?;
    let html = html::render(records, req, pseudonym, counts)?;
    Ok(ExportFiles { json, html, counts })
}

/// Every record about `user`: those naming them, and those naming their pseudonym (stored so at
/// the edge, or erased earlier), which are still about them for whoever holds the key. Each
/// record once, oldest event first.
pub fn collect(
    store: &dyn Store,
    key: &PseudonymKey,
    user: &str,
) -> Result<SubjectRecords, SubjectError> {
    let mut r = store.subject_records(user)?;
    let more = store.subject_records(&pseudonym(key, user))?;
    merge(&mut r, more);
    Ok(r)
}

/// Adds `more`'s records to `r`, each once.
fn merge(r: &mut SubjectRecords, more: SubjectRecords) {
    use std::collections::HashSet;
    let events: HashSet<(String, u64)> = r
        .events
        .iter()
        .map(|e| (e.device_id.clone(), e.seq))
        .collect();
    r.events.extend(
        more.events
            .into_iter()
            .filter(|e| !events.contains(&(e.device_id.clone(), e.seq))),
    );
    r.events.sort_by_key(|e| e.occurred_at);
    let incidents: HashSet<u64> = r.incidents.iter().map(|i| i.id).collect();
    r.incidents.extend(
        more.incidents
            .into_iter()
            .filter(|i| !incidents.contains(&i.id)),
    );
    let entries: HashSet<(u64, u32)> = r
        .incident_entries
        .iter()
        .map(|e| (e.incident, e.n))
        .collect();
    r.incident_entries.extend(
        more.incident_entries
            .into_iter()
            .filter(|e| !entries.contains(&(e.incident, e.n))),
    );
    let audit: HashSet<u64> = r.audit.iter().map(|a| a.id).collect();
    r.audit
        .extend(more.audit.into_iter().filter(|a| !audit.contains(&a.id)));
    let digests: HashSet<u64> = r.digests.iter().map(|d| d.id).collect();
    r.digests.extend(
        more.digests
            .into_iter()
            .filter(|d| !digests.contains(&d.id)),
    );
}

/// Every record about `req.user` (see `collect`), rendered, and the export audited
/// (`subject_exported`).
///
/// The audit entry names the person by their pseudonym, as an erasure's does: a lookup made
/// after an erasure (to check it, or a second request) must not write the erased name back,
/// and whoever reads the log can still match an entry to a name they already know.
pub fn export(
    store: &dyn Store,
    key: &PseudonymKey,
    actor: &Actor,
    req: &ExportRequest<'_>,
) -> Result<ExportFiles, SubjectError> {
    check_name(req.user)?;
    let records = collect(store, key, req.user)?;
    let p = pseudonym(key, req.user);
    let files = render(&records, req, &p, &actor.name)?;
    accounts::audit(
        store,
        actor,
        "subject_exported",
        &p,
        &files.counts.summary(),
    );
    tracing::info!(records = files.counts.total(), "Subject access export made");
    Ok(files)
}

/// `export` made now, under the school's name from the store's settings: what the dashboard,
/// the admin socket and the offline command each ask for.
pub fn export_now(
    store: &dyn Store,
    key: &PseudonymKey,
    actor: &Actor,
    user: &str,
    time_zone: Tz,
) -> Result<ExportFiles, SubjectError> {
    let school = crate::settings::Settings::current(store)?.school_name;
    let req = ExportRequest {
        user,
        school: &school,
        time_zone,
        made_at: Utc::now(),
    };
    export(store, key, actor, &req)
}

/// What an erasure did, for the person who asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErasureReport {
    pub pseudonym: String,
    pub counts: ErasureCounts,
    /// Each hold in force that keeps some of the person's records, and why it was placed.
    pub holds: Vec<String>,
    /// The person's dashboard role, when they are staff (their account is kept).
    pub account: Option<String>,
}

impl ErasureReport {
    /// What it changed, kept and why, in lines for a person to read.
    pub fn lines(&self) -> Vec<String> {
        let c = &self.counts;
        let mut out = vec![format!(
            "Replaced the name by {} in {} events, {} incidents, {} incident entries, {} audit entries, {} digests and {} devices' state.",
            self.pseudonym,
            c.events,
            c.incidents,
            c.incident_entries,
            c.audit_entries,
            c.digests,
            c.devices
        )];
        if c.kept_events + c.kept_incidents + c.kept_audit_entries > 0 {
            out.push(format!(
                "Kept under legal hold, with the name: {} events, {} incidents, {} audit entries.",
                c.kept_events, c.kept_incidents, c.kept_audit_entries
            ));
        }
        for h in &self.holds {
            out.push(format!("  held: {h}"));
        }
        if let Some(role) = &self.account {
            out.push(format!(
                "Their dashboard account ({role}) is kept; disable it with `caretaker-collector user disable` when they leave."
            ));
        }
        out
    }
}

/// The holds in force that keep any of `records` (the person's), described for the operator:
/// what is held, by whom, since when and why.
pub fn holds_keeping(records: &SubjectRecords, holds: &[Hold], user: &str, tz: Tz) -> Vec<String> {
    let mut out = Vec::new();
    for h in holds {
        let what = match &h.target {
            HoldTarget::User(u) if u == user => Some("this person".to_string()),
            HoldTarget::User(_) => None,
            HoldTarget::Incident(id) => {
                let named = records.incidents.iter().any(|i| i.id == *id)
                    || records.incident_entries.iter().any(|e| e.incident == *id)
                    || records.events.iter().any(|e| {
                        records.incidents.iter().any(|i| {
                            i.id == *id
                                && i.device_id == e.device_id
                                && (i.first_seq..=i.last_seq).contains(&e.seq)
                        })
                    });
                named.then(|| format!("incident {id}"))
            }
            HoldTarget::Device(d) => {
                let named = records.events.iter().any(|e| &e.device_id == d)
                    || records.incidents.iter().any(|i| &i.device_id == d);
                named.then(|| format!("device {d}"))
            }
        };
        if let Some(what) = what {
            out.push(format!(
                "{what}, held by {} since {}: {}",
                h.by,
                crate::timefmt::date(h.at, tz),
                h.reason
            ));
        }
    }
    out
}

/// What the audit log says of an erasure: counts and hold targets, never the name (a hold on
/// the user is "the person").
fn audit_detail(r: &ErasureReport, holds: &[Hold], user: &str) -> String {
    let c = &r.counts;
    let mut d = format!(
        "changed events {}, incidents {}, incident entries {}, audit entries {}, digests {}, devices {}",
        c.events, c.incidents, c.incident_entries, c.audit_entries, c.digests, c.devices
    );
    if c.kept_events + c.kept_incidents + c.kept_audit_entries > 0 {
        let targets: Vec<String> = holds
            .iter()
            .map(|h| match &h.target {
                HoldTarget::User(u) if u == user => "the person".to_string(),
                t => t.key(),
            })
            .filter(|k| !k.starts_with("user:"))
            .collect();
        d.push_str(&format!(
            "; kept under hold events {}, incidents {}, audit entries {} ({})",
            c.kept_events,
            c.kept_incidents,
            c.kept_audit_entries,
            targets.join(", ")
        ));
    }
    if r.account.is_some() {
        d.push_str("; a staff account");
    }
    d
}

/// Replaces `user` by its pseudonym everywhere the store holds it, except under legal hold,
/// and audits it (`subject_erased`, with the pseudonym as target: the log must not keep the
/// name it erased). A dashboard account is refused unless `staff` says that is intended.
pub fn erase(
    store: &dyn Store,
    key: &PseudonymKey,
    actor: &Actor,
    user: &str,
    staff: bool,
    tz: Tz,
) -> Result<ErasureReport, SubjectError> {
    check_name(user)?;
    let p = pseudonym(key, user);
    if user == p {
        return Err(SubjectError::Invalid(format!(
            "{user} is already a pseudonym"
        )));
    }
    let account = store.user(user)?.map(|a| a.role);
    if let Some(role) = &account
        && !staff
    {
        return Err(SubjectError::StaffAccount {
            name: user.to_string(),
            role: role.clone(),
        });
    }
    let holds = store.holds()?;
    let why = if holds.is_empty() {
        Vec::new()
    } else {
        holds_keeping(&store.subject_records(user)?, &holds, user, tz)
    };
    let counts = store.erase_subject(user, &p)?;
    let report = ErasureReport {
        pseudonym: p,
        counts,
        holds: if counts.kept_events + counts.kept_incidents + counts.kept_audit_entries > 0 {
            why
        } else {
            Vec::new()
        },
        account,
    };
    accounts::audit(
        store,
        actor,
        "subject_erased",
        &report.pseudonym,
        &audit_detail(&report, &holds, user),
    );
    tracing::info!(pseudonym = %report.pseudonym, "Subject erased");
    Ok(report)
}

/// After an erasure by a running collector: what it holds in memory is re-read from the store,
/// so no page or API answer serves the name from a copy (the devices' state, the overview's
/// open incidents). Blocking.
pub fn reload_after_erasure(c: &crate::service::Collector) {
    if let Err(e) = c.reload_devices() {
        tracing::warn!(error = %e, "Devices not re-read after an erasure");
    }
    if let Err(e) = c.refresh_open_incidents() {
        tracing::warn!(error = %e, "Open incidents not re-read after an erasure");
    }
}

#[cfg(test)]
mod tests;
