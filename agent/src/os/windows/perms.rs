//! Who may read the agent's own files, on Windows: the state folder (`%ProgramData%\Caretaker`)
//! is made private to SYSTEM and Administrators, and files created inside inherit that; unix
//! modes have no meaning here.
//!
//! ProgramData lets every user read what is below it, and the state folder holds the device's
//! private key: so it does not inherit ProgramData's ACL. `icacls` (Windows' own, by its full
//! path) sets it, with well-known SIDs so a localised Windows reads it the same. Wine's `icacls`
//! is a stub that succeeds without doing anything, so under Wine only the command line is
//! tested (README, "Windows").

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::windows::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// `FILE_FLAG_OPEN_REPARSE_POINT`: open a symlink or junction itself, never its target.
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;

/// Creates `path` and its parents, and makes `path` private to SYSTEM and Administrators.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    let icacls = super::system32().join("icacls.exe");
    let out = Command::new(&icacls)
        .args(private_acl_args(path))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot run {}: {e}", icacls.display()))
        })?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "icacls could not make {} private to SYSTEM and Administrators: {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(())
}

/// `icacls` arguments: drop inherited entries, then full control for SYSTEM (S-1-5-18) and
/// Administrators (S-1-5-32-544) only, inherited by the files and folders inside.
pub fn private_acl_args(path: &Path) -> Vec<OsString> {
    let mut args = vec![path.as_os_str().to_owned()];
    args.extend(
        [
            "/inheritance:r",
            "/grant:r",
            "*S-1-5-18:(OI)(CI)F",
            "*S-1-5-32-544:(OI)(CI)F",
        ]
        .map(OsString::from),
    );
    args
}

/// Unix modes do not apply; the file inherits the state folder's ACL.
pub fn with_mode(opts: &mut OpenOptions, _mode: u32) -> &mut OpenOptions {
    opts
}

/// Opens a reparse point (symlink, junction) itself rather than following it. Handles are not
/// inherited by children unless asked for, which std never does.
pub fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_folder_is_granted_to_system_and_administrators_only() {
        let args = private_acl_args(Path::new(r"C:\ProgramData\Caretaker"));
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                r"C:\ProgramData\Caretaker",
                "/inheritance:r",
                "/grant:r",
                "*S-1-5-18:(OI)(CI)F",
                "*S-1-5-32-544:(OI)(CI)F"
            ]
        );
    }

    /// Under Wine this runs the stub `icacls`; on Windows the real one.
    #[test]
    fn a_private_folder_is_made_and_icacls_accepts_the_arguments() {
        let dir = std::env::temp_dir().join(format!("caretaker-perms-{}", std::process::id()));
        create_private_dir(&dir.join("state")).unwrap();
        assert!(dir.join("state").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
