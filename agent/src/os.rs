//! The only place that asks the operating system for facts; thin, returning raw values.

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

/// Facts about this machine the collector shows the technician.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
}
