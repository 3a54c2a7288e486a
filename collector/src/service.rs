//! The collector's operations, independent of transport: enrol, accept events, change policy, revoke.
//!
//! gRPC, the web API and the admin socket are thin adapters over `Collector`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::task::TaskTracker;

use caretaker_proto::policy::{PolicyDocument, PolicyError};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::ca::SchoolCa;
use crate::classify::fleet::FleetCounts;
use crate::classify::fleet_store::{fold_software, load_software_counts};
use crate::ingest::Ingest;
use crate::rules::Rules;
use crate::store::{
    AgentFacts, Device, DeviceBatch, PolicyVersion, Store, StoreError, TokenRefusal,
};
use crate::tls::Revoked;
use crate::tokens::{self, FailureLimiter};

mod batch;
mod devices;
mod shared;

pub(crate) use batch::MAX_USER;
use devices::LiveStreams;
pub use devices::{DeviceCache, StreamGuard};

/// The longest enrolment fact (hostname, OS, agent version) accepted.
const MAX_FACT: usize = 256;

/// Why an enrolment was refused; each says plainly what the technician should do.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("too many failed enrolment attempts from this address; try again in {0} s")]
    RateLimited(u64),
    #[error("the enrolment token is not recognised (check it was copied whole)")]
    UnknownToken,
    #[error(
        "the enrolment token has expired; create a new one with `caretaker-collector token create`"
    )]
    ExpiredToken,
    #[error("the enrolment token has already been used its maximum number of times")]
    UsedUpToken,
    #[error("invalid enrolment request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An enrolment request in domain terms.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub token: String,
    pub csr_pem: String,
    pub facts: AgentFacts,
}

/// What a newly enrolled device receives.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub device_id: String,
    pub certificate_pem: String,
    pub ca_certificate_pem: String,
}

/// An event as it arrived, before the collector judges it.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub seq: u64,
    pub occurred_at: Option<DateTime<Utc>>,
    pub user: String,
    pub kind: String,
    pub details: Map<String, Value>,
}

/// The shared state behind every listener.
pub struct Collector {
    pub store: Arc<dyn Store>,
    ca: SchoolCa,
    revoked: Revoked,
    policy: watch::Sender<Arc<PolicyVersion>>,
    ingest: Ingest,
    /// Every task the collector spawns (streams, connections, the ingest writer, periodic
    /// work), so that a stop can wait for them to finish instead of cutting them off.
    tasks: TaskTracker,
    limiter: FailureLimiter,
    admin_token_hash: String,
    /// The judgement of the current policy version.
    rules: std::sync::RwLock<Arc<Rules>>,
    /// Installations per product across the fleet (licence reconciliation), folded by the store
    /// writer as events become durable.
    software: Arc<std::sync::Mutex<FleetCounts>>,
    /// Every device as last stored, so the dashboard's fleet and device lists never decode the
    /// whole devices tree per request. Refreshed by the writer after each durable group.
    devices: Arc<DeviceCache>,
    /// Devices with an event stream open now: how many (a reconnect may overlap for a moment)
    /// and the newest one's cancellation, which the next stream fires (see `stream_opened`).
    connected: std::sync::Mutex<std::collections::HashMap<String, LiveStreams>>,
    /// Slows down password guessing on the dashboard.
    pub sign_in_limiter: crate::auth::SignInLimiter,
    /// The open incidents as last read, for the overview (refreshed when older than
    /// `OPEN_INCIDENTS_MAX_AGE`): reading all of them per request would not scale.
    open_incidents: std::sync::Mutex<Option<(Instant, Arc<Vec<crate::store::Incident>>)>>,
    /// The secret uninstall codes are derived from (`crate::uninstall`).
    pub(crate) uninstall: std::sync::OnceLock<crate::uninstall::UninstallKey>,
    /// Each device's clock as judged from its batches (`crate::clock`).
    clocks: std::sync::Mutex<std::collections::HashMap<String, crate::clock::ClockTracker>>,
    /// Other collectors write the same store (PostgreSQL): what this one holds in memory is
    /// re-read from it (`refresh_from_shared_store`, `resync_device`).
    shared: std::sync::atomic::AtomicBool,
    /// Keys the pseudonyms stored for usernames (`crate::subject`).
    pseudonym_key: crate::subject::PseudonymKey,
    /// The settings' `pseudonymise_usernames`, as last read: ingest asks per event.
    pseudonymise: std::sync::atomic::AtomicBool,
}

