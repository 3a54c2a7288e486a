//! Opens a gRPC channel to the collector over our own rustls configuration.
//!
//! tonic's built-in TLS cannot pin a CA by fingerprint or offer the enrolment
//! ALPN id, so the agent dials TCP and TLS itself and hands tonic the stream.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

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
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
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
