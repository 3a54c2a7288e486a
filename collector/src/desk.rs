//! The service layer between the web and the store that knows who is asking: every dashboard and API operation goes through a `Desk`, which checks the role first.
//!
//! Web handlers never touch the store; they get a `Desk` for the signed-in person and call
//! its methods, each of which checks `Role::may` before reading anything. A role check cannot
//! be forgotten on one route because there is no other way in.

use std::net::IpAddr;
use std::sync::Arc;

use caretaker_proto::policy::PolicyDocument;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;

mod incidents;
mod people;
mod report;

use crate::accounts::{self, AccountError, Actor};
use crate::auth::{Permission, Role};
use crate::rules::DSL;
use crate::service::{Collector, SetPolicyError, blocking};
use crate::store::{
    AuditPage, Category, Device, EntryAction, EventPage, EventQuery, Incident, IncidentEntry,
    IncidentQuery, PolicyVersion, StoreError, TokenRecord, UserRecord,
};

/// Why a desk operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error("Your role ({0}) does not allow this.")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

impl From<AccountError> for DeskError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Invalid(m) => DeskError::Invalid(m),
            AccountError::NoSuchUser(u) => {
                DeskError::NotFound(format!("There is no account called {u}."))
            }
            AccountError::Store(e) => DeskError::Store(e),
        }
    }
}

pub type DeskResult<T> = Result<T, DeskError>;

/// A device is "online" when it has a stream open, or was heard from this recently.
pub const ONLINE_WITHIN: Duration = Duration::minutes(10);
/// A device not heard from for this long during school hours is "silent".
pub const SILENT_AFTER: Duration = Duration::hours(1);

/// The fleet at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    pub devices: usize,
    pub online: usize,
    pub screen_lock_enforced: usize,
    pub antivirus_current: usize,
    pub no_unapproved_software: usize,
    /// Whether the policy enforces removable media (else report-only), and on how many
    /// devices that are reporting.
    pub removable_media_enforced: bool,
    pub in_school_hours: bool,
    /// Devices not heard from for an hour, longest silent first.
    pub silent: Vec<Device>,
    /// Open incidents the asker may see, most serious first.
    pub attention: Vec<Incident>,
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Matches hostname or id, any case.
    pub search: String,
    /// `online`, `offline`, `revoked`, `attention` (antivirus or screen lock not compliant).
    pub status: String,
    /// Hostname to continue after (paging that survives new arrivals).
    pub after: Option<String>,
    pub limit: usize,
}

/// One page of devices.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceList {
    pub devices: Vec<Device>,
    pub total: usize,
    pub next: Option<String>,
}

/// A person's desk: the operations their role allows.
pub struct Desk {
    pub(crate) c: Arc<Collector>,
    pub actor: Actor,
}

fn facet_status<'a>(d: &'a Device, facet: &str) -> &'a str {
    d.state
        .get(facet)
        .and_then(|v| v.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("not_reported")
}

/// How many of `devices` report `status` for `facet`.
fn count_status(devices: &[Arc<Device>], facet: &str, status: &str) -> usize {
    devices
        .iter()
        .filter(|d| facet_status(d, facet) == status)
        .count()
}

impl Desk {
    pub fn new(c: Arc<Collector>, actor: Actor) -> Self {
        Self { c, actor }
    }

    pub fn role(&self) -> Role {
        self.actor.role
    }

    pub fn may(&self, p: Permission) -> bool {
        self.actor.role.may(p)
    }

    pub(crate) fn require(&self, p: Permission) -> DeskResult<()> {
        if self.may(p) {
            Ok(())
        } else {
            Err(DeskError::Forbidden(self.actor.role.label()))
        }
    }

