//! Turns a gathered report into bytes: HTML (askama), one CSV per table, and PDF by printing that HTML with headless Chromium.
//!
//! Each format has a governors' and a DSL function, and the governors' ones take a
//! `GovernorsReport`, which has no field for a name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use askama::Template;

use super::ReportError;
use super::chart;
use super::gather::SILENT_DAYS;
use super::model::*;

/// The report's stylesheet, inlined into standalone HTML and served as `/static/report.css`.
pub const CSS: &str = include_str!("../../static/report.css");

/// What both audiences' HTML shows alike: the charts drawn from the counts, and the page's frame.
struct Figures {
    charts: Vec<(&'static str, String)>,
    media_chart: String,
    media_totals: (u32, u32, u32, u32),
    silent_days: i64,
    standalone: bool,
    css: &'static str,
}

impl Figures {
    fn new(c: &Counts, standalone: bool) -> Self {
        Figures {
            charts: c
                .compliance
                .iter()
                .map(|s| (s.title, chart::compliance(s)))
                .collect(),
            media_chart: chart::media(&c.media),
            media_totals: c.media.iter().fold((0, 0, 0, 0), |t, m| {
                (
                    t.0 + m.refused,
                    t.1 + m.allowed,
                    t.2 + m.scanned_clean,
                    t.3 + m.infected,
                )
            }),
            silent_days: SILENT_DAYS,
            standalone,
            css: CSS,
        }
    }
}

#[derive(Template)]
#[template(path = "report_governors.html")]
struct GovernorsHtml<'a> {
    r: &'a GovernorsReport,
    fig: Figures,
}

/// At most this many named rows per table in the DSL's HTML and PDF (the most recent
/// incidents, the longest-silent laptops); the CSV has them all. A 7,000-row table is neither
/// readable on paper nor quick to print.
pub const NAMED_ROWS: usize = 200;

#[derive(Template)]
#[template(path = "report_dsl.html")]
struct DslHtml<'a> {
    r: &'a DslReport,
    named_rows: usize,
    fig: Figures,
}

/// The governors' report as HTML: a whole document (`standalone`) or a fragment for the
/// dashboard, which links `/static/report.css`.
pub fn governors_html(r: &GovernorsReport, standalone: bool) -> String {
    GovernorsHtml {
        r,
        fig: Figures::new(&r.counts, standalone),
    }
    .render()
    .expect("the report template renders")
}

/// The DSL's report as HTML.
pub fn dsl_html(r: &DslReport, standalone: bool) -> String {
    DslHtml {
        r,
        named_rows: NAMED_ROWS,
        fig: Figures::new(&r.counts, standalone),
    }
    .render()
    .expect("the report template renders")
}

/// One CSV field: quoted when needed, and a leading `= + - @` defused so a spreadsheet never
/// runs it as a formula (the same rule as the incident export).
fn field(s: &str) -> String {
    crate::timefmt::csv_field(s)
}

fn csv(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Vec<u8> {
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| field(c)).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    };
    line(
        &mut out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for r in rows {
        line(&mut out, &r);
    }
    out.into_bytes()
}

/// A named CSV file.
pub type CsvFile = (String, Vec<u8>);

