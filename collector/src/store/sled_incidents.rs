//! The sled implementation of `IncidentStore`, and the fold that opens and extends incidents as events are stored.

use chrono::{DateTime, Utc};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::sled_store::{decode, encode, engine};
use super::{
    EntryAction, Incident, IncidentEntry, IncidentQuery, IncidentStatus, IncidentStore, SledStore,
    StoreError, StoreResult, StoredEvent,
};
use crate::incidents;

/// The key in `incident_open` holding the last incident number given out.
const NEXT_ID: &[u8] = b"\xff#next";

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 5,
        "high" => 4,
        "warning" => 3,
        "notice" => 2,
        "info" => 1,
        _ => 0,
    }
}

fn id_of(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

/// Opens an incident for a flagged event, or counts it into the open incident of its group if
/// the last one was recent. Runs inside the transaction that stores the event, so it happens
/// exactly once per stored event.
pub(super) fn fold_event(
    incidents_tx: &TransactionalTree,
    open: &TransactionalTree,
    e: &StoredEvent,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let Some(category) = incidents::category(&e.audience) else {
        return Ok(());
    };
    let subject = incidents::subject(&e.kind, &e.details);
    let group = incidents::group_key(&e.device_id, &e.kind, &subject);
    if let Some(id) = open.get(group.as_bytes())?.and_then(|v| id_of(&v))
        && let Some(raw) = incidents_tx.get(id.to_be_bytes())?
    {
        let mut inc: Incident =
            decode("incident", &raw).map_err(ConflictableTransactionError::Abort)?;
        let recent = (e.occurred_at - inc.last_at).abs() <= incidents::GROUP_WINDOW;
        if inc.status != IncidentStatus::Closed && recent {
            inc.count += 1;
            if e.occurred_at >= inc.last_at {
                inc.last_at = e.occurred_at;
                inc.last_seq = e.seq;
                if e.user.is_some() {
                    inc.user.clone_from(&e.user);
                }
            }
            if severity_rank(&e.severity) > severity_rank(&inc.severity) {
                inc.severity.clone_from(&e.severity);
            }
            for a in &e.audience {
                if !inc.audience.contains(a) {
                    inc.audience.push(a.clone());
                }
            }
            inc.updated_at = e.received_at;
            incidents_tx.insert(&id.to_be_bytes(), encode(&inc))?;
            return Ok(());
        }
    }
    let id = open.get(NEXT_ID)?.and_then(|v| id_of(&v)).unwrap_or(0) + 1;
    open.insert(NEXT_ID, &id.to_be_bytes())?;
    let inc = Incident {
        id,
        category,
        device_id: e.device_id.clone(),
        user: e.user.clone(),
        kind: e.kind.clone(),
        title: incidents::title(&e.kind, &e.details),
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
    };
    incidents_tx.insert(&id.to_be_bytes(), encode(&inc))?;
    open.insert(group.as_bytes(), &id.to_be_bytes())?;
    Ok(())
}

fn entry_key(incident: u64, n: u32) -> Vec<u8> {
    let mut k = incident.to_be_bytes().to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn wanted(q: &IncidentQuery, inc: &Incident) -> bool {
    q.category.is_none_or(|c| inc.category == c)
        && q.status.is_none_or(|s| inc.status == s)
        && (!q.open_only || inc.status != IncidentStatus::Closed)
        && q.device.as_ref().is_none_or(|d| &inc.device_id == d)
        && q.user.as_ref().is_none_or(|u| inc.user.as_ref() == Some(u))
}

impl IncidentStore for SledStore {
    fn incident(&self, id: u64) -> StoreResult<Option<Incident>> {
        self.incidents
            .get(id.to_be_bytes())
            .map_err(engine)?
            .map(|v| decode("incident", &v))
            .transpose()
    }

    fn incidents(&self, q: &IncidentQuery) -> StoreResult<(Vec<Incident>, Option<u64>)> {
        let upper = q.before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut next = None;
        for item in self.incidents.range(..upper.to_be_bytes()).rev() {
            let (_, v) = item.map_err(engine)?;
            let inc: Incident = decode("incident", &v)?;
            if wanted(q, &inc) {
                if out.len() == q.limit {
                    next = out.last().map(|i: &Incident| i.id);
                    break;
                }
                out.push(inc);
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
        let result = (&self.incidents, &self.incident_log).transaction(|(incidents, log)| {
            let Some(raw) = incidents.get(incident.to_be_bytes())? else {
                return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                    format!("there is no incident {incident}"),
                )));
            };
            let mut inc: Incident =
                decode("incident", &raw).map_err(ConflictableTransactionError::Abort)?;
            // The count of entries so far is kept under the incident's own 12-byte end key.
            let count_key = entry_key(incident, u32::MAX);
            let n = log
                .get(&count_key)?
                .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes))
                .unwrap_or(0)
                + 1;
            let entry = IncidentEntry {
                incident,
                n,
                at,
                by: by.to_string(),
                action,
                text: text.to_string(),
            };
            log.insert(entry_key(incident, n), encode(&entry))?;
            log.insert(count_key, &n.to_be_bytes())?;
            inc.status = action.status_after(inc.status);
            inc.updated_at = at;
            incidents.insert(&incident.to_be_bytes(), encode(&inc))?;
            Ok(entry)
        });
        let entry = result.map_err(|e: TransactionError<StoreError>| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => engine(e),
        })?;
        self.flush()?;
        Ok(entry)
    }

    fn incident_entries(&self, incident: u64) -> StoreResult<Vec<IncidentEntry>> {
        self.incident_log
            .range(entry_key(incident, 0)..entry_key(incident, u32::MAX))
            .map(|r| {
                r.map_err(engine)
                    .and_then(|(_, v)| decode("incident entry", &v))
            })
            .collect()
    }
}
