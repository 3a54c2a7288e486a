//! Probe: locks graphical sessions left idle past the policy's timeout, and reports
//! compliance, lock failures and sessions left logged on overnight.
//!
//! The rules live in `decide` (pure); this module is the loop around them: observe
//! sessions through a `DesktopOs`, act, confirm, and sleep until the earliest moment
//! anything can change (a session reaching the timeout, a retry, the end of school
//! hours) or the OS signals a change. Linux's `DesktopOs` is logind + X11; Windows and
//! macOS only need another implementation.

pub mod decide;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod machine_limit;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::run;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use caretaker_proto::policy::{PolicyDocument, ScreenLockPolicy};
use chrono::NaiveDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::{EventSink, NewEvent};
use decide::{Action, Decider, HostFacts, LockOutcome, Now, SessionObservation};

/// Probe settings that are about this machine rather than policy; all overridable in tests.
#[derive(Debug, Clone)]
pub struct ScreenLockConfig {
    /// D-Bus address of the bus logind is on; `None` is the system bus.
    pub system_bus_address: Option<String>,
    /// How long to wait for a desktop that maintains logind's hints to confirm a lock (and
    /// for a started locker to take the display) before giving up on that step.
    pub confirm_timeout: Duration,
    /// How long to wait for a confirmation from a session whose desktop shows no sign of
    /// answering logind (it never set IdleHint/LockedHint, or ignored a Lock before):
    /// enough for an xss-lock-style listener, short enough to lock within a second.
    pub quick_confirm: Duration,
    /// Interval of confirmation checks while waiting.
    pub confirm_poll: Duration,
    /// Directories searched for locker programs.
    pub locker_search_path: Vec<PathBuf>,
    /// passwd file for users' homes and groups (then `getent`).
    pub passwd_path: PathBuf,
    /// Parent of users' runtime directories (`/run/user`).
    pub runtime_dir_root: PathBuf,
    /// Longest sleep without signals: a safety net for clock changes.
    pub max_sleep: Duration,
    /// Retry interval while logind cannot be reached.
    pub reconnect_after: Duration,
    /// Local wall-clock time, for school hours.
    /// Where to publish the user of the most recently active graphical session (the
    /// USB probe applies that user's rules); `None` to publish nothing.
    pub session_user: Option<Arc<watch::Sender<Option<String>>>>,
    pub local_clock: fn() -> NaiveDateTime,
}

impl Default for ScreenLockConfig {
    fn default() -> Self {
        Self {
            system_bus_address: None,
            confirm_timeout: Duration::from_secs(2),
            quick_confirm: Duration::from_millis(300),
            confirm_poll: Duration::from_millis(50),
            locker_search_path: ["/usr/local/bin", "/usr/bin", "/bin"]
                .map(PathBuf::from)
                .to_vec(),
            passwd_path: PathBuf::from("/etc/passwd"),
            runtime_dir_root: PathBuf::from("/run/user"),
            max_sleep: Duration::from_secs(15 * 60),
            reconnect_after: Duration::from_secs(60),
            session_user: None,
            local_clock: || chrono::Local::now().naive_local(),
        }
    }
}

/// One round of observation from the OS.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub sessions: Vec<SessionObservation>,
    pub host: HostFacts,
    /// Sessions whose desktop visibly maintains lock state (has set logind's IdleHint or
    /// LockedHint), so it probably answers a Lock request and deserves the long wait.
    pub desktop_answers_lock: HashSet<String>,
}

/// How a lock was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockSeen {
    No,
    /// The desktop says so (logind LockedHint); it will also say when it is unlocked.
    Hint,
    /// Some client holds the display's keyboard (a locker).
    Display,
}

/// A locker process the probe started; `exited` resolves when it ends.
pub struct LockerHandle {
    pub command: String,
    pub exited: Pin<Box<dyn Future<Output = LockerExit> + Send>>,
}

/// How a locker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockerExit {
    /// Exit status 0.
    pub clean: bool,
    /// "exit status: 1", "signal: 9 (SIGKILL)", …
    pub how: String,
}