/// The tables both audiences get.
fn common_csv(meta: &Meta, c: &Counts) -> Vec<CsvFile> {
    let mut files = Vec::new();
    let period = format!("{} ({})", meta.period_label, meta.period_dates);
    files.push((
        "summary.csv".into(),
        csv(
            &["measure", "value"],
            [
                ("school", meta.school.clone()),
                ("period", period),
                ("previous_period", meta.previous_dates.clone()),
                ("audience", meta.audience.to_string()),
                ("generated", meta.generated.clone()),
                ("time_zone", meta.time_zone.clone()),
                ("devices", c.devices.to_string()),
                (
                    "safeguarding_incidents",
                    c.safeguarding_incidents.to_string(),
                ),
                ("technical_incidents", c.technical_incidents.to_string()),
                ("silent_devices", c.silent.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| vec![k.to_string(), v]),
        ),
    ));
    let mut header = vec!["date".to_string()];
    for s in &c.compliance {
        for part in ["good", "bad", "not_reported"] {
            header.push(format!("{}_{part}", s.key));
        }
    }
    let days = c.compliance.first().map_or(0, |s| s.days.len());
    files.push((
        "compliance.csv".into(),
        csv(
            &header.iter().map(String::as_str).collect::<Vec<_>>(),
            (0..days).map(|i| {
                let mut row = vec![c.compliance[0].days[i].day.to_string()];
                for s in &c.compliance {
                    let d = s.days[i];
                    row.extend([d.good, d.bad, d.unknown].map(|n| n.to_string()));
                }
                row
            }),
        ),
    ));
    files.push((
        "removable_media.csv".into(),
        csv(
            &["date", "refused", "allowed", "scanned_clean", "infected"],
            c.media.iter().map(|m| {
                vec![
                    m.day.to_string(),
                    m.refused.to_string(),
                    m.allowed.to_string(),
                    m.scanned_clean.to_string(),
                    m.infected.to_string(),
                ]
            }),
        ),
    ));
    files.push((
        "incidents.csv".into(),
        csv(
            &[
                "category",
                "kind",
                "incidents",
                "new",
                "events",
                "open",
                "acknowledged",
                "action_taken",
                "closed",
            ],
            c.incidents.iter().map(|l| {
                vec![
                    l.category.to_string(),
                    l.kind.to_string(),
                    l.incidents.to_string(),
                    l.new.to_string(),
                    l.events.to_string(),
                    l.open.to_string(),
                    l.acknowledged.to_string(),
                    l.actioned.to_string(),
                    l.closed.to_string(),
                ]
            }),
        ),
    ));
    files.push((
        "trends.csv".into(),
        csv(
            &[
                "measure",
                "this_period",
                "previous_period",
                "unit",
                "change",
            ],
            c.trends.iter().map(|t| {
                vec![
                    t.measure.to_string(),
                    t.this.to_string(),
                    if t.known {
                        t.previous.to_string()
                    } else {
                        String::new()
                    },
                    t.unit.to_string(),
                    t.change(),
                ]
            }),
        ),
    ));
    files.push((
        "licences.csv".into(),
        csv(
            &["product", "licences", "installed", "status"],
            c.licences.iter().map(|l| {
                vec![
                    l.product.clone(),
                    l.licences.to_string(),
                    l.installed.to_string(),
                    l.status(),
                ]
            }),
        ),
    ));
    files
}

/// `policy_changes.csv`: the same table for both audiences but for who made each change (a
/// role for the governors, a name for the DSL), which `by` heads.
fn policy_changes_csv<'a>(
    by: &str,
    rows: impl Iterator<Item = (u64, &'a String, &'a str, &'a Vec<&'static str>)>,
) -> CsvFile {
    (
        "policy_changes.csv".into(),
        csv(
            &["version", "changed_at", by, "sections"],
            rows.map(|(version, at, by, sections)| {
                vec![
                    version.to_string(),
                    at.clone(),
                    by.to_string(),
                    sections.join("; "),
                ]
            }),
        ),
    )
}

/// The governors' tables.
pub fn governors_csv(r: &GovernorsReport) -> Vec<CsvFile> {
    let mut files = common_csv(&r.meta, &r.counts);
    files.push(policy_changes_csv(
        "changed_by_role",
        r.counts
            .policy_changes
            .iter()
            .map(|c| (c.version, &c.at, c.by_role, &c.sections)),
    ));
    files
}

