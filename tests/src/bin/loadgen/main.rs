//! `caretaker-loadgen`: enrols K simulated agents with real certificates, streams M events each over mTLS, verifies the store.
//!
//! `--mix synthetic` (the default) sends `load.synthetic` events; `--mix realistic` sends a
//! deterministic mix a school fleet produces (heartbeats, screen-lock and antivirus states,
//! software installs including bypass tools, pupils' USB sticks), so the dashboard's pages
//! and the incident list have real content. `--concurrency N` caps how many agents stream at
//! once (each holds one TLS connection while it streams).
//!
//! `--storm` is a reconnect storm instead: every agent (keys kept in `--work-dir` are reused,
//! so a second run does not enrol again) connects at once, sends one batch, and counts as
//! streaming at its first acknowledgement; an agent refused retries with the agent's own
//! jittered backoff (0.5 s doubling to 60 s). All hold their streams until every one streams.
//! Its last line is `agents=N streaming=N seconds=T p50_s=A p99_s=B failed_attempts=F`.
//!
//! `--idle-flood N` enrols nobody: it holds N idle connections (half TLS on the web port, half
//! TLS with the enrolment ALPN on the gRPC port, 50 per source address from 127.0.0.2 up,
//! reopened as the collector closes them) and measures the API meanwhile, against the same
//! requests before the flood. Its last line is `idle=N held=H before_p50_ms=.. before_p99_ms=..
//! during_p50_ms=.. during_p99_ms=.. failed=F`.
//!
//! `--occurred-days-ago N` dates every event N days in the past (as an agent's spool would
//! after a long time offline), so a store can be filled with records past their retention.
//!
//! Otherwise its last line is `events=N seconds=T rate=R/s p99_ack_ms=L lost=X duplicated=Y`,
//! where N is the number of events sent, T the time from the first send to the
//! last acknowledgement, and L the 99th percentile of the time from sending a
//! batch to the acknowledgement covering it. X and Y come from listing every device's events
//! through the API (`/api/v1/events?device=`, all pages) and counting each (device, seq): a
//! sequence sent but not listed is lost, one listed twice (or never sent) duplicated. Exit status is non-zero if
//! anything was lost or duplicated.

mod flood;
mod mix;
mod storm;
mod stream;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use caretaker_agent::state::StateDir;
use clap::{Parser, ValueEnum};
use serde_json::Value;
use tokio::sync::Semaphore;

use stream::{Load, stream_agent};

#[derive(Parser)]
#[command(
    name = "caretaker-loadgen",
    about = "Load a Caretaker collector with simulated agents and verify nothing is lost"
)]
struct Args {
    /// The collector's gRPC address, HOST:PORT; several collectors sharing one database as
    /// HOST:PORT,HOST:PORT (agents are spread over them and move to the next when one fails).
    #[arg(long)]
    collector: String,
    /// An enrolment token with at least --agents uses.
    #[arg(long)]
    token: String,
    #[arg(long)]
    ca_fingerprint: String,
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Events per agent.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Base URL of the collector's web API, e.g. https://localhost:8443.
    #[arg(long)]
    api: String,
    #[arg(long)]
    api_token: String,
    /// Events per batch. With --window 1, 100 agents keep 2,500 events in flight:
    /// latency is in-flight events / throughput (see BENCHMARKS.md for the curve).
    #[arg(long, default_value_t = 25)]
    batch: u64,
    /// Batches in flight per agent.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Where to keep the simulated agents' keys (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Which events the agents send.
    #[arg(long, value_enum, default_value_t = Mix::Synthetic)]
    mix: Mix,
    /// At most this many agents streaming at once (default: all of them). Each streaming
    /// agent holds a connection, so keep it well under `ulimit -n`.
    #[arg(long)]
    concurrency: Option<usize>,
    /// A reconnect storm: all agents connect at once and each sends one batch (see above).
    #[arg(long)]
    storm: bool,
    /// Hold this many idle connections and measure the API meanwhile (see above).
    #[arg(long)]
    idle_flood: Option<usize>,
    /// Agents enrolling at once.
    #[arg(long, default_value_t = 8)]
    enrol_concurrency: usize,
    /// Only fill the store (to measure a start-up with many events): skip listing every event
    /// back, and say so (`lost=unchecked`).
    #[arg(long)]
    no_verify: bool,
    /// Date every event this many days in the past (records past their retention, for the
    /// purge's tests and benchmark).
    #[arg(long, default_value_t = 0)]
    occurred_days_ago: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mix {
    /// `load.synthetic` events with a counter: the ingest path alone.
    Synthetic,
    /// A school fleet's mix; see `realistic_event`.
    Realistic,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if collectors(&args).is_empty() {
        bail!("--collector names no address");
    }
    if let Some(n) = args.idle_flood {
        return flood::idle_flood(&args, n).await;
    }
    let tmp = tempfile::tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());

