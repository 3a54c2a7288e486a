//! Shared accept-loop machinery for both listeners: connection caps, idle timeouts and backoff.
//!
//! Each listener keeps a [`Gate`]: a cap on its open connections and, per client address, caps
//! on connections that have not yet proved themselves. "Proved" means a device certificate on
//! the gRPC port, or one request answered on the web port. The tightest cap is on handshakes in
//! progress from one address; a school's laptops may share one NAT address, so connections that
//! have proved themselves are never counted against their address, only against the listener.
//! When the listener is full, the oldest unproven connection of the address holding the most
//! unproven connections is closed to make room (so a flood from a few addresses cannot push out
//! a laptop's handshake); if every connection has proved itself, the newcomer is refused.
//!
//! Every accepted connection is wrapped in [`Guarded`], which closes it when no byte has moved
//! either way for the idle timeout (HTTP/2 keep-alive pings keep a live client's connection
//! moving) or when the gate evicts it. `accept` failures such as EMFILE back off
//! ([`AcceptBackoff`], also used by the admin socket) instead of spinning.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::metrics::{Listener, ListenerLabels, Refusal, metrics};

mod guarded;
pub use guarded::Guarded;

/// Connections closed to make room but not yet gone (their tasks drop them when next polled).
/// While this many are on their way out the accept loop waits for them (newcomers wait in the
/// kernel's backlog, not refused), so eviction cannot push the descriptors in use past the cap.
const EVICTING_MAX: usize = 16;

/// File descriptors kept back from the listeners for the store, the admin socket, outgoing
/// mail and webhooks, report rendering and the runtime itself.
const FD_RESERVE: u64 = 128;

/// The timeouts of one listener. The defaults suit a school network; tests set them short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A TLS handshake that takes longer is dropped (slowloris on the handshake).
    pub handshake: Duration,
    /// A connection on which no byte moved for this long is closed.
    pub idle: Duration,
    /// An HTTP/1 request whose headers have not all arrived by then is dropped.
    pub header_read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(90),
            header_read: Duration::from_secs(15),
        }
    }
}

impl Timeouts {
    /// How often an HTTP/2 connection is pinged: often enough that a live client's answers keep
    /// it inside the idle timeout.
    pub fn keepalive_interval(&self) -> Duration {
        (self.idle / 3).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// How long a ping may go unanswered before the connection is closed.
    pub fn keepalive_timeout(&self) -> Duration {
        (self.idle / 3).clamp(Duration::from_millis(100), Duration::from_secs(20))
    }
}

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once on this listener.
    pub max_connections: usize,
    /// Connections from one address that have not proved themselves.
    pub max_unproven_per_address: usize,
    /// TLS handshakes in progress from one address.
    pub max_handshakes_per_address: usize,
    pub timeouts: Timeouts,
}

/// The caps of both listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    pub grpc: Limits,
    pub web: Limits,
}

impl ListenLimits {
    /// Caps that fit within `nofile` file descriptors: a reserve for everything else, three
    /// quarters of the rest for agents and a quarter for the dashboard and API.
    pub fn for_fd_limit(nofile: u64, timeouts: Timeouts) -> Self {
        let spare = nofile.saturating_sub(FD_RESERVE + nofile / 16).max(64) as usize;
        let grpc = (spare * 3 / 4).max(16);
        let web = (spare / 4).max(16);
        Self {
            grpc: Limits {
                max_connections: grpc,
                // A technician enrolling a classroom through one NAT address.
                max_unproven_per_address: (grpc / 2).clamp(8, 256),
                max_handshakes_per_address: (grpc / 4).clamp(4, 128),
                timeouts,
            },
            web: Limits {
                max_connections: web,
                max_unproven_per_address: (web / 2).clamp(8, 128),
                max_handshakes_per_address: (web / 4).clamp(4, 64),
                timeouts,
            },
        }
    }
}

