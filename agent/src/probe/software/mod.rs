//! Installed-software probe: keeps the inventory of installed software (dpkg, snap, Flatpak,
//! AppImage), sends it once at start, then reports installs, removals and upgrades as they
//! happen, and new executables appearing in users' home folders.
//!
//! Changes are seen through file watches (dpkg replaces `status` by rename, so the
//! directory is watched), debounced, with a periodic full rescan as a backstop for anything
//! the watches missed (and for snaps, which have no cheap watch).
pub mod parse;
mod scan;

use crate::event::{EventSink, NewEvent};
use caretaker_proto::policy::PolicyDocument;
use caretaker_proto::policy::SoftwarePolicy;
use chrono::{DateTime, Utc};
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use parse::AptRequester;
use scan::{Found, Home, HomeIndex, WalkRules};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the probe looks; every root is overridable so tests use temp dirs.
#[derive(Debug, Clone)]
pub struct SoftwareProbeConfig {
    pub dpkg_dir: PathBuf,
    pub apt_history_log: PathBuf,
    pub flatpak_system_dir: PathBuf,
    pub home_root: PathBuf,
    pub passwd_file: PathBuf,
    pub snapd_socket: PathBuf,
    /// Where snapd keeps `.snap` files: watched so a snap install triggers a query.
    pub snapd_snaps_dir: PathBuf,
    /// Paths relative to each home not searched for executables: caches churn constantly,
    /// per-user Flatpak deployments are full of ELF files (they are inventoried instead),
    /// and the Trash holds what the user already deleted.
    pub home_exclude: Vec<PathBuf>,
    /// Quiet time after the last change before re-reading.
    pub debounce: Duration,
    /// Re-read at the latest this long after the first change, even if changes continue.
    pub max_debounce: Duration,
    /// Inventory items per `software.inventory` event before it is split.
    pub max_items_per_event: usize,
    /// Executables larger than this are reported without a hash.
    pub max_hash_bytes: u64,
    /// Folders watched per home before the rest are left to the rescan.
    pub max_dirs_per_home: usize,
    /// How far back an apt history entry may start and still explain a dpkg change.
    pub attribution_window: Duration,
    /// Floor under the policy's rescan interval (the policy validator enforces the same
    /// 60 s; tests lower it to exercise the backstop quickly).
    pub min_rescan_interval: Duration,
}

impl Default for SoftwareProbeConfig {
    fn default() -> Self {
        SoftwareProbeConfig {
            dpkg_dir: "/var/lib/dpkg".into(),
            apt_history_log: "/var/log/apt/history.log".into(),
            flatpak_system_dir: "/var/lib/flatpak".into(),
            home_root: "/home".into(),
            passwd_file: "/etc/passwd".into(),
            snapd_socket: "/run/snapd.socket".into(),
            snapd_snaps_dir: "/var/lib/snapd/snaps".into(),
            home_exclude: vec![
                ".cache".into(),
                ".local/share/flatpak".into(),
                ".local/share/Trash".into(),
            ],
            debounce: Duration::from_millis(300),
            max_debounce: Duration::from_secs(3),
            max_items_per_event: 1000,
            max_hash_bytes: 2 << 30,
            max_dirs_per_home: 20_000,
            attribution_window: Duration::from_secs(2 * 3600),
            min_rescan_interval: Duration::from_secs(
                caretaker_proto::policy::software::MIN_RESCAN_INTERVAL_SECS,
            ),
        }
    }
}

/// Where an installed program came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Dpkg,
    Snap,
    Flatpak,
    AppImage,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dpkg => "dpkg",
            Source::Snap => "snap",
            Source::Flatpak => "flatpak",
            Source::AppImage => "appimage",
        }
    }
}

