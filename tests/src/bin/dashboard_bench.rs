//! `caretaker-dashboard-bench`: signs in to a running collector's dashboard through its real
//! sign-in form, then times its main pages over HTTPS.
//!
//! Each page gets `--requests` sequential GETs (after `--warmup` untimed ones) over one
//! kept-alive connection with the session cookie; every response must be 200 and contain the
//! page's heading. One line a page: `page=... requests=N p50_ms p95_ms max_ms first_ms bytes
//! rows`, where `first_ms` is the first (warm-up) request and `rows` counts the page's table
//! rows, to show it had content. With `--collector-pid`, the collector's VmRSS and VmHWM
//! (peak) are read from /proc before and after.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

const SESSION_COOKIE: &str = "__Host-caretaker";
const SIGNIN_COOKIE: &str = "__Host-caretaker-signin";

#[derive(Parser)]
#[command(
    name = "caretaker-dashboard-bench",
    about = "Time the dashboard's pages over HTTPS, signed in through the real form"
)]
struct Args {
    /// The dashboard's base URL, e.g. https://127.0.0.1:28443.
    #[arg(long)]
    web: String,
    /// The collector's CA certificate (DATA_DIR/ca.pem).
    #[arg(long)]
    ca: std::path::PathBuf,
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
    /// Timed requests per page.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Untimed requests per page first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// The device page to time (default: the first device the /devices page links to).
    #[arg(long)]
    device: Option<String>,
    /// The collector's process id, to report its memory before and after.
    #[arg(long)]
    collector_pid: Option<u32>,
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The value a response sets for cookie `name`.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The value of the hidden `_csrf` field in a sign-in page.
fn csrf_field(html: &str) -> Option<String> {
    let at = html.find("name=\"_csrf\"")?;
    // The value attribute sits in the same tag, before or after the name.
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    let tag = &html[start..end];
    let v = tag.find("value=\"")? + "value=\"".len();
    Some(tag[v..].split('"').next()?.to_string())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.requests > 0, "--requests must be at least 1");
    let base = args.web.trim_end_matches('/').to_string();
    let ca = std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    // One connection, kept alive between requests; redirects are ours to see.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1)
        .build()?;

    // Sign in as a browser does: the form's double-submit cookie and field, then the post.
    let page = client.get(format!("{base}/signin")).send().await?;
    ensure!(
        page.status() == StatusCode::OK,
        "GET /signin: {}",
        page.status()
    );
    let cookie = set_cookie(&page, SIGNIN_COOKIE).context("GET /signin set no sign-in cookie")?;
    let field = csrf_field(&page.text().await?).context("no _csrf field in the sign-in form")?;
    ensure!(
        cookie == field,
        "the sign-in cookie and the form's _csrf field differ"
    );
    let signed = client
        .post(format!("{base}/signin"))
        .header(COOKIE, format!("{SIGNIN_COOKIE}={cookie}"))
        .form(&[
            ("_csrf", field.as_str()),
            ("username", args.username.as_str()),
            ("password", args.password.as_str()),
            ("next", "/fleet"),
        ])
        .send()
        .await?;
    if signed.status() != StatusCode::SEE_OTHER {
        bail!(
            "POST /signin answered {} (wrong password, or sign-in slowed?)",
            signed.status()
        );
    }
    let to = signed
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        to != "/account/password",
        "the account must change its password first; add it with --password-stdin"
    );
    let session = set_cookie(&signed, SESSION_COOKIE).context("POST /signin set no session")?;
    let session = format!("{SESSION_COOKIE}={session}");
    eprintln!("signed in as {} (redirected to {to})", args.username);

    let get = |path: String| {
        let (client, session, base) = (client.clone(), session.clone(), base.clone());
        async move {
            let t = Instant::now();
            let res = client
                .get(format!("{base}{path}"))
                .header(COOKIE, session)
                .send()
                .await?;
            let (status, version) = (res.status(), res.version());
            let body = res.text().await?;
            anyhow::Ok((t.elapsed(), status, version, body))
        }
    };

    let device = match args.device.clone() {
        Some(d) => d,
        None => {
            let (_, status, _, body) = get("/devices".into()).await?;
            ensure!(status == StatusCode::OK, "GET /devices: {status}");
            body.split("href=\"/devices/")
                .skip(1)
                .filter_map(|s| s.split(['"', '?', '/']).next())
                .find(|id| !id.is_empty())
                .context("the /devices page links to no device")?
                .to_string()
        }
    };

    let before = args.collector_pid.map(memory).transpose()?;
    if let Some((rss, hwm)) = before {
        println!("collector_before rss_kib={rss} hwm_kib={hwm}");
    }
    let pages = [
        ("/fleet".to_string(), "<h1>Overview</h1>"),
        (format!("/devices/{device}"), "<h2>Timeline</h2>"),
        ("/events?audience=dsl".to_string(), "<h1>Events</h1>"),
        ("/incidents".to_string(), "<h1>Incidents</h1>"),
        ("/devices".to_string(), "<h1>Devices"),
        ("/events".to_string(), "<h1>Events</h1>"),
    ];
    for (path, heading) in &pages {
        let mut times = Vec::with_capacity(args.requests);
        let (mut first, mut bytes, mut rows, mut version) = (None, 0, 0, None);
        for i in 0..args.warmup + args.requests {
            let (took, status, v, body) = get(path.clone()).await?;
            ensure!(
                status == StatusCode::OK,
                "GET {path}: {status} (request {i})"
            );
            ensure!(
                body.contains(heading),
                "GET {path}: no {heading:?} in the page (request {i})"
            );
            first.get_or_insert(took);
            (bytes, version) = (body.len(), Some(v));
            rows = body.matches("<tr").count().saturating_sub(1);
            if i >= args.warmup {
                times.push(took);
            }
        }
        times.sort_unstable();
        println!(
            "page={path} requests={} p50_ms={:.1} p95_ms={:.1} max_ms={:.1} first_ms={:.1} bytes={bytes} rows={rows} http={version:?}",
            times.len(),
            percentile(&times, 0.50),
            percentile(&times, 0.95),
            percentile(&times, 1.0),
            first.unwrap_or_default().as_secs_f64() * 1000.0,
            version = version.unwrap_or_default(),
        );
    }
    if let Some(pid) = args.collector_pid {
        let (rss, hwm) = memory(pid)?;
        println!("collector_after rss_kib={rss} hwm_kib={hwm}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_csrf_field_whichever_order_its_attributes_come_in() {
        let a = r#"<form><input type="hidden" name="_csrf" value="abc123"><input name="x"></form>"#;
        let b = r#"<input value="xyz" type="hidden" name="_csrf">"#;
        assert_eq!(csrf_field(a).as_deref(), Some("abc123"));
        assert_eq!(csrf_field(b).as_deref(), Some("xyz"));
        assert_eq!(csrf_field("<p>no form</p>"), None);
    }

    #[test]
    fn percentiles_take_the_rank_at_or_above() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), 50.0);
        assert_eq!(percentile(&d, 0.95), 95.0);
        assert_eq!(percentile(&d, 1.0), 100.0);
    }
}
