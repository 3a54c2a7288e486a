//! A full disk: the collector acknowledges and shows only what is durable, refuses new events
//! early below its free-space floor, and recovers by itself when space returns.
//!
//! Needs root: each test mounts a real tmpfs (64 MiB) for the collector's data directory and
//! fills it, with a file and with events sent as enrolled devices (their real certificates).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use caretaker_proto::pb;
use caretaker_tests::*;
use serde_json::json;

/// A tmpfs mounted for the test, unmounted when dropped (lazily, so a process still holding a
/// file there cannot keep it mounted).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        caretaker_tests::require_root("mount a small tmpfs for the collector's data");
        std::fs::create_dir_all(path).unwrap();
        let (ok, _, err) = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path));
        assert!(ok, "mount tmpfs: {err}");
        Self {
            path: path.to_path_buf(),
        }
    }

    fn resize(&self, size: &str) {
        let (ok, _, err) = run(Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path));
        assert!(ok, "remount: {err}");
    }

    /// Bytes still free.
    fn available(&self) -> u64 {
        let (ok, out, err) = run(Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path));
        assert!(ok, "df: {err}");
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Writes a file that leaves about `leave` bytes free.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        let mut left = self.available().saturating_sub(leave);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `init` on the tmpfs, then `serve` with the given free-space floor.
fn collector_on(tmpfs: &Tmpfs, floor: &str) -> Collector {
    let mut c = Collector::start(&tmpfs.path.join("collector"));
    c.stop();
    c.serve_with_args(&["--min-free-space", floor], &[]);
    c
}

/// Events of about 2 KiB each, so a few thousand fill a few MiB.
fn events(seqs: std::ops::RangeInclusive<u64>) -> Vec<pb::Event> {
    let pad = "x".repeat(2000);
    seqs.map(|s| {
        pb_event(
            s,
            "test.padding",
            json!({"pad": pad}).as_object().unwrap().clone(),
        )
    })
    .collect()
}

/// Sends one batch as the device enrolled in `state` on a stream of its own; the ack's
/// `through_seq`, or the status the collector ended the stream with.
fn send(collector: &Collector, state: &Path, batch: Vec<pb::Event>) -> Result<u64, tonic::Status> {
    let addr = collector.grpc_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client =
            pb::telemetry_client::TelemetryClient::new(device_channel(state, &addr).await);
        let batch = pb::EventBatch {
            events: batch,
            agent: None,
        };
        let mut acks = client
            .stream_events(tokio_stream::iter(vec![batch]))
            .await?
            .into_inner();
        match acks.message().await? {
            Some(a) => Ok(a.through_seq),
            None => Err(tonic::Status::unknown("the stream ended without an ack")),
        }
    })
}

/// `/healthz`: its status and text.
fn health(api: &Api) -> (u16, String) {
    api.get_with_cookie("/healthz", "")
}

/// The sequence numbers the API lists for a device, or `None` while it answers 503.
fn listed(api: &Api, device: &str) -> Option<Vec<u64>> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let (st, v) = api.get(&format!(
            "/api/v1/events?device={device}&limit=1000{cursor}"
        ));
        if st == 503 {
            return None;
        }
        assert_eq!(st, 200, "{v}");
        all.extend(v["events"].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return Some(seqs(&all)),
        }
    }
}

/// Small batches, so the disk runs out at a group's commit (as under many agents), not inside a
/// large transaction.
const BATCH: u64 = 10;

#[test]
fn a_full_disk_shows_nothing_unacknowledged_and_recovers_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&tmp.path().join("mnt"), "64M");
    // No floor: this test is about the store meeting ENOSPC itself.
    let collector = collector_on(&tmpfs, "0");
    let api = collector.api();
    let states: Vec<PathBuf> = (0..2)
        .map(|i| tmp.path().join(format!("laptop{i}")))
        .collect();
    let devices: Vec<String> = states.iter().map(|s| collector.enroll(s)).collect();
    assert_eq!(health(&api), (200, "ok".into()));

    tmpfs.fill_leaving(2 << 20);
    // Send as both devices in turn until the store runs out of room.
    let mut acked: BTreeMap<usize, u64> = (0..2).map(|d| (d, 0)).collect();
    let mut sent = acked.clone();
    let refusal = 'fill: {
        for _ in 0..1000 {
            for d in 0..2 {
                let from = sent[&d] + 1;
                sent.insert(d, from + BATCH - 1);
                match send(&collector, &states[d], events(from..=from + BATCH - 1)) {
                    Ok(through) => {
                        assert_eq!(through, from + BATCH - 1);
                        acked.insert(d, through);
                    }
                    Err(status) => break 'fill status,
                }
            }
        }
        panic!("the store never ran out of room");
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains("No space left on device"),
        "{refusal:?}"
    );
    eprintln!("full after acks {acked:?}; refused: {}", refusal.message());

    // While it cannot write, the API lists only what was acknowledged (or answers 503), never
    // the batch that failed; new batches are refused with the reason; healthz says why.
    for _ in 0..3 {
        for d in 0..2 {
            if let Some(s) = listed(&api, &devices[d]) {
                assert_eq!(s, (1..=acked[&d]).collect::<Vec<_>>(), "device {d}");
            }
        }
        let d = 0;
        let again = send(
            &collector,
            &states[d],
            events(acked[&d] + 1..=acked[&d] + BATCH),
        );
        let status = again.expect_err("refused while full");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    let (st, why) = wait_for(
        Duration::from_secs(10),
        "healthz to report the store",
        || {
            let h = health(&api);
            (h.0 != 200).then_some(h)
        },
    );
    assert_eq!(st, 503);
    assert!(why.contains("cannot write"), "{why}");

    // Space returns: the collector takes events again by itself.
    tmpfs.resize("512M");
    let grown = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "healthz ok after space returned",
        || (health(&api).0 == 200).then_some(()),
    );
    let recovered = grown.elapsed();
    // Reopened from disk: exactly what was acknowledged, before anything is resent.
    for d in 0..2 {
        let s = listed(&api, &devices[d]).expect("the store is open");
        assert_eq!(s, (1..=acked[&d]).collect::<Vec<_>>(), "device {d}");
    }
    // Resend everything that was not acknowledged, and a batch more, as an agent would.
    let mut last = BTreeMap::new();
    for d in 0..2 {
        let from = acked[&d] + 1;
        let to = sent[&d].max(from) + BATCH;
        let through = wait_for(Duration::from_secs(10), "a batch accepted", || {
            send(&collector, &states[d], events(from..=to)).ok()
        });
        assert_eq!(through, to);
        last.insert(d, to);
    }
    eprintln!(
        "disk_full: store writable {} ms after the filesystem grew",
        recovered.as_millis()
    );
    // Every event exactly once, and the device's count agrees.
    for d in 0..2 {
        let s = listed(&api, &devices[d]).expect("the store is open");
        assert_eq!(s, (1..=last[&d]).collect::<Vec<_>>(), "device {d}");
        assert_eq!(
            api.device(&devices[d]).unwrap()["event_count"].as_u64(),
            Some(last[&d])
        );
    }
    // The other writes work again too.
    collector.token(&[]);
    let (st, v) = api.put("/api/v1/policy", &json!({"policy": {}}));
    assert_eq!(st, 200, "{v}");
}

