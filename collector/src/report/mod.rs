//! The monitoring report for governors and the DSL: fleet compliance over a period, incidents and their outcomes, trends, silent laptops, licences and policy changes, as HTML, PDF or CSV.
//!
//! `period` works out the days; `gather` reads the store into `model` types (`incident_facts`
//! the incidents' part); `chart` draws SVG; `output` renders HTML (askama), CSV and PDF (headless Chromium printing the HTML).
//! `render` is the one entry point the CLI, the admin socket, the dashboard and the scheduled
//! e-mails share. Invariant: the governors' version is built from `GovernorsReport`, which has
//! no field that can hold a name, so no format of it can leak one.

pub mod chart;
pub mod cli;
mod gather;
mod incident_facts;
pub mod model;
pub mod output;
pub mod period;

use std::sync::Arc;

use chrono::Utc;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

pub use gather::{SILENT_DAYS, Sources};
pub use model::{DslReport, GovernorsReport};
pub use period::{Period, PeriodError, PeriodKind, PeriodSpec};

use crate::classify::fleet::FleetCounts;
use crate::service::Collector;
use crate::settings::Settings;
use crate::store::{Store, StoreError};

/// Who a report is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Counts only: no pupil, member of staff, laptop name or serial.
    Governors,
    /// May name pupils and laptops.
    Dsl,
}

impl Audience {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "governors" => Some(Audience::Governors),
            "dsl" => Some(Audience::Dsl),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Governors => "governors",
            Audience::Dsl => "dsl",
        }
    }
}

/// What shape the report comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One standalone page (styles inline, charts as inline SVG, no script).
    Html,
    /// The HTML printed by headless Chromium (A4).
    Pdf,
    /// One CSV file per table.
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "html" => Some(Format::Html),
            "pdf" => Some(Format::Pdf),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// A report request, as the CLI, the admin socket, the dashboard and schedules make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    pub period: PeriodSpec,
    pub audience: Audience,
    pub format: Format,
}

/// One output file: `report.html`, `report.pdf`, or a table's `NAME.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFile {
    pub name: String,
    pub content_type: String,
    /// Base64 on the admin socket, so a PDF is not a JSON array of numbers four times its size.
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Why a report could not be made; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Period(#[from] PeriodError),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Pdf(String),
}

impl<'a> Sources<'a> {
    /// From a running collector: devices and installation counts from its memory.
    pub fn from_collector(c: &'a Collector, tz: Tz) -> Result<Self, StoreError> {
        Ok(Sources {
            store: c.store.as_ref(),
            devices: c.device_cache().all(),
            software: c.software_installations(),
            settings: Settings::current(c.store.as_ref())?,
            tz,
            now: Utc::now(),
        })
    }

    /// From a store no collector holds (the CLI while `serve` is not running): installation
    /// counts are folded from the saved per-device states and the events after them, as the
    /// collector does at start-up, without saving anything.
    pub fn offline(store: &'a dyn Store, tz: Tz) -> Result<Self, StoreError> {
        let devices = store.devices()?;
        let mut counts = FleetCounts::default();
        for (device, through, state) in store.derived("software")? {
            let _ = counts.import_device(&device, through, state);
        }
        for d in &devices {
            let from = counts.through_seq(&d.id);
            store.device_events_after(&d.id, from, "software.", &mut |e| {
                let _ = counts.fold(&e.device_id, e.seq, &e.kind, &e.details);
            })?;
        }
        Ok(Sources {
            store,
            devices,
            software: counts
                .device_counts()
                .into_iter()
                .map(|(k, n)| (k.source, k.name, n))
                .collect(),
            settings: Settings::current(store)?,
            tz,
            now: Utc::now(),
        })
    }
}

/// The period a request means, and the one before it, in the sources' zone and settings.
pub fn resolve(src: &Sources, spec: &PeriodSpec) -> Result<(Period, Period), PeriodError> {
    let today = src.now.with_timezone(&src.tz).date_naive();
    period::resolve(spec, today, &src.settings.terms, src.tz)
}

