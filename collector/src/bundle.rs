//! `bundle create`: an enrolment token, the CA fingerprint and the collector's addresses in one
//! file (`caretaker_proto::bundle::Bundle`) for `caretaker-installer` on the laptops.

use std::path::{Path, PathBuf};

use caretaker_proto::bundle::{BUNDLE_VERSION, Bundle};
use chrono::{DateTime, Utc};
use x509_parser::extensions::GeneralName;

use crate::admin::{self, AskError};
use crate::ca::pem_to_der;
use crate::datadir::{DataDir, DataDirError, write_private};

/// Why a bundle was not made or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("--uses must be at least 1")]
    NoUses,
    #[error("--collector `{0}` is not HOST:PORT (e.g. caretaker.school.lan:7443)")]
    BadAddress(String),
    #[error(
        "{} already exists; choose another --out, or delete it if that bundle is no longer in use",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error("cannot read {}", path.display())]
    ReadChain {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot parse the server certificate: {0}")]
    BadCertificate(String),
    #[error("the server certificate names no host; pass --collector HOST:PORT")]
    NoHost,
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Token(#[from] AskError),
}

/// The gRPC port agents use when `--collector` does not say otherwise (`serve`'s default).
pub const DEFAULT_GRPC_PORT: u16 = 7443;

/// What the bundle should admit.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    pub uses: u32,
    pub expires_at: DateTime<Utc>,
    pub label: String,
    /// `HOST:PORT` addresses; empty means the names in the server certificate, on port 7443.
    pub collectors: Vec<String>,
}

/// Makes a token (through the running collector's admin socket, or the store when none runs)
/// and returns the bundle holding it.
pub async fn create(dir: &DataDir, req: BundleRequest) -> Result<Bundle, BundleError> {
    if req.uses == 0 {
        return Err(BundleError::NoUses);
    }
    dir.check()?;
    let collectors = if req.collectors.is_empty() {
        default_collectors(dir)?
    } else {
        for c in &req.collectors {
            check_address(c)?;
        }
        req.collectors.clone()
    };
    let (token, ca_fingerprint) =
        admin::create_token(dir, req.uses, req.expires_at, &req.label).await?;
    Ok(Bundle {
        caretaker_bundle: BUNDLE_VERSION,
        label: req.label,
        collectors,
        ca_fingerprint,
        token,
        uses: req.uses,
        created_at: Utc::now(),
        expires_at: req.expires_at,
    })
}

/// `create`, then `write` to `out`; checks `out` first so a refused path spends no token.
pub async fn create_file(
    dir: &DataDir,
    req: BundleRequest,
    out: &Path,
) -> Result<Bundle, BundleError> {
    refuse_existing(out)?;
    let b = create(dir, req).await?;
    write(out, &b)?;
    Ok(b)
}

/// Writes the bundle owner-only, refusing to replace a file: one already handed out would stop
/// working silently if its token were swapped under it.
pub fn write(path: &Path, bundle: &Bundle) -> Result<(), BundleError> {
    refuse_existing(path)?;
    Ok(write_private(path, &bundle.to_json())?)
}

fn refuse_existing(path: &Path) -> Result<(), BundleError> {
    if path.exists() {
        return Err(BundleError::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The server certificate's names on the default port, loopback names left out unless there is
/// nothing else (a laptop told to enrol with `localhost` would talk to itself).
pub fn default_collectors(dir: &DataDir) -> Result<Vec<String>, BundleError> {
    let path = dir.server_chain();
    let pem = match std::fs::read_to_string(&path) {
        Ok(pem) => pem,
        Err(source) => return Err(BundleError::ReadChain { path, source }),
    };
    let der = pem_to_der(&pem).ok_or(BundleError::NoCertificate { path })?;
    let names = certificate_names(&der)?;
    let loopback = |n: &str| {
        n == "localhost"
            || n.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let outside: Vec<&String> = names.iter().filter(|n| !loopback(n)).collect();
    let chosen: Vec<&String> = if outside.is_empty() {
        names.iter().collect()
    } else {
        outside
    };
    if chosen.is_empty() {
        return Err(BundleError::NoHost);
    }
    Ok(chosen
        .into_iter()
        .map(|n| match n.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{n}]:{DEFAULT_GRPC_PORT}"),
            Err(_) => format!("{n}:{DEFAULT_GRPC_PORT}"),
        })
        .collect())
}

/// DNS names and IP addresses in a certificate's subjectAltName, in order.
fn certificate_names(der: &[u8]) -> Result<Vec<String>, BundleError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| BundleError::BadCertificate(e.to_string()))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.push((*d).to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        out.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        out.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn check_address(addr: &str) -> Result<(), BundleError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if !ok {
        return Err(BundleError::BadAddress(addr.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::SchoolCa;
    use crate::store::RedbStore;
    use crate::tokens;
    use caretaker_proto::bundle::Bundle;

    fn init(names: &[&str]) -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        crate::datadir::init(&dir, &names, "Test School", &Default::default()).unwrap();
        (tmp, dir)
    }

    #[tokio::test]
    async fn a_bundle_names_the_certificate_hosts_and_carries_a_working_token() {
        let (tmp, dir) = init(&["localhost", "127.0.0.1", "caretaker.school.lan", "10.0.0.5"]);
        let expires_at = Utc::now() + chrono::Duration::days(14);
        let b = create(
            &dir,
            BundleRequest {
                uses: 200,
                expires_at,
                label: "Year 5 trolley".into(),
                collectors: vec![],
            },
        )
        .await
        .unwrap();
        assert_eq!(
            b.collectors,
            ["caretaker.school.lan:7443", "10.0.0.5:7443"],
            "loopback names are left out when there are others"
        );
        let ca = SchoolCa::load(&dir.ca_cert(), &dir.ca_key()).unwrap();
        assert_eq!(b.ca_fingerprint, ca.fingerprint());
        assert_eq!((b.uses, b.expires_at), (200, expires_at));

        let out = tmp.path().join("school.caretaker");
        write(&out, &b).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the bundle holds a token");
        assert_eq!(
            Bundle::parse("x", &std::fs::read(&out).unwrap()).unwrap(),
            b
        );
        let again = write(&out, &b).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");

        // The token is in the store as a hash with the asked-for uses.
        let store = RedbStore::open(&dir.store()).unwrap();
        let rec = crate::store::Store::use_token(&store, &tokens::hash(&b.token), Utc::now())
            .unwrap()
            .expect("the bundle's token is accepted");
        assert_eq!(rec.label, "Year 5 trolley");
    }

    #[tokio::test]
    async fn only_loopback_names_are_kept_when_there_is_nothing_else_and_bad_addresses_refused() {
        let (_tmp, dir) = init(&["localhost", "::1"]);
        assert_eq!(
            default_collectors(&dir).unwrap(),
            ["localhost:7443", "[::1]:7443"]
        );
        let e = create(
            &dir,
            BundleRequest {
                uses: 1,
                expires_at: Utc::now(),
                label: String::new(),
                collectors: vec!["caretaker.school.lan".into()],
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("is not HOST:PORT"), "{e}");
    }
}