/// Raises the soft limit on open files to the hard limit, and returns the soft limit in force.
/// A busy collector holds a descriptor per connected laptop; distributions start services with
/// a soft limit of 1024 and a far higher hard one.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "Could not raise the open-file limit");
        }
    }
    // `None` means unlimited; cap what we plan for at something sane.
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

#[derive(Debug, Default)]
struct AddressCount {
    handshaking: usize,
    /// Connections not yet proved, oldest first, each with the token that closes it.
    unproven: BTreeMap<u64, CancellationToken>,
}

#[derive(Debug, Default)]
struct GateState {
    open: usize,
    /// Evicted connections whose slots have not been dropped yet.
    evicting: usize,
    next_id: u64,
    per_address: HashMap<IpAddr, AddressCount>,
}

/// The caps and counts of one listener.
#[derive(Debug)]
pub struct Gate {
    listener: Listener,
    limits: Limits,
    state: Mutex<GateState>,
    /// Signalled when an evicted connection is gone.
    gone: tokio::sync::Notify,
}

impl Gate {
    pub fn new(listener: Listener, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            listener,
            limits,
            state: Mutex::default(),
            gone: tokio::sync::Notify::new(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `addr`, closing the oldest unproven one if the listener is
    /// full, or says why not.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refusal> {
        let mut s = self.state();
        let count = s.per_address.entry(addr).or_default();
        if count.handshaking >= self.limits.max_handshakes_per_address
            || count.unproven.len() >= self.limits.max_unproven_per_address
        {
            return Err(Refusal::AddressFull);
        }
        if s.open >= self.limits.max_connections {
            if s.evicting >= EVICTING_MAX {
                return Err(Refusal::ListenerFull);
            }
            let Some((_, oldest)) = s
                .per_address
                .values_mut()
                .max_by_key(|c| c.unproven.len())
                .and_then(|c| c.unproven.pop_first())
            else {
                return Err(Refusal::ListenerFull);
            };
            // It stays counted until its task sees the token and drops its slot.
            oldest.cancel();
            s.evicting += 1;
            metrics().refused(self.listener, Refusal::ListenerFull);
        }
        let id = s.next_id;
        s.next_id += 1;
        s.open += 1;
        let evict = CancellationToken::new();
        let count = s.per_address.entry(addr).or_default();
        count.handshaking += 1;
        count.unproven.insert(id, evict.clone());
        drop(s);
        let labels = ListenerLabels {
            listener: self.listener,
        };
        metrics().connections_accepted.get_or_create(&labels).inc();
        metrics().connections_open.get_or_create(&labels).inc();
        Ok(Slot(Arc::new(SlotInner {
            gate: self.clone(),
            id,
            addr,
            evict,
            handshaking: AtomicBool::new(true),
            proven: AtomicBool::new(false),
        })))
    }

    /// Connections open now (for tests).
    pub fn open(&self) -> usize {
        self.state().open
    }
}

#[derive(Debug)]
struct SlotInner {
    gate: Arc<Gate>,
    id: u64,
    addr: IpAddr,
    evict: CancellationToken,
    handshaking: AtomicBool,
    proven: AtomicBool,
}

impl SlotInner {
    fn handshake_done(&self) {
        if self.handshaking.swap(false, Ordering::AcqRel) {
            let mut s = self.gate.state();
            if let Some(c) = s.per_address.get_mut(&self.addr) {
                c.handshaking -= 1;
            }
        }
    }

