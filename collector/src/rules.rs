//! Who must know about an event: severity and audience, decided by the collector from the event and the policy.
//!
//! Agents report facts; the school's judgement lives here, so changing the
//! policy changes how new events are flagged without touching any laptop.
//! `Rules` is built once per policy version.

use caretaker_proto::policy::PolicyDocument;
use serde_json::{Map, Value, json};

use crate::classify::{self, Classification, Classifier};

pub const NETWORK_MANAGER: &str = "network_manager";
pub const DSL: &str = "dsl";

/// The collector's verdict on one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub severity: &'static str,
    pub audience: Vec<String>,
    /// Why, for the dashboard (e.g. which catalogue entry matched); `None` when routine.
    pub assessment: Option<Value>,
}

impl Verdict {
    fn routine() -> Self {
        Self {
            severity: "info",
            audience: vec![],
            assessment: None,
        }
    }
    fn technical(severity: &'static str) -> Self {
        Self {
            severity,
            audience: vec![NETWORK_MANAGER.into()],
            assessment: None,
        }
    }
}

/// The judgement of one policy version.
pub struct Rules {
    software: Classifier,
}

impl Rules {
    pub fn new(policy: &PolicyDocument) -> Self {
        // The policy was validated on the way in, so its patterns compile; an
        // unreadable one falls back to the built-in defaults rather than stop ingest.
        let software = Classifier::new(&policy.software)
            .or_else(|_| Classifier::new(&Default::default()))
            .expect("the default software policy is valid");
        Self { software }
    }

    /// Classifies one event.
    pub fn classify(&self, kind: &str, details: &Map<String, Value>) -> Verdict {
        match kind {
            // The agent lost events (spool bound) or had to set a damaged spool aside:
            // the record has a gap the network manager should know about.
            "agent.events_dropped" | "agent.spool_recovered" => Verdict::technical("warning"),
            // Someone tried to remove the agent without the uninstall code: tampering, or a
            // technician without the code; either way the network manager should know.
            "agent.uninstall_refused" => Verdict::technical("warning"),
            // A probe stopped making progress: that part of the laptop is not being watched
            // (a stuck USB probe decides nothing: every new device, keyboards too, stays held,
            // and no stick is scanned). Its recovery is recorded for the timeline; the stall's
            // incident stays for the network manager to close.
            "agent.probe_stalled" => Verdict::technical("warning"),
            "agent.probe_recovered" => Verdict::routine(),
            // Anything but `current` is a technical compliance gap.
            "antivirus.status" => match details.get("status").and_then(Value::as_str) {
                Some("current") => Verdict::routine(),
                Some("stale") | Some("unknown") => Verdict::technical("warning"),
                _ => Verdict::technical("high"),
            },
            // "If my computer indicates that there is an infection ... I will stop using it":
            // the network manager must hear at once.
            "antivirus.detection" => Verdict::technical("critical"),
            // The policy working as intended: recorded, nobody needs to act.
            "screen.locked_by_policy" => Verdict::routine(),
            "screen.lock_failed" => Verdict::technical("warning"),
            "screen.compliance" => match details.get("state").and_then(Value::as_str) {
                Some("enforced") => Verdict::routine(),
                _ => Verdict::technical("warning"),
            },
            "session.left_logged_on" => Verdict::technical("notice"),
            "usb.inserted" => usb_inserted(details),
            "usb.blocked" => Verdict::technical("warning"),
            "media.infected" => Verdict::technical("critical"),
            "media.scanned" => match details.get("result").and_then(Value::as_str) {
                Some("clean") => Verdict::routine(),
                _ => Verdict::technical("notice"),
            },
            k if k.starts_with("software.") || k == "executable.in_user_area" => {
                self.software(kind, details)
            }
            _ => Verdict::routine(),
        }
    }

