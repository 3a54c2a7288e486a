//! The removable-media probe on Windows: USB storage devices as Windows' Plug and Play
//! registry lists them (`pnp.rs`), judged by the policy decision Linux uses, reported as the
//! same `usb.inserted` / `usb.blocked` / `usb.removed` events, and blocked by removing the
//! device with Windows' own `pnputil /remove-device` (it comes back, and is judged again, when
//! it is plugged in again).
//!
//! The list is read every second (device notifications need a window or a service control
//! handler's device events, which `windows-service` does not pass on, and the crate forbids
//! `unsafe`); a read costs a few registry calls. Not yet: scanning (Defender's `MpCmdRun`), so
//! storage the policy allows after a scan is blocked rather than let through unscanned; the
//! console user (pupil rules apply to everyone, the stricter audience); other USB devices
//! (keyboards, phones) are not listed.

#[path = "../usb/decide.rs"]
pub mod decide;
#[path = "../usb/inputs.rs"]
mod inputs;
pub mod pnp;
pub use inputs::UsbProbeInputs;

/// The clamd address type the config names (`[usb] clamd_tcp`).
pub mod clamd {
    pub use crate::probe::antivirus::clamd::ClamdAddr;
}

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use caretaker_proto::policy::PolicyDocument;
use caretaker_proto::policy::removable_media::RemovableMediaPolicy;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::event::{EventSink, NewEvent};
use crate::os::registry::{self, Hive, RawValue};
use clamd::ClamdAddr;
use decide::{Decision, UsbDeviceFacts, UserInfo};

/// What the config file can say about the probe; kept so one `agent.toml` reads on both OSes.
#[derive(Debug, Clone)]
pub struct UsbProbeConfig {
    /// None: no scanning.
    pub clamd: Option<ClamdAddr>,
    /// False: report only, whatever the policy.
    pub manage_authorization: bool,
    /// Linux mount options; unused on Windows.
    pub mount_options: String,
    /// Live inputs from the rest of the agent.
    pub inputs: UsbProbeInputs,
}

impl Default for UsbProbeConfig {
    fn default() -> Self {
        Self {
            clamd: None,
            manage_authorization: true,
            mount_options: String::new(),
            inputs: UsbProbeInputs::default(),
        }
    }
}

/// How often the list of USB storage devices is read.
const POLL: Duration = Duration::from_secs(1);

/// Why a device the policy lets through after a scan is blocked on Windows.
const NO_SCAN: &str = "USB storage is allowed only after a virus scan, and scanning is not built for Windows yet: blocked rather than let through unscanned";

/// A device being followed.
struct Tracked {
    facts: UsbDeviceFacts,
    /// Removed by the agent: its going is not an unplugging.
    removed_by_agent: bool,
}

/// Entry point the agent spawns.
pub async fn run(
    config: UsbProbeConfig,
    mut policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let mut devices: BTreeMap<String, Tracked> = BTreeMap::new();
    let mut at_start = true;
    let mut last_problem: Option<String> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        crate::probe::liveness::beat();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = crate::probe::liveness::idle() => continue,
            _ = tick.tick() => {}
        }
        let read = tokio::task::spawn_blocking(read_present).await;
        let present = match read {
            Ok(Ok(p)) => {
                last_problem = None;
                p
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                if last_problem.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "Cannot list USB storage devices");
                    last_problem = Some(e);
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "USB listing task failed");
                continue;
            }
        };
        let user = config.inputs.user.borrow().clone().map(|name| UserInfo {
            name,
            groups: Vec::new(),
        });
        let gone: Vec<String> = devices
            .keys()
            .filter(|id| !present.contains(id))
            .cloned()
            .collect();
        for id in gone {
            let Some(t) = devices.remove(&id) else {
                continue;
            };
            if t.removed_by_agent {
                continue;
            }
            let event = NewEvent::now(
                "usb.removed",
                user.as_ref().map(|u| u.name.clone()),
                t.facts.details(),
            );
            if !sink.emit(event).await {
                return;
            }
        }
        let pol = policy.borrow_and_update().removable_media.clone();
        for id in present {
            if devices.contains_key(&id) {
                continue;
            }
            let Some(facts) = tokio::task::spawn_blocking({
                let id = id.clone();
                move || device_facts(&id)
            })
            .await
            .ok()
            .flatten() else {
                continue;
            };
            let removed_by_agent =
                match arrived(&config, &pol, &facts, user.as_ref(), at_start, &sink).await {
                    Some(removed) => removed,
                    None => return,
                };
            devices.insert(
                id,
                Tracked {
                    facts,
                    removed_by_agent,
                },
            );
        }
        at_start = false;
    }
}

