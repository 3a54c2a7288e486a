//! The per-device index as runs: `(device, first seq) → (first arrival id, count)`, one entry per batch instead of one per event.
//!
//! A batch's new events have consecutive sequence numbers (an agent numbers without gaps, except
//! where its spool dropped its oldest) and are given consecutive arrival ids in one group commit,
//! so one entry covers them all: sequence `first + i` is arrival id `id + i` for `i < count`.
//! Keyed one entry per event, the index was a third of the store (random inserts leave B-tree
//! pages half full); as runs it is a few bytes per batch. A run is extended in place when the
//! next events continue it in both numberings (the conversion from sled writes event by event).

use std::ops::Bound;

use redb::{ReadableTable, TableDefinition};

use super::engine;
use crate::store::StoreResult;

/// `(device, first seq) → (first arrival id, count)`.
pub(in crate::store) const BY_DEVICE: TableDefinition<(&str, u64), (u64, u64)> =
    TableDefinition::new("device_runs");

/// Records that `device`'s sequences `seq .. seq + count` are arrival ids `id .. id + count`,
/// extending the device's run that ends just before, if it ends just before in both.
pub(super) fn put(
    table: &mut redb::Table<(&str, u64), (u64, u64)>,
    device: &str,
    seq: u64,
    id: u64,
    count: u64,
) -> StoreResult<()> {
    let before = table
        .range((device, 0)..(device, seq))
        .map_err(engine)?
        .next_back()
        .transpose()
        .map_err(engine)?
        .map(|(k, v)| (k.value().1, v.value()));
    if let Some((first_seq, (first_id, n))) = before
        && first_seq + n == seq
        && first_id + n == id
    {
        table
            .insert((device, first_seq), (first_id, n + count))
            .map_err(engine)?;
        return Ok(());
    }
    table.insert((device, seq), (id, count)).map_err(engine)?;
    Ok(())
}

/// Forgets `device`'s sequence `seq` (a purged event): its run is cut in two around it, so
/// listings and `device_events_after` never walk over removed events. Nothing happens if it
/// is not stored.
pub(super) fn remove(
    table: &mut redb::Table<(&str, u64), (u64, u64)>,
    device: &str,
    seq: u64,
) -> StoreResult<()> {
    let found = table
        .range((device, 0)..=(device, seq))
        .map_err(engine)?
        .next_back()
        .transpose()
        .map_err(engine)?
        .map(|(k, v)| (k.value().1, v.value()));
    let Some((first, (id, n))) = found else {
        return Ok(());
    };
    if seq >= first + n {
        return Ok(());
    }
    table.remove((device, first)).map_err(engine)?;
    if seq > first {
        table
            .insert((device, first), (id, seq - first))
            .map_err(engine)?;
    }
    if seq + 1 < first + n {
        let after = seq + 1 - first;
        table
            .insert((device, seq + 1), (id + after, n - after))
            .map_err(engine)?;
    }
    Ok(())
}

/// A batch's new events as runs: `(first seq, first id, count)` for consecutive `(seq, id)`.
pub(super) fn coalesce(pairs: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64, u64)> {
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for (seq, id) in pairs {
        match runs.last_mut() {
            Some((s, i, n)) if *s + *n == seq && *i + *n == id => *n += 1,
            _ => runs.push((seq, id, 1)),
        }
    }
    runs
}

/// `(seq, arrival id)` pairs, read lazily.
pub(super) type Pairs<'a> = Box<dyn Iterator<Item = StoreResult<(u64, u64)>> + 'a>;

/// `device`'s `(seq, arrival id)` pairs with a sequence in `range`, newest first (`rev`) or
/// oldest first; runs are read lazily.
pub(super) fn pairs<'a, T>(
    table: &'a T,
    device: &'a str,
    from: Bound<u64>,
    below: Bound<u64>,
    rev: bool,
) -> StoreResult<Pairs<'a>>
where
    T: ReadableTable<(&'static str, u64), (u64, u64)>,
{
    let lo = match from {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match below {
        Bound::Included(s) => s.saturating_add(1),
        Bound::Excluded(s) => s,
        Bound::Unbounded => u64::MAX,
    };
    if lo >= hi {
        return Ok(Box::new(std::iter::empty()));
    }
    // The run holding `lo` may start before it: begin at the last run starting at or below.
    let start = table
        .range((device, 0)..=(device, lo))
        .map_err(engine)?
        .next_back()
        .transpose()
        .map_err(engine)?
        .map_or(lo, |(k, _)| k.value().1);
    let runs = table.range((device, start)..(device, hi)).map_err(engine)?;
    type Entry<'g> = (
        redb::AccessGuard<'g, (&'static str, u64)>,
        redb::AccessGuard<'g, (u64, u64)>,
    );
    let expand = move |r: Result<Entry<'_>, redb::StorageError>| -> Pairs<'static> {
        match r {
            Err(e) => Box::new(std::iter::once(Err(engine(e)))),
            Ok((k, v)) => {
                let first: u64 = k.value().1;
                let (id, n): (u64, u64) = v.value();
                let (a, b) = (first.max(lo), (first + n).min(hi));
                let each = (a..b).map(move |s| Ok((s, id + (s - first))));
                if rev {
                    Box::new(each.rev())
                } else {
                    Box::new(each)
                }
            }
        }
    };
    Ok(if rev {
        Box::new(runs.rev().flat_map(expand))
    } else {
        Box::new(runs.flat_map(expand))
    })
}