    // Enrol every simulated agent: a real key pair and CSR each.
    let t0 = Instant::now();
    let limit = Arc::new(Semaphore::new(args.enrol_concurrency.max(1)));
    let mut enrolments = Vec::new();
    for i in 0..args.agents {
        let addrs = collectors(&args);
        let (collector, token, fp, limit) = (
            addrs[i % addrs.len()].clone(),
            args.token.clone(),
            args.ca_fingerprint.clone(),
            limit.clone(),
        );
        let dir = work.join(format!("agent-{i}"));
        enrolments.push(tokio::spawn(async move {
            if let Some(id) = enrolled_before(&dir) {
                return Ok((dir, id));
            }
            let _permit = limit.acquire().await.expect("semaphore");
            let state = StateDir::new(&dir);
            caretaker_agent::enroll::enroll(&state, &collector, &token, &fp)
                .await
                .map(|e| (dir, e.device_id))
        }));
    }
    let mut agents = Vec::new();
    for e in enrolments {
        agents.push(e.await?.context("enrolment failed")?);
    }
    eprintln!(
        "enrolled {} agents in {:.1}s",
        agents.len(),
        t0.elapsed().as_secs_f64()
    );

    if args.storm {
        return storm::storm(&args, agents).await;
    }

    // Stream from all agents at once, or from at most --concurrency at a time.
    let start = Instant::now();
    let streaming = Arc::new(Semaphore::new(
        args.concurrency
            .unwrap_or(Semaphore::MAX_PERMITS)
            .clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut tasks = Vec::new();
    for (index, (dir, _)) in agents.iter().enumerate() {
        let (dir, addrs, streaming) = (dir.clone(), collectors(&args), streaming.clone());
        let load = Load {
            events: args.events,
            batch: args.batch,
            window: args.window,
            mix: args.mix,
            agent: index as u64,
            days_ago: args.occurred_days_ago,
        };
        tasks.push(tokio::spawn(async move {
            let _permit = streaming.acquire_owned().await.expect("semaphore");
            stream_agent(dir, addrs, load).await
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let p99 = latencies
        .get(((latencies.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default();

    // Verify through the API that the store holds exactly K x M: every device's events listed
    // page by page and each (device, seq) counted, so a duplicate shows as a second row, which
    // a device's `event_count` (a count of new keys) could never reveal.
    if args.no_verify {
        let sent = args.agents as u64 * args.events;
        println!(
            "events={sent} seconds={seconds:.2} rate={:.0}/s p99_ack_ms={:.1} lost=unchecked duplicated=unchecked",
            sent as f64 / seconds,
            p99.as_secs_f64() * 1000.0
        );
        return Ok(());
    }
    let (lost, duplicated) = verify::through_api(&args, &agents).await?;
    let sent = args.agents as u64 * args.events;
    println!(
        "events={sent} seconds={seconds:.2} rate={:.0}/s p99_ack_ms={:.1} lost={lost} duplicated={duplicated}",
        sent as f64 / seconds,
        p99.as_secs_f64() * 1000.0
    );
    if lost > 0 || duplicated > 0 {
        bail!("the store does not hold exactly {sent} events");
    }
    Ok(())
}

/// The collectors' gRPC addresses from `--collector`.
fn collectors(args: &Args) -> Vec<String> {
    args.collector
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect()
}

/// The device id of an agent enrolled by an earlier run with the same `--work-dir`.
fn enrolled_before(dir: &std::path::Path) -> Option<String> {
    if !dir.join("device.pem").exists() {
        return None;
    }
    let e: Value =
        serde_json::from_slice(&std::fs::read(dir.join("enrollment.json")).ok()?).ok()?;
    e["device_id"].as_str().map(str::to_string)
}

/// A gRPC channel speaking as the agent enrolled in `dir`; an error if the collector refused it.
async fn device_channel(
    dir: &std::path::Path,
    addr: &str,
) -> anyhow::Result<tonic::transport::Channel> {
    use caretaker_agent::tls;
    let read = |n: &str| std::fs::read_to_string(dir.join(n));
    let ca = tls::certs_from_pem(&read("ca.pem")?)?.remove(0);
    let cfg = tls::device_config(
        ca,
        tls::certs_from_pem(&read("device.pem")?)?,
        tls::key_from_pem(&read("device.key")?)?,
    )?;
    Ok(caretaker_agent::connect::channel(addr, cfg).await?)
}
