//! Incidents: flagged events grouped per device and subject, each with an action log that only grows.
//!
//! The store opens and updates incidents inside the same transaction that stores the events,
//! so an event is never durable without its incident, and a resend never counts twice.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreResult;

/// Who an incident is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The DSL's: a pupil's attempt, a filter-bypass tool.
    Safeguarding,
    /// The network manager's and technician's: stale antivirus, a failed lock.
    Technical,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Safeguarding => "safeguarding",
            Category::Technical => "technical",
        }
    }
}

/// Where an incident stands; set by the last entry of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Open,
    Acknowledged,
    Actioned,
    Closed,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Actioned => "actioned",
            IncidentStatus::Closed => "closed",
        }
    }
}

/// One incident: the first and latest event of a group, and how many there were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub category: Category,
    pub device_id: String,
    pub user: Option<String>,
    pub kind: String,
    /// What the group is about (a package name, a stick's serial); part of the grouping key.
    pub subject: String,
    /// A readable one-line summary.
    pub title: String,
    pub severity: String,
    pub audience: Vec<String>,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub status: IncidentStatus,
    pub updated_at: DateTime<Utc>,
}

/// How a flagged event opens or counts into an incident: the one rule every backend folds by.
impl Incident {
    /// The incident `e` opens (the first of its group, or after the last one closed or went
    /// quiet for longer than the grouping window).
    pub fn opened_by(id: u64, category: Category, subject: String, e: &super::StoredEvent) -> Self {
        Incident {
            id,
            category,
            device_id: e.device_id.clone(),
            user: e.user.clone(),
            kind: e.kind.clone(),
            title: crate::incidents::title(&e.kind, &e.details),
            subject,
            severity: e.severity.clone(),
            audience: e.audience.clone(),
            first_at: e.occurred_at,
            last_at: e.occurred_at,
            count: 1,
            first_seq: e.seq,
            last_seq: e.seq,
            status: IncidentStatus::Open,
            updated_at: e.received_at,
        }
    }

    /// Whether `e` (of this incident's group) counts into it: it is not closed, and `e` is
    /// within the grouping window of its latest event.
    pub fn takes(&self, e: &super::StoredEvent) -> bool {
        self.status != IncidentStatus::Closed
            && (e.occurred_at - self.last_at).abs() <= crate::incidents::GROUP_WINDOW
    }

    /// Counts `e` in: the latest event (and its user) if it is the newest, the highest
    /// severity, every audience; `true` when `e` became the latest.
    pub fn count_in(&mut self, e: &super::StoredEvent) -> bool {
        self.count += 1;
        let newest = e.occurred_at >= self.last_at;
        if newest {
            self.last_at = e.occurred_at;
            self.last_seq = e.seq;
            if e.user.is_some() {
                self.user.clone_from(&e.user);
            }
        }
        if crate::incidents::severity_rank(&e.severity)
            > crate::incidents::severity_rank(&self.severity)
        {
            self.severity.clone_from(&e.severity);
        }
        for a in &e.audience {
            if !self.audience.contains(a) {
                self.audience.push(a.clone());
            }
        }
        self.updated_at = e.received_at;
        newest
    }
}

/// What an entry in an incident's record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryAction {
    Acknowledged,
    Note,
    ActionTaken,
    Closed,
    Reopened,
}

impl EntryAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryAction::Acknowledged => "acknowledged",
            EntryAction::Note => "note",
            EntryAction::ActionTaken => "action_taken",
            EntryAction::Closed => "closed",
            EntryAction::Reopened => "reopened",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "acknowledged" => EntryAction::Acknowledged,
            "note" => EntryAction::Note,
            "action_taken" => EntryAction::ActionTaken,
            "closed" => EntryAction::Closed,
            "reopened" => EntryAction::Reopened,
            _ => return None,
        })
    }

    /// The status after this entry, given the one before.
    pub fn status_after(self, before: IncidentStatus) -> IncidentStatus {
        match self {
            EntryAction::Acknowledged if before == IncidentStatus::Open => {
                IncidentStatus::Acknowledged
            }
            EntryAction::ActionTaken if before != IncidentStatus::Closed => {
                IncidentStatus::Actioned
            }
            EntryAction::Closed => IncidentStatus::Closed,
            EntryAction::Reopened => IncidentStatus::Open,
            _ => before,
        }
    }
}

/// One entry of an incident's record. Entries are never changed or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentEntry {
    pub incident: u64,
    /// 1, 2, 3... within the incident.
    pub n: u32,
    pub at: DateTime<Utc>,
    pub by: String,
    pub action: EntryAction,
    pub text: String,
}

/// Which incidents to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct IncidentQuery {
    pub category: Option<Category>,
    pub status: Option<IncidentStatus>,
    /// Leave out closed ones (the default view).
    pub open_only: bool,
    pub device: Option<String>,
    pub user: Option<String>,
    /// Incidents with an id below this (paging).
    pub before: Option<u64>,
    pub limit: usize,
}

/// `IncidentStore`'s methods that a handle forwards to its engine, written once (see `methods.rs`).
macro_rules! incident_store_methods {
    ($then:ident $(, $($lead:tt)*)?) => {
        $then! {
            $($($lead)*)?
            fn incident(&self, id: u64) -> StoreResult<Option<Incident>>;
            /// Newest first; returns the page and the cursor for the next.
            fn incidents(&self, q: &IncidentQuery) -> StoreResult<(Vec<Incident>, Option<u64>)>;
            /// Appends an entry (its `n` is assigned here) and updates the incident's status,
            /// atomically; returns the entry as stored.
            fn add_incident_entry(
                &self,
                incident: u64,
                at: DateTime<Utc>,
                by: &str,
                action: EntryAction,
                text: &str,
            ) -> StoreResult<IncidentEntry>;
            fn incident_entries(&self, incident: u64) -> StoreResult<Vec<IncidentEntry>>;
        }
    };
}
pub(crate) use incident_store_methods;

/// Incidents and their records.
pub trait IncidentStore {
    incident_store_methods!(declare_methods);
}
