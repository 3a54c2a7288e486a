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

/// The file just opened and its metadata (from the handle, not the path), if it is a regular
/// file; the OS modules' `untrusted::open_regular` open without following links, then ask this.
pub fn regular_only(
    path: &std::path::Path,
    file: std::fs::File,
) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok((file, meta))
}

/// Facts about this machine the collector shows the technician.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
}
