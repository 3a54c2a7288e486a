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
    #[error("invalid policy: {0}")]
    Invalid(String),
}

impl PolicyDocument {
    /// Parses and validates a document from the network manager, refusing unknown fields.
    pub fn parse_strict(value: &serde_json::Value) -> Result<Self, PolicyError> {
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
            return Err(PolicyError::Invalid(
                "description is longer than 1000 characters".into(),
            ));
        }
        self.screen_lock.validate().map_err(PolicyError::Invalid)?;
        self.antivirus.validate().map_err(PolicyError::Invalid)?;
        self.software.validate().map_err(PolicyError::Invalid)?;
        self.removable_media
            .validate()
            .map_err(PolicyError::Invalid)?;
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
    fn lenient_parsing_ignores_newer_sections() {
        let doc = PolicyDocument::parse_lenient(r#"{"description":"d","future":{}}"#).unwrap();
        assert_eq!(doc.description, "d");
    }
}
