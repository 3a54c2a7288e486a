//! The policy page, its section forms and the policy's history.
use super::*;

struct ScreenLockView {
    enabled: bool,
    idle_minutes: u64,
    inhibitor: bool,
    windows_limit: bool,
    start: String,
    end: String,
    days: Vec<(&'static str, &'static str, bool)>,
}

struct PermissionView {
    index: usize,
    serial: String,
    user: String,
    until_text: String,
    reason: String,
    expired: bool,
}

struct RemovableView {
    enforce: bool,
    pupil_storage: String,
    staff_storage: String,
    groups: String,
    patterns: String,
    serials: String,
    scan_on_mount: bool,
    permissions: Vec<PermissionView>,
}

#[derive(Template)]
#[template(path = "policy.html")]
struct PolicyPage {
    chrome: Chrome,
    version: u64,
    changed_by: String,
    changed_at: String,
    can_edit: bool,
    message: Option<String>,
    diff: Vec<String>,
    error_section: String,
    error: String,
    sl: ScreenLockView,
    av_max_age_hours: u32,
    av_check_minutes: u64,
    sw_approved: String,
    sw_denied: String,
    sw_watch_home: bool,
    sw_rescan_minutes: u64,
    rm: RemovableView,
    modes: Vec<(&'static str, &'static str)>,
}

