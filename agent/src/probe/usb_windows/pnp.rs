//! What Windows' Plug and Play registry says about USB storage, interpreted: the devices
//! `usbstor.sys` drives now (its service's volatile `Enum` key), each USB device instance id
//! (`USB\VID_0781&PID_5567\4C530001230515115343`) as vendor, product and serial, and the disk's
//! vendor and product names from its `USBSTOR\Disk&Ven_…&Prod_…` key. Pure; the registry reads
//! are in `mod.rs` through `os::registry`.

use super::decide::{CLASS_MASS_STORAGE, UsbDeviceFacts};

/// The volatile list of the devices the USB storage driver drives now.
pub const USBSTOR_ENUM: &str = r"SYSTEM\CurrentControlSet\Services\USBSTOR\Enum";
/// Every device Windows has seen; `<instance id>` below it holds the device's own values.
pub const ENUM: &str = r"SYSTEM\CurrentControlSet\Enum";

/// The device instance ids in the `Enum` key's values (`"0"`, `"1"`, …; `Count` and
/// `NextInstance` are bookkeeping).
pub fn present(values: &[(String, Option<String>)]) -> Vec<String> {
    let mut ids: Vec<String> = values
        .iter()
        .filter(|(name, _)| !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|(_, v)| v.as_deref().map(str::trim).filter(|v| !v.is_empty()))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A USB device instance id taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbInstance {
    /// Lower-case four hex digits, as Linux and the policy write them.
    pub vendor_id: String,
    pub product_id: String,
    /// The device's own serial number; `None` when Windows made the id up (it contains `&`)
    /// because the device has no unique serial.
    pub serial: Option<String>,
}

/// `USB\VID_0781&PID_5567\4C530001230515115343` (any case; the hardware-id part may carry
/// `&MI_00` for one interface of a composite device).
pub fn parse_instance_id(id: &str) -> Option<UsbInstance> {
    let mut parts = id.split('\\');
    if !parts.next()?.eq_ignore_ascii_case("USB") {
        return None;
    }
    let hardware = parts.next()?.to_ascii_uppercase();
    let instance = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let field = |name: &str| {
        hardware
            .split('&')
            .find_map(|f| f.strip_prefix(name))
            .filter(|v| v.len() == 4 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase)
    };
    Some(UsbInstance {
        vendor_id: field("VID_")?,
        product_id: field("PID_")?,
        serial: (!instance.is_empty() && !instance.contains('&')).then(|| instance.to_owned()),
    })
}

/// The disk's vendor and product from the `USBSTOR` key names: the subkey of
/// `Enum\USBSTOR` that holds an instance `<serial>&0` is `Disk&Ven_SanDisk&Prod_Cruzer_Blade&Rev_1.00`.
/// `disks` pairs each such key name with its instance names.
pub fn disk_names(
    disks: &[(String, Vec<String>)],
    serial: &str,
) -> (Option<String>, Option<String>) {
    let prefix = format!("{}&", serial.to_ascii_uppercase());
    let Some((name, _)) = disks.iter().find(|(_, instances)| {
        instances
            .iter()
            .any(|i| i.to_ascii_uppercase().starts_with(&prefix))
    }) else {
        return (None, None);
    };
    let field = |key: &str| {
        name.split('&')
            .find_map(|f| {
                f.get(..key.len())
                    .filter(|k| k.eq_ignore_ascii_case(key))
                    .map(|_| &f[key.len()..])
            })
            .map(|v| v.replace('_', " ").trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    (field("Ven_"), field("Prod_"))
}

/// The facts the shared policy decision and the `usb.*` events take. `location` is Windows'
/// name for the port (`Port_#0002.Hub_#0001`), the counterpart of Linux's `1-1`; the instance
/// id itself (which holds the serial) is kept out of the events, in `devpath`.
pub fn facts(
    instance_id: &str,
    usb: &UsbInstance,
    location: Option<String>,
    names: (Option<String>, Option<String>),
) -> UsbDeviceFacts {
    UsbDeviceFacts {
        devpath: instance_id.to_owned(),
        sys_name: location.unwrap_or_else(|| "unknown".into()),
        vendor_id: usb.vendor_id.clone(),
        product_id: usb.product_id.clone(),
        serial: usb.serial.clone(),
        manufacturer: names.0,
        product: names.1,
        device_class: None,
        // Driven by the USB storage driver: storage is what it is.
        interface_classes: vec![CLASS_MASS_STORAGE],
        authorized: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `reg query HKLM\SYSTEM\CurrentControlSet\Services\USBSTOR\Enum` shows it on
    /// Windows 10 with two sticks in (modelled on the documented layout, not recorded here).
    fn enum_values() -> Vec<(String, Option<String>)> {
        vec![
            (
                "0".into(),
                Some(r"USB\VID_0781&PID_5567\4C530001230515115343".into()),
            ),
            (
                "1".into(),
                Some(r"USB\VID_090C&PID_1000\6&2C5D7B7&0&2".into()),
            ),
            ("Count".into(), None),
            ("NextInstance".into(), None),
        ]
    }

    #[test]
    fn the_enum_key_lists_the_present_devices() {
        assert_eq!(
            present(&enum_values()),
            [
                r"USB\VID_0781&PID_5567\4C530001230515115343",
                r"USB\VID_090C&PID_1000\6&2C5D7B7&0&2"
            ]
        );
        assert!(present(&[]).is_empty());
    }

    #[test]
    fn an_instance_id_gives_vendor_product_and_serial() {
        assert_eq!(
            parse_instance_id(r"USB\VID_0781&PID_5567\4C530001230515115343"),
            Some(UsbInstance {
                vendor_id: "0781".into(),
                product_id: "5567".into(),
                serial: Some("4C530001230515115343".into()),
            })
        );
        // No serial of its own: Windows made the instance part up.
        assert_eq!(
            parse_instance_id(r"usb\vid_090c&pid_1000\6&2c5d7b7&0&2").map(|u| u.serial),
            Some(None)
        );
        assert_eq!(
            parse_instance_id(r"USB\VID_0781&PID_5567&MI_00\7&1").map(|u| u.product_id),
            Some("5567".into())
        );
        for bad in [
            r"USBSTOR\Disk&Ven_SanDisk\1&0",
            r"USB\VID_07&PID_5567\1",
            r"USB\ROOT_HUB30\4&1",
            "",
            r"USB\VID_0781&PID_5567\1\2",
        ] {
            assert_eq!(parse_instance_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn disk_names_come_from_the_usbstor_key_holding_the_serial() {
        let disks = vec![
            (
                "Disk&Ven_Kingston&Prod_DataTraveler_3.0&Rev_PMAP".to_string(),
                vec!["60A44C413C2BF1B0A9BA0049&0".to_string()],
            ),
            (
                "Disk&Ven_SanDisk&Prod_Cruzer_Blade&Rev_1.00".to_string(),
                vec!["4C530001230515115343&0".to_string()],
            ),
        ];
        assert_eq!(
            disk_names(&disks, "4c530001230515115343"),
            (Some("SanDisk".into()), Some("Cruzer Blade".into()))
        );
        assert_eq!(disk_names(&disks, "NOPE"), (None, None));
    }

    #[test]
    fn facts_keep_the_instance_id_out_of_the_events() {
        let id = r"USB\VID_0781&PID_5567\4C530001230515115343";
        let f = facts(
            id,
            &parse_instance_id(id).unwrap(),
            Some("Port_#0002.Hub_#0001".into()),
            (Some("SanDisk".into()), None),
        );
        assert!(f.is_mass_storage());
        assert_eq!(f.device_id(), "0781:5567");
        let d = serde_json::Value::Object(f.details()).to_string();
        assert!(!d.contains(r"USB\\VID"), "{d}");
        assert!(d.contains("Port_#0002.Hub_#0001"), "{d}");
    }
}
