//! Property-based fuzzing of every agent parser that reads outside input: kernel uevents, USB
//! descriptors, mountinfo and /etc/group (USB probe); dpkg status, apt history,
//! snapd replies, Flatpak and AppImage names, passwd and the Windows Uninstall exports (software
//! probe); ClamAV headers, clamd replies, freshclam logs, Defender, SecurityCenter2 and XProtect
//! (antivirus probe); .Xauthority; and the agent's own config file.
//!
//! Every property starts from arbitrary bytes, from a recorded real input with mutations, or from
//! a generated well-formed input: never a panic, and where the parser has an inverse, generated
//! input parses back to what was generated. Inputs are bounded in size so no case can take long.
//! `PROPTEST_CASES=N` runs longer (see BENCHMARKS.md).
//!
//! Linux only: it also fuzzes the Linux OS layer's readers (uevents, .Xauthority).
#![cfg(target_os = "linux")]

#[path = "../../proto/tests/support/fuzz.rs"]
mod support;

use caretaker_agent::config::Config;
use caretaker_agent::os::linux::{locker, x11};
use caretaker_agent::probe::antivirus::parse as av;
use caretaker_agent::probe::software::parse as sw;
use caretaker_agent::probe::usb::decide::glob_match;
use caretaker_agent::probe::usb::parse as usb;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::*;

const N: u32 = 256;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
}

fn unhex(line: &str) -> Vec<u8> {
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect()
}

/// The recorded kernel uevents (one datagram per hex line).
fn recorded_uevents() -> Vec<Vec<u8>> {
    [
        include_str!("../src/probe/usb/testdata/stick-serial-SN-TEST-0001.uevents.hex"),
        include_str!("../src/probe/usb/testdata/keyboard-usb-kbd.uevents.hex"),
    ]
    .iter()
    .flat_map(|t| t.lines().filter(|l| !l.trim().is_empty()).map(unhex))
    .collect()
}

const UEVENT_TOKENS: &[&[u8]] = &[
    b"\0",
    b"=",
    b"@",
    b"ACTION=",
    b"SUBSYSTEM=usb\0",
    b"SEQNUM=",
    b"DEVPATH=",
    b"libudev\0",
    b"DEVTYPE=usb_device\0",
];

// ---------------------------------------------------------------------------------------------
// USB probe

