//! A medium's scan as a unit of work the USB probe owns: its progress clock, the seam that runs it (real mount and clamd, or a test's fake), and the pure test for a scan that stopped moving.
//!
//! The probe's own heart (`probe::liveness`) cannot see a scan: scans run beside the probe's
//! loop so a large stick does not stop it deciding about keyboards. So each scan keeps its own
//! clock, moved by every directory listed, file opened and byte read on its way to clamd; the
//! probe aborts one whose clock is older than its gap (a `mount` or a read on a dead stick
//! that never returns).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::UsbProbeConfig;
use super::clamd::{ClamdAddr, ScanSummary};

/// When a scan last moved. Clones share the clock.
#[derive(Debug, Clone)]
pub struct Progress(Arc<Mutex<Instant>>);

impl Default for Progress {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Progress {
    /// Records that the scan moved now.
    pub fn made(&self) {
        *self.0.lock().expect("progress lock") = Instant::now();
    }

    pub fn last(&self) -> Instant {
        *self.0.lock().expect("progress lock")
    }

    /// Whether the scan has not moved for longer than `gap` at `now`.
    pub fn stalled(&self, now: Instant, gap: Duration) -> bool {
        now.saturating_duration_since(self.last()) > gap
    }
}

/// A reader that records progress for every read that returns bytes (bytes on their way to
/// clamd), so a large file streaming slowly is not taken for a stuck one.
pub struct Counted<R> {
    inner: R,
    progress: Progress,
}

impl<R> Counted<R> {
    pub fn new(inner: R, progress: Progress) -> Self {
        Self { inner, progress }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.progress.made();
        }
        r
    }
}

/// One scan to run.
pub struct ScanJob {
    pub addr: ClamdAddr,
    /// The block device's name ("sda1").
    pub block: String,
    /// Where the desktop mounted it; None: the agent mounts it read-only at `private_dir`.
    pub mount_point: Option<PathBuf>,
    pub private_dir: PathBuf,
    pub progress: Progress,
    /// The probe is stopping.
    pub cancel: CancellationToken,
}

pub type ScanFuture = Pin<Box<dyn Future<Output = ScanSummary> + Send>>;

/// How a medium is scanned: by default mount (when needed) and stream every file to clamd;
/// tests put a scan that never ends in its place.
#[derive(Clone)]
pub struct Scanner(Arc<ScanFn>);

type ScanFn = dyn Fn(&UsbProbeConfig, ScanJob) -> ScanFuture + Send + Sync;

impl Scanner {
    pub fn new(f: impl Fn(&UsbProbeConfig, ScanJob) -> ScanFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn run(&self, cfg: &UsbProbeConfig, job: ScanJob) -> ScanFuture {
        (self.0)(cfg, job)
    }
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new(|cfg, job| Box::pin(real_scan(cfg.clone(), job)))
    }
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scanner")
    }
}

/// Mounts the medium read-only if the desktop has not, and streams its files to clamd.
async fn real_scan(cfg: UsbProbeConfig, job: ScanJob) -> ScanSummary {
    match job.mount_point {
        Some(mp) => super::clamd::scan_tree(&job.addr, &mp, &job.cancel, &job.progress).await,
        None => match super::media::private_mount(&cfg, &job.block, &job.private_dir).await {
            Ok(()) => {
                let dir = &job.private_dir;
                let s = super::clamd::scan_tree(&job.addr, dir, &job.cancel, &job.progress).await;
                super::media::unmount(dir).await;
                s
            }
            Err(e) => ScanSummary {
                errors: vec![format!("mount: {e}")],
                ..Default::default()
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn reading_through_counted_moves_the_clock_and_waiting_does_not() {
        let p = Progress::default();
        let start = p.last();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert!(p.stalled(Instant::now(), Duration::from_secs(60)));
        let mut r = Counted::new(&b"coursework"[..], p.clone());
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await.unwrap();
        assert_eq!(p.last(), start + Duration::from_secs(90));
        assert!(!p.stalled(Instant::now(), Duration::from_secs(60)));
    }
}