/// Why a lock could not be requested or a locker not started; its text ends up in the
/// failure's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("session {0} is gone")]
    SessionGone(String),
    /// The session's kind ("wayland", …): X lockers need an X display.
    #[error("cannot start a locker in a {0} session without an X display")]
    NoXDisplay(String),
    /// The policy's locker commands, none of them installed.
    #[error("no locker command installed (tried: {})", .0.join(", "))]
    NoLocker(Vec<String>),
    #[error("no account found for uid {0}")]
    NoAccount(u32),
    #[error("starting `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[cfg(target_os = "linux")]
    #[error("{0}")]
    Logind(#[from] crate::os::linux::logind::LogindError),
}

/// The OS side of the probe: thin calls, no rules.
pub trait DesktopOs: Send {
    /// All graphical user sessions with their idle time and lock state.
    fn observe(&mut self, policy: &ScreenLockPolicy) -> impl Future<Output = Observed> + Send;
    /// Whether the session is locked now; `check_display` also asks the display itself
    /// (intrusive for a moment: only when the session is idle).
    fn lock_seen(
        &mut self,
        session: &str,
        check_display: bool,
    ) -> impl Future<Output = LockSeen> + Send;
    /// Asks the desktop to lock (logind Session.Lock).
    fn request_lock(&mut self, session: &str)
    -> impl Future<Output = Result<(), LockError>> + Send;
    /// Starts the first available locker command in the session, as its user.
    fn start_locker(
        &mut self,
        session: &str,
        policy: &ScreenLockPolicy,
    ) -> impl Future<Output = Result<LockerHandle, LockError>> + Send;
    /// Resolves when the OS signals something that may change a decision.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
}

/// The probe as the agent spawns it (Linux: logind on the system bus, X11 displays).
#[cfg(target_os = "linux")]
pub async fn run(
    config: ScreenLockConfig,
    policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let os = linux::LinuxDesktop::new(config.clone());
    run_with(os, config, policy, sink, shutdown).await;
}

/// The user of the session with the least idle time (the one at the keyboard), if any.
fn active_user(sessions: &[SessionObservation]) -> Option<String> {
    sessions
        .iter()
        .min_by_key(|s| s.idle.unwrap_or(Duration::MAX))
        .map(|s| s.user.clone())
}

/// The probe loop over any `DesktopOs`.
pub async fn run_with<O: DesktopOs>(
    mut os: O,
    cfg: ScreenLockConfig,
    mut policy_rx: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let mut decider = Decider::new();
    let mut lockers: JoinSet<String> = JoinSet::new();
    let mut alive: HashSet<String> = HashSet::new();
    // Sessions where a logind Lock went unanswered: do not wait for the desktop again.
    let mut unanswered: HashSet<String> = HashSet::new();
    let mut policy_open = true;
    let clock = |cfg: &ScreenLockConfig| Now {
        mono: tokio::time::Instant::now(),
        local: (cfg.local_clock)(),
    };

    loop {
        let policy = effective_policy(&policy_rx.borrow_and_update().screen_lock);
        let mut observed = os.observe(&policy).await;
        for s in &mut observed.sessions {
            s.locked |= alive.contains(&s.id);
        }
        unanswered.retain(|id| observed.sessions.iter().any(|s| &s.id == id));
        if let Some(tx) = &cfg.session_user {
            tx.send_if_modified(|u| {
                let now = active_user(&observed.sessions);
                let changed = *u != now;
                *u = now;
                changed
            });
        }

        let mut pending = decider.decide(&clock(&cfg), &observed.sessions, &observed.host, &policy);
        while !pending.is_empty() {
            let mut next = Vec::new();
            for action in pending {
                match action {
                    Action::Emit {
                        kind,
                        user,
                        details,
                    } => {
                        if !sink.emit(NewEvent::now(kind, user, details)).await {
                            return;
                        }
                    }
                    Action::Lock { session, .. } => {
                        let answers = observed.desktop_answers_lock.contains(&session)
                            && !unanswered.contains(&session);
                        let lock = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            r = enforce_lock(&mut os, &session, answers, &policy, &cfg) => r,
                        };
                        if lock.desktop_ignored_lock {
                            unanswered.insert(session.clone());
                        }
                        if let Some(handle) = lock.locker {
                            alive.insert(session.clone());
                            let id = session.clone();
                            lockers.spawn(async move {
                                let exit = handle.exited.await;
                                tracing::info!(session = %id, command = %handle.command, "locker ended: {}", exit.how);
                                id
                            });
                        }
                        next.extend(decider.lock_finished(&clock(&cfg), &session, lock.outcome));
                    }
                }
            }
            pending = next;
        }

        let mut wake = decider
            .next_wake(&clock(&cfg), &policy)
            .unwrap_or(cfg.max_sleep)
            .min(cfg.max_sleep);
        if observed.host.session_source_error.is_some() {
            wake = wake.min(cfg.reconnect_after);
        }
        let nap = tokio::time::sleep(wake);
        tokio::pin!(nap);
        loop {
            // An idle turn only proves the wait is turning: observing again is for real wakes.
            crate::probe::liveness::beat();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = crate::probe::liveness::idle() => continue,
                _ = &mut nap => {}
                _ = os.changed() => {}
                r = policy_rx.changed(), if policy_open => {
                    if r.is_err() {
                        policy_open = false;
                    }
                }
                Some(done) = lockers.join_next(), if !lockers.is_empty() => {
                    if let Ok(id) = done {
                        alive.remove(&id);
                        decider.locker_exited(&id);
                    }
                }
            }
            break;
        }
    }
}

