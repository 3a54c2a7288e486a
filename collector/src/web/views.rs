//! What the templates are given: the page chrome (who is signed in, the navigation their role allows) and rows already formatted for reading.
//!
//! Templates stay free of logic: dates are formatted, statuses turned into words and a
//! badge class here, once.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::auth::Permission;
use crate::desk::Desk;
use crate::store::{Device, Incident, IncidentEntry, StoredEvent};
use crate::timefmt;

/// One link in the navigation bar.
pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// Everything the shared layout needs.
pub struct Chrome {
    pub title: String,
    pub user: String,
    pub role: &'static str,
    pub nav: Vec<NavItem>,
    pub csrf: String,
    /// The time zone dates are shown in, named in the footer.
    pub tz: String,
}

impl Chrome {
    pub fn new(desk: &Desk, title: impl Into<String>, section: &str) -> Self {
        use Permission::*;
        let items: [(&'static str, &'static str, bool); 13] = [
            ("/fleet", "Overview", desk.may(ViewFleet)),
            ("/devices", "Devices", desk.may(ViewDevices)),
            (
                "/incidents",
                "Incidents",
                desk.may(Safeguarding) || desk.may(TechnicalIncidents),
            ),
            (
                "/events",
                "Events",
                desk.may(ViewTechnicalEvents) || desk.may(Safeguarding),
            ),
            ("/policy", "Policy", desk.may(ViewPolicy)),
            ("/enrol", "Enrolment", desk.may(Enrol)),
            ("/users", "Users", desk.may(ManageUsers)),
            ("/audit", "Audit log", desk.may(ViewAudit)),
            ("/subject", "Subject access", desk.may(SubjectAccess)),
            ("/settings", "Settings", desk.may(ManageSettings)),
            (
                "/digests",
                "Digests",
                desk.may(Safeguarding) && !desk.may(ManageSettings),
            ),
            ("/report", "Report", desk.may(GovernorsReport)),
            ("/holds", "Legal holds", desk.may(ViewHolds)),
        ];
        Self {
            title: title.into(),
            user: desk.actor.name.clone(),
            role: desk.role().label(),
            nav: items
                .into_iter()
                .filter(|(_, _, allowed)| *allowed)
                .map(|(href, label, _)| NavItem {
                    href,
                    label,
                    current: href == section,
                })
                .collect(),
            csrf: desk
                .actor
                .session
                .as_ref()
                .map(|(_, c)| c.clone())
                .unwrap_or_default(),
            tz: String::new(),
        }
    }
}

/// Renders a template into a response with `status`.
pub fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "A page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be shown.",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

/// A plain page for refusals and failures, outside the signed-in layout.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    render(status, &ErrorPage { title, message })
}

/// A status in words with a badge class (colour is never the only signal).
pub struct Badge {
    pub class: &'static str,
    pub text: String,
}

pub fn badge(status: &str) -> Badge {
    let class = match status {
        "current" | "enforced" | "online" | "closed" | "clean" | "info" | "actioned" | "sent"
        | "ok" => "ok",
        "stale" | "unknown" | "warning" | "notice" | "acknowledged" | "not_reported"
        | "offline" | "waiting" | "behind" | "ahead" => "warn",
        "disabled" | "missing" | "cannot_enforce" | "high" | "critical" | "revoked" | "open"
        | "infected" | "retrying" => "bad",
        _ => "neutral",
    };
    Badge {
        class,
        text: status.replace('_', " "),
    }
}