/// Whether `device` has a stored sequence below `seq`.
pub(super) fn any_below<T>(table: &T, device: &str, seq: u64) -> StoreResult<bool>
where
    T: ReadableTable<(&'static str, u64), (u64, u64)>,
{
    // Every run holds its first sequence, so one starting below `seq` is one.
    Ok(table
        .range((device, 0)..(device, seq))
        .map_err(engine)?
        .next()
        .transpose()
        .map_err(engine)?
        .is_some())
}

/// Whether `device`'s sequence `seq` is stored.
pub(super) fn contains<T>(table: &T, device: &str, seq: u64) -> StoreResult<bool>
where
    T: ReadableTable<(&'static str, u64), (u64, u64)>,
{
    Ok(table
        .range((device, 0)..=(device, seq))
        .map_err(engine)?
        .next_back()
        .transpose()
        .map_err(engine)?
        .is_some_and(|(k, v)| seq < k.value().1 + v.value().1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    #[test]
    fn consecutive_pairs_make_one_run_and_a_gap_in_either_numbering_starts_another() {
        assert_eq!(
            coalesce([(1, 10), (2, 11), (3, 12), (5, 13), (6, 14), (7, 20)]),
            [(1, 10, 3), (5, 13, 2), (7, 20, 1)]
        );
        assert!(coalesce([]).is_empty());
    }

    /// Runs written batch by batch (and one extended event by event, as the conversion
    /// writes) read back as exactly the pairs written, in both directions and from any bound.
    #[test]
    fn runs_read_back_as_the_pairs_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let mut written: Vec<(u64, u64)> = Vec::new();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BY_DEVICE).unwrap();
            // Batches 1..=5 at ids 100.., a gap (6..=9 dropped), then 10..=12 one by one
            // continuing the ids, then 13..=14 after another device's events (id jump).
            for (s, i, n) in coalesce((1..=5).map(|s| (s, 99 + s))) {
                put(&mut t, "d", s, i, n).unwrap();
            }
            for s in 10..=12 {
                put(&mut t, "d", s, 95 + s, 1).unwrap();
            }
            put(&mut t, "d", 13, 200, 2).unwrap();
            put(&mut t, "e", 1, 300, 3).unwrap();
            written.extend((1..=5).map(|s| (s, 99 + s)));
            written.extend((10..=12).map(|s| (s, 95 + s)));
            written.extend([(13, 200), (14, 201)]);
            assert_eq!(
                t.len().unwrap(),
                4,
                "runs: 1..=5, 10..=12 extended, 13..=14, e"
            );
        }
        txn.commit().unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(BY_DEVICE).unwrap();
        let read = |from, below, rev| -> Vec<(u64, u64)> {
            pairs(&t, "d", from, below, rev)
                .unwrap()
                .collect::<StoreResult<_>>()
                .unwrap()
        };
        assert_eq!(read(Bound::Unbounded, Bound::Unbounded, false), written);
        let mut newest_first = written.clone();
        newest_first.reverse();
        assert_eq!(read(Bound::Unbounded, Bound::Unbounded, true), newest_first);
        for cut in 0..=16 {
            let below: Vec<_> = newest_first.iter().copied().filter(|p| p.0 < cut).collect();
            assert_eq!(read(Bound::Unbounded, Bound::Excluded(cut), true), below);
            let after: Vec<_> = written.iter().copied().filter(|p| p.0 > cut).collect();
            assert_eq!(read(Bound::Excluded(cut), Bound::Unbounded, false), after);
            assert_eq!(
                any_below(&t, "d", cut).unwrap(),
                written.iter().any(|p| p.0 < cut)
            );
            assert_eq!(
                contains(&t, "d", cut).unwrap(),
                written.iter().any(|p| p.0 == cut)
            );
        }
    }

    /// Removing sequences (a purge) from the front, middle and end of runs leaves exactly the
    /// other pairs, and a sequence not stored is ignored.
    #[test]
    fn removed_sequences_cut_their_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BY_DEVICE).unwrap();
            put(&mut t, "d", 1, 100, 10).unwrap();
            put(&mut t, "d", 20, 300, 3).unwrap();
            put(&mut t, "e", 1, 110, 2).unwrap();
            for seq in [1, 5, 6, 10, 21, 15, 99] {
                remove(&mut t, "d", seq).unwrap();
            }
            let left: Vec<(u64, u64)> = pairs(&t, "d", Bound::Unbounded, Bound::Unbounded, false)
                .unwrap()
                .collect::<StoreResult<_>>()
                .unwrap();
            let mut want: Vec<(u64, u64)> = [2, 3, 4, 7, 8, 9].map(|s| (s, 99 + s)).to_vec();
            want.extend([(20, 300), (22, 302)]);
            assert_eq!(left, want);
            assert!(!contains(&t, "d", 5).unwrap() && contains(&t, "d", 7).unwrap());
            assert!(!any_below(&t, "d", 2).unwrap() && any_below(&t, "d", 3).unwrap());
            assert_eq!(t.len().unwrap(), 5, "2..=4, 7..=9, 20, 22, e");
        }
        txn.commit().unwrap();
    }
}
