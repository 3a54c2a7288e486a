//! `caretaker-agent`: command-line wiring for enroll, run, status and uninstall-check.

use std::path::PathBuf;

use anyhow::Context;
use caretaker_agent::config::Config;
use caretaker_agent::state::{StateDir, default_config_file, default_state_dir};
use caretaker_agent::status::Status;
use caretaker_agent::{enroll, os, runtime};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "caretaker-agent",
    version,
    about = "Caretaker's laptop agent: keeps a school laptop within its safeguarding policy and reports what happened"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol this machine with the school's collector: with `--bundle FILE`, or with
    /// `--collector`, `--token` and `--ca-fingerprint`.
    Enroll {
        /// The collector's gRPC address, HOST:PORT.
        #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
        collector: Option<String>,
        /// The enrolment token; from the environment it stays out of the process list.
        #[arg(
            long,
            env = "CARETAKER_ENROLL_TOKEN",
            hide_env_values = true,
            required_unless_present = "bundle"
        )]
        token: Option<String>,
        /// The CA fingerprint printed by `caretaker-collector token create` (sha256:...).
        #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
        ca_fingerprint: Option<String>,
        /// An enrolment bundle (`caretaker-collector bundle create`): its collectors are tried
        /// in order. The MSI passes its BUNDLE property here.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Succeed without doing anything when this machine is already enrolled (a reinstall
        /// or an upgrade keeps its enrolment).
        #[arg(long)]
        if_not_enrolled: bool,
        #[arg(long, default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
    },
    /// Run the agent (as a service).
    Run {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// TOML configuration file (on Windows `%ProgramData%\Caretaker\agent.toml` when
        /// present and none is named).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The Windows service: install (with restart on failure), start, stop, uninstall, and
    /// `run`, which Windows' Service Control Manager calls.
    #[cfg(windows)]
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Show enrolment, connection, spool depth and policy version.
    Status {
        #[arg(long, default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print every kernel uevent this machine receives, one datagram per line in hex, as the
    /// USB probe receives them (a diagnostic; the USB probe's test data is recorded with it).
    #[cfg(target_os = "linux")]
    #[command(hide = true)]
    RecordUevents,
    /// Check this laptop's uninstall code before the agent is removed (the package's prerm
    /// runs it). Exits 0 if removal may go ahead; otherwise 2, and the attempt is reported to
    /// the collector. The code comes from the dashboard's device page or
    /// `caretaker-collector device uninstall-code DEVICE_ID`.
    UninstallCheck {
        /// The uninstall code; from the environment, as `CARETAKER_UNINSTALL_CODE=... apt remove caretaker-agent`.
        #[arg(long, env = "CARETAKER_UNINSTALL_CODE", hide_env_values = true)]
        code: Option<String>,
        /// The state folder; by default the one `--config` names, else /var/lib/caretaker-agent.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The agent's configuration, read for its `state_dir` (the package passes /etc/caretaker/agent.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// What is being done, for the report (e.g. "package removal").
        #[arg(long, default_value = "package removal")]
        action: String,
    },
}

#[cfg(windows)]
#[derive(Subcommand)]
enum ServiceCommand {
    /// Install the CaretakerAgent service (automatic start, LocalSystem, restarted on failure).
    Install,
    /// Stop and remove the service (state and configuration stay).
    Uninstall,
    Start,
    Stop,
    /// Run as the service: only Windows' Service Control Manager starts this.
    Run {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    #[cfg(windows)]
    if matches!(cli.command, Command::Service(ServiceCommand::Run { .. })) {
        caretaker_proto::host::init_logging_to(&[], service_log());
    } else {
        caretaker_proto::host::init_logging(&[]);
    }
    #[cfg(not(windows))]
    caretaker_proto::host::init_logging(&[]);
    let code = match run(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("caretaker-agent: {e:#}");
            1
        }
    };
    // Exit without dropping the runtime: dropping it waits for every blocking thread, and one
    // that a stalled probe left inside a system call (`probe::liveness`) would hold the stop up
    // until systemd kills the agent. Everything worth keeping is durable by now.
    std::process::exit(code)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Enroll {
            collector,
            token,
            ca_fingerprint,
            bundle,
            if_not_enrolled,
            state_dir,
        } => {
            let state = StateDir::new(&state_dir);
            if if_not_enrolled && let Some(e) = state.load_enrollment()? {
                println!(
                    "Already enrolled as device {} with the collector at {}",
                    e.device_id, e.collector
                );
                return Ok(());
            }
            let e = match (bundle, collector, token, ca_fingerprint) {
                (Some(bundle), ..) => enroll::enroll_with_bundle(&state, &bundle).await?,
                (None, Some(collector), Some(token), Some(fingerprint)) => {
                    enroll::enroll(&state, &collector, &token, &fingerprint).await?
                }
                _ => anyhow::bail!(
                    "give --bundle FILE, or --collector, --token and --ca-fingerprint"
                ),
            };
            println!(
                "Enrolled as device {} with the collector at {}",
                e.device_id, e.collector
            );
            println!(
                "Start the agent: caretaker-agent run --state-dir {}",
                state_dir.display()
            );
            Ok(())
        }
        Command::Run { state_dir, config } => {
            let config = run_config(config, state_dir)?;
            let shutdown = CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                stop_requested().await;
                s.cancel();
            });
            Ok(runtime::run(config, shutdown).await?)
        }
        #[cfg(windows)]
        Command::Service(command) => service(command).await,
        Command::Status { state_dir, json } => status(&StateDir::new(state_dir), json),
        #[cfg(target_os = "linux")]
        Command::RecordUevents => record_uevents().await,
        Command::UninstallCheck {
            code,
            state_dir,
            config,
            action,
        } => {
            let state_dir = state_dir.unwrap_or_else(|| {
                let configured = config.as_deref().map(|c| Config::load(Some(c), None));
                match configured {
                    Some(Ok(c)) => c.state_dir,
                    Some(Err(e)) => {
                        let dir = default_state_dir();
                        eprintln!("caretaker-agent: {e}; using {}", dir.display());
                        dir
                    }
                    None => default_state_dir(),
                }
            });
            uninstall_check(&StateDir::new(state_dir), code.as_deref(), &action)
        }
    }
}

