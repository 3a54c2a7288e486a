//! Subject access with real parts: a real collector and its embedded store, events sent as enrolled laptops naming `alice`, `al` and `bob`; the export holds every record naming alice and nothing about the others, erasure leaves no byte of the name in the data directory (except under legal hold), and usernames are pseudonymised at the edge when the settings say so.

use std::path::{Path, PathBuf};
use std::process::Command;

use caretaker_tests::{Collector, bin, pb_event, pupil_stick, run, send_as_device};
use serde_json::{Value, json};

fn cli(collector: &Collector, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
        .args(args)
        .arg("--data-dir")
        .arg(&collector.dir));
    (ok, format!("{out}{err}"))
}

fn cli_ok(collector: &Collector, args: &[&str]) -> String {
    let (ok, out) = cli(collector, args);
    assert!(ok, "caretaker-collector {args:?} failed: {out}");
    out
}

/// An event of `kind` by `user` with `details`.
fn by(seq: u64, kind: &str, user: &str, details: Value) -> caretaker_proto::pb::Event {
    let mut e = pb_event(seq, kind, details.as_object().unwrap().clone());
    e.user = user.into();
    e
}

/// Whether `text` names `name` as a whole word (as the store's rule does: not inside
/// `alice` when looking for `al`).
fn names(text: &str, name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-');
    text.match_indices(name).any(|(i, _)| {
        !text[..i].chars().next_back().is_some_and(word)
            && !text[i + name.len()..].chars().next().is_some_and(word)
    })
}

struct Seeded {
    collector: Collector,
    /// Alice's safeguarding incident (her blocked stick), and bob's.
    alice_incident: u64,
    bob_incident: u64,
    /// Alice's laptop's device id.
    laptop_a: String,
}

/// A collector with alice's records across kinds (technical events naming her as user and in
/// details, a technical incident, a safeguarding incident with a DSL's entry naming her), and
/// al's and bob's beside them on the same laptops.
fn seed(dir: &Path) -> Seeded {
    seed_with(dir, &[])
}

