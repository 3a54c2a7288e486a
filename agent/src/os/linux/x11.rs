//! Thin X11 calls for one session's display: idle time (MIT-SCREEN-SAVER) and the
//! "is a locker holding the keyboard?" check, plus a pure `.Xauthority` reader.
//!
//! The agent runs as root but the display belongs to the user, so it authenticates with
//! the user's cookie, read from a file given explicitly (x11rb's own lookup only follows
//! the process environment). All calls block: run them on a blocking thread.

use std::path::Path;

use x11rb::connection::Connection;
use x11rb::errors::{ConnectError, ConnectionError, DisplayParsingError, ReplyError};
use x11rb::protocol::screensaver::ConnectionExt as _;
use x11rb::protocol::xproto::{ConnectionExt as _, GrabMode, GrabStatus, MapState, Window};
use x11rb::rust_connection::{DefaultStream, RustConnection};

const MIT_MAGIC_COOKIE: &[u8] = b"MIT-MAGIC-COOKIE-1";

/// Why a display could not be reached or asked.
#[derive(Debug, thiserror::Error)]
pub enum X11Error {
    #[error("display name {display:?}: {source}")]
    DisplayName {
        display: String,
        source: DisplayParsingError,
    },
    /// The name gives no address to try.
    #[error("no way to reach display {display}")]
    NoAddress { display: String },
    /// The last address tried did not connect.
    #[error("display {display}: {source}")]
    Unreachable {
        display: String,
        source: std::io::Error,
    },
    /// The X server refused the connection (authentication, for one).
    #[error("display {display}: {source}")]
    Refused {
        display: String,
        source: ConnectError,
    },
    #[error("display {display} has no screen {screen}")]
    NoScreen { display: String, screen: u16 },
    /// A request could not be sent.
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    /// A request without a name of its own in the message got an error reply.
    #[error("{0}")]
    Reply(#[from] ReplyError),
    /// A named request got an error reply.
    #[error("{request}: {source}")]
    Request {
        request: &'static str,
        source: ReplyError,
    },
    #[error("GrabKeyboard: unexpected status {0:?}")]
    GrabStatus(GrabStatus),
    /// The blocking thread running the calls panicked or was cancelled.
    #[error("{0}")]
    Thread(#[from] tokio::task::JoinError),
}

/// An open connection to a session's display.
pub struct Display {
    conn: RustConnection,
    root: Window,
    width: u16,
    height: u16,
}

/// Connects to `display` (":0"), authenticating with the matching cookie from `xauthority`
/// if that file exists and has one (else without: Xvfb in tests, or host-based access).
pub fn connect(display: &str, xauthority: Option<&Path>) -> Result<Display, X11Error> {
    let parsed = x11rb::reexports::x11rb_protocol::parse_display::parse_display(Some(display))
        .map_err(|source| X11Error::DisplayName {
            display: display.to_string(),
            source,
        })?;
    let (name, data) = xauthority
        // In the user's home, so opened as an untrusted file (a FIFO there must not hang us).
        .and_then(|p| {
            let (mut f, _) = super::untrusted::open_regular(p).ok()?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).ok()?;
            Some(bytes)
        })
        .and_then(|bytes| {
            let (entries, _warnings) = parse_xauthority(&bytes);
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            pick_cookie(&entries, parsed.display, host.trim().as_bytes())
        })
        .unwrap_or_default();
    let mut last_err = X11Error::NoAddress {
        display: display.to_string(),
    };
    for addr in parsed.connect_instruction() {
        match DefaultStream::connect(&addr) {
            Ok((stream, _peer)) => {
                let conn = RustConnection::connect_to_stream_with_auth_info(
                    stream,
                    usize::from(parsed.screen),
                    name.clone(),
                    data.clone(),
                )
                .map_err(|source| X11Error::Refused {
                    display: display.to_string(),
                    source,
                })?;
                let (root, width, height) = conn
                    .setup()
                    .roots
                    .get(usize::from(parsed.screen))
                    .map(|s| (s.root, s.width_in_pixels, s.height_in_pixels))
                    .ok_or_else(|| X11Error::NoScreen {
                        display: display.to_string(),
                        screen: parsed.screen,
                    })?;
                return Ok(Display {
                    conn,
                    root,
                    width,
                    height,
                });
            }
            Err(source) => {
                last_err = X11Error::Unreachable {
                    display: display.to_string(),
                    source,
                }
            }
        }
    }
    Err(last_err)
}

impl Display {
    /// Milliseconds since the last keyboard or pointer input on this display.
    pub fn idle_ms(&self) -> Result<u32, X11Error> {
        let reply = self
            .conn
            .screensaver_query_info(self.root)?
            .reply()
            .map_err(|source| X11Error::Request {
                request: "MIT-SCREEN-SAVER QueryInfo",
                source,
            })?;
        Ok(reply.ms_since_user_input)
    }

