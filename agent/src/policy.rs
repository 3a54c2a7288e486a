//! The agent's copy of the school policy: the last version received, kept on disk so enforcement continues offline.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use caretaker_proto::policy::{PolicyDocument, PolicyError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Serialize, Deserialize)]
struct Cached {
    version: u64,
    document: serde_json::Value,
}

/// Shared handle to the current policy.
#[derive(Clone)]
pub struct PolicyCache {
    path: PathBuf,
    version: Arc<AtomicU64>,
    tx: Arc<watch::Sender<Arc<PolicyDocument>>>,
}

impl PolicyCache {
    /// Loads the cached policy, or the built-in default if there is none (or it is unreadable).
    pub fn load(path: PathBuf) -> Self {
        let (version, doc) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Cached>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    PolicyDocument::parse_lenient(&c.document.to_string())
                        .map(|d| (c.version, d))
                        .map_err(|e| e.to_string())
                }) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "Cached policy is unreadable; using the built-in default until the collector sends one");
                    (0, PolicyDocument::default())
                }
            },
            Err(_) => (0, PolicyDocument::default()),
        };
        Self {
            path,
            version: Arc::new(AtomicU64::new(version)),
            tx: Arc::new(watch::Sender::new(Arc::new(doc))),
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicyDocument>> {
        self.tx.subscribe()
    }

    /// Applies a version from the collector. A document this agent cannot read is refused and the old one kept.
    pub fn apply(&self, version: u64, json: &str) -> Result<(), PolicyError> {
        if version <= self.version() {
            return Ok(());
        }
        let doc = PolicyDocument::parse_lenient(json)?;
        // Kept as the collector sent it, sections this agent does not know included, so an
        // upgraded agent finds them in its cache.
        let document: serde_json::Value =
            serde_json::from_str(json).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        let bytes = serde_json::to_vec(&Cached { version, document }).expect("serialises");
        if let Err(e) = crate::state::write_atomic(&self.path, &bytes, 0o644) {
            // Still enforce it now; it will be re-sent on the next connection.
            tracing::warn!(error = %e, "Could not save the policy to disk");
        }
        self.version.store(version, Ordering::Relaxed);
        self.tx.send_replace(Arc::new(doc));
        tracing::info!(version, "Policy applied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_policy_survives_restart_and_bad_ones_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("policy.json");
        let c = PolicyCache::load(p.clone());
        assert_eq!(c.version(), 0);
        c.apply(3, r#"{"description":"v3"}"#).unwrap();
        assert!(c.apply(4, r#"{"description": 7}"#).is_err());
        let again = PolicyCache::load(p);
        assert_eq!(again.version(), 3);
        assert_eq!(again.subscribe().borrow().description, "v3");
    }
}
