//! The USB probe's medium scans as the probe runs them: started on a gated or newly mounted
//! medium, watched for progress, aborted and reported when stalled, and acted on when done
//! (a clean gated medium made writable, an infected one detached); and the agent's own
//! read-only mounts they use (the calls themselves are in `os::linux::mount`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::task::AbortHandle;

use super::clamd::ScanSummary;
use super::{Hold, State, UsbProbeConfig, parse, scan};
use crate::os::linux::mount as os_mount;
use crate::os::linux::usb_sysfs as sysfs;

/// A finished scan, as its task returns it.
pub(super) struct ScanDone {
    usb_devpath: String,
    block: String,
    summary: ScanSummary,
    /// Set when the agent itself mounted and owns the read-only flag.
    gated: bool,
}

/// A running scan, as the probe watches it.
pub(super) struct ScanWatch {
    usb_devpath: String,
    block: String,
    gated: bool,
    progress: scan::Progress,
    abort: AbortHandle,
    /// The agent's own mount, to detach if the scan is aborted.
    private_dir: Option<PathBuf>,
}

impl State {
    /// Scans in a task the probe owns; `mount_point` None means the agent mounts read-only itself.
    pub(super) fn spawn_scan(
        &mut self,
        usb_devpath: String,
        block: String,
        mount_point: Option<PathBuf>,
        gated: bool,
    ) {
        let Some(addr) = self.cfg.clamd.clone() else {
            return;
        };
        let progress = scan::Progress::default();
        let private_dir = self.cfg.scan_mount_dir.join(&block);
        let own_mount = mount_point.is_none().then(|| private_dir.clone());
        let job = scan::ScanJob {
            addr,
            block: block.clone(),
            mount_point,
            private_dir,
            progress: progress.clone(),
            cancel: self.shutdown.child_token(),
        };
        let run = self.cfg.scanner.run(&self.cfg, job);
        let (dp, b) = (usb_devpath.clone(), block.clone());
        let abort = self.scans.spawn(async move {
            ScanDone {
                usb_devpath: dp,
                block: b,
                summary: run.await,
                gated,
            }
        });
        self.scan_watch.insert(
            abort.id(),
            ScanWatch {
                usb_devpath,
                block,
                gated,
                progress,
                abort,
                private_dir: own_mount,
            },
        );
    }

    pub(super) async fn scan_joined(
        &mut self,
        joined: Result<(tokio::task::Id, ScanDone), tokio::task::JoinError>,
    ) {
        match joined {
            // A scan no longer watched was aborted as stalled and already reported; a result
            // that raced the abort is dropped with it (the stick stays as the stall left it).
            Ok((id, done)) => {
                if self.scan_watch.remove(&id).is_some() {
                    self.scan_finished(done).await;
                }
            }
            Err(e) => {
                if let Some(w) = self.scan_watch.remove(&e.id()) {
                    tracing::error!(block = w.block, error = %e, "Medium scan failed");
                    let summary = ScanSummary {
                        errors: vec![format!("the scan failed: {e}")],
                        ..Default::default()
                    };
                    self.scan_finished(ScanDone {
                        usb_devpath: w.usb_devpath,
                        block: w.block,
                        summary,
                        gated: w.gated,
                    })
                    .await;
                }
            }
        }
    }

