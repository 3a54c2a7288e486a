//! The security log: failed authentications and refused handshakes, as structured WARN lines
//! under the `caretaker::security` target, rate-limited so that a flood cannot fill the disk.
//!
//! Every call is counted in the metrics whether or not its line is written. Within each
//! window of [`WINDOW`] at most [`LINES_PER_WINDOW`] lines are written per kind; the first line
//! after a window that suppressed any says how many were left out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::{AuthKind, metrics};

/// The log's target, for filtering (`RUST_LOG=caretaker::security=warn`).
pub const TARGET: &str = "caretaker::security";
/// Length of one rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Lines written per kind per window.
pub const LINES_PER_WINDOW: u32 = 20;

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

fn windows() -> &'static Mutex<HashMap<AuthKind, Window>> {
    static W: std::sync::OnceLock<Mutex<HashMap<AuthKind, Window>>> = std::sync::OnceLock::new();
    W.get_or_init(Default::default)
}

/// Decides whether a line of `kind` may be written now; returns how many were suppressed
/// since the last written one, or `None` to suppress this one.
fn admit(kind: AuthKind, now: Instant) -> Option<u64> {
    let mut all = windows().lock().unwrap_or_else(|p| p.into_inner());
    let w = all.entry(kind).or_default();
    if w.started.is_none_or(|s| now.duration_since(s) >= WINDOW) {
        w.started = Some(now);
        w.written = 0;
    }
    if w.written < LINES_PER_WINDOW {
        w.written += 1;
        Some(std::mem::take(&mut w.suppressed))
    } else {
        w.suppressed += 1;
        None
    }
}

/// Records a failed authentication from `addr`: counted always, logged within the rate limit.
/// `detail` says what was wrong in words a network manager can act on.
pub fn auth_failed(kind: AuthKind, addr: Option<IpAddr>, detail: &str) {
    metrics().auth_failed(kind);
    match admit(kind, Instant::now()) {
        Some(suppressed) => {
            let addr = addr.map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!(
                target: TARGET,
                kind = ?kind,
                addr = %addr,
                suppressed_before = suppressed,
                "{detail}"
            );
        }
        None => {
            metrics().security_log_suppressed.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_cap_per_window_and_the_count_of_the_rest_carried() {
        // A kind no other test in this binary uses, so the shared windows do not interfere.
        let kind = AuthKind::EnrolmentLockedOut;
        let t0 = Instant::now();
        let admitted = (0..LINES_PER_WINDOW + 15)
            .filter(|_| admit(kind, t0).is_some())
            .count();
        assert_eq!(admitted as u32, LINES_PER_WINDOW);
        assert_eq!(admit(kind, t0 + WINDOW), Some(15));
        assert_eq!(admit(kind, t0 + WINDOW), Some(0));
    }
}
