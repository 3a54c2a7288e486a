//! Opening files in places a pupil can write (home folders, removable media) without following their tricks.
//!
//! The agent runs as root. Checking a path with `symlink_metadata` and then opening it
//! again leaves a window in which the file can be swapped for a symlink to a root-only
//! file (which root would then read and hash) or for a FIFO (on which `open` and `read`
//! would block forever). So: open with `O_NOFOLLOW` (a symlink fails with `ELOOP`) and
//! `O_NONBLOCK` (a FIFO opens at once instead of waiting for a writer), then judge the
//! file that was actually opened with `fstat`, and read only a regular file.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Which file this is (device and inode), to tell a file from one swapped in at its path.
pub fn identity(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Whether the content lives elsewhere and reading would fetch it (Windows' online-only
/// files); never on Linux.
pub fn cloud_only(_meta: &Metadata) -> bool {
    false
}

/// The file's permission bits (`0o755`).
pub fn unix_mode(meta: &Metadata) -> u32 {
    meta.permissions().mode()
}

/// Opens `path` read-only if, and only if, it is a regular file itself (not a link to one).
/// Returns the file and its metadata, taken from the open descriptor.
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    // `File::metadata` is fstat on the descriptor: the file we hold, not whatever the path
    // names by now.
    crate::os::regular_only(path, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_regular_file_opens_and_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let (mut f, meta) = open_regular(&p).unwrap();
        assert_eq!(meta.len(), 5);
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn a_symlink_is_refused_even_to_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("secret");
        std::fs::write(&target, b"root only").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_regular(&link).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo failed");
        // Without O_NONBLOCK this open would block until someone writes.
        let err = open_regular(&fifo).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }
}
