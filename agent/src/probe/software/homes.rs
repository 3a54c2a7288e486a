//! Home-folder executables: walking users' home folders, re-examining the paths a
//! notification named, and reporting what is new (and the AppImage inventory it implies).
use std::collections::HashSet;
use std::path::PathBuf;

use tokio::time::Instant;

use super::home_index::{self, Found, WalkRules};
use super::scan;
use super::{Probe, Source, blocking, executable_event};

impl Probe {
    pub(super) fn rules(&self) -> WalkRules {
        WalkRules {
            exclude: self.cfg.home_exclude.clone(),
            max_hash_bytes: self.cfg.max_hash_bytes,
            max_dirs: self.cfg.max_dirs_per_home,
        }
    }

    /// Walks every home folder (refreshing the list of homes), updating the index.
    pub(super) async fn walk_homes(&mut self) -> Vec<Found> {
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
    pub(super) async fn refresh_home_paths(&mut self, paths: HashSet<PathBuf>) -> bool {
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
                } else if rules.excluded(&home.dir, &p) || home_index::is_partial_download(&p) {
                    // Browsers download to `.part`/`.crdownload` and rename when done: the
                    // rename is what gets reported.
                } else if meta
                    .as_ref()
                    .is_ok_and(|m| home_index::modified_within(m, quiet))
                {
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
    pub(super) async fn emit_home_findings(&mut self, found: Vec<Found>) -> bool {
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
}
