//! Scanning a mounted medium by streaming each file to clamd (INSTREAM), so clamd needs no access to the mount.
use std::path::Path;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::scan::{Counted, Progress};
pub use crate::probe::antivirus::clamd::ClamdAddr;
use crate::probe::antivirus::clamd::{ScanResult, scan_at};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanSummary {
    pub files: u64,
    pub bytes: u64,
    /// Detection names only: file names on a pupil's stick are personal data the policy does not need.
    pub detections: Vec<String>,
    /// Files clamd could not judge (too large, unreadable) and connection failures.
    pub errors: Vec<String>,
    pub duration_ms: u64,
    pub cancelled: bool,
}

impl ScanSummary {
    /// "clean", "infected", "incomplete" (errors or cancelled, nothing found).
    pub fn result(&self) -> &'static str {
        if !self.detections.is_empty() {
            "infected"
        } else if !self.errors.is_empty() || self.cancelled {
            "incomplete"
        } else {
            "clean"
        }
    }
}

/// Scans every regular file under `root` (symlinks are not followed: they could leave the medium).
/// Each directory listed, file opened and byte read for clamd marks `progress`.
pub async fn scan_tree(
    addr: &ClamdAddr,
    root: &Path,
    cancel: &CancellationToken,
    progress: &Progress,
) -> ScanSummary {
    let start = Instant::now();
    let mut s = ScanSummary::default();
    let mut stack = vec![root.to_path_buf()];
    'walk: while let Some(dir) = stack.pop() {
        let mut rd = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => {
                progress.made();
                rd
            }
            Err(e) => {
                s.errors.push(format!("cannot list a directory: {e}"));
                continue;
            }
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            if cancel.is_cancelled() {
                s.cancelled = true;
                break 'walk;
            }
            let Ok(ft) = e.file_type().await else {
                continue;
            };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                // The medium is the pupil's: a file swapped for a symlink or FIFO since the
                // listing is refused, not followed or waited on. The open is a blocking call
                // (a dead stick can hold it for ever): off the runtime's threads, so aborting
                // the scan ends it.
                let path = e.path();
                let opened =
                    tokio::task::spawn_blocking(move || crate::os::untrusted::open_regular(&path))
                        .await
                        .unwrap_or_else(|j| Err(std::io::Error::other(j.to_string())));
                let f = match opened {
                    Ok((f, _)) => tokio::fs::File::from_std(f),
                    Err(err) => {
                        s.errors.push(format!("cannot open a file: {err}"));
                        continue;
                    }
                };
                progress.made();
                let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                match scan_at(addr, Counted::new(f, progress.clone())).await {
                    Ok(v) => {
                        s.files += 1;
                        s.bytes += size;
                        match v {
                            ScanResult::Clean => {}
                            ScanResult::Found(names) => s.detections.extend(names),
                            ScanResult::Error(msg) => s.errors.push(msg),
                        }
                    }
                    Err(err) => {
                        s.errors.push(format!("clamd: {err}"));
                        break 'walk;
                    }
                }
            }
        }
    }
    s.duration_ms = start.elapsed().as_millis() as u64;
    s
}

/// The end-to-end tests' real clamd (one copy of the rig, included by path: the tests crate
/// depends on this one, so this one cannot depend on it).
#[cfg(test)]
#[path = "../../../../tests/src/clamd_rig.rs"]
pub(crate) mod clamd_rig;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::clamd_rig::{EICAR_SIGNATURE, eicar};

    /// A started real clamd with the rig's one-signature database, refusing streams over
    /// 1 MiB (so a test can show an oversized file is reported, not passed as clean).
    pub(crate) fn real_clamd() -> super::clamd_rig::ClamdRig {
        let mut rig = super::clamd_rig::ClamdRig::with_fresh_database();
        rig.extra_conf.push("StreamMaxLength 1M".into());
        rig.start();
        rig
    }

    #[tokio::test]
    async fn real_clamd_finds_eicar_in_a_tree() {
        let clamd = real_clamd();
        let addr = ClamdAddr::Unix(clamd.socket());
        let media = tempfile::tempdir().unwrap();
        std::fs::create_dir(media.path().join("sub")).unwrap();
        std::fs::write(media.path().join("notes.txt"), "homework").unwrap();
        std::fs::write(media.path().join("sub/eicar.com"), eicar()).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", media.path().join("link")).unwrap();
        let (stop, progress) = (CancellationToken::new(), Progress::default());
        let scan = || scan_tree(&addr, media.path(), &stop, &progress);
        let s = scan().await;
        assert_eq!(s.detections, vec![EICAR_SIGNATURE.to_string()], "{s:?}");
        assert_eq!(s.files, 2, "symlink not followed");
        assert_eq!(s.bytes, 8 + eicar().len() as u64);
        assert_eq!(s.result(), "infected");
        std::fs::remove_file(media.path().join("sub/eicar.com")).unwrap();
        // A file over StreamMaxLength is reported as an error, not as clean.
        std::fs::write(media.path().join("big.bin"), vec![7u8; 2 * 1024 * 1024]).unwrap();
        let s = scan().await;
        assert_eq!(s.result(), "incomplete", "{s:?}");
        std::fs::remove_file(media.path().join("big.bin")).unwrap();
        let s = scan().await;
        assert_eq!(s.result(), "clean");
    }

    #[tokio::test]
    async fn unreachable_clamd_is_incomplete() {
        let media = tempfile::tempdir().unwrap();
        std::fs::write(media.path().join("a"), "x").unwrap();
        let s = scan_tree(
            &ClamdAddr::Unix("/nonexistent/clamd.sock".into()),
            media.path(),
            &CancellationToken::new(),
            &Progress::default(),
        )
        .await;
        assert_eq!(s.result(), "incomplete");
    }
}
