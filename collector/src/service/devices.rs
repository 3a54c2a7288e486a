//! Which devices the collector holds in memory (as last stored) and which have an event
//! stream open now.
use std::sync::Arc;

use crate::store::{Device, DeviceBatch, Store, StoreError};

use super::Collector;

/// The devices as last stored.
#[derive(Default)]
pub struct DeviceCache {
    // Shared, so a request takes a snapshot of 10,000 devices by copying pointers, not maps.
    pub(super) map: std::sync::RwLock<std::collections::HashMap<String, Arc<Device>>>,
}

impl DeviceCache {
    pub(super) fn put(&self, d: Device) {
        self.map
            .write()
            .expect("device cache lock")
            .insert(d.id.clone(), Arc::new(d));
    }

    /// Every device, shared (cheap: no device is copied).
    pub fn snapshot(&self) -> Vec<Arc<Device>> {
        self.map
            .read()
            .expect("device cache lock")
            .values()
            .cloned()
            .collect()
    }

    /// Re-reads the devices a stored group touched.
    pub(super) fn refresh(&self, store: &dyn Store, group: &[DeviceBatch]) {
        let mut ids: Vec<&str> = group.iter().map(|b| b.device_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.reload(store, id);
        }
    }

    /// Re-reads one device from the store. The read happens under the cache's write lock, so
    /// two reloads racing (the writer's and a revocation's) land in the order they read, and
    /// an older record never replaces a newer one.
    pub(super) fn reload(&self, store: &dyn Store, id: &str) {
        let mut map = self.map.write().expect("device cache lock");
        match store.device(id) {
            Ok(Some(d)) => {
                map.insert(d.id.clone(), Arc::new(d));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(device = %id, error = %e, "Device not re-read after store"),
        }
    }

    /// Re-reads every device, replacing what was held (after the store was reopened from disk,
    /// so a record read before a failed write cannot outlive it). Under the write lock, like
    /// `reload`.
    pub(super) fn reload_all(&self, store: &dyn Store) -> Result<Vec<Device>, StoreError> {
        let mut map = self.map.write().expect("device cache lock");
        let devices = store.devices()?;
        *map = devices
            .iter()
            .map(|d| (d.id.clone(), Arc::new(d.clone())))
            .collect();
        Ok(devices)
    }

    /// A copy of every device (for callers that need owned records).
    pub fn all(&self) -> Vec<Device> {
        self.map
            .read()
            .expect("device cache lock")
            .values()
            .map(|d| Device::clone(d))
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Device> {
        self.map
            .read()
            .expect("device cache lock")
            .get(id)
            .map(|d| Device::clone(d))
    }
}

/// A device's open event streams.
pub(super) struct LiveStreams {
    open: u32,
    newest: tokio_util::sync::CancellationToken,
}

/// Marks a device connected while it lives.
pub struct StreamGuard {
    collector: Arc<Collector>,
    device: String,
    /// Fired when a newer stream from the same device opens.
    pub replaced: tokio_util::sync::CancellationToken,
    /// This stream's identity for the writer.
    pub id: crate::ingest::StreamId,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut c = self.collector.connected.lock().expect("connected lock");
        if let Some(live) = c.get_mut(&self.device) {
            live.open -= 1;
            if live.open == 0 {
                c.remove(&self.device);
                crate::metrics::metrics().devices_connected.dec();
            }
        }
    }
}

impl Collector {
    /// Every device as last stored (from memory).
    pub fn device_cache(&self) -> &DeviceCache {
        &self.devices
    }

    /// Records that `device` has an event stream open until the guard drops, and tells the
    /// device's previous stream, if one is still open, that it is replaced.
    ///
    /// One live stream per device: the store decides resends by the device's high-water mark,
    /// which is only right while one stream at a time sends in order. An agent opens a new
    /// stream only once it has given up on the old one, so an old one still open here is a
    /// dead connection not yet noticed: it finishes what it has in hand and ends.
    pub fn stream_opened(self: &Arc<Self>, device: &str) -> StreamGuard {
        let replaced = tokio_util::sync::CancellationToken::new();
        let mut connected = self.connected.lock().expect("connected lock");
        match connected.get_mut(device) {
            Some(live) => {
                live.open += 1;
                let older = std::mem::replace(&mut live.newest, replaced.clone());
                older.cancel();
            }
            None => {
                crate::metrics::metrics().devices_connected.inc();
                connected.insert(
                    device.to_string(),
                    LiveStreams {
                        open: 1,
                        newest: replaced.clone(),
                    },
                );
            }
        }
        StreamGuard {
            collector: self.clone(),
            device: device.to_string(),
            replaced,
            id: crate::ingest::StreamId::new(),
        }
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.connected
            .lock()
            .expect("connected lock")
            .contains_key(device)
    }
}