/// As `seed`, with extra `init` options (`--store URL` for a trust's PostgreSQL).
fn seed_with(dir: &Path, init: &[&str]) -> Seeded {
    let collector = Collector::start_with_init(&dir.join("collector"), init);
    cli_ok(
        &collector,
        &[
            "settings",
            "set",
            "--file",
            &write_settings(dir, json!({"school_name": "Hill Primary"})),
        ],
    );
    let state_a = dir.join("laptop-a");
    let state_b = dir.join("laptop-b");
    let laptop_a = collector.enroll(&state_a);
    collector.enroll(&state_b);
    // Incidents group by laptop, kind and subject whoever the user, so each person's flagged
    // events are of kinds or laptops of their own.
    send_as_device(
        &collector,
        &state_a,
        "Y5-LAPTOP-A",
        vec![
            by(
                1,
                "screen.locked_by_policy",
                "alice",
                json!({"session": "/home/alice"}),
            ),
            by(
                2,
                "screen.lock_failed",
                "alice",
                json!({"reason": "no locker for /home/alice"}),
            ),
            by(
                3,
                "usb.blocked",
                "alice",
                json!({"serial": "SN-T", "product": "Phone"}),
            ),
            pupil_stick(4, "alice", "SN-A"),
        ],
    );
    send_as_device(
        &collector,
        &state_b,
        "Y5-LAPTOP-B",
        vec![
            pupil_stick(1, "bob", "SN-B"),
            by(
                2,
                "screen.lock_failed",
                "al",
                json!({"reason": "no locker for /home/al"}),
            ),
            // Named in the details of someone else's (routine) event: still a record naming her.
            by(
                3,
                "screen.locked_by_policy",
                "bob",
                json!({"note": "session of alice still open"}),
            ),
            by(
                4,
                "session.left_logged_on",
                "bob",
                json!({"idle_minutes": 9}),
            ),
        ],
    );
    let api = collector.api();
    let dsl = api.with_token(&collector.api_token("dsl"));
    let incident_of = |user: &str| {
        let (st, v) = api.get(&format!(
            "/api/v1/incidents?category=safeguarding&user={user}"
        ));
        assert_eq!(st, 200, "{v}");
        let list = v["incidents"].as_array().unwrap();
        assert_eq!(list.len(), 1, "one safeguarding incident for {user}: {v}");
        list[0]["id"].as_u64().unwrap()
    };
    let alice_incident = incident_of("alice");
    let bob_incident = incident_of("bob");
    for (id, text) in [
        (
            alice_incident,
            "Spoke to alice and her parent about the stick.",
        ),
        (bob_incident, "Spoke to bob."),
    ] {
        let (st, v) = dsl.post(
            &format!("/api/v1/incidents/{id}/entries"),
            &json!({"action": "note", "text": text}),
        );
        assert!(st == 200 || st == 201, "{v}");
    }
    // Audit entries naming her: a hold on her records, placed and released by the DSL.
    let (st, v) = dsl.post(
        "/api/v1/holds",
        &json!({"target": "user:alice", "reason": "welfare review of alice"}),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = dsl.delete("/api/v1/holds/user:alice?reason=review%20done");
    assert_eq!(st, 200, "{v}");
    Seeded {
        collector,
        alice_incident,
        bob_incident,
        laptop_a,
    }
}

fn write_settings(dir: &Path, doc: Value) -> String {
    let file = dir.join(format!("settings-{}.json", rand_suffix()));
    std::fs::write(&file, doc.to_string()).unwrap();
    file.to_str().unwrap().to_string()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Every event the network manager's API lists, on every device.
fn all_events(collector: &Collector) -> Vec<Value> {
    let api = collector.api();
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (st, v) = api.get(&format!("/api/v1/events?limit=1000&cursor={cursor}"));
        assert_eq!(st, 200, "{v}");
        out.extend(v["events"].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(n) => cursor = n.to_string(),
            None => return out,
        }
    }
}

fn key_of(e: &Value) -> (String, u64) {
    (
        e["device_id"].as_str().unwrap().to_string(),
        e["seq"].as_u64().unwrap(),
    )
}

/// `subject export` into `dir`; returns the parsed JSON and the HTML.
fn export(collector: &Collector, dir: &Path, user: &str, name: &str) -> (Value, String) {
    let out = dir.join(name);
    let said = cli_ok(
        collector,
        &[
            "subject",
            "export",
            "--user",
            user,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(said.contains("records naming"), "{said}");
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    let html = std::fs::read_to_string(out.with_extension("html")).unwrap();
    (json, html)
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

fn incident(collector: &Collector, id: u64) -> Value {
    let (st, v) = collector.api().get(&format!("/api/v1/incidents/{id}"));
    assert_eq!(st, 200, "{v}");
    v
}

#[test]
fn the_export_holds_every_record_naming_alice_and_erasure_leaves_no_trace_of_her() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = export_and_erase(tmp.path(), seed(tmp.path()));
    // The store's files: stopped, so every byte it wrote is on disk and nothing is mid-write.
    collector.stop();
    let hits = files_containing(&collector.dir, b"alice");
    assert!(
        hits.is_empty(),
        "the data directory still holds the name in {hits:?}"
    );
}

/// The same on a trust's PostgreSQL store; what it holds is checked by SQL over every row of
/// every table (each row as text), not through the collector.
#[test]
fn on_postgresql_the_export_is_complete_and_erasure_leaves_no_row_naming_her() {
    let pg = caretaker_tests::pg_rig::PgCluster::start();
    let url = pg.create_database("sar");
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = export_and_erase(tmp.path(), seed_with(tmp.path(), &["--store", &url]));
    collector.stop();
    let tables = pg.query(
        "sar",
        "SELECT string_agg(quote_ident(table_name), ' ') FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    );
    assert!(tables.contains("events_"), "partitions listed: {tables}");
    for table in tables.split(' ') {
        let n = pg.query(
            "sar",
            &format!("SELECT count(*) FROM {table} t WHERE t::text ~ '\\malice\\M'"),
        );
        assert_eq!(n, "0", "rows of {table} still name alice");
    }
}

/// Exports alice's records (checking they are exactly hers), erases her, and checks through
/// the API and the CLI that nothing names her and her pseudonym stands in; returns the
/// collector, still serving.
fn export_and_erase(dir: &Path, seeded: Seeded) -> Collector {
    let Seeded {
        collector,
        alice_incident,
        bob_incident,
        ..
    } = seeded;
    let tmp = dir;

    let (doc, html) = export(&collector, tmp, "alice", "sar-alice");
    assert_eq!(doc["subject"], "alice");
    assert_eq!(doc["school"], "Hill Primary");
    let records = &doc["records"];

    // Every event naming alice, as user or in details, and no other.
    let events = all_events(&collector);
    let mut expected: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["user"] == "alice" || names(&e["details"].to_string(), "alice"))
        .map(key_of)
        .collect();
    let mut got: Vec<(String, u64)> = records["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(key_of)
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "the export's events are exactly those naming alice"
    );
    assert_eq!(got.len(), 5, "four of hers and bob's event naming her");
    // Her three incidents (two technical, the safeguarding one of the stick), the DSL's note on
    // hers, and the audit entries of the hold on her.
    let incidents: Vec<u64> = records["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["user"], "alice");
            i["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(incidents.len(), 3, "{incidents:?}");
    assert!(incidents.contains(&alice_incident) && !incidents.contains(&bob_incident));
    let entries = records["incident_entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["text"].as_str().unwrap().contains("Spoke to alice")),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| incidents.contains(&e["incident"].as_u64().unwrap()))
    );
    let audit = records["audit"].as_array().unwrap();
    for action in ["hold_placed", "hold_released"] {
        assert!(
            audit
                .iter()
                .any(|a| a["action"] == action && names(&a.to_string(), "alice")),
            "{action}: {audit:?}"
        );
    }
    assert!(
        audit.iter().all(|a| names(&a.to_string(), "alice")),
        "{audit:?}"
    );
    // Nothing about bob or al, apart from bob's event that names her.
    let mut about_others = records.clone();
    about_others["events"] = Value::Array(
        records["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["user"] != "bob")
            .cloned()
            .collect(),
    );
    let text = about_others.to_string();
    assert!(!names(&text, "bob"), "nothing about bob: {text}");
    assert!(!names(&text, "al"), "nothing about al: {text}");
    assert!(html.contains("Records naming alice") && html.contains("Hill Primary"));
    assert!(
        html.contains("Events (5)") && html.contains("Incidents (3)"),
        "{html}"
    );

    // The dashboard's API: the DSL may export (audited) but not erase.
    let dsl = collector.api().with_token(&collector.api_token("dsl"));
    let (st, v) = dsl.get("/api/v1/subject/alice");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["counts"]["events"], 5, "{v}");
    let (st, _) = dsl.post("/api/v1/subject/alice/erase", &json!({"confirm": "alice"}));
    assert_eq!(st, 403, "only the network manager erases");
    let nm = collector.api();
    let (st, v) = nm.post("/api/v1/subject/alice/erase", &json!({"confirm": "alicia"}));
    assert_eq!(st, 400, "the name must be typed again: {v}");

    // Erase through the running collector (its admin socket).
    let said = cli_ok(
        &collector,
        &["subject", "erase", "--user", "alice", "--yes"],
    );
    let pseudonym = said
        .split_whitespace()
        .find(|w| w.starts_with("user-"))
        .unwrap_or_else(|| panic!("the pseudonym is named: {said}"))
        .to_string();
    assert!(!said.contains("Kept under legal hold"), "{said}");

    let after = all_events(&collector);
    assert_eq!(after.len(), events.len(), "erasure removes nothing");
    for e in &after {
        assert!(!names(&e.to_string(), "alice"), "no event names alice: {e}");
    }
    let renamed: Vec<&Value> = after
        .iter()
        .filter(|e| e["user"] == pseudonym.as_str())
        .collect();
    assert_eq!(renamed.len(), 4, "her events carry the pseudonym");
    assert!(after.iter().any(|e| e["user"] == "bob"
        && e["details"]["note"] == format!("session of {pseudonym} still open")));
    assert_eq!(
        after.iter().filter(|e| e["user"] == "al").count(),
        1,
        "al is not alice"
    );
    assert_eq!(after.iter().filter(|e| e["user"] == "bob").count(), 3);
    let inc = incident(&collector, alice_incident);
    assert_eq!(inc["incident"]["user"], pseudonym.as_str(), "{inc}");
    assert!(!names(&inc.to_string(), "alice"), "{inc}");
    assert!(
        inc.to_string().contains(&format!("Spoke to {pseudonym}")),
        "{inc}"
    );
    assert_eq!(
        incident(&collector, bob_incident)["incident"]["user"],
        "bob"
    );
    let (_, log) = nm.get("/api/v1/audit?limit=1000");
    let log = log["entries"].as_array().unwrap().clone();
    // Exports and the erasure are logged under the pseudonym, so checking afterwards (below)
    // does not write the name back.
    for action in ["subject_exported", "subject_erased"] {
        assert!(
            log.iter()
                .any(|a| a["action"] == action && a["target"] == pseudonym.as_str()),
            "{action}: {log:?}"
        );
    }
    for a in &log {
        assert!(
            !names(&a.to_string(), "alice"),
            "the audit log forgot the name: {a}"
        );
    }
    // Her records are still hers under the pseudonym: a later request finds them there.
    let (_, v) = nm.get("/api/v1/subject/alice");
    assert_eq!(v["pseudonym"], pseudonym.as_str(), "{v}");
    assert_eq!(v["counts"]["events"], 5, "{v}");
    assert!(!names(&v["records"].to_string(), "alice"), "{v}");

    collector
}

#[test]
fn a_legal_hold_keeps_the_held_incidents_records_and_the_command_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let Seeded {
        collector,
        alice_incident,
        laptop_a,
        ..
    } = seed(tmp.path());
    let dsl = collector.api().with_token(&collector.api_token("dsl"));
    let (st, v) = dsl.post(
        "/api/v1/holds",
        &json!({"target": format!("incident:{alice_incident}"), "reason": "CP-2026-14 police request"}),
    );
    assert_eq!(st, 201, "{v}");

    let said = cli_ok(
        &collector,
        &["subject", "erase", "--user", "alice", "--yes"],
    );
    assert!(said.contains("Kept under legal hold"), "{said}");
    assert!(
        said.contains(&format!("incident {alice_incident}")),
        "{said}"
    );
    assert!(said.contains("CP-2026-14 police request"), "{said}");
    let pseudonym = said
        .split_whitespace()
        .find(|w| w.starts_with("user-"))
        .unwrap()
        .trim_end_matches('.')
        .to_string();

    // The held incident and its event keep her name; the rest carry the pseudonym.
    let inc = incident(&collector, alice_incident);
    assert_eq!(inc["incident"]["user"], "alice", "{inc}");
    assert!(inc.to_string().contains("Spoke to alice"), "{inc}");
    let events = all_events(&collector);
    let stick = events
        .iter()
        .find(|e| e["device_id"] == laptop_a.as_str() && e["seq"] == 4)
        .unwrap();
    assert_eq!(
        stick["user"], "alice",
        "the held incident's event is kept: {stick}"
    );
    for seq in [1, 2, 3] {
        let e = events
            .iter()
            .find(|e| e["device_id"] == laptop_a.as_str() && e["seq"] == seq)
            .unwrap();
        assert_eq!(e["user"], pseudonym.as_str(), "not held, so renamed: {e}");
    }
    let (_, log) = collector.api().get("/api/v1/audit?limit=1000");
    let erased = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "subject_erased")
        .unwrap_or_else(|| panic!("{log}"))
        .clone();
    assert_eq!(erased["target"], pseudonym.as_str());
    let detail = erased["detail"].as_str().unwrap();
    assert!(
        !names(detail, "alice") && detail.contains(&format!("incident:{alice_incident}")),
        "{detail}"
    );
}

#[test]
fn usernames_of_technical_events_are_pseudonymised_at_the_edge_and_the_dsls_keep_names() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("laptop");
    let laptop = collector.enroll(&state);
    send_as_device(
        &collector,
        &state,
        "Y5-LAPTOP-C",
        vec![by(
            1,
            "session.left_logged_on",
            "carol",
            json!({"idle_minutes": 3}),
        )],
    );
    // Turned on through the running collector's admin socket: it applies from the next batch.
    cli_ok(
        &collector,
        &[
            "settings",
            "set",
            "--file",
            &write_settings(tmp.path(), json!({"pseudonymise_usernames": true})),
        ],
    );
    send_as_device(
        &collector,
        &state,
        "Y5-LAPTOP-C",
        vec![
            by(
                2,
                "screen.lock_failed",
                "carol",
                json!({"reason": "no locker for /home/carol"}),
            ),
            pupil_stick(3, "carol", "SN-C"),
        ],
    );
    let events = all_events(&collector);
    let seq = |n: u64| {
        events
            .iter()
            .find(|e| e["device_id"] == laptop.as_str() && e["seq"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        seq(1)["user"],
        "carol",
        "stored before the switch: as it was"
    );
    let p = seq(2)["user"].as_str().unwrap().to_string();
    assert!(p.starts_with("user-") && p.len() == 21, "{p}");
    assert_eq!(
        seq(2)["details"]["reason"],
        format!("no locker for /home/{p}")
    );
    assert_eq!(seq(3)["user"], "carol", "the DSL's event keeps the name");
    let (_, v) = collector
        .api()
        .get("/api/v1/incidents?category=safeguarding&user=carol");
    assert_eq!(
        v["incidents"].as_array().unwrap().len(),
        1,
        "the DSL's incident names her: {v}"
    );

    // A subject access request finds her records under either.
    let (doc, _) = export(&collector, tmp.path(), "carol", "sar-carol");
    assert_eq!(doc["pseudonym"], p.as_str());
    assert_eq!(doc["counts"]["events"], 3, "{doc}");
    // The same pseudonym erasure gives, so her records stay together.
    let said = cli_ok(
        &collector,
        &["subject", "erase", "--user", "carol", "--yes"],
    );
    assert!(said.contains(&p), "{said}");
}

#[test]
fn erasing_a_staff_account_needs_saying_so_and_offline_works_without_a_collector() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    collector.add_user("dsl", "dsl.jones");
    collector.stop();
    // No collector: the command opens the store itself.
    let (ok, out) = cli(
        &collector,
        &["subject", "erase", "--user", "dsl.jones", "--yes"],
    );
    assert!(!ok && out.contains("dashboard account"), "{out}");
    let said = cli_ok(
        &collector,
        &[
            "subject",
            "erase",
            "--user",
            "dsl.jones",
            "--yes",
            "--staff",
        ],
    );
    assert!(said.contains("account (dsl) is kept"), "{said}");
    let (ok, out) = cli(
        &collector,
        &["subject", "export", "--user", "", "--out", "/tmp/x"],
    );
    assert!(!ok && out.contains("login name"), "{out}");
}
