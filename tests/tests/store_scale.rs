//! The record under load and failure: kill -9 or SIGTERM of the collector during group commits loses nothing acknowledged, checked by listing every event.

use std::process::{Command, Stdio};
use std::time::Duration;

use caretaker_tests::*;

/// Reads the loadgen's last line into its `key=value` fields.
fn fields(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .last()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts the loadgen: `agents` agents of `events` events each, 4 batches of 200 in flight,
/// spread over `collectors` (HOST:PORT,...), verified through the API on `api_port`.
fn loadgen(
    collectors: &str,
    token: &str,
    fp: &str,
    agents: u32,
    events: u32,
    api_port: u16,
    api_token: &str,
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_caretaker-loadgen"))
        .args([
            "--collector",
            collectors,
            "--token",
            token,
            "--ca-fingerprint",
            fp,
        ])
        .args([
            "--agents",
            &agents.to_string(),
            "--events",
            &events.to_string(),
        ])
        .args(["--batch", "200", "--window", "4"])
        .args([
            "--api",
            &format!("https://localhost:{api_port}"),
            "--api-token",
            api_token,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Each device's stored event count, as the API lists devices.
fn event_counts(api: &Api) -> Vec<u64> {
    let (_, devices) = api.get("/api/v1/devices");
    devices["devices"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["event_count"].as_u64()).collect())
        .unwrap_or_default()
}

/// Waits for the loadgen and checks its verdict: `sent` events, none lost, none duplicated.
fn assert_exactly_once(loadgen: std::process::Child, sent: &str) {
    let out = loadgen.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let f = fields(&stdout);
    assert_eq!(f.get("events").map(String::as_str), Some(sent), "{stdout}");
    assert_eq!(
        f.get("lost").map(String::as_str),
        Some("0"),
        "{stdout}{stderr}"
    );
    assert_eq!(
        f.get("duplicated").map(String::as_str),
        Some("0"),
        "{stdout}{stderr}"
    );
}

/// Under load every group commit holds hundreds of events: killed with -9 three times while
/// the loadgen's agents stream (each resending only what was not acknowledged, as agents do),
/// the collector must still list every event exactly once. An acknowledged event lost in a
/// kill would be listed as lost, since no agent sends it again.
#[test]
fn kill9_during_group_commits_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let (token, fp) = collector.token(&["--uses", "6"]);
    let admin = std::fs::read_to_string(collector.dir.join("admin.token")).unwrap();
    let loadgen = loadgen(
        &collector.grpc_addr(),
        &token,
        &fp,
        6,
        6000,
        collector.web.port(),
        admin.trim(),
    );
    let api = collector.api();
    for round in 1..=3u64 {
        // Kill while events are flowing, a quarter of the way further each round.
        wait_for(Duration::from_secs(60), "events flowing", || {
            (event_counts(&api).iter().sum::<u64>() >= round * 6 * 6000 / 4).then_some(())
        });
        collector.kill9();
        std::thread::sleep(Duration::from_millis(200));
        collector.serve();
    }
    assert_exactly_once(loadgen, "36000");
    collector.stop();
}

/// SIGTERM while the loadgen's agents stream, twice: the collector stops accepting, stores and
/// acks what its streams had received, waits for every task it spawned (streams, connections,
/// the ingest writer) and exits cleanly before its deadline, each time saying so in its log
/// and never that a task was still running. Every event is then listed exactly once.
#[test]
fn sigterm_during_load_loses_nothing_and_leaves_no_task_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let (token, fp) = collector.token(&["--uses", "6"]);
    let admin = std::fs::read_to_string(collector.dir.join("admin.token")).unwrap();
    let log_path = tmp.path().join("collector.log");
    let serve_logged = |c: &mut Collector| {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        c.serve_through(Command::new(bin("caretaker-collector")), &[], &[], log);
    };
    collector.stop();
    serve_logged(&mut collector);
    let loadgen = loadgen(
        &collector.grpc_addr(),
        &token,
        &fp,
        6,
        6000,
        collector.web.port(),
        admin.trim(),
    );
    let api = collector.api();
    for round in 1..=2u64 {
        wait_for(Duration::from_secs(60), "events flowing", || {
            (event_counts(&api).iter().sum::<u64>() >= round * 6 * 6000 / 3).then_some(())
        });
        collector.stop(); // asserts a clean exit within 20 s
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(
            log.matches("Every task finished").count(),
            round as usize,
            "each stop waits for every task:\n{log}"
        );
        assert!(!log.contains("Tasks still running"), "{log}");
        serve_logged(&mut collector);
    }
    assert_exactly_once(loadgen, "36000");
    collector.stop();
}

/// A trust's two collectors on one PostgreSQL: agents spread over both, one collector killed
/// with -9 mid-stream, its agents move to the other and resend what was not acknowledged.
/// Every event is then listed exactly once through the surviving collector's API, and the
/// database itself holds each (device, seq) once (counted by SQL, not by the collector).
#[test]
fn two_collectors_on_one_postgres_lose_nothing_when_one_is_killed() {
    let pg = pg_rig::PgCluster::start();
    let url = pg.create_database("trust");
    let tmp = tempfile::tempdir().unwrap();
    let first_dir = tmp.path().join("first");
    let mut first = Collector::start_with_init(&first_dir, &["--store", &url]);
    let second = Collector::start_with_init(
        &tmp.path().join("second"),
        &["--store", &url, "--join", first_dir.to_str().unwrap()],
    );
    // A token made through either is good at both: tokens live in the database.
    let (token, fp) = second.token(&["--uses", "6"]);
    let admin = std::fs::read_to_string(second.dir.join("admin.token")).unwrap();
    let both = format!("{},{}", first.grpc_addr(), second.grpc_addr());
    let loadgen = loadgen(&both, &token, &fp, 6, 5000, second.web.port(), admin.trim());
    // Kill the first once both have stored events (so it held streams when it died).
    let api = second.api();
    wait_for(Duration::from_secs(90), "all six agents streaming", || {
        let counts = event_counts(&api);
        (counts.len() == 6 && counts.iter().all(|&n| n >= 1000)).then_some(())
    });
    first.kill9();
    assert_exactly_once(loadgen, "30000");
    // From the outside: the database's own rows, each (device, seq) once.
    let rows = pg.query(
        "trust",
        "SELECT count(*), count(DISTINCT (device_id, seq)) FROM events",
    );
    assert_eq!(
        rows, "30000|30000",
        "rows and distinct (device, seq) in PostgreSQL"
    );
}
