//! Enrolment: make a key pair here, send a CSR with the token over a pinned connection, keep the certificate.

use std::sync::Arc;

use caretaker_proto::pb;
use chrono::Utc;
use rcgen::{CertificateParams, KeyPair};

use crate::connect::{self, ConnectError};
use crate::os;
use crate::state::{Enrollment, StateDir, write_atomic};
use crate::tls::{self, PinnedCa};

/// Why enrolment failed, in words a technician can act on.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("`{0}` is not a CA fingerprint (expected sha256: followed by 64 hex digits)")]
    BadFingerprint(String),
    #[error("this machine is already enrolled as device {0}; remove {1} to enrol it again")]
    AlreadyEnrolled(String, String),
    #[error(
        "the collector's CA fingerprint is {offered}, not the pinned {pinned}: check the fingerprint, or you may be talking to the wrong server"
    )]
    WrongFingerprint { pinned: String, offered: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the collector refused enrolment: {0}")]
    Refused(String),
    #[error("enrolment failed: {0}")]
    Other(String),
    #[error(transparent)]
    Bundle(#[from] caretaker_proto::bundle::BundleError),
    #[error("cannot read the enrolment bundle {path}: {source}")]
    BundleUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not reach the collector at {addresses}: {errors}; check this laptop's network, or that the addresses in the bundle are right"
    )]
    Unreachable { addresses: String, errors: String },
}

/// Enrols with a bundle (`caretaker-collector bundle create`), trying its collectors in order
/// until one answers; the first that answers decides. Expiry is checked here, not by a laptop
/// already enrolled (the caller's `--if-not-enrolled`).
pub async fn enroll_with_bundle(
    state: &StateDir,
    path: &std::path::Path,
) -> Result<Enrollment, EnrollError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| EnrollError::BundleUnreadable {
        path: shown.clone(),
        source,
    })?;
    let bundle = caretaker_proto::bundle::Bundle::parse(&shown, &bytes)?;
    bundle.check_usable(&shown, Utc::now())?;
    let mut errors = Vec::new();
    for addr in &bundle.collectors {
        match enroll(state, addr, &bundle.token, &bundle.ca_fingerprint).await {
            Err(EnrollError::Connect(e)) => errors.push(format!("{addr}: {e}")),
            done => return done,
        }
    }
    Err(EnrollError::Unreachable {
        addresses: bundle.collectors.join(", "),
        errors: errors.join("; "),
    })
}

/// The device id the collector assigned.
pub async fn enroll(
    state: &StateDir,
    collector: &str,
    token: &str,
    fingerprint: &str,
) -> Result<Enrollment, EnrollError> {
    let pin = tls::normalise_fingerprint(fingerprint)
        .ok_or_else(|| EnrollError::BadFingerprint(fingerprint.to_string()))?;
    if let Ok(Some(e)) = state.load_enrollment() {
        return Err(EnrollError::AlreadyEnrolled(
            e.device_id,
            state.enrollment().display().to_string(),
        ));
    }
    let other = |e: &dyn std::fmt::Display| EnrollError::Other(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| other(&e))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| other(&e))?;

    let verifier = Arc::new(PinnedCa::new(pin.clone()));
    let tls = tls::enroll_config(verifier.clone()).map_err(|e| other(&e))?;
    let channel = match connect::channel(collector, tls).await {
        Ok(c) => c,
        Err(e) => {
            let offered = verifier.offered.lock().expect("offered lock").clone();
            if !offered.is_empty() && !offered.contains(&pin) {
                return Err(EnrollError::WrongFingerprint {
                    pinned: pin,
                    offered: offered.join(", "),
                });
            }
            return Err(e.into());
        }
    };
    let facts = os::host_facts();
    let resp = pb::enrollment_client::EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.trim().to_string(),
            csr_pem: csr,
            hostname: facts.hostname,
            os: facts.os,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(|s| EnrollError::Refused(s.message().to_string()))?
        .into_inner();

    // The CA we are told to trust from now on must be the one we pinned.
    let ca_der = tls::certs_from_pem(&resp.ca_certificate_pem)
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| other(&"the collector sent no CA certificate"))?;
    let offered = tls::fingerprint(&ca_der);
    if offered != pin {
        return Err(EnrollError::WrongFingerprint {
            pinned: pin,
            offered,
        });
    }
    state.create().map_err(|e| other(&e))?;
    let enrollment = Enrollment {
        device_id: resp.device_id,
        collector: collector.to_string(),
        ca_fingerprint: pin,
        enrolled_at: Utc::now(),
    };
    let write = |p: std::path::PathBuf, b: &[u8], mode| {
        write_atomic(&p, b, mode).map_err(|e| other(&format!("cannot write {}: {e}", p.display())))
    };
    write(state.key(), key.serialize_pem().as_bytes(), 0o600)?;
    write(state.cert(), resp.certificate_pem.as_bytes(), 0o644)?;
    write(state.ca(), resp.ca_certificate_pem.as_bytes(), 0o644)?;
    if !resp.uninstall_code_sha256.is_empty() {
        write(
            state.uninstall_hash(),
            resp.uninstall_code_sha256.as_bytes(),
            0o600,
        )?;
    }
    // Written last: its presence means the identity above is complete.
    write(
        state.enrollment(),
        &serde_json::to_vec_pretty(&enrollment).expect("serialises"),
        0o644,
    )?;
    Ok(enrollment)
}
