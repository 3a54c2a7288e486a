//! The USB probe's own mounts: mount(2) and umount2(2) through rustix, the block device's
//! read-only flag and the kernel's list of block filesystems. Thin: which type to try and
//! when to retry are the probe's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

/// A mount that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount option {0:?} contains a NUL byte")]
    Options(String),
    #[error("mounting {} as {fstype} failed: {source}", dev.display())]
    Mount {
        dev: PathBuf,
        fstype: String,
        #[source]
        source: Errno,
    },
    #[error("no filesystem on {} that this kernel can mount", dev.display())]
    NoFilesystem { dev: PathBuf },
    #[error("the mount thread ended without an answer: {0}")]
    Thread(#[from] tokio::task::JoinError),
}

impl MountError {
    /// The device was busy (EBUSY): a disk that has just appeared, while the kernel rescans its
    /// partitions, holding it exclusively. Worth another try, unlike anything else.
    pub fn is_busy(&self) -> bool {
        matches!(self, MountError::Mount { source, .. } if *source == Errno::BUSY)
    }

    /// The filesystem type was not the medium's (EINVAL: no such superblock) or the kernel has
    /// no such type (ENODEV): the next candidate type may fit.
    pub fn is_wrong_type(&self) -> bool {
        matches!(self, MountError::Mount { source, .. }
            if *source == Errno::INVAL || *source == Errno::NODEV)
    }
}

/// Generic options `mount(8)` turns into flags rather than passing to the filesystem; the
/// kernel's filesystems refuse them as data.
const FLAG_OPTIONS: [(&str, MountFlags); 10] = [
    ("ro", MountFlags::RDONLY),
    ("nosuid", MountFlags::NOSUID),
    ("nodev", MountFlags::NODEV),
    ("noexec", MountFlags::NOEXEC),
    ("sync", MountFlags::SYNCHRONOUS),
    ("dirsync", MountFlags::DIRSYNC),
    ("noatime", MountFlags::NOATIME),
    ("nodiratime", MountFlags::NODIRATIME),
    ("relatime", MountFlags::RELATIME),
    ("strictatime", MountFlags::STRICTATIME),
];

/// Splits `mount -o` style options into the syscall's flags and the filesystem's data string
/// (`ro,nosuid,iocharset=iso8859-1` → `RDONLY | NOSUID` and `iocharset=iso8859-1`).
pub fn split_options(options: &str) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match FLAG_OPTIONS.iter().find(|(name, _)| *name == opt) {
            Some((_, flag)) => flags |= *flag,
            None => data.push(opt),
        }
    }
    (flags, data.join(","))
}

/// Mounts `dev` on `dir` (created if missing) as `fstype` with `mount -o` style `options`.
///
/// mount(2) blocks and cannot be interrupted, so it runs on a blocking thread. If the caller
/// gives up first (a stalled scan is aborted), the thread detaches the filesystem as soon as
/// the mount returns, so an abandoned mount is not left behind.
pub async fn mount(dev: &Path, dir: &Path, fstype: &str, options: &str) -> Result<(), MountError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| MountError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
    let (flags, data) = split_options(options);
    let data = std::ffi::CString::new(data).map_err(|_| MountError::Options(options.into()))?;
    let abandoned = AbandonOnDrop::default();
    let seen = abandoned.0.clone();
    let (dev, dir, fstype) = (dev.to_owned(), dir.to_owned(), fstype.to_owned());
    let result = tokio::task::spawn_blocking(move || {
        let r = rustix::mount::mount(&dev, &dir, fstype.as_str(), flags, data.as_c_str());
        if r.is_ok() && seen.load(Ordering::SeqCst) {
            let _ = rustix::mount::unmount(&dir, UnmountFlags::DETACH);
        }
        r.map_err(|source| MountError::Mount {
            dev,
            fstype,
            source,
        })
    })
    .await;
    abandoned.keep();
    result?
}

/// Set when the future waiting for a mount is dropped before it has the answer.
#[derive(Default)]
struct AbandonOnDrop(Arc<AtomicBool>, bool);

