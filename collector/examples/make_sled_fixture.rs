//! Writes the old-format sled store the migration tests convert (`collector/testdata/sled-v1/`), with the full sled backend, and lists what it holds.
//!
//! `cargo run -p caretaker-collector --example make_sled_fixture -- collector/testdata/sled-v1`
//! replaces `<dir>/store/` with a sled store filled through the sled backend's own trait
//! methods, as a school's collector filled it, and writes `<dir>/content.json`: every record
//! the store then answers, read back through the same trait methods (events with their timeline
//! ids, read from sled's `timeline` tree). Everything is derived from fixed times and names, so
//! a second run gives the same `content.json` (sled's files differ in their bytes, not in what
//! they hold).

use std::path::{Path, PathBuf};
use std::time::{Duration as StdDuration, Instant};

use anyhow::{Context, bail};
use caretaker_collector::incidents::group_key;
use caretaker_collector::store::{
    AccountStore, AgentFacts, ApiTokenRecord, Attachment, AuditEntry, Channel, Device, DeviceBatch,
    DigestCursor, DigestRecord, DigestStatus, DigestStore, EntryAction, Incident, IncidentEntry,
    IncidentQuery, IncidentStore, PolicyVersion, SessionRecord, SettingsVersion, SledStore, Store,
    StoredEvent, TokenRecord, UserRecord,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

const DEVICES: usize = 3;
const ROUNDS: u64 = 4;
const PER_BATCH: u64 = 10;
const SESSIONS: [(&str, &str); 2] = [("sess1", "dsl1"), ("sess2", "nm")];
const API_TOKENS: [&str; 2] = ["apihash", "apihash-revoked"];
const RECIPIENTS: [&str; 3] = ["dsl1", "dsl2", "nobody"];

/// What the store holds, as its trait methods answer.
#[derive(Serialize)]
struct Content {
    devices: Vec<Device>,
    /// `(timeline id, event)`, in timeline order.
    events: Vec<(u64, StoredEvent)>,
    next_timeline_id: u64,
    /// Newest first.
    incidents: Vec<Incident>,
    incident_entries: Vec<IncidentEntry>,
    /// Each incident's group key and the incident the group now points at.
    groups: Vec<(String, Option<u64>)>,
    tokens: Vec<TokenRecord>,
    policies: Vec<PolicyVersion>,
    derived: Vec<(String, u64, Value)>,
    users: Vec<UserRecord>,
    sessions: Vec<(String, Option<SessionRecord>)>,
    api_tokens: Vec<(String, Option<ApiTokenRecord>)>,
    /// Newest first.
    audit: Vec<AuditEntry>,
    settings: Option<SettingsVersion>,
    /// Newest first.
    digests: Vec<DigestRecord>,
    pending_digests: Vec<u64>,
    digest_cursors: Vec<(String, DigestCursor)>,
}

fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: make_sled_fixture <fixture directory>")?
        .into();
    let store_dir = out.join("store");
    if store_dir.exists() {
        std::fs::remove_dir_all(&store_dir)?;
    }
    std::fs::create_dir_all(&store_dir)?;
    let mut content = {
        let s = SledStore::open(&store_dir)?;
        fill(&s)?;
        read(&s)?
    };
    content.events = timeline(&store_dir)?;
    let json = serde_json::to_string_pretty(&content)? + "\n";
    std::fs::write(out.join("content.json"), json)?;
    println!(
        "{}: {} devices, {} events, {} incidents",
        out.display(),
        content.devices.len(),
        content.events.len(),
        content.incidents.len()
    );
    Ok(())
}

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 1, 8, 0, 0).unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Heartbeats, software installs for the network manager, antivirus warnings, and USB sticks
/// flagged for the DSL too (which make incidents), an hour apart.
fn event(device: usize, seq: u64) -> StoredEvent {
    let at = base() + Duration::hours(seq as i64);
    let (kind, audience, user, severity, details) = match seq % 5 {
        0 | 3 => (
            "usb.inserted",
            vec!["network_manager", "dsl"],
            Some(format!("pupil{}", seq % 3)),
            "warning",
            json!({"serial": format!("S{}", seq % 4), "product": "Stick", "decision": "block"}),
        ),
        1 => (
            "software.installed",
            vec!["network_manager"],
            Some("staff1".to_string()),
            "info",
            json!({"name": format!("pkg{}", seq % 5), "version": "1.0"}),
        ),
        2 => (
            "antivirus.status",
            vec!["network_manager"],
            None,
            "warning",
            json!({"status": "outdated"}),
        ),
        _ => ("agent.heartbeat", vec![], None, "info", json!({})),
    };
    StoredEvent {
        device_id: format!("d{device}"),
        seq,
        kind: kind.into(),
        occurred_at: at,
        received_at: at + Duration::seconds(3),
        user,
        details: obj(details),
        severity: severity.into(),
        audience: audience.into_iter().map(String::from).collect(),
        assessment: (kind == "usb.inserted").then(|| json!({"rule": "usb"})),
    }
}

