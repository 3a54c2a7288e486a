//! Windows' installed programs: the Uninstall registry entries as `reg export` writes them
//! (UTF-16 or UTF-8) and as PowerShell's `ConvertTo-Json` prints them.

use chrono::NaiveDate;
use serde_json::Value;
use std::collections::HashMap;

use super::{Parsed, truncate};

// ---------------------------------------------------------------------------------------
// Windows Uninstall registry entries

/// One program as Windows' "Apps & features" would list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsProgram {
    /// The Uninstall subkey name (a product GUID or a vendor's own name).
    pub key: String,
    pub display_name: String,
    pub display_version: Option<String>,
    pub publisher: Option<String>,
    /// ISO date (`2024-01-15`) where the `yyyymmdd` value parses; otherwise as written.
    pub install_date: Option<String>,
    pub install_location: Option<String>,
    /// `machine`, `machine_32bit` (WOW6432Node) or `user`.
    pub scope: &'static str,
    /// For per-user entries under HKEY_USERS, the user's SID.
    pub user_sid: Option<String>,
}

/// Decodes a text file Windows tools write: UTF-16LE/BE with a BOM (regedit, PowerShell 5's
/// `Out-File`), UTF-8 with or without BOM. Invalid sequences become U+FFFD with a warning.
pub fn decode_windows_text(bytes: &[u8], warnings: &mut Vec<String>) -> String {
    let mut utf16 = |b: &[u8], le: bool| {
        if !b.len().is_multiple_of(2) {
            warnings.push("odd number of bytes in UTF-16 text; last byte dropped".into());
        }
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| {
                if le {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    };
    let text = match bytes {
        [0xFF, 0xFE, rest @ ..] => utf16(rest, true),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, false),
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8_lossy(rest).into_owned(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    };
    if text.contains('\u{FFFD}') {
        warnings.push("text had invalid characters (replaced)".into());
    }
    text
}

/// Raw fields of one Uninstall key, before the skip rules.
#[derive(Default)]
struct UninstallEntry {
    path: String,
    values: HashMap<String, RegValue>,
}

/// A registry value as the interpreter needs it: text, a DWORD, or something else.
#[derive(Debug, Clone, PartialEq)]
pub enum RegValue {
    Str(String),
    Dword(u32),
    Other,
}

impl RegValue {
    fn as_str(&self) -> Option<&str> {
        match self {
            RegValue::Str(s) if !s.trim().is_empty() => Some(s.trim()),
            _ => None,
        }
    }
    fn as_u32(&self) -> Option<u32> {
        match self {
            RegValue::Dword(d) => Some(*d),
            RegValue::Str(s) => s.trim().parse().ok(),
            RegValue::Other => None,
        }
    }
}

/// Parses `reg export` / regedit output of the Uninstall keys.
pub fn parse_reg_export(bytes: &[u8]) -> Parsed<Vec<WindowsProgram>> {
    let mut warnings = Vec::new();
    let text = decode_windows_text(bytes, &mut warnings);
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    match lines.next().map(str::trim) {
        Some("Windows Registry Editor Version 5.00") | Some("REGEDIT4") => {}
        other => warnings.push(format!(
            "unexpected header {:?}; reading anyway",
            other.map(truncate)
        )),
    }
    let mut entries: Vec<UninstallEntry> = Vec::new();
    let mut current: Option<UninstallEntry> = None;
    let mut logical = String::new();
    let mut lineno = 1;
    let all: Vec<&str> = lines.collect();
    let mut i = 0;
    while i < all.len() {
        lineno += 1;
        logical.clear();
        logical.push_str(all[i].trim_start());
        // Hex values wrap with a trailing backslash.
        while logical.ends_with('\\') && logical.contains("=hex") && i + 1 < all.len() {
            logical.pop();
            i += 1;
            lineno += 1;
            logical.push_str(all[i].trim());
        }
        i += 1;
        let line = logical.as_str();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if let Some(path) = line.strip_prefix('[') {
            if let Some(e) = current.take() {
                entries.push(e);
            }
            let path = path.strip_suffix(']').unwrap_or(path);
            if path.starts_with('-') {
                continue; // A deletion record: nothing installed.
            }
            current = Some(UninstallEntry {
                path: path.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(entry) = current.as_mut() else {
            warnings.push(format!("line {lineno}: value outside a key"));
            continue;
        };
        match parse_reg_value_line(line) {
            Some((name, value)) => {
                entry.values.insert(name.to_ascii_lowercase(), value);
            }
            None => warnings.push(format!(
                "line {lineno}: unreadable value {:?}",
                truncate(line)
            )),
        }
    }
    if let Some(e) = current.take() {
        entries.push(e);
    }
    programs_from_entries(entries, warnings)
}

fn parse_reg_value_line(line: &str) -> Option<(String, RegValue)> {
    let (name, rest) = if let Some(r) = line.strip_prefix("@=") {
        (String::new(), r)
    } else {
        let (name, end) = read_reg_string(line.strip_prefix('"')?)?;
        (name, line[1 + end..].strip_prefix('=')?)
    };
    let value = if let Some(s) = rest.strip_prefix('"') {
        RegValue::Str(read_reg_string(s)?.0)
    } else if let Some(d) = rest.strip_prefix("dword:") {
        RegValue::Dword(u32::from_str_radix(d.trim(), 16).ok()?)
    } else if let Some(h) = rest
        .strip_prefix("hex(2):")
        .or(rest.strip_prefix("hex(1):"))
    {
        // REG_EXPAND_SZ / REG_SZ as UTF-16LE bytes.
        let bytes: Vec<u8> = h
            .split(',')
            .filter(|b| !b.trim().is_empty())
            .map(|b| u8::from_str_radix(b.trim(), 16).ok())
            .collect::<Option<_>>()?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        RegValue::Str(
            String::from_utf16_lossy(&units)
                .trim_end_matches('\0')
                .to_string(),
        )
    } else if rest.starts_with("hex") || rest == "-" {
        RegValue::Other
    } else {
        return None;
    };
    Some((name, value))
}

/// Reads a regedit-quoted string body (after the opening quote), undoing `\\` and `\"`.
/// Returns the string and the byte offset just past the closing quote, relative to the
/// start of the input *including* the opening quote's position (i.e. `s` offset + 1).
fn read_reg_string(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?.1),
            '"' => return Some((out, i + 1)),
            c => out.push(c),
        }
    }
    None
}

/// Interprets Uninstall keys read from the live registry: each key's full path as regedit
/// writes it (`HKEY_LOCAL_MACHINE\SOFTWARE\...\Uninstall\<key>`, `WOW6432Node` for the 32-bit
/// view, `HKEY_USERS\<sid>\...` per user) and its values, under the same listing rules as the
/// exports.
pub fn parse_registry_keys(
    keys: impl IntoIterator<Item = (String, Vec<(String, RegValue)>)>,
) -> Parsed<Vec<WindowsProgram>> {
    let entries = keys
        .into_iter()
        .map(|(path, values)| UninstallEntry {
            path,
            values: values
                .into_iter()
                .map(|(name, v)| (name.to_ascii_lowercase(), v))
                .collect(),
        })
        .collect();
    programs_from_entries(entries, Vec::new())
}

/// Parses `Get-ItemProperty ...\Uninstall\* | ConvertTo-Json` output (one object or an array).
pub fn parse_uninstall_json(bytes: &[u8]) -> Parsed<Vec<WindowsProgram>> {
    let mut warnings = Vec::new();
    let text = decode_windows_text(bytes, &mut warnings);
    let doc: Value = match serde_json::from_str(text.trim_start_matches('\u{feff}')) {
        Ok(v) => v,
        Err(e) => {
            warnings.push(format!("not JSON: {e}"));
            return Parsed {
                value: Vec::new(),
                warnings,
            };
        }
    };
    let items = match doc {
        Value::Array(a) => a,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            warnings.push("JSON is neither an object nor an array".into());
            Vec::new()
        }
    };
    let mut entries = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(map) = item else {
            warnings.push(format!("item #{i} is not an object"));
            continue;
        };
        let path = map
            .get("PSPath")
            .and_then(Value::as_str)
            .map(|p| p.rsplit_once("::").map_or(p, |(_, r)| r).to_string())
            .unwrap_or_default();
        let values = map
            .into_iter()
            .filter_map(|(k, v)| {
                let v = match v {
                    Value::String(s) => RegValue::Str(s),
                    Value::Number(n) => RegValue::Dword(n.as_u64()?.try_into().ok()?),
                    _ => RegValue::Other,
                };
                Some((k.to_ascii_lowercase(), v))
            })
            .collect();
        entries.push(UninstallEntry { path, values });
    }
    programs_from_entries(entries, warnings)
}

