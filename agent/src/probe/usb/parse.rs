//! Pure interpreters for what the kernel gives us: uevent payloads, USB descriptors and sysfs
//! attributes, mountinfo, a medium's filesystem signature, and /etc/group. Malformed input
//! yields warnings, never panics.
use std::collections::BTreeMap;

use super::decide::UsbDeviceFacts;
use crate::os::linux::usb_sysfs::RawUsbDevice;

/// One kernel uevent (`NETLINK_KOBJECT_UEVENT`, group 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// "add", "remove", "bind", "unbind", "change", ...
    pub action: String,
    /// Path under /sys, e.g. "/devices/pci0000:00/0000:00:02.0/usb1/1-1".
    pub devpath: String,
    pub subsystem: String,
    /// DEVTYPE, e.g. "usb_device", "usb_interface", "disk", "partition".
    pub devtype: Option<String>,
    pub seqnum: Option<u64>,
    /// Every KEY=VALUE pair, including the ones above.
    pub vars: BTreeMap<String, String>,
}

impl Uevent {
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
    /// The last path component ("1-1", "sda", "1-1:1.0").
    pub fn sys_name(&self) -> &str {
        self.devpath.rsplit('/').next().unwrap_or("")
    }
}

/// Parses one datagram. Messages from udev (prefix "libudev\0") are not kernel uevents and are refused.
pub fn parse_uevent(buf: &[u8]) -> (Option<Uevent>, Vec<String>) {
    let mut warnings = Vec::new();
    if buf.starts_with(b"libudev\0") {
        return (
            None,
            vec!["udev-format message ignored (only kernel uevents are read)".into()],
        );
    }
    let mut fields = buf.split(|b| *b == 0).filter(|f| !f.is_empty());
    let Some(header) = fields.next() else {
        return (None, vec!["empty uevent".into()]);
    };
    let header = String::from_utf8_lossy(header);
    if !header.contains('@') {
        return (None, vec![format!("uevent header {header:?} has no '@'")]);
    }
    let mut vars = BTreeMap::new();
    for f in fields {
        let f = String::from_utf8_lossy(f);
        match f.split_once('=') {
            Some((k, v)) => {
                vars.insert(k.to_owned(), v.to_owned());
            }
            None => warnings.push(format!("uevent field {f:?} has no '='")),
        }
    }
    let (h_action, h_path) = header.split_once('@').unwrap_or_default();
    let action = vars
        .get("ACTION")
        .cloned()
        .unwrap_or_else(|| h_action.to_owned());
    let devpath = vars
        .get("DEVPATH")
        .cloned()
        .unwrap_or_else(|| h_path.to_owned());
    let Some(subsystem) = vars.get("SUBSYSTEM").cloned() else {
        warnings.push(format!("uevent {header:?} has no SUBSYSTEM"));
        return (None, warnings);
    };
    let seqnum = match vars.get("SEQNUM").map(|s| s.parse::<u64>()) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            warnings.push("SEQNUM is not a number".into());
            None
        }
        None => None,
    };
    let ev = Uevent {
        action,
        devpath,
        subsystem,
        devtype: vars.get("DEVTYPE").cloned(),
        seqnum,
        vars,
    };
    (Some(ev), warnings)
}

/// Reads a sysfs hex attribute like "46f4\n" or "08\n".
pub fn parse_hex_u16(s: &str) -> Option<u16> {
    u16::from_str_radix(s.trim(), 16).ok()
}

/// Interface classes from a USB device's raw `descriptors` sysfs file (device descriptor then the
/// configuration descriptors, each followed by its interface/endpoint descriptors).
/// This works for unauthorised devices too, which have no interface directories in sysfs:
/// it is how USBGuard classifies a device before letting it bind.
pub fn interface_classes_from_descriptors(raw: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut classes = Vec::new();
    let mut warnings = Vec::new();
    let mut i = 0;
    while i + 2 <= raw.len() {
        let len = raw[i] as usize;
        let kind = raw[i + 1];
        if len < 2 {
            warnings.push(format!("descriptor at offset {i} has length {len}"));
            break;
        }
        if i + len > raw.len() {
            warnings.push(format!("descriptor at offset {i} runs past the end"));
            break;
        }
        // Interface descriptor: bLength(9) bDescriptorType(4) bInterfaceNumber bAlternateSetting
        // bNumEndpoints bInterfaceClass ...
        if kind == 4 && len >= 6 && !classes.contains(&raw[i + 5]) {
            classes.push(raw[i + 5]);
        }
        i += len;
    }
    (classes, warnings)
}

/// A mounted block device, from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub mount_point: String,
    pub fs_type: String,
    pub read_only: bool,
}

