//! Events as probes produce them, and the sink that carries them to the spool writer.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// One thing a probe saw, before the spool gives it a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Dotted kind, e.g. `antivirus.status`.
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    /// The logged-in user the event concerns.
    pub user: Option<String>,
    /// Kind-specific structured fields.
    pub details: Map<String, Value>,
}

impl NewEvent {
    /// An event happening now.
    pub fn now(kind: &str, user: Option<String>, details: Map<String, Value>) -> Self {
        let event = Self {
            kind: kind.to_string(),
            occurred_at: Utc::now(),
            user,
            details,
        };
        event.assert_in_inventory();
        event
    }

    /// In debug builds (every unit test, and the end-to-end tests, which run the debug
    /// binaries), an event whose kind, user or field is missing from the data inventory
    /// (`caretaker_proto::inventory`, rendered as PRIVACY.md) stops the test, so nothing new
    /// is collected without saying what it is and why. Release builds send it regardless.
    pub fn assert_in_inventory(&self) {
        #[cfg(debug_assertions)]
        if let Err(e) =
            caretaker_proto::inventory::check(&self.kind, self.user.is_some(), &self.details)
        {
            // A panic in a probe's task would end only that probe, which a test might not
            // notice; outside unit tests the whole debug agent stops.
            if cfg!(test) {
                panic!("{e}");
            }
            eprintln!("caretaker-agent (debug build): {e}");
            std::process::abort();
        }
    }

    /// An event of any kind, not checked against the inventory: for tests of the machinery
    /// (spool, uplink) that carries events without caring what they say.
    #[cfg(test)]
    pub fn unchecked(kind: &str, details: Map<String, Value>) -> Self {
        Self {
            kind: kind.to_string(),
            occurred_at: Utc::now(),
            user: None,
            details,
        }
    }
}

/// Where probes send events; the agent writes each to its durable spool.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<NewEvent>,
}

impl EventSink {
    pub fn new(tx: mpsc::Sender<NewEvent>) -> Self {
        Self { tx }
    }

    /// Sends an event to the spool writer; returns false if the agent is shutting down.
    pub async fn emit(&self, event: NewEvent) -> bool {
        self.tx.send(event).await.is_ok()
    }
}

/// Builds a details map from `key => value` pairs.
#[macro_export]
macro_rules! details {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_string(), serde_json::json!($v)); )*
        m
    }};
}

#[cfg(test)]
mod tests {
    //! The data inventory against the agent's own source: every kind it can emit is listed,
    //! and the events the spool writes itself (not through `NewEvent::now`) fit their entries.
    use std::path::{Path, PathBuf};

    use caretaker_proto::inventory::{self, KINDS};
    use serde_json::Value;

    use super::NewEvent;
    use crate::spool::Spool;

