//! The software probe on Windows: the Uninstall registry keys (HKLM's 64- and 32-bit views and
//! each loaded user's `HKEY_USERS\<sid>`) read through `os::registry`, interpreted by
//! `parse::windows`, kept as the `windows` source of the same inventory Linux keeps, and sent
//! as the same events (`software.inventory` at start, then installed/removed/upgraded).
//!
//! Changes are found by re-reading every `registry_poll` (5 s): `RegNotifyChangeKeyValue`
//! has no safe wrapper and the crate forbids `unsafe`, and a read of a few hundred small keys
//! costs milliseconds. Executables in users' profiles are a later slice.

use std::sync::Arc;

use caretaker_proto::policy::PolicyDocument;
use chrono::{NaiveDate, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::parse::{self, RegValue, WindowsProgram};
use super::{
    Inventory, SoftwareItem, SoftwareKey, SoftwareProbeConfig, Source, change_event,
    inventory_details, replace_source,
};
use crate::event::{EventSink, NewEvent};
use crate::os::registry::{self, Hive, KEY_WOW64_32KEY, RawKey, RawValue, RegistryError};

/// The Uninstall key, below HKLM and below each user's hive.
pub const UNINSTALL: &str = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";
const UNINSTALL_32: &str = r"SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall";
/// Where Windows records each SID's profile folder (its last component names the user).
const PROFILE_LIST: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList";

/// Runs the probe until `shutdown`.
pub async fn run(
    config: SoftwareProbeConfig,
    _policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let mut inventory = Inventory::new();
    let Some(fresh) = read().await else {
        return;
    };
    replace_source(&mut inventory, Source::Windows, fresh);
    let batch = Utc::now().to_rfc3339();
    for details in inventory_details(&inventory, &batch, config.max_items_per_event) {
        if !sink
            .emit(NewEvent::now("software.inventory", None, details))
            .await
        {
            return;
        }
    }
    let mut tick = tokio::time::interval(config.registry_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        crate::probe::liveness::beat();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = crate::probe::liveness::idle() => continue,
            _ = tick.tick() => {}
        }
        let Some(fresh) = read().await else {
            continue;
        };
        for change in replace_source(&mut inventory, Source::Windows, fresh) {
            if !sink.emit(change_event(&change, None)).await {
                return;
            }
        }
    }
}

/// One full read, off the async threads. `None` if nothing could be read at all (the
/// inventory is then kept as it was rather than reported as all removed).
async fn read() -> Option<Inventory> {
    let result = tokio::task::spawn_blocking(read_uninstall_keys).await;
    let (keys, problems) = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Software scan task failed.");
            return None;
        }
    };
    // HKLM's own key always exists on Windows; failing to read it means the view is partial.
    if let Some(p) = problems
        .iter()
        .find(|p| p.path.starts_with("HKEY_LOCAL_MACHINE"))
    {
        tracing::warn!(error = %p, "Cannot read the machine's Uninstall keys; keeping the last inventory.");
        return None;
    }
    for p in &problems {
        tracing::warn!(error = %p, "Cannot read a user's Uninstall keys.");
    }
    let parsed =
        parse::parse_registry_keys(keys.into_iter().map(|k| (k.path, reg_values(k.values))));
    for w in &parsed.warnings {
        tracing::debug!(warning = %w, "Odd Uninstall entry.");
    }
    let owners = tokio::task::spawn_blocking(profile_owners)
        .await
        .unwrap_or_default();
    Some(inventory_of(parsed.value, &owners))
}

/// Every Uninstall subkey the probe looks at, and the keys that could not be read.
pub fn read_uninstall_keys() -> (Vec<RawKey>, Vec<RegistryError>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let mut add = |r: Result<Vec<RawKey>, RegistryError>| match r {
        Ok(k) => keys.extend(k),
        Err(e) => problems.push(e),
    };
    add(registry::read_subkeys(
        Hive::LocalMachine,
        UNINSTALL,
        0,
        UNINSTALL,
    ));
    add(registry::read_subkeys(
        Hive::LocalMachine,
        UNINSTALL,
        KEY_WOW64_32KEY,
        UNINSTALL_32,
    ));
    match registry::subkey_names(Hive::Users, "") {
        Ok(sids) => {
            // `<sid>_Classes` is the user's file associations, not a second user.
            for sid in sids.iter().filter(|s| !s.ends_with("_Classes")) {
                let path = format!(r"{sid}\{UNINSTALL}");
                add(registry::read_subkeys(Hive::Users, &path, 0, &path));
            }
        }
        Err(e) => problems.push(e),
    }
    (keys, problems)
}

fn reg_values(values: Vec<(String, RawValue)>) -> Vec<(String, RegValue)> {
    values
        .into_iter()
        .map(|(n, v)| {
            let v = match v {
                RawValue::Str(s) => RegValue::Str(s),
                RawValue::Dword(d) => RegValue::Dword(d),
                RawValue::Other => RegValue::Other,
            };
            (n, v)
        })
        .collect()
}

/// SID → user name, from each profile's folder (`C:\Users\alice` → `alice`).
fn profile_owners() -> Vec<(String, String)> {
    let Ok(sids) = registry::subkey_names(Hive::LocalMachine, PROFILE_LIST) else {
        return Vec::new();
    };
    sids.into_iter()
        .filter_map(|sid| {
            let path = format!(r"{PROFILE_LIST}\{sid}");
            let folder =
                registry::read_string(windows_registry::LOCAL_MACHINE, &path, "ProfileImagePath")
                    .ok()??;
            let name = folder.rsplit(['\\', '/']).next()?.to_string();
            (!name.is_empty()).then_some((sid, name))
        })
        .collect()
}

/// The inventory of the `windows` source. Per-user entries belong to the profile's user
/// (the SID where the profile is unknown); the 32-bit view is marked `x86`.
pub fn inventory_of(programs: Vec<WindowsProgram>, owners: &[(String, String)]) -> Inventory {
    programs
        .into_iter()
        .map(|p| {
            let owner = p.user_sid.as_ref().map(|sid| {
                owners
                    .iter()
                    .find(|(s, _)| s.eq_ignore_ascii_case(sid))
                    .map_or_else(|| sid.clone(), |(_, n)| n.clone())
            });
            let id = match &p.user_sid {
                Some(sid) => format!("user/{sid}/{}", p.key),
                None => format!("{}/{}", p.scope, p.key),
            };
            let installed_at = p
                .install_date
                .as_deref()
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc());
            let item = SoftwareItem {
                name: p.display_name,
                version: p.display_version.unwrap_or_default(),
                arch: (p.scope == "machine_32bit").then(|| "x86".to_string()),
                owner,
                path: None,
                installed_at,
            };
            (
                SoftwareKey {
                    source: Source::Windows,
                    id,
                },
                item,
            )
        })
        .collect()
}
