//! Pure interpretation of what the software probe reads, one file per family of formats:
//! dpkg's status database and apt's history log ([`dpkg`]), Flatpak deployments and snapd's
//! replies ([`bundles`]), executables' first bytes and /etc/passwd ([`home`]), and the
//! Windows Uninstall registry entries, as `reg export` text and PowerShell JSON ([`windows`]).
//! No I/O here; every parser returns what it could read plus warnings and never fails
//! outright.
pub mod bundles;
pub mod dpkg;
pub mod home;
pub mod windows;

pub use bundles::*;
pub use dpkg::*;
pub use home::*;
pub use windows::*;

/// What a parser could read, and what it had to skip.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed<T> {
    pub value: T,
    pub warnings: Vec<String>,
}

/// A line quoted in a warning, cut short.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests;
