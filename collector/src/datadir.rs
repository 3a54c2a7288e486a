//! The collector's data directory: its layout, and `init`, which creates a school's CA, keys, store and admin token.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::Utc;
use rand::RngCore;

use crate::ca::{CaError, SchoolCa};
use crate::store::{Store, StoreError, StoreLocation};
use crate::uninstall::UninstallKeyError;

/// Why a data directory could not be read, checked or made.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} should hold one postgres:// URL", path.display())]
    BadStoreUrl { path: PathBuf },
    #[error(
        "cannot open the store in {}; if a collector is running, its admin socket {} did not answer",
        root.display(),
        socket.display()
    )]
    OpenEmbedded {
        root: PathBuf,
        socket: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("cannot open the store at {at}")]
    OpenShared {
        at: String,
        #[source]
        source: StoreError,
    },
    #[error(
        "{} is not a Caretaker collector data directory ({} is missing); create one with `caretaker-collector init --data-dir {}`",
        root.display(),
        missing.display(),
        root.display()
    )]
    NotInitialised { root: PathBuf, missing: PathBuf },
    #[error(
        "{} already exists and is not empty; refusing to overwrite a school's CA and records",
        root.display()
    )]
    NotEmpty { root: PathBuf },
    #[error("--join shares another collector's record, so it needs --store postgres://...")]
    JoinWithoutStore,
    #[error(
        "{} is missing, so {} cannot be joined (is it a collector data directory made with --store?)",
        missing.display(),
        first.display()
    )]
    JoinMissing { missing: PathBuf, first: PathBuf },
    #[error("--store takes a postgres:// URL (the embedded store needs no option)")]
    StoreNotPostgres,
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    UninstallKey(#[from] UninstallKeyError),
}

impl DataDirError {
    /// An I/O failure on `path`, saying what was being done.
    pub fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    pub fn server_chain(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// The embedded store's directory.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    /// Holds the PostgreSQL URL (0600: it may carry a password) when the record is shared.
    pub fn store_url(&self) -> PathBuf {
        self.root.join("store.url")
    }
    /// Where this collector's record lives: the URL in `store.url`, else the embedded store.
    pub fn store_location(&self) -> Result<StoreLocation, DataDirError> {
        match fs::read_to_string(self.store_url()) {
            Ok(url) => {
                let url = url.trim();
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                    return Err(DataDirError::BadStoreUrl {
                        path: self.store_url(),
                    });
                }
                Ok(StoreLocation::Postgres(url.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(StoreLocation::Embedded(self.store()))
            }
            Err(e) => Err(DataDirError::io("read", &self.store_url())(e)),
        }
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }
    /// The secret uninstall codes are derived from; made on first use.
    pub fn uninstall_key(&self) -> PathBuf {
        self.root.join("uninstall.key")
    }

    /// Opens the store directly, for a command run while no collector serves (a running one
    /// holds the embedded store's lock; the caller asked its admin socket first). A shared
    /// store is always opened directly: it has no such lock.
    pub fn open_store_offline(&self) -> Result<std::sync::Arc<dyn Store>, DataDirError> {
        let location = self.store_location()?;
        self.open_store_at(&location, |source| DataDirError::OpenEmbedded {
            root: self.root.clone(),
            socket: self.admin_socket(),
            source,
        })
    }

    /// Opens the store at `location`. What a refused embedded open most likely means depends
    /// on who asks (a command: the collector holds it; `serve`: another one does), so the
    /// caller words that error with `embedded`.
    pub fn open_store_at<E: From<DataDirError>>(
        &self,
        location: &StoreLocation,
        embedded: impl FnOnce(StoreError) -> E,
    ) -> Result<std::sync::Arc<dyn Store>, E> {
        location.open().map_err(|source| match location {
            StoreLocation::Embedded(_) => embedded(source),
            StoreLocation::Postgres(_) => DataDirError::OpenShared {
                at: location.describe(),
                source,
            }
            .into(),
        })
    }

    /// Refuses with a clear message if this is not an initialised data directory.
    pub fn check(&self) -> Result<(), DataDirError> {
        let mut needed = vec![
            self.ca_cert(),
            self.ca_key(),
            self.server_chain(),
            self.server_key(),
        ];
        if !self.store_url().exists() {
            needed.push(self.store());
        }
        for p in needed {
            if !p.exists() {
                return Err(DataDirError::NotInitialised {
                    root: self.root.clone(),
                    missing: p,
                });
            }
        }
        Ok(())
    }
}

/// Writes `contents` to a new file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(DataDirError::io("create", path))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(DataDirError::io("write", path))
}

/// A random secret, URL-safe, with a readable prefix saying what it is.
pub fn random_secret(prefix: &str) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What `init` created, for the operator.
#[derive(Debug)]
pub struct InitReport {
    pub ca_fingerprint: String,
    pub hostnames: Vec<String>,
}

/// What kind of record a new data directory gets, and whose CA.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// A PostgreSQL URL to keep the record in, shared with other collectors; the embedded
    /// store in the data directory when `None`.
    pub store_url: Option<String>,
    /// Another collector's data directory whose CA and uninstall secret this one shares (a
    /// second collector of a trust on the same database), instead of making a new CA.
    pub join: Option<DataDir>,
}