/// Unescapes mountinfo's octal escapes (`\040` for space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/self/mountinfo, keeping only mounts whose source is a /dev node.
pub fn parse_mountinfo(text: &str) -> (Vec<MountEntry>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((left, right)) = line.split_once(" - ") else {
            warnings.push(format!("mountinfo line {} has no separator", n + 1));
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 2 {
            warnings.push(format!("mountinfo line {} is short", n + 1));
            continue;
        }
        let source = unescape_mount(r[1]);
        if !source.starts_with("/dev/") {
            continue;
        }
        out.push(MountEntry {
            source,
            mount_point: unescape_mount(l[4]),
            fs_type: r[0].to_owned(),
            read_only: l[5].split(',').any(|o| o == "ro"),
        });
    }
    (out, warnings)
}

/// Groups `user` belongs to as a supplementary member, from /etc/group text.
/// (The primary group comes from /etc/passwd; schools put pupils in a supplementary group.)
pub fn groups_of(user: &str, etc_group: &str) -> Vec<String> {
    etc_group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m.trim() == user)).then(|| f[0].to_owned())
        })
        .collect()
}

/// A USB device's facts from its sysfs attributes; missing essentials (vendor and product
/// ids) are warnings, not errors. Interface classes come from the raw descriptors (readable
/// before authorisation) and then the interface directories (present after).
pub fn usb_device_facts(raw: &RawUsbDevice) -> (UsbDeviceFacts, Vec<String>) {
    let devpath = raw.devpath.as_str();
    let mut w = Vec::new();
    let mut hex4 =
        |name: &str, value: &Option<String>| match value.as_deref().and_then(parse_hex_u16) {
            Some(v) => format!("{v:04x}"),
            None => {
                w.push(format!("{devpath}: no readable {name}"));
                String::new()
            }
        };
    let vendor_id = hex4("idVendor", &raw.id_vendor);
    let product_id = hex4("idProduct", &raw.id_product);
    let mut interface_classes = match &raw.descriptors {
        Some(d) => {
            let (c, dw) = interface_classes_from_descriptors(d);
            w.extend(dw.into_iter().map(|x| format!("{devpath}: {x}")));
            c
        }
        None => Vec::new(),
    };
    for c in raw
        .interface_classes
        .iter()
        .filter_map(|c| parse_hex_u16(c))
    {
        if !interface_classes.contains(&(c as u8)) {
            interface_classes.push(c as u8);
        }
    }
    let facts = UsbDeviceFacts {
        devpath: devpath.to_owned(),
        sys_name: devpath.rsplit('/').next().unwrap_or("").to_owned(),
        vendor_id,
        product_id,
        serial: raw.serial.clone(),
        manufacturer: raw.manufacturer.clone(),
        product: raw.product.clone(),
        device_class: raw
            .device_class
            .as_deref()
            .and_then(parse_hex_u16)
            .map(|c| c as u8),
        interface_classes,
        authorized: raw.authorized.as_deref().map(|a| a == "1"),
    };
    (facts, w)
}

/// How much of a medium [`filesystem_type`] needs: btrfs keeps its signature at 64 KiB.
pub const FS_HEAD_LEN: usize = 0x10048;

