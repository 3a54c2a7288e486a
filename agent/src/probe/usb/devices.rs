//! Devices coming and going: each USB device's decision on arrival, its authorisation made to
//! match, held devices let through when policy or user changes, and the reconciliation with
//! sysfs after lost uevents.
use serde_json::json;

use super::decide::{self, Decision, UserInfo, decide};
use super::{Hold, State, Tracked, UsbProbeInputs, parse};
use crate::os::linux::usb_sysfs as sysfs;
use caretaker_proto::policy::removable_media::RemovableMediaPolicy;

impl State {
    fn enforcing(&self, pol: &RemovableMediaPolicy) -> bool {
        self.cfg.manage_authorization && pol.enforce
    }

    /// Holds new devices on every root hub while enforcing; releases them otherwise.
    pub(super) fn apply_hub_default(&mut self, pol: &RemovableMediaPolicy) {
        if self.enforcing(pol) {
            for hub in sysfs::root_hubs(&self.cfg.sys_root) {
                if self.hubs_held.contains(&hub) {
                    continue;
                }
                match sysfs::set_authorized_default(&self.cfg.sys_root, &hub, false) {
                    Ok(()) => self.hubs_held.push(hub),
                    Err(e) => tracing::warn!("usb probe: cannot hold new devices on {hub}: {e}"),
                }
            }
        } else {
            for hub in std::mem::take(&mut self.hubs_held) {
                let _ = sysfs::set_authorized_default(&self.cfg.sys_root, &hub, true);
            }
        }
    }

    pub(super) fn user_info(&self, inputs: &UsbProbeInputs) -> Option<UserInfo> {
        let name = inputs.user.borrow().clone()?;
        let groups = std::fs::read_to_string(&self.cfg.etc_group)
            .map(|g| parse::groups_of(&name, &g))
            .unwrap_or_default();
        Some(UserInfo { name, groups })
    }

    /// Reconciles with sysfs: reports devices that came or went while uevents were lost.
    pub(super) async fn resync(&mut self, pol: &RemovableMediaPolicy, inputs: &UsbProbeInputs) {
        let present = sysfs::enumerate_usb_devices(&self.cfg.sys_root);
        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|k| !present.contains(k))
            .cloned()
            .collect();
        for dp in gone {
            if let Some(t) = self.devices.remove(&dp) {
                self.emit("usb.removed", self.current_user(), t.facts.details())
                    .await;
            }
        }
        for dp in present {
            self.device_added(&dp, false, pol, inputs).await;
        }
        let blocks = sysfs::enumerate_block(&self.cfg.sys_root);
        self.blocks.retain(|_, b| blocks.contains(&b.devpath));
        for dp in blocks {
            if !self.blocks.values().any(|b| b.devpath == dp) {
                self.block_added(&dp).await;
            }
        }
    }

    pub(super) async fn device_added(
        &mut self,
        devpath: &str,
        at_start: bool,
        pol: &RemovableMediaPolicy,
        inputs: &UsbProbeInputs,
    ) {
        let (facts, warnings) =
            parse::usb_device_facts(&sysfs::read_usb_device(&self.cfg.sys_root, devpath));
        for w in warnings {
            tracing::debug!("usb probe: {w}");
        }
        if facts.is_root_hub() {
            // A controller arriving later (a dock): hold its bus too.
            self.apply_hub_default(pol);
            return;
        }
        if self.devices.contains_key(devpath) {
            return;
        }
        let user = self.user_info(inputs);
        let decision = decide(&facts, user.as_ref(), pol, chrono::Utc::now());
        // What the collector needs to route it: storage or not, and whose rules applied.
        let av = inputs.antivirus_problem.borrow().clone();
        let d = decide::inserted_details(&facts, &decision, user.as_ref(), pol, at_start, av);
        self.emit("usb.inserted", user.as_ref().map(|u| u.name.clone()), d)
            .await;
        let mut t = Tracked {
            facts,
            decision: decision.clone(),
            hold: Hold::Held,
        };
        self.enact(&mut t, user.map(|u| u.name)).await;
        self.devices.insert(devpath.to_owned(), t);
    }

    /// Makes the device's authorisation match its decision.
    async fn enact(&self, t: &mut Tracked, user: Option<String>) {
        let authorized = t.facts.authorized.unwrap_or(true);
        match &t.decision {
            Decision::Allow | Decision::AllowAfterScan => {
                if !authorized && self.cfg.manage_authorization {
                    match sysfs::set_authorized(&self.cfg.sys_root, &t.facts.devpath, true) {
                        Ok(()) => t.facts.authorized = Some(true),
                        Err(e) => {
                            tracing::warn!("usb probe: cannot authorise {}: {e}", t.facts.devpath)
                        }
                    }
                }
                t.hold = Hold::Through;
            }
            Decision::Block(reason) => {
                if authorized && self.cfg.manage_authorization {
                    match sysfs::set_authorized(&self.cfg.sys_root, &t.facts.devpath, false) {
                        Ok(()) => t.facts.authorized = Some(false),
                        Err(e) => {
                            tracing::warn!("usb probe: cannot detach {}: {e}", t.facts.devpath)
                        }
                    }
                }
                t.hold = Hold::Held;
                let mut d = t.facts.details();
                d.insert("reason".into(), json!(reason));
                d.insert(
                    "enforced".into(),
                    json!(self.cfg.manage_authorization && t.facts.authorized == Some(false)),
                );
                self.emit("usb.blocked", user, d).await;
            }
        }
    }

    /// Policy or user changed: let held devices through if now permitted (no re-plug needed).
    pub(super) async fn reevaluate(&mut self, pol: &RemovableMediaPolicy, inputs: &UsbProbeInputs) {
        let user = self.user_info(inputs);
        let held: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, t)| t.hold == Hold::Held)
            .map(|(k, _)| k.clone())
            .collect();
        for dp in held {
            let Some(mut t) = self.devices.remove(&dp) else {
                continue;
            };
            let decision = decide(&t.facts, user.as_ref(), pol, chrono::Utc::now());
            if !matches!(decision, Decision::Block(_)) {
                t.decision = decision;
                self.enact(&mut t, user.as_ref().map(|u| u.name.clone()))
                    .await;
            }
            self.devices.insert(dp, t);
        }
    }
}
