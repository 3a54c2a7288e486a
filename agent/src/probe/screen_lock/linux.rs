//! Linux `DesktopOs`: sessions and hints from logind, idle time from logind's hints or the
//! X server, lock checks by LockedHint or a locker window holding the keyboard, lockers started as the user.
//!
//! Idle sources in order: logind IdleHint/IdleSinceHint when the desktop says "idle";
//! X11 MIT-SCREEN-SAVER for X sessions (precise even where nothing maintains the hints);
//! logind "not idle" when the desktop maintains the hints but says active (GNOME on
//! Wayland: its own idle delay then bounds ours). Later sources behind the same
//! `IdleSource` enum: GNOME `org.gnome.Mutter.IdleMonitor.GetIdletime` and KDE
//! `org.freedesktop.ScreenSaver.GetSessionIdleTime` on the user's session bus, Wayland
//! `ext-idle-notify-v1`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caretaker_proto::policy::ScreenLockPolicy;

use super::decide::{HostFacts, IdleSource, SessionObservation};
use super::{DesktopOs, LockError, LockSeen, LockerExit, LockerHandle, Observed, ScreenLockConfig};
use crate::os::linux::locker::{self, UserAccount};
use crate::os::linux::logind::{Logind, LogindError, LogindSession};
use crate::os::linux::x11::{self, X11Error};

pub struct LinuxDesktop {
    cfg: ScreenLockConfig,
    logind: Option<Logind>,
    sessions: HashMap<String, LogindSession>,
    users: HashMap<u32, UserAccount>,
    /// Sessions seen with LockedHint true at some point: their desktop maintains it.
    hinted: HashSet<String>,
}

impl LinuxDesktop {
    pub fn new(cfg: ScreenLockConfig) -> Self {
        Self {
            cfg,
            logind: None,
            sessions: HashMap::new(),
            users: HashMap::new(),
            hinted: HashSet::new(),
        }
    }

    async fn logind(&mut self) -> Result<&mut Logind, LogindError> {
        if self.logind.is_none() {
            let mut l = Logind::connect(self.cfg.system_bus_address.as_deref()).await?;
            l.subscribe().await?;
            self.logind = Some(l);
        }
        Ok(self.logind.as_mut().expect("just set"))
    }

    async fn user(&mut self, uid: u32, name: &str) -> Option<UserAccount> {
        if let Some(u) = self.users.get(&uid) {
            return Some(u.clone());
        }
        let entry = locker::lookup_user(&self.cfg.passwd_path, uid).await?;
        // logind knows the group of a logged-in user even when NSS is slow or offline.
        let gid = match self.logind.as_ref() {
            Some(l) => l.user_gid(uid).await.unwrap_or(entry.gid),
            None => entry.gid,
        };
        let account = UserAccount {
            name: if name.is_empty() {
                entry.name
            } else {
                name.to_string()
            },
            uid,
            gid,
            home: entry.home,
        };
        self.users.insert(uid, account.clone());
        Some(account)
    }

    async fn xauthority(&mut self, s: &LogindSession) -> Option<PathBuf> {
        let user = self.user(s.uid, &s.user).await?;
        locker::find_xauthority(&user, &self.cfg.runtime_dir_root)
    }

    async fn x11_idle(&mut self, s: &LogindSession) -> Result<Duration, X11Error> {
        let xauth = self.xauthority(s).await;
        let display = s.display.clone();
        let ms = tokio::task::spawn_blocking(move || {
            x11::connect(&display, xauth.as_deref())?.idle_ms()
        })
        .await??;
        Ok(Duration::from_millis(u64::from(ms)))
    }
}

/// Pure: idle time from logind's hints, if they say anything. `IdleSinceHint` is
/// wall-clock microseconds; a clock that went backwards gives zero, not a panic.
pub fn idle_from_hints(s: &LogindSession, now_us: u64) -> Option<Duration> {
    if s.idle_since_hint_us == 0 {
        return None; // nobody maintains the hints
    }
    if s.idle_hint {
        Some(Duration::from_micros(
            now_us.saturating_sub(s.idle_since_hint_us),
        ))
    } else {
        Some(Duration::ZERO)
    }
}

