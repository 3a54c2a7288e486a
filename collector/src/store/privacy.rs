//! Retention, legal holds and subject access as the store does them: what a purge may remove, what a hold keeps, and how a name becomes a pseudonym in stored records.
//!
//! The collector decides *when* (its purge task, the DSL's holds, `subject export` and
//! `subject erase`); every backend implements `PrivacyStore` with the pure rules here, so
//! they cannot disagree on what is expired, held or naming a person.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AuditEntry, Category, DigestRecord, DigestStatus, Incident, IncidentEntry, IncidentStatus,
    StoreResult, StoredEvent,
};

/// The audience that marks a safeguarding (the DSL's) event.
pub const SAFEGUARDING_AUDIENCE: &str = "dsl";

/// What has expired: records older than each cutoff (`None`: kept for ever).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PurgeCutoffs {
    /// Technical events (audience without `dsl`) that occurred before this, and technical
    /// incidents closed and last updated before it.
    pub technical: Option<DateTime<Utc>>,
    /// Safeguarding events (audience with `dsl`) that occurred before this, and safeguarding
    /// incidents (with their records) closed and last updated before it.
    pub safeguarding: Option<DateTime<Utc>>,
    /// Audit entries made before this.
    pub audit: Option<DateTime<Utc>>,
    /// Digests sent (created) before this; a pending digest is never removed.
    pub digests: Option<DateTime<Utc>>,
}

impl PurgeCutoffs {
    /// Whether `e` has expired (holds aside).
    pub fn event_expired(&self, e: &StoredEvent) -> bool {
        let cutoff = if is_safeguarding(e) {
            self.safeguarding
        } else {
            self.technical
        };
        cutoff.is_some_and(|c| e.occurred_at < c)
    }

    /// Whether `i` has expired (holds aside): closed, and untouched since its category's cutoff.
    pub fn incident_expired(&self, i: &Incident) -> bool {
        let cutoff = match i.category {
            Category::Safeguarding => self.safeguarding,
            Category::Technical => self.technical,
        };
        i.status == IncidentStatus::Closed
            && cutoff.is_some_and(|c| i.updated_at < c && i.last_at < c)
    }

    pub fn audit_expired(&self, a: &AuditEntry) -> bool {
        self.audit.is_some_and(|c| a.at < c)
    }

    pub fn digest_expired(&self, d: &DigestRecord) -> bool {
        d.status == DigestStatus::Sent && self.digests.is_some_and(|c| d.created_at < c)
    }
}

/// Whether an event is the DSL's.
pub fn is_safeguarding(e: &StoredEvent) -> bool {
    e.audience.iter().any(|a| a == SAFEGUARDING_AUDIENCE)
}

/// What one purge batch removed, per kind of record (counts only, never content).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeCounts {
    pub technical_events: u64,
    pub safeguarding_events: u64,
    pub incidents: u64,
    pub incident_entries: u64,
    pub audit_entries: u64,
    pub digests: u64,
}

impl PurgeCounts {
    pub fn total(&self) -> u64 {
        self.technical_events
            + self.safeguarding_events
            + self.incidents
            + self.incident_entries
            + self.audit_entries
            + self.digests
    }

    pub fn add(&mut self, o: &PurgeCounts) {
        self.technical_events += o.technical_events;
        self.safeguarding_events += o.safeguarding_events;
        self.incidents += o.incidents;
        self.incident_entries += o.incident_entries;
        self.audit_entries += o.audit_entries;
        self.digests += o.digests;
    }

    /// Counts an expired event by its kind of record.
    pub fn count_event(&mut self, e: &StoredEvent) {
        if is_safeguarding(e) {
            self.safeguarding_events += 1;
        } else {
            self.technical_events += 1;
        }
    }
}

/// What a legal hold is on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum HoldTarget {
    Incident(u64),
    Device(String),
    User(String),
}

impl HoldTarget {
    /// `incident:12`, `device:<id>`, `user:<name>`: the key backends store it under and the
    /// audit log's target.
    pub fn key(&self) -> String {
        match self {
            HoldTarget::Incident(id) => format!("incident:{id}"),
            HoldTarget::Device(d) => format!("device:{d}"),
            HoldTarget::User(u) => format!("user:{u}"),
        }
    }

