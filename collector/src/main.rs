//! `caretaker-collector`: command-line wiring for init, serve, user, token, bundle, device and subject commands.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use caretaker_collector::accounts::{self, AccountOp};
use caretaker_collector::admin::{self, AdminRequest, AdminResponse};
use caretaker_collector::bundle;
use caretaker_collector::datadir::{self, DataDir};
use caretaker_collector::server::{self, ServeOptions};
use chrono::Utc;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

const DEFAULT_DATA_DIR: &str = "/var/lib/caretaker-collector";

#[derive(Parser)]
#[command(
    name = "caretaker-collector",
    version,
    about = "Caretaker's central service: enrols school laptops and keeps their safeguarding record"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new data directory: the school's CA, the server certificate, the store and an admin token.
    Init {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Names agents use to reach this collector (repeatable). Default: localhost and 127.0.0.1.
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
        /// The school's name, written into the CA certificate.
        #[arg(long, default_value = "School")]
        school: String,
        /// Keep the record in PostgreSQL (a postgres:// URL) instead of the embedded store,
        /// so that several collectors can share it. The schema is created or upgraded here
        /// and at every start.
        #[arg(long = "store", value_name = "URL")]
        store_url: Option<String>,
        /// A second (third, ...) collector on the same database: share the CA and the
        /// uninstall secret of the first collector's data directory instead of making new ones.
        #[arg(long, value_name = "FIRST_DATA_DIR", requires = "store_url")]
        join: Option<PathBuf>,
    },
    /// Run the collector: gRPC for agents (mutual TLS), the dashboard and the HTTPS JSON API.
    Serve {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:7443")]
        grpc_listen: SocketAddr,
        #[arg(long, default_value = "0.0.0.0:8443")]
        web_listen: SocketAddr,
        /// The school's own certificate chain (PEM) for the dashboard, so browsers trust it
        /// without importing the collector's CA. Needs --web-key.
        #[arg(long, requires = "web_key")]
        web_cert: Option<PathBuf>,
        /// The private key (PEM) of --web-cert.
        #[arg(long, requires = "web_cert")]
        web_key: Option<PathBuf>,
        /// The school's time zone for the dashboard (an IANA name).
        #[arg(long, default_value = "Europe/London")]
        time_zone: chrono_tz::Tz,
        /// Free space the data directory's filesystem must keep: below it new events are
        /// refused and agents keep them until there is room (an amount such as 256MiB or
        /// 2GiB, a share such as 5%, or 0 for none).
        #[arg(long, default_value = "256MiB")]
        min_free_space: caretaker_collector::store::space::SpaceFloor,
        /// A TLS handshake on either port that takes longer is dropped.
        #[arg(long, default_value = "10s")]
        handshake_timeout: humantime::Duration,
        /// A connection on which nothing moved for this long is closed (live HTTP/2 clients
        /// are pinged well within it).
        #[arg(long, default_value = "90s")]
        idle_timeout: humantime::Duration,
        /// An HTTP/1 request whose headers have not all arrived by then is dropped.
        #[arg(long, default_value = "15s")]
        header_timeout: humantime::Duration,
        /// How often records past their retention (the settings' `retention`) are removed;
        /// the first run comes a minute after start, or sooner if this is shorter.
        #[arg(long, default_value = "1h")]
        purge_every: humantime::Duration,
        /// Records removed per purge transaction; ingest gets the store between them.
        #[arg(long, default_value_t = caretaker_collector::retention::DEFAULT_BATCH)]
        purge_batch: usize,
    },
    /// Dashboard accounts (works whether or not `serve` runs).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The DSL's digests.
    Digest {
        #[command(subcommand)]
        command: DigestCommand,
    },
    /// The school's settings: terms, licences, mail, digests (works whether or not `serve` runs).
    Settings {
        #[command(subcommand)]
        command: SettingsCommand,
    },
    /// Enrolment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Enrolment bundles: a token, the CA fingerprint and the collector's addresses in one file
    /// for `caretaker-installer install --bundle` and `rollout`.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Enrolled devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// The monitoring report for governors or the DSL, as HTML, PDF or CSV (works whether or
    /// not `serve` runs).
    Report(caretaker_collector::report::cli::ReportArgs),
    /// A person's records: export every one naming them (JSON and HTML), or erase their name
    /// (a pseudonym instead, except under legal hold). Works whether or not `serve` runs.
    Subject {
        #[command(subcommand)]
        command: caretaker_collector::subject::cli::SubjectCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make an enrolment token for the technician.
    Create {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// How many devices may enrol with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid, e.g. 7d, 12h, 30m.
        #[arg(long, default_value = "7d")]
        expires: humantime::Duration,
        #[arg(long, default_value = "")]
        label: String,
        /// Print one JSON line {"token", "ca_fingerprint"}.
        #[arg(long)]
        json: bool,
    },
    /// Make an API token with a role, for scripts (`Authorization: Bearer <token>`).
    CreateApi {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// network_manager, technician, dsl or governor.
        #[arg(long)]
        role: String,
        /// Who or what uses it, e.g. "MIS export script".
        #[arg(long)]
        label: String,
    },
}

