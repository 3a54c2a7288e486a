//! Executables in users' own folders, on every OS: the index of what each home folder (a
//! Linux home, a Windows profile) holds, walked and re-checked without following a pupil's
//! links, so that only a new or changed program is reported (`executable.in_user_area`). The
//! file opens and identities come from `os::untrusted`; which folders are homes is per OS
//! (`scan::list_homes` from passwd on Linux, [`list_profiles`] on Windows).
use super::parse::{self, ExecutableType};
use super::{Inventory, SoftwareItem, SoftwareKey, Source};
use crate::os::untrusted::{cloud_only, identity, open_regular, unix_mode};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A user's home folder and the user it belongs to (by the folder's owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub user: String,
    pub dir: PathBuf,
}

/// Profile folders Windows makes for itself, not for a person.
#[cfg(any(windows, test))]
const NOT_PEOPLE: [&str; 4] = ["Public", "Default", "Default User", "All Users"];

/// Windows: the profile folders directly under `root` (`C:\Users`), each a home of the user
/// it is named after. Links (`All Users`, `Default User` are junctions) are not followed.
#[cfg(any(windows, test))]
pub fn list_profiles(root: &Path) -> Vec<Home> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut homes: Vec<Home> = entries
        .flatten()
        .filter(|e| fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let skip = NOT_PEOPLE.iter().any(|n| n.eq_ignore_ascii_case(&name));
            (!skip).then(|| Home {
                user: name,
                dir: e.path(),
            })
        })
        .collect();
    homes.sort_by(|a, b| a.dir.cmp(&b.dir));
    homes
}

/// A browser's download in progress (renamed to its real name when complete).
pub fn is_partial_download(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        let e = e.to_string_lossy().to_ascii_lowercase();
        matches!(e.as_str(), "part" | "crdownload" | "download" | "partial")
    })
}

/// True when the file changed less than `quiet` ago (or in the future, by clock skew).
pub fn modified_within(meta: &fs::Metadata, quiet: Duration) -> bool {
    meta.modified().ok().is_some_and(|m| {
        SystemTime::now()
            .duration_since(m)
            .map_or(true, |age| age < quiet)
    })
}

