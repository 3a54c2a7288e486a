//! Unit tests for the software parsers, over recorded real inputs in `testdata/`.
use super::*;
use chrono::NaiveDate;
use std::time::Instant;

const REAL_STATUS: &str = include_str!("../testdata/dpkg-status-debian12");

#[test]
fn real_dpkg_status_parses_every_package_quickly() {
    let started = Instant::now();
    let parsed = parse_dpkg_status(REAL_STATUS);
    let took = started.elapsed();
    assert_eq!(
        parsed.value.len(),
        735,
        "recorded file has 735 installed packages"
    );
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let dpkg = parsed.value.iter().find(|p| p.name == "dpkg").unwrap();
    assert_eq!(dpkg.architecture.as_deref(), Some("amd64"));
    assert!(!dpkg.version.is_empty());
    // Generous bound for a debug build on a shared 2-core machine; it is ~10 ms in practice.
    assert!(took.as_millis() < 1000, "took {took:?}");
    println!("parsed {} packages in {took:?}", parsed.value.len());
}

#[test]
fn malformed_dpkg_stanzas_are_warnings() {
    let parsed = parse_dpkg_status(include_str!("../testdata/dpkg-status-malformed"));
    let names: Vec<&str> = parsed.value.iter().map(|p| p.name.as_str()).collect();
    // config-files means removed; unpacked is mid-upgrade and still present.
    assert_eq!(names, ["good-one", "mid-upgrade"]);
    let w = parsed.warnings.join("\n");
    assert_eq!(parsed.warnings.len(), 5, "{w}");
    assert!(w.contains("no Package field"), "{w}");
    assert!(w.contains("(no-status): no Status"), "{w}");
    assert!(w.contains("not a field"), "{w}");
    assert!(w.contains("(bad-status): malformed Status"), "{w}");
    assert!(w.contains("(no-version): no Version"), "{w}");
}

#[test]
fn real_apt_history_parses() {
    let parsed = parse_apt_history(include_str!("../testdata/apt-history-debian12.log"));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(parsed.value.len(), 17);
    let last = parsed.value.last().unwrap();
    assert_eq!(
        last.start,
        NaiveDate::from_ymd_opt(2026, 11, 23)
            .unwrap()
            .and_hms_opt(13, 0, 25)
    );
    let xdotool = last
        .actions
        .iter()
        .find(|a| a.package == "xdotool")
        .unwrap();
    assert_eq!(xdotool.kind, AptActionKind::Install);
    assert_eq!(xdotool.version.as_deref(), Some("1:3.20160805.1-5"));
    assert_eq!(xdotool.architecture.as_deref(), Some("amd64"));
    assert!(
        last.requested_by.is_none(),
        "run as root directly: no Requested-By"
    );
    let upgrade = parsed
        .value
        .iter()
        .flat_map(|t| &t.actions)
        .find(|a| a.package == "linux-libc-dev" && a.kind == AptActionKind::Upgrade)
        .unwrap();
    assert_eq!(upgrade.previous_version.as_deref(), Some("6.1.140-1"));
    assert_eq!(upgrade.version.as_deref(), Some("6.1.187-1"));
}

#[test]
fn apt_history_attributes_the_matching_transaction() {
    let h = parse_apt_history(include_str!("../testdata/apt-history-sudo.log")).value;
    let since = |d: u32| {
        NaiveDate::from_ymd_opt(2026, 11, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
    };
    let t = attribute_apt(&h, "openvpn", Some("2.6.3-1+deb12u2"), false, since(20)).unwrap();
    assert_eq!(
        t.requested_by,
        Some(AptRequester {
            user: "jsmith".into(),
            uid: Some(1001)
        })
    );
    let t = attribute_apt(&h, "openvpn", None, true, since(20)).unwrap();
    assert_eq!(t.requested_by.as_ref().unwrap().user, "netadmin");
    // Too old for the window: not attributed.
    assert!(attribute_apt(&h, "openvpn", None, false, since(21)).is_none());
    // Version must match when both sides know it.
    assert!(attribute_apt(&h, "openvpn", Some("9.9"), false, since(1)).is_none());
    let t = attribute_apt(
        &h,
        "firefox-esr",
        Some("128.5.0esr-1~deb12u1"),
        false,
        since(1),
    );
    assert_eq!(t.unwrap().requested_by.as_ref().unwrap().uid, Some(1000));
}

#[test]
fn apt_history_oddities_are_warnings() {
    let parsed = parse_apt_history(
        "Install: a (1)\n\nStart-Date: yesterday\nInstall: good:amd64 (1.0), bad entry (\nRubbish\n",
    );
    assert_eq!(parsed.value.len(), 1);
    assert_eq!(parsed.value[0].actions.len(), 1);
    assert_eq!(parsed.warnings.len(), 4, "{:?}", parsed.warnings);
}

#[test]
fn flatpak_version_from_metainfo_or_commit() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<component type="desktop-application">
  <id>org.mozilla.firefox</id>
  <releases>
    <release version="133.0" date="2024-11-26"/>
    <release version="132.0.2" date="2024-11-12"/>
  </releases>
</component>"#;
    assert_eq!(parse_metainfo_version(xml).as_deref(), Some("133.0"));
    assert_eq!(
        parse_metainfo_version("<release date='x' version='2.1'>").as_deref(),
        Some("2.1")
    );
    assert_eq!(parse_metainfo_version("<component/>"), None);
    assert_eq!(
        flatpak_version(None, "stable", "0123456789abcdef0123"),
        "stable@0123456789ab"
    );
    assert_eq!(flatpak_version(Some("1.0".into()), "stable", "x"), "1.0");
    assert_eq!(
        parse_flatpak_current("x86_64/stable"),
        Some(("x86_64".into(), "stable".into()))
    );
    assert_eq!(parse_flatpak_current("stable"), None);
}