    fn prove(&self) {
        self.handshake_done();
        if !self.proven.swap(true, Ordering::AcqRel) {
            let mut s = self.gate.state();
            if let Some(c) = s.per_address.get_mut(&self.addr) {
                c.unproven.remove(&self.id);
            }
        }
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let mut s = self.gate.state();
        s.open -= 1;
        if self.evict.is_cancelled() {
            s.evicting -= 1;
            self.gate.gone.notify_waiters();
        }
        if let Some(c) = s.per_address.get_mut(&self.addr) {
            if *self.handshaking.get_mut() {
                c.handshaking -= 1;
            }
            // Already gone if it was evicted.
            c.unproven.remove(&self.id);
            if c.handshaking == 0 && c.unproven.is_empty() {
                s.per_address.remove(&self.addr);
            }
        }
        drop(s);
        metrics()
            .connections_open
            .get_or_create(&ListenerLabels {
                listener: self.gate.listener,
            })
            .dec();
    }
}

/// One admitted connection's place in its listener's counts; released when dropped.
#[derive(Debug, Clone)]
pub struct Slot(Arc<SlotInner>);

impl Slot {
    /// The TLS handshake finished: the connection no longer counts as a handshake in progress.
    pub fn handshake_done(&self) {
        self.0.handshake_done();
    }

    /// The connection proved itself (a device certificate, an answered request): it no longer
    /// counts against its address, and is no longer closed to make room.
    pub fn prove(&self) {
        self.0.prove();
    }

    /// Fires when the gate closes this connection to make room.
    pub fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.0.evict.clone().cancelled_owned()
    }

    pub fn listener(&self) -> Listener {
        self.0.gate.listener
    }
}

/// Something connections are accepted from: tokio's [`TcpListener`], or a fake in tests.
pub trait Accept: Send + Sync {
    type Conn: Send;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Conn = TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// The pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS), shared by both listeners and
/// the admin socket: from 5 ms doubling to 1 s, back to 5 ms after a success. Such errors fail
/// again at once while the connection waits in the backlog, so retrying without a pause spins
/// a core; a fixed long pause would leave connections waiting after the shortage is over.
#[derive(Debug)]
pub struct AcceptBackoff {
    socket: &'static str,
    delay: Duration,
    warned: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// `socket` names the socket in the log.
    pub fn new(socket: &'static str) -> Self {
        Self {
            socket,
            delay: Duration::ZERO,
            warned: None,
        }
    }