fn realtime_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl DesktopOs for LinuxDesktop {
    async fn observe(&mut self, policy: &ScreenLockPolicy) -> Observed {
        let mut out = Observed {
            host: HostFacts {
                session_source_error: None,
                locker: locker::find_locker(&policy.locker_commands, &self.cfg.locker_search_path)
                    .map(|(cmd, _)| cmd),
            },
            ..Default::default()
        };
        let listed = match self.logind().await {
            Ok(l) => l.sessions().await,
            Err(e) => Err(e),
        };
        let (all, warnings) = match listed {
            Ok(v) => v,
            Err(e) => {
                // Reconnect next time: logind or the bus may have restarted.
                self.logind = None;
                out.host.session_source_error = Some(e.to_string());
                return out;
            }
        };
        for w in warnings {
            tracing::debug!("logind: {w}");
        }
        let inhibited = match self.logind.as_ref() {
            Some(l) => l.idle_inhibitor_uids().await.unwrap_or_else(|e| {
                tracing::debug!("ListInhibitors: {e}");
                HashSet::new()
            }),
            None => HashSet::new(),
        };
        let graphical: Vec<LogindSession> = all
            .into_iter()
            .filter(LogindSession::is_graphical_user_session)
            .collect();
        self.sessions = graphical
            .iter()
            .map(|s| (s.id.clone(), s.clone()))
            .collect();
        self.hinted.retain(|id| self.sessions.contains_key(id));

        for s in graphical {
            if s.locked_hint {
                self.hinted.insert(s.id.clone());
            }
            let hints = idle_from_hints(&s, realtime_us());
            let (idle, source) = match hints {
                Some(d) if s.idle_hint => (Some(d), IdleSource::LogindHint),
                _ => {
                    let x = if s.kind == "x11" && !s.display.is_empty() {
                        match self.x11_idle(&s).await {
                            Ok(d) => Some(d),
                            Err(e) => {
                                tracing::debug!(session = %s.id, "X11 idle: {e}");
                                None
                            }
                        }
                    } else {
                        None
                    };
                    match (x, hints) {
                        (Some(d), _) => (Some(d), IdleSource::X11ScreenSaver),
                        (None, Some(d)) => (Some(d), IdleSource::LogindHint),
                        (None, None) => (None, IdleSource::Unknown),
                    }
                }
            };
            if s.idle_since_hint_us != 0 || self.hinted.contains(&s.id) {
                out.desktop_answers_lock.insert(s.id.clone());
            }
            out.sessions.push(SessionObservation {
                id: s.id.clone(),
                user: s.user.clone(),
                kind: s.kind.clone(),
                idle,
                idle_source: source,
                locked: s.locked_hint,
                idle_inhibited: inhibited.contains(&s.uid),
            });
        }
        out
    }

    async fn lock_seen(&mut self, session: &str, check_display: bool) -> LockSeen {
        let Some(s) = self.sessions.get(session).cloned() else {
            return LockSeen::No;
        };
        if let Some(l) = self.logind.as_ref()
            && matches!(l.locked_hint(&s.path).await, Ok(true))
        {
            self.hinted.insert(s.id.clone());
            return LockSeen::Hint;
        }
        if check_display && s.kind == "x11" && !s.display.is_empty() {
            let xauth = self.xauthority(&s).await;
            let display = s.display.clone();
            let held = tokio::task::spawn_blocking(move || {
                x11::connect(&display, xauth.as_deref())?.locker_holds_display()
            })
            .await
            .map_err(X11Error::from)
            .and_then(|r| r);
            match held {
                Ok(true) => return LockSeen::Display,
                Ok(false) => {}
                Err(e) => tracing::debug!(session, "grab check: {e}"),
            }
        }
        LockSeen::No
    }

    async fn request_lock(&mut self, session: &str) -> Result<(), LockError> {
        let path = self
            .sessions
            .get(session)
            .map(|s| s.path.clone())
            .ok_or_else(|| LockError::SessionGone(session.to_string()))?;
        Ok(self.logind().await?.lock(&path).await?)
    }

    async fn start_locker(
        &mut self,
        session: &str,
        policy: &ScreenLockPolicy,
    ) -> Result<LockerHandle, LockError> {
        let s = self
            .sessions
            .get(session)
            .cloned()
            .ok_or_else(|| LockError::SessionGone(session.to_string()))?;
        // An X locker on a Wayland session's Xwayland display would not cover the
        // compositor: only real X sessions get one.
        if s.kind != "x11" || s.display.is_empty() {
            return Err(LockError::NoXDisplay(s.kind));
        }
        let (command, program) =
            locker::find_locker(&policy.locker_commands, &self.cfg.locker_search_path)
                .ok_or_else(|| LockError::NoLocker(policy.locker_commands.clone()))?;
        let user = self
            .user(s.uid, &s.user)
            .await
            .ok_or(LockError::NoAccount(s.uid))?;
        let xauth = locker::find_xauthority(&user, &self.cfg.runtime_dir_root);
        let (_, args) = locker::split_command(&command).unwrap_or_default();
        let mut child = locker::spawn_locker(
            &program,
            &args,
            &user,
            &s.display,
            xauth.as_deref(),
            &self.cfg.runtime_dir_root,
        )
        .map_err(|source| LockError::Spawn {
            command: command.clone(),
            source,
        })?;
        Ok(LockerHandle {
            command,
            exited: Box::pin(async move {
                match child.wait().await {
                    Ok(st) => LockerExit {
                        clean: st.success(),
                        how: st.to_string(),
                    },
                    Err(e) => LockerExit {
                        clean: false,
                        how: e.to_string(),
                    },
                }
            }),
        })
    }

    async fn changed(&mut self) {
        match self.logind.as_mut() {
            Some(l) => l.next_signal().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_give_idle_only_when_maintained() {
        let mut s = LogindSession {
            idle_hint: true,
            idle_since_hint_us: 1_000_000_000,
            ..Default::default()
        };
        assert_eq!(
            idle_from_hints(&s, 1_300_000_000),
            Some(Duration::from_secs(300))
        );
        // Clock went back: zero.
        assert_eq!(idle_from_hints(&s, 5), Some(Duration::ZERO));
        s.idle_hint = false;
        assert_eq!(idle_from_hints(&s, 1_300_000_000), Some(Duration::ZERO));
        s.idle_since_hint_us = 0;
        assert_eq!(idle_from_hints(&s, 1_300_000_000), None);
    }
}
