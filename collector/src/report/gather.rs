//! Gathers a report's figures from the store: compliance replayed day by day from state events, incidents and their records, media, licences and policy changes.
//!
//! Reads only what it needs: state and media events through the kind index (newest first,
//! stopping once older events can no longer change the answer), incidents and their records,
//! the policy history. Every figure for the period and for the one before it (trends) comes
//! from one pass.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::incident_facts::{
    Recorded, count_category, incident_lines, incidents_with_records, is_software, overlaps,
    status_at,
};
use super::model::*;
use super::period::{Period, local_midnight};
use crate::auth::Role;
use crate::settings::Settings;
use crate::store::{Category, Device, EventQuery, IncidentStatus, Store, StoreResult, StoredEvent};
use crate::timefmt;

/// A device not heard from for this many days by the end of the period has gone silent.
pub const SILENT_DAYS: i64 = 3;

/// How far before a period the state replay looks for each device's starting state.
const LOOKBACK_DAYS: i64 = 60;

/// What the report reads: the store, the devices as last stored, and installations per
/// product (from the running collector's counts, or folded from the store offline).
pub struct Sources<'a> {
    pub store: &'a dyn Store,
    pub devices: Vec<Device>,
    /// `(source, name, devices)`.
    pub software: Vec<(String, String, usize)>,
    pub settings: Settings,
    pub tz: Tz,
    pub now: DateTime<Utc>,
}

/// Everything gathered, names included; only `into_governors` and `into_dsl` leave this module,
/// and only the second keeps the names.
pub(super) struct Facts {
    pub meta: Meta,
    pub counts: Counts,
    pub silent_devices: Vec<SilentDevice>,
    pub safeguarding: Vec<NamedIncident>,
    pub named_changes: Vec<NamedPolicyChange>,
    pub dashboard_url: String,
}

impl Facts {
    pub fn into_governors(self) -> GovernorsReport {
        GovernorsReport {
            meta: Meta {
                audience: "Governors",
                ..self.meta
            },
            counts: self.counts,
        }
    }

    pub fn into_dsl(self) -> DslReport {
        DslReport {
            meta: Meta {
                audience: "Designated Safeguarding Lead",
                ..self.meta
            },
            counts: self.counts,
            silent_devices: self.silent_devices,
            safeguarding: self.safeguarding,
            policy_changes: self.named_changes,
            dashboard_url: self.dashboard_url,
        }
    }
}

/// Walks events of one kind that occurred before `until`, newest stored first, a page at a
/// time, until a whole page had nothing `visit` needed (it returns whether the event mattered).
fn walk_kind(
    store: &dyn Store,
    kind: &str,
    until: DateTime<Utc>,
    visit: &mut dyn FnMut(StoredEvent) -> bool,
) -> StoreResult<()> {
    let mut cursor = None;
    loop {
        let page = store.events(&EventQuery {
            kind: Some(kind.to_string()),
            until: Some(until),
            limit: 5000,
            cursor: cursor.take(),
            ..Default::default()
        })?;
        let scanned_only = page.events.is_empty();
        let mut useful = false;
        for e in page.events {
            useful |= visit(e);
        }
        match page.next {
            Some(n) if useful || scanned_only => cursor = Some(n),
            _ => return Ok(()),
        }
    }
}

fn active_at(d: &Device, t: DateTime<Utc>) -> bool {
    d.enrolled_at < t && d.revoked_at.is_none_or(|r| r >= t)
}

/// The local days of `p` up to today (a period still running is shown so far).
fn days_of(p: &Period, today: NaiveDate) -> Vec<NaiveDate> {
    p.first_day
        .iter_days()
        .take_while(|d| *d <= p.last_day && *d <= today)
        .collect()
}

