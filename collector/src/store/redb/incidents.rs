//! The redb implementation of `IncidentStore`, and the fold that opens and extends incidents as events are stored.

use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::super::{
    EntryAction, Incident, IncidentEntry, IncidentQuery, IncidentStatus, IncidentStore, StoreError,
    StoreResult, StoredEvent,
};
use super::{Engine, decode, encode, engine};
use crate::incidents;

/// Incident id → the incident (JSON). Ids are given out in order and never removed, so the
/// next id is the last key plus one.
pub(super) const INCIDENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("incidents");
/// Group key (device, kind, subject) → the latest incident of that group.
pub(super) const INCIDENT_OPEN: TableDefinition<&str, u64> = TableDefinition::new("incident_open");
/// (device, incident id) → nothing: one device's incidents without a walk over all of them.
pub(super) const DEVICE_INCIDENTS: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("device_incidents");
/// (incident id, n) → the entry (JSON); an incident's record, which only grows.
pub(super) const INCIDENT_LOG: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("incident_log");

/// Creates this module's tables, so that a read before the first incident finds them empty
/// rather than missing.
pub(super) fn create_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(INCIDENTS).map_err(engine)?;
    txn.open_table(INCIDENT_OPEN).map_err(engine)?;
    txn.open_table(DEVICE_INCIDENTS).map_err(engine)?;
    txn.open_table(INCIDENT_LOG).map_err(engine)?;
    Ok(())
}

/// Opens an incident for a flagged event, or counts it into the open incident of its group if
/// the last one was recent. Runs inside the transaction that stores the event, so it happens
/// exactly once per stored event. `_arrival_id` is the event's place in the timeline; incidents
/// are numbered on their own (as the PostgreSQL store numbers them), so it is not needed today.
pub(super) fn fold_event(
    txn: &WriteTransaction,
    e: &StoredEvent,
    _arrival_id: u64,
) -> StoreResult<()> {
    let Some(category) = incidents::category(&e.audience) else {
        return Ok(());
    };
    let subject = incidents::subject(&e.kind, &e.details);
    let group = incidents::group_key(&e.device_id, &e.kind, &subject);
    let mut table = txn.open_table(INCIDENTS).map_err(engine)?;
    let mut open = txn.open_table(INCIDENT_OPEN).map_err(engine)?;
    let open_id = open.get(group.as_str()).map_err(engine)?.map(|g| g.value());
    if let Some(id) = open_id {
        let existing = table.get(id).map_err(engine)?.map(|g| g.value().to_vec());
        if let Some(raw) = existing {
            let mut inc: Incident = decode("incident", &raw)?;
            if inc.takes(e) {
                inc.count_in(e);
                table.insert(id, encode(&inc).as_slice()).map_err(engine)?;
                return Ok(());
            }
        }
    }
    let last = table.last().map_err(engine)?.map(|(k, _)| k.value());
    let id = super::next_id(txn, last, super::privacy::FLOOR_INCIDENTS)?;
    let inc = Incident::opened_by(id, category, subject, e);
    table.insert(id, encode(&inc).as_slice()).map_err(engine)?;
    open.insert(group.as_str(), id).map_err(engine)?;
    txn.open_table(DEVICE_INCIDENTS)
        .map_err(engine)?
        .insert((e.device_id.as_str(), id), ())
        .map_err(engine)?;
    Ok(())
}

fn wanted(q: &IncidentQuery, inc: &Incident) -> bool {
    q.category.is_none_or(|c| inc.category == c)
        && q.status.is_none_or(|s| inc.status == s)
        && (!q.open_only || inc.status != IncidentStatus::Closed)
        && q.device.as_ref().is_none_or(|d| &inc.device_id == d)
        && q.user.as_ref().is_none_or(|u| inc.user.as_ref() == Some(u))
}