    fn software(&self, kind: &str, details: &Map<String, Value>) -> Verdict {
        let verdicts = self.software.classify_event(kind, details);
        // A start-up inventory is not a change: flag only what needs action
        // (denied software, bypass tools), not every package without approval.
        let counts = |v: &classify::Verdict| {
            kind != "software.inventory"
                || matches!(
                    v.classification,
                    Classification::Denied | Classification::BypassTool
                )
        };
        let flagged: Vec<&classify::Verdict> = verdicts
            .iter()
            .filter(|v| counts(v) && !v.audience.is_empty())
            .collect();
        if flagged.is_empty() {
            return Verdict::routine();
        }
        let mut audience: Vec<String> = Vec::new();
        for v in &flagged {
            for a in &v.audience {
                let a = match a {
                    classify::Audience::NetworkManager => NETWORK_MANAGER,
                    classify::Audience::Dsl => DSL,
                };
                if !audience.iter().any(|x| x == a) {
                    audience.push(a.to_string());
                }
            }
        }
        let severity = match flagged.iter().map(|v| v.severity).max() {
            Some(classify::Severity::High) => "high",
            Some(classify::Severity::Medium) => "warning",
            Some(classify::Severity::Low) => "notice",
            _ => "info",
        };
        Verdict {
            severity,
            audience,
            assessment: Some(json!({ "software": flagged })),
        }
    }
}

/// A USB insertion: routine, unless it is storage used against the policy.
fn usb_inserted(details: &Map<String, Value>) -> Verdict {
    let storage = details.get("mass_storage").and_then(Value::as_bool) == Some(true);
    if !storage {
        return Verdict::routine();
    }
    let mut v = Verdict::routine();
    let av_current = details.get("antivirus_current").and_then(Value::as_bool) != Some(false);
    if !av_current {
        // "USB sticks are only used in computers which have adequate up to date anti-virus".
        v = Verdict::technical("warning");
    }
    let pupil = details.get("account").and_then(Value::as_str) == Some("pupil");
    let blocked = details.get("decision").and_then(Value::as_str) == Some("block");
    if pupil && blocked {
        // "Pupils may not use USB memory sticks without the permission of a teacher":
        // an attempt is a safeguarding matter as well as a technical one.
        v.severity = "warning";
        for a in [NETWORK_MANAGER, DSL] {
            if !v.audience.iter().any(|x| x == a) {
                v.audience.push(a.to_string());
            }
        }
    }
    v
}

/// If `kind` reports a device's current state, the facet it sets and the value kept for it.
pub fn state_facet(kind: &str, details: &Map<String, Value>) -> Option<(String, Value)> {
    match kind {
        "agent.started" => Some(("agent".into(), Value::Object(details.clone()))),
        "antivirus.status" => Some(("antivirus".into(), Value::Object(details.clone()))),
        // The asset facts (model, OS, disk, battery health ...): the latest report replaces the last.
        "device.facts" => Some(("facts".into(), Value::Object(details.clone()))),
        // Kept as {status, reason} so the fleet view counts it like antivirus.
        "screen.compliance" => Some((
            "screen_lock".into(),
            json!({"status": details.get("state"), "reason": details.get("reason")}),
        )),
        _ => None,
    }
}

/// How the agent last started or ended (`running`, `stopped` after a goodbye, `uninstalled`
/// with the code), kept as the `lifecycle` facet: a device that went quiet without one of
/// these crashed, lost power or was cut off.
pub fn lifecycle(kind: &str, details: &Map<String, Value>) -> Option<Value> {
    let status = match kind {
        "agent.started" => "running",
        "agent.stopping" => "stopped",
        "agent.uninstalled" => "uninstalled",
        _ => return None,
    };
    Some(json!({"status": status, "reason": details.get("reason")}))
}

