//! Who may read the agent's own files: unix modes on what the agent creates in its state folder.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `path` (and its parents) readable only by the agent's user.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Gives a file this open creates the unix `mode`.
pub fn with_mode(opts: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    opts.mode(mode)
}

/// Refuses to follow a symlink at the final component, and keeps the descriptor from
/// leaking into the children the agent starts (lockers, `blockdev`).
pub fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
}
