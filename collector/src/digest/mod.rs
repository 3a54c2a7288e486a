//! The DSL's digests: scheduled summaries of what is new, urgent alerts that gather a burst into one message, and delivery that retries until it succeeds.
//!
//! Each tick: for every DSL with a schedule in the settings, urgent events gathered for
//! `urgent.gather_secs` become one alert (at most `urgent.max_per_hour`; the rest wait for the
//! digest); when a scheduled time has passed, the DSL's events since the last digest become
//! one digest per channel. A digest is recorded, and the recipient's cursor moved past its
//! events, in one durable transaction before any send: a crash loses nothing, and no event is
//! summarised twice. Pending digests are then sent, with backoff on failure; the dashboard
//! shows each one's state.

pub mod build;
pub mod send;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveTime, Utc};
use chrono_tz::Tz;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::Role;
use crate::rules::DSL;
use crate::service::{Collector, blocking};
use crate::settings::{DigestSchedule, Settings};
use crate::store::{
    Channel, DigestCursor, DigestRecord, DigestStatus, Store, StoreError, StoredEvent,
};

/// How often the engine looks for work.
pub const TICK: Duration = Duration::from_secs(2);
/// Most events one digest covers; more wait for the next.
const MAX_EVENTS: usize = 50_000;

/// The most recent scheduled time at or before `now`, in the school's zone.
pub fn last_due(s: &DigestSchedule, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    let at = NaiveTime::parse_from_str(&s.at, "%H:%M").ok()?;
    let local = now.with_timezone(&tz);
    for back in 0..8 {
        let day = local.date_naive() - chrono::Duration::days(back);
        if s.frequency == "weekly"
            && caretaker_proto::policy::parse_day(&s.weekday)
                != Some(day.weekday().num_days_from_monday())
        {
            continue;
        }
        let Some(t) = day.and_time(at).and_local_timezone(tz).earliest() else {
            continue;
        };
        let t = t.with_timezone(&Utc);
        if t <= now {
            return Some(t);
        }
    }
    None
}

/// Whether a DSL event is urgent under the settings: its kind is listed, or it is a
/// filter-bypass tool.
pub fn is_urgent(e: &StoredEvent, s: &Settings) -> bool {
    s.urgent.kinds.contains(&e.kind)
        || (s.urgent.bypass_tools
            && e.assessment
                .as_ref()
                .is_some_and(|a| a.to_string().contains("\"bypass_tool\"")))
}

/// Where a DSL's digests go: their e-mail (when mail is set up) and webhooks they own. Only an
/// enabled DSL account receives anything.
fn channels(store: &dyn Store, username: &str, s: &Settings) -> Result<Vec<Channel>, StoreError> {
    let Some(user) = store.user(username)? else {
        return Ok(vec![]);
    };
    if user.disabled || Role::parse(&user.role) != Some(Role::Dsl) {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    if s.smtp.is_some() && !user.email.trim().is_empty() {
        out.push(Channel::Email {
            address: user.email.trim().to_string(),
        });
    }
    for w in s.webhooks.iter().filter(|w| w.owner == username) {
        out.push(Channel::Webhook {
            url: w.url.clone(),
            kind: w.kind.clone(),
        });
    }
    Ok(out)
}

/// A device's name for a digest, from the running collector's cache or the store.
pub type Hostnames<'a> = &'a dyn Fn(&str) -> String;

/// Names from the store (for the command line when `serve` is not running).
pub fn store_hostname(store: &dyn Store, id: &str) -> String {
    store
        .device(id)
        .ok()
        .flatten()
        .map(|d| d.hostname)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| id.chars().take(8).collect())
}

/// Builds the records for one digest, one per channel.
#[allow(clippy::too_many_arguments)]
fn records(
    hostname: Hostnames,
    store: &dyn Store,
    recipient: &str,
    channels: &[Channel],
    events: &[StoredEvent],
    urgent: bool,
    s: &Settings,
    tz: Tz,
    now: DateTime<Utc>,
) -> Vec<DigestRecord> {
    let content = build::group(
        events,
        hostname,
        |e| {
            let subject = crate::incidents::subject(&e.kind, &e.details);
            let key = crate::incidents::group_key(&e.device_id, &e.kind, &subject);
            store.incident_for_group(&key).ok().flatten()
        },
        urgent,
    );
    let r = build::render(&content, &s.school_name, &s.dashboard_url, tz, now);
    channels
        .iter()
        .map(|ch| DigestRecord {
            id: 0,
            recipient: recipient.to_string(),
            channel: ch.clone(),
            kind: if urgent { "urgent" } else { "scheduled" }.into(),
            created_at: now,
            subject: r.subject.clone(),
            text: r.text.clone(),
            html: r.html.clone(),
            json: json!({"generic": r.json, "teams": r.teams}),
            events: content.events,
            status: DigestStatus::Pending,
            attempts: 0,
            last_error: None,
            next_attempt: Some(now),
            sent_at: None,
            attachment: None,
        })
        .collect()
}