    /// Runs store work off the async threads with the store in hand.
    pub(crate) async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn crate::store::Store) -> Result<T, StoreError> + Send + 'static,
    ) -> DeskResult<T> {
        let store = self.c.store.clone();
        Ok(blocking(move || f(store.as_ref())).await?)
    }

    fn audit(&self, action: &str, target: &str, detail: &str) {
        accounts::audit(self.c.store.as_ref(), &self.actor, action, target, detail);
    }

    /// The incident categories this person may see.
    fn categories(&self) -> Vec<Category> {
        let mut c = Vec::new();
        if self.may(Permission::Safeguarding) {
            c.push(Category::Safeguarding);
        }
        if self.may(Permission::TechnicalIncidents) {
            c.push(Category::Technical);
        }
        c
    }

    fn online(&self, d: &Device, now: DateTime<Utc>) -> bool {
        d.revoked_at.is_none()
            && (self.c.is_connected(&d.id) || d.last_seen.is_some_and(|t| now - t < ONLINE_WITHIN))
    }

    pub fn is_online(&self, d: &Device) -> bool {
        self.online(d, Utc::now())
    }

    /// A device's name for lists (its id if it has none); only what the asker already sees.
    pub fn device_hostname(&self, id: &str) -> String {
        self.c
            .device_cache()
            .get(id)
            .map(|d| d.hostname)
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| id.chars().take(8).collect())
    }

    pub fn ca_fingerprint(&self) -> String {
        self.c.ca_fingerprint()
    }

    /// The fleet overview; school hours are judged in the school's zone `tz`.
    pub async fn fleet(&self, tz: chrono_tz::Tz) -> DeskResult<FleetView> {
        self.require(Permission::ViewFleet)?;
        let now = Utc::now();
        let devices: Vec<Arc<Device>> = self
            .c
            .device_cache()
            .snapshot()
            .into_iter()
            .filter(|d| d.revoked_at.is_none())
            .collect();
        let policy = self.policy_document();
        let in_school_hours =
            crate::timefmt::in_school_hours(&policy.screen_lock.school_hours, now, tz);
        // Devices with an open technical incident about software (denied or unapproved).
        let categories = self.categories();
        let c = self.c.clone();
        let open = blocking(move || c.open_incidents()).await?;
        let software_flagged: std::collections::HashSet<&str> = open
            .iter()
            .filter(|i| i.kind.starts_with("software.") || i.kind == "executable.in_user_area")
            .map(|i| i.device_id.as_str())
            .collect();
        let mut silent: Vec<&Arc<Device>> = devices
            .iter()
            .filter(|d| !self.c.is_connected(&d.id))
            .filter(|d| d.last_seen.is_none_or(|t| now - t > SILENT_AFTER))
            .collect();
        silent.sort_by_key(|d| d.last_seen);
        let silent: Vec<Device> = silent
            .into_iter()
            .take(20)
            .map(|d| Device::clone(d))
            .collect();
        // Rank by reference and copy only the ten shown: there may be tens of thousands open.
        // Most serious first, then the most recent.
        type Rank = std::cmp::Reverse<(u8, DateTime<Utc>)>;
        let mut ranked: Vec<(Rank, &Incident)> = open
            .iter()
            .filter(|i| categories.contains(&i.category))
            .map(|i| {
                let rank = crate::incidents::severity_rank(&i.severity);
                (std::cmp::Reverse((rank, i.last_at)), i)
            })
            .collect();
        const SHOWN: usize = 10;
        if ranked.len() > SHOWN {
            ranked.select_nth_unstable_by_key(SHOWN, |(k, _)| *k);
            ranked.truncate(SHOWN);
        }
        ranked.sort_unstable_by_key(|(k, _)| *k);
        let attention: Vec<Incident> = ranked.into_iter().map(|(_, i)| i.clone()).collect();
        Ok(FleetView {
            devices: devices.len(),
            online: devices.iter().filter(|d| self.online(d, now)).count(),
            screen_lock_enforced: count_status(&devices, "screen_lock", "enforced"),
            antivirus_current: count_status(&devices, "antivirus", "current"),
            no_unapproved_software: devices
                .iter()
                .filter(|d| !software_flagged.contains(d.id.as_str()))
                .count(),
            removable_media_enforced: policy.removable_media.enforce,
            in_school_hours,
            silent,
            attention,
        })
    }

    /// Searches and filters the device list, sorted by hostname.
    pub fn devices(&self, f: &DeviceFilter) -> DeskResult<DeviceList> {
        self.require(Permission::ViewDevices)?;
        let now = Utc::now();
        let needle = f.search.trim().to_lowercase();
        let mut all: Vec<Arc<Device>> = self
            .c
            .device_cache()
            .snapshot()
            .into_iter()
            .filter(|d| {
                needle.is_empty()
                    || d.hostname.to_lowercase().contains(&needle)
                    || d.id.starts_with(&needle)
            })
            .filter(|d| match f.status.as_str() {
                "online" => self.online(d, now),
                "offline" => d.revoked_at.is_none() && !self.online(d, now),
                "revoked" => d.revoked_at.is_some(),
                "attention" => {
                    d.revoked_at.is_none()
                        && (facet_status(d, "antivirus") != "current"
                            || facet_status(d, "screen_lock") != "enforced")
                }
                _ => true,
            })
            .collect();
        all.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
        let total = all.len();
        let start = match &f.after {
            Some(after) => {
                all.partition_point(|d| format!("{}\u{1f}{}", d.hostname, d.id) <= *after)
            }
            None => 0,
        };
        let page: Vec<&Arc<Device>> = all.iter().skip(start).take(f.limit + 1).collect();
        let more = page.len() > f.limit;
        let devices: Vec<Device> = page
            .into_iter()
            .take(f.limit)
            .map(|d| Device::clone(d))
            .collect();
        let next = if more {
            devices
                .last()
                .map(|d| format!("{}\u{1f}{}", d.hostname, d.id))
        } else {
            None
        };
        Ok(DeviceList {
            devices,
            total,
            next,
        })
    }

    /// One device. The DSL may open only devices a safeguarding incident concerns.
    pub async fn device(&self, id: &str) -> DeskResult<Device> {
        let d = self
            .c
            .device_cache()
            .get(id)
            .ok_or_else(|| DeskError::NotFound(format!("There is no device {id}.")))?;
        if self.may(Permission::ViewDevices) {
            return Ok(d);
        }
        self.require(Permission::Safeguarding)?;
        let id = id.to_string();
        let concerned = self
            .with_store(move |s| {
                Ok(!s
                    .incidents(&IncidentQuery {
                        category: Some(Category::Safeguarding),
                        device: Some(id),
                        limit: 1,
                        ..Default::default()
                    })?
                    .0
                    .is_empty())
            })
            .await?;
        if concerned {
            Ok(d)
        } else {
            Err(DeskError::Forbidden(self.actor.role.label()))
        }
    }

    /// The current policy.
    pub fn policy(&self) -> DeskResult<Arc<PolicyVersion>> {
        self.require(Permission::ViewPolicy)?;
        Ok(self.c.policy())
    }

    fn policy_document(&self) -> PolicyDocument {
        PolicyDocument::parse_lenient(&self.c.policy().policy.to_string()).unwrap_or_default()
    }

    pub async fn policy_history(&self) -> DeskResult<Vec<PolicyVersion>> {
        self.require(Permission::ViewPolicy)?;
        self.with_store(|s| s.policy_history()).await
    }

    /// Up to `limit` policy versions older than `before`, newest first, and the version to
    /// pass as `before` for the next page (if any remain).
    pub async fn policy_history_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> DeskResult<(Vec<PolicyVersion>, Option<u64>)> {
        self.require(Permission::ViewPolicy)?;
        let (page, more) = self
            .with_store(move |s| s.policy_page(before, limit))
            .await?;
        let next = page.last().map(|v| v.version).filter(|_| more);
        Ok((page, next))
    }

    /// Validates and stores a new policy version; audited with who made it.
    pub async fn set_policy(&self, doc: Value) -> Result<PolicyVersion, DeskError> {
        self.require(Permission::EditPolicy)?;
        match self.c.set_policy(doc, &self.actor.name).await {
            Ok(pv) => {
                self.audit("policy_changed", &format!("version {}", pv.version), "");
                Ok(pv)
            }
            Err(SetPolicyError::Invalid(e)) => Err(DeskError::Invalid(e.to_string())),
            Err(SetPolicyError::Store(e)) => Err(e.into()),
        }
    }

    pub async fn enrolment_tokens(&self) -> DeskResult<Vec<TokenRecord>> {
        self.require(Permission::Enrol)?;
        self.with_store(|s| s.enrolment_tokens()).await
    }

    /// Creates an enrolment token; returns it (shown once).
    pub async fn create_enrolment_token(
        &self,
        uses: u32,
        expires_at: DateTime<Utc>,
        label: String,
    ) -> DeskResult<String> {
        self.require(Permission::Enrol)?;
        if uses == 0 || uses > 10_000 {
            return Err(DeskError::Invalid(
                "A token can enrol between 1 and 10,000 devices.".into(),
            ));
        }
        if expires_at <= Utc::now() {
            return Err(DeskError::Invalid("Choose an expiry in the future.".into()));
        }
        let token = self.c.create_token(uses, expires_at, label.clone()).await?;
        self.audit(
            "enrolment_token_created",
            &label,
            &format!("{uses} use(s) until {expires_at}"),
        );
        Ok(token)
    }

    /// Devices enrolled most recently, newest first.
    pub fn recent_enrolments(&self, limit: usize) -> DeskResult<Vec<Device>> {
        self.require(Permission::Enrol)?;
        let mut all = self.c.device_cache().snapshot();
        all.sort_by_key(|d| std::cmp::Reverse(d.enrolled_at));
        Ok(all.iter().take(limit).map(|d| Device::clone(d)).collect())
    }

    pub async fn revoke(&self, id: &str) -> DeskResult<Device> {
        self.require(Permission::RevokeDevice)?;
        let d = self.c.revoke(id).await.map_err(|e| match e {
            StoreError::NoSuchDevice(id) => {
                DeskError::NotFound(format!("There is no device {id}."))
            }
            e => e.into(),
        })?;
        self.audit("device_revoked", id, &d.hostname);
        Ok(d)
    }

    /// A device's uninstall code, for removing the agent from it (network manager and
    /// technician, as for revoking); each viewing is audited.
    pub fn uninstall_code(&self, id: &str) -> DeskResult<(Device, String)> {
        self.require(Permission::RevokeDevice)?;
        let (d, code) = self.c.uninstall_code(id).map_err(|e| match e {
            StoreError::NoSuchDevice(id) => {
                DeskError::NotFound(format!("There is no device {id}."))
            }
            e => e.into(),
        })?;
        self.audit("uninstall_code_viewed", id, &d.hostname);
        Ok((d, code))
    }

    /// Installations per product: `(source, name, devices)`.
    pub fn software(&self) -> DeskResult<Vec<(String, String, usize)>> {
        self.require(Permission::ViewSoftware)?;
        Ok(self.c.software_installations())
    }

    /// Fleet counts per state facet, as the JSON API has always served them.
    pub fn fleet_counts(&self) -> DeskResult<Value> {
        self.require(Permission::ViewFleet)?;
        Ok(crate::rules::fleet_counts(&self.c.device_cache().all()))
    }

    /// All devices, for the JSON API.
    pub fn all_devices(&self) -> DeskResult<Vec<Device>> {
        self.require(Permission::ViewDevices)?;
        let mut all = self.c.device_cache().all();
        all.sort_by_key(|d| d.enrolled_at);
        Ok(all)
    }
}

/// Who is asking, from a request's credentials: a session cookie, a role API token, or the
/// administrator token in the data directory (the network manager's).
pub async fn identify(
    c: &Arc<Collector>,
    cookie: Option<String>,
    bearer: Option<String>,
    from: Option<IpAddr>,
) -> DeskResult<Option<Actor>> {
    if let Some(token) = bearer {
        if c.is_admin(&token) {
            return Ok(Some(Actor {
                name: "administrator (admin.token)".into(),
                role: Role::NetworkManager,
                address: from,
                session: None,
                must_change_password: false,
            }));
        }
        let store = c.store.clone();
        return Ok(blocking(move || accounts::token_actor(store.as_ref(), &token, from)).await?);
    }
    if let Some(cookie) = cookie {
        let store = c.store.clone();
        return Ok(blocking(move || {
            accounts::session_actor(store.as_ref(), &cookie, from, Utc::now())
        })
        .await?);
    }
    Ok(None)
}
