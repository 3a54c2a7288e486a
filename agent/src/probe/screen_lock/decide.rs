//! Pure, OS-neutral decisions for idle screen locking: which session to lock, what to report.
//!
//! Linux, Windows and macOS differ only in how they observe sessions and lock them; this
//! state machine sees plain `SessionObservation`s and a clock, so every rule (timeout,
//! inhibitors, one failure report per idle episode, one left-logged-on report per night,
//! compliance changes, when to wake next) is tested without any OS.

use std::collections::HashMap;
use std::time::Duration;

use caretaker_proto::policy::{ScreenLockPolicy, parse_day, parse_hhmm};
use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// Where a session's idle time came from; later sources (GNOME Mutter IdleMonitor, KDE
/// ScreenSaver, Wayland ext-idle-notify, Windows GetLastInputInfo, macOS HIDIdleTime) add
/// variants here without touching the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleSource {
    /// The desktop's own idle flag (logind IdleHint/IdleSinceHint).
    LogindHint,
    /// X11 MIT-SCREEN-SAVER time since last input.
    X11ScreenSaver,
    /// Nothing could measure it: the session cannot be enforced.
    Unknown,
}

/// One graphical session as the OS layer saw it at `Now`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionObservation {
    pub id: String,
    pub user: String,
    /// "x11", "wayland", … (only used in reasons).
    pub kind: String,
    /// Time since the last input; `None` when no source could tell.
    pub idle: Option<Duration>,
    pub idle_source: IdleSource,
    /// Locked by anyone (desktop's LockedHint, or a locker the agent started and that still runs).
    pub locked: bool,
    /// The user holds an "idle" inhibitor (video, presentation).
    pub idle_inhibited: bool,
}

/// Device-wide facts the OS layer reports with each observation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostFacts {
    /// Why sessions could not be listed at all (logind unreachable, …).
    pub session_source_error: Option<String>,
    /// The locker command the agent would start as a fallback, if one is installed.
    pub locker: Option<String>,
}

/// The decision clock: monotonic for durations, local wall time for school hours.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub local: NaiveDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Lock this session now; report the outcome with `Decider::lock_finished`.
    Lock {
        session: String,
        user: String,
        idle: Duration,
    },
    /// Send an event.
    Emit {
        kind: &'static str,
        user: Option<String>,
        details: Map<String, Value>,
    },
}

/// What happened when the OS layer carried out `Action::Lock`.
#[derive(Debug, Clone, PartialEq)]
pub enum LockOutcome {
    /// Locked by the agent. `method` is "logind" or "locker:<cmd>". `observable` means later
    /// observations will show `locked` until the user unlocks (LockedHint, or a locker
    /// process the agent watches); otherwise input after the lock ends the episode.
    Locked {
        method: String,
        observable: bool,
    },
    /// Someone else (the user, the desktop) had already locked it: not an event.
    AlreadyLocked {
        observable: bool,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComplianceState {
    Enforced,
    CannotEnforce,
}

impl ComplianceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::CannotEnforce => "cannot_enforce",
        }
    }
}

/// After a failed lock, try again this long later (or after one timeout, if longer) while
/// the session stays idle; a broken locker must not be retried in a tight loop.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);
/// A locked or excused session is looked at again this often even without signals, in
/// case a lock or inhibitor ended unseen (capped by the timeout).
const RECHECK: Duration = Duration::from_secs(300);
/// Floor for wake-ups so rounding never makes the caller spin.
const MIN_WAKE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Watching,
    /// `Action::Lock` issued, outcome pending.
    Locking {
        idle: Duration,
    },
    Locked {
        observable: bool,
    },
    Failed {
        at: Instant,
    },
}

#[derive(Debug, Clone)]
struct SessionState {
    phase: Phase,
    /// Lock failure already reported in this idle episode.
    failure_reported: bool,
    /// The last lock failure, until a lock succeeds: keeps compliance from flickering
    /// back to "enforced" just because the user came back.
    unresolved_failure: Option<String>,
    last_idle: Option<Duration>,
    reported_night: Option<NaiveDate>,
}

