//! The software probe on Windows: the Uninstall registry keys (HKLM's 64- and 32-bit views and
//! each loaded user's `HKEY_USERS\<sid>`) read through `os::registry`, interpreted by
//! `parse::windows`, kept as the `windows` source of the same inventory Linux keeps, and sent
//! as the same events (`software.inventory` at start, then installed/removed/upgraded).
//!
//! A user's hive is in `HKEY_USERS` only while they are logged on: the entries of a user not
//! loaded now (or not readable) keep their last reading, so logging off is not an uninstall.
//!
//! Changes are found by re-reading every `registry_poll` (5 s): `RegNotifyChangeKeyValue`
//! has no safe wrapper and the crate forbids `unsafe`, and a read of a few hundred small keys
//! costs milliseconds.
//!
//! Programs appearing in users' profiles (`C:\Users\<name>`, less `AppData`) are found by
//! walking them every `profile_poll` (60 s) with the same index Linux uses for home folders
//! (`home_index.rs`): the first walk is the baseline, later ones report what is new or
//! changed as `executable.in_user_area`. A download still in progress (`.crdownload`, …) or a
//! file written in the last few seconds is looked at again on the next walk.

use std::path::PathBuf;
use std::sync::Arc;

use caretaker_proto::policy::PolicyDocument;
use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::home_index::{
    Found, HomeIndex, WalkRules, is_partial_download, list_profiles, modified_within,
};
use super::parse::{self, RegValue};
use super::uninstall::{inventory_of, keep_unread_users};
use super::{
    Inventory, SoftwareProbeConfig, Source, change_event, executable_event, inventory_details,
    replace_source,
};
use crate::event::{EventSink, NewEvent};
use crate::os::registry::{self, Hive, KEY_WOW64_32KEY, RawKey, RawValue, RegistryError};

/// The Uninstall key, below HKLM and below each user's hive.
pub const UNINSTALL: &str = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";
const UNINSTALL_32: &str = r"SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall";

/// Runs the probe until `shutdown`.
pub async fn run(
    config: SoftwareProbeConfig,
    _policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let mut inventory = Inventory::new();
    let mut sent_inventory = false;
    let mut last_problems: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(config.registry_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut profiles = Profiles::new(&config);
    let mut walk = tokio::time::interval(config.profile_poll);
    walk.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        crate::probe::liveness::beat();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = crate::probe::liveness::idle() => continue,
            _ = walk.tick() => {
                for found in profiles.walk().await {
                    if !sink.emit(executable_event(&found)).await {
                        return;
                    }
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let Some(fresh) = read(&inventory, &mut last_problems).await else {
            continue;
        };
        let changes = replace_source(&mut inventory, Source::Windows, fresh);
        if !sent_inventory {
            let batch = Utc::now().to_rfc3339();
            for details in inventory_details(&inventory, &batch, config.max_items_per_event) {
                if !sink
                    .emit(NewEvent::now("software.inventory", None, details))
                    .await
                {
                    return;
                }
            }
            sent_inventory = true;
            continue;
        }
        for change in changes {
            if !sink.emit(change_event(&change, None)).await {
                return;
            }
        }
    }
}

/// Users' profiles and what the last walk saw in them.
struct Profiles {
    root: PathBuf,
    rules: WalkRules,
    /// Taken out while a walk runs off the async threads.
    index: Option<HomeIndex>,
    baseline_done: bool,
}

impl Profiles {
    fn new(config: &SoftwareProbeConfig) -> Self {
        Profiles {
            root: config.home_root.clone(),
            rules: WalkRules {
                exclude: config.home_exclude.clone(),
                max_hash_bytes: config.max_hash_bytes,
                max_dirs: config.max_dirs_per_home,
            },
            index: Some(HomeIndex::default()),
            baseline_done: false,
        }
    }

    /// Walks every profile; returns the programs to report (none on the first walk).
    async fn walk(&mut self) -> Vec<Found> {
        let Some(mut index) = self.index.take() else {
            return Vec::new();
        };
        let (root, rules) = (self.root.clone(), self.rules.clone());
        let walked = tokio::task::spawn_blocking(move || {
            let homes = list_profiles(&root);
            let mut found = Vec::new();
            for h in &homes {
                found.extend(index.walk(h, &h.dir, &rules).1);
            }
            index.retain_homes(&homes);
            // Not finished yet: looked at again next time, so the whole file is what counts.
            found.retain(|f| {
                let unsettled = is_partial_download(&f.path)
                    || std::fs::symlink_metadata(&f.path)
                        .is_ok_and(|m| modified_within(&m, SETTLE));
                if unsettled {
                    index.forget(&f.path);
                }
                !unsettled
            });
            (index, found)
        })
        .await;
        let Ok((index, found)) = walked else {
            tracing::error!("Profile walk task failed.");
            self.index = Some(HomeIndex::default());
            self.baseline_done = false;
            return Vec::new();
        };
        self.index = Some(index);
        if !self.baseline_done {
            self.baseline_done = true;
            return Vec::new();
        }
        found
    }
}

/// How long a file must have been left alone before it is reported.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// One full read, off the async threads. `None` if the machine's keys could not be read (the
/// inventory is then kept as it was rather than reported as all removed). Problems are logged
/// when they change, not every few seconds.
async fn read(previous: &Inventory, last_problems: &mut Vec<String>) -> Option<Inventory> {
    let read = match tokio::task::spawn_blocking(read_uninstall_keys).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Software scan task failed.");
            return None;
        }
    };
    let problems: Vec<String> = read.problems.iter().map(ToString::to_string).collect();
    if problems != *last_problems {
        for p in &problems {
            tracing::warn!(error = %p, "Cannot read Uninstall keys; their entries keep their last reading.");
        }
        *last_problems = problems;
    }
    // HKLM's own key always exists on Windows; failing to read it means the view is partial.
    if read
        .problems
        .iter()
        .any(|p| p.path.starts_with("HKEY_LOCAL_MACHINE"))
    {
        return None;
    }
    let parsed = parse::parse_registry_keys(
        read.keys
            .into_iter()
            .map(|k| (k.path, reg_values(k.values))),
    );
    for w in &parsed.warnings {
        tracing::debug!(warning = %w, "Odd Uninstall entry.");
    }
    let owners = tokio::task::spawn_blocking(crate::os::windows::profile_owners)
        .await
        .unwrap_or_default();
    let mut fresh = inventory_of(parsed.value, &owners);
    keep_unread_users(previous, &mut fresh, &read.users_read);
    Some(fresh)
}

