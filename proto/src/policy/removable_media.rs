//! The `removable_media` section of the policy document: which USB storage may be used, by whom, and when.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happens to a USB mass-storage device that no allow-list or permission covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageMode {
    /// Usable at once (still scanned for reporting when `scan_on_mount`).
    #[default]
    Allow,
    /// Authorised, but read-only until a clean scan; deauthorised if infected.
    AllowAfterScan,
    /// Left unauthorised: the kernel never binds a driver to it.
    Block,
}

/// Who counts as a pupil; everyone else logged in is staff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PupilMatcher {
    /// Unix group names whose members are pupils (e.g. "pupils").
    pub groups: Vec<String>,
    /// Username patterns with `*` wildcards (e.g. "pupil-*", "*@students.example.sch.uk").
    pub username_patterns: Vec<String>,
}

/// A time-limited exception granted centrally (e.g. a teacher asks for a pupil's stick for one lesson).
/// Every field that is set must match; at least one of serial/device_id/user must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemporaryPermission {
    #[serde(default)]
    pub serial: Option<String>,
    /// "vvvv:pppp" in lower-case hex, as `lsusb` shows.
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    pub until: DateTime<Utc>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Policy for removable media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemovableMediaPolicy {
    /// When false the agent only reports; it never holds devices (authorized_default stays 1).
    pub enforce: bool,
    /// Mass-storage rule for pupils, and when nobody is logged in (the stricter audience).
    pub pupil_storage: StorageMode,
    /// Mass-storage rule for staff.
    pub staff_storage: StorageMode,
    pub pupils: PupilMatcher,
    /// Always allowed, "vvvv:pppp" (e.g. school-issued encrypted sticks).
    pub allowed_devices: Vec<String>,
    /// Always allowed, by USB serial number.
    pub allowed_serials: Vec<String>,
    pub permissions: Vec<TemporaryPermission>,
    /// Scan every permitted medium when it is mounted (always true in effect for allow_after_scan).
    pub scan_on_mount: bool,
}

impl Default for RemovableMediaPolicy {
    fn default() -> Self {
        Self {
            enforce: false,
            pupil_storage: StorageMode::Allow,
            staff_storage: StorageMode::Allow,
            pupils: PupilMatcher::default(),
            allowed_devices: Vec::new(),
            allowed_serials: Vec::new(),
            permissions: Vec::new(),
            scan_on_mount: true,
        }
    }
}

/// True if `s` is "vvvv:pppp" with four hex digits each side.
fn is_device_id(s: &str) -> bool {
    let mut parts = s.split(':');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| p.len() == 4 && p.chars().all(|c| c.is_ascii_hexdigit()))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Why the `removable_media` section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovableMediaError {
    #[error("allowed_devices entry {0:?} is not vendor:product (e.g. \"0781:5567\")")]
    NotVendorProduct(String),
    #[error("allowed_serials contains an empty serial")]
    EmptySerial,
    #[error("pupils.username_patterns contains an empty pattern")]
    EmptyPupilPattern,
    #[error("permissions[{0}] names no serial, device_id or user: it would allow everything")]
    PermissionForAll(usize),
    #[error("permissions[{index}].device_id {device_id:?} is not vendor:product")]
    PermissionNotVendorProduct { index: usize, device_id: String },
}

impl RemovableMediaPolicy {
    /// Checks the section; the error names the first bad entry.
    pub fn validate(&self) -> Result<(), RemovableMediaError> {
        if let Some(d) = self.allowed_devices.iter().find(|d| !is_device_id(d)) {
            return Err(RemovableMediaError::NotVendorProduct(d.clone()));
        }
        if self.allowed_serials.iter().any(|s| s.trim().is_empty()) {
            return Err(RemovableMediaError::EmptySerial);
        }
        if self
            .pupils
            .username_patterns
            .iter()
            .any(|p| p.trim().is_empty())
        {
            return Err(RemovableMediaError::EmptyPupilPattern);
        }
        for (index, p) in self.permissions.iter().enumerate() {
            if p.serial.is_none() && p.device_id.is_none() && p.user.is_none() {
                return Err(RemovableMediaError::PermissionForAll(index));
            }
            if let Some(d) = &p.device_id
                && !is_device_id(d)
            {
                return Err(RemovableMediaError::PermissionNotVendorProduct {
                    index,
                    device_id: d.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_report_only_and_valid() {
        let p = RemovableMediaPolicy::default();
        assert!(!p.enforce);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn parses_full_json() {
        let p: RemovableMediaPolicy = serde_json::from_str(
            r#"{"enforce":true,"pupil_storage":"block","staff_storage":"allow_after_scan",
                "pupils":{"groups":["pupils"],"username_patterns":["p-*"]},
                "allowed_devices":["0781:5567"],"allowed_serials":["ABC"],
                "permissions":[{"serial":"SN1","until":"2026-11-23T15:00:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(p.pupil_storage, StorageMode::Block);
        assert_eq!(p.staff_storage, StorageMode::AllowAfterScan);
        assert!(p.scan_on_mount, "missing fields take defaults");
        assert!(p.validate().is_ok());
    }

    #[test]
    fn rejects_bad_entries() {
        let mut p = RemovableMediaPolicy {
            allowed_devices: vec!["0781-5567".into()],
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("0781-5567"));
        p.allowed_devices.clear();
        p.permissions.push(TemporaryPermission {
            serial: None,
            device_id: None,
            user: None,
            until: Utc::now(),
            reason: None,
        });
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("allow everything")
        );
    }
}
