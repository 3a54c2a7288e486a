//! The local admin socket: lets `token create`, `device revoke`, `subject` and the other commands reach a running collector, which holds the store.
//!
//! The embedded store allows one process, so while `serve` runs the CLI asks it
//! over `DATA_DIR/admin.sock` (mode 0600, and the peer must be root or the
//! collector's own user). One JSON request per line, one JSON answer per line.
//! A collector on a shared (PostgreSQL) store opens no socket: the CLI writes the
//! database directly, as any number of processes may.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::service::Collector;

/// What the CLI asks of a running collector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    CreateToken {
        uses: u32,
        expires_at: DateTime<Utc>,
        label: String,
    },
    RevokeDevice {
        id: String,
    },
    /// A device's uninstall code (`device uninstall-code`); audited.
    UninstallCode {
        id: String,
    },
    /// Users and API tokens (`user ...`, `token create-api`).
    Account(crate::accounts::AccountOp),
    /// A monitoring report (`report`), rendered by the running collector.
    Report {
        request: crate::report::ReportRequest,
        /// The IANA zone days are counted in.
        time_zone: String,
    },
    /// Every record naming a person (`subject export`); audited.
    SubjectExport {
        user: String,
        /// The IANA zone the HTML shows times in.
        time_zone: String,
    },
    /// A person's name replaced by its pseudonym (`subject erase`); audited.
    SubjectErase {
        user: String,
        /// A dashboard account's name is erased only when this says it is meant.
        staff: bool,
        time_zone: String,
    },
}

/// The collector's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminResponse {
    Token {
        token: String,
        ca_fingerprint: String,
    },
    Revoked {
        id: String,
    },
    UninstallCode {
        id: String,
        hostname: String,
        /// The device's OS as it reported it, so the command shown fits the laptop.
        #[serde(default)]
        os: String,
        code: String,
    },
    Account(crate::accounts::AccountOutcome),
    Report {
        files: Vec<crate::report::ReportFile>,
    },
    SubjectExport(crate::subject::ExportFiles),
    SubjectErased(crate::subject::ErasureReport),
    Error {
        message: String,
    },
}

/// Serves the admin socket until `shutdown`.
pub async fn serve(
    path: &Path,
    collector: Arc<Collector>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // A socket left by a collector that was killed would make bind fail.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // The socket file belongs to this process's user: only that user (or root) may ask.
    let me = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path)?);
    let path = path.to_path_buf();
    let tasks = collector.tasks().clone();
    tasks.clone().spawn(async move {
        // Out of descriptors (EMFILE) fails again at once: back off like the TCP listeners.
        let mut backoff = crate::listen::AcceptBackoff::new("admin");
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((s, _)) => {
                        backoff.succeeded();
                        s
                    }
                    Err(e) => {
                        if !backoff.failed(&e, &shutdown).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let allowed = stream
                .peer_cred()
                .map(|c| c.uid() == 0 || c.uid() == me)
                .unwrap_or(false);
            if !allowed {
                warn!("Admin socket connection from another user refused");
                continue;
            }
            let c = collector.clone();
            tasks.spawn(async move {
                if let Err(e) = handle(stream, c).await {
                    debug!(error = %e, "Admin connection failed");
                }
            });
        }
        let _ = std::fs::remove_file(path);
    });
    Ok(())
}