/// Replays one state facet (e.g. screen lock) over `days`: each device's state at the end of
/// each day, starting from its last report before the first day.
fn state_series(
    src: &Sources,
    kind: &str,
    good: fn(&StoredEvent) -> bool,
    days: &[NaiveDate],
) -> StoreResult<Vec<DayCount>> {
    let Some(first) = days.first() else {
        return Ok(Vec::new());
    };
    let tz = src.tz;
    let start = local_midnight(*first, tz);
    let end = local_midnight(*days.last().expect("not empty") + Duration::days(1), tz);
    let ids: Vec<&str> = src.devices.iter().map(|d| d.id.as_str()).collect();
    let mut initial: HashMap<String, (DateTime<Utc>, bool)> = HashMap::new();
    let mut changes: Vec<(DateTime<Utc>, String, bool)> = Vec::new();
    walk_kind(src.store, kind, end, &mut |e| {
        let ok = good(&e);
        if e.occurred_at >= start {
            changes.push((e.occurred_at, e.device_id, ok));
            return true;
        }
        // Before the window: each device's latest report is its state at the start. Reports
        // come at every agent start and change, so looking back LOOKBACK_DAYS is enough; a
        // device silent longer counts as not reported until it reports.
        let recent = e.occurred_at >= start - Duration::days(LOOKBACK_DAYS);
        match initial.get(&e.device_id) {
            Some((t, _)) if *t >= e.occurred_at => recent && initial.len() < ids.len(),
            _ => {
                initial.insert(e.device_id, (e.occurred_at, ok));
                true
            }
        }
    })?;
    changes.sort_by_key(|c| c.0);
    let mut state: HashMap<String, bool> =
        initial.into_iter().map(|(d, (_, ok))| (d, ok)).collect();
    let mut next = 0;
    let mut out = Vec::with_capacity(days.len());
    for day in days {
        let day_end = local_midnight(*day + Duration::days(1), tz);
        while next < changes.len() && changes[next].0 < day_end {
            let (_, dev, ok) = &changes[next];
            state.insert(dev.clone(), *ok);
            next += 1;
        }
        let mut c = DayCount::zero(*day);
        for d in src.devices.iter().filter(|d| active_at(d, day_end)) {
            match state.get(&d.id) {
                Some(true) => c.good += 1,
                Some(false) => c.bad += 1,
                None => c.unknown += 1,
            }
        }
        out.push(c);
    }
    Ok(out)
}

/// Devices with unapproved software not yet dealt with (an open, acknowledged or actioned
/// software incident) at the end of each day.
fn software_series(src: &Sources, incidents: &[Recorded], days: &[NaiveDate]) -> Vec<DayCount> {
    let sw: Vec<_> = incidents.iter().filter(|(i, _)| is_software(i)).collect();
    days.iter()
        .map(|day| {
            let day_end = local_midnight(*day + Duration::days(1), src.tz);
            let flagged: std::collections::HashSet<&str> = sw
                .iter()
                .filter(|(i, log)| {
                    i.first_at < day_end && status_at(log, day_end) != IncidentStatus::Closed
                })
                .map(|(i, _)| i.device_id.as_str())
                .collect();
            let mut c = DayCount::zero(*day);
            for d in src.devices.iter().filter(|d| active_at(d, day_end)) {
                if flagged.contains(d.id.as_str()) {
                    c.bad += 1;
                } else {
                    c.good += 1;
                }
            }
            c
        })
        .collect()
}

/// Removable media per local day over `[start, end)`.
fn media_days(
    src: &Sources,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> StoreResult<BTreeMap<NaiveDate, MediaDay>> {
    let mut days: BTreeMap<NaiveDate, MediaDay> = BTreeMap::new();
    let tz = src.tz;
    for kind in ["usb.inserted", "media.scanned", "media.infected"] {
        walk_kind(src.store, kind, end, &mut |e| {
            if e.occurred_at < start {
                return false;
            }
            let day = e.occurred_at.with_timezone(&tz).date_naive();
            let m = days.entry(day).or_insert(MediaDay {
                day,
                ..Default::default()
            });
            let s = |k: &str| e.details.get(k).and_then(Value::as_str).unwrap_or("");
            match e.kind.as_str() {
                "usb.inserted" if e.details.get("mass_storage") == Some(&Value::Bool(true)) => {
                    if s("decision") == "block" {
                        m.refused += 1;
                    } else {
                        m.allowed += 1;
                    }
                }
                "media.scanned" if s("result") == "clean" => m.scanned_clean += 1,
                "media.infected" => m.infected += 1,
                _ => {}
            }
            true
        })?;
    }
    Ok(days)
}

fn section_label(key: &str) -> &'static str {
    match key {
        "screen_lock" => "Screen lock",
        "antivirus" => "Antivirus",
        "software" => "Software",
        "removable_media" => "Removable media",
        _ => "Other settings",
    }
}

/// Which sections differ between two policy documents.
fn changed_sections(before: Option<&Value>, after: &Value) -> Vec<&'static str> {
    let Some(before) = before else {
        return vec!["The first policy"];
    };
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut out: Vec<&'static str> = Vec::new();
    for k in a.keys().chain(b.keys()) {
        if a.get(k) != b.get(k) {
            let l = section_label(k);
            if !out.contains(&l) {
                out.push(l);
            }
        }
    }
    if out.is_empty() {
        out.push("No change in content");
    }
    out
}

