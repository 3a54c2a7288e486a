//! dpkg's status database (which packages are present) and apt's history log (who asked
//! for each change).

use chrono::NaiveDateTime;

use super::{Parsed, truncate};

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
