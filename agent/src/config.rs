//! Agent configuration: a TOML file read into `RawConfig`, then validated into `Config` before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::probe::antivirus::AntivirusProbeConfig;
use crate::probe::facts::FactsProbeConfig;
use crate::probe::screen_lock::ScreenLockConfig;
use crate::probe::software::SoftwareProbeConfig;
use crate::probe::usb::UsbProbeConfig;
use crate::probe::usb::clamd::ClamdAddr;
use crate::state::default_state_dir;

/// Default spool bound: about a month of a busy laptop's events.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 100 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// The file as written by the technician.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    /// Overrides the collector address recorded at enrolment.
    collector: Option<String>,
    #[serde(default = "default_heartbeat")]
    heartbeat_interval: String,
    #[serde(default = "default_spool_max")]
    spool_max_bytes: u64,
    /// Replaces every probe's own longest expected gap before it counts as stalled.
    probe_stall_after: Option<String>,
    #[serde(default)]
    antivirus: RawAntivirus,
    #[serde(default)]
    software: RawSoftware,
    #[serde(default)]
    screen_lock: RawScreenLock,
    #[serde(default)]
    usb: RawUsb,
    #[serde(default)]
    facts: RawDeviceFacts,
}

/// `[facts]`: the device's asset facts (model, OS, CPU, memory, disk, battery health).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDeviceFacts {
    enabled: bool,
    /// How often to re-read; an event is sent only when something changed meaningfully.
    interval: String,
    /// Where DMI and battery attributes are read (tests, containers).
    sys_root: PathBuf,
}

impl Default for RawDeviceFacts {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: "15m".into(),
            sys_root: FactsProbeConfig::default().sys_root,
        }
    }
}

/// `[usb]`: removable media. The policy decides what is allowed; this says how to act on it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUsb {
    enabled: bool,
    /// clamd's local socket for scanning media ...
    clamd_socket: Option<PathBuf>,
    /// ... or its TCP address (HOST:PORT), which wins if both are set.
    clamd_tcp: Option<String>,
    /// Hold new USB devices until decided (needs root). False: report only, whatever the policy.
    manage_authorization: bool,
    /// Extra mount options for scanning (e.g. `iocharset=iso8859-1` without nls_utf8).
    mount_options: String,
}

impl Default for RawUsb {
    fn default() -> Self {
        Self {
            enabled: true,
            clamd_socket: Some("/var/run/clamav/clamd.ctl".into()),
            clamd_tcp: None,
            manage_authorization: true,
            mount_options: String::new(),
        }
    }
}

/// `[screen_lock]`: how to reach logind (the policy says when to lock).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScreenLock {
    enabled: bool,
    /// A D-Bus address for logind instead of the system bus (tests, containers).
    system_bus_address: Option<String>,
}

impl Default for RawScreenLock {
    fn default() -> Self {
        Self {
            enabled: true,
            system_bus_address: None,
        }
    }
}

/// `[software]`: where installed software is recorded (roots overridable for tests and odd layouts).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSoftware {
    enabled: bool,
    dpkg_dir: PathBuf,
    apt_history_log: PathBuf,
    flatpak_system_dir: PathBuf,
    home_root: PathBuf,
    /// Windows: how often users' profiles are walked for new programs.
    profile_poll: String,
}

impl Default for RawSoftware {
    fn default() -> Self {
        let d = SoftwareProbeConfig::default();
        Self {
            enabled: true,
            dpkg_dir: d.dpkg_dir,
            apt_history_log: d.apt_history_log,
            flatpak_system_dir: d.flatpak_system_dir,
            home_root: d.home_root,
            profile_poll: humantime::format_duration(d.profile_poll).to_string(),
        }
    }
}

/// `[antivirus]`: where this machine's antivirus keeps its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAntivirus {
    enabled: bool,
    database_dir: PathBuf,
    clamd_socket: PathBuf,
    freshclam_log: PathBuf,
}

impl Default for RawAntivirus {
    fn default() -> Self {
        let d = AntivirusProbeConfig::default();
        Self {
            enabled: true,
            database_dir: d.database_dir,
            clamd_socket: d.clamd_socket,
            freshclam_log: d.freshclam_log,
        }
    }
}

fn default_heartbeat() -> String {
    "5m".into()
}

fn default_spool_max() -> u64 {
    DEFAULT_SPOOL_MAX_BYTES
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub collector: Option<String>,
    pub heartbeat_interval: Duration,
    pub spool_max_bytes: u64,
    /// Overrides each probe's longest expected gap (`probe::liveness`); None: the probe's own.
    pub probe_stall_after: Option<Duration>,
    /// `None` when the antivirus probe is turned off.
    pub antivirus: Option<AntivirusProbeConfig>,
    /// `None` when the software probe is turned off.
    pub software: Option<SoftwareProbeConfig>,
    /// `None` when the screen-lock probe is turned off.
    pub screen_lock: Option<ScreenLockConfig>,
    /// `None` when the USB probe is turned off.
    pub usb: Option<UsbProbeConfig>,
    /// `None` when the device-facts probe is turned off.
    pub facts: Option<FactsProbeConfig>,
}

