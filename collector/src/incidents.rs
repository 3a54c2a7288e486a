//! How flagged events become incidents: which category, what groups repeats together, and a readable title.
//!
//! Pure functions; the store applies them inside the transaction that stores the events.

use chrono::Duration;
use serde_json::{Map, Value};

use crate::rules::DSL;
use crate::store::Category;

/// Repeats of the same thing on the same device within this long of the last one join its
/// incident instead of opening a new one (a pupil retrying a stick ten times is one concern).
pub const GROUP_WINDOW: Duration = Duration::hours(24);

/// The category of an event with this audience, or `None` if nobody needs to know.
pub fn category(audience: &[String]) -> Option<Category> {
    if audience.is_empty() {
        None
    } else if audience.iter().any(|a| a == DSL) {
        Some(Category::Safeguarding)
    } else {
        Some(Category::Technical)
    }
}

fn text<'a>(details: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    details
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// What the event is about, for grouping: the product for software, the stick for media.
pub fn subject(kind: &str, details: &Map<String, Value>) -> String {
    let pick = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| text(details, k))
            .unwrap_or("")
            .to_string()
    };
    match kind {
        k if k.starts_with("software.") => pick(&["name"]),
        "executable.in_user_area" => pick(&["sha256", "path"]),
        k if k.starts_with("usb.") || k.starts_with("media.") => {
            pick(&["serial", "product", "sys_name", "block"])
        }
        // One incident per stuck probe, and per stick for a stuck scan: the USB probe's stalls
        // join each other, a stick's stalled scans join each other, not the antivirus probe's.
        "agent.probe_stalled" => match text(details, "serial") {
            Some(serial) => format!("{}/{serial}", pick(&["probe"])),
            None => pick(&["probe"]),
        },
        _ => String::new(),
    }
}

/// The key repeats share: device, kind and subject.
pub fn group_key(device: &str, kind: &str, subject: &str) -> String {
    format!("{device}\u{1f}{kind}\u{1f}{subject}")
}

/// How serious a severity is, for ordering (unknown ones lowest).
pub fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 5,
        "high" => 4,
        "warning" => 3,
        "notice" => 2,
        "info" => 1,
        _ => 0,
    }
}

/// What kind of concern an event kind is, for counts that must not name anyone.
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        k if k.starts_with("software.") => "Software",
        "executable.in_user_area" => "Programs in home folders",
        k if k.starts_with("usb.") => "USB devices",
        k if k.starts_with("media.") => "Removable media scans",
        k if k.starts_with("antivirus.") => "Antivirus",
        k if k.starts_with("screen.") || k.starts_with("session.") => "Screen lock",
        k if k.starts_with("agent.") => "Agent health",
        _ => "Other",
    }
}

