//! The security properties of the pipeline, each against a real collector process.

use std::sync::Arc;
use std::time::Duration;

use caretaker_proto::pb;
use caretaker_tests::*;
use rustls::RootCertStore;
use serde_json::{Map, Value};

fn client_config(ca_pem: &[u8], identity: Option<(String, String)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in caretaker_agent::tls::certs_from_pem(std::str::from_utf8(ca_pem).unwrap()).unwrap() {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                caretaker_agent::tls::certs_from_pem(&cert).unwrap(),
                caretaker_agent::tls::key_from_pem(&key).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn clients_without_a_school_certificate_are_refused_at_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let ca = std::fs::read(collector.dir.join("ca.pem")).unwrap();
    let rt = rt();

    let none = rt.block_on(tls_refusal(collector.grpc, client_config(&ca, None)));
    let none = none.expect("a client with no certificate must be refused");
    assert!(none.contains("alert"), "{none}");

    // A certificate from some other CA, even one naming a real-looking device.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::default();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(other_params, other_key);
    let dev_key = rcgen::KeyPair::generate().unwrap();
    let mut dev_params = rcgen::CertificateParams::new(vec![]).unwrap();
    dev_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "00000000-0000-0000-0000-000000000000",
    );
    let dev = dev_params.signed_by(&dev_key, &issuer).unwrap();
    let foreign = rt.block_on(tls_refusal(
        collector.grpc,
        client_config(&ca, Some((dev.pem(), dev_key.serialize_pem()))),
    ));
    let foreign = foreign.expect("a foreign certificate must be refused");
    assert!(foreign.contains("alert"), "{foreign}");

    // And the same collector accepts a real device.
    let state = tmp.path().join("agent");
    collector.enroll(&state);
    let read = |n: &str| std::fs::read_to_string(state.join(n)).unwrap();
    let accepted = rt.block_on(tls_refusal(
        collector.grpc,
        client_config(&ca, Some((read("device.pem"), read("device.key")))),
    ));
    assert_eq!(
        accepted, None,
        "an enrolled device's certificate is accepted"
    );
}

#[test]
fn a_device_can_only_send_as_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let id_a = collector.enroll(&a);
    let id_b = collector.enroll(&b);
    let addr = collector.grpc_addr();
    rt().block_on(async {
        let mut client =
            pb::telemetry_client::TelemetryClient::new(device_channel(&a, &addr).await);
        // The batch claims to be B's host; the certificate says A.
        let batch = pb::EventBatch {
            events: (1..=5)
                .map(|s| pb_event(s, "test.claim", Map::new()))
                .collect(),
            agent: Some(pb::AgentInfo {
                hostname: "host-of-b".into(),
                os: "x".into(),
                agent_version: "x".into(),
            }),
        };
        let mut acks = client
            .stream_events(tokio_stream::iter(vec![batch]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acks.message().await.unwrap().unwrap().through_seq, 5);
    });
    let api = collector.api();
    let events = api.all_events(&id_a);
    assert_eq!(seqs(&events), vec![1, 2, 3, 4, 5]);
    assert!(events.iter().all(|e| e["device_id"] == id_a.as_str()));
    assert_eq!(api.device(&id_b).unwrap()["event_count"], 0);
    assert!(api.all_events(&id_b).is_empty());
}