/// An invalid section is replaced by the defaults (which enforce): a typo in the policy
/// must not switch off safeguarding.
fn effective_policy(p: &ScreenLockPolicy) -> ScreenLockPolicy {
    match p.validate() {
        Ok(()) => p.clone(),
        Err(e) => {
            tracing::warn!("screen_lock policy invalid ({e}); using defaults");
            ScreenLockPolicy::default()
        }
    }
}

/// The result of one lock attempt.
pub struct LockAttempt {
    pub outcome: LockOutcome,
    /// A locker the probe started that still runs and holds the display.
    pub locker: Option<LockerHandle>,
    /// The desktop did not confirm logind's Lock.
    pub desktop_ignored_lock: bool,
}

/// Locks one session: already locked? ask the desktop through logind and confirm; else
/// start a locker as the user and confirm that.
pub async fn enforce_lock<O: DesktopOs>(
    os: &mut O,
    session: &str,
    desktop_answers: bool,
    policy: &ScreenLockPolicy,
    cfg: &ScreenLockConfig,
) -> LockAttempt {
    let attempt = |outcome, locker, ignored| LockAttempt {
        outcome,
        locker,
        desktop_ignored_lock: ignored,
    };
    match os.lock_seen(session, true).await {
        LockSeen::No => {}
        seen => {
            return attempt(
                LockOutcome::AlreadyLocked {
                    observable: seen == LockSeen::Hint,
                },
                None,
                false,
            );
        }
    }

    let asked = os.request_lock(session).await;
    let wait = if desktop_answers {
        cfg.confirm_timeout
    } else {
        cfg.quick_confirm
    };
    if asked.is_ok()
        && let Some(seen) = wait_for_lock(os, session, wait, cfg.confirm_poll, None).await
    {
        return attempt(
            LockOutcome::Locked {
                method: "logind".into(),
                observable: seen == LockSeen::Hint,
            },
            None,
            false,
        );
    }
    let logind_part = match &asked {
        Ok(()) => format!("logind Lock not confirmed within {} ms", wait.as_millis()),
        Err(e) => format!("logind Lock failed: {e}"),
    };

    let mut handle = match os.start_locker(session, policy).await {
        Ok(h) => h,
        Err(e) => {
            return attempt(
                LockOutcome::Failed {
                    reason: format!("{logind_part}; {e}"),
                },
                None,
                true,
            );
        }
    };
    let mut exit_note = None;
    let seen = wait_for_lock(
        os,
        session,
        cfg.confirm_timeout,
        cfg.confirm_poll,
        Some((&mut handle.exited, &mut exit_note)),
    )
    .await;
    match (seen, exit_note) {
        (Some(_), None) => attempt(
            LockOutcome::Locked {
                method: format!("locker:{}", handle.command),
                // The process is watched: its exit tells when the user unlocked.
                observable: true,
            },
            Some(handle),
            true,
        ),
        (Some(_), Some(_)) => attempt(
            // A launcher such as `xdg-screensaver lock` hands over and exits.
            LockOutcome::Locked {
                method: format!("locker:{}", handle.command),
                observable: false,
            },
            None,
            true,
        ),
        (None, note) => attempt(
            LockOutcome::Failed {
                reason: match note {
                    Some(how) => format!(
                        "{logind_part}; locker `{}` ended without locking: {how}",
                        handle.command
                    ),
                    None => format!(
                        "{logind_part}; locker `{}` did not take the display within {} ms",
                        handle.command,
                        cfg.confirm_timeout.as_millis()
                    ),
                },
            },
            None,
            true,
        ),
    }
}

