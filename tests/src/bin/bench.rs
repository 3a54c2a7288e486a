//! `caretaker-bench`: measures Caretaker's latency figures with real processes (for BENCHMARKS.md).
//!
//! `caretaker-bench software-latency --runs 10`: time from starting `dpkg -i`
//! of a real package to the `software.installed` event being stored.
//! `caretaker-bench agent-idle --seconds 600`: the agent's resident memory and
//! CPU while idle with every probe on. `caretaker-bench usb-latency --runs 10`:
//! QMP plug of a real USB stick into the VM to the stored `usb.inserted`.
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
}

fn main() {
    match Args::parse().what {
        What::SoftwareLatency { runs } => software_latency(runs),
        What::AgentIdle { seconds } => agent_idle(seconds),
        What::UsbLatency { runs } => usb_latency(runs),
    }
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
