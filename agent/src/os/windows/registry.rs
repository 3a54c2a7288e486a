//! Thin registry reads: a key's string or DWORD value, and every subkey of a key with its
//! values, as raw values for the probes' pure interpreters; and one write, a DWORD (Windows'
//! machine inactivity limit). Safe calls only (`windows-registry`).

use windows_registry::{Key, Type, Value};

/// `ERROR_FILE_NOT_FOUND`: the key or value is not there.
const ERROR_FILE_NOT_FOUND: i32 = 2;
/// Open the 32-bit programs' view of `HKLM\SOFTWARE` (`WOW6432Node`) from a 64-bit process.
pub const KEY_WOW64_32KEY: u32 = 0x0200;

/// A registry read that failed for a reason other than absence.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the registry key {path}: {source}")]
pub struct RegistryError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// A value as the registry holds it; the interpreters decide what it means.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// `REG_SZ` or `REG_EXPAND_SZ` (not expanded).
    Str(String),
    /// `REG_DWORD`.
    Dword(u32),
    /// `REG_BINARY`.
    Binary(Vec<u8>),
    /// Anything else (multi-string, QWORD), kept only as present.
    Other,
}

/// One key: its full path as regedit shows it (`HKEY_LOCAL_MACHINE\...`) and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct RawKey {
    pub path: String,
    pub values: Vec<(String, RawValue)>,
}

/// Which of the registry's roots a path starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hive {
    LocalMachine,
    Users,
    CurrentUser,
}

impl Hive {
    fn key(self) -> &'static Key {
        match self {
            Hive::LocalMachine => windows_registry::LOCAL_MACHINE,
            Hive::Users => windows_registry::USERS,
            Hive::CurrentUser => windows_registry::CURRENT_USER,
        }
    }

    /// The root's name as regedit and `reg export` write it.
    pub fn name(self) -> &'static str {
        match self {
            Hive::LocalMachine => "HKEY_LOCAL_MACHINE",
            Hive::Users => "HKEY_USERS",
            Hive::CurrentUser => "HKEY_CURRENT_USER",
        }
    }
}

/// Registry calls fail with Win32 codes wrapped as HRESULTs (0x8007xxxx); the Win32 code
/// gives the usual message ("Access is denied.").
fn io_error(hresult: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(hresult & 0xFFFF)
}

fn is_not_found(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_FILE_NOT_FOUND)
}

/// Opens `path` under `root` for reading, with extra access flags (`KEY_WOW64_32KEY`);
/// `None` if it does not exist.
fn open(root: &Key, path: &str, access: u32) -> Result<Option<Key>, std::io::Error> {
    match root.options().read().access(access).open(path) {
        Ok(k) => Ok(Some(k)),
        Err(e) => {
            let e = io_error(e.code().0);
            if is_not_found(&e) { Ok(None) } else { Err(e) }
        }
    }
}

/// A value; `None` if the key or value is absent.
fn read_value(root: &Key, path: &str, name: &str) -> Result<Option<RawValue>, RegistryError> {
    let fail = |source| RegistryError {
        path: path.to_string(),
        source,
    };
    let Some(key) = open(root, path, 0).map_err(fail)? else {
        return Ok(None);
    };
    match key.get_value(name) {
        Ok(v) => Ok(Some(raw_value(v))),
        Err(e) => {
            let e = io_error(e.code().0);
            if is_not_found(&e) {
                Ok(None)
            } else {
                Err(fail(e))
            }
        }
    }
}

/// A string value; `None` if the key or value is absent or not a string.
pub fn read_string(root: &Key, path: &str, name: &str) -> Result<Option<String>, RegistryError> {
    Ok(match read_value(root, path, name)? {
        Some(RawValue::Str(s)) => Some(s),
        _ => None,
    })
}

/// A `REG_DWORD` value; `None` if the key or value is absent or of another type.
pub fn read_dword(root: &Key, path: &str, name: &str) -> Result<Option<u32>, RegistryError> {
    Ok(match read_value(root, path, name)? {
        Some(RawValue::Dword(v)) => Some(v),
        _ => None,
    })
}