proptest! {
    #![proptest_config(config(N))]

    #[test]
    fn uevent_never_panics(raw in prop_oneof![bytes(512), mutated_any(recorded_uevents(), UEVENT_TOKENS, 8)]) {
        let (ev, warnings) = usb::parse_uevent(&raw);
        match ev {
            Some(ev) => {
                let _ = ev.sys_name();
                prop_assert_eq!(ev.var("SUBSYSTEM"), Some(ev.subsystem.as_str()));
            }
            None => prop_assert!(!warnings.is_empty(), "a refused datagram says why"),
        }
    }

    /// A well-formed kernel uevent parses back to what was generated.
    #[test]
    fn uevent_round_trips(
        action in "[a-z]{1,8}", devpath in "(/[a-z0-9:.-]{1,10}){1,6}", subsystem in "[a-z_]{1,10}",
        seqnum in any::<u64>(),
        vars in prop::collection::btree_map("[A-Z][A-Z_]{0,11}", "[^\0]{0,30}", 0..8),
    ) {
        let mut vars = vars;
        vars.insert("ACTION".into(), action.clone());
        vars.insert("DEVPATH".into(), devpath.clone());
        vars.insert("SUBSYSTEM".into(), subsystem.clone());
        vars.insert("SEQNUM".into(), seqnum.to_string());
        let mut raw = format!("{action}@{devpath}\0").into_bytes();
        for (k, v) in &vars {
            raw.extend_from_slice(format!("{k}={v}\0").as_bytes());
        }
        let (ev, warnings) = usb::parse_uevent(&raw);
        let ev = ev.expect("a well-formed uevent parses");
        prop_assert!(warnings.is_empty(), "{:?}", warnings);
        prop_assert_eq!(ev.action, action);
        prop_assert_eq!(ev.devpath, devpath);
        prop_assert_eq!(ev.subsystem, subsystem);
        prop_assert_eq!(ev.seqnum, Some(seqnum));
        prop_assert_eq!(ev.vars, vars);
    }

    /// Raw `descriptors` of a device: any bytes; a well-formed chain yields exactly the
    /// interface classes in it, in order, once each.
    #[test]
    fn descriptors_give_the_interface_classes(
        raw in bytes(300),
        chain in prop::collection::vec((2..=40usize, prop_oneof![Just(4u8), any::<u8>()], bytes(38)), 0..12),
    ) {
        let _ = usb::interface_classes_from_descriptors(&raw);
        let mut well_formed = Vec::new();
        let mut expected = Vec::new();
        for (len, kind, body) in &chain {
            let mut d = vec![*len as u8, *kind];
            d.extend(body.iter().copied().chain(std::iter::repeat(0)).take(len - 2));
            if *kind == 4 && *len >= 6 && !expected.contains(&d[5]) {
                expected.push(d[5]);
            }
            well_formed.extend(d);
        }
        let (classes, warnings) = usb::interface_classes_from_descriptors(&well_formed);
        prop_assert!(warnings.is_empty(), "{:?}", warnings);
        prop_assert_eq!(classes, expected);
    }

    /// mountinfo: any text; a generated /dev mount (names with spaces, tabs and backslashes,
    /// which the kernel escapes in octal) reads back.
    #[test]
    fn mountinfo_round_trips(
        junk in text(400),
        source in "/dev/[a-z0-9]{1,8}", mount_point in "/[^\0\n]{1,30}",
        fs_type in "[a-z0-9]{1,8}", ro in any::<bool>(),
    ) {
        let _ = usb::parse_mountinfo(&junk);
        let esc = |s: &str| {
            s.chars().map(|c| match c {
                ' ' | '\t' | '\\' | '\n' => format!("\\{:03o}", c as u32),
                c => c.to_string(),
            }).collect::<String>()
        };
        let line = format!(
            "36 35 98:0 / {} {},nosuid master:1 - {fs_type} {} rw\n",
            esc(&mount_point), if ro { "ro" } else { "rw" }, esc(&source)
        );
        let (mounts, _) = usb::parse_mountinfo(&format!("{junk}\n{line}"));
        let last = mounts.last().expect("the generated mount is read");
        prop_assert_eq!(&last.source, &source);
        prop_assert_eq!(&last.mount_point, &mount_point);
        prop_assert_eq!(&last.fs_type, &fs_type);
        prop_assert_eq!(last.read_only, ro);
    }

    /// /etc/group: any text; a generated file's membership is read back.
    #[test]
    fn groups_round_trip(
        junk in text(300),
        groups in prop::collection::vec(("[a-z][a-z0-9_-]{0,8}", prop::collection::vec("[a-z][a-z0-9_-]{0,8}", 0..5)), 0..8),
        user in "[a-z][a-z0-9_-]{0,8}",
    ) {
        let _ = usb::groups_of(&user, &junk);
        let text: String = groups.iter().enumerate()
            .map(|(i, (g, members))| format!("{g}:x:{}:{}\n", 1000 + i, members.join(",")))
            .collect();
        let expected: Vec<String> = groups.iter()
            .filter(|(_, m)| m.contains(&user))
            .map(|(g, _)| g.clone())
            .collect();
        prop_assert_eq!(usb::groups_of(&user, &text), expected);
    }
}

proptest! {
    #![proptest_config(config(N))]

    /// A username against the policy's `*` patterns: any pair, no panic; a name matches any
    /// pattern made from it by turning some of its characters into stars.
    #[test]
    fn pupil_patterns(
        pattern in text(30), name in text(30),
        stars in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let _ = glob_match(&pattern, &name);
        let mut chars: Vec<char> = name.chars().collect();
        if !chars.is_empty() {
            for s in &stars {
                let i = s.index(chars.len());
                chars[i] = '*';
            }
        }
        let from_name: String = chars.into_iter().collect();
        prop_assert!(glob_match(&from_name, &name), "{:?} matches {:?}", from_name, name);
        prop_assert!(glob_match("*", &name));
    }
}

// ---------------------------------------------------------------------------------------------
// Software probe

const DPKG_DEBIAN12: &str = include_str!("../src/probe/software/testdata/dpkg-status-debian12");
const LINE_TOKENS: &[&[u8]] = &[
    b"\n",
    b"\n\n",
    b": ",
    b":",
    b" ",
    b"\t",
    b"Package: ",
    b"Status: install ok installed\n",
    b"Version: ",
    b"Architecture: ",
    b"\xff",
    b"\r\n",
    b"(",
    b")",
    b",",
];