async fn handle(stream: UnixStream, c: Arc<Collector>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<AdminRequest>(&line) {
            Err(e) => AdminResponse::Error {
                message: format!("bad request: {e}"),
            },
            Ok(AdminRequest::CreateToken {
                uses,
                expires_at,
                label,
            }) => match c.create_token(uses, expires_at, label).await {
                Ok(token) => AdminResponse::Token {
                    token,
                    ca_fingerprint: c.ca_fingerprint(),
                },
                Err(e) => AdminResponse::Error {
                    message: e.to_string(),
                },
            },
            Ok(AdminRequest::RevokeDevice { id }) => match c.revoke(&id).await {
                Ok(d) => AdminResponse::Revoked { id: d.id },
                Err(e) => AdminResponse::Error {
                    message: e.to_string(),
                },
            },
            Ok(AdminRequest::UninstallCode { id }) => match c.uninstall_code(&id) {
                Ok((d, code)) => {
                    crate::uninstall::audit_issued(c.store.as_ref(), &d);
                    AdminResponse::UninstallCode {
                        id: d.id,
                        hostname: d.hostname,
                        os: d.os,
                        code,
                    }
                }
                Err(e) => AdminResponse::Error {
                    message: e.to_string(),
                },
            },
            Ok(AdminRequest::Report { request, time_zone }) => {
                match time_zone.parse::<chrono_tz::Tz>() {
                    Err(_) => AdminResponse::Error {
                        message: format!("unknown time zone {time_zone}"),
                    },
                    Ok(tz) => match crate::report::render_for(c.clone(), request, tz).await {
                        Ok(files) => AdminResponse::Report { files },
                        Err(e) => AdminResponse::Error {
                            message: e.to_string(),
                        },
                    },
                }
            }
            Ok(AdminRequest::SubjectExport { user, time_zone }) => {
                subject(&c, &time_zone, move |c, tz| {
                    crate::subject::export_now(
                        c.store.as_ref(),
                        c.pseudonym_key(),
                        &crate::accounts::Actor::local_cli(),
                        &user,
                        tz,
                    )
                    .map(AdminResponse::SubjectExport)
                })
                .await
            }
            Ok(AdminRequest::SubjectErase {
                user,
                staff,
                time_zone,
            }) => {
                subject(&c, &time_zone, move |c, tz| {
                    crate::subject::erase(
                        c.store.as_ref(),
                        c.pseudonym_key(),
                        &crate::accounts::Actor::local_cli(),
                        &user,
                        staff,
                        tz,
                    )
                    .inspect(|_| crate::subject::reload_after_erasure(c))
                    .map(AdminResponse::SubjectErased)
                })
                .await
            }
            Ok(AdminRequest::Account(op)) => {
                let store = c.store.clone();
                let settings_changed = matches!(op, crate::accounts::AccountOp::SettingsSet { .. });
                let result = tokio::task::spawn_blocking(move || {
                    crate::accounts::apply_op(store.as_ref(), &op)
                })
                .await;
                // The collector keeps a copy of the switches ingest reads per event.
                if settings_changed && let Err(e) = c.reload_privacy_settings() {
                    warn!(error = %e, "Settings not re-read after a change");
                }
                match result {
                    Ok(Ok(outcome)) => AdminResponse::Account(outcome),
                    Ok(Err(e)) => AdminResponse::Error {
                        message: e.to_string(),
                    },
                    Err(e) => AdminResponse::Error {
                        message: e.to_string(),
                    },
                }
            }
        };
        let mut out = serde_json::to_vec(&resp).expect("responses serialise");
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// Runs a subject request off the async threads, in the named time zone.
async fn subject(
    c: &Arc<Collector>,
    time_zone: &str,
    f: impl FnOnce(&Collector, chrono_tz::Tz) -> Result<AdminResponse, crate::subject::SubjectError>
    + Send
    + 'static,
) -> AdminResponse {
    let Ok(tz) = time_zone.parse::<chrono_tz::Tz>() else {
        return AdminResponse::Error {
            message: format!("unknown time zone {time_zone}"),
        };
    };
    let c = c.clone();
    match tokio::task::spawn_blocking(move || f(&c, tz)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => AdminResponse::Error {
            message: e.to_string(),
        },
        Err(e) => AdminResponse::Error {
            message: e.to_string(),
        },
    }
}

/// Why a command run through the admin socket (or on the store directly, when no collector
/// runs) failed: the messages the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The socket was there but the exchange on it failed.
    #[error(transparent)]
    Socket(#[from] std::io::Error),
    /// The running collector answered with an error of its own.
    #[error("{0}")]
    Refused(String),
    #[error("the running collector refused: {0}")]
    RefusedToken(String),
    #[error("unexpected answer from the collector: {0}")]
    Unexpected(String),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error(transparent)]
    UninstallKey(#[from] crate::uninstall::UninstallKeyError),
}

impl AskError {
    /// An answer the command did not expect, named for the person reading it.
    pub fn unexpected(answer: &AdminResponse) -> Self {
        Self::Unexpected(format!("{answer:?}"))
    }
}

/// Makes an enrolment token through the running collector, or in the store when none runs;
/// returns the token and the CA fingerprint (`token create` and `bundle create`).
pub async fn create_token(
    dir: &crate::datadir::DataDir,
    uses: u32,
    expires_at: DateTime<Utc>,
    label: &str,
) -> Result<(String, String), AskError> {
    let req = AdminRequest::CreateToken {
        uses,
        expires_at,
        label: label.to_string(),
    };
    match ask(dir, &req).await? {
        Some(AdminResponse::Token {
            token,
            ca_fingerprint,
        }) => Ok((token, ca_fingerprint)),
        Some(AdminResponse::Error { message }) => Err(AskError::RefusedToken(message)),
        Some(other) => Err(AskError::unexpected(&other)),
        None => {
            let store = dir.open_store_offline()?;
            let token = crate::tokens::create(store.as_ref(), uses, expires_at, label)?;
            let ca = crate::ca::SchoolCa::load(&dir.ca_cert(), &dir.ca_key())?;
            Ok((token, ca.fingerprint()))
        }
    }
}

/// Sends one request to the collector running on this data directory. `Ok(None)` if none is
/// listening, or if the record is shared (PostgreSQL): then the caller writes to it directly,
/// as any number of processes may, and the running collectors re-read what they hold from it.
pub async fn ask(
    dir: &crate::datadir::DataDir,
    req: &AdminRequest,
) -> std::io::Result<Option<AdminResponse>> {
    if dir
        .store_location()
        .is_ok_and(|location| location.is_shared())
    {
        return Ok(None);
    }
    let stream = match UnixStream::connect(dir.admin_socket()).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut lines = BufReader::new(r).lines();
    let answer = lines.next_line().await?.ok_or_else(|| {
        std::io::Error::other("the collector closed the admin socket without answering")
    })?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(std::io::Error::other)
}