    /// Aborts and reports every scan that has not moved for its gap.
    pub(super) async fn check_scans(&mut self) {
        let now = tokio::time::Instant::now();
        let gap = self.cfg.scan_stall_after;
        let due: Vec<tokio::task::Id> = self
            .scan_watch
            .iter()
            .filter(|(_, w)| w.progress.stalled(now, gap))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(w) = self.scan_watch.remove(&id) else {
                continue;
            };
            // A thread left in mount(2), an open or a read on the dead stick finishes on its
            // own and is ignored (a mount it completes is detached then: os::linux::mount).
            w.abort.abort();
            let stalled = now.saturating_duration_since(w.progress.last());
            self.scan_stalled(w, stalled).await;
        }
    }

    async fn scan_stalled(&mut self, w: ScanWatch, stalled: Duration) {
        let stick = match self.devices.get_mut(&w.usb_devpath) {
            None => "removed",
            Some(_) if !w.gated => "allowed_by_policy",
            Some(t) => {
                let detached = self.cfg.manage_authorization
                    && sysfs::set_authorized(&self.cfg.sys_root, &w.usb_devpath, false).is_ok();
                if detached {
                    t.hold = Hold::Unscanned;
                    t.facts.authorized = Some(false);
                    "blocked"
                } else {
                    // Still read-only: only a clean scan makes it writable.
                    "read_only"
                }
            }
        };
        let stalled_secs = stalled.as_secs();
        let mut d = self
            .devices
            .get(&w.usb_devpath)
            .map(|t| t.facts.details())
            .unwrap_or_default();
        tracing::warn!(
            block = w.block,
            device_id = d.get("device_id").and_then(serde_json::Value::as_str),
            stalled_secs,
            stick,
            "Medium scan stalled; aborted"
        );
        d.insert("probe".into(), json!("usb"));
        d.insert("unit".into(), json!("medium_scan"));
        d.insert("block".into(), json!(w.block));
        d.insert("stalled_secs".into(), json!(stalled_secs));
        d.insert(
            "max_gap_secs".into(),
            json!(self.cfg.scan_stall_after.as_secs_f64()),
        );
        d.insert("action".into(), json!("aborted"));
        d.insert("stick".into(), json!(stick));
        self.emit("agent.probe_stalled", self.current_user(), d)
            .await;
        let summary = ScanSummary {
            errors: vec![format!("the scan made no progress for {stalled_secs} s")],
            cancelled: true,
            ..Default::default()
        };
        self.scan_finished(ScanDone {
            usb_devpath: w.usb_devpath.clone(),
            block: w.block.clone(),
            summary,
            gated: w.gated,
        })
        .await;
        if stick == "blocked"
            && let Some(t) = self.devices.get(&w.usb_devpath)
        {
            let mut d = t.facts.details();
            d.insert(
                "reason".into(),
                json!("its scan stalled; plug it in again to scan it again"),
            );
            d.insert("enforced".into(), json!(true));
            self.emit("usb.blocked", self.current_user(), d).await;
        }
        if let Some(dir) = &w.private_dir {
            // Lazy: detaching a dead stick's filesystem needs no I/O from it. After the
            // reports, so a slow `umount` cannot delay them.
            let umount = os_mount::unmount(dir, true);
            let _ = tokio::time::timeout(Duration::from_secs(10), umount).await;
        }
    }

    async fn scan_finished(&mut self, done: ScanDone) {
        let s = &done.summary;
        let Some(t) = self.devices.get(&done.usb_devpath) else {
            return;
        };
        let mut d = t.facts.details();
        d.insert("block".into(), json!(done.block));
        d.insert("result".into(), json!(s.result()));
        d.insert("files_scanned".into(), json!(s.files));
        d.insert("bytes_scanned".into(), json!(s.bytes));
        d.insert("duration_ms".into(), json!(s.duration_ms));
        d.insert("errors".into(), json!(s.errors));
        self.emit("media.scanned", self.current_user(), d).await;
        match s.result() {
            "infected" => {
                let mut d = t.facts.details();
                d.insert("block".into(), json!(done.block));
                d.insert("detections".into(), json!(s.detections));
                let detach = done.gated && self.cfg.manage_authorization;
                d.insert(
                    "action".into(),
                    json!(if detach { "detached" } else { "reported" }),
                );
                self.emit("media.infected", self.current_user(), d).await;
                if detach {
                    let dp = done.usb_devpath.clone();
                    if sysfs::set_authorized(&self.cfg.sys_root, &dp, false).is_ok()
                        && let Some(t) = self.devices.get_mut(&dp)
                    {
                        t.hold = Hold::Quarantined;
                        t.facts.authorized = Some(false);
                        let mut d = t.facts.details();
                        d.insert("reason".into(), json!("malware found on the medium"));
                        d.insert("enforced".into(), json!(true));
                        self.emit("usb.blocked", self.current_user(), d).await;
                    }
                }
            }
            "clean" if done.gated => blockdev(&self.cfg.dev_root, &done.block, false).await,
            _ => {}
        }
    }
}