/// The first few stanzas of a real status file: enough to reach every branch, small enough
/// that each case is quick.
fn dpkg_seed() -> Vec<u8> {
    let end = DPKG_DEBIAN12
        .match_indices("\n\n")
        .nth(6)
        .map_or(DPKG_DEBIAN12.len(), |(i, _)| i + 2);
    DPKG_DEBIAN12.as_bytes()[..end].to_vec()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[derive(Debug, Clone)]
struct Stanza {
    name: String,
    version: String,
    arch: Option<String>,
    state: &'static str,
    description: Vec<String>,
}

fn stanza() -> impl Strategy<Value = Stanza> {
    (
        "[a-z0-9][a-z0-9+.-]{0,20}",
        "[0-9][A-Za-z0-9.+~:-]{0,15}",
        prop::option::of(prop::sample::select(vec![
            "amd64".to_string(),
            "all".into(),
            "i386".into(),
        ])),
        prop::sample::select(vec![
            "installed",
            "unpacked",
            "half-configured",
            "half-installed",
            "triggers-pending",
            "triggers-awaited",
            "not-installed",
            "config-files",
        ]),
        prop::collection::vec("[ -~]{0,30}", 0..3),
    )
        .prop_map(|(name, version, arch, state, description)| Stanza {
            name,
            version,
            arch,
            state,
            description,
        })
}

proptest! {
    #![proptest_config(config(N))]

    #[test]
    fn dpkg_status_never_panics(raw in prop_oneof![
        bytes(1024),
        mutated(dpkg_seed(), LINE_TOKENS, 8),
        mutated(include_bytes!("../src/probe/software/testdata/dpkg-status-malformed").to_vec(), LINE_TOKENS, 8),
    ]) {
        let parsed = sw::parse_dpkg_status(&lossy(&raw));
        for p in &parsed.value {
            prop_assert!(!p.name.is_empty() && !p.version.is_empty());
        }
    }

    /// Generated stanzas (with multi-line descriptions and states that are not on disk) read
    /// back as exactly the packages present, in order, with no warnings.
    #[test]
    fn dpkg_status_round_trips(stanzas in prop::collection::vec(stanza(), 0..10)) {
        let mut text = String::new();
        for s in &stanzas {
            text.push_str(&format!("Package: {}\nStatus: install ok {}\nPriority: optional\n", s.name, s.state));
            if let Some(a) = &s.arch {
                text.push_str(&format!("Architecture: {a}\n"));
            }
            text.push_str(&format!("Version: {}\nDescription: a package\n", s.version));
            for d in &s.description {
                text.push_str(&format!(" {d}\n"));
            }
            text.push('\n');
        }
        let parsed = sw::parse_dpkg_status(&text);
        prop_assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        let expected: Vec<(String, String, Option<String>)> = stanzas.iter()
            .filter(|s| !matches!(s.state, "not-installed" | "config-files"))
            .map(|s| (s.name.clone(), s.version.clone(), s.arch.clone()))
            .collect();
        let got: Vec<(String, String, Option<String>)> = parsed.value.into_iter()
            .map(|p| (p.name, p.version, p.architecture))
            .collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn apt_history_never_panics(raw in prop_oneof![
        bytes(1024),
        mutated(include_bytes!("../src/probe/software/testdata/apt-history-sudo.log").to_vec(), LINE_TOKENS, 8),
    ]) {
        let h = sw::parse_apt_history(&lossy(&raw));
        let floor = NaiveDateTime::parse_from_str("2000-01-01 00:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
        for t in h.value.iter().filter(|t| t.start.is_some_and(|s| s >= floor)) {
            for a in &t.actions {
                prop_assert!(sw::attribute_apt(&h.value, &a.package, a.version.as_deref(), a.kind.is_removal(), floor).is_some());
            }
        }
    }

    /// A generated transaction reads back: time, requester, and each package with its
    /// architecture and versions (upgrades keep old and new).
    #[test]
    fn apt_history_round_trips(
        secs in 0i64..4_000_000_000, user in "[a-z][a-z0-9]{0,8}", uid in any::<u32>(),
        upgrade in any::<bool>(),
        pkgs in prop::collection::vec(("[a-z0-9][a-z0-9+.-]{0,12}", "[0-9][a-z0-9.+~-]{0,8}", "[0-9][a-z0-9.+~-]{0,8}", any::<bool>()), 1..6),
    ) {
        let start = DateTime::from_timestamp(secs, 0).unwrap().naive_utc();
        let kind = if upgrade { "Upgrade" } else { "Install" };
        let items: Vec<String> = pkgs.iter().map(|(p, old, new, auto)| {
            if upgrade { format!("{p}:amd64 ({old}, {new})") }
            else if *auto { format!("{p}:amd64 ({new}, automatic)") }
            else { format!("{p}:amd64 ({new})") }
        }).collect();
        let when = start.format("%Y-%m-%d  %H:%M:%S");
        let text = format!(
            "\nStart-Date: {when}\nCommandline: apt {}\nRequested-By: {user} ({uid})\n{kind}: {}\nEnd-Date: {when}\n",
            kind.to_lowercase(), items.join(", "),
        );
        let h = sw::parse_apt_history(&text);
        prop_assert!(h.warnings.is_empty(), "{:?}", h.warnings);
        prop_assert_eq!(h.value.len(), 1);
        let t = &h.value[0];
        prop_assert_eq!(t.start, Some(start));
        let by = t.requested_by.as_ref().unwrap();
        prop_assert_eq!((by.user.as_str(), by.uid), (user.as_str(), Some(uid)));
        prop_assert_eq!(t.actions.len(), pkgs.len());
        for (a, (p, old, new, _)) in t.actions.iter().zip(&pkgs) {
            prop_assert_eq!(&a.package, p);
            prop_assert_eq!(a.architecture.as_deref(), Some("amd64"));
            prop_assert_eq!(a.version.as_deref(), Some(new.as_str()));
            prop_assert_eq!(a.previous_version.as_deref(), upgrade.then_some(old.as_str()));
        }
    }

    /// Flatpak, AppImage and file-magic helpers take names from users' home folders.
    #[test]
    fn user_area_names_never_panic(name in text(80), head in bytes(16), x in any::<bool>()) {
        let _ = sw::parse_metainfo_version(&name);
        let _ = sw::parse_flatpak_current(&name);
        let _ = sw::flatpak_version(None, &name, &name);
        let (n, v) = sw::appimage_name_version(&name);
        prop_assert!(n.len() <= name.len() && v.map_or(0, |v| v.len()) <= name.len());
        let _ = sw::detect_executable(&head, &name, x);
    }

    #[test]
    fn flatpak_current_round_trips(arch in "[a-z0-9_]{1,8}", branch in "[A-Za-z0-9._-]{1,12}") {
        prop_assert_eq!(sw::parse_flatpak_current(&format!("{arch}/{branch}")), Some((arch, branch)));
    }

    #[test]
    fn metainfo_version_round_trips(v in "[0-9][0-9a-z.~+-]{0,12}", pre in "[ -;=?-~]{0,40}") {
        let xml = format!("{pre}<component><releases><release date=\"2024-01-01\" version=\"{v}\"/></releases></component>");
        prop_assert_eq!(sw::parse_metainfo_version(&xml), Some(v));
    }

    /// snapd's socket speaks raw HTTP: any bytes; a chunked body reassembles exactly.
    #[test]
    fn snapd_http_never_panics(
        raw in prop_oneof![
            bytes(600),
            mutated(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"result\": [] }\r\n0\r\n\r\n".to_vec(), &[b"\r\n", b"ffffffffffffffff", b"0\r\n", b";"], 6),
        ],
        body in mutated(include_bytes!("../src/probe/software/testdata/snapd-v2-snaps.json").to_vec(), &[b"\"", b":", b",", b"{", b"}", b"[", b"]", b"null", b"1"], 6),
        chunks in prop::collection::vec(1..200usize, 1..8),
    ) {
        if let Ok((_, b)) = sw::split_http_response(&raw) {
            let _ = sw::parse_snapd_snaps(&b);
        }
        let _ = sw::parse_snapd_snaps(&body);
        let mut http = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut rest = body.as_slice();
        for n in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (c, r) = rest.split_at((*n).min(rest.len()));
            http.extend(format!("{:x}\r\n", c.len()).bytes());
            http.extend(c);
            http.extend(b"\r\n");
            rest = r;
        }
        http.extend(b"0\r\n\r\n");
        prop_assert_eq!(sw::split_http_response(&http), Ok((200, body.clone())));
    }

    /// /etc/passwd, as both probes read it: any text; generated lines read back.
    #[test]
    fn passwd_round_trips(
        junk in text(400),
        users in prop::collection::btree_map(any::<u32>(), ("[a-z_][a-z0-9_-]{0,12}", any::<u32>(), "/[a-z0-9/]{0,20}"), 0..8),
    ) {
        let _ = sw::parse_passwd(&junk);
        let _ = locker::parse_passwd(&junk);
        let text: String = users.iter()
            .map(|(uid, (name, gid, home))| format!("{name}:x:{uid}:{gid}:A User,,,:{home}:/bin/bash\n"))
            .collect();
        let by_uid = sw::parse_passwd(&text);
        let (entries, warnings) = locker::parse_passwd(&text);
        prop_assert!(warnings.is_empty());
        prop_assert_eq!(entries.len(), users.len());
        for ((uid, (name, gid, home)), e) in users.iter().zip(&entries) {
            prop_assert_eq!(by_uid.get(uid), Some(name));
            prop_assert_eq!((e.uid, e.gid, &e.name, e.home.to_str().unwrap()), (*uid, *gid, name, home.as_str()));
        }
    }

    /// Windows Uninstall exports (regedit, UTF-16 or UTF-8, and PowerShell JSON).
    #[test]
    fn windows_uninstall_never_panics(raw in prop_oneof![
        bytes(800),
        mutated(include_bytes!("../src/probe/software/testdata/uninstall-hklm.reg").to_vec(), &[b"\0\\", b"\n\0", b"\"\0", b"=\0", b"[\0", b"]\0", b"h\0e\0x\0(\x002\0)\0:\0"], 8),
        mutated(include_bytes!("../src/probe/software/testdata/uninstall-powershell.json").to_vec(), &[b"\"", b":", b",", b"{", b"}", b"[", b"]", b"null", b"-1", b"4294967296"], 8),
        mutated(include_bytes!("../src/probe/software/testdata/uninstall-powershell-single-utf16.json").to_vec(), &[b"\"\0", b":\0", b"{\0", b"}\0"], 8),
    ]) {
        let mut w = Vec::new();
        let _ = sw::decode_windows_text(&raw, &mut w);
        for p in sw::parse_reg_export(&raw).value.iter().chain(&sw::parse_uninstall_json(&raw).value) {
            prop_assert!(!p.display_name.trim().is_empty() && !p.key.is_empty());
        }
    }

    /// A generated regedit export (UTF-16LE with BOM, as regedit writes it) reads back.
    #[test]
    fn reg_export_round_trips(
        key in "[A-Za-z0-9{}. -]{0,19}[A-Za-z0-9{}.-]", name in "[ -~]{0,30}[!-~]", version in "[0-9.]{1,10}",
        publisher in "[ -~]{0,20}[!-~]", wow in any::<bool>(), hex_name in any::<bool>(),
    ) {
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let root = if wow {
            "HKEY_LOCAL_MACHINE\\SOFTWARE\\WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall"
        } else {
            "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall"
        };
        let display = if hex_name {
            let hex: Vec<String> = name.encode_utf16().chain([0]).flat_map(|u| u.to_le_bytes()).map(|b| format!("{b:02x}")).collect();
            // regedit wraps long hex values with a trailing backslash.
            let lines: Vec<String> = hex.chunks(20).map(|c| c.join(",")).collect();
            format!("\"DisplayName\"=hex(2):{}", lines.join(",\\\r\n  "))
        } else {
            format!("\"DisplayName\"=\"{}\"", q(&name))
        };
        let text = format!(
            "Windows Registry Editor Version 5.00\r\n\r\n[{root}]\r\n\r\n[{root}\\{key}]\r\n{display}\r\n\"DisplayVersion\"=\"{}\"\r\n\"Publisher\"=\"{}\"\r\n\"NoModify\"=dword:00000001\r\n\r\n",
            q(&version), q(&publisher),
        );
        let raw: Vec<u8> = [0xFF, 0xFE].into_iter().chain(text.encode_utf16().flat_map(|u| u.to_le_bytes())).collect();
        let parsed = sw::parse_reg_export(&raw);
        prop_assert_eq!(parsed.value.len(), 1, "{:?}", parsed.warnings);
        let p = &parsed.value[0];
        prop_assert_eq!(&p.key, &key);
        prop_assert_eq!(p.display_name.as_str(), name.trim());
        prop_assert_eq!(p.display_version.as_deref(), Some(version.as_str()));
        prop_assert_eq!(p.publisher.as_deref(), Some(publisher.trim()));
        prop_assert_eq!(p.scope, if wow { "machine_32bit" } else { "machine" });
    }
}

// ---------------------------------------------------------------------------------------------
// Antivirus probe

fn cvd_seeds() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../src/probe/antivirus/testdata/daily-official.header").to_vec(),
        include_bytes!("../src/probe/antivirus/testdata/daily-no-build-time.header").to_vec(),
        include_bytes!("../src/probe/antivirus/testdata/daily-sigtool-unsigned.header").to_vec(),
    ]
}

