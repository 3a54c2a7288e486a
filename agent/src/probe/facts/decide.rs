//! Device facts as the collector keeps them: raw OS reads made into the `device.facts` details,
//! and whether a re-read differs enough from what was last sent to be worth sending again.
//!
//! Pure: no clock, no I/O; the probe feeds it reads and sends what it says.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::os::facts::{RawBattery, RawFacts};

/// Free space moves all day; only a move of more than this share of the disk (or
/// [`DISK_MIN_STEP`], whichever is larger) is news to the network manager.
pub const DISK_STEP_PERCENT: u64 = 5;
pub const DISK_MIN_STEP: u64 = 1 << 30;
/// `btime` is derived from the wall clock, so it wobbles by a second and follows NTP's
/// corrections; a moved boot time within this much is the same boot.
pub const BOOT_TIME_SLACK_SECS: i64 = 60;

/// What the dashboard shows of a device; `None` where it could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceFacts {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel: Option<String>,
    pub cpu_model: Option<String>,
    pub cpu_cores: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    pub disk_free_bytes: Option<u64>,
    pub boot_time: Option<DateTime<Utc>>,
    /// Full-charge capacity over design capacity, whole percent (over 100 for a new battery).
    pub battery_health_pct: Option<u64>,
    pub battery_cycles: Option<u64>,
}

/// Firmware fills DMI fields it was never given with these; they identify nothing, and a
/// serial of "Default string" on a hundred laptops would mislead an asset register.
const DMI_PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "default string",
    "not specified",
    "not applicable",
    "system serial number",
    "system product name",
    "system manufacturer",
    "none",
    "n/a",
    "0",
];

/// The raw reads, cleaned: placeholders and zeros (sysinfo's "could not read") become absent.
pub fn device_facts(raw: &RawFacts) -> DeviceFacts {
    let text = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let dmi = |s: &Option<String>| {
        text(s).filter(|s| !DMI_PLACEHOLDERS.contains(&s.to_ascii_lowercase().as_str()))
    };
    let disk = raw.root_disk.filter(|d| d.total_bytes > 0);
    let (battery_health_pct, battery_cycles) = battery(&raw.batteries);
    DeviceFacts {
        vendor: dmi(&raw.dmi.sys_vendor),
        model: dmi(&raw.dmi.product_name),
        serial: dmi(&raw.dmi.product_serial),
        os_name: text(&raw.os_name),
        os_version: text(&raw.os_version),
        kernel: text(&raw.kernel),
        cpu_model: text(&raw.cpu_brand),
        cpu_cores: raw.physical_cores.filter(|&n| n > 0).map(|n| n as u64),
        memory_bytes: Some(raw.memory_bytes).filter(|&m| m > 0),
        disk_total_bytes: disk.map(|d| d.total_bytes),
        disk_free_bytes: disk.map(|d| d.available_bytes),
        boot_time: raw
            .boot_time
            .filter(|&t| t > 0)
            .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0)),
        battery_health_pct,
        battery_cycles,
    }
}

/// Health over every present battery (two-bay laptops: total full over total design, in
/// energy if any battery reports it, else charge), and the most-worn battery's cycle count.
fn battery(batteries: &[RawBattery]) -> (Option<u64>, Option<u64>) {
    let present: Vec<&RawBattery> = batteries
        .iter()
        .filter(|b| b.present != Some(false))
        .collect();
    let sum = |pair: fn(&RawBattery) -> (Option<u64>, Option<u64>)| {
        let mut total = (0u64, 0u64);
        for b in &present {
            if let (Some(full), Some(design)) = pair(b)
                && design > 0
            {
                total = (total.0 + full, total.1 + design);
            }
        }
        (total.1 > 0).then_some(total)
    };
    let health = sum(|b| (b.energy_full, b.energy_full_design))
        .or_else(|| sum(|b| (b.charge_full, b.charge_full_design)))
        .map(|(full, design)| (full.saturating_mul(200) + design) / (2 * design));
    // Many firmwares report 0 when they do not count cycles (UPower reads 0 as unknown too).
    let cycles = present
        .iter()
        .filter_map(|b| b.cycle_count)
        .filter(|&c| c > 0)
        .max();
    (health, cycles)
}

