//! A collector sharing its store with others (PostgreSQL): re-reading what they changed,
//! and saving the software states this one keeps.
use std::sync::Arc;

use caretaker_proto::policy::PolicyDocument;
use serde_json::Value;

use crate::classify::fleet::FleetCounts;
use crate::classify::fleet_store::{
    SOFTWARE_STATE, rebuild_software, replay_software, save_software_state,
};
use crate::rules::Rules;
use crate::store::StoreError;

use super::Collector;

impl Collector {
    /// Says that other collectors write this store too.
    pub fn set_shared(&self) {
        self.shared
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True when other collectors write this store too.
    pub fn is_shared(&self) -> bool {
        self.shared.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Re-reads from a shared store what other collectors may have changed (blocking): every
    /// device (new enrolments, last seen, counts), revocations, a newer policy, and the
    /// software counts of devices not streaming to this collector (those that are, this one
    /// folds itself).
    pub fn refresh_from_shared_store(&self) -> Result<(), StoreError> {
        let devices = self.devices.reload_all(self.store.as_ref())?;
        self.revoked.write().expect("revocation lock").extend(
            devices
                .iter()
                .filter(|d| d.revoked_at.is_some())
                .map(|d| d.id.clone()),
        );
        if let Some(stored) = self.store.current_policy()?
            && stored.version > self.policy().version
        {
            let doc = PolicyDocument::parse_lenient(&stored.policy.to_string()).unwrap_or_default();
            *self.rules.write().expect("rules lock") = Arc::new(Rules::new(&doc));
            tracing::info!(version = stored.version, changed_by = %stored.changed_by, "Policy changed by another collector");
            self.policy.send_replace(Arc::new(stored));
        }
        self.reload_privacy_settings()?;
        // Only devices streaming elsewhere that stored something this collector has not
        // folded: a device's highest stored sequence at or below what the counts went
        // through holds nothing new, so most refreshes read no events at all.
        let elsewhere: Vec<&str> = {
            let counts = self.software.lock().unwrap_or_else(|p| p.into_inner());
            devices
                .iter()
                .filter(|d| !self.is_connected(&d.id) && d.highest_seq > counts.through_seq(&d.id))
                .map(|d| d.id.as_str())
                .collect()
        };
        if elsewhere.is_empty() {
            return Ok(());
        }
        // Folded apart from the live counts, so the ack path's fold never waits on these reads.
        let mut fresh = FleetCounts::default();
        let mut saved: std::collections::HashMap<String, (u64, Value)> = self
            .store
            .derived(SOFTWARE_STATE)?
            .into_iter()
            .map(|(d, t, v)| (d, (t, v)))
            .collect();
        for &id in &elsewhere {
            if let Some((through, state)) = saved.remove(id)
                && let Err(why) = fresh.import_device(id, through, state)
            {
                tracing::warn!(device = %id, %why, "Saved software state unreadable; rebuilding it from events");
            }
            replay_software(&mut fresh, self.store.as_ref(), id, FleetCounts::fold)?;
        }
        let mut counts = self.software.lock().unwrap_or_else(|p| p.into_inner());
        for id in elsewhere {
            if self.is_connected(id) {
                continue; // connected meanwhile: its stream resynced it
            }
            counts.remove_device(id);
            if let Some(state) = fresh.export_device(id)
                && let Err(why) = counts.import_device(id, fresh.through_seq(id), state)
            {
                tracing::warn!(device = %id, %why, "Software counts of a device not refreshed");
            }
        }
        Ok(())
    }

    /// Saves the software state of every device whose counts this collector keeps, so a
    /// purge that follows removes no event the saved state does not cover (a save that failed
    /// after a group would leave it behind). On a shared store only the devices streaming here:
    /// another collector saves its own, and an older copy must not overwrite it. Returns how
    /// many were saved.
    pub fn save_software_states(&self) -> usize {
        let shared = self.is_shared();
        let mut saved = 0;
        for d in self.devices.snapshot() {
            if shared && !self.is_connected(&d.id) {
                continue;
            }
            // One device at a time, so the ack path's fold waits for one save at most.
            let counts = self.software.lock().unwrap_or_else(|p| p.into_inner());
            save_software_state(&counts, self.store.as_ref(), &d.id);
            saved += 1;
        }
        saved
    }

    /// Re-reads every device after a purge, whose removals changed their stored event counts.
    pub fn reload_devices(&self) -> Result<(), StoreError> {
        self.devices.reload_all(self.store.as_ref()).map(|_| ())
    }

    /// Before a device's stream is read on a shared store: its software counts are rebuilt
    /// from the store (blocking), since its last events may have reached another collector.
    /// An agent opens a stream only after its previous one ended, so the store then holds all.
    pub fn resync_device(&self, device: &str) {
        let mut counts = self.software.lock().unwrap_or_else(|p| p.into_inner());
        rebuild_software(&mut counts, self.store.as_ref(), device, FleetCounts::fold);
        self.devices.reload(self.store.as_ref(), device);
    }
}
