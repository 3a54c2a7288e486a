//! One simulated agent streaming its events, moving to the next collector when one fails.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use caretaker_proto::pb;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::mix::{hostname, realistic_event};
use super::{Mix, device_channel};

/// What one simulated agent sends.
#[derive(Clone, Copy)]
pub(super) struct Load {
    pub(super) events: u64,
    pub(super) batch: u64,
    pub(super) window: usize,
    pub(super) mix: Mix,
    /// The agent's index, which seeds its realistic mix.
    pub(super) agent: u64,
    /// How far in the past the events are dated.
    pub(super) days_ago: u32,
}

/// Streams `load.events` events as one agent; returns each batch's send-to-ack latency.
///
/// `addrs` lists the collectors (several share one PostgreSQL); the agent starts on the one its
/// index picks and, when its stream breaks (the collector was killed, say), moves to the next
/// and resends everything not yet acknowledged, as the real agent does.
pub(super) async fn stream_agent(
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