impl AbandonOnDrop {
    fn keep(mut self) {
        self.1 = true;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Unmounts `dir`; `lazy` detaches it now and lets the kernel finish when it is no longer
/// used (`umount -l`), which needs no I/O from a dead stick.
pub async fn unmount(dir: &Path, lazy: bool) -> Result<(), Errno> {
    let dir = dir.to_owned();
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    tokio::task::spawn_blocking(move || rustix::mount::unmount(&dir, flags))
        .await
        .unwrap_or(Err(Errno::IO))
}

/// The block device's read-only flag could not be set.
#[derive(Debug, thiserror::Error)]
pub enum ReadOnlyError {
    #[error("cannot run blockdev: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("blockdev {flag} {}: {status}", dev.display())]
    Failed {
        flag: &'static str,
        dev: PathBuf,
        status: std::process::ExitStatus,
    },
}

/// Sets or clears the block device's read-only flag (`blockdev --setro|--setrw`). The command,
/// not the BLKROSET ioctl, because neither rustix nor nix offers that ioctl without `unsafe`.
pub async fn set_read_only(dev: &Path, read_only: bool) -> Result<(), ReadOnlyError> {
    let flag = if read_only { "--setro" } else { "--setrw" };
    let status = tokio::process::Command::new("blockdev")
        .arg(flag)
        .arg(dev)
        .status()
        .await
        .map_err(ReadOnlyError::Spawn)?;
    if status.success() {
        Ok(())
    } else {
        Err(ReadOnlyError::Failed {
            flag,
            dev: dev.to_owned(),
            status,
        })
    }
}

/// Block filesystems the running kernel has loaded (`/proc/filesystems` without `nodev`), in
/// its order; empty if it cannot be read.
pub fn loaded_block_filesystems() -> Vec<String> {
    std::fs::read_to_string("/proc/filesystems")
        .map(|text| block_filesystems(&text))
        .unwrap_or_default()
}

/// `/proc/filesystems`' block filesystems; `fuseblk` needs a userspace helper mount(2) cannot
/// start, so it is left out.
pub fn block_filesystems(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(str::trim)
        .filter(|fs| !fs.is_empty() && *fs != "fuseblk")
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_filesystem_data() {
        let (flags, data) = split_options("ro,nosuid,nodev,noexec,iocharset=iso8859-1");
        assert_eq!(
            flags,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC
        );
        assert_eq!(data, "iocharset=iso8859-1");
        let (flags, data) = split_options("ro,, noatime ,utf8,uid=0");
        assert_eq!(flags, MountFlags::RDONLY | MountFlags::NOATIME);
        assert_eq!(data, "utf8,uid=0");
        assert_eq!(split_options(""), (MountFlags::empty(), String::new()));
    }

    #[test]
    fn busy_and_wrong_type_are_told_by_errno() {
        let err = |source| MountError::Mount {
            dev: "/dev/sdc".into(),
            fstype: "vfat".into(),
            source,
        };
        assert!(err(Errno::BUSY).is_busy());
        assert!(!err(Errno::BUSY).is_wrong_type());
        assert!(err(Errno::INVAL).is_wrong_type());
        assert!(err(Errno::NODEV).is_wrong_type());
        assert!(!err(Errno::ACCESS).is_busy() && !err(Errno::ACCESS).is_wrong_type());
    }

    #[test]
    fn block_filesystems_leave_out_nodev_and_fuse() {
        let text = "nodev\tsysfs\nnodev\ttmpfs\n\text3\n\text4\nnodev\tfuse\n\tfuseblk\n\tvfat\n";
        assert_eq!(block_filesystems(text), ["ext3", "ext4", "vfat"]);
    }

    #[tokio::test]
    async fn a_mount_refused_says_which_device_and_type() {
        let dir = tempfile::tempdir().unwrap();
        // EPERM unprivileged, ENOENT as root: either way the kernel refused it.
        let e = mount(
            &dir.path().join("no-such-device"),
            &dir.path().join("mnt"),
            "vfat",
            "ro",
        )
        .await
        .unwrap_err();
        assert!(matches!(&e, MountError::Mount { .. }), "{e:?}");
        assert!(e.to_string().contains("no-such-device as vfat"), "{e}");
        assert!(dir.path().join("mnt").is_dir(), "the mount point is made");
    }
}
