//! Scanning a mounted medium by streaming each file to clamd (INSTREAM), so clamd needs no access to the mount.
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    Unix(PathBuf),
    /// "host:port" (clamd.conf TCPSocket/TCPAddr).
    Tcp(String),
}

/// clamd's verdict on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
    Error(String),
}

/// Interprets one INSTREAM reply: "stream: OK", "stream: Eicar-Signature FOUND", "... ERROR".
pub fn parse_reply(reply: &str) -> Verdict {
    let r = reply.trim_end_matches(['\0', '\n']).trim();
    let body = r.strip_prefix("stream:").map(str::trim).unwrap_or(r);
    if body == "OK" {
        Verdict::Clean
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Verdict::Infected(name.trim().to_owned())
    } else {
        Verdict::Error(r.to_owned())
    }
}

/// Largest chunk sent at once (clamd's StreamMaxLength caps the total, not the chunk).
const CHUNK: usize = 64 * 1024;

async fn instream<S: AsyncRead + AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    mut conn: S,
    mut data: R,
) -> std::io::Result<(Verdict, u64)> {
    conn.write_all(b"zINSTREAM\0").await?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = data.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        conn.write_all(&(n as u32).to_be_bytes()).await?;
        // clamd answers early (and closes) when the stream exceeds StreamMaxLength.
        if let Err(e) = conn.write_all(&buf[..n]).await {
            let mut reply = String::new();
            if conn.read_to_string(&mut reply).await.is_ok() && !reply.is_empty() {
                return Ok((parse_reply(&reply), total));
            }
            return Err(e);
        }
        total += n as u64;
    }
    conn.write_all(&0u32.to_be_bytes()).await?;
    conn.flush().await?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await?;
    Ok((parse_reply(&String::from_utf8_lossy(&reply)), total))
}

/// Streams `data` to clamd on a fresh connection; returns the verdict and bytes sent.
pub async fn scan_stream<R: AsyncRead + Unpin>(
    addr: &ClamdAddr,
    data: R,
) -> std::io::Result<(Verdict, u64)> {
    match addr {
        ClamdAddr::Unix(p) => instream(tokio::net::UnixStream::connect(p).await?, data).await,
        ClamdAddr::Tcp(a) => instream(tokio::net::TcpStream::connect(a).await?, data).await,
    }
}

/// The outcome of scanning a whole medium.
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
pub async fn scan_tree(addr: &ClamdAddr, root: &Path, cancel: &CancellationToken) -> ScanSummary {
    let start = Instant::now();
    let mut s = ScanSummary::default();
    let mut stack = vec![root.to_path_buf()];
    'walk: while let Some(dir) = stack.pop() {
        let mut rd = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => rd,
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
                let f = match tokio::fs::File::open(e.path()).await {
                    Ok(f) => f,
                    Err(err) => {
                        s.errors.push(format!("cannot open a file: {err}"));
                        continue;
                    }
                };
                match scan_stream(addr, f).await {
                    Ok((v, n)) => {
                        s.files += 1;
                        s.bytes += n;
                        match v {
                            Verdict::Clean => {}
                            Verdict::Infected(name) => s.detections.push(name),
                            Verdict::Error(msg) => s.errors.push(msg),
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

#[cfg(test)]
#[path = "test_clamd.rs"]
pub(crate) mod test_clamd;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::test_clamd::{TestClamd, eicar};

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK\0"), Verdict::Clean);
        assert_eq!(
            parse_reply("stream: Win.Test.EICAR_HDB-1 FOUND\0"),
            Verdict::Infected("Win.Test.EICAR_HDB-1".into())
        );
        assert!(matches!(
            parse_reply("INSTREAM size limit exceeded. ERROR\0"),
            Verdict::Error(_)
        ));
        assert!(matches!(parse_reply(""), Verdict::Error(_)));
    }

    #[tokio::test]
    async fn real_clamd_finds_eicar_in_a_tree() {
        let clamd = TestClamd::start(None);
        let addr = ClamdAddr::Unix(clamd.sock.clone());
        let media = tempfile::tempdir().unwrap();
        std::fs::create_dir(media.path().join("sub")).unwrap();
        std::fs::write(media.path().join("notes.txt"), "homework").unwrap();
        std::fs::write(media.path().join("sub/eicar.com"), eicar()).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", media.path().join("link")).unwrap();
        let s = scan_tree(&addr, media.path(), &CancellationToken::new()).await;
        assert_eq!(
            s.detections,
            vec!["Caretaker.Test.EICAR.UNOFFICIAL".to_string()],
            "{s:?}"
        );
        assert_eq!(s.files, 2, "symlink not followed");
        assert_eq!(s.bytes, 8 + eicar().len() as u64);
        assert_eq!(s.result(), "infected");
        std::fs::remove_file(media.path().join("sub/eicar.com")).unwrap();
        // A file over StreamMaxLength is reported as an error, not as clean.
        std::fs::write(media.path().join("big.bin"), vec![7u8; 2 * 1024 * 1024]).unwrap();
        let s = scan_tree(&addr, media.path(), &CancellationToken::new()).await;
        assert_eq!(s.result(), "incomplete", "{s:?}");
        std::fs::remove_file(media.path().join("big.bin")).unwrap();
        let s = scan_tree(&addr, media.path(), &CancellationToken::new()).await;
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
        )
        .await;
        assert_eq!(s.result(), "incomplete");
    }
}