    /// True when a screen locker holds the display: a mapped override-redirect window
    /// covers the screen and another client holds the keyboard (what i3lock, xsecurelock
    /// and xscreensaver do). Either alone is not enough: an open menu or a test tool holds
    /// the keyboard, a full-screen game may bypass the window manager. The window check
    /// comes first because it is harmless; the grab test runs only if it passes.
    pub fn locker_holds_display(&self) -> Result<bool, X11Error> {
        Ok(self.screen_covered_by_override_redirect()? && self.keyboard_held_by_other()?)
    }

    /// A viewable override-redirect top-level window covering the whole screen.
    pub fn screen_covered_by_override_redirect(&self) -> Result<bool, X11Error> {
        let tree = self.conn.query_tree(self.root)?.reply()?;
        // Pipeline the requests: one round trip for all windows, not one per window.
        let mut cookies = Vec::new();
        for &w in &tree.children {
            let attrs = self.conn.get_window_attributes(w)?;
            let geom = self.conn.get_geometry(w)?;
            cookies.push((attrs, geom));
        }
        let mut windows = Vec::new();
        for (attrs, geom) in cookies {
            // A window can vanish between the two calls: skip it.
            let (Ok(a), Ok(g)) = (attrs.reply(), geom.reply()) else {
                continue;
            };
            windows.push(TopLevel {
                override_redirect: a.override_redirect,
                viewable: a.map_state == MapState::VIEWABLE,
                x: g.x,
                y: g.y,
                width: g.width,
                height: g.height,
            });
        }
        Ok(any_covers_screen(&windows, self.width, self.height))
    }

    /// True when another client holds the keyboard; a successful test grab is released
    /// at once. (Grabbing briefly can swallow a key typed in that instant: only call this
    /// when the session is idle or a lock is being confirmed.)
    pub fn keyboard_held_by_other(&self) -> Result<bool, X11Error> {
        let reply = self
            .conn
            .grab_keyboard(
                false,
                self.root,
                x11rb::CURRENT_TIME,
                GrabMode::ASYNC,
                GrabMode::ASYNC,
            )?
            .reply()
            .map_err(|source| X11Error::Request {
                request: "GrabKeyboard",
                source,
            })?;
        match reply.status {
            GrabStatus::SUCCESS => {
                let _ = self.conn.ungrab_keyboard(x11rb::CURRENT_TIME);
                let _ = self.conn.flush();
                Ok(false)
            }
            GrabStatus::ALREADY_GRABBED | GrabStatus::FROZEN => Ok(true),
            other => Err(X11Error::GrabStatus(other)),
        }
    }
}

/// What matters about a top-level window for the locker check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopLevel {
    pub override_redirect: bool,
    pub viewable: bool,
    pub x: i16,
    pub y: i16,
    pub width: u16,
    pub height: u16,
}

/// Pure: whether one viewable override-redirect window covers a `width`×`height` screen.
pub fn any_covers_screen(windows: &[TopLevel], width: u16, height: u16) -> bool {
    windows.iter().any(|w| {
        w.override_redirect
            && w.viewable
            && w.x <= 0
            && w.y <= 0
            && i32::from(w.x) + i32::from(w.width) >= i32::from(width)
            && i32::from(w.y) + i32::from(w.height) >= i32::from(height)
    })
}

/// One `.Xauthority` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XauthEntry {
    pub family: u16,
    pub address: Vec<u8>,
    /// Display number as text; empty matches any.
    pub number: String,
    pub name: Vec<u8>,
    pub data: Vec<u8>,
}

const FAMILY_LOCAL: u16 = 256;
const FAMILY_WILD: u16 = 65535;

