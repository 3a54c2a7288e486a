//! Windows facts: computer name, Windows edition and version, process liveness; the registry
//! reads the probes need (`registry`), questions put to Windows PowerShell (`powershell`),
//! Defender's scanner on a drive (`defender`), the
//! state folder's file rules (`perms`), opening files in a pupil's folders (`untrusted`), a
//! no-op stand-in for systemd's notifications (`sdnotify`), and the agent as a service
//! (`service`).

pub mod defender;
pub mod perms;
pub mod powershell;
pub mod registry;
pub mod sdnotify;
pub mod service;
pub mod untrusted;

use super::HostFacts;

/// Where Windows keeps its edition and version (the same values `winver` shows).
const CURRENT_VERSION: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";
/// The computer name as it is now (a rename waits for a restart to show here).
const COMPUTER_NAME: &str = r"SYSTEM\CurrentControlSet\Control\ComputerName\ActiveComputerName";

/// Where Windows keeps machine-wide program data (`C:\ProgramData`), read from the profile
/// list rather than the environment: a service's `%ProgramData%` is not always the machine's
/// (under Wine a service gets `C:\users\Public`). None if neither says.
pub fn program_data() -> Option<std::path::PathBuf> {
    let listed =
        registry::read_string(windows_registry::LOCAL_MACHINE, PROFILE_LIST, "ProgramData")
            .ok()
            .flatten()
            .map(|v| expand_env(&v, |name| std::env::var(name).ok()));
    listed
        .or_else(|| std::env::var("ProgramData").ok())
        .filter(|d| !d.trim().is_empty())
        .map(std::path::PathBuf::from)
}

/// Where Windows records each SID's profile folder (its last component names the user).
const PROFILE_LIST: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList";

/// SID → user name, from each profile's folder (`C:\Users\alice` → `alice`).
pub fn profile_owners() -> Vec<(String, String)> {
    let Ok(sids) = registry::subkey_names(registry::Hive::LocalMachine, PROFILE_LIST) else {
        return Vec::new();
    };
    sids.into_iter()
        .filter_map(|sid| {
            let path = format!(r"{PROFILE_LIST}\{sid}");
            let folder =
                registry::read_string(windows_registry::LOCAL_MACHINE, &path, "ProfileImagePath")
                    .ok()??;
            let name = folder.rsplit(['\\', '/']).next()?.to_string();
            (!name.is_empty()).then_some((sid, name))
        })
        .collect()
}

/// The user at the console: the owner of the desktop shell (`explorer.exe`), named after their
/// profile folder. `None` when nobody is logged on (or the shell is not running).
pub fn console_user() -> Option<String> {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System, UpdateKind};
    let mut sys = System::new_with_specifics(RefreshKind::nothing()).ok()?;
    sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_user(UpdateKind::Always),
    );
    let sid = sys
        .processes()
        .values()
        .filter(|p| p.name().eq_ignore_ascii_case("explorer.exe"))
        .find_map(|p| p.user_id().map(|u| u.to_string()))?;
    profile_owners()
        .into_iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(&sid))
        .map(|(_, name)| name)
}

/// Where Windows makes users' profiles (`C:\Users`), from the profile list.
pub fn profiles_directory() -> Option<std::path::PathBuf> {
    registry::read_string(
        windows_registry::LOCAL_MACHINE,
        PROFILE_LIST,
        "ProfilesDirectory",
    )
    .ok()
    .flatten()
    .map(|v| expand_env(&v, |name| std::env::var(name).ok()))
    .filter(|d| !d.trim().is_empty())
    .map(std::path::PathBuf::from)
}

/// `%SystemRoot%\System32`, `C:\Windows\System32` if the environment does not say. Windows'
/// own tools are run by this full path, never found through `PATH`.
pub fn system32() -> std::path::PathBuf {
    std::env::var_os("SystemRoot")
        .filter(|r| !r.is_empty())
        .map_or_else(
            || std::path::PathBuf::from(r"C:\Windows"),
            std::path::PathBuf::from,
        )
        .join("System32")
}

