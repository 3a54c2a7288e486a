//! The uplink: streams spooled events to the collector over mutual TLS, deletes what it acknowledges, follows policy.
//!
//! Invariant: an event is removed from the spool only after an `Ack` covering
//! its sequence number. A broken connection just means a resend from the
//! oldest unacknowledged event; the collector stores each (device, seq) once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caretaker_proto::convert::{struct_from_json, timestamp_from};
use caretaker_proto::pb;
use caretaker_proto::pb::telemetry_client::TelemetryClient;
use chrono::Utc;
use rand::Rng;
use rustls::ClientConfig;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::os::HostFacts;
use crate::policy::PolicyCache;
use crate::spool::{Spool, SpoolError, SpooledEvent};
use crate::status::StatusBoard;

/// Events per batch and a soft byte bound per batch (well under the 4 MiB message limit).
const BATCH_EVENTS: usize = 500;
const BATCH_BYTES: usize = 1024 * 1024;
/// Batches sent but not yet acknowledged.
const MAX_IN_FLIGHT: usize = 8;
/// How long a clean stop waits for the last events to be acknowledged.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// Jittered exponential backoff between connection attempts.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: half fixed, half random, so a school's laptops coming
    /// back together after an outage do not reconnect in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

pub struct Uplink {
    pub addr: String,
    pub tls: ClientConfig,
    pub spool: Arc<Mutex<Spool>>,
    pub new_events: Arc<Notify>,
    pub policy: PolicyCache,
    pub status: StatusBoard,
    pub facts: HostFacts,
    /// Where the uninstall-code hash the collector sends is kept.
    pub state: crate::state::StateDir,
}

fn to_pb(e: SpooledEvent) -> pb::Event {
    pb::Event {
        seq: e.seq,
        occurred_at: Some(timestamp_from(e.occurred_at)),
        user: e.user.unwrap_or_default(),
        kind: e.kind,
        details: Some(struct_from_json(&e.details)),
    }
}

enum SessionEnd {
    /// Drained after a stop request (or the grace time ran out).
    Stopped,
    Failed(SessionError),
}

