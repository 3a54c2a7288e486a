//! The settings page (terms, licences, mail, webhooks, digest schedules, urgent rules, report schedules), the digests page, and setting a user's e-mail.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Form};

use super::AppState;
use super::pages::{PageError, PageResult, chrome};
use super::policy_form::Fields;
use super::settings_form;
use super::views::{Badge, Chrome, badge, render};
use crate::auth::{Permission, Role};
use crate::desk::{Desk, DeskError};
use crate::store::{Channel, DigestStatus};
use crate::timefmt;

type D = Extension<Arc<Desk>>;

struct DslRow {
    username: String,
    email: String,
    on: bool,
    frequency: String,
    at: String,
    weekday: String,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    version: u64,
    changed_by: String,
    changed_at: String,
    message: Option<String>,
    error_section: String,
    error: String,
    school_name: String,
    dashboard_url: String,
    dsls: Vec<DslRow>,
    weekdays: Vec<(&'static str, &'static str)>,
    urgent_kinds: String,
    urgent_bypass: bool,
    urgent_gather: u64,
    urgent_max: u32,
    smtp_host: String,
    smtp_port: u16,
    smtp_security: String,
    smtp_username: String,
    smtp_password_file: String,
    smtp_from: String,
    smtp_ca_file: String,
    securities: Vec<(&'static str, &'static str)>,
    webhooks: String,
    terms: String,
    licences: String,
    reports: String,
    retention: crate::settings::Retention,
    retention_technical_min: u32,
    pseudonymise_usernames: bool,
}

async fn settings_page(
    st: &AppState,
    desk: &Desk,
    status: StatusCode,
    message: Option<String>,
    error: Option<(&str, String)>,
) -> PageResult {
    let (s, _doc, version) = desk.settings().await?;
    let users = desk.users().await?;
    let tz = st.options.time_zone;
    let dsls = users
        .iter()
        .filter(|u| Role::parse(&u.role) == Some(Role::Dsl))
        .map(|u| {
            let sched = s.digests.iter().find(|d| d.username == u.username);
            DslRow {
                username: u.username.clone(),
                email: u.email.clone(),
                on: sched.is_some(),
                frequency: sched
                    .map(|d| d.frequency.clone())
                    .unwrap_or_else(|| "daily".into()),
                at: sched
                    .map(|d| d.at.clone())
                    .unwrap_or_else(|| "16:00".into()),
                weekday: sched
                    .map(|d| d.weekday.clone())
                    .unwrap_or_else(|| "fri".into()),
            }
        })
        .collect();
    let smtp = s.smtp.clone();
    let (error_section, error) = error.map(|(s, e)| (s.to_string(), e)).unwrap_or_default();
    Ok(render(
        status,
        &SettingsPage {
            chrome: chrome(desk, st, "Settings", "/settings"),
            version: version.as_ref().map(|v| v.version).unwrap_or(0),
            changed_by: version
                .as_ref()
                .map(|v| v.changed_by.clone())
                .unwrap_or_default(),
            changed_at: version
                .as_ref()
                .map(|v| timefmt::date_time(v.changed_at, tz))
                .unwrap_or_default(),
            message,
            error_section,
            error,
            school_name: s.school_name.clone(),
            dashboard_url: s.dashboard_url.clone(),
            dsls,
            weekdays: vec![
                ("mon", "Monday"),
                ("tue", "Tuesday"),
                ("wed", "Wednesday"),
                ("thu", "Thursday"),
                ("fri", "Friday"),
                ("sat", "Saturday"),
                ("sun", "Sunday"),
            ],
            urgent_kinds: s.urgent.kinds.join("\n"),
            urgent_bypass: s.urgent.bypass_tools,
            urgent_gather: s.urgent.gather_secs,
            urgent_max: s.urgent.max_per_hour,
            smtp_host: smtp.as_ref().map(|m| m.host.clone()).unwrap_or_default(),
            smtp_port: smtp.as_ref().map(|m| m.port).unwrap_or(587),
            smtp_security: smtp
                .as_ref()
                .map(|m| m.security.clone())
                .unwrap_or_else(|| "starttls".into()),
            smtp_username: smtp
                .as_ref()
                .map(|m| m.username.clone())
                .unwrap_or_default(),
            smtp_password_file: smtp
                .as_ref()
                .map(|m| m.password_file.clone())
                .unwrap_or_default(),
            smtp_from: smtp.as_ref().map(|m| m.from.clone()).unwrap_or_default(),
            smtp_ca_file: smtp.as_ref().map(|m| m.ca_file.clone()).unwrap_or_default(),
            securities: vec![
                ("starttls", "STARTTLS (port 587)"),
                ("tls", "TLS from the start (port 465)"),
                ("none", "None (a relay on this host only)"),
            ],
            webhooks: s
                .webhooks
                .iter()
                .map(|w| format!("{}, {}, {}", w.kind, w.url, w.owner))
                .collect::<Vec<_>>()
                .join("\n"),
            terms: s
                .terms
                .iter()
                .map(|t| format!("{}, {}, {}", t.name, t.start, t.end))
                .collect::<Vec<_>>()
                .join("\n"),
            licences: s
                .licences
                .iter()
                .map(|l| format!("{}, {}", l.product, l.count))
                .collect::<Vec<_>>()
                .join("\n"),
            reports: s
                .reports
                .iter()
                .map(|r| format!("{}, {}, {}", r.audience, r.period, r.recipients.join(" ")))
                .collect::<Vec<_>>()
                .join("\n"),
            retention_technical_min: crate::settings::Retention::technical_days_needed(&s.terms).0,
            retention: s.retention.clone(),
            pseudonymise_usernames: s.pseudonymise_usernames,
        },
    ))
}