    /// An `accept` succeeded: the next failure waits the shortest pause again.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// Logs `error` (a warning at most once a minute, since it repeats for as long as the
    /// shortage lasts) and waits out the next pause. False if `shutdown` came first.
    pub async fn failed(&mut self, error: &io::Error, shutdown: &CancellationToken) -> bool {
        if self
            .warned
            .is_none_or(|w| w.elapsed() >= Duration::from_secs(60))
        {
            self.warned = Some(Instant::now());
            tracing::warn!(socket = self.socket, error = %error, "Cannot accept connections; backing off");
        } else {
            tracing::debug!(socket = self.socket, error = %error, "Accept failed");
        }
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(self.delay) => true,
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, admitting each through `gate` and
/// handing it to `serve`. On `accept` errors it backs off ([`AcceptBackoff`]) instead of
/// spinning on a queue it cannot drain.
pub async fn accept_loop<L: Accept>(
    listener: L,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
    mut serve: impl FnMut(L::Conn, SocketAddr, Slot),
) {
    let mut backoff = AcceptBackoff::new(match gate.listener {
        Listener::Grpc => "grpc",
        Listener::Web => "web",
    });
    loop {
        // Evicted connections still hold descriptors until their tasks run: let them go first.
        while gate.state().evicting >= EVICTING_MAX {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = gate.gone.notified() => {}
                // The notification can come between the check and the wait.
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (conn, remote) = match accepted {
            Ok(x) => x,
            Err(e) if is_transient(&e) => {
                // The peer gave up before we accepted: nothing wrong on our side.
                tracing::debug!(error = %e, "Accept failed");
                continue;
            }
            Err(e) => {
                metrics().refused(gate.listener, Refusal::AcceptError);
                if !backoff.failed(&e, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.succeeded();
        match gate.admit(remote.ip()) {
            Ok(slot) => serve(conn, remote, slot),
            Err(why) => {
                metrics().refused(gate.listener, why);
                tracing::debug!(%remote, reason = ?why, "Connection refused");
                drop(conn);
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Runs a TLS handshake under the listener's handshake timeout, counting failures.
pub async fn handshake<T, E: std::fmt::Display>(
    slot: &Slot,
    remote: SocketAddr,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, ()> {
    let limit = slot.0.gate.limits.timeouts.handshake;
    let listener = slot.listener();
    tokio::select! {
        r = tokio::time::timeout(limit, fut) => match r {
            Ok(Ok(t)) => {
                slot.handshake_done();
                Ok(t)
            }
            Ok(Err(e)) => {
                metrics().refused(listener, Refusal::HandshakeFailed);
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                Err(())
            }
            Err(_) => {
                metrics().refused(listener, Refusal::HandshakeTimeout);
                tracing::debug!(%remote, "TLS handshake timed out");
                Err(())
            }
        },
        () = slot.evicted() => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, unproven: usize, handshakes: usize) -> Limits {
        Limits {
            max_connections: max,
            max_unproven_per_address: unproven,
            max_handshakes_per_address: handshakes,
            timeouts: Timeouts::default(),
        }
    }

    #[test]
    fn handshakes_per_address_are_capped_and_proved_connections_do_not_count() {
        let gate = Gate::new(Listener::Grpc, limits(100, 3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = gate.admit(a).unwrap();
        let _s2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Refusal::AddressFull);
        assert!(gate.admit(b).is_ok(), "another address is not affected");
        s1.handshake_done();
        let s3 = gate.admit(a).unwrap();
        s3.handshake_done();
        assert_eq!(
            gate.admit(a).unwrap_err(),
            Refusal::AddressFull,
            "three unproven from one address"
        );
        s1.prove();
        let s4 = gate.admit(a).unwrap();
        drop(s4);
        drop(s1);
        assert_eq!(gate.open(), 2);
    }

    #[tokio::test]
    async fn a_full_listener_closes_the_busiest_addresses_oldest_unproven_connection() {
        let gate = Gate::new(Listener::Web, limits(4, 10, 10));
        let proved = gate.admit("192.0.2.1".parse().unwrap()).unwrap();
        proved.prove();
        let laptop = gate.admit("192.0.2.2".parse().unwrap()).unwrap();
        let old = gate.admit("192.0.2.3".parse().unwrap()).unwrap();
        let newer = gate.admit("192.0.2.3".parse().unwrap()).unwrap();
        let newest = gate.admit("192.0.2.4".parse().unwrap()).unwrap();
        assert!(old.0.evict.is_cancelled());
        assert!(!laptop.0.evict.is_cancelled() && !proved.0.evict.is_cancelled());
        drop(old);
        for s in [&laptop, &newer, &newest] {
            s.prove();
        }
        assert_eq!(
            gate.admit("192.0.2.4".parse().unwrap()).unwrap_err(),
            Refusal::ListenerFull,
            "every connection has proved itself"
        );
    }

    #[test]
    fn a_full_listener_stops_admitting_while_too_many_are_on_their_way_out() {
        let gate = Gate::new(Listener::Web, limits(1, 100, 100));
        let flood: IpAddr = "192.0.2.9".parse().unwrap();
        let mut slots = vec![gate.admit(flood).unwrap()];
        for _ in 0..EVICTING_MAX {
            slots.push(gate.admit(flood).unwrap());
        }
        assert_eq!(
            gate.admit(flood).unwrap_err(),
            Refusal::ListenerFull,
            "{EVICTING_MAX} evicted connections still hold their descriptors"
        );
        // One evicted connection goes: room for one more.
        drop(slots.remove(0));
        assert!(gate.admit(flood).is_ok());
    }

    #[test]
    fn caps_leave_descriptors_for_everything_else() {
        let l = ListenLimits::for_fd_limit(1024, Timeouts::default());
        let total = l.grpc.max_connections + l.web.max_connections;
        assert!(total as u64 <= 1024 - FD_RESERVE, "{l:?}");
        assert!(l.grpc.max_connections > l.web.max_connections);
        let big = ListenLimits::for_fd_limit(1 << 20, Timeouts::default());
        assert!(big.grpc.max_connections > 500_000, "{big:?}");
    }

    /// A listener out of descriptors: `accept` fails with EMFILE until `until`, then yields one
    /// connection, then fails again. Records when each attempt was made.
    struct OutOfDescriptors {
        until: Instant,
        served: AtomicBool,
        attempts: Arc<Mutex<Vec<Instant>>>,
    }

    impl Accept for OutOfDescriptors {
        type Conn = ();
        async fn accept(&self) -> io::Result<((), SocketAddr)> {
            let n = {
                let mut a = self.attempts.lock().unwrap();
                a.push(Instant::now());
                a.len()
            };
            if n > 1000 {
                // A loop that spins would never let the paused clock move: stop it here so
                // the test fails on the count instead of hanging.
                std::future::pending::<()>().await;
            }
            if Instant::now() >= self.until && !self.served.swap(true, Ordering::SeqCst) {
                return Ok(((), "192.0.2.7:40000".parse().unwrap()));
            }
            Err(io::Error::from_raw_os_error(
                rustix::io::Errno::MFILE.raw_os_error(),
            ))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accept_failures_back_off_and_the_backoff_resets_after_a_success() {
        let start = Instant::now();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let listener = OutOfDescriptors {
            until: start + Duration::from_secs(10),
            served: AtomicBool::new(false),
            attempts: attempts.clone(),
        };
        let gate = Gate::new(Listener::Web, limits(10, 10, 10));
        let shutdown = CancellationToken::new();
        let (tx, mut served) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(accept_loop(
            listener,
            gate.clone(),
            shutdown.clone(),
            move |(), remote, slot| tx.send((Instant::now(), remote, slot)).unwrap(),
        ));

        // A timer, so the paused clock still moves if the loop spins and the fake stops it.
        let first = tokio::time::timeout(Duration::from_secs(30), served.recv()).await;
        let failed: Vec<Instant> = attempts
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| *t < start + Duration::from_secs(10))
            .collect();
        // 5 ms doubling to 1 s: eight short pauses in the first 1.3 s, then one a second.
        assert!(
            (10..=20).contains(&failed.len()),
            "{} accept attempts in 10 s of EMFILE",
            failed.len()
        );
        let longest = failed.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert_eq!(
            longest,
            Duration::from_secs(1),
            "the pause is capped at 1 s"
        );
        let (at, remote, _slot) = first
            .expect("served within 30 s")
            .expect("the connection is served");
        assert_eq!(remote.ip(), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(gate.open(), 1);
        assert!(
            at - start < Duration::from_secs(12),
            "served within a pause of the fix"
        );

        // After the success, a new failure starts again from the shortest pause.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The attempts after the one that succeeded.
        let after = attempts.lock().unwrap()[failed.len() + 1..].to_vec();
        assert!(after.len() >= 3, "{after:?}");
        assert_eq!(after[0], at, "the next accept follows at once");
        assert_eq!(after[1] - after[0], Duration::from_millis(5));
        assert_eq!(after[2] - after[1], Duration::from_millis(10));

        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let gate = Gate::new(Listener::Web, limits(10, 10, 10));
        let (client, server) = tokio::io::duplex(64);
        let slot = gate.admit("192.0.2.1".parse().unwrap()).unwrap();
        let mut guarded = Guarded::new(server, slot);
        let mut client = client;
        let idle = Timeouts::default().idle;
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            tokio::time::advance(idle / 2).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(guarded.read(&mut buf).await.unwrap(), 1);
        }
        let err = tokio::time::timeout(idle * 2, guarded.read(&mut buf))
            .await
            .expect("closed within the idle timeout")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(guarded);
        assert_eq!(gate.open(), 0);
    }
}
