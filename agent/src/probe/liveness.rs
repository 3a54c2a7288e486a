//! Probe liveness: each probe beats once per turn of its loop; a supervisor reports one that stops making progress (`agent.probe_stalled`), restarts it where that is safe, and says when it moves again (`agent.probe_recovered`).
//!
//! The systemd watchdog (`os::sdnotify`) proves only that the runtime schedules: a probe stuck
//! in a blocking call or in an await that never ends leaves the runtime healthy. So each probe
//! calls [`beat`] at the top of its loop, and every wait for an event also selects on
//! [`idle`], so a probe that is merely waiting still turns, and beats, every third of its
//! longest expected gap. One that has not beaten for longer than that gap is stalled.
//!
//! The heart is task-local: helpers a probe spawns (a medium's scan, a socket reader) do not
//! beat for it, so they cannot hide a stuck loop; and a probe run outside the supervisor (the
//! probes' own unit tests) beats nothing and never idles, so its behaviour there is unchanged.
//! A helper that can itself hang is watched by its probe: the USB probe owns its medium scans
//! (`usb::scan`), each with its own progress clock, and aborts and reports one that stops.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::details;
use crate::event::{EventSink, NewEvent};
use crate::status::{StalledProbe, StatusBoard};

/// Restarts allowed per probe in any hour; past that a stalled probe is left reported, so a
/// probe that hangs at once every time cannot turn into a restart loop.
pub const MAX_RESTARTS_PER_HOUR: usize = 3;
const HOUR: Duration = Duration::from_secs(3600);

tokio::task_local! {
    static HEART: Heart;
}

#[derive(Clone)]
struct Heart {
    pulse: Arc<Mutex<Pulse>>,
    idle: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Pulse {
    last: Instant,
    beats: u64,
}

/// Records that the calling probe made progress. A no-op outside a supervised probe.
pub fn beat() {
    let _ = HEART.try_with(|h| {
        let mut p = h.pulse.lock().expect("pulse lock");
        p.last = Instant::now();
        p.beats += 1;
    });
}

/// Completes after a third of the calling probe's gap, so a wait loop that selects on it turns
/// (and beats) while nothing happens. Never completes outside a supervised probe.
pub async fn idle() {
    match HEART.try_with(|h| h.idle) {
        Ok(d) => tokio::time::sleep(d).await,
        Err(_) => std::future::pending().await,
    }
}

pub type ProbeFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One probe as the supervisor runs it.
pub struct Supervised {
    pub name: &'static str,
    /// The longest the probe may go without a beat while working normally.
    pub max_gap: Duration,
    /// Whether aborting its task and starting it again is safe (decided per probe in `probe::spawn`).
    pub restart: bool,
    /// Builds the probe's future afresh (with the policy as it is then).
    pub start: Box<dyn Fn() -> ProbeFuture + Send + Sync>,
}

struct Running {
    spec: Supervised,
    pulse: Arc<Mutex<Pulse>>,
    task: JoinHandle<()>,
    stall: Option<Stall>,
    restarts: VecDeque<Instant>,
}

/// A stall episode, from the report until the probe moves again.
struct Stall {
    /// The last beat before it stopped.
    since: Instant,
    since_wall: chrono::DateTime<Utc>,
    /// Recovered once the pulse reaches this count: one more beat from the instance that
    /// stalled, or two from a restarted one (its first beat is only its start).
    beats_needed: u64,
    /// The current instance has been reported and was left (the restart budget was spent).
    left: bool,
}

impl Running {
    fn spawn(spec: Supervised) -> Self {
        let (pulse, task) = start(&spec);
        Self {
            spec,
            pulse,
            task,
            stall: None,
            restarts: VecDeque::new(),
        }
    }
}

fn start(spec: &Supervised) -> (Arc<Mutex<Pulse>>, JoinHandle<()>) {
    let pulse = Arc::new(Mutex::new(Pulse {
        last: Instant::now(),
        beats: 0,
    }));
    let heart = Heart {
        pulse: pulse.clone(),
        idle: spec.max_gap / 3,
    };
    let task = tokio::spawn(HEART.scope(heart, (spec.start)()));
    (pulse, task)
}

/// Runs `probes` until `shutdown`, checking their hearts; then waits for each to stop (a
/// stalled one is abandoned: it cannot record anything more).
pub async fn supervise(
    probes: Vec<Supervised>,
    sink: EventSink,
    status: StatusBoard,
    shutdown: CancellationToken,
) {
    let Some(shortest) = probes.iter().map(|p| p.max_gap).min() else {
        return;
    };
    // Checking at a quarter of the shortest gap reports a stall at most a quarter late.
    let every = (shortest / 4).max(Duration::from_millis(10));
    let mut running: Vec<Running> = probes.into_iter().map(Running::spawn).collect();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let events: Vec<NewEvent> = running.iter_mut().flat_map(|r| check(r, now)).collect();
        if events.is_empty() {
            continue;
        }
        let stalled = stalled_list(&running);
        status.update(|s| s.stalled_probes = stalled);
        for event in events {
            // The spool writer may itself be what is stuck: never hold up the stop for it.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = sink.emit(event) => {}
            }
        }
    }
    for mut r in running {
        if r.stall.is_some() && !r.task.is_finished() {
            r.task.abort();
            continue;
        }
        // A probe records its last events on the way out; one that cannot within its gap is stuck.
        if tokio::time::timeout(r.spec.max_gap, &mut r.task)
            .await
            .is_err()
        {
            warn!(probe = r.spec.name, "Probe did not stop; abandoned");
            r.task.abort();
        }
    }
}

