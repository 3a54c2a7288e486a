//! The antivirus probe against a real clamd (see `tests/src/clamd_rig.rs`): status checks,
//! INSTREAM scans, and the probe's `run` loop emitting events only on change.

use std::sync::Arc;
use std::time::Duration;

use caretaker_agent::event::{EventSink, NewEvent};
use caretaker_agent::probe::antivirus::clamd::{self, ScanResult};
use caretaker_agent::probe::antivirus::parse::AvStatus;
use caretaker_agent::probe::antivirus::{self, AntivirusProbeConfig, CheckReport};
use caretaker_proto::policy::{AntivirusPolicy, PolicyDocument};
use caretaker_tests::clamd_rig::{self, ClamdRig, DEFAULT_DAILY_VERSION, EICAR_SIGNATURE};
use chrono::Utc;
use serde_json::Value;

fn config_for(rig: &ClamdRig) -> AntivirusProbeConfig {
    AntivirusProbeConfig {
        database_dir: rig.db_dir(),
        clamd_socket: rig.socket(),
        freshclam_log: rig.dir().join("freshclam.log"),
        ..Default::default()
    }
}

fn product(report: &CheckReport) -> Value {
    report.details()["products"][0].clone()
}

#[tokio::test]
async fn recent_database_with_clamd_running_is_current() {
    let mut rig = ClamdRig::with_fresh_database();
    rig.start();
    // A recorded freshclam log next to the rig shows the updater part of the report.
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../agent/src/probe/antivirus/testdata/freshclam-updated.log"
        ),
        rig.dir().join("freshclam.log"),
    )
    .unwrap();

    let report = antivirus::check(&config_for(&rig), &AntivirusPolicy::default()).await;

    assert_eq!(
        report.status(),
        AvStatus::Current,
        "{:?}\nclamd log:\n{}",
        report,
        rig.log()
    );
    let p = product(&report);
    assert_eq!(p["name"], "ClamAV");
    assert_eq!(p["signature_version"], DEFAULT_DAILY_VERSION.to_string());
    assert_eq!(p["service_responding"], true);
    assert_eq!(p["signature_age_hours"], 0);
    assert!(p["realtime_protection"].is_boolean(), "{p}");
    // The engine version is whatever clamd says (1.4.3 on Debian 12), so compare with it.
    let clamd_version = std::process::Command::new("clamd")
        .arg("--version")
        .output()
        .unwrap();
    let clamd_version = String::from_utf8(clamd_version.stdout).unwrap();
    let engine = p["engine_version"].as_str().expect("engine version");
    assert!(
        clamd_version.contains(engine),
        "{engine} vs {clamd_version}"
    );
    let built: chrono::DateTime<Utc> = p["signatures_built_at"].as_str().unwrap().parse().unwrap();
    assert!((Utc::now() - built).num_minutes().abs() < 60, "{built}");
    assert_eq!(p["updater"]["last_run_ok"], true);
    assert_eq!(p["updater"]["name"], "freshclam");
    assert_eq!(
        report.details()["reason"],
        "ClamAV: signatures are 0 h old (limit 72 h)"
    );
}

#[tokio::test]
async fn ten_day_old_database_is_stale() {
    let mut rig = ClamdRig::new();
    rig.install_daily(26990, Some(10));
    rig.start();

    let report = antivirus::check(&config_for(&rig), &AntivirusPolicy::default()).await;

    assert_eq!(report.status(), AvStatus::Stale, "{report:?}");
    let p = product(&report);
    let age = p["signature_age_hours"].as_i64().unwrap();
    assert!((239..=240).contains(&age), "age {age}");
    assert_eq!(p["signature_version"], "26990");
    assert_eq!(p["service_responding"], true);
    assert_eq!(
        report.assessment.reason,
        format!("ClamAV: signatures are {age} h old (limit 72 h)")
    );
    // The same database is current under a policy that tolerates 11 days.
    let lenient = AntivirusPolicy {
        max_signature_age_hours: 11 * 24,
        ..Default::default()
    };
    let report = antivirus::check(&config_for(&rig), &lenient).await;
    assert_eq!(report.status(), AvStatus::Current);
}