/// Identity of one installation: unique within its source (`name:arch` for dpkg,
/// `system/<id>` or `user/<user>/<id>` for Flatpak, `<user>/<path>` for AppImages).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SoftwareKey {
    pub source: Source,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftwareItem {
    pub name: String,
    pub version: String,
    pub arch: Option<String>,
    /// The user a per-user installation belongs to.
    pub owner: Option<String>,
    /// For AppImages, the path relative to the owner's home folder.
    pub path: Option<String>,
    pub installed_at: Option<DateTime<Utc>>,
}

pub type Inventory = BTreeMap<SoftwareKey, SoftwareItem>;

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Installed(SoftwareKey, SoftwareItem),
    Removed(SoftwareKey, SoftwareItem),
    Upgraded {
        key: SoftwareKey,
        previous: SoftwareItem,
        current: SoftwareItem,
    },
}

/// Replaces everything `inventory` holds from `source` with `fresh`, and returns what
/// changed. A version change is an upgrade (downgrades too: `software.upgraded` carries
/// both versions); other differences (install time) update silently.
pub fn replace_source(inventory: &mut Inventory, source: Source, fresh: Inventory) -> Vec<Change> {
    let mut changes = Vec::new();
    let old_keys: Vec<SoftwareKey> = inventory
        .keys()
        .filter(|k| k.source == source)
        .cloned()
        .collect();
    for key in old_keys {
        if !fresh.contains_key(&key) {
            let item = inventory.remove(&key).expect("key listed above");
            changes.push(Change::Removed(key, item));
        }
    }
    for (key, item) in fresh {
        debug_assert_eq!(key.source, source);
        match inventory.insert(key.clone(), item.clone()) {
            None => changes.push(Change::Installed(key, item)),
            Some(prev) if prev.version != item.version => changes.push(Change::Upgraded {
                key,
                previous: prev,
                current: item,
            }),
            Some(_) => {}
        }
    }
    changes
}

/// Field order of each compact inventory item; trailing nulls are left off.
pub const INVENTORY_FIELDS: [&str; 6] =
    ["name", "version", "arch", "owner", "installed_at", "path"];

/// The full inventory as `software.inventory` event details: items grouped by source, each
/// a short array in `INVENTORY_FIELDS` order, split into parts of at most `max_items`.
/// `batch` ties the parts together; the collector replaces a device's inventory once it has
/// every part.
pub fn inventory_details(
    inv: &Inventory,
    batch: &str,
    max_items: usize,
) -> Vec<Map<String, Value>> {
    let max_items = max_items.max(1);
    let entries: Vec<(&SoftwareKey, &SoftwareItem)> = inv.iter().collect();
    let chunks: Vec<_> = if entries.is_empty() {
        vec![&entries[..]]
    } else {
        entries.chunks(max_items).collect()
    };
    let parts = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut by_source: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            for (key, item) in chunk {
                let mut row = vec![
                    json!(item.name),
                    json!(item.version),
                    json!(item.arch),
                    json!(item.owner),
                    json!(item.installed_at.map(|t| t.timestamp())),
                    json!(item.path),
                ];
                while row.last() == Some(&Value::Null) {
                    row.pop();
                }
                by_source
                    .entry(key.source.as_str())
                    .or_default()
                    .push(Value::Array(row));
            }
            let mut d = Map::new();
            d.insert("batch".into(), json!(batch));
            d.insert("part".into(), json!(i + 1));
            d.insert("parts".into(), json!(parts));
            d.insert("total".into(), json!(inv.len()));
            d.insert("fields".into(), json!(INVENTORY_FIELDS));
            d.insert("items".into(), json!(by_source));
            d
        })
        .collect()
}

