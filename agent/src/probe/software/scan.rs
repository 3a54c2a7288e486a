//! Thin readers for the software probe on Linux: which home folders there are (owners from
//! passwd), Flatpak, apt's log and snapd's socket (dpkg's database is read through
//! `os::linux::dpkg`). Each returns raw facts (or parsed via `parse`) and leaves decisions to
//! `mod.rs`; the walk of the home folders themselves is `home_index.rs`.
use super::home_index::Home;
use super::parse;
use super::{Inventory, SoftwareItem, SoftwareKey, Source};
use crate::os::linux::dpkg;
use crate::os::untrusted::open_regular;
use chrono::{DateTime, Utc};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The home folders directly under `root`, each attributed to its owner's name from
/// `passwd` (falling back to the folder's name for directory-service users not in it).
pub fn list_homes(root: &Path, passwd: &Path) -> Vec<Home> {
    let names = fs::read_to_string(passwd)
        .map(|t| parse::parse_passwd(&t))
        .unwrap_or_default();
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut homes: Vec<Home> = entries
        .flatten()
        .filter(|e| e.file_name() != "lost+found")
        .filter_map(|e| {
            let meta = fs::symlink_metadata(e.path()).ok()?;
            if !meta.is_dir() {
                return None;
            }
            let user = names
                .get(&meta.uid())
                .cloned()
                .unwrap_or_else(|| e.file_name().to_string_lossy().into_owned());
            Some(Home {
                user,
                dir: e.path(),
            })
        })
        .collect();
    homes.sort_by(|a, b| a.dir.cmp(&b.dir));
    homes
}

fn mtime(meta: &fs::Metadata) -> Option<DateTime<Utc>> {
    meta.modified().ok().map(DateTime::<Utc>::from)
}

/// Reads dpkg's status database; install times come from each package's file list.
pub fn read_dpkg(dpkg_dir: &Path) -> io::Result<(Inventory, Vec<String>)> {
    let parsed = parse::parse_dpkg_status(&dpkg::read_status(dpkg_dir)?);
    let mut inv = Inventory::new();
    for p in parsed.value {
        let arch = p.architecture.clone();
        let installed_at =
            dpkg::list_written_at(dpkg_dir, &p.name, arch.as_deref()).map(DateTime::<Utc>::from);
        let id = match &arch {
            Some(a) => format!("{}:{a}", p.name),
            None => p.name.clone(),
        };
        inv.insert(
            SoftwareKey {
                source: Source::Dpkg,
                id,
            },
            SoftwareItem {
                name: p.name,
                version: p.version,
                arch,
                owner: None,
                path: None,
                installed_at,
            },
        );
    }
    Ok((inv, parsed.warnings))
}

/// Reads apt's history log; a missing log is an empty history.
pub fn read_apt_history(path: &Path) -> Vec<parse::AptTransaction> {
    match fs::read(path) {
        Ok(bytes) => parse::parse_apt_history(&String::from_utf8_lossy(&bytes)).value,
        Err(_) => Vec::new(),
    }
}

/// The per-user Flatpak installation root inside a home folder.
pub fn user_flatpak_root(home: &Path) -> PathBuf {
    home.join(".local/share/flatpak")
}

/// Reads the system-wide and every user's Flatpak apps. An app without a `current`
/// deployment is still being deployed (or half removed) and is left out until it settles.
pub fn read_flatpak(system_dir: &Path, homes: &[Home]) -> (Inventory, Vec<String>) {
    let mut inv = Inventory::new();
    let mut warnings = Vec::new();
    read_flatpak_apps(&system_dir.join("app"), None, &mut inv, &mut warnings);
    for h in homes {
        let app = user_flatpak_root(&h.dir).join("app");
        read_flatpak_apps(&app, Some(&h.user), &mut inv, &mut warnings);
    }
    (inv, warnings)
}

fn read_flatpak_apps(
    app_dir: &Path,
    owner: Option<&str>,
    inv: &mut Inventory,
    warnings: &mut Vec<String>,
) {
    let Ok(entries) = fs::read_dir(app_dir) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        let Ok(current) = fs::read_link(dir.join("current")) else {
            continue;
        };
        let Some((arch, branch)) = parse::parse_flatpak_current(&current.to_string_lossy()) else {
            warnings.push(format!("flatpak {id}: odd current link {current:?}"));
            continue;
        };
        let branch_dir = dir.join(&arch).join(&branch);
        let Ok(active) = fs::read_link(branch_dir.join("active")) else {
            continue;
        };
        let commit = active.to_string_lossy().into_owned();
        let deploy = branch_dir.join(&commit);
        let share = deploy.join("files/share");
        let metainfo = [
            format!("metainfo/{id}.metainfo.xml"),
            format!("metainfo/{id}.appdata.xml"),
            format!("appdata/{id}.appdata.xml"),
        ]
        .iter()
        .find_map(|rel| read_prefix(&share.join(rel), 256 * 1024).ok())
        .and_then(|bytes| parse::parse_metainfo_version(&String::from_utf8_lossy(&bytes)));
        let installed_at = fs::metadata(&deploy).ok().as_ref().and_then(mtime);
        let key_id = match owner {
            Some(u) => format!("user/{u}/{id}"),
            None => format!("system/{id}"),
        };
        inv.insert(
            SoftwareKey {
                source: Source::Flatpak,
                id: key_id,
            },
            SoftwareItem {
                name: id,
                version: parse::flatpak_version(metainfo, &branch, &commit),
                arch: Some(arch),
                owner: owner.map(str::to_string),
                path: None,
                installed_at,
            },
        );
    }
}

/// The first `max` bytes of a file under a home folder (see `open_regular` for why not
/// `File::open`).
fn read_prefix(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (f, _) = open_regular(path)?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Why snapd's list of snaps could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SnapdError {
    #[error("snapd did not answer within 10 s")]
    Timeout,
    #[error("snapd socket: {0}")]
    Socket(#[source] io::Error),
    /// Not an HTTP reply the parser could read (`parse::split_http_response` says why).
    #[error("{0}")]
    BadReply(#[from] parse::HttpResponseError),
    #[error("snapd answered HTTP {0}")]
    Status(u16),
}

/// Asks snapd for the installed snaps. No socket means snapd is not installed: empty, not
/// an error. A socket that does not answer properly is an error, so the caller keeps what
/// it knew rather than reporting every snap removed.
pub async fn read_snaps(socket: &Path) -> Result<Inventory, SnapdError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !socket.exists() {
        return Ok(Inventory::new());
    }
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        // HTTP/1.0 so snapd closes the connection after one plain (unchunked) reply.
        stream
            .write_all(b"GET /v2/snaps HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        stream.take(32 * 1024 * 1024).read_to_end(&mut raw).await?;
        Ok::<_, io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| SnapdError::Timeout)?
        .map_err(SnapdError::Socket)?;
    let (status, body) = parse::split_http_response(&raw)?;
    if status != 200 {
        return Err(SnapdError::Status(status));
    }
    let parsed = parse::parse_snapd_snaps(&body);
    for w in &parsed.warnings {
        tracing::warn!(warning = %w, "Odd entry in snapd's reply.");
    }
    Ok(parsed
        .value
        .into_iter()
        .map(|s| {
            (
                SoftwareKey {
                    source: Source::Snap,
                    id: s.name.clone(),
                },
                SoftwareItem {
                    name: s.name,
                    version: s.version,
                    arch: None,
                    owner: None,
                    path: None,
                    installed_at: s.install_date,
                },
            )
        })
        .collect())
}
