//! Free space on the store's filesystem, and the floor below which the collector refuses new events.

use std::path::Path;

/// How much free space the store's filesystem must keep: an amount, or a share of its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceFloor {
    Bytes(u64),
    Percent(u8),
}

/// The default: room for the group being written, redb's copy-on-write pages and the other writes
/// (policy, tokens, sessions) that must still work while events are refused.
pub const DEFAULT_FLOOR: SpaceFloor = SpaceFloor::Bytes(256 * MIB);

const MIB: u64 = 1024 * 1024;

/// Free space needed before the store is opened. An engine's recovery may write at open (redb
/// repairs an unclean file; sled, the embedded engine until 2026-11, rewrote a torn log tail
/// and was seen to leave its store unreadable to every later open after meeting ENOSPC there):
/// so it is not attempted without room.
pub const OPEN_ROOM: u64 = 32 * MIB;

/// A floor that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a free-space floor: give an amount such as 256MiB, 2GiB or 500MB, \
     a share of the filesystem such as 5%, or 0 for none"
)]
pub struct BadFloor(String);

impl std::str::FromStr for SpaceFloor {
    type Err = BadFloor;

    fn from_str(s: &str) -> Result<Self, BadFloor> {
        let bad = || BadFloor(s.to_string());
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Self::Percent(p)),
                _ => Err(bad()),
            };
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" if n == 0 => 1,
            "b" => 1,
            "kib" => 1024,
            "mib" => MIB,
            "gib" => 1024 * MIB,
            "kb" => 1000,
            "mb" => 1000 * 1000,
            "gb" => 1000 * 1000 * 1000,
            _ => return Err(bad()),
        };
        n.checked_mul(scale).map(Self::Bytes).ok_or_else(bad)
    }
}

impl std::fmt::Display for SpaceFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(b) if b % MIB == 0 => write!(f, "{}MiB", b / MIB),
            Self::Bytes(b) => write!(f, "{b}B"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl SpaceFloor {
    /// The floor in bytes on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Self::Bytes(b) => b,
            Self::Percent(p) => total / 100 * u64::from(p),
        }
    }
}

/// A filesystem's size and the space an unprivileged writer may still use, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

/// One `statvfs` of the filesystem holding `path`.
pub fn space(path: &Path) -> std::io::Result<Space> {
    let v = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let unit = v.fragment_size() as u64;
    Ok(Space {
        free: (v.blocks_available() as u64).saturating_mul(unit),
        total: (v.blocks() as u64).saturating_mul(unit),
    })
}

/// Why the store must refuse new events on a filesystem with `space`, or `None`.
pub fn below_floor(space: Space, floor: SpaceFloor) -> Option<String> {
    let need = floor.bytes(space.total);
    (space.free < need).then(|| {
        format!(
            "the collector's disk is nearly full ({} MiB free, below its floor of {} MiB)",
            space.free / MIB,
            need.div_ceil(MIB)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_read_as_amounts_or_shares() {
        for (text, floor) in [
            ("256MiB", SpaceFloor::Bytes(256 * MIB)),
            ("2 GiB", SpaceFloor::Bytes(2048 * MIB)),
            ("500MB", SpaceFloor::Bytes(500_000_000)),
            ("0", SpaceFloor::Bytes(0)),
            ("5%", SpaceFloor::Percent(5)),
        ] {
            assert_eq!(text.parse::<SpaceFloor>().unwrap(), floor, "{text}");
        }
        for bad in ["", "12", "5 apples", "101%", "-1MiB", "99999999999999GiB"] {
            let err = bad.parse::<SpaceFloor>().unwrap_err().to_string();
            assert!(err.contains("256MiB"), "{bad}: {err}");
        }
        assert_eq!(DEFAULT_FLOOR.to_string(), "256MiB");
    }

    #[test]
    fn below_the_floor_says_how_much_is_free() {
        let gib = 1024 * MIB;
        let s = Space {
            free: 100 * MIB,
            total: 10 * gib,
        };
        let why = below_floor(s, SpaceFloor::Bytes(256 * MIB)).unwrap();
        assert!(
            why.contains("100 MiB free, below its floor of 256 MiB"),
            "{why}"
        );
        assert_eq!(below_floor(s, SpaceFloor::Bytes(64 * MIB)), None);
        assert!(below_floor(s, SpaceFloor::Percent(5)).is_some());
        assert_eq!(below_floor(s, SpaceFloor::Percent(0)), None);
    }

    #[test]
    fn the_store_directory_has_a_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = space(dir.path()).unwrap();
        assert!(s.total > 0 && s.free <= s.total, "{s:?}");
    }
}
