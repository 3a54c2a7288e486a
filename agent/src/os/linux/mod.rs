//! Linux facts: hostname, distribution name, process liveness, resource usage.

pub mod dpkg;
pub mod files;
pub mod locker;
pub mod logind;
pub mod mount;
pub mod mountwatch;
pub mod perms;
pub mod proc;
pub mod sdnotify;
pub mod uevent;
pub mod untrusted;
pub mod usb_sysfs;
pub mod x11;

use super::HostFacts;

/// Hostname and a human-readable OS name (`PRETTY_NAME` from os-release).
pub fn host_facts() -> HostFacts {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| pretty_name(&s))
        .unwrap_or_else(|| "Linux".into());
    HostFacts { hostname, os }
}

/// `PRETTY_NAME` from os-release text.
pub fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        l.strip_prefix("PRETTY_NAME=")
            .map(|v| v.trim_matches('"').to_string())
    })
}

/// True if a process with this pid exists.
pub fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pretty_name_is_read_from_os_release() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            super::pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }
}