#[test]
fn below_the_floor_events_are_refused_kept_by_the_agent_and_delivered_once_room_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&tmp.path().join("mnt"), "64M");
    let collector = collector_on(&tmpfs, "24MiB");
    let api = collector.api();
    let state = tmp.path().join("laptop");
    let device = collector.enroll(&state);
    let agent = start_agent(&state, "heartbeat_interval = \"100ms\"\n");
    wait_for(Duration::from_secs(20), "first events", || {
        (api.device(&device)?["event_count"].as_u64()? > 3).then_some(())
    });

    let filler = tmpfs.fill_leaving(16 << 20);
    let (st, why) = wait_for(
        Duration::from_secs(10),
        "healthz to report the floor",
        || {
            let h = health(&api);
            (h.0 != 200).then_some(h)
        },
    );
    assert_eq!(st, 503);
    assert!(why.contains("nearly full"), "{why}");
    assert!(why.contains("below its floor of 24 MiB"), "{why}");
    // The agent is told why, keeps its events, and stores nothing meanwhile.
    let stored = api.device(&device).unwrap()["event_count"]
        .as_u64()
        .unwrap();
    let spooled = wait_for(Duration::from_secs(20), "the agent to spool", || {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()?;
        let error = v["last_error"].as_str()?;
        let n = v["spool_events"].as_u64()?;
        (error.contains("nearly full") && n > 10).then_some(n)
    });
    assert!(spooled > 10);
    let (st, v) = api.get(&format!("/api/v1/events?device={device}&limit=1000"));
    assert_eq!(st, 200, "reads still work below the floor: {v}");
    assert_eq!(
        api.device(&device).unwrap()["event_count"].as_u64(),
        Some(stored),
        "nothing stored below the floor"
    );

    std::fs::remove_file(filler).unwrap();
    wait_for(Duration::from_secs(10), "healthz ok", || {
        (health(&api).0 == 200).then_some(())
    });
    // The agent's backoff after a few refusals is a few seconds at most.
    wait_drained(&state, Duration::from_secs(30));
    stop_agent_and_wait_for_stopping(agent, &api, &device);
    let events = api.all_events(&device);
    let s = seqs(&events);
    let n = *s.last().unwrap();
    assert_eq!(
        s,
        (1..=n).collect::<Vec<_>>(),
        "every event once, none lost"
    );
    assert!(n > stored + spooled / 2, "the spooled events arrived");
}

/// An engine's recovery may write at open (sled, the embedded engine until 2026-11, was left
/// unreadable by an open that met ENOSPC): so `serve` on a disk with less than 32 MiB free refuses to open it, and starts once
/// there is room, with everything it had.
#[test]
fn serve_on_a_nearly_full_disk_refuses_to_open_the_store_rather_than_damage_it() {
    let tmp = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&tmp.path().join("mnt"), "64M");
    let mut collector = collector_on(&tmpfs, "0");
    let state = tmp.path().join("laptop");
    let device = collector.enroll(&state);
    assert_eq!(send(&collector, &state, events(1..=BATCH)).unwrap(), BATCH);
    collector.stop();

    let filler = tmpfs.fill_leaving(8 << 20);
    let mut child = Command::new(bin("caretaker-collector"))
        .args(["serve", "--data-dir"])
        .arg(&collector.dir)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve opened the store with 8 MiB free and kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!exited.success(), "serve exited 0 with 8 MiB free");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("free to open safely"), "{err}");

    std::fs::remove_file(filler).unwrap();
    collector.serve_with_args(&["--min-free-space", "0"], &[]);
    let api = collector.api();
    assert_eq!(listed(&api, &device), Some((1..=BATCH).collect::<Vec<_>>()));
}