#[derive(Subcommand)]
enum DigestCommand {
    /// Record a digest of what is new for a DSL now, whatever their schedule.
    SendNow {
        /// The DSL's username.
        #[arg(long)]
        user: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Print the settings as JSON (the defaults until set).
    Show {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Replace the settings with a JSON file (see README, "Digests and reports").
    Set {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a dashboard account. Prints a one-time password, which must be changed at first
    /// sign-in, unless --password-stdin gives the password.
    Add {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// network_manager, technician, dsl or governor.
        #[arg(long)]
        role: String,
        #[arg(long)]
        username: String,
        /// Read the password from standard input (one line) instead of making a one-time one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Stop an account signing in, and end its sessions.
    Disable {
        username: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Let a disabled account sign in again.
    Enable {
        username: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Give an account a new one-time password and end its sessions.
    Reset {
        username: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// List the accounts.
    List {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Set where an account's digests and reports are e-mailed ("" for none).
    Email {
        username: String,
        email: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Write an enrolment bundle (JSON, mode 0600: it holds a token) for the technician.
    Create {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// How many devices may enrol with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid, e.g. 14d, 12h.
        #[arg(long, default_value = "14d")]
        expires: humantime::Duration,
        #[arg(long, default_value = "")]
        label: String,
        /// The collector's gRPC address as laptops reach it, HOST:PORT (repeatable, tried in
        /// order). Default: the names in the server certificate, port 7443.
        #[arg(long = "collector")]
        collectors: Vec<String>,
        /// The file to write, e.g. school.caretaker. It must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Stop a device from connecting again.
    Revoke {
        id: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Print the code that lets a technician remove the agent from this device (audited).
    UninstallCode {
        id: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // PostgreSQL's notices ("relation ... already exists, skipping" from the idempotent schema
    // set-up at every start) arrive at INFO; say them only when asked for by name.
    caretaker_proto::host::init_logging(&["tokio_postgres"]);
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caretaker-collector: {}", chain_message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, as `{:#}` writes them, less each cause whose text is
/// already in the line: the store's errors (and tokio-postgres's, and redb's) write their cause
/// into their own message, for the dashboard and API that show only that message.
fn chain_message(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Report(args) => Ok(caretaker_collector::report::cli::run(args).await?),
        Command::Subject { command } => Ok(caretaker_collector::subject::cli::run(command).await?),
        Command::Init {
            data_dir,
            hostnames,
            school,
            store_url,
            join,
        } => {
            let hostnames = if hostnames.is_empty() {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                hostnames
            };
            let opts = datadir::InitOptions {
                store_url,
                join: join.map(DataDir::new),
            };
            let report = datadir::init(&DataDir::new(&data_dir), &hostnames, &school, &opts)?;
            println!("Created a Caretaker collector in {}", data_dir.display());
            println!(
                "  CA fingerprint (agents pin this): {}",
                report.ca_fingerprint
            );
            println!("  server names: {}", report.hostnames.join(", "));
            println!("  admin API token: {}/admin.token", data_dir.display());
            Ok(())
        }
        Command::Serve {
            data_dir,
            grpc_listen,
            web_listen,
            web_cert,
            web_key,
            time_zone,
            min_free_space,
            handshake_timeout,
            idle_timeout,
            header_timeout,
            purge_every,
            purge_batch,
        } => {
            let shutdown = CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                s.cancel();
            });
            server::serve(
                &DataDir::new(data_dir),
                ServeOptions {
                    web_cert,
                    web_key,
                    time_zone,
                    min_free_space,
                    timeouts: caretaker_collector::listen::Timeouts {
                        handshake: handshake_timeout.into(),
                        idle: idle_timeout.into(),
                        header_read: header_timeout.into(),
                    },
                    purge: caretaker_collector::retention::PurgeOptions {
                        every: purge_every.into(),
                        batch: purge_batch,
                    },
                    ..ServeOptions::new(grpc_listen, web_listen)
                },
                shutdown,
                |b| println!("caretaker-collector: grpc={} web=https://{}", b.grpc, b.web),
            )
            .await?;
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    data_dir,
                    uses,
                    expires,
                    label,
                    json,
                },
        } => {
            if uses == 0 {
                bail!("--uses must be at least 1");
            }
            let expires_at = Utc::now()
                + chrono::Duration::from_std(*expires).context("--expires is too long")?;
            let dir = DataDir::new(data_dir);
            dir.check()?;
            let (token, fingerprint) = admin::create_token(&dir, uses, expires_at, &label).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"token": token, "ca_fingerprint": fingerprint})
                );
            } else {
                println!(
                    "Enrolment token (valid for {uses} device(s) until {expires_at}):\n  {token}"
                );
                println!("CA fingerprint:\n  {fingerprint}");
                println!(
                    "On the laptop:\n  caretaker-agent enroll --collector HOST:7443 --token {token} --ca-fingerprint {fingerprint}"
                );
            }
            Ok(())
        }
        Command::Bundle {
            command:
                BundleCommand::Create {
                    data_dir,
                    uses,
                    expires,
                    label,
                    collectors,
                    out,
                },
        } => {
            let expires_at = Utc::now()
                + chrono::Duration::from_std(*expires).context("--expires is too long")?;
            let req = bundle::BundleRequest {
                uses,
                expires_at,
                label,
                collectors,
            };
            let b = bundle::create_file(&DataDir::new(data_dir), req, &out).await?;
            println!(
                "Wrote {} (\"{}\"): {} enrolment(s) until {}, collector {}",
                out.display(),
                b.label,
                b.uses,
                b.expires_at,
                b.collectors.join(", ")
            );
            println!(
                "On a laptop:  caretaker-installer install --bundle {} --package caretaker-agent_VERSION_amd64.deb",
                out.display()
            );
            println!(
                "On many:      caretaker-installer rollout --hosts hosts.txt --bundle {} --package caretaker-agent_VERSION_amd64.deb",
                out.display()
            );
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::CreateApi {
                    data_dir,
                    role,
                    label,
                },
        } => account(&data_dir, AccountOp::CreateApiToken { label, role }).await,
        Command::User { command } => {
            let (data_dir, op) = match command {
                UserCommand::Add {
                    data_dir,
                    role,
                    username,
                    password_stdin,
                } => {
                    let password = if password_stdin {
                        let mut line = String::new();
                        std::io::stdin()
                            .read_line(&mut line)
                            .context("cannot read the password from standard input")?;
                        Some(line.trim_end_matches(['\r', '\n']).to_string())
                    } else {
                        None
                    };
                    (
                        data_dir,
                        AccountOp::Add {
                            username,
                            role,
                            password,
                        },
                    )
                }
                UserCommand::Disable { username, data_dir } => {
                    (data_dir, AccountOp::Disable { username })
                }
                UserCommand::Enable { username, data_dir } => {
                    (data_dir, AccountOp::Enable { username })
                }
                UserCommand::Reset { username, data_dir } => {
                    (data_dir, AccountOp::Reset { username })
                }
                UserCommand::List { data_dir } => (data_dir, AccountOp::List),
                UserCommand::Email {
                    username,
                    email,
                    data_dir,
                } => (data_dir, AccountOp::SetEmail { username, email }),
            };
            account(&data_dir, op).await
        }
        Command::Digest {
            command: DigestCommand::SendNow { user, data_dir },
        } => account(&data_dir, AccountOp::DigestNow { username: user }).await,
        Command::Settings { command } => match command {
            SettingsCommand::Show { data_dir } => account(&data_dir, AccountOp::SettingsShow).await,
            SettingsCommand::Set { data_dir, file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let document: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                account(&data_dir, AccountOp::SettingsSet { document }).await
            }
        },
        Command::Device {
            command: DeviceCommand::Revoke { id, data_dir },
        } => {
            let dir = DataDir::new(data_dir);
            dir.check()?;
            match admin::ask(&dir, &AdminRequest::RevokeDevice { id: id.clone() }).await? {
                Some(AdminResponse::Revoked { id }) => println!("Revoked device {id}"),
                Some(AdminResponse::Error { message }) => bail!("{message}"),
                Some(other) => bail!("unexpected answer from the collector: {other:?}"),
                None => {
                    let store = dir.open_store_offline()?;
                    store.revoke_device(&id, Utc::now())?;
                    println!("Revoked device {id}");
                }
            }
            Ok(())
        }
        Command::Device {
            command: DeviceCommand::UninstallCode { id, data_dir },
        } => {
            let dir = DataDir::new(data_dir);
            dir.check()?;
            let (hostname, code) = caretaker_collector::uninstall::for_cli(&dir, &id).await?;
            println!("{code}");
            eprintln!(
                "Uninstall code for {hostname} ({id}). On the laptop: sudo CARETAKER_UNINSTALL_CODE={code} apt remove caretaker-agent"
            );
            Ok(())
        }
    }
}

/// Runs an account operation on the running collector, or on the store if none runs, and
/// prints the outcome.
async fn account(data_dir: &std::path::Path, op: AccountOp) -> anyhow::Result<()> {
    let dir = DataDir::new(data_dir);
    dir.check()?;
    let outcome = match admin::ask(&dir, &AdminRequest::Account(op.clone())).await? {
        Some(AdminResponse::Account(o)) => o,
        Some(AdminResponse::Error { message }) => bail!("{message}"),
        Some(other) => bail!("unexpected answer from the collector: {other:?}"),
        None => {
            let store = dir.open_store_offline()?;
            accounts::apply_op(store.as_ref(), &op)?
        }
    };
    if matches!(op, AccountOp::List) {
        if outcome.users.is_empty() {
            println!(
                "No accounts yet. Add one with `caretaker-collector user add --role network_manager --username NAME`."
            );
        }
        for (name, role, state) in &outcome.users {
            println!("{name:<24} {role:<16} {state}");
        }
        return Ok(());
    }
    println!("{}", outcome.message);
    if let Some(secret) = outcome.secret {
        match op {
            AccountOp::CreateApiToken { .. } => println!("Token (shown once):\n  {secret}"),
            _ => println!(
                "One-time password (shown once; it must be changed at first sign-in):\n  {secret}"
            ),
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
