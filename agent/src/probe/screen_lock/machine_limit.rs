//! Windows' own machine inactivity limit ("Interactive logon: Machine inactivity limit",
//! `InactivityTimeoutSecs` under the System policies key): the value the policy wants there,
//! and what the agent can honestly say about enforcement from what the registry holds. Pure
//! and built on every OS; the registry calls are in `windows.rs`.
//!
//! Windows locks a session left idle that long by itself, so the lock holds even while the
//! agent is stopped. It is one limit for the whole machine, not per session.

use caretaker_proto::policy::ScreenLockPolicy;

use super::decide::ComplianceState;

/// The key under `HKEY_LOCAL_MACHINE` that Group Policy's security options write.
pub const KEY: &str = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System";
/// Seconds of inactivity after which Windows locks; absent or 0 means no limit.
pub const VALUE: &str = "InactivityTimeoutSecs";

/// Until the per-session helper is built, said with every state.
const NO_HELPER: &str = "the agent's own per-session lock is not built for Windows yet";

/// The limit the policy wants written, if it wants one.
pub fn wanted(policy: &ScreenLockPolicy) -> Option<u32> {
    (policy.enabled && policy.windows_inactivity_limit)
        .then(|| u32::try_from(policy.idle_timeout_secs).unwrap_or(u32::MAX))
}

/// What the registry held and, if the agent changed it, how the write went.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub found: Result<Option<u32>, String>,
    pub wrote: Option<Result<u32, String>>,
}

/// Whether the write is needed: the policy wants a limit and the registry holds another.
pub fn needs_write(policy: &ScreenLockPolicy, found: &Result<Option<u32>, String>) -> Option<u32> {
    let want = wanted(policy)?;
    (found.as_ref().ok() != Some(&Some(want))).then_some(want)
}

/// The device's screen-lock compliance from the machine limit.
pub fn compliance(policy: &ScreenLockPolicy, reading: &Reading) -> (ComplianceState, String) {
    use ComplianceState::*;
    let idle = policy.idle_timeout_secs;
    if !policy.enabled {
        return (CannotEnforce, "screen_lock disabled by policy".into());
    }
    let holds = match &reading.wrote {
        Some(Err(e)) => {
            return (
                CannotEnforce,
                format!("cannot set Windows' inactivity limit: {e}; {NO_HELPER}"),
            );
        }
        Some(Ok(v)) => Some(*v),
        None => match &reading.found {
            Err(e) => {
                return (
                    CannotEnforce,
                    format!("cannot read Windows' inactivity limit: {e}; {NO_HELPER}"),
                );
            }
            Ok(v) => *v,
        },
    };
    match holds {
        Some(v) if v > 0 && u64::from(v) <= idle => (
            Enforced,
            format!(
                "Windows locks a laptop left idle for {v} s (its own inactivity limit, {VALUE}); {NO_HELPER}"
            ),
        ),
        Some(v) if v > 0 => (
            CannotEnforce,
            format!(
                "Windows' own inactivity limit is {v} s, longer than the policy's {idle} s, and the policy leaves it alone; {NO_HELPER}"
            ),
        ),
        _ => (
            CannotEnforce,
            format!(
                "Windows' own inactivity limit is not set and the policy leaves it alone; {NO_HELPER}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(idle: u64, set: bool) -> ScreenLockPolicy {
        ScreenLockPolicy {
            idle_timeout_secs: idle,
            windows_inactivity_limit: set,
            ..Default::default()
        }
    }

    fn found(v: Option<u32>) -> Reading {
        Reading {
            found: Ok(v),
            wrote: None,
        }
    }

    #[test]
    fn the_policy_wants_its_idle_time_unless_it_leaves_windows_alone_or_is_off() {
        assert_eq!(wanted(&policy(300, true)), Some(300));
        assert_eq!(wanted(&policy(300, false)), None);
        let off = ScreenLockPolicy {
            enabled: false,
            ..policy(300, true)
        };
        assert_eq!(wanted(&off), None);
    }

    #[test]
    fn a_write_only_when_the_registry_differs() {
        let p = policy(600, true);
        assert_eq!(needs_write(&p, &Ok(None)), Some(600));
        assert_eq!(needs_write(&p, &Ok(Some(300))), Some(600));
        assert_eq!(needs_write(&p, &Ok(Some(600))), None);
        assert_eq!(needs_write(&p, &Err("denied".into())), Some(600));
        assert_eq!(needs_write(&policy(600, false), &Ok(None)), None);
    }

    #[test]
    fn enforced_when_windows_locks_no_later_than_the_policy() {
        let (state, reason) = compliance(
            &policy(300, true),
            &Reading {
                found: Ok(None),
                wrote: Some(Ok(300)),
            },
        );
        assert_eq!(state, ComplianceState::Enforced);
        assert!(
            reason.starts_with("Windows locks a laptop left idle for 300 s"),
            "{reason}"
        );
        // A stricter limit set by the school's Group Policy also enforces.
        let (state, _) = compliance(&policy(300, false), &found(Some(120)));
        assert_eq!(state, ComplianceState::Enforced);
    }

    #[test]
    fn cannot_enforce_says_why() {
        let (state, reason) = compliance(&policy(300, false), &found(Some(900)));
        assert_eq!(state, ComplianceState::CannotEnforce);
        assert!(
            reason.starts_with(
                "Windows' own inactivity limit is 900 s, longer than the policy's 300 s"
            ),
            "{reason}"
        );
        let (_, reason) = compliance(&policy(300, false), &found(Some(0)));
        assert!(reason.contains("is not set"), "{reason}");
        let (_, reason) = compliance(
            &policy(300, true),
            &Reading {
                found: Ok(None),
                wrote: Some(Err("Access is denied. (os error 5)".into())),
            },
        );
        assert!(
            reason.starts_with("cannot set Windows' inactivity limit: Access is denied."),
            "{reason}"
        );
        let off = ScreenLockPolicy {
            enabled: false,
            ..policy(300, true)
        };
        assert_eq!(
            compliance(&off, &found(Some(300))).1,
            "screen_lock disabled by policy"
        );
    }
}