/// Sets a `REG_DWORD` value, creating the key if need be.
pub fn write_dword(root: &Key, path: &str, name: &str, value: u32) -> Result<(), RegistryError> {
    let fail = |hresult: i32| RegistryError {
        path: path.to_string(),
        source: io_error(hresult),
    };
    let key = root.create(path).map_err(|e| fail(e.code().0))?;
    key.set_u32(name, value).map_err(|e| fail(e.code().0))
}

/// The names of `path`'s subkeys; empty if `path` does not exist.
pub fn subkey_names(hive: Hive, path: &str) -> Result<Vec<String>, RegistryError> {
    let fail = |source| RegistryError {
        path: format!("{}\\{path}", hive.name()),
        source,
    };
    let Some(key) = open(hive.key(), path, 0).map_err(fail)? else {
        return Ok(Vec::new());
    };
    let names = key.keys().map_err(|e| fail(io_error(e.code().0)))?;
    Ok(names.collect())
}

/// The values of `path` itself; empty if `path` does not exist.
pub fn read_key_values(hive: Hive, path: &str) -> Result<Vec<(String, RawValue)>, RegistryError> {
    let fail = |source| RegistryError {
        path: format!("{}\\{path}", hive.name()),
        source,
    };
    let Some(key) = open(hive.key(), path, 0).map_err(fail)? else {
        return Ok(Vec::new());
    };
    Ok(key
        .values()
        .map_err(|e| fail(io_error(e.code().0)))?
        .map(|(n, v)| (n, raw_value(v)))
        .collect())
}

/// Every direct subkey of `path` with its values; empty if `path` does not exist. `shown_as`
/// is the path written into each `RawKey` (e.g. with `WOW6432Node` for the 32-bit view).
/// A subkey that vanishes between listing and reading (an uninstaller at work) is skipped.
pub fn read_subkeys(
    hive: Hive,
    path: &str,
    access: u32,
    shown_as: &str,
) -> Result<Vec<RawKey>, RegistryError> {
    let fail = |source| RegistryError {
        path: format!("{}\\{path}", hive.name()),
        source,
    };
    let Some(parent) = open(hive.key(), path, access).map_err(fail)? else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = parent
        .keys()
        .map_err(|e| fail(io_error(e.code().0)))?
        .collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Some(key) = open(&parent, &name, access).map_err(fail)? else {
            continue;
        };
        let values = key
            .values()
            .map_err(|e| fail(io_error(e.code().0)))?
            .map(|(n, v)| (n, raw_value(v)))
            .collect();
        out.push(RawKey {
            path: format!("{}\\{shown_as}\\{name}", hive.name()),
            values,
        });
    }
    Ok(out)
}

