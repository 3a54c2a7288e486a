//! `--mix realistic`: the deterministic mix of events a school fleet produces.
use caretaker_proto::pb;
use serde_json::{Value, json};

pub(super) fn hostname(agent: u64) -> String {
    format!("lap-{agent:05}")
}

/// SplitMix64: a fixed, well-mixed hash, so every run sends the same events.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Packages a pupil might install: bypass tools from the collector's catalogue (they reach
/// the DSL and the network manager) and ordinary software nobody approved (the network manager).
const BYPASS: &[&str] = &["tor", "openvpn", "anydesk", "wireguard-tools", "psiphon"];
const UNAPPROVED: &[&str] = &[
    "gimp",
    "vlc",
    "steam",
    "discord",
    "minecraft-launcher",
    "audacity",
    "blender",
    "inkscape",
];

/// Event `seq` of agent `agent` in the realistic mix. Seq 1 is `agent.started`; after that,
/// by a hash of (agent, seq): 90 % `agent.heartbeat`, 4 % `screen.compliance` (1 in 10 of them
/// `cannot_enforce`), 3 % `antivirus.status` (1 in 8 `stale`), 2 % `software.installed` (1 in
/// 4 a bypass tool), 1 % `usb.inserted` (7 in 10 a pupil's stick refused, which reaches the
/// DSL; 2 in 10 a member of staff's, allowed; 1 in 10 a keyboard). Each laptop has one pupil,
/// `pupil<agent>`, named on the events that carry a user.
pub(super) fn realistic_event(
    agent: u64,
    seq: u64,
    at: chrono::DateTime<chrono::Utc>,
) -> pb::Event {
    let h = mix64((agent << 32) ^ seq);
    let (roll, sub, pick) = (h % 100, (h >> 8) % 100, (h >> 16) as usize);
    let pupil = format!("pupil{agent}");
    let (kind, user, details) = if seq == 1 {
        (
            "agent.started",
            None,
            json!({"agent_version": env!("CARGO_PKG_VERSION"), "hostname": hostname(agent),
                   "os": "Debian GNU/Linux 12 (bookworm)"}),
        )
    } else if roll < 90 {
        (
            "agent.heartbeat",
            None,
            json!({"uptime_secs": (seq - 1) * 300}),
        )
    } else if roll < 94 {
        let d = if sub < 90 {
            json!({"state": "enforced"})
        } else {
            json!({"state": "cannot_enforce", "reason": "no_idle_source"})
        };
        ("screen.compliance", None, d)
    } else if roll < 97 {
        let status = if sub < 88 { "current" } else { "stale" };
        (
            "antivirus.status",
            None,
            json!({"status": status, "product": "ClamAV", "database_age_hours": if status == "current" { 6 } else { 120 }}),
        )
    } else if roll < 99 {
        let name = if sub < 25 {
            BYPASS[pick % BYPASS.len()]
        } else {
            UNAPPROVED[pick % UNAPPROVED.len()]
        };
        (
            "software.installed",
            Some(pupil),
            json!({"source": "dpkg", "name": name, "version": "1"}),
        )
    } else {
        let serial = format!("SN-{agent:05}-{}", pick % 2);
        let d = if sub < 70 {
            json!({"mass_storage": true, "account": "pupil", "decision": "block",
                   "reason": "pupil_storage", "antivirus_current": true,
                   "serial": serial, "product": "Cruzer", "vendor": "SanDisk"})
        } else if sub < 90 {
            json!({"mass_storage": true, "account": "staff", "decision": "allow",
                   "antivirus_current": true, "serial": serial, "product": "DataTraveler",
                   "vendor": "Kingston"})
        } else {
            json!({"mass_storage": false, "account": "pupil", "decision": "allow",
                   "antivirus_current": true, "product": "USB Keyboard", "vendor": "Logitech"})
        };
        ("usb.inserted", Some(pupil), d)
    };
    let Value::Object(details) = details else {
        unreachable!("details are objects")
    };
    pb::Event {
        seq,
        occurred_at: Some(caretaker_proto::convert::timestamp_from(at)),
        user: user.unwrap_or_default(),
        kind: kind.into(),
        details: Some(caretaker_proto::convert::struct_from_json(&details)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_realistic_mix_is_deterministic_and_near_its_shares() {
        let at = chrono::Utc::now();
        let mut kinds: HashMap<String, u64> = HashMap::new();
        for agent in 0..200 {
            for seq in 1..=100 {
                let e = realistic_event(agent, seq, at);
                assert_eq!(e, realistic_event(agent, seq, at));
                *kinds.entry(e.kind).or_default() += 1;
            }
        }
        let share = |k: &str| kinds.get(k).copied().unwrap_or(0) as f64 / 20_000.0;
        assert!((share("agent.heartbeat") - 0.90).abs() < 0.02, "{kinds:?}");
        assert!((share("usb.inserted") - 0.01).abs() < 0.005, "{kinds:?}");
        assert_eq!(kinds["agent.started"], 200);
    }
}