/// One look at one probe: the events to emit (a stall or a recovery), restarting it if due.
fn check(r: &mut Running, now: Instant) -> Vec<NewEvent> {
    // A probe that returned by itself (its source closed) is not stuck; nothing to watch.
    if r.task.is_finished() {
        return Vec::new();
    }
    let pulse = *r.pulse.lock().expect("pulse lock");
    let name = r.spec.name;
    if let Some(s) = &r.stall
        && pulse.beats >= s.beats_needed
    {
        let stalled_secs = now.duration_since(s.since).as_secs();
        info!(probe = name, stalled_secs, "Probe moving again");
        r.stall = None;
        let d = details! { "probe" => name, "stalled_secs" => stalled_secs };
        return vec![NewEvent::now("agent.probe_recovered", None, d)];
    }
    if now.duration_since(pulse.last) <= r.spec.max_gap {
        return Vec::new();
    }
    while r
        .restarts
        .front()
        .is_some_and(|t| now.duration_since(*t) >= HOUR)
    {
        r.restarts.pop_front();
    }
    let may_restart = r.spec.restart && r.restarts.len() < MAX_RESTARTS_PER_HOUR;
    if r.stall.as_ref().is_some_and(|s| s.left) && !may_restart {
        return Vec::new();
    }
    let (since, since_wall) = match &r.stall {
        Some(s) => (s.since, s.since_wall),
        None => (
            pulse.last,
            Utc::now()
                - chrono::Duration::from_std(now.duration_since(pulse.last)).unwrap_or_default(),
        ),
    };
    let stalled_secs = now.duration_since(since).as_secs();
    let action = if may_restart { "restarted" } else { "reported" };
    warn!(probe = name, stalled_secs, action, "Probe stalled");
    let mut d = details! {
        "probe" => name,
        "stalled_secs" => stalled_secs,
        "max_gap_secs" => r.spec.max_gap.as_secs_f64(),
        "action" => action,
    };
    let beats_needed = if may_restart {
        // The old task may be inside a blocking call, which no abort can interrupt: its
        // thread is left to finish (or not) on its own, and its result is dropped.
        r.task.abort();
        let (pulse, task) = start(&r.spec);
        r.pulse = pulse;
        r.task = task;
        r.restarts.push_back(now);
        2
    } else {
        pulse.beats + 1
    };
    d.insert("restarts_last_hour".into(), r.restarts.len().into());
    r.stall = Some(Stall {
        since,
        since_wall,
        beats_needed,
        left: !may_restart,
    });
    vec![NewEvent::now("agent.probe_stalled", None, d)]
}