/// Scheduled reports: after each period ends, the report is made once (PDF) and e-mailed to
/// its recipients: the governors' version to anyone listed, the DSL's only to DSL accounts.
/// Recorded like digests (before sending, retried, never lost).
pub fn plan_reports(
    c: &Collector,
    store: &dyn Store,
    s: &Settings,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    use crate::report::{self, Audience, Format, PeriodKind, PeriodSpec, ReportRequest};
    use base64::Engine;
    let mut recorded = 0;
    if s.smtp.is_none() {
        return Ok(0);
    }
    for r in &s.reports {
        let (Some(audience), Some(kind)) =
            (Audience::parse(&r.audience), PeriodKind::parse(&r.period))
        else {
            continue;
        };
        let key = format!(
            "report/{}/{}/{}",
            r.audience,
            r.period,
            r.recipients.join(",")
        );
        // The latest period that has ended: the one before today's, or (in a holiday, for
        // terms) the one today falls after. Worked out from the settings alone: the report's
        // sources (every device) are gathered only once a report is due.
        let today = PeriodSpec {
            kind: Some(kind),
            from: Some(now.with_timezone(&tz).date_naive()),
            to: None,
        };
        let day = now.with_timezone(&tz).date_naive();
        let Ok((current, previous)) = report::period::resolve(&today, day, &s.terms, tz) else {
            continue;
        };
        let period = if current.end <= now {
            current
        } else {
            previous
        };
        let spec = PeriodSpec {
            kind: Some(kind),
            from: Some(period.first_day),
            to: None,
        };
        let mut cursor = store.digest_cursor(&key)?;
        if period.end > now || cursor.last_due.is_some_and(|d| d >= period.end) {
            continue;
        }
        if cursor.last_due.is_none() {
            // A new schedule starts with the next period, not a backlog.
            cursor.last_due = Some(period.end);
            store.put_digest_cursor(&key, &cursor)?;
            continue;
        }
        let mut addresses = Vec::new();
        for name in &r.recipients {
            let Some(u) = store.user(name)? else { continue };
            let allowed = match audience {
                Audience::Governors => true,
                Audience::Dsl => Role::parse(&u.role) == Some(Role::Dsl),
            };
            if allowed && !u.disabled && !u.email.trim().is_empty() {
                addresses.push((u.username.clone(), u.email.trim().to_string()));
            } else {
                tracing::warn!(recipient = %name, audience = %r.audience, "Report not sent to this account (not allowed, disabled or no e-mail)");
            }
        }
        let Ok(src) = report::Sources::from_collector(c, tz) else {
            continue;
        };
        let req = ReportRequest {
            period: spec.clone(),
            audience,
            format: Format::Pdf,
        };
        let file = match report::render(&src, &req) {
            Ok(mut files) if !files.is_empty() => files.remove(0),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "Scheduled report not made; it will be tried again");
                continue;
            }
        };
        cursor.last_due = Some(period.end);
        let title = format!(
            "Caretaker {} report ({}), {}",
            if audience == Audience::Governors {
                "governors'"
            } else {
                "DSL"
            },
            s.school_name,
            period.label
        );
        let text = format!(
            "{title}\n\nThe report for {} is attached as a PDF.{}\n",
            period.label,
            if audience == Audience::Dsl {
                " It names pupils: keep it within the safeguarding team."
            } else {
                ""
            }
        );
        let records = addresses
            .into_iter()
            .map(|(user, address)| DigestRecord {
                id: 0,
                recipient: user,
                channel: Channel::Email { address },
                kind: "report".into(),
                created_at: now,
                subject: title.clone(),
                html: format!(
                    "<p>{}</p>",
                    text.trim().replace('&', "&amp;").replace('<', "&lt;")
                ),
                text: text.clone(),
                json: json!({"generic": {"type": "report", "period": period.label}}),
                events: 0,
                status: DigestStatus::Pending,
                attempts: 0,
                last_error: None,
                next_attempt: Some(now),
                sent_at: None,
                attachment: Some(crate::store::Attachment {
                    name: format!("caretaker-{}-{}.pdf", r.audience, period.first_day),
                    content_type: file.content_type.clone(),
                    data_base64: base64::engine::general_purpose::STANDARD.encode(&file.bytes),
                }),
            })
            .collect();
        recorded += store.record_digests(&key, &cursor, records)?.len();
    }
    Ok(recorded)
}

