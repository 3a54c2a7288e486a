//! Thin calls to systemd-logind on the system bus: sessions, their hints, Lock, inhibitors.
//!
//! Each call is one D-Bus round trip; turning property maps into `LogindSession` is a pure
//! function with unit tests, so a logind that lacks a property yields warnings, not errors.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::pin::Pin;

use zbus::export::futures_core::Stream;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, MessageStream};

pub const DEST: &str = "org.freedesktop.login1";
pub const MANAGER_PATH: &str = "/org/freedesktop/login1";
pub const MANAGER_IFACE: &str = "org.freedesktop.login1.Manager";
pub const SESSION_IFACE: &str = "org.freedesktop.login1.Session";
const PROPS_IFACE: &str = "org.freedesktop.DBus.Properties";

/// The parts of a logind session object the screen-lock probe uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogindSession {
    pub id: String,
    pub path: String,
    pub user: String,
    pub uid: u32,
    /// "x11", "wayland", "tty", "mir", "unspecified", …
    pub kind: String,
    /// "user", "greeter", "lock-screen", "background", …
    pub class: String,
    /// X11 display name (":0") for X sessions; often empty for Wayland.
    pub display: String,
    pub active: bool,
    pub idle_hint: bool,
    /// Microseconds since the Unix epoch; 0 when nobody ever set the hint.
    pub idle_since_hint_us: u64,
    pub locked_hint: bool,
}

impl LogindSession {
    /// A desktop user session, the only kind the policy is about (not greeters, ttys).
    pub fn is_graphical_user_session(&self) -> bool {
        self.class == "user" && (self.kind == "x11" || self.kind == "wayland")
    }
}

/// Connection to logind plus a stream of every signal it sends.
pub struct Logind {
    conn: Connection,
    signals: Option<MessageStream>,
}