/// The state machine; one per device, fed every observation.
#[derive(Debug, Default)]
pub struct Decider {
    sessions: HashMap<String, SessionState>,
    last_obs: Vec<SessionObservation>,
    last_obs_at: Option<Instant>,
    last_host: HostFacts,
    last_enabled: bool,
    compliance: Option<(ComplianceState, String)>,
}

impl Decider {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current compliance state, once one has been emitted.
    pub fn compliance(&self) -> Option<&(ComplianceState, String)> {
        self.compliance.as_ref()
    }

    /// Feed one observation of all graphical sessions; returns what to do now.
    pub fn decide(
        &mut self,
        now: &Now,
        sessions: &[SessionObservation],
        host: &HostFacts,
        policy: &ScreenLockPolicy,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        self.sessions
            .retain(|id, _| sessions.iter().any(|s| &s.id == id));
        self.last_obs = sessions.to_vec();
        self.last_obs_at = Some(now.mono);
        self.last_host = host.clone();
        self.last_enabled = policy.enabled;

        if policy.enabled {
            let timeout = Duration::from_secs(policy.idle_timeout_secs);
            let retry = RETRY_AFTER_FAILURE.max(timeout);
            let night = night_of(policy, now.local);
            for obs in sessions {
                let st = self
                    .sessions
                    .entry(obs.id.clone())
                    .or_insert_with(|| SessionState {
                        phase: Phase::Watching,
                        failure_reported: false,
                        unresolved_failure: None,
                        last_idle: None,
                        reported_night: None,
                    });
                let input_seen = match (obs.idle, st.last_idle) {
                    (Some(now_idle), Some(before)) => now_idle < before,
                    _ => false,
                };
                st.last_idle = obs.idle;
                step_session(
                    st,
                    obs,
                    now,
                    timeout,
                    retry,
                    input_seen,
                    policy,
                    &mut actions,
                );

                if let Some(night) = night
                    && st.reported_night != Some(night)
                {
                    st.reported_night = Some(night);
                    let mut d = Map::new();
                    d.insert("session".into(), json!(obs.id));
                    d.insert("night_of".into(), json!(night.to_string()));
                    d.insert("locked".into(), json!(obs.locked));
                    if let Some(idle) = obs.idle {
                        d.insert("idle_seconds".into(), json!(idle.as_secs()));
                    }
                    actions.push(Action::Emit {
                        kind: "session.left_logged_on",
                        user: Some(obs.user.clone()),
                        details: d,
                    });
                }
            }
        }
        actions.extend(self.compliance_change());
        actions
    }

    /// Record how an `Action::Lock` ended; returns the events to send.
    pub fn lock_finished(&mut self, now: &Now, session: &str, outcome: LockOutcome) -> Vec<Action> {
        let mut actions = Vec::new();
        let user = self
            .last_obs
            .iter()
            .find(|o| o.id == session)
            .map(|o| o.user.clone());
        if let Some(st) = self.sessions.get_mut(session) {
            let idle = match st.phase {
                Phase::Locking { idle } => idle,
                _ => st.last_idle.unwrap_or_default(),
            };
            match outcome {
                LockOutcome::Locked { method, observable } => {
                    st.phase = Phase::Locked { observable };
                    st.failure_reported = false;
                    st.unresolved_failure = None;
                    let mut d = Map::new();
                    d.insert("session".into(), json!(session));
                    d.insert("idle_seconds".into(), json!(idle.as_secs()));
                    d.insert("method".into(), json!(method));
                    actions.push(Action::Emit {
                        kind: "screen.locked_by_policy",
                        user,
                        details: d,
                    });
                }
                LockOutcome::AlreadyLocked { observable } => {
                    st.phase = Phase::Locked { observable };
                    st.failure_reported = false;
                    st.unresolved_failure = None;
                }
                LockOutcome::Failed { reason } => {
                    if !st.failure_reported {
                        st.failure_reported = true;
                        let mut d = Map::new();
                        d.insert("session".into(), json!(session));
                        d.insert("reason".into(), json!(reason));
                        actions.push(Action::Emit {
                            kind: "screen.lock_failed",
                            user,
                            details: d,
                        });
                    }
                    st.unresolved_failure = Some(reason);
                    st.phase = Phase::Failed { at: now.mono };
                }
            }
        }
        actions.extend(self.compliance_change());
        actions
    }

