//! The rollout's hosts file: one `[user@]host[:port]` a line.
use std::fmt::Write as _;

/// Why a hosts file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    #[error("line {line}: `{text}` {why}")]
    BadLine {
        line: usize,
        text: String,
        why: BadHost,
    },
    #[error("the hosts file names no host")]
    Empty,
}

/// What is wrong with one line of a hosts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    #[error("has spaces; write one host per line")]
    Spaces,
    #[error("has an empty user before @")]
    EmptyUser,
    #[error("has an unclosed [")]
    UnclosedBracket,
    #[error("is not [address]:port")]
    NotBracketPort,
    #[error("has a port that is not 1-65535")]
    BadPort,
    #[error("names no host")]
    NoHost,
}

/// One line of the hosts file: `[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl Host {
    /// As written in the file, for the table and the CSV.
    pub fn label(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            let _ = write!(s, "{u}@");
        }
        s.push_str(&self.host);
        if let Some(p) = self.port {
            let _ = write!(s, ":{p}");
        }
        s
    }
}

/// Reads a hosts file: one host per line, `#` comments and blank lines ignored, duplicates dropped.
pub fn parse_hosts(text: &str) -> Result<Vec<Host>, HostsError> {
    let mut out: Vec<Host> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: BadHost| HostsError::BadLine {
            line: i + 1,
            text: line.to_owned(),
            why,
        };
        if line.contains(char::is_whitespace) {
            return Err(bad(BadHost::Spaces));
        }
        let (user, rest) = match line.split_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err(bad(BadHost::EmptyUser)),
            None => (None, line),
        };
        // `[v6]:port`, `name:port`, or a bare name / v6 address.
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, tail) = r
                .split_once(']')
                .ok_or_else(|| bad(BadHost::UnclosedBracket))?;
            match tail.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if tail.is_empty() => (h, None),
                None => return Err(bad(BadHost::NotBracketPort)),
            }
        } else if rest.matches(':').count() == 1 {
            let (h, p) = rest.split_once(':').expect("one colon");
            (h, Some(p))
        } else {
            (rest, None)
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad(BadHost::BadPort))
            })
            .transpose()?;
        if host.is_empty() {
            return Err(bad(BadHost::NoHost));
        }
        let h = Host {
            user,
            host: host.to_string(),
            port,
        };
        if !out.contains(&h) {
            out.push(h);
        }
    }
    if out.is_empty() {
        return Err(HostsError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_take_users_ports_comments_and_ipv6() {
        let hosts = parse_hosts(
            "# Year 5 trolley\nlaptop-01\nadmin@laptop-02:2222  # the odd one\n\n10.0.0.7\n[fd00::7]:22\nfd00::8\nlaptop-01\n",
        )
        .unwrap();
        let labels: Vec<String> = hosts.iter().map(Host::label).collect();
        assert_eq!(
            labels,
            [
                "laptop-01",
                "admin@laptop-02:2222",
                "10.0.0.7",
                "fd00::7:22",
                "fd00::8"
            ]
        );
        assert_eq!(hosts[3].port, Some(22));
        assert_eq!(hosts[4].port, None);
        for (bad, why) in [
            ("a b\n", "spaces"),
            ("x:0\n", "port"),
            ("x:http\n", "port"),
            ("@x\n", "empty user"),
            ("# none\n", "names no host"),
        ] {
            let e = parse_hosts(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
