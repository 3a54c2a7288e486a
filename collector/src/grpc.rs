//! gRPC adapters: Enrollment and Telemetry over `Collector`, converting protobuf at the edge.

use std::pin::Pin;
use std::sync::Arc;

use caretaker_proto::convert::{json_from_struct, time_from};
use caretaker_proto::pb;
use futures::Stream;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::service::{Collector, EnrollError, EnrollRequest, IncomingEvent};
use crate::store::AgentFacts;
use crate::tls::PeerInfo;

/// Batches a stream may have in the store's queue at once: enough to keep the
/// pipe full while an fsync runs, few enough to bound memory per agent.
const PIPELINE_DEPTH: usize = 4;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
pub struct GrpcApi {
    collector: Arc<Collector>,
    /// Ends long-lived streams when the collector stops, so shutdown is prompt.
    shutdown: CancellationToken,
}

impl GrpcApi {
    pub fn new(collector: Arc<Collector>, shutdown: CancellationToken) -> Self {
        Self {
            collector,
            shutdown,
        }
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the collector is shutting down; reconnect later")
}

fn peer<T>(req: &Request<T>) -> Result<PeerInfo, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("connection information is missing"))
}

/// The device a request speaks for: only ever its verified client certificate.
fn device_of<T>(req: &Request<T>, collector: &Collector) -> Result<String, Status> {
    let id = peer(req)?.device_id.ok_or_else(|| {
        Status::unauthenticated("a device certificate from this school is required")
    })?;
    if collector.is_revoked(&id) {
        return Err(Status::permission_denied("this device has been revoked"));
    }
    Ok(id)
}

impl From<EnrollError> for Status {
    fn from(e: EnrollError) -> Self {
        let msg = e.to_string();
        match e {
            EnrollError::RateLimited(_) => Status::resource_exhausted(msg),
            EnrollError::UnknownToken => Status::unauthenticated(msg),
            EnrollError::ExpiredToken | EnrollError::UsedUpToken => Status::permission_denied(msg),
            EnrollError::BadRequest(_) => Status::invalid_argument(msg),
            EnrollError::Store(_) => Status::unavailable(msg),
        }
    }
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for GrpcApi {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let from = peer(&req)?.remote.ip();
        let r = req.into_inner();
        let enrolled = self
            .collector
            .enroll(
                from,
                EnrollRequest {
                    token: r.token,
                    csr_pem: r.csr_pem,
                    facts: AgentFacts {
                        hostname: r.hostname,
                        os: r.os,
                        agent_version: r.agent_version,
                    },
                },
            )
            .await?;
        Ok(Response::new(pb::EnrollResponse {
            uninstall_code_sha256: self.collector.uninstall_hash(&enrolled.device_id),
            device_id: enrolled.device_id,
            certificate_pem: enrolled.certificate_pem,
            ca_certificate_pem: enrolled.ca_certificate_pem,
        }))
    }
}

