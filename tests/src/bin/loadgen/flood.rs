//! `--idle-flood`: holds idle connections against both ports while timing the API.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Args;

/// Holds `n` idle connections while timing `GET /api/v1/devices` (a new connection each time).
pub(super) async fn idle_flood(args: &Args, n: usize) -> anyhow::Result<()> {
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
