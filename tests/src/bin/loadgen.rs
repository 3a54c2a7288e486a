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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caretaker_agent::state::StateDir;
use caretaker_proto::pb;
use clap::{Parser, ValueEnum};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

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
        return idle_flood(&args, n).await;
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
        return storm(&args, agents).await;
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
    let verify = Instant::now();
    let ca = std::fs::read(agents[0].0.join("ca.pem"))?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .use_rustls_tls()
        .build()?;
    let listing = Arc::new(Semaphore::new(4));
    let mut lists = Vec::new();
    for (_, id) in &agents {
        let (client, api, token, id, listing) = (
            client.clone(),
            args.api.trim_end_matches('/').to_string(),
            args.api_token.clone(),
            id.clone(),
            listing.clone(),
        );
        lists.push(tokio::spawn(async move {
            let _permit = listing.acquire_owned().await.expect("semaphore");
            let seqs = list_device_events(&client, &api, &token, &id).await;
            (id, seqs)
        }));
    }
    let (mut lost, mut duplicated, mut listed, mut data) = (0u64, 0u64, 0u64, 0u64);
    for l in lists {
        let (id, listing) = l.await?;
        let (seqs, bytes) = listing.with_context(|| format!("listing device {id}'s events"))?;
        data += bytes;
        listed += seqs.len() as u64;
        let tally = tally_seqs(&seqs, args.events);
        if tally != Tally::default() {
            eprintln!(
                "device {id}: {} lost (first {:?}), {} duplicated, {} outside 1..={}",
                tally.lost, tally.first_lost, tally.duplicated, tally.unexpected, args.events
            );
        }
        lost += tally.lost;
        duplicated += tally.duplicated + tally.unexpected;
    }
    eprintln!(
        "verified {} devices through the API ({listed} events listed, {data} bytes as JSON) in {:.2}s",
        agents.len(),
        verify.elapsed().as_secs_f64()
    );
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

/// Every stored sequence number of `device`, as `GET /api/v1/events?device=` lists them,
/// following `next` until the last page.
async fn list_device_events(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    device: &str,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut seqs = Vec::new();
    // The events' own size, as compact JSON: the "data" a store's disk use is compared with.
    let mut bytes = 0u64;
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(format!("{api}/api/v1/events"))
            .query(&[("device", device), ("limit", "1000"), ("cursor", &cursor)])
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for e in page["events"]
            .as_array()
            .context("no events in the API answer")?
        {
            if e["device_id"].as_str() != Some(device) {
                bail!("the listing for {device} holds another device's event: {e}");
            }
            seqs.push(e["seq"].as_u64().context("an event without a seq")?);
            bytes += e.to_string().len() as u64;
        }
        match page["next"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return Ok((seqs, bytes)),
        }
    }
}

/// What one device's listed sequence numbers say against the `1..=expected` it was sent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Sent but not listed.
    lost: u64,
    first_lost: Option<u64>,
    /// Listed more than once (each extra row counts).
    duplicated: u64,
    /// Listed but never sent.
    unexpected: u64,
}

fn tally_seqs(seqs: &[u64], expected: u64) -> Tally {
    let mut seen: HashMap<u64, u64> = HashMap::with_capacity(seqs.len());
    let mut t = Tally::default();
    for &s in seqs {
        if !(1..=expected).contains(&s) {
            t.unexpected += 1;
            continue;
        }
        let n = seen.entry(s).or_default();
        *n += 1;
        if *n > 1 {
            t.duplicated += 1;
        }
    }
    for s in 1..=expected {
        if !seen.contains_key(&s) {
            t.lost += 1;
            t.first_lost.get_or_insert(s);
        }
    }
    t
}

