//! Flatpak deployments (metainfo versions, the `current` link) and snapd's `/v2/snaps`
//! replies, including the HTTP framing around them.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Parsed;

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

/// Why bytes are not an HTTP/1.x response `split_http_response` can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpResponseError {
    #[error("no end of HTTP headers")]
    NoHeaderEnd,
    #[error("bad HTTP status line")]
    BadStatusLine,
    #[error("truncated chunk size")]
    TruncatedChunkSize,
    /// The chunk-size line as received.
    #[error("bad chunk size {0:?}")]
    BadChunkSize(String),
    #[error("truncated chunk")]
    TruncatedChunk,
}

/// Splits a raw HTTP/1.x response into status code and body, undoing chunked encoding.
pub fn split_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), HttpResponseError> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpResponseError::NoHeaderEnd)?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = &raw[head_end + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or(HttpResponseError::BadStatusLine)?;
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
            .ok_or(HttpResponseError::TruncatedChunkSize)?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| HttpResponseError::BadChunkSize(size_text.to_string()))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size {
            return Err(HttpResponseError::TruncatedChunk);
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