/// Creates a new data directory. Refuses to touch an existing, non-empty one.
///
/// The CA's private key stays a file, copied to each collector of a trust by `--join`, not a
/// row in the shared database: whoever can read a database dump (a hosted PostgreSQL's
/// operator, a backup) could otherwise mint device certificates.
pub fn init(
    dir: &DataDir,
    hostnames: &[String],
    school: &str,
    opts: &InitOptions,
) -> Result<InitReport, DataDirError> {
    let root = dir.root();
    if root.exists()
        && fs::read_dir(root)
            .map_err(DataDirError::io("read", root))?
            .next()
            .is_some()
    {
        return Err(DataDirError::NotEmpty {
            root: root.to_path_buf(),
        });
    }
    if let Some(first) = &opts.join {
        if opts.store_url.is_none() {
            return Err(DataDirError::JoinWithoutStore);
        }
        for p in [first.ca_cert(), first.ca_key(), first.uninstall_key()] {
            if !p.exists() {
                return Err(DataDirError::JoinMissing {
                    missing: p,
                    first: first.root().to_path_buf(),
                });
            }
        }
    }
    if let Some(url) = &opts.store_url
        && !url.starts_with("postgres://")
        && !url.starts_with("postgresql://")
    {
        return Err(DataDirError::StoreNotPostgres);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(DataDirError::io("create", root))?;
    let ca = match &opts.join {
        Some(first) => {
            for (from, to) in [
                (first.ca_key(), dir.ca_key()),
                (first.uninstall_key(), dir.uninstall_key()),
            ] {
                let bytes = fs::read(&from).map_err(DataDirError::io("read", &from))?;
                write_private(&to, &bytes)?;
            }
            fs::copy(first.ca_cert(), dir.ca_cert())
                .map_err(DataDirError::io("write", &dir.ca_cert()))?;
            SchoolCa::load(&dir.ca_cert(), &dir.ca_key())?
        }
        None => {
            let (ca, ca_key) = SchoolCa::generate(school)?;
            write_private(&dir.ca_key(), ca_key.as_bytes())?;
            fs::write(dir.ca_cert(), ca.cert_pem())
                .map_err(DataDirError::io("write", &dir.ca_cert()))?;
            ca
        }
    };
    let (chain, server_key) = ca.issue_server_cert(hostnames)?;
    write_private(&dir.server_key(), server_key.as_bytes())?;
    fs::write(dir.server_chain(), chain).map_err(DataDirError::io("write", &dir.server_chain()))?;
    if let Some(url) = &opts.store_url {
        write_private(&dir.store_url(), format!("{url}\n").as_bytes())?;
        if opts.join.is_none() {
            // Made now, not on first use, so that `--join` can copy it: every collector of a
            // trust must derive the same uninstall codes.
            crate::uninstall::UninstallKey::load_or_create(&dir.uninstall_key())?;
        }
    }
    let store = dir.store_location()?.open()?;
    if store.current_policy()?.is_none() {
        let default = serde_json::to_value(caretaker_proto::policy::PolicyDocument::default())
            .expect("the default policy always serialises");
        store.put_policy(default, "caretaker-collector init", Utc::now())?;
    }
    write_private(&dir.admin_token(), random_secret("cta_").as_bytes())?;
    Ok(InitReport {
        ca_fingerprint: ca.fingerprint(),
        hostnames: hostnames.to_vec(),
    })
}
