//! Device facts for the asset record, read raw: sysinfo for OS, CPU, memory, root disk and boot
//! time; thin reads of sysfs (under a configurable root) for DMI and batteries, which it lacks.
//!
//! Shared by Linux and Windows: on Windows there is no sysfs, so DMI and batteries read as
//! absent (a later slice reads them from the registry and WMI).
//!
//! Nothing here interprets: a value that cannot be read is `None`, and the facts probe decides
//! what counts. Only these files and calls are read: no processes, users or network interfaces.

use std::path::Path;

use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// What the OS says about the machine, as it says it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawFacts {
    pub dmi: RawDmi,
    /// os-release `NAME` and `VERSION_ID`.
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    /// `uname -r`.
    pub kernel: Option<String>,
    /// The first CPU's brand string (`model name` in /proc/cpuinfo).
    pub cpu_brand: Option<String>,
    pub physical_cores: Option<usize>,
    /// `MemTotal`; sysinfo gives 0 when /proc/meminfo cannot be read.
    pub memory_bytes: u64,
    /// The filesystem mounted at `/`.
    pub root_disk: Option<RawDisk>,
    /// Seconds since the Unix epoch (`btime` in /proc/stat).
    pub boot_time: Option<u64>,
    /// Every `class/power_supply/BAT*`, sorted by name.
    pub batteries: Vec<RawBattery>,
}

/// `class/dmi/id/`: the firmware's description of the machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawDmi {
    pub sys_vendor: Option<String>,
    pub product_name: Option<String>,
    /// Readable by root only; the agent runs as root, tests and desktops often do not.
    pub product_serial: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawDisk {
    pub total_bytes: u64,
    /// What an unprivileged user could still write (statvfs `f_bavail`), as `df` shows.
    pub available_bytes: u64,
}

/// One battery's capacity files. Firmware reports energy (µWh) or charge (µAh), rarely both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawBattery {
    pub name: String,
    /// `present`: an empty second bay reads 0.
    pub present: Option<bool>,
    pub energy_full: Option<u64>,
    pub energy_full_design: Option<u64>,
    pub charge_full: Option<u64>,
    pub charge_full_design: Option<u64>,
    pub cycle_count: Option<u64>,
}

/// Reads everything once; blocking (a few small files and one statvfs per mounted filesystem).
pub fn read(sys_root: &Path) -> RawFacts {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing()),
    )
    .ok();
    let cpu_brand = sys
        .as_ref()
        .and_then(|s| s.cpus().first())
        .map(|c| c.brand().trim().to_string());
    // sysinfo skips network, proc, sys and /run mounts, so a hung NFS server cannot stall this.
    let disks = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
    // When `/` is mounted over (as in some containers), the last mount is the one in use.
    let root_disk = disks.ok().and_then(|d| {
        d.iter()
            .rev()
            .find(|d| d.mount_point() == system_mount())
            .map(|d| RawDisk {
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
            })
    });
    RawFacts {
        dmi: read_dmi(sys_root),
        os_name: System::name().ok(),
        os_version: System::os_version().ok(),
        kernel: System::kernel_version().ok(),
        cpu_brand,
        physical_cores: System::physical_core_count().ok(),
        memory_bytes: sys.as_ref().map_or(0, |s| s.total_memory()),
        root_disk,
        boot_time: System::boot_time().ok(),
        batteries: read_batteries(sys_root),
    }
}

/// Where the system's own filesystem is mounted: `/`, or on Windows the system drive's root
/// (`%SystemDrive%\\`, normally `C:\\`).
fn system_mount() -> std::path::PathBuf {
    if cfg!(windows) {
        let drive = std::env::var("SystemDrive").unwrap_or_else(|_| "C:".into());
        format!("{drive}\\").into()
    } else {
        "/".into()
    }
}

/// `class/dmi/id/{sys_vendor,product_name,product_serial}` under `sys_root`.
pub fn read_dmi(sys_root: &Path) -> RawDmi {
    let id = sys_root.join("class/dmi/id");
    RawDmi {
        sys_vendor: read_text(&id.join("sys_vendor")),
        product_name: read_text(&id.join("product_name")),
        product_serial: read_text(&id.join("product_serial")),
    }
}

