//! `caretaker-collector subject export|erase`: asks a running collector over the admin socket, or opens the store itself when none runs.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{PseudonymKey, SubjectError};
use crate::accounts::Actor;
use crate::admin::{self, AdminRequest, AdminResponse, AskError};
use crate::datadir::{DataDir, DataDirError};
use crate::store::Store;

/// Why a subject command did nothing (or, for a write, named the file it could not finish).
#[derive(Debug, thiserror::Error)]
pub enum SubjectCliError {
    #[error("{} exists already; choose another --out", path.display())]
    Exists { path: PathBuf },
    #[error("cannot create {} (it must not exist yet)", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the confirmation (use --yes where no one can type it)")]
    Confirmation(#[source] std::io::Error),
    #[error("the name typed did not match; nothing was changed")]
    Mismatch,
    #[error(transparent)]
    Subject(#[from] SubjectError),
    #[error(transparent)]
    Ask(#[from] AskError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the subject request could not be carried out")]
    Task(#[from] tokio::task::JoinError),
}

/// A subject access request's commands.
#[derive(Debug, clap::Subcommand)]
pub enum SubjectCommand {
    /// Write every record about a login name (naming it, or its pseudonym: events, incidents
    /// and their records, audit entries, digests) as FILE.json and as printable FILE.html, both always: the JSON for
    /// machines, the HTML for the person who asked. Neither file may exist yet. Audited.
    Export {
        #[arg(long, default_value = "/var/lib/caretaker-collector")]
        data_dir: PathBuf,
        /// The login name, exactly as the laptops report it.
        #[arg(long)]
        user: String,
        /// Where to write: FILE.json and FILE.html (a .json or .html ending is dropped first).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The school's time zone, in which the HTML shows times.
        #[arg(long, default_value = "Europe/London")]
        time_zone: chrono_tz::Tz,
    },
    /// Replace a login name by its pseudonym everywhere it is stored, except in records under
    /// legal hold; says what it changed and what it kept and why. Audited under the
    /// pseudonym, never the name.
    Erase {
        #[arg(long, default_value = "/var/lib/caretaker-collector")]
        data_dir: PathBuf,
        /// The login name, exactly as the laptops report it.
        #[arg(long)]
        user: String,
        /// Do not ask to type the name again.
        #[arg(long)]
        yes: bool,
        /// The name is a dashboard account (a member of staff) and erasing it is intended; the
        /// account itself is kept.
        #[arg(long)]
        staff: bool,
        /// The school's time zone, in which the dates of holds are shown.
        #[arg(long, default_value = "Europe/London")]
        time_zone: chrono_tz::Tz,
    },
}

/// FILE.json and FILE.html for `--out FILE`.
pub fn out_paths(out: &Path) -> (PathBuf, PathBuf) {
    let base = match out.extension().and_then(|e| e.to_str()) {
        Some("json" | "html") => out.with_extension(""),
        _ => out.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = base.clone().into_os_string();
        s.push(".");
        s.push(ext);
        PathBuf::from(s)
    };
    (with("json"), with("html"))
}

/// Writes a new file readable by its owner only (it names a person), never over another.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), SubjectCliError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SubjectCliError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| SubjectCliError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Runs the command.
pub async fn run(cmd: SubjectCommand) -> Result<(), SubjectCliError> {
    match cmd {
        SubjectCommand::Export {
            data_dir,
            user,
            out,
            time_zone,
        } => {
            super::check_name(&user)?;
            let (json_path, html_path) = out_paths(&out);
            for p in [&json_path, &html_path] {
                if p.exists() {
                    return Err(SubjectCliError::Exists { path: p.clone() });
                }
            }
            let dir = DataDir::new(data_dir);
            dir.check()?;
            let ask = AdminRequest::SubjectExport {
                user: user.clone(),
                time_zone: time_zone.name().to_string(),
            };
            let files = match admin::ask(&dir, &ask).await.map_err(AskError::from)? {
                Some(AdminResponse::SubjectExport(f)) => f,
                Some(AdminResponse::Error { message }) => {
                    return Err(AskError::Refused(message).into());
                }
                Some(other) => return Err(AskError::unexpected(&other).into()),
                None => {
                    let user = user.clone();
                    offline(dir, move |store, key, by| {
                        super::export_now(store, key, by, &user, time_zone)
                    })
                    .await?
                }
            };
            write_new(&json_path, files.json.as_bytes())?;
            write_new(&html_path, files.html.as_bytes())?;
            println!(
                "Wrote {} and {}: {} records naming {user} ({}).",
                json_path.display(),
                html_path.display(),
                files.counts.total(),
                files.counts.summary()
            );
            Ok(())
        }
        SubjectCommand::Erase {
            data_dir,
            user,
            yes,
            staff,
            time_zone,
        } => {
            super::check_name(&user)?;
            let dir = DataDir::new(data_dir);
            dir.check()?;
            if !yes {
                confirm(&user)?;
            }
            let ask = AdminRequest::SubjectErase {
                user: user.clone(),
                staff,
                time_zone: time_zone.name().to_string(),
            };
            let report = match admin::ask(&dir, &ask).await.map_err(AskError::from)? {
                Some(AdminResponse::SubjectErased(r)) => r,
                Some(AdminResponse::Error { message }) => {
                    return Err(AskError::Refused(message).into());
                }
                Some(other) => return Err(AskError::unexpected(&other).into()),
                None => {
                    offline(dir, move |store, key, by| {
                        super::erase(store, key, by, &user, staff, time_zone)
                    })
                    .await?
                }
            };
            for line in report.lines() {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// Asks for the name again: an erasure cannot be undone.
fn confirm(user: &str) -> Result<(), SubjectCliError> {
    eprintln!(
        "This replaces {user} by a pseudonym in every record not under legal hold, and cannot be undone."
    );
    eprint!("Type the login name again to go on: ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(SubjectCliError::Confirmation)?;
    if line.trim_end_matches(['\r', '\n']) != user {
        return Err(SubjectCliError::Mismatch);
    }
    Ok(())
}

/// Runs `f` as the local administrator on the store opened directly (no collector runs), with
/// the trust's pseudonym key, off the async threads.
async fn offline<T: Send + 'static>(
    dir: DataDir,
    f: impl FnOnce(&dyn Store, &PseudonymKey, &Actor) -> Result<T, SubjectError> + Send + 'static,
) -> Result<T, SubjectCliError> {
    tokio::task::spawn_blocking(move || -> Result<_, SubjectCliError> {
        let key = PseudonymKey::load(&dir)?;
        let store = dir.open_store_offline()?;
        Ok(f(store.as_ref(), &key, &Actor::local_cli())?)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_names_both_files_from_one_base() {
        let (j, h) = out_paths(Path::new("/tmp/sar-alice"));
        assert_eq!(
            (j.to_str(), h.to_str()),
            (Some("/tmp/sar-alice.json"), Some("/tmp/sar-alice.html"))
        );
        let (j, h) = out_paths(Path::new("/tmp/sar.alice.html"));
        assert_eq!(
            (j.to_str(), h.to_str()),
            (Some("/tmp/sar.alice.json"), Some("/tmp/sar.alice.html"))
        );
        let (j, _) = out_paths(Path::new("out.json"));
        assert_eq!(j.to_str(), Some("out.json"));
    }
}
