//! Floods against a real collector: idle connections under a low open-file limit, and wrong
//! tokens and dashboard passwords, which must be rate-limited, logged within bounds (with the
//! address) and counted in `/api/v1/metrics`.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use caretaker_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::client::TlsStream;

/// Starts `serve` under `prlimit` (when `nofile` is given) with short timeouts, its log in `log`.
fn serve_logged(c: &mut Collector, nofile: Option<u32>, log: &Path) {
    let cmd = match nofile {
        Some(n) => {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(bin("caretaker-collector"));
            cmd
        }
        None => Command::new(bin("caretaker-collector")),
    };
    c.serve_through(
        cmd,
        &[
            "--idle-timeout",
            "2s",
            // Generous: the flood loads both cores, and a laptop's handshake must not time out.
            "--handshake-timeout",
            "10s",
            "--header-timeout",
            "2s",
        ],
        &[],
        File::create(log).unwrap(),
    );
}

/// The school's CA as the only root.
fn school_roots(ca_pem: &[u8]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in caretaker_agent::tls::certs_from_pem(std::str::from_utf8(ca_pem).unwrap()).unwrap() {
        roots.add(c).unwrap();
    }
    roots
}

fn tls_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let roots = school_roots(ca_pem);
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// The three kinds of connection an attacker can hold open without any credential.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// TLS on the web port, then nothing.
    IdleWeb,
    /// TLS on the web port and half a request's headers.
    UnfinishedRequest,
    /// TLS on the gRPC port with the enrolment ALPN (no certificate needed), then nothing.
    Enrolment,
}

struct Target {
    grpc: SocketAddr,
    web: SocketAddr,
    web_tls: Arc<rustls::ClientConfig>,
    enrol_tls: Arc<rustls::ClientConfig>,
}

