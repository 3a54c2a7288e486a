//! Enrolment tokens (creation, hashing) and the limiter that slows down anyone guessing them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::datadir::random_secret;
use crate::store::{Store, StoreResult, TokenRecord};

/// Wrong tokens allowed from one address within `WINDOW` before it is refused.
const MAX_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);

/// The stored form of a token: its SHA-256, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token valid for `uses` enrolments until `expires_at`; returns the token itself,
/// which is shown once and never stored.
pub fn create(
    store: &dyn Store,
    uses: u32,
    expires_at: DateTime<Utc>,
    label: &str,
) -> StoreResult<String> {
    let token = random_secret("cte_");
    store.insert_token(&TokenRecord {
        hash: hash(&token),
        label: label.to_string(),
        max_uses: uses,
        uses: 0,
        created_at: Utc::now(),
        expires_at,
    })?;
    Ok(token)
}

/// Counts failed enrolments per source address in a fixed window.
#[derive(Default)]
pub struct FailureLimiter {
    seen: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    /// `Err(wait)` if `ip` has failed too often and must wait before trying again.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let seen = self.seen.lock().expect("limiter lock");
        match seen.get(&ip) {
            Some(&(n, start)) if n >= MAX_FAILURES && now.duration_since(start) < WINDOW => {
                Err(WINDOW - now.duration_since(start))
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut seen = self.seen.lock().expect("limiter lock");
        // Forget stale entries so a scan of many addresses cannot grow this without bound.
        if seen.len() > 10_000 {
            seen.retain(|_, (_, start)| now.duration_since(*start) < WINDOW);
        }
        let entry = seen.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_after_five_failures_and_forgives_after_the_window() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(l.check(ip, t0).is_ok());
            l.record_failure(ip, t0);
        }
        assert!(l.check(ip, t0).is_err());
        assert!(l.check("10.0.0.2".parse().unwrap(), t0).is_ok());
        assert!(l.check(ip, t0 + WINDOW).is_ok());
    }
}