    /// Parses `key()`'s form.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, id) = s.split_once(':')?;
        if id.is_empty() {
            return None;
        }
        match kind {
            "incident" => id.parse().ok().map(HoldTarget::Incident),
            "device" => Some(HoldTarget::Device(id.to_string())),
            "user" => Some(HoldTarget::User(id.to_string())),
            _ => None,
        }
    }
}

/// A legal hold: nothing about its target expires or is pseudonymised until it is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub target: HoldTarget,
    /// The DSL's account that placed it.
    pub by: String,
    pub at: DateTime<Utc>,
    /// Why (a case reference); required, so a hold is never anonymous in its purpose.
    pub reason: String,
}

/// What the holds in force keep, in the form the purge and erasure test records against.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub devices: HashSet<String>,
    pub users: HashSet<String>,
    /// Held incidents as stored (their device, kind and sequence range keep their events).
    pub incidents: Vec<Incident>,
}

impl Held {
    /// From the holds and a reader of incidents by id (an incident held but since gone keeps
    /// nothing more).
    pub fn new(
        holds: &[Hold],
        mut incident: impl FnMut(u64) -> StoreResult<Option<Incident>>,
    ) -> StoreResult<Self> {
        let mut held = Held::default();
        for h in holds {
            match &h.target {
                HoldTarget::Device(d) => {
                    held.devices.insert(d.clone());
                }
                HoldTarget::User(u) => {
                    held.users.insert(u.clone());
                }
                HoldTarget::Incident(id) => {
                    if let Some(i) = incident(*id)? {
                        held.incidents.push(i);
                    }
                }
            }
        }
        Ok(held)
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.users.is_empty() && self.incidents.is_empty()
    }

    /// Whether a hold keeps `e`: its device or user is held, or it is one of a held
    /// incident's events (same device and kind, sequence within the incident's range).
    pub fn keeps_event(&self, e: &StoredEvent) -> bool {
        self.devices.contains(&e.device_id)
            || e.user.as_ref().is_some_and(|u| self.users.contains(u))
            || self.incidents.iter().any(|i| {
                i.device_id == e.device_id
                    && i.kind == e.kind
                    && (i.first_seq..=i.last_seq).contains(&e.seq)
            })
    }

    /// Whether a hold keeps `i`: it is held itself, or its device or user is.
    pub fn keeps_incident(&self, i: &Incident) -> bool {
        self.incidents.iter().any(|h| h.id == i.id)
            || self.devices.contains(&i.device_id)
            || i.user.as_ref().is_some_and(|u| self.users.contains(u))
    }

    /// Whether a hold keeps an audit entry: it names a held user, device or incident.
    pub fn keeps_audit(&self, a: &AuditEntry) -> bool {
        self.users.contains(&a.actor)
            || self.users.contains(&a.target)
            || self.devices.contains(&a.target)
            || self
                .incidents
                .iter()
                .any(|i| a.target == i.id.to_string() || a.target == format!("incident:{}", i.id))
    }
}

/// Every stored record that names one person, for a subject access request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubjectRecords {
    /// Events whose user is the person, or whose details name them (oldest first).
    pub events: Vec<StoredEvent>,
    /// Incidents whose user is the person.
    pub incidents: Vec<Incident>,
    /// Entries of those incidents, and entries the person wrote (a staff account).
    pub incident_entries: Vec<IncidentEntry>,
    /// Audit entries by the person or about them.
    pub audit: Vec<AuditEntry>,
    /// Digests whose bodies name the person.
    pub digests: Vec<DigestRecord>,
}

/// What an erasure changed, and what it kept under hold, per kind of record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureCounts {
    pub events: u64,
    pub incidents: u64,
    pub incident_entries: u64,
    pub audit_entries: u64,
    pub digests: u64,
    pub devices: u64,
    pub kept_events: u64,
    pub kept_incidents: u64,
    pub kept_audit_entries: u64,
}

