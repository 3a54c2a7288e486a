//! The `software` section of the policy document: which software the school approves or
//! denies, how often the agent rescans, and whether home folders are watched for executables.
//! Also the name pattern (exact name or glob) both the agent and the collector use.
use serde::{Deserialize, Serialize};

/// Software policy. Names are matched case-insensitively against what the agent reports:
/// dpkg/snap package names, Flatpak application IDs, AppImage names, Windows DisplayNames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SoftwarePolicy {
    /// Exact names or glob patterns (`*`, `?`, `[a-z]`) of software the school permits.
    pub approved: Vec<String>,
    /// Exact names or glob patterns of software the school forbids.
    pub denied: Vec<String>,
    /// Backstop full rescan, in seconds, for changes the file watches missed.
    pub rescan_interval_secs: u64,
    /// Report new executables appearing in users' home folders.
    pub watch_home_executables: bool,
}

impl Default for SoftwarePolicy {
    fn default() -> Self {
        SoftwarePolicy {
            approved: Vec::new(),
            denied: Vec::new(),
            rescan_interval_secs: 3600,
            watch_home_executables: true,
        }
    }
}

/// Shortest rescan we accept: a full rescan walks every home folder, so seconds would be abuse.
pub const MIN_RESCAN_INTERVAL_SECS: u64 = 60;

/// Why the `software` section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoftwareError {
    /// `list` is `approved` or `denied`.
    #[error("software.{list}: pattern {pattern:?} is invalid: {why}")]
    BadPattern {
        list: &'static str,
        pattern: String,
        why: String,
    },
    #[error("software: {0:?} is in both the approved and the denied list")]
    InBothLists(String),
    #[error("software.rescan_interval_secs is {0}; it must be at least {MIN_RESCAN_INTERVAL_SECS}")]
    RescanTooOften(u64),
}

impl SoftwarePolicy {
    pub fn validate(&self) -> Result<(), SoftwareError> {
        for (list, patterns) in [("approved", &self.approved), ("denied", &self.denied)] {
            for p in patterns {
                NamePattern::new(p).map_err(|why| SoftwareError::BadPattern {
                    list,
                    pattern: p.clone(),
                    why,
                })?;
            }
        }
        // The same entry in both lists has no sensible meaning; make the author choose.
        for p in &self.approved {
            if self.denied.iter().any(|d| d.eq_ignore_ascii_case(p)) {
                return Err(SoftwareError::InBothLists(p.clone()));
            }
        }
        if self.rescan_interval_secs < MIN_RESCAN_INTERVAL_SECS {
            return Err(SoftwareError::RescanTooOften(self.rescan_interval_secs));
        }
        Ok(())
    }
}