fn facet(d: &Device, name: &str) -> String {
    d.state
        .get(name)
        .and_then(|v| v.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("not_reported")
        .to_string()
}

/// A device as a list row.
pub struct DeviceRow {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub status: Badge,
    pub antivirus: Badge,
    pub screen_lock: Badge,
    pub last_seen: String,
    pub last_seen_full: String,
    pub enrolled: String,
    pub enrolled_with: String,
}

impl DeviceRow {
    pub fn new(d: &Device, online: bool, tz: Tz, now: DateTime<Utc>) -> Self {
        let status = if d.revoked_at.is_some() {
            "revoked"
        } else if online {
            "online"
        } else {
            // Did the agent say goodbye? "offline" alone means it did not: it crashed, lost
            // power or was killed (rules::lifecycle).
            match facet(d, "lifecycle").as_str() {
                "stopped" => "stopped_cleanly",
                "uninstalled" => "uninstalled",
                _ => "offline",
            }
        };
        Self {
            id: d.id.clone(),
            hostname: if d.hostname.is_empty() {
                "(no name)".into()
            } else {
                d.hostname.clone()
            },
            os: d.os.clone(),
            status: badge(status),
            antivirus: badge(&facet(d, "antivirus")),
            screen_lock: badge(&facet(d, "screen_lock")),
            last_seen: d
                .last_seen
                .map(|t| timefmt::ago(t, now))
                .unwrap_or_else(|| "never".into()),
            last_seen_full: d
                .last_seen
                .map(|t| timefmt::date_time(t, tz))
                .unwrap_or_default(),
            enrolled: timefmt::date_time(d.enrolled_at, tz),
            enrolled_with: d.enrolled_with.clone(),
        }
    }
}

/// An event as a timeline row.
pub struct EventRow {
    pub device_id: String,
    pub when: String,
    pub kind: String,
    pub summary: String,
    pub user: String,
    pub severity: Badge,
    pub audience: String,
}

impl EventRow {
    pub fn new(e: &StoredEvent, tz: Tz) -> Self {
        Self {
            device_id: e.device_id.clone(),
            when: timefmt::date_time(e.occurred_at, tz),
            kind: e.kind.clone(),
            summary: crate::incidents::title(&e.kind, &e.details),
            user: e.user.clone().unwrap_or_default(),
            severity: badge(&e.severity),
            audience: e
                .audience
                .iter()
                .map(|a| match a.as_str() {
                    "dsl" => "DSL",
                    "network_manager" => "Network manager",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// An incident as a list row.
pub struct IncidentRow {
    pub id: u64,
    pub title: String,
    pub category: &'static str,
    pub device_id: String,
    pub hostname: String,
    pub user: String,
    pub severity: Badge,
    pub status: Badge,
    pub count: u64,
    pub first: String,
    pub last: String,
}

impl IncidentRow {
    pub fn new(i: &Incident, hostname: String, tz: Tz) -> Self {
        Self {
            id: i.id,
            title: i.title.clone(),
            category: i.category.as_str(),
            device_id: i.device_id.clone(),
            hostname,
            user: i.user.clone().unwrap_or_default(),
            severity: badge(&i.severity),
            status: badge(i.status.as_str()),
            count: i.count,
            first: timefmt::date_time(i.first_at, tz),
            last: timefmt::date_time(i.last_at, tz),
        }
    }
}

/// One entry of an incident's record, for reading.
pub struct EntryRow {
    pub n: u32,
    pub when: String,
    pub by: String,
    pub action: String,
    pub text: String,
}

impl EntryRow {
    pub fn new(e: &IncidentEntry, tz: Tz) -> Self {
        Self {
            n: e.n,
            when: timefmt::date_time(e.at, tz),
            by: e.by.clone(),
            action: match e.action.as_str() {
                "action_taken" => "Action taken".into(),
                other => {
                    let mut s = other.to_string();
                    if let Some(c) = s.get_mut(0..1) {
                        c.make_ascii_uppercase();
                    }
                    s
                }
            },
            text: e.text.clone(),
        }
    }
}

/// A fact about a device, for the device page.
pub struct Fact {
    pub label: &'static str,
    pub value: String,
}

fn bytes(n: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    format!("{:.1} GiB", n as f64 / GIB)
}

/// The asset facts an agent reported (`device.facts`), in reading order; missing ones left out.
pub fn device_facts(d: &Device, tz: Tz, now: DateTime<Utc>) -> Vec<Fact> {
    let mut out = vec![
        Fact {
            label: "Hostname",
            value: d.hostname.clone(),
        },
        Fact {
            label: "Device id",
            value: d.id.clone(),
        },
        Fact {
            label: "Agent",
            value: d.agent_version.clone(),
        },
        Fact {
            label: "Enrolled",
            value: format!(
                "{} (token \"{}\")",
                timefmt::date_time(d.enrolled_at, tz),
                d.enrolled_with
            ),
        },
    ];
    let facts = d.state.get("facts").and_then(Value::as_object);
    let s = |k: &str| {
        facts
            .and_then(|f| f.get(k))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let n = |k: &str| facts.and_then(|f| f.get(k)).and_then(Value::as_u64);
    let model = [s("vendor"), s("model")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if !model.is_empty() {
        out.push(Fact {
            label: "Model",
            value: model,
        });
    }
    if let Some(v) = s("serial") {
        out.push(Fact {
            label: "Serial number",
            value: v,
        });
    }
    let os = [s("os_name"), s("os_version")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    out.push(Fact {
        label: "Operating system",
        value: if os.is_empty() { d.os.clone() } else { os },
    });
    if let Some(v) = s("kernel") {
        out.push(Fact {
            label: "Kernel",
            value: v,
        });
    }
    if let Some(cpu) = s("cpu_model") {
        let cores = n("cpu_cores")
            .map(|c| format!(", {c} cores"))
            .unwrap_or_default();
        out.push(Fact {
            label: "Processor",
            value: format!("{cpu}{cores}"),
        });
    }
    if let Some(m) = n("memory_bytes") {
        out.push(Fact {
            label: "Memory",
            value: bytes(m),
        });
    }
    if let (Some(free), Some(total)) = (n("disk_free_bytes"), n("disk_total_bytes")) {
        out.push(Fact {
            label: "Disk",
            value: format!("{} free of {}", bytes(free), bytes(total)),
        });
    }
    if let Some(boot) = s("boot_time").and_then(|b| DateTime::parse_from_rfc3339(&b).ok()) {
        let boot = boot.with_timezone(&Utc);
        let up = now - boot;
        out.push(Fact {
            label: "Up since",
            value: format!(
                "{} ({} days, {} h)",
                timefmt::date_time(boot, tz),
                up.num_days(),
                up.num_hours() % 24
            ),
        });
    }
    if let Some(h) = n("battery_health_pct") {
        let cycles = n("battery_cycles")
            .map(|c| format!(", {c} charge cycles"))
            .unwrap_or_default();
        out.push(Fact {
            label: "Battery health",
            value: format!("{h}% of design capacity{cycles}"),
        });
    }
    out
}
