//! `caretaker-collector`: command-line wiring for init, serve, user, token, bundle, device and subject commands.

use anyhow::{Context, bail};
use caretaker_collector::accounts::{self, AccountOp};
use caretaker_collector::admin::{self, AdminRequest, AdminResponse};
use caretaker_collector::bundle;
use caretaker_collector::cli::{
    BundleCommand, Cli, Command, DeviceCommand, DigestCommand, SettingsCommand, TokenCommand,
    UserCommand,
};
use caretaker_collector::datadir::{self, DataDir};
use caretaker_collector::server::{self, ServeOptions};
use chrono::Utc;
use clap::Parser;
use tokio_util::sync::CancellationToken;

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
            let issued = caretaker_collector::uninstall::for_cli(&dir, &id).await?;
            let (who, command) =
                caretaker_collector::uninstall::removal_command(&issued.os, &issued.code);
            println!("{}", issued.code);
            eprintln!(
                "Uninstall code for {} ({id}). On the laptop, {who}: {command}",
                issued.hostname
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
