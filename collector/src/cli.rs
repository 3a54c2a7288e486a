//! The collector's command line as clap types (commands, options, their help and defaults); `main.rs` wires each command to the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where `init` makes the data directory and every other command looks for it.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/caretaker-collector";

#[derive(Parser)]
#[command(
    name = "caretaker-collector",
    version,
    about = "Caretaker's central service: enrols school laptops and keeps their safeguarding record"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        min_free_space: crate::store::space::SpaceFloor,
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
        #[arg(long, default_value_t = crate::retention::DEFAULT_BATCH)]
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
    Report(crate::report::cli::ReportArgs),
    /// A person's records: export every one naming them (JSON and HTML), or erase their name
    /// (a pseudonym instead, except under legal hold). Works whether or not `serve` runs.
    Subject {
        #[command(subcommand)]
        command: crate::subject::cli::SubjectCommand,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
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
pub enum DigestCommand {
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
pub enum SettingsCommand {
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
pub enum UserCommand {
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
pub enum BundleCommand {
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
pub enum DeviceCommand {
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
