//! The DSL's digests with real parts: a real collector, events sent as enrolled devices, a real SMTP server (aiosmtpd, STARTTLS and AUTH) and a real HTTP receiver for the Teams webhook; retries while the server is down, and a collector killed between sending and recording.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caretaker_tests::smtp_rig::{self, SmtpRig, header};
use caretaker_tests::{Collector, bin, pb_event, pupil_stick, run, send_as_device, wait_for};
use serde_json::{Value, json};

fn cli(collector: &Collector, args: &[&str]) -> String {
    let (ok, out, err) = run(std::process::Command::new(bin("caretaker-collector"))
        .args(args)
        .arg("--data-dir")
        .arg(&collector.dir));
    assert!(ok, "caretaker-collector {args:?} failed: {out}{err}");
    out
}

fn set_settings(collector: &Collector, dir: &Path, settings: &Value) {
    let file = dir.join("settings.json");
    std::fs::write(&file, settings.to_string()).unwrap();
    cli(
        collector,
        &["settings", "set", "--file", file.to_str().unwrap()],
    );
}

fn mail_settings(smtp: &SmtpRig, dir: &Path, extra: Value) -> Value {
    let password = dir.join("smtp.password");
    std::fs::write(&password, format!("{}\n", smtp_rig::PASSWORD)).unwrap();
    let mut s = json!({
        "school_name": "Hill Primary",
        "dashboard_url": "https://caretaker.hill.sch.uk:8443",
        "smtp": {"host": "localhost", "port": smtp.port, "security": "starttls",
                 "username": smtp_rig::USER, "password_file": password,
                 "from": "Caretaker <caretaker@hill.sch.uk>", "ca_file": smtp.ca_pem},
        // A time that does not come during the test: digests here are asked for with send-now.
        "digests": [{"username": "dsl1", "frequency": "daily", "at": "03:00"}],
        "urgent": {"kinds": [], "bypass_tools": true, "gather_secs": 1, "max_per_hour": 4},
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn digests(collector: &Collector) -> Vec<Value> {
    let (status, v) = collector.api().get("/api/v1/digests");
    assert_eq!(status, 200, "{v}");
    v["digests"].as_array().unwrap().clone()
}

/// Three devices named for the test; returns their state dirs.
fn three_devices(collector: &Collector, dir: &Path) -> Vec<std::path::PathBuf> {
    (0..3)
        .map(|i| {
            let state = dir.join(format!("laptop-{i}"));
            collector.enroll(&state);
            state
        })
        .collect()
}

#[test]
fn two_pupils_on_three_devices_make_one_message_per_dsl_with_the_right_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut smtp = SmtpRig::start(&tmp.path().join("smtp"));
    let mut collector = Collector::start(&tmp.path().join("collector"));
    for (role, name) in [("dsl", "dsl1"), ("dsl", "dsl2"), ("network_manager", "nm")] {
        collector.add_user(role, name);
        cli(
            &collector,
            &["user", "email", name, &format!("{name}@hill.sch.uk")],
        );
    }
    set_settings(
        &collector,
        tmp.path(),
        &mail_settings(&smtp, tmp.path(), json!({})),
    );
    // A new schedule counts from when the collector first sees it (within a tick).
    std::thread::sleep(Duration::from_secs(3));
    let devices = three_devices(&collector, tmp.path());

    // amy: three attempts on laptop 0 and two on laptop 1; ben: one on laptop 2.
    send_as_device(
        &collector,
        &devices[0],
        "Y5-LAPTOP-00",
        (1..=3).map(|s| pupil_stick(s, "amy.k", "SN-A")).collect(),
    );
    send_as_device(
        &collector,
        &devices[1],
        "Y5-LAPTOP-01",
        (1..=2).map(|s| pupil_stick(s, "amy.k", "SN-A")).collect(),
    );
    send_as_device(
        &collector,
        &devices[2],
        "Y5-LAPTOP-02",
        vec![pupil_stick(1, "ben.t", "SN-B")],
    );

    let out = cli(&collector, &["digest", "send-now", "--user", "dsl1"]);
    assert!(out.contains("Recorded 1 digest"), "{out}");
    let mail = smtp.wait_for_messages(1, Duration::from_secs(20));
    let m = &mail[0];
    assert_eq!(header(m, "X-Envelope-To").unwrap(), "dsl1@hill.sch.uk");
    let subject = header(m, "Subject").unwrap();
    assert!(
        subject.contains("6 flagged events about 2 pupils"),
        "{subject}"
    );
    let body = m.replace("=\r\n", "");
    for line in [
        "amy.k on Y5-LAPTOP-00: 3 events",
        "amy.k on Y5-LAPTOP-01: 2 events",
        "ben.t on Y5-LAPTOP-02: 1 event ",
        "https://caretaker.hill.sch.uk:8443/incidents/",
    ] {
        assert!(body.contains(line), "the digest lacks {line:?}:\n{body}");
    }
    assert!(
        !body.contains("SN-A"),
        "no event details beyond the policy's needs"
    );
    // Nothing more to say: nothing sent; dsl2 has no schedule; the network manager is no DSL.
    let again = cli(&collector, &["digest", "send-now", "--user", "dsl1"]);
    assert!(again.contains("Nothing to send"), "{again}");
    let nm = cli(&collector, &["digest", "send-now", "--user", "nm"]);
    assert!(nm.contains("Nothing to send"), "{nm}");
    wait_for(Duration::from_secs(10), "the digest marked sent", || {
        digests(&collector)
            .iter()
            .all(|d| d["status"] == "sent")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.messages().len(), 1, "one message, to dsl1 only");

    // The server goes away: the next digest is recorded, fails, shows why, and is retried.
    smtp.stop();
    send_as_device(
        &collector,
        &devices[0],
        "Y5-LAPTOP-00",
        vec![pupil_stick(4, "amy.k", "SN-A")],
    );
    cli(&collector, &["digest", "send-now", "--user", "dsl1"]);
    let failed = wait_for(Duration::from_secs(20), "a failed attempt recorded", || {
        digests(&collector)
            .into_iter()
            .find(|d| d["status"] == "pending" && d["attempts"].as_u64() >= Some(1))
    });
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("mail server"),
        "{failed}"
    );
    smtp.resume();
    let mail = smtp.wait_for_messages(2, Duration::from_secs(60));
    assert!(
        header(&mail[1], "Subject")
            .unwrap()
            .contains("1 flagged event about 1 pupil")
    );

    // Killed between the server accepting and the collector recording: on restart the digest is
    // sent again as the same message (same Message-ID), never as a second digest.
    collector.stop();
    collector.serve_with_env(&[("CARETAKER_TEST_ABORT_AFTER_SEND", "1")]);
    send_as_device(
        &collector,
        &devices[2],
        "Y5-LAPTOP-02",
        vec![pupil_stick(2, "ben.t", "SN-B")],
    );
    cli(&collector, &["digest", "send-now", "--user", "dsl1"]);
    let mail = smtp.wait_for_messages(3, Duration::from_secs(30));
    wait_for(Duration::from_secs(10), "the collector to abort", || {
        collector.has_exited().then_some(())
    });
    collector.forget_process();
    collector.serve();
    let mail_after = smtp.wait_for_messages(4, Duration::from_secs(30));
    let ids: Vec<String> = mail_after
        .iter()
        .map(|m| header(m, "Message-ID").unwrap())
        .collect();
    assert_eq!(ids[2], ids[3], "the resend is the same message: {ids:?}");
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "three digests, each one message: {ids:?}"
    );
    assert_eq!(mail.len(), 3);
    wait_for(
        Duration::from_secs(10),
        "every digest recorded as sent",
        || {
            let d = digests(&collector);
            (d.len() == 3 && d.iter().all(|d| d["status"] == "sent")).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.messages().len(), 4, "nothing sent a third time");
}

/// What the receiver got: (headers, body) per request.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A minimal HTTP receiver: answers 200 to every POST and keeps (headers, body).
fn webhook_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            g.lock().unwrap().push((head, json));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n1");
        }
    });
    (port, got)
}