/// The governors' report for a period.
pub fn governors(src: &Sources, spec: &PeriodSpec) -> Result<GovernorsReport, ReportError> {
    let (p, prev) = resolve(src, spec)?;
    Ok(gather::gather(src, &p, &prev)?.into_governors())
}

/// The DSL's report for a period (names pupils and laptops).
pub fn dsl(src: &Sources, spec: &PeriodSpec) -> Result<DslReport, ReportError> {
    let (p, prev) = resolve(src, spec)?;
    Ok(gather::gather(src, &p, &prev)?.into_dsl())
}

fn file(name: &str, content_type: &str, bytes: Vec<u8>) -> ReportFile {
    ReportFile {
        name: name.into(),
        content_type: content_type.into(),
        bytes,
    }
}

fn csv_files(files: Vec<output::CsvFile>) -> Vec<ReportFile> {
    files
        .into_iter()
        .map(|(n, b)| file(&n, "text/csv; charset=utf-8", b))
        .collect()
}

/// Makes a report: one file for HTML and PDF, one per table for CSV. Blocking (reads the
/// store, may run Chromium): call it off the async threads.
pub fn render(src: &Sources, req: &ReportRequest) -> Result<Vec<ReportFile>, ReportError> {
    if req.format == Format::Csv {
        return Ok(csv_files(match req.audience {
            Audience::Governors => output::governors_csv(&governors(src, &req.period)?),
            Audience::Dsl => output::dsl_csv(&dsl(src, &req.period)?),
        }));
    }
    // HTML and PDF are the same page: the PDF is that page printed.
    let html = match req.audience {
        Audience::Governors => output::governors_html(&governors(src, &req.period)?, true),
        Audience::Dsl => output::dsl_html(&dsl(src, &req.period)?, true),
    };
    Ok(vec![if req.format == Format::Pdf {
        file("report.pdf", "application/pdf", output::pdf(&html)?)
    } else {
        file("report.html", "text/html; charset=utf-8", html.into_bytes())
    }])
}

/// `render` against a running collector, off the async threads. For the admin socket, the
/// dashboard and scheduled e-mails. The caller decides who may ask for which audience.
pub async fn render_for(
    c: Arc<Collector>,
    req: ReportRequest,
    tz: Tz,
) -> Result<Vec<ReportFile>, ReportError> {
    tokio::task::spawn_blocking(move || {
        let src = Sources::from_collector(&c, tz)?;
        render(&src, &req)
    })
    .await
    .unwrap_or_else(|e| Err(ReportError::Store(StoreError::engine("", e))))
}

/// A report's dashboard fragment (no `<html>`; links `/static/report.css`).
pub async fn fragment_for(
    c: Arc<Collector>,
    spec: PeriodSpec,
    audience: Audience,
    tz: Tz,
) -> Result<(String, String), ReportError> {
    tokio::task::spawn_blocking(move || {
        let src = Sources::from_collector(&c, tz)?;
        Ok(match audience {
            Audience::Governors => {
                let r = governors(&src, &spec)?;
                (
                    r.meta.period_label.clone(),
                    output::governors_html(&r, false),
                )
            }
            Audience::Dsl => {
                let r = dsl(&src, &spec)?;
                (r.meta.period_label.clone(), output::dsl_html(&r, false))
            }
        })
    })
    .await
    .unwrap_or_else(|e| Err(ReportError::Store(StoreError::engine("", e))))
}

/// Writes a report's files: HTML and PDF to `out`; CSV tables into the directory `out`
/// (created if missing), one file per table, replacing files of the same name.
pub fn write_files(
    files: &[ReportFile],
    format: Format,
    out: &std::path::Path,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    match format {
        Format::Csv => {
            std::fs::create_dir_all(out)?;
            files
                .iter()
                .map(|f| {
                    let p = out.join(&f.name);
                    std::fs::write(&p, &f.bytes)?;
                    Ok(p)
                })
                .collect()
        }
        Format::Html | Format::Pdf => {
            let f = files
                .first()
                .ok_or_else(|| std::io::Error::other("the report produced no file"))?;
            std::fs::write(out, &f.bytes)?;
            Ok(vec![out.to_path_buf()])
        }
    }
}

#[cfg(test)]
mod tests;