#[test]
fn tokens_obey_uses_and_expiry_and_guessing_is_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let enroll = |token: &str, fp: &str, name: &str| {
        run(std::process::Command::new(bin("caretaker-agent"))
            .args([
                "enroll",
                "--collector",
                &collector.grpc_addr(),
                "--token",
                token,
                "--ca-fingerprint",
                fp,
                "--state-dir",
            ])
            .arg(tmp.path().join(name)))
    };
    let (two, fp) = collector.token(&["--uses", "2"]);
    assert!(enroll(&two, &fp, "a").0);
    assert!(enroll(&two, &fp, "b").0);
    let (ok, _, err) = enroll(&two, &fp, "c");
    assert!(!ok);
    assert!(err.contains("already been used"), "{err}");

    let (brief, _) = collector.token(&["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, _, err) = enroll(&brief, &fp, "d");
    assert!(!ok);
    assert!(err.contains("expired"), "{err}");

    for i in 0..5 {
        let (ok, _, err) = enroll(&format!("cte_guess{i}"), &fp, "e");
        assert!(!ok);
        assert!(err.contains("not recognised"), "{err}");
    }
    // Even a good token is refused from an address that has been guessing.
    let (good, _) = collector.token(&[]);
    let (ok, _, err) = enroll(&good, &fp, "f");
    assert!(!ok);
    assert!(err.contains("too many failed enrolment attempts"), "{err}");
}

#[test]
fn a_revoked_device_can_no_longer_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let id = collector.enroll(&state);
    let _agent = start_agent(&state, "heartbeat_interval = \"100ms\"\n");
    let api = collector.api();
    wait_for(Duration::from_secs(20), "first events", || {
        (!api.all_events(&id).is_empty()).then_some(())
    });

    let (ok, out, err) = run(std::process::Command::new(bin("caretaker-collector"))
        .args(["device", "revoke", &id, "--data-dir"])
        .arg(&collector.dir));
    assert!(ok, "{out}{err}");
    assert!(!api.device(&id).unwrap()["revoked_at"].is_null());

    let read = |n: &str| std::fs::read_to_string(state.join(n)).unwrap();
    let ca = std::fs::read(collector.dir.join("ca.pem")).unwrap();
    let refused = rt().block_on(tls_refusal(
        collector.grpc,
        client_config(&ca, Some((read("device.pem"), read("device.key")))),
    ));
    let refused = refused.expect("the revoked certificate must be refused");
    assert!(refused.contains("alert"), "{refused}");
    // Nothing more is stored for it once its open stream has been cut.
    let settled = api.device(&id).unwrap()["event_count"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let later = api.device(&id).unwrap()["event_count"].as_u64().unwrap();
    assert!(
        later <= settled + 1,
        "events kept arriving after revocation: {settled} -> {later}"
    );
}

#[test]
fn oversized_or_malformed_batches_are_refused_and_earlier_events_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    let id = collector.enroll(&state);
    let addr = collector.grpc_addr();
    let (oversized, malformed) = rt().block_on(async {
        let channel = device_channel(&state, &addr).await;
        let mut client = pb::telemetry_client::TelemetryClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut acks = client
            .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(pb::EventBatch {
            events: (1..=10)
                .map(|s| pb_event(s, "test.ok", Map::new()))
                .collect(),
            agent: None,
        })
        .await
        .unwrap();
        assert_eq!(acks.message().await.unwrap().unwrap().through_seq, 10);
        let mut huge = Map::new();
        huge.insert("blob".into(), Value::String("x".repeat(5 * 1024 * 1024)));
        let _ = tx
            .send(pb::EventBatch {
                events: vec![pb_event(11, "test.big", huge)],
                agent: None,
            })
            .await;
        let oversized = loop {
            match acks.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without an error"),
                Err(s) => break s,
            }
        };

        let mut client =
            pb::telemetry_client::TelemetryClient::new(device_channel(&state, &addr).await);
        let good = pb::EventBatch {
            events: vec![pb_event(12, "test.ok", Map::new())],
            agent: None,
        };
        let bad = pb::EventBatch {
            events: vec![
                pb_event(13, "test.ok", Map::new()),
                pb_event(14, "Not A Kind", Map::new()),
            ],
            agent: None,
        };
        let mut acks = client
            .stream_events(tokio_stream::iter(vec![good, bad]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acks.message().await.unwrap().unwrap().through_seq, 12);
        let malformed = acks.message().await.expect_err("malformed batch refused");
        (oversized, malformed)
    });
    assert!(
        matches!(
            oversized.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "{oversized:?}"
    );
    assert!(
        oversized.message().contains("too large") || oversized.message().contains("length"),
        "{oversized:?}"
    );
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    assert!(
        malformed
            .message()
            .contains("event 2 of the batch (seq 14)"),
        "{malformed:?}"
    );
    // Everything before each bad message is kept; nothing of the bad batches is.
    let stored = seqs(&collector.api().all_events(&id));
    assert_eq!(stored, (1..=10).chain([12]).collect::<Vec<_>>());
}
