//! The software probe's events, built from the inventory and its changes:
//! `software.inventory` (in parts), `software.installed|removed|upgraded` and
//! `executable.in_user_area`.

use super::home_index::Found;
use super::parse::{self, AptRequester};
use super::{Change, Inventory, SoftwareItem, SoftwareKey};
use crate::event::NewEvent;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

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
