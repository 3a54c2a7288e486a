//! Who may read the agent's own files, on Windows: nothing is set here. The state folder
//! (`%ProgramData%\Caretaker`) gets its ACL (SYSTEM and Administrators only) from the
//! installer, and files created inside inherit it; unix modes have no meaning here.

use std::fs::OpenOptions;
use std::os::windows::fs::OpenOptionsExt;
use std::path::Path;

/// `FILE_FLAG_OPEN_REPARSE_POINT`: open a symlink or junction itself, never its target.
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;

/// Creates `path` and its parents; access comes from the inherited ACL (see the module note).
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)
}

/// Unix modes do not apply; the file inherits the state folder's ACL.
pub fn with_mode(opts: &mut OpenOptions, _mode: u32) -> &mut OpenOptions {
    opts
}

/// Opens a reparse point (symlink, junction) itself rather than following it. Handles are not
/// inherited by children unless asked for, which std never does.
pub fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
}