/// A compiled name pattern: an exact name, or a glob with `*` (any run), `?` (one character)
/// and `[...]` classes (ranges, `!` or `^` to negate). Matching ignores case, because Windows
/// DisplayNames and Flatpak IDs are not consistently cased.
#[derive(Debug, Clone, PartialEq)]
pub struct NamePattern {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    One,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl NamePattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.trim().is_empty() {
            return Err("empty pattern".into());
        }
        if pattern.chars().any(char::is_control) {
            return Err("contains a control character".into());
        }
        let lower = pattern.to_lowercase();
        let mut tokens = Vec::new();
        let mut chars = lower.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    // Consecutive stars mean the same as one.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::One),
                '[' => {
                    let negated = matches!(chars.peek(), Some('!' | '^'));
                    if negated {
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    // A `]` first in the class is a literal, as in shell globs.
                    let mut first = true;
                    while let Some(c) = chars.next() {
                        if c == ']' && !first {
                            closed = true;
                            break;
                        }
                        first = false;
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.peek() {
                                Some(&hi) if hi != ']' => {
                                    chars.next();
                                    if hi < c {
                                        return Err(format!("range {c}-{hi} is reversed"));
                                    }
                                    ranges.push((c, hi));
                                }
                                _ => {
                                    ranges.push((c, c));
                                    ranges.push(('-', '-'));
                                }
                            }
                        } else {
                            ranges.push((c, c));
                        }
                    }
                    if !closed {
                        return Err("unclosed '['".into());
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                c => tokens.push(Token::Char(c)),
            }
        }
        Ok(NamePattern {
            source: pattern.to_string(),
            tokens,
        })
    }

    /// True when the pattern has no wildcard: it names one product exactly.
    pub fn is_exact(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Char(_)))
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.to_lowercase().chars().collect();
        let (mut t, mut n) = (0, 0);
        // Where to resume after the most recent star: (token after star, name position).
        let mut backtrack: Option<(usize, usize)> = None;
        while n < name.len() {
            let step = match self.tokens.get(t) {
                Some(Token::Star) => {
                    backtrack = Some((t + 1, n));
                    t += 1;
                    continue;
                }
                Some(Token::Char(c)) => *c == name[n],
                Some(Token::One) => true,
                Some(Token::Class { negated, ranges }) => {
                    ranges
                        .iter()
                        .any(|&(lo, hi)| lo <= name[n] && name[n] <= hi)
                        != *negated
                }
                None => false,
            };
            if step {
                t += 1;
                n += 1;
            } else if let Some((bt, bn)) = backtrack {
                t = bt;
                n = bn + 1;
                backtrack = Some((bt, bn + 1));
            } else {
                return false;
            }
        }
        self.tokens[t..].iter().all(|tok| *tok == Token::Star)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        NamePattern::new(p).unwrap().matches(n)
    }

    #[test]
    fn globs_match_as_in_a_shell_but_ignore_case() {
        assert!(m("libreoffice*", "libreoffice-writer"));
        assert!(m("libreoffice*", "LibreOffice"));
        assert!(!m("libreoffice*", "xlibreoffice"));
        assert!(m("*vpn*", "network-manager-openvpn"));
        assert!(m("python3.1?", "python3.11"));
        assert!(!m("python3.1?", "python3.1"));
        assert!(m("lib[a-c]x", "libbx"));
        assert!(!m("lib[!a-c]x", "libbx"));
        assert!(m("a*b*c", "aXXbYYbc"));
        assert!(m("**", ""));
        assert!(!m("tor", "torbrowser-launcher"));
        assert!(m("Mozilla Firefox*", "Mozilla Firefox (x64 en-GB)"));
    }

    #[test]
    fn exactness_is_known() {
        assert!(NamePattern::new("tor").unwrap().is_exact());
        assert!(!NamePattern::new("tor*").unwrap().is_exact());
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        assert_eq!(NamePattern::new("  ").unwrap_err(), "empty pattern");
        assert_eq!(NamePattern::new("lib[abc").unwrap_err(), "unclosed '['");
        assert!(NamePattern::new("[z-a]").unwrap_err().contains("reversed"));
        let policy = SoftwarePolicy {
            denied: vec!["ok".into(), "bad[".into()],
            ..Default::default()
        };
        let err = policy.validate().unwrap_err().to_string();
        assert!(
            err.contains("software.denied") && err.contains("bad["),
            "{err}"
        );
    }

    #[test]
    fn policy_defaults_and_validation() {
        let p: SoftwarePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, SoftwarePolicy::default());
        assert_eq!(p.rescan_interval_secs, 3600);
        assert!(p.watch_home_executables);
        assert!(p.validate().is_ok());
        let both = SoftwarePolicy {
            approved: vec!["Steam".into()],
            denied: vec!["steam".into()],
            ..Default::default()
        };
        assert!(both.validate().unwrap_err().to_string().contains("both"));
        let fast = SoftwarePolicy {
            rescan_interval_secs: 5,
            ..Default::default()
        };
        assert!(
            fast.validate()
                .unwrap_err()
                .to_string()
                .contains("at least 60")
        );
    }
}
