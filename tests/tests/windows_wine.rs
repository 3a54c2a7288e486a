//! The Windows agent end to end under Wine: the real `caretaker-agent.exe` (built by `scripts/windows.sh build`) against a real collector on loopback.
//!
//! Proven here: enrolment from a bundle, the stream and the exactly-once store (`agent.started`
//! stored), a program saved into the user's profile reported (`executable.in_user_area`,
//! AppData left out), Windows' own inactivity limit set from the policy and changed with it (read back
//! with `reg query`), the antivirus probe's PowerShell reads (Wine's PowerShell is a stub, so the status
//! is `unknown` with both reasons), the software probe's Uninstall-key reading (an entry added with `reg import` while
//! the agent runs becomes `software.installed`, its removal `software.removed`), the service
//! under Wine's Service Control Manager (install, start, stop, uninstall), and the MSI (install
//! with `BUNDLE`, enrolment and the service; removal refused without the uninstall code and
//! reported, then accepted with it), and USB storage from Windows' Plug and Play registry
//! (the sticks' entries written by the test, Wine having no USB: reported, judged, blocked as
//! far as Wine allows, unplugged; a stick allowed after a scan gets a Wine drive, whose scan
//! is incomplete without Defender, so it is blocked). Not here, because Wine has none of it: Defender's answers,
//! `LockWorkStation` and real input, real devices, `pnputil` (README, "Windows").

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use caretaker_tests::wine_rig::{Wine, agent_msi};
use caretaker_tests::{Collector, bin, run};
use serde_json::{Value, json};

/// `bundle create` for `uses` laptops, written into the prefix as `C:\school.caretaker`.
fn bundle_into(collector: &Collector, wine: &Wine, uses: u32) {
    let out = wine.c_drive().join("school.caretaker");
    let (ok, stdout, err) = run(Command::new(bin("caretaker-collector"))
        .args(["bundle", "create", "--data-dir"])
        .arg(&collector.dir)
        .args(["--collector", &collector.grpc_addr()])
        .args(["--uses", &uses.to_string(), "--label", "Wine", "--out"])
        .arg(&out));
    assert!(ok, "bundle create: {stdout}{err}");
}

/// Enrols the `.exe` with the bundle into `state`; the device id.
fn enrol(wine: &Wine, state: &str) -> String {
    let (ok, out, err) = wine.agent(&[
        "enroll",
        "--bundle",
        r"C:\school.caretaker",
        "--state-dir",
        state,
    ]);
    assert!(ok, "enroll under Wine: {out}{err}");
    enrolled_device(&out)
}

/// The device id in `Enrolled as device ID with ...`.
fn enrolled_device(said: &str) -> String {
    said.split("Enrolled as device ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no enrolment line in: {said}"))
        .to_string()
}