#[test]
fn snapd_reply_parses_and_bad_entries_are_warnings() {
    let body = include_bytes!("../testdata/snapd-v2-snaps.json");
    let parsed = parse_snapd_snaps(body);
    assert_eq!(parsed.value.len(), 2);
    assert_eq!(parsed.value[1].name, "firefox");
    assert_eq!(parsed.value[1].version, "133.0-1");
    assert_eq!(parsed.value[0].revision.as_deref(), Some("17200"));
    assert!(parsed.value[0].install_date.is_some());
    assert_eq!(parsed.warnings.len(), 1);
    let err = parse_snapd_snaps(br#"{"type":"error","result":{"message":"access denied"}}"#);
    assert!(err.value.is_empty() && err.warnings[0].contains("access denied"));
}

#[test]
fn http_responses_split_plain_and_chunked() {
    let plain = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}";
    assert_eq!(
        split_http_response(plain).unwrap(),
        (200, b"{\"a\":1}".to_vec())
    );
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
    assert_eq!(
        split_http_response(chunked).unwrap(),
        (200, b"{\"a\":1}".to_vec())
    );
    assert_eq!(
        split_http_response(b"garbage"),
        Err(HttpResponseError::NoHeaderEnd)
    );
    let bad_size =
        split_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .unwrap_err();
    assert_eq!(bad_size.to_string(), "bad chunk size \"zz\"");
}

#[test]
fn executable_magic() {
    let mut elf = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    assert_eq!(
        detect_executable(&elf, "tool", false),
        Some(ExecutableType::Elf)
    );
    elf[8..11].copy_from_slice(&[0x41, 0x49, 0x02]);
    assert_eq!(
        detect_executable(&elf, "x.AppImage", true),
        Some(ExecutableType::AppImage(2))
    );
    elf[10] = 0x01;
    assert_eq!(
        detect_executable(&elf, "x", true),
        Some(ExecutableType::AppImage(1))
    );
    elf[10] = 0x03;
    assert_eq!(
        detect_executable(&elf, "x", true),
        Some(ExecutableType::Elf)
    );
    assert_eq!(
        detect_executable(b"MZ\x90\x00", "setup.exe", false),
        Some(ExecutableType::WindowsExe)
    );
    let ole = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0];
    assert_eq!(
        detect_executable(&ole, "Setup.MSI", false),
        Some(ExecutableType::WindowsMsi)
    );
    assert_eq!(
        detect_executable(&ole, "homework.doc", false),
        None,
        "old Office file"
    );
    assert_eq!(
        detect_executable(b"#!/bin/sh\n", "run.sh", true),
        Some(ExecutableType::Script)
    );
    assert_eq!(detect_executable(b"#!/bin/sh\n", "notes.sh", false), None);
    assert_eq!(detect_executable(b"\x7fEL", "short", true), None);
    assert_eq!(detect_executable(b"", "empty", true), None);
}

#[test]
fn appimage_names() {
    let nv = |f: &str| appimage_name_version(f);
    assert_eq!(
        nv("Obsidian-1.4.16.AppImage"),
        ("Obsidian".into(), Some("1.4.16".into()))
    );
    assert_eq!(
        nv("kdenlive-24.08.1-x86_64.AppImage"),
        ("kdenlive".into(), Some("24.08.1".into()))
    );
    assert_eq!(
        nv("balenaEtcher-1.18.11-x64.AppImage"),
        ("balenaEtcher".into(), Some("1.18.11".into()))
    );
    assert_eq!(nv("nvim.appimage"), ("nvim".into(), None));
    assert_eq!(
        nv("Tor-Browser_v13.5.AppImage"),
        ("Tor-Browser".into(), Some("13.5".into()))
    );
    assert_eq!(nv("tool"), ("tool".into(), None));
}

