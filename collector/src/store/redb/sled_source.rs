//! The sled store an older collector left in its data directory, read for its one conversion to redb: the trees, their keys' layout, and nothing that writes.
//!
//! The layout, as the sled backend wrote it (layout 3; `meta`'s `layout` key says which):
//! `devices` (id → JSON), `events` (id '/' seq BE → JSON), `timeline` (timeline id BE → events
//! key, arrival order), `tokens` (hash → JSON), `policies` (version BE → JSON, and the latest
//! version's number under `u64::MAX`), `derived` (`name/device` → JSON), `incidents` (id BE →
//! JSON), `incident_open` (group key → latest incident id BE, and the last id given out under
//! `\xff#next`), `incident_log` (id BE, n BE → entry JSON, and the entry count under n =
//! `u32::MAX`), `users`, `sessions`, `api_tokens`, `digest_cursors` (text → JSON), `audit`,
//! `digests` (id BE → JSON), `settings` (version BE → JSON, and the latest number under
//! `\x00`), `digest_pending` (id BE → nothing). The `idx` tree (secondary indexes) is not read:
//! redb builds its own from the records.

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::super::{Device, PolicyVersion, StoreError, StoreResult};
use super::super::decode;

/// The layout from which the store has incidents (2 added them and the event indexes; 3 only
/// an index of incidents by device).
pub(super) const LAYOUT_WITH_INCIDENTS: u64 = 2;
/// The key in `policies` that holds the latest version's number instead of a version.
const POLICY_LATEST: [u8; 8] = u64::MAX.to_be_bytes();

/// The old store's trees, open.
pub(super) struct SledSource {
    pub(super) events: sled::Tree,
    pub(super) timeline: sled::Tree,
    pub(super) devices: sled::Tree,
    pub(super) tokens: sled::Tree,
    pub(super) policies: sled::Tree,
    pub(super) derived: sled::Tree,
    pub(super) incidents: sled::Tree,
    pub(super) incident_open: sled::Tree,
    pub(super) incident_log: sled::Tree,
    pub(super) users: sled::Tree,
    pub(super) sessions: sled::Tree,
    pub(super) api_tokens: sled::Tree,
    pub(super) audit: sled::Tree,
    pub(super) settings: sled::Tree,
    pub(super) digests: sled::Tree,
    pub(super) digest_pending: sled::Tree,
    pub(super) digest_cursors: sled::Tree,
    pub(super) meta: sled::Tree,
    /// Held for the trees' life: it owns sled's flush thread and directory lock.
    _db: sled::Db,
}

pub(super) fn sled_failure(e: sled::Error) -> StoreError {
    StoreError::engine("reading the sled store", e)
}

/// sled reports a held directory lock only as text (an `Other` I/O error wrapping EWOULDBLOCK).
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

impl SledSource {
    /// Opens the sled store in `dir`, taking sled's lock on it for as long as this lives.
    ///
    /// A store dropped a moment ago in this process still holds the lock until sled's flush
    /// thread wakes (up to its 1 s interval), so a held lock is retried for a few seconds before
    /// being reported as another process's.
    pub(super) fn open(dir: &Path) -> StoreResult<Self> {
        let config = sled::Config::new().path(dir).flush_every_ms(Some(1000));
        let deadline = Instant::now() + Duration::from_secs(3);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if lock_held(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if lock_held(&e) => {
                    return Err(StoreError::engine_msg(format!(
                        "the store in {} is in use by another process \
                         (is `caretaker-collector serve` running?)",
                        dir.display()
                    )));
                }
                Err(e) => return Err(sled_failure(e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(sled_failure);
        Ok(Self {
            events: tree("events")?,
            timeline: tree("timeline")?,
            devices: tree("devices")?,
            tokens: tree("tokens")?,
            policies: tree("policies")?,
            derived: tree("derived")?,
            incidents: tree("incidents")?,
            incident_open: tree("incident_open")?,
            incident_log: tree("incident_log")?,
            users: tree("users")?,
            sessions: tree("sessions")?,
            api_tokens: tree("api_tokens")?,
            audit: tree("audit")?,
            settings: tree("settings")?,
            digests: tree("digests")?,
            digest_pending: tree("digest_pending")?,
            digest_cursors: tree("digest_cursors")?,
            meta: tree("meta")?,
            _db: db,
        })
    }

    /// The layout the store was written with; 0 for a store from before layouts were recorded.
    pub(super) fn layout(&self) -> StoreResult<u64> {
        match self.meta.get("layout").map_err(sled_failure)? {
            Some(v) => be_u64(&v, "layout"),
            None => Ok(0),
        }
    }

    pub(super) fn devices(&self) -> StoreResult<Vec<Device>> {
        self.devices
            .iter()
            .map(|r| {
                r.map_err(sled_failure)
                    .and_then(|(_, v)| decode("device", &v))
            })
            .collect()
    }

    /// Every policy version, oldest first.
    pub(super) fn policy_history(&self) -> StoreResult<Vec<PolicyVersion>> {
        self.policies
            .range(..POLICY_LATEST)
            .map(|r| {
                r.map_err(sled_failure)
                    .and_then(|(_, v)| decode("policy", &v))
            })
            .collect()
    }
}

pub(super) fn be_u64(bytes: &[u8], what: &str) -> StoreResult<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("{what} in the sled store")))
}

pub(super) fn text<'a>(bytes: &'a [u8], what: &str) -> StoreResult<&'a str> {
    std::str::from_utf8(bytes)
        .map_err(|_| StoreError::Corrupt(format!("{what} in the sled store is not UTF-8")))
}

/// An event key, `device/seq`: the device and the sequence number.
pub(super) fn split_event_key(key: &[u8]) -> StoreResult<(&str, u64)> {
    let at = key
        .len()
        .checked_sub(9)
        .ok_or_else(|| StoreError::Corrupt("event key in the sled store".into()))?;
    Ok((
        text(&key[..at], "event key")?,
        be_u64(&key[at + 1..], "event key")?,
    ))
}

/// An `incident_open` key: a group key, or `None` for the next-id counter (`\xff#next`, not
/// text), which redb does without: it numbers the next incident after the last one.
pub(super) fn group_of(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()
}

/// An `incident_log` key: the incident and the entry's number, or `None` for the incident's
/// entry count (n = `u32::MAX`), which redb does without: it reads the last entry instead.
pub(super) fn entry_of(key: &[u8]) -> StoreResult<Option<(u64, u32)>> {
    let (Some(id), Some(n)) = (key.get(..8), key.get(8..12)) else {
        return Err(StoreError::Corrupt(
            "incident entry key in the sled store".into(),
        ));
    };
    let n = u32::from_be_bytes(n.try_into().expect("four bytes"));
    Ok((n != u32::MAX).then_some((be_u64(id, "incident entry key")?, n)))
}

/// A key of a tree keyed by a big-endian id (`settings`, `audit`, `digests`), or `None` for the
/// tree's own bookkeeping (the settings' latest-version key), which redb does without.
pub(super) fn id_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}
