//! The agent harness: starting real agent processes and reading their state and spool.
use crate::*;

/// What `caretaker-agent status` prints for the agent in `state`; panics if it fails.
pub fn agent_status(state: &Path) -> String {
    let (ok, out, err) = run(Command::new(bin("caretaker-agent"))
        .args(["status", "--state-dir"])
        .arg(state));
    assert!(ok, "caretaker-agent status failed: {err}");
    out
}

/// Starts `caretaker-agent run` with a config file written from `config_toml`.
pub fn start_agent(state: &Path, config_toml: &str) -> Proc {
    start_agent_with_env(state, config_toml, &[])
}

/// As `start_agent`, with extra environment variables (as systemd would set).
pub fn start_agent_with_env(state: &Path, config_toml: &str, env: &[(&str, &str)]) -> Proc {
    let cfg = state.with_extension("toml");
    std::fs::write(&cfg, config_toml).unwrap();
    let child = Command::new(bin("caretaker-agent"))
        .args(["run", "--state-dir"])
        .arg(state)
        .arg("--config")
        .arg(&cfg)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc {
        child,
        name: "agent".into(),
    }
}

/// As `start_agent`, with the laptop's wall clock `offset` from the real one (libfaketime's
/// syntax: `-2d`, `-400d`), timers unaffected, as on a laptop whose date is wrong. libfaketime
/// is preloaded into the agent itself, not run through the `faketime` wrapper, so killing the
/// process kills the agent (Debian package `faketime`, installed by scripts/install-test-deps.sh).
pub fn start_agent_with_clock(state: &Path, config_toml: &str, offset: &str) -> Proc {
    let lib = ["x86_64", "aarch64"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketimeMT.so.1"))
        .find(|p| Path::new(p).exists())
        .expect("libfaketime: apt-get install faketime (scripts/install-test-deps.sh)");
    start_agent_with_env(
        state,
        config_toml,
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", offset),
            // Only the wall clock is wrong on such a laptop; timers keep running.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

/// Stops an agent cleanly and waits until its `agent.stopping` is stored.
pub fn stop_agent_and_wait_for_stopping(agent: Proc, api: &Api, device: &str) {
    assert!(agent.stop().success(), "the agent did not exit cleanly");
    wait_for(Duration::from_secs(10), "agent.stopping", || {
        api.all_events(device)
            .iter()
            .any(|e| e["kind"] == "agent.stopping")
            .then_some(())
    });
}

/// An enrolled agent with only the software probe on (home folders under `home`), after its
/// start-up inventory has reached the collector. Returns (device id, agent).
pub fn start_software_agent(collector: &Collector, state: &Path, home: &Path) -> (String, Proc) {
    let device = collector.enroll(state);
    std::fs::create_dir_all(home).unwrap();
    let config = format!(
        "[antivirus]\nenabled = false\n[screen_lock]\nenabled = false\n[usb]\nenabled = false\n[software]\nhome_root = {home:?}\n"
    );
    let agent = start_agent(state, &config);
    let api = collector.api();
    wait_for(Duration::from_secs(30), "the start-up inventory", || {
        api.all_events(&device)
            .iter()
            .any(|e| e["kind"] == "software.inventory")
            .then_some(())
    });
    (device, agent)
}

/// Waits for an agent's `status.json` to report an empty spool while connected.
pub fn wait_drained(state: &Path, timeout: Duration) {
    wait_for(timeout, "the agent's spool to drain", || {
        let v: Value =
            serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()?;
        (v["connected"] == true && v["spool_events"] == 0).then_some(())
    });
}

/// Reads every event left in a stopped agent's spool (seq numbers).
pub fn spooled_seqs(state: &Path) -> anyhow::Result<Vec<u64>> {
    let (spool, note) = caretaker_agent::spool::Spool::open(
        &state.join("spool"),
        &state.join("seq.floor.probe"),
        u64::MAX,
    )?;
    // A probe's own reservation file is new, so only damage counts here.
    use caretaker_agent::spool::OpenNote;
    if note
        .iter()
        .any(|n| matches!(n, OpenNote::MovedAside { .. } | OpenNote::Damaged { .. }))
    {
        bail!("spool was unreadable");
    }
    let events = spool
        .read_after(0, usize::MAX, usize::MAX)
        .context("read spool")?;
    Ok(events.iter().map(|e| e.seq).collect())
}
