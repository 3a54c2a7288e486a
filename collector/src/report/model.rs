//! What a monitoring report holds: `Counts` (numbers and fixed labels only) for everyone, and the names only the DSL's version carries.
//!
//! Invariant: nothing reachable from `Counts` or `GovernorsReport` holds a string that came
//! from a device, an event or an account. Labels are `&'static str` chosen by this code; the
//! only owned strings are ones the school typed into its settings (school name, term names,
//! licensed product names) and dates this code formats. So the governors' version cannot carry
//! a pupil's username, a hostname or a serial: there is no field to put one in.

use chrono::NaiveDate;

/// The heading facts of a report.
#[derive(Debug, Clone)]
pub struct Meta {
    /// From the settings.
    pub school: String,
    pub period_label: String,
    pub period_dates: String,
    pub previous_label: String,
    pub previous_dates: String,
    /// "30 Nov 2026 17:05".
    pub generated: String,
    /// The time zone days are counted in, e.g. "Europe/London".
    pub time_zone: String,
    /// "Governors" or "Designated Safeguarding Lead".
    pub audience: &'static str,
}

/// One day of a compliance chart: how many active devices were in each state at the day's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCount {
    pub day: NaiveDate,
    pub good: u32,
    pub bad: u32,
    pub unknown: u32,
}

impl DayCount {
    /// A day with nothing counted yet.
    pub fn zero(day: NaiveDate) -> Self {
        DayCount {
            day,
            good: 0,
            bad: 0,
            unknown: 0,
        }
    }
}

/// A compliance measure over the period, day by day.
#[derive(Debug, Clone)]
pub struct ComplianceSeries {
    /// CSV-safe identifier, e.g. `screen_lock`.
    pub key: &'static str,
    pub title: &'static str,
    pub good_label: &'static str,
    pub bad_label: &'static str,
    pub unknown_label: &'static str,
    pub days: Vec<DayCount>,
}

impl ComplianceSeries {
    /// The last day's counts (zeros if the period has no days yet).
    pub fn last(&self) -> DayCount {
        self.days
            .last()
            .copied()
            .unwrap_or(DayCount::zero(NaiveDate::MIN))
    }

    /// The share compliant at the end, in whole percent of devices.
    pub fn end_percent(&self) -> u32 {
        let l = self.last();
        let all = l.good + l.bad + l.unknown;
        (l.good * 100).checked_div(all).unwrap_or(0)
    }
}

/// Removable media on one day: how sticks were met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaDay {
    pub day: NaiveDate,
    /// Pupils' sticks refused by the policy.
    pub refused: u32,
    /// Storage allowed (staff, permitted, or after a scan).
    pub allowed: u32,
    pub scanned_clean: u32,
    pub infected: u32,
}

/// Incidents of one kind and category in the period, by where they stand at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentLine {
    /// From `incidents::kind_label`.
    pub kind: &'static str,
    pub category: &'static str,
    /// Incidents with events in the period.
    pub incidents: u32,
    /// Of those, first raised in the period.
    pub new: u32,
    /// Events they counted in the period (repeats join an incident).
    pub events: u64,
    pub open: u32,
    pub acknowledged: u32,
    pub actioned: u32,
    pub closed: u32,
}

/// One measure against the previous period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trend {
    pub measure: &'static str,
    pub this: i64,
    pub previous: i64,
    /// "%" or "".
    pub unit: &'static str,
    /// Whether a rise is good news (compliance) or bad (incidents).
    pub higher_is_better: bool,
    /// False when no laptop was enrolled by the end of the previous period: nothing to compare.
    pub known: bool,
}

impl Trend {
    pub fn change(&self) -> String {
        if !self.known {
            return "no earlier figures".into();
        }
        let d = self.this - self.previous;
        match d.cmp(&0) {
            std::cmp::Ordering::Equal => "no change".into(),
            std::cmp::Ordering::Greater => format!("up {d}{}", self.unit),
            std::cmp::Ordering::Less => format!("down {}{}", -d, self.unit),
        }
    }

    /// "better", "worse" or "same", for the text beside the arrow (not colour alone).
    pub fn verdict(&self) -> &'static str {
        let d = self.this - self.previous;
        if d == 0 || !self.known {
            "same"
        } else if (d > 0) == self.higher_is_better {
            "better"
        } else {
            "worse"
        }
    }
}

/// Installations of a licensed product against the licences the school entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceLine {
    /// As the school typed it in the settings.
    pub product: String,
    pub licences: u64,
    pub installed: u64,
}

impl LicenceLine {
    pub fn status(&self) -> String {
        match self.installed.cmp(&self.licences) {
            std::cmp::Ordering::Greater => {
                format!("Over by {}", self.installed - self.licences)
            }
            std::cmp::Ordering::Equal => "All in use".into(),
            std::cmp::Ordering::Less => format!("{} spare", self.licences - self.installed),
        }
    }

    pub fn over(&self) -> bool {
        self.installed > self.licences
    }
}

/// A policy change, by role only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    pub version: u64,
    pub at: String,
    /// The changer's role ("Network manager"), never their name.
    pub by_role: &'static str,
    /// Section labels, e.g. "Screen lock, Removable media".
    pub sections: Vec<&'static str>,
}

/// Everything both audiences see: numbers and fixed labels.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Active devices at the end of the period.
    pub devices: u32,
    pub compliance: Vec<ComplianceSeries>,
    pub media: Vec<MediaDay>,
    pub incidents: Vec<IncidentLine>,
    pub safeguarding_incidents: u32,
    pub technical_incidents: u32,
    pub trends: Vec<Trend>,
    /// Devices not heard from for `SILENT_DAYS` by the end of the period.
    pub silent: u32,
    pub licences: Vec<LicenceLine>,
    pub policy_changes: Vec<PolicyChange>,
}

/// The governors' report: counts only. It has no field that could hold a name.
#[derive(Debug, Clone)]
pub struct GovernorsReport {
    pub meta: Meta,
    pub counts: Counts,
}

/// A device that went silent, by name (DSL only).
#[derive(Debug, Clone)]
pub struct SilentDevice {
    pub hostname: String,
    pub id: String,
    /// "27 Nov 2026 09:12" or "never".
    pub last_seen: String,
}

/// A safeguarding incident with the pupil and device (DSL only).
#[derive(Debug, Clone)]
pub struct NamedIncident {
    pub id: u64,
    pub title: String,
    pub user: String,
    pub hostname: String,
    pub first: String,
    pub last: String,
    pub count: u64,
    pub status: &'static str,
}

/// A policy change with who made it (DSL only).
#[derive(Debug, Clone)]
pub struct NamedPolicyChange {
    pub version: u64,
    pub at: String,
    pub by: String,
    pub sections: Vec<&'static str>,
}

/// The DSL's report: the same counts, plus who and which device.
#[derive(Debug, Clone)]
pub struct DslReport {
    pub meta: Meta,
    pub counts: Counts,
    pub silent_devices: Vec<SilentDevice>,
    pub safeguarding: Vec<NamedIncident>,
    pub policy_changes: Vec<NamedPolicyChange>,
    /// The dashboard's address from the settings, for links to incidents ("" if unset).
    pub dashboard_url: String,
}