    /// A locker the agent started has exited (the user unlocked, or it died).
    pub fn locker_exited(&mut self, session: &str) {
        if let Some(st) = self.sessions.get_mut(session)
            && matches!(st.phase, Phase::Locked { .. })
        {
            st.phase = Phase::Watching;
        }
    }

    /// How long the caller may sleep before something can change without a signal: the
    /// earliest moment an unlocked session reaches the timeout, a failed lock is due for a
    /// retry, or school hours end with sessions still logged on. `None`: nothing to wait for.
    pub fn next_wake(&self, now: &Now, policy: &ScreenLockPolicy) -> Option<Duration> {
        if !policy.enabled {
            return None;
        }
        let timeout = Duration::from_secs(policy.idle_timeout_secs);
        let retry = RETRY_AFTER_FAILURE.max(timeout);
        let since_obs = self
            .last_obs_at
            .map(|t| now.mono.saturating_duration_since(t))
            .unwrap_or_default();
        let recheck = RECHECK.min(timeout);
        let mut wake: Option<Duration> = None;
        let mut earliest = |d: Duration| {
            let d = d.max(MIN_WAKE);
            wake = Some(wake.map_or(d, |w| w.min(d)));
        };
        for obs in &self.last_obs {
            let Some(st) = self.sessions.get(&obs.id) else {
                continue;
            };
            match &st.phase {
                Phase::Watching => match obs.idle {
                    Some(idle) if !excused(obs, policy) && !obs.locked => {
                        earliest(timeout.saturating_sub(idle + since_obs))
                    }
                    _ => earliest(recheck),
                },
                Phase::Locking { .. } => earliest(MIN_WAKE),
                Phase::Locked { .. } => earliest(recheck),
                Phase::Failed { at } => earliest((*at + retry).saturating_duration_since(now.mono)),
            }
        }
        if !self.last_obs.is_empty()
            && let Some(d) = until_school_end(policy, now.local)
        {
            earliest(d);
        }
        wake
    }

    fn compliance_change(&mut self) -> Option<Action> {
        let current = self.compute_compliance();
        if self.compliance.as_ref() == Some(&current) {
            return None;
        }
        self.compliance = Some(current.clone());
        let mut d = Map::new();
        d.insert("state".into(), json!(current.0.as_str()));
        d.insert("reason".into(), json!(current.1));
        Some(Action::Emit {
            kind: "screen.compliance",
            user: None,
            details: d,
        })
    }

    fn compute_compliance(&self) -> (ComplianceState, String) {
        use ComplianceState::*;
        if !self.last_enabled {
            return (CannotEnforce, "screen_lock disabled by policy".into());
        }
        if let Some(e) = &self.last_host.session_source_error {
            return (CannotEnforce, format!("cannot list sessions: {e}"));
        }
        let mut obs: Vec<&SessionObservation> = self.last_obs.iter().collect();
        obs.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(o) = obs.iter().find(|o| o.idle.is_none()) {
            return (
                CannotEnforce,
                format!("cannot measure idle time of session {} ({})", o.id, o.kind),
            );
        }
        for o in &obs {
            if let Some(reason) = self
                .sessions
                .get(&o.id)
                .and_then(|s| s.unresolved_failure.as_ref())
            {
                return (
                    CannotEnforce,
                    format!("lock failed in session {}: {reason}", o.id),
                );
            }
        }
        match &self.last_host.locker {
            Some(cmd) => (Enforced, format!("logind lock, fallback locker `{cmd}`")),
            None => (
                Enforced,
                "logind lock only: no locker command installed, relies on the desktop".into(),
            ),
        }
    }
}

