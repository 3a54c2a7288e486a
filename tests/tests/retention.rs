//! Retention end to end: a real collector and store filled (by the loadgen) with events of several kinds dated past their retention and recent ones, an incident on legal hold, then the purge: exactly the expired go, the held stay, ingest goes on, the audit log has the counts, and fleet and licence counts do not move (also across a restart).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use caretaker_tests::*;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

/// The defaults (`settings::Retention`): technical 400 days, safeguarding seven years.
const TECHNICAL_DAYS: i64 = 400;
const SAFEGUARDING_DAYS: i64 = 2557;

fn set_settings(c: &Collector, doc: &Value) {
    let file = c.dir.join("settings-test.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
        .args(["settings", "set", "--data-dir"])
        .arg(&c.dir)
        .arg("--file")
        .arg(&file));
    assert!(ok, "settings set failed: {out}{err}");
}

/// The loadgen's arguments for `agents` agents of `events` each, keys kept in `work`.
fn loadgen(c: &Collector, token: &str, fp: &str, work: &Path, agents: u32, events: u32) -> Command {
    let admin = std::fs::read_to_string(c.dir.join("admin.token")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caretaker-loadgen"));
    cmd.args([
        "--collector",
        &c.grpc_addr(),
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
    .args(["--api", &format!("https://localhost:{}", c.web.port())])
    .args(["--api-token", admin.trim()])
    .arg("--work-dir")
    .arg(work);
    cmd
}

/// Runs a loadgen to the end; its last line must say nothing was lost.
fn fill(mut cmd: Command) {
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "loadgen failed: {out}{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("lost=0 duplicated=0"), "{last}");
}

/// The device ids the loadgen enrolled in `work` (one `agent-N` folder each).
fn devices_in(work: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| {
            let e: Value = serde_json::from_slice(
                &std::fs::read(e.unwrap().path().join("enrollment.json")).unwrap(),
            )
            .unwrap();
            e["device_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids
}

fn at(e: &Value) -> DateTime<Utc> {
    e["occurred_at"].as_str().unwrap().parse().unwrap()
}

fn safeguarding(e: &Value) -> bool {
    e["audience"].as_array().unwrap().iter().any(|a| a == "dsl")
}

/// Every (device, seq) the API lists for `devices`.
fn listed(api: &Api, devices: &[String]) -> BTreeSet<(String, u64)> {
    devices
        .iter()
        .flat_map(|d| {
            seqs(&api.all_events(d))
                .into_iter()
                .map(move |s| (d.clone(), s))
        })
        .collect()
}

fn software(api: &Api) -> Value {
    let (st, v) = api.get("/api/v1/software?limit=1000");
    assert_eq!(st, 200, "{v}");
    assert!(v["next"].is_null(), "one page holds every product");
    v["products"].clone()
}

fn fleet(api: &Api) -> Value {
    let (st, v) = api.get("/api/v1/fleet");
    assert_eq!(st, 200, "{v}");
    v
}

/// The detail of every `records_purged` entry, parsed into counts and summed.
fn purged_counts(api: &Api) -> (usize, BTreeMap<String, u64>) {
    let (st, v) = api.get("/api/v1/audit?limit=1000");
    assert_eq!(st, 200, "{v}");
    let mut sum = BTreeMap::new();
    let mut entries = 0;
    for a in v["entries"].as_array().unwrap() {
        if a["action"] != "records_purged" {
            continue;
        }
        assert_eq!(a["actor"], "system", "{a}");
        entries += 1;
        for kv in a["detail"].as_str().unwrap().split_whitespace() {
            let (k, n) = kv.split_once('=').expect("counts as kind=n");
            *sum.entry(k.to_string()).or_default() += n.parse::<u64>().unwrap();
        }
    }
    (entries, sum)
}

#[test]
fn the_purge_removes_exactly_what_expired_keeps_what_is_held_and_ingest_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    purge_scenario(tmp.path(), collector);
}

/// The same on a trust's PostgreSQL store (row deletes there, under the digest leader).
#[test]
fn the_purge_on_postgresql_removes_exactly_what_expired_and_keeps_what_is_held() {
    let pg = pg_rig::PgCluster::start();
    let url = pg.create_database("retention");
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start_with_init(&tmp.path().join("collector"), &["--store", &url]);
    purge_scenario(tmp.path(), collector);
}

fn purge_scenario(tmp: &Path, mut collector: Collector) {
    // Keep everything while the store is filled.
    set_settings(
        &collector,
        &json!({"retention": {"technical_days": 0, "safeguarding_days": 0,
                              "audit_days": 0, "digests_days": 0}}),
    );
    let (token, fp) = collector.token(&["--uses", "20"]);
    let work = |n: &str| tmp.join(n);
    // Ancient (everything expired), a year and a half old (technical expired, safeguarding
    // kept), recent (nothing expired): the realistic mix has heartbeats, screen-lock,
    // antivirus and software reports and pupils' sticks, the last two partly the DSL's.
    for (dir, days, agents) in [("ancient", 3000, 3), ("old", 500, 3), ("recent", 0, 2)] {
        let mut cmd = loadgen(&collector, &token, &fp, &work(dir), agents, 400);
        cmd.args([
            "--mix",
            "realistic",
            "--occurred-days-ago",
            &days.to_string(),
        ]);
        fill(cmd);
    }
    // The agents that stream during the purge exist beforehand, so the fleet's device count
    // is the same before and after.
    let mut warm = loadgen(&collector, &token, &fp, &work("live"), 2, 1);
    warm.arg("--no-verify");
    fill_unchecked(warm);
    let api = collector.api();
    let dsl = api.with_token(&collector.api_token("dsl"));

    // The DSL holds a safeguarding incident of an ancient laptop: its events must survive.
    let ancient = devices_in(&work("ancient"));
    let old = devices_in(&work("old"));
    let recent = devices_in(&work("recent"));
    let (st, v) = api.get(&format!(
        "/api/v1/incidents?category=safeguarding&device={}&limit=100",
        ancient[0]
    ));
    assert_eq!(st, 200, "{v}");
    let held = v["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|i| i["count"].as_u64().unwrap())
        .expect("an ancient laptop has a safeguarding incident")
        .clone();
    let held_id = held["id"].as_u64().unwrap();
    let (st, v) = dsl.post(
        "/api/v1/holds",
        &json!({"target": format!("incident:{held_id}"), "reason": "CP-2026-14 police request"}),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = api.post(
        "/api/v1/holds",
        &json!({"target": format!("incident:{held_id}"), "reason": "x"}),
    );
    assert_eq!(st, 403, "only the DSL places holds: {v}");
    let (st, v) = dsl.post(
        "/api/v1/holds",
        &json!({"target": "device:nope", "reason": ""}),
    );
    assert_eq!(st, 400, "a hold needs a reason: {v}");
    let (_, v) = api.get("/api/v1/holds");
    assert_eq!(
        v["holds"][0]["target"],
        format!("incident:{held_id}"),
        "{v}"
    );

    // What must go, from the listing itself.
    let now = Utc::now();
    let expired = |e: &Value| {
        let days = if safeguarding(e) {
            SAFEGUARDING_DAYS
        } else {
            TECHNICAL_DAYS
        };
        at(e) < now - Duration::days(days)
    };
    let is_held = |e: &Value| {
        e["device_id"] == held["device_id"]
            && e["kind"] == held["kind"]
            && (held["first_seq"].as_u64().unwrap()..=held["last_seq"].as_u64().unwrap())
                .contains(&e["seq"].as_u64().unwrap())
    };
    let mut keep: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut gone: HashMap<&str, u64> = HashMap::new();
    let mut held_events = 0;
    for d in ancient.iter().chain(&old).chain(&recent) {
        for e in api.all_events(d) {
            let key = (d.clone(), e["seq"].as_u64().unwrap());
            if is_held(&e) {
                held_events += 1;
            }
            if expired(&e) && !is_held(&e) {
                let kind = if safeguarding(&e) {
                    "safeguarding_events"
                } else {
                    "technical_events"
                };
                *gone.entry(kind).or_default() += 1;
            } else {
                keep.insert(key);
            }
        }
    }
    assert!(held_events > 0 && gone["technical_events"] > 0 && gone["safeguarding_events"] > 0);
    let all: Vec<String> = ancient.iter().chain(&old).chain(&recent).cloned().collect();
    assert!(listed(&api, &all).len() > keep.len());
    let (fleet_before, software_before) = (fleet(&api), software(&api));
    assert!(
        software_before.as_array().unwrap().len() > 3,
        "{software_before}"
    );

    // The school's retention (the defaults), and a collector that purges every second in
    // small batches, so the purge takes a while and the loadgen streams during it.
    set_settings(&collector, &json!({}));
    collector.stop();
    collector.serve_with_args(&["--purge-every", "1s", "--purge-batch", "50"], &[]);
    let live: Child = {
        let mut cmd = loadgen(&collector, &token, &fp, &work("live"), 2, 3000);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let api = collector.api();
    let (entries, counts) = wait_for(
        std::time::Duration::from_secs(120),
        "the purge's audit entry",
        || {
            let (n, c) = purged_counts(&api);
            (n > 0).then_some((n, c))
        },
    );
    let out = live.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("lost=0 duplicated=0"),
        "ingest during the purge: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        entries, 1,
        "one run removed everything; later runs found nothing"
    );
    assert_eq!(counts["technical_events"], gone["technical_events"]);
    assert_eq!(counts["safeguarding_events"], gone["safeguarding_events"]);
    for k in ["incidents", "incident_entries", "audit_entries", "digests"] {
        assert_eq!(counts[k], 0, "{k}: nothing else was old enough");
    }
    assert_eq!(
        listed(&api, &all),
        keep,
        "exactly the expired events are gone"
    );
    for d in &all {
        let kept = keep.iter().filter(|(id, _)| id == d).count() as u64;
        assert_eq!(
            api.device(d).unwrap()["event_count"].as_u64().unwrap(),
            kept,
            "{d}'s stored count follows the purge"
        );
    }
    let (st, v) = api.get(&format!("/api/v1/incidents/{held_id}"));
    assert_eq!(st, 200, "the held incident is kept: {v}");
    assert_eq!(
        fleet(&api),
        fleet_before,
        "fleet counts come from device state"
    );
    assert_eq!(software(&api), software_before, "licence counts");

    // A restart rebuilds the licence counts from saved state and what is left: the same.
    collector.stop();
    collector.serve();
    let api = collector.api();
    assert_eq!(
        software(&api),
        software_before,
        "licence counts after a restart"
    );
    assert_eq!(fleet(&api), fleet_before);

    // Releasing the hold lets the incident's events expire at the next purge.
    let dsl = api.with_token(&collector.api_token("dsl"));
    let (st, v) = dsl.delete(&format!("/api/v1/holds/incident:{held_id}"));
    assert_eq!(st, 400, "a release says why: {v}");
    let (st, v) = dsl.delete(&format!(
        "/api/v1/holds/incident:{held_id}?reason=case%20closed"
    ));
    assert_eq!(st, 200, "{v}");
    let (_, v) = api.get("/api/v1/audit?limit=1000");
    let actions: Vec<(&str, &str)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["target"].as_str().unwrap()))
        .collect();
    let target = format!("incident:{held_id}");
    assert!(
        actions.contains(&("hold_placed", target.as_str())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("hold_released", target.as_str())),
        "{actions:?}"
    );
}

/// Runs a loadgen that does not verify (its last line says `lost=unchecked`).
fn fill_unchecked(mut cmd: Command) {
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "loadgen failed: {out}{err}");
}