/// The event for one change. `requested_by` is who asked apt for it, where apt recorded it.
pub fn change_event(change: &Change, requested_by: Option<&AptRequester>) -> NewEvent {
    let (kind, key, item, previous) = match change {
        Change::Installed(k, i) => ("software.installed", k, i, None),
        Change::Removed(k, i) => ("software.removed", k, i, None),
        Change::Upgraded {
            key,
            previous,
            current,
        } => ("software.upgraded", key, current, Some(previous)),
    };
    let mut d = Map::new();
    d.insert("source".into(), json!(key.source.as_str()));
    d.insert("name".into(), json!(item.name));
    d.insert("version".into(), json!(item.version));
    if let Some(p) = previous {
        d.insert("previous_version".into(), json!(p.version));
    }
    let optional = [
        ("architecture", item.arch.as_ref()),
        ("owner", item.owner.as_ref()),
        ("path", item.path.as_ref()),
    ];
    for (field, value) in optional {
        if let Some(v) = value {
            d.insert(field.into(), json!(v));
        }
    }
    d.insert(
        "scope".into(),
        json!(if item.owner.is_some() {
            "user"
        } else {
            "system"
        }),
    );
    if let Some(t) = item
        .installed_at
        .filter(|_| !matches!(change, Change::Removed(..)))
    {
        d.insert("installed_at".into(), json!(t.to_rfc3339()));
    }
    if let Some(r) = requested_by {
        d.insert(
            "requested_by".into(),
            json!({"user": r.user, "uid": r.uid, "via": "apt"}),
        );
    }
    let user = item
        .owner
        .clone()
        .or_else(|| requested_by.map(|r| r.user.clone()));
    NewEvent::now(kind, user, d)
}

/// The `executable.in_user_area` event: where (relative to the home), whose, what kind, and
/// a content hash. Never the content itself.
pub fn executable_event(found: &Found) -> NewEvent {
    let rel = found.path.strip_prefix(&found.home).unwrap_or(&found.path);
    let mut d = Map::new();
    d.insert("path".into(), json!(rel.to_string_lossy()));
    d.insert("type".into(), json!(found.kind.as_str()));
    if let parse::ExecutableType::AppImage(t) = found.kind {
        d.insert("appimage_type".into(), json!(t));
    }
    d.insert("size".into(), json!(found.size));
    d.insert("sha256".into(), json!(found.sha256));
    if found.sha256.is_none() {
        d.insert("hash_skipped".into(), json!("too_large_or_unreadable"));
    }
    d.insert("executable_bit".into(), json!(found.executable_bit));
    d.insert(
        "change".into(),
        json!(if found.replaced {
            "modified"
        } else {
            "created"
        }),
    );
    NewEvent::now("executable.in_user_area", Some(found.user.clone()), d)
}

/// Coalesces bursts of notifications: due `quiet` after the last one, but never later than
/// `max_wait` after the first, so a busy folder cannot postpone a re-read for ever.
#[derive(Debug, Default, Clone, Copy)]
pub struct Debounce {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn touch(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }
    pub fn due(&self, quiet: Duration, max_wait: Duration) -> Option<Instant> {
        Some((self.last? + quiet).min(self.first? + max_wait))
    }
    /// True (and reset) when due at `now`.
    pub fn take_due(&mut self, now: Instant, quiet: Duration, max_wait: Duration) -> bool {
        if self.due(quiet, max_wait).is_some_and(|d| d <= now) {
            *self = Debounce::default();
            true
        } else {
            false
        }
    }
}

/// Which re-read a changed path calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Dpkg,
    Flatpak,
    Snap,
    Home(PathBuf),
    Ignore,
}

fn route(cfg: &SoftwareProbeConfig, path: &Path) -> Route {
    if path.parent() == Some(cfg.dpkg_dir.as_path()) {
        return if path.file_name().is_some_and(|n| n == "status") {
            Route::Dpkg
        } else {
            Route::Ignore
        };
    }
    if path.starts_with(&cfg.flatpak_system_dir) {
        return Route::Flatpak;
    }
    if path.starts_with(&cfg.snapd_snaps_dir) {
        return Route::Snap;
    }
    if let Ok(rel) = path.strip_prefix(&cfg.home_root) {
        let mut parts = rel.components();
        let Some(first) = parts.next() else {
            return Route::Ignore;
        };
        let home = cfg.home_root.join(first);
        if path.starts_with(scan::user_flatpak_root(&home)) {
            return Route::Flatpak;
        }
        let rest = parts.as_path();
        if cfg.home_exclude.iter().any(|x| rest.starts_with(x)) {
            return Route::Ignore;
        }
        return Route::Home(path.to_path_buf());
    }
    Route::Ignore
}

