//! Tells when the mount table changes: the kernel marks `/proc/self/mountinfo` with POLLPRI on
//! every mount and unmount, so an idle agent does no work until one happens.
//!
//! A path that cannot be polled that way (a plain file in tests, an old kernel) falls back to a
//! timer, so callers always get "maybe changed, re-read it" and never miss a change.
//! [`read`] is that re-read.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The mount table as text (`/proc/self/mountinfo`, or a plain file in tests).
pub async fn read(mountinfo: &Path) -> std::io::Result<String> {
    tokio::fs::read_to_string(mountinfo).await
}

/// Wakes the caller when the mount table may have changed.
#[derive(Debug)]
pub enum MountWatch {
    /// The kernel's own notification.
    Priority(AsyncFd<File>),
    /// Re-read on a timer.
    Timer(tokio::time::Interval),
}

impl MountWatch {
    /// Watches `mountinfo`, or re-reads every `fallback` if the kernel will not notify for it.
    pub fn new(mountinfo: &Path, fallback: Duration) -> Self {
        let file = match File::open(mountinfo) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("mount watch: {}: {e}; polling", mountinfo.display());
                return Self::timer(fallback);
            }
        };
        // epoll refuses regular files (EPERM); procfs's mountinfo accepts and signals POLLPRI.
        // The safe constructor is deprecated for an `unsafe` one whose contract (the fd stays open
        // and unchanged while registered) an owned `File` moved in already meets; the crate
        // forbids unsafe code, as in `uevent`.
        #[allow(deprecated)]
        let registered = AsyncFd::with_interest(file, Interest::PRIORITY);
        match registered {
            Ok(fd) => MountWatch::Priority(fd),
            Err(e) => {
                tracing::debug!(
                    "mount watch: {} not pollable ({e}); polling",
                    mountinfo.display()
                );
                Self::timer(fallback)
            }
        }
    }

    fn timer(every: Duration) -> Self {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        MountWatch::Timer(t)
    }

    /// True when the kernel notifies; false when this watch is a timer.
    pub fn is_event_driven(&self) -> bool {
        matches!(self, MountWatch::Priority(_))
    }

    /// Waits until the mount table may have changed.
    pub async fn changed(&mut self) {
        match self {
            MountWatch::Priority(fd) => match fd.ready(Interest::PRIORITY).await {
                // The kernel re-arms on its own: mounts_poll records the event it reported.
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::warn!("mount watch: {e}; polling every second from now on");
                    *self = Self::timer(Duration::from_secs(1));
                }
            },
            MountWatch::Timer(t) => {
                t.tick().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_plain_file_falls_back_to_the_timer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mountinfo");
        std::fs::write(&p, "").unwrap();
        let mut w = MountWatch::new(&p, Duration::from_millis(5));
        assert!(!w.is_event_driven());
        // The first tick is immediate, the second comes after the interval.
        w.changed().await;
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("timer fires");
    }

    #[tokio::test]
    async fn the_real_mount_table_signals_a_mount() {
        let mut w = MountWatch::new(Path::new("/proc/self/mountinfo"), Duration::from_secs(3600));
        assert!(w.is_event_driven(), "procfs mountinfo must be pollable");
        // Swallow any notification already pending from before (other tests mount too).
        let _ = tokio::time::timeout(Duration::from_millis(100), w.changed()).await;

        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "caretaker-test"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(st.success(), "mounting a tmpfs needs root");
        let fired = tokio::time::timeout(Duration::from_secs(5), w.changed()).await;
        let st = std::process::Command::new("umount")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        assert!(fired.is_ok(), "a mount must wake the watch");
    }
}
