//! Who may do what: roles and their permissions, password hashing, and the sign-in limiter.
//!
//! The role table here is the one place access rules live; the service layer (`desk.rs`) and
//! the web routes both ask `Role::may`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::Rng;

/// The four kinds of people who sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    NetworkManager,
    Technician,
    Dsl,
    Governor,
}

/// Something a person may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// The fleet overview and compliance counts.
    ViewFleet,
    /// Device list and device pages with their technical timeline.
    ViewDevices,
    /// Events not meant for the DSL.
    ViewTechnicalEvents,
    /// Safeguarding incidents, their records, and the events behind them.
    Safeguarding,
    /// Technical incidents and their records.
    TechnicalIncidents,
    ViewPolicy,
    EditPolicy,
    /// Create enrolment tokens and see devices arrive.
    Enrol,
    RevokeDevice,
    ManageUsers,
    ViewAudit,
    /// The governors' report: counts, never names.
    GovernorsReport,
    /// Installations per product (licence reconciliation).
    ViewSoftware,
    /// The school's settings: terms, licences, mail, digest schedules.
    ManageSettings,
    /// The collector's Prometheus metrics (counts and timings, nothing about anyone).
    ViewMetrics,
    /// See the legal holds in force (what the purge and erasure keep).
    ViewHolds,
    /// Place and release legal holds: the DSL's alone, since releasing one lets a case's
    /// records expire; the network manager, who sets retention, sees them.
    ManageHolds,
    /// Export every record naming a person (a subject access request): network manager and DSL.
    SubjectAccess,
    /// Replace a person's name by its pseudonym everywhere (erasure): the network manager's
    /// alone, as the one who answers the school's data protection officer.
    EraseSubject,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::NetworkManager,
        Role::Technician,
        Role::Dsl,
        Role::Governor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::NetworkManager => "network_manager",
            Role::Technician => "technician",
            Role::Dsl => "dsl",
            Role::Governor => "governor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s || r.label().eq_ignore_ascii_case(s))
    }

    /// How the interface names the role.
    pub fn label(self) -> &'static str {
        match self {
            Role::NetworkManager => "Network manager",
            Role::Technician => "Technician",
            Role::Dsl => "DSL",
            Role::Governor => "Governor",
        }
    }

    /// The access table of the dashboard issue: network manager everything but placing and
    /// releasing legal holds (the DSL's, issue 13); technician fleet, devices, technical events,
    /// enrolment and revocation; DSL safeguarding records and legal holds; governor the report
    /// without names.
    pub fn may(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::NetworkManager => !matches!(p, ManageHolds),
            Role::Technician => matches!(
                p,
                ViewFleet
                    | ViewDevices
                    | ViewTechnicalEvents
                    | TechnicalIncidents
                    | Enrol
                    | RevokeDevice
                    | ViewSoftware
                    | ViewMetrics
            ),
            Role::Dsl => matches!(
                p,
                Safeguarding | GovernorsReport | ViewHolds | ManageHolds | SubjectAccess
            ),
            Role::Governor => matches!(p, GovernorsReport),
        }
    }
}

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// True if `password` matches the stored hash. A damaged hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A one-time password that reads well aloud over the phone: four groups of four letters and
/// digits, without look-alikes (0/O, 1/l/I).
pub fn one_time_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..4)
        .map(|_| {
            (0..4)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The shortest password a person may choose.
pub const MIN_PASSWORD: usize = 12;

/// Why a chosen password is refused, in words for the form.
pub fn password_problem(password: &str, username: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD {
        return Some(format!(
            "Choose a password of at least {MIN_PASSWORD} characters."
        ));
    }
    if password.eq_ignore_ascii_case(username) {
        return Some("The password must not be the username.".into());
    }
    None
}

/// Failed sign-ins allowed per account and per address before each further try must wait.
pub const FREE_FAILURES: u32 = 4;
/// Failures older than this are forgotten.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The wait after the fifth failure; it doubles with each further one, up to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Slows down password guessing per account and per client address: after four failures each
/// further try waits, doubling from 30 s.
#[derive(Default)]
pub struct SignInLimiter {
    seen: Mutex<HashMap<String, Failures>>,
}

fn keys(username: &str, from: Option<IpAddr>) -> Vec<String> {
    let mut k = vec![format!("u:{}", username.to_lowercase())];
    if let Some(ip) = from {
        k.push(format!("a:{ip}"));
    }
    k
}

impl SignInLimiter {
    /// `Err(wait)` if this account or address must wait before trying again.
    pub fn check(
        &self,
        username: &str,
        from: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        let seen = self.seen.lock().expect("limiter lock");
        let wait = keys(username, from)
            .iter()
            .filter_map(|k| seen.get(k)?.blocked_until)
            .filter(|&until| until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    pub fn record_failure(&self, username: &str, from: Option<IpAddr>, now: Instant) {
        let mut seen = self.seen.lock().expect("limiter lock");
        if seen.len() > 10_000 {
            seen.retain(|_, f| now.duration_since(f.last) < FAILURE_WINDOW);
        }
        for k in keys(username, from) {
            let f = seen.entry(k).or_insert(Failures {
                count: 0,
                last: now,
                blocked_until: None,
            });
            if now.duration_since(f.last) >= FAILURE_WINDOW {
                *f = Failures {
                    count: 0,
                    last: now,
                    blocked_until: None,
                };
            }
            f.count += 1;
            f.last = now;
            if f.count > FREE_FAILURES {
                let doublings = (f.count - FREE_FAILURES - 1).min(10);
                let wait = (FIRST_WAIT * 2u32.pow(doublings)).min(MAX_WAIT);
                f.blocked_until = Some(now + wait);
            }
        }
    }

    /// A successful sign-in clears the account's failures (not the address's: one good
    /// password must not unlock guessing at others).
    pub fn record_success(&self, username: &str) {
        let mut seen = self.seen.lock().expect("limiter lock");
        seen.remove(&format!("u:{}", username.to_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_has_exactly_its_part() {
        use Permission::*;
        assert!(Role::NetworkManager.may(ManageUsers));
        assert!(Role::Technician.may(Enrol) && Role::Technician.may(RevokeDevice));
        assert!(!Role::Technician.may(Safeguarding) && !Role::Technician.may(EditPolicy));
        assert!(!Role::Technician.may(ManageUsers));
        assert!(Role::Dsl.may(Safeguarding));
        assert!(Role::Dsl.may(ManageHolds) && Role::NetworkManager.may(ViewHolds));
        assert!(Role::Dsl.may(SubjectAccess) && !Role::Dsl.may(EraseSubject));
        assert!(Role::NetworkManager.may(EraseSubject) && !Role::Technician.may(SubjectAccess));
        assert!(!Role::NetworkManager.may(ManageHolds) && !Role::Technician.may(ViewHolds));
        assert!(!Role::Dsl.may(EditPolicy) && !Role::Dsl.may(Enrol) && !Role::Dsl.may(ManageUsers));
        assert!(Role::Governor.may(GovernorsReport));
        for p in [ViewFleet, ViewDevices, Safeguarding, ViewPolicy, ViewAudit] {
            assert!(!Role::Governor.may(p), "{p:?}");
        }
    }

    #[test]
    fn roles_parse_from_their_names_and_labels() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(Role::parse(r.label()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn passwords_verify_and_a_wrong_one_or_a_damaged_hash_does_not() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
    }

    #[test]
    fn one_time_passwords_are_long_enough_to_use() {
        let p = one_time_password();
        assert_eq!(p.len(), 19);
        assert!(password_problem(&p, "x").is_none());
        assert_ne!(p, one_time_password());
    }

    #[test]
    fn the_fifth_failure_makes_the_next_try_wait_and_the_wait_doubles() {
        let l = SignInLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert!(l.check("dsl", Some(ip), t0).is_ok());
            l.record_failure("dsl", Some(ip), t0);
        }
        assert!(l.check("dsl", Some(ip), t0).is_ok(), "four are free");
        l.record_failure("dsl", Some(ip), t0);
        assert_eq!(
            l.check("dsl", None, t0),
            Err(FIRST_WAIT),
            "the account waits"
        );
        assert!(
            l.check("other", Some(ip), t0).is_err(),
            "so does the address"
        );
        assert!(l.check("other", None, t0).is_ok());
        assert!(l.check("dsl", Some(ip), t0 + FIRST_WAIT).is_ok());
        l.record_failure("dsl", Some(ip), t0 + FIRST_WAIT);
        assert_eq!(
            l.check("DSL", None, t0 + FIRST_WAIT),
            Err(FIRST_WAIT * 2),
            "doubles, whatever the case of the name"
        );
        l.record_success("dsl");
        assert!(l.check("dsl", None, t0 + FIRST_WAIT).is_ok());
        assert!(l.check("x", Some(ip), t0 + FIRST_WAIT).is_err());
    }
}
