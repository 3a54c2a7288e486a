//! Opening files in places a pupil can write (their profile, removable media) without following
//! their tricks, on Windows: a symbolic link or junction is opened as itself (and refused, not
//! being a regular file), never its target, so the agent (SYSTEM) reads only what the path
//! itself is. Windows has no FIFOs to hang an open.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::path::Path;

/// Opens `path` read-only if, and only if, it is a regular file itself (not a link to one).
/// Returns the file and its metadata, taken from the open handle.
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    let file = super::perms::no_follow(&mut opts).open(path)?;
    crate::os::regular_only(path, file)
}

/// Which file this is. Stable Rust has no file index on Windows, so every file compares equal:
/// the open above does not follow links, which is the protection that matters here.
pub fn identity(_meta: &Metadata) -> (u64, u64) {
    (0, 0)
}

/// `FILE_ATTRIBUTE_OFFLINE`, `..._RECALL_ON_OPEN`, `..._RECALL_ON_DATA_ACCESS`.
const NOT_HERE: u32 = 0x1000 | 0x0004_0000 | 0x0040_0000;

/// A file whose content is in the cloud (OneDrive's "online-only" files): reading its first
/// bytes would download it, so the walk leaves it until it is on the laptop.
pub fn cloud_only(meta: &Metadata) -> bool {
    use std::os::windows::fs::MetadataExt;
    meta.file_attributes() & NOT_HERE != 0
}

/// Windows has no permission bits: nothing is "marked executable"; programs are known by
/// their content (`MZ`, an MSI's compound file).
pub fn unix_mode(_meta: &Metadata) -> u32 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_regular_file_opens_and_a_folder_does_not() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("notes.txt");
        std::fs::write(&f, b"hello").unwrap();
        let (mut file, meta) = open_regular(&f).unwrap();
        let mut s = String::new();
        file.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), meta.len()), ("hello", 5));
        assert!(open_regular(d.path()).is_err());
    }
}