/// How often a collector sharing its store re-reads devices, revocations, the policy and
/// other devices' software counts from it.
pub const SHARED_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// How stale the overview's open incidents may be before a request re-reads them itself. A
/// background task (`server.rs`) re-reads them every `OPEN_INCIDENTS_REFRESH`, so requests
/// normally never pay for it.
const OPEN_INCIDENTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);
pub const OPEN_INCIDENTS_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl Collector {
    /// The tracker every task of this collector is spawned on.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn new(
        store: Arc<dyn Store>,
        ca: SchoolCa,
        revoked: Revoked,
        admin_token: &str,
    ) -> Result<Self, StoreError> {
        let current = match store.current_policy()? {
            Some(p) => p,
            None => store.put_policy(
                serde_json::to_value(PolicyDocument::default())
                    .expect("the default policy always serialises"),
                "caretaker-collector (default)",
                Utc::now(),
            )?,
        };
        let devices = store.devices()?;
        revoked.write().expect("revocation lock").extend(
            devices
                .iter()
                .filter(|d| d.revoked_at.is_some())
                .map(|d| d.id.clone()),
        );
        let doc = PolicyDocument::parse_lenient(&current.policy.to_string()).unwrap_or_default();
        let software = Arc::new(std::sync::Mutex::new(load_software_counts(
            store.as_ref(),
            &devices,
        )?));
        let pseudonym_key = crate::subject::PseudonymKey::from_ca(&ca);
        let pseudonymise = store.current_settings()?.is_some_and(|v| {
            crate::settings::Settings::parse_lenient(&v.settings).pseudonymise_usernames
        });
        let cache = Arc::new(DeviceCache::default());
        for d in &devices {
            cache.put(d.clone());
        }
        let tasks = TaskTracker::new();
        let on_stored = {
            let (software, store, cache) = (software.clone(), store.clone(), cache.clone());
            Arc::new(move |group: &[DeviceBatch]| {
                fold_software(&software, store.as_ref(), group);
                cache.refresh(store.as_ref(), group);
            })
        };
        Ok(Self {
            rules: std::sync::RwLock::new(Arc::new(Rules::new(&doc))),
            software,
            ingest: Ingest::start(store.clone(), on_stored, &tasks),
            tasks,
            store,
            ca,
            revoked,
            policy: watch::Sender::new(Arc::new(current)),
            limiter: FailureLimiter::default(),
            admin_token_hash: tokens::hash(admin_token.trim()),
            devices: cache,
            connected: Default::default(),
            sign_in_limiter: Default::default(),
            open_incidents: Default::default(),
            uninstall: Default::default(),
            clocks: Default::default(),
            shared: Default::default(),
            pseudonym_key,
            pseudonymise: pseudonymise.into(),
        })
    }

    /// The key usernames' pseudonyms are made with.
    pub fn pseudonym_key(&self) -> &crate::subject::PseudonymKey {
        &self.pseudonym_key
    }

    /// Re-reads the settings' privacy switches (blocking): after a settings change through
    /// the admin socket, or by another collector of a shared store.
    pub fn reload_privacy_settings(&self) -> Result<(), StoreError> {
        let on = self.settings()?.pseudonymise_usernames;
        self.pseudonymise
            .store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Every open incident, as read at most `OPEN_INCIDENTS_MAX_AGE` ago (blocking).
    pub fn open_incidents(&self) -> Result<Arc<Vec<crate::store::Incident>>, StoreError> {
        if let Some((at, list)) = self
            .open_incidents
            .lock()
            .expect("open incidents lock")
            .as_ref()
            && at.elapsed() < OPEN_INCIDENTS_MAX_AGE
        {
            return Ok(list.clone());
        }
        self.refresh_open_incidents()
    }

    /// Re-reads every open incident (blocking); the lock is not held while reading.
    pub fn refresh_open_incidents(&self) -> Result<Arc<Vec<crate::store::Incident>>, StoreError> {
        let (list, _) = self.store.incidents(&crate::store::IncidentQuery {
            open_only: true,
            limit: usize::MAX,
            ..Default::default()
        })?;
        let list = Arc::new(list);
        *self.open_incidents.lock().expect("open incidents lock") =
            Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Why new event batches are refused now (the store cannot write, or its disk is below the
    /// free-space floor), or `None`.
    pub fn intake_refusal(&self) -> Option<String> {
        self.ingest.gate().refusal()
    }

    /// Checks the store once (blocking): reopens it if a failed write closed it, updates the
    /// intake gate from that and the free space under `path`, and after a reopen re-reads
    /// everything held in memory from the store, so nothing the disk never got is shown.
    pub fn check_store(&self, path: &std::path::Path, floor: crate::store::space::SpaceFloor) {
        let reread = || -> Result<(), StoreError> {
            let devices = self.devices.reload_all(self.store.as_ref())?;
            let counts = load_software_counts(self.store.as_ref(), &devices)?;
            *self.software.lock().expect("software counts lock") = counts;
            self.refresh_open_incidents()?;
            Ok(())
        };
        crate::ingest::check(self.store.as_ref(), path, floor, self.ingest.gate(), || {
            if let Err(e) = reread() {
                // An engine error closes the store again, and the next check reopens it and
                // re-reads; until then the gate refuses events.
                tracing::warn!(error = %e, "Devices and counts not re-read after the store reopened");
            }
        });
    }

    pub fn ca_fingerprint(&self) -> String {
        self.ca.fingerprint()
    }

    /// True if `bearer` is the administrator's API token.
    pub fn is_admin(&self, bearer: &str) -> bool {
        // Compare hashes so the comparison time says nothing about the token.
        tokens::hash(bearer) == self.admin_token_hash
    }

    pub async fn enroll(&self, from: IpAddr, req: EnrollRequest) -> Result<Enrolled, EnrollError> {
        if let Err(wait) = self.limiter.check(from, Instant::now()) {
            crate::security::auth_failed(
                crate::metrics::AuthKind::EnrolmentLockedOut,
                Some(from),
                "Enrolment refused: too many wrong tokens from this address",
            );
            return Err(EnrollError::RateLimited(wait.as_secs().max(1)));
        }
        for (name, v) in [
            ("hostname", &req.facts.hostname),
            ("os", &req.facts.os),
            ("agent_version", &req.facts.agent_version),
        ] {
            if v.len() > MAX_FACT {
                return Err(EnrollError::BadRequest(format!(
                    "{name} is longer than {MAX_FACT} bytes"
                )));
            }
        }
        let device_id = uuid::Uuid::new_v4().to_string();
        // Check the CSR before spending a use of the token on it.
        let certificate_pem = self
            .ca
            .sign_device_csr(&req.csr_pem, &device_id)
            .map_err(|e| EnrollError::BadRequest(e.to_string()))?;
        let store = self.store.clone();
        let hash = tokens::hash(req.token.trim());
        let used = blocking(move || store.use_token(&hash, Utc::now())).await?;
        let token = match used {
            Ok(t) => t,
            Err(refusal) => {
                // Only unknown tokens look like guessing; a technician reusing a
                // spent or expired token should not be locked out for it.
                if refusal == TokenRefusal::Unknown {
                    self.limiter.record_failure(from, Instant::now());
                    crate::security::auth_failed(
                        crate::metrics::AuthKind::EnrolmentToken,
                        Some(from),
                        "Enrolment with a token that is not recognised",
                    );
                }
                return Err(match refusal {
                    TokenRefusal::Unknown => EnrollError::UnknownToken,
                    TokenRefusal::Expired => EnrollError::ExpiredToken,
                    TokenRefusal::UsedUp => EnrollError::UsedUpToken,
                });
            }
        };
        let device = Device {
            id: device_id.clone(),
            hostname: req.facts.hostname,
            os: req.facts.os,
            agent_version: req.facts.agent_version,
            enrolled_at: Utc::now(),
            last_seen: None,
            enrolled_with: token.label,
            revoked_at: None,
            event_count: 0,
            highest_seq: 0,
            state: Map::new(),
        };
        let store = self.store.clone();
        let stored = device.clone();
        blocking(move || store.insert_device(&stored)).await?;
        self.devices.put(device);
        tracing::info!(device = %device_id, "Device enrolled");
        Ok(Enrolled {
            device_id,
            certificate_pem,
            ca_certificate_pem: self.ca.cert_pem().to_string(),
        })
    }

    /// The highest sequence number durably stored for a device (0 for none).
    pub fn highest_seq(&self, device_id: &str) -> u64 {
        self.devices.get(device_id).map_or(0, |d| d.highest_seq)
    }

    pub fn is_revoked(&self, device_id: &str) -> bool {
        self.revoked
            .read()
            .expect("revocation lock")
            .contains(device_id)
    }

    /// Revokes a device: its certificate is refused from the next handshake, and its open streams end.
    pub async fn revoke(&self, device_id: &str) -> Result<Device, StoreError> {
        let store = self.store.clone();
        let id = device_id.to_string();
        let device = blocking(move || store.revoke_device(&id, Utc::now())).await?;
        self.devices.reload(self.store.as_ref(), &device.id);
        self.revoked
            .write()
            .expect("revocation lock")
            .insert(device.id.clone());
        tracing::info!(device = %device.id, "Device revoked");
        Ok(device)
    }

    /// Stores a prepared batch durably (the writer also folds its software events into the
    /// installation counts).
    pub async fn commit(&self, batch: DeviceBatch) -> Result<(), StoreError> {
        self.ingest.commit(batch).await
    }

    /// Queues a stream's batch for the writer (in order: await it before queueing the next)
    /// and returns what resolves once it is durable.
    pub async fn submit(
        &self,
        batch: DeviceBatch,
        stream: crate::ingest::StreamId,
    ) -> Result<impl Future<Output = Result<(), StoreError>> + use<>, StoreError> {
        self.ingest.submit(batch, Some(stream)).await
    }

    /// Devices with each product installed: `(source, name, devices)`.
    pub fn software_installations(&self) -> Vec<(String, String, usize)> {
        self.software
            .lock()
            .expect("software counts lock")
            .device_counts()
            .into_iter()
            .map(|(k, n)| (k.source, k.name, n))
            .collect()
    }

    pub fn policy(&self) -> Arc<PolicyVersion> {
        self.policy.borrow().clone()
    }

    pub fn watch_policy(&self) -> watch::Receiver<Arc<PolicyVersion>> {
        self.policy.subscribe()
    }

    /// Validates and stores a new policy version, then pushes it to connected agents.
    pub async fn set_policy(
        &self,
        doc: Value,
        changed_by: &str,
    ) -> Result<PolicyVersion, SetPolicyError> {
        let parsed = PolicyDocument::parse_strict(&doc)?;
        // Store the normalised document so defaults are explicit in the record.
        let normalised = serde_json::to_value(&parsed).expect("policy serialises");
        let store = self.store.clone();
        let by = changed_by.to_string();
        let pv = blocking(move || store.put_policy(normalised, &by, Utc::now())).await?;
        tracing::info!(version = pv.version, changed_by = %pv.changed_by, "Policy changed");
        *self.rules.write().expect("rules lock") = Arc::new(Rules::new(&parsed));
        self.policy.send_replace(Arc::new(pv.clone()));
        Ok(pv)
    }

    /// The school's settings (the defaults until someone sets them).
    pub fn settings(&self) -> Result<crate::settings::Settings, StoreError> {
        Ok(self
            .store
            .current_settings()?
            .map(|v| crate::settings::Settings::parse_lenient(&v.settings))
            .unwrap_or_default())
    }

    /// Validates and stores new settings; returns the version.
    pub async fn set_settings(
        &self,
        doc: Value,
        changed_by: &str,
    ) -> Result<crate::store::SettingsVersion, SetSettingsError> {
        let parsed = crate::settings::Settings::parse_strict(&doc)?;
        let normalised = serde_json::to_value(&parsed).expect("settings serialise");
        let store = self.store.clone();
        let by = changed_by.to_string();
        let v = blocking(move || store.put_settings(normalised, &by, Utc::now())).await?;
        self.pseudonymise.store(
            parsed.pseudonymise_usernames,
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::info!(version = v.version, changed_by = %v.changed_by, "Settings changed");
        Ok(v)
    }

    /// Creates an enrolment token; returns the token (shown once).
    pub async fn create_token(
        &self,
        uses: u32,
        expires_at: DateTime<Utc>,
        label: String,
    ) -> Result<String, StoreError> {
        let store = self.store.clone();
        blocking(move || tokens::create(store.as_ref(), uses, expires_at, &label)).await
    }
}

/// Why a settings change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SetSettingsError {
    #[error(transparent)]
    Invalid(#[from] crate::settings::SettingsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a policy change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SetPolicyError {
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::engine("", e)))
}

#[cfg(test)]
mod tests {
    use super::batch::valid_kind;
    use super::*;
    use crate::classify::fleet_store::fold_software_with;
    use crate::store::RedbStore;
    use crate::store::StoreResult;
    use crate::store::StoredEvent;
    use crate::store::{
        ApiTokenRecord, AuditEntry, AuditPage, DigestCursor, DigestRecord, EntryAction, Hold,
        HoldTarget, Incident, IncidentEntry, IncidentQuery, PurgeCounts, PurgeCutoffs,
        SessionRecord, SettingsVersion, SubjectRecords, TokenRecord, UserRecord, forward_methods,
    };
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A device's newer stream tells the older one it is replaced; the device stays
    /// connected until both have ended.
    #[tokio::test]
    async fn a_newer_stream_replaces_the_older() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let (ca, _) = crate::ca::SchoolCa::generate("Test").unwrap();
        let c = Arc::new(Collector::new(store, ca, Default::default(), "t").unwrap());
        let first = c.stream_opened("d1");
        let other = c.stream_opened("d2");
        assert!(!first.replaced.is_cancelled());
        let second = c.stream_opened("d1");
        assert!(first.replaced.is_cancelled(), "the older stream is told");
        assert!(!second.replaced.is_cancelled());
        assert!(
            !other.replaced.is_cancelled(),
            "another device's stream is not"
        );
        assert_ne!(first.id, second.id);
        drop(first);
        assert!(c.is_connected("d1"));
        drop(second);
        assert!(!c.is_connected("d1"));
        assert!(c.is_connected("d2"));
    }

    /// The real store, counting the events start-up reads back.
    struct Counting {
        inner: RedbStore,
        read: AtomicU64,
    }

    impl Counting {
        /// Where the store traits' forwarded methods go (`store::forward_methods`).
        fn with<T>(&self, f: impl FnOnce(&RedbStore) -> T) -> T {
            f(&self.inner)
        }
    }

    impl Store for Counting {
        fn insert_device(&self, d: &crate::store::Device) -> StoreResult<()> {
            self.inner.insert_device(d)
        }
        fn device(&self, id: &str) -> StoreResult<Option<crate::store::Device>> {
            self.inner.device(id)
        }
        fn devices(&self) -> StoreResult<Vec<crate::store::Device>> {
            self.inner.devices()
        }
        fn revoke_device(&self, id: &str, at: DateTime<Utc>) -> StoreResult<crate::store::Device> {
            self.inner.revoke_device(id, at)
        }
        fn append(&self, group: &[DeviceBatch]) -> StoreResult<u64> {
            self.inner.append(group)
        }
        fn events(&self, q: &crate::store::EventQuery) -> StoreResult<crate::store::EventPage> {
            self.inner.events(q)
        }
        fn device_events_after(
            &self,
            device: &str,
            after_seq: u64,
            kind_prefix: &str,
            visit: &mut dyn FnMut(&StoredEvent),
        ) -> StoreResult<u64> {
            self.inner
                .device_events_after(device, after_seq, kind_prefix, &mut |e| {
                    self.read.fetch_add(1, Ordering::Relaxed);
                    visit(e)
                })
        }
        fn put_derived(&self, n: &str, d: &str, t: u64, s: &Value) -> StoreResult<()> {
            self.inner.put_derived(n, d, t, s)
        }
        fn derived(&self, n: &str) -> StoreResult<Vec<(String, u64, Value)>> {
            self.inner.derived(n)
        }
        fn insert_token(&self, t: &crate::store::TokenRecord) -> StoreResult<()> {
            self.inner.insert_token(t)
        }
        fn use_token(
            &self,
            h: &str,
            now: DateTime<Utc>,
        ) -> StoreResult<Result<crate::store::TokenRecord, crate::store::TokenRefusal>> {
            self.inner.use_token(h, now)
        }
        fn current_policy(&self) -> StoreResult<Option<PolicyVersion>> {
            self.inner.current_policy()
        }
        fn put_policy(&self, p: Value, by: &str, at: DateTime<Utc>) -> StoreResult<PolicyVersion> {
            self.inner.put_policy(p, by, at)
        }
        fn policy_history(&self) -> StoreResult<Vec<PolicyVersion>> {
            self.inner.policy_history()
        }
    }

    impl crate::store::AccountStore for Counting {
        crate::store::account_store_methods!(forward_methods, via with;);
    }

    impl crate::store::DigestStore for Counting {
        crate::store::digest_store_methods!(forward_methods, via with;);
    }

    impl crate::store::PrivacyStore for Counting {
        crate::store::privacy_store_methods!(forward_methods, via with;);
        fn erase_subject(&self, u: &str, p: &str) -> StoreResult<crate::store::ErasureCounts> {
            self.inner.erase_subject(u, p)
        }
    }

    impl crate::store::IncidentStore for Counting {
        crate::store::incident_store_methods!(forward_methods, via with;);
    }

    fn software_event(device: &str, seq: u64, kind: &str, name: &str) -> StoredEvent {
        StoredEvent {
            device_id: device.into(),
            seq,
            kind: kind.into(),
            occurred_at: Utc::now(),
            received_at: Utc::now(),
            user: None,
            details: json!({"source": "dpkg", "name": name, "version": "1"})
                .as_object()
                .unwrap()
                .clone(),
            severity: "info".into(),
            audience: vec![],
            assessment: None,
        }
    }

    fn group(device: &str, events: Vec<StoredEvent>) -> DeviceBatch {
        DeviceBatch {
            device_id: device.into(),
            events,
            facts: None,
            state: Default::default(),
            seen_at: Utc::now(),
        }
    }

    fn open(dir: &std::path::Path) -> Counting {
        Counting {
            inner: RedbStore::open(dir).unwrap(),
            read: AtomicU64::new(0),
        }
    }

    fn count(c: &FleetCounts, name: &str) -> usize {
        c.count("dpkg", name)
    }

    /// Two collectors on one PostgreSQL: what one stores reaches the other's software counts at
    /// its next refresh, and a refresh with nothing new leaves them as they are.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_shared_store_refresh_picks_up_what_another_collector_stored() {
        let (url, _db) = crate::store::pg_rig::test_database();
        let open = || -> Arc<Collector> {
            let store: Arc<dyn Store> = Arc::new(crate::store::PgStore::connect(&url).unwrap());
            let (ca, _) = crate::ca::SchoolCa::generate("Test").unwrap();
            let c = Collector::new(store, ca, Default::default(), "t").unwrap();
            c.set_shared();
            Arc::new(c)
        };
        let (first, second) = (open(), open());
        first
            .store
            .insert_device(&crate::store::test_device("a"))
            .unwrap();
        let installed = |c: &Collector| {
            let mut names: Vec<(String, usize)> = c
                .software_installations()
                .into_iter()
                .map(|(_, name, n)| (name, n))
                .collect();
            names.sort();
            names
        };
        first
            .commit(group(
                "a",
                vec![software_event("a", 1, "software.installed", "gimp")],
            ))
            .await
            .unwrap();
        let (f, s) = (first.clone(), second.clone());
        tokio::task::spawn_blocking(move || s.refresh_from_shared_store())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(installed(&second), [("gimp".to_string(), 1)]);
        let s = second.clone();
        tokio::task::spawn_blocking(move || s.refresh_from_shared_store())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            installed(&second),
            [("gimp".to_string(), 1)],
            "nothing new: unchanged"
        );
        f.commit(group(
            "a",
            vec![software_event("a", 2, "software.installed", "steam")],
        ))
        .await
        .unwrap();
        let s = second.clone();
        tokio::task::spawn_blocking(move || s.refresh_from_shared_store())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            installed(&second),
            [("gimp".to_string(), 1), ("steam".to_string(), 1)]
        );
    }

    /// Start-up reads each device's events once; after that only what arrived since.
    #[test]
    fn software_counts_restart_from_the_saved_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.insert_device(&crate::store::test_device("a")).unwrap();
            // A store written before states were saved: events only.
            s.append(&[group(
                "a",
                vec![
                    software_event("a", 1, "software.installed", "gimp"),
                    software_event("a", 2, "software.installed", "steam"),
                    software_event("a", 3, "agent.heartbeat", ""),
                ],
            )])
            .unwrap();
        }
        let s = open(dir.path());
        let c = load_software_counts(&s, &s.devices().unwrap()).unwrap();
        assert_eq!((count(&c, "gimp"), count(&c, "steam")), (1, 1));
        assert_eq!(
            s.read.load(Ordering::Relaxed),
            2,
            "first start reads the software events"
        );
        assert_eq!(c.through_seq("a"), 3);

        // Second start: the saved state, nothing read.
        let s = {
            drop(s);
            open(dir.path())
        };
        let c = Arc::new(std::sync::Mutex::new(
            load_software_counts(&s, &s.devices().unwrap()).unwrap(),
        ));
        assert_eq!(s.read.load(Ordering::Relaxed), 0);
        assert_eq!(count(&c.lock().unwrap(), "gimp"), 1);

        // Live events fold in as the writer stores them; a resend is not folded twice.
        let g = group(
            "a",
            vec![software_event("a", 4, "software.removed", "gimp")],
        );
        s.append(std::slice::from_ref(&g)).unwrap();
        fold_software(&c, &s, std::slice::from_ref(&g));
        let resend = group(
            "a",
            vec![software_event("a", 2, "software.installed", "gimp")],
        );
        fold_software(&c, &s, std::slice::from_ref(&resend));
        assert_eq!(
            count(&c.lock().unwrap(), "gimp"),
            0,
            "the resend must not resurrect it"
        );

        // Third start: the state saved by the writer, still nothing read.
        drop(s);
        let s = open(dir.path());
        let c = load_software_counts(&s, &s.devices().unwrap()).unwrap();
        assert_eq!(s.read.load(Ordering::Relaxed), 0);
        assert_eq!((count(&c, "gimp"), count(&c, "steam")), (0, 1));
    }

    /// A fold that panics on the ack path (caught there, as the writer does) costs nothing
    /// but a rebuild: the lock is not poisoned, the device's counts come back from its stored
    /// events (the panicking one skipped), other devices in the group are counted, and later
    /// groups fold as before.
    #[test]
    fn a_panicking_fold_loses_only_the_counts_and_never_the_lock() {
        fn fold_panicking_on_5(
            c: &mut FleetCounts,
            device: &str,
            seq: u64,
            kind: &str,
            details: &Map<String, Value>,
        ) -> Result<(), String> {
            // Half an event applied, then a bug: the device's counts are now suspect.
            c.mark_through(device, seq);
            assert!(!(device == "a" && seq == 5), "a bug in the fold");
            c.apply(device, kind, details)
        }
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        for d in ["a", "b"] {
            s.insert_device(&crate::store::test_device(d)).unwrap();
        }
        let c = std::sync::Mutex::new(FleetCounts::default());
        let first = group(
            "a",
            vec![software_event("a", 1, "software.installed", "gimp")],
        );
        s.append(std::slice::from_ref(&first)).unwrap();
        fold_software_with(&c, &s, std::slice::from_ref(&first), fold_panicking_on_5);

        let faulty = [
            group(
                "a",
                vec![
                    software_event("a", 4, "software.installed", "steam"),
                    software_event("a", 5, "software.installed", "tor"),
                    software_event("a", 6, "software.removed", "gimp"),
                ],
            ),
            group(
                "b",
                vec![software_event("b", 1, "software.installed", "steam")],
            ),
        ];
        s.append(&faulty).unwrap();
        let hook = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fold_software_with(&c, &s, &faulty, fold_panicking_on_5)
        }));
        assert!(hook.is_ok(), "the panic escaped the fold");
        let counts = c.lock().expect("the counts lock is not poisoned");
        assert_eq!(
            (
                count(&counts, "gimp"),
                count(&counts, "steam"),
                count(&counts, "tor")
            ),
            (0, 2, 0),
            "a's counts rebuilt from its events without the faulty one, b's folded"
        );
        assert_eq!(counts.through_seq("a"), 6);
        drop(counts);

        let later = group(
            "a",
            vec![software_event("a", 7, "software.installed", "gimp")],
        );
        s.append(std::slice::from_ref(&later)).unwrap();
        fold_software(&c, &s, std::slice::from_ref(&later));
        assert_eq!(count(&c.lock().unwrap(), "gimp"), 1);
        // What was saved matches: a restart reads the same counts.
        let restarted = load_software_counts(&s, &s.devices().unwrap()).unwrap();
        assert_eq!(
            (count(&restarted, "gimp"), count(&restarted, "steam")),
            (1, 2)
        );
    }

    /// Resent batches (old events, after a lost ack) are not judged for the clock: the store
    /// keeps no facet from them, so a verdict from them would stand in the tracker unrecorded
    /// and hide the real change that follows.
    #[tokio::test(flavor = "multi_thread")]
    async fn resends_do_not_move_the_clock_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        store
            .insert_device(&crate::store::test_device("a"))
            .unwrap();
        let (ca, _) = crate::ca::SchoolCa::generate("Test").unwrap();
        let c = Collector::new(store.clone(), ca, Default::default(), "t").unwrap();
        let heartbeat = |seq: u64, at: DateTime<Utc>| IncomingEvent {
            seq,
            occurred_at: Some(at),
            user: String::new(),
            kind: "agent.heartbeat".into(),
            details: Map::new(),
        };
        let send = |seq: u64, at: DateTime<Utc>| {
            let b = c
                .prepare_batch("a", vec![heartbeat(seq, at)], None)
                .unwrap();
            c.commit(b)
        };
        let clock = || {
            store.device("a").unwrap().unwrap().state["clock"]["status"]
                .as_str()
                .map(str::to_string)
        };
        send(1, Utc::now()).await.unwrap();
        send(2, Utc::now()).await.unwrap();
        assert_eq!(clock().as_deref(), Some("ok"));
        let two_days_ago = Utc::now() - chrono::Duration::days(2);
        for _ in 0..2 {
            send(1, two_days_ago).await.unwrap();
        }
        assert_eq!(clock().as_deref(), Some("ok"), "resends change nothing");
        send(3, two_days_ago).await.unwrap();
        send(4, two_days_ago).await.unwrap();
        assert_eq!(
            clock().as_deref(),
            Some("behind"),
            "two old tails of new events: behind, and recorded"
        );
    }

    #[test]
    fn kinds_are_dotted_lowercase() {
        for good in ["agent.started", "usb.inserted", "a.b_c.d9"] {
            assert!(valid_kind(good), "{good}");
        }
        for bad in [
            "",
            "agent",
            "Agent.started",
            "a..b",
            "a.b-c",
            &"a.".repeat(40),
        ] {
            assert!(!valid_kind(bad), "{bad}");
        }
    }
}
