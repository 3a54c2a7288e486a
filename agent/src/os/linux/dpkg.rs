//! Reads of dpkg's database (`/var/lib/dpkg`, under a configurable root so tests use a temp
//! folder): the status file, and when each package's file list was written.

use std::path::Path;
use std::time::SystemTime;

/// dpkg's `status` file, as text.
pub fn read_status(dpkg_dir: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(dpkg_dir.join("status"))
}

/// When dpkg last wrote a package's file list in `info/`, i.e. when it was installed or
/// upgraded; `None` if there is none. `Multi-Arch: same` packages keep `name:arch.list`,
/// the others `name.list`.
pub fn list_written_at(dpkg_dir: &Path, name: &str, arch: Option<&str>) -> Option<SystemTime> {
    let info = dpkg_dir.join("info");
    let list = arch
        .map(|a| info.join(format!("{name}:{a}.list")))
        .filter(|l| l.exists())
        .unwrap_or_else(|| info.join(format!("{name}.list")));
    std::fs::metadata(&list).ok()?.modified().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lists_are_found_with_and_without_the_architecture() {
        let dir = tempfile::tempdir().unwrap();
        let info = dir.path().join("info");
        std::fs::create_dir(&info).unwrap();
        std::fs::write(dir.path().join("status"), "Package: zlib1g\n").unwrap();
        std::fs::write(info.join("zlib1g:amd64.list"), "/.\n").unwrap();
        std::fs::write(info.join("bash.list"), "/.\n").unwrap();
        assert_eq!(read_status(dir.path()).unwrap(), "Package: zlib1g\n");
        assert!(list_written_at(dir.path(), "zlib1g", Some("amd64")).is_some());
        assert!(list_written_at(dir.path(), "bash", Some("amd64")).is_some());
        assert!(list_written_at(dir.path(), "bash", None).is_some());
        assert_eq!(list_written_at(dir.path(), "zlib1g", None), None);
        assert_eq!(list_written_at(dir.path(), "absent", Some("amd64")), None);
        assert!(read_status(&dir.path().join("absent")).is_err());
    }
}
