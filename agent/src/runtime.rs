//! `caretaker-agent run`: wires spool, probes, uplink, policy and status together, and stops them in order.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::Config;
use crate::event::{EventSink, NewEvent};
use crate::policy::PolicyCache;
use crate::probe::{self, ProbeConfig, ProbeContext};
use crate::spool::Spool;
use crate::state::StateDir;
use crate::status::{Status, StatusBoard};
use crate::uplink::Uplink;
use crate::{os, tls};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "this machine is not enrolled (no {}); run `caretaker-agent enroll --collector HOST:PORT --token TOKEN --ca-fingerprint sha256:...` first",
        .0.display()
    )]
    NotEnrolled(PathBuf),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{} holds no usable {what}", path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("the enrolment's certificates do not make a TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

/// Reads the PEM file at `path` and parses it with `parse`, naming the file on failure.
fn read_pem<T>(
    path: PathBuf,
    what: &'static str,
    parse: impl FnOnce(&str) -> std::io::Result<T>,
) -> Result<T, StartError> {
    let text = std::fs::read_to_string(&path).map_err(|e| crate::state::StateError::Read {
        path: path.clone(),
        source: e,
    })?;
    parse(&text).map_err(|e| StartError::Pem {
        path,
        what,
        source: Some(e),
    })
}

