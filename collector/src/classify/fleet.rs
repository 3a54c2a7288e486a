//! Collector side: installation counts per product across the fleet, for licence
//! reconciliation. A fold over each device's `software.inventory` and change events, in sequence
//! order; each device's folded state can be saved and restored, so a restart need not re-read
//! every event.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A product as counted for licences: where it came from and its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProductKey {
    pub source: String,
    pub name: String,
}

/// One installation on a device: the same product can be installed more than once
/// (two architectures, two users' Flatpaks), and removing one must not uncount the device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Instance {
    product: ProductKey,
    arch: Option<String>,
    owner: Option<String>,
    path: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Device {
    installed: BTreeSet<Instance>,
    /// A multi-part inventory being received: applied only once complete.
    pending: Option<Pending>,
    /// Every event of this device up to this sequence has been folded in. Saved beside the
    /// state (the store keeps it with every derived record), not inside it.
    #[serde(skip)]
    through_seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    batch: String,
    parts: u64,
    received: BTreeSet<u64>,
    installed: BTreeSet<Instance>,
}

/// Why an event was not folded into the counts (it changed nothing).
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// A change event (`software.installed`, …) without a source or a name.
    #[error("{kind}: no source or name")]
    NoProduct { kind: String },
    #[error("software.inventory: part {part} of {parts}")]
    BadPart { part: u64, parts: u64 },
    #[error("software.inventory: no items")]
    NoItems,
    /// The fold itself panicked (`fleet_store::fold_guarded` caught it); the panic's message.
    #[error("the fold panicked: {0}")]
    Panicked(String),
}

/// A device's saved state that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SavedStateError(#[from] serde_json::Error);

/// Per-device installations, folded from events in each device's sequence order.
#[derive(Debug, Default)]
pub struct FleetCounts {
    devices: HashMap<String, Device>,
}

impl FleetCounts {
    /// Folds in event `seq` of `device` unless it was folded already (a resend), and records
    /// that the device is folded through `seq`. Events must come in each device's sequence
    /// order, as the store's writer commits them.
    pub fn fold(
        &mut self,
        device: &str,
        seq: u64,
        kind: &str,
        details: &Map<String, Value>,
    ) -> Result<(), FoldError> {
        let through = self.devices.get(device).map_or(0, |d| d.through_seq);
        if seq <= through {
            return Ok(());
        }
        let r = self.apply(device, kind, details);
        self.mark_through(device, seq);
        r
    }

    /// Records that `device` has been folded through `seq` (events in between, if any, did not
    /// concern software).
    pub fn mark_through(&mut self, device: &str, seq: u64) {
        let dev = self.devices.entry(device.to_string()).or_default();
        dev.through_seq = dev.through_seq.max(seq);
    }

    /// How far `device` has been folded (0: nothing yet).
    pub fn through_seq(&self, device: &str) -> u64 {
        self.devices.get(device).map_or(0, |d| d.through_seq)
    }

    /// `device`'s folded state, to save with `through_seq(device)`.
    pub fn export_device(&self, device: &str) -> Option<Value> {
        self.devices
            .get(device)
            .map(|d| serde_json::to_value(d).expect("fleet state serialises"))
    }

    /// Restores a saved state of `device`, folded through `through_seq`; a state that does not
    /// parse is refused (and the device's events are then re-read instead).
    pub fn import_device(
        &mut self,
        device: &str,
        through_seq: u64,
        state: Value,
    ) -> Result<(), SavedStateError> {
        let mut d: Device = serde_json::from_value(state)?;
        d.through_seq = through_seq;
        self.devices.insert(device.to_string(), d);
        Ok(())
    }

    /// Applies one event from `device`. Events of other kinds are ignored; malformed ones
    /// change nothing and return a reason.
    pub fn apply(
        &mut self,
        device: &str,
        kind: &str,
        details: &Map<String, Value>,
    ) -> Result<(), FoldError> {
        match kind {
            "software.inventory" => self.apply_inventory(device, details),
            "software.installed" | "software.upgraded" | "software.removed" => {
                let inst = instance_from_change(details).ok_or_else(|| FoldError::NoProduct {
                    kind: kind.to_string(),
                })?;
                let dev = self.devices.entry(device.to_string()).or_default();
                if kind == "software.removed" {
                    dev.installed.remove(&inst);
                } else {
                    dev.installed.insert(inst);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn apply_inventory(
        &mut self,
        device: &str,
        details: &Map<String, Value>,
    ) -> Result<(), FoldError> {
        let batch = details
            .get("batch")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let part = details.get("part").and_then(Value::as_u64).unwrap_or(1);
        let parts = details.get("parts").and_then(Value::as_u64).unwrap_or(1);
        if part == 0 || part > parts {
            return Err(FoldError::BadPart { part, parts });
        }
        let fields: Vec<&str> = details
            .get("fields")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_else(|| vec!["name", "version", "arch", "owner", "installed_at", "path"]);
        let col = |name: &str| fields.iter().position(|f| *f == name);
        let (name_i, arch_i, owner_i, path_i) = (
            col("name").unwrap_or(0),
            col("arch"),
            col("owner"),
            col("path"),
        );
        let items = details
            .get("items")
            .and_then(Value::as_object)
            .ok_or(FoldError::NoItems)?;
        let dev = self.devices.entry(device.to_string()).or_default();
        let pending = match &mut dev.pending {
            Some(p) if p.batch == batch && p.parts == parts => p,
            slot => slot.insert(Pending {
                batch,
                parts,
                received: BTreeSet::new(),
                installed: BTreeSet::new(),
            }),
        };
        for (source, rows) in items {
            for row in rows.as_array().into_iter().flatten() {
                let cell = |i: Option<usize>| {
                    i.and_then(|i| row.get(i))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                let Some(name) = cell(Some(name_i)) else {
                    continue;
                };
                pending.installed.insert(Instance {
                    product: ProductKey {
                        source: source.clone(),
                        name,
                    },
                    arch: cell(arch_i),
                    owner: cell(owner_i),
                    path: cell(path_i),
                });
            }
        }
        pending.received.insert(part);
        if pending.received.len() as u64 == pending.parts {
            let done = dev.pending.take().expect("pending set above");
            dev.installed = done.installed;
        }
        Ok(())
    }

    /// For each product, how many devices have at least one installation of it.
    pub fn device_counts(&self) -> BTreeMap<ProductKey, usize> {
        let mut counts = BTreeMap::new();
        for dev in self.devices.values() {
            let products: BTreeSet<&ProductKey> =
                dev.installed.iter().map(|i| &i.product).collect();
            for p in products {
                *counts.entry(p.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Devices having the product.
    pub fn count(&self, source: &str, name: &str) -> usize {
        self.devices
            .values()
            .filter(|d| {
                d.installed
                    .iter()
                    .any(|i| i.product.source == source && i.product.name == name)
            })
            .count()
    }

    /// Forgets a device (decommissioned).
    pub fn remove_device(&mut self, device: &str) {
        self.devices.remove(device);
    }
}

fn instance_from_change(d: &Map<String, Value>) -> Option<Instance> {
    let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    Some(Instance {
        product: ProductKey {
            source: s("source")?,
            name: s("name")?,
        },
        arch: s("architecture"),
        owner: s("owner"),
        path: s("path"),
    })
}
