//! Reusable desktop test rig with real parts: a private system bus (dbus-daemon), logind
//! mocked by Debian's python3-dbusmock on it, and an Xvfb display; every process is
//! killed and reaped when the rig is dropped, including on panic.
//!
//! Needs (Debian): dbus-daemon, python3-dbusmock, xvfb, xdotool. Runs as any user; the
//! lockers the probe starts run as the session's uid, so use an account that exists
//! (`nobody`, uid 65534) when the test needs a locker.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedValue, Value};
use zbus::{Connection, MatchRule, MessageStream};

const LOGIND: &str = "org.freedesktop.login1";
const MANAGER: &str = "/org/freedesktop/login1";
const SESSION_IFACE: &str = "org.freedesktop.login1.Session";
const MOCK_IFACE: &str = "org.freedesktop.DBus.Mock";

pub struct DesktopRig {
    /// Address of the private bus that plays the system bus.
    pub bus_address: String,
    /// X display of the Xvfb server, ":N".
    pub display: String,
    conn: Connection,
    /// Started processes, killed in reverse order on drop.
    procs: Vec<(String, Child)>,
    _dir: tempfile::TempDir,
}

/// Kills whatever was started so far if setup itself fails half-way.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        kill_all(&mut self.0);
    }
}

fn kill_all(procs: &mut Vec<(String, Child)>) {
    while let Some((_name, mut child)) = procs.pop() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Reads the first line a child writes to stdout (dbus-daemon's address, Xvfb's display
/// number), with a limit so a broken tool fails the test instead of hanging it.
fn first_line(child: &mut Child, what: &str) -> String {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not report within 20 s"));
    assert!(!line.trim().is_empty(), "{what} exited without reporting");
    line.trim().to_string()
}

impl DesktopRig {
    /// Starts the bus, Xvfb on a free display (the server picks it: `-displayfd`), and
    /// the logind mock, and waits until logind is on the bus.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut procs = Procs(Vec::new());

        let config = dir.path().join("system-bus.conf");
        let socket = dir.path().join("system_bus_socket");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write bus config");
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon (Debian package dbus-daemon)");
        let address = first_line(&mut bus, "dbus-daemon");
        procs.0.push(("dbus-daemon".into(), bus));

        let mut xvfb = Command::new("Xvfb")
            // -noreset: without it the server resets (and zeroes its idle time) whenever
            // its last client disconnects, which a real desktop never lets happen.
            .args([
                "-displayfd",
                "1",
                "-noreset",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "320x240x24",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb (Debian package xvfb)");
        let display = format!(":{}", first_line(&mut xvfb, "Xvfb"));
        procs.0.push(("Xvfb".into(), xvfb));

        // The mock copies its own DISPLAY into new sessions' Display property.
        let mock = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--system", "--template", "logind"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .env("DISPLAY", &display)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbusmock (Debian package python3-dbusmock)");
        procs.0.push(("dbusmock".into(), mock));

        let conn = zbus::connection::Builder::address(address.as_str())
            .expect("bus address")
            .build()
            .await
            .expect("connect to private bus");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = conn
                .call_method(
                    Some("org.freedesktop.DBus"),
                    "/org/freedesktop/DBus",
                    Some("org.freedesktop.DBus"),
                    "NameHasOwner",
                    &(LOGIND,),
                )
                .await
                .expect("NameHasOwner");
            if reply.body().deserialize::<bool>().expect("bool") {
                break;
            }
            assert!(Instant::now() < deadline, "logind mock did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        Self {
            bus_address: address,
            display,
            conn,
            procs: std::mem::take(&mut procs.0),
            _dir: dir,
        }
    }

    /// Process ids of everything the rig started.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(_, c)| c.id()).collect()
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn session_path(id: &str) -> String {
        format!("{MANAGER}/session/{id}")
    }

    /// Adds a logind session (seat0, active) of `kind` ("x11", "wayland") on `display`
    /// ("" for none); IdleHint, IdleSinceHint and LockedHint start false/0 as on a plain WM.
    pub async fn add_session(&self, id: &str, uid: u32, user: &str, kind: &str, display: &str) {
        self.conn
            .call_method(
                Some(LOGIND),
                MANAGER,
                Some(MOCK_IFACE),
                "AddSession",
                &(id, "seat0", uid, user, true),
            )
            .await
            .expect("AddSession");
        self.set_session_property(id, "Type", Value::from(kind))
            .await;
        self.set_session_property(id, "Display", Value::from(display))
            .await;
    }

    /// Properties.Set on the session, as a desktop would update its hints; the mock
    /// emits PropertiesChanged like logind.
    pub async fn set_session_property(&self, id: &str, name: &str, value: Value<'_>) {
        self.conn
            .call_method(
                Some(LOGIND),
                Self::session_path(id).as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Set",
                &(SESSION_IFACE, name, value),
            )
            .await
            .unwrap_or_else(|e| panic!("Set {name}: {e}"));
    }

    /// Makes the session idle since `idle_for` ago, per logind's hints.
    pub async fn set_idle_hint(&self, id: &str, idle_for: Duration) {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let since = now_us - idle_for.as_micros() as u64;
        self.set_session_property(id, "IdleSinceHint", Value::from(since))
            .await;
        self.set_session_property(id, "IdleHint", Value::from(true))
            .await;
    }

    /// How often Session.Lock was called on the mock.
    pub async fn lock_calls(&self, id: &str) -> usize {
        let reply = self
            .conn
            .call_method(
                Some(LOGIND),
                Self::session_path(id).as_str(),
                Some(MOCK_IFACE),
                "GetMethodCalls",
                &("Lock",),
            )
            .await
            .expect("GetMethodCalls");
        let calls: Vec<(u64, Vec<OwnedValue>)> = reply.body().deserialize().expect("a(tav)");
        calls.len()
    }

    /// Plays a desktop that answers logind's Lock signal by locking and setting
    /// LockedHint (what gnome-shell does). Abort the handle to stop.
    pub async fn answer_lock_like_a_desktop(&self, id: &str) -> tokio::task::JoinHandle<()> {
        let path = Self::session_path(id);
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(SESSION_IFACE)
            .unwrap()
            .member("Lock")
            .unwrap()
            .path(path.clone())
            .unwrap()
            .build();
        let mut stream = MessageStream::for_match_rule(rule, &self.conn, Some(8))
            .await
            .expect("subscribe to Lock");
        let conn = self.conn.clone();
        tokio::spawn(async move {
            use std::pin::Pin;
            use zbus::export::futures_core::Stream;
            while std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx))
                .await
                .is_some()
            {
                conn.call_method(
                    Some(LOGIND),
                    path.as_str(),
                    Some(SESSION_IFACE),
                    "SetLockedHint",
                    &(true,),
                )
                .await
                .expect("SetLockedHint");
            }
        })
    }

    /// User input on the display (a pointer nudge), resetting its idle time.
    pub fn input(&self) {
        let st = Command::new("xdotool")
            .args(["mousemove_relative", "--", "1", "1"])
            .env("DISPLAY", &self.display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run xdotool (Debian package xdotool)");
        assert!(st.success(), "xdotool failed: {st}");
    }

    /// The oracle: does some client hold the keyboard (a locker)? A second client's
    /// GrabKeyboard then fails with AlreadyGrabbed. Independent of the probe's own code.
    /// Asked twice, 100 ms apart, so a momentary test grab by the probe is not mistaken
    /// for a locker.
    pub fn display_locked(&self) -> bool {
        if !self.keyboard_grabbed_once() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
        self.keyboard_grabbed_once()
    }

    /// One grab attempt: true when it fails with AlreadyGrabbed.
    pub fn keyboard_grabbed_once(&self) -> bool {
        use x11rb::connection::Connection as _;
        use x11rb::protocol::xproto::{ConnectionExt as _, GrabMode, GrabStatus};
        let (conn, screen) = x11rb::connect(Some(&self.display)).expect("connect to Xvfb");
        let root = conn.setup().roots[screen].root;
        let reply = conn
            .grab_keyboard(
                false,
                root,
                x11rb::CURRENT_TIME,
                GrabMode::ASYNC,
                GrabMode::ASYNC,
            )
            .expect("GrabKeyboard")
            .reply()
            .expect("GrabKeyboard reply");
        if reply.status == GrabStatus::SUCCESS {
            let _ = conn.ungrab_keyboard(x11rb::CURRENT_TIME);
            let _ = conn.flush();
            return false;
        }
        reply.status == GrabStatus::ALREADY_GRABBED
    }
}

impl Drop for DesktopRig {
    fn drop(&mut self) {
        // Lockers started in the session exit with the X server.
        kill_all(&mut self.procs);
    }
}
