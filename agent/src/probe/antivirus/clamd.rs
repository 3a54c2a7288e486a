//! Thin client for clamd: PING and VERSION on its local socket, INSTREAM on its local socket or TCP (interpretation is in `parse`).
//!
//! Commands use the `z` form (NUL-terminated) and one connection each; clamd closes the
//! connection after answering. clamd runs as `clamav` and cannot read every file a root agent
//! can, so scans stream bytes (`INSTREAM`) instead of naming paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncRead;

pub use super::parse::ScanResult;
use super::parse::parse_scan_reply;

/// Replies to PING / VERSION are a line; anything longer is not clamd.
#[cfg(unix)]
const MAX_SHORT_REPLY: usize = 4096;
/// Bytes per INSTREAM chunk. clamd's StreamMaxLength (default 25 MB) bounds the whole stream;
/// small chunks keep our memory flat whatever the file size.
pub const INSTREAM_CHUNK: usize = 64 * 1024;
/// Per read/write while scanning. clamd's own scan time limit defaults to 120 s.
pub const SCAN_IO_TIMEOUT: Duration = Duration::from_secs(150);

/// Where clamd listens: its local socket, or `HOST:PORT` (`TCPSocket`), e.g. a clamd
/// outside a VM or container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddr::Unix(p) => write!(f, "{}", p.display()),
            ClamdAddr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    #[error("cannot connect to clamd at {socket}: {source}")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    #[error("clamd socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("clamd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("clamd over a Unix socket is not available on this platform")]
    Unsupported,
}

/// Sends `z<command>\0` and returns the raw reply.
///
/// Runs on the blocking pool with socket timeouts in real time: these exchanges are tiny, and
/// a tokio timer would be skewed by a paused test clock or a starved runtime, while the blocking
/// pool also keeps paused-clock tests from auto-advancing past a real clamd's answer.
pub async fn command(
    socket: &Path,
    command: &str,
    timeout: Duration,
) -> Result<Vec<u8>, ClamdError> {
    let socket = socket.to_owned();
    let command = command.to_owned();
    tokio::task::spawn_blocking(move || blocking_command(&socket, &command, timeout))
        .await
        .map_err(|e| ClamdError::Io(std::io::Error::other(e)))?
}