/// `PrivacyStore`'s methods that a handle forwards to its engine, written once (see `methods.rs`).
macro_rules! privacy_store_methods {
    ($then:ident $(, $($lead:tt)*)?) => {
        $then! {
            $($($lead)*)?
            /// Removes expired records that no hold keeps, oldest first, in one transaction, and
            /// keeps the devices' stored event counts right: at most about `limit` rows deleted
            /// one by one (an incident goes with its whole record). PostgreSQL may also drop one
            /// past month's events partition whose events have all expired and none is held,
            /// whatever its size, since dropping it costs about the same for a million events as
            /// for ten. Returns what it removed; an empty count means nothing more has expired.
            fn purge_expired(
                &self,
                cutoffs: &PurgeCutoffs,
                limit: usize,
            ) -> StoreResult<PurgeCounts>;
            /// Places a hold (placing one already in force replaces its reason).
            fn put_hold(&self, hold: &Hold) -> StoreResult<()>;
            /// Releases a hold; `false` when there was none.
            fn release_hold(&self, target: &HoldTarget) -> StoreResult<bool>;
            fn holds(&self) -> StoreResult<Vec<Hold>>;
            /// Every record naming `user` (see `SubjectRecords`).
            fn subject_records(&self, user: &str) -> StoreResult<SubjectRecords>;
        }
    };
}
pub(crate) use privacy_store_methods;

/// Retention, holds and subject access. The collector calls these; backends implement
/// them with the rules above.
pub trait PrivacyStore {
    privacy_store_methods!(declare_methods);

    /// Replaces `user` by `pseudonym` in every stored record a hold does not keep (events and
    /// their user index, incidents, incident entries, audit entries, digests, device state),
    /// and leaves no copy of the name in the store's files outside held records (an embedded
    /// store rewrites its file). Returns what it changed and kept.
    fn erase_subject(&self, user: &str, pseudonym: &str) -> StoreResult<ErasureCounts>;
}

/// Whether `text` names `name` as a whole word (not inside a longer name: erasing `al` leaves
/// `alice`), as a path component (`/home/alice/x`) or a value on its own.
pub fn text_names(text: &str, name: &str) -> bool {
    word_matches(text, name).next().is_some()
}

/// `text` with every whole-word `name` replaced by `pseudonym`, or `None` when it names none.
pub fn rename_in_text(text: &str, name: &str, pseudonym: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for start in word_matches(text, name) {
        out.push_str(&text[last..start]);
        out.push_str(pseudonym);
        last = start + name.len();
    }
    (last > 0).then(|| {
        out.push_str(&text[last..]);
        out
    })
}

/// Whether any string (or object key) in `v` names `name` (see `text_names`).
pub fn value_names(v: &Value, name: &str) -> bool {
    match v {
        Value::String(s) => text_names(s, name),
        Value::Array(a) => a.iter().any(|x| value_names(x, name)),
        Value::Object(m) => m
            .iter()
            .any(|(k, x)| text_names(k, name) || value_names(x, name)),
        _ => false,
    }
}

/// Replaces `name` by `pseudonym` in every string of `v` (see `rename_in_text`); `true` when
/// anything changed.
pub fn rename_in_value(v: &mut Value, name: &str, pseudonym: &str) -> bool {
    match v {
        Value::String(s) => match rename_in_text(s, name, pseudonym) {
            Some(r) => {
                *s = r;
                true
            }
            None => false,
        },
        Value::Array(a) => a
            .iter_mut()
            .fold(false, |c, x| rename_in_value(x, name, pseudonym) | c),
        Value::Object(m) => {
            let renamed: Vec<(String, String)> = m
                .keys()
                .filter_map(|k| rename_in_text(k, name, pseudonym).map(|r| (k.clone(), r)))
                .collect();
            let mut changed = !renamed.is_empty();
            for (old, new) in renamed {
                if let Some(x) = m.remove(&old) {
                    m.insert(new, x);
                }
            }
            for x in m.values_mut() {
                changed |= rename_in_value(x, name, pseudonym);
            }
            changed
        }
        _ => false,
    }
}

/// Whether an incident names `user`: as its user, or in its title or subject (a path in a
/// home folder).
pub fn incident_names(i: &Incident, user: &str) -> bool {
    i.user.as_deref() == Some(user) || text_names(&i.title, user) || text_names(&i.subject, user)
}

/// Whether an incident's entry names `user`: written by them, or naming them in its text.
pub fn entry_names(e: &IncidentEntry, user: &str) -> bool {
    text_names(&e.by, user) || text_names(&e.text, user)
}

/// Whether an audit entry is by or about `user`.
pub fn audit_names(a: &AuditEntry, user: &str) -> bool {
    [&a.actor, &a.target, &a.detail]
        .iter()
        .any(|t| text_names(t, user))
}

