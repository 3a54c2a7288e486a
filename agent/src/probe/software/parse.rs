//! Pure interpretation of what the software probe reads: dpkg's status database, apt's
//! history log, Flatpak deployment files, snapd replies, file magic, /etc/passwd, and the
//! Windows Uninstall registry entries (`reg export` text and PowerShell JSON). No I/O here;
//! every parser returns what it could read plus warnings and never fails outright.
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;

/// What a parser could read, and what it had to skip.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed<T> {
    pub value: T,
    pub warnings: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// dpkg

/// One package dpkg considers present on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpkgPackage {
    pub name: String,
    pub version: String,
    pub architecture: Option<String>,
}

/// Status words (third word of `Status:`) under which the package's files are on disk.
/// Transitional states count as present so that an upgrade read mid-run (unpacked,
/// half-configured) is not reported as a removal followed by an install.
const PRESENT_STATES: &[&str] = &[
    "installed",
    "triggers-pending",
    "triggers-awaited",
    "half-configured",
    "unpacked",
    "half-installed",
];

/// Parses `/var/lib/dpkg/status`: stanzas separated by blank lines. Returns the packages
/// whose files are present (not `not-installed`, not `config-files`).
pub fn parse_dpkg_status(text: &str) -> Parsed<Vec<DpkgPackage>> {
    let mut out = Parsed::default();
    let mut fields: Vec<(&str, &str)> = Vec::new();
    let mut stanza_line = 1;
    let lines = text.lines().chain(std::iter::once(""));
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            if !fields.is_empty() {
                dpkg_stanza(&fields, stanza_line, &mut out);
                fields.clear();
            }
            stanza_line = i + 2;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Continuation of a multi-line field (Description, Conffiles): nothing we use.
            continue;
        }
        match line.split_once(':') {
            Some((k, v)) if !k.is_empty() && !k.contains(' ') => fields.push((k, v.trim())),
            _ => out
                .warnings
                .push(format!("line {}: not a field: {:?}", i + 1, truncate(line))),
        }
    }
    out
}

fn dpkg_stanza(fields: &[(&str, &str)], line: usize, out: &mut Parsed<Vec<DpkgPackage>>) {
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    };
    let Some(name) = get("Package").filter(|n| !n.is_empty()) else {
        out.warnings
            .push(format!("stanza at line {line}: no Package field, skipped"));
        return;
    };
    let Some(status) = get("Status") else {
        out.warnings.push(format!(
            "stanza at line {line} ({name}): no Status field, skipped"
        ));
        return;
    };
    let words: Vec<&str> = status.split_whitespace().collect();
    if words.len() != 3 {
        out.warnings.push(format!(
            "stanza at line {line} ({name}): malformed Status {status:?}, skipped"
        ));
        return;
    }
    if !PRESENT_STATES.contains(&words[2]) {
        return;
    }
    let Some(version) = get("Version").filter(|v| !v.is_empty()) else {
        out.warnings.push(format!(
            "stanza at line {line} ({name}): no Version, skipped"
        ));
        return;
    };
    out.value.push(DpkgPackage {
        name: name.to_string(),
        version: version.to_string(),
        architecture: get("Architecture").map(str::to_string),
    });
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

// ---------------------------------------------------------------------------------------
// apt history

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AptActionKind {
    Install,
    Reinstall,
    Upgrade,
    Downgrade,
    Remove,
    Purge,
}

impl AptActionKind {
    fn from_key(key: &str) -> Option<Self> {
        Some(match key {
            "Install" => Self::Install,
            "Reinstall" => Self::Reinstall,
            "Upgrade" => Self::Upgrade,
            "Downgrade" => Self::Downgrade,
            "Remove" => Self::Remove,
            "Purge" => Self::Purge,
            _ => return None,
        })
    }