/// Waits until the collector has stored an event of `kind` from `device` matching `details`.
fn wait_event(
    c: &Collector,
    wine: &Wine,
    device: &str,
    kind: &str,
    what: &str,
    details: impl Fn(&Value) -> bool,
) -> Value {
    let api = c.api();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let events = api.all_events(device);
        if let Some(e) = events
            .iter()
            .find(|e| e["kind"] == kind && details(&e["details"]))
        {
            return e.clone();
        }
        if Instant::now() > deadline {
            let kinds: Vec<_> = events.iter().map(|e| e["kind"].to_string()).collect();
            panic!(
                "timed out after 90 s waiting for {what}; stored from {device}: {kinds:?}\n\
                 the agent's log:\n{}\nthe service's log:\n{}",
                wine.agent_log(),
                wine.service_log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const GAME_KEY: &str =
    r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\CaretakerTestGame";

#[test]
fn the_exe_enrols_from_a_bundle_streams_and_reports_an_uninstall_entry_added_while_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let wine = Wine::fresh();
    bundle_into(&collector, &wine, 1);

    let state = r"C:\caretaker-state";
    let device = enrol(&wine, state);
    assert!(wine.c_drive().join("caretaker-state/device.key").is_file());

    // A reinstall keeps its enrolment; without --if-not-enrolled a second enrolment is refused.
    let (ok, out, err) = wine.agent(&[
        "enroll",
        "--bundle",
        r"C:\school.caretaker",
        "--if-not-enrolled",
        "--state-dir",
        state,
    ]);
    assert!(
        ok && out.contains(&format!("Already enrolled as device {device}")),
        "{out}{err}"
    );
    let (ok, _, err) = wine.agent(&[
        "enroll",
        "--bundle",
        r"C:\school.caretaker",
        "--state-dir",
        state,
    ]);
    assert!(!ok && err.contains("already enrolled"), "{err}");

    // Profiles walked every 2 s instead of every minute, so the test is quick.
    std::fs::write(
        wine.c_drive().join("agent.toml"),
        "[software]\nprofile_poll = \"2s\"\n",
    )
    .unwrap();
    let _agent = wine.spawn_agent(&["run", "--state-dir", state, "--config", r"C:\agent.toml"]);
    let started = wait_event(
        &collector,
        &wine,
        &device,
        "agent.started",
        "agent.started from the .exe",
        |_| true,
    );
    assert!(
        started["details"]["os"]
            .as_str()
            .is_some_and(|o| o.contains("Windows")),
        "the OS is read from the registry: {started}; log: {}",
        wine.agent_log()
    );
    wait_event(
        &collector,
        &wine,
        &device,
        "software.inventory",
        "the start-up inventory",
        |_| true,
    );
    // The antivirus probe asks Windows PowerShell; Wine's is a stub that prints nothing, so
    // the honest answer is "unknown", naming both reads, never "missing".
    let antivirus = wait_event(
        &collector,
        &wine,
        &device,
        "antivirus.status",
        "antivirus.status from the PowerShell reads",
        |_| true,
    );
    assert_eq!(antivirus["details"]["status"], "unknown", "{antivirus}");
    let reason = antivirus["details"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("Windows could not be asked: Defender: `Get-MpComputerStatus")
            && reason.contains("; Security Center: "),
        "{antivirus}"
    );

    // Screen lock: the agent sets Windows' own inactivity limit to the policy's idle time
    // (read back with Windows' reg.exe), and follows a policy change.
    let compliance = |what: &str, reason: &str| {
        let reason = reason.to_string();
        wait_event(
            &collector,
            &wine,
            &device,
            "screen.compliance",
            what,
            move |d| d["reason"].as_str().is_some_and(|r| r.starts_with(&reason)),
        )["details"]["state"]
            .clone()
    };
    let enforced = compliance(
        "compliance from the machine limit",
        "Windows locks a laptop left idle for 300 s",
    );
    assert_eq!(enforced, "enforced");
    assert_eq!(inactivity_limit(&wine), Some(300));
    let api = collector.api();
    let (_, current) = api.get("/api/v1/policy");
    let mut policy = current["policy"].clone();
    policy["screen_lock"]["idle_timeout_secs"] = json!(600);
    let (st, v) = api.put("/api/v1/policy", &json!({ "policy": policy }));
    assert_eq!(st, 200, "{v}");
    let enforced = compliance(
        "the new limit in force",
        "Windows locks a laptop left idle for 600 s",
    );
    assert_eq!(enforced, "enforced");
    assert_eq!(inactivity_limit(&wine), Some(600));
    // A policy that leaves Windows alone changes nothing there, and says the limit is too long.
    policy["screen_lock"]["idle_timeout_secs"] = json!(120);
    policy["screen_lock"]["windows_inactivity_limit"] = json!(false);
    let (st, v) = api.put("/api/v1/policy", &json!({ "policy": policy }));
    assert_eq!(st, 200, "{v}");
    let state = compliance(
        "compliance with a longer Windows limit",
        "Windows' own inactivity limit is 600 s, longer than the policy's 120 s",
    );
    assert_eq!(state, "cannot_enforce");
    assert_eq!(inactivity_limit(&wine), Some(600));

    wine.reg_import(&format!(
        "[{GAME_KEY}]\r\n\"DisplayName\"=\"Caretaker Test Game\"\r\n\"DisplayVersion\"=\"1.2.3\"\r\n\"Publisher\"=\"Test\"\r\n"
    ));
    let installed = wait_event(
        &collector,
        &wine,
        &device,
        "software.installed",
        "software.installed for the new Uninstall entry",
        |d| d["name"] == "Caretaker Test Game",
    );
    assert_eq!(installed["details"]["version"], "1.2.3", "{installed}");
    assert_eq!(installed["details"]["source"], "windows", "{installed}");

    wine.reg_import(&format!("[-{GAME_KEY}]\r\n"));
    wait_event(
        &collector,
        &wine,
        &device,
        "software.removed",
        "software.removed once the entry is gone",
        |d| d["name"] == "Caretaker Test Game",
    );

    // A program saved into the user's Downloads is reported; one in AppData (where installed
    // programs keep their updaters) is not.
    let profile = wine_user_profile(&wine);
    let user = profile.file_name().unwrap().to_string_lossy().into_owned();
    let mut exe = b"MZ".to_vec();
    exe.resize(4096, 0x90);
    let updater = profile.join("AppData/Local/Temp/updater.exe");
    std::fs::create_dir_all(updater.parent().unwrap()).unwrap();
    std::fs::write(&updater, &exe).unwrap();
    let downloads = profile.join("Downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    assert!(
        !downloads.is_symlink(),
        "the prefix's Downloads must not lead to this machine's home"
    );
    std::fs::write(downloads.join("game.exe"), &exe).unwrap();
    let found = wait_event(
        &collector,
        &wine,
        &device,
        "executable.in_user_area",
        "executable.in_user_area for the download",
        |d| d["path"] == r"Downloads\game.exe",
    );
    assert_eq!(found["user"], user.as_str(), "{found}");
    assert_eq!(found["details"]["type"], "windows_exe", "{found}");
    assert_eq!(found["details"]["change"], "created", "{found}");
    let paths: Vec<String> = collector
        .api()
        .all_events(&device)
        .into_iter()
        .filter(|e| e["kind"] == "executable.in_user_area")
        .map(|e| e["details"]["path"].to_string())
        .collect();
    assert_eq!(
        paths,
        [r#""Downloads\\game.exe""#],
        "AppData is not searched"
    );
}

/// The Wine user's profile folder (`C:\users\<unix user>`).
fn wine_user_profile(wine: &Wine) -> std::path::PathBuf {
    std::fs::read_dir(wine.c_drive().join("users"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "Public"))
        .expect("a user's profile in the prefix")
}

/// `InactivityTimeoutSecs` as Windows' own `reg query` shows it (`0x12c`), if set.
fn inactivity_limit(wine: &Wine) -> Option<u32> {
    let (_, out, _) = wine.run(&[
        "reg",
        "query",
        r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System",
        "/v",
        "InactivityTimeoutSecs",
    ]);
    out.lines()
        .find(|l| l.trim_start().starts_with("InactivityTimeoutSecs"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
}

/// `sc query CaretakerAgent`'s STATE line, or None once the service does not exist.
fn service_state(wine: &Wine) -> Option<String> {
    let (_, out, _) = wine.run(&["sc", "query", "CaretakerAgent"]);
    out.lines()
        .find(|l| l.trim_start().starts_with("STATE"))
        .map(|l| l.split_whitespace().last().unwrap_or_default().to_string())
}

#[test]
fn the_agent_runs_as_a_service_under_wines_service_control_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let wine = Wine::fresh();
    bundle_into(&collector, &wine, 1);
    // The service keeps its state in ProgramData, found through the profile list (a service's
    // own %ProgramData% differs under Wine).
    let (ok, out, err) = wine.agent(&["enroll", "--bundle", r"C:\school.caretaker"]);
    assert!(ok, "{out}{err}");
    let device = enrolled_device(&out);
    assert!(
        wine.c_drive()
            .join("ProgramData/Caretaker/enrollment.json")
            .is_file()
    );

    let (ok, out, err) = wine.agent(&["service", "install"]);
    assert!(
        ok && out.contains("Installed the CaretakerAgent service"),
        "{out}{err}"
    );
    // The SCM's own record of it (Wine's `sc qc` prints nothing): automatic start, `service run`.
    let (ok, out, err) = wine.run(&[
        "reg",
        "query",
        r"HKLM\SYSTEM\CurrentControlSet\Services\CaretakerAgent",
    ]);
    assert!(ok, "{out}{err}");
    let value = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in: {out}"))
            .to_string()
    };
    // Quoted by windows-service where the path has a space (an unquoted path with spaces
    // would let C:\Program.exe run as the service).
    let image = value("ImagePath");
    assert!(
        image.contains("caretaker-agent.exe") && image.ends_with("caretaker-agent.exe service run"),
        "{out}"
    );
    assert!(value("Start").ends_with("0x2"), "automatic start: {out}");
    let (ok, out, err) = wine.agent(&["service", "start"]);
    // Wine may already have started an automatic service when the last command booted it.
    assert!(ok || err.contains("already running"), "{out}{err}");
    wait_event(
        &collector,
        &wine,
        &device,
        "agent.started",
        "agent.started from the service",
        |_| true,
    );
    assert_eq!(service_state(&wine).as_deref(), Some("RUNNING"));
    let log = wine.c_drive().join("ProgramData/Caretaker/agent.log");
    assert!(
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Connected to the collector")),
        "the service logs to {}",
        log.display()
    );

    let (ok, out, err) = wine.agent(&["service", "stop"]);
    assert!(ok, "{out}{err}");
    wait_event(
        &collector,
        &wine,
        &device,
        "agent.stopping",
        "agent.stopping when the service stops",
        |d| d["reason"] == "service stopped",
    );
    let (ok, out, err) = wine.agent(&["service", "uninstall"]);
    assert!(
        ok && out.contains("Removed the CaretakerAgent service"),
        "{out}{err}"
    );
    assert_eq!(service_state(&wine), None, "the service is gone");
}

/// `msiinfo export MSI TABLE` as text.
fn msi_table(msi: &Path, table: &str) -> String {
    let (ok, out, err) = run(Command::new("msiinfo").arg("export").arg(msi).arg(table));
    assert!(ok, "msiinfo export {table}: {err}");
    out
}

#[test]
fn the_msi_installs_enrols_and_starts_the_service_and_is_removed_only_with_the_uninstall_code() {
    let msi = agent_msi();
    // What a technician's deployment tool reads: the service, the file, the properties.
    let services = msi_table(&msi, "ServiceInstall");
    assert!(
        services.contains("CaretakerAgent") && services.contains("service run"),
        "{services}"
    );
    assert!(msi_table(&msi, "File").contains("caretaker-agent.exe"));
    let props = msi_table(&msi, "Property");
    assert!(
        props
            .lines()
            .any(|l| l.starts_with("SecureCustomProperties")
                && l.contains("BUNDLE")
                && l.contains("UNINSTALLCODE")),
        "a managed install passes BUNDLE and UNINSTALLCODE on: {props}"
    );
    let actions = msi_table(&msi, "CustomAction");
    assert!(
        actions.contains("enroll --bundle \"[BUNDLE]\" --if-not-enrolled"),
        "{actions}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let wine = Wine::fresh();
    bundle_into(&collector, &wine, 1);
    std::fs::copy(&msi, wine.c_drive().join("agent.msi")).unwrap();
    let (ok, out, err) = wine.run(&[
        "msiexec",
        "/i",
        r"C:\agent.msi",
        r"BUNDLE=C:\school.caretaker",
        "/qn",
    ]);
    assert!(ok, "msiexec /i: {out}{err}");
    assert!(
        wine.c_drive()
            .join("Program Files/Caretaker/caretaker-agent.exe")
            .is_file()
    );
    let enrolment: Value = serde_json::from_slice(
        &std::fs::read(wine.c_drive().join("ProgramData/Caretaker/enrollment.json"))
            .expect("the MSI enrolled the laptop"),
    )
    .unwrap();
    let device = enrolment["device_id"].as_str().unwrap().to_string();
    wait_event(
        &collector,
        &wine,
        &device,
        "agent.started",
        "agent.started from the installed service",
        |_| true,
    );

    // Removal without the right code fails, leaves the agent, and is reported.
    let (ok, _, _) = wine.run(&[
        "msiexec",
        "/x",
        r"C:\agent.msi",
        "UNINSTALLCODE=AAAA-BBBB-CCCC",
        "/qn",
    ]);
    assert!(!ok, "a wrong code must fail the removal");
    assert!(
        wine.c_drive()
            .join("Program Files/Caretaker/caretaker-agent.exe")
            .is_file()
    );
    wait_event(
        &collector,
        &wine,
        &device,
        "agent.uninstall_refused",
        "the refused removal reported",
        |d| d["action"] == "MSI removal" && d["reason"] == "wrong code",
    );
    // The check comes before anything is changed: the agent was never stopped.
    assert_eq!(service_state(&wine).as_deref(), Some("RUNNING"));
    assert_eq!(
        wine.service_log().matches("Agent stopping").count(),
        0,
        "a refused removal stopped the agent: {}",
        wine.service_log()
    );

    let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
        .args(["device", "uninstall-code", "--data-dir"])
        .arg(&collector.dir)
        .arg(&device));
    assert!(ok, "{out}{err}");
    let code = out.trim().to_string();
    assert!(
        err.contains(&format!(
            "as an administrator: msiexec /x caretaker-agent.msi UNINSTALLCODE={code} /qn"
        )),
        "the command fits a Windows laptop: {err}"
    );
    let (ok, out, err) = wine.run(&[
        "msiexec",
        "/x",
        r"C:\agent.msi",
        &format!("UNINSTALLCODE={code}"),
        "/qn",
    ]);
    assert!(ok, "msiexec /x with the code: {out}{err}");
    // Not checked: that the .exe is gone. Wine's StopServices does not wait for the service to
    // stop (Windows waits up to 30 s), so RemoveFiles meets the running image and leaves it.
    wait_event(
        &collector,
        &wine,
        &device,
        "agent.uninstalled",
        "agent.uninstalled after the removal",
        |d| d["code_verified"] == true,
    );
    assert_eq!(service_state(&wine), None, "the service went with the MSI");
}

/// What Windows' Plug and Play manager writes for a SanDisk stick, written here by the test:
/// Wine has no USB devices, so this stands in for the device (said in the README).
const STICK_KEYS: &str = "[HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Enum\\USBSTOR\\Disk&Ven_SanDisk&Prod_Cruzer_Blade&Rev_1.00\\4C530001230515115343&0]\r\n\
\"FriendlyName\"=\"SanDisk Cruzer Blade USB Device\"\r\n\r\n\
[HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Enum\\USB\\VID_0781&PID_5567\\4C530001230515115343]\r\n\
\"LocationInformation\"=\"Port_#0002.Hub_#0001\"\r\n\r\n\
[HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\USBSTOR\\Enum]\r\n\
\"0\"=\"USB\\\\VID_0781&PID_5567\\\\4C530001230515115343\"\r\n\
\"Count\"=dword:00000001\r\n";

#[test]
fn usb_storage_is_reported_judged_blocked_and_scanned_as_far_as_wine_allows() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let api = collector.api();
    let (_, current) = api.get("/api/v1/policy");
    let mut policy = current["policy"].clone();
    policy["removable_media"]["enforce"] = json!(true);
    policy["removable_media"]["pupil_storage"] = json!("block");
    // Everyone is a pupil here, whoever Wine says is at the console.
    policy["removable_media"]["pupils"]["username_patterns"] = json!(["*"]);
    let (st, v) = api.put("/api/v1/policy", &json!({ "policy": policy }));
    assert_eq!(st, 200, "{v}");

    let wine = Wine::fresh();
    bundle_into(&collector, &wine, 1);
    let state = r"C:\caretaker-state";
    let device = enrol(&wine, state);
    let _agent = wine.spawn_agent(&["run", "--state-dir", state]);
    wait_event(
        &collector,
        &wine,
        &device,
        "agent.started",
        "agent.started",
        |_| true,
    );

    wine.reg_import(STICK_KEYS);
    let inserted = wait_event(
        &collector,
        &wine,
        &device,
        "usb.inserted",
        "usb.inserted for the stick",
        |_| true,
    );
    let d = &inserted["details"];
    assert_eq!(d["device_id"], "0781:5567", "{inserted}");
    assert_eq!(d["serial"], "4C530001230515115343", "{inserted}");
    assert_eq!(d["manufacturer"], "SanDisk", "{inserted}");
    assert_eq!(d["product"], "Cruzer Blade", "{inserted}");
    assert_eq!(d["sys_name"], "Port_#0002.Hub_#0001", "{inserted}");
    assert_eq!(d["mass_storage"], true, "{inserted}");
    assert_eq!(d["decision"], "block", "{inserted}");
    assert_eq!(d["account"], "pupil", "{inserted}");
    // The console user, if Wine shows one, is the desktop shell's owner: the prefix's user.
    let user = wine_user_profile(&wine)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        inserted["user"].is_null() || inserted["user"] == user.as_str(),
        "{inserted}"
    );
    assert!(
        !inserted.to_string().contains("VID_0781"),
        "the instance id stays on the laptop: {inserted}"
    );
    // Wine has no pnputil: the block is reported as not enforced, with why.
    let blocked = wait_event(
        &collector,
        &wine,
        &device,
        "usb.blocked",
        "usb.blocked for the stick",
        |_| true,
    );
    assert_eq!(blocked["details"]["enforced"], false, "{blocked}");
    let reason = blocked["details"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("USB storage is blocked for ")
            && reason.contains("; not removed: cannot run ")
            && reason.contains("pnputil.exe"),
        "{blocked}"
    );

    // Unplugged: Windows drops it from the driver's list.
    wine.reg_import(
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\USBSTOR\\Enum]\r\n\"0\"=-\r\n\"Count\"=dword:00000000\r\n",
    );
    let removed = wait_event(
        &collector,
        &wine,
        &device,
        "usb.removed",
        "usb.removed once the stick is gone",
        |_| true,
    );
    assert_eq!(removed["details"]["serial"], "4C530001230515115343");
    let inserts = api
        .all_events(&device)
        .into_iter()
        .filter(|e| e["kind"] == "usb.inserted")
        .count();
    assert_eq!(inserts, 1, "one stick, one arrival");

    // Pupils may use storage after a virus scan: a second stick, with a drive of its own, is
    // scanned with Defender's MpCmdRun, which Wine does not have, so the scan is incomplete
    // and the stick is blocked rather than let through unscanned.
    policy["removable_media"]["pupil_storage"] = json!("allow_after_scan");
    let (st, v) = api.put("/api/v1/policy", &json!({ "policy": policy }));
    assert_eq!(st, 200, "{v}");
    let stick = tmp.path().join("stick");
    std::fs::create_dir(&stick).unwrap();
    std::os::unix::fs::symlink(&stick, wine.prefix().join("dosdevices/f:")).unwrap();
    let volume = r"_??_USBSTOR#Disk&Ven_Kingston&Prod_DT&Rev_PMAP#60A44C413C2BF1B0A9BA0049&0#{53f56307-b6bf-11d0-94f2-00a0c91efb8b}";
    let hex: Vec<String> = volume
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .map(|b| format!("{b:02x}"))
        .collect();
    wine.reg_import(&format!(
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\MountedDevices]\r\n\"\\\\DosDevices\\\\F:\"=hex:{}\r\n\r\n\
         [HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\USBSTOR\\Enum]\r\n\
         \"0\"=\"USB\\\\VID_0951&PID_1666\\\\60A44C413C2BF1B0A9BA0049\"\r\n\"Count\"=dword:00000001\r\n",
        hex.join(",")
    ));
    let second = |kind: &str, what: &str| {
        wait_event(&collector, &wine, &device, kind, what, |d| {
            d["serial"] == "60A44C413C2BF1B0A9BA0049"
        })
    };
    let inserted = second("usb.inserted", "usb.inserted for the second stick");
    assert_eq!(
        inserted["details"]["decision"], "allow_after_scan",
        "{inserted}"
    );
    let scanned = second("media.scanned", "media.scanned for the second stick");
    assert_eq!(scanned["details"]["block"], "F:", "{scanned}");
    assert_eq!(scanned["details"]["result"], "incomplete", "{scanned}");
    let errors = scanned["details"]["errors"].to_string();
    assert!(
        errors.contains("cannot run ") && errors.contains("MpCmdRun.exe"),
        "{scanned}"
    );
    let blocked = second("usb.blocked", "usb.blocked after the incomplete scan");
    let reason = blocked["details"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("the virus scan did not complete (cannot run "),
        "{blocked}"
    );
}