/// Pure: all entries of an `.Xauthority` file (big-endian family, then four
/// length-prefixed fields); a truncated tail is a warning.
pub fn parse_xauthority(bytes: &[u8]) -> (Vec<XauthEntry>, Vec<String>) {
    fn u16_at(b: &[u8], pos: &mut usize) -> Option<u16> {
        let v = b.get(*pos..*pos + 2)?;
        *pos += 2;
        Some(u16::from_be_bytes([v[0], v[1]]))
    }
    fn field(b: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
        let len = usize::from(u16_at(b, pos)?);
        let v = b.get(*pos..*pos + len)?.to_vec();
        *pos += len;
        Some(v)
    }
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let entry = (|| {
            let family = u16_at(bytes, &mut pos)?;
            let address = field(bytes, &mut pos)?;
            let number = String::from_utf8_lossy(&field(bytes, &mut pos)?).into_owned();
            let name = field(bytes, &mut pos)?;
            let data = field(bytes, &mut pos)?;
            Some(XauthEntry {
                family,
                address,
                number,
                name,
                data,
            })
        })();
        match entry {
            Some(e) => entries.push(e),
            None => {
                warnings.push(format!("truncated Xauthority entry at byte {start}"));
                break;
            }
        }
    }
    (entries, warnings)
}

/// Pure: the MIT-MAGIC-COOKIE-1 (name, data) for a local display: an entry for this host
/// (or a wildcard) and this display number (or any) wins; failing that, any local entry for
/// the display (the hostname may have changed since login).
pub fn pick_cookie(
    entries: &[XauthEntry],
    display: u16,
    hostname: &[u8],
) -> Option<(Vec<u8>, Vec<u8>)> {
    let number = display.to_string();
    let usable =
        |e: &&XauthEntry| e.name == MIT_MAGIC_COOKIE && (e.number.is_empty() || e.number == number);
    entries
        .iter()
        .filter(usable)
        .find(|e| e.family == FAMILY_WILD || (e.family == FAMILY_LOCAL && e.address == hostname))
        .or_else(|| {
            entries
                .iter()
                .filter(usable)
                .find(|e| e.family == FAMILY_LOCAL)
        })
        .map(|e| (e.name.clone(), e.data.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded with: xauth -f testdata/Xauthority add testhost/unix:7 MIT-MAGIC-COOKIE-1
    // 00112233445566778899aabbccddeeff ; xauth -f … add otherhost/unix:0 … ffee…; and
    // xauth -f … add testhost/unix:3 XDM-AUTHORIZATION-1 …
    const RECORDED: &[u8] = include_bytes!("testdata/Xauthority");

    #[test]
    fn reads_a_file_written_by_xauth() {
        let (entries, warnings) = parse_xauthority(RECORDED);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(entries.len(), 3);
        let e = entries.iter().find(|e| e.number == "7").unwrap();
        assert_eq!(e.family, FAMILY_LOCAL);
        assert_eq!(e.address, b"testhost");
        assert_eq!(e.name, MIT_MAGIC_COOKIE);
        assert_eq!(e.data[0], 0x00);
        assert_eq!(e.data[15], 0xff);
    }

    #[test]
    fn picks_the_cookie_for_the_display() {
        let (entries, _) = parse_xauthority(RECORDED);
        let (name, data) = pick_cookie(&entries, 7, b"testhost").unwrap();
        assert_eq!(name, MIT_MAGIC_COOKIE);
        assert_eq!(data.len(), 16);
        // Hostname changed since login: still the local entry for :7.
        assert_eq!(pick_cookie(&entries, 7, b"renamed").unwrap().1, data);
        // :0 is only for otherhost, also found by the fallback; :3 is not a magic cookie.
        assert!(pick_cookie(&entries, 0, b"testhost").is_some());
        assert_eq!(pick_cookie(&entries, 3, b"testhost"), None);
        assert_eq!(pick_cookie(&entries, 9, b"testhost"), None);
    }

    #[test]
    fn only_a_viewable_override_redirect_window_over_the_whole_screen_counts() {
        let locker = TopLevel {
            override_redirect: true,
            viewable: true,
            x: 0,
            y: 0,
            width: 1920,
            height: 1080,
        };
        assert!(any_covers_screen(&[locker], 1920, 1080));
        let menu = TopLevel {
            width: 200,
            height: 300,
            ..locker
        };
        let managed = TopLevel {
            override_redirect: false,
            ..locker
        };
        let unmapped = TopLevel {
            viewable: false,
            ..locker
        };
        assert!(!any_covers_screen(&[menu, managed, unmapped], 1920, 1080));
        // Larger than the screen (a locker spanning several monitors) still covers it.
        let wide = TopLevel {
            x: -10,
            width: 4000,
            ..locker
        };
        assert!(any_covers_screen(&[wide], 1920, 1080));
    }

    #[test]
    fn truncated_file_keeps_whole_entries_and_warns() {
        let (entries, warnings) = parse_xauthority(&RECORDED[..RECORDED.len() - 3]);
        assert_eq!(entries.len(), 2);
        assert_eq!(warnings.len(), 1);
        assert_eq!(parse_xauthority(&[]), (vec![], vec![]));
    }
}
