//! Checking and judging an incoming batch before it is stored: each event's fields, its
//! classification, the device's state facets and its clock.
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::rules;
use crate::store::{AgentFacts, DeviceBatch, StoredEvent};

use super::{Collector, IncomingEvent};

/// The longest event kind accepted.
const MAX_KIND: usize = 64;
pub(crate) const MAX_USER: usize = 256;

pub(super) fn valid_kind(kind: &str) -> bool {
    let mut parts = kind.split('.');
    kind.len() <= MAX_KIND
        && kind.contains('.')
        && parts.all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Why a batch was refused: its first bad event (1-based position and seq) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index} of the batch (seq {seq}): {problem}")]
pub struct BatchError {
    pub index: usize,
    pub seq: u64,
    #[source]
    pub problem: EventProblem,
}

/// What is wrong with one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventProblem {
    #[error("seq must start at 1")]
    SeqZero,
    #[error("kind {0:?} is not a dotted lowercase name")]
    BadKind(String),
    #[error("user is longer than {MAX_USER} bytes")]
    UserTooLong,
    #[error("occurred_at is missing or out of range")]
    NoOccurredAt,
}

impl Collector {
    /// Checks and judges one batch; `Err` names the first bad event.
    pub fn prepare_batch(
        &self,
        device_id: &str,
        events: Vec<IncomingEvent>,
        facts: Option<AgentFacts>,
    ) -> Result<DeviceBatch, BatchError> {
        let now = Utc::now();
        let rules = self.rules.read().expect("rules lock").clone();
        let pseudonymise = self.pseudonymise.load(std::sync::atomic::Ordering::Relaxed);
        let mut state = Map::new();
        let mut out = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let at = |problem| BatchError {
                index: i + 1,
                seq: e.seq,
                problem,
            };
            if e.seq == 0 {
                return Err(at(EventProblem::SeqZero));
            }
            if !valid_kind(&e.kind) {
                return Err(at(EventProblem::BadKind(e.kind.clone())));
            }
            if e.user.len() > MAX_USER {
                return Err(at(EventProblem::UserTooLong));
            }
            let Some(occurred_at) = e.occurred_at else {
                return Err(at(EventProblem::NoOccurredAt));
            };
            let verdict = rules.classify(&e.kind, &e.details);
            let mut stored = StoredEvent {
                device_id: device_id.to_string(),
                seq: e.seq,
                kind: e.kind,
                occurred_at,
                received_at: now,
                user: (!e.user.is_empty()).then_some(e.user),
                details: e.details,
                severity: verdict.severity.to_string(),
                audience: verdict.audience,
                assessment: verdict.assessment,
            };
            // After classification, which may read the name (pupil or staff rules), and
            // before the device's state facets, which are copied from the details.
            if pseudonymise {
                crate::subject::pseudonymise_technical(&self.pseudonym_key, &mut stored);
            }
            if let Some((facet, value)) = rules::state_facet(&stored.kind, &stored.details) {
                state.insert(facet, value);
            }
            if let Some(value) = rules::lifecycle(&stored.kind, &stored.details) {
                state.insert("lifecycle".into(), value);
            }
            out.push(stored);
        }
        // A batch that is all resends (no seq above the highest stored) is judged already, and
        // the store keeps no state facet from it: judging it again would move the clock
        // tracker to a verdict never recorded, and a later real change to that verdict would
        // then go unrecorded too.
        let highest = self.highest_seq(device_id);
        if out.iter().any(|e| e.seq > highest)
            && let Some(newest) = out.iter().map(|e| e.occurred_at).max()
        {
            self.judge_clock(device_id, newest, now, out.len(), &mut state);
        }
        Ok(DeviceBatch {
            device_id: device_id.to_string(),
            events: out,
            facts,
            state,
            seen_at: now,
        })
    }

    /// Judges the device's clock from a batch and, when the judgement changes, records it as the
    /// `clock` facet with the batch (so it is as durable as the events that showed it).
    fn judge_clock(
        &self,
        device_id: &str,
        newest: DateTime<Utc>,
        now: DateTime<Utc>,
        events: usize,
        state: &mut Map<String, Value>,
    ) {
        use crate::clock::{ClockStatus, ClockTracker};
        let mut clocks = self.clocks.lock().expect("clocks lock");
        let tracker = clocks.entry(device_id.to_string()).or_insert_with(|| {
            let recorded = self
                .devices
                .map
                .read()
                .expect("device cache lock")
                .get(device_id)
                .and_then(|d| ClockStatus::from_facet(d.state.get("clock")));
            ClockTracker::resume(recorded)
        });
        let Some((status, facet)) = tracker.observe(newest, now, events) else {
            return;
        };
        let offset_secs = facet["offset_secs"].as_i64().unwrap_or(0);
        match status {
            ClockStatus::Ok => {
                tracing::debug!(device = %device_id, offset_secs, "Device clock is right")
            }
            _ => tracing::warn!(
                device = %device_id,
                offset_secs,
                clock = status.label(),
                "Device clock is wrong"
            ),
        }
        state.insert("clock".into(), facet);
    }
}