/// Sets the medium's read-only flag; failures are logged (the device still gets scanned).
pub(super) async fn blockdev(dev_root: &Path, name: &str, read_only: bool) {
    if let Err(e) = os_mount::set_read_only(&dev_root.join(name), read_only).await {
        tracing::warn!(block = name, read_only, error = %e, "Cannot set the medium's read-only flag");
    }
}

/// Mounts the medium read-only, without set-uid, devices or execution, in the agent's private
/// directory: as the filesystem its first bytes name, or else as each block filesystem the
/// kernel has loaded in turn (what `mount` does when it cannot tell).
pub(super) async fn private_mount(
    cfg: &UsbProbeConfig,
    block: &str,
    dir: &Path,
) -> Result<(), os_mount::MountError> {
    let mut opts = "ro,nosuid,nodev,noexec".to_owned();
    if !cfg.mount_options.is_empty() {
        opts.push(',');
        opts.push_str(&cfg.mount_options);
    }
    let dev = cfg.dev_root.join(block);
    retry_while_busy(MOUNT_ATTEMPTS, MOUNT_RETRY, || async {
        let named = match crate::os::linux::files::read_head(&dev, parse::FS_HEAD_LEN).await {
            Ok(head) => head.as_deref().and_then(parse::filesystem_type),
            Err(e) => {
                tracing::debug!(block, error = %e, "Cannot read the medium's first bytes");
                None
            }
        };
        let candidates = match named {
            Some(fs) => vec![fs.to_owned()],
            None => os_mount::loaded_block_filesystems(),
        };
        let mut last = None;
        for fstype in &candidates {
            match os_mount::mount(&dev, dir, fstype, &opts).await {
                Err(e) if e.is_wrong_type() => last = Some(e),
                r => return r,
            }
        }
        Err(last.unwrap_or(os_mount::MountError::NoFilesystem { dev: dev.clone() }))
    })
    .await
}

/// A disk that has just appeared can be briefly busy: the kernel may rescan its partitions
/// (holding it exclusively) just after announcing it, and the mount then fails with EBUSY.
/// Seen once in three runs of the VM test. Such failures are retried; others are not.
const MOUNT_ATTEMPTS: u32 = 8;
const MOUNT_RETRY: Duration = Duration::from_millis(250);

async fn retry_while_busy<F, Fut>(
    attempts: u32,
    delay: Duration,
    mut op: F,
) -> Result<(), os_mount::MountError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), os_mount::MountError>>,
{
    let mut tried = 1;
    loop {
        match op().await {
            Err(e) if tried < attempts && e.is_busy() => {
                tracing::debug!(error = %e, tried, "Medium busy; mounting it again");
                tried += 1;
                tokio::time::sleep(delay).await;
            }
            r => return r,
        }
    }
}

pub(super) async fn unmount(dir: &Path) {
    let _ = os_mount::unmount(dir, false).await;
    let _ = tokio::fs::remove_dir(dir).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_failed(source: rustix::io::Errno) -> os_mount::MountError {
        os_mount::MountError::Mount {
            dev: "/dev/sdc".into(),
            fstype: "vfat".into(),
            source,
        }
    }

    #[tokio::test]
    async fn a_busy_mount_is_retried_and_other_failures_are_not() {
        use rustix::io::Errno;
        let calls = std::cell::Cell::new(0);
        let busy_twice = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n <= 2 {
                    Err(mount_failed(Errno::BUSY))
                } else {
                    Ok(())
                }
            }
        };
        assert!(
            retry_while_busy(5, Duration::ZERO, busy_twice)
                .await
                .is_ok()
        );
        assert_eq!(calls.get(), 3);

        calls.set(0);
        let invalid = || {
            calls.set(calls.get() + 1);
            async { Err(mount_failed(Errno::INVAL)) }
        };
        assert!(retry_while_busy(5, Duration::ZERO, invalid).await.is_err());
        assert_eq!(calls.get(), 1, "only busy is retried");

        calls.set(0);
        let always_busy = || {
            calls.set(calls.get() + 1);
            async { Err(mount_failed(Errno::BUSY)) }
        };
        assert!(
            retry_while_busy(3, Duration::ZERO, always_busy)
                .await
                .is_err()
        );
        assert_eq!(calls.get(), 3, "gives up after the attempts");
    }
}
