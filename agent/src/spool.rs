//! The durable spool: every event is written here (and fsynced) before anything else happens to it.
//!
//! Invariants: an event leaves the spool only when the collector has
//! acknowledged it, or when the spool is full, in which case the oldest go and
//! an `agent.events_dropped` event records how many. Sequence numbers come
//! from a reservation file beside the spool, so even a spool that had to be
//! set aside never reuses a number the collector has already stored.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::NewEvent;

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
    /// The old spool could not be opened and was moved to `moved_to`.
    MovedAside { reason: String, moved_to: PathBuf },
}

/// What an existing spool holds, counted when it is opened.
#[derive(Default)]
struct Tally {
    bytes: u64,
    count: u64,
    last: u64,
}

pub struct Spool {
    events: sled::Tree,
    db: sled::Db,
    seq_file: PathBuf,
    next_seq: u64,
    reserved_to: u64,
    bytes: u64,
    count: u64,
    max_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_floor(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1)
}

fn write_floor(path: &Path, value: u64) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    writeln!(f, "{value}").map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn open_db(dir: &Path) -> Result<sled::Db, String> {
    // sled can panic on some damaged files rather than return an error.
    let dir = dir.to_path_buf();
    match std::panic::catch_unwind(move || {
        sled::Config::new().path(dir).flush_every_ms(None).open()
    }) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the storage engine panicked while opening it".into()),
    }
}

impl Spool {
    /// Opens the spool in `dir`. A spool that cannot be opened or read is moved
    /// aside (never deleted) and a fresh one started; the note says so.
    pub fn open(
        dir: &Path,
        seq_file: &Path,
        max_bytes: u64,
    ) -> Result<(Self, Option<OpenNote>), SpoolError> {
        let mut note = None;
        let (db, tally) = match open_db(dir).and_then(|db| Self::check(&db).map(|t| (db, t))) {
            Ok(opened) => opened,
            Err(reason) => {
                let moved_to = dir.with_file_name(format!(
                    "{}.corrupt-{}",
                    dir.file_name().and_then(|n| n.to_str()).unwrap_or("spool"),
                    Utc::now().format("%Y%m%dT%H%M%SZ")
                ));
                fs::rename(dir, &moved_to).map_err(io_err(dir))?;
                tracing::error!(%reason, moved_to = %moved_to.display(), "Spool was unreadable; moved it aside and started a new one");
                note = Some(OpenNote::MovedAside { reason, moved_to });
                let fresh = open_db(dir).map_err(|e| SpoolError::Io {
                    path: dir.display().to_string(),
                    source: std::io::Error::other(e),
                })?;
                (fresh, Tally::default())
            }
        };
        let events = db.open_tree("events")?;
        let Tally { bytes, count, last } = tally;
        // Skip past every number that might have been handed out before.
        let next_seq = read_floor(seq_file).max(last + 1);
        let mut spool = Self {
            events,
            db,
            seq_file: seq_file.to_path_buf(),
            next_seq,
            reserved_to: next_seq,
            bytes,
            count,
            max_bytes,
        };
        spool.reserve()?;
        Ok((spool, note))
    }

    /// Reads every entry once, so damage shows at open time rather than mid-stream, and
    /// counts what is there in the same pass.
    fn check(db: &sled::Db) -> Result<Tally, String> {
        let tree = db.open_tree("events").map_err(|e| e.to_string())?;
        let mut t = Tally::default();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| e.to_string())?;
            serde_json::from_slice::<SpooledEvent>(&v)
                .map_err(|e| format!("an entry is unreadable: {e}"))?;
            t.bytes += (k.len() + v.len()) as u64;
            t.count += 1;
            t.last = t
                .last
                .max(u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])));
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
        Ok(())
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

    fn ev(kind: &str) -> NewEvent {
        NewEvent::now(kind, None, Map::new())
    }

    fn open(dir: &Path, max: u64) -> (Spool, Option<OpenNote>) {
        Spool::open(&dir.join("spool"), &dir.join("seq"), max).unwrap()
    }

    #[test]
    fn events_survive_reopen_and_ack_removes_only_acked() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, note) = open(d.path(), 1 << 20);
            assert_eq!(note, None);
            assert_eq!(
                s.append(vec![ev("a.b"), ev("a.c"), ev("a.d")]).unwrap(),
                vec![1, 2, 3]
            );
            assert_eq!(s.ack(2).unwrap(), 2);
        }
        let (mut s, _) = open(d.path(), 1 << 20);
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
        let Some(OpenNote::MovedAside { moved_to, .. }) = note else {
            panic!("expected a note")
        };
        assert!(moved_to.exists());
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
        s.append(vec![NewEvent::now("a.b", None, details)]).unwrap();
        let e = &s.read_after(0, 1, 1 << 20).unwrap()[0];
        assert_eq!(e.details["truncated"], Value::Bool(true));
    }
}