/// Whether a digest names `user` in its subject or bodies.
pub fn digest_names(d: &DigestRecord, user: &str) -> bool {
    [&d.subject, &d.text, &d.html]
        .iter()
        .any(|t| text_names(t, user))
        || value_names(&d.json, user)
}

/// How a DSL report's PDF is named when a digest carries it (`digest/mod.rs`).
pub const DSL_REPORT_ATTACHMENT: &str = "caretaker-dsl-";

/// Whether `d` carries a DSL report's PDF: it names pupils inside compressed PDF text, which
/// cannot be searched or renamed, so an erasure drops it from every digest (the report can be
/// made again from the store, which then holds the pseudonym; the message's own text stays).
pub fn carries_dsl_report(d: &DigestRecord) -> bool {
    d.attachment
        .as_ref()
        .is_some_and(|a| a.name.starts_with(DSL_REPORT_ATTACHMENT))
}

/// Whether `e` names `user`: as its user or anywhere in its details.
pub fn event_names(e: &StoredEvent, user: &str) -> bool {
    e.user.as_deref() == Some(user) || e.details.values().any(|v| value_names(v, user))
}

/// Replaces `user` by `pseudonym` in `e`'s user and details; `true` when anything changed.
pub fn rename_in_event(e: &mut StoredEvent, user: &str, pseudonym: &str) -> bool {
    let mut changed = false;
    if e.user.as_deref() == Some(user) {
        e.user = Some(pseudonym.to_string());
        changed = true;
    }
    for v in e.details.values_mut() {
        changed |= rename_in_value(v, user, pseudonym);
    }
    changed
}

/// Start offsets of whole-word occurrences of `name` in `text`: a "word" character is
/// alphanumeric or one of `_ - .`, so login names with dots or dashes match whole.
fn word_matches<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = usize> + 'a {
    let word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    text.match_indices(name).filter_map(move |(i, _)| {
        if name.is_empty() {
            return None;
        }
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        // A full stop followed by a word continues a longer name (`alice.smith`); one
        // followed by nothing or a space ends a sentence.
        let after_is_word = after.is_some_and(|c| {
            word(c) && (c != '.' || text[i + name.len() + 1..].starts_with(|d: char| word(d)))
        });
        (!before.is_some_and(word) && !after_is_word).then_some(i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_name_matches_whole_not_inside_a_longer_one() {
        assert!(text_names("alice", "alice"));
        assert!(text_names("/home/alice/Downloads/x.AppImage", "alice"));
        assert!(text_names("Blocked for alice.", "alice"));
        assert!(text_names("alice, bob", "bob"));
        assert!(!text_names("malice", "alice"));
        assert!(!text_names("alice.smith", "alice"));
        assert!(!text_names("al-ice", "al"));
        assert!(!text_names("alice2", "alice"));
        assert_eq!(
            rename_in_text("/home/alice/x and alice. Not malice", "alice", "user-1f"),
            Some("/home/user-1f/x and user-1f. Not malice".into())
        );
        assert_eq!(rename_in_text("bob", "alice", "p"), None);
    }

    #[test]
    fn renaming_reaches_nested_values_and_keys() {
        let mut v = json!({"requested_by": {"user": "alice", "uid": 1001},
                           "paths": ["/home/alice/a", "/srv/x"], "alice": 1});
        assert!(value_names(&v, "alice"));
        assert!(rename_in_value(&mut v, "alice", "p1"));
        assert_eq!(
            v,
            json!({"requested_by": {"user": "p1", "uid": 1001},
                   "paths": ["/home/p1/a", "/srv/x"], "p1": 1})
        );
        assert!(!value_names(&v, "alice"));
        assert!(!rename_in_value(&mut v, "alice", "p1"));
    }

    #[test]
    fn hold_targets_round_trip_their_keys() {
        for t in [
            HoldTarget::Incident(12),
            HoldTarget::Device("d-1".into()),
            HoldTarget::User("alice".into()),
        ] {
            assert_eq!(HoldTarget::parse(&t.key()), Some(t));
        }
        assert_eq!(HoldTarget::parse("incident:x"), None);
        assert_eq!(HoldTarget::parse("user:"), None);
        assert_eq!(HoldTarget::parse("room:1"), None);
    }
}