/// Runs the agent until `shutdown`, then records `agent.stopping` and sends what it can.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let state = StateDir::new(&config.state_dir);
    let enrollment = state
        .load_enrollment()?
        .ok_or_else(|| StartError::NotEnrolled(state.enrollment()))?;
    let ca = read_pem(state.ca(), "CA certificate", tls::certs_from_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| StartError::Pem {
            path: state.ca(),
            what: "CA certificate",
            source: None,
        })?;
    let chain = read_pem(state.cert(), "certificate", tls::certs_from_pem)?;
    let key = read_pem(state.key(), "private key", tls::key_from_pem)?;
    let tls = tls::device_config(ca, chain, key)?;
    let collector = config
        .collector
        .clone()
        .unwrap_or(enrollment.collector.clone());

    // Before the spool: a second agent on this folder would move the live spool aside.
    let _instance = crate::instance::lock(state.root())?;
    let (spool, notes) = Spool::open(&state.spool(), &state.seq_floor(), config.spool_max_bytes)?;
    let policy = PolicyCache::load(state.policy());
    let status = StatusBoard::new(Status {
        pid: std::process::id(),
        device_id: enrollment.device_id.clone(),
        collector: collector.clone(),
        spool_events: spool.depth(),
        spool_bytes: spool.bytes(),
        policy_version: policy.version(),
        ..Default::default()
    });
    let spool = Arc::new(Mutex::new(spool));
    let new_events = Arc::new(Notify::new());
    let facts = os::host_facts();

    let background = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(
        status
            .clone()
            .write_loop(state.status(), background.clone()),
    );

    // The spool writer: every event passes through here, and is durable before the uplink sees it.
    let (tx, rx) = mpsc::channel::<NewEvent>(1024);
    // The USB probe flags inserts while the antivirus is not current: it learns the
    // status from the antivirus probe's own events as they pass to the spool.
    let (antivirus_tx, antivirus_problem) = tokio::sync::watch::channel(None);
    let writer = tokio::spawn(write_events(
        rx,
        spool.clone(),
        new_events.clone(),
        status.clone(),
        antivirus_tx,
    ));
    let sink = EventSink::new(tx);

    for note in &notes {
        sink.emit(note.event()).await;
    }

    let uplink_stop = CancellationToken::new();
    let uplink = tokio::spawn(
        Uplink {
            addr: collector,
            tls,
            spool: spool.clone(),
            new_events: new_events.clone(),
            policy: policy.clone(),
            status: status.clone(),
            facts: facts.clone(),
            state: state.clone(),
        }
        .run(uplink_stop.clone()),
    );

    let probes_stop = CancellationToken::new();
    let probe_tasks = TaskTracker::new();
    // A removal note left by a removal that did not go ahead is stale.
    let _ = std::fs::remove_file(state.uninstalling());
    probe_tasks.spawn(crate::uninstall::watch_reports(
        state.clone(),
        spool.clone(),
        new_events.clone(),
        probes_stop.clone(),
    ));
    let mut probes = vec![ProbeConfig::Lifecycle(probe::lifecycle::LifecycleConfig {
        heartbeat_interval: config.heartbeat_interval,
        facts,
        uninstall_note: Some(state.uninstalling()),
    })];
    probes.extend(config.antivirus.clone().map(ProbeConfig::Antivirus));
    probes.extend(config.software.clone().map(ProbeConfig::Software));
    probes.extend(config.facts.clone().map(ProbeConfig::Facts));
    // The USB probe applies the logged-in user's rules; the screen-lock probe, which
    // watches the sessions anyway, says who that is.
    let (user_tx, user_rx) = tokio::sync::watch::channel(None);
    if let Some(mut lock) = config.screen_lock.clone() {
        lock.session_user = Some(Arc::new(user_tx));
        probes.push(ProbeConfig::ScreenLock(lock));
    }
    if let Some(mut usb) = config.usb.clone() {
        usb.inputs.antivirus_problem = antivirus_problem;
        usb.inputs.user = user_rx;
        probes.push(ProbeConfig::Usb(usb));
    }
    probe::spawn(
        probes,
        ProbeContext {
            sink,
            policy: policy.subscribe(),
            shutdown: probes_stop.clone(),
            status: status.clone(),
            stall_after: config.probe_stall_after,
        },
        &probe_tasks,
    );
    info!(device = %enrollment.device_id, "Agent running");
    let systemd = crate::os::sdnotify::Notifier::from_env().map(Arc::new);
    if let Some(n) = &systemd {
        n.notify("READY=1");
        // Keep-alives come from the runtime itself: an agent whose runtime is wedged stops
        // sending them, and systemd restarts it (releasing the USB hold on the way).
        if let Some(every) = crate::os::sdnotify::watchdog_interval() {
            let (n, stop) = (n.clone(), background.clone());
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => n.notify("WATCHDOG=1"),
                    }
                }
            });
        }
    }

    shutdown.cancelled().await;
    info!("Agent stopping");
    if let Some(n) = &systemd {
        n.notify("STOPPING=1");
    }
    // Order matters: probes record their last events, the writer makes them
    // durable, then the uplink gets a short grace to deliver them.
    probes_stop.cancel();
    probe_tasks.close();
    probe_tasks.wait().await;
    if let Err(e) = writer.await {
        error!(error = %e, "Spool writer failed");
    }
    uplink_stop.cancel();
    let _ = uplink.await;
    background.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Writes events to the spool in batches (one fsync per batch) until every sink is dropped.
async fn write_events(
    mut rx: mpsc::Receiver<NewEvent>,
    spool: Arc<Mutex<Spool>>,
    new_events: Arc<Notify>,
    status: StatusBoard,
    antivirus: tokio::sync::watch::Sender<Option<String>>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        for e in batch.iter().filter(|e| e.kind == "antivirus.status") {
            let s = e
                .details
                .get("status")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown");
            antivirus.send_replace((s != "current").then(|| format!("antivirus is {s}")));
        }
        let spool2 = spool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut s = spool2.lock().expect("spool lock");
            s.append(batch).map(|_| (s.depth(), s.bytes()))
        })
        .await;
        match result {
            Ok(Ok((depth, bytes))) => {
                new_events.notify_one();
                status.update(|s| {
                    s.spool_events = depth;
                    s.spool_bytes = bytes;
                });
            }
            // The disk is full or failing: say so loudly; the events in this
            // batch are lost, but the agent keeps running and retries with the next.
            Ok(Err(e)) => error!(error = %e, "Could not write events to the spool"),
            Err(e) => error!(error = %e, "Spool writer panicked"),
        }
    }
}