#[cfg(unix)]
fn blocking_command(
    socket: &Path,
    command: &str,
    timeout: Duration,
) -> Result<Vec<u8>, ClamdError> {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;

    let mut stream = UnixStream::connect(socket).map_err(|source| ClamdError::Connect {
        socket: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("z{command}\0").as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.contains(&0) || reply.len() >= MAX_SHORT_REPLY {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ClamdError::Timeout(timeout));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(reply)
}

#[cfg(not(unix))]
fn blocking_command(_: &Path, _: &str, _: Duration) -> Result<Vec<u8>, ClamdError> {
    Err(ClamdError::Unsupported)
}

/// `PING`: true when clamd answered `PONG`.
pub async fn ping(socket: &Path, timeout: Duration) -> Result<bool, ClamdError> {
    Ok(super::parse::parse_ping_reply(
        &command(socket, "PING", timeout).await?,
    ))
}

/// `VERSION`: the raw reply, for `parse::parse_version_reply`.
pub async fn version(socket: &Path, timeout: Duration) -> Result<Vec<u8>, ClamdError> {
    command(socket, "VERSION", timeout).await
}

/// Streams `reader` to clamd with `INSTREAM` and returns its verdict. Never fails: connection
/// and I/O problems are `ScanResult::Error` so a caller can record "not scanned" and why.
pub async fn scan_stream<R: AsyncRead + Unpin>(socket: &Path, reader: R) -> ScanResult {
    scan_stream_with_timeout(socket, reader, SCAN_IO_TIMEOUT).await
}

/// Streams `reader` to clamd at `addr`. `Err` means clamd could not be talked to at all
/// (so a caller scanning many files can stop); `Ok` is clamd's verdict, which may itself be
/// an error such as the stream size limit.
pub async fn scan_at<R: AsyncRead + Unpin>(
    addr: &ClamdAddr,
    reader: R,
) -> Result<ScanResult, ClamdError> {
    instream(addr, reader, SCAN_IO_TIMEOUT)
        .await
        .map(|reply| parse_scan_reply(&reply))
}

/// As [`scan_stream`], with the per-read/write timeout chosen by the caller.
pub async fn scan_stream_with_timeout<R: AsyncRead + Unpin>(
    socket: &Path,
    reader: R,
    io_timeout: Duration,
) -> ScanResult {
    match instream(&ClamdAddr::Unix(socket.to_owned()), reader, io_timeout).await {
        Ok(reply) => parse_scan_reply(&reply),
        Err(e) => ScanResult::Error(e.to_string()),
    }
}

#[cfg(unix)]
async fn instream<R: AsyncRead + Unpin>(
    addr: &ClamdAddr,
    reader: R,
    io_timeout: Duration,
) -> Result<Vec<u8>, ClamdError> {
    use tokio::time::timeout;
    let refused = |source| ClamdError::Connect {
        socket: addr.to_string(),
        source,
    };
    match addr {
        ClamdAddr::Unix(p) => match timeout(io_timeout, tokio::net::UnixStream::connect(p)).await {
            Ok(Ok(s)) => exchange(s, reader, io_timeout).await,
            Ok(Err(e)) => Err(refused(e)),
            Err(_) => Err(ClamdError::Timeout(io_timeout)),
        },
        ClamdAddr::Tcp(a) => {
            match timeout(io_timeout, tokio::net::TcpStream::connect(a.as_str())).await {
                Ok(Ok(s)) => exchange(s, reader, io_timeout).await,
                Ok(Err(e)) => Err(refused(e)),
                Err(_) => Err(ClamdError::Timeout(io_timeout)),
            }
        }
    }
}

/// The INSTREAM exchange over an open connection.
#[cfg(unix)]
async fn exchange<S, R>(
    mut stream: S,
    mut reader: R,
    io_timeout: Duration,
) -> Result<Vec<u8>, ClamdError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    let send = async {
        stream.write_all(b"zINSTREAM\0").await?;
        let mut buf = vec![0u8; INSTREAM_CHUNK];
        loop {
            let n = match timeout(io_timeout, reader.read(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(ClamdError::Timeout(io_timeout)),
            };
            // A chunk is its big-endian u32 length, then the bytes; length 0 ends the stream.
            let len = (n as u32).to_be_bytes(); // n <= INSTREAM_CHUNK, far below u32::MAX
            match timeout(io_timeout, async {
                stream.write_all(&len).await?;
                stream.write_all(&buf[..n]).await
            })
            .await
            {
                Ok(r) => r?,
                Err(_) => return Err(ClamdError::Timeout(io_timeout)),
            }
            if n == 0 {
                return Ok::<(), ClamdError>(());
            }
        }
    };
    let sent = send.await;
    // clamd answers and closes early when the stream exceeds its limit, so a failed write is
    // followed by reading its reason rather than reporting a bare broken pipe.
    let mut reply = Vec::new();
    let read = timeout(io_timeout, stream.read_to_end(&mut reply)).await;
    match (sent, read) {
        // Whatever clamd said before closing is its verdict, even if the close then reset the
        // connection (it does when our unsent chunks were still queued).
        _ if !reply.is_empty() => Ok(reply),
        (Err(e), _) => Err(e),
        (Ok(()), Ok(Ok(_))) => Ok(reply),
        (Ok(()), Ok(Err(e))) => Err(e.into()),
        (Ok(()), Err(_)) => Err(ClamdError::Timeout(io_timeout)),
    }
}

#[cfg(not(unix))]
async fn instream<R: AsyncRead + Unpin>(
    _: &ClamdAddr,
    _: R,
    _: Duration,
) -> Result<Vec<u8>, ClamdError> {
    Err(ClamdError::Unsupported)
}