/// Records what is due for one recipient. Returns how many digests were recorded.
pub fn plan_recipient(
    hostname: Hostnames,
    store: &dyn Store,
    sched: &DigestSchedule,
    s: &Settings,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let who = sched.username.as_str();
    let chans = channels(store, who, s)?;
    if chans.is_empty() {
        return Ok(0);
    }
    let Some(due) = last_due(sched, now, tz) else {
        return Ok(0);
    };
    let mut cursor = store.digest_cursor(who)?;
    if cursor.last_due.is_none() {
        // A new recipient starts from now: "new since the last digest", not the whole record.
        let next = store.next_timeline_id()?;
        cursor = DigestCursor {
            scheduled_from: next,
            urgent_from: next,
            last_due: Some(due),
            urgent_sent: vec![],
        };
        store.put_digest_cursor(who, &cursor)?;
        return Ok(0);
    }
    let mut recorded = 0;

    // Urgent: gather a burst, cap per hour; what the cap holds back waits for the digest.
    let pending = store.audience_events_from(DSL, cursor.urgent_from, MAX_EVENTS)?;
    if let Some(&(last_tid, _)) = pending.last() {
        let urgent: Vec<&(u64, StoredEvent)> =
            pending.iter().filter(|(_, e)| is_urgent(e, s)).collect();
        let gathered = urgent.first().is_none_or(|(_, e)| {
            now - e.received_at >= chrono::Duration::seconds(s.urgent.gather_secs as i64)
        });
        if gathered {
            let mut next = cursor.clone();
            next.urgent_from = last_tid + 1;
            next.urgent_sent
                .retain(|t| now - *t < chrono::Duration::hours(1));
            if urgent.is_empty() {
                store.put_digest_cursor(who, &next)?;
            } else if next.urgent_sent.len() >= s.urgent.max_per_hour as usize {
                tracing::info!(recipient = %who, events = urgent.len(), "Urgent alerts capped; they wait for the digest");
                store.put_digest_cursor(who, &next)?;
            } else {
                next.urgent_sent.push(now);
                let events: Vec<StoredEvent> = urgent.iter().map(|(_, e)| e.clone()).collect();
                let rec = records(hostname, store, who, &chans, &events, true, s, tz, now);
                recorded += store.record_digests(who, &next, rec)?.len();
            }
            cursor = next;
        }
    }

    // Scheduled: once per due time, only if there is something to say.
    if cursor.last_due.is_some_and(|d| d < due) {
        let events = store.audience_events_from(DSL, cursor.scheduled_from, MAX_EVENTS)?;
        let mut next = cursor.clone();
        next.last_due = Some(due);
        match events.last() {
            None => store.put_digest_cursor(who, &next)?,
            Some(&(last_tid, _)) => {
                next.scheduled_from = last_tid + 1;
                let events: Vec<StoredEvent> = events.into_iter().map(|(_, e)| e).collect();
                let rec = records(hostname, store, who, &chans, &events, false, s, tz, now);
                recorded += store.record_digests(who, &next, rec)?.len();
            }
        }
    }
    Ok(recorded)
}

/// Records a digest of what is new for `username` now, whatever the schedule ("send my digest
/// now"). With no digest before, it covers everything stored. Returns how many were recorded
/// (none when there is nothing new, or the account is not a DSL with somewhere to send to).
pub fn digest_now(
    hostname: Hostnames,
    store: &dyn Store,
    username: &str,
    s: &Settings,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let chans = channels(store, username, s)?;
    if chans.is_empty() {
        return Ok(0);
    }
    let mut cursor = store.digest_cursor(username)?;
    let events = store.audience_events_from(DSL, cursor.scheduled_from, MAX_EVENTS)?;
    let Some(&(last_tid, _)) = events.last() else {
        return Ok(0);
    };
    cursor.scheduled_from = last_tid + 1;
    if cursor.last_due.is_none() {
        // From here on the schedule takes over; urgent alerts start from now too.
        cursor.urgent_from = last_tid + 1;
        cursor.last_due = s
            .digests
            .iter()
            .find(|d| d.username == username)
            .and_then(|d| last_due(d, now, tz))
            .or(Some(now));
    }
    let events: Vec<StoredEvent> = events.into_iter().map(|(_, e)| e).collect();
    let rec = records(
        hostname, store, username, &chans, &events, false, s, tz, now,
    );
    Ok(store.record_digests(username, &cursor, rec)?.len())
}

