//! The school's certificate authority: creates it, issues the server certificate, signs device CSRs.
//!
//! Devices are named by the CA, not by themselves: the subject of a signed
//! device certificate is `CN=<device id>` whatever the CSR asked for, so the
//! certificate alone says which device is speaking.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// How long a device certificate lasts. Renewal is later work; five years
/// outlives a school laptop's usual life.
const DEVICE_CERT_DAYS: i64 = 5 * 365;
const SERVER_CERT_DAYS: i64 = 10 * 365;
const CA_DAYS: i64 = 30 * 365;

/// Errors creating or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(rcgen::Error),
    #[error("invalid server name `{0}`")]
    BadName(String),
}

/// A loaded CA: its certificate and the key that signs with it.
pub struct SchoolCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

pub use caretaker_proto::host::fingerprint;

/// The PEM bytes of the first certificate in `pem` as DER.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    caretaker_proto::host::certs_from_pem(pem)
        .ok()?
        .into_iter()
        .next()
        .map(|c| c.to_vec())
}

/// How far before issue every certificate's validity starts. A laptop whose clock runs behind
/// (a flat CMOS battery, a dual-boot that writes local time to the RTC, a week in a cupboard)
/// checks the server certificate against its own clock, and an hour's slack locked it out
/// until someone fixed the clock. Public CAs backdate for the same reason; a certificate that
/// seems valid before it was made costs nothing here, because revocation, not time, is how a
/// device is cut off.
pub const BACKDATE_DAYS: i64 = 30;

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(BACKDATE_DAYS);
    params.not_after = now + Duration::days(days);
}

impl SchoolCa {
    /// Creates a new CA (ECDSA P-256). Returns the CA and its key as PEM.
    pub fn generate(school: &str) -> Result<(Self, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{school} Caretaker CA"));
        dn.push(DnType::OrganizationName, school.to_string());
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// Loads the CA from its certificate and key files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CaError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key = KeyPair::from_pem(&read(key_path)?)?;
        let cert_der = pem_to_der(&cert_pem).ok_or_else(|| CaError::Read {
            path: cert_path.display().to_string(),
            source: std::io::Error::other("no certificate in file"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// A secret for `purpose` derived from the CA's private key: every collector of a trust
    /// holds the same key (`init --join` copies it), so they derive the same secret, and no
    /// second key file has to be made, copied and kept.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        caretaker_proto::uninstall::hmac_sha256(
            &self.issuer.key().serialize_der(),
            purpose.as_bytes(),
        )
    }

    /// The fingerprint technicians pin when enrolling (`sha256:...`).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Issues the collector's TLS server certificate for DNS names and IP addresses.
    /// Returns (certificate chain PEM: leaf then CA, key PEM).
    pub fn issue_server_cert(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Caretaker collector");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| CaError::BadName(n.clone())),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, SERVER_CERT_DAYS);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }

    /// Signs a device's CSR, naming the device `device_id`. Returns the certificate PEM.
    pub fn sign_device_csr(&self, csr_pem: &str, device_id: &str) -> Result<String, CaError> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id.to_string());
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, DEVICE_CERT_DAYS);
        // Keep nothing the device asked for but its public key.
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// The common name of a DER certificate's subject, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_cert_is_named_by_the_ca_not_the_csr() {
        let (ca, _) = SchoolCa::generate("Test School").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "i-am-someone-else");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = ca.sign_device_csr(&csr, "dev-1").unwrap();
        assert_eq!(
            common_name(&pem_to_der(&pem).unwrap()).as_deref(),
            Some("dev-1")
        );
    }

    #[test]
    fn garbage_csr_is_refused() {
        let (ca, _) = SchoolCa::generate("Test School").unwrap();
        assert!(matches!(
            ca.sign_device_csr("not a csr", "d"),
            Err(CaError::BadCsr(_))
        ));
    }

    /// Seconds from now back to a certificate's notBefore.
    fn backdated_secs(pem: &str) -> i64 {
        let der = pem_to_der(pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        OffsetDateTime::now_utc().unix_timestamp() - cert.validity().not_before.timestamp()
    }

    #[test]
    fn every_certificate_is_valid_from_days_before_issue() {
        let (ca, _) = SchoolCa::generate("Test School").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let device = ca.sign_device_csr(&csr, "dev-1").unwrap();
        let (server, _) = ca.issue_server_cert(&["localhost".to_string()]).unwrap();
        // A laptop two days behind must still accept the server and be accepted.
        for pem in [ca.cert_pem(), &server, &device] {
            assert!(backdated_secs(pem) >= (BACKDATE_DAYS - 1) * 86_400);
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        let (ca, _) = SchoolCa::generate("Test School").unwrap();
        let fp = ca.fingerprint();
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64);
    }
}
