//! The USB probe's thin reads and writes of sysfs, under a configurable root (tests build fake
//! /sys trees in temp dirs): devices and block devices as sysfs shows them, and the
//! `authorized` switches. What the values mean is `probe::usb::parse`'s.
use std::fs;
use std::path::{Path, PathBuf};

/// A block device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockFacts {
    /// "sda", "sda1".
    pub name: String,
    pub devpath: String,
    pub removable: bool,
    pub size_bytes: u64,
    pub is_partition: bool,
    /// A disk whose partitions are the filesystems (the kernel creates them before the disk's
    /// `add` uevent, so this is known at `add`).
    pub has_partitions: bool,
    /// Devpath of the USB device it hangs off, if any.
    pub usb_devpath: Option<String>,
}

fn abs(root: &Path, devpath: &str) -> PathBuf {
    root.join(devpath.trim_start_matches('/'))
}

fn attr(dir: &Path, name: &str) -> Option<String> {
    let s = fs::read_to_string(dir.join(name)).ok()?;
    let s = s.trim_end_matches('\n').trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// A USB device's attributes as sysfs holds them, trimmed; missing or empty ones are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawUsbDevice {
    pub devpath: String,
    pub id_vendor: Option<String>,
    pub id_product: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub device_class: Option<String>,
    pub authorized: Option<String>,
    /// The raw descriptors, which exist before authorisation.
    pub descriptors: Option<Vec<u8>>,
    /// `bInterfaceClass` of each interface directory (these exist only once authorised).
    pub interface_classes: Vec<String>,
}

/// Reads a USB device's attributes.
pub fn read_usb_device(root: &Path, devpath: &str) -> RawUsbDevice {
    let dir = abs(root, devpath);
    let mut interface_classes = Vec::new();
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().contains(':')
                && let Some(c) = attr(&e.path(), "bInterfaceClass")
            {
                interface_classes.push(c);
            }
        }
    }
    RawUsbDevice {
        devpath: devpath.to_owned(),
        id_vendor: attr(&dir, "idVendor"),
        id_product: attr(&dir, "idProduct"),
        serial: attr(&dir, "serial"),
        manufacturer: attr(&dir, "manufacturer"),
        product: attr(&dir, "product"),
        device_class: attr(&dir, "bDeviceClass"),
        authorized: attr(&dir, "authorized"),
        descriptors: fs::read(dir.join("descriptors")).ok(),
        interface_classes,
    }
}

/// Resolves the symlinks in a `/sys/bus/...` or `/sys/class/...` directory to devpaths ("/devices/...").
fn linked_devpaths(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(root.join(dir)) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        // Targets look like "../../../devices/pci.../usb1/1-1"; keep from "devices/" on.
        let t = target.to_string_lossy();
        if let Some(i) = t.find("devices/") {
            out.push(format!("/{}", &t[i..]));
        }
    }
    out.sort();
    out
}

/// Devpaths of every USB device (not interfaces) now attached, root hubs included.
pub fn enumerate_usb_devices(root: &Path) -> Vec<String> {
    linked_devpaths(root, "bus/usb/devices")
        .into_iter()
        .filter(|p| !p.rsplit('/').next().unwrap_or("").contains(':'))
        .collect()
}

/// Devpaths of every block device (disks and partitions).
pub fn enumerate_block(root: &Path) -> Vec<String> {
    linked_devpaths(root, "class/block")
}

/// Reads a block device; the USB parent is the nearest ancestor directory with `idVendor`.
pub fn read_block(root: &Path, devpath: &str) -> BlockFacts {
    let dir = abs(root, devpath);
    let name = devpath.rsplit('/').next().unwrap_or("").to_owned();
    let is_partition = dir.join("partition").exists();
    // A partition's removable flag lives on its disk.
    let disk_dir = if is_partition {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir.clone())
    } else {
        dir.clone()
    };
    let mut usb_devpath = None;
    let mut p = devpath.to_owned();
    while let Some(i) = p.rfind('/') {
        p.truncate(i);
        if p.is_empty() {
            break;
        }
        if abs(root, &p).join("idVendor").exists() {
            usb_devpath = Some(p.clone());
            break;
        }
    }
    let has_partitions = !is_partition
        && fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with(&name)
                        && e.path().join("partition").exists()
                })
            })
            .unwrap_or(false);
    BlockFacts {
        has_partitions,
        name,
        devpath: devpath.to_owned(),
        removable: attr(&disk_dir, "removable").as_deref() == Some("1"),
        size_bytes: attr(&dir, "size")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            * 512,
        is_partition,
        usb_devpath,
    }
}

/// Root hubs' devpaths (their `authorized_default` governs new devices on that bus).
pub fn root_hubs(root: &Path) -> Vec<String> {
    enumerate_usb_devices(root)
        .into_iter()
        .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with("usb")))
        .collect()
}

/// Writes `authorized_default` on a root hub: 0 holds new devices until the agent decides.
pub fn set_authorized_default(root: &Path, hub_devpath: &str, on: bool) -> std::io::Result<()> {
    fs::write(
        abs(root, hub_devpath).join("authorized_default"),
        if on { "1" } else { "0" },
    )
}

