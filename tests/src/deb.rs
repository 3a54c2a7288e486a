//! Builds tiny real Debian packages with `dpkg-deb --build` and installs them with the real `dpkg`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `name_version_all.deb` in `dir` (a package that installs one small file).
pub fn build(dir: &Path, name: &str, version: &str) -> PathBuf {
    let readme = format!("usr/share/doc/{name}/README");
    build_with(dir, name, version, &[(readme.as_str(), b"test\n")])
}

/// Builds `name_version_all.deb` in `dir` installing `files` (paths without a leading slash).
pub fn build_with(dir: &Path, name: &str, version: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Caretaker tests <tests@caretaker.invalid>\nDescription: Caretaker test package\n Installed and removed by Caretaker's end-to-end tests.\n"),
    )
    .unwrap();
    for (path, data) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("a file path")).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let deb = dir.join(format!("{name}_{version}_all.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb
}

/// Runs dpkg with `args`, waiting while another process holds its lock.
pub fn dpkg(args: &[&str]) -> std::process::Output {
    crate::require_root("install and remove packages with dpkg");
    for _ in 0..120 {
        let out = Command::new("dpkg").args(args).output().expect("dpkg runs");
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("lock") {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("the dpkg lock was held for a minute");
}

/// Purges the named packages when dropped, so a failing test leaves the machine clean.
pub struct Purge(pub Vec<String>);

impl Drop for Purge {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = dpkg(&["--purge", p]);
        }
    }
}