#[tokio::test]
async fn clamd_stopped_is_disabled_with_reason() {
    let mut rig = ClamdRig::with_fresh_database();
    rig.start();
    let config = config_for(&rig);
    assert_eq!(
        antivirus::check(&config, &AntivirusPolicy::default())
            .await
            .status(),
        AvStatus::Current
    );

    rig.stop();
    let report = antivirus::check(&config, &AntivirusPolicy::default()).await;

    assert_eq!(report.status(), AvStatus::Disabled, "{report:?}");
    let p = product(&report);
    assert_eq!(p["service_responding"], false);
    assert_eq!(p["signature_version"], DEFAULT_DAILY_VERSION.to_string());
    let reason = report.assessment.reason.clone();
    assert!(
        reason.starts_with(
            "ClamAV: service not responding (clamd not answering: cannot connect to clamd at "
        ),
        "{reason}"
    );
    assert!(
        reason.contains(&rig.socket().display().to_string()),
        "{reason}"
    );
    assert!(reason.contains("Connection refused"), "{reason}");
}

#[tokio::test]
async fn empty_database_dir_without_clamd_is_missing() {
    let rig = ClamdRig::new();
    let config = config_for(&rig);

    let report = antivirus::check(&config, &AntivirusPolicy::default()).await;

    assert_eq!(report.status(), AvStatus::Missing);
    assert_eq!(report.details()["products"], Value::Array(vec![]));
    assert_eq!(
        report.assessment.reason,
        format!(
            "no ClamAV database in {} and clamd not answering on {}",
            rig.db_dir().display(),
            rig.socket().display()
        )
    );
}

#[tokio::test]
async fn malformed_database_header_is_unknown_not_a_panic() {
    let rig = ClamdRig::new();
    std::fs::write(
        rig.db_dir().join("daily.cld"),
        b"this is not a ClamAV database",
    )
    .unwrap();
    let report = antivirus::check(&config_for(&rig), &AntivirusPolicy::default()).await;
    // clamd is not running either, and that is the more definite finding.
    assert_eq!(report.status(), AvStatus::Disabled);
    assert!(
        report
            .warnings
            .contains(&"daily.cld: database header does not start with ClamAV-VDB:".to_owned()),
        "{:?}",
        report.warnings
    );
}

