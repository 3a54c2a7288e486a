//! Policy section `screen_lock`: when unattended sessions must be locked and how.
//!
//! Kept to plain strings and numbers so the document stays readable JSON; `validate` says
//! exactly what is wrong, and the probe interprets times through `parse_hhmm`/`parse_day`.

use serde::{Deserialize, Serialize};

/// Idle screen-lock enforcement settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScreenLockPolicy {
    /// Off switch for the whole section (no locking, no left-logged-on reports).
    pub enabled: bool,
    /// Seconds without input after which an unlocked session is locked.
    pub idle_timeout_secs: u64,
    /// Whether a logind "idle" inhibitor (video, presentation) held by the session's user
    /// excuses the lock.
    pub inhibitor_excuses_lock: bool,
    /// Local school hours; sessions still logged on outside them are reported once a night.
    pub school_hours: SchoolHours,
    /// Lockers the agent starts itself when the desktop ignores logind's Lock, first
    /// available wins. Split on whitespace, no shell.
    pub locker_commands: Vec<String>,
    /// On Windows laptops, also set Windows' own machine inactivity limit
    /// (`InactivityTimeoutSecs`) to `idle_timeout_secs`, so Windows locks the screen even
    /// when the agent is stopped. False leaves whatever the school's Group Policy set.
    pub windows_inactivity_limit: bool,
}

impl Default for ScreenLockPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_timeout_secs: 300,
            inhibitor_excuses_lock: true,
            school_hours: SchoolHours::default(),
            locker_commands: vec![
                "i3lock -n".to_string(),
                "xsecurelock".to_string(),
                "xdg-screensaver lock".to_string(),
            ],
            windows_inactivity_limit: true,
        }
    }
}

/// Local-time window in which the school expects laptops to be in use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchoolHours {
    /// "HH:MM", 24-hour local time.
    pub start: String,
    /// "HH:MM", later than `start` (windows over midnight are not supported).
    pub end: String,
    /// Lower-case three-letter day names: "mon" .. "sun".
    pub days: Vec<String>,
}

impl Default for SchoolHours {
    fn default() -> Self {
        Self {
            start: "08:00".to_string(),
            end: "17:00".to_string(),
            days: ["mon", "tue", "wed", "thu", "fri"]
                .iter()
                .map(|d| d.to_string())
                .collect(),
        }
    }
}

/// Longest timeout accepted: a day. Anything longer means "never", which is what
/// `enabled: false` is for.
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

/// Why the `screen_lock` section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScreenLockError {
    #[error("screen_lock.idle_timeout_secs must be at least 1")]
    NoTimeout,
    #[error(
        "screen_lock.idle_timeout_secs is {0}, more than a day ({MAX_TIMEOUT_SECS}); use enabled: false to turn locking off"
    )]
    TimeoutOverADay(u64),
    #[error("screen_lock.locker_commands[{0}] is empty")]
    EmptyLockerCommand(usize),
    /// `field` is `start` or `end` of `school_hours`.
    #[error("screen_lock.school_hours.{field} {value:?} is not HH:MM (24-hour)")]
    NotHhMm { field: &'static str, value: String },
    #[error("screen_lock.school_hours.start {start} must be before end {end}")]
    StartNotBeforeEnd { start: String, end: String },
    #[error(
        "screen_lock.school_hours.days has {0:?}; expected mon, tue, wed, thu, fri, sat or sun"
    )]
    UnknownDay(String),
}

impl ScreenLockPolicy {
    pub fn validate(&self) -> Result<(), ScreenLockError> {
        if self.idle_timeout_secs == 0 {
            return Err(ScreenLockError::NoTimeout);
        }
        if self.idle_timeout_secs > MAX_TIMEOUT_SECS {
            return Err(ScreenLockError::TimeoutOverADay(self.idle_timeout_secs));
        }
        for (i, cmd) in self.locker_commands.iter().enumerate() {
            if cmd.split_whitespace().next().is_none() {
                return Err(ScreenLockError::EmptyLockerCommand(i));
            }
        }
        let sh = &self.school_hours;
        let hhmm = |field: &'static str, value: &str| {
            parse_hhmm(value).ok_or_else(|| ScreenLockError::NotHhMm {
                field,
                value: value.to_owned(),
            })
        };
        let start = hhmm("start", &sh.start)?;
        let end = hhmm("end", &sh.end)?;
        if start >= end {
            return Err(ScreenLockError::StartNotBeforeEnd {
                start: sh.start.clone(),
                end: sh.end.clone(),
            });
        }
        if let Some(d) = sh.days.iter().find(|d| parse_day(d).is_none()) {
            return Err(ScreenLockError::UnknownDay(d.clone()));
        }
        Ok(())
    }
}

/// "HH:MM" to minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// "mon".."sun" (any case) to 0..6, Monday first.
pub fn parse_day(s: &str) -> Option<u32> {
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let s = s.trim().to_ascii_lowercase();
    days.iter().position(|d| *d == s).map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_requirement_and_validate() {
        let p = ScreenLockPolicy::default();
        assert_eq!(p.idle_timeout_secs, 300);
        assert!(p.inhibitor_excuses_lock && p.enabled);
        assert_eq!(p.locker_commands[0], "i3lock -n");
        assert!(p.validate().is_ok());
    }

    #[test]
    fn partial_json_fills_defaults() {
        let p: ScreenLockPolicy =
            serde_json::from_str(r#"{"idle_timeout_secs": 60, "school_hours": {"end": "15:30"}}"#)
                .unwrap();
        assert_eq!(p.idle_timeout_secs, 60);
        assert_eq!(p.school_hours.start, "08:00");
        assert_eq!(p.school_hours.end, "15:30");
        assert_eq!(p.school_hours.days.len(), 5);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn validate_gives_reasons() {
        let mut p = ScreenLockPolicy {
            idle_timeout_secs: 0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("at least 1"));
        p.idle_timeout_secs = 10;
        p.school_hours.start = "8am".into();
        assert!(p.validate().unwrap_err().to_string().contains("not HH:MM"));
        p.school_hours.start = "18:00".into();
        assert!(p.validate().unwrap_err().to_string().contains("before end"));
        p.school_hours.start = "08:00".into();
        p.school_hours.days = vec!["monday".into()];
        assert!(p.validate().unwrap_err().to_string().contains("\"monday\""));
        p.school_hours.days = vec!["Mon".into()];
        p.locker_commands = vec!["  ".into()];
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("locker_commands[0]")
        );
    }

    #[test]
    fn hhmm_and_days() {
        assert_eq!(parse_hhmm("08:00"), Some(480));
        assert_eq!(parse_hhmm("7:05"), Some(425));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("12:60"), None);
        assert_eq!(parse_hhmm("1200"), None);
        assert_eq!(parse_day("SUN"), Some(6));
        assert_eq!(parse_day("x"), None);
    }
}