/// Reports a device that arrived and enacts the decision; `Some(true)` if the agent removed
/// it, `None` if the agent is stopping.
async fn arrived(
    config: &UsbProbeConfig,
    pol: &RemovableMediaPolicy,
    facts: &UsbDeviceFacts,
    user: Option<&UserInfo>,
    at_start: bool,
    sink: &EventSink,
) -> Option<bool> {
    let decision = decide::decide(facts, user, pol, chrono::Utc::now());
    let av = config.inputs.antivirus_problem.borrow().clone();
    let details = decide::inserted_details(facts, &decision, user, pol, at_start, av);
    let name = user.map(|u| u.name.clone());
    if !sink
        .emit(NewEvent::now("usb.inserted", name.clone(), details))
        .await
    {
        return None;
    }
    let reason = match &decision {
        Decision::Allow => return Some(false),
        Decision::AllowAfterScan => NO_SCAN.to_string(),
        Decision::Block(r) => r.clone(),
    };
    let removal = if config.manage_authorization {
        let id = facts.devpath.clone();
        tokio::task::spawn_blocking(move || remove_device(&id))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    } else {
        Err("the agent's configuration leaves devices alone (manage_authorization = false)".into())
    };
    let mut d = facts.details();
    let enforced = removal.is_ok();
    match removal {
        Ok(()) => d.insert("reason".into(), json!(reason)),
        Err(why) => d.insert(
            "reason".into(),
            json!(format!("{reason}; not removed: {why}")),
        ),
    };
    d.insert("enforced".into(), json!(enforced));
    if !sink.emit(NewEvent::now("usb.blocked", name, d)).await {
        return None;
    }
    Some(enforced)
}

/// The USB storage devices present now, by instance id.
fn read_present() -> Result<Vec<String>, registry::RegistryError> {
    let values = registry::read_key_values(Hive::LocalMachine, pnp::USBSTOR_ENUM)?;
    let strings: Vec<(String, Option<String>)> = values
        .into_iter()
        .map(|(name, v)| match v {
            RawValue::Str(s) => (name, Some(s)),
            _ => (name, None),
        })
        .collect();
    Ok(pnp::present(&strings))
}

/// What the registry says of one device; `None` if its id is not a USB device's.
fn device_facts(id: &str) -> Option<UsbDeviceFacts> {
    let usb = pnp::parse_instance_id(id)?;
    let location = registry::read_string(
        windows_registry::LOCAL_MACHINE,
        &format!(r"{}\{id}", pnp::ENUM),
        "LocationInformation",
    )
    .ok()
    .flatten();
    let names = match &usb.serial {
        Some(serial) => pnp::disk_names(&usbstor_disks(), serial),
        None => (None, None),
    };
    Some(pnp::facts(id, &usb, location, names))
}

/// `Enum\USBSTOR`'s disk keys with their instances.
fn usbstor_disks() -> Vec<(String, Vec<String>)> {
    let root = format!(r"{}\USBSTOR", pnp::ENUM);
    registry::subkey_names(Hive::LocalMachine, &root)
        .unwrap_or_default()
        .into_iter()
        .map(|disk| {
            let instances = registry::subkey_names(Hive::LocalMachine, &format!(r"{root}\{disk}"))
                .unwrap_or_default();
            (disk, instances)
        })
        .collect()
}

/// `pnputil /remove-device ID`: Windows stops and removes the device until it is plugged in
/// again.
fn remove_device(id: &str) -> Result<(), String> {
    let pnputil = crate::os::windows::system32().join("pnputil.exe");
    let out = std::process::Command::new(&pnputil)
        .args(["/remove-device", id])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", pnputil.display()))?;
    if out.status.success() {
        tracing::info!(device = %id, "Removed a USB storage device under the policy");
        Ok(())
    } else {
        let said = String::from_utf8_lossy(&out.stdout);
        Err(format!(
            "pnputil failed ({}): {}",
            out.status,
            said.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
        ))
    }
}
