//! What both binaries share that is not the wire contract: the logging set-up, reading PEM certificates and keys, and certificate fingerprints.
//!
//! Kept in this crate rather than a fourth one because the agent and the collector already
//! depend on it and the workspace's top-level layout is fixed.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Logs to stderr at `RUST_LOG`'s filter (default `info`), with colour codes only for a person
/// at a terminal (not in journald or a log file). `quiet` names targets that log at `warn`
/// unless `RUST_LOG` names them (a dependency's chatter at `info`).
pub fn init_logging(quiet: &[&str]) {
    init_logging_to(quiet, None);
}

/// As `init_logging`, but into `file` when one is given (a Windows service has no stderr).
pub fn init_logging_to(quiet: &[&str], file: Option<std::fs::File>) {
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    for target in quiet {
        if !asked.contains(target)
            && let Ok(d) = format!("{target}=warn").parse()
        {
            filter = filter.add_directive(d);
        }
    }
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(f) => logs
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .init(),
        None => logs
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// A certificate's pinned identity: `sha256:<hex of its DER>`.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// Reads every certificate in PEM text.
pub fn certs_from_pem(pem: &str) -> std::io::Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).collect()
}

/// Reads the first private key in PEM text.
pub fn key_from_pem(pem: &str) -> std::io::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())?
        .ok_or_else(|| std::io::Error::other("no private key in PEM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_text_without_a_key_says_so() {
        let e = key_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(e.to_string().contains("no private key"), "{e}");
        assert!(certs_from_pem("not pem").unwrap().is_empty());
    }
}