/// Writes a device's `authorized`: 1 lets it bind, 0 detaches it.
pub fn set_authorized(root: &Path, devpath: &str, on: bool) -> std::io::Result<()> {
    fs::write(
        abs(root, devpath).join("authorized"),
        if on { "1" } else { "0" },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    pub const STICK: &str = "/devices/pci0000:00/0000:00:02.0/usb1/1-1";
    pub const KBD: &str = "/devices/pci0000:00/0000:00:02.0/usb1/1-2";
    pub const HUB: &str = "/devices/pci0000:00/0000:00:02.0/usb1";

    fn put(root: &Path, devpath: &str, files: &[(&str, &str)]) {
        let d = abs(root, devpath);
        fs::create_dir_all(&d).unwrap();
        for (n, v) in files {
            fs::write(d.join(n), v).unwrap();
        }
    }

    /// A fake /sys with a root hub, an unauthorised stick (descriptors only, no serial, like a
    /// cheap stick), an authorised keyboard with an interface directory, and the stick's disk.
    pub fn fake_sys() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(
            r,
            HUB,
            &[
                ("idVendor", "1d6b\n"),
                ("idProduct", "0002\n"),
                ("bDeviceClass", "09\n"),
                ("authorized_default", "1\n"),
                ("authorized", "1\n"),
            ],
        );
        let mut desc = vec![18u8, 1];
        desc.extend([0u8; 16]);
        desc.extend([9, 2, 32, 0, 1, 1, 0, 0x80, 50, 9, 4, 0, 0, 2, 8, 6, 80, 0]);
        put(
            r,
            STICK,
            &[
                ("idVendor", "46f4\n"),
                ("idProduct", "0001\n"),
                ("manufacturer", "QEMU\n"),
                ("product", "QEMU USB HARDDRIVE\n"),
                ("bDeviceClass", "00\n"),
                ("authorized", "0\n"),
            ],
        );
        fs::write(abs(r, STICK).join("descriptors"), &desc).unwrap();
        put(
            r,
            KBD,
            &[
                ("idVendor", "0627\n"),
                ("idProduct", "0001\n"),
                ("serial", "42\n"),
                ("bDeviceClass", "00\n"),
                ("authorized", "1\n"),
            ],
        );
        put(r, &format!("{KBD}/1-2:1.0"), &[("bInterfaceClass", "03\n")]);
        let disk = format!("{STICK}/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda");
        put(r, &disk, &[("removable", "1\n"), ("size", "32768\n")]);
        put(
            r,
            &format!("{disk}/sda1"),
            &[("partition", "1\n"), ("size", "32704\n")],
        );
        fs::create_dir_all(r.join("bus/usb/devices")).unwrap();
        fs::create_dir_all(r.join("class/block")).unwrap();
        for (name, dp) in [("usb1", HUB), ("1-1", STICK), ("1-2", KBD)] {
            symlink(
                format!("../../..{dp}"),
                r.join("bus/usb/devices").join(name),
            )
            .unwrap();
        }
        symlink(
            format!("../../..{KBD}/1-2:1.0"),
            r.join("bus/usb/devices/1-2:1.0"),
        )
        .unwrap();
        symlink(format!("../..{disk}"), r.join("class/block/sda")).unwrap();
        symlink(format!("../..{disk}/sda1"), r.join("class/block/sda1")).unwrap();
        t
    }

    #[test]
    fn enumerates_and_reads_devices() {
        let t = fake_sys();
        let devs = enumerate_usb_devices(t.path());
        assert_eq!(
            devs,
            vec![HUB.to_string(), STICK.to_string(), KBD.to_string()]
        );
        let stick = read_usb_device(t.path(), STICK);
        assert_eq!(stick.id_vendor.as_deref(), Some("46f4"));
        assert_eq!(stick.id_product.as_deref(), Some("0001"));
        assert_eq!(stick.serial, None);
        assert_eq!(stick.product.as_deref(), Some("QEMU USB HARDDRIVE"));
        assert_eq!(stick.descriptors.as_ref().map(Vec::len), Some(36));
        assert!(
            stick.interface_classes.is_empty(),
            "unauthorised: no interfaces"
        );
        assert_eq!(stick.authorized.as_deref(), Some("0"));
        let kbd = read_usb_device(t.path(), KBD);
        assert_eq!(
            kbd.interface_classes,
            ["03"],
            "from the interface directory"
        );
        assert_eq!(kbd.serial.as_deref(), Some("42"));
        assert_eq!(kbd.descriptors, None);
        assert_eq!(root_hubs(t.path()), vec![HUB.to_string()]);
    }

    #[test]
    fn reads_block_devices_and_usb_parent() {
        let t = fake_sys();
        let blocks = enumerate_block(t.path());
        assert_eq!(blocks.len(), 2);
        let disk = read_block(t.path(), &blocks[0]);
        assert_eq!(disk.name, "sda");
        assert!(disk.removable && !disk.is_partition && disk.has_partitions);
        assert_eq!(disk.size_bytes, 32768 * 512);
        assert_eq!(disk.usb_devpath.as_deref(), Some(STICK));
        let part = read_block(t.path(), &blocks[1]);
        assert!(
            part.is_partition && part.removable,
            "partition inherits the disk's removable flag"
        );
        assert!(!part.has_partitions);
        assert_eq!(part.usb_devpath.as_deref(), Some(STICK));
    }

    #[test]
    fn missing_device_reads_as_nothing() {
        let t = tempfile::tempdir().unwrap();
        let raw = read_usb_device(t.path(), "/devices/nowhere/1-9");
        assert_eq!(
            raw,
            RawUsbDevice {
                devpath: "/devices/nowhere/1-9".into(),
                ..Default::default()
            }
        );
        assert!(enumerate_usb_devices(t.path()).is_empty());
    }

    #[test]
    fn writes_authorization() {
        let t = fake_sys();
        set_authorized_default(t.path(), HUB, false).unwrap();
        assert_eq!(
            fs::read_to_string(abs(t.path(), HUB).join("authorized_default")).unwrap(),
            "0"
        );
        set_authorized(t.path(), STICK, true).unwrap();
        assert_eq!(
            read_usb_device(t.path(), STICK).authorized.as_deref(),
            Some("1")
        );
    }
}