fn policy_page(
    st: &AppState,
    desk: &Desk,
    doc_value: &Value,
    status: StatusCode,
    message: Option<String>,
    diff: Vec<String>,
    error: Option<(&str, String)>,
) -> PageResult {
    use caretaker_proto::policy::PolicyDocument;
    let current = desk.policy()?;
    // Shape only, no validation: a refused proposal is shown as typed, to be corrected.
    let doc: PolicyDocument = serde_json::from_value(doc_value.clone())
        .or_else(|_| serde_json::from_value(current.policy.clone()))
        .unwrap_or_default();
    let tz = tz(st);
    let now = Utc::now();
    let mode = |m: caretaker_proto::policy::removable_media::StorageMode| {
        serde_json::to_value(m)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let days = [
        ("mon", "Mon"),
        ("tue", "Tue"),
        ("wed", "Wed"),
        ("thu", "Thu"),
        ("fri", "Fri"),
        ("sat", "Sat"),
        ("sun", "Sun"),
    ];
    let sh = &doc.screen_lock.school_hours;
    let (error_section, error) = error.map(|(s, e)| (s.to_string(), e)).unwrap_or_default();
    Ok(render(
        status,
        &PolicyPage {
            chrome: chrome(desk, st, "Policy", "/policy"),
            version: current.version,
            changed_by: current.changed_by.clone(),
            changed_at: timefmt::date_time(current.changed_at, tz),
            can_edit: desk.may(Permission::EditPolicy),
            message,
            diff,
            error_section,
            error,
            sl: ScreenLockView {
                enabled: doc.screen_lock.enabled,
                idle_minutes: doc.screen_lock.idle_timeout_secs.div_ceil(60),
                inhibitor: doc.screen_lock.inhibitor_excuses_lock,
                windows_limit: doc.screen_lock.windows_inactivity_limit,
                start: sh.start.clone(),
                end: sh.end.clone(),
                days: days
                    .iter()
                    .map(|(v, l)| (*v, *l, sh.days.iter().any(|d| d == v)))
                    .collect(),
            },
            av_max_age_hours: doc.antivirus.max_signature_age_hours,
            av_check_minutes: doc.antivirus.check_interval_secs.div_ceil(60),
            sw_approved: doc.software.approved.join("\n"),
            sw_denied: doc.software.denied.join("\n"),
            sw_watch_home: doc.software.watch_home_executables,
            sw_rescan_minutes: doc.software.rescan_interval_secs.div_ceil(60),
            rm: RemovableView {
                enforce: doc.removable_media.enforce,
                pupil_storage: mode(doc.removable_media.pupil_storage),
                staff_storage: mode(doc.removable_media.staff_storage),
                groups: doc.removable_media.pupils.groups.join("\n"),
                patterns: doc.removable_media.pupils.username_patterns.join("\n"),
                serials: doc.removable_media.allowed_serials.join("\n"),
                scan_on_mount: doc.removable_media.scan_on_mount,
                permissions: doc
                    .removable_media
                    .permissions
                    .iter()
                    .enumerate()
                    .map(|(index, p)| PermissionView {
                        index,
                        serial: p.serial.clone().unwrap_or_default(),
                        user: p.user.clone().unwrap_or_default(),
                        until_text: timefmt::date_time(p.until, tz),
                        reason: p.reason.clone().unwrap_or_default(),
                        expired: p.until <= now,
                    })
                    .collect(),
            },
            modes: vec![
                ("block", "Blocked"),
                ("allow_after_scan", "Allowed after a clean scan"),
                ("allow", "Allowed"),
            ],
        },
    ))
}

pub async fn policy(State(st): State<AppState>, Extension(desk): D) -> PageResult {
    let current = desk.policy()?;
    policy_page(
        &st,
        &desk,
        &current.policy,
        StatusCode::OK,
        None,
        vec![],
        None,
    )
}

pub async fn set_policy_section(
    State(st): State<AppState>,
    Extension(desk): D,
    Path(section): Path<String>,
    Form(fields): Form<Fields>,
) -> PageResult {
    let current = desk.policy()?;
    let proposed = match policy_form::apply(&current.policy, &section, &fields, Utc::now(), tz(&st))
    {
        Ok(doc) => doc,
        Err(e) => {
            return policy_page(
                &st,
                &desk,
                &current.policy,
                StatusCode::BAD_REQUEST,
                None,
                vec![],
                Some((&section, e.to_string())),
            );
        }
    };
    match desk.set_policy(proposed.clone()).await {
        Ok(pv) => {
            let changes = policy_form::diff(&current.policy, &pv.policy);
            policy_page(
                &st,
                &desk,
                &pv.policy,
                StatusCode::OK,
                Some(format!(
                    "Saved as version {}. Connected laptops apply it within seconds.",
                    pv.version
                )),
                changes,
                None,
            )
        }
        Err(DeskError::Invalid(m)) => policy_page(
            &st,
            &desk,
            &proposed,
            StatusCode::BAD_REQUEST,
            None,
            vec![],
            Some((&section, format!("Not saved: {m}"))),
        ),
        Err(e) => Err(e.into()),
    }
}

struct VersionView {
    version: u64,
    when: String,
    by: String,
    changes: Vec<String>,
}

#[derive(Template)]
#[template(path = "policy_history.html")]
struct HistoryPage {
    chrome: Chrome,
    versions: Vec<VersionView>,
    /// The link to older changes, when there are any.
    next: Option<String>,
}

/// Versions a page of the change log shows; every version can be a whole policy, so the page
/// reads only these and the one before them, never the whole history.
const HISTORY_PAGE: usize = 50;

pub async fn policy_history(
    State(st): State<AppState>,
    Extension(desk): D,
    Query(p): Query<CursorParam>,
) -> PageResult {
    let before = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.strip_prefix('v')
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| DeskError::Invalid(format!("{c:?} is not a page of this log.")))?,
        ),
        None => None,
    };
    // One more than shown: the oldest shown is described against it.
    let (history, _) = desk.policy_history_page(before, HISTORY_PAGE + 1).await?;
    let tz = tz(&st);
    let shown = history.len().min(HISTORY_PAGE);
    let versions: Vec<VersionView> = history[..shown]
        .iter()
        .enumerate()
        .map(|(i, v)| VersionView {
            version: v.version,
            when: timefmt::date_time(v.changed_at, tz),
            by: v.changed_by.clone(),
            changes: match history.get(i + 1) {
                Some(older) => policy_form::diff(&older.policy, &v.policy),
                None => vec![],
            },
        })
        .collect();
    let next = (history.len() > HISTORY_PAGE)
        .then(|| {
            versions
                .last()
                .map(|v| format!("/policy/history?cursor=v{}", v.version))
        })
        .flatten();
    Ok(render(
        StatusCode::OK,
        &HistoryPage {
            chrome: chrome(&desk, &st, "Policy change log", "/policy"),
            versions,
            next,
        },
    ))
}
