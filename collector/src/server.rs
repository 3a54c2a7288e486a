//! `serve`: opens the data directory, binds the listeners and runs gRPC, web and admin until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use caretaker_proto::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::ca::CaError;
use crate::ca::SchoolCa;
use crate::datadir::DataDir;
use crate::datadir::DataDirError;
use crate::grpc::GrpcApi;
use crate::listen::{Gate, ListenLimits, Timeouts};
use crate::metrics::Listener;
use crate::service::Collector;
use crate::store::StoreError;
use crate::tls::{GrpcTls, certs_from_pem, key_from_pem, web_config};
use crate::uninstall::UninstallKeyError;

/// Why `serve` could not start, or stopped with an error. Each message is what the operator
/// reads after `caretaker-collector:`, with its causes after it.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The collector's own certificate chain or key (written by `init`) is not usable PEM.
    #[error(transparent)]
    OwnPem(std::io::Error),
    #[error(
        "cannot open the store in {} (is another collector using this data directory?)",
        dir.display()
    )]
    OpenEmbedded {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error("{} is not a PEM certificate chain", path.display())]
    WebCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no certificate", path.display())]
    WebCertEmpty { path: PathBuf },
    #[error("{} holds no usable private key", path.display())]
    WebKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the web certificate and key do not match")]
    WebMismatch(#[source] rustls::Error),
    #[error("--web-cert and --web-key go together: give both or neither")]
    WebCertWithoutKey,
    #[error(transparent)]
    UninstallKey(#[from] UninstallKeyError),
    /// `what` says who would connect: agents, or the web API.
    #[error("cannot listen for {what} on {addr}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A bound listener that cannot say its own address.
    #[error(transparent)]
    LocalAddr(std::io::Error),
    #[error("cannot create {}", path.display())]
    AdminSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
}

/// How often the store's state and free space are looked at.
const STORE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Where to listen, and how the web side presents itself.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub grpc_listen: SocketAddr,
    pub web_listen: SocketAddr,
    /// The school's own certificate chain and key for the web listener (PEM); the collector's
    /// own (issued by its CA) when not given.
    pub web_cert: Option<PathBuf>,
    pub web_key: Option<PathBuf>,
    /// The school's time zone for the dashboard.
    pub time_zone: chrono_tz::Tz,
    /// Free space the store's filesystem must keep; below it new events are refused (agents
    /// keep them and retry).
    pub min_free_space: crate::store::space::SpaceFloor,
    /// Handshake, header-read and idle timeouts of both listeners.
    pub timeouts: Timeouts,
    /// Connection caps; derived from the open-file limit when not given.
    pub limits: Option<ListenLimits>,
    /// How often expired records are purged, and how many a batch.
    pub purge: crate::retention::PurgeOptions,
}

impl ServeOptions {
    /// Listen on these addresses with the collector's own certificate, in the default zone.
    pub fn new(grpc_listen: SocketAddr, web_listen: SocketAddr) -> Self {
        Self {
            grpc_listen,
            web_listen,
            web_cert: None,
            web_key: None,
            time_zone: crate::timefmt::DEFAULT_TZ,
            min_free_space: crate::store::space::DEFAULT_FLOOR,
            timeouts: Timeouts::default(),
            limits: None,
            purge: Default::default(),
        }
    }
}

/// How long a stop waits for streams to end, and then for tasks to finish, before giving up.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The addresses actually bound (useful when asked for port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub web: SocketAddr,
}

