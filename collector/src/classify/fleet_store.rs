//! Keeping the fleet's software counts (`fleet.rs`, a pure fold) in step with the store:
//! loading them at start-up from each device's saved state and newer events, folding each
//! durable group on the ack path, rebuilding a device after a fold panicked, saving states.
use serde_json::{Map, Value};

use crate::classify::fleet::{FleetCounts, FoldError};
use crate::store::{DeviceBatch, Store, StoreError};

/// The name under which each device's folded software state is saved in the store.
pub(crate) const SOFTWARE_STATE: &str = "software";

/// Installation counts at start-up: each device's saved state, plus whatever events arrived
/// after it was saved. A device without a saved state (or with a damaged one) is rebuilt from
/// all its events once, and saved, so the next start reads only new events.
pub(crate) fn load_software_counts(
    store: &dyn Store,
    devices: &[crate::store::Device],
) -> Result<FleetCounts, StoreError> {
    let mut counts = FleetCounts::default();
    for (device, through_seq, state) in store.derived(SOFTWARE_STATE)? {
        if let Err(why) = counts.import_device(&device, through_seq, state) {
            tracing::warn!(%device, %why, "Saved software state unreadable; rebuilding it from events");
        }
    }
    for d in devices {
        if replay_software(&mut counts, store, &d.id, FleetCounts::fold)? {
            save_software_state(&counts, store, &d.id);
        }
    }
    Ok(counts)
}

/// How one software event is folded into the counts: `FleetCounts::fold`, or in tests one
/// that fails on purpose.
pub(crate) type FoldFn =
    fn(&mut FleetCounts, &str, u64, &str, &Map<String, Value>) -> Result<(), FoldError>;

/// Folds one event, turning a panic in the fold into a reason like a malformed event's: the
/// counts are an optimisation, and a bug in them must cost at most that event's count, never
/// the start-up or the acknowledgements.
pub(crate) fn fold_guarded(
    counts: &mut FleetCounts,
    fold: FoldFn,
    device: &str,
    seq: u64,
    kind: &str,
    details: &Map<String, Value>,
) -> Result<(), FoldError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fold(counts, device, seq, kind, details)
    }))
    .unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%device, seq, error = %why, "Software event not counted: its fold panicked");
        counts.mark_through(device, seq);
        Err(FoldError::Panicked(why))
    })
}

/// Folds `device`'s stored software events above what `counts` holds for it; `true` when it
/// read any.
pub(crate) fn replay_software(
    counts: &mut FleetCounts,
    store: &dyn Store,
    device: &str,
    fold: FoldFn,
) -> Result<bool, StoreError> {
    let from = counts.through_seq(device);
    let highest = store.device_events_after(device, from, "software.", &mut |e| {
        if let Err(why) = fold_guarded(counts, fold, &e.device_id, e.seq, &e.kind, &e.details) {
            tracing::debug!(%why, "Software event not counted");
        }
    })?;
    counts.mark_through(device, highest);
    Ok(highest > from)
}

/// After a fold panicked part-way through `device`'s events, its counts may hold half an
/// event: forget them and fold them again from its saved state and stored events (which
/// include the group just stored). An event that panics again is skipped as malformed.
pub(crate) fn rebuild_software(
    counts: &mut FleetCounts,
    store: &dyn Store,
    device: &str,
    fold: FoldFn,
) {
    counts.remove_device(device);
    let rebuilt = store.derived_of(SOFTWARE_STATE, device).and_then(|saved| {
        if let Some((through, state)) = saved
            && let Err(why) = counts.import_device(device, through, state)
        {
            tracing::warn!(%device, %why, "Saved software state unreadable; rebuilding it from events");
        }
        replay_software(counts, store, device, fold)
    });
    if let Err(e) = rebuilt {
        // Left out until the next start, which folds it from the store again.
        counts.remove_device(device);
        tracing::warn!(%device, error = %e, "Software counts of a device not rebuilt");
    }
}

pub(crate) fn save_software_state(counts: &FleetCounts, store: &dyn Store, device: &str) {
    let Some(state) = counts.export_device(device) else {
        return;
    };
    let through = counts.through_seq(device);
    if let Err(e) = store.put_derived(SOFTWARE_STATE, device, through, &state) {
        // Only costs a longer start-up: the events are stored and will be folded again.
        tracing::warn!(%device, error = %e, "Software state not saved");
    }
}

/// Folds a durable group's software events, in store order, and saves the devices it changed.
///
/// It runs on the ack path (the writer's `OnStored` hook), so nothing here may stop acks: a
/// fold that panics is caught while the lock is held (so the lock is never poisoned) and costs
/// only that device's counts, rebuilt from the store at once.
pub(crate) fn fold_software(
    counts: &std::sync::Mutex<FleetCounts>,
    store: &dyn Store,
    group: &[DeviceBatch],
) {
    fold_software_with(counts, store, group, FleetCounts::fold);
}

pub(crate) fn fold_software_with(
    counts: &std::sync::Mutex<FleetCounts>,
    store: &dyn Store,
    group: &[DeviceBatch],
    fold: FoldFn,
) {
    // Poisoned only by a panic outside the folds (which are caught below), so the counts
    // themselves are whole.
    let mut counts = counts.lock().unwrap_or_else(|poisoned| {
        counts.clear_poison();
        poisoned.into_inner()
    });
    let mut touched = std::collections::BTreeSet::new();
    for b in group {
        let mut software = b
            .events
            .iter()
            .filter(|e| e.kind.starts_with("software."))
            .peekable();
        if software.peek().is_none() {
            continue;
        }
        let folded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for e in software {
                // A resent event (seq already folded) is skipped inside fold.
                if let Err(why) = fold(&mut counts, &b.device_id, e.seq, &e.kind, &e.details) {
                    tracing::debug!(%why, "Software event not counted");
                }
            }
        }));
        if folded.is_err() {
            tracing::error!(device = %b.device_id, "Software counts fold panicked; rebuilding the device's counts from its events");
            rebuild_software(&mut counts, store, &b.device_id, fold);
        }
        touched.insert(b.device_id.as_str());
    }
    for device in touched {
        save_software_state(&counts, store, device);
    }
}
