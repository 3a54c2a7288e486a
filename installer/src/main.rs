//! `caretaker-installer`: command-line wiring for install (one laptop), rollout (many, over SSH),
//! and the start/stop the agent package's maintainer scripts call.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use caretaker_installer::install::{self, Layout, Outcome};
use caretaker_installer::rollout::{self, Options, Status};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "caretaker-installer",
    version,
    about = "Puts the Caretaker agent on school laptops: one with `install`, many over SSH with `rollout`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// On this laptop: install the package (if given), enrol with the bundle, enable and start the
    /// agent. Harmless on a laptop that is already enrolled.
    Install {
        /// The enrolment bundle from `caretaker-collector bundle create`.
        #[arg(long)]
        bundle: PathBuf,
        /// The agent package to install first (caretaker-agent_VERSION_amd64.deb).
        #[arg(long)]
        package: Option<PathBuf>,
        /// Print the result as one JSON line (what `rollout` reads).
        #[arg(long)]
        json: bool,
    },
    /// Install and enrol many laptops over SSH, N at a time; prints a summary table and writes it as CSV.
    Rollout {
        /// One host per line: [user@]host[:port]; `#` starts a comment.
        #[arg(long)]
        hosts: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        /// The agent package (caretaker-agent_VERSION_amd64.deb).
        #[arg(long)]
        package: PathBuf,
        /// How many laptops at once.
        #[arg(long, default_value_t = 10)]
        parallel: usize,
        /// Extra tries for a transient failure (unreachable, dpkg busy), with growing pauses.
        #[arg(long, default_value_t = 2)]
        retries: u32,
        /// Pause before the first retry, e.g. 5s; doubled for each further one.
        #[arg(long, default_value = "5s")]
        retry_pause: humantime::Duration,
        /// Give up connecting to a laptop after this long.
        #[arg(long, default_value = "10s")]
        connect_timeout: humantime::Duration,
        /// Log in as this user where the hosts file names none (sudo -n is used if not root).
        #[arg(long)]
        user: Option<String>,
        /// SSH private key to use.
        #[arg(short = 'i', long)]
        identity: Option<PathBuf>,
        /// Extra ssh option, KEY=VALUE (repeatable), e.g. UserKnownHostsFile=./known_hosts.
        #[arg(short = 'o', long = "ssh-option")]
        ssh_options: Vec<String>,
        /// Where to write the CSV summary. Default: rollout-YYYYmmdd-HHMMSS.csv here.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// For the package's postinst: start the agent again if this laptop is enrolled.
    Start,
    /// For the package's prerm: stop the agent cleanly.
    Stop,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("caretaker-installer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let layout = Layout::default();
    match cli.command {
        Command::Install {
            bundle,
            package,
            json,
        } => {
            let outcome = install::install(&layout, &bundle, package.as_deref());
            if json {
                println!("{}", serde_json::to_string(&outcome)?);
            } else {
                println!("{}", outcome.sentence());
            }
            Ok(match outcome {
                Outcome::Failed { .. } => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Rollout {
            hosts,
            bundle,
            package,
            parallel,
            retries,
            retry_pause,
            connect_timeout,
            user,
            identity,
            ssh_options,
            csv,
        } => {
            let text = std::fs::read_to_string(&hosts)
                .with_context(|| format!("cannot read the hosts file {}", hosts.display()))?;
            let list = rollout::parse_hosts(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", hosts.display()))?;
            for f in [&bundle, &package] {
                anyhow::ensure!(f.is_file(), "{} does not exist", f.display());
            }
            // Refuse a bundle that cannot work before touching any laptop.
            let b = caretaker_proto::bundle::Bundle::parse(
                &bundle.display().to_string(),
                &std::fs::read(&bundle)?,
            )?;
            b.check_usable(&bundle.display().to_string(), chrono::Utc::now())?;
            let csv_path = csv.unwrap_or_else(|| {
                PathBuf::from(format!(
                    "rollout-{}.csv",
                    chrono::Local::now().format("%Y%m%d-%H%M%S")
                ))
            });
            let control = tempfile_dir()?;
            let opts = Options {
                bundle,
                package,
                parallel,
                retries,
                retry_pause: *retry_pause,
                connect_timeout: Duration::from(connect_timeout),
                default_user: user,
                identity,
                ssh_options,
                control_dir: control.clone(),
                progress: true,
            };
            eprintln!(
                "Rolling out to {} host(s), {} at a time",
                list.len(),
                parallel.max(1)
            );
            let results = rollout::rollout(&list, &opts);
            let _ = std::fs::remove_dir_all(&control);
            print!("{}", rollout::table(&results));
            std::fs::write(&csv_path, rollout::csv(&results))
                .with_context(|| format!("cannot write {}", csv_path.display()))?;
            println!("Summary written to {}", csv_path.display());
            let failed = results
                .iter()
                .any(|r| matches!(r.status, Status::Failed(_)));
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Start => {
            match install::start_if_enrolled(&layout)? {
                None => println!(
                    "caretaker-agent is not enrolled yet: run `caretaker-installer install --bundle FILE`"
                ),
                Some(s) => println!("caretaker-agent started ({s:?})"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop => {
            install::stop(&layout)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A private folder for ssh's connection-sharing sockets; short, as socket paths must be.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ct-ssh-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}
