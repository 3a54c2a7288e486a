//! `caretaker-collector report`: asks a running collector over the admin socket, or opens the store itself when none runs, and writes the files.

use std::path::PathBuf;

use chrono::NaiveDate;

use super::{Audience, Format, PeriodKind, PeriodSpec, ReportError, ReportRequest, Sources};
use crate::admin::{self, AdminRequest, AdminResponse, AskError};
use crate::datadir::{DataDir, DataDirError};
use crate::store::StoreError;

/// Why the command made no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportCliError {
    #[error("say which period: --period week, month or term, or both --from and --to")]
    NoPeriod,
    /// An option's value this build does not know (clap lists the accepted ones first).
    #[error("{0}")]
    UnknownValue(&'static str),
    #[error(transparent)]
    Ask(#[from] AskError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("the report could not be made")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The command's arguments.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[arg(long, default_value = "/var/lib/caretaker-collector")]
    pub data_dir: PathBuf,
    /// week (Monday to Sunday), month, or term (from the term dates in the settings). The one
    /// containing --from (or --to, or today); with both --from and --to, the range instead.
    #[arg(long, value_parser = ["week", "month", "term"])]
    pub period: Option<String>,
    /// First day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: Option<NaiveDate>,
    /// Last day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub to: Option<NaiveDate>,
    /// governors (counts only, no names) or dsl (names pupils and laptops).
    #[arg(long, value_parser = ["governors", "dsl"])]
    pub audience: String,
    /// html, pdf (needs Chromium), or csv (one file per table, written into the directory --out).
    #[arg(long, value_parser = ["html", "pdf", "csv"])]
    pub format: String,
    /// The file to write (a directory for csv).
    #[arg(long)]
    pub out: PathBuf,
    /// The school's time zone, in which days begin and end.
    #[arg(long, default_value = "Europe/London")]
    pub time_zone: chrono_tz::Tz,
}

impl ReportArgs {
    fn request(&self) -> Result<ReportRequest, ReportCliError> {
        let kind = self.period.as_deref().and_then(PeriodKind::parse);
        if kind.is_none() && (self.from.is_none() || self.to.is_none()) {
            return Err(ReportCliError::NoPeriod);
        }
        Ok(ReportRequest {
            period: PeriodSpec {
                kind,
                from: self.from,
                to: self.to,
            },
            audience: Audience::parse(&self.audience)
                .ok_or(ReportCliError::UnknownValue("--audience"))?,
            format: Format::parse(&self.format).ok_or(ReportCliError::UnknownValue("--format"))?,
        })
    }
}

/// Runs the command.
pub async fn run(args: ReportArgs) -> Result<(), ReportCliError> {
    let req = args.request()?;
    let dir = DataDir::new(&args.data_dir);
    dir.check()?;
    let ask = AdminRequest::Report {
        request: req.clone(),
        time_zone: args.time_zone.name().to_string(),
    };
    let files = match admin::ask(&dir, &ask).await.map_err(AskError::from)? {
        Some(AdminResponse::Report { files }) => files,
        Some(AdminResponse::Error { message }) => return Err(AskError::Refused(message).into()),
        Some(other) => return Err(AskError::unexpected(&other).into()),
        None => {
            let dir = dir.clone();
            let tz = args.time_zone;
            let req = req.clone();
            tokio::task::spawn_blocking(move || -> Result<_, ReportCliError> {
                let store = dir.open_store_offline()?;
                let src = Sources::offline(store.as_ref(), tz)?;
                Ok(super::render(&src, &req)?)
            })
            .await??
        }
    };
    let written = super::write_files(&files, req.format, &args.out).map_err(|source| {
        ReportCliError::Write {
            path: args.out.clone(),
            source,
        }
    })?;
    for p in written {
        println!("Wrote {}", p.display());
    }
    Ok(())
}