/// What one pass over the Uninstall keys found.
pub struct UninstallRead {
    pub keys: Vec<RawKey>,
    /// Keys that exist but could not be read.
    pub problems: Vec<RegistryError>,
    /// The SIDs whose hives are loaded and whose Uninstall keys were read (or are absent).
    pub users_read: Vec<String>,
}

/// Every Uninstall subkey the probe looks at, and the keys that could not be read.
pub fn read_uninstall_keys() -> UninstallRead {
    let mut out = UninstallRead {
        keys: Vec::new(),
        problems: Vec::new(),
        users_read: Vec::new(),
    };
    for (access, shown_as) in [(0, UNINSTALL), (KEY_WOW64_32KEY, UNINSTALL_32)] {
        match registry::read_subkeys(Hive::LocalMachine, UNINSTALL, access, shown_as) {
            Ok(k) => out.keys.extend(k),
            Err(e) => out.problems.push(e),
        }
    }
    match registry::subkey_names(Hive::Users, "") {
        Ok(sids) => {
            // `<sid>_Classes` is the user's file associations, not a second user.
            for sid in sids.into_iter().filter(|s| !s.ends_with("_Classes")) {
                let path = format!(r"{sid}\{UNINSTALL}");
                match registry::read_subkeys(Hive::Users, &path, 0, &path) {
                    Ok(k) => {
                        out.keys.extend(k);
                        out.users_read.push(sid);
                    }
                    Err(e) => out.problems.push(e),
                }
            }
        }
        Err(e) => out.problems.push(e),
    }
    out
}

fn reg_values(values: Vec<(String, RawValue)>) -> Vec<(String, RegValue)> {
    values
        .into_iter()
        .map(|(n, v)| {
            let v = match v {
                RawValue::Str(s) => RegValue::Str(s),
                RawValue::Dword(d) => RegValue::Dword(d),
                RawValue::Binary(_) | RawValue::Other => RegValue::Other,
            };
            (n, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Uninstall-shaped key of this test's own under HKCU, removed when dropped.
    struct TestUninstall(String);

    impl Drop for TestUninstall {
        fn drop(&mut self) {
            let _ = windows_registry::CURRENT_USER.remove_tree(&self.0);
        }
    }

    /// Real keys written to the registry, read back and interpreted as the probe does.
    #[test]
    fn entries_written_to_the_registry_become_inventory_items() {
        let t = TestUninstall(format!(
            r"Software\CaretakerTest\uninstall-{}",
            std::process::id()
        ));
        let hkcu = windows_registry::CURRENT_USER;
        let app = hkcu.create(format!(r"{}\TestApp", t.0)).unwrap();
        app.set_string("DisplayName", "Test App").unwrap();
        app.set_string("DisplayVersion", "1.0").unwrap();
        let hidden = hkcu.create(format!(r"{}\Hidden", t.0)).unwrap();
        hidden.set_string("DisplayName", "Hidden runtime").unwrap();
        hidden.set_u32("SystemComponent", 1).unwrap();
        hkcu.create(format!(r"{}\NoName", t.0)).unwrap();

        // Shown as HKCU's real Uninstall key, which is what the interpreter recognises.
        let keys = registry::read_subkeys(Hive::CurrentUser, &t.0, 0, UNINSTALL).unwrap();
        assert_eq!(keys.len(), 3);
        let parsed =
            parse::parse_registry_keys(keys.into_iter().map(|k| (k.path, reg_values(k.values))));
        let inv = inventory_of(parsed.value, &[]);
        let items: Vec<(&str, &str, &str)> = inv
            .iter()
            .map(|(k, i)| (k.id.as_str(), i.name.as_str(), i.version.as_str()))
            .collect();
        assert_eq!(items, [("user/TestApp", "Test App", "1.0")]);
    }

    #[test]
    fn the_machine_keys_read_without_problems() {
        let read = read_uninstall_keys();
        assert!(
            read.problems
                .iter()
                .all(|p| !p.path.starts_with("HKEY_LOCAL_MACHINE")),
            "{:?}",
            read.problems
        );
    }
}