/// SHA-256 of an opened regular file's content, streamed; `None` when larger than `max_bytes`.
fn hash_open(f: &mut fs::File, meta: &fs::Metadata, max_bytes: u64) -> io::Result<Option<String>> {
    if meta.len() > max_bytes {
        return Ok(None);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

/// What we last knew of one file in a home folder: enough to tell whether it changed
/// without reopening it, and what kind of executable it was.
#[derive(Debug, Clone, PartialEq)]
pub struct FileFacts {
    pub size: u64,
    pub mtime: Option<SystemTime>,
    pub ino: u64,
    pub mode: u32,
    pub kind: Option<ExecutableType>,
    pub sha256: Option<String>,
}

/// An executable that is new, or whose content changed, since the index last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub user: String,
    pub home: PathBuf,
    pub path: PathBuf,
    pub kind: ExecutableType,
    pub size: u64,
    pub executable_bit: bool,
    pub sha256: Option<String>,
    /// True when the index already had an executable at this path (its content changed).
    pub replaced: bool,
}

/// Every regular file seen in the home folders, keyed by path. Rescans only reopen files
/// whose size, mtime or inode changed, so the hourly backstop is a walk of `stat`s.
#[derive(Debug, Default)]
pub struct HomeIndex {
    files: HashMap<PathBuf, FileFacts>,
}

/// Limits and exclusions for walking home folders.
#[derive(Debug, Clone)]
pub struct WalkRules {
    /// Paths relative to each home that are not searched for executables.
    pub exclude: Vec<PathBuf>,
    pub max_hash_bytes: u64,
    pub max_dirs: usize,
}

impl WalkRules {
    pub fn excluded(&self, home: &Path, path: &Path) -> bool {
        path.strip_prefix(home)
            .is_ok_and(|rel| self.exclude.iter().any(|x| rel.starts_with(x)))
    }
}

impl HomeIndex {
    /// Walks `start` (a home or a folder within one) and updates the index. Returns the
    /// folders seen (to watch) and the executables that are new or changed.
    pub fn walk(
        &mut self,
        home: &Home,
        start: &Path,
        rules: &WalkRules,
    ) -> (Vec<PathBuf>, Vec<Found>) {
        let mut dirs = Vec::new();
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![start.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if rules.excluded(&home.dir, &dir) {
                continue;
            }
            if dirs.len() >= rules.max_dirs {
                tracing::warn!(home = %home.dir.display(), limit = rules.max_dirs, "Home folder has too many folders; the rest are not searched.");
                break;
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            dirs.push(dir);
            for e in entries.flatten() {
                let path = e.path();
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() && !rules.excluded(&home.dir, &path) && !cloud_only(&meta)
                {
                    seen.insert(path.clone());
                    if let Some(f) = self.check_with(home, path, &meta, rules) {
                        found.push(f);
                    }
                }
            }
        }
        // Files under `start` not seen this time are gone.
        self.files.retain(|p, _| {
            !p.starts_with(start) || seen.contains(p) || rules.excluded(&home.dir, p)
        });
        (dirs, found)
    }

    /// Forgets one file, so the next walk examines it again (it was still being written).
    #[cfg_attr(not(windows), allow(dead_code))]
    pub fn forget(&mut self, path: &Path) {
        self.files.remove(path);
    }

    /// Forgets files outside the given homes (a home folder was removed).
    pub fn retain_homes(&mut self, homes: &[Home]) {
        self.files
            .retain(|p, _| homes.iter().any(|h| p.starts_with(&h.dir)));
    }

    /// Re-examines one path after a change notification. A path that no longer exists (or
    /// is not a regular file) drops out of the index, with everything beneath it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // Linux: notifications, AppImages
    pub fn check(&mut self, home: &Home, path: &Path, rules: &WalkRules) -> Option<Found> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => self.check_with(home, path.to_path_buf(), &meta, rules),
            _ => {
                self.files.retain(|p, _| !p.starts_with(path));
                None
            }
        }
    }

    fn check_with(
        &mut self,
        home: &Home,
        path: PathBuf,
        meta: &fs::Metadata,
        rules: &WalkRules,
    ) -> Option<Found> {
        let mode = unix_mode(meta);
        let (size, mtime, ino) = (meta.len(), meta.modified().ok(), identity(meta).1);
        let previous = self.files.get(&path);
        if let Some(p) = previous
            && (p.size, p.mtime, p.ino, p.mode) == (size, mtime, ino, mode)
        {
            return None;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // One open for the magic bytes and the hash, of the file `fstat` vouched for: the
        // pupil may have swapped the path for a symlink or a FIFO since the walk's stat.
        // A different file than the one stat'ed (swapped for a hard link) is not read either.
        let mut opened = open_regular(&path)
            .ok()
            .filter(|(_, m)| identity(m) == identity(meta));
        let head = opened
            .as_mut()
            .and_then(|(f, _)| {
                let mut head = Vec::new();
                f.take(parse::MAGIC_LEN as u64)
                    .read_to_end(&mut head)
                    .ok()
                    .map(|_| head)
            })
            .unwrap_or_default();
        let executable_bit = mode & 0o111 != 0;
        let kind = parse::detect_executable(&head, &name, executable_bit);
        let had_kind = previous.and_then(|p| p.kind).is_some();
        let old_hash = previous.and_then(|p| p.sha256.clone());
        let sha256 = match (kind, opened.as_mut()) {
            (Some(_), Some((f, meta))) => f
                .rewind()
                .ok()
                .and_then(|()| hash_open(f, meta, rules.max_hash_bytes).ok().flatten()),
            _ => None,
        };
        self.files.insert(
            path.clone(),
            FileFacts {
                size,
                mtime,
                ino,
                mode,
                kind,
                sha256: sha256.clone(),
            },
        );
        let kind = kind?;
        // Same content as before (touched, or chmod of something already executable): not new.
        if had_kind && sha256.is_some() && sha256 == old_hash {
            return None;
        }
        Some(Found {
            user: home.user.clone(),
            home: home.dir.clone(),
            path,
            kind,
            size,
            executable_bit,
            sha256,
            replaced: had_kind,
        })
    }

    /// The AppImages in the index, as inventory items owned by their home's user.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // Linux: notifications, AppImages
    pub fn appimages(&self, homes: &[Home]) -> Inventory {
        let mut inv = Inventory::new();
        for (path, facts) in &self.files {
            if !matches!(facts.kind, Some(ExecutableType::AppImage(_))) {
                continue;
            }
            let Some(home) = homes.iter().find(|h| path.starts_with(&h.dir)) else {
                continue;
            };
            let rel = path
                .strip_prefix(&home.dir)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (name, version) = parse::appimage_name_version(&file);
            inv.insert(
                SoftwareKey {
                    source: Source::AppImage,
                    id: format!("{}/{rel}", home.user),
                },
                SoftwareItem {
                    name,
                    version: version.unwrap_or_else(|| "unknown".into()),
                    arch: None,
                    owner: Some(home.user.clone()),
                    path: Some(rel),
                    installed_at: facts.mtime.map(DateTime::<Utc>::from),
                },
            );
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_windows_program_in_a_profile_is_found_and_the_system_profiles_are_not_homes() {
        let d = tempfile::tempdir().unwrap();
        for name in ["pupil", "Public", "Default"] {
            fs::create_dir_all(d.path().join(name).join("Downloads")).unwrap();
        }
        let homes = list_profiles(d.path());
        assert_eq!(
            homes.iter().map(|h| h.user.as_str()).collect::<Vec<_>>(),
            ["pupil"]
        );
        let tool = homes[0].dir.join("Downloads").join("tool.exe");
        let mut exe = b"MZ".to_vec();
        exe.resize(128, 0);
        fs::write(&tool, &exe).unwrap();
        let rules = WalkRules {
            exclude: vec!["AppData".into()],
            max_hash_bytes: 1 << 20,
            max_dirs: 100,
        };
        let mut index = HomeIndex::default();
        let (_, found) = index.walk(&homes[0], &homes[0].dir, &rules);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, ExecutableType::WindowsExe);
        assert_eq!(found[0].user, "pupil");
        // Nothing changed: a second walk reports nothing.
        let (_, again) = index.walk(&homes[0], &homes[0].dir, &rules);
        assert!(again.is_empty(), "{again:?}");
    }
}

#[cfg(all(test, unix))]
mod unix_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc;

    fn rules() -> WalkRules {
        WalkRules {
            exclude: Vec::new(),
            max_hash_bytes: 1 << 20,
            max_dirs: 100,
        }
    }

    /// A home with `tool`, a regular file, and its metadata as the walk's stat saw it.
    fn home_with_tool(d: &Path) -> (Home, PathBuf) {
        let dir = d.join("pupil");
        fs::create_dir(&dir).unwrap();
        let tool = dir.join("tool");
        fs::write(&tool, b"just notes, not a program").unwrap();
        (
            Home {
                user: "pupil".into(),
                dir,
            },
            tool,
        )
    }

    #[test]
    fn a_file_swapped_for_a_symlink_after_the_stat_is_not_read_or_hashed() {
        let d = tempfile::tempdir().unwrap();
        let (home, tool) = home_with_tool(d.path());
        // A root-only executable outside the home, which the pupil cannot read.
        let secret = d.path().join("root-only");
        fs::write(&secret, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0secret").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
        // The worst case for the agent: the stat it acts on describes the target itself
        // (same inode), so only refusing to follow the link protects it.
        let meta = fs::metadata(&secret).unwrap();
        fs::remove_file(&tool).unwrap();
        std::os::unix::fs::symlink(&secret, &tool).unwrap();

        let mut index = HomeIndex::default();
        let found = index.check_with(&home, tool.clone(), &meta, &rules());
        assert_eq!(
            found, None,
            "the root-only target was read through the link"
        );
        let facts = &index.files[&tool];
        assert_eq!((facts.kind, facts.sha256.as_deref()), (None, None));
    }

    #[test]
    fn a_file_swapped_for_a_fifo_after_the_stat_neither_hangs_nor_counts() {
        let d = tempfile::tempdir().unwrap();
        let (home, tool) = home_with_tool(d.path());
        let meta = fs::symlink_metadata(&tool).unwrap();
        fs::remove_file(&tool).unwrap();
        let ok = std::process::Command::new("mkfifo")
            .arg(&tool)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo failed");

        // On another thread, so a regression fails this test instead of hanging the suite:
        // a blocking open of a FIFO with no writer never returns.
        let (tx, rx) = mpsc::channel();
        let path = tool.clone();
        std::thread::spawn(move || {
            let mut index = HomeIndex::default();
            let found = index.check_with(&home, path, &meta, &rules());
            let _ = tx.send(found);
        });
        let found = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("checking a FIFO hung");
        assert_eq!(found, None);
    }

    #[test]
    fn a_regular_executable_is_still_found_and_hashed() {
        let d = tempfile::tempdir().unwrap();
        let (home, tool) = home_with_tool(d.path());
        fs::write(&tool, b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        let meta = fs::symlink_metadata(&tool).unwrap();
        let found = HomeIndex::default()
            .check_with(&home, tool, &meta, &rules())
            .expect("found");
        assert_eq!(found.kind, ExecutableType::Script);
        let want = hex::encode(Sha256::digest(b"#!/bin/sh\necho hi\n"));
        assert_eq!(found.sha256.as_deref(), Some(want.as_str()));
    }
}
