//! Windows' installed programs (as `parse::windows` reads them from the Uninstall keys) as the
//! inventory's `windows` source. Pure, so its tests run on every OS.

use chrono::NaiveDate;

use super::parse::WindowsProgram;
use super::{Inventory, SoftwareItem, SoftwareKey, Source};

/// The inventory of the `windows` source. Per-user entries belong to the profile's user
/// (the SID where the profile is unknown); the 32-bit view is marked `x86`.
pub fn inventory_of(programs: Vec<WindowsProgram>, owners: &[(String, String)]) -> Inventory {
    programs
        .into_iter()
        .map(|p| {
            let owner = p.user_sid.as_ref().map(|sid| {
                owners
                    .iter()
                    .find(|(s, _)| s.eq_ignore_ascii_case(sid))
                    .map_or_else(|| sid.clone(), |(_, n)| n.clone())
            });
            let id = match &p.user_sid {
                Some(sid) => format!("user/{sid}/{}", p.key),
                None => format!("{}/{}", p.scope, p.key),
            };
            let installed_at = p
                .install_date
                .as_deref()
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc());
            let item = SoftwareItem {
                name: p.display_name,
                version: p.display_version.unwrap_or_default(),
                arch: (p.scope == "machine_32bit").then(|| "x86".to_string()),
                owner,
                path: None,
                installed_at,
            };
            (
                SoftwareKey {
                    source: Source::Windows,
                    id,
                },
                item,
            )
        })
        .collect()
}

/// Copies into `fresh` the per-user items of `previous` whose user was not read this time
/// (hive not loaded, because they are logged off, or unreadable): only a reading of a user's
/// own key can say their software was removed.
pub fn keep_unread_users(previous: &Inventory, fresh: &mut Inventory, users_read: &[String]) {
    for (key, item) in previous {
        let Some(sid) = key.id.strip_prefix("user/").and_then(|r| r.split_once('/')) else {
            continue;
        };
        if !users_read.iter().any(|u| u.eq_ignore_ascii_case(sid.0)) {
            fresh.entry(key.clone()).or_insert_with(|| item.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::software::parse::{RegValue, parse_registry_keys};

    fn key(path: &str, values: &[(&str, RegValue)]) -> (String, Vec<(String, RegValue)>) {
        let values = values
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        (path.to_string(), values)
    }

    const HKLM: &str = r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";
    const WOW: &str =
        r"HKEY_LOCAL_MACHINE\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall";
    const SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";

    #[test]
    fn machine_32bit_and_user_entries_become_distinct_items() {
        let s = |v: &str| RegValue::Str(v.into());
        let parsed = parse_registry_keys([
            key(
                &format!(r"{HKLM}\7-Zip"),
                &[
                    ("DisplayName", s("7-Zip 23.01 (x64)")),
                    ("DisplayVersion", s("23.01")),
                    ("InstallDate", s("20240115")),
                ],
            ),
            key(
                &format!(r"{WOW}\7-Zip"),
                &[
                    ("DisplayName", s("7-Zip 9.20")),
                    ("DisplayVersion", s("9.20")),
                ],
            ),
            key(
                &format!(
                    r"HKEY_USERS\{SID}\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\Zoom"
                ),
                &[("DisplayName", s("Zoom")), ("DisplayVersion", s("5.17"))],
            ),
            key(
                r"HKEY_USERS\S-1-5-21-9\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\Tool",
                &[("displayname", s("Tool"))],
            ),
            // Hidden from "Apps & features": not inventoried.
            key(
                &format!(r"{HKLM}\{{GUID}}"),
                &[
                    ("DisplayName", s("Runtime")),
                    ("SystemComponent", RegValue::Dword(1)),
                ],
            ),
        ]);
        let owners = vec![(SID.to_lowercase(), "alice".to_string())];
        let inv = inventory_of(parsed.value, &owners);
        type Row<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let got: Vec<Row> = inv
            .iter()
            .map(|(k, i)| {
                (
                    k.id.as_str(),
                    i.name.as_str(),
                    i.version.as_str(),
                    i.arch.as_deref(),
                    i.owner.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("machine/7-Zip", "7-Zip 23.01 (x64)", "23.01", None, None),
                (
                    "machine_32bit/7-Zip",
                    "7-Zip 9.20",
                    "9.20",
                    Some("x86"),
                    None
                ),
                (
                    "user/S-1-5-21-1004336348-1177238915-682003330-1001/Zoom",
                    "Zoom",
                    "5.17",
                    None,
                    Some("alice")
                ),
                // No profile known for this SID: the SID stands in for the name.
                ("user/S-1-5-21-9/Tool", "Tool", "", None, Some("S-1-5-21-9")),
            ]
        );
        assert!(inv.keys().all(|k| k.source == Source::Windows));
        let first = inv.values().next().unwrap();
        assert_eq!(
            first.installed_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2024-01-15T00:00:00+00:00")
        );
    }

    #[test]
    fn a_logged_off_users_software_is_kept_not_removed() {
        let item = |name: &str, owner: Option<&str>| SoftwareItem {
            name: name.into(),
            version: "1".into(),
            arch: None,
            owner: owner.map(Into::into),
            path: None,
            installed_at: None,
        };
        let k = |id: &str| SoftwareKey {
            source: Source::Windows,
            id: id.into(),
        };
        let previous: Inventory = [
            (k("machine/App"), item("App", None)),
            (k("user/S-1-5-21-1/Zoom"), item("Zoom", Some("alice"))),
            (k("user/S-1-5-21-2/Slack"), item("Slack", Some("bob"))),
        ]
        .into();
        // Machine key re-read without App; alice read (Zoom gone); bob logged off.
        let mut fresh = Inventory::new();
        keep_unread_users(&previous, &mut fresh, &["S-1-5-21-1".to_string()]);
        let ids: Vec<&str> = fresh.keys().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["user/S-1-5-21-2/Slack"]);
    }
}