/// Expands `%NAME%` references as `REG_EXPAND_SZ` values hold them; `%SystemDrive%` is `C:`
/// when the environment does not say. An unknown name is left as written.
pub fn expand_env(value: &str, var: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        let Some(len) = rest[start + 1..].find('%') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..start]);
        let found = var(name).or_else(|| {
            name.eq_ignore_ascii_case("SystemDrive")
                .then(|| "C:".to_string())
        });
        match found {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Computer name and a human-readable OS name, e.g. `Windows 10 Pro 22H2 (build 19045)`.
pub fn host_facts() -> HostFacts {
    let machine = windows_registry::LOCAL_MACHINE;
    let hostname = registry::read_string(machine, COMPUTER_NAME, "ComputerName")
        .ok()
        .flatten()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "unknown".into());
    let field = |name: &str| {
        registry::read_string(machine, CURRENT_VERSION, name)
            .ok()
            .flatten()
    };
    let os = os_name(
        field("ProductName").as_deref(),
        field("DisplayVersion").as_deref(),
        field("CurrentBuild").as_deref(),
    );
    HostFacts { hostname, os }
}

/// `ProductName DisplayVersion (build CurrentBuild)`, leaving out what is missing. Windows 11
/// still says "Windows 10" in `ProductName`; the build number (22000 and later) tells them apart.
pub fn os_name(
    product: Option<&str>,
    display_version: Option<&str>,
    build: Option<&str>,
) -> String {
    fn clean(s: Option<&str>) -> Option<&str> {
        s.map(str::trim).filter(|s| !s.is_empty())
    }
    let mut name = clean(product).unwrap_or("Windows").to_string();
    if let Some(v) = clean(display_version) {
        name.push(' ');
        name.push_str(v);
    }
    if let Some(b) = clean(build) {
        name.push_str(&format!(" (build {b})"));
    }
    name
}

/// True if a process with this pid exists.
pub fn process_alive(pid: u32) -> bool {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System};
    let Ok(mut sys) = System::new_with_specifics(RefreshKind::nothing()) else {
        return false;
    };
    let pid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    sys.process(pid).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_name_joins_what_windows_reports() {
        assert_eq!(
            os_name(Some("Windows 10 Pro"), Some("22H2"), Some("19045")),
            "Windows 10 Pro 22H2 (build 19045)"
        );
        assert_eq!(os_name(Some("Windows 7"), None, Some(" ")), "Windows 7");
        assert_eq!(os_name(None, None, None), "Windows");
    }

    #[test]
    fn expand_env_replaces_known_names_and_keeps_the_rest() {
        let var = |n: &str| (n == "WINDIR").then(|| r"C:\Windows".to_string());
        assert_eq!(
            expand_env(r"%SystemDrive%\ProgramData", var),
            r"C:\ProgramData"
        );
        assert_eq!(expand_env(r"%WINDIR%\x", var), r"C:\Windows\x");
        assert_eq!(expand_env(r"%NOPE%\x", var), r"%NOPE%\x");
        assert_eq!(expand_env("50% off", var), "50% off");
    }

    /// The machine's ProgramData, as the profile list names it.
    #[test]
    fn program_data_is_the_machine_folder() {
        let d = program_data().expect("ProgramData");
        assert!(d.is_absolute() && d.ends_with("ProgramData"), "{d:?}");
    }

    /// Against this machine's (or Wine's) own registry.
    #[test]
    fn host_facts_are_read_from_this_machine() {
        let f = host_facts();
        assert!(!f.hostname.is_empty() && f.hostname != "unknown", "{f:?}");
        assert!(
            f.os.starts_with("Windows") || f.os.starts_with("Microsoft"),
            "{f:?}"
        );
        assert!(f.os.contains("(build "), "the build number is read: {f:?}");
    }

    #[test]
    fn this_process_is_alive() {
        assert!(process_alive(std::process::id()));
    }
}
