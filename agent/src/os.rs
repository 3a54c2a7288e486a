//! The only place that asks the operating system for facts; thin, returning raw values.
//!
//! Shared code calls `crate::os::<name>`; each OS module provides the same names
//! (`host_facts`, `process_alive`, `perms`, `sdnotify`), so the probes above stay OS-neutral.

pub mod facts;

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(windows)]
pub mod windows;
#[cfg(windows)]
pub use windows::*;

/// Facts about this machine the collector shows the technician.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
}