/// Why a session with the collector ended early; the text is `status.json`'s `last_error`.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// Noted on the TLS stream (this device revoked, a clock out of range): said instead of
    /// whatever gRPC reported, which is only "broken pipe" or "connection closed" by then.
    #[error("{0}")]
    Tls(crate::connect::TlsProblem),
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    /// A gRPC status, as `describe` words it.
    #[error("{0}")]
    Rpc(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the spool's ack failed: {0}")]
    AckTask(#[from] tokio::task::JoinError),
    #[error("the event stream closed")]
    StreamClosed,
    #[error("the collector ended the event stream")]
    StreamEnded,
}

impl From<tonic::Status> for SessionError {
    fn from(s: tonic::Status) -> Self {
        SessionError::Rpc(describe(&s))
    }
}

impl Uplink {
    /// Runs until `stop`; then sends what it can within a short grace period.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let mut deadline: Option<Instant> = None;
        loop {
            let started = Instant::now();
            match self.session(&stop, &mut deadline).await {
                SessionEnd::Stopped => return,
                SessionEnd::Failed(why) => {
                    self.status.update(|s| {
                        s.connected = false;
                        s.last_error = Some(why.to_string());
                    });
                    if stop.is_cancelled() {
                        return;
                    }
                    warn!(error = %why, "Collector connection lost; events stay in the spool");
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            debug!(?delay, "Reconnecting after backoff");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    fn read_batch(&self, after: u64) -> Result<Vec<SpooledEvent>, SpoolError> {
        self.spool
            .lock()
            .expect("spool lock")
            .read_after(after, BATCH_EVENTS, BATCH_BYTES)
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        deadline: &mut Option<Instant>,
    ) -> SessionEnd {
        let problem = crate::connect::ProblemSlot::default();
        // A revoked certificate or a wrong clock is reported as such: by the time gRPC
        // gives up it says only "broken pipe" or "connection closed".
        let explain = |why: SessionError| match problem.lock().expect("problem slot lock").take() {
            Some(p) => SessionEnd::Failed(SessionError::Tls(p)),
            None => SessionEnd::Failed(why),
        };
        let channel =
            match crate::connect::channel_watched(&self.addr, self.tls.clone(), problem.clone())
                .await
            {
                Ok(c) => c,
                Err(e) => return explain(e.into()),
            };
        let policy_task = tokio::spawn(watch_policy(
            channel.clone(),
            self.policy.clone(),
            self.status.clone(),
            self.state.clone(),
        ));
        let end = self.stream(channel, stop, deadline).await;
        policy_task.abort();
        match end {
            SessionEnd::Failed(why) => explain(why),
            stopped => stopped,
        }
    }

    async fn stream(
        &self,
        channel: Channel,
        stop: &CancellationToken,
        deadline: &mut Option<Instant>,
    ) -> SessionEnd {
        let max = caretaker_proto::MAX_MESSAGE_BYTES;
        let mut client = TelemetryClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        if let Err(why) = self.check_floor(&mut client).await {
            return SessionEnd::Failed(why);
        }
        let (tx, rx) = mpsc::channel::<pb::EventBatch>(MAX_IN_FLIGHT);
        let response = match client.stream_events(ReceiverStream::new(rx)).await {
            Ok(r) => r,
            Err(s) => return SessionEnd::Failed(s.into()),
        };
        let mut acks = response.into_inner();
        info!(collector = %self.addr, "Connected to the collector");
        self.status.update(|s| {
            s.connected = true;
            s.connected_since = Some(Utc::now());
            s.last_error = None;
        });
        let mut agent_info = Some(pb::AgentInfo {
            hostname: self.facts.hostname.clone(),
            os: self.facts.os.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        });
        let mut sent_through = 0u64;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        loop {
            while in_flight.len() < MAX_IN_FLIGHT {
                let events = match self.read_batch(sent_through) {
                    Ok(e) => e,
                    Err(e) => return SessionEnd::Failed(e.into()),
                };
                let Some(last) = events.last().map(|e| e.seq) else {
                    break;
                };
                let batch = pb::EventBatch {
                    events: events.into_iter().map(to_pb).collect(),
                    agent: agent_info.take(),
                };
                if tx.send(batch).await.is_err() {
                    return SessionEnd::Failed(SessionError::StreamClosed);
                }
                sent_through = last;
                in_flight.push_back(last);
            }
            if deadline.is_some() && in_flight.is_empty() {
                return SessionEnd::Stopped;
            }
            let grace = deadline.map(tokio::time::sleep_until);
            tokio::select! {
                ack = acks.message() => match ack {
                    Ok(Some(a)) => {
                        // Awaited here, so acks are still applied one at a time, in order.
                        let (depth, bytes) = match apply_ack(&self.spool, a.through_seq).await {
                            Ok(x) => x,
                            Err(e) => return SessionEnd::Failed(e),
                        };
                        while in_flight.front().is_some_and(|&s| s <= a.through_seq) {
                            in_flight.pop_front();
                        }
                        self.status.update(|s| {
                            s.last_ack_at = Some(Utc::now());
                            s.spool_events = depth;
                            s.spool_bytes = bytes;
                        });
                    }
                    Ok(None) => return SessionEnd::Failed(SessionError::StreamEnded),
                    Err(s) => return SessionEnd::Failed(s.into()),
                },
                _ = self.new_events.notified(), if in_flight.len() < MAX_IN_FLIGHT => {}
                _ = stop.cancelled(), if deadline.is_none() => {
                    *deadline = Some(Instant::now() + DRAIN_GRACE);
                }
                _ = async { grace.expect("guarded").await }, if grace.is_some() => return SessionEnd::Stopped,
            }
        }
    }
}

impl Uplink {
    /// After `seq.floor` was lost, asks the collector for the highest number it stored for
    /// this device before anything is sent, and moves numbering above it (renumbering this
    /// run's unsent events), so no number is reused and dropped as a resend.
    async fn check_floor(&self, client: &mut TelemetryClient<Channel>) -> Result<(), SessionError> {
        if !self.spool.lock().expect("spool lock").floor_unverified() {
            return Ok(());
        }
        let highest = match client.highest_sequence(pb::HighestSequenceRequest {}).await {
            Ok(r) => r.into_inner().highest_seq,
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                warn!(
                    "The collector cannot say which sequence numbers it has; numbering continues above the spool's own"
                );
                self.spool.lock().expect("spool lock").floor_checked();
                return Ok(());
            }
            Err(s) => return Err(s.into()),
        };
        let mut spool = self.spool.lock().expect("spool lock");
        let renumbered = spool.raise_floor(highest)?;
        let next_seq = spool.next_seq();
        warn!(
            collector_highest = highest,
            renumbered,
            next_seq,
            "Sequence numbers checked with the collector after seq.floor was lost"
        );
        let d = crate::details! {
            "reason" => "sequence numbers checked with the collector after seq.floor was lost",
            "collector_highest_seq" => highest,
            "renumbered" => renumbered,
            "next_seq" => next_seq,
        };
        spool.append(vec![crate::event::NewEvent::now(
            "agent.spool_recovered",
            None,
            d,
        )])?;
        Ok(())
    }
}

/// A status as one readable line.
fn describe(s: &tonic::Status) -> String {
    let mut msg = format!("{:?}: {}", s.code(), s.message());
    if let Some(src) = std::error::Error::source(s) {
        msg.push_str(&format!(" ({})", crate::connect::error_chain(src)));
    }
    msg
}

async fn watch_policy(
    channel: Channel,
    cache: PolicyCache,
    status: StatusBoard,
    state: crate::state::StateDir,
) {
    let mut client = TelemetryClient::new(channel);
    let stream = client
        .watch_policy(pb::WatchPolicyRequest {
            known_version: cache.version(),
            want_uninstall_code: !state.uninstall_hash().exists(),
        })
        .await;
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(s) => {
            debug!(error = %describe(&s), "Policy watch failed");
            return;
        }
    };
    while let Ok(Some(p)) = stream.message().await {
        match crate::uninstall::store_hash(&state, &p.uninstall_code_sha256) {
            Ok(true) => info!("Received this laptop's uninstall-code check"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "Could not keep the uninstall-code check"),
        }
        match cache.apply(p.version, &p.document_json) {
            Ok(()) => status.update(|s| s.policy_version = cache.version()),
            Err(e) => {
                warn!(version = p.version, error = %e, "Refused a policy this agent cannot read; keeping the previous one")
            }
        }
    }
}

/// Removes what an `Ack` covers from the spool; the spool's depth and size after it.
///
/// `Spool::ack` fsyncs the ledger (about 0.5 ms, 10 ms at p99) and takes the spool lock, which
/// probes hold while they append (with an fsync of their own): on a blocking thread, so no
/// async worker stalls behind either. `Spool::ack` still makes the ledger durable before it
/// removes anything.
async fn apply_ack(spool: &Arc<Mutex<Spool>>, through: u64) -> Result<(u64, u64), SessionError> {
    let spool = spool.clone();
    let acked = tokio::task::spawn_blocking(move || {
        let mut spool = spool.lock().expect("spool lock");
        spool.ack(through).map(|_| (spool.depth(), spool.bytes()))
    })
    .await?;
    Ok(acked?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With one worker thread, an ack waiting for the spool lock must leave that thread free:
    /// the lock's holder is released only by another task on the same runtime.
    #[tokio::test(flavor = "current_thread")]
    async fn an_ack_waits_for_the_spool_off_the_async_worker() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(
            &dir.path().join("spool"),
            &dir.path().join("seq.floor"),
            1 << 20,
        )
        .unwrap();
        let seq = spool
            .append(vec![crate::event::NewEvent::unchecked(
                "test.event",
                serde_json::Map::new(),
            )])
            .unwrap()[0];
        let spool = Arc::new(Mutex::new(spool));

        // Another thread holds the spool (as a probe appending does) until told to let go,
        // or, should nothing on the runtime be able to tell it, for 10 s.
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let _guard = spool.lock().unwrap();
                locked_tx.send(()).unwrap();
                release_rx.recv_timeout(Duration::from_secs(10)).is_ok()
            })
        };
        locked_rx.recv().unwrap();
        let ack = tokio::spawn({
            let spool = spool.clone();
            async move { apply_ack(&spool, seq).await }
        });
        // Let the ack start waiting; were it waiting on this thread, nothing below would run.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Fails only if the holder already gave up waiting, which the assert below reports.
        let _ = release_tx.send(());
        assert!(
            holder.join().unwrap(),
            "the ack held the runtime's only thread while it waited for the spool"
        );
        let (depth, _) = ack.await.unwrap().unwrap();
        assert_eq!(depth, 0, "the acknowledged event is removed");
    }

    #[test]
    fn backoff_grows_jittered_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (i, d) in d.iter().enumerate() {
            let exp = Duration::from_secs(1 << i.min(3));
            assert!(*d >= exp / 2 && *d <= exp, "{i}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
