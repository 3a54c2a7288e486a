//! Opens a gRPC channel to the collector over our own rustls configuration.
//!
//! tonic's built-in TLS cannot pin a CA by fingerprint or offer the enrolment
//! ALPN id, so the agent dials TCP and TLS itself and hands tonic the stream.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// A TLS failure a person can act on, as opposed to a network that is simply down. By the
/// time gRPC reports a failed stream it says only "broken pipe" or "connection closed", so
/// the cause is caught where the TLS error happens and kept here (`ProblemSlot`).
#[derive(Debug, Clone, PartialEq)]
pub enum TlsProblem {
    /// The collector refused this device's certificate as revoked.
    Revoked,
    /// The collector's certificate is not valid yet by this computer's clock.
    ClockBehind {
        local: DateTime<Utc>,
        not_before: Option<DateTime<Utc>>,
    },
    /// The collector's certificate has expired by this computer's clock.
    ClockAhead {
        local: DateTime<Utc>,
        not_after: Option<DateTime<Utc>>,
    },
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsProblem::Revoked => write!(
                f,
                "this device has been revoked by the collector; its events stay on this computer. To use it again it must be enrolled afresh, with a new token from the network manager"
            ),
            TlsProblem::ClockBehind { local, not_before } => clock_out_of_range(
                f,
                local,
                "earlier",
                not_before.as_ref().map(|t| ("valid from", t)),
                "the clock is probably wrong: set the date and time (or turn on network time) and the agent will connect",
            ),
            TlsProblem::ClockAhead { local, not_after } => clock_out_of_range(
                f,
                local,
                "later",
                not_after.as_ref().map(|t| ("valid until", t)),
                "if the clock is wrong, set the date and time; if it is right, the collector's certificate has expired",
            ),
        }
    }
}

/// The clock message both ways round: what the clock reads, which side of the collector's
/// certificate it falls, the bound it crossed when known, and what to do.
fn clock_out_of_range(
    f: &mut std::fmt::Formatter<'_>,
    local: &DateTime<Utc>,
    side: &str,
    bound: Option<(&str, &DateTime<Utc>)>,
    advice: &str,
) -> std::fmt::Result {
    write!(
        f,
        "this computer's clock reads {}, {side} than the collector's certificate allows",
        utc_text(local)
    )?;
    if let Some((what, t)) = bound {
        write!(f, " ({what} {})", utc_text(t))?;
    }
    write!(f, "; {advice}")
}

fn utc_text(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

impl TlsProblem {
    /// The problem a rustls error means, if it is one of these; `local` is this computer's clock.
    pub fn from_rustls(e: &rustls::Error, local: DateTime<Utc>) -> Option<Self> {
        let at = |t: &UnixTime| DateTime::<Utc>::from_timestamp(t.as_secs() as i64, 0);
        match e {
            rustls::Error::AlertReceived(AlertDescription::CertificateRevoked) => {
                Some(TlsProblem::Revoked)
            }
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::NotValidYet => Some(TlsProblem::ClockBehind {
                    local,
                    not_before: None,
                }),
                CertificateError::NotValidYetContext { not_before, .. } => {
                    Some(TlsProblem::ClockBehind {
                        local,
                        not_before: at(not_before),
                    })
                }
                CertificateError::Expired => Some(TlsProblem::ClockAhead {
                    local,
                    not_after: None,
                }),
                CertificateError::ExpiredContext { not_after, .. } => {
                    Some(TlsProblem::ClockAhead {
                        local,
                        not_after: at(not_after),
                    })
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The problem behind an I/O error from tokio-rustls (which wraps rustls errors).
    fn from_io(e: &io::Error) -> Option<Self> {
        let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        Self::from_rustls(inner, Utc::now())
    }
}

/// Where a connection records the last `TlsProblem` it met, for the uplink to read.
pub type ProblemSlot = Arc<Mutex<Option<TlsProblem>>>;

fn note(slot: &ProblemSlot, e: &io::Error) {
    if let Some(p) = TlsProblem::from_io(e) {
        *slot.lock().expect("problem slot lock") = Some(p);
    }
}

/// A TLS stream that notes a `TlsProblem` in its slot when a read or write fails with one.
/// In TLS 1.3 the server judges the client's certificate after the client's handshake is
/// done, so a revocation arrives as an alert on a later read, inside hyper.
struct Watched<S> {
    inner: S,
    slot: ProblemSlot,
}

impl<S> Watched<S> {
    /// Passes a read's or write's result on, noting a `TlsProblem` if it failed with one.
    fn noted<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            note(&self.slot, e);
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.noted(r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.noted(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.noted(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why the collector could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the collector address `{0}` is not HOST:PORT")]
    BadAddress(String),
    #[error("cannot reach the collector at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
}

/// Splits `host:port` (IPv6 as `[::1]:port`).
pub fn split_addr(addr: &str) -> Result<(String, u16), ConnectError> {
    let bad = || ConnectError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Walks an error's sources into one line, so the operator sees the root cause.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Connects to `addr` with `tls`, verifying the server as `host`.
pub async fn channel(addr: &str, tls: ClientConfig) -> Result<Channel, ConnectError> {
    channel_watched(addr, tls, ProblemSlot::default()).await
}

/// As `channel`, noting in `slot` any `TlsProblem` met while connecting or afterwards.
pub async fn channel_watched(
    addr: &str,
    tls: ClientConfig,
    slot: ProblemSlot,
) -> Result<Channel, ConnectError> {
    let (host, port) = split_addr(addr)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|_| ConnectError::BadAddress(addr.to_string()))?;
    let connector = TlsConnector::from(Arc::new(tls));
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ConnectError::BadAddress(addr.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    let svc = tower::service_fn(move |_uri: http::Uri| {
        let (host, name, connector) = (host.clone(), name.clone(), connector.clone());
        let slot = slot.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector
                .connect(name, tcp)
                .await
                .inspect_err(|e| note(&slot, e))?;
            Ok::<_, std::io::Error>(TokioIo::new(Watched { inner: tls, slot }))
        }
    });
    endpoint
        .connect_with_connector(svc)
        .await
        .map_err(|e| ConnectError::Unreachable {
            addr: addr.to_string(),
            reason: error_chain(&e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole text, since `caretaker-agent status` shows it to a person as it is.
    #[test]
    fn a_clock_out_of_range_says_what_it_reads_the_bound_and_what_to_do() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let behind = TlsProblem::ClockBehind {
            local: t("2020-01-02T03:04:05Z"),
            not_before: Some(t("2026-01-01T00:00:00Z")),
        };
        assert_eq!(
            behind.to_string(),
            "this computer's clock reads 2020-01-02 03:04:05 UTC, earlier than the collector's certificate allows (valid from 2026-01-01 00:00:00 UTC); the clock is probably wrong: set the date and time (or turn on network time) and the agent will connect"
        );
        let ahead = TlsProblem::ClockAhead {
            local: t("2040-01-02T03:04:05Z"),
            not_after: None,
        };
        assert_eq!(
            ahead.to_string(),
            "this computer's clock reads 2040-01-02 03:04:05 UTC, later than the collector's certificate allows; if the clock is wrong, set the date and time; if it is right, the collector's certificate has expired"
        );
    }
}
