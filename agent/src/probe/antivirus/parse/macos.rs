//! macOS's format: XProtect's `Info.plist`, and the XProtect product built from it.

use chrono::{DateTime, Utc};

use super::{Parsed, ProductReport};

#[derive(Debug, Clone, PartialEq)]
pub struct XProtectInfo {
    pub version: String,
    pub bundle_version: Option<String>,
}

/// Finds `<key>NAME</key>` followed by `<string>VALUE</string>` in an XML property list.
fn plist_string(text: &str, key: &str) -> Option<String> {
    let marker = format!("<key>{key}</key>");
    let after = &text[text.find(&marker)? + marker.len()..];
    let after = after.trim_start();
    let value = after.strip_prefix("<string>")?;
    let end = value.find("</string>")?;
    let raw = value[..end].trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Reads XProtect's `Info.plist` (XML form). Binary plists are reported, not decoded: the
/// macOS backend can convert them with `plutil -convert xml1` first.
pub fn parse_xprotect_plist(bytes: &[u8]) -> Parsed<XProtectInfo> {
    if bytes.starts_with(b"bplist") {
        return Parsed::fail("XProtect Info.plist is a binary plist; convert it to XML first");
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Parsed::fail("XProtect Info.plist is not UTF-8");
    };
    match plist_string(text, "CFBundleShortVersionString").filter(|v| !v.is_empty()) {
        Some(version) => Parsed {
            value: Some(XProtectInfo {
                version,
                bundle_version: plist_string(text, "CFBundleVersion"),
            }),
            warnings: Vec::new(),
        },
        None => Parsed::fail("XProtect Info.plist has no CFBundleShortVersionString"),
    }
}

/// XProtect has no build time of its own in the plist: the backend passes the bundle's
/// modification time (when the update was installed) as the best available stand-in.
pub fn xprotect_product(info: &XProtectInfo, installed_at: Option<DateTime<Utc>>) -> ProductReport {
    let mut p = ProductReport::named("XProtect");
    p.signature_version = Some(info.version.clone());
    p.signatures_built_at = installed_at;
    if installed_at.is_none() {
        p.notes.push("XProtect install time unknown".into());
    }
    p
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::antivirus::decide::{AvStatus, assess_product};
    use crate::probe::antivirus::parse::fixtures::{fixture, t};

    const OBSERVED: &str = "2026-11-23T10:00:00Z";

    // --- XProtect ---

    #[test]
    fn xprotect_plist() {
        let parsed = parse_xprotect_plist(&fixture("xprotect-Info.plist"));
        assert_eq!(parsed.warnings, Vec::<String>::new());
        let info = parsed.value.unwrap();
        assert_eq!(
            info,
            XProtectInfo {
                version: "5272".into(),
                bundle_version: Some("5272".into())
            }
        );
        let p = xprotect_product(&info, Some(t("2026-11-20T10:00:00Z")));
        assert_eq!(p.signature_version.as_deref(), Some("5272"));
        assert_eq!(assess_product(&p, 72, t(OBSERVED)).0, AvStatus::Current);
        let p = xprotect_product(&info, None);
        assert_eq!(
            assess_product(&p, 72, t(OBSERVED)),
            (
                AvStatus::Unknown,
                "signature build time unknown (XProtect install time unknown)".into()
            )
        );
    }

    #[test]
    fn xprotect_malformed() {
        assert_eq!(
            parse_xprotect_plist(&fixture("xprotect-malformed.plist")),
            Parsed::fail("XProtect Info.plist has no CFBundleShortVersionString")
        );
        assert_eq!(
            parse_xprotect_plist(b"bplist00\xd1\x01\x02"),
            Parsed::fail("XProtect Info.plist is a binary plist; convert it to XML first")
        );
        assert_eq!(
            parse_xprotect_plist(b"\xff\xfe<plist>"),
            Parsed::fail("XProtect Info.plist is not UTF-8")
        );
    }
}