/// The DSL's tables: the governors' ones, named, plus the incidents and silent laptops.
pub fn dsl_csv(r: &DslReport) -> Vec<CsvFile> {
    let mut files = common_csv(&r.meta, &r.counts);
    files.push(policy_changes_csv(
        "changed_by",
        r.policy_changes
            .iter()
            .map(|c| (c.version, &c.at, c.by.as_str(), &c.sections)),
    ));
    files.push((
        "safeguarding_incidents.csv".into(),
        csv(
            &[
                "incident", "title", "pupil", "laptop", "first", "latest", "events", "status",
            ],
            r.safeguarding.iter().map(|i| {
                vec![
                    i.id.to_string(),
                    i.title.clone(),
                    i.user.clone(),
                    i.hostname.clone(),
                    i.first.clone(),
                    i.last.clone(),
                    i.count.to_string(),
                    i.status.to_string(),
                ]
            }),
        ),
    ));
    files.push((
        "silent_devices.csv".into(),
        csv(
            &["laptop", "device_id", "last_heard_from"],
            r.silent_devices
                .iter()
                .map(|d| vec![d.hostname.clone(), d.id.clone(), d.last_seen.clone()]),
        ),
    ));
    files
}

/// Where Chromium is: `CARETAKER_CHROMIUM`, else the first of the usual names on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARETAKER_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "caretaker-report-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long Chromium may take to print before it is stopped.
const PRINT_TIMEOUT: Duration = Duration::from_secs(60);

/// Prints a standalone HTML document to PDF with headless Chromium. The page is loaded from a
/// file in a private directory; it has no script and fetches nothing.
pub fn pdf(html: &str) -> Result<Vec<u8>, ReportError> {
    let browser = chromium().ok_or_else(|| {
        ReportError::Pdf(
            "printing the report as PDF needs Chromium on the collector's host: install it \
             (`apt-get install chromium`) or set CARETAKER_CHROMIUM to the browser; the HTML \
             and CSV formats work without it"
                .into(),
        )
    })?;
    let io = |what: &str, e: std::io::Error| ReportError::Pdf(format!("{what}: {e}"));
    let scratch = Scratch::new().map_err(|e| io("cannot make a scratch directory", e))?;
    let page = scratch.path().join("report.html");
    let out = scratch.path().join("report.pdf");
    std::fs::write(&page, html).map_err(|e| io("cannot write the page to print", e))?;
    let log = std::fs::File::create(scratch.path().join("chromium.log"))
        .map_err(|e| io("cannot make Chromium's log", e))?;
    let mut child = Command::new(&browser)
        .arg("--headless")
        // The page is our own, scriptless HTML from a private file; Chromium's sandbox needs
        // user namespaces the collector's systemd unit (and root) does not give it.
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--disable-extensions")
        .arg("--disable-background-networking")
        .arg("--no-first-run")
        .arg("--no-pdf-header-footer")
        .arg(format!(
            "--user-data-dir={}",
            scratch.path().join("profile").display()
        ))
        .arg(format!("--print-to-pdf={}", out.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // To a file, not a pipe: nobody reads a pipe while it runs, and a full one would stall it.
        .stderr(log)
        .spawn()
        .map_err(|e| io(&format!("cannot start {}", browser.display()), e))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > PRINT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ReportError::Pdf(format!(
                    "{} did not finish printing within {} s",
                    browser.display(),
                    PRINT_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(io("cannot wait for Chromium", e)),
        }
    };
    let bytes = std::fs::read(&out).unwrap_or_default();
    if !status.success() || !bytes.starts_with(b"%PDF") {
        let err = std::fs::read_to_string(scratch.path().join("chromium.log")).unwrap_or_default();
        let last: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(ReportError::Pdf(format!(
            "{} did not print the report ({status}): {}",
            browser.display(),
            last.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=cmd()"), "'=cmd()");
        let out = String::from_utf8(csv(&["a", "b"], [vec!["1".into(), "x,y".into()]])).unwrap();
        assert_eq!(out, "a,b\r\n1,\"x,y\"\r\n");
    }
}
