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
pub fn classify(kind: &str, _details: &Map<String, Value>, _policy: &PolicyDocument) -> Verdict {
    match kind {
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
        _ => None,
    }
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
