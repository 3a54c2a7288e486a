//! What the software probe's loop decides about file notifications: which re-read a changed
//! path calls for, and when a burst of them has settled.

use super::{SoftwareProbeConfig, scan};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

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
pub(super) enum Route {
    Dpkg,
    Flatpak,
    Snap,
    Home(PathBuf),
    Ignore,
}

pub(super) fn route(cfg: &SoftwareProbeConfig, path: &Path) -> Route {
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
