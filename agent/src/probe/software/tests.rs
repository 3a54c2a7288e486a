//! Tests of the software probe: pure diffing and event shaping, then the running probe
//! against temp folders (fake home root, Flatpak and dpkg trees). The probe against the
//! machine's real dpkg is `tests/tests/software_dpkg.rs`, beside the one `.deb` builder.
use super::*;
use parse::AptRequester;
use serde_json::{Value, json};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

fn item(name: &str, version: &str) -> SoftwareItem {
    SoftwareItem {
        name: name.into(),
        version: version.into(),
        arch: Some("amd64".into()),
        owner: None,
        path: None,
        installed_at: None,
    }
}

fn key(source: Source, id: &str) -> SoftwareKey {
    SoftwareKey {
        source,
        id: id.into(),
    }
}

fn inv(source: Source, items: &[(&str, &str)]) -> Inventory {
    items
        .iter()
        .map(|(n, v)| (key(source, n), item(n, v)))
        .collect()
}

#[test]
fn replacing_a_source_reports_installs_removals_upgrades_and_leaves_others_alone() {
    let mut all = inv(Source::Dpkg, &[("a", "1"), ("b", "1"), ("c", "1")]);
    all.extend(inv(Source::Snap, &[("a", "9")]));
    let mut fresh = inv(Source::Dpkg, &[("a", "1"), ("b", "2"), ("d", "1")]);
    // Install time alone changing is not an event.
    fresh.get_mut(&key(Source::Dpkg, "a")).unwrap().installed_at = Some(Utc::now());
    let changes = replace_source(&mut all, Source::Dpkg, fresh);
    assert_eq!(
        changes,
        vec![
            Change::Removed(key(Source::Dpkg, "c"), item("c", "1")),
            Change::Upgraded {
                key: key(Source::Dpkg, "b"),
                previous: item("b", "1"),
                current: item("b", "2")
            },
            Change::Installed(key(Source::Dpkg, "d"), item("d", "1")),
        ]
    );
    assert!(all.contains_key(&key(Source::Snap, "a")));
    assert!(all[&key(Source::Dpkg, "a")].installed_at.is_some());
    assert!(replace_source(&mut all, Source::Snap, inv(Source::Snap, &[("a", "9")])).is_empty());
}

#[test]
fn inventory_is_compact_and_split() {
    let mut all = inv(Source::Dpkg, &[("a", "1"), ("b", "2"), ("c", "3")]);
    let mut fp = item("org.x.App", "1.0");
    fp.owner = Some("pupil1".into());
    all.insert(key(Source::Flatpak, "user/pupil1/org.x.App"), fp);
    let one = inventory_details(&all, "B", 1000);
    assert_eq!(one.len(), 1);
    assert_eq!(
        Value::Object(one[0].clone()),
        json!({
            "batch": "B", "part": 1, "parts": 1, "total": 4,
            "fields": ["name", "version", "arch", "owner", "installed_at", "path"],
            "items": {
                "dpkg": [["a", "1", "amd64"], ["b", "2", "amd64"], ["c", "3", "amd64"]],
                "flatpak": [["org.x.App", "1.0", "amd64", "pupil1"]]
            }
        })
    );
    let parts = inventory_details(&all, "B", 3);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1]["part"], json!(2));
    assert_eq!(parts[1]["parts"], json!(2));
    assert_eq!(
        inventory_details(&Inventory::new(), "B", 3).len(),
        1,
        "an empty inventory is still sent"
    );
}

#[test]
fn change_events_carry_what_the_collector_needs() {
    let who = AptRequester {
        user: "jsmith".into(),
        uid: Some(1001),
    };
    let ev = change_event(
        &Change::Upgraded {
            key: key(Source::Dpkg, "b:amd64"),
            previous: item("b", "1"),
            current: item("b", "2"),
        },
        Some(&who),
    );
    assert_eq!(ev.kind, "software.upgraded");
    assert_eq!(ev.user.as_deref(), Some("jsmith"));
    assert_eq!(
        Value::Object(ev.details),
        json!({"source": "dpkg", "name": "b", "version": "2", "previous_version": "1",
               "architecture": "amd64", "scope": "system",
               "requested_by": {"user": "jsmith", "uid": 1001, "via": "apt"}})
    );
}

