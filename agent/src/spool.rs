//! The durable spool: every event is written here (and fsynced) before anything else happens to it.
//!
//! Invariants: an event leaves the spool only when the collector has
//! acknowledged it, or when the spool is full, in which case the oldest go and
//! an `agent.events_dropped` event records how many. Sequence numbers come
//! from a reservation file beside the spool, so even a spool that had to be
//! set aside never reuses a number the collector has already stored.
//!
//! A ledger beside the spool (`spool.tally`) records which numbers it should
//! hold: the runs of numbers written and the highest number that left on
//! purpose. The storage engine can lose the tail of its log to damage and open
//! without complaint, so the spool is checked against the ledger at open and
//! anything missing is reported with its count, never lost silently. The ledger and the
//! reservation file themselves are `spool/ledger.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::NewEvent;

mod ledger;
use ledger::{Ledger, io_err, read_floor, read_ledger, write_floor, write_synced};

/// Sequence numbers reserved per write of the reservation file.
const SEQ_BLOCK: u64 = 1024;
/// Largest details object kept as-is; bigger ones are replaced by a note,
/// so one runaway event can never block the uplink.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool storage failed: {0}")]
    Engine(#[from] sled::Error),
    #[error("spool file I/O failed on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Why a spool on disk could not be used as it was (it is then moved aside, never deleted).
#[derive(Debug, thiserror::Error)]
pub enum SpoolDamage {
    #[error("{0}")]
    Engine(#[from] sled::Error),
    #[error("the storage engine panicked while opening it")]
    EnginePanicked,
    #[error("an entry is unreadable: {0}")]
    Entry(#[source] serde_json::Error),
}

/// Why the sequence reservation file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FloorUnreadable {
    #[error("unreadable")]
    NotANumber,
    #[error("unreadable ({0})")]
    Io(#[source] std::io::Error),
}

/// An event with its sequence number, as spooled and sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpooledEvent {
    pub seq: u64,
    pub occurred_at: DateTime<Utc>,
    pub user: Option<String>,
    pub kind: String,
    pub details: Map<String, Value>,
}

/// What happened when the spool was opened, for the agent to report.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenNote {
    /// The old spool could not be opened and was moved to `moved_to`; `lost` is how many
    /// unsent events the ledger says it held (unknown without a ledger).
    MovedAside {
        reason: String,
        moved_to: PathBuf,
        lost: Option<Lost>,
    },
    /// The spool opened, but events the ledger says were written and not yet sent are missing.
    Damaged { lost: Lost },
    /// `seq.floor` was missing or unreadable; numbering continues above every number the
    /// spool and its ledger have seen (`next_seq`), and the collector is asked for its highest.
    FloorRecovered { reason: String, next_seq: u64 },
}

/// Events missing from the spool: how many, and the lowest and highest missing number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lost {
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl OpenNote {
    /// The event that reports this note (`agent.spool_recovered`).
    pub fn event(&self) -> NewEvent {
        let mut d = match self {
            OpenNote::MovedAside {
                reason, moved_to, ..
            } => crate::details! {
                "reason" => reason,
                "moved_to" => moved_to.display().to_string(),
            },
            OpenNote::Damaged { .. } => crate::details! {
                "reason" => "the spool opened with events missing (damaged storage)",
            },
            OpenNote::FloorRecovered { reason, next_seq } => crate::details! {
                "reason" => format!("the sequence reservation file was {reason}"),
                "next_seq" => next_seq,
            },
        };
        if let OpenNote::MovedAside { lost: Some(l), .. } | OpenNote::Damaged { lost: l } = self {
            d.insert("lost".into(), l.count.into());
            d.insert("lost_first_seq".into(), l.first_seq.into());
            d.insert("lost_last_seq".into(), l.last_seq.into());
        }
        NewEvent::now("agent.spool_recovered", None, d)
    }
}

/// What an existing spool holds, counted when it is opened.
#[derive(Default)]
struct Tally {
    bytes: u64,
    count: u64,
    last: u64,
    /// Every sequence number present, ascending.
    keys: Vec<u64>,
}

pub struct Spool {
    events: sled::Tree,
    db: sled::Db,
    seq_file: PathBuf,
    ledger: Ledger,
    ledger_file: PathBuf,
    /// The first number handed out since open: numbers from here on have not been sent
    /// before this run.
    first_this_run: u64,
    /// `seq.floor` was lost at open and the collector has not yet been asked for its
    /// highest number (`raise_floor`).
    floor_unverified: bool,
    next_seq: u64,
    reserved_to: u64,
    bytes: u64,
    count: u64,
    max_bytes: u64,
}

fn open_db(dir: &Path) -> Result<sled::Db, SpoolDamage> {
    // sled can panic on some damaged files rather than return an error.
    let dir = dir.to_path_buf();
    match std::panic::catch_unwind(move || {
        sled::Config::new().path(dir).flush_every_ms(None).open()
    }) {
        Ok(opened) => Ok(opened?),
        Err(_) => Err(SpoolDamage::EnginePanicked),
    }
}

impl Spool {
    /// Opens the spool in `dir`. A spool that cannot be opened or read is moved aside (never
    /// deleted) and a fresh one started; events its ledger says are missing are counted; a
    /// lost `seq_file` is rebuilt from the spool and the ledger. The notes say what happened.
    pub fn open(
        dir: &Path,
        seq_file: &Path,
        max_bytes: u64,
    ) -> Result<(Self, Vec<OpenNote>), SpoolError> {
        let mut notes = Vec::new();
        let ledger_file = dir.with_extension("tally");
        let ledger = read_ledger(&ledger_file);
        // A first start has neither a spool nor a reservation yet; a spool without one has
        // lost it, even if it is empty now.
        let fresh_install = !dir.exists();
        let (db, tally) = match open_db(dir).and_then(|db| Self::check(&db).map(|t| (db, t))) {
            Ok(opened) => {
                if let Some(lost) = ledger.as_ref().and_then(|l| l.missing(&opened.1.keys)) {
                    tracing::error!(
                        lost = lost.count,
                        first_seq = lost.first_seq,
                        last_seq = lost.last_seq,
                        "Spool damaged: events written to it are missing and will not be sent"
                    );
                    notes.push(OpenNote::Damaged { lost });
                }
                opened
            }
            Err(reason) => {
                let moved_to = dir.with_file_name(format!(
                    "{}.corrupt-{}",
                    dir.file_name().and_then(|n| n.to_str()).unwrap_or("spool"),
                    Utc::now().format("%Y%m%dT%H%M%SZ")
                ));
                fs::rename(dir, &moved_to).map_err(io_err(dir))?;
                let lost = ledger.as_ref().and_then(|l| l.missing(&[]));
                let reason = reason.to_string();
                tracing::error!(%reason, moved_to = %moved_to.display(), lost = lost.map(|l| l.count), "Spool was unreadable; moved it aside and started a new one");
                notes.push(OpenNote::MovedAside {
                    reason,
                    moved_to,
                    lost,
                });
                let fresh = open_db(dir).map_err(|e| SpoolError::Io {
                    path: dir.display().to_string(),
                    source: std::io::Error::other(e),
                })?;
                (fresh, Tally::default())
            }
        };
        let events = db.open_tree("events")?;
        let Tally {
            bytes,
            count,
            last,
            keys,
        } = tally;
        // Whatever was found missing has been reported: from here the ledger describes
        // what the spool holds.
        let old = ledger.unwrap_or_default();
        let ledger = Ledger {
            removed_through: old.removed_through,
            runs: Ledger::runs_of(&keys),
        };
        // Skip past every number that might have been handed out before: the reservation,
        // and (should that be lost) every number the spool or its ledger has seen, including
        // the last acknowledged.
        let seen = last.max(old.highest());
        let floor = match read_floor(seq_file) {
            Ok(Some(n)) => n,
            Ok(None) if seen == 0 && fresh_install => 1,
            Ok(None) => {
                notes.push(Self::floor_lost("missing", seen + 1));
                seen + 1
            }
            Err(why) => {
                notes.push(Self::floor_lost(&why.to_string(), seen + 1));
                seen + 1
            }
        };
        let next_seq = floor.max(seen + 1);
        let mut spool = Self {
            events,
            db,
            seq_file: seq_file.to_path_buf(),
            ledger,
            ledger_file,
            first_this_run: next_seq,
            floor_unverified: notes
                .iter()
                .any(|n| matches!(n, OpenNote::FloorRecovered { .. })),
            next_seq,
            reserved_to: next_seq,
            bytes,
            count,
            max_bytes,
        };
        spool.reserve()?;
        spool.save_ledger()?;
        Ok((spool, notes))
    }

    fn floor_lost(why: &str, next_seq: u64) -> OpenNote {
        tracing::error!(
            path = "seq.floor",
            reason = why,
            next_seq,
            "Sequence reservation file lost; numbering continues above the spool's and the last acknowledged"
        );
        OpenNote::FloorRecovered {
            reason: why.to_string(),
            next_seq,
        }
    }

    /// Moves numbering above `highest`, the collector's highest stored number for this
    /// device, asked for after the reservation file was lost. Events numbered at or below
    /// it since the spool was opened have not been sent yet (the uplink asks first), so they
    /// are renumbered above it: the collector would otherwise drop them as resends.
    /// Returns how many were renumbered.
    pub fn raise_floor(&mut self, highest: u64) -> Result<u64, SpoolError> {
        self.floor_unverified = false;
        if highest < self.first_this_run {
            return Ok(0);
        }
        if self.next_seq <= highest {
            self.next_seq = highest + 1;
            self.reserve()?;
        }
        let clash: Vec<(sled::IVec, sled::IVec)> = self
            .events
            .range(self.first_this_run.to_be_bytes()..=highest.to_be_bytes())
            .collect::<Result<_, _>>()?;
        for (k, v) in &clash {
            let Ok(mut e) = serde_json::from_slice::<SpooledEvent>(v) else {
                continue;
            };
            self.events.remove(k)?;
            self.bytes = self.bytes.saturating_sub((k.len() + v.len()) as u64);
            self.count -= 1;
            e.seq = self.next()?;
            self.insert(&e)?;
        }
        self.db.flush()?;
        self.ledger.runs = Ledger::runs_of(
            &self
                .events
                .iter()
                .keys()
                .map(|k| k.map(|k| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]))))
                .collect::<Result<Vec<_>, _>>()?,
        );
        self.save_ledger()?;
        Ok(clash.len() as u64)
    }

    /// True until the collector has been asked for its highest number after `seq.floor`
    /// was lost at open.
    pub fn floor_unverified(&self) -> bool {
        self.floor_unverified
    }

    /// Gives up asking (a collector too old to answer): the spool's own floor stands.
    pub fn floor_checked(&mut self) {
        self.floor_unverified = false;
    }

    /// The next number this spool will hand out.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn save_ledger(&self) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(&self.ledger).expect("ledger serialises");
        write_synced(&self.ledger_file, &bytes)
    }

    /// Reads every entry once, so damage shows at open time rather than mid-stream, and
    /// counts what is there in the same pass.
    fn check(db: &sled::Db) -> Result<Tally, SpoolDamage> {
        let tree = db.open_tree("events")?;
        let mut t = Tally::default();
        for item in tree.iter() {
            let (k, v) = item?;
            serde_json::from_slice::<SpooledEvent>(&v).map_err(SpoolDamage::Entry)?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            t.bytes += (k.len() + v.len()) as u64;
            t.count += 1;
            t.last = t.last.max(seq);
            t.keys.push(seq);
        }
        Ok(t)
    }

    fn reserve(&mut self) -> Result<(), SpoolError> {
        self.reserved_to = self.next_seq + SEQ_BLOCK;
        write_floor(&self.seq_file, self.reserved_to)
    }

    fn insert(&mut self, e: &SpooledEvent) -> Result<(), SpoolError> {
        let v = serde_json::to_vec(e).expect("events serialise");
        self.bytes += (8 + v.len()) as u64;
        self.count += 1;
        self.events.insert(e.seq.to_be_bytes(), v)?;
        self.ledger.written(e.seq);
        Ok(())
    }

    /// The events are durable whether or not the ledger can be written: a stale ledger
    /// only under-counts damage later, so a failure here is a warning, not an error.
    fn save_ledger_after_write(&self) {
        if let Err(e) = self.save_ledger() {
            tracing::warn!(error = %e, "Could not update the spool ledger");
        }
    }

    fn next(&mut self) -> Result<u64, SpoolError> {
        if self.next_seq >= self.reserved_to {
            self.reserve()?;
        }
        let s = self.next_seq;
        self.next_seq += 1;
        Ok(s)
    }

    /// Writes events durably, assigning sequence numbers; returns them.
    pub fn append(&mut self, events: Vec<NewEvent>) -> Result<Vec<u64>, SpoolError> {
        let mut seqs = Vec::with_capacity(events.len());
        for e in events {
            let seq = self.next()?;
            let mut details = e.details;
            let size = serde_json::to_vec(&details).map(|v| v.len()).unwrap_or(0);
            if size > MAX_EVENT_BYTES {
                details = crate::details! { "truncated" => true, "original_bytes" => size };
            }
            self.insert(&SpooledEvent {
                seq,
                occurred_at: e.occurred_at,
                user: e.user,
                kind: e.kind,
                details,
            })?;
            seqs.push(seq);
        }
        self.enforce_bound()?;
        self.db.flush()?;
        // Only once they are durable: the ledger must never claim what the spool lacks.
        self.save_ledger_after_write();
        Ok(seqs)
    }

    /// Drops the oldest events while over the bound, then records the loss as an event.
    fn enforce_bound(&mut self) -> Result<(), SpoolError> {
        if self.bytes <= self.max_bytes {
            return Ok(());
        }
        // Free a tenth more than needed so a full spool is not trimmed on every write.
        let target = self.max_bytes - self.max_bytes / 10;
        let (mut dropped, mut first, mut last) = (0u64, None, 0u64);
        while self.bytes > target {
            let Some((k, v)) = self.events.pop_min()? else {
                break;
            };
            self.bytes = self.bytes.saturating_sub((k.len() + v.len()) as u64);
            self.count -= 1;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            // Counted in the drop note; the ledger written after this append's flush says so.
            self.ledger.removed(seq);
            // An earlier loss note being dropped passes its count (and its
            // range) on to the new note, so the total lost is never lost.
            let earlier = serde_json::from_slice::<SpooledEvent>(&v)
                .ok()
                .filter(|e| e.kind == "agent.events_dropped");
            match earlier {
                Some(note) => {
                    let n = |k: &str| note.details.get(k).and_then(Value::as_u64).unwrap_or(0);
                    dropped += n("count");
                    first.get_or_insert(n("first_seq"));
                    last = last.max(n("last_seq"));
                }
                None => {
                    first.get_or_insert(seq);
                    last = seq;
                    dropped += 1;
                }
            }
        }
        tracing::error!(dropped, "Spool full: dropped the oldest events");
        let seq = self.next()?;
        self.insert(&SpooledEvent {
            seq,
            occurred_at: Utc::now(),
            user: None,
            kind: "agent.events_dropped".into(),
            details: crate::details! {
                "count" => dropped,
                "first_seq" => first.unwrap_or(0),
                "last_seq" => last,
                "reason" => "spool full",
                "spool_max_bytes" => self.max_bytes,
            },
        })
    }

    /// Up to `max_events` events with seq greater than `after`, oldest first, within about `max_bytes`.
    pub fn read_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<SpooledEvent>, SpoolError> {
        let mut out = Vec::new();
        let mut size = 0;
        for item in self.events.range((after + 1).to_be_bytes()..) {
            let (_, v) = item?;
            size += v.len();
            if !out.is_empty() && size > max_bytes {
                break;
            }
            match serde_json::from_slice(&v) {
                Ok(e) => out.push(e),
                Err(e) => tracing::error!(error = %e, "Skipping an unreadable spool entry"),
            }
            if out.len() >= max_events {
                break;
            }
        }
        Ok(out)
    }

    /// Removes everything up to and including `through` (acknowledged by the collector).
    pub fn ack(&mut self, through: u64) -> Result<u64, SpoolError> {
        // The ledger first: were the removal durable and the ledger not, the acknowledged
        // events would later look lost. This also keeps the last acknowledged number, from
        // which numbering resumes should `seq.floor` be lost.
        if self.ledger.removed(through) {
            self.save_ledger()?;
        }
        let mut removed = 0;
        while let Some((k, v)) = self.events.first()? {
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            if seq > through {
                break;
            }
            self.events.remove(&k)?;
            self.bytes = self.bytes.saturating_sub((k.len() + v.len()) as u64);
            self.count -= 1;
            removed += 1;
        }
        // Losing an ack on a crash only means a resend, which the collector
        // dedupes, so this needs no fsync of its own.
        Ok(removed)
    }

    pub fn depth(&self) -> u64 {
        self.count
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ev(kind: &str) -> NewEvent {
        NewEvent::unchecked(kind, Map::new())
    }

    fn open(dir: &Path, max: u64) -> (Spool, Vec<OpenNote>) {
        Spool::open(&dir.join("spool"), &dir.join("seq"), max).unwrap()
    }

    #[test]
    fn events_survive_reopen_and_ack_removes_only_acked() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, note) = open(d.path(), 1 << 20);
            assert_eq!(note, vec![]);
            assert_eq!(
                s.append(vec![ev("a.b"), ev("a.c"), ev("a.d")]).unwrap(),
                vec![1, 2, 3]
            );
            assert_eq!(s.ack(2).unwrap(), 2);
        }
        let (mut s, note) = open(d.path(), 1 << 20);
        assert_eq!(note, vec![], "acknowledged events are not lost ones");
        let left = s.read_after(0, 100, 1 << 20).unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
        // Numbers are never reused after a restart.
        assert!(s.append(vec![ev("a.e")]).unwrap()[0] > 3);
    }

    #[test]
    fn full_spool_drops_oldest_and_says_how_many() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = open(d.path(), 4_000);
        for _ in 0..100 {
            s.append(vec![ev("agent.heartbeat")]).unwrap();
        }
        assert!(s.bytes() <= 4_000 + 300);
        let all = s.read_after(0, 10_000, 1 << 20).unwrap();
        let dropped: u64 = all
            .iter()
            .filter(|e| e.kind == "agent.events_dropped")
            .map(|e| e.details["count"].as_u64().unwrap())
            .sum();
        let kept = all.iter().filter(|e| e.kind == "agent.heartbeat").count() as u64;
        assert!(dropped > 0);
        // Every heartbeat is either still here or counted as dropped: never lost silently.
        assert_eq!(kept + dropped, 100, "kept {kept} + dropped {dropped}");
    }

    #[test]
    fn unreadable_spool_is_moved_aside_and_a_new_one_works() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = open(d.path(), 1 << 20);
            s.append(vec![ev("a.b")]).unwrap();
        }
        // Damage every file of the old spool.
        for entry in fs::read_dir(d.path().join("spool")).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                fs::write(&p, b"this is not a sled database").unwrap();
            }
        }
        let (mut s, note) = open(d.path(), 1 << 20);
        let [OpenNote::MovedAside { moved_to, lost, .. }] = &note[..] else {
            panic!("expected a note, got {note:?}")
        };
        assert!(moved_to.exists());
        // The ledger beside the spool says what was in it.
        assert_eq!(
            *lost,
            Some(Lost {
                count: 1,
                first_seq: 1,
                last_seq: 1
            })
        );
        let seq = s.append(vec![ev("a.c")]).unwrap()[0];
        assert!(seq > 1, "a fresh spool must not reuse numbers");
    }

    #[test]
    fn oversized_details_are_replaced_by_a_note() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = open(d.path(), 1 << 20);
        let mut details = Map::new();
        details.insert(
            "blob".into(),
            Value::String("x".repeat(MAX_EVENT_BYTES + 1)),
        );
        s.append(vec![NewEvent::unchecked("a.b", details)]).unwrap();
        let e = &s.read_after(0, 1, 1 << 20).unwrap()[0];
        assert_eq!(e.details["truncated"], Value::Bool(true));
    }

    /// The reproduction: about 120 spooled events (each about the size of a real
    /// agent's), then the tail of sled's `db` file damaged. sled opens such a file without
    /// complaint and with events missing.
    fn damaged_tail(offset: u64, bytes: &[u8]) -> (tempfile::TempDir, Spool, Vec<OpenNote>) {
        use std::io::{Seek, SeekFrom};
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = open(d.path(), 1 << 30);
            for i in 0..122u64 {
                let d = crate::details! { "uptime_secs" => i, "facts" => "x".repeat(350) };
                s.append(vec![NewEvent::unchecked("agent.heartbeat", d)])
                    .unwrap();
            }
        }
        let db = d.path().join("spool/db");
        assert!(fs::metadata(&db).unwrap().len() > offset + bytes.len() as u64);
        let mut f = fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
        drop(f);
        let (s, note) = open(d.path(), 1 << 30);
        (d, s, note)
    }

    fn assert_every_event_kept_or_counted(s: &Spool, note: &[OpenNote]) {
        let kept: Vec<u64> = s
            .read_after(0, usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        let lost = match note {
            [OpenNote::Damaged { lost }] => lost.count,
            [OpenNote::MovedAside { lost: Some(l), .. }] => l.count,
            other => panic!("damage that lost events went unreported: {other:?}"),
        };
        assert!(lost > 0);
        assert_eq!(kept.len() as u64 + lost, 122, "kept {kept:?}, lost {lost}");
        let event = note[0].event();
        assert_eq!(event.kind, "agent.spool_recovered");
        assert_eq!(event.details["lost"], lost);
    }

    #[test]
    fn tail_overwritten_with_garbage_reports_how_many_were_lost() {
        let (_d, s, note) = damaged_tail(120_000, &[0xA5; 21_500]);
        assert_every_event_kept_or_counted(&s, &note);
    }

    #[test]
    fn tail_zeroed_reports_how_many_were_lost() {
        let (_d, s, note) = damaged_tail(100_000, &[0; 42_000]);
        assert_every_event_kept_or_counted(&s, &note);
    }

    #[test]
    fn a_reported_loss_is_reported_once() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = open(d.path(), 1 << 20);
            s.append(vec![ev("a.b"), ev("a.c"), ev("a.d")]).unwrap();
            // What damage does to sled, without the damage: an event vanishes behind the
            // spool's back.
            s.events.remove(2u64.to_be_bytes()).unwrap();
            s.db.flush().unwrap();
        }
        let (_, note) = open(d.path(), 1 << 20);
        assert_eq!(
            note,
            vec![OpenNote::Damaged {
                lost: Lost {
                    count: 1,
                    first_seq: 2,
                    last_seq: 2
                }
            }]
        );
        let (_, note) = open(d.path(), 1 << 20);
        assert_eq!(note, vec![]);
    }

    #[test]
    fn dropping_at_the_bound_and_restarts_are_not_mistaken_for_damage() {
        let d = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            let (mut s, note) = open(d.path(), 4_000);
            assert_eq!(note, vec![]);
            for _ in 0..60 {
                s.append(vec![ev("agent.heartbeat")]).unwrap();
            }
            let some = s.read_after(0, 5, 1 << 20).unwrap();
            s.ack(some.last().unwrap().seq).unwrap();
        }
    }

    #[test]
    fn a_garbage_floor_never_reuses_a_number_even_with_an_empty_spool() {
        let d = tempfile::tempdir().unwrap();
        let last = {
            let (mut s, _) = open(d.path(), 1 << 20);
            let seqs = s.append(vec![ev("a.b"), ev("a.c"), ev("a.d")]).unwrap();
            // Everything acknowledged: the spool is empty, only the ledger remembers.
            s.ack(seqs[2]).unwrap();
            assert_eq!(s.depth(), 0);
            seqs[2]
        };
        fs::write(d.path().join("seq"), b"\0\0garbage\n").unwrap();
        let (mut s, note) = open(d.path(), 1 << 20);
        assert_eq!(
            note,
            vec![OpenNote::FloorRecovered {
                reason: "unreadable".into(),
                next_seq: last + 1
            }]
        );
        assert_eq!(note[0].event().details["next_seq"], last + 1);
        assert!(s.append(vec![ev("a.e")]).unwrap()[0] > last);
        drop(s);
        // And the reservation file is good again.
        let (_, note) = open(d.path(), 1 << 20);
        assert_eq!(note, vec![]);
    }

    #[test]
    fn a_lost_floor_continues_above_the_spooled_events() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = open(d.path(), 1 << 20);
            s.append(vec![ev("a.b"), ev("a.c")]).unwrap();
        }
        fs::remove_file(d.path().join("seq")).unwrap();
        let (mut s, note) = open(d.path(), 1 << 20);
        assert!(matches!(
            note[..],
            [OpenNote::FloorRecovered { next_seq: 3, .. }]
        ));
        assert_eq!(s.append(vec![ev("a.d")]).unwrap(), vec![3]);
    }

    #[test]
    fn raising_the_floor_renumbers_this_runs_unsent_events_above_the_collectors() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = open(d.path(), 1 << 20);
            s.append(vec![ev("a.b")]).unwrap();
        }
        // Both the floor and the ledger lost: only the collector knows it stored up to 40.
        fs::write(d.path().join("seq"), b"garbage").unwrap();
        fs::remove_file(d.path().join("spool.tally")).unwrap();
        let (mut s, _) = open(d.path(), 1 << 20);
        let fresh = s.append(vec![ev("a.c"), ev("a.d")]).unwrap();
        assert_eq!(fresh, vec![2, 3]);
        // 1 is from an earlier run, so the collector may have it: left alone.
        assert_eq!(s.raise_floor(40).unwrap(), 2);
        let all: Vec<(u64, String)> = s
            .read_after(0, 100, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.kind))
            .collect();
        assert_eq!(
            all,
            vec![(1, "a.b".into()), (41, "a.c".into()), (42, "a.d".into())]
        );
        assert_eq!(s.append(vec![ev("a.e")]).unwrap(), vec![43]);
        drop(s);
        let (_, note) = open(d.path(), 1 << 20);
        assert_eq!(note, vec![], "renumbered events are not lost ones");
    }

    #[test]
    fn a_missing_floor_beside_an_existing_empty_spool_is_lost_not_new() {
        let d = tempfile::tempdir().unwrap();
        drop(open(d.path(), 1 << 20));
        fs::remove_file(d.path().join("seq")).unwrap();
        fs::remove_file(d.path().join("spool.tally")).unwrap();
        let (s, note) = open(d.path(), 1 << 20);
        assert!(
            matches!(note[..], [OpenNote::FloorRecovered { .. }]),
            "{note:?}"
        );
        // Nothing local to go on: the uplink must ask the collector first.
        assert!(s.floor_unverified());
    }
}
