//! TLS for both listeners: one gRPC port that is mutual TLS for devices and server-only TLS for enrolment.
//!
//! A client that offers the ALPN id `caretaker-enroll/1` gets a handshake
//! without client authentication; its connection carries no device identity,
//! so only `Enroll` will serve it. Every other client must present a
//! certificate signed by the school's CA whose device is not revoked, or the
//! handshake fails. The device id the handlers see comes from that
//! certificate and nowhere else.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::ca::common_name;
use crate::listen::{self, Gate, Guarded, accept_loop};
use crate::metrics::AuthKind;
use crate::security;

/// Device ids whose certificates must no longer be accepted.
pub type Revoked = Arc<RwLock<HashSet<String>>>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub use caretaker_proto::host::{certs_from_pem, key_from_pem};

/// Accepts school-CA client certificates unless their device is revoked.
#[derive(Debug)]
struct DeviceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revoked,
}

impl ClientCertVerifier for DeviceVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = common_name(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if self.revoked.read().expect("revocation lock").contains(&id) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The two server configurations of the gRPC port.
#[derive(Clone)]
pub struct GrpcTls {
    enroll: Arc<ServerConfig>,
    devices: Arc<ServerConfig>,
}

impl GrpcTls {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca: CertificateDer<'static>,
        revoked: Revoked,
    ) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = Arc::new(DeviceVerifier { inner, revoked });
        let mut devices = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        devices.alpn_protocols = vec![b"h2".to_vec()];
        // A resumed session skips client-certificate verification, and with it
        // the revocation check: every device connection does a full handshake.
        devices.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        devices.send_tls13_tickets = 0;
        let mut enroll = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        enroll.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            enroll: Arc::new(enroll),
            devices: Arc::new(devices),
        })
    }
}

/// Server-only TLS for the web listener (browsers and API clients).
pub fn web_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The device named by the verified client certificate; `None` on an enrolment connection.
    pub device_id: Option<String>,
}

/// A TLS connection ready for tonic, carrying its `PeerInfo`.
pub struct GrpcConn {
    stream: Guarded<TlsStream<TcpStream>>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

async fn handshake(tcp: TcpStream, tls: GrpcTls) -> io::Result<TlsStream<TcpStream>> {
    tcp.set_nodelay(true)?;
    let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
    let enrolling = start
        .client_hello()
        .alpn()
        .is_some_and(|mut ids| ids.any(|id| id == caretaker_proto::ENROLL_ALPN));
    let config = if enrolling { tls.enroll } else { tls.devices };
    start.into_stream(config).await
}

/// What the security log should say about a refused handshake, if it was a certificate the
/// school did not issue or has revoked (scanners and dropped connections are not worth a line).
pub fn certificate_refusal(e: &io::Error) -> Option<&'static str> {
    use rustls::CertificateError as C;
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(C::Revoked) => {
            Some("TLS handshake refused: the device's certificate has been revoked")
        }
        rustls::Error::InvalidCertificate(_) => {
            Some("TLS handshake refused: a certificate this school's CA did not issue")
        }
        _ => None,
    }
}

/// Accepts connections within `gate`'s caps and completes handshakes concurrently, yielding
/// ready connections.
pub fn grpc_incoming(
    listener: TcpListener,
    tls: GrpcTls,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<GrpcConn>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = tasks.clone();
    tasks.spawn(accept_loop(
        listener,
        gate,
        shutdown,
        move |tcp, remote, slot| {
            let tls = tls.clone();
            let tx = tx.clone();
            handshakes.spawn(async move {
                let hs = async {
                    let r = handshake(tcp, tls).await;
                    if let Err(e) = &r
                        && let Some(detail) = certificate_refusal(e)
                    {
                        security::auth_failed(
                            AuthKind::DeviceCertificate,
                            Some(remote.ip()),
                            detail,
                        );
                    }
                    r
                };
                // Refused handshakes are normal (wrong CA, revoked, scanners): counted,
                // and the rest are served as usual.
                let Ok(stream) = listen::handshake(&slot, remote, hs).await else {
                    return;
                };
                let device_id = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| common_name(c));
                if device_id.is_some() {
                    slot.prove();
                }
                let conn = GrpcConn {
                    stream: Guarded::new(stream, slot),
                    info: PeerInfo { remote, device_id },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        },
    ));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
