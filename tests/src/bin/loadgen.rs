//! `caretaker-loadgen`: enrols K simulated agents with real certificates, streams M events each over mTLS, verifies the store.
//!
//! Its last line is `events=N seconds=T rate=R/s p99_ack_ms=L lost=X duplicated=Y`,
//! where N is the number of events sent, T the time from the first send to the
//! last acknowledgement, and L the 99th percentile of the time from sending a
//! batch to the acknowledgement covering it. Exit status is non-zero if
//! anything was lost or duplicated.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caretaker_agent::state::StateDir;
use caretaker_proto::pb;
use clap::Parser;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
#[command(
    name = "caretaker-loadgen",
    about = "Load a Caretaker collector with simulated agents and verify nothing is lost"
)]
struct Args {
    /// The collector's gRPC address, HOST:PORT.
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());

    // Enrol every simulated agent: a real key pair and CSR each.
    let t0 = Instant::now();
    let limit = Arc::new(Semaphore::new(8));
    let mut enrolments = Vec::new();
    for i in 0..args.agents {
        let (collector, token, fp, limit) = (
            args.collector.clone(),
            args.token.clone(),
            args.ca_fingerprint.clone(),
            limit.clone(),
        );
        let dir = work.join(format!("agent-{i}"));
        enrolments.push(tokio::spawn(async move {
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

    // Stream from all agents at once.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (dir, _) in &agents {
        let (dir, addr) = (dir.clone(), args.collector.clone());
        let (m, batch, window) = (args.events, args.batch, args.window);
        tasks.push(tokio::spawn(async move {
            stream_agent(dir, addr, m, batch, window).await
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

    // Verify through the API that the store holds exactly K x M.
    let ca = std::fs::read(agents[0].0.join("ca.pem"))?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .use_rustls_tls()
        .build()?;
    let devices: Value = client
        .get(format!("{}/api/v1/devices", args.api.trim_end_matches('/')))
        .bearer_auth(&args.api_token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let counts: HashMap<&str, (u64, u64)> = devices["devices"]
        .as_array()
        .context("no devices in the API answer")?
        .iter()
        .filter_map(|d| {
            Some((
                d["id"].as_str()?,
                (d["event_count"].as_u64()?, d["highest_seq"].as_u64()?),
            ))
        })
        .collect();
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (_, id) in &agents {
        let (count, highest) = counts.get(id.as_str()).copied().unwrap_or((0, 0));
        lost += args.events.saturating_sub(count);
        duplicated += count.saturating_sub(args.events);
        if highest != args.events {
            eprintln!(
                "device {id}: highest stored seq {highest}, expected {}",
                args.events
            );
        }
    }
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

/// Streams `m` events as one agent; returns each batch's send-to-ack latency.
async fn stream_agent(
    dir: PathBuf,
    addr: String,
    m: u64,
    batch: u64,
    window: usize,
) -> anyhow::Result<Vec<Duration>> {
    let channel = caretaker_tests::device_channel(&dir, &addr).await;
    let mut client = pb::telemetry_client::TelemetryClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::EventBatch>(window);
    let mut acks = client
        .stream_events(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut in_flight: std::collections::VecDeque<(u64, Instant)> = Default::default();
    let mut latencies = Vec::with_capacity((m / batch + 1) as usize);
    let mut next = 1u64;
    let mut acked = 0u64;
    while acked < m {
        while next <= m && in_flight.len() < window {
            let last = (next + batch - 1).min(m);
            let events = (next..=last)
                .map(|seq| {
                    let mut d = Map::new();
                    d.insert("i".into(), Value::from(seq));
                    d.insert("note".into(), Value::from("synthetic load"));
                    caretaker_tests::pb_event(seq, "load.synthetic", d)
                })
                .collect();
            tx.send(pb::EventBatch {
                events,
                agent: None,
            })
            .await
            .context("stream closed")?;
            in_flight.push_back((last, Instant::now()));
            next = last + 1;
        }
        let ack = acks
            .message()
            .await?
            .context("the collector ended the stream")?;
        acked = ack.through_seq;
        while in_flight.front().is_some_and(|(s, _)| *s <= acked) {
            let (_, sent) = in_flight.pop_front().expect("front");
            latencies.push(sent.elapsed());
        }
    }
    Ok(latencies)
}
