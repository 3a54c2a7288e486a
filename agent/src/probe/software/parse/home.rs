//! What the software probe finds in home folders: an executable's kind by its first bytes,
//! an AppImage's name and version, and whose home is whose (/etc/passwd).

use std::collections::HashMap;

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
