//! Client TLS: pinned first contact for enrolment, and mutual TLS with the school's CA afterwards.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Normalises a fingerprint as typed by a technician (case, colons, missing prefix).
pub fn normalise_fingerprint(fp: &str) -> Option<String> {
    let hexpart = fp
        .trim()
        .strip_prefix("sha256:")
        .unwrap_or(fp.trim())
        .replace(':', "")
        .to_ascii_lowercase();
    (hexpart.len() == 64 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{hexpart}"))
}

/// Trusts the server only if its chain includes the CA with the pinned fingerprint,
/// and the server certificate is valid under that CA for the name dialled.
#[derive(Debug)]
pub struct PinnedCa {
    pin: String,
    /// The CA fingerprints actually offered, for a clear error on mismatch.
    pub offered: Mutex<Vec<String>>,
}

impl PinnedCa {
    pub fn new(pin: String) -> Self {
        Self {
            pin,
            offered: Mutex::new(Vec::new()),
        }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let offered: Vec<String> = intermediates.iter().map(|c| fingerprint(c)).collect();
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .cloned();
        *self.offered.lock().expect("offered lock") = offered;
        let Some(ca) = ca else {
            return Err(rustls::Error::General(
                "the collector's CA does not match the pinned fingerprint".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS for enrolment: no client certificate, pinned CA, and the ALPN id that tells the collector so.
pub fn enroll_config(verifier: Arc<PinnedCa>) -> Result<ClientConfig, rustls::Error> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![caretaker_proto::ENROLL_ALPN.to_vec(), b"h2".to_vec()];
    Ok(cfg)
}

/// TLS for a device: trusts only the school's CA and presents the device certificate.
pub fn device_config(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

pub use caretaker_proto::host::{certs_from_pem, fingerprint, key_from_pem};

#[cfg(test)]
mod tests {
    use super::normalise_fingerprint;

    #[test]
    fn fingerprints_are_normalised() {
        let hex = "AB".repeat(32);
        let want = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            normalise_fingerprint(&format!("sha256:{hex}")),
            Some(want.clone())
        );
        assert_eq!(normalise_fingerprint(&hex), Some(want));
        assert_eq!(normalise_fingerprint("sha256:abc"), None);
    }
}
