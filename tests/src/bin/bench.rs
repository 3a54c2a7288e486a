//! `caretaker-bench`: measures Caretaker's latency figures with real processes (for BENCHMARKS.md).
//!
//! `caretaker-bench software-latency --runs 10`: time from starting `dpkg -i`
//! of a real package to the `software.installed` event being stored.
//! `caretaker-bench agent-idle --seconds 600`: the agent's resident memory and
//! CPU while idle with every probe on. `caretaker-bench usb-latency --runs 10`:
//! QMP plug of a real USB stick into the VM to the stored `usb.inserted`.
//! `caretaker-bench digest-build --events 10000`: time for a running collector to build and
//! record one DSL digest over that many flagged events (`digest send-now`).
//! `caretaker-bench spool-append --events 1000`: the agent spool's durable append of one event
//! and the removal an acknowledgement makes, each with its ledger write (in `--dir`, default a
//! temporary folder).
//! Uses the binaries next to itself.

use std::time::{Duration, Instant};

use caretaker_tests::deb::{self, Purge};
use caretaker_tests::*;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// dpkg -i to stored event, median over runs.
    SoftwareLatency {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Plug of a USB stick in the VM to the stored usb.inserted, median over runs.
    UsbLatency {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Resident memory and CPU of an idle agent.
    AgentIdle {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// The spool's append of one event and the ack that removes it, N times.
    SpoolAppend {
        #[arg(long, default_value_t = 1000)]
        events: u64,
        /// The folder to put the spool in (its file system is what is measured).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Build and record one digest over N flagged events (200 pupils on 20 devices).
    DigestBuild {
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() {
    match Args::parse().what {
        What::SoftwareLatency { runs } => software_latency(runs),
        What::AgentIdle { seconds } => agent_idle(seconds),
        What::UsbLatency { runs } => usb_latency(runs),
        What::DigestBuild { events, runs } => digest_build(events, runs),
        What::SpoolAppend { events, dir } => spool_append(events, dir),
    }
}

fn spool_append(events: u64, dir: Option<std::path::PathBuf>) {
    use caretaker_agent::event::NewEvent;
    use caretaker_agent::spool::Spool;
    let tmp = match dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let (mut spool, _) = Spool::open(
        &tmp.path().join("spool"),
        &tmp.path().join("seq.floor"),
        100 << 20,
    )
    .unwrap();
    let (mut appends, mut acks) = (Vec::new(), Vec::new());
    for i in 0..events {
        let e = NewEvent::now(
            "agent.heartbeat",
            None,
            caretaker_agent::details! { "uptime_secs" => i },
        );
        let t = Instant::now();
        let seq = spool.append(vec![e]).unwrap()[0];
        appends.push(t.elapsed());
        let t = Instant::now();
        spool.ack(seq).unwrap();
        acks.push(t.elapsed());
    }
    let us = |mut v: Vec<Duration>| {
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        format!("p50_us={:.0} p99_us={:.0}", at(0.5), at(0.99))
    };
    println!(
        "spool_append: events={events} append {} ack {}",
        us(appends),
        us(acks)
    );
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: runs={} median_ms={:.0} min_ms={:.0} max_ms={:.0}",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(*samples.last().unwrap())
    );
}

fn software_latency(runs: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..runs)
        .map(|i| format!("caretaker-bench-pkg{i}"))
        .collect();
    let _purge = Purge(names.clone());
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let home = tmp.path().join("home");
    let (device, agent) = start_software_agent(&collector, &state, &home);
    let api = collector.api();
    let mut samples = Vec::new();
    for name in &names {
        let pkg = deb::build(tmp.path(), name, "1.0");
        let start = Instant::now();
        assert!(deb::dpkg(&["-i", pkg.to_str().unwrap()]).status.success());
        wait_for(Duration::from_secs(20), "software.installed", || {
            let (_, page) = api.get(&format!(
                "/api/v1/events?device={device}&kind=software.installed&limit=5"
            ));
            page["events"]
                .as_array()?
                .iter()
                .any(|e| e["details"]["name"] == name.as_str())
                .then_some(())
        });
        samples.push(start.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    agent.stop();
    summary("software_install_to_collector", samples);
}

fn usb_latency(runs: usize) {
    let mut w = caretaker_tests::usb_vm::UsbWorld::start();
    let mut samples = Vec::new();
    for i in 0..runs {
        let serial = format!("SN-BENCH-{i:04}");
        let start = w.plug(&serial, &[("a.txt", b"x".as_slice())]);
        w.expect_event("usb.inserted", |e| {
            e["details"]["serial"] == serial.as_str()
        });
        samples.push(start.elapsed());
        w.vm.unplug();
        w.expect_event("usb.removed", |e| e["details"]["serial"] == serial.as_str());
    }
    summary("usb_plug_to_stored", samples);
}

/// (resident KiB, CPU ticks) of a process from /proc.
fn sample(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) start at state; utime/stime are 14/15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (
        rss,
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap(),
    )
}

fn agent_idle(seconds: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state);
    // Default configuration: every probe on, 5-minute heartbeat, real /home and /var/lib/dpkg.
    let agent = start_agent(&state, "");
    std::thread::sleep(Duration::from_secs(20)); // start-up inventory and first checks
    let pid = agent.child.id();
    let (rss0, t0) = sample(pid);
    let mut peak = rss0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(5));
        peak = peak.max(sample(pid).0);
    }
    let (rss1, t1) = sample(pid);
    let hz = 100.0; // USER_HZ on Linux
    let cpu_pct = (t1 - t0) as f64 / hz / start.elapsed().as_secs_f64() * 100.0;
    agent.stop();
    println!(
        "agent_idle: seconds={} rss_start_kib={rss0} rss_end_kib={rss1} rss_peak_kib={peak} cpu_ticks={} cpu_percent_of_core={cpu_pct:.3}",
        start.elapsed().as_secs(),
        t1 - t0
    );
}

fn digest_build(events: u64, runs: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    collector.add_user("dsl", "dsl1");
    // A webhook nobody answers: the digest is built and recorded; sending is not measured.
    let settings = tmp.path().join("settings.json");
    std::fs::write(
        &settings,
        serde_json::json!({"webhooks": [{"kind": "generic", "url": "http://127.0.0.1:9/none", "owner": "dsl1"}],
                           "digests": [{"username": "dsl1", "at": "03:00"}]})
        .to_string(),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let (ok, out, err) = run(std::process::Command::new(bin("caretaker-collector"))
            .args(args)
            .arg("--data-dir")
            .arg(&collector.dir));
        assert!(ok, "{args:?}: {out}{err}");
        out
    };
    cli(&["settings", "set", "--file", settings.to_str().unwrap()]);
    let devices: Vec<_> = (0..20)
        .map(|i| {
            let state = tmp.path().join(format!("d{i}"));
            collector.enroll(&state);
            state
        })
        .collect();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let per_device = events / 20;
        for (i, state) in devices.iter().enumerate() {
            let base = samples.len() as u64 * per_device;
            let batch: Vec<_> = (1..=per_device)
                .map(|s| {
                    pupil_stick(
                        base + s,
                        &format!("pupil{}", (i as u64 * 10 + s % 10)),
                        "SN",
                    )
                })
                .collect();
            for chunk in batch.chunks(500) {
                send_as_device(&collector, state, &format!("LAPTOP-{i:02}"), chunk.to_vec());
            }
        }
        let t = Instant::now();
        let out = cli(&["digest", "send-now", "--user", "dsl1"]);
        samples.push(t.elapsed());
        assert!(out.contains("Recorded 1 digest"), "{out}");
    }
    summary(
        &format!("digest over {events} flagged events (send-now, incl. CLI start)"),
        samples,
    );
}