/// Runs the probe until `shutdown`.
pub async fn run(
    config: SoftwareProbeConfig,
    mut policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<notify::Result<notify::Event>>(4096);
    let overflow = Arc::new(AtomicBool::new(false));
    let overflow_cb = overflow.clone();
    // The watcher's thread must never block: on a full queue, drop the event and ask for a
    // full rescan instead, which finds whatever the dropped events were about.
    let watcher = notify::recommended_watcher(move |ev| {
        if tx.try_send(ev).is_err() {
            overflow_cb.store(true, Ordering::Relaxed);
        }
    });
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot watch files; software changes are seen only at rescans.");
            None
        }
    };
    let mut probe = Probe {
        policy: policy.borrow().software.clone(),
        cfg: Arc::new(config),
        sink,
        inventory: Inventory::new(),
        index: HomeIndex::default(),
        homes: Vec::new(),
        watcher,
        watched: HashSet::new(),
        pending_homes: HashSet::new(),
        dpkg: Debounce::default(),
        flatpak: Debounce::default(),
        snap: Debounce::default(),
        home: Debounce::default(),
    };
    if !probe.start().await {
        return;
    }
    let mut next_rescan = Instant::now() + probe.rescan_interval();
    let mut policy_open = true;
    let mut watch_open = probe.watcher.is_some();
    loop {
        let next_due = [
            probe.dpkg.due(probe.cfg.debounce, probe.cfg.max_debounce),
            probe
                .flatpak
                .due(probe.cfg.debounce, probe.cfg.max_debounce),
            probe.snap.due(probe.cfg.debounce, probe.cfg.max_debounce),
            probe.home.due(probe.cfg.debounce, probe.cfg.max_debounce),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(next_rescan, |d| d.min(next_rescan));
        crate::probe::liveness::beat();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // Nothing is due on an idle turn: `process_due` below finds nothing to do.
            _ = crate::probe::liveness::idle() => {}
            ev = async { if watch_open { rx.recv().await } else { std::future::pending().await } } => {
                let Some(ev) = ev else {
                    watch_open = false;
                    continue;
                };
                probe.note(ev);
                while let Ok(ev) = rx.try_recv() {
                    probe.note(ev);
                }
            }
            changed = async { if policy_open { policy.changed().await } else { std::future::pending().await } } => {
                match changed {
                    Ok(()) => {
                        probe.policy = policy.borrow_and_update().software.clone();
                        next_rescan = Instant::now() + probe.rescan_interval();
                    }
                    Err(_) => policy_open = false,
                }
            }
            _ = tokio::time::sleep_until(next_due) => {}
        }
        let now = Instant::now();
        let alive = if overflow.swap(false, Ordering::Relaxed) || now >= next_rescan {
            next_rescan = now + probe.rescan_interval();
            probe.full_rescan().await
        } else {
            probe.process_due(now).await
        };
        if !alive {
            return;
        }
    }
}

struct Probe {
    cfg: Arc<SoftwareProbeConfig>,
    sink: EventSink,
    policy: SoftwarePolicy,
    inventory: Inventory,
    index: HomeIndex,
    homes: Vec<Home>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    pending_homes: HashSet<PathBuf>,
    dpkg: Debounce,
    flatpak: Debounce,
    snap: Debounce,
    home: Debounce,
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "Software scan task failed.");
            None
        }
    }
}

impl Probe {
    fn rescan_interval(&self) -> Duration {
        Duration::from_secs(self.policy.rescan_interval_secs).max(self.cfg.min_rescan_interval)
    }

    fn rules(&self) -> WalkRules {
        WalkRules {
            exclude: self.cfg.home_exclude.clone(),
            max_hash_bytes: self.cfg.max_hash_bytes,
            max_dirs: self.cfg.max_dirs_per_home,
        }
    }