fn excused(obs: &SessionObservation, policy: &ScreenLockPolicy) -> bool {
    policy.inhibitor_excuses_lock && obs.idle_inhibited
}

#[allow(clippy::too_many_arguments)]
fn step_session(
    st: &mut SessionState,
    obs: &SessionObservation,
    now: &Now,
    timeout: Duration,
    retry: Duration,
    input_seen: bool,
    policy: &ScreenLockPolicy,
    actions: &mut Vec<Action>,
) {
    let due = matches!(obs.idle, Some(i) if i >= timeout) && !excused(obs, policy);
    match &st.phase {
        Phase::Locked { observable } => {
            let ended = if *observable {
                !obs.locked
            } else {
                !obs.locked && input_seen
            };
            if ended {
                st.phase = Phase::Watching;
            } else {
                return;
            }
        }
        Phase::Failed { at } => {
            if obs.locked {
                // Locked by someone else (or late): the episode is over, but the failure
                // stays unresolved until the agent itself manages a lock.
                st.phase = Phase::Locked { observable: true };
                st.failure_reported = false;
                return;
            }
            if !due {
                // Input (or an inhibitor) ended this idle episode: a new episode may
                // report a new failure.
                st.phase = Phase::Watching;
                st.failure_reported = false;
                return;
            }
            if now.mono.saturating_duration_since(*at) < retry {
                return;
            }
            st.phase = Phase::Watching;
        }
        Phase::Locking { .. } => return,
        Phase::Watching => {}
    }
    // Watching.
    if obs.locked {
        // The user or the desktop locked it: nothing to report.
        st.phase = Phase::Locked { observable: true };
        return;
    }
    if due {
        let idle = obs.idle.unwrap_or_default();
        st.phase = Phase::Locking { idle };
        actions.push(Action::Lock {
            session: obs.id.clone(),
            user: obs.user.clone(),
            idle,
        });
    }
}

struct Hours {
    start: u32,
    end: u32,
    days: Vec<u32>,
}

fn hours(policy: &ScreenLockPolicy) -> Option<Hours> {
    let sh = &policy.school_hours;
    Some(Hours {
        start: parse_hhmm(&sh.start)?,
        end: parse_hhmm(&sh.end)?,
        days: sh.days.iter().filter_map(|d| parse_day(d)).collect(),
    })
}

/// Whether `t` is inside school hours. An unparsable policy counts as "always school
/// hours" so that a bad document produces no reports rather than false ones.
pub fn in_school_hours(policy: &ScreenLockPolicy, t: NaiveDateTime) -> bool {
    let Some(h) = hours(policy) else {
        return true;
    };
    let minute = t.hour() * 60 + t.minute();
    h.days.contains(&t.weekday().num_days_from_monday()) && minute >= h.start && minute < h.end
}

/// The night `t` belongs to, if `t` is outside school hours: a night runs from the end of
/// one day's school hours (or its midnight, on a day without school) to the start time of
/// the next day, and is named by its first date.
pub fn night_of(policy: &ScreenLockPolicy, t: NaiveDateTime) -> Option<NaiveDate> {
    if in_school_hours(policy, t) {
        return None;
    }
    let h = hours(policy)?;
    let minute = t.hour() * 60 + t.minute();
    if minute < h.start {
        t.date().pred_opt()
    } else {
        Some(t.date())
    }
}