/// Facets whose status the fleet view counts, and the statuses each can take.
const COUNTED: &[(&str, &[&str])] = &[
    (
        "antivirus",
        &["current", "stale", "disabled", "missing", "unknown"],
    ),
    ("screen_lock", &["enforced", "cannot_enforce"]),
    // Written by the collector itself (`crate::clock`), not reported by the agent.
    ("clock", &["ok", "behind", "ahead"]),
];

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

    fn rules() -> Rules {
        Rules::new(&PolicyDocument::default())
    }

    #[test]
    fn lifecycle_is_routine_and_gaps_reach_the_network_manager() {
        let m = Map::new();
        assert_eq!(rules().classify("agent.heartbeat", &m), Verdict::routine());
        assert_eq!(
            rules().classify("agent.events_dropped", &m).audience,
            vec![NETWORK_MANAGER]
        );
    }

    #[test]
    fn antivirus_other_than_current_reaches_the_network_manager() {
        let status = |s: &str| {
            let mut m = Map::new();
            m.insert("status".into(), Value::String(s.into()));
            rules().classify("antivirus.status", &m)
        };
        assert_eq!(status("current").audience, Vec::<String>::new());
        for s in ["stale", "disabled", "missing", "unknown"] {
            assert_eq!(status(s).audience, vec![NETWORK_MANAGER], "{s}");
        }
        assert_eq!(
            rules()
                .classify("antivirus.detection", &Map::new())
                .severity,
            "critical"
        );
    }

    #[test]
    fn device_facts_are_kept_whole_as_the_facts_facet_and_are_routine() {
        let d = json!({"kernel": "6.1.0-26-amd64", "memory_bytes": 8589934592u64});
        let d = d.as_object().unwrap();
        assert_eq!(
            state_facet("device.facts", d),
            Some(("facts".to_string(), Value::Object(d.clone())))
        );
        assert_eq!(rules().classify("device.facts", d), Verdict::routine());
    }

    #[test]
    fn the_agent_saying_goodbye_is_its_lifecycle_and_a_refused_removal_is_flagged() {
        let m = Map::new();
        let status = |k: &str| lifecycle(k, &m).map(|v| v["status"].clone());
        assert_eq!(status("agent.started"), Some(json!("running")));
        assert_eq!(status("agent.stopping"), Some(json!("stopped")));
        assert_eq!(status("agent.uninstalled"), Some(json!("uninstalled")));
        assert_eq!(status("agent.heartbeat"), None);
        assert_eq!(status("agent.uninstall_refused"), None);
        let refused = rules().classify("agent.uninstall_refused", &m);
        assert_eq!(refused.severity, "warning");
        assert_eq!(refused.audience, vec![NETWORK_MANAGER.to_string()]);
        assert_eq!(
            rules().classify("agent.uninstalled", &m),
            Verdict::routine()
        );
    }

    #[test]
    fn a_stalled_probe_warns_the_network_manager_and_its_recovery_is_routine() {
        let m = Map::new();
        let stalled = rules().classify("agent.probe_stalled", &m);
        assert_eq!(stalled.severity, "warning");
        assert_eq!(stalled.audience, vec![NETWORK_MANAGER.to_string()]);
        assert_eq!(
            rules().classify("agent.probe_recovered", &m),
            Verdict::routine()
        );
    }

    #[test]
    fn pupil_storage_without_permission_reaches_the_dsl() {
        let ins = |d: Value| rules().classify("usb.inserted", d.as_object().unwrap());
        let blocked = ins(
            json!({"mass_storage": true, "account": "pupil", "decision": "block", "antivirus_current": true}),
        );
        assert_eq!(blocked.audience, vec![NETWORK_MANAGER, DSL]);
        let staff = ins(
            json!({"mass_storage": true, "account": "staff", "decision": "block", "antivirus_current": true}),
        );
        assert!(!staff.audience.contains(&DSL.to_string()));
        let keyboard = ins(
            json!({"mass_storage": false, "account": "pupil", "decision": "allow", "antivirus_current": false}),
        );
        assert!(keyboard.audience.is_empty());
        let stale_av = ins(
            json!({"mass_storage": true, "account": "staff", "decision": "allow", "antivirus_current": false}),
        );
        assert_eq!(stale_av.audience, vec![NETWORK_MANAGER]);
    }

    #[test]
    fn bypass_tools_reach_the_dsl_and_unapproved_installs_the_network_manager() {
        let installed = |name: &str| {
            let d = json!({"name": name, "version": "1", "source": "dpkg"});
            rules().classify("software.installed", d.as_object().unwrap())
        };
        let tor = installed("tor");
        assert!(
            tor.audience.contains(&DSL.to_string())
                && tor.audience.contains(&NETWORK_MANAGER.to_string()),
            "{tor:?}"
        );
        assert_eq!(installed("gimp").audience, vec![NETWORK_MANAGER]);
        let mut policy = PolicyDocument::default();
        policy.software.approved = vec!["gimp".into()];
        let d = json!({"name": "gimp", "version": "1", "source": "dpkg"});
        assert_eq!(
            Rules::new(&policy)
                .classify("software.installed", d.as_object().unwrap())
                .audience,
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_fleet_counts_laptops_by_clock() {
        let mut devices: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(crate::store::test_device)
            .collect();
        devices[0].state.insert(
            "clock".into(),
            json!({"status": "behind", "offset_secs": -172800}),
        );
        devices[1]
            .state
            .insert("clock".into(), json!({"status": "ok", "offset_secs": 1}));
        let counts = fleet_counts(&devices);
        assert_eq!(
            counts["clock"],
            json!({"ok": 1, "behind": 1, "ahead": 0, "not_reported": 1})
        );
    }
}