/// Applies Windows' own listing rules: no DisplayName → not listed; SystemComponent=1 →
/// hidden; ParentDisplayName or an update ReleaseType → an update of another program.
fn programs_from_entries(
    entries: Vec<UninstallEntry>,
    mut warnings: Vec<String>,
) -> Parsed<Vec<WindowsProgram>> {
    let mut value = Vec::new();
    for e in entries {
        let upper = e.path.to_ascii_uppercase();
        let Some(pos) = upper.find("\\MICROSOFT\\WINDOWS\\CURRENTVERSION\\UNINSTALL\\") else {
            continue; // The Uninstall key itself, or an unrelated key.
        };
        let key = &e.path[pos + "\\MICROSOFT\\WINDOWS\\CURRENTVERSION\\UNINSTALL\\".len()..];
        if key.is_empty() || key.contains('\\') {
            continue; // A subkey of an entry (some installers keep data there).
        }
        let get = |k: &str| e.values.get(k).and_then(RegValue::as_str);
        let Some(display_name) = get("displayname") else {
            continue;
        };
        if e.values.get("systemcomponent").and_then(RegValue::as_u32) == Some(1) {
            continue;
        }
        if get("parentdisplayname").is_some()
            || get("releasetype").is_some_and(|r| {
                let r = r.to_ascii_lowercase();
                r.contains("update") || r == "hotfix"
            })
        {
            continue;
        }
        let (scope, user_sid) = if upper.starts_with("HKEY_USERS\\") {
            let sid = e.path["HKEY_USERS\\".len()..].split('\\').next();
            ("user", sid.map(str::to_string))
        } else if upper.starts_with("HKEY_CURRENT_USER") || upper.starts_with("HKCU") {
            ("user", None)
        } else if upper.contains("\\WOW6432NODE\\") {
            ("machine_32bit", None)
        } else {
            ("machine", None)
        };
        let install_date = get("installdate").map(|d| {
            NaiveDate::parse_from_str(d, "%Y%m%d")
                .map(|d| d.to_string())
                .unwrap_or_else(|_| d.to_string())
        });
        if display_name.chars().any(char::is_control) {
            warnings.push(format!("{key}: DisplayName has control characters"));
        }
        value.push(WindowsProgram {
            key: key.to_string(),
            display_name: display_name.to_string(),
            display_version: get("displayversion").map(str::to_string),
            publisher: get("publisher").map(str::to_string),
            install_date,
            install_location: get("installlocation").map(str::to_string),
            scope,
            user_sid,
        });
    }
    Parsed { value, warnings }
}