/// Time until school hours end today, if `t` is inside them.
pub fn until_school_end(policy: &ScreenLockPolicy, t: NaiveDateTime) -> Option<Duration> {
    if !in_school_hours(policy, t) {
        return None;
    }
    let h = hours(policy)?;
    let secs_now = u64::from(t.num_seconds_from_midnight());
    Some(Duration::from_secs(u64::from(h.end) * 60 - secs_now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn policy(timeout: u64) -> ScreenLockPolicy {
        ScreenLockPolicy {
            idle_timeout_secs: timeout,
            ..Default::default()
        }
    }

    /// Wednesday 10:00 local: inside default school hours.
    fn school_time() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 11, 25)
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap()
    }

    fn now_at(local: NaiveDateTime) -> Now {
        Now {
            mono: Instant::now(),
            local,
        }
    }

    fn now() -> Now {
        now_at(school_time())
    }

    fn session(id: &str, idle_secs: u64) -> SessionObservation {
        SessionObservation {
            id: id.into(),
            user: "pupil".into(),
            kind: "x11".into(),
            idle: Some(Duration::from_secs(idle_secs)),
            idle_source: IdleSource::X11ScreenSaver,
            locked: false,
            idle_inhibited: false,
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            session_source_error: None,
            locker: Some("i3lock -n".into()),
        }
    }

    fn locks(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Lock { session, .. } => Some(session.clone()),
                _ => None,
            })
            .collect()
    }

    fn kinds(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect()
    }

    fn detail<'a>(actions: &'a [Action], kind: &str, key: &str) -> &'a Value {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Emit {
                    kind: k, details, ..
                } if *k == kind => details.get(key),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {kind}.{key} in {actions:?}"))
    }

    #[tokio::test(start_paused = true)]
    async fn locks_only_after_the_timeout_and_reports_once() {
        let p = policy(300);
        let mut d = Decider::new();
        let first = d.decide(&now(), &[session("1", 299)], &host(), &p);
        assert!(locks(&first).is_empty());
        // Compliance is emitted at start.
        assert_eq!(kinds(&first), vec!["screen.compliance"]);
        assert_eq!(detail(&first, "screen.compliance", "state"), "enforced");

        tokio::time::advance(Duration::from_secs(1)).await;
        let a = d.decide(&now(), &[session("1", 300)], &host(), &p);
        assert_eq!(locks(&a), vec!["1"]);
        // Outcome pending: no second Lock.
        let a = d.decide(&now(), &[session("1", 301)], &host(), &p);
        assert!(locks(&a).is_empty());

        let a = d.lock_finished(
            &now(),
            "1",
            LockOutcome::Locked {
                method: "logind".into(),
                observable: true,
            },
        );
        assert_eq!(kinds(&a), vec!["screen.locked_by_policy"]);
        assert_eq!(detail(&a, "screen.locked_by_policy", "method"), "logind");
        assert_eq!(detail(&a, "screen.locked_by_policy", "idle_seconds"), 300);
        let Action::Emit { user, .. } = &a[0] else {
            unreachable!()
        };
        assert_eq!(user.as_deref(), Some("pupil"));

        // Still locked: nothing more.
        let mut s = session("1", 900);
        s.locked = true;
        assert!(d.decide(&now(), &[s], &host(), &p).is_empty());
        // Unlocked by the user, input resets idle: watching again, locks at next timeout.
        assert!(d.decide(&now(), &[session("1", 2)], &host(), &p).is_empty());
        let a = d.decide(&now(), &[session("1", 305)], &host(), &p);
        assert_eq!(locks(&a), vec!["1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn user_locking_their_own_screen_is_not_an_event() {
        let p = policy(60);
        let mut d = Decider::new();
        let mut s = session("1", 500);
        s.locked = true;
        let a = d.decide(&now(), &[s.clone()], &host(), &p);
        assert_eq!(kinds(&a), vec!["screen.compliance"]);
        assert!(locks(&a).is_empty());
        // A locker the agent found already holding the display: also silent.
        let a = d.decide(&now(), &[session("1", 2)], &host(), &p);
        assert!(a.is_empty());
        let a = d.decide(&now(), &[session("1", 70)], &host(), &p);
        assert_eq!(locks(&a), vec!["1"]);
        let a = d.lock_finished(
            &now(),
            "1",
            LockOutcome::AlreadyLocked { observable: false },
        );
        assert!(a.is_empty());
        // Not observable: stays locked while idle grows, ends at input.
        assert!(
            d.decide(&now(), &[session("1", 80)], &host(), &p)
                .is_empty()
        );
        assert!(d.decide(&now(), &[session("1", 1)], &host(), &p).is_empty());
        assert_eq!(
            locks(&d.decide(&now(), &[session("1", 61)], &host(), &p)),
            vec!["1"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_inhibitor_excuses_the_lock_only_when_policy_says_so() {
        let mut p = policy(60);
        let mut s = session("1", 600);
        s.idle_inhibited = true;
        let mut d = Decider::new();
        assert!(locks(&d.decide(&now(), &[s.clone()], &host(), &p)).is_empty());
        p.inhibitor_excuses_lock = false;
        assert_eq!(locks(&d.decide(&now(), &[s], &host(), &p)), vec!["1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_reported_once_per_idle_episode_and_retried_slowly() {
        let p = policy(30);
        let mut d = Decider::new();
        d.decide(&now(), &[session("1", 30)], &host(), &p);
        let a = d.lock_finished(
            &now(),
            "1",
            LockOutcome::Failed {
                reason: "no locker".into(),
            },
        );
        assert_eq!(kinds(&a), vec!["screen.lock_failed", "screen.compliance"]);
        assert_eq!(detail(&a, "screen.lock_failed", "reason"), "no locker");
        assert_eq!(detail(&a, "screen.compliance", "state"), "cannot_enforce");

        // Not yet due for a retry.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            d.decide(&now(), &[session("1", 89)], &host(), &p)
                .is_empty()
        );
        assert_eq!(
            d.next_wake(&now(), &p),
            Some(Duration::from_secs(1)),
            "wakes for the retry"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let a = d.decide(&now(), &[session("1", 90)], &host(), &p);
        assert_eq!(locks(&a), vec!["1"]);
        // Second failure in the same episode: silent.
        let a = d.lock_finished(
            &now(),
            "1",
            LockOutcome::Failed {
                reason: "no locker".into(),
            },
        );
        assert!(kinds(&a).is_empty());
        // Input ends the episode; compliance stays cannot_enforce until a lock succeeds.
        assert!(d.decide(&now(), &[session("1", 1)], &host(), &p).is_empty());
        d.decide(&now(), &[session("1", 31)], &host(), &p);
        let a = d.lock_finished(
            &now(),
            "1",
            LockOutcome::Failed {
                reason: "still no locker".into(),
            },
        );
        assert_eq!(kinds(&a), vec!["screen.lock_failed", "screen.compliance"]);
    }

    #[tokio::test(start_paused = true)]
    async fn next_wake_is_when_the_earliest_session_can_reach_the_timeout() {
        let p = policy(300);
        let mut d = Decider::new();
        let t0 = now();
        d.decide(&t0, &[session("a", 100), session("b", 250)], &host(), &p);
        assert_eq!(d.next_wake(&t0, &p), Some(Duration::from_secs(50)));
        // Measured against the observation time, not the call time.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(d.next_wake(&now(), &p), Some(Duration::from_secs(30)));
        // No sessions: nothing to wait for.
        let mut d = Decider::new();
        d.decide(&t0, &[], &host(), &p);
        assert_eq!(d.next_wake(&t0, &p), None);
        // Near the end of school hours the day's end is the next wake.
        let late = now_at(
            NaiveDate::from_ymd_opt(2026, 11, 25)
                .unwrap()
                .and_hms_opt(16, 59, 50)
                .unwrap(),
        );
        let mut d = Decider::new();
        d.decide(&late, &[session("a", 0)], &host(), &p);
        assert_eq!(d.next_wake(&late, &p), Some(Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn left_logged_on_once_per_session_per_night() {
        let p = policy(300);
        let mut d = Decider::new();
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(); // Wednesday
        let at = |date: NaiveDate, h, m| now_at(date.and_hms_opt(h, m, 0).unwrap());
        let mut locked = session("1", 10);
        locked.locked = true;
        let a = d.decide(&at(day, 16, 0), &[locked.clone()], &host(), &p);
        assert!(!kinds(&a).contains(&"session.left_logged_on"));
        let a = d.decide(&at(day, 17, 0), &[locked.clone()], &host(), &p);
        assert_eq!(
            detail(&a, "session.left_logged_on", "night_of"),
            "2026-11-25"
        );
        assert_eq!(detail(&a, "session.left_logged_on", "locked"), true);
        // Same night, after midnight: nothing new.
        let a = d.decide(
            &at(day.succ_opt().unwrap(), 3, 0),
            &[locked.clone()],
            &host(),
            &p,
        );
        assert!(a.is_empty());
        // Another session the same night: reported.
        let a = d.decide(
            &at(day.succ_opt().unwrap(), 3, 0),
            &[locked.clone(), session("2", 5)],
            &host(),
            &p,
        );
        assert_eq!(kinds(&a), vec!["session.left_logged_on"]);
        // Next evening: a new night.
        let a = d.decide(&at(day.succ_opt().unwrap(), 18, 0), &[locked], &host(), &p);
        assert_eq!(
            detail(&a, "session.left_logged_on", "night_of"),
            "2026-11-26"
        );
    }

    #[test]
    fn school_hours_and_nights() {
        let p = ScreenLockPolicy::default();
        let sat = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        let mon = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert!(!in_school_hours(&p, sat.and_hms_opt(10, 0, 0).unwrap()));
        assert_eq!(night_of(&p, sat.and_hms_opt(10, 0, 0).unwrap()), Some(sat));
        assert_eq!(
            night_of(&p, mon.and_hms_opt(7, 59, 0).unwrap()),
            sat.succ_opt()
        );
        assert_eq!(night_of(&p, mon.and_hms_opt(8, 0, 0).unwrap()), None);
        assert_eq!(night_of(&p, mon.and_hms_opt(17, 0, 0).unwrap()), Some(mon));
        assert_eq!(
            until_school_end(&p, mon.and_hms_opt(16, 0, 30).unwrap()),
            Some(Duration::from_secs(3570))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn compliance_reasons_and_changes() {
        let p = policy(300);
        let mut d = Decider::new();
        let mut wayland = session("w", 0);
        wayland.idle = None;
        wayland.kind = "wayland".into();
        wayland.idle_source = IdleSource::Unknown;
        let a = d.decide(&now(), &[wayland.clone()], &host(), &p);
        assert_eq!(detail(&a, "screen.compliance", "state"), "cannot_enforce");
        assert_eq!(
            detail(&a, "screen.compliance", "reason"),
            "cannot measure idle time of session w (wayland)"
        );
        // Unchanged: not repeated.
        assert!(d.decide(&now(), &[wayland], &host(), &p).is_empty());
        // The session leaves: enforced again.
        let a = d.decide(&now(), &[], &host(), &p);
        assert_eq!(detail(&a, "screen.compliance", "state"), "enforced");
        let broken = HostFacts {
            session_source_error: Some("logind not on the bus".into()),
            locker: None,
        };
        let a = d.decide(&now(), &[], &broken, &p);
        assert_eq!(
            detail(&a, "screen.compliance", "reason"),
            "cannot list sessions: logind not on the bus"
        );
        let off = ScreenLockPolicy {
            enabled: false,
            ..p.clone()
        };
        let a = d.decide(&now(), &[session("1", 9999)], &host(), &off);
        assert!(locks(&a).is_empty());
        assert_eq!(
            detail(&a, "screen.compliance", "reason"),
            "screen_lock disabled by policy"
        );
        assert_eq!(d.next_wake(&now(), &off), None);
    }

    #[tokio::test(start_paused = true)]
    async fn agent_started_locker_exit_rearms() {
        let p = policy(10);
        let mut d = Decider::new();
        d.decide(&now(), &[session("1", 10)], &host(), &p);
        d.lock_finished(
            &now(),
            "1",
            LockOutcome::Locked {
                method: "locker:i3lock -n".into(),
                observable: true,
            },
        );
        let mut s = session("1", 15);
        s.locked = true; // the runner reports its live locker as locked
        assert!(d.decide(&now(), &[s], &host(), &p).is_empty());
        d.locker_exited("1");
        // Idle has not reset (e.g. the locker crashed): locks again straight away.
        assert_eq!(
            locks(&d.decide(&now(), &[session("1", 20)], &host(), &p)),
            vec!["1"]
        );
    }
}