impl DeviceFacts {
    /// The `device.facts` details: a flat object, a key only for what was read.
    pub fn details(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        let s = |v: &Option<String>| v.clone().map(Value::from);
        let n = |v: Option<u64>| v.map(Value::from);
        put("vendor", s(&self.vendor));
        put("model", s(&self.model));
        put("serial", s(&self.serial));
        put("os_name", s(&self.os_name));
        put("os_version", s(&self.os_version));
        put("kernel", s(&self.kernel));
        put("cpu_model", s(&self.cpu_model));
        put("cpu_cores", n(self.cpu_cores));
        put("memory_bytes", n(self.memory_bytes));
        put("disk_total_bytes", n(self.disk_total_bytes));
        put("disk_free_bytes", n(self.disk_free_bytes));
        put(
            "boot_time",
            self.boot_time.map(|t| Value::from(t.to_rfc3339())),
        );
        put("battery_health_pct", n(self.battery_health_pct));
        put("battery_cycles", n(self.battery_cycles));
        m
    }
}

/// True when `now` is worth a new `device.facts` after `sent`: hardware, OS, kernel or battery
/// health changed, the disk's free space (or, on pooled filesystems, its size) moved by more than
/// the step, or the machine booted again. The cycle count alone is not news: it creeps up daily.
pub fn changed_meaningfully(sent: &DeviceFacts, now: &DeviceFacts) -> bool {
    fn identity(f: &DeviceFacts) -> ([&Option<String>; 7], [Option<u64>; 3]) {
        (
            [
                &f.vendor,
                &f.model,
                &f.serial,
                &f.os_name,
                &f.os_version,
                &f.kernel,
                &f.cpu_model,
            ],
            [f.cpu_cores, f.memory_bytes, f.battery_health_pct],
        )
    }
    let size = sent.disk_total_bytes.max(now.disk_total_bytes).unwrap_or(0);
    let step = (size / 100 * DISK_STEP_PERCENT).max(DISK_MIN_STEP);
    let moved = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => a.abs_diff(b) > step,
        (a, b) => a.is_some() != b.is_some(),
    };
    let rebooted = match (sent.boot_time, now.boot_time) {
        (Some(a), Some(b)) => (b - a).num_seconds().abs() > BOOT_TIME_SLACK_SECS,
        (a, b) => a.is_some() != b.is_some(),
    };
    identity(sent) != identity(now)
        || moved(sent.disk_free_bytes, now.disk_free_bytes)
        || moved(sent.disk_total_bytes, now.disk_total_bytes)
        || rebooted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::facts::{RawDisk, RawDmi};
    use serde_json::json;

    const GIB: u64 = 1 << 30;

    fn raw() -> RawFacts {
        RawFacts {
            dmi: RawDmi {
                sys_vendor: Some("LENOVO".into()),
                product_name: Some("20L5CTO1WW".into()),
                product_serial: Some("PF1ABCDE".into()),
            },
            os_name: Some("Debian GNU/Linux".into()),
            os_version: Some("12".into()),
            kernel: Some("6.1.0-26-amd64".into()),
            cpu_brand: Some("Intel(R) Core(TM) i5-8350U CPU @ 1.70GHz".into()),
            physical_cores: Some(4),
            memory_bytes: 8 * GIB,
            root_disk: Some(RawDisk {
                total_bytes: 256 * GIB,
                available_bytes: 100 * GIB,
            }),
            boot_time: Some(1_767_261_600),
            batteries: vec![RawBattery {
                name: "BAT0".into(),
                present: Some(true),
                energy_full: Some(45_120_000),
                energy_full_design: Some(57_020_000),
                cycle_count: Some(312),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_laptop_becomes_flat_details() {
        assert_eq!(
            Value::Object(device_facts(&raw()).details()),
            json!({
                "vendor": "LENOVO",
                "model": "20L5CTO1WW",
                "serial": "PF1ABCDE",
                "os_name": "Debian GNU/Linux",
                "os_version": "12",
                "kernel": "6.1.0-26-amd64",
                "cpu_model": "Intel(R) Core(TM) i5-8350U CPU @ 1.70GHz",
                "cpu_cores": 4,
                "memory_bytes": 8 * GIB,
                "disk_total_bytes": 256 * GIB,
                "disk_free_bytes": 100 * GIB,
                "boot_time": "2026-01-01T10:00:00+00:00",
                // 45.12 / 57.02 = 79.1 %
                "battery_health_pct": 79,
                "battery_cycles": 312,
            })
        );
    }

    #[test]
    fn what_could_not_be_read_is_left_out() {
        // A desktop without DMI access, battery or readable /proc: only the kernel is known.
        let bare = RawFacts {
            dmi: RawDmi {
                sys_vendor: Some("To Be Filled By O.E.M.".into()),
                product_name: Some("  \n".into()),
                product_serial: Some("Default string".into()),
            },
            kernel: Some("6.12.0".into()),
            cpu_brand: Some(String::new()),
            physical_cores: Some(0),
            root_disk: Some(RawDisk {
                total_bytes: 0,
                available_bytes: 0,
            }),
            boot_time: Some(0),
            ..Default::default()
        };
        assert_eq!(
            Value::Object(device_facts(&bare).details()),
            json!({"kernel": "6.12.0"})
        );
    }

    #[test]
    fn battery_health_rounds_to_whole_percent_and_falls_back_to_charge() {
        let health = |batteries: Vec<RawBattery>| battery(&batteries);
        let charge = |full, design, cycles| RawBattery {
            name: "BAT0".into(),
            charge_full: Some(full),
            charge_full_design: Some(design),
            cycle_count: cycles,
            ..Default::default()
        };
        // 3.9 / 4.4 = 88.6 %; firmware that does not count cycles says 0.
        assert_eq!(
            health(vec![charge(3_900_000, 4_400_000, Some(0))]),
            (Some(89), None)
        );
        // A new battery can hold more than its design capacity.
        assert_eq!(
            health(vec![charge(4_500_000, 4_400_000, None)]),
            (Some(102), None)
        );
        // A design capacity of 0 would divide by zero: no health.
        assert_eq!(health(vec![charge(3_900_000, 0, Some(5))]), (None, Some(5)));
        // Two bays: total over total; the most-worn battery's cycles; an empty bay is ignored.
        let mut second = charge(1_000_000, 4_000_000, Some(900));
        second.name = "BAT1".into();
        let mut empty = charge(0, 4_000_000, Some(7000));
        empty.name = "BAT2".into();
        empty.present = Some(false);
        assert_eq!(
            health(vec![charge(3_900_000, 4_400_000, Some(40)), second, empty]),
            (Some(58), Some(900))
        );
        assert_eq!(health(vec![]), (None, None));
    }

    #[test]
    fn a_steady_machine_is_not_news() {
        let sent = device_facts(&raw());
        let mut r = raw();
        // Within 5 % of 256 GiB (12.8 GiB), up or down.
        r.root_disk.as_mut().unwrap().available_bytes = 100 * GIB - 12 * GIB;
        // btime's one-second wobble, and NTP moving the clock half a minute.
        r.boot_time = Some(1_767_261_600 + 30);
        // Another charge cycle.
        r.batteries[0].cycle_count = Some(313);
        assert!(!changed_meaningfully(&sent, &device_facts(&r)));
    }

    #[test]
    fn changes_that_matter_are_news() {
        let sent = device_facts(&raw());
        let changed = |f: fn(&mut RawFacts)| {
            let mut r = raw();
            f(&mut r);
            changed_meaningfully(&sent, &device_facts(&r))
        };
        assert!(changed(
            |r| r.root_disk.as_mut().unwrap().available_bytes = 87 * GIB
        ));
        assert!(changed(
            |r| r.root_disk.as_mut().unwrap().available_bytes = 113 * GIB
        ));
        assert!(changed(|r| r.root_disk = None));
        assert!(changed(|r| r.kernel = Some("6.1.0-27-amd64".into())));
        assert!(changed(|r| r.os_version = Some("13".into())));
        assert!(changed(|r| r.memory_bytes = 16 * GIB));
        assert!(changed(|r| r.physical_cores = Some(8)));
        assert!(changed(|r| r.dmi.product_serial = None));
        assert!(changed(|r| r.boot_time = Some(1_767_261_600 + 3600)));
        // 44.5 / 57.02 = 78.0 %
        assert!(changed(|r| r.batteries[0].energy_full = Some(44_500_000)));
        assert!(changed(|r| r.batteries.clear()));
        // 45.0 / 57.02 = 78.9 %: still 79.
        assert!(!changed(|r| r.batteries[0].energy_full = Some(45_000_000)));
    }

    #[test]
    fn on_a_small_disk_the_step_is_a_gibibyte() {
        let facts = |free| DeviceFacts {
            disk_total_bytes: Some(8 * GIB),
            disk_free_bytes: Some(free),
            ..Default::default()
        };
        // 5 % of 8 GiB is 410 MiB; the step is 1 GiB.
        assert!(!changed_meaningfully(&facts(4 * GIB), &facts(3 * GIB)));
        assert!(changed_meaningfully(&facts(4 * GIB), &facts(3 * GIB - 1)));
    }
}
