//! Classifier and fleet-count tests.
use super::fleet::{FleetCounts, ProductKey};
use super::*;
use serde_json::json;

fn policy(approved: &[&str], denied: &[&str]) -> SoftwarePolicy {
    SoftwarePolicy {
        approved: approved.iter().map(|s| s.to_string()).collect(),
        denied: denied.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn details(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn builtin_catalogue_is_valid_and_every_entry_has_a_reason() {
    let cat = Catalogue::builtin();
    assert!(cat.entries().len() >= 15);
    for e in cat.entries() {
        assert!(e.reason.len() > 20, "{}", e.name);
    }
    assert!(
        Catalogue::from_json(
            r#"{"entries":[{"name":"x","category":"vpn","reason":" ","patterns":["x"]}]}"#
        )
        .is_err()
    );
    assert!(
        Catalogue::from_json(
            r#"{"entries":[{"name":"x","category":"vpn","reason":"r","patterns":["x["]}]}"#
        )
        .unwrap_err()
        .to_string()
        .contains("unclosed")
    );
}

#[test]
fn catalogue_catches_bypass_tools_from_every_source_but_not_lookalikes() {
    let c = Classifier::new(&policy(&[], &[])).unwrap();
    for (name, source) in [
        ("tor", "dpkg"),
        ("torbrowser-launcher", "dpkg"),
        ("openvpn", "dpkg"),
        ("network-manager-openvpn-gnome", "dpkg"),
        ("wireguard-tools", "dpkg"),
        ("shadowsocks-libev", "dpkg"),
        ("v2ray", "dpkg"),
        ("anydesk", "dpkg"),
        ("com.github.micahflee.torbrowser-launcher", "flatpak"),
        ("com.anydesk.Anydesk", "flatpak"),
        ("com.rustdesk.RustDesk", "flatpak"),
        ("Tor-Browser", "appimage"),
        ("OpenVPN 2.6.12-I001 amd64", "windows"),
        ("TeamViewer", "windows"),
        ("Psiphon 3", "windows"),
    ] {
        let v = c.classify(name, source);
        assert_eq!(v.classification, Classification::BypassTool, "{name}");
        assert_eq!(v.severity, Severity::High);
        assert_eq!(v.audience, vec![Audience::Dsl, Audience::NetworkManager]);
        assert!(v.reason.is_some() && v.category.is_some());
    }
    for name in [
        "torsocks-docs-not-a-thing",
        "editor",
        "tora",
        "storm",
        "libtorrent21",
        "operator",
        "parsecsv",
    ] {
        assert_ne!(
            c.classify(name, "dpkg").classification,
            Classification::BypassTool,
            "{name}"
        );
    }
}

#[test]
fn approved_denied_glob_and_precedence() {
    let c = Classifier::new(&policy(
        &["libreoffice*", "firefox-esr", "*", "openvpn"],
        &["steam*", "minecraft-launcher"],
    ))
    .unwrap();
    let v = c.classify("libreoffice-writer", "dpkg");
    assert_eq!(v.classification, Classification::Approved);
    assert_eq!(v.audience, vec![]);
    assert_eq!(v.severity, Severity::Info);
    assert_eq!(v.matched.as_deref(), Some("libreoffice*"));
    // Denied beats a broad glob approval.
    let v = c.classify("steam-installer", "dpkg");
    assert_eq!(v.classification, Classification::Denied);
    assert_eq!(v.audience, vec![Audience::NetworkManager]);
    assert_eq!(v.severity, Severity::Medium);
    // `*` does not hide a bypass tool...
    assert_eq!(
        c.classify("tor", "dpkg").classification,
        Classification::BypassTool
    );
    // ...but an exact approval is the school's informed choice.
    assert_eq!(
        c.classify("openvpn", "dpkg").classification,
        Classification::Approved
    );
    assert_eq!(
        c.classify("openvpn-systemd-resolved", "dpkg")
            .classification,
        Classification::BypassTool
    );
    // Flatpak IDs also match on their last segment.
    assert_eq!(
        c.classify("org.mozilla.firefox-esr", "flatpak")
            .classification,
        Classification::Approved
    );

    let strict = Classifier::new(&policy(&["libreoffice*"], &["steam"])).unwrap();
    let v = strict.classify("gimp", "dpkg");
    assert_eq!(v.classification, Classification::Unapproved);
    assert_eq!(v.audience, vec![Audience::NetworkManager]);
    assert_eq!(v.severity, Severity::Low);
    assert_eq!(
        strict.classify("Steam", "windows").classification,
        Classification::Denied
    );
    assert!(Classifier::new(&policy(&["bad["], &[])).is_err());
}

/// Found by fuzzing (`fuzz_tests.rs`): an executable whose name ends in a character longer
/// than a byte made the extension check slice inside it, and the collector panicked on every
/// resend of the device's batch.
#[test]
fn executable_names_ending_in_any_character() {
    let c = Classifier::new(&policy(&[], &[])).unwrap();
    for path in ["𐀀", "Downloads/game🙂", "Desktop/aéab", "x/Ωmega.AppImage"] {
        let exe = details(json!({"path": path, "type": "elf"}));
        assert_eq!(
            c.classify_event("executable.in_user_area", &exe).len(),
            1,
            "{path}"
        );
    }
    let exe = details(json!({"path": "x/Ωmega.AppImage", "type": "appimage"}));
    assert_eq!(
        c.classify_event("executable.in_user_area", &exe)[0].name,
        "Ωmega"
    );
}

#[test]
fn events_are_classified_by_kind() {
    let c = Classifier::new(&policy(&["libreoffice*"], &[])).unwrap();
    let installed = details(json!({"source": "dpkg", "name": "openvpn", "version": "2.6.3-1"}));
    let v = c.classify_event("software.installed", &installed);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].classification, Classification::BypassTool);
    // A removal is recorded, not escalated.
    let v = c.classify_event("software.removed", &installed);
    assert_eq!(v[0].classification, Classification::BypassTool);
    assert_eq!((v[0].severity, v[0].audience.len()), (Severity::Info, 0));
    let inv = details(json!({
        "batch": "b", "part": 1, "parts": 1, "total": 3,
        "fields": ["name", "version", "arch", "owner", "installed_at", "path"],
        "items": {"dpkg": [["libreoffice-calc", "4:7.4"], ["tor", "0.4.7"]], "flatpak": [["com.anydesk.Anydesk", "6.3", "x86_64", "pupil1"]]}
    }));
    let v = c.classify_event("software.inventory", &inv);
    let classes: Vec<_> = v
        .iter()
        .map(|v| (v.name.as_str(), v.classification))
        .collect();
    assert_eq!(
        classes,
        [
            ("libreoffice-calc", Classification::Approved),
            ("tor", Classification::BypassTool),
            ("com.anydesk.Anydesk", Classification::BypassTool)
        ]
    );
    let exe = details(
        json!({"path": "Downloads/psiphon3.exe", "type": "windows_exe", "sha256": "00", "size": 1}),
    );
    assert_eq!(
        c.classify_event("executable.in_user_area", &exe)[0].classification,
        Classification::BypassTool
    );
    let exe = details(json!({"path": "Desktop/game", "type": "elf"}));
    let v = c.classify_event("executable.in_user_area", &exe);
    assert_eq!(
        (v[0].classification, v[0].audience.clone()),
        (Classification::Unapproved, vec![Audience::NetworkManager])
    );
    assert!(c.classify_event("antivirus.status", &exe).is_empty());
    assert!(
        c.classify_event("software.installed", &Map::new())
            .is_empty()
    );
}

fn inv(batch: &str, part: u64, parts: u64, items: Value) -> Map<String, Value> {
    details(json!({"batch": batch, "part": part, "parts": parts,
        "fields": ["name", "version", "arch", "owner", "installed_at", "path"], "items": items}))
}

#[test]
fn fleet_counts_devices_per_product() {
    let mut f = FleetCounts::default();
    f.apply(
        "laptop-1",
        "software.inventory",
        &inv(
            "a",
            1,
            1,
            json!({"dpkg": [["libreoffice-writer", "1", "amd64"], ["gimp", "2"]]}),
        ),
    )
    .unwrap();
    // A split inventory counts only once every part has arrived.
    f.apply(
        "laptop-2",
        "software.inventory",
        &inv(
            "b",
            1,
            2,
            json!({"dpkg": [["libreoffice-writer", "1", "amd64"]]}),
        ),
    )
    .unwrap();
    assert_eq!(f.count("dpkg", "libreoffice-writer"), 1);
    f.apply("laptop-2", "software.inventory", &inv("b", 2, 2, json!({"flatpak": [["org.gimp.GIMP", "2.10", "x86_64", "alice"], ["org.gimp.GIMP", "2.10", "x86_64", "bob"]]}))).unwrap();
    assert_eq!(f.count("dpkg", "libreoffice-writer"), 2);
    assert_eq!(
        f.count("flatpak", "org.gimp.GIMP"),
        1,
        "two users, one device"
    );

    // Changes fold in.
    let ch = |name: &str, owner: Option<&str>| {
        let mut d = details(
            json!({"source": "flatpak", "name": name, "version": "2.10", "architecture": "x86_64"}),
        );
        if let Some(o) = owner {
            d.insert("owner".into(), json!(o));
        }
        d
    };
    f.apply(
        "laptop-1",
        "software.installed",
        &ch("org.gimp.GIMP", Some("carol")),
    )
    .unwrap();
    assert_eq!(f.count("flatpak", "org.gimp.GIMP"), 2);
    f.apply(
        "laptop-2",
        "software.removed",
        &ch("org.gimp.GIMP", Some("alice")),
    )
    .unwrap();
    assert_eq!(f.count("flatpak", "org.gimp.GIMP"), 2, "bob still has it");
    f.apply(
        "laptop-2",
        "software.removed",
        &ch("org.gimp.GIMP", Some("bob")),
    )
    .unwrap();
    assert_eq!(f.count("flatpak", "org.gimp.GIMP"), 1);

    // A new inventory replaces the device's old state.
    f.apply(
        "laptop-1",
        "software.inventory",
        &inv("c", 1, 1, json!({"dpkg": [["gimp", "2"]]})),
    )
    .unwrap();
    let counts = f.device_counts();
    let key = |s: &str, n: &str| ProductKey {
        source: s.into(),
        name: n.into(),
    };
    assert_eq!(counts.get(&key("dpkg", "libreoffice-writer")), Some(&1));
    assert_eq!(counts.get(&key("dpkg", "gimp")), Some(&1));
    assert_eq!(counts.get(&key("flatpak", "org.gimp.GIMP")), None);

    assert!(
        f.apply("laptop-3", "software.inventory", &inv("d", 3, 2, json!({})))
            .is_err()
    );
    assert!(
        f.apply("laptop-3", "software.installed", &Map::new())
            .is_err()
    );
    f.remove_device("laptop-2");
    assert_eq!(f.count("dpkg", "libreoffice-writer"), 0);
}

#[test]
fn a_device_state_round_trips_and_a_damaged_one_is_refused() {
    let mut f = FleetCounts::default();
    let d = details(json!({"source": "dpkg", "name": "gimp", "version": "2"}));
    f.fold("laptop-1", 5, "software.installed", &d).unwrap();
    // Already folded through 5: a resend of 4 changes nothing.
    let removed = details(json!({"source": "dpkg", "name": "gimp", "version": "2"}));
    f.fold("laptop-1", 4, "software.removed", &removed).unwrap();
    assert_eq!(f.count("dpkg", "gimp"), 1);

    let saved = f.export_device("laptop-1").unwrap();
    let mut g = FleetCounts::default();
    g.import_device("laptop-1", f.through_seq("laptop-1"), saved)
        .unwrap();
    assert_eq!((g.count("dpkg", "gimp"), g.through_seq("laptop-1")), (1, 5));
    assert!(
        g.import_device("laptop-2", 9, json!({"installed": 3}))
            .is_err()
    );
    assert_eq!(
        g.through_seq("laptop-2"),
        0,
        "nothing imported: rebuilt from events"
    );
}