#[test]
fn passwd_maps_uids() {
    let m = parse_passwd(
        "root:x:0:0:root:/root:/bin/bash\n# c\nalice:x:1000:1000::/home/alice:/bin/bash\nbroken\n",
    );
    assert_eq!(m.get(&1000).map(String::as_str), Some("alice"));
    assert_eq!(m.len(), 2);
}

#[test]
fn reg_export_utf16_skips_components_updates_and_subkeys() {
    let parsed = parse_reg_export(include_bytes!("../testdata/uninstall-hklm.reg"));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let names: Vec<&str> = parsed
        .value
        .iter()
        .map(|p| p.display_name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "7-Zip 23.01 (x64)",
            "Google Chrome",
            "Mozilla Firefox (x64 en-GB)",
            "TeamViewer",
            "Microsoft Office Professional Plus 2016",
            "Steam",
            "AnyDesk",
        ]
    );
    let chrome = &parsed.value[1];
    assert_eq!(chrome.display_version.as_deref(), Some("131.0.6778.86"));
    assert_eq!(chrome.install_date.as_deref(), Some("2024-11-26"));
    assert_eq!(chrome.publisher.as_deref(), Some("Google LLC"));
    assert_eq!(chrome.scope, "machine");
    let zip = &parsed.value[0];
    assert_eq!(zip.key, "7-Zip");
    assert_eq!(
        zip.install_location.as_deref(),
        Some("C:\\Program Files\\7-Zip\\")
    );
    let anydesk = parsed.value.last().unwrap();
    assert_eq!(anydesk.scope, "machine_32bit");
    assert_eq!(
        anydesk.install_date.as_deref(),
        Some("2024/11/02"),
        "kept as written"
    );
    assert_eq!(parsed.value[5].display_version, None);
}

#[test]
fn reg_export_utf8_regedit4_with_user_hive_and_oddities() {
    let text = "REGEDIT4\r\n\r\n\
[HKEY_USERS\\S-1-5-21-1-2-3-1013\\Software\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\Discord]\r\n\
\"DisplayName\"=\"Discord\"\r\n\
\"DisplayVersion\"=\"1.0.9172\"\r\n\
\"Broken\"=what\r\n\
[-HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\Gone]\r\n\
\"DisplayName\"=\"Gone\"\r\n";
    let parsed = parse_reg_export(text.as_bytes());
    assert_eq!(parsed.value.len(), 1);
    assert_eq!(parsed.value[0].scope, "user");
    assert_eq!(
        parsed.value[0].user_sid.as_deref(),
        Some("S-1-5-21-1-2-3-1013")
    );
    // The unreadable value and the value under a deletion record are both reported.
    assert_eq!(parsed.warnings.len(), 2, "{:?}", parsed.warnings);
    let junk = parse_reg_export(b"\xff\xfe\x41");
    assert!(junk.value.is_empty() && !junk.warnings.is_empty());
}

#[test]
fn powershell_json_array_and_single_object() {
    let parsed = parse_uninstall_json(include_bytes!("../testdata/uninstall-powershell.json"));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let names: Vec<&str> = parsed
        .value
        .iter()
        .map(|p| p.display_name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "LibreOffice 24.8.3.2",
            "OpenVPN 2.6.12-I001 amd64",
            "Notepad++ (32-bit x86)"
        ]
    );
    assert_eq!(parsed.value[0].install_date.as_deref(), Some("2024-12-03"));
    assert_eq!(parsed.value[0].key, "LibreOffice 24.8");
    assert_eq!(parsed.value[2].scope, "machine_32bit");
    let single = parse_uninstall_json(include_bytes!(
        "../testdata/uninstall-powershell-single-utf16.json"
    ));
    assert!(single.warnings.is_empty(), "{:?}", single.warnings);
    assert_eq!(single.value.len(), 1);
    assert_eq!(single.value[0].display_name, "Scratch 3");
    assert_eq!(single.value[0].scope, "user");
    assert!(
        single.value[0]
            .user_sid
            .as_deref()
            .unwrap()
            .ends_with("-1013")
    );
    let bad = parse_uninstall_json(b"[1, {\"DisplayName\": 5}");
    assert!(bad.value.is_empty() && bad.warnings[0].starts_with("not JSON"));
}

/// Found by fuzzing (`agent/tests/fuzz.rs`): a file in a pupil's home whose name's last nine
/// bytes begin inside a character crashed the software probe.
#[test]
fn appimage_name_cut_inside_a_character() {
    assert_eq!(
        appimage_name_version("ࠀaA 0aA "),
        ("ࠀaA 0aA ".to_string(), None)
    );
    assert_eq!(
        appimage_name_version("Ωmega-2.1.AppImage"),
        ("Ωmega".to_string(), Some("2.1".to_string()))
    );
}
