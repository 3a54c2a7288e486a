//! The files beside the spool: the ledger of the numbers it should hold (`spool.tally`) and the
//! sequence reservation (`seq.floor`), each replaced whole through a fsynced temporary file.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FloorUnreadable, Lost, SpoolError};

/// Which sequence numbers the spool should hold, kept beside it and rewritten (fsynced)
/// after each durable append and before each removal, so it never claims less than the
/// spool holds; it may claim more only of numbers that left on purpose.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Ledger {
    /// Every number at or below this left on purpose (acknowledged, or dropped at the bound).
    pub(super) removed_through: u64,
    /// Runs `[first, last]` of numbers written, ascending. Numbering is contiguous within
    /// one run of the agent, so there are only as many runs as restarts with unsent events.
    pub(super) runs: Vec<(u64, u64)>,
}

impl Ledger {
    pub(super) fn highest(&self) -> u64 {
        self.runs
            .last()
            .map_or(self.removed_through, |r| r.1.max(self.removed_through))
    }

    /// The numbers that should be in the spool but are not in `present` (ascending).
    pub(super) fn missing(&self, present: &[u64]) -> Option<Lost> {
        let mut lost: Option<Lost> = None;
        let mut keys = present.iter().copied().peekable();
        for &(first, last) in &self.runs {
            let first = first.max(self.removed_through + 1);
            let mut want = first;
            while want <= last {
                while keys.next_if(|&k| k < want).is_some() {}
                // The next gap runs up to the next present key (or the run's end).
                let upto = match keys.peek() {
                    Some(&k) if k == want => {
                        want += 1;
                        continue;
                    }
                    Some(&k) if k <= last => k - 1,
                    _ => last,
                };
                let l = lost.get_or_insert(Lost {
                    count: 0,
                    first_seq: want,
                    last_seq: upto,
                });
                l.count += upto - want + 1;
                l.last_seq = upto;
                want = upto + 1;
            }
        }
        lost
    }

    /// The runs of `present` (ascending), the spool's contents after a check.
    pub(super) fn runs_of(present: &[u64]) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &k in present {
            match runs.last_mut() {
                Some(r) if r.1 + 1 == k => r.1 = k,
                _ => runs.push((k, k)),
            }
        }
        runs
    }

    pub(super) fn written(&mut self, seq: u64) {
        match self.runs.last_mut() {
            Some(r) if r.1 + 1 == seq => r.1 = seq,
            _ => self.runs.push((seq, seq)),
        }
    }

    /// Records that everything through `seq` left on purpose; true if that is news.
    pub(super) fn removed(&mut self, seq: u64) -> bool {
        if seq <= self.removed_through {
            return false;
        }
        self.removed_through = seq;
        self.runs.retain(|r| r.1 > seq);
        true
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The reserved floor: `Ok(None)` when there is no file yet, `Err` why it cannot be used.
pub(super) fn read_floor(path: &Path) -> Result<Option<u64>, FloorUnreadable> {
    match fs::read_to_string(path) {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(FloorUnreadable::NotANumber),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FloorUnreadable::Io(e)),
    }
}

pub(super) fn write_floor(path: &Path, value: u64) -> Result<(), SpoolError> {
    write_synced(path, format!("{value}\n").as_bytes())
}

/// Replaces `path` with `bytes`: written to a temporary file, fsynced, renamed over it.
pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// The ledger, if there is a readable one (an older agent's spool has none).
pub(super) fn read_ledger(path: &Path) -> Option<Ledger> {
    let bytes = fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Spool ledger unreadable; damage to the spool cannot be counted this time");
            None
        }
    }
}
