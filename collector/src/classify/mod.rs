//! Collector side: classifies software and executable events against the policy's
//! `software` section and a built-in catalogue of filter-bypass tools, deciding who must
//! know (network manager, DSL). Pure: no I/O, no dependency on the agent.
pub mod fleet;
pub mod fleet_store;

use caretaker_proto::policy::software::{NamePattern, SoftwarePolicy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// Why a catalogue of bypass tools cannot be used (for the built-in one, a build defect).
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("catalogue is not valid: {0}")]
    Syntax(#[source] serde_json::Error),
    #[error("catalogue entry {name:?} has no reason")]
    NoReason { name: String },
    #[error("catalogue entry {name:?} has no patterns")]
    NoPatterns { name: String },
    #[error("catalogue entry {name:?}: {pattern:?}: {reason}")]
    Pattern {
        name: String,
        pattern: String,
        reason: String,
    },
}

/// Why a policy's software lists cannot become a classifier.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The software section fails the policy's own checks.
    #[error(transparent)]
    Policy(#[from] caretaker_proto::policy::software::SoftwareError),
    /// An approved or denied name is not a usable pattern.
    #[error("{0}")]
    Pattern(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    Approved,
    Unapproved,
    Denied,
    BypassTool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    NetworkManager,
    Dsl,
}

/// The outcome for one product (or one executable) in one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub name: String,
    pub source: String,
    pub classification: Classification,
    pub severity: Severity,
    pub audience: Vec<Audience>,
    /// The policy pattern or catalogue entry that decided it, if any.
    pub matched: Option<String>,
    /// For bypass tools: the catalogue's category and plain-language reason.
    pub category: Option<String>,
    pub reason: Option<String>,
}

/// One kind of filter-bypass tool in the catalogue.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogueEntry {
    pub name: String,
    pub category: String,
    pub reason: String,
    #[serde(rename = "patterns")]
    pattern_text: Vec<String>,
    #[serde(skip)]
    patterns: Vec<NamePattern>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Catalogue {
    entries: Vec<CatalogueEntry>,
}

const BUILTIN_CATALOGUE: &str = include_str!("catalogue.json");

