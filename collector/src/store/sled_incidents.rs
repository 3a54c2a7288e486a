//! The sled implementation of `IncidentStore`, and the fold that opens and extends incidents as events are stored.

use chrono::{DateTime, Utc};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::sled_store::{Engine, IDX_DEVICE_INCIDENT, decode, encode, engine, idx_key};
use super::{
    EntryAction, Incident, IncidentEntry, IncidentQuery, IncidentStatus, IncidentStore, StoreError,
    StoreResult, StoredEvent,
};
use crate::incidents;

/// The key in `incident_open` holding the last incident number given out.
const NEXT_ID: &[u8] = b"\xff#next";

fn id_of(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

/// Opens an incident for a flagged event, or counts it into the open incident of its group if
/// the last one was recent. Runs inside the transaction that stores the event, so it happens
/// exactly once per stored event.
pub(super) fn fold_event(
    idx: &TransactionalTree,
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
        if inc.takes(e) {
            inc.count_in(e);
            incidents_tx.insert(&id.to_be_bytes(), encode(&inc))?;
            return Ok(());
        }
    }
    let id = open.get(NEXT_ID)?.and_then(|v| id_of(&v)).unwrap_or(0) + 1;
    open.insert(NEXT_ID, &id.to_be_bytes())?;
    let inc = Incident::opened_by(id, category, subject, e);
    incidents_tx.insert(&id.to_be_bytes(), encode(&inc))?;
    open.insert(group.as_bytes(), &id.to_be_bytes())?;
    idx.insert(idx_key(IDX_DEVICE_INCIDENT, &e.device_id, id), &[])?;
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

impl IncidentStore for Engine {
    fn incident(&self, id: u64) -> StoreResult<Option<Incident>> {
        self.incidents
            .get(id.to_be_bytes())
            .map_err(engine)?
            .map(|v| decode("incident", &v))
            .transpose()
    }

    fn incidents(&self, q: &IncidentQuery) -> StoreResult<(Vec<Incident>, Option<u64>)> {
        let upper = q.before.unwrap_or(u64::MAX);
        if let Some(device) = &q.device {
            // One device's incidents through the index, not a walk over every incident.
            let from = idx_key(IDX_DEVICE_INCIDENT, device, 0);
            let to = idx_key(IDX_DEVICE_INCIDENT, device, upper);
            let mut out = Vec::new();
            let mut next = None;
            for item in self.idx.range(from..to).rev() {
                let (k, _) = item.map_err(engine)?;
                let id = u64::from_be_bytes(
                    k[k.len() - 8..]
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("incident index key".into()))?,
                );
                let Some(inc) = self.incident(id)? else {
                    continue;
                };
                if wanted(q, &inc) {
                    if out.len() == q.limit {
                        next = out.last().map(|i: &Incident| i.id);
                        break;
                    }
                    out.push(inc);
                }
            }
            return Ok((out, next));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        DeviceBatch, EventQuery, IncidentQuery, IncidentStore, SledStore, Store, test_device,
    };
    use serde_json::json;

    fn flagged(device: &str, seq: u64, serial: &str, at: DateTime<Utc>) -> StoredEvent {
        StoredEvent {
            device_id: device.into(),
            seq,
            kind: "usb.inserted".into(),
            occurred_at: at,
            received_at: at,
            user: Some("pupil1".into()),
            details: json!({"serial": serial, "product": "Stick", "decision": "block"})
                .as_object()
                .unwrap()
                .clone(),
            severity: "warning".into(),
            audience: vec!["network_manager".into(), "dsl".into()],
            assessment: None,
        }
    }

    fn routine(device: &str, seq: u64) -> StoredEvent {
        StoredEvent {
            kind: "agent.heartbeat".into(),
            audience: vec![],
            user: None,
            details: Default::default(),
            severity: "info".into(),
            ..flagged(device, seq, "", Utc::now())
        }
    }

    fn batch(device: &str, events: Vec<StoredEvent>) -> DeviceBatch {
        DeviceBatch {
            device_id: device.into(),
            events,
            facts: None,
            state: Default::default(),
            seen_at: Utc::now(),
        }
    }

    fn all(s: &SledStore) -> Vec<Incident> {
        s.incidents(&IncidentQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .0
    }

    #[test]
    fn the_audience_index_pages_only_matching_events_and_an_old_store_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The engine itself, to reach its trees.
            let s = Engine::open(dir.path()).unwrap();
            s.insert_device(&test_device("d")).unwrap();
            let events: Vec<StoredEvent> = (1..=50)
                .map(|i| {
                    if i % 10 == 0 {
                        flagged("d", i, &format!("S{i}"), Utc::now())
                    } else {
                        routine("d", i)
                    }
                })
                .collect();
            s.append(&[batch("d", events)]).unwrap();
            // Make it look like a store from before indexes and incidents.
            s.idx.clear().unwrap();
            s.incidents.clear().unwrap();
            s.incident_open.clear().unwrap();
            s.meta.clear().unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(all(&s).len(), 5, "incidents rebuilt at open");
        let by_device = s
            .incidents(&IncidentQuery {
                device: Some("d".into()),
                limit: 3,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(by_device.0.len(), 3, "and indexed by device");
        assert_eq!(by_device.0[0].id, 5, "newest first");
        let rest = s
            .incidents(&IncidentQuery {
                device: Some("d".into()),
                limit: 3,
                before: by_device.1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rest.0.iter().map(|i| i.id).collect::<Vec<_>>(), [2, 1]);
        assert!(
            s.incidents(&IncidentQuery {
                device: Some("other".into()),
                limit: 3,
                ..Default::default()
            })
            .unwrap()
            .0
            .is_empty()
        );
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = s
                .events(&EventQuery {
                    audience: Some("dsl".into()),
                    limit: 2,
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .unwrap();
            seen.extend(page.events.iter().map(|e| e.seq));
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(seen, [50, 40, 30, 20, 10], "newest first, only the DSL's");
        let pupil = s
            .events(&EventQuery {
                user: Some("pupil1".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(pupil.events.len(), 5);
        let technical = s
            .events(&EventQuery {
                exclude_audience: Some("dsl".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(technical.events.len(), 45);
    }
}