pub(crate) fn incoming(e: pb::Event) -> IncomingEvent {
    IncomingEvent {
        seq: e.seq,
        occurred_at: e.occurred_at.as_ref().and_then(time_from),
        user: e.user,
        kind: e.kind,
        details: e.details.as_ref().map(json_from_struct).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::telemetry_server::Telemetry for GrpcApi {
    type StreamEventsStream = BoxStream<pb::Ack>;
    type WatchPolicyStream = BoxStream<pb::Policy>;

    async fn stream_events(
        &self,
        req: Request<Streaming<pb::EventBatch>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let device = device_of(&req, &self.collector)?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH * 2);
        let connected = self.collector.stream_opened(&device);
        let (collector, shutdown) = (self.collector.clone(), self.shutdown.clone());
        if collector.is_shared() {
            let (c, d) = (collector.clone(), device.clone());
            let _ = tokio::task::spawn_blocking(move || c.resync_device(&d)).await;
        }
        let tasks = collector.tasks().clone();
        tasks.spawn(async move {
            pump(collector, device, inbound, tx, shutdown, &connected).await;
            drop(connected);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn highest_sequence(
        &self,
        req: Request<pb::HighestSequenceRequest>,
    ) -> Result<Response<pb::HighestSequenceResponse>, Status> {
        let device = device_of(&req, &self.collector)?;
        // Read from the store, not the device cache: the agent numbers its next events above
        // this, and a number too low would make them look like resends and be dropped. The
        // store holds only what is durable (and what another collector sharing it stored).
        let store = self.collector.store.clone();
        let highest_seq = crate::service::blocking(move || store.device(&device))
            .await
            .map_err(|e| {
                Status::unavailable(format!("the collector could not read its store: {e}"))
            })?
            .map_or(0, |d| d.highest_seq);
        Ok(Response::new(pb::HighestSequenceResponse { highest_seq }))
    }

    async fn watch_policy(
        &self,
        req: Request<pb::WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        let device = device_of(&req, &self.collector)?;
        let req = req.into_inner();
        let known = req.known_version;
        // An agent enrolled before uninstall codes gets the current policy once anyway,
        // carrying its code's hash.
        let mut send_anyway = req.want_uninstall_code;
        let mut policies = self.collector.watch_policy();
        let collector = self.collector.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(4);
        self.collector.tasks().spawn(async move {
            let mut known = known;
            loop {
                let current = policies.borrow_and_update().clone();
                if current.version > known || send_anyway {
                    known = known.max(current.version);
                    send_anyway = false;
                    let msg = pb::Policy {
                        version: current.version,
                        document_json: current.policy.to_string(),
                        uninstall_code_sha256: collector.uninstall_hash(&device),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = policies.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(shutting_down())).await;
                        return;
                    }
                }
                if collector.is_revoked(&device) {
                    let _ = tx
                        .send(Err(Status::permission_denied(
                            "this device has been revoked",
                        )))
                        .await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads batches in order, stores them (several in flight), and acks each once durable.
/// On any error the batches before it are still stored and acked, then the error ends the stream.
async fn pump(
    collector: Arc<Collector>,
    device: String,
    mut inbound: Streaming<pb::EventBatch>,
    tx: mpsc::Sender<Result<pb::Ack, Status>>,
    shutdown: CancellationToken,
    stream: &crate::service::StreamGuard,
) {
    let mut pending = FuturesOrdered::new();
    let mut through = 0u64;
    let mut failure: Option<Status> = None;
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            biased;
            Some(done) = pending.next(), if !pending.is_empty() => {
                match done {
                    Ok((max_seq, arrived)) => {
                        through = through.max(max_seq);
                        if tx.send(Ok(pb::Ack { through_seq: through })).await.is_err() {
                            return;
                        }
                        let m = crate::metrics::metrics();
                        m.batches_acked.inc();
                        m.ack_latency.observe(std::time::Instant::elapsed(&arrived).as_secs_f64());
                    }
                    Err(e) => {
                        warn!(%device, error = %e, "Store refused a batch; the agent will resend it");
                        failure.get_or_insert(Status::unavailable(format!("the collector could not store events: {e}")));
                        open = false;
                        // Later batches depended on this one being stored first: drop them unacked.
                        pending = FuturesOrdered::new();
                    }
                }
            }
            _ = shutdown.cancelled(), if open => {
                // Finish what was received; the agent resends anything unacked.
                failure = Some(shutting_down());
                open = false;
            }
            _ = stream.replaced.cancelled(), if open => {
                debug!(%device, "Stream replaced by a newer one from the same device");
                failure = Some(Status::aborted("a newer stream from this device replaced this one"));
                open = false;
            }
            msg = inbound.message(), if open && pending.len() < PIPELINE_DEPTH => {
                match msg {
                    Ok(Some(batch)) => {
                        if collector.is_revoked(&device) {
                            failure = Some(Status::permission_denied("this device has been revoked"));
                            open = false;
                            continue;
                        }
                        if let Some(why) = collector.intake_refusal() {
                            // Unavailable: the agent keeps the batch and reconnects with backoff.
                            debug!(%device, reason = %why, "Batch refused until the store can take it");
                            failure = Some(Status::unavailable(why));
                            open = false;
                            continue;
                        }
                        let facts = batch.agent.map(|a| AgentFacts {
                            hostname: a.hostname,
                            os: a.os,
                            agent_version: a.agent_version,
                        });
                        let events: Vec<_> = batch.events.into_iter().map(incoming).collect();
                        let max_seq = events.iter().map(|e| e.seq).max().unwrap_or(0);
                        let arrived = std::time::Instant::now();
                        match collector.prepare_batch(&device, events, facts) {
                            Ok(prepared) => {
                                // Queued here, in the stream's order; only the wait for
                                // durability is pipelined.
                                match collector.submit(prepared, stream.id).await {
                                    Ok(durable) => pending.push_back(async move { durable.await.map(|()| (max_seq, arrived)) }),
                                    Err(e) => {
                                        failure = Some(Status::unavailable(format!("the collector could not store events: {e}")));
                                        open = false;
                                    }
                                }
                            }
                            Err(why) => {
                                debug!(%device, %why, "Malformed batch refused");
                                failure = Some(Status::invalid_argument(why.to_string()));
                                open = false;
                            }
                        }
                    }
                    Ok(None) => open = false,
                    Err(status) => {
                        debug!(%device, error = %status, "Stream broke");
                        failure = Some(Status::new(status.code(), format!("batch refused: {}", status.message())));
                        open = false;
                    }
                }
            }
        }
    }
    if let Some(status) = failure {
        let _ = tx.send(Err(status)).await;
    }
}
