//! Installed-software probe: keeps the inventory of installed software (dpkg, snap, Flatpak,
//! AppImage), sends it once at start, then reports installs, removals and upgrades as they
//! happen, and new executables appearing in users' home folders.
//!
//! Changes are seen through file watches (dpkg replaces `status` by rename, so the
//! directory is watched), debounced, with a periodic full rescan as a backstop for anything
//! the watches missed (and for snaps, which have no cheap watch).
//!
//! This file is the loop and its state; the inventory and its diff are in `diff.rs`, the events
//! in `events.rs`, where a notification leads and when a burst has settled in `debounce.rs`,
//! the home-folder walks in `homes.rs`, the pure parsers in `parse/` and the thin readers in
//! `scan.rs`. On Windows the loop is `windows.rs` (the Uninstall keys), over the same
//! inventory, diff and events.
#![cfg_attr(not(target_os = "linux"), allow(unused_imports))]
#[cfg(target_os = "linux")]
mod debounce;
mod diff;
mod events;
mod home_index;
#[cfg(target_os = "linux")]
mod homes;
pub mod parse;
#[cfg(target_os = "linux")]
mod scan;
#[cfg(any(windows, test))]
mod uninstall;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::run;

#[cfg(target_os = "linux")]
pub use debounce::Debounce;
#[cfg(target_os = "linux")]
use debounce::{Route, route};
pub use diff::{Change, Inventory, SoftwareItem, SoftwareKey, Source, replace_source};
pub use events::{INVENTORY_FIELDS, change_event, executable_event, inventory_details};

use crate::event::{EventSink, NewEvent};
use caretaker_proto::policy::PolicyDocument;
use caretaker_proto::policy::SoftwarePolicy;
use chrono::Utc;
#[cfg(target_os = "linux")]
use home_index::{Home, HomeIndex};
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashSet;
use std::path::PathBuf;
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
    /// Windows: how often the Uninstall keys are re-read (no change notification yet).
    pub registry_poll: Duration,
    /// Windows: how often the profiles are walked for new programs (no change notification
    /// yet); only what changed since the last walk is opened.
    pub profile_poll: Duration,
}

impl Default for SoftwareProbeConfig {
    fn default() -> Self {
        SoftwareProbeConfig {
            dpkg_dir: "/var/lib/dpkg".into(),
            apt_history_log: "/var/log/apt/history.log".into(),
            flatpak_system_dir: "/var/lib/flatpak".into(),
            home_root: default_home_root(),
            passwd_file: "/etc/passwd".into(),
            snapd_socket: "/run/snapd.socket".into(),
            snapd_snaps_dir: "/var/lib/snapd/snaps".into(),
            home_exclude: default_home_exclude(),
            debounce: Duration::from_millis(300),
            max_debounce: Duration::from_secs(3),
            max_items_per_event: 1000,
            max_hash_bytes: 2 << 30,
            max_dirs_per_home: 20_000,
            attribution_window: Duration::from_secs(2 * 3600),
            min_rescan_interval: Duration::from_secs(
                caretaker_proto::policy::software::MIN_RESCAN_INTERVAL_SECS,
            ),
            registry_poll: Duration::from_secs(5),
            profile_poll: Duration::from_secs(60),
        }
    }
}

/// Where the users' folders are: `/home`, or Windows' profiles folder (`C:\Users`).
fn default_home_root() -> PathBuf {
    #[cfg(windows)]
    if let Some(dir) = crate::os::windows::profiles_directory() {
        return dir;
    }
    if cfg!(windows) {
        r"C:\Users".into()
    } else {
        "/home".into()
    }
}

/// Linux: caches, per-user Flatpak deployments and the Trash. Windows: `AppData`, where
/// every installed program keeps its updaters and caches (what a pupil runs from there is
/// seen by the software inventory, not here).
fn default_home_exclude() -> Vec<PathBuf> {
    let dirs: &[&str] = if cfg!(windows) {
        &["AppData"]
    } else {
        &[".cache", ".local/share/flatpak", ".local/share/Trash"]
    };
    dirs.iter().map(PathBuf::from).collect()
}

/// Runs the probe until `shutdown`.
#[cfg(target_os = "linux")]
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

#[cfg(target_os = "linux")]
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
#[cfg(target_os = "linux")]
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "Software scan task failed.");
            None
        }
    }
}

#[cfg(target_os = "linux")]
impl Probe {
    fn rescan_interval(&self) -> Duration {
        Duration::from_secs(self.policy.rescan_interval_secs).max(self.cfg.min_rescan_interval)
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

#[cfg(all(test, target_os = "linux"))]
mod tests;