/// `class/power_supply/BAT*` under `sys_root`, sorted by name; none on a desktop.
pub fn read_batteries(sys_root: &Path) -> Vec<RawBattery> {
    let Ok(dir) = std::fs::read_dir(sys_root.join("class/power_supply")) else {
        return Vec::new();
    };
    let mut out: Vec<RawBattery> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            name.starts_with("BAT").then(|| {
                let p = e.path();
                let num = |f: &str| read_text(&p.join(f)).and_then(|s| s.parse().ok());
                RawBattery {
                    present: read_text(&p.join("present")).map(|s| s != "0"),
                    energy_full: num("energy_full"),
                    energy_full_design: num("energy_full_design"),
                    charge_full: num("charge_full"),
                    charge_full_design: num("charge_full_design"),
                    cycle_count: num("cycle_count"),
                    name,
                }
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A sysfs attribute, trimmed; `None` if absent, unreadable (permissions) or empty.
fn read_text(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let s = String::from_utf8_lossy(&bytes).trim().to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn dmi_is_read_trimmed_and_a_missing_serial_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "class/dmi/id/sys_vendor", "LENOVO\n");
        write(tmp.path(), "class/dmi/id/product_name", "20L5CTO1WW\n");
        assert_eq!(
            read_dmi(tmp.path()),
            RawDmi {
                sys_vendor: Some("LENOVO".into()),
                product_name: Some("20L5CTO1WW".into()),
                product_serial: None,
            }
        );
        // No DMI at all (ARM boards, some VMs): nothing, not an error.
        assert_eq!(read_dmi(&tmp.path().join("nowhere")), RawDmi::default());
    }

    #[test]
    fn only_bat_supplies_are_read_with_their_capacity_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ps = "class/power_supply";
        write(tmp.path(), &format!("{ps}/BAT1/present"), "1\n");
        write(tmp.path(), &format!("{ps}/BAT1/charge_full"), "3900000\n");
        write(
            tmp.path(),
            &format!("{ps}/BAT1/charge_full_design"),
            "4400000\n",
        );
        write(tmp.path(), &format!("{ps}/BAT0/energy_full"), "45120000\n");
        write(
            tmp.path(),
            &format!("{ps}/BAT0/energy_full_design"),
            "57020000\n",
        );
        write(tmp.path(), &format!("{ps}/BAT0/cycle_count"), "312\n");
        write(tmp.path(), &format!("{ps}/BAT0/energy_now"), "garbage");
        // Mains and a wireless mouse's battery are not the laptop's battery.
        write(tmp.path(), &format!("{ps}/AC/online"), "1\n");
        write(
            tmp.path(),
            &format!("{ps}/hid-00:1f:20:aa:bb:cc-battery/capacity"),
            "80\n",
        );
        let got = read_batteries(tmp.path());
        assert_eq!(
            got,
            vec![
                RawBattery {
                    name: "BAT0".into(),
                    present: None,
                    energy_full: Some(45_120_000),
                    energy_full_design: Some(57_020_000),
                    charge_full: None,
                    charge_full_design: None,
                    cycle_count: Some(312),
                },
                RawBattery {
                    name: "BAT1".into(),
                    present: Some(true),
                    energy_full: None,
                    energy_full_design: None,
                    charge_full: Some(3_900_000),
                    charge_full_design: Some(4_400_000),
                    cycle_count: None,
                },
            ]
        );
        assert!(read_batteries(&tmp.path().join("nowhere")).is_empty());
    }

    #[test]
    fn an_unparsable_number_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "class/power_supply/BAT0/present", "0\n");
        write(tmp.path(), "class/power_supply/BAT0/cycle_count", "n/a\n");
        let b = &read_batteries(tmp.path())[0];
        assert_eq!(b.present, Some(false));
        assert_eq!(b.cycle_count, None);
    }

    /// The sysinfo half against this machine: the values other tools print.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_machine() {
        let f = read(Path::new("/sys"));
        let osrelease = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(f.kernel.as_deref(), Some(osrelease.trim()));
        assert!(f.memory_bytes > 0, "{f:?}");
        let disk = f.root_disk.expect("the root filesystem is listed");
        assert!(disk.total_bytes > 0 && disk.available_bytes <= disk.total_bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let boot = f.boot_time.expect("btime");
        assert!(boot > 1_000_000_000 && boot <= now, "{boot}");
        assert!(f.cpu_brand.is_some() && f.physical_cores.unwrap_or(0) > 0);
    }
}