/// The wait before the next attempt after `attempts` failures: 15 s doubling, at most an hour.
pub fn backoff(attempts: u32) -> chrono::Duration {
    let secs = 15u64.saturating_mul(1 << attempts.min(8)).min(3600);
    chrono::Duration::seconds(secs as i64)
}

/// Runs the digest engine until `shutdown`.
pub async fn run(c: Arc<Collector>, tz: Tz, shutdown: CancellationToken) {
    // For the crash test only: abort after a send is accepted and before it is recorded.
    let abort_after_send = std::env::var_os("CARETAKER_TEST_ABORT_AFTER_SEND").is_some();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if c.store.closed_because().is_some() {
            // A failed write closed the store (logged there); digests wait for it to reopen.
            continue;
        }
        let store = c.store.clone();
        match blocking(move || store.lead_digests()).await {
            Ok(true) => {}
            Ok(false) => continue, // another collector sharing the store sends them
            Err(e) => {
                tracing::warn!(error = %e, "Digests not planned: cannot tell which collector leads");
                continue;
            }
        }
        let now = Utc::now();
        let (c2, store) = (c.clone(), c.store.clone());
        let planned = blocking(move || {
            let s = c2.settings()?;
            let hostname = |id: &str| {
                c2.device_cache()
                    .get(id)
                    .map(|d| d.hostname)
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| id.chars().take(8).collect())
            };
            for sched in &s.digests {
                if let Err(e) = plan_recipient(&hostname, store.as_ref(), sched, &s, tz, now) {
                    tracing::warn!(recipient = %sched.username, error = %e, "Digest not recorded");
                }
            }
            if let Err(e) = plan_reports(&c2, store.as_ref(), &s, tz, now) {
                tracing::warn!(error = %e, "Scheduled report not recorded");
            }
            Ok((s, store.pending_digests()?))
        })
        .await;
        let (settings, pending) = match planned {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "Digests not planned");
                continue;
            }
        };
        for mut d in pending
            .into_iter()
            .filter(|d| d.next_attempt.is_none_or(|t| t <= now))
        {
            let result = send::deliver(&d, settings.smtp.as_ref()).await;
            if result.is_ok() && abort_after_send {
                tracing::error!(
                    digest = d.id,
                    "Aborting after the send, before recording it (test hook)"
                );
                std::process::abort();
            }
            d.attempts += 1;
            match result {
                Ok(()) => {
                    d.status = DigestStatus::Sent;
                    d.sent_at = Some(Utc::now());
                    d.last_error = None;
                    d.next_attempt = None;
                    tracing::info!(digest = d.id, recipient = %d.recipient, kind = %d.kind, "Digest sent");
                }
                Err(e) => {
                    d.last_error = Some(e.to_string());
                    d.next_attempt = Some(Utc::now() + backoff(d.attempts));
                    tracing::warn!(digest = d.id, recipient = %d.recipient, error = %e, attempts = d.attempts, "Digest not sent; will retry");
                }
            }
            let store = c.store.clone();
            if let Err(e) = blocking(move || store.update_digest(&d)).await {
                tracing::error!(error = %e, "Digest state not recorded");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(freq: &str, at: &str, day: &str) -> DigestSchedule {
        DigestSchedule {
            username: "dsl".into(),
            frequency: freq.into(),
            at: at.into(),
            weekday: day.into(),
        }
    }

    #[test]
    fn due_times_follow_the_local_clock_and_weekday() {
        let tz = crate::timefmt::DEFAULT_TZ;
        // Monday 1 June 2026, 15:30 UTC = 16:30 BST.
        let now = DateTime::parse_from_rfc3339("2026-06-01T15:30:00Z")
            .unwrap()
            .to_utc();
        let daily = last_due(&sched("daily", "16:00", "fri"), now, tz).unwrap();
        assert_eq!(daily.to_rfc3339(), "2026-06-01T15:00:00+00:00");
        let before = last_due(&sched("daily", "17:00", "fri"), now, tz).unwrap();
        assert_eq!(
            before.to_rfc3339(),
            "2026-05-31T16:00:00+00:00",
            "yesterday's"
        );
        let weekly = last_due(&sched("weekly", "16:00", "fri"), now, tz).unwrap();
        assert_eq!(
            weekly.to_rfc3339(),
            "2026-05-29T15:00:00+00:00",
            "last Friday"
        );
    }

    use crate::store::{DeviceBatch, DigestStore, RedbStore, test_device};

    fn flagged(seq: u64, kind: &str, bypass: bool) -> StoredEvent {
        let now = Utc::now();
        StoredEvent {
            device_id: "d".into(),
            seq,
            kind: kind.into(),
            occurred_at: now,
            received_at: now - chrono::Duration::seconds(10),
            user: Some("amy".into()),
            details: json!({"name": "tor", "serial": "S"})
                .as_object()
                .unwrap()
                .clone(),
            severity: "high".into(),
            audience: vec!["network_manager".into(), "dsl".into()],
            assessment: bypass.then(|| json!({"software": [{"classification": "bypass_tool"}]})),
        }
    }

    fn store_with(events: Vec<StoredEvent>) -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        s.insert_device(&test_device("d")).unwrap();
        append(&s, events, Utc::now());
        (dir, s)
    }

    /// Stores `events` as one batch from device "d".
    fn append(store: &RedbStore, events: Vec<StoredEvent>, seen_at: DateTime<Utc>) {
        store
            .append(&[DeviceBatch {
                device_id: "d".into(),
                events,
                facts: None,
                state: Default::default(),
                seen_at,
            }])
            .unwrap();
    }

    /// `store_with`, plus the DSL account amy-dsl the settings' digest schedule names.
    fn store_with_dsl(events: Vec<StoredEvent>) -> (tempfile::TempDir, RedbStore) {
        let (dir, store) = store_with(events);
        let by = crate::accounts::Actor::local_cli();
        crate::accounts::add_user(&store, &by, "amy-dsl", Role::Dsl, None).unwrap();
        (dir, store)
    }

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.webhooks.push(crate::settings::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            kind: "generic".into(),
            owner: "amy-dsl".into(),
        });
        s.digests.push(sched("daily", "16:00", "fri"));
        s.digests[0].username = "amy-dsl".into();
        s.urgent.gather_secs = 5;
        s.urgent.max_per_hour = 1;
        s
    }

    #[test]
    fn a_schedule_counts_from_first_sight_and_sends_only_when_there_is_news() {
        let (_d, store) = store_with_dsl(vec![flagged(1, "usb.inserted", false)]);
        let s = settings();
        let tz = crate::timefmt::DEFAULT_TZ;
        let host = |id: &str| id.to_string();
        let plan = |t| plan_recipient(&host, &store, &s.digests[0], &s, tz, t).unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc();
        // First sight: the old event is history, not news.
        assert_eq!(plan(t0), 0);
        // 16:00 passes with nothing new: nothing recorded.
        let t1 = t0 + chrono::Duration::hours(5);
        assert_eq!(plan(t1), 0);
        append(
            &store,
            vec![
                flagged(2, "usb.inserted", false),
                flagged(3, "usb.inserted", false),
            ],
            t1,
        );
        // Not due again until tomorrow 16:00; then one digest covering both.
        assert_eq!(plan(t1), 0);
        let t2 = t1 + chrono::Duration::days(1);
        assert_eq!(plan(t2), 1);
        let d = &store.pending_digests().unwrap()[0];
        assert_eq!((d.events, d.kind.as_str()), (2, "scheduled"));
        assert_eq!(plan(t2), 0, "once per due time");
    }

    #[test]
    fn urgent_events_gather_into_one_message_and_the_cap_holds_the_rest() {
        let (_d, store) = store_with_dsl(vec![]);
        let s = settings();
        let tz = crate::timefmt::DEFAULT_TZ;
        let host = |id: &str| id.to_string();
        let plan = |t| plan_recipient(&host, &store, &s.digests[0], &s, tz, t).unwrap();
        let now = Utc::now();
        plan(now);
        let burst: Vec<StoredEvent> = (1..=5)
            .map(|i| flagged(i, "software.installed", true))
            .collect();
        append(&store, burst, now);
        // Still gathering (received 10 s ago in these events, gather 5 s: ready); one message.
        assert_eq!(plan(now), 1);
        assert_eq!(store.pending_digests().unwrap()[0].events, 5);
        assert_eq!(store.pending_digests().unwrap()[0].kind, "urgent");
        // Another burst within the hour: over the cap of one, it waits for the digest.
        let more: Vec<StoredEvent> = (6..=7)
            .map(|i| flagged(i, "software.installed", true))
            .collect();
        append(&store, more, now);
        assert_eq!(plan(now), 0);
    }

    #[test]
    fn only_an_enabled_dsl_account_receives_anything() {
        let (_d, store) = store_with(vec![flagged(1, "usb.inserted", false)]);
        let by = crate::accounts::Actor::local_cli();
        crate::accounts::add_user(&store, &by, "amy-dsl", Role::Technician, None).unwrap();
        let s = settings();
        let host = |id: &str| id.to_string();
        let tz = crate::timefmt::DEFAULT_TZ;
        assert_eq!(
            digest_now(&host, &store, "amy-dsl", &s, tz, Utc::now()).unwrap(),
            0,
            "a technician"
        );
        crate::accounts::change_role(&store, &by, "amy-dsl", Role::Dsl).unwrap();
        crate::accounts::set_disabled(&store, &by, "amy-dsl", true).unwrap();
        assert_eq!(
            digest_now(&host, &store, "amy-dsl", &s, tz, Utc::now()).unwrap(),
            0,
            "disabled"
        );
        crate::accounts::set_disabled(&store, &by, "amy-dsl", false).unwrap();
        assert_eq!(
            digest_now(&host, &store, "amy-dsl", &s, tz, Utc::now()).unwrap(),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_scheduled_report_goes_once_after_its_period_to_the_right_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let (ca, _) = crate::ca::SchoolCa::generate("Test").unwrap();
        let c = Collector::new(store.clone(), ca, Default::default(), "t").unwrap();
        let by = crate::accounts::Actor::local_cli();
        for (name, role) in [
            ("gov", Role::Governor),
            ("dsl", Role::Dsl),
            ("tech", Role::Technician),
        ] {
            crate::accounts::add_user(store.as_ref(), &by, name, role, None).unwrap();
            crate::accounts::set_email(store.as_ref(), &by, name, &format!("{name}@s.example"))
                .unwrap();
        }
        let s = Settings {
            smtp: Some(crate::settings::Smtp {
                host: "localhost".into(),
                port: 25,
                security: "none".into(),
                username: String::new(),
                password_file: String::new(),
                from: "c@s.example".into(),
                ca_file: String::new(),
            }),
            reports: vec![
                crate::settings::ReportSchedule {
                    audience: "governors".into(),
                    period: "week".into(),
                    recipients: vec!["gov".into(), "tech".into()],
                },
                crate::settings::ReportSchedule {
                    audience: "dsl".into(),
                    period: "week".into(),
                    recipients: vec!["dsl".into(), "gov".into()],
                },
            ],
            ..Settings::default()
        };
        let tz = crate::timefmt::DEFAULT_TZ;
        // Wednesday: the schedule starts; nothing for the week in progress or before.
        let wed = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .to_utc();
        let (c2, s2) = (Arc::new(c), s.clone());
        let run = move |now| {
            let (c, s) = (c2.clone(), s2.clone());
            let store = c.store.clone();
            std::thread::spawn(move || plan_reports(&c, store.as_ref(), &s, tz, now).unwrap())
                .join()
                .unwrap()
        };
        assert_eq!(run(wed), 0);
        // The next Tuesday: last week has ended: one PDF each, to whom it may go.
        let tue = wed + chrono::Duration::days(6);
        assert_eq!(
            run(tue),
            3,
            "governors' version to gov and tech, DSL's to dsl only"
        );
        assert_eq!(run(tue), 0, "once");
        let pending = store.pending_digests().unwrap();
        let mut to: Vec<(String, String)> = pending
            .iter()
            .map(|d| (d.recipient.clone(), d.kind.clone()))
            .collect();
        to.sort();
        assert_eq!(
            to,
            [
                ("dsl".to_string(), "report".to_string()),
                ("gov".into(), "report".into()),
                ("tech".into(), "report".into())
            ]
        );
        use base64::Engine;
        let pdf = base64::engine::general_purpose::STANDARD
            .decode(&pending[0].attachment.as_ref().unwrap().data_base64)
            .unwrap();
        assert!(pdf.starts_with(b"%PDF"), "a real PDF is attached");
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(backoff(0).num_seconds(), 15);
        assert_eq!(backoff(1).num_seconds(), 30);
        assert_eq!(backoff(20).num_seconds(), 3600);
    }
}