fn stalled_list(running: &[Running]) -> Vec<StalledProbe> {
    running
        .iter()
        .filter_map(|r| {
            let s = r.stall.as_ref()?;
            Some(StalledProbe {
                probe: r.spec.name.to_owned(),
                since: s.since_wall,
                restarts_last_hour: r.restarts.len() as u32,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::{Notify, mpsc};

    /// A probe that turns its loop until `hang` is notified, then awaits `release` forever
    /// (or until notified), like a probe stuck on a socket that never answers.
    fn probe(
        name: &'static str,
        restart: bool,
        hang: Arc<Notify>,
        release: Arc<Notify>,
        starts: Arc<AtomicU32>,
    ) -> Supervised {
        Supervised {
            name,
            max_gap: Duration::from_secs(60),
            restart,
            start: Box::new(move || {
                let (hang, release) = (hang.clone(), release.clone());
                starts.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    loop {
                        beat();
                        tokio::select! {
                            _ = hang.notified() => release.notified().await,
                            _ = idle() => {}
                        }
                    }
                })
            }),
        }
    }

    struct Rig {
        events: mpsc::Receiver<NewEvent>,
        status: StatusBoard,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    fn rig(probes: Vec<Supervised>) -> Rig {
        let (tx, events) = mpsc::channel(64);
        let status = StatusBoard::new(Default::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            probes,
            EventSink::new(tx),
            status.clone(),
            stop.clone(),
        ));
        Rig {
            events,
            status,
            stop,
            task,
        }
    }

    /// The next event; a missing one fails the test instead of hanging it (time is paused,
    /// so ten minutes pass at once).
    async fn next(events: &mut mpsc::Receiver<NewEvent>) -> NewEvent {
        tokio::time::timeout(Duration::from_secs(600), events.recv())
            .await
            .expect("an event within ten minutes")
            .expect("the supervisor is running")
    }

    fn detail(e: &NewEvent, k: &str) -> serde_json::Value {
        e.details[k].clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_probe_is_alive_and_a_stuck_one_is_restarted_then_left_reported() {
        let (hang, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let starts = Arc::new(AtomicU32::new(0));
        let mut r = rig(vec![probe(
            "usb",
            true,
            hang.clone(),
            release.clone(),
            starts.clone(),
        )]);
        // Waiting for events for hours, turning only on `idle`: never stalled.
        tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
        assert!(r.events.try_recv().is_err());
        assert!(r.status.snapshot().stalled_probes.is_empty());

        // Stuck: reported within its gap plus a quarter and restarted; the new instance
        // turns, so it has recovered. Three times in the hour.
        for n in 1..=MAX_RESTARTS_PER_HOUR {
            hang.notify_one();
            let e = next(&mut r.events).await;
            assert_eq!(e.kind, "agent.probe_stalled");
            assert_eq!(detail(&e, "probe"), "usb");
            assert_eq!(detail(&e, "action"), "restarted");
            assert_eq!(detail(&e, "restarts_last_hour"), n);
            let secs = detail(&e, "stalled_secs").as_u64().unwrap();
            assert!((60..=75).contains(&secs), "{secs}");
            assert_eq!(starts.load(Ordering::SeqCst), n as u32 + 1);
            let st = r.status.snapshot().stalled_probes;
            assert_eq!(st.len(), 1);
            assert_eq!(st[0].probe, "usb");
            assert_eq!(st[0].restarts_last_hour, n as u32);
            let e = next(&mut r.events).await;
            assert_eq!(e.kind, "agent.probe_recovered");
            assert!(r.status.snapshot().stalled_probes.is_empty());
        }
        // The fourth stall in the hour: reported, not restarted, and not reported again.
        hang.notify_one();
        let e = next(&mut r.events).await;
        assert_eq!(e.kind, "agent.probe_stalled");
        assert_eq!(detail(&e, "action"), "reported");
        tokio::time::sleep(Duration::from_secs(10 * 60)).await;
        assert!(r.events.try_recv().is_err(), "one report per stall");
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        assert_eq!(r.status.snapshot().stalled_probes.len(), 1);

        // It moves again: recovered, with how long it was stuck, and gone from the status.
        release.notify_one();
        let e = next(&mut r.events).await;
        assert_eq!(e.kind, "agent.probe_recovered");
        assert_eq!(detail(&e, "probe"), "usb");
        assert!(detail(&e, "stalled_secs").as_u64().unwrap() >= 11 * 60);
        assert!(r.status.snapshot().stalled_probes.is_empty());

        // An hour after the first restarts, the budget is back: a new stall is restarted again.
        tokio::time::sleep(HOUR).await;
        hang.notify_one();
        let e = next(&mut r.events).await;
        assert_eq!(detail(&e, "action"), "restarted");
        assert_eq!(detail(&e, "restarts_last_hour"), 1);
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_not_safe_to_restart_is_reported_and_recovers_in_place() {
        let (hang, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let starts = Arc::new(AtomicU32::new(0));
        let mut r = rig(vec![
            probe(
                "screen_lock",
                false,
                hang.clone(),
                release.clone(),
                starts.clone(),
            ),
            probe(
                "antivirus",
                true,
                Arc::new(Notify::new()),
                Arc::new(Notify::new()),
                Arc::new(AtomicU32::new(0)),
            ),
        ]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        hang.notify_one();
        let e = next(&mut r.events).await;
        assert_eq!(e.kind, "agent.probe_stalled");
        assert_eq!(detail(&e, "probe"), "screen_lock");
        assert_eq!(detail(&e, "action"), "reported");
        assert_eq!(starts.load(Ordering::SeqCst), 1, "not restarted");
        release.notify_one();
        let e = next(&mut r.events).await;
        assert_eq!(e.kind, "agent.probe_recovered");
        assert_eq!(detail(&e, "probe"), "screen_lock");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(
            r.events.try_recv().is_err(),
            "the other probe never stalled"
        );
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_healthy_probes_and_abandons_a_stuck_one() {
        let stopped = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let healthy = {
            let (stopped, stop) = (stopped.clone(), stop.clone());
            Supervised {
                name: "lifecycle",
                max_gap: Duration::from_secs(60),
                restart: false,
                start: Box::new(move || {
                    let (stopped, stop) = (stopped.clone(), stop.clone());
                    Box::pin(async move {
                        loop {
                            beat();
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = idle() => {}
                            }
                        }
                        // Its goodbye takes a moment; the supervisor waits for it.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        stopped.fetch_add(1, Ordering::SeqCst);
                    })
                }),
            }
        };
        let stuck = Supervised {
            name: "software",
            max_gap: Duration::from_secs(60),
            restart: false,
            start: Box::new(|| Box::pin(std::future::pending())),
        };
        let (tx, mut events) = mpsc::channel(64);
        let task = tokio::spawn(supervise(
            vec![healthy, stuck],
            EventSink::new(tx),
            StatusBoard::new(Default::default()),
            stop.clone(),
        ));
        let e = next(&mut events).await;
        assert_eq!(detail(&e, "probe"), "software");
        stop.cancel();
        task.await.unwrap();
        assert_eq!(stopped.load(Ordering::SeqCst), 1);
    }
}
