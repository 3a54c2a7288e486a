//! The pure policy decision for one USB device: allow, allow after a clean scan, or block.
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use caretaker_proto::policy::removable_media::{PupilMatcher, RemovableMediaPolicy, StorageMode};

/// USB interface class for mass storage.
pub const CLASS_MASS_STORAGE: u8 = 0x08;
/// USB device class for hubs.
pub const CLASS_HUB: u8 = 0x09;

/// What sysfs told us about a USB device, cached at `add` (sysfs is gone by `remove`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsbDeviceFacts {
    /// Path under /sys, e.g. "/devices/pci0000:00/0000:00:02.0/usb1/1-1".
    pub devpath: String,
    /// "1-1", "usb1".
    pub sys_name: String,
    /// Lower-case 4-digit hex.
    pub vendor_id: String,
    pub product_id: String,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub device_class: Option<u8>,
    /// Distinct bInterfaceClass values over all configurations.
    pub interface_classes: Vec<u8>,
    /// The `authorized` attribute when read.
    pub authorized: Option<bool>,
}

impl UsbDeviceFacts {
    /// "vvvv:pppp" as policies and `lsusb` write it.
    pub fn device_id(&self) -> String {
        format!("{}:{}", self.vendor_id, self.product_id)
    }
    pub fn is_mass_storage(&self) -> bool {
        self.interface_classes.contains(&CLASS_MASS_STORAGE)
    }
    pub fn is_hub(&self) -> bool {
        self.device_class == Some(CLASS_HUB) || self.interface_classes.contains(&CLASS_HUB)
    }
    /// A root hub (usbN) belongs to the host controller, not to something plugged in.
    pub fn is_root_hub(&self) -> bool {
        self.sys_name.starts_with("usb")
    }
    /// Event details for `usb.*` events.
    pub fn details(&self) -> Map<String, Value> {
        let v = json!({
            "sys_name": self.sys_name,
            "device_id": self.device_id(),
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "product": self.product,
            "device_class": self.device_class,
            "interface_classes": self.interface_classes,
            "mass_storage": self.is_mass_storage(),
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

/// The logged-in user, with the groups used to tell pupils from staff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// What to do with a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    AllowAfterScan,
    Block(String),
}

impl Decision {
    /// As the events and the policy name it.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::AllowAfterScan => "allow_after_scan",
            Decision::Block(_) => "block",
        }
    }
}

/// `usb.inserted`'s details: the device, the decision, whose rules applied (nobody logged in
/// counts as pupil: the stricter audience), whether it was there when the agent started, and
/// the antivirus's state at the time (`antivirus_problem` is `None` when current).
pub fn inserted_details(
    facts: &UsbDeviceFacts,
    decision: &Decision,
    user: Option<&UserInfo>,
    policy: &RemovableMediaPolicy,
    at_start: bool,
    antivirus_problem: Option<String>,
) -> Map<String, Value> {
    let mut d = facts.details();
    d.insert("decision".into(), json!(decision.name()));
    d.insert("mass_storage".into(), json!(facts.is_mass_storage()));
    let pupil = user.is_none() || is_pupil(user, &policy.pupils);
    d.insert(
        "account".into(),
        json!(if pupil { "pupil" } else { "staff" }),
    );
    if let Decision::Block(r) = decision {
        d.insert("reason".into(), json!(r));
    }
    d.insert("present_at_start".into(), json!(at_start));
    d.insert(
        "antivirus_current".into(),
        json!(antivirus_problem.is_none()),
    );
    if let Some(p) = antivirus_problem {
        d.insert("antivirus_problem".into(), json!(p));
    }
    d
}

/// Matches `*`-wildcard patterns (no other metacharacters: policies are written by school staff).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Pupil rules apply to pupils and when nobody is logged in (the safer default for a school).
pub fn is_pupil(user: Option<&UserInfo>, m: &PupilMatcher) -> bool {
    match user {
        None => true,
        Some(u) => {
            u.groups.iter().any(|g| m.groups.contains(g))
                || m.username_patterns.iter().any(|p| glob_match(p, &u.name))
        }
    }
}

/// Decides for one device. Order: non-storage (never blocked by the storage rule) → report-only
/// policy → allow-lists → time-limited permissions → the pupil/staff storage mode.
pub fn decide(
    dev: &UsbDeviceFacts,
    user: Option<&UserInfo>,
    policy: &RemovableMediaPolicy,
    now: DateTime<Utc>,
) -> Decision {
    if !dev.is_mass_storage() || !policy.enforce {
        return Decision::Allow;
    }
    let id = dev.device_id();
    if policy
        .allowed_devices
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&id))
    {
        return Decision::Allow;
    }
    if let Some(s) = &dev.serial
        && policy.allowed_serials.iter().any(|a| a == s)
    {
        return Decision::Allow;
    }
    let permitted = policy.permissions.iter().any(|p| {
        p.until > now
            && (p.serial.is_some() || p.device_id.is_some() || p.user.is_some())
            && p.serial
                .as_ref()
                .is_none_or(|s| dev.serial.as_ref() == Some(s))
            && p.device_id
                .as_ref()
                .is_none_or(|d| d.eq_ignore_ascii_case(&id))
            && p.user
                .as_ref()
                .is_none_or(|pu| user.is_some_and(|u| &u.name == pu))
    });
    if permitted {
        return Decision::Allow;
    }
    let pupil = is_pupil(user, &policy.pupils);
    let mode = if pupil {
        policy.pupil_storage
    } else {
        policy.staff_storage
    };
    match mode {
        StorageMode::Allow => Decision::Allow,
        StorageMode::AllowAfterScan => Decision::AllowAfterScan,
        StorageMode::Block => Decision::Block(format!(
            "USB storage is blocked for {}",
            match (user, pupil) {
                (None, _) => "devices inserted with nobody logged in",
                (Some(_), true) => "pupils",
                (Some(_), false) => "staff",
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caretaker_proto::policy::removable_media::TemporaryPermission;
    use chrono::TimeZone;

    fn stick(serial: Option<&str>) -> UsbDeviceFacts {
        UsbDeviceFacts {
            devpath: "/devices/pci0000:00/0000:00:02.0/usb1/1-1".into(),
            sys_name: "1-1".into(),
            vendor_id: "46f4".into(),
            product_id: "0001".into(),
            serial: serial.map(Into::into),
            interface_classes: vec![8],
            ..Default::default()
        }
    }
    fn keyboard() -> UsbDeviceFacts {
        UsbDeviceFacts {
            vendor_id: "0627".into(),
            product_id: "0001".into(),
            interface_classes: vec![3],
            ..stick(None)
        }
    }
    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
    fn policy() -> RemovableMediaPolicy {
        RemovableMediaPolicy {
            enforce: true,
            pupil_storage: StorageMode::Block,
            staff_storage: StorageMode::AllowAfterScan,
            pupils: PupilMatcher {
                groups: vec!["pupils".into()],
                username_patterns: vec!["p-*".into()],
            },
            ..Default::default()
        }
    }
    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
    }

    #[test]
    fn keyboard_and_hubs_never_blocked_by_storage_rule() {
        let p = policy();
        assert_eq!(decide(&keyboard(), None, &p, now()), Decision::Allow);
        let hub = UsbDeviceFacts {
            device_class: Some(9),
            interface_classes: vec![9],
            ..stick(None)
        };
        assert_eq!(decide(&hub, None, &p, now()), Decision::Allow);
    }

    #[test]
    fn pupil_and_staff_rules() {
        let p = policy();
        let alice = user("alice", &["pupils"]);
        let pbob = user("p-bob", &[]);
        let carol = user("carol", &["staff"]);
        assert!(
            matches!(decide(&stick(Some("X")), Some(&alice), &p, now()), Decision::Block(r) if r.contains("pupils"))
        );
        assert!(matches!(
            decide(&stick(Some("X")), Some(&pbob), &p, now()),
            Decision::Block(_)
        ));
        assert_eq!(
            decide(&stick(Some("X")), Some(&carol), &p, now()),
            Decision::AllowAfterScan
        );
        assert!(
            matches!(decide(&stick(Some("X")), None, &p, now()), Decision::Block(r) if r.contains("nobody"))
        );
    }

    #[test]
    fn report_only_policy_allows() {
        let p = RemovableMediaPolicy {
            enforce: false,
            ..policy()
        };
        assert_eq!(decide(&stick(None), None, &p, now()), Decision::Allow);
    }

    #[test]
    fn allow_lists() {
        let mut p = policy();
        p.allowed_serials = vec!["SN-TEST-0001".into()];
        assert_eq!(
            decide(&stick(Some("SN-TEST-0001")), None, &p, now()),
            Decision::Allow
        );
        assert!(
            matches!(decide(&stick(None), None, &p, now()), Decision::Block(_)),
            "no serial cannot match a serial list"
        );
        p.allowed_devices = vec!["46F4:0001".into()];
        assert_eq!(decide(&stick(None), None, &p, now()), Decision::Allow);
    }

    #[test]
    fn time_limited_permissions() {
        let mut p = policy();
        let alice = user("alice", &["pupils"]);
        p.permissions.push(TemporaryPermission {
            serial: Some("SN1".into()),
            device_id: None,
            user: Some("alice".into()),
            until: now() + chrono::Duration::minutes(50),
            reason: Some("lesson".into()),
        });
        assert_eq!(
            decide(&stick(Some("SN1")), Some(&alice), &p, now()),
            Decision::Allow
        );
        assert!(matches!(
            decide(
                &stick(Some("SN1")),
                Some(&user("bob", &["pupils"])),
                &p,
                now()
            ),
            Decision::Block(_)
        ));
        assert!(matches!(
            decide(&stick(Some("SN2")), Some(&alice), &p, now()),
            Decision::Block(_)
        ));
        assert!(matches!(
            decide(&stick(Some("SN1")), None, &p, now()),
            Decision::Block(_)
        ));
        let later = now() + chrono::Duration::minutes(51);
        assert!(
            matches!(
                decide(&stick(Some("SN1")), Some(&alice), &p, later),
                Decision::Block(_)
            ),
            "expired"
        );
        // A permission naming nothing must not allow everything even if validation was skipped.
        p.permissions = vec![TemporaryPermission {
            serial: None,
            device_id: None,
            user: None,
            until: later,
            reason: None,
        }];
        assert!(matches!(
            decide(&stick(Some("SN1")), Some(&alice), &p, now()),
            Decision::Block(_)
        ));
    }

    #[test]
    fn globbing() {
        assert!(glob_match("p-*", "p-bob"));
        assert!(glob_match("*@students.x", "a@students.x"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("p-*", "staff"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn details_carry_attributes() {
        let d = stick(Some("SN-TEST-0001")).details();
        assert_eq!(d["device_id"], "46f4:0001");
        assert_eq!(d["serial"], "SN-TEST-0001");
        assert_eq!(d["mass_storage"], true);
        assert_eq!(stick(None).details()["serial"], Value::Null);
    }
}
