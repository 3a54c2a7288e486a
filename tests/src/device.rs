//! Speaking to the collector as an enrolled device: gRPC channels, raw batches and events, TLS refusals.
use crate::*;

/// A gRPC channel to the collector speaking as the device enrolled in `state`.
pub async fn device_channel(state: &Path, addr: &str) -> tonic::transport::Channel {
    use caretaker_agent::tls;
    let read = |n: &str| std::fs::read_to_string(state.join(n)).unwrap();
    let ca = tls::certs_from_pem(&read("ca.pem")).unwrap().remove(0);
    let cfg = tls::device_config(
        ca,
        tls::certs_from_pem(&read("device.pem")).unwrap(),
        tls::key_from_pem(&read("device.key")).unwrap(),
    )
    .unwrap();
    caretaker_agent::connect::channel(addr, cfg)
        .await
        .expect("device channel")
}

/// Sends `events` in one batch as the enrolled device in `state`, naming itself `hostname` as
/// its agent would, and waits for the acknowledgement of the last.
pub fn send_as_device(
    collector: &Collector,
    state: &Path,
    hostname: &str,
    events: Vec<caretaker_proto::pb::Event>,
) {
    use caretaker_proto::pb;
    let addr = collector.grpc_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = events.iter().map(|e| e.seq).max().unwrap();
    rt.block_on(async {
        let mut client =
            pb::telemetry_client::TelemetryClient::new(device_channel(state, &addr).await);
        let batch = pb::EventBatch {
            events,
            agent: Some(pb::AgentInfo {
                hostname: hostname.into(),
                os: "Debian GNU/Linux 12".into(),
                agent_version: "test".into(),
            }),
        };
        let mut acks = client
            .stream_events(tokio_stream::iter(vec![batch]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acks.message().await.unwrap().unwrap().through_seq, n);
    });
}

/// A pupil's USB stick refused by the policy (`usb.inserted`, decision `block`): a
/// safeguarding matter for the DSL.
pub fn pupil_stick(seq: u64, user: &str, serial: &str) -> caretaker_proto::pb::Event {
    let d = serde_json::json!({"mass_storage": true, "account": "pupil", "decision": "block",
        "antivirus_current": true, "serial": serial, "product": "Cruzer Blade"});
    let mut e = pb_event(seq, "usb.inserted", d.as_object().unwrap().clone());
    e.user = user.into();
    e
}

/// A protobuf event for hand-made batches.
pub fn pb_event(
    seq: u64,
    kind: &str,
    details: serde_json::Map<String, Value>,
) -> caretaker_proto::pb::Event {
    caretaker_proto::pb::Event {
        seq,
        occurred_at: Some(caretaker_proto::convert::timestamp_from(chrono::Utc::now())),
        user: String::new(),
        kind: kind.into(),
        details: Some(caretaker_proto::convert::struct_from_json(&details)),
    }
}

/// Opens TLS to `addr` with `config`, then tries to use the connection.
/// Returns the error the server's refusal produced, or `None` if the server accepted.
pub async fn tls_refusal(addr: SocketAddr, config: rustls::ClientConfig) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    // In TLS 1.3 the server judges the client certificate after the client
    // finishes its side, so the refusal arrives as an alert on the first read.
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => None,
    }
}
