//! The collector's data directory: its layout, and `init`, which creates a school's CA, keys, store and admin token.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::Utc;
use rand::RngCore;

use crate::ca::SchoolCa;
use crate::store::{SledStore, Store};

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
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }
    /// The secret uninstall codes are derived from; made on first use.
    pub fn uninstall_key(&self) -> PathBuf {
        self.root.join("uninstall.key")
    }

    /// Opens the store directly, for a command run while no collector serves (a running one
    /// holds sled's lock; the caller asked its admin socket first).
    pub fn open_store_offline(&self) -> anyhow::Result<SledStore> {
        SledStore::open(&self.store()).with_context(|| {
            format!(
                "cannot open the store in {}; if a collector is running, its admin socket {} did not answer",
                self.root.display(),
                self.admin_socket().display()
            )
        })
    }

    /// Refuses with a clear message if this is not an initialised data directory.
    pub fn check(&self) -> anyhow::Result<()> {
        for p in [
            self.ca_cert(),
            self.ca_key(),
            self.server_chain(),
            self.server_key(),
            self.store(),
        ] {
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

/// Creates a new data directory. Refuses to touch an existing, non-empty one.
pub fn init(dir: &DataDir, hostnames: &[String], school: &str) -> anyhow::Result<InitReport> {
    let root = dir.root();
    if root.exists() && fs::read_dir(root)?.next().is_some() {
        bail!(
            "{} already exists and is not empty; refusing to overwrite a school's CA and records",
            root.display()
        );
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("cannot create {}", root.display()))?;
    let (ca, ca_key) = SchoolCa::generate(school)?;
    let (chain, server_key) = ca.issue_server_cert(hostnames)?;
    write_private(&dir.ca_key(), ca_key.as_bytes())?;
    write_private(&dir.server_key(), server_key.as_bytes())?;
    fs::write(dir.ca_cert(), ca.cert_pem())?;
    fs::write(dir.server_chain(), chain)?;
    let store = SledStore::open(&dir.store())?;
    let default = serde_json::to_value(caretaker_proto::policy::PolicyDocument::default())?;
    store.put_policy(default, "caretaker-collector init", Utc::now())?;
    write_private(&dir.admin_token(), random_secret("cta_").as_bytes())?;
    Ok(InitReport {
        ca_fingerprint: ca.fingerprint(),
        hostnames: hostnames.to_vec(),
    })
}
