//! The policy document: what the school wants enforced, versioned by the collector and cached by agents.
//!
//! The collector parses strictly (an unknown field is a typo the network
//! manager should hear about); agents parse leniently, so an older agent keeps
//! working when a newer collector adds a section. Later features add their own
//! sections here.

pub mod antivirus;
pub mod removable_media;
pub mod screen_lock;
pub mod software;

pub use antivirus::AntivirusPolicy;
pub use removable_media::RemovableMediaPolicy;
pub use screen_lock::{SchoolHours, ScreenLockPolicy, parse_day, parse_hhmm};
pub use software::SoftwarePolicy;

use serde::{Deserialize, Serialize};

/// The whole policy document, as stored and pushed to agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyDocument {
    /// A free-text description shown in the dashboard.
    pub description: String,
    pub screen_lock: ScreenLockPolicy,
    pub antivirus: AntivirusPolicy,
    pub software: SoftwarePolicy,
    pub removable_media: RemovableMediaPolicy,
}

impl Default for PolicyDocument {
    fn default() -> Self {
        Self {
            description: "Caretaker default policy".to_string(),
            screen_lock: ScreenLockPolicy::default(),
            antivirus: AntivirusPolicy::default(),
            software: SoftwarePolicy::default(),
            removable_media: RemovableMediaPolicy::default(),
        }
    }
}

/// Why a policy document was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy does not fit the schema at {0}")]
    Syntax(String),
    #[error("unknown policy field `{0}`")]
    UnknownField(String),
    #[error("invalid policy: description is longer than 1000 characters")]
    DescriptionTooLong,
    #[error("invalid policy: {0}")]
    ScreenLock(#[from] screen_lock::ScreenLockError),
    #[error("invalid policy: {0}")]
    Antivirus(#[from] antivirus::AntivirusError),
    #[error("invalid policy: {0}")]
    Software(#[from] software::SoftwareError),
    #[error("invalid policy: {0}")]
    RemovableMedia(#[from] removable_media::RemovableMediaError),
    #[error("policy too large: {0}")]
    TooLarge(String),
}

/// The largest policy document the collector accepts, as compact JSON. The shipped default is
/// under 2 KiB and a trust's full lists (a few hundred approved programs, every staff USB
/// stick) stay well under this; every version is stored, pushed to every connected laptop and
/// kept in each agent's memory, so an unbounded document multiplies across the fleet.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
/// The most entries any one list in the policy may hold (approved or denied programs, USB
/// serials, permissions, locker commands ...).
pub const MAX_LIST_ENTRIES: usize = 2_000;

/// Refuses a document beyond the size and list bounds, naming the list.
fn check_bounds(value: &serde_json::Value) -> Result<(), PolicyError> {
    fn walk(v: &serde_json::Value, path: &mut String) -> Result<(), PolicyError> {
        match v {
            serde_json::Value::Array(items) => {
                if items.len() > MAX_LIST_ENTRIES {
                    return Err(PolicyError::TooLarge(format!(
                        "{path} has {} entries; at most {MAX_LIST_ENTRIES} are allowed",
                        items.len()
                    )));
                }
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, path)?;
                    path.truncate(len);
                }
            }
            serde_json::Value::Object(fields) => {
                for (name, field) in fields {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(name);
                    walk(field, path)?;
                    path.truncate(len);
                }
            }
            _ => {}
        }
        Ok(())
    }
    // Lists first: "software.approved has 150000 entries" says more than a byte count.
    walk(value, &mut String::new())?;
    let bytes = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge(format!(
            "the document is {bytes} bytes as JSON; at most {MAX_POLICY_BYTES} are allowed"
        )));
    }
    Ok(())
}

impl PolicyDocument {
    /// Parses and validates a document from the network manager, refusing unknown fields and
    /// anything beyond `MAX_POLICY_BYTES` or `MAX_LIST_ENTRIES`.
    pub fn parse_strict(value: &serde_json::Value) -> Result<Self, PolicyError> {
        // Before anything is built from it: a huge document costs memory to parse.
        check_bounds(value)?;
        // First pass names the path of any type error ("screen_lock.idle_timeout_secs: ...").
        serde_path_to_error::deserialize::<_, PolicyDocument>(value)
            .map_err(|e| PolicyError::Syntax(format!("{}: {}", e.path(), e.inner())))?;
        let mut unknown = Vec::new();
        let doc: PolicyDocument = serde_ignored::deserialize(value, |path| {
            unknown.push(path.to_string());
        })
        .map_err(|e| PolicyError::Syntax(e.to_string()))?;
        if let Some(field) = unknown.into_iter().next() {
            return Err(PolicyError::UnknownField(field));
        }
        doc.validate()?;
        Ok(doc)
    }

    /// Parses a document received from the collector, ignoring sections this agent does not know.
    pub fn parse_lenient(json: &str) -> Result<Self, PolicyError> {
        let doc: PolicyDocument =
            serde_json::from_str(json).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks the ranges and relations serde cannot express.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.description.len() > 1000 {
            return Err(PolicyError::DescriptionTooLong);
        }
        self.screen_lock.validate()?;
        self.antivirus.validate()?;
        self.software.validate()?;
        self.removable_media.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_parsing_names_the_unknown_field() {
        let err = PolicyDocument::parse_strict(&json!({"descripton": "typo"})).unwrap_err();
        assert_eq!(err.to_string(), "unknown policy field `descripton`");
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = PolicyDocument::parse_strict(&json!({"description": 5})).unwrap_err();
        assert!(
            err.to_string().contains("description: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn a_list_beyond_the_bound_is_refused_by_name() {
        let names: Vec<String> = (0..=MAX_LIST_ENTRIES).map(|i| format!("p{i}")).collect();
        let err =
            PolicyDocument::parse_strict(&json!({"software": {"approved": names}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "policy too large: software.approved has {} entries; at most {MAX_LIST_ENTRIES} are allowed",
                MAX_LIST_ENTRIES + 1
            )
        );
        let full: Vec<String> = (0..MAX_LIST_ENTRIES).map(|i| format!("p{i}")).collect();
        assert!(PolicyDocument::parse_strict(&json!({"software": {"approved": full}})).is_ok());
    }

    #[test]
    fn a_document_beyond_the_byte_bound_is_refused() {
        let long = "x".repeat(200);
        let names: Vec<String> = (0..1500).map(|i| format!("{long}{i}")).collect();
        let err =
            PolicyDocument::parse_strict(&json!({"software": {"denied": names}})).unwrap_err();
        assert!(
            err.to_string().contains("at most 262144 are allowed"),
            "{err}"
        );
    }

    #[test]
    fn lenient_parsing_ignores_newer_sections() {
        let doc = PolicyDocument::parse_lenient(r#"{"description":"d","future":{}}"#).unwrap();
        assert_eq!(doc.description, "d");
    }
}