impl Catalogue {
    /// The catalogue compiled into the collector (`catalogue.json`).
    pub fn builtin() -> &'static Catalogue {
        static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
        CATALOGUE.get_or_init(|| {
            // The file is compiled in and checked by a unit test, so failure here is a
            // build defect, not a runtime condition.
            Catalogue::from_json(BUILTIN_CATALOGUE).expect("built-in catalogue is valid")
        })
    }

    pub fn from_json(text: &str) -> Result<Catalogue, CatalogueError> {
        let mut cat: Catalogue = serde_json::from_str(text).map_err(CatalogueError::Syntax)?;
        for e in &mut cat.entries {
            if e.reason.trim().is_empty() {
                return Err(CatalogueError::NoReason {
                    name: e.name.clone(),
                });
            }
            if e.pattern_text.is_empty() {
                return Err(CatalogueError::NoPatterns {
                    name: e.name.clone(),
                });
            }
            e.patterns = e
                .pattern_text
                .iter()
                .map(|p| {
                    NamePattern::new(p).map_err(|err| CatalogueError::Pattern {
                        name: e.name.clone(),
                        pattern: p.clone(),
                        reason: err.to_string(),
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(cat)
    }

    pub fn entries(&self) -> &[CatalogueEntry] {
        &self.entries
    }

    /// The entry and pattern matching any of the names.
    fn lookup(&self, names: &[&str]) -> Option<(&CatalogueEntry, &NamePattern)> {
        self.entries.iter().find_map(|e| {
            e.patterns
                .iter()
                .find(|p| names.iter().any(|n| p.matches(n)))
                .map(|p| (e, p))
        })
    }
}

/// The policy's lists, compiled, plus the catalogue.
#[derive(Debug, Clone)]
pub struct Classifier {
    approved: Vec<NamePattern>,
    denied: Vec<NamePattern>,
    catalogue: &'static Catalogue,
}

fn compile(list: &[String]) -> Result<Vec<NamePattern>, ClassifierError> {
    list.iter()
        .map(|p| NamePattern::new(p).map_err(|e| ClassifierError::Pattern(e.to_string())))
        .collect()
}

impl Classifier {
    pub fn new(policy: &SoftwarePolicy) -> Result<Classifier, ClassifierError> {
        Self::with_catalogue(policy, Catalogue::builtin())
    }

    pub fn with_catalogue(
        policy: &SoftwarePolicy,
        catalogue: &'static Catalogue,
    ) -> Result<Classifier, ClassifierError> {
        policy
            .validate()
            .map_err(ClassifierError::Policy)?;
        Ok(Classifier {
            approved: compile(&policy.approved)?,
            denied: compile(&policy.denied)?,
            catalogue,
        })
    }

    /// Classifies one product. Order, most specific first:
    /// 1. an exact (non-glob) approval: the school knowingly allowed this product, even
    ///    if it is in the bypass catalogue (a staff VPN, say);
    /// 2. the bypass catalogue: a broad glob approval such as `*` must not hide Tor;
    /// 3. the denied list;
    /// 4. glob approvals;
    /// 5. otherwise unapproved.
    pub fn classify(&self, name: &str, source: &str) -> Verdict {
        // Flatpak IDs are reverse-DNS (`com.anydesk.Anydesk`); the last segment is the
        // product name people write in lists.
        let short = (source == "flatpak")
            .then(|| name.rsplit('.').next())
            .flatten()
            .filter(|s| *s != name);
        let names: Vec<&str> = std::iter::once(name).chain(short).collect();
        let find = |list: &[NamePattern], exact: Option<bool>| {
            list.iter()
                .find(|p| {
                    exact.is_none_or(|e| p.is_exact() == e) && names.iter().any(|n| p.matches(n))
                })
                .map(|p| p.as_str().to_string())
        };
        let verdict = |classification, matched, category: Option<&str>, reason: Option<&str>| {
            let (severity, audience) = match classification {
                Classification::BypassTool => (
                    Severity::High,
                    vec![Audience::Dsl, Audience::NetworkManager],
                ),
                Classification::Denied => (Severity::Medium, vec![Audience::NetworkManager]),
                Classification::Unapproved => (Severity::Low, vec![Audience::NetworkManager]),
                Classification::Approved => (Severity::Info, vec![]),
            };
            Verdict {
                name: name.to_string(),
                source: source.to_string(),
                classification,
                severity,
                audience,
                matched,
                category: category.map(str::to_string),
                reason: reason.map(str::to_string),
            }
        };
        if let Some(p) = find(&self.approved, Some(true)) {
            return verdict(Classification::Approved, Some(p), None, None);
        }
        if let Some((entry, p)) = self.catalogue.lookup(&names) {
            return verdict(
                Classification::BypassTool,
                Some(format!("catalogue: {} ({})", entry.name, p.as_str())),
                Some(&entry.category),
                Some(&entry.reason),
            );
        }
        if let Some(p) = find(&self.denied, None) {
            return verdict(Classification::Denied, Some(p), None, None);
        }
        if let Some(p) = find(&self.approved, Some(false)) {
            return verdict(Classification::Approved, Some(p), None, None);
        }
        verdict(Classification::Unapproved, None, None, None)
    }

    /// Classifies an event from the software probe. `software.installed`/`upgraded` give
    /// one verdict; `software.inventory` one per item; `software.removed` one verdict kept
    /// for the record (removal restores compliance, so severity info and nobody told);
    /// `executable.in_user_area` one, by file name (an executable in a user's area is never
    /// simply approved by its absence from lists). Other kinds: none.
    pub fn classify_event(&self, kind: &str, details: &Map<String, Value>) -> Vec<Verdict> {
        let text = |k: &str| details.get(k).and_then(Value::as_str);
        match kind {
            "software.installed" | "software.upgraded" => match (text("name"), text("source")) {
                (Some(n), Some(s)) => vec![self.classify(n, s)],
                _ => vec![],
            },
            "software.removed" => match (text("name"), text("source")) {
                (Some(n), Some(s)) => {
                    let mut v = self.classify(n, s);
                    v.severity = Severity::Info;
                    v.audience.clear();
                    vec![v]
                }
                _ => vec![],
            },
            "software.inventory" => inventory_names(details)
                .map(|(source, name)| self.classify(name, source))
                .collect(),
            "executable.in_user_area" => {
                let Some(path) = text("path") else {
                    return vec![];
                };
                let file = path.rsplit('/').next().unwrap_or(path);
                let stem = strip_executable_extension(file);
                vec![self.classify(stem, "executable")]
            }
            _ => vec![],
        }
    }
}

/// `(source, name)` of every item in a `software.inventory` event's compact list.
pub fn inventory_names(details: &Map<String, Value>) -> impl Iterator<Item = (&str, &str)> {
    details
        .get("items")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.iter())
        .flat_map(|(source, rows)| {
            rows.as_array()
                .into_iter()
                .flatten()
                .filter_map(move |row| Some((source.as_str(), row.get(0)?.as_str()?)))
        })
}

fn strip_executable_extension(file: &str) -> &str {
    for ext in [".appimage", ".exe", ".msi", ".sh", ".run", ".bin"] {
        // `get`, not a slice: a pupil's file name may end in a character longer than a byte
        // (`game🙂`), and a panic here would end the device's stream on every resend.
        if file.len() > ext.len()
            && file
                .get(file.len() - ext.len()..)
                .is_some_and(|e| e.eq_ignore_ascii_case(ext))
        {
            return &file[..file.len() - ext.len()];
        }
    }
    file
}

#[cfg(test)]
mod tests;
