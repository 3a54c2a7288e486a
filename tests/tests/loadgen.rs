//! The load tool against a real collector: a small run must store exactly K x M and say so in its last line.

use std::process::Command;

use caretaker_tests::*;

#[test]
fn loadgen_reports_exactly_k_times_m_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let (token, fp) = collector.token(&["--uses", "4"]);
    let admin = std::fs::read_to_string(collector.dir.join("admin.token")).unwrap();
    let (ok, out, err) = run(Command::new(env!("CARGO_BIN_EXE_caretaker-loadgen")).args([
        "--collector",
        &collector.grpc_addr(),
        "--token",
        &token,
        "--ca-fingerprint",
        &fp,
        "--agents",
        "4",
        "--events",
        "1200",
        "--api",
        &format!("https://localhost:{}", collector.web.port()),
        "--api-token",
        admin.trim(),
    ]));
    assert!(ok, "{out}{err}");
    let last = out.lines().last().unwrap();
    let fields: std::collections::HashMap<&str, &str> = last
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(fields.len(), 6, "{last}");
    assert_eq!(fields["events"], "4800", "{last}");
    assert_eq!(fields["lost"], "0", "{last}");
    assert_eq!(fields["duplicated"], "0", "{last}");
    assert!(fields["rate"].ends_with("/s"), "{last}");
    let api = collector.api();
    let (_, devices) = api.get("/api/v1/devices");
    let total: u64 = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4800);
}
