//! Building a digest: the DSL's new events grouped per pupil and device, with counts, first and last times and a link to each incident; rendered as text, HTML, generic JSON and a Teams card.
//!
//! Pure: given the events and lookups, the same digest every time. It carries what the DSL
//! needs and no more: a readable title per kind of concern, the pupil's username, the
//! device's name, counts and times. Never the events' details.

use std::collections::BTreeMap;

use askama::Template;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::store::StoredEvent;
use crate::timefmt;

/// One pupil on one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The username, or "nobody signed in".
    pub user: String,
    pub device_id: String,
    pub hostname: String,
    pub count: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// (title, count), most frequent first.
    pub concerns: Vec<(String, u64)>,
    /// The incidents these events belong to.
    pub incidents: Vec<u64>,
}

/// A digest's content, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestContent {
    pub urgent: bool,
    pub groups: Vec<Group>,
    pub events: u64,
    pub pupils: usize,
}

/// Groups events per (user, device), in order of first appearance.
pub fn group(
    events: &[StoredEvent],
    hostname: impl Fn(&str) -> String,
    incident: impl Fn(&StoredEvent) -> Option<u64>,
    urgent: bool,
) -> DigestContent {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut map: BTreeMap<(String, String), Group> = BTreeMap::new();
    for e in events {
        let user = e
            .user
            .clone()
            .unwrap_or_else(|| "nobody signed in".to_string());
        let key = (user.clone(), e.device_id.clone());
        let g = map.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Group {
                user,
                device_id: e.device_id.clone(),
                hostname: hostname(&e.device_id),
                count: 0,
                first: e.occurred_at,
                last: e.occurred_at,
                concerns: Vec::new(),
                incidents: Vec::new(),
            }
        });
        g.count += 1;
        g.first = g.first.min(e.occurred_at);
        g.last = g.last.max(e.occurred_at);
        let title = crate::incidents::title(&e.kind, &e.details);
        match g.concerns.iter_mut().find(|(t, _)| *t == title) {
            Some((_, n)) => *n += 1,
            None => g.concerns.push((title, 1)),
        }
        if let Some(id) = incident(e)
            && !g.incidents.contains(&id)
        {
            g.incidents.push(id);
        }
    }
    let mut groups: Vec<Group> = order.into_iter().filter_map(|k| map.remove(&k)).collect();
    for g in &mut groups {
        g.concerns.sort_by_key(|c| std::cmp::Reverse(c.1));
    }
    let mut pupils: Vec<&str> = groups
        .iter()
        .map(|g| g.user.as_str())
        .filter(|u| *u != "nobody signed in")
        .collect();
    pupils.sort_unstable();
    pupils.dedup();
    DigestContent {
        urgent,
        events: events.len() as u64,
        pupils: pupils.len(),
        groups,
    }
}

/// A digest ready to record and send.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The generic webhook body.
    pub json: Value,
    /// The Microsoft Teams incoming-webhook body (an Adaptive Card message).
    pub teams: Value,
}

struct GroupView {
    user: String,
    hostname: String,
    count: u64,
    when: String,
    concerns: String,
    links: Vec<(u64, String)>,
}