/// Why a call to logind failed, in the words zbus uses.
#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    /// Connecting, subscribing, a method call or decoding its reply.
    #[error("{0}")]
    Bus(#[from] zbus::Error),
    /// A property of another type than expected.
    #[error("{0}")]
    Value(#[from] zbus::zvariant::Error),
    #[error("user object has no GID")]
    NoGid,
}

impl Logind {
    /// Connects to the system bus, or to `address` (tests use a private bus).
    pub async fn connect(address: Option<&str>) -> Result<Self, LogindError> {
        let conn = match address {
            Some(a) => zbus::connection::Builder::address(a)?.build().await?,
            None => Connection::system().await?,
        };
        Ok(Self {
            conn,
            signals: None,
        })
    }

    /// Starts listening for logind's signals (SessionNew/SessionRemoved, PropertiesChanged,
    /// Lock/Unlock) so the probe reacts instead of polling.
    pub async fn subscribe(&mut self) -> Result<(), LogindError> {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .path_namespace(MANAGER_PATH)?
            .build();
        let stream = MessageStream::for_match_rule(rule, &self.conn, Some(64)).await?;
        self.signals = Some(stream);
        Ok(())
    }

    /// Resolves at the next logind signal that can change a decision; never, if not
    /// subscribed or the stream ended.
    pub async fn next_signal(&mut self) {
        let Some(s) = self.signals.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await {
                Some(Ok(m)) => {
                    let h = m.header();
                    let iface = h.interface().map(|i| i.as_str()).unwrap_or("");
                    let member = h.member().map(|m| m.as_str()).unwrap_or("");
                    if signal_is_relevant(iface, member) {
                        return;
                    }
                }
                Some(Err(_)) => {}
                None => {
                    self.signals = None;
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Calls a method of logind's Manager and decodes its reply.
    async fn manager<B, R>(&self, method: &str, body: &B) -> Result<R, LogindError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: serde::de::DeserializeOwned + zbus::zvariant::Type,
    {
        let reply = self
            .conn
            .call_method(Some(DEST), MANAGER_PATH, Some(MANAGER_IFACE), method, body)
            .await?;
        Ok(reply.body().deserialize()?)
    }

    /// All sessions with their properties, plus warnings about sessions that could not be read.
    pub async fn sessions(&self) -> Result<(Vec<LogindSession>, Vec<String>), LogindError> {
        let list: Vec<(String, u32, String, String, OwnedObjectPath)> =
            self.manager("ListSessions", &()).await?;
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        for (id, _uid, _name, _seat, path) in list {
            match self.get_all(path.as_str(), SESSION_IFACE).await {
                Ok(props) => {
                    let (s, w) = session_from_properties(&id, path.as_str(), &props);
                    warnings.extend(w);
                    out.push(s);
                }
                // The session may have ended between the two calls.
                Err(e) => warnings.push(format!("session {id}: {e}")),
            }
        }
        Ok((out, warnings))
    }

    async fn get_all(
        &self,
        path: &str,
        iface: &str,
    ) -> Result<HashMap<String, OwnedValue>, LogindError> {
        let reply = self
            .conn
            .call_method(Some(DEST), path, Some(PROPS_IFACE), "GetAll", &(iface,))
            .await?;
        Ok(reply.body().deserialize()?)
    }

    /// Current LockedHint of one session.
    pub async fn locked_hint(&self, session_path: &str) -> Result<bool, LogindError> {
        let reply = self
            .conn
            .call_method(
                Some(DEST),
                session_path,
                Some(PROPS_IFACE),
                "Get",
                &(SESSION_IFACE, "LockedHint"),
            )
            .await?;
        let v: OwnedValue = reply.body().deserialize()?;
        Ok(bool::try_from(v)?)
    }

    /// Session.Lock(): logind only emits the Lock signal; the desktop's locker must act.
    pub async fn lock(&self, session_path: &str) -> Result<(), LogindError> {
        self.conn
            .call_method(Some(DEST), session_path, Some(SESSION_IFACE), "Lock", &())
            .await?;
        Ok(())
    }

    /// Users holding an "idle" block inhibitor.
    pub async fn idle_inhibitor_uids(&self) -> Result<HashSet<u32>, LogindError> {
        let list: Vec<(String, String, String, String, u32, u32)> =
            self.manager("ListInhibitors", &()).await?;
        Ok(idle_inhibitor_uids(&list))
    }

    /// The primary group of a logged-in user, from logind's User object.
    pub async fn user_gid(&self, uid: u32) -> Result<u32, LogindError> {
        let path: OwnedObjectPath = self.manager("GetUser", &(uid,)).await?;
        let props = self
            .get_all(path.as_str(), "org.freedesktop.login1.User")
            .await?;
        props
            .get("GID")
            .and_then(|v| u32::try_from(v.clone()).ok())
            .ok_or(LogindError::NoGid)
    }
}

/// Pure: a session from its `GetAll` property map. Missing or mistyped properties become
/// defaults plus a warning.
pub fn session_from_properties(
    id: &str,
    path: &str,
    props: &HashMap<String, OwnedValue>,
) -> (LogindSession, Vec<String>) {
    let mut warnings = Vec::new();
    let mut missing = |name: &str| warnings.push(format!("session {id}: no usable {name}"));
    let string = |name: &str, missing: &mut dyn FnMut(&str)| -> String {
        match props.get(name).map(|v| &**v) {
            Some(Value::Str(s)) => s.to_string(),
            _ => {
                missing(name);
                String::new()
            }
        }
    };
    let boolean = |name: &str, missing: &mut dyn FnMut(&str)| -> bool {
        match props.get(name).map(|v| &**v) {
            Some(Value::Bool(b)) => *b,
            _ => {
                missing(name);
                false
            }
        }
    };
    let user_name = string("Name", &mut missing);
    let kind = string("Type", &mut missing);
    let class = string("Class", &mut missing);
    let display = string("Display", &mut missing);
    let active = boolean("Active", &mut missing);
    let idle_hint = boolean("IdleHint", &mut missing);
    let locked_hint = boolean("LockedHint", &mut missing);
    let idle_since_hint_us = match props.get("IdleSinceHint").map(|v| &**v) {
        Some(Value::U64(t)) => *t,
        _ => {
            missing("IdleSinceHint");
            0
        }
    };
    let uid = match props.get("User").map(|v| &**v) {
        Some(Value::Structure(s)) => match s.fields().first() {
            Some(Value::U32(u)) => *u,
            _ => {
                missing("User");
                u32::MAX
            }
        },
        _ => {
            missing("User");
            u32::MAX
        }
    };
    (
        LogindSession {
            id: id.to_string(),
            path: path.to_string(),
            user: user_name,
            uid,
            kind,
            class,
            display,
            active,
            idle_hint,
            idle_since_hint_us,
            locked_hint,
        },
        warnings,
    )
}

/// Pure: whether a signal under logind's path can change a screen-lock decision. Anything
/// else is ignored: reacting to every signal can loop (dbusmock, for one, announces each
/// method call the probe makes with a `MethodCalled` signal).
pub fn signal_is_relevant(interface: &str, member: &str) -> bool {
    matches!(
        (interface, member),
        ("org.freedesktop.DBus.Properties", "PropertiesChanged")
            | (MANAGER_IFACE, "SessionNew" | "SessionRemoved")
            | (SESSION_IFACE, "Lock" | "Unlock")
    )
}

/// Pure: uids holding an idle inhibitor in block mode (ListInhibitors rows are
/// what, who, why, mode, uid, pid; `what` is colon-separated).
pub fn idle_inhibitor_uids(list: &[(String, String, String, String, u32, u32)]) -> HashSet<u32> {
    list.iter()
        .filter(|(what, _, _, mode, _, _)| mode == "block" && what.split(':').any(|w| w == "idle"))
        .map(|(_, _, _, _, uid, _)| *uid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::{ObjectPath, StructureBuilder};

    fn ov(v: Value<'_>) -> OwnedValue {
        OwnedValue::try_from(v).unwrap()
    }

    fn full() -> HashMap<String, OwnedValue> {
        let user = StructureBuilder::new()
            .add_field(1000u32)
            .add_field(ObjectPath::try_from("/org/freedesktop/login1/user/_1000").unwrap())
            .build()
            .unwrap();
        [
            ("Name", ov(Value::from("pupil"))),
            ("Type", ov(Value::from("x11"))),
            ("Class", ov(Value::from("user"))),
            ("Display", ov(Value::from(":0"))),
            ("Active", ov(Value::from(true))),
            ("IdleHint", ov(Value::from(true))),
            ("IdleSinceHint", ov(Value::from(1_700_000_000_000_000u64))),
            ("LockedHint", ov(Value::from(false))),
            ("User", ov(Value::from(user))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn reads_a_complete_session() {
        let (s, w) = session_from_properties("3", "/p/3", &full());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(s.user, "pupil");
        assert_eq!(s.uid, 1000);
        assert_eq!(s.display, ":0");
        assert!(s.idle_hint && s.active && !s.locked_hint);
        assert_eq!(s.idle_since_hint_us, 1_700_000_000_000_000);
        assert!(s.is_graphical_user_session());
    }

    #[test]
    fn missing_and_mistyped_properties_are_warnings() {
        let mut p = full();
        p.remove("LockedHint"); // old logind versions lack it
        p.insert("IdleHint".into(), ov(Value::from("yes")));
        let (s, w) = session_from_properties("3", "/p/3", &p);
        assert!(!s.locked_hint && !s.idle_hint);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("IdleHint") || w[1].contains("IdleHint"));
    }

    #[test]
    fn greeters_and_ttys_are_not_graphical_user_sessions() {
        let mut s = session_from_properties("3", "/p/3", &full()).0;
        s.class = "greeter".into();
        assert!(!s.is_graphical_user_session());
        s.class = "user".into();
        s.kind = "tty".into();
        assert!(!s.is_graphical_user_session());
    }

    #[test]
    fn only_decision_signals_wake_the_probe() {
        assert!(signal_is_relevant(
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged"
        ));
        assert!(signal_is_relevant(MANAGER_IFACE, "SessionRemoved"));
        assert!(signal_is_relevant(SESSION_IFACE, "Unlock"));
        assert!(!signal_is_relevant(
            "org.freedesktop.DBus.Mock",
            "MethodCalled"
        ));
        assert!(!signal_is_relevant(MANAGER_IFACE, "PrepareForShutdown"));
    }

    #[test]
    fn only_blocking_idle_inhibitors_count() {
        let row = |what: &str, mode: &str, uid| {
            (
                what.to_string(),
                "w".to_string(),
                "y".to_string(),
                mode.to_string(),
                uid,
                1,
            )
        };
        let uids = idle_inhibitor_uids(&[
            row("sleep:idle", "block", 1000),
            row("idle", "delay", 1001),
            row("shutdown", "block", 1002),
            row("handle-lid-switch", "block", 1003),
        ]);
        assert_eq!(uids, HashSet::from([1000]));
    }
}