fn device(i: usize) -> Device {
    Device {
        id: format!("d{i}"),
        hostname: format!("new-{i}"),
        os: "linux".into(),
        agent_version: "0.9".into(),
        enrolled_at: base() - Duration::days(7),
        last_seen: None,
        enrolled_with: "year7".into(),
        revoked_at: None,
        event_count: 0,
        highest_seq: 0,
        state: Map::new(),
    }
}

/// Fills the store through its trait methods: devices (one revoked), events with resends,
/// incidents with entries (one closed mid-way, so its group opens a second), enrolment tokens,
/// policy and settings versions, derived state, accounts, sessions, API tokens, audit and
/// digests with their cursors.
fn fill(s: &SledStore) -> anyhow::Result<()> {
    for d in 0..DEVICES {
        s.insert_device(&device(d))?;
    }
    for round in 0..ROUNDS {
        let group: Vec<DeviceBatch> = (0..DEVICES)
            .map(|d| {
                let first = round * PER_BATCH + 1;
                // Two resends of the previous batch's tail, then the new events.
                let events = (first.saturating_sub(2).max(1)..first + PER_BATCH)
                    .map(|seq| event(d, seq))
                    .collect();
                DeviceBatch {
                    device_id: format!("d{d}"),
                    events,
                    facts: (round % 2 == 0).then(|| AgentFacts {
                        hostname: format!("laptop-{d}"),
                        os: "debian".into(),
                        agent_version: format!("1.{round}"),
                    }),
                    state: obj(json!({"antivirus": {"round": round}})),
                    seen_at: base() + Duration::hours(10 * round as i64),
                }
            })
            .collect();
        s.append(&group)?;
        if round == 1 {
            let at = base() + Duration::days(1);
            s.add_incident_entry(1, at, "dsl1", EntryAction::Closed, "spoken to")?;
            s.add_incident_entry(2, at, "dsl1", EntryAction::Note, "watching")?;
            s.add_incident_entry(2, at, "dsl1", EntryAction::Acknowledged, "")?;
        }
    }
    s.revoke_device("d2", base() + Duration::days(3))?;
    for (i, label) in ["year7", "staff"].into_iter().enumerate() {
        s.insert_token(&TokenRecord {
            hash: format!("tokenhash{i}"),
            label: label.into(),
            max_uses: 10,
            uses: 0,
            created_at: base() + Duration::minutes(i as i64),
            expires_at: base() + Duration::days(30),
        })?;
    }
    if s.use_token("tokenhash1", base())?.is_err() {
        bail!("the staff token was refused");
    }
    for v in 0..3 {
        s.put_policy(json!({"version": v}), "nm", base() + Duration::hours(v))?;
    }
    s.put_derived("software", "d0", 40, &json!({"pkg1": "1.0"}))?;
    s.put_derived("software", "d1", 41, &json!({"pkg2": "1.0"}))?;
    s.put_derived("screen_lock", "d0", 12, &json!({"locked": true}))?;
    for (name, role) in [("dsl1", "dsl"), ("nm", "network_manager")] {
        s.insert_user(&UserRecord {
            username: name.into(),
            role: role.into(),
            password_hash: "$argon2id$x".into(),
            disabled: false,
            email: format!("{name}@school.example"),
            must_change_password: false,
            created_at: base(),
            created_by: "init".into(),
            updated_at: base(),
        })?;
    }
    let mut u = s.user("nm")?.context("nm was just added")?;
    u.must_change_password = true;
    s.update_user(&u)?;
    for (hash, user) in SESSIONS {
        s.insert_session(
            hash,
            &SessionRecord {
                username: user.into(),
                created_at: base(),
                last_seen: base(),
                expires_at: base() + Duration::days(1),
                csrf: format!("csrf-{hash}"),
            },
        )?;
    }
    for (hash, revoked_at) in API_TOKENS.into_iter().zip([None, Some(base())]) {
        s.insert_api_token(&ApiTokenRecord {
            hash: hash.into(),
            label: "mis".into(),
            role: "technician".into(),
            created_at: base(),
            created_by: "nm".into(),
            revoked_at,
        })?;
    }
    for i in 0..7 {
        s.audit(&AuditEntry {
            id: 0,
            at: base() + Duration::minutes(i),
            actor: "nm".into(),
            action: "policy_changed".into(),
            target: format!("v{i}"),
            detail: String::new(),
            address: "10.0.0.5".into(),
        })?;
    }
    s.put_settings(json!({"school": "Hill"}), "nm", base())?;
    s.put_settings(json!({"school": "Hill Academy"}), "nm", base())?;
    let digest = |kind: &str| DigestRecord {
        id: 0,
        recipient: "dsl1".into(),
        channel: Channel::Email {
            address: "dsl1@school.example".into(),
        },
        kind: kind.into(),
        created_at: base(),
        subject: format!("{kind} digest"),
        text: "t".into(),
        html: "h".into(),
        json: json!({}),
        events: 3,
        status: DigestStatus::Pending,
        attempts: 0,
        last_error: None,
        next_attempt: None,
        sent_at: None,
        attachment: (kind == "scheduled").then(|| Attachment {
            name: "report.pdf".into(),
            content_type: "application/pdf".into(),
            data_base64: "JVBERi0=".into(),
        }),
    };
    let mut cursor = s.digest_cursor("dsl1")?;
    cursor.scheduled_from = s.next_timeline_id()? - 40;
    let recorded =
        s.record_digests("dsl1", &cursor, vec![digest("scheduled"), digest("urgent")])?;
    let mut sent = recorded[0].clone();
    sent.status = DigestStatus::Sent;
    sent.sent_at = Some(base());
    s.update_digest(&sent)?;
    cursor.urgent_from = 7;
    cursor.last_due = Some(base());
    cursor.urgent_sent = vec![base() + Duration::minutes(3)];
    s.put_digest_cursor("dsl2", &cursor)?;
    Ok(())
}