#[derive(Template)]
#[template(path = "digest_email.html")]
struct EmailHtml<'a> {
    heading: &'a str,
    intro: &'a str,
    groups: &'a [GroupView],
    dashboard: &'a str,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Renders the content for a recipient. `dashboard` is the dashboard's base address (links are
/// left out when it is not set).
pub fn render(
    c: &DigestContent,
    school: &str,
    dashboard: &str,
    tz: Tz,
    now: DateTime<Utc>,
) -> Rendered {
    let dashboard = dashboard.trim_end_matches('/');
    let link = |id: u64| {
        if dashboard.is_empty() {
            String::new()
        } else {
            format!("{dashboard}/incidents/{id}")
        }
    };
    let concerns = plural(c.events, "flagged event", "flagged events");
    let pupils = plural(c.pupils as u64, "pupil", "pupils");
    let subject = if c.urgent {
        let first = c
            .groups
            .first()
            .and_then(|g| g.concerns.first())
            .map(|(t, _)| t.as_str())
            .unwrap_or("a serious concern");
        format!("Caretaker URGENT ({school}): {first}")
    } else {
        format!(
            "Caretaker digest ({school}), {}: {concerns} about {pupils}",
            timefmt::date(now, tz)
        )
    };
    let heading = if c.urgent {
        "Urgent safeguarding alert"
    } else {
        "Safeguarding digest"
    };
    let intro = format!(
        "{concerns} about {pupils} on {} since the last {}. Times are {}.",
        plural(
            {
                let mut d: Vec<&str> = c.groups.iter().map(|g| g.device_id.as_str()).collect();
                d.sort_unstable();
                d.dedup();
                d.len() as u64
            },
            "device",
            "devices"
        ),
        if c.urgent { "alert" } else { "digest" },
        tz.name()
    );
    let views: Vec<GroupView> = c
        .groups
        .iter()
        .map(|g| GroupView {
            user: g.user.clone(),
            hostname: g.hostname.clone(),
            count: g.count,
            when: if g.first == g.last {
                timefmt::date_time(g.first, tz)
            } else {
                format!(
                    "{} to {}",
                    timefmt::date_time(g.first, tz),
                    timefmt::date_time(g.last, tz)
                )
            },
            concerns: g
                .concerns
                .iter()
                .map(|(t, n)| {
                    if *n == 1 {
                        t.clone()
                    } else {
                        format!("{t} ({n} times)")
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
            links: g.incidents.iter().map(|&id| (id, link(id))).collect(),
        })
        .collect();
    let mut text = format!("{heading}\n\n{intro}\n\n");
    for g in &views {
        text += &format!(
            "* {} on {}: {} ({})\n  {}\n",
            g.user,
            g.hostname,
            plural(g.count, "event", "events"),
            g.when,
            g.concerns
        );
        for (id, url) in &g.links {
            if url.is_empty() {
                text += &format!("  incident #{id}\n");
            } else {
                text += &format!("  incident #{id}: {url}\n");
            }
        }
    }
    text += "\nThis message carries names: keep it within the safeguarding team.\n";
    let html = EmailHtml {
        heading,
        intro: &intro,
        groups: &views,
        dashboard,
    }
    .render()
    .unwrap_or_else(|_| format!("<pre>{}</pre>", text.replace('<', "&lt;")));
    let groups_json: Vec<Value> = c
        .groups
        .iter()
        .map(|g| {
            json!({
                "user": g.user, "device_id": g.device_id, "hostname": g.hostname,
                "count": g.count, "first": g.first, "last": g.last,
                "concerns": g.concerns.iter().map(|(t, n)| json!({"title": t, "count": n})).collect::<Vec<_>>(),
                "incidents": g.incidents.iter().map(|&id| json!({"id": id, "url": link(id)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let json = json!({
        "type": if c.urgent { "urgent" } else { "digest" },
        "school": school,
        "subject": subject,
        "events": c.events,
        "pupils": c.pupils,
        "groups": groups_json,
    });
    let mut body = vec![
        json!({"type": "TextBlock", "text": heading, "weight": "Bolder", "size": "Medium",
               "color": if c.urgent { "Attention" } else { "Default" }}),
        json!({"type": "TextBlock", "text": intro, "wrap": true}),
    ];
    for g in &views {
        let links = g
            .links
            .iter()
            .map(|(id, url)| {
                if url.is_empty() {
                    format!("#{id}")
                } else {
                    format!("[#{id}]({url})")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        body.push(json!({
            "type": "Container", "separator": true,
            "items": [
                {"type": "TextBlock", "text": format!("{} on {}", g.user, g.hostname), "weight": "Bolder", "wrap": true},
                {"type": "FactSet", "facts": [
                    {"title": "Events", "value": g.count.to_string()},
                    {"title": "When", "value": g.when},
                    {"title": "What", "value": g.concerns},
                    {"title": "Incidents", "value": links},
                ]},
            ],
        }));
    }
    let teams = json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    });
    Rendered {
        subject,
        text,
        html,
        json,
        teams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(device: &str, user: &str, minute: i64, product: &str) -> StoredEvent {
        let t = DateTime::parse_from_rfc3339("2026-11-30T09:00:00Z")
            .unwrap()
            .to_utc()
            + chrono::Duration::minutes(minute);
        StoredEvent {
            device_id: device.into(),
            seq: minute as u64 + 1,
            kind: "usb.inserted".into(),
            occurred_at: t,
            received_at: t,
            user: Some(user.into()),
            details: json!({"product": product, "decision": "block", "serial": "secret-serial"})
                .as_object()
                .unwrap()
                .clone(),
            severity: "warning".into(),
            audience: vec!["dsl".into()],
            assessment: None,
        }
    }

    #[test]
    fn events_group_per_pupil_and_device_with_counts_times_and_links() {
        let events = vec![
            ev("d1", "amy", 0, "Cruzer"),
            ev("d1", "amy", 5, "Cruzer"),
            ev("d2", "amy", 7, "Kingston"),
            ev("d3", "ben", 9, "Cruzer"),
            ev("d1", "amy", 12, "Cruzer"),
        ];
        let c = group(
            &events,
            |d| format!("host-{d}"),
            |e| Some(if e.device_id == "d1" { 7 } else { 8 }),
            false,
        );
        assert_eq!((c.events, c.pupils, c.groups.len()), (5, 2, 3));
        let amy_d1 = &c.groups[0];
        assert_eq!((amy_d1.user.as_str(), amy_d1.count), ("amy", 3));
        assert_eq!(
            amy_d1.concerns,
            [("USB storage blocked: Cruzer".to_string(), 3)]
        );
        assert_eq!(amy_d1.last - amy_d1.first, chrono::Duration::minutes(12));
        let r = render(
            &c,
            "Hill School",
            "https://ct.school/",
            crate::timefmt::DEFAULT_TZ,
            events[0].occurred_at,
        );
        assert_eq!(
            r.subject,
            "Caretaker digest (Hill School), 30 Nov 2026: 5 flagged events about 2 pupils"
        );
        assert!(
            r.text
                .contains("amy on host-d1: 3 events (30 Nov 2026, 09:00 to 30 Nov 2026, 09:12)"),
            "{}",
            r.text
        );
        assert!(r.text.contains("https://ct.school/incidents/7"));
        assert!(
            r.html.contains("href=\"https://ct.school/incidents/7\""),
            "{}",
            r.html
        );
        for body in [&r.text, &r.html, &r.json.to_string(), &r.teams.to_string()] {
            assert!(
                !body.contains("secret-serial"),
                "no event details beyond the title"
            );
        }
        assert_eq!(r.teams["attachments"][0]["content"]["type"], "AdaptiveCard");
    }

    #[test]
    fn html_escapes_what_pupils_control() {
        let c = group(
            &[ev("d1", "<script>x</script>", 0, "<b>")],
            |d| d.into(),
            |_| None,
            true,
        );
        let r = render(&c, "S", "", crate::timefmt::DEFAULT_TZ, Utc::now());
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(r.subject.starts_with("Caretaker URGENT (S)"));
    }
}