/// Holds `n` idle connections while timing `GET /api/v1/devices` (a new connection each time).
async fn idle_flood(args: &Args, n: usize) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let pinned = Arc::new(caretaker_agent::tls::PinnedCa::new(
        args.ca_fingerprint.clone(),
    ));
    let enrol_tls = Arc::new(caretaker_agent::tls::enroll_config(pinned.clone())?);
    let mut web_tls = caretaker_agent::tls::enroll_config(pinned)?;
    web_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let api = reqwest::Client::builder()
        .use_preconfigured_tls(web_tls.clone())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?;
    let web_tls = Arc::new(web_tls);
    let url = format!("{}/api/v1/devices", args.api.trim_end_matches('/'));
    let measure = |label: &'static str| {
        let (api, url, token) = (api.clone(), url.clone(), args.api_token.clone());
        async move {
            let mut times = Vec::new();
            let mut failed = 0;
            for _ in 0..300 {
                let t = Instant::now();
                match api.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        times.push(t.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            times.sort_unstable();
            let at = |q: f64| {
                times
                    .get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1))
                    .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
            };
            eprintln!("{label}: {} requests, {failed} failed", times.len());
            (at(0.5), at(0.99), failed)
        }
    };
    let before = measure("before").await;

    let (host, _) = args
        .collector
        .rsplit_once(':')
        .context("--collector is HOST:PORT")?;
    let grpc = tokio::net::lookup_host(&args.collector)
        .await?
        .find(|a| a.is_ipv4())
        .context("no IPv4 address for --collector")?;
    let web_host = args
        .api
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let web = tokio::net::lookup_host(&web_host)
        .await?
        .find(|a| a.is_ipv4())
        .context("no IPv4 address for --api")?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let held = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..n {
        let (to, cfg) = if i % 2 == 0 {
            (web, web_tls.clone())
        } else {
            (grpc, enrol_tls.clone())
        };
        let from: std::net::IpAddr = format!("127.0.0.{}", 2 + i / 50).parse()?;
        let (name, held, stop) = (name.clone(), held.clone(), stop.clone());
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while !stop.load(Ordering::Relaxed) {
                let attempt = async {
                    let sock = tokio::net::TcpSocket::new_v4().ok()?;
                    sock.bind(std::net::SocketAddr::new(from, 0)).ok()?;
                    let tcp = sock.connect(to).await.ok()?;
                    tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .ok()
                };
                let Some(mut conn) = attempt.await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                held.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 512];
                // Idle until the collector closes it (or the run ends).
                loop {
                    tokio::select! {
                        r = conn.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                        _ = tokio::time::sleep(Duration::from_millis(500)) => if stop.load(Ordering::Relaxed) { break },
                    }
                }
                held.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
    let t = Instant::now();
    while held.load(Ordering::Relaxed) < n && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let holding = held.load(Ordering::Relaxed);
    eprintln!("holding {holding} idle connections");
    let during = measure("during").await;
    let still = held.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    println!(
        "idle={n} held={} before_p50_ms={:.1} before_p99_ms={:.1} during_p50_ms={:.1} during_p99_ms={:.1} failed={}",
        holding.min(still),
        before.0,
        before.1,
        during.0,
        during.1,
        before.2 + during.2
    );
    Ok(())
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

/// The reconnect storm: every agent at once, each until its first acknowledgement.
async fn storm(args: &Args, agents: Vec<(PathBuf, String)>) -> anyhow::Result<()> {
    let n = agents.len();
    let start = Instant::now();
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Everyone holds its stream until the last is streaming, as a school's laptops would.
    let (all_in_tx, all_in) = tokio::sync::watch::channel(false);
    let (streaming_tx, mut streaming_rx) = mpsc::channel::<Duration>(n.max(1));
    for (dir, _) in agents {
        let (addr, failed, streaming_tx, mut all_in) = (
            args.collector.clone(),
            failed.clone(),
            streaming_tx.clone(),
            all_in.clone(),
        );
        tokio::spawn(async move {
            let mut backoff = caretaker_agent::uplink::Backoff::new(
                Duration::from_millis(500),
                Duration::from_secs(60),
            );
            loop {
                match first_ack(&dir, &addr).await {
                    Ok(held) => {
                        let _ = streaming_tx.send(start.elapsed()).await;
                        let _ = all_in.wait_for(|v| *v).await;
                        drop(held);
                        return;
                    }
                    Err(_) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
    }
    drop(streaming_tx);
    let mut times = Vec::with_capacity(n);
    while times.len() < n {
        match streaming_rx.recv().await {
            Some(t) => times.push(t),
            None => break,
        }
        if times.len() % 1000 == 0 {
            eprintln!(
                "{} streaming after {:.1}s",
                times.len(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = all_in_tx.send(true);
    times.sort_unstable();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64())
    };
    println!(
        "agents={n} streaming={} seconds={seconds:.2} p50_s={:.2} p99_s={:.2} failed_attempts={}",
        times.len(),
        at(0.5),
        at(0.99),
        failed.load(std::sync::atomic::Ordering::Relaxed)
    );
    if times.len() < n {
        bail!("only {} of {n} agents streamed", times.len());
    }
    Ok(())
}

/// Connects as the agent in `dir`, opens its event stream and sends one batch (sequence 1: a
/// resend after the first run, which the collector acknowledges without storing it again);
/// returns the open stream once that batch is acknowledged.
async fn first_ack(
    dir: &std::path::Path,
    addr: &str,
) -> anyhow::Result<(mpsc::Sender<pb::EventBatch>, tonic::Streaming<pb::Ack>)> {
    let channel = device_channel(dir, addr).await?;
    let mut client = pb::telemetry_client::TelemetryClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::EventBatch>(1);
    let mut d = Map::new();
    d.insert("note".into(), Value::from("reconnect storm"));
    tx.send(pb::EventBatch {
        events: vec![caretaker_tests::pb_event(1, "load.synthetic", d)],
        agent: None,
    })
    .await?;
    let mut acks = client
        .stream_events(ReceiverStream::new(rx))
        .await?
        .into_inner();
    acks.message()
        .await?
        .context("the collector ended the stream")?;
    Ok((tx, acks))
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

/// What one simulated agent sends.
#[derive(Clone, Copy)]
struct Load {
    events: u64,
    batch: u64,
    window: usize,
    mix: Mix,
    /// The agent's index, which seeds its realistic mix.
    agent: u64,
    /// How far in the past the events are dated.
    days_ago: u32,
}

/// Streams `load.events` events as one agent; returns each batch's send-to-ack latency.
///
/// `addrs` lists the collectors (several share one PostgreSQL); the agent starts on the one its
/// index picks and, when its stream breaks (the collector was killed, say), moves to the next
/// and resends everything not yet acknowledged, as the real agent does.
async fn stream_agent(
    dir: PathBuf,
    addrs: Vec<String>,
    load: Load,
) -> anyhow::Result<Vec<Duration>> {
    let m = load.events;
    let mut which = load.agent as usize % addrs.len();
    let mut latencies = Vec::with_capacity((m / load.batch + 1) as usize);
    let mut acked = 0u64;
    let mut failures = 0;
    let mut backoff =
        caretaker_agent::uplink::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while acked < m {
        match stream_once(&dir, &addrs[which], load, &mut acked, &mut latencies).await {
            Ok(()) => {}
            // The collector refuses handshakes past its per-address cap (all loadgen agents
            // share one address), or it went away: come back after a backoff, as the agent
            // does, to the next collector when there are several.
            Err(e) if failures >= 50 => return Err(e.context("gave up after 50 attempts")),
            Err(_) => {
                failures += 1;
                which = (which + 1) % addrs.len();
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    Ok(latencies)
}

/// One stream to `addr`, from the first unacknowledged event on; returns when all are acked.
async fn stream_once(
    dir: &std::path::Path,
    addr: &str,
    load: Load,
    acked: &mut u64,
    latencies: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let Load {
        events: m,
        batch,
        window,
        mix,
        agent,
        days_ago,
    } = load;
    let channel = device_channel(dir, addr).await?;
    let mut client = pb::telemetry_client::TelemetryClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::EventBatch>(window);
    let mut acks = client
        .stream_events(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut in_flight: std::collections::VecDeque<(u64, Instant)> = Default::default();
    let mut next = *acked + 1;
    // Realistic events are dated as if sent over the last `m` five-minute heartbeats.
    let now = chrono::Utc::now() - chrono::Duration::days(days_ago.into());
    while *acked < m {
        while next <= m && in_flight.len() < window {
            let last = (next + batch - 1).min(m);
            let events = (next..=last)
                .map(|seq| match mix {
                    Mix::Synthetic => {
                        let mut d = Map::new();
                        d.insert("i".into(), Value::from(seq));
                        d.insert("note".into(), Value::from("synthetic load"));
                        let mut e = caretaker_tests::pb_event(seq, "load.synthetic", d);
                        if days_ago > 0 {
                            e.occurred_at = Some(caretaker_proto::convert::timestamp_from(now));
                        }
                        e
                    }
                    Mix::Realistic => {
                        let at = now - chrono::Duration::minutes(5 * (m - seq) as i64);
                        realistic_event(agent, seq, at)
                    }
                })
                .collect();
            // Real agents name themselves on a stream's first batch.
            let info =
                (mix == Mix::Realistic && in_flight.is_empty() && next == *acked + 1).then(|| {
                    pb::AgentInfo {
                        hostname: hostname(agent),
                        os: "Debian GNU/Linux 12 (bookworm)".into(),
                        agent_version: env!("CARGO_PKG_VERSION").into(),
                    }
                });
            tx.send(pb::EventBatch {
                events,
                agent: info,
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
        *acked = (*acked).max(ack.through_seq);
        while in_flight.front().is_some_and(|(s, _)| *s <= *acked) {
            let (_, sent) = in_flight.pop_front().expect("front");
            latencies.push(sent.elapsed());
        }
    }
    Ok(())
}

fn hostname(agent: u64) -> String {
    format!("lap-{agent:05}")
}

/// SplitMix64: a fixed, well-mixed hash, so every run sends the same events.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Packages a pupil might install: bypass tools from the collector's catalogue (they reach
/// the DSL and the network manager) and ordinary software nobody approved (the network manager).
const BYPASS: &[&str] = &["tor", "openvpn", "anydesk", "wireguard-tools", "psiphon"];
const UNAPPROVED: &[&str] = &[
    "gimp",
    "vlc",
    "steam",
    "discord",
    "minecraft-launcher",
    "audacity",
    "blender",
    "inkscape",
];

/// Event `seq` of agent `agent` in the realistic mix. Seq 1 is `agent.started`; after that,
/// by a hash of (agent, seq): 90 % `agent.heartbeat`, 4 % `screen.compliance` (1 in 10 of them
/// `cannot_enforce`), 3 % `antivirus.status` (1 in 8 `stale`), 2 % `software.installed` (1 in
/// 4 a bypass tool), 1 % `usb.inserted` (7 in 10 a pupil's stick refused, which reaches the
/// DSL; 2 in 10 a member of staff's, allowed; 1 in 10 a keyboard). Each laptop has one pupil,
/// `pupil<agent>`, named on the events that carry a user.
fn realistic_event(agent: u64, seq: u64, at: chrono::DateTime<chrono::Utc>) -> pb::Event {
    let h = mix64((agent << 32) ^ seq);
    let (roll, sub, pick) = (h % 100, (h >> 8) % 100, (h >> 16) as usize);
    let pupil = format!("pupil{agent}");
    let (kind, user, details) = if seq == 1 {
        (
            "agent.started",
            None,
            json!({"agent_version": env!("CARGO_PKG_VERSION"), "hostname": hostname(agent),
                   "os": "Debian GNU/Linux 12 (bookworm)"}),
        )
    } else if roll < 90 {
        (
            "agent.heartbeat",
            None,
            json!({"uptime_secs": (seq - 1) * 300}),
        )
    } else if roll < 94 {
        let d = if sub < 90 {
            json!({"state": "enforced"})
        } else {
            json!({"state": "cannot_enforce", "reason": "no_idle_source"})
        };
        ("screen.compliance", None, d)
    } else if roll < 97 {
        let status = if sub < 88 { "current" } else { "stale" };
        (
            "antivirus.status",
            None,
            json!({"status": status, "product": "ClamAV", "database_age_hours": if status == "current" { 6 } else { 120 }}),
        )
    } else if roll < 99 {
        let name = if sub < 25 {
            BYPASS[pick % BYPASS.len()]
        } else {
            UNAPPROVED[pick % UNAPPROVED.len()]
        };
        (
            "software.installed",
            Some(pupil),
            json!({"source": "dpkg", "name": name, "version": "1"}),
        )
    } else {
        let serial = format!("SN-{agent:05}-{}", pick % 2);
        let d = if sub < 70 {
            json!({"mass_storage": true, "account": "pupil", "decision": "block",
                   "reason": "pupil_storage", "antivirus_current": true,
                   "serial": serial, "product": "Cruzer", "vendor": "SanDisk"})
        } else if sub < 90 {
            json!({"mass_storage": true, "account": "staff", "decision": "allow",
                   "antivirus_current": true, "serial": serial, "product": "DataTraveler",
                   "vendor": "Kingston"})
        } else {
            json!({"mass_storage": false, "account": "pupil", "decision": "allow",
                   "antivirus_current": true, "product": "USB Keyboard", "vendor": "Logitech"})
        };
        ("usb.inserted", Some(pupil), d)
    };
    let Value::Object(details) = details else {
        unreachable!("details are objects")
    };
    pb::Event {
        seq,
        occurred_at: Some(caretaker_proto::convert::timestamp_from(at)),
        user: user.unwrap_or_default(),
        kind: kind.into(),
        details: Some(caretaker_proto::convert::struct_from_json(&details)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reveals_what_a_count_cannot() {
        assert_eq!(tally_seqs(&[3, 1, 2], 3), Tally::default());
        // Three rows for three events sent, yet one is listed twice and one missing: a count
        // of rows (or of keys) says all is well.
        let t = tally_seqs(&[1, 2, 2], 3);
        assert_eq!((t.lost, t.first_lost, t.duplicated), (1, Some(3), 1));
        assert_eq!(tally_seqs(&[1, 2, 9], 2).unexpected, 1);
    }

    #[test]
    fn the_realistic_mix_is_deterministic_and_near_its_shares() {
        let at = chrono::Utc::now();
        let mut kinds: HashMap<String, u64> = HashMap::new();
        for agent in 0..200 {
            for seq in 1..=100 {
                let e = realistic_event(agent, seq, at);
                assert_eq!(e, realistic_event(agent, seq, at));
                *kinds.entry(e.kind).or_default() += 1;
            }
        }
        let share = |k: &str| kinds.get(k).copied().unwrap_or(0) as f64 / 20_000.0;
        assert!((share("agent.heartbeat") - 0.90).abs() < 0.02, "{kinds:?}");
        assert!((share("usb.inserted") - 0.01).abs() < 0.005, "{kinds:?}");
        assert_eq!(kinds["agent.started"], 200);
    }
}