    pub fn is_removal(self) -> bool {
        matches!(self, Self::Remove | Self::Purge)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptAction {
    pub kind: AptActionKind,
    pub package: String,
    pub architecture: Option<String>,
    /// The version after the action (for removals: the version removed).
    pub version: Option<String>,
    /// For upgrades and downgrades, the version before.
    pub previous_version: Option<String>,
}

/// Who asked apt to act: recorded when apt runs under sudo or pkexec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRequester {
    pub user: String,
    pub uid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AptTransaction {
    /// Local time, as apt writes it.
    pub start: Option<NaiveDateTime>,
    pub commandline: Option<String>,
    pub requested_by: Option<AptRequester>,
    pub actions: Vec<AptAction>,
}

/// Parses `/var/log/apt/history.log`: blank-line separated transactions.
pub fn parse_apt_history(text: &str) -> Parsed<Vec<AptTransaction>> {
    let mut out: Parsed<Vec<AptTransaction>> = Parsed::default();
    let mut current: Option<AptTransaction> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(": ") else {
            out.warnings
                .push(format!("line {}: not a field: {:?}", i + 1, truncate(line)));
            continue;
        };
        let value = value.trim();
        if key == "Start-Date" {
            if let Some(t) = current.take() {
                out.value.push(t);
            }
            let start = parse_apt_date(value);
            if start.is_none() {
                out.warnings
                    .push(format!("line {}: bad Start-Date {value:?}", i + 1));
            }
            current = Some(AptTransaction {
                start,
                ..Default::default()
            });
            continue;
        }
        let Some(t) = current.as_mut() else {
            out.warnings
                .push(format!("line {}: {key} outside a transaction", i + 1));
            continue;
        };
        match key {
            "Commandline" => t.commandline = Some(value.to_string()),
            "Requested-By" => t.requested_by = Some(parse_requester(value)),
            "End-Date" | "Error" => {}
            // Other fields (added by newer apt versions) are ignored.
            _ => {
                if let Some(kind) = AptActionKind::from_key(key) {
                    for item in split_apt_packages(value) {
                        match parse_apt_package(kind, item) {
                            Some(a) => t.actions.push(a),
                            None => out.warnings.push(format!(
                                "line {}: bad package entry {:?}",
                                i + 1,
                                truncate(item)
                            )),
                        }
                    }
                }
            }
        }
    }
    if let Some(t) = current {
        out.value.push(t);
    }
    out
}

fn parse_apt_date(s: &str) -> Option<NaiveDateTime> {
    let norm = s.split_whitespace().collect::<Vec<_>>().join(" ");
    NaiveDateTime::parse_from_str(&norm, "%Y-%m-%d %H:%M:%S").ok()
}

fn parse_requester(s: &str) -> AptRequester {
    // "alice (1000)"
    if let Some((user, rest)) = s.rsplit_once(" (") {
        let uid = rest.trim_end_matches(')').trim().parse().ok();
        return AptRequester {
            user: user.trim().to_string(),
            uid,
        };
    }
    AptRequester {
        user: s.to_string(),
        uid: None,
    }
}

/// Splits `a:amd64 (1.0), b:amd64 (2.0, automatic)` at the commas between entries.
fn split_apt_packages(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = s[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

fn parse_apt_package(kind: AptActionKind, item: &str) -> Option<AptAction> {
    let (pkg, rest) = match item.split_once(" (") {
        Some((p, r)) => (p.trim(), Some(r.strip_suffix(')')?)),
        None => (item.trim(), None),
    };
    if pkg.is_empty() || pkg.contains(' ') {
        return None;
    }
    let (package, architecture) = match pkg.split_once(':') {
        Some((n, a)) => (n.to_string(), Some(a.to_string())),
        None => (pkg.to_string(), None),
    };
    let versions: Vec<&str> = rest
        .map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|v| *v != "automatic" && !v.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let (version, previous_version) = match (kind, versions.as_slice()) {
        (AptActionKind::Upgrade | AptActionKind::Downgrade, [old, new, ..]) => {
            (Some(new.to_string()), Some(old.to_string()))
        }
        (_, [v, ..]) => (Some(v.to_string()), None),
        (_, []) => (None, None),
    };
    Some(AptAction {
        kind,
        package,
        architecture,
        version,
        previous_version,
    })
}

/// The apt transaction that most plausibly caused this change: the latest one, started no
/// earlier than `not_before` (local time), with a matching action for the package (and the
/// version, when both are known). Removals only match removals, installs only installs.
pub fn attribute_apt<'a>(
    history: &'a [AptTransaction],
    package: &str,
    version: Option<&str>,
    removal: bool,
    not_before: NaiveDateTime,
) -> Option<&'a AptTransaction> {
    history.iter().rev().find(|t| {
        t.start.is_some_and(|s| s >= not_before)
            && t.actions.iter().any(|a| {
                a.package == package
                    && a.kind.is_removal() == removal
                    && match (version, a.version.as_deref()) {
                        (Some(v), Some(av)) => v == av,
                        _ => true,
                    }
            })
    })
}

// ---------------------------------------------------------------------------------------
// Flatpak

/// The version from an AppStream metainfo file: the first `<release version="...">`, which
/// by AppStream convention is the newest.
pub fn parse_metainfo_version(xml: &str) -> Option<String> {
    let start = xml.find("<release ")?;
    let tag_end = xml[start..].find('>')? + start;
    let tag = &xml[start..tag_end];
    let attr = tag.find("version=")? + "version=".len();
    let rest = &tag[attr..];
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let value = &rest[1..];
    let end = value.find(quote)?;
    let v = value[..end].trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// What version to report for a Flatpak app: its release version where the app ships
/// AppStream data, otherwise the branch and deployed commit, which still change on update.
pub fn flatpak_version(metainfo_version: Option<String>, branch: &str, commit: &str) -> String {
    metainfo_version.unwrap_or_else(|| {
        let short: String = commit.chars().take(12).collect();
        format!("{branch}@{short}")
    })
}

/// Splits the target of the `current` link (`x86_64/stable`) into architecture and branch.
pub fn parse_flatpak_current(target: &str) -> Option<(String, String)> {
    let (arch, branch) = target.trim_end_matches('/').split_once('/')?;
    (!arch.is_empty() && !branch.is_empty() && !branch.contains('/'))
        .then(|| (arch.to_string(), branch.to_string()))
}

// ---------------------------------------------------------------------------------------
// snapd

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    pub name: String,
    pub version: String,
    pub revision: Option<String>,
    pub install_date: Option<DateTime<Utc>>,
}

/// Splits a raw HTTP/1.x response into status code and body, undoing chunked encoding.
pub fn split_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = &raw[head_end + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("bad HTTP status line")?;
    let chunked = lines.any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
}

/// Parses snapd's `GET /v2/snaps` reply body.
pub fn parse_snapd_snaps(body: &[u8]) -> Parsed<Vec<SnapInfo>> {
    let mut out = Parsed::default();
    let doc: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            out.warnings.push(format!("snapd reply is not JSON: {e}"));
            return out;
        }
    };
    let Some(result) = doc.get("result").and_then(Value::as_array) else {
        let msg = doc
            .pointer("/result/message")
            .and_then(Value::as_str)
            .unwrap_or("no result list");
        out.warnings.push(format!("snapd reply: {msg}"));
        return out;
    };
    for (i, snap) in result.iter().enumerate() {
        let name = snap.get("name").and_then(Value::as_str);
        let version = snap.get("version").and_then(Value::as_str);
        let (Some(name), Some(version)) = (name, version) else {
            out.warnings
                .push(format!("snap #{i}: no name or version, skipped"));
            continue;
        };
        out.value.push(SnapInfo {
            name: name.to_string(),
            version: version.to_string(),
            revision: snap.get("revision").and_then(|r| match r {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }),
            install_date: snap
                .get("install-date")
                .and_then(Value::as_str)
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map(|d| d.with_timezone(&Utc)),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Executables in user areas

/// What kind of executable a file is, judged by its first bytes (and for scripts, the
/// execute bit; for MSI, the name, since OLE compound files are also old Office documents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutableType {
    Elf,
    /// AppImage type 1 or 2.
    AppImage(u8),
    WindowsExe,
    WindowsMsi,
    Script,
}

impl ExecutableType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Elf => "elf",
            Self::AppImage(_) => "appimage",
            Self::WindowsExe => "windows_exe",
            Self::WindowsMsi => "windows_msi",
            Self::Script => "script",
        }
    }
}