#[tokio::test]
async fn instream_detects_eicar_and_passes_clean_data() {
    let mut rig = ClamdRig::with_fresh_database();
    rig.extra_conf.push("StreamMaxLength 1M".into());
    rig.start();
    let socket = rig.socket();

    let eicar = clamd_rig::eicar();
    assert_eq!(
        clamd::scan_stream(&socket, &eicar[..]).await,
        ScanResult::Found(vec![EICAR_SIGNATURE.to_owned()])
    );
    assert_eq!(
        clamd::scan_stream(&socket, &b"just a school essay"[..]).await,
        ScanResult::Clean
    );
    // Several chunks, the last one partial.
    let big = vec![b'a'; 3 * clamd::INSTREAM_CHUNK + 17];
    assert_eq!(
        clamd::scan_stream(&socket, &big[..]).await,
        ScanResult::Clean
    );
    // Beyond clamd's StreamMaxLength: clamd's own reason, not a bare broken pipe.
    let too_big = vec![0u8; 2 * 1024 * 1024];
    match clamd::scan_stream(&socket, &too_big[..]).await {
        ScanResult::Error(e) => assert!(e.contains("size limit exceeded"), "{e}"),
        other => panic!("expected a size-limit error, got {other:?}"),
    }

    rig.stop();
    match clamd::scan_stream(&socket, &eicar[..]).await {
        ScanResult::Error(e) => assert!(e.starts_with("cannot connect to clamd at "), "{e}"),
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[tokio::test]
async fn ping_and_version_against_real_clamd() {
    let mut rig = ClamdRig::with_fresh_database();
    rig.start();
    let t = Duration::from_secs(5);
    assert!(clamd::ping(&rig.socket(), t).await.unwrap());
    let reply = clamd::version(&rig.socket(), t).await.unwrap();
    let v = caretaker_agent::probe::antivirus::parse::parse_version_reply(&reply);
    assert_eq!(v.warnings, Vec::<String>::new());
    assert_eq!(v.value.unwrap().daily_version, Some(DEFAULT_DAILY_VERSION));
}

// ---------------------------------------------------------------------------------------------
// The run loop, under a paused clock: intervals pass instantly, clamd and the files are real.
// ---------------------------------------------------------------------------------------------

async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<NewEvent>) -> NewEvent {
    // Generous in paused time: the probe's own interval is an hour.
    tokio::time::timeout(Duration::from_secs(10 * 3600), rx.recv())
        .await
        .expect("an event within ten check intervals")
        .expect("probe still running")
}

/// Lets `intervals` check intervals pass and asserts the probe emitted nothing.
async fn assert_quiet(rx: &mut tokio::sync::mpsc::Receiver<NewEvent>, intervals: u64) {
    let waited = tokio::time::timeout(Duration::from_secs(intervals * 3600 + 1), rx.recv()).await;
    assert!(waited.is_err(), "unexpected event: {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn run_emits_status_at_start_and_then_only_on_change() {
    let mut rig = ClamdRig::with_fresh_database();
    rig.start();
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(Arc::new(PolicyDocument::default()));
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let probe = tokio::spawn(antivirus::run(
        config_for(&rig),
        policy_rx,
        EventSink::new(tx),
        shutdown.clone(),
    ));

    let first = next_event(&mut rx).await;
    assert_eq!(first.kind, "antivirus.status");
    assert_eq!(first.user, None);
    assert_eq!(first.details["status"], "current");
    assert_eq!(first.details["products"][0]["service_responding"], true);
    assert_quiet(&mut rx, 3).await;

    rig.stop();
    let second = next_event(&mut rx).await;
    assert_eq!(second.details["status"], "disabled");
    assert_eq!(second.details["products"][0]["service_responding"], false);
    assert_quiet(&mut rx, 3).await;

    // clamd comes back with a ten-day-old database.
    rig.clear_databases();
    rig.install_daily(26990, Some(10));
    rig.start();
    let third = next_event(&mut rx).await;
    assert_eq!(third.details["status"], "stale");
    assert_quiet(&mut rx, 2).await;

    // A policy change is applied at once (no interval passes) and changes the status.
    let before = tokio::time::Instant::now();
    policy_tx.send_replace(Arc::new(PolicyDocument {
        antivirus: AntivirusPolicy {
            max_signature_age_hours: 14 * 24,
            ..Default::default()
        },
        ..Default::default()
    }));
    let fourth = next_event(&mut rx).await;
    assert_eq!(fourth.details["status"], "current");
    assert_eq!(fourth.details["max_signature_age_hours"], 336);
    assert!(tokio::time::Instant::now() - before < Duration::from_secs(3600));
    assert_quiet(&mut rx, 2).await;

    shutdown.cancel();
    probe.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn run_with_no_antivirus_reports_missing_once_and_stops_on_shutdown() {
    let rig = ClamdRig::new();
    let (_policy_tx, policy_rx) = tokio::sync::watch::channel(Arc::new(PolicyDocument::default()));
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let probe = tokio::spawn(antivirus::run(
        config_for(&rig),
        policy_rx,
        EventSink::new(tx),
        shutdown.clone(),
    ));
    assert_eq!(next_event(&mut rx).await.details["status"], "missing");
    assert_quiet(&mut rx, 5).await;
    shutdown.cancel();
    probe.await.unwrap();
}