#[test]
fn a_teams_webhook_gets_an_adaptive_card_and_a_bypass_tool_goes_out_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = SmtpRig::start(&tmp.path().join("smtp"));
    let collector = Collector::start(&tmp.path().join("collector"));
    collector.add_user("dsl", "dsl1");
    let (port, got) = webhook_receiver();
    set_settings(
        &collector,
        tmp.path(),
        &mail_settings(
            &smtp,
            tmp.path(),
            json!({"webhooks": [{"kind": "teams", "url": format!("http://127.0.0.1:{port}/hook"), "owner": "dsl1"}]}),
        ),
    );
    // The schedule starts counting from now; let the collector see it first.
    std::thread::sleep(Duration::from_secs(3));
    let state = tmp.path().join("laptop");
    collector.enroll(&state);

    // A filter-bypass tool (the collector's catalogue knows tor) goes out without waiting for
    // the schedule; three installs in a burst make one message.
    let tor = |seq: u64| {
        let d = json!({"source": "dpkg", "name": "tor", "version": "0.4.7"});
        let mut e = pb_event(seq, "software.installed", d.as_object().unwrap().clone());
        e.user = "cara.p".into();
        e
    };
    send_as_device(&collector, &state, "LIB-PC-03", (1..=3).map(tor).collect());
    let posts = wait_for(Duration::from_secs(20), "the urgent webhook", || {
        let g = got.lock().unwrap();
        (!g.is_empty()).then(|| g.clone())
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(got.lock().unwrap().len(), 1, "a burst is one message");
    let (head, card) = &posts[0];
    assert!(
        head.to_ascii_lowercase()
            .contains("idempotency-key: caretaker-digest-"),
        "{head}"
    );
    assert_eq!(card["type"], "message");
    let att = &card["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(att["content"]["type"], "AdaptiveCard");
    assert_eq!(att["content"]["version"], "1.4");
    let body = att["content"]["body"].to_string();
    assert!(body.contains("Urgent safeguarding alert"), "{body}");
    assert!(body.contains("cara.p on LIB-PC-03"), "{body}");
    assert!(body.contains("FactSet"), "{body}");
    // dsl1 has no e-mail address: nothing by mail.
    assert!(smtp.messages().is_empty());
    let d = digests(&collector);
    assert_eq!(
        (d.len(), d[0]["kind"].as_str()),
        (1, Some("urgent")),
        "{d:?}"
    );
}