impl Config {
    /// Reads `path` (if given) and applies a `--state-dir` override.
    pub fn load(path: Option<&Path>, state_dir: Option<PathBuf>) -> Result<Self, ConfigError> {
        let raw = match path {
            None => toml::from_str::<RawConfig>("").expect("empty config parses"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?
            }
        };
        Self::validate(raw, state_dir)
    }

    fn validate(raw: RawConfig, state_dir: Option<PathBuf>) -> Result<Self, ConfigError> {
        let heartbeat_interval = parse_interval("heartbeat_interval", &raw.heartbeat_interval)?;
        if raw.spool_max_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid {
                field: "spool_max_bytes",
                message: "must be at least 65536".into(),
            });
        }
        let facts_interval = parse_interval("facts.interval", &raw.facts.interval)?;
        let profile_poll = parse_interval("software.profile_poll", &raw.software.profile_poll)?;
        let probe_stall_after = raw
            .probe_stall_after
            .as_deref()
            .map(|t| parse_interval("probe_stall_after", t))
            .transpose()?;
        if let Some(c) = &raw.collector {
            crate::connect::split_addr(c).map_err(|e| ConfigError::Invalid {
                field: "collector",
                message: e.to_string(),
            })?;
        }
        Ok(Self {
            state_dir: state_dir
                .or(raw.state_dir)
                .unwrap_or_else(default_state_dir),
            collector: raw.collector,
            heartbeat_interval,
            spool_max_bytes: raw.spool_max_bytes,
            probe_stall_after,
            antivirus: raw.antivirus.enabled.then(|| AntivirusProbeConfig {
                database_dir: raw.antivirus.database_dir,
                clamd_socket: raw.antivirus.clamd_socket,
                freshclam_log: raw.antivirus.freshclam_log,
                ..Default::default()
            }),
            software: raw.software.enabled.then(|| SoftwareProbeConfig {
                dpkg_dir: raw.software.dpkg_dir,
                apt_history_log: raw.software.apt_history_log,
                flatpak_system_dir: raw.software.flatpak_system_dir,
                home_root: raw.software.home_root,
                profile_poll,
                ..Default::default()
            }),
            screen_lock: raw.screen_lock.enabled.then(|| ScreenLockConfig {
                system_bus_address: raw.screen_lock.system_bus_address,
                ..Default::default()
            }),
            usb: raw.usb.enabled.then(|| UsbProbeConfig {
                clamd: match (raw.usb.clamd_tcp, raw.usb.clamd_socket) {
                    (Some(tcp), _) => Some(ClamdAddr::Tcp(tcp)),
                    (None, Some(path)) => Some(ClamdAddr::Unix(path)),
                    (None, None) => None,
                },
                manage_authorization: raw.usb.manage_authorization,
                mount_options: raw.usb.mount_options,
                ..Default::default()
            }),
            facts: raw.facts.enabled.then_some(FactsProbeConfig {
                sys_root: raw.facts.sys_root,
                interval: facts_interval,
            }),
        })
    }
}

/// A humantime interval of at least 10ms.
fn parse_interval(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d: Duration = text
        .parse::<humantime::Duration>()
        .map_err(|e| ConfigError::Invalid {
            field,
            message: format!("{e} (use e.g. 30s, 5m)"),
        })?
        .into();
    if d < Duration::from_millis(10) {
        return Err(ConfigError::Invalid {
            field,
            message: "must be at least 10ms".into(),
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t".into(),
            message: e.to_string(),
        })?;
        Config::validate(raw, None)
    }

    #[test]
    fn defaults_are_sensible() {
        let c = parse("").unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(300));
        assert_eq!(c.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
        assert_eq!(c.state_dir, default_state_dir());
        assert_eq!(c.facts, Some(FactsProbeConfig::default()));
        assert_eq!(c.facts.unwrap().interval, Duration::from_secs(15 * 60));
    }

    #[test]
    fn facts_can_be_turned_off_or_re_read_more_often() {
        assert_eq!(parse("[facts]\nenabled = false\n").unwrap().facts, None);
        let c = parse("[facts]\ninterval = \"200ms\"\nsys_root = \"/tmp/sys\"\n").unwrap();
        let f = c.facts.unwrap();
        assert_eq!(f.interval, Duration::from_millis(200));
        assert_eq!(f.sys_root, PathBuf::from("/tmp/sys"));
        for bad in [
            "interval = \"often\"",
            "interval = \"1ms\"",
            "intervall = \"1m\"",
        ] {
            let err = parse(&format!("[facts]\n{bad}\n")).unwrap_err().to_string();
            assert!(err.contains("interval"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(
            parse("heartbeat_intervall = \"5s\"")
                .unwrap_err()
                .to_string()
                .contains("heartbeat_intervall")
        );
        assert!(
            parse("heartbeat_interval = \"soon\"")
                .unwrap_err()
                .to_string()
                .contains("heartbeat_interval")
        );
        assert!(
            parse("spool_max_bytes = 10")
                .unwrap_err()
                .to_string()
                .contains("spool_max_bytes")
        );
        assert!(
            parse("collector = \"nohost\"")
                .unwrap_err()
                .to_string()
                .contains("collector")
        );
    }
}
