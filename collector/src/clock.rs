//! Is a laptop's clock right? Judged from each batch's event times against the collector's clock, and recorded only when the answer changes.
//!
//! An event's `occurred_at` is the laptop's clock; `received_at` the collector's. A batch's
//! newest event tells the offset, but only sometimes: an event in the future means the clock
//! is ahead, and a fresh one that it is right, whereas an old one is either a clock behind or
//! a backlog (a laptop back from a weekend offline sends Friday's events first). A backlog
//! arrives in full batches and ends with the spool's tail, whose newest event is at most a
//! heartbeat old; a clock that is behind makes every tail old. So a full batch says nothing,
//! and "behind" needs two tail batches in a row that are old (one could be the tail of a
//! spool written before a suspend, sent before the first heartbeat after it).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// How far a laptop's clock may be off before the network manager hears of it: certificate
/// checks, school hours and the timeline's order all cope with this much.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// The agent's batch size (`agent/src/uplink.rs`): a batch this full is backlog, not the tail.
pub const FULL_BATCH: usize = 500;

/// How many old tail batches in a row make a clock "behind".
const BEHIND_AFTER: u32 = 2;

/// The judgement, kept as the device's `clock` facet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStatus {
    Ok,
    Behind,
    Ahead,
}

impl ClockStatus {
    pub fn label(self) -> &'static str {
        match self {
            ClockStatus::Ok => "ok",
            ClockStatus::Behind => "behind",
            ClockStatus::Ahead => "ahead",
        }
    }

    /// The status a stored `clock` facet holds, if any.
    pub fn from_facet(facet: Option<&Value>) -> Option<Self> {
        match facet?.get("status")?.as_str()? {
            "ok" => Some(ClockStatus::Ok),
            "behind" => Some(ClockStatus::Behind),
            "ahead" => Some(ClockStatus::Ahead),
            _ => None,
        }
    }
}

/// A device's clock as judged so far (in memory; the last recorded status seeds it).
#[derive(Debug, Default, Clone)]
pub struct ClockTracker {
    recorded: Option<ClockStatus>,
    old_tails: u32,
}

impl ClockTracker {
    /// Starts from what the device's record last said, so a restart records nothing new.
    pub fn resume(recorded: Option<ClockStatus>) -> Self {
        Self {
            recorded,
            old_tails: 0,
        }
    }

    /// Takes one batch: its newest `occurred_at`, when it was received and how many events it
    /// held. Returns the `clock` facet to record when the status changes, otherwise `None`.
    pub fn observe(
        &mut self,
        newest: DateTime<Utc>,
        received: DateTime<Utc>,
        events: usize,
    ) -> Option<(ClockStatus, Value)> {
        let offset = (newest - received).num_seconds();
        let status = if offset > TOLERANCE_SECS {
            self.old_tails = 0;
            ClockStatus::Ahead
        } else if offset >= -TOLERANCE_SECS {
            self.old_tails = 0;
            ClockStatus::Ok
        } else if events < FULL_BATCH {
            self.old_tails += 1;
            if self.old_tails < BEHIND_AFTER {
                return None;
            }
            ClockStatus::Behind
        } else {
            return None;
        };
        if self.recorded == Some(status) {
            return None;
        }
        self.recorded = Some(status);
        Some((
            status,
            json!({"status": status.label(), "offset_secs": offset, "checked_at": received}),
        ))
    }
}

/// The words for a `clock` facet beside its badge on the device page: "2 days 3 h behind".
pub fn describe(facet: Option<&Value>) -> String {
    let Some(offset) = facet
        .and_then(|f| f.get("offset_secs"))
        .and_then(Value::as_i64)
    else {
        return String::new();
    };
    if offset.abs() <= TOLERANCE_SECS {
        return String::new();
    }
    let secs = offset.unsigned_abs();
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    let amount = match (days, hours) {
        (0, 0) => format!("{mins} min"),
        (0, h) => format!("{h} h {mins} min"),
        (1, h) => format!("1 day {h} h"),
        (d, h) => format!("{d} days {h} h"),
    };
    format!("({amount} {})", if offset < 0 { "behind" } else { "ahead" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn status(r: Option<(ClockStatus, Value)>) -> Option<&'static str> {
        r.map(|(s, _)| s.label())
    }

    #[test]
    fn a_right_clock_is_recorded_once() {
        let mut t = ClockTracker::default();
        assert_eq!(status(t.observe(at(0), at(2), 3)), Some("ok"));
        assert_eq!(status(t.observe(at(300), at(301), 1)), None);
    }

    #[test]
    fn a_clock_ahead_is_flagged_at_once_with_its_offset() {
        let mut t = ClockTracker::resume(Some(ClockStatus::Ok));
        let (s, facet) = t.observe(at(3600), at(0), 1).unwrap();
        assert_eq!(
            (s, facet["offset_secs"].as_i64()),
            (ClockStatus::Ahead, Some(3600))
        );
        assert_eq!(status(t.observe(at(3700), at(100), 1)), None);
    }

    #[test]
    fn a_clock_behind_needs_two_old_tails_in_a_row() {
        let behind = Duration::days(2).num_seconds();
        let mut t = ClockTracker::resume(Some(ClockStatus::Ok));
        assert_eq!(status(t.observe(at(0), at(behind), 1)), None);
        let (s, facet) = t.observe(at(60), at(behind + 60), 1).unwrap();
        assert_eq!(s, ClockStatus::Behind);
        assert_eq!(facet["offset_secs"].as_i64(), Some(-behind));
        assert_eq!(facet["status"], "behind");
        // Fixed: the next fresh event clears it.
        assert_eq!(
            status(t.observe(at(behind + 120), at(behind + 121), 1)),
            Some("ok")
        );
    }

    #[test]
    fn offsets_are_described_in_words() {
        let d = |secs: i64| describe(Some(&json!({"offset_secs": secs})));
        assert_eq!(d(-2 * 86_400 - 3 * 3600), "(2 days 3 h behind)");
        assert_eq!(d(86_400 + 60), "(1 day 0 h ahead)");
        assert_eq!(d(-(3600 + 25 * 60)), "(1 h 25 min behind)");
        assert_eq!(d(-600), "(10 min behind)");
        assert_eq!(d(30), "");
        assert_eq!(describe(None), "");
    }

    #[test]
    fn a_backlog_is_not_a_clock_behind() {
        let mut t = ClockTracker::resume(Some(ClockStatus::Ok));
        let weekend = Duration::days(3).num_seconds();
        // Full batches of Friday's events, then the tail with a fresh heartbeat.
        for i in 0..5 {
            assert_eq!(
                status(t.observe(at(i * 10), at(weekend + i), FULL_BATCH)),
                None
            );
        }
        assert_eq!(status(t.observe(at(weekend), at(weekend + 6), 40)), None);
        // A suspended laptop: the spool's old tail first, then the heartbeat after resuming.
        assert_eq!(status(t.observe(at(0), at(weekend), 1)), None);
        assert_eq!(status(t.observe(at(weekend + 1), at(weekend + 2), 1)), None);
        assert_eq!(status(t.observe(at(10), at(2 * weekend), 1)), None);
    }
}