/// The configuration `run` and `service run` load: the file named, else the OS's default one.
fn run_config(config: Option<PathBuf>, state_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let config = config.or_else(default_config_file);
    Ok(Config::load(config.as_deref(), state_dir)?)
}

/// The service's log, `agent.log` in the default state folder (`%ProgramData%\Caretaker`, made private first),
/// appended to; one earlier generation is kept once it passes 10 MiB. None if it cannot be opened
/// (the service then runs unlogged rather than not at all).
#[cfg(windows)]
fn service_log() -> Option<std::fs::File> {
    let dir = default_state_dir();
    os::perms::create_private_dir(&dir).ok()?;
    let path = dir.join("agent.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > 10 << 20) {
        let _ = std::fs::rename(&path, dir.join("agent.log.1"));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

#[cfg(windows)]
async fn service(command: ServiceCommand) -> anyhow::Result<()> {
    use os::windows::service;
    match command {
        ServiceCommand::Install => {
            service::install()?;
            println!(
                "Installed the {} service; start it with `caretaker-agent service start`",
                service::SERVICE_NAME
            );
        }
        ServiceCommand::Uninstall => {
            service::uninstall()?;
            println!("Removed the {} service", service::SERVICE_NAME);
        }
        ServiceCommand::Start => service::start()?,
        ServiceCommand::Stop => service::stop()?,
        ServiceCommand::Run { state_dir, config } => {
            let config = run_config(config, state_dir)?;
            let handle = tokio::runtime::Handle::current();
            let body: service::Body = Box::new(move |stop| {
                handle
                    .block_on(runtime::run(config, stop))
                    .map_err(|e| e.to_string())
            });
            tokio::task::spawn_blocking(move || service::run(body)).await??;
        }
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM (systemd's stop) where there is one.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints `uevent <hex>` for each kernel uevent until killed, after a `recording uevents` line
/// that says the socket is bound (so a recorder knows when to start plugging).
#[cfg(target_os = "linux")]
async fn record_uevents() -> anyhow::Result<()> {
    use std::io::Write;
    let socket = os::linux::uevent::UeventSocket::open().context("open the uevent socket")?;
    println!("recording uevents");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut buf).await.context("receive a uevent")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "uevent {}", hex::encode(&buf[..n]))?;
        out.flush()?;
    }
}

fn uninstall_check(state: &StateDir, code: Option<&str>, action: &str) -> anyhow::Result<()> {
    use caretaker_agent::details;
    use caretaker_agent::uninstall::{self, Check, Report};
    let result = uninstall::check(state, code)?;
    let report = |kind: &str, details| Report {
        kind: kind.into(),
        occurred_at: chrono::Utc::now(),
        user: uninstall::acting_user(),
        details,
    };
    match result {
        Check::NotEnrolled => println!("This laptop is not enrolled: no uninstall code is needed."),
        Check::Accepted | Check::NoCodeYet => {
            let verified = result == Check::Accepted;
            uninstall::mark_uninstalling(
                state,
                &report(
                    "agent.uninstalled",
                    details! { "action" => action, "code_verified" => verified },
                ),
            )
            .with_context(|| format!("cannot write {}", state.uninstalling().display()))?;
            if verified {
                println!("Uninstall code accepted.");
            } else {
                eprintln!(
                    "caretaker-agent: this laptop has not yet received its uninstall code from the collector; the {action} goes ahead, recorded as unverified."
                );
            }
        }
        Check::Missing | Check::Wrong => {
            let reason = if result == Check::Missing {
                "no code given"
            } else {
                "wrong code"
            };
            let left = uninstall::leave_report(
                state,
                &report(
                    "agent.uninstall_refused",
                    details! { "action" => action, "reason" => reason },
                ),
            );
            if let Err(e) = &left {
                eprintln!("caretaker-agent: could not record this attempt: {e}");
            }
            let device = state
                .load_enrollment()
                .ok()
                .flatten()
                .map(|e| e.device_id)
                .unwrap_or_default();
            eprintln!(
                "caretaker-agent: refused ({reason}). Removing the agent needs this laptop's uninstall code.\n\
                 The network manager or a technician finds it on the dashboard (this device's page, \"Uninstall code\")\n\
                 or on the collector with: caretaker-collector device uninstall-code {device}\n\
                 Then: {REMOVE_WITH_CODE}\n\
                 This attempt has been reported to the collector."
            );
            std::process::exit(2);
        }
    }
    Ok(())
}

/// How a technician removes the agent with its code, as this OS's package does it.
#[cfg(not(windows))]
const REMOVE_WITH_CODE: &str =
    "sudo CARETAKER_UNINSTALL_CODE=XXXX-XXXX-XXXX apt remove caretaker-agent";
#[cfg(windows)]
const REMOVE_WITH_CODE: &str = "msiexec /x caretaker-agent.msi UNINSTALLCODE=XXXX-XXXX-XXXX";

fn status(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let Some(enrollment) = state.load_enrollment()? else {
        if json {
            println!("{}", serde_json::json!({"enrolled": false}));
        } else {
            println!("Not enrolled (no {}).", state.enrollment().display());
        }
        return Ok(());
    };
    let last: Option<Status> = std::fs::read(state.status())
        .ok()
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .with_context(|| format!("{} is damaged", state.status().display()))?;
    let running = last.as_ref().is_some_and(|s| os::process_alive(s.pid));
    if json {
        println!(
            "{}",
            serde_json::json!({"enrolled": true, "enrollment": enrollment, "running": running, "status": last})
        );
        return Ok(());
    }
    println!(
        "Enrolled:      yes, device {} (since {})",
        enrollment.device_id, enrollment.enrolled_at
    );
    println!("Collector:     {}", enrollment.collector);
    match last {
        None => println!("Agent:         has not run yet"),
        Some(s) => {
            println!(
                "Agent:         {}",
                if running {
                    format!("running (pid {})", s.pid)
                } else {
                    "not running".into()
                }
            );
            let conn = match (running && s.connected, &s.last_error) {
                (true, _) => format!(
                    "connected since {}",
                    s.connected_since.map(|t| t.to_string()).unwrap_or_default()
                ),
                (false, Some(e)) => format!("not connected ({e})"),
                (false, None) => "not connected".into(),
            };
            println!("Connection:    {conn}");
            println!(
                "Spool:         {} event(s) waiting, {} bytes",
                s.spool_events, s.spool_bytes
            );
            println!("Policy:        version {}", s.policy_version);
            if running {
                for p in &s.stalled_probes {
                    println!(
                        "Probe stalled: {} (no progress since {}; restarted {} time(s) in the last hour)",
                        p.probe, p.since, p.restarts_last_hour
                    );
                }
            }
            if let Some(t) = s.updated_at {
                println!("(as of {t})");
            }
        }
    }
    Ok(())
}