/// Opens one connection of `kind` from `from`; `None` if the collector refused it.
async fn open(t: &Target, kind: Kind, from: IpAddr) -> Option<TlsStream<tokio::net::TcpStream>> {
    let (to, cfg) = match kind {
        Kind::Enrolment => (t.grpc, t.enrol_tls.clone()),
        _ => (t.web, t.web_tls.clone()),
    };
    let attempt = async {
        let sock = TcpSocket::new_v4().ok()?;
        sock.bind(SocketAddr::new(from, 0)).ok()?;
        let tcp = sock.connect(to).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .ok()?;
        if let Kind::UnfinishedRequest = kind {
            tls.write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nX-Never: ")
                .await
                .ok()?;
        }
        Some(tls)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
}

/// Opens `n` connections of each kind, spread over `from`, concurrently.
async fn flood(
    t: &Arc<Target>,
    n: usize,
    from: &[IpAddr],
) -> Vec<TlsStream<tokio::net::TcpStream>> {
    let mut tasks = Vec::new();
    for kind in [Kind::IdleWeb, Kind::UnfinishedRequest, Kind::Enrolment] {
        for i in 0..n {
            let (t, addr) = (t.clone(), from[i % from.len()]);
            tasks.push(tokio::spawn(async move { open(&t, kind, addr).await }));
        }
    }
    let mut open = Vec::new();
    for task in tasks {
        if let Some(c) = task.await.unwrap() {
            open.push(c);
        }
    }
    open
}

/// True once the collector has closed `c` (end of stream or an error), waiting at most 30 s.
async fn closed_by_collector(mut c: TlsStream<tokio::net::TcpStream>) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // HTTP/2 settings or a 408: keep reading until the end.
            Ok(Ok(_)) => continue,
        }
    }
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// GET `/api/v1/metrics` from `from` with `token`: (status, body).
fn scrape(c: &Collector, token: &str, from: IpAddr) -> (u16, String) {
    let client = client_from(c, from);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = client
            .get(format!("https://localhost:{}/api/v1/metrics", c.web.port()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// A client that trusts the collector's CA and speaks from `from`.
fn client_from(c: &Collector, from: IpAddr) -> reqwest::Client {
    let ca = std::fs::read(c.dir.join("ca.pem")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .use_rustls_tls()
        .local_address(from)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Posts the dashboard's sign-in form from `from` as a browser does (the form's double-submit
/// cookie and `_csrf` field first), once per password; the status of each answer.
fn sign_in(c: &Collector, from: IpAddr, username: &str, passwords: &[&str]) -> Vec<u16> {
    const SIGNIN_COOKIE: &str = "__Host-caretaker-signin";
    let ca = std::fs::read(c.dir.join("ca.pem")).unwrap();
    // A signed-in browser is redirected (303) with its session cookie: see that, not the page.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .use_rustls_tls()
        .local_address(from)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", c.web.port());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        for password in passwords {
            let page = client.get(format!("{base}/signin")).send().await.unwrap();
            assert_eq!(page.status().as_u16(), 200);
            let cookie = page
                .headers()
                .get_all(reqwest::header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()?.split(';').next()?.split_once('='))
                .find(|(k, _)| *k == SIGNIN_COOKIE)
                .map(|(_, v)| v.to_string())
                .expect("GET /signin sets the sign-in cookie");
            let html = page.text().await.unwrap();
            let tag = html
                .split('<')
                .find(|t| t.contains("name=\"_csrf\""))
                .expect("a _csrf field in the sign-in form");
            let field = tag
                .split("value=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
                .expect("the _csrf field has a value");
            let r = client
                .post(format!("{base}/signin"))
                .header(reqwest::header::COOKIE, format!("{SIGNIN_COOKIE}={cookie}"))
                .form(&[
                    ("_csrf", field),
                    ("username", username),
                    ("password", password),
                    ("next", "/"),
                ])
                .send()
                .await
                .unwrap();
            out.push(r.status().as_u16());
        }
        out
    })
}

#[test]
fn a_flood_of_idle_connections_leaves_agents_and_the_api_served_and_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("laptop");
    let device = collector.enroll(&state);
    let technician = collector.api_token("technician");
    collector.stop();
    // 600 descriptors: the listeners get about 330 between them, and the flood tries 900.
    serve_logged(&mut collector, Some(600), &tmp.path().join("collector.log"));
    let api = collector.api().with_token(&technician);

    let ca = std::fs::read(collector.dir.join("ca.pem")).unwrap();
    let target = Arc::new(Target {
        grpc: collector.grpc,
        web: collector.web,
        web_tls: tls_config(&ca, &[b"h2", b"http/1.1"]),
        enrol_tls: tls_config(&ca, &[caretaker_proto::ENROLL_ALPN, b"h2"]),
    });
    let attackers: Vec<IpAddr> = (2..10)
        .map(|i| format!("127.0.0.{i}").parse().unwrap())
        .collect();

    // Keep the flood up, round after round, while the laptop and the API are tried.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let held_most = Arc::new(AtomicUsize::new(0));
    let flooder = {
        let (t, stop, rounds, held_most) = (
            target.clone(),
            stop.clone(),
            rounds.clone(),
            held_most.clone(),
        );
        let attackers = attackers.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let mut previous = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let now = flood(&t, 300, &attackers).await;
                    held_most.fetch_max(now.len() + previous.len(), Ordering::Relaxed);
                    previous = now;
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            });
        })
    };
    wait_for(Duration::from_secs(60), "a first flood round", || {
        (rounds.load(Ordering::Relaxed) >= 1).then_some(())
    });
    for seq in 1..=3 {
        send_as_device(
            &collector,
            &state,
            "laptop-under-flood",
            vec![pb_event(seq, "agent.heartbeat", Default::default())],
        );
        let (status, devices) = api.get("/api/v1/devices");
        assert_eq!(status, 200, "{devices}");
    }
    let during = rounds.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    assert_eq!(api.device(&device).unwrap()["event_count"], 3);
    assert!(
        collector
            .proc
            .as_mut()
            .unwrap()
            .child
            .try_wait()
            .unwrap()
            .is_none()
    );

    // Connections that do nothing are closed after the idle (or header) timeout.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let quiet: IpAddr = "127.0.0.30".parse().unwrap();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for kind in [Kind::IdleWeb, Kind::UnfinishedRequest, Kind::Enrolment] {
            for _ in 0..5 {
                held.push(
                    open(&target, kind, quiet)
                        .await
                        .expect("a connection within the caps"),
                );
            }
        }
        held
    });
    let closed = rt.block_on(async {
        let all = held
            .into_iter()
            .map(|c| tokio::spawn(closed_by_collector(c)));
        let mut closed = 0;
        for c in all.collect::<Vec<_>>() {
            closed += c.await.unwrap() as usize;
        }
        closed
    });
    assert_eq!(closed, 15, "every idle connection is closed");

    let (status, text) = scrape(&collector, &technician, "127.0.0.1".parse().unwrap());
    assert_eq!(status, 200, "{text}");
    let refused = |listener: &str, reason: &str| {
        metric(
            &text,
            &format!(
                "caretaker_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert!(refused("Grpc", "Idle") >= 5, "{text}");
    assert!(refused("Web", "Idle") >= 5, "{text}");
    let capped: u64 = ["Grpc", "Web"]
        .iter()
        .flat_map(|l| ["AddressFull", "ListenerFull"].map(|r| refused(l, r)))
        .sum();
    assert!(
        capped > 0,
        "the caps refused some of {} rounds of 900 (at most {} held at once): {text}",
        during,
        held_most.load(Ordering::Relaxed)
    );
    let log = std::fs::read_to_string(tmp.path().join("collector.log")).unwrap();
    assert!(
        !log.contains("Cannot accept connections"),
        "the caps kept the collector inside its descriptors: {log}"
    );
}

#[test]
fn wrong_tokens_are_locked_out_logged_within_bounds_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let technician = collector.api_token("technician");
    let governor = collector.api_token("governor");
    collector.stop();
    let password = collector.add_user("network_manager", "head");
    let log_path = tmp.path().join("collector.log");
    serve_logged(&mut collector, None, &log_path);
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
    let staffroom: IpAddr = "127.0.0.3".parse().unwrap();

    // 200 wrong bearer tokens: five are judged, then the address waits.
    let client = client_from(&collector, here);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("https://localhost:{}/api/v1/devices", collector.web.port());
    let statuses: Vec<(u16, Option<u64>)> = rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..200 {
            let r = client
                .get(&url)
                .bearer_auth(format!("cta_wrong{i}"))
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            out.push((r.status().as_u16(), retry));
        }
        out
    });
    assert!(statuses[..5].iter().all(|s| s.0 == 401), "{statuses:?}");
    assert!(
        statuses[5..]
            .iter()
            .all(|s| s.0 == 429 && s.1.is_some_and(|w| (1..=60).contains(&w))),
        "{statuses:?}"
    );
    // Even the right token waits from that address; another address is not affected.
    let right = rt
        .block_on(async { client.get(&url).bearer_auth(&technician).send().await })
        .unwrap();
    assert_eq!(right.status().as_u16(), 429);

    // 30 wrong enrolment tokens.
    let (_, fp) = collector.token(&[]);
    for i in 0..30 {
        let (ok, _, _) = run(Command::new(bin("caretaker-agent"))
            .args([
                "enroll",
                "--collector",
                &collector.grpc_addr(),
                "--token",
                &format!("cte_guess{i}"),
                "--ca-fingerprint",
                &fp,
                "--state-dir",
            ])
            .arg(tmp.path().join("guesser")));
        assert!(!ok);
    }

    // A certificate the school's CA never issued, refused at the handshake.
    let foreign = rcgen::generate_simple_self_signed(vec!["laptop".into()]).unwrap();
    let ca = std::fs::read(collector.dir.join("ca.pem")).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(school_roots(&ca))
    .with_client_auth_cert(
        vec![foreign.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(foreign.signing_key.serialize_der().into()),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    assert!(rt.block_on(tls_refusal(collector.grpc, cfg)).is_some());

    // Three wrong passwords on the dashboard's sign-in form (below the five that slow it), then
    // the right one, which proves the form was filled in properly.
    assert_eq!(
        sign_in(
            &collector,
            staffroom,
            "head",
            &["guess1", "guess2", "guess3"]
        ),
        [401, 401, 401]
    );
    assert_eq!(sign_in(&collector, staffroom, "head", &[&password]), [303]);

    // The governor may not read the metrics; the technician may, from another address.
    assert_eq!(scrape(&collector, &governor, elsewhere).0, 403);
    let (status, text) = scrape(&collector, &technician, elsewhere);
    assert_eq!(status, 200, "{text}");
    let failures = |kind: &str| {
        metric(
            &text,
            &format!("caretaker_auth_failures_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(failures("ApiToken"), 5, "{text}");
    assert_eq!(failures("ApiLockedOut"), 196, "{text}");
    assert_eq!(failures("EnrolmentToken"), 5, "{text}");
    assert_eq!(failures("EnrolmentLockedOut"), 25, "{text}");
    assert_eq!(failures("DeviceCertificate"), 1, "{text}");
    assert_eq!(failures("SignIn"), 3, "{text}");
    let suppressed = metric(&text, "caretaker_security_log_suppressed_total");

    // 235 failures, but at most 20 lines per kind per 10 s window reach the log.
    collector.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains('\x1b'), "colour codes in a log file");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("caretaker::security"))
        .collect();
    assert!(
        lines.len() as u64 + suppressed == 235 && lines.len() <= 120,
        "{} lines, {suppressed} suppressed:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("kind=ApiToken") && l.contains("addr=127.0.0.1")),
        "{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("kind=DeviceCertificate")),
        "{}",
        lines.join("\n")
    );
    let sign_ins = lines
        .iter()
        .filter(|l| l.contains("kind=SignIn") && l.contains("addr=127.0.0.3"))
        .count();
    assert_eq!(sign_ins, 3, "{}", lines.join("\n"));
}

#[test]
fn a_50_mb_body_over_http2_is_answered_413_not_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let admin = std::fs::read_to_string(collector.dir.join("admin.token")).unwrap();
    let body = tmp.path().join("policy.json");
    std::fs::write(&body, vec![b' '; 50 * 1024 * 1024]).unwrap();
    // curl, as the one who found it used: a client still sending when the refusal comes.
    for version in ["--http2", "--http1.1"] {
        let (ok, out, err) = run(Command::new("curl")
            .args([
                "-sS",
                version,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .arg("--cacert")
            .arg(collector.dir.join("ca.pem"))
            .args(["-X", "PUT", "-H", "content-type: application/json", "-H"])
            .arg(format!("Authorization: Bearer {}", admin.trim()))
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!(
                "https://localhost:{}/api/v1/policy",
                collector.web.port()
            )));
        assert!(ok, "{version}: {out} {err}");
        let expected = if version == "--http2" {
            "413 2"
        } else {
            "413 1.1"
        };
        assert_eq!(out, expected, "{err}");
    }
}

#[test]
fn a_reconnect_storm_of_300_agents_all_stream_again_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let (token, fp) = collector.token(&["--uses", "300"]);
    let admin = std::fs::read_to_string(collector.dir.join("admin.token")).unwrap();
    let work = tmp.path().join("agents");
    let (grpc, web) = (collector.grpc_addr(), collector.web.port());
    let storm = || {
        run(Command::new(env!("CARGO_BIN_EXE_caretaker-loadgen"))
            .args(["--collector", &grpc, "--token", &token])
            .args(["--ca-fingerprint", &fp, "--agents", "300", "--storm"])
            .arg("--api")
            .arg(format!("https://localhost:{web}"))
            .args(["--api-token", admin.trim(), "--work-dir"])
            .arg(&work))
    };
    let (ok, out, err) = storm();
    assert!(ok, "{out}{err}");
    collector.stop();
    collector.serve();
    // The same 300 laptops, all at once, from one address (a school's NAT): some are refused
    // by the per-address handshake cap and come back after their backoff.
    let (ok, out, err) = storm();
    assert!(ok, "{out}{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("agents=300 streaming=300 "),
        "{last}\n{err}"
    );
    assert!(!collector.has_exited());
}

#[test]
fn a_quiet_agent_stays_connected_past_the_idle_timeout_because_it_answers_pings() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("laptop");
    let device = collector.enroll(&state);
    let technician = collector.api_token("technician");
    collector.stop();
    // Idle timeout 2 s (pings every 0.67 s); the agent has nothing to say for an hour.
    serve_logged(&mut collector, None, &tmp.path().join("collector.log"));
    let _agent = start_agent(&state, "heartbeat_interval = \"1h\"\n");
    let api = collector.api();
    wait_for(Duration::from_secs(20), "agent.started", || {
        api.all_events(&device)
            .iter()
            .any(|e| e["kind"] == "agent.started")
            .then_some(())
    });
    // Five idle timeouts of silence from the agent's side.
    std::thread::sleep(Duration::from_secs(10));
    let (status, text) = scrape(&collector, &technician, "127.0.0.1".parse().unwrap());
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        metric(
            &text,
            "caretaker_connections_accepted_total{listener=\"Grpc\"}"
        ),
        1,
        "one connection, never dropped and redialled: {text}"
    );
    assert_eq!(metric(&text, "caretaker_devices_connected"), 1, "{text}");
}