/// Keeps `inc` if the query wants it; returns true once the page is full (and sets `next`).
fn take(q: &IncidentQuery, inc: Incident, out: &mut Vec<Incident>, next: &mut Option<u64>) -> bool {
    if !wanted(q, &inc) {
        return false;
    }
    if out.len() == q.limit {
        *next = out.last().map(|i| i.id);
        return true;
    }
    out.push(inc);
    false
}

impl IncidentStore for Engine {
    fn incident(&self, id: u64) -> StoreResult<Option<Incident>> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(INCIDENTS).map_err(engine)?;
        table
            .get(id)
            .map_err(engine)?
            .map(|v| decode("incident", v.value()))
            .transpose()
    }

    fn incidents(&self, q: &IncidentQuery) -> StoreResult<(Vec<Incident>, Option<u64>)> {
        let upper = q.before.unwrap_or(u64::MAX);
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(INCIDENTS).map_err(engine)?;
        let mut out = Vec::new();
        let mut next = None;
        if let Some(device) = &q.device {
            // One device's incidents through the index, not a walk over every incident.
            let idx = txn.open_table(DEVICE_INCIDENTS).map_err(engine)?;
            for item in idx
                .range((device.as_str(), 0)..(device.as_str(), upper))
                .map_err(engine)?
                .rev()
            {
                let (k, _) = item.map_err(engine)?;
                let id = k.value().1;
                let Some(raw) = table.get(id).map_err(engine)? else {
                    continue;
                };
                let inc: Incident = decode("incident", raw.value())?;
                if take(q, inc, &mut out, &mut next) {
                    break;
                }
            }
            return Ok((out, next));
        }
        for item in table.range(..upper).map_err(engine)?.rev() {
            let (_, v) = item.map_err(engine)?;
            let inc: Incident = decode("incident", v.value())?;
            if take(q, inc, &mut out, &mut next) {
                break;
            }
        }
        Ok((out, next))
    }

    fn add_incident_entry(
        &self,
        incident: u64,
        at: DateTime<Utc>,
        by: &str,
        action: EntryAction,
        text: &str,
    ) -> StoreResult<IncidentEntry> {
        let txn = self.db.begin_write().map_err(engine)?;
        let entry = {
            let mut incidents = txn.open_table(INCIDENTS).map_err(engine)?;
            let mut log = txn.open_table(INCIDENT_LOG).map_err(engine)?;
            let raw = incidents
                .get(incident)
                .map_err(engine)?
                .map(|g| g.value().to_vec());
            let Some(raw) = raw else {
                // Dropping the transaction aborts it: nothing was written.
                return Err(StoreError::Conflict(format!(
                    "there is no incident {incident}"
                )));
            };
            let mut inc: Incident = decode("incident", &raw)?;
            let n = log
                .range((incident, 0)..=(incident, u32::MAX))
                .map_err(engine)?
                .next_back()
                .transpose()
                .map_err(engine)?
                .map_or(0, |(k, _)| k.value().1)
                + 1;
            let entry = IncidentEntry {
                incident,
                n,
                at,
                by: by.to_string(),
                action,
                text: text.to_string(),
            };
            log.insert((incident, n), encode(&entry).as_slice())
                .map_err(engine)?;
            inc.status = action.status_after(inc.status);
            inc.updated_at = at;
            incidents
                .insert(incident, encode(&inc).as_slice())
                .map_err(engine)?;
            entry
        };
        txn.commit().map_err(engine)?;
        Ok(entry)
    }

    fn incident_entries(&self, incident: u64) -> StoreResult<Vec<IncidentEntry>> {
        let txn = self.db.begin_read().map_err(engine)?;
        let log = txn.open_table(INCIDENT_LOG).map_err(engine)?;
        log.range((incident, 0)..=(incident, u32::MAX))
            .map_err(engine)?
            .map(|r| {
                r.map_err(engine)
                    .and_then(|(_, v)| decode("incident entry", v.value()))
            })
            .collect()
    }
}
