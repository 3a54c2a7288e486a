//! `caretaker-collector`: command-line wiring for init, serve, token and device commands.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use caretaker_collector::admin::{self, AdminRequest, AdminResponse};
use caretaker_collector::ca::SchoolCa;
use caretaker_collector::datadir::{self, DataDir};
use caretaker_collector::server::{self, ServeOptions};
use caretaker_collector::store::{SledStore, Store};
use caretaker_collector::tokens;
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
    },
    /// Run the collector: gRPC for agents (mutual TLS) and the HTTPS JSON API.
    Serve {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:7443")]
        grpc_listen: SocketAddr,
        #[arg(long, default_value = "0.0.0.0:8443")]
        web_listen: SocketAddr,
    },
    /// Enrolment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Enrolled devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
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
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Stop a device from connecting again.
    Revoke {
        id: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caretaker-collector: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            hostnames,
            school,
        } => {
            let hostnames = if hostnames.is_empty() {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                hostnames
            };
            let report = datadir::init(&DataDir::new(&data_dir), &hostnames, &school)?;
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
                    grpc_listen,
                    web_listen,
                },
                shutdown,
                |b| println!("caretaker-collector: grpc={} web=https://{}", b.grpc, b.web),
            )
            .await
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
            let req = AdminRequest::CreateToken {
                uses,
                expires_at,
                label: label.clone(),
            };
            let (token, fingerprint) = match admin::ask(&dir.admin_socket(), &req).await? {
                Some(AdminResponse::Token {
                    token,
                    ca_fingerprint,
                }) => (token, ca_fingerprint),
                Some(AdminResponse::Error { message }) => {
                    bail!("the running collector refused: {message}")
                }
                Some(other) => bail!("unexpected answer from the collector: {other:?}"),
                None => {
                    let store = open_store_offline(&dir)?;
                    let token = tokens::create(&store, uses, expires_at, &label)?;
                    (
                        token,
                        SchoolCa::load(&dir.ca_cert(), &dir.ca_key())?.fingerprint(),
                    )
                }
            };
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
        Command::Device {
            command: DeviceCommand::Revoke { id, data_dir },
        } => {
            let dir = DataDir::new(data_dir);
            dir.check()?;
            match admin::ask(
                &dir.admin_socket(),
                &AdminRequest::RevokeDevice { id: id.clone() },
            )
            .await?
            {
                Some(AdminResponse::Revoked { id }) => println!("Revoked device {id}"),
                Some(AdminResponse::Error { message }) => bail!("{message}"),
                Some(other) => bail!("unexpected answer from the collector: {other:?}"),
                None => {
                    let store = open_store_offline(&dir)?;
                    store.revoke_device(&id, Utc::now())?;
                    println!("Revoked device {id}");
                }
            }
            Ok(())
        }
    }
}

fn open_store_offline(dir: &DataDir) -> anyhow::Result<SledStore> {
    SledStore::open(&dir.store()).with_context(|| {
        format!(
            "cannot open the store in {}; if a collector is running, its admin socket {} did not answer",
            dir.root().display(),
            dir.admin_socket().display()
        )
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