#[test]
fn paths_route_to_the_right_reread() {
    let cfg = SoftwareProbeConfig::default();
    let r = |p: &str| route(&cfg, Path::new(p));
    assert_eq!(r("/var/lib/dpkg/status"), Route::Dpkg);
    assert_eq!(r("/var/lib/dpkg/status-new"), Route::Ignore);
    assert_eq!(r("/var/lib/dpkg/lock"), Route::Ignore);
    assert_eq!(r("/var/lib/flatpak/app/org.x"), Route::Flatpak);
    assert_eq!(
        r("/home/ann/.local/share/flatpak/app/org.x/current"),
        Route::Flatpak
    );
    assert_eq!(r("/home/ann/.cache/mozilla/x"), Route::Ignore);
    assert_eq!(
        r("/home/ann/Downloads/x"),
        Route::Home("/home/ann/Downloads/x".into())
    );
    assert_eq!(r("/var/lib/snapd/snaps/core_1.snap"), Route::Snap);
    assert_eq!(r("/etc/passwd"), Route::Ignore);
}

#[tokio::test(start_paused = true)]
async fn debounce_waits_for_quiet_but_not_for_ever() {
    let (quiet, max) = (Duration::from_millis(300), Duration::from_secs(3));
    let mut d = Debounce::default();
    assert_eq!(d.due(quiet, max), None);
    let t0 = Instant::now();
    d.touch(t0);
    assert_eq!(d.due(quiet, max), Some(t0 + quiet));
    tokio::time::advance(Duration::from_millis(200)).await;
    d.touch(Instant::now());
    assert!(!d.take_due(Instant::now(), quiet, max));
    assert_eq!(d.due(quiet, max), Some(t0 + Duration::from_millis(500)));
    // A steady trickle of changes: due at first + max regardless.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(200)).await;
        d.touch(Instant::now());
    }
    assert_eq!(d.due(quiet, max), Some(t0 + max));
    assert!(d.take_due(Instant::now(), quiet, max));
    assert_eq!(d.due(quiet, max), None, "reset after firing");
}

// ---------------------------------------------------------------------------------------
// The running probe.

const PUPIL_UID: u32 = 54321;

/// The tests crate's helper for a probe's events (one copy, included by path: that crate
/// depends on this one, so this one cannot depend on it).
#[path = "../../../../tests/src/probe_events.rs"]
mod probe_events;

struct Harness {
    events: probe_events::ProbeEvents<NewEvent>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn start(cfg: SoftwareProbeConfig, policy: SoftwarePolicy) -> Harness {
        let (tx, rx) = mpsc::channel(10_000);
        // The policy sender is dropped at once: the probe must keep its last policy.
        let (_, prx) = watch::channel(Arc::new(PolicyDocument {
            software: policy,
            ..Default::default()
        }));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(cfg, prx, EventSink::new(tx), shutdown.clone()));
        Harness {
            events: probe_events::ProbeEvents::new(rx),
            shutdown,
            task,
        }
    }

    async fn wait_for(&mut self, what: &str, pred: impl Fn(&NewEvent) -> bool) -> NewEvent {
        self.events.wait_for(what, pred).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn is(ev: &NewEvent, kind: &str, field: &str, value: &str) -> bool {
    ev.kind == kind && ev.details.get(field).and_then(Value::as_str) == Some(value)
}

/// A temp tree with a fake dpkg dir, a Flatpak system dir, a passwd file and a home root
/// holding one pupil's home owned by an unused uid.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("dpkg/info")).unwrap();
        fs::write(root.join("dpkg/status"), status(&[("base-files", "12.4")])).unwrap();
        fs::create_dir_all(root.join("flatpak/app")).unwrap();
        fs::write(
            root.join("passwd"),
            format!(
                "root:x:0:0::/root:/bin/sh\npupil1:x:{PUPIL_UID}:{PUPIL_UID}::/home/p1:/bin/bash\n"
            ),
        )
        .unwrap();
        let home = root.join("home/p1");
        fs::create_dir_all(home.join("Downloads")).unwrap();
        fs::create_dir_all(home.join(".cache")).unwrap();
        std::os::unix::fs::chown(&home, Some(PUPIL_UID), Some(PUPIL_UID)).unwrap();
        Tree { _dir: dir, root }
    }

    fn home(&self) -> PathBuf {
        self.root.join("home/p1")
    }

    fn config(&self) -> SoftwareProbeConfig {
        SoftwareProbeConfig {
            dpkg_dir: self.root.join("dpkg"),
            apt_history_log: self.root.join("history.log"),
            flatpak_system_dir: self.root.join("flatpak"),
            home_root: self.root.join("home"),
            passwd_file: self.root.join("passwd"),
            snapd_socket: self.root.join("no-snapd.socket"),
            snapd_snaps_dir: self.root.join("no-snaps"),
            ..Default::default()
        }
    }
}