fn json_seed(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

const DEFENDER_KEYS: &[&str] = &[
    "AntivirusSignatureAge",
    "AntivirusSignatureLastUpdated",
    "AntivirusEnabled",
    "AMRunningMode",
    "RealTimeProtectionEnabled",
    "AMServiceEnabled",
    "DefenderSignaturesOutOfDate",
    "value",
    "productState",
    "displayName",
];

/// Every product a parser yields goes on through assessment and the event's details, where
/// its times meet arithmetic.
fn assess(products: &[av::ProductReport], max_age: u32) {
    for p in products {
        let _ = av::assess_product(p, max_age, now());
    }
    let a = av::normalise(products, max_age, now(), "nothing found");
    let _ = av::status_details(products, &a, max_age, now());
}

proptest! {
    #![proptest_config(config(N))]

    #[test]
    fn cvd_header_never_panics(
        raw in prop_oneof![bytes(600), mutated_any(cvd_seeds(), &[b":", b" ", b"\0", b"ClamAV-VDB:", b"-9999999999999", b"99999999999999999"], 8)],
        max_age in any::<u32>(),
    ) {
        let h = av::parse_cvd_header(&raw);
        if let Some(h) = h.value {
            let mut p = av::ProductReport::named("ClamAV");
            p.signatures_built_at = h.built_at;
            assess(&[p], max_age);
        } else {
            prop_assert!(!h.warnings.is_empty());
        }
    }

    /// A generated header (text time and epoch agreeing) reads back field by field.
    #[test]
    fn cvd_header_round_trips(
        epoch in 0i64..4_000_000_000, version in any::<u32>(), sigs in any::<u64>(),
        flevel in any::<u32>(), builder in "[a-z]{1,10}", md5 in "[0-9a-f]{32}",
    ) {
        let t = Utc.timestamp_opt(epoch - epoch % 60, 0).unwrap();
        let text = format!(
            "ClamAV-VDB:{}:{version}:{sigs}:{flevel}:{md5}:X:{builder}:{}",
            t.format("%d %b %Y %H-%M %z"), t.timestamp()
        );
        let mut raw = format!("{text:<512}").into_bytes();
        raw.extend_from_slice(b"\x1f\x8b compressed database follows");
        let h = av::parse_cvd_header(&raw);
        prop_assert!(h.warnings.is_empty(), "{:?}", h.warnings);
        prop_assert_eq!(h.value, Some(av::CvdHeader {
            version: Some(version), built_at: Some(t), signatures: Some(sigs),
            functionality_level: Some(flevel), builder: Some(builder),
        }));
    }

    /// clamd replies (a local socket or a TCP clamd someone else may run).
    #[test]
    fn clamd_replies_never_panic(raw in prop_oneof![
        bytes(400),
        mutated(b"ClamAV 1.4.3/27000/Mon Nov 23 13:02:04 2026\0".to_vec(), &[b"/", b"\0", b" ", b"ClamAV "], 6),
        mutated(b"stream: Win.Test.EICAR_HDB-1 FOUND\0stream: OK\0".to_vec(), &[b"stream:", b" FOUND", b" ERROR", b"\0", b"\n"], 6),
    ]) {
        let _ = av::parse_ping_reply(&raw);
        let _ = av::reply_text(&raw);
        let v = av::parse_version_reply(&raw);
        prop_assert!(v.value.is_some() || !v.warnings.is_empty());
        if let av::ScanResult::Found(names) = av::parse_scan_reply(&raw) {
            prop_assert!(!names.is_empty());
        }
    }

    /// Every signature named in a reply is reported; a detection is never lost to an error.
    #[test]
    fn scan_reply_reports_every_detection(
        names in prop::collection::vec("[A-Za-z0-9._-]{1,30}", 1..5), error in any::<bool>(), nul in any::<bool>(),
    ) {
        let sep = if nul { "\0" } else { "\n" };
        let mut reply: String = names.iter().map(|n| format!("stream: {n} FOUND{sep}")).collect();
        if error {
            reply.push_str(&format!("stream: Can't allocate memory ERROR{sep}"));
        }
        prop_assert_eq!(av::parse_scan_reply(reply.as_bytes()), av::ScanResult::Found(names));
    }

    #[test]
    fn freshclam_log_never_panics(raw in prop_oneof![
        bytes(600),
        mutated(include_bytes!("../src/probe/antivirus/testdata/freshclam-updated.log").to_vec(), &[b"\n", b" -> ", b"ERROR: ", b"update process started at ", b"is up-to-date"], 8),
        mutated(include_bytes!("../src/probe/antivirus/testdata/freshclam-unreachable-mirror.log").to_vec(), &[b"\n", b" -> ", b"ERROR: "], 8),
    ]) {
        let _ = av::parse_freshclam_log(&lossy(&raw));
    }

    /// Get-MpComputerStatus output: text, and the recorded reports with fields replaced by
    /// other types and extreme numbers and dates; whatever parses is assessed without panic.
    #[test]
    fn defender_never_panics(
        raw in text(600),
        doc in prop_oneof![
            mutated_json(json_seed(include_bytes!("../src/probe/antivirus/testdata/defender-healthy.json")), DEFENDER_KEYS, 4),
            mutated_json(json_seed(include_bytes!("../src/probe/antivirus/testdata/defender-stale-9-days.json")), DEFENDER_KEYS, 4),
            mutated_json(json_seed(include_bytes!("../src/probe/antivirus/testdata/defender-passive-ps7.json")), DEFENDER_KEYS, 4),
        ],
        max_age in any::<u32>(),
    ) {
        for text in [raw, doc.to_string(), json!([doc.clone(), doc]).to_string()] {
            if let Some(p) = av::parse_defender_status(&text, now()).value {
                assess(&[p], max_age);
            }
        }
    }

    /// Any signature age Defender may report (its "never" sentinels, days beyond any calendar)
    /// gives a report, not a panic.
    #[test]
    fn defender_signature_age_any_number(
        age in prop_oneof![any::<u64>(), 0..100_000u64, Just(100_000_000u64)],
        max_age in any::<u32>(),
    ) {
        let doc = json!({"AntivirusSignatureVersion": "1.421.1", "AMServiceEnabled": true,
                         "AntivirusEnabled": true, "RealTimeProtectionEnabled": true,
                         "AntivirusSignatureAge": age});
        let p = av::parse_defender_status(&doc.to_string(), now()).value.expect("a report");
        assess(&[p], max_age);
    }

    #[test]
    fn powershell_dates_never_panic(ms in any::<i64>(), off in "[+-][0-9]{4}", s in text(40)) {
        for v in [json!(format!("/Date({ms})/")), json!(format!("/Date({ms}{off})/")), json!({"value": format!("/Date({ms})/")})] {
            if let Some(t) = av::parse_powershell_date(&v) {
                prop_assert_eq!(t.timestamp_millis(), ms);
            }
        }
        let _ = av::parse_powershell_date(&json!(s));
    }

    #[test]
    fn security_center_never_panics(
        raw in text(400),
        doc in prop_oneof![
            mutated_json(json_seed(include_bytes!("../src/probe/antivirus/testdata/securitycenter2-sophos-and-defender.json")), DEFENDER_KEYS, 4),
            mutated_json(json_seed(include_bytes!("../src/probe/antivirus/testdata/securitycenter2-eset-out-of-date.json")), DEFENDER_KEYS, 4),
        ],
        state in any::<u32>(),
    ) {
        let _ = av::decode_product_state(state);
        for text in [raw, doc.to_string()] {
            if let Some(products) = av::parse_security_center(&text).value {
                let all = av::windows_products(None, products);
                assess(&all, 72);
            }
        }
    }

    /// XProtect's Info.plist: any bytes; a generated version (with XML escapes) reads back.
    #[test]
    fn xprotect_plist(
        raw in prop_oneof![
            bytes(600),
            mutated(include_bytes!("../src/probe/antivirus/testdata/xprotect-Info.plist").to_vec(), &[b"<key>", b"</key>", b"<string>", b"</string>", b"&amp;", b"CFBundleShortVersionString"], 8),
        ],
        version in "[0-9][0-9a-z.<>&' -]{0,10}[0-9]",
    ) {
        if let Some(info) = av::parse_xprotect_plist(&raw).value {
            assess(&[av::xprotect_product(&info, None)], 72);
        }
        let escaped = version.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;");
        let plist = format!("<plist><dict><key>CFBundleShortVersionString</key>\n\t<string>{escaped}</string></dict></plist>");
        prop_assert_eq!(av::parse_xprotect_plist(plist.as_bytes()).value.map(|i| i.version), Some(version));
    }
}

// ---------------------------------------------------------------------------------------------
// .Xauthority and the agent's config

fn xauth_bytes(entries: &[x11::XauthEntry]) -> Vec<u8> {
    let mut b = Vec::new();
    for e in entries {
        b.extend(e.family.to_be_bytes());
        for f in [
            &e.address[..],
            e.number.as_bytes(),
            &e.name[..],
            &e.data[..],
        ] {
            b.extend((f.len() as u16).to_be_bytes());
            b.extend(f);
        }
    }
    b
}

const CONFIG_SEED: &str = r#"
state_dir = "/var/lib/caretaker-agent"
collector = "caretaker.school.lan:7443"
heartbeat_interval = "5m"
spool_max_bytes = 104857600

[antivirus]
enabled = true
database_dir = "/var/lib/clamav"

[software]
enabled = true
dpkg_dir = "/var/lib/dpkg"

[screen_lock]
enabled = false

[usb]
enabled = true
clamd_tcp = "127.0.0.1:3310"
manage_authorization = false
mount_options = "iocharset=utf8"

[facts]
interval = "15m"
"#;

proptest! {
    #![proptest_config(config(N))]

    /// The X authority file is in a pupil's home: any bytes; generated entries read back.
    #[test]
    fn xauthority_round_trips(
        raw in prop_oneof![bytes(400), mutated(include_bytes!("../src/os/linux/testdata/Xauthority").to_vec(), &[b"\xff\xff", b"\x01\x00", b"\x00"], 6)],
        entries in prop::collection::vec((any::<u16>(), bytes(20), "[0-9]{0,3}", bytes(20), bytes(20)), 0..4),
        display in any::<u16>(),
    ) {
        let (got, _) = x11::parse_xauthority(&raw);
        let _ = x11::pick_cookie(&got, display, b"laptop");
        let entries: Vec<x11::XauthEntry> = entries.into_iter()
            .map(|(family, address, number, name, data)| x11::XauthEntry { family, address, number, name, data })
            .collect();
        let (back, warnings) = x11::parse_xauthority(&xauth_bytes(&entries));
        prop_assert!(warnings.is_empty());
        prop_assert_eq!(back, entries);
    }

    /// The config file: any text and the full example mutated give a config or a clear error,
    /// and every config accepted keeps the bounds validation promises.
    #[test]
    fn config_never_panics(text in prop_oneof![
        text(400).prop_map(String::into_bytes),
        mutated(CONFIG_SEED.as_bytes().to_vec(), &[b"\n", b"=", b"\"", b"[", b"]", b"0", b"-1", b"99999999999999999999", b"1ns", b"18446744073709551615s", b"[usb]\n", b"enabled = "], 6),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, &text).unwrap();
        match Config::load(Some(&path), None) {
            Ok(c) => {
                prop_assert!(c.heartbeat_interval >= std::time::Duration::from_millis(10));
                prop_assert!(c.spool_max_bytes >= 64 * 1024);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// The seeds are what the parsers accept, so mutations start from deep inside them.
#[test]
fn seeds_parse() {
    assert!(!recorded_uevents().is_empty());
    assert!(
        recorded_uevents()
            .iter()
            .all(|u| usb::parse_uevent(u).0.is_some())
    );
    assert!(sw::parse_dpkg_status(&lossy(&dpkg_seed())).value.len() >= 5);
    assert!(
        cvd_seeds()
            .iter()
            .all(|s| av::parse_cvd_header(s).value.is_some())
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), CONFIG_SEED).unwrap();
    Config::load(Some(&dir.path().join("a.toml")), None).unwrap();
}