/// A one-line summary in plain British English, for lists and digests.
pub fn title(kind: &str, details: &Map<String, Value>) -> String {
    let t = |k: &str| text(details, k).unwrap_or("?");
    match kind {
        "software.installed" => format!("Software installed: {}", t("name")),
        "software.removed" => format!("Software removed: {}", t("name")),
        "software.upgraded" | "software.changed" => format!("Software changed: {}", t("name")),
        "software.inventory" => "Software found at start-up needs review".to_string(),
        "executable.in_user_area" => format!("Program saved in a home folder: {}", t("path")),
        "usb.inserted" => {
            let what = text(details, "product").unwrap_or("USB device");
            match text(details, "decision") {
                Some("block") => format!("USB storage blocked: {what}"),
                _ => format!("USB storage inserted: {what}"),
            }
        }
        "usb.blocked" => format!(
            "USB device blocked: {}",
            text(details, "product").unwrap_or("USB device")
        ),
        "media.infected" => "Infected removable media detached".to_string(),
        "media.scanned" => format!("Removable media scan: {}", t("result")),
        "antivirus.status" => format!("Antivirus {}", t("status")),
        "antivirus.detection" => "Antivirus found malware".to_string(),
        "screen.lock_failed" => "The screen could not be locked".to_string(),
        "screen.compliance" => format!("Screen lock {}", t("state").replace('_', " ")),
        "session.left_logged_on" => "Session left logged on after school hours".to_string(),
        "agent.events_dropped" => "The agent's spool was full: events were lost".to_string(),
        "agent.spool_recovered" => match details.get("lost").and_then(Value::as_u64) {
            Some(n) if n > 0 => format!("The agent's spool was damaged: {n} events lost"),
            _ if text(details, "moved_to").is_some() => {
                "The agent set a damaged spool aside".to_string()
            }
            _ => "The agent recovered its spool".to_string(),
        },
        "agent.uninstall_refused" => format!(
            "Removing the agent was refused: {}",
            text(details, "reason").unwrap_or("no uninstall code")
        ),
        "agent.uninstalled" => "The agent was removed with the uninstall code".to_string(),
        "agent.probe_stalled" => match text(details, "unit") {
            Some("medium_scan") => format!(
                "A USB stick's scan stopped working: {}",
                text(details, "serial").unwrap_or("unknown stick")
            ),
            _ => format!("The agent's {} probe stopped working", t("probe")),
        },
        other => other.replace('.', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_refused_removal_says_why() {
        assert_eq!(
            title(
                "agent.uninstall_refused",
                &d(json!({"reason": "wrong code"}))
            ),
            "Removing the agent was refused: wrong code"
        );
    }

    #[test]
    fn the_dsl_in_the_audience_makes_it_safeguarding() {
        assert_eq!(category(&[]), None);
        assert_eq!(
            category(&["network_manager".into()]),
            Some(Category::Technical)
        );
        assert_eq!(
            category(&["network_manager".into(), "dsl".into()]),
            Some(Category::Safeguarding)
        );
    }

    #[test]
    fn repeats_group_by_product_or_stick_not_by_version_or_time() {
        let a = subject(
            "software.installed",
            &d(json!({"name": "tor", "version": "1"})),
        );
        let b = subject(
            "software.installed",
            &d(json!({"name": "tor", "version": "2"})),
        );
        assert_eq!(a, b);
        assert_ne!(
            subject("usb.inserted", &d(json!({"serial": "A"}))),
            subject("usb.inserted", &d(json!({"serial": "B"})))
        );
        assert_ne!(
            group_key("d1", "usb.inserted", "A"),
            group_key("d2", "usb.inserted", "A")
        );
    }

    #[test]
    fn titles_read_as_sentences() {
        assert_eq!(
            title(
                "usb.inserted",
                &d(json!({"product": "Cruzer", "decision": "block"}))
            ),
            "USB storage blocked: Cruzer"
        );
        assert_eq!(
            title("antivirus.status", &d(json!({"status": "stale"}))),
            "Antivirus stale"
        );
        assert_eq!(title("x.y_z", &Map::new()), "x y_z");
    }

    #[test]
    fn a_stuck_scan_is_its_sticks_incident_and_a_lossy_spool_says_how_many() {
        let scan = d(json!({"probe": "usb", "unit": "medium_scan", "serial": "4C53"}));
        let probe = d(json!({"probe": "usb"}));
        assert_ne!(
            subject("agent.probe_stalled", &scan),
            subject("agent.probe_stalled", &probe)
        );
        assert_eq!(
            title("agent.probe_stalled", &scan),
            "A USB stick's scan stopped working: 4C53"
        );
        assert_eq!(
            title("agent.probe_stalled", &probe),
            "The agent's usb probe stopped working"
        );
        assert_eq!(
            title("agent.spool_recovered", &d(json!({"lost": 49}))),
            "The agent's spool was damaged: 49 events lost"
        );
        assert_eq!(
            title(
                "agent.spool_recovered",
                &d(json!({"moved_to": "spool.corrupt-1"}))
            ),
            "The agent set a damaged spool aside"
        );
        assert_eq!(
            title("agent.spool_recovered", &d(json!({"next_seq": 2049}))),
            "The agent recovered its spool"
        );
    }
}
