//! The removable-media probe on Windows: USB storage devices as Windows' Plug and Play
//! registry lists them (`pnp.rs`), judged by the policy decision Linux uses, reported as the
//! same `usb.inserted` / `usb.blocked` / `usb.removed` events, and blocked by removing the
//! device with Windows' own `pnputil /remove-device` (it comes back, and is judged again, when
//! it is plugged in again).
//!
//! Storage the policy allows after a scan is scanned with Defender's `MpCmdRun` on the drive
//! Windows gave it (`scan.rs`); malware, or a scan that does not complete, removes it. Unlike
//! Linux, the stick is not held read-only while the scan runs.
//!
//! The list is read every second (device notifications need a window or a service control
//! handler's device events, which `windows-service` does not pass on, and the crate forbids
//! `unsafe`); a read costs a few registry calls. The user at the console is the desktop
//! shell's owner (`os::windows::console_user`), matched against the policy's pupil name
//! patterns; Windows group membership is not read yet, so a policy that tells pupils by group
//! treats everyone as a pupil (the stricter audience). Other USB devices (keyboards, phones)
//! are not listed.

#[path = "../usb/decide.rs"]
pub mod decide;
#[path = "../usb/inputs.rs"]
mod inputs;
pub mod pnp;
pub mod scan;
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

/// How long Windows may take to give a new stick a drive letter.
const LETTER_WAIT: Duration = Duration::from_secs(15);
/// How long a scan of a whole stick may take before it counts as incomplete.
const SCAN_LIMIT: Duration = Duration::from_secs(30 * 60);

/// What an arrival leads to.
enum Arrival {
    /// Nothing more (allowed, or blocked: `true` if the agent removed it).
    Done(bool),
    /// Allowed once a scan finds it clean.
    Scan,
    /// The agent is stopping.
    Stopping,
}

