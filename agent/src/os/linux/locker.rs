//! Starting a screen locker inside a user's X session, and finding the user's account
//! details (home, group) it needs.
//!
//! The agent runs as root; the locker must run as the session's user (its unlock
//! dialog checks that user's password) with that session's DISPLAY and cookie.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What the locker process needs to know about the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAccount {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Pure: "i3lock -n" to program and arguments (whitespace split, no shell).
pub fn split_command(cmd: &str) -> Option<(String, Vec<String>)> {
    let mut parts = cmd.split_whitespace();
    let program = parts.next()?.to_string();
    Some((program, parts.map(str::to_string).collect()))
}

/// The first command whose program is an executable file, searched in `search_path`
/// (or taken as is when absolute). Returns the command text and the program's path.
pub fn find_locker(commands: &[String], search_path: &[PathBuf]) -> Option<(String, PathBuf)> {
    commands.iter().find_map(|cmd| {
        let (program, _) = split_command(cmd)?;
        let candidates: Vec<PathBuf> = if program.contains('/') {
            vec![PathBuf::from(&program)]
        } else {
            search_path.iter().map(|d| d.join(&program)).collect()
        };
        candidates
            .into_iter()
            .find(|p| is_executable(p))
            .map(|p| (cmd.clone(), p))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts `program args` as `user` on `display`. The environment is built from scratch
/// (nothing of root's leaks in); std drops root's supplementary groups when it sets the
/// uid. The child is not killed when the handle is dropped: an agent restart must not
/// unlock a screen.
pub fn spawn_locker(
    program: &Path,
    args: &[String],
    user: &UserAccount,
    display: &str,
    xauthority: Option<&Path>,
    runtime_dir_root: &Path,
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("DISPLAY", display)
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .uid(user.uid)
        .gid(user.gid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false);
    cmd.current_dir(if user.home.is_dir() {
        user.home.as_path()
    } else {
        Path::new("/")
    });
    if let Some(x) = xauthority {
        cmd.env("XAUTHORITY", x);
    }
    // xdg-screensaver talks to the desktop over the user's session bus.
    let runtime = runtime_dir_root.join(user.uid.to_string());
    if runtime.is_dir() {
        cmd.env("XDG_RUNTIME_DIR", &runtime);
        cmd.env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", runtime.join("bus").display()),
        );
    }
    cmd.spawn()
}

/// The user's X cookie file: ~/.Xauthority, or where GDM keeps it.
pub fn find_xauthority(user: &UserAccount, runtime_dir_root: &Path) -> Option<PathBuf> {
    [
        user.home.join(".Xauthority"),
        runtime_dir_root
            .join(user.uid.to_string())
            .join("gdm/Xauthority"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// One line of a passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Pure: passwd(5) lines; malformed lines become warnings.
pub fn parse_passwd(text: &str) -> (Vec<PasswdEntry>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        let parsed = (f.len() >= 7)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten();
        match parsed {
            Some((uid, gid)) => out.push(PasswdEntry {
                name: f[0].to_string(),
                uid,
                gid,
                home: PathBuf::from(f[5]),
            }),
            None => warnings.push(format!("passwd line {}: malformed", n + 1)),
        }
    }
    (out, warnings)
}

/// A user by uid: the passwd file first, then `getent passwd` (directory users from
/// LDAP/AD, which school laptops often have, are only visible through NSS).
pub async fn lookup_user(passwd: &Path, uid: u32) -> Option<PasswdEntry> {
    if let Ok(text) = tokio::fs::read_to_string(passwd).await
        && let Some(e) = parse_passwd(&text).0.into_iter().find(|e| e.uid == uid)
    {
        return Some(e);
    }
    let out = tokio::process::Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    parse_passwd(&String::from_utf8_lossy(&out.stdout))
        .0
        .into_iter()
        .find(|e| e.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_commands() {
        assert_eq!(
            split_command("xdg-screensaver  lock"),
            Some(("xdg-screensaver".into(), vec!["lock".into()]))
        );
        assert_eq!(split_command("   "), None);
    }

    #[test]
    fn finds_the_first_installed_locker() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("xsecurelock");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Present but not executable: skipped.
        std::fs::write(dir.path().join("i3lock"), "").unwrap();
        let cmds: Vec<String> = ["i3lock -n", "xsecurelock", "xdg-screensaver lock"]
            .map(String::from)
            .to_vec();
        let found = find_locker(&cmds, &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(found, ("xsecurelock".to_string(), exe.clone()));
        assert_eq!(find_locker(&cmds, &[]), None);
        let abs = vec![format!("{} --now", exe.display())];
        assert_eq!(find_locker(&abs, &[]).unwrap().1, exe);
    }

    #[test]
    fn reads_passwd_lines_and_warns_on_junk() {
        let text = "root:x:0:0:root:/root:/bin/bash\n\
                    pupil:x:1000:1000:Pupil,,,:/home/pupil:/bin/bash\n\
                    broken:x:abc:1:::\n\
                    short:x:1\n";
        let (e, w) = parse_passwd(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].home, PathBuf::from("/home/pupil"));
        assert_eq!((e[1].uid, e[1].gid), (1000, 1000));
        assert_eq!(w.len(), 2);
    }
}
