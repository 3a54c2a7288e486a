//! Reads of `/proc` (under a configurable root, so tests build a fake one): which programs
//! are running.

use std::collections::HashSet;
use std::path::Path;

/// Command names (`comm`) of running processes, or `None` if `proc_root` cannot be listed.
pub async fn process_names(proc_root: &Path) -> Option<HashSet<String>> {
    let root = proc_root.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut names = HashSet::new();
        for entry in std::fs::read_dir(&root).ok()?.flatten() {
            let file_name = entry.file_name();
            if !file_name
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            // Processes exit between listing and reading: skip those silently.
            if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
                names.insert(comm.trim_end().to_owned());
            }
        }
        Some(names)
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn process_names_are_the_comm_of_numeric_entries_only() {
        let proc_root = tempfile::tempdir().unwrap();
        for (dir, comm) in [
            ("1", "systemd\n"),
            ("412", "freshclam\n"),
            ("self", "clamonacc\n"),
        ] {
            std::fs::create_dir(proc_root.path().join(dir)).unwrap();
            std::fs::write(proc_root.path().join(dir).join("comm"), comm).unwrap();
        }
        std::fs::create_dir(proc_root.path().join("999")).unwrap(); // exited: no comm
        let names = process_names(proc_root.path()).await.unwrap();
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort();
        assert_eq!(names, ["freshclam", "systemd"]);
        assert_eq!(process_names(&proc_root.path().join("absent")).await, None);
    }
}