/// Everything but the events, read back through the trait methods.
fn read(s: &SledStore) -> anyhow::Result<Content> {
    let (incidents, _) = s.incidents(&IncidentQuery {
        limit: 10_000,
        ..Default::default()
    })?;
    let mut incident_entries = Vec::new();
    let mut groups = Vec::new();
    for inc in &incidents {
        incident_entries.extend(s.incident_entries(inc.id)?);
        let key = group_key(&inc.device_id, &inc.kind, &inc.subject);
        groups.push((key.clone(), s.incident_for_group(&key)?));
    }
    let mut audit = Vec::new();
    let mut before = None;
    loop {
        let page = s.audit_log(before, 3)?;
        audit.extend(page.entries);
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    let mut derived = s.derived("software")?;
    derived.extend(s.derived("screen_lock")?);
    Ok(Content {
        devices: s.devices()?,
        events: Vec::new(),
        next_timeline_id: s.next_timeline_id()?,
        incidents,
        incident_entries,
        groups,
        tokens: s.enrolment_tokens()?,
        policies: s.policy_history()?,
        derived,
        users: s.users()?,
        sessions: SESSIONS
            .iter()
            .map(|(h, _)| Ok((h.to_string(), s.session(h)?)))
            .collect::<anyhow::Result<_>>()?,
        api_tokens: API_TOKENS
            .iter()
            .map(|h| Ok((h.to_string(), s.api_token(h)?)))
            .collect::<anyhow::Result<_>>()?,
        audit,
        settings: s.current_settings()?,
        digests: s.digests(None, 1_000)?,
        pending_digests: s.pending_digests()?.iter().map(|d| d.id).collect(),
        digest_cursors: RECIPIENTS
            .iter()
            .map(|r| Ok((r.to_string(), s.digest_cursor(r)?)))
            .collect::<anyhow::Result<_>>()?,
    })
}

/// The events in timeline order with their timeline ids, read from sled's trees directly (the
/// trait hands a timeline id out only as a page's cursor).
fn timeline(dir: &Path) -> anyhow::Result<Vec<(u64, StoredEvent)>> {
    // The store just dropped holds sled's lock until its flush thread wakes.
    let deadline = Instant::now() + StdDuration::from_secs(5);
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(_) if Instant::now() < deadline => std::thread::sleep(StdDuration::from_millis(50)),
            Err(e) => return Err(e.into()),
        }
    };
    let (timeline, events) = (db.open_tree("timeline")?, db.open_tree("events")?);
    let mut out = Vec::new();
    for item in timeline.iter() {
        let (tid, key) = item?;
        let tid = u64::from_be_bytes(tid.as_ref().try_into()?);
        let raw = events
            .get(&key)?
            .context("a timeline entry without its event")?;
        out.push((tid, serde_json::from_slice(&raw)?));
    }
    Ok(out)
}
