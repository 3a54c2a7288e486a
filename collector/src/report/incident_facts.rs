//! A report's incident figures: every incident with its record, each one's status at a time replayed from that record, and the per-kind lines of a period.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::model::IncidentLine;
use super::period::Period;
use crate::incidents::kind_label;
use crate::store::{
    Category, EntryAction, Incident, IncidentQuery, IncidentStatus, Store, StoreResult,
};

/// An incident and its record's entries (when, what), oldest first.
pub(super) type Recorded = (Incident, Vec<(DateTime<Utc>, EntryAction)>);

/// An incident's status at `t`, from its record.
pub(super) fn status_at(
    entries: &[(DateTime<Utc>, EntryAction)],
    t: DateTime<Utc>,
) -> IncidentStatus {
    entries
        .iter()
        .take_while(|(at, _)| *at < t)
        .fold(IncidentStatus::Open, |s, (_, a)| a.status_after(s))
}

pub(super) fn is_software(i: &Incident) -> bool {
    i.kind.starts_with("software.") || i.kind == "executable.in_user_area"
}

/// All incidents with their records, oldest record entry first.
pub(super) fn incidents_with_records(store: &dyn Store) -> StoreResult<Vec<Recorded>> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let (page, next) = store.incidents(&IncidentQuery {
            before,
            limit: 5000,
            ..Default::default()
        })?;
        for i in page {
            let log = store
                .incident_entries(i.id)?
                .into_iter()
                .map(|e| (e.at, e.action))
                .collect();
            out.push((i, log));
        }
        match next {
            Some(n) => before = Some(n),
            None => return Ok(out),
        }
    }
}

pub(super) fn overlaps(i: &Incident, p: &Period) -> bool {
    i.first_at < p.end && i.last_at >= p.start
}

pub(super) fn incident_lines(incidents: &[Recorded], p: &Period) -> Vec<IncidentLine> {
    let mut lines: BTreeMap<(&'static str, &'static str), IncidentLine> = BTreeMap::new();
    for (i, log) in incidents.iter().filter(|(i, _)| overlaps(i, p)) {
        let category = match i.category {
            Category::Safeguarding => "Safeguarding",
            Category::Technical => "Technical",
        };
        let kind = kind_label(&i.kind);
        let l = lines.entry((category, kind)).or_insert(IncidentLine {
            kind,
            category,
            incidents: 0,
            new: 0,
            events: 0,
            open: 0,
            acknowledged: 0,
            actioned: 0,
            closed: 0,
        });
        l.incidents += 1;
        l.new += u32::from(i.first_at >= p.start);
        l.events += i.count;
        match status_at(log, p.end) {
            IncidentStatus::Open => l.open += 1,
            IncidentStatus::Acknowledged => l.acknowledged += 1,
            IncidentStatus::Actioned => l.actioned += 1,
            IncidentStatus::Closed => l.closed += 1,
        }
    }
    lines.into_values().collect()
}

pub(super) fn count_category(lines: &[IncidentLine], category: &str) -> u32 {
    lines
        .iter()
        .filter(|l| l.category == category)
        .map(|l| l.incidents)
        .sum()
}