/// The kernel filesystem type for a medium's first bytes, from the signatures of what sticks
/// and cards carry (FAT, exFAT, NTFS, ext2/3/4, ISO 9660, XFS, btrfs); `None` for anything
/// else. mount(2) needs the type named: naming it also loads its module, which a list of the
/// loaded filesystems would not include.
pub fn filesystem_type(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, sig: &[u8]| head.get(offset..offset + sig.len()) == Some(sig);
    // exFAT and NTFS boot sectors carry the same 0x55AA mark as FAT: their names come first.
    if at(3, b"EXFAT   ") {
        Some("exfat")
    } else if at(3, b"NTFS    ") {
        Some("ntfs3")
    } else if at(510, &[0x55, 0xAA]) && (at(54, b"FAT1") || at(82, b"FAT32")) {
        Some("vfat")
    } else if at(1080, &[0x53, 0xEF]) {
        // ext4's driver serves ext2 and ext3 too.
        Some("ext4")
    } else if at(0x8001, b"CD001") {
        Some("iso9660")
    } else if at(0, b"XFSB") {
        Some("xfs")
    } else if at(0x10040, b"_BHRfS_M") {
        Some("btrfs")
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Recorded datagrams: one per line, hex (see testdata/README.md).
    pub(crate) fn recorded(text: &str) -> Vec<Vec<u8>> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect()
    }
    pub(crate) const STICK: &str = include_str!("testdata/stick-serial-SN-TEST-0001.uevents.hex");
    pub(crate) const KEYBOARD: &str = include_str!("testdata/keyboard-usb-kbd.uevents.hex");
    pub(crate) const NO_SERIAL: &str = include_str!("testdata/stick-empty-serial.uevents.hex");

    #[test]
    fn parses_synthetic_payload() {
        let raw = b"add@/devices/pci0000:00/usb1/1-1\0ACTION=add\0DEVPATH=/devices/pci0000:00/usb1/1-1\0SUBSYSTEM=usb\0DEVTYPE=usb_device\0PRODUCT=46f4/1/0\0SEQNUM=1234\0";
        let (ev, w) = parse_uevent(raw);
        let ev = ev.unwrap();
        assert!(w.is_empty());
        assert_eq!(ev.action, "add");
        assert_eq!(ev.subsystem, "usb");
        assert_eq!(ev.devtype.as_deref(), Some("usb_device"));
        assert_eq!(ev.seqnum, Some(1234));
        assert_eq!(ev.sys_name(), "1-1");
        assert_eq!(ev.var("PRODUCT"), Some("46f4/1/0"));
    }

    #[test]
    fn refuses_udev_and_garbage_with_warnings() {
        assert!(parse_uevent(b"libudev\0\xfe\xed\xca\xfe").0.is_none());
        assert!(parse_uevent(b"").0.is_none());
        let (ev, w) = parse_uevent(b"nonsense\0A=1\0");
        assert!(ev.is_none() && !w.is_empty());
        let (ev, w) = parse_uevent(b"add@/x\0ACTION=add\0junk\0SUBSYSTEM=usb\0SEQNUM=x\0");
        assert!(ev.is_some());
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn recorded_stick_sequence_parses_in_kernel_order() {
        let raw = recorded(STICK);
        let evs: Vec<Uevent> = raw
            .iter()
            .map(|r| {
                let (ev, w) = parse_uevent(r);
                assert!(w.is_empty(), "{w:?}");
                ev.unwrap()
            })
            .collect();
        assert_eq!(evs.len(), 31);
        let dev = evs
            .iter()
            .position(|e| e.devtype.as_deref() == Some("usb_device") && e.action == "add");
        let disk = evs
            .iter()
            .position(|e| e.subsystem == "block" && e.devtype.as_deref() == Some("disk"));
        assert!(
            dev.unwrap() < disk.unwrap(),
            "usb_device add comes before block disk add"
        );
        assert!(evs.iter().any(|e| e.var("INTERFACE") == Some("8/6/80")));
        let dev = &evs[dev.unwrap()];
        assert_eq!(dev.devpath, "/devices/pci0000:00/0000:00:02.0/usb2/2-1");
        assert_eq!(dev.var("PRODUCT"), Some("46f4/1/0"));
        let last = evs.last().unwrap();
        assert_eq!(
            (last.action.as_str(), last.devtype.as_deref()),
            ("remove", Some("usb_device"))
        );
        // Sequence numbers rise strictly in kernel order.
        assert!(evs.windows(2).all(|w| w[0].seqnum < w[1].seqnum));
    }

    #[test]
    fn recorded_keyboard_and_no_serial_stick() {
        let kbd: Vec<Uevent> = recorded(KEYBOARD)
            .iter()
            .filter_map(|r| parse_uevent(r).0)
            .collect();
        assert!(
            kbd.iter().any(|e| e.var("INTERFACE") == Some("3/1/1")),
            "HID boot keyboard interface"
        );
        assert!(!kbd.iter().any(|e| e.subsystem == "block"));
        let ns: Vec<Uevent> = recorded(NO_SERIAL)
            .iter()
            .filter_map(|r| parse_uevent(r).0)
            .collect();
        assert!(
            ns.iter()
                .any(|e| e.subsystem == "block" && e.action == "add")
        );
    }

    #[test]
    fn descriptors_give_interface_classes() {
        // Device descriptor (18) + config (9) + interface class 8 + endpoint (7) + interface class 3.
        let mut raw = vec![18, 1];
        raw.extend([0u8; 16]);
        raw.extend([9, 2, 39, 0, 2, 1, 0, 0x80, 50]);
        raw.extend([9, 4, 0, 0, 2, 8, 6, 80, 0]);
        raw.extend([7, 5, 0x81, 2, 0, 2, 0]);
        raw.extend([9, 4, 1, 0, 1, 3, 1, 1, 0]);
        let (c, w) = interface_classes_from_descriptors(&raw);
        assert_eq!(c, vec![8, 3]);
        assert!(w.is_empty());
        raw.extend([0, 4]);
        assert!(!interface_classes_from_descriptors(&raw).1.is_empty());
        let (c, w) = interface_classes_from_descriptors(&[9, 4, 0, 0, 2]);
        assert!(c.is_empty() && !w.is_empty());
    }

    #[test]
    fn mountinfo_keeps_dev_mounts_and_unescapes() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 8:17 / /media/pupil/MY\\040STICK ro,nosuid - vfat /dev/sdb1 ro,iocharset=iso8859-1\n\
                    41 22 0:5 / /proc rw - proc proc rw\nbroken line\n";
        let (m, w) = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, "/media/pupil/MY STICK");
        assert!(m[1].read_only && !m[0].read_only);
        assert_eq!(m[1].fs_type, "vfat");
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn usb_device_facts_from_sysfs_values() {
        let mut descriptors = vec![18u8, 1];
        descriptors.extend([0u8; 16]);
        descriptors.extend([9, 2, 32, 0, 1, 1, 0, 0x80, 50, 9, 4, 0, 0, 2, 8, 6, 80, 0]);
        let stick = RawUsbDevice {
            devpath: "/devices/pci0000:00/0000:00:02.0/usb1/1-1".into(),
            id_vendor: Some("46f4".into()),
            id_product: Some("0001".into()),
            product: Some("QEMU USB HARDDRIVE".into()),
            device_class: Some("00".into()),
            authorized: Some("0".into()),
            descriptors: Some(descriptors),
            ..Default::default()
        };
        let (f, w) = usb_device_facts(&stick);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(f.sys_name, "1-1");
        assert_eq!(f.device_id(), "46f4:0001");
        assert_eq!(
            f.interface_classes,
            [8],
            "from descriptors while unauthorised"
        );
        assert_eq!(f.authorized, Some(false));
        assert!(f.is_mass_storage());

        let kbd = RawUsbDevice {
            devpath: "/devices/pci0000:00/0000:00:02.0/usb1/1-2".into(),
            id_vendor: Some("0627".into()),
            id_product: Some("1".into()),
            serial: Some("42".into()),
            authorized: Some("1".into()),
            interface_classes: vec!["03".into(), "03".into(), "zz".into()],
            ..Default::default()
        };
        let (f, _) = usb_device_facts(&kbd);
        assert_eq!(f.product_id, "0001");
        assert_eq!(
            f.interface_classes,
            [3],
            "from the interface directories, once each"
        );
        assert_eq!(f.serial.as_deref(), Some("42"));

        let hub = RawUsbDevice {
            devpath: "/devices/pci0000:00/0000:00:02.0/usb1".into(),
            id_vendor: Some("1d6b".into()),
            id_product: Some("0002".into()),
            device_class: Some("09".into()),
            ..Default::default()
        };
        let (f, _) = usb_device_facts(&hub);
        assert!(f.is_root_hub() && f.is_hub());

        let (f, w) = usb_device_facts(&RawUsbDevice {
            devpath: "/devices/nowhere/1-9".into(),
            ..Default::default()
        });
        assert_eq!(f.sys_name, "1-9");
        assert_eq!(
            w,
            [
                "/devices/nowhere/1-9: no readable idVendor",
                "/devices/nowhere/1-9: no readable idProduct"
            ]
        );
    }

    #[test]
    fn filesystem_type_from_signatures() {
        let fat16 = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/probe/usb/testdata/fat16-label-CARETAKER.head"
        ))
        .unwrap();
        assert_eq!(filesystem_type(&fat16), Some("vfat"));
        let with = |offset: usize, sig: &[u8]| {
            let mut head = vec![0u8; FS_HEAD_LEN];
            head[offset..offset + sig.len()].copy_from_slice(sig);
            head
        };
        let mut fat32 = with(82, b"FAT32   ");
        fat32[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(filesystem_type(&fat32), Some("vfat"));
        let mut exfat = with(3, b"EXFAT   ");
        exfat[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(filesystem_type(&exfat), Some("exfat"));
        assert_eq!(filesystem_type(&with(3, b"NTFS    ")), Some("ntfs3"));
        assert_eq!(filesystem_type(&with(1080, &[0x53, 0xEF])), Some("ext4"));
        assert_eq!(filesystem_type(&with(0x8001, b"CD001")), Some("iso9660"));
        assert_eq!(filesystem_type(&with(0, b"XFSB")), Some("xfs"));
        assert_eq!(filesystem_type(&with(0x10040, b"_BHRfS_M")), Some("btrfs"));
        // FAT's name without the boot sector mark is not taken for FAT.
        assert_eq!(filesystem_type(&with(54, b"FAT16   ")), None);
        assert_eq!(filesystem_type(&[0u8; 512]), None);
        assert_eq!(filesystem_type(&[]), None);
    }

    #[test]
    fn group_membership() {
        let g = "root:x:0:\npupils:x:1001:alice,bob\nstaff:x:1002:carol\nbad\n";
        assert_eq!(groups_of("bob", g), vec!["pupils"]);
        assert!(groups_of("dave", g).is_empty());
    }
}