    /// Reads everything, sends the inventory once, and starts the watches. Executables
    /// already in home folders form the baseline: only later arrivals are reported.
    async fn start(&mut self) -> bool {
        let _ = self.walk_homes().await;
        self.ensure_watches().await;
        let dpkg = self.read_dpkg().await;
        let flatpak = self.read_flatpak().await;
        let snap = self.read_snaps().await;
        for (source, fresh) in [
            (Source::Dpkg, dpkg),
            (Source::Flatpak, flatpak),
            (Source::Snap, snap),
            (Source::AppImage, Some(self.index.appimages(&self.homes))),
        ] {
            if let Some(fresh) = fresh {
                replace_source(&mut self.inventory, source, fresh);
            }
        }
        let batch = Utc::now().to_rfc3339();
        for details in inventory_details(&self.inventory, &batch, self.cfg.max_items_per_event) {
            if !self
                .sink
                .emit(NewEvent::now("software.inventory", None, details))
                .await
            {
                return false;
            }
        }
        true
    }

    /// Files a notification under the re-read it calls for.
    fn note(&mut self, ev: notify::Result<notify::Event>) {
        let now = Instant::now();
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "File watch error; rescanning.");
                self.dpkg.touch(now);
                self.flatpak.touch(now);
                self.home.touch(now);
                self.pending_homes.insert(self.cfg.home_root.clone());
                return;
            }
        };
        if ev.need_rescan() {
            self.dpkg.touch(now);
            self.flatpak.touch(now);
            self.home.touch(now);
            self.pending_homes.insert(self.cfg.home_root.clone());
        }
        match ev.kind {
            // Opening or reading changes nothing; closing after a write may finish a file.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            // A deleted or moved-away folder loses its watch: forget it (and what was under
            // it) so a folder created again at that path is watched again.
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for p in &ev.paths {
                    self.watched.retain(|d| !d.starts_with(p));
                }
            }
            _ => {}
        }
        for path in ev.paths {
            match route(&self.cfg, &path) {
                Route::Dpkg => self.dpkg.touch(now),
                Route::Flatpak => self.flatpak.touch(now),
                Route::Snap => self.snap.touch(now),
                Route::Home(p) => {
                    self.home.touch(now);
                    self.pending_homes.insert(p);
                }
                Route::Ignore => {}
            }
        }
    }

    async fn process_due(&mut self, now: Instant) -> bool {
        let (quiet, max) = (self.cfg.debounce, self.cfg.max_debounce);
        if self.dpkg.take_due(now, quiet, max) && !self.refresh_dpkg().await {
            return false;
        }
        if self.flatpak.take_due(now, quiet, max) {
            self.ensure_watches().await;
            let fresh = self.read_flatpak().await;
            if !self.apply(Source::Flatpak, fresh).await {
                return false;
            }
        }
        if self.snap.take_due(now, quiet, max) {
            let fresh = self.read_snaps().await;
            if !self.apply(Source::Snap, fresh).await {
                return false;
            }
        }
        if self.home.take_due(now, quiet, max) {
            let paths = std::mem::take(&mut self.pending_homes);
            if !self.refresh_home_paths(paths).await {
                return false;
            }
        }
        true
    }

    async fn full_rescan(&mut self) -> bool {
        self.dpkg = Debounce::default();
        self.flatpak = Debounce::default();
        self.snap = Debounce::default();
        self.home = Debounce::default();
        self.pending_homes.clear();
        // Deleted folders lose their inotify watch on their own; forget them.
        self.watched.retain(|d| d.is_dir());
        self.ensure_watches().await;
        if !self.refresh_dpkg().await {
            return false;
        }
        let flatpak = self.read_flatpak().await;
        if !self.apply(Source::Flatpak, flatpak).await {
            return false;
        }
        let snap = self.read_snaps().await;
        if !self.apply(Source::Snap, snap).await {
            return false;
        }
        let found = self.walk_homes().await;
        self.emit_home_findings(found).await
    }

    async fn read_dpkg(&self) -> Option<Inventory> {
        let dir = self.cfg.dpkg_dir.clone();
        match blocking(move || scan::read_dpkg(&dir)).await? {
            Ok((inv, warnings)) => {
                for w in warnings {
                    tracing::warn!(warning = %w, "Odd entry in dpkg status.");
                }
                Some(inv)
            }
            Err(e) => {
                // Keep what we knew: an unreadable file must not look like everything removed.
                tracing::warn!(error = %e, "Cannot read dpkg status.");
                None
            }
        }
    }

    async fn refresh_dpkg(&mut self) -> bool {
        let fresh = self.read_dpkg().await;
        let Some(fresh) = fresh else { return true };
        let changes = replace_source(&mut self.inventory, Source::Dpkg, fresh);
        if changes.is_empty() {
            return true;
        }
        let log = self.cfg.apt_history_log.clone();
        let history = blocking(move || scan::read_apt_history(&log))
            .await
            .unwrap_or_default();
        let window = chrono::Duration::from_std(self.cfg.attribution_window).unwrap_or_default();
        let not_before = chrono::Local::now().naive_local() - window;
        for change in &changes {
            let (item, removal) = match change {
                Change::Installed(_, i) | Change::Upgraded { current: i, .. } => (i, false),
                Change::Removed(_, i) => (i, true),
            };
            let requester = parse::attribute_apt(
                &history,
                &item.name,
                Some(&item.version),
                removal,
                not_before,
            )
            .and_then(|t| t.requested_by.as_ref());
            if !self.sink.emit(change_event(change, requester)).await {
                return false;
            }
        }
        true
    }

    async fn read_flatpak(&self) -> Option<Inventory> {
        let (dir, homes) = (self.cfg.flatpak_system_dir.clone(), self.homes.clone());
        let (inv, warnings) = blocking(move || scan::read_flatpak(&dir, &homes)).await?;
        for w in warnings {
            tracing::warn!(warning = %w, "Odd Flatpak installation.");
        }
        Some(inv)
    }

    async fn read_snaps(&self) -> Option<Inventory> {
        match scan::read_snaps(&self.cfg.snapd_socket).await {
            Ok(inv) => Some(inv),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot list snaps.");
                None
            }
        }
    }

    /// Replaces one source's part of the inventory and emits the changes.
    async fn apply(&mut self, source: Source, fresh: Option<Inventory>) -> bool {
        let Some(fresh) = fresh else { return true };
        for change in replace_source(&mut self.inventory, source, fresh) {
            if !self.sink.emit(change_event(&change, None)).await {
                return false;
            }
        }
        true
    }

    /// Walks every home folder (refreshing the list of homes), updating the index.
    async fn walk_homes(&mut self) -> Vec<Found> {
        let cfg = self.cfg.clone();
        let rules = self.rules();
        let mut index = std::mem::take(&mut self.index);
        let result = blocking(move || {
            let homes = scan::list_homes(&cfg.home_root, &cfg.passwd_file);
            let mut found = Vec::new();
            let mut dirs = Vec::new();
            for h in &homes {
                let (d, f) = index.walk(h, &h.dir, &rules);
                dirs.extend(d);
                found.extend(f);
            }
            index.retain_homes(&homes);
            (index, homes, dirs, found)
        })
        .await;
        let Some((index, homes, dirs, found)) = result else {
            return Vec::new();
        };
        self.index = index;
        self.homes = homes;
        self.watch_dirs(dirs);
        found
    }

    /// Re-examines the paths notifications named: new folders are walked (and watched),
    /// files checked, vanished paths dropped.
    async fn refresh_home_paths(&mut self, paths: HashSet<PathBuf>) -> bool {
        // A new top-level folder is a new home: refresh the list before attributing files.
        if paths
            .iter()
            .any(|p| p.parent() == Some(self.cfg.home_root.as_path()) || *p == self.cfg.home_root)
        {
            let found = self.walk_homes().await;
            self.ensure_watches().await;
            return self.emit_home_findings(found).await;
        }
        // A new folder on the way to a user's Flatpak root (`~/.local` appearing on a first
        // per-user install) is excluded from the walk, so hand it to the Flatpak re-read.
        if paths.iter().any(|p| {
            self.homes
                .iter()
                .any(|h| scan::user_flatpak_root(&h.dir).starts_with(p))
        }) {
            self.flatpak.touch(Instant::now());
        }
        let rules = self.rules();
        let homes = self.homes.clone();
        let mut index = std::mem::take(&mut self.index);
        let quiet = self.cfg.debounce;
        let result = blocking(move || {
            let mut found = Vec::new();
            let mut dirs = Vec::new();
            let mut still_writing = Vec::new();
            for p in paths {
                let Some(home) = homes.iter().find(|h| p.starts_with(&h.dir)) else {
                    continue;
                };
                let meta = std::fs::symlink_metadata(&p);
                if meta.as_ref().is_ok_and(|m| m.is_dir()) {
                    let (d, f) = index.walk(home, &p, &rules);
                    dirs.extend(d);
                    found.extend(f);
                } else if rules.excluded(&home.dir, &p) || scan::is_partial_download(&p) {
                    // Browsers download to `.part`/`.crdownload` and rename when done: the
                    // rename is what gets reported.
                } else if meta.as_ref().is_ok_and(|m| scan::modified_within(m, quiet)) {
                    // Still being written: hashing now would report half a file.
                    still_writing.push(p);
                } else {
                    found.extend(index.check(home, &p, &rules));
                }
            }
            (index, dirs, found, still_writing)
        })
        .await;
        let Some((index, dirs, found, still_writing)) = result else {
            return true;
        };
        if !still_writing.is_empty() {
            self.home.touch(Instant::now());
            self.pending_homes.extend(still_writing);
        }
        self.index = index;
        self.watch_dirs(dirs);
        self.emit_home_findings(found).await
    }

    /// Emits new executables (if the policy asks) and the AppImage inventory changes.
    async fn emit_home_findings(&mut self, found: Vec<Found>) -> bool {
        let appimages = self.index.appimages(&self.homes);
        if !self.apply(Source::AppImage, Some(appimages)).await {
            return false;
        }
        if !self.policy.watch_home_executables {
            return true;
        }
        for f in &found {
            if !self.sink.emit(executable_event(f)).await {
                return false;
            }
        }
        true
    }

    fn watch_dirs(&mut self, dirs: Vec<PathBuf>) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for d in dirs {
            if self.watched.contains(&d) {
                continue;
            }
            match w.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(d);
                }
                Err(e) => tracing::debug!(error = %e, dir = %d.display(), "Cannot watch folder."),
            }
        }
    }

    /// Watches the fixed places (dpkg, Flatpak app folders, snapd, the home root) that
    /// exist now; called again at each rescan so places created later get watched.
    async fn ensure_watches(&mut self) {
        let cfg = self.cfg.clone();
        let homes = self.homes.clone();
        let dirs = blocking(move || {
            let mut dirs = vec![
                cfg.dpkg_dir.clone(),
                cfg.snapd_snaps_dir.clone(),
                cfg.home_root.clone(),
                cfg.flatpak_system_dir.clone(),
            ];
            let mut app_dirs = vec![cfg.flatpak_system_dir.join("app")];
            for h in &homes {
                let root = scan::user_flatpak_root(&h.dir);
                dirs.push(root.clone());
                app_dirs.push(root.join("app"));
            }
            for app in app_dirs {
                // Each app's folder too: its `current` link appears when deployment ends.
                if let Ok(entries) = std::fs::read_dir(&app) {
                    dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
                dirs.push(app);
            }
            dirs.into_iter().filter(|d| d.is_dir()).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        self.watch_dirs(dirs);
    }
}

#[cfg(test)]
mod tests;