fn status(pkgs: &[(&str, &str)]) -> String {
    pkgs.iter()
        .map(|(n, v)| format!("Package: {n}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {v}\nDescription: test\n long text\n\n"))
        .collect()
}

/// Replaces dpkg's status file the way dpkg does: write a new file, rename over.
fn dpkg_style_replace(dpkg_dir: &Path, text: &str) {
    fs::write(dpkg_dir.join("status-new"), text).unwrap();
    fs::rename(dpkg_dir.join("status-new"), dpkg_dir.join("status")).unwrap();
}

fn fake_appimage() -> Vec<u8> {
    let mut b = vec![
        0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0x41, 0x49, 0x02, 0, 0, 0, 0, 0,
    ];
    b.extend(std::iter::repeat_n(0xAB, 4096));
    b
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_dpkg_changes_are_reported_with_who_asked_apt() {
    let tree = Tree::new();
    let mut h = Harness::start(tree.config(), SoftwarePolicy::default());
    let inv = h
        .wait_for("inventory", |e| e.kind == "software.inventory")
        .await;
    assert_eq!(inv.details["total"], json!(1));
    assert_eq!(
        inv.details["items"]["dpkg"][0],
        json!(["base-files", "12.4", "amd64"])
    );

    let now = chrono::Local::now().format("%Y-%m-%d  %H:%M:%S");
    fs::write(
        tree.root.join("history.log"),
        format!("\nStart-Date: {now}\nCommandline: apt install openvpn\nRequested-By: pupil1 ({PUPIL_UID})\nInstall: openvpn:amd64 (2.6.3-1)\nUpgrade: base-files:amd64 (12.4, 12.4+deb12u1)\nEnd-Date: {now}\n"),
    )
    .unwrap();
    dpkg_style_replace(
        &tree.root.join("dpkg"),
        &status(&[("base-files", "12.4+deb12u1"), ("openvpn", "2.6.3-1")]),
    );
    let ev = h
        .wait_for("openvpn installed", |e| {
            is(e, "software.installed", "name", "openvpn")
        })
        .await;
    assert_eq!(ev.user.as_deref(), Some("pupil1"));
    assert_eq!(
        ev.details["requested_by"],
        json!({"user": "pupil1", "uid": PUPIL_UID, "via": "apt"})
    );
    assert_eq!(ev.details["source"], json!("dpkg"));
    let up = h
        .wait_for("base-files upgraded", |e| {
            is(e, "software.upgraded", "name", "base-files")
        })
        .await;
    assert_eq!(up.details["previous_version"], json!("12.4"));
    assert_eq!(up.details["version"], json!("12.4+deb12u1"));

    // dpkg -r without apt: no one to attribute it to.
    dpkg_style_replace(
        &tree.root.join("dpkg"),
        &status(&[("base-files", "12.4+deb12u1")]),
    );
    let rm = h
        .wait_for("openvpn removed", |e| {
            is(e, "software.removed", "name", "openvpn")
        })
        .await;
    assert!(rm.details.get("requested_by").is_none());
    assert_eq!(rm.user, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_area_flatpak_appimage_and_executables_are_seen() {
    let tree = Tree::new();
    let home = tree.home();
    // Present before the probe starts: part of the baseline, not reported as new.
    fs::copy("/bin/true", home.join("Downloads/old-tool")).unwrap();
    fs::write(home.join("Downloads/old.AppImage"), fake_appimage()).unwrap();
    let mut h = Harness::start(tree.config(), SoftwarePolicy::default());
    let inv = h
        .wait_for("inventory", |e| e.kind == "software.inventory")
        .await;
    assert_eq!(
        inv.details["items"]["appimage"],
        json!([[
            "old",
            "unknown",
            null,
            "pupil1",
            inv.details["items"]["appimage"][0][4],
            "Downloads/old.AppImage"
        ]])
    );

    // An ELF binary copied into the home folder.
    let elf = fs::read("/bin/true").unwrap();
    fs::write(home.join("Downloads/tool"), &elf).unwrap();
    let ev = h
        .wait_for("ELF executable", |e| {
            is(e, "executable.in_user_area", "path", "Downloads/tool")
        })
        .await;
    assert_eq!(ev.user.as_deref(), Some("pupil1"));
    assert_eq!(ev.details["type"], json!("elf"));
    assert_eq!(ev.details["sha256"], json!(sha256_hex(&elf)));
    assert_eq!(ev.details["size"], json!(elf.len()));
    assert_eq!(ev.details["change"], json!("created"));
    assert!(
        !ev.details
            .values()
            .any(|v| v.as_str().is_some_and(|s| s.len() > 200)),
        "no content sent"
    );

    // An AppImage in a new folder (walked when the folder appears).
    fs::create_dir_all(home.join("Applications/sub")).unwrap();
    let app = fake_appimage();
    fs::write(
        home.join("Applications/sub/Obsidian-1.4.16-x86_64.AppImage"),
        &app,
    )
    .unwrap();
    let sw = h
        .wait_for("AppImage installed", |e| {
            is(e, "software.installed", "source", "appimage")
        })
        .await;
    assert_eq!(sw.details["name"], json!("Obsidian"));
    assert_eq!(sw.details["version"], json!("1.4.16"));
    assert_eq!(sw.details["owner"], json!("pupil1"));
    assert_eq!(
        sw.details["path"],
        json!("Applications/sub/Obsidian-1.4.16-x86_64.AppImage")
    );
    let ex = h
        .wait_for("AppImage executable", |e| {
            is(e, "executable.in_user_area", "type", "appimage")
        })
        .await;
    assert_eq!(ex.details["sha256"], json!(sha256_hex(&app)));
    assert_eq!(ex.details["appimage_type"], json!(2));

    // A script only counts with the execute bit; caches are not searched.
    let script = home.join("Downloads/run.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    fs::write(home.join(".cache/cached-bin"), &elf).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let sc = h
        .wait_for("script", |e| {
            is(e, "executable.in_user_area", "type", "script")
        })
        .await;
    assert_eq!(sc.details["path"], json!("Downloads/run.sh"));

    // A per-user Flatpak, deployed the way flatpak does it: files, then `active`, then `current`.
    let app_dir = home.join(".local/share/flatpak/app/org.example.Drawing");
    let deploy = app_dir.join("x86_64/stable/4f2d9a7c0e1b3a5d");
    fs::create_dir_all(deploy.join("files/share/metainfo")).unwrap();
    fs::write(
        deploy.join("metadata"),
        "[Application]\nname=org.example.Drawing\nruntime=org.gnome.Platform/x86_64/46\n",
    )
    .unwrap();
    fs::write(deploy.join("files/share/metainfo/org.example.Drawing.metainfo.xml"), "<component><releases><release version=\"1.0.2\" date=\"2024-01-01\"/></releases></component>").unwrap();
    fs::write(deploy.join("files/drawing-bin"), &elf).unwrap();
    symlink("4f2d9a7c0e1b3a5d", app_dir.join("x86_64/stable/active")).unwrap();
    symlink("x86_64/stable", app_dir.join("current")).unwrap();
    let fp = h
        .wait_for("Flatpak installed", |e| {
            is(e, "software.installed", "source", "flatpak")
        })
        .await;
    assert_eq!(fp.details["name"], json!("org.example.Drawing"));
    assert_eq!(fp.details["version"], json!("1.0.2"));
    assert_eq!(fp.details["owner"], json!("pupil1"));
    assert_eq!(fp.details["scope"], json!("user"));
    assert_eq!(fp.user.as_deref(), Some("pupil1"));

    // A system-wide Flatpak without AppStream data: version from branch and commit.
    let sys = tree.root.join("flatpak/app/org.example.Chat");
    fs::create_dir_all(sys.join("x86_64/stable/0123456789abcdef99")).unwrap();
    symlink("0123456789abcdef99", sys.join("x86_64/stable/active")).unwrap();
    symlink("x86_64/stable", sys.join("current")).unwrap();
    let fp2 = h
        .wait_for("system Flatpak", |e| {
            is(e, "software.installed", "name", "org.example.Chat")
        })
        .await;
    assert_eq!(fp2.details["version"], json!("stable@0123456789ab"));
    assert_eq!(fp2.details["scope"], json!("system"));

    fs::remove_dir_all(&app_dir).unwrap();
    h.wait_for("Flatpak removed", |e| {
        is(e, "software.removed", "name", "org.example.Drawing")
    })
    .await;
    fs::remove_file(home.join("Applications/sub/Obsidian-1.4.16-x86_64.AppImage")).unwrap();
    h.wait_for("AppImage removed", |e| {
        is(e, "software.removed", "name", "Obsidian")
    })
    .await;

    // A download in progress is not reported; its rename to the final name is.
    let dl = home.join("Downloads/Krita-5.2.AppImage.part");
    fs::write(&dl, fake_appimage()).unwrap();
    fs::rename(&dl, home.join("Downloads/Krita-5.2.AppImage")).unwrap();
    h.wait_for("renamed download", |e| {
        is(
            e,
            "executable.in_user_area",
            "path",
            "Downloads/Krita-5.2.AppImage",
        )
    })
    .await;

    // Marker: once this arrives, everything before it has been processed.
    fs::write(home.join("Downloads/marker.exe"), b"MZ\x90\x00rest").unwrap();
    h.wait_for("marker", |e| {
        is(e, "executable.in_user_area", "path", "Downloads/marker.exe")
    })
    .await;
    let exec_paths: Vec<&str> = h
        .events
        .seen
        .iter()
        .filter(|e| e.kind == "executable.in_user_area")
        .filter_map(|e| e.details["path"].as_str())
        .collect();
    assert_eq!(
        exec_paths,
        [
            "Downloads/tool",
            "Applications/sub/Obsidian-1.4.16-x86_64.AppImage",
            "Downloads/run.sh",
            "Downloads/Krita-5.2.AppImage",
            "Downloads/marker.exe"
        ],
        "each new executable once; baseline files, caches and Flatpak deployments not reported"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_can_turn_off_executable_reports() {
    let tree = Tree::new();
    let policy = SoftwarePolicy {
        watch_home_executables: false,
        ..Default::default()
    };
    let mut h = Harness::start(tree.config(), policy);
    h.wait_for("inventory", |e| e.kind == "software.inventory")
        .await;
    fs::copy("/bin/true", tree.home().join("Downloads/tool")).unwrap();
    fs::write(tree.home().join("Downloads/App.AppImage"), fake_appimage()).unwrap();
    // The AppImage is still inventoried; the executable reports are off.
    h.wait_for("AppImage installed", |e| {
        is(e, "software.installed", "source", "appimage")
    })
    .await;
    assert!(
        h.events
            .seen
            .iter()
            .all(|e| e.kind != "executable.in_user_area")
    );
    h.stop().await;
}

/// A stand-in snapd on a real Unix socket: answers `GET /v2/snaps` with the recorded
/// reply, plus a `firefox` snap once `with_firefox` is set.
async fn fake_snapd(socket: PathBuf, with_firefox: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let recorded: Value =
        serde_json::from_slice(include_bytes!("testdata/snapd-v2-snaps.json")).unwrap();
    loop {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut req = vec![0u8; 1024];
        let n = conn.read(&mut req).await.unwrap();
        assert!(req[..n].starts_with(b"GET /v2/snaps HTTP/1.0\r\n"));
        let mut reply = recorded.clone();
        let snaps = reply["result"].as_array_mut().unwrap();
        if !with_firefox.load(Ordering::SeqCst) {
            snaps.retain(|s| s["name"] != "firefox");
        }
        let body = serde_json::to_vec(&reply).unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snaps_come_from_snapd_and_the_periodic_rescan_finds_new_ones() {
    let tree = Tree::new();
    let socket = tree.root.join("snapd.socket");
    let with_firefox = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(fake_snapd(socket.clone(), with_firefox.clone()));
    while !socket.exists() {
        tokio::task::yield_now().await;
    }
    let cfg = SoftwareProbeConfig {
        snapd_socket: socket,
        min_rescan_interval: Duration::ZERO,
        ..tree.config()
    };
    // Snap installs are not watched here (no snaps folder): only the rescan can see them.
    let policy = SoftwarePolicy {
        rescan_interval_secs: 1,
        ..Default::default()
    };
    let mut h = Harness::start(cfg, policy);
    let inv = h
        .wait_for("inventory", |e| e.kind == "software.inventory")
        .await;
    assert_eq!(
        inv.details["items"]["snap"],
        json!([["core", "16-2.61.4-20240607", null, null, 1718874871]])
    );
    with_firefox.store(true, Ordering::SeqCst);
    let ev = h
        .wait_for("firefox snap", |e| {
            is(e, "software.installed", "source", "snap")
        })
        .await;
    assert_eq!(ev.details["name"], json!("firefox"));
    assert_eq!(ev.details["version"], json!("133.0-1"));
    h.stop().await;
    server.abort();
}