/// Runs the collector until `shutdown` fires. `on_bound` is called once both listeners are up.
pub async fn serve(
    dir: &DataDir,
    opts: ServeOptions,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    dir.check()?;
    let ca = SchoolCa::load(&dir.ca_cert(), &dir.ca_key())?;
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| ServeError::Read { path, source })
    };
    let chain = certs_from_pem(&read(dir.server_chain())?).map_err(ServeError::OwnPem)?;
    let key = key_from_pem(&read(dir.server_key())?).map_err(ServeError::OwnPem)?;
    let admin_token = read(dir.admin_token())?;
    let location = dir.store_location()?;
    let store = dir.open_store_at(&location, |source| ServeError::OpenEmbedded {
        dir: dir.root().to_path_buf(),
        source,
    })?;
    info!(store = %location.describe(), shared = location.is_shared(), "Store open");
    let revoked = Arc::new(RwLock::new(Default::default()));
    let grpc_tls = GrpcTls::new(
        chain.clone(),
        key.clone_key(),
        ca.cert_der().to_vec().into(),
        revoked.clone(),
    )?;
    let web_tls = match (&opts.web_cert, &opts.web_key) {
        (Some(cert), Some(key)) => {
            let chain =
                certs_from_pem(&read(cert.clone())?).map_err(|source| ServeError::WebCert {
                    path: cert.clone(),
                    source,
                })?;
            if chain.is_empty() {
                return Err(ServeError::WebCertEmpty { path: cert.clone() });
            }
            let key = key_from_pem(&read(key.clone())?).map_err(|source| ServeError::WebKey {
                path: key.clone(),
                source,
            })?;
            web_config(chain, key).map_err(ServeError::WebMismatch)?
        }
        (None, None) => web_config(chain, key)?,
        _ => return Err(ServeError::WebCertWithoutKey),
    };
    let collector = Arc::new(Collector::new(store, ca, revoked, &admin_token)?);
    let tasks = collector.tasks().clone();
    if location.is_shared() {
        collector.set_shared();
    }
    collector.set_uninstall_key(crate::uninstall::UninstallKey::load_or_create(
        &dir.uninstall_key(),
    )?);

    let nofile = crate::listen::raise_fd_limit();
    let limits = opts
        .limits
        .unwrap_or_else(|| ListenLimits::for_fd_limit(nofile, opts.timeouts));
    info!(
        open_files = nofile,
        grpc_connections = limits.grpc.max_connections,
        web_connections = limits.web.max_connections,
        "Connection caps set"
    );
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { what, addr, source })
    };
    let grpc_listener = bind("agents", opts.grpc_listen).await?;
    let web_listener = bind("the web API", opts.web_listen).await?;
    let bound = Bound {
        grpc: grpc_listener.local_addr().map_err(ServeError::LocalAddr)?,
        web: web_listener.local_addr().map_err(ServeError::LocalAddr)?,
    };
    // The admin socket lets commands reach the embedded store, which one process holds; a
    // shared store is written by those commands directly, so it needs none.
    if !location.is_shared() {
        crate::admin::serve(&dir.admin_socket(), collector.clone(), shutdown.clone())
            .await
            .map_err(|source| ServeError::AdminSocket {
                path: dir.admin_socket(),
                source,
            })?;
    }

    // Expired sign-in sessions are refused when used; this removes the ones never used again.
    {
        let (store, shutdown) = (collector.store.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(15 * 60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                let store = store.clone();
                match crate::service::blocking(move || store.purge_sessions(chrono::Utc::now()))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(sessions = n, "Expired sessions removed"),
                    Err(e) => tracing::warn!(error = %e, "Expired sessions not removed"),
                }
            }
        });
    }
    // Once a second: reopen the store if a failed write closed it, and refuse new events while
    // it is closed or its disk is below the floor (one statvfs, so cheap). A shared store's
    // disk is the database server's, watched there.
    if !location.is_shared() {
        let (c, shutdown, path) = (collector.clone(), shutdown.clone(), dir.store());
        let floor = opts.min_free_space;
        tasks.spawn(async move {
            let mut every = tokio::time::interval(STORE_CHECK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                let (c, path) = (c.clone(), path.clone());
                let _ = tokio::task::spawn_blocking(move || c.check_store(&path, floor)).await;
            }
        });
    }
    // Other collectors write a shared store too: re-read what this one holds in memory.
    if location.is_shared() {
        let (c, shutdown) = (collector.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(crate::service::SHARED_REFRESH);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                let c = c.clone();
                if let Err(e) =
                    crate::service::blocking(move || c.refresh_from_shared_store()).await
                {
                    tracing::warn!(error = %e, "What other collectors stored not re-read");
                }
            }
        });
    }
    // Keep the overview's open incidents fresh off the request path.
    {
        let (c, shutdown) = (collector.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(crate::service::OPEN_INCIDENTS_REFRESH);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                if c.store.closed_because().is_some() {
                    continue; // logged by the store; the last list stands until it reopens
                }
                let c = c.clone();
                if let Err(e) = crate::service::blocking(move || c.refresh_open_incidents()).await {
                    tracing::warn!(error = %e, "Open incidents not re-read for the overview");
                }
            }
        });
    }
    tasks.spawn(crate::digest::run(
        collector.clone(),
        opts.time_zone,
        shutdown.clone(),
    ));
    tasks.spawn(crate::retention::run(
        collector.clone(),
        opts.purge,
        shutdown.clone(),
    ));
    let api = GrpcApi::new(collector.clone(), shutdown.clone());
    let max = caretaker_proto::MAX_MESSAGE_BYTES;
    let keepalive = &limits.grpc.timeouts;
    let grpc = tonic::transport::Server::builder()
        // Pings keep a live agent's quiet stream inside the idle timeout, and find dead ones.
        .http2_keepalive_interval(Some(keepalive.keepalive_interval()))
        .http2_keepalive_timeout(Some(keepalive.keepalive_timeout()))
        .add_service(
            pb::enrollment_server::EnrollmentServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(pb::telemetry_server::TelemetryServer::new(api).max_decoding_message_size(max))
        .serve_with_incoming_shutdown(
            crate::tls::grpc_incoming(
                grpc_listener,
                grpc_tls,
                Gate::new(Listener::Grpc, limits.grpc),
                shutdown.clone(),
                &tasks,
            ),
            shutdown.clone().cancelled_owned(),
        );
    let web = crate::web::serve(
        web_listener,
        web_tls,
        crate::web::router(
            collector,
            crate::web::WebOptions {
                grpc_port: bound.grpc.port(),
                time_zone: opts.time_zone,
            },
        ),
        Gate::new(Listener::Web, limits.web),
        shutdown.clone(),
        tasks.clone(),
    );
    info!(grpc = %bound.grpc, web = %bound.web, "Collector serving");
    on_bound(bound);
    // Streams end on shutdown, after storing and acking what they had received; the deadline
    // covers a client that ignores that.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(STOP_DEADLINE).await;
    };
    let grpc = async {
        tokio::select! {
            r = grpc => r.map_err(ServeError::Grpc),
            () = deadline => Ok(()),
        }
    };
    let (grpc_result, ()) = tokio::join!(grpc, web);
    // The listeners are closed. Wait for every task (streams finishing their batches, the
    // ingest writer storing what they queued, periodic work) before returning, so nothing
    // acknowledged is cut off mid-write; the deadline is a backstop for a task that hangs.
    tasks.close();
    let started = std::time::Instant::now();
    if tokio::time::timeout(STOP_DEADLINE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            waited_ms = started.elapsed().as_millis() as u64,
            "Tasks still running at the stop deadline; stopping anyway"
        );
    } else {
        info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "Every task finished"
        );
    }
    grpc_result?;
    info!("Collector stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An initialised data directory, and options for it on free ports of localhost.
    fn data_dir() -> (tempfile::TempDir, DataDir, ServeOptions) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("collector"));
        crate::datadir::init(
            &dir,
            &["localhost".into()],
            "Test School",
            &Default::default(),
        )
        .unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        (tmp, dir, ServeOptions::new(any, any))
    }

    /// Fails before anything is served, with the message the operator reads.
    async fn refused(dir: &DataDir, opts: ServeOptions) -> ServeError {
        let mut bound = false;
        let e = serve(dir, opts, CancellationToken::new(), |_| bound = true)
            .await
            .expect_err("serve refused to start");
        assert!(!bound, "nothing was served");
        e
    }

    #[tokio::test]
    async fn a_web_certificate_without_its_key_is_refused_by_name() {
        let (_tmp, dir, opts) = data_dir();
        let opts = ServeOptions {
            web_cert: Some(dir.server_chain()),
            ..opts
        };
        let e = refused(&dir, opts).await;
        assert!(matches!(e, ServeError::WebCertWithoutKey), "{e:?}");
        assert_eq!(
            e.to_string(),
            "--web-cert and --web-key go together: give both or neither"
        );
    }

    #[tokio::test]
    async fn a_port_in_use_names_who_would_have_listened_there_with_the_cause() {
        let (_tmp, dir, opts) = data_dir();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = refused(
            &dir,
            ServeOptions {
                grpc_listen: addr,
                ..opts
            },
        )
        .await;
        assert_eq!(e.to_string(), format!("cannot listen for agents on {addr}"));
        let cause = std::error::Error::source(&e).expect("the bind error is its source");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
    }
}