type ExitWatch<'a> = (
    &'a mut Pin<Box<dyn Future<Output = LockerExit> + Send>>,
    &'a mut Option<String>,
);

/// Polls the lock state until it shows a lock or `limit` passes. With a locker's exit
/// future: a non-zero exit stops the wait; a clean exit (a launcher) keeps waiting.
async fn wait_for_lock<O: DesktopOs>(
    os: &mut O,
    session: &str,
    limit: Duration,
    poll: Duration,
    mut exit: Option<ExitWatch<'_>>,
) -> Option<LockSeen> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match os.lock_seen(session, true).await {
            LockSeen::No => {}
            seen => return Some(seen),
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        let nap = poll.min(deadline - now);
        match exit.as_mut() {
            Some((fut, note)) if note.is_none() => {
                tokio::select! {
                    exit = fut.as_mut() => {
                        **note = Some(exit.how);
                        if !exit.clean {
                            return None;
                        }
                    }
                    _ = tokio::time::sleep(nap) => {}
                }
            }
            _ => tokio::time::sleep(nap).await,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop over a fake OS under paused time: when it wakes, how often it looks.
    use super::decide::{IdleSource, SessionObservation};
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    #[derive(Default)]
    struct Fake {
        last_input: Option<Instant>,
        locked: bool,
        desktop_answers: bool,
        locker_installed: bool,
        observes: usize,
        lock_requests: usize,
        lockers_started: usize,
        unlock: Option<tokio::sync::oneshot::Sender<()>>,
    }

    #[derive(Clone)]
    struct FakeOs(Arc<Mutex<Fake>>);

    #[test]
    fn the_active_user_is_the_least_idle_session() {
        let session = |user: &str, idle: Option<u64>| SessionObservation {
            id: user.into(),
            user: user.into(),
            kind: "x11".into(),
            idle: idle.map(Duration::from_secs),
            idle_source: IdleSource::X11ScreenSaver,
            locked: false,
            idle_inhibited: false,
        };
        assert_eq!(active_user(&[]), None);
        let s = [
            session("teacher", Some(900)),
            session("pupil", Some(5)),
            session("other", None),
        ];
        assert_eq!(active_user(&s).as_deref(), Some("pupil"));
    }

    impl DesktopOs for FakeOs {
        async fn observe(&mut self, _policy: &ScreenLockPolicy) -> Observed {
            let mut f = self.0.lock().unwrap();
            f.observes += 1;
            let idle = Instant::now() - f.last_input.unwrap();
            Observed {
                sessions: vec![SessionObservation {
                    id: "1".into(),
                    user: "pupil".into(),
                    kind: "x11".into(),
                    idle: Some(idle),
                    idle_source: IdleSource::X11ScreenSaver,
                    locked: f.locked,
                    idle_inhibited: false,
                }],
                host: HostFacts {
                    session_source_error: None,
                    locker: f.locker_installed.then(|| "i3lock -n".into()),
                },
                desktop_answers_lock: if f.desktop_answers {
                    HashSet::from(["1".to_string()])
                } else {
                    HashSet::new()
                },
            }
        }
        async fn lock_seen(&mut self, _s: &str, _d: bool) -> LockSeen {
            if self.0.lock().unwrap().locked {
                LockSeen::Display
            } else {
                LockSeen::No
            }
        }
        async fn request_lock(&mut self, _s: &str) -> Result<(), LockError> {
            let mut f = self.0.lock().unwrap();
            f.lock_requests += 1;
            if f.desktop_answers {
                f.locked = true;
            }
            Ok(())
        }
        async fn start_locker(
            &mut self,
            _s: &str,
            p: &ScreenLockPolicy,
        ) -> Result<LockerHandle, LockError> {
            let mut f = self.0.lock().unwrap();
            if !f.locker_installed {
                return Err(LockError::NoLocker(p.locker_commands.clone()));
            }
            f.lockers_started += 1;
            f.locked = true;
            let (tx, rx) = tokio::sync::oneshot::channel();
            f.unlock = Some(tx);
            let state = self.0.clone();
            Ok(LockerHandle {
                command: "i3lock -n".into(),
                exited: Box::pin(async move {
                    let _ = rx.await;
                    let mut f = state.lock().unwrap();
                    f.locked = false;
                    f.last_input = Some(Instant::now());
                    LockerExit {
                        clean: true,
                        how: "exit status: 0".into(),
                    }
                }),
            })
        }
        async fn changed(&mut self) {
            std::future::pending().await
        }
    }

    fn wednesday_morning() -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 25)
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap()
    }

    struct Running {
        fake: FakeOs,
        events: tokio::sync::mpsc::Receiver<NewEvent>,
        shutdown: CancellationToken,
        _policy: watch::Sender<Arc<PolicyDocument>>,
    }

    /// `start` with the last input now (returned), once the probe has sent its first report.
    async fn started_after_input(fake: Fake, timeout: u64) -> (Instant, Running) {
        let t0 = Instant::now();
        let mut r = start(
            Fake {
                last_input: Some(t0),
                ..fake
            },
            timeout,
        );
        assert_eq!(r.events.recv().await.unwrap().kind, "screen.compliance");
        (t0, r)
    }

    fn start(fake: Fake, timeout: u64) -> Running {
        let fake = FakeOs(Arc::new(Mutex::new(fake)));
        let (tx, events) = tokio::sync::mpsc::channel(16);
        let (ptx, prx) = watch::channel(Arc::new(PolicyDocument {
            screen_lock: ScreenLockPolicy {
                idle_timeout_secs: timeout,
                ..Default::default()
            },
            ..Default::default()
        }));
        let shutdown = CancellationToken::new();
        let cfg = ScreenLockConfig {
            local_clock: wednesday_morning,
            ..Default::default()
        };
        tokio::spawn(run_with(
            fake.clone(),
            cfg,
            prx,
            EventSink::new(tx),
            shutdown.clone(),
        ));
        Running {
            fake,
            events,
            shutdown,
            _policy: ptx,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_exactly_at_the_timeout_not_every_second() {
        let (t0, mut r) = started_after_input(
            Fake {
                desktop_answers: true,
                ..Default::default()
            },
            300,
        )
        .await;
        let e = r.events.recv().await.unwrap();
        assert_eq!(e.kind, "screen.locked_by_policy");
        assert_eq!(e.details["method"], "logind");
        assert_eq!(Instant::now() - t0, Duration::from_secs(300));
        let f = r.fake.0.lock().unwrap();
        assert_eq!(f.observes, 2, "one look at start, one at the timeout");
        assert_eq!((f.lock_requests, f.lockers_started), (1, 0));
        drop(f);
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn input_postpones_the_lock_by_a_rescheduled_wake() {
        let (t0, mut r) = started_after_input(
            Fake {
                desktop_answers: true,
                ..Default::default()
            },
            300,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(200)).await;
        r.fake.0.lock().unwrap().last_input = Some(Instant::now());
        let e = r.events.recv().await.unwrap();
        assert_eq!(e.kind, "screen.locked_by_policy");
        assert_eq!(Instant::now() - t0, Duration::from_secs(500));
        assert_eq!(r.fake.0.lock().unwrap().observes, 3);
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_desktop_gets_a_quick_fallback_and_unlock_rearms() {
        let (t0, mut r) = started_after_input(
            Fake {
                locker_installed: true,
                ..Default::default()
            },
            60,
        )
        .await;
        let e = r.events.recv().await.unwrap();
        assert_eq!(e.details["method"], "locker:i3lock -n");
        // Timeout, then the short wait for a desktop that shows no sign of answering.
        let cfg = ScreenLockConfig::default();
        let elapsed = Instant::now() - t0;
        assert!(
            elapsed >= Duration::from_secs(60) + cfg.quick_confirm
                && elapsed <= Duration::from_secs(60) + cfg.quick_confirm + cfg.confirm_poll,
            "{elapsed:?}"
        );
        // The user unlocks (the locker exits, input resets idle): locked again a timeout
        // later, straight to the locker this time (logind ignored once).
        let unlocked_at = Instant::now() + Duration::from_secs(10);
        tokio::time::sleep_until(unlocked_at).await;
        let tx = r.fake.0.lock().unwrap().unlock.take().unwrap();
        tx.send(()).unwrap();
        let e = r.events.recv().await.unwrap();
        assert_eq!(e.kind, "screen.locked_by_policy");
        let f = r.fake.0.lock().unwrap();
        assert_eq!((f.lock_requests, f.lockers_started), (2, 2));
        drop(f);
        r.shutdown.cancel();
    }
}