    /// Literals that look like kinds (a kind's domain, a dot, a word) but are file names or
    /// config fields.
    const NOT_KINDS: &[&str] = &[
        "agent.lock",
        "agent.toml",
        "agent.log",
        "device.pem",
        "device.key",
        "software.profile_poll",
    ];

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }

    /// The agent's non-test source: test files skipped, test modules (always last in a
    /// file here) cut off.
    fn production_source() -> Vec<(PathBuf, String)> {
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        files
            .into_iter()
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name != "tests.rs" && !name.ends_with("_tests.rs") && !name.starts_with("test_")
            })
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                let text = match text.find("#[cfg(test)]") {
                    Some(i) => text[..i].to_owned(),
                    None => text,
                };
                (p, text)
            })
            .collect()
    }

    /// String literals (escapes kept as written), each with the text before it.
    fn literals(text: &str) -> Vec<(&str, &str)> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            // The character literals '"' and '\"' open no string.
            if b[i..].starts_with(b"'\"'") || b[i..].starts_with(b"'\\\"'") {
                i += 3;
                continue;
            }
            // Raw strings (`r#"..."#`) end only at their own terminator.
            if b[i..].starts_with(b"r#\"") {
                let body = i + 3;
                let end = text[body..].find("\"#").map_or(b.len(), |e| body + e);
                out.push((&text[body..end], &text[..i]));
                i = end + 2;
                continue;
            }
            if b[i] == b'"' {
                let body = i + 1;
                let mut j = body;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(b.len());
                out.push((&text[body..end], &text[..i]));
                i = end + 1;
                continue;
            }
            i += 1;
        }
        out
    }

    fn looks_like_kind(s: &str) -> bool {
        let mut parts = s.split('.');
        let ok = |p: Option<&str>| {
            p.is_some_and(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
        };
        ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
    }

    #[test]
    fn inventory_lists_every_kind_the_agent_source_can_emit_and_no_other() {
        let domains: Vec<&str> = KINDS
            .iter()
            .map(|k| k.name.split('.').next().unwrap())
            .collect();
        let mut found: Vec<String> = Vec::new();
        for (path, text) in production_source() {
            for (lit, before) in literals(&text) {
                if !looks_like_kind(lit) || NOT_KINDS.contains(&lit) {
                    continue;
                }
                // A literal in a kind's domain, or handed straight to `NewEvent::now` whatever
                // its domain, is a kind the agent can emit.
                let domain = lit.split('.').next().unwrap();
                let given_to_now = before.trim_end().ends_with("NewEvent::now(");
                if domains.contains(&domain) || given_to_now {
                    assert!(
                        inventory::kind(lit).is_some(),
                        "{} emits `{lit}`, which is not in the data inventory: add it to proto/src/inventory.rs, then regenerate PRIVACY.md with UPDATE_PRIVACY=1 cargo test -p caretaker-proto inventory",
                        path.display()
                    );
                    found.push(lit.to_owned());
                }
            }
        }
        for k in KINDS {
            assert!(
                found.iter().any(|f| f == k.name),
                "the data inventory lists `{}`, which the agent's source no longer emits: remove it from proto/src/inventory.rs",
                k.name
            );
        }
    }

    fn assert_listed(e: &crate::spool::SpooledEvent) {
        if let Err(err) = inventory::check(&e.kind, e.user.is_some(), &e.details) {
            panic!("{err}");
        }
    }

    /// The spool writes two notes itself: the count of events dropped at its bound, and the
    /// note that replaces oversized details. Both must fit the inventory.
    #[test]
    fn inventory_lists_what_the_spool_writes_itself() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) =
            Spool::open(&d.path().join("spool"), &d.path().join("seq"), 4_000).unwrap();
        for i in 0..100u64 {
            let beat = NewEvent::now(
                "agent.heartbeat",
                None,
                crate::details! { "uptime_secs" => i },
            );
            s.append(vec![beat]).unwrap();
        }
        let all = s.read_after(0, 10_000, 1 << 20).unwrap();
        let dropped: Vec<_> = all
            .iter()
            .filter(|e| e.kind == "agent.events_dropped")
            .collect();
        assert!(!dropped.is_empty(), "the bound dropped nothing");
        dropped.iter().for_each(|e| assert_listed(e));

        let d = tempfile::tempdir().unwrap();
        let (mut s, _) =
            Spool::open(&d.path().join("spool"), &d.path().join("seq"), 1 << 20).unwrap();
        let huge = crate::details! { "reason" => "x".repeat(70 * 1024) };
        s.append(vec![NewEvent::now("agent.stopping", None, huge)])
            .unwrap();
        let e = &s.read_after(0, 1, 1 << 20).unwrap()[0];
        assert_eq!(e.details["truncated"], Value::Bool(true));
        assert_listed(e);
    }

    #[test]
    fn an_unlisted_field_stops_a_test() {
        let caught = std::panic::catch_unwind(|| {
            NewEvent::now(
                "agent.heartbeat",
                None,
                crate::details! { "home" => "/home/pupil01" },
            )
        });
        let msg = caught.expect_err("an unlisted field was accepted");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("`home`"), "{msg}");
    }
}