fn raw_value(v: Value) -> RawValue {
    match v.ty() {
        Type::String | Type::ExpandString => {
            // Stored with a terminating NUL, sometimes several, sometimes none.
            let units = v.as_wide();
            let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
            RawValue::Str(String::from_utf16_lossy(&units[..end]))
        }
        Type::U32 => u32::try_from(v).map_or(RawValue::Other, RawValue::Dword),
        Type::Bytes => RawValue::Binary(v.to_vec()),
        _ => RawValue::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key of this test's own under HKCU, removed when dropped (also after a failed assert).
    struct TestKey(String);

    impl TestKey {
        fn new(name: &str) -> Self {
            let path = format!(r"Software\CaretakerTest\{name}-{}", std::process::id());
            windows_registry::CURRENT_USER.create(&path).unwrap();
            TestKey(path)
        }
    }

    impl Drop for TestKey {
        fn drop(&mut self) {
            let _ = windows_registry::CURRENT_USER.remove_tree(&self.0);
        }
    }

    #[test]
    fn a_dword_is_written_and_read_back() {
        let t = TestKey::new("dword");
        let hkcu = windows_registry::CURRENT_USER;
        let path = format!(r"{}\Policies\System", t.0);
        assert_eq!(
            read_dword(hkcu, &path, "InactivityTimeoutSecs").unwrap(),
            None
        );
        write_dword(hkcu, &path, "InactivityTimeoutSecs", 300).unwrap();
        assert_eq!(
            read_dword(hkcu, &path, "InactivityTimeoutSecs").unwrap(),
            Some(300)
        );
        // A string where a DWORD is expected is not a number.
        hkcu.create(&path)
            .unwrap()
            .set_string("Other", "300")
            .unwrap();
        assert_eq!(read_dword(hkcu, &path, "Other").unwrap(), None);
        assert_eq!(
            read_string(hkcu, &path, "Other").unwrap().as_deref(),
            Some("300")
        );
    }

    #[test]
    fn subkeys_are_read_with_their_values() {
        let t = TestKey::new("subkeys");
        let hkcu = windows_registry::CURRENT_USER;
        let app = hkcu.create(format!(r"{}\TestApp", t.0)).unwrap();
        app.set_string("DisplayName", "Test App").unwrap();
        app.set_expand_string("InstallLocation", r"%ProgramFiles%\Test")
            .unwrap();
        app.set_u32("SystemComponent", 1).unwrap();
        app.set_bytes("Blob", Type::Bytes, &[1, 2, 3]).unwrap();
        app.set_u64("Big", 1).unwrap();
        hkcu.create(format!(r"{}\Empty", t.0)).unwrap();

        let mut keys = read_subkeys(Hive::CurrentUser, &t.0, 0, "Shown").unwrap();
        keys.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0].path, r"HKEY_CURRENT_USER\Shown\Empty");
        assert!(keys[0].values.is_empty());
        assert_eq!(keys[1].path, r"HKEY_CURRENT_USER\Shown\TestApp");
        let mut values = keys[1].values.clone();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            values,
            [
                ("Big".to_string(), RawValue::Other),
                ("Blob".to_string(), RawValue::Binary(vec![1, 2, 3])),
                ("DisplayName".to_string(), RawValue::Str("Test App".into())),
                (
                    "InstallLocation".to_string(),
                    RawValue::Str(r"%ProgramFiles%\Test".into())
                ),
                ("SystemComponent".to_string(), RawValue::Dword(1)),
            ]
        );
        assert_eq!(
            subkey_names(Hive::CurrentUser, &t.0).unwrap().len(),
            2,
            "names as listed"
        );
    }

    #[test]
    fn a_missing_key_or_value_is_absent_not_an_error() {
        let t = TestKey::new("missing");
        let hkcu = windows_registry::CURRENT_USER;
        let nowhere = format!(r"{}\Nowhere", t.0);
        assert!(
            read_subkeys(Hive::CurrentUser, &nowhere, 0, "x")
                .unwrap()
                .is_empty()
        );
        assert!(
            subkey_names(Hive::CurrentUser, &nowhere)
                .unwrap()
                .is_empty()
        );
        assert_eq!(read_string(hkcu, &nowhere, "X").unwrap(), None);
        hkcu.create(&t.0).unwrap().set_u32("Number", 7).unwrap();
        assert_eq!(read_string(hkcu, &t.0, "Missing").unwrap(), None);
        // Present but not text: not a string either.
        assert_eq!(read_string(hkcu, &t.0, "Number").unwrap(), None);
    }

    /// The 32-bit view of HKLM\SOFTWARE is a real, separate key under Wine and Windows alike.
    #[test]
    fn the_machine_uninstall_keys_are_readable_in_both_views() {
        let path = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";
        read_subkeys(Hive::LocalMachine, path, 0, path).unwrap();
        read_subkeys(Hive::LocalMachine, path, KEY_WOW64_32KEY, path).unwrap();
        assert!(!subkey_names(Hive::Users, "").unwrap().is_empty());
    }
}
