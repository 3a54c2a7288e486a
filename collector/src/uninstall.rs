//! Uninstall codes: the secret they are derived from (`uninstall.key` in the data directory, made on first use, 0600) and the collector's side of issuing them.
//!
//! A code is `caretaker_proto::uninstall::derive_code(secret, device id)`: nothing per device is
//! stored, so the CLI can print a code with or without a running collector, and every laptop
//! gets the hash of its own code at enrolment (older ones with their policy stream).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use caretaker_proto::uninstall;
use rand::RngCore;

use crate::accounts::{self, Actor};
use crate::admin::{self, AdminRequest, AdminResponse, AskError};
use crate::datadir::DataDir;
use crate::service::Collector;
use crate::store::{Device, Store, StoreError};

/// Why the uninstall secret could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum UninstallKeyError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is damaged (expected 64 hex digits); restore it from a backup, or delete it to make a new key (every device's uninstall code then changes, and laptops learn the new one when they next connect)",
        path.display()
    )]
    Damaged { path: std::path::PathBuf },
}

/// The collector's uninstall secret.
#[derive(Clone)]
pub struct UninstallKey {
    secret: [u8; 32],
}

impl std::fmt::Debug for UninstallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UninstallKey(..)")
    }
}

impl UninstallKey {
    /// A key that lives only in memory (tests, or a collector built without a data directory).
    pub fn ephemeral() -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self { secret }
    }

    /// Reads the key at `path`, or makes it (0600, never over an existing file) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, UninstallKeyError> {
        let io = |action: &'static str| {
            move |source| UninstallKeyError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let fresh = Self::ephemeral();
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(hex::encode(fresh.secret).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io("write"))?;
                tracing::info!(path = %path.display(), "Made the uninstall-code key");
                return Ok(fresh);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create")(e)),
        }
        let text = std::fs::read_to_string(path).map_err(io("read"))?;
        let mut secret = [0u8; 32];
        if hex::decode_to_slice(text.trim(), &mut secret).is_err() {
            return Err(UninstallKeyError::Damaged {
                path: path.to_path_buf(),
            });
        }
        Ok(Self { secret })
    }

    /// The code a person types on the laptop, e.g. `7KQ2-M9XD-4HTB`.
    pub fn code(&self, device_id: &str) -> String {
        uninstall::derive_code(&self.secret, device_id)
    }

    /// What the laptop keeps to check a code offline.
    pub fn hash(&self, device_id: &str) -> String {
        uninstall::code_hash(device_id, &self.code(device_id)).expect("a derived code is a code")
    }
}

impl Collector {
    /// Uses `key` for uninstall codes (the data directory's, set once by `serve`).
    pub fn set_uninstall_key(&self, key: UninstallKey) {
        let _ = self.uninstall.set(key);
    }

    fn uninstall_key(&self) -> &UninstallKey {
        self.uninstall.get_or_init(|| {
            tracing::warn!("No uninstall-code key was loaded; codes made now last only until the collector restarts");
            UninstallKey::ephemeral()
        })
    }

    /// The hash a laptop keeps for its uninstall code.
    pub fn uninstall_hash(&self, device_id: &str) -> String {
        self.uninstall_key().hash(device_id)
    }

    /// A device's uninstall code (revoked devices included: a laptop cut off may still need
    /// its agent removed).
    pub fn uninstall_code(&self, device_id: &str) -> Result<(Device, String), StoreError> {
        let device = self
            .device_cache()
            .get(device_id)
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_string()))?;
        Ok((device, self.uninstall_key().code(device_id)))
    }
}

/// Records in the audit log that the command line was given a device's code.
pub fn audit_issued(store: &dyn Store, device: &Device) {
    accounts::audit(
        store,
        &Actor::local_cli(),
        "uninstall_code_issued",
        &device.id,
        &device.hostname,
    );
}

/// `device uninstall-code ID`: through the running collector's admin socket, or from the data
/// directory and store when none runs. Returns the device's hostname and code.
pub async fn for_cli(dir: &DataDir, id: &str) -> Result<IssuedCode, AskError> {
    let req = AdminRequest::UninstallCode { id: id.to_string() };
    match admin::ask(dir, &req).await? {
        Some(AdminResponse::UninstallCode {
            hostname, os, code, ..
        }) => Ok(IssuedCode { hostname, os, code }),
        Some(AdminResponse::Error { message }) => Err(AskError::Refused(message)),
        Some(other) => Err(AskError::unexpected(&other)),
        None => {
            let store = dir.open_store_offline()?;
            let device = store
                .device(id)?
                .ok_or_else(|| StoreError::NoSuchDevice(id.to_string()))?;
            let key = UninstallKey::load_or_create(&dir.uninstall_key())?;
            audit_issued(store.as_ref(), &device);
            Ok(IssuedCode {
                code: key.code(id),
                hostname: device.hostname,
                os: device.os,
            })
        }
    }
}

/// A device's uninstall code, with what the command line shows beside it.
#[derive(Debug)]
pub struct IssuedCode {
    pub hostname: String,
    /// The OS the device reported (`Microsoft Windows 10 Pro ...`, `Debian GNU/Linux 12`).
    pub os: String,
    pub code: String,
}

/// The removal command for a laptop with this OS, and who runs it: the MSI's on Windows,
/// the package's on Linux.
pub fn removal_command(os: &str, code: &str) -> (&'static str, String) {
    if os.contains("Windows") {
        (
            "as an administrator",
            format!("msiexec /x caretaker-agent.msi UNINSTALLCODE={code} /qn"),
        )
    } else {
        (
            "as root",
            format!("CARETAKER_UNINSTALL_CODE={code} apt remove caretaker-agent"),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_removal_command_fits_the_laptops_os() {
        let (who, cmd) = removal_command("Microsoft Windows 10 Pro 22H2 (build 19045)", "AB-CD");
        assert_eq!(who, "as an administrator");
        assert_eq!(
            cmd,
            "msiexec /x caretaker-agent.msi UNINSTALLCODE=AB-CD /qn"
        );
        let (who, cmd) = removal_command("Debian GNU/Linux 12 (bookworm)", "AB-CD");
        assert_eq!(who, "as root");
        assert_eq!(
            cmd,
            "CARETAKER_UNINSTALL_CODE=AB-CD apt remove caretaker-agent"
        );
    }

    #[test]
    fn the_key_is_made_once_0600_and_read_back_the_same() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("uninstall.key");
        let a = UninstallKey::load_or_create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = UninstallKey::load_or_create(&p).unwrap();
        assert_eq!(a.code("dev"), b.code("dev"));
        assert!(uninstall::verify("dev", &a.code("dev"), &b.hash("dev")));
        assert!(!uninstall::verify("dev", &a.code("other"), &b.hash("dev")));
        assert_ne!(a.code("dev"), UninstallKey::ephemeral().code("dev"));
    }

    #[test]
    fn a_damaged_key_is_refused_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("uninstall.key");
        std::fs::write(&p, "not hex").unwrap();
        let e = UninstallKey::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "not hex");
    }
}