pub async fn settings(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    settings_page(&st, &desk, StatusCode::OK, None, None).await
}

pub async fn set_settings_section(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(section): Path<String>,
    Form(fields): Form<Fields>,
) -> PageResult {
    let (_, doc, _) = desk.settings().await?;
    let proposed = match settings_form::apply(&doc, &section, &fields) {
        Ok(d) => d,
        Err(e) => {
            return settings_page(
                &st,
                &desk,
                StatusCode::BAD_REQUEST,
                None,
                Some((&section, e.to_string())),
            )
            .await;
        }
    };
    // A webhook or digest may only go to a DSL: say so here rather than drop it silently later.
    if let Ok(parsed) = crate::settings::Settings::parse_strict(&proposed) {
        let users = desk.users().await?;
        let is_dsl = |name: &str| {
            users
                .iter()
                .any(|u| u.username == name && Role::parse(&u.role) == Some(Role::Dsl))
        };
        let stray = parsed
            .webhooks
            .iter()
            .map(|w| w.owner.as_str())
            .chain(parsed.digests.iter().map(|d| d.username.as_str()))
            .find(|n| !is_dsl(n));
        if let Some(n) = stray {
            return settings_page(
                &st,
                &desk,
                StatusCode::BAD_REQUEST,
                None,
                Some((
                    &section,
                    format!("Not saved: {n} is not a DSL account; digests go only to DSLs."),
                )),
            )
            .await;
        }
    }
    match desk.set_settings(proposed).await {
        Ok(v) => {
            settings_page(
                &st,
                &desk,
                StatusCode::OK,
                Some(format!("Saved as version {}.", v.version)),
                None,
            )
            .await
        }
        Err(DeskError::Invalid(m)) => {
            settings_page(
                &st,
                &desk,
                StatusCode::BAD_REQUEST,
                None,
                Some((&section, format!("Not saved: {m}"))),
            )
            .await
        }
        Err(e) => Err(PageError::from(e)),
    }
}

struct DigestRow {
    id: u64,
    created: String,
    recipient: String,
    kind: String,
    to: String,
    events: u64,
    state: Badge,
    attempts: u32,
    problem: String,
}

#[derive(Template)]
#[template(path = "digests.html")]
struct DigestsPage {
    chrome: Chrome,
    rows: Vec<DigestRow>,
    can_configure: bool,
}

pub async fn digests(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    let tz = st.options.time_zone;
    let rows = desk
        .digests(200)
        .await?
        .into_iter()
        .map(|d| DigestRow {
            id: d.id,
            created: timefmt::date_time(d.created_at, tz),
            recipient: d.recipient,
            kind: d.kind,
            to: match d.channel {
                Channel::Email { address } => address,
                Channel::Webhook { kind, .. } => format!("{kind} webhook"),
            },
            events: d.events,
            state: badge(match d.status {
                DigestStatus::Sent => "sent",
                DigestStatus::Pending if d.attempts == 0 => "waiting",
                DigestStatus::Pending => "retrying",
            }),
            attempts: d.attempts,
            problem: match (d.last_error, d.next_attempt) {
                (Some(e), Some(next)) => format!("{e} (next try {})", timefmt::date_time(next, tz)),
                (Some(e), None) => e,
                _ => String::new(),
            },
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &DigestsPage {
            chrome: chrome(&desk, &st, "Digests", "/digests"),
            rows,
            can_configure: desk.may(Permission::ManageSettings),
        },
    ))
}
