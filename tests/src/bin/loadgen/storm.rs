//! `--storm`: the reconnect storm, every agent at once until its first acknowledgement.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caretaker_proto::pb;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Args, device_channel};

/// The reconnect storm: every agent at once, each until its first acknowledgement.
pub(super) async fn storm(args: &Args, agents: Vec<(PathBuf, String)>) -> anyhow::Result<()> {
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
