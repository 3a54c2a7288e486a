//! Who must know about an event: severity and audience, decided by the collector from the event and the policy.
//!
//! Agents report facts; the school's judgement lives here, so changing the
//! policy changes how new events are flagged without touching any laptop.

use caretaker_proto::policy::PolicyDocument;
use serde_json::{Map, Value};

pub const NETWORK_MANAGER: &str = "network_manager";
pub const DSL: &str = "dsl";

/// The collector's verdict on one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub severity: &'static str,
    pub audience: Vec<String>,
}

impl Verdict {
    fn routine() -> Self {
        Self {
            severity: "info",
            audience: vec![],
        }
    }
    fn technical(severity: &'static str) -> Self {
        Self {
            severity,
            audience: vec![NETWORK_MANAGER.into()],
        }
    }
}

/// Classifies one event.
pub fn classify(kind: &str, details: &Map<String, Value>, _policy: &PolicyDocument) -> Verdict {
    match kind {
        // Anything but `current` is a technical compliance gap.
        "antivirus.status" => match details.get("status").and_then(Value::as_str) {
            Some("current") => Verdict::routine(),
            Some("stale") | Some("unknown") => Verdict::technical("warning"),
            _ => Verdict::technical("high"),
        },
        // "If my computer indicates that there is an infection ... I will stop using it": the
        // network manager must hear at once.
        "antivirus.detection" => Verdict::technical("critical"),
        // The agent lost events (spool bound) or had to set a damaged spool aside:
        // the record has a gap the network manager should know about.
        "agent.events_dropped" | "agent.spool_recovered" => Verdict::technical("warning"),
        _ => Verdict::routine(),
    }
}

/// If `kind` reports a device's current state, the facet it sets and the value kept for it.
pub fn state_facet(kind: &str, details: &Map<String, Value>) -> Option<(String, Value)> {
    match kind {
        "agent.started" => Some(("agent".into(), Value::Object(details.clone()))),
        "antivirus.status" => Some(("antivirus".into(), Value::Object(details.clone()))),
        _ => None,
    }
}

/// Facets whose status the fleet view counts, and the statuses each can take.
const COUNTED: &[(&str, &[&str])] = &[(
    "antivirus",
    &["current", "stale", "disabled", "missing", "unknown"],
)];

/// How many active (not revoked) devices are in each status of each counted facet;
/// devices that have not reported a facet yet count as `not_reported`.
pub fn fleet_counts(devices: &[crate::store::Device]) -> Value {
    let active: Vec<_> = devices.iter().filter(|d| d.revoked_at.is_none()).collect();
    let mut out = Map::new();
    out.insert("devices".into(), Value::from(active.len()));
    for (facet, statuses) in COUNTED {
        let mut counts: Map<String, Value> = statuses
            .iter()
            .map(|s| (s.to_string(), Value::from(0u64)))
            .collect();
        counts.insert("not_reported".into(), Value::from(0u64));
        for d in &active {
            let status = d
                .state
                .get(*facet)
                .and_then(|v| v.get("status"))
                .and_then(Value::as_str)
                .unwrap_or("not_reported");
            let n = counts
                .entry(status.to_string())
                .or_insert(Value::from(0u64));
            *n = Value::from(n.as_u64().unwrap_or(0) + 1);
        }
        out.insert(facet.to_string(), Value::Object(counts));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_is_routine_and_gaps_reach_the_network_manager() {
        let p = PolicyDocument::default();
        let m = Map::new();
        assert_eq!(classify("agent.heartbeat", &m, &p), Verdict::routine());
        assert_eq!(
            classify("agent.events_dropped", &m, &p).audience,
            vec![NETWORK_MANAGER]
        );
    }
}