/// A finished scan of one stick.
struct Scanned {
    id: String,
    letter: Option<String>,
    outcome: scan::Outcome,
    duration_ms: u128,
}

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
    let mut scans: tokio::task::JoinSet<Scanned> = tokio::task::JoinSet::new();
    loop {
        crate::probe::liveness::beat();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = crate::probe::liveness::idle() => continue,
            Some(done) = scans.join_next(), if !scans.is_empty() => {
                let Ok(done) = done else { continue };
                let user = current_user(&config).await;
                if !scanned(&config, &mut devices, done, user, &sink).await {
                    return;
                }
                continue;
            }
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
        let gone: Vec<String> = devices
            .keys()
            .filter(|id| !present.contains(id))
            .cloned()
            .collect();
        if gone.is_empty() && present.iter().all(|id| devices.contains_key(id)) {
            at_start = false;
            continue;
        }
        let user = current_user(&config).await.map(|name| UserInfo {
            name,
            groups: Vec::new(),
        });
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
                    Arrival::Done(removed) => removed,
                    Arrival::Scan => {
                        scans.spawn(scan_stick(id.clone(), facts.serial.clone()));
                        false
                    }
                    Arrival::Stopping => return,
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

/// Who is at the console: as the rest of the agent says, else the desktop shell's owner.
async fn current_user(config: &UsbProbeConfig) -> Option<String> {
    if let Some(u) = config.inputs.user.borrow().clone() {
        return Some(u);
    }
    tokio::task::spawn_blocking(crate::os::windows::console_user)
        .await
        .ok()
        .flatten()
}

/// Reports a device that arrived and enacts the decision.
async fn arrived(
    config: &UsbProbeConfig,
    pol: &RemovableMediaPolicy,
    facts: &UsbDeviceFacts,
    user: Option<&UserInfo>,
    at_start: bool,
    sink: &EventSink,
) -> Arrival {
    let decision = decide::decide(facts, user, pol, chrono::Utc::now());
    let av = config.inputs.antivirus_problem.borrow().clone();
    let details = decide::inserted_details(facts, &decision, user, pol, at_start, av);
    let name = user.map(|u| u.name.clone());
    if !sink
        .emit(NewEvent::now("usb.inserted", name.clone(), details))
        .await
    {
        return Arrival::Stopping;
    }
    match &decision {
        Decision::Allow => Arrival::Done(false),
        Decision::AllowAfterScan => Arrival::Scan,
        Decision::Block(r) => match block(config, facts, r, name, sink).await {
            Some(removed) => Arrival::Done(removed),
            None => Arrival::Stopping,
        },
    }
}

/// Removes the device (when the configuration allows) and reports `usb.blocked`; `Some(true)`
/// if it was removed, `None` if the agent is stopping.
async fn block(
    config: &UsbProbeConfig,
    facts: &UsbDeviceFacts,
    reason: &str,
    name: Option<String>,
    sink: &EventSink,
) -> Option<bool> {
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

/// Finds the stick's drive and scans it.
async fn scan_stick(id: String, serial: Option<String>) -> Scanned {
    let started = std::time::Instant::now();
    let mut letter = None;
    if let Some(serial) = &serial {
        let deadline = tokio::time::Instant::now() + LETTER_WAIT;
        while letter.is_none() && tokio::time::Instant::now() < deadline {
            let serial = serial.clone();
            letter = tokio::task::spawn_blocking(move || drive_of(&serial))
                .await
                .ok()
                .flatten();
            if letter.is_none() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let outcome = match (&serial, &letter) {
        (None, _) => scan::Outcome::Incomplete(
            "the stick has no serial number, so its drive cannot be found".into(),
        ),
        (Some(_), None) => scan::Outcome::Incomplete(format!(
            "no drive letter appeared for the stick within {} s",
            LETTER_WAIT.as_secs()
        )),
        (Some(_), Some(drive)) => {
            match crate::os::windows::defender::scan_drive(drive, SCAN_LIMIT).await {
                Ok((code, out)) => scan::outcome(code, &out),
                Err(why) => scan::Outcome::Incomplete(why),
            }
        }
    };
    Scanned {
        id,
        letter,
        outcome,
        duration_ms: started.elapsed().as_millis(),
    }
}

/// The drive Windows gave the stick with this serial, if it is there now.
fn drive_of(serial: &str) -> Option<String> {
    let values = registry::read_key_values(Hive::LocalMachine, scan::MOUNTED_DEVICES).ok()?;
    let binary: Vec<(String, Vec<u8>)> = values
        .into_iter()
        .filter_map(|(name, v)| match v {
            RawValue::Binary(b) => Some((name, b)),
            _ => None,
        })
        .collect();
    scan::letters_of(&binary, serial)
        .into_iter()
        .find(|l| std::fs::metadata(format!(r"{l}\")).is_ok())
}

/// Reports a finished scan and removes the stick unless it was clean; `false` if the agent
/// is stopping.
async fn scanned(
    config: &UsbProbeConfig,
    devices: &mut BTreeMap<String, Tracked>,
    done: Scanned,
    user: Option<String>,
    sink: &EventSink,
) -> bool {
    let Some(t) = devices.get_mut(&done.id) else {
        return true; // unplugged while it was scanned
    };
    let mut d = t.facts.details();
    d.insert("block".into(), json!(done.letter));
    d.insert("result".into(), json!(done.outcome.result()));
    d.insert("duration_ms".into(), json!(done.duration_ms));
    let errors: Vec<&str> = match &done.outcome {
        scan::Outcome::Incomplete(why) => vec![why.as_str()],
        _ => Vec::new(),
    };
    d.insert("errors".into(), json!(errors));
    if !sink
        .emit(NewEvent::now("media.scanned", user.clone(), d))
        .await
    {
        return false;
    }
    let reason = match &done.outcome {
        scan::Outcome::Clean => return true,
        scan::Outcome::Infected(names) => {
            let mut d = t.facts.details();
            d.insert("block".into(), json!(done.letter));
            d.insert("detections".into(), json!(names));
            let action = if config.manage_authorization {
                "detached"
            } else {
                "reported"
            };
            d.insert("action".into(), json!(action));
            if !sink
                .emit(NewEvent::now("media.infected", user.clone(), d))
                .await
            {
                return false;
            }
            "malware was found on the stick".to_string()
        }
        scan::Outcome::Incomplete(why) => format!(
            "the virus scan did not complete ({why}): blocked rather than let through unscanned"
        ),
    };
    let facts = t.facts.clone();
    match block(config, &facts, &reason, user, sink).await {
        Some(removed) => {
            t.removed_by_agent = removed;
            true
        }
        None => false,
    }
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