/// The role a policy change was made in, never the person.
fn role_of(store: &dyn Store, changed_by: &str) -> &'static str {
    if changed_by.starts_with("administrator") {
        return Role::NetworkManager.label();
    }
    if changed_by.starts_with("caretaker-collector") {
        return "Caretaker (the default policy)";
    }
    match store.user(changed_by) {
        Ok(Some(u)) => Role::parse(&u.role).map_or("Staff member", Role::label),
        _ => "Staff member",
    }
}

fn screen_good(e: &StoredEvent) -> bool {
    e.details.get("state").and_then(Value::as_str) == Some("enforced")
}

fn antivirus_good(e: &StoredEvent) -> bool {
    e.details.get("status").and_then(Value::as_str) == Some("current")
}

fn series(
    key: &'static str,
    title: &'static str,
    labels: [&'static str; 3],
    days: Vec<DayCount>,
) -> ComplianceSeries {
    ComplianceSeries {
        key,
        title,
        good_label: labels[0],
        bad_label: labels[1],
        unknown_label: labels[2],
        days,
    }
}

fn pct(c: &DayCount) -> i64 {
    let all = i64::from(c.good + c.bad + c.unknown);
    (i64::from(c.good) * 100).checked_div(all).unwrap_or(0)
}

/// Gathers the figures for `period` (and `previous`, for trends).
pub(super) fn gather(src: &Sources, period: &Period, previous: &Period) -> StoreResult<Facts> {
    let tz = src.tz;
    let today = src.now.with_timezone(&tz).date_naive();
    let cur_days = days_of(period, today);
    let prev_days = days_of(previous, today);
    let all_days: Vec<NaiveDate> = prev_days.iter().chain(&cur_days).copied().collect();
    let split = |v: Vec<DayCount>| -> (Vec<DayCount>, Vec<DayCount>) {
        let (p, c): (Vec<_>, Vec<_>) = v.into_iter().partition(|d| d.day < period.first_day);
        (p, c)
    };

    let (lock_prev, lock) = split(state_series(
        src,
        "screen.compliance",
        screen_good,
        &all_days,
    )?);
    let (av_prev, av) = split(state_series(
        src,
        "antivirus.status",
        antivirus_good,
        &all_days,
    )?);
    let incidents = incidents_with_records(src.store)?;
    let (sw_prev, sw) = split(software_series(src, &incidents, &all_days));

    let media_all = media_days(src, previous.start.min(period.start), period.end)?;
    let media: Vec<MediaDay> = cur_days
        .iter()
        .map(|d| {
            media_all.get(d).copied().unwrap_or(MediaDay {
                day: *d,
                ..Default::default()
            })
        })
        .collect();
    let media_prev = |f: fn(&MediaDay) -> u32| -> i64 {
        media_all
            .range(previous.first_day..=previous.last_day)
            .map(|(_, m)| i64::from(f(m)))
            .sum()
    };
    let media_now =
        |f: fn(&MediaDay) -> u32| -> i64 { media.iter().map(|m| i64::from(f(m))).sum() };

    let lines = incident_lines(&incidents, period);
    let prev_lines = incident_lines(&incidents, previous);
    let end_of = |v: &[DayCount]| v.last().copied();
    let end_pct = |v: &[DayCount]| end_of(v).map_or(0, |c| pct(&c));
    let end_bad = |v: &[DayCount]| end_of(v).map_or(0, |c| i64::from(c.bad));
    let known = src.devices.iter().any(|d| active_at(d, previous.end));
    // Two kinds of measure: counts, where fewer is better, and shares, where more is.
    let fewer = |measure, this, previous| Trend {
        measure,
        this,
        previous,
        unit: "",
        higher_is_better: false,
        known,
    };
    let share = |measure, this, previous| Trend {
        measure,
        this,
        previous,
        unit: "%",
        higher_is_better: true,
        known,
    };
    let incidents_in = |category: &str| -> (i64, i64) {
        (
            count_category(&lines, category).into(),
            count_category(&prev_lines, category).into(),
        )
    };
    let (safeguarding, safeguarding_prev) = incidents_in("Safeguarding");
    let (technical, technical_prev) = incidents_in("Technical");
    let trends = vec![
        fewer("Safeguarding incidents", safeguarding, safeguarding_prev),
        fewer("Technical incidents", technical, technical_prev),
        share(
            "Laptops that lock when left (at the end)",
            end_pct(&lock),
            end_pct(&lock_prev),
        ),
        share(
            "Antivirus up to date (at the end)",
            end_pct(&av),
            end_pct(&av_prev),
        ),
        fewer(
            "Laptops with unapproved software (at the end)",
            end_bad(&sw),
            end_bad(&sw_prev),
        ),
        fewer(
            "Pupils' USB sticks refused",
            media_now(|m| m.refused),
            media_prev(|m| m.refused),
        ),
        fewer(
            "Infected USB sticks",
            media_now(|m| m.infected),
            media_prev(|m| m.infected),
        ),
    ];

    // Silent: not heard from for SILENT_DAYS by the end of the period (or by now, if sooner).
    let horizon = period.end.min(src.now);
    let mut silent: Vec<&Device> = src
        .devices
        .iter()
        .filter(|d| active_at(d, horizon))
        .filter(|d| {
            d.last_seen
                .is_none_or(|t| t < horizon - Duration::days(SILENT_DAYS))
        })
        .collect();
    silent.sort_by_key(|d| d.last_seen);

    let licences = src
        .settings
        .licences
        .iter()
        .map(|l| LicenceLine {
            product: l.product.clone(),
            licences: l.count,
            installed: src
                .software
                .iter()
                .filter(|(_, name, _)| name.eq_ignore_ascii_case(&l.product))
                .map(|(_, _, n)| *n as u64)
                .sum(),
        })
        .collect();

    let history = src.store.policy_history()?;
    let mut changes = Vec::new();
    let mut named_changes = Vec::new();
    for (n, v) in history.iter().enumerate() {
        if v.changed_at < period.start || v.changed_at >= period.end {
            continue;
        }
        let before = n.checked_sub(1).map(|b| &history[b].policy);
        let sections = changed_sections(before, &v.policy);
        let at = timefmt::date_time(v.changed_at, tz);
        changes.push(PolicyChange {
            version: v.version,
            at: at.clone(),
            by_role: role_of(src.store, &v.changed_by),
            sections: sections.clone(),
        });
        named_changes.push(NamedPolicyChange {
            version: v.version,
            at,
            by: v.changed_by.clone(),
            sections,
        });
    }

    let hostname = |id: &str| {
        src.devices
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| id.chars().take(8).collect())
    };
    let mut safeguarding: Vec<NamedIncident> = incidents
        .iter()
        .filter(|(i, _)| i.category == Category::Safeguarding && overlaps(i, period))
        .map(|(i, log)| NamedIncident {
            id: i.id,
            title: i.title.clone(),
            user: i.user.clone().unwrap_or_else(|| "—".into()),
            hostname: hostname(&i.device_id),
            first: timefmt::date_time(i.first_at, tz),
            last: timefmt::date_time(i.last_at, tz),
            count: i.count,
            status: status_at(log, period.end).as_str(),
        })
        .collect();
    safeguarding.sort_by_key(|i| std::cmp::Reverse(i.id));

    let devices = src.devices.iter().filter(|d| active_at(d, horizon)).count() as u32;
    let counts = Counts {
        devices,
        compliance: vec![
            series(
                "screen_lock",
                "Screen locks when left unattended",
                ["Enforced", "Cannot enforce", "Not reported"],
                lock,
            ),
            series(
                "antivirus",
                "Antivirus up to date",
                ["Current", "Out of date or off", "Not reported"],
                av,
            ),
            series(
                "unapproved_software",
                "Free of unapproved software",
                [
                    "No unresolved finding",
                    "Unapproved software found",
                    "Not reported",
                ],
                sw,
            ),
        ],
        media,
        safeguarding_incidents: count_category(&lines, "Safeguarding"),
        technical_incidents: count_category(&lines, "Technical"),
        incidents: lines,
        trends,
        silent: silent.len() as u32,
        licences,
        policy_changes: changes,
    };
    Ok(Facts {
        meta: Meta {
            school: src.settings.school_name.clone(),
            period_label: period.label.clone(),
            period_dates: period.dates(),
            previous_label: previous.label.clone(),
            previous_dates: previous.dates(),
            generated: timefmt::date_time(src.now, tz),
            time_zone: tz.name().to_string(),
            audience: "",
        },
        counts,
        silent_devices: silent
            .iter()
            .map(|d| SilentDevice {
                hostname: hostname(&d.id),
                id: d.id.clone(),
                last_seen: d
                    .last_seen
                    .map_or_else(|| "never".into(), |t| timefmt::date_time(t, tz)),
            })
            .collect(),
        safeguarding,
        named_changes,
        dashboard_url: src.settings.dashboard_url.trim_end_matches('/').to_string(),
    })
}
