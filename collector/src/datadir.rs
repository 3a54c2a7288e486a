//! The collector's data directory: its layout, and `init`, which creates a school's CA, keys, store and admin token.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::Utc;
use rand::RngCore;

use crate::ca::SchoolCa;
use crate::store::{Store, StoreLocation};

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
    pub fn store_location(&self) -> anyhow::Result<StoreLocation> {
        match fs::read_to_string(self.store_url()) {
            Ok(url) => {
                let url = url.trim();
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                    bail!(
                        "{} should hold one postgres:// URL",
                        self.store_url().display()
                    );
                }
                Ok(StoreLocation::Postgres(url.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(StoreLocation::Embedded(self.store()))
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.store_url().display())),
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
    pub fn open_store_offline(&self) -> anyhow::Result<std::sync::Arc<dyn Store>> {
        let location = self.store_location()?;
        location.open().with_context(|| match &location {
            StoreLocation::Embedded(_) => format!(
                "cannot open the store in {}; if a collector is running, its admin socket {} did not answer",
                self.root.display(),
                self.admin_socket().display()
            ),
            StoreLocation::Postgres(_) => {
                format!("cannot open the store at {}", location.describe())
            }
        })
    }

    /// Refuses with a clear message if this is not an initialised data directory.
    pub fn check(&self) -> anyhow::Result<()> {
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
                bail!(
                    "{} is not a Caretaker collector data directory ({} is missing); create one with `caretaker-collector init --data-dir {}`",
                    self.root.display(),
                    p.display(),
                    self.root.display()
                );
            }
        }
        Ok(())
    }
}

/// Writes `contents` to a new file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
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
) -> anyhow::Result<InitReport> {
    let root = dir.root();
    if root.exists() && fs::read_dir(root)?.next().is_some() {
        bail!(
            "{} already exists and is not empty; refusing to overwrite a school's CA and records",
            root.display()
        );
    }
    if let Some(first) = &opts.join {
        if opts.store_url.is_none() {
            bail!("--join shares another collector's record, so it needs --store postgres://...");
        }
        for p in [first.ca_cert(), first.ca_key(), first.uninstall_key()] {
            if !p.exists() {
                bail!(
                    "{} is missing, so {} cannot be joined (is it a collector data directory made with --store?)",
                    p.display(),
                    first.root().display()
                );
            }
        }
    }
    if let Some(url) = &opts.store_url
        && !url.starts_with("postgres://")
        && !url.starts_with("postgresql://")
    {
        bail!("--store takes a postgres:// URL (the embedded store needs no option)");
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("cannot create {}", root.display()))?;
    let ca = match &opts.join {
        Some(first) => {
            for (from, to) in [
                (first.ca_key(), dir.ca_key()),
                (first.uninstall_key(), dir.uninstall_key()),
            ] {
                let bytes =
                    fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
                write_private(&to, &bytes)?;
            }
            fs::copy(first.ca_cert(), dir.ca_cert())?;
            SchoolCa::load(&dir.ca_cert(), &dir.ca_key())?
        }
        None => {
            let (ca, ca_key) = SchoolCa::generate(school)?;
            write_private(&dir.ca_key(), ca_key.as_bytes())?;
            fs::write(dir.ca_cert(), ca.cert_pem())?;
            ca
        }
    };
    let (chain, server_key) = ca.issue_server_cert(hostnames)?;
    write_private(&dir.server_key(), server_key.as_bytes())?;
    fs::write(dir.server_chain(), chain)?;
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
        let default = serde_json::to_value(caretaker_proto::policy::PolicyDocument::default())?;
        store.put_policy(default, "caretaker-collector init", Utc::now())?;
    }
    write_private(&dir.admin_token(), random_secret("cta_").as_bytes())?;
    Ok(InitReport {
        ca_fingerprint: ca.fingerprint(),
        hostnames: hostnames.to_vec(),
    })
}