/// How many leading bytes [`detect_executable`] needs.
pub const MAGIC_LEN: usize = 16;

const OLE_MAGIC: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

pub fn detect_executable(
    head: &[u8],
    file_name: &str,
    executable_bit: bool,
) -> Option<ExecutableType> {
    if head.starts_with(b"\x7fELF") {
        return Some(match head.get(8..11) {
            Some([0x41, 0x49, t @ (1 | 2)]) => ExecutableType::AppImage(*t),
            _ => ExecutableType::Elf,
        });
    }
    if head.starts_with(b"MZ") {
        return Some(ExecutableType::WindowsExe);
    }
    if head.starts_with(&OLE_MAGIC) && file_name.to_ascii_lowercase().ends_with(".msi") {
        return Some(ExecutableType::WindowsMsi);
    }
    if head.starts_with(b"#!") && executable_bit {
        return Some(ExecutableType::Script);
    }
    None
}

/// A name and, where the file name carries one, a version for an AppImage:
/// `Obsidian-1.4.16-x86_64.AppImage` → (`Obsidian`, `1.4.16`).
pub fn appimage_name_version(file_name: &str) -> (String, Option<String>) {
    let mut stem = file_name;
    // `get`, not a slice: the last nine bytes of a user's file name may begin inside a character.
    if stem.len() > 9
        && stem
            .get(stem.len() - 9..)
            .is_some_and(|ext| ext.eq_ignore_ascii_case(".appimage"))
    {
        stem = &stem[..stem.len() - 9];
    }
    for arch in [
        "x86_64", "x86-64", "amd64", "x64", "aarch64", "arm64", "i386", "i686", "armhf",
    ] {
        for sep in ['-', '_', '.'] {
            if let Some(s) = stem.strip_suffix(arch).and_then(|s| s.strip_suffix(sep)) {
                stem = s;
            }
        }
    }
    let bytes = stem.as_bytes();
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if b != b'-' && b != b'_' {
            continue;
        }
        let rest = &stem[i + 1..];
        let digits = rest.strip_prefix(['v', 'V']).unwrap_or(rest);
        if digits.starts_with(|c: char| c.is_ascii_digit()) {
            return (stem[..i].to_string(), Some(digits.to_string()));
        }
    }
    (stem.to_string(), None)
}

// ---------------------------------------------------------------------------------------
// /etc/passwd

/// uid → user name, from passwd-format text.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            (!name.is_empty()).then(|| (uid, name.to_string()))
        })
        .collect()
}

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

#[derive(Debug, Clone, PartialEq)]
enum RegValue {
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

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
