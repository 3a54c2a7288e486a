//! The software inventory and its diff: what is installed, keyed by source, and what a
//! fresh reading of one source changed (installed, removed, upgraded).

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Where an installed program came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Dpkg,
    Snap,
    Flatpak,
    AppImage,
    /// Windows' Uninstall registry entries (what "Apps & features" lists).
    Windows,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dpkg => "dpkg",
            Source::Snap => "snap",
            Source::Flatpak => "flatpak",
            Source::AppImage => "appimage",
            Source::Windows => "windows",
        }
    }
}

/// Identity of one installation: unique within its source (`name:arch` for dpkg,
/// `system/<id>` or `user/<user>/<id>` for Flatpak, `<user>/<path>` for AppImages,
/// `<scope>/<key>` or `user/<sid>/<key>` for Windows' Uninstall entries).
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
