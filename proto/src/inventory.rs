//! The data inventory: every event kind the agent can emit, every field each can carry, whether
//! it is personal data, who can see it, where it is kept, for how long, and why a policy needs it.
//!
//! Both ends use it: the agent checks each event against it in debug builds (so a new field
//! without an entry fails the tests), and `PRIVACY.md` is rendered from it (a test fails when
//! the checked-in file differs). Field paths name nested fields the way the details are built:
//! `products[].name` is `name` in each object of the `products` array, `requested_by.user` is
//! `user` inside the `requested_by` object.
//!
//! Over 600 lines on purpose: it is one table, an entry per field of every kind, read top to
//! bottom by whoever reviews what is collected, and kept in one file so the agent's check and
//! `PRIVACY.md` have a single source (split by probe, a field would hide from that review).

use serde_json::{Map, Value};

/// Whether a field can identify a pupil or a member of staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personal {
    No,
    /// Not a name, but it can be linked to a person with other information.
    Indirect(&'static str),
    /// Names a person, or is something a person chose (a file or volume name).
    Yes(&'static str),
}

/// Whether the Designated Safeguarding Lead sees a kind (the DSL sees no technical events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dsl {
    No,
    /// As the device's current state, on the page of a device a safeguarding incident
    /// concerns, and in the DSL's report.
    DeviceState,
    /// When the collector flags it for the DSL (the condition).
    WhenFlagged(&'static str),
}

impl Dsl {
    fn text(self) -> String {
        match self {
            Dsl::No => "No".into(),
            Dsl::DeviceState => {
                "Only as a device's state, for a device a safeguarding incident concerns".into()
            }
            Dsl::WhenFlagged(when) => format!("When {when}"),
        }
    }
}

/// One field of an event's details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Path in the details (see the module's note on nested paths).
    pub path: &'static str,
    pub about: &'static str,
    pub personal: Personal,
    /// Its parts are described in `about` and not checked one by one (an object whose keys
    /// are data, such as the inventory's items by source).
    pub opaque: bool,
}

const fn f(path: &'static str, about: &'static str, personal: Personal) -> Field {
    Field {
        path,
        about,
        personal,
        opaque: false,
    }
}

/// A field that says nothing about a person: most of them, so the personal ones stand out.
const fn plain(path: &'static str, about: &'static str) -> Field {
    f(path, about, Personal::No)
}

/// One event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub name: &'static str,
    /// What it records and when it is sent.
    pub summary: &'static str,
    /// The event's `user` (a login name), when the kind can carry one: whose it is.
    pub user: Option<&'static str>,
    /// Groups of fields (groups shared by several kinds, such as a USB device's description).
    pub fields: &'static [&'static [Field]],
    /// Which roles can see it on the dashboard, API, digests and reports.
    pub seen_by: &'static str,
    pub dsl: Dsl,
    /// Where the collector keeps it beyond the event itself, if anywhere.
    pub also_stored: Option<&'static str>,
    /// The policy clause (seed and section, see `/work/shared/guide/policy-map.md`) or the
    /// operational reason it is collected.
    pub why: &'static str,
}

impl Kind {
    pub fn fields(&self) -> impl Iterator<Item = &'static Field> {
        self.fields.iter().flat_map(|g| g.iter())
    }

    pub fn field(&self, path: &str) -> Option<&'static Field> {
        self.fields().chain(ANY_KIND).find(|f| f.path == path)
    }
}

/// Where every event is kept, whatever its kind.
pub const STORED: &str = "On the laptop: the agent's spool (`/var/lib/caretaker-agent/spool`, root only) until the collector acknowledges it, normally within seconds when online. On the collector: its store, either one file in the data directory (`store/caretaker.redb`, readable by the collector's account only) or, for a trust's several collectors, a PostgreSQL database the school runs. There each event is kept once with its indexes (by device, audience, user and kind); incidents and their records, the audit log, the digests and reports sent, and the legal holds are kept beside the events. A copy of the store in a backup lives as long as the school keeps that backup: retention below applies to the live store, so backups should be kept no longer than the shortest period.";

/// How long each kind of record is kept: the collector's settings (`retention`), whose
/// defaults `collector/src/settings.rs` checks against these words.
pub const KEPT: &str = "On the laptop: until the collector acknowledges it (or, if the laptop is offline so long that the spool fills, until it is the oldest and is dropped, which is itself recorded).

On the collector, each kind of record for as long as the school's settings say (the `retention` section, changed by the network manager; every change is versioned with who made it). An hourly task removes what is older, in small batches, and records in the audit log how many of each kind it removed (never what they said). The defaults, and why:

| Record | Kept by default | Why that long |
|---|---|---|
| Technical events (every event whose audience is not the DSL), and technical incidents once closed | 400 days | The governors' termly report compares a term with the one before and replays each laptop's state from up to 60 days before that; a report of a whole school year made in the summer holiday needs about 395 days. A shorter setting than the school's term dates need is refused. |
| Safeguarding events (those the DSL sees), and safeguarding incidents with their records once closed | 7 years (2,557 days) | The usual schools' period for records of a concern about a pupil. The IRMS toolkit keeps child-protection files much longer (until the pupil is 25, or more): the school may lengthen this, or place a legal hold. |
| The audit log | 1 year | Answers who looked at or changed what across a school year and a complaint made after it. At least 90 days can be set. |
| Digests and reports sent (their bodies name pupils) | 1 year | The DSL's record is the incident; a digest only announces it. At least 30 days can be set. |

An open incident is never removed, nor its record; a closed one goes when both its last event and its last change are older than its period. 0 keeps a kind for ever, which the school must choose explicitly.

**Legal holds.** The DSL can place a hold on an incident, a laptop or a user (with a reason, such as a case reference); while it is in force nothing about that incident, laptop or user expires or is pseudonymised, and placing and releasing it are recorded in the audit log. The network manager can see the holds but not place or release them.

**Subject access.** Every record naming a person (events, incidents and their records, audit entries, digests, and records under their pseudonym) can be exported for a subject access request as JSON and a printable HTML page (`caretaker-collector subject export --user NAME --out FILE`, or the dashboard's Subject access page for the network manager and the DSL). A person's name can be replaced by a stable pseudonym (`user-` and 16 hex digits of an HMAC keyed by a secret derived from the school's CA key, the same on every collector of a trust) everywhere it is stored except under a legal hold (`subject erase`, or the dashboard for the network manager); the command says what it kept under which hold. The embedded store's file is rewritten afterwards so no old copy of the name remains in it, and copies of the DSL's report PDF in sent digests are dropped (they name pupils inside the PDF; the report can be made again). On PostgreSQL the changed tables are rewritten (`VACUUM FULL`), but the name stays in the write-ahead log until its segments are recycled after later checkpoints, and in any WAL archive or base backup taken before: a school that archives WAL expires those archives too. Exports and erasures are recorded in the audit log under the pseudonym, never the name.

**Pseudonymised usernames.** With the setting `pseudonymise_usernames` (off by default; Settings, \"Usernames in technical records\"), technical events store the pseudonym instead of the login name, in their user and wherever their details name it; the DSL's safeguarding records always keep names.";

/// Roles: the network manager sees everything; this is the usual technical audience.
const TECHNICAL: &str = "Network manager and IT technician (device timeline, event list, technical incidents). Not the DSL, not governors.";

/// Fields the agent's spool may put in place of any kind's details.
pub const ANY_KIND: &[Field] = &[
    plain(
        "truncated",
        "True when the details were over 64 KiB and were replaced by this note.",
    ),
    plain("original_bytes", "Size of the details that were replaced."),
];

const USB_DEVICE: &[Field] = &[
    plain(
        "sys_name",
        "The port the device is in, as the kernel names it (e.g. `1-1`).",
    ),
    plain(
        "device_id",
        "Vendor and product id, `vvvv:pppp`, as policies write it.",
    ),
    plain("vendor_id", "USB vendor id."),
    plain("product_id", "USB product id."),
    f(
        "serial",
        "The device's own serial number, so a stick can be allowed or recognised again.",
        Personal::Indirect("a personal stick's serial can be linked to its owner"),
    ),
    plain("manufacturer", "Manufacturer string the device reports."),
    plain("product", "Product string the device reports."),
    plain("device_class", "USB device class."),
    plain(
        "interface_classes",
        "USB interface classes (mass storage, keyboard, ...).",
    ),
    plain(
        "mass_storage",
        "Whether it is storage (what the removable-media rules apply to).",
    ),
];

const USB_INSERTED: &[Field] = &[
    plain(
        "decision",
        "`allow`, `allow_after_scan` or `block`, under the policy.",
    ),
    f(
        "account",
        "Whether pupil or staff rules applied (nobody logged in counts as pupil).",
        Personal::Indirect("says whether the logged-in person is a pupil or staff"),
    ),
    plain("reason", "Why it was blocked."),
    plain(
        "present_at_start",
        "It was already plugged in when the agent started.",
    ),
    plain(
        "antivirus_current",
        "Whether the laptop's antivirus was up to date at the time.",
    ),
    plain(
        "antivirus_problem",
        "What was wrong with the antivirus, if anything.",
    ),
];

const USB_BLOCKED: &[Field] = &[
    plain("reason", "Why it was blocked."),
    plain("enforced", "Whether the agent could actually detach it."),
];

const BLOCK: Field = plain(
    "block",
    "The kernel's name of the disk or partition (e.g. `sdb1`); on Windows its drive letter (`E:`).",
);

const MEDIA_MOUNTED: &[Field] = &[
    BLOCK,
    plain("removable", "The kernel's removable flag."),
    plain("size_bytes", "Size of the disk or partition."),
    plain("fs_type", "Filesystem type."),
    plain("read_only", "Mounted read-only."),
    plain("by_agent", "Mounted by the agent itself for a scan."),
];

const MEDIA_SCANNED: &[Field] = &[
    BLOCK,
    plain("result", "`clean`, `infected` or `incomplete`."),
    plain("files_scanned", "How many files were scanned."),
    plain("bytes_scanned", "How many bytes were scanned."),
    plain("duration_ms", "How long the scan took."),
    plain(
        "errors",
        "What could not be scanned and why, without file names.",
    ),
];

const MEDIA_INFECTED: &[Field] = &[
    BLOCK,
    plain(
        "detections",
        "Malware signature names only; never the names of the files.",
    ),
    plain("action", "`detached` or `reported`."),
];

const PROBE_STALL: &[Field] = &[
    plain("probe", "Which part of the agent stopped making progress."),
    plain("stalled_secs", "For how long."),
    plain("max_gap_secs", "The longest gap it is allowed."),
    plain(
        "action",
        "`restarted`, `reported` or (a medium's scan) `aborted`.",
    ),
    plain(
        "restarts_last_hour",
        "Restarts of that probe in the last hour.",
    ),
    plain(
        "unit",
        "`medium_scan` when a USB stick's scan is what stalled.",
    ),
    BLOCK,
    plain(
        "stick",
        "What became of the stick: `blocked`, `read_only`, `allowed_by_policy` or `removed`.",
    ),
];

const SPOOL_RECOVERED: &[Field] = &[
    plain("reason", "What happened to the spool."),
    plain(
        "moved_to",
        "Where a damaged spool was set aside (the agent's own folder).",
    ),
    plain("lost", "How many events were lost."),
    plain("lost_first_seq", "Lowest sequence number lost."),
    plain("lost_last_seq", "Highest sequence number lost."),
    plain("next_seq", "Where numbering continues."),
    plain(
        "collector_highest_seq",
        "The highest number the collector had stored for this laptop.",
    ),
    plain("renumbered", "How many unsent events were renumbered."),
];

const EVENTS_DROPPED: &[Field] = &[
    plain("count", "How many events were dropped."),
    plain("first_seq", "Lowest sequence number dropped."),
    plain("last_seq", "Highest sequence number dropped."),
    plain("reason", "Why (`spool full`)."),
    plain("spool_max_bytes", "The spool's size bound."),
];

const ANTIVIRUS_STATUS: &[Field] = &[
    plain(
        "status",
        "`current`, `stale`, `disabled`, `missing` or `unknown`.",
    ),
    plain("reason", "Why, in words."),
    plain(
        "max_signature_age_hours",
        "The policy's limit on signature age.",
    ),
    plain("products", "One entry per antivirus product found."),
    plain("products[].name", "Product name."),
    plain("products[].engine_version", "Engine version."),
    plain(
        "products[].signature_version",
        "Signature database version.",
    ),
    plain(
        "products[].signatures_built_at",
        "When the signatures were built.",
    ),
    plain("products[].signature_age_hours", "Their age in hours."),
    plain(
        "products[].realtime_protection",
        "Whether real-time protection is on.",
    ),
    plain(
        "products[].service_responding",
        "Whether its service answered.",
    ),
    plain("products[].status", "This product's status."),
    plain("products[].reason", "Why, in words."),
    plain(
        "products[].updater",
        "The signature updater (freshclam), when there is one.",
    ),
    plain("products[].updater.name", "Updater name."),
    plain("products[].updater.running", "Whether it is running."),
    plain("products[].updater.last_run_at", "When it last ran."),
    plain(
        "products[].updater.last_run_ok",
        "Whether that run succeeded.",
    ),
    plain("products[].updater.last_error", "Its last error message."),
];

const DEVICE_FACTS: &[Field] = &[
    plain("vendor", "The laptop's manufacturer (firmware)."),
    plain("model", "The laptop's model."),
    f(
        "serial",
        "The laptop's serial number, for the asset register.",
        Personal::Indirect(
            "a laptop issued to one person identifies them through the school's asset register",
        ),
    ),
    plain("os_name", "Operating system."),
    plain("os_version", "Operating system version."),
    plain("kernel", "Kernel version."),
    plain("cpu_model", "Processor."),
    plain("cpu_cores", "Processor cores."),
    plain("memory_bytes", "Memory."),
    plain("disk_total_bytes", "System disk size."),
    plain("disk_free_bytes", "System disk free space."),
    plain("boot_time", "When the laptop last booted."),
    plain("battery_health_pct", "Battery capacity against its design."),
    plain("battery_cycles", "Battery charge cycles."),
];

const SOFTWARE_CHANGE: &[Field] = &[
    plain(
        "source",
        "Where it came from: `dpkg`, `snap`, `flatpak` or `appimage`.",
    ),
    plain("name", "Package or application name."),
    plain("version", "Its version."),
    plain("architecture", "Its architecture."),
    f(
        "owner",
        "The login whose per-user installation it is (Flatpak `--user`, AppImage).",
        Personal::Yes("a login name"),
    ),
    f(
        "path",
        "For an AppImage, its path inside the owner's home folder.",
        Personal::Yes("a file name the person chose, in their home folder"),
    ),
    plain("scope", "`system` or `user`."),
    plain(
        "installed_at",
        "When it was installed, where the source records it.",
    ),
    f(
        "requested_by",
        "Who asked apt for it, where apt recorded it.",
        Personal::Yes("names the person"),
    ),
    f(
        "requested_by.user",
        "Their login name.",
        Personal::Yes("a login name"),
    ),
    f(
        "requested_by.uid",
        "Their numeric user id.",
        Personal::Yes("identifies the account"),
    ),
    plain("requested_by.via", "`apt`."),
];

const SOFTWARE_UPGRADED: &[Field] = &[plain("previous_version", "The version it replaced.")];

const SOFTWARE_INVENTORY: &[Field] = &[
    plain(
        "batch",
        "Ties the parts of one inventory together (a time).",
    ),
    plain("part", "This part's number."),
    plain("parts", "How many parts."),
    plain("total", "How many installations in all."),
    plain(
        "fields",
        "The names of the columns of `items` (`name`, `version`, `arch`, `owner`, `installed_at`, `path`).",
    ),
    Field {
        path: "items",
        about: "Installations by source (`dpkg`, `snap`, `flatpak`, `appimage`), each a row of the columns in `fields`: name, version, architecture, and for a per-user installation its owner's login name, installation time and (AppImage) its path inside the owner's home folder.",
        personal: Personal::Yes(
            "per-user installations carry the owner's login name and a path in their home folder",
        ),
        opaque: true,
    },
];

const EXECUTABLE: &[Field] = &[
    f(
        "path",
        "Where the file is, relative to the home folder.",
        Personal::Yes("a file name the person chose, in their home folder"),
    ),
    plain(
        "type",
        "`elf`, `appimage`, `windows_exe`, `windows_msi` or `script`.",
    ),
    plain("appimage_type", "AppImage format version."),
    plain("size", "File size."),
    plain(
        "sha256",
        "A hash of the content, to recognise a known program; never the content.",
    ),
    plain(
        "hash_skipped",
        "Why there is no hash (too large or unreadable).",
    ),
    plain("executable_bit", "Whether it is marked executable."),
    plain("change", "`created` or `modified`."),
];

const SESSION: Field = plain(
    "session",
    "The login session's number on this laptop (logind's id), not a name.",
);
const IDLE: Field = plain(
    "idle_seconds",
    "How long nobody had touched keyboard or mouse (a duration, never what was typed).",
);

const SOFTWARE_SEEN_BY: &str = "Network manager and IT technician; when the school's catalogue marks it a filter-bypass tool (VPN, proxy, Tor), the DSL instead of the technician (the event, its safeguarding incident, the DSL's digests by e-mail or webhook, and the DSL's report). Governors see only counts of unapproved software.";
const SOFTWARE_WHY: &str = "Seeds 000 and 001: software is installed only with the network manager's permission, and who installed it is recorded where the operating system tells. Seed 002: bypass tools are flagged to the DSL; installations are reconciled against licences.";
const SOFTWARE_CHANGE_FLAGGED: &str = "the device's installation counts (`derived`); an incident when the policy flags it; for a bypass tool, the DSL's sent digests (`digests`)";

/// `software.installed`, `.removed` and `.upgraded`: one audience, user and reason; they differ
/// in what they record and where else it is kept.
const fn software_change(
    name: &'static str,
    summary: &'static str,
    fields: &'static [&'static [Field]],
    also_stored: &'static str,
) -> Kind {
    Kind {
        name,
        summary,
        user: Some("the owner of a per-user installation, or whoever asked apt for it"),
        fields,
        seen_by: SOFTWARE_SEEN_BY,
        dsl: Dsl::WhenFlagged("the school's catalogue marks it a filter-bypass tool"),
        also_stored: Some(also_stored),
        why: SOFTWARE_WHY,
    }
}
const USB_WHY: &str = "Seeds 000 and 004 §7.2: removable media are used only with permission and after a virus scan. Seed 001: pupils may not use USB sticks without a teacher's permission; sticks only in computers with up-to-date antivirus.";

/// Every kind the agent can emit.
pub const KINDS: &[Kind] = &[
    Kind {
        name: "agent.started",
        summary: "The agent started.",
        user: None,
        fields: &[&[
            plain("agent_version", "The agent's version."),
            f(
                "hostname",
                "The laptop's name on the network.",
                Personal::Indirect("only if the school names laptops after people"),
            ),
            plain("os", "Operating system and version."),
        ]],
        seen_by: "Network manager and IT technician (device list and page). The DSL sees the laptop's name and state on the page of a device a safeguarding incident concerns, and in the DSL's report (its incidents, and laptops gone silent).",
        dsl: Dsl::DeviceState,
        also_stored: Some("the device's `agent` and `lifecycle` state in the `devices` tree"),
        why: "Seed 002: monitoring systems are implemented and updated regularly (agent version and health per device).",
    },
    Kind {
        name: "agent.heartbeat",
        summary: "The agent is still running (every few minutes).",
        user: None,
        fields: &[&[plain("uptime_secs", "Seconds since the agent started.")]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: None,
        why: "Seed 002: devices that went silent are flagged.",
    },
    Kind {
        name: "agent.stopping",
        summary: "The agent stopped cleanly (shutdown, service stop).",
        user: None,
        fields: &[&[plain("reason", "Why.")]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("the device's `lifecycle` state in the `devices` tree"),
        why: "Seed 002: a clean stop is told apart from a laptop that went silent.",
    },
    Kind {
        name: "agent.uninstalled",
        summary: "The agent package was removed with the device's uninstall code.",
        user: Some("the person who ran the removal with sudo, as sudo reports it"),
        fields: &[&[
            plain(
                "action",
                "The package manager's action (`remove`, `purge`).",
            ),
            plain(
                "code_verified",
                "Whether the code was checked (false if the laptop had not yet received it).",
            ),
        ]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("the device's `lifecycle` state in the `devices` tree"),
        why: "Seed 002: monitoring systems are in place on every machine; a removal is recorded and told apart from a laptop that went silent.",
    },
    Kind {
        name: "agent.uninstall_refused",
        summary: "Someone tried to remove the agent without the uninstall code.",
        user: Some("the person who ran the removal with sudo, as sudo reports it"),
        fields: &[&[
            plain(
                "action",
                "The package manager's action (`remove`, `purge`).",
            ),
            plain("reason", "`no code given` or `wrong code`."),
        ]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: "Seed 002: monitoring systems are kept in place; tampering is reported to the network manager.",
    },
    Kind {
        name: "agent.spool_recovered",
        summary: "The agent's local store was damaged or its numbering lost, and what was lost.",
        user: None,
        fields: &[SPOOL_RECOVERED],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: "Seed 004 §1.3.2: the record of events must be complete, or its gaps known.",
    },
    Kind {
        name: "agent.events_dropped",
        summary: "The laptop was offline so long that its spool filled and the oldest events were dropped: how many.",
        user: None,
        fields: &[EVENTS_DROPPED],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: "Seed 004 §1.3.2: the record of events must be complete, or its gaps known.",
    },
    Kind {
        name: "agent.probe_stalled",
        summary: "A part of the agent stopped making progress (or a USB stick's scan did), and what was done.",
        user: Some("for a stuck USB scan, the person logged in at the time"),
        fields: &[PROBE_STALL, USB_DEVICE],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: "Seed 002: monitoring systems work on every machine; a part that is not watching is reported.",
    },
    Kind {
        name: "agent.probe_recovered",
        summary: "A stalled part of the agent is moving again.",
        user: None,
        fields: &[&[
            plain("probe", "Which part."),
            plain("stalled_secs", "How long it was stalled."),
        ]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: None,
        why: "Seed 002: as `agent.probe_stalled`.",
    },
    Kind {
        name: "antivirus.status",
        summary: "The antivirus products on the laptop and whether they are current (at start, on a change, and periodically).",
        user: None,
        fields: &[ANTIVIRUS_STATUS],
        seen_by: "Network manager and IT technician. The DSL sees it as the device's state on the page of a device a safeguarding incident concerns. Governors see only the share of devices that are current.",
        dsl: Dsl::DeviceState,
        also_stored: Some(
            "the device's `antivirus` state in the `devices` tree; a technical incident when not current",
        ),
        why: "Seeds 000, 001 and 004 §1.3.4: antivirus on all machines, regularly updated.",
    },
    Kind {
        name: "antivirus.detection",
        summary: "A scan another feature asked for found malware.",
        user: Some("the person logged in at the time"),
        fields: &[&[
            plain("product", "The scanner (`ClamAV`)."),
            f(
                "subject",
                "What was scanned, in words the network manager can act on.",
                Personal::Yes("can include the name of a file on the medium"),
            ),
            plain("signatures", "Malware signature names."),
        ]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: "Seed 001: an infection is reported to the network manager at once.",
    },
    Kind {
        name: "device.facts",
        summary: "The laptop's hardware, operating system, disk and battery (at start and on a meaningful change).",
        user: None,
        fields: &[DEVICE_FACTS],
        seen_by: "Network manager and IT technician (device page). The DSL sees a device's page only when a safeguarding incident concerns it.",
        dsl: Dsl::DeviceState,
        also_stored: Some("the device's `facts` state in the `devices` tree"),
        why: "Seed 004 §1.3.4: system updates installed and maintained on all machines (operating system and kernel versions). The rest (hardware, disk, battery) is the technician's asset register and fault-finding; no policy clause asks for it.",
    },
    Kind {
        name: "executable.in_user_area",
        summary: "A program (ELF, AppImage, Windows .exe/.msi, script) appeared or changed in a home folder.",
        user: Some("the owner of the home folder"),
        fields: &[EXECUTABLE],
        seen_by: SOFTWARE_SEEN_BY,
        dsl: Dsl::WhenFlagged("the school's catalogue marks it a filter-bypass tool"),
        also_stored: Some(
            "an incident when the school's policy flags it (its title names the path); for a bypass tool, the DSL's sent digests (`digests`)",
        ),
        why: "Seeds 003 and 004 §7.2: unapproved executable files are not allowed in pupils' work areas.",
    },
    software_change(
        "software.installed",
        "A package or application was installed.",
        &[SOFTWARE_CHANGE],
        SOFTWARE_CHANGE_FLAGGED,
    ),
    software_change(
        "software.removed",
        "A package or application was removed.",
        &[SOFTWARE_CHANGE],
        "the device's installation counts (`derived`)",
    ),
    software_change(
        "software.upgraded",
        "A package or application changed version.",
        &[SOFTWARE_CHANGE, SOFTWARE_UPGRADED],
        SOFTWARE_CHANGE_FLAGGED,
    ),
    Kind {
        name: "software.inventory",
        summary: "Everything installed, at the agent's start (in parts).",
        user: None,
        fields: &[SOFTWARE_INVENTORY],
        seen_by: SOFTWARE_SEEN_BY,
        dsl: Dsl::WhenFlagged("it lists a filter-bypass tool"),
        also_stored: Some(
            "the device's installation counts (`derived`); an incident for denied software or a bypass tool; for a bypass tool, the DSL's sent digests (`digests`)",
        ),
        why: "Seed 002: installations reconciled against licences, and bypass tools found where they already are.",
    },
    Kind {
        name: "screen.compliance",
        summary: "Whether the laptop can enforce the screen lock, and why not (on a change).",
        user: None,
        fields: &[&[
            plain("state", "`enforced` or `cannot_enforce`."),
            plain(
                "reason",
                "Why, in words (may name a session's number and type, or the locker program).",
            ),
        ]],
        seen_by: "Network manager and IT technician. The DSL sees it as the device's state on the page of a device a safeguarding incident concerns. Governors see only the share of devices enforcing the lock.",
        dsl: Dsl::DeviceState,
        also_stored: Some(
            "the device's `screen_lock` state in the `devices` tree; a technical incident when not enforced",
        ),
        why: "Seeds 000 and 004 §7.2: machines are locked when left unattended; the compliance state per device.",
    },
    Kind {
        name: "screen.locked_by_policy",
        summary: "The agent locked a session that was idle past the policy's timeout.",
        user: Some("the session's user"),
        fields: &[&[
            SESSION,
            IDLE,
            plain(
                "method",
                "How it was locked (`logind`, or the locker program).",
            ),
        ]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: None,
        why: "Seeds 000 and 004 §7.2: machines left unattended are locked; the agent records that it did.",
    },
    Kind {
        name: "screen.lock_failed",
        summary: "The agent could not lock an idle session.",
        user: Some("the session's user"),
        fields: &[&[SESSION, plain("reason", "Why, in words.")]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: "Seeds 000 and 004 §7.2: the network manager must know where locking does not work.",
    },
    Kind {
        name: "session.left_logged_on",
        summary: "A session was still logged on after school hours (once a night).",
        user: Some("the session's user"),
        fields: &[&[
            SESSION,
            plain("night_of", "The date of that night."),
            plain("locked", "Whether it was locked."),
            IDLE,
        ]],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: "Seeds 000 and 003: machines must never be left logged on and unattended.",
    },
    Kind {
        name: "usb.inserted",
        summary: "A USB device was plugged in, and the policy's decision.",
        user: Some("the person logged in at the time"),
        fields: &[USB_DEVICE, USB_INSERTED],
        seen_by: "Network manager and IT technician; a pupil's blocked storage device also goes to the DSL instead of the technician (the event, its safeguarding incident, the DSL's digests and report). Governors see only counts.",
        dsl: Dsl::WhenFlagged("it is a storage device blocked for a pupil"),
        also_stored: Some(
            "an incident when storage is blocked for a pupil or the antivirus is not current; for a pupil's blocked stick, the DSL's sent digests (`digests`)",
        ),
        why: USB_WHY,
    },
    Kind {
        name: "usb.blocked",
        summary: "A USB device was detached (or could not be) under the policy, after malware, or after a stuck scan.",
        user: Some("the person logged in at the time"),
        fields: &[USB_DEVICE, USB_BLOCKED],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: USB_WHY,
    },
    Kind {
        name: "usb.removed",
        summary: "A USB device was unplugged.",
        user: Some("the person logged in at the time"),
        fields: &[USB_DEVICE],
        seen_by: TECHNICAL,
        dsl: Dsl::No,
        also_stored: None,
        why: USB_WHY,
    },
    Kind {
        name: "media.mounted",
        summary: "A USB storage medium was mounted.",
        user: Some("the person logged in at the time"),
        fields: &[USB_DEVICE, MEDIA_MOUNTED],
        seen_by: "Network manager and IT technician. Governors see only counts.",
        dsl: Dsl::No,
        also_stored: None,
        why: "Seed 000: removable media are scanned before use; the mount is what the scan follows.",
    },
    Kind {
        name: "media.scanned",
        summary: "The antivirus scan of a USB storage medium finished (clean, infected or incomplete).",
        user: Some("the person logged in at the time"),
        fields: &[USB_DEVICE, MEDIA_SCANNED],
        seen_by: "Network manager and IT technician. Governors see only counts.",
        dsl: Dsl::No,
        also_stored: Some("a technical incident when not clean"),
        why: "Seeds 000 and 004 §7.2: removable media are scanned for viruses before use, the result recorded.",
    },
    Kind {
        name: "media.infected",
        summary: "The scan of a USB storage medium found malware.",
        user: Some("the person logged in at the time"),
        fields: &[USB_DEVICE, MEDIA_INFECTED],
        seen_by: "Network manager and IT technician. Governors see only counts.",
        dsl: Dsl::No,
        also_stored: Some("a technical incident (`incidents`, `incident_log`)"),
        why: "Seeds 000 and 001: media are scanned; an infection is reported at once.",
    },
];

/// The catalogue entry for `kind`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// An event that does not match the inventory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("event kind `{0}` is not in the data inventory (proto/src/inventory.rs)")]
    UnknownKind(String),
    #[error(
        "event `{kind}` carries field `{path}`, which the data inventory does not list (add it to proto/src/inventory.rs with what it is, whether it is personal and why the policy needs it, then regenerate PRIVACY.md)"
    )]
    UnknownField { kind: String, path: String },
    #[error(
        "event `{0}` carries a user, which the data inventory says it does not (proto/src/inventory.rs)"
    )]
    UnexpectedUser(String),
}

/// Checks an event against the inventory: a known kind, a user only where the kind may
/// carry one, and every details field (nested ones too) listed.
pub fn check(
    kind: &str,
    has_user: bool,
    details: &Map<String, Value>,
) -> Result<(), InventoryError> {
    let k = self::kind(kind).ok_or_else(|| InventoryError::UnknownKind(kind.into()))?;
    if has_user && k.user.is_none() {
        return Err(InventoryError::UnexpectedUser(kind.into()));
    }
    check_object(k, "", details)
}

fn check_object(k: &Kind, prefix: &str, m: &Map<String, Value>) -> Result<(), InventoryError> {
    for (key, value) in m {
        let path = format!("{prefix}{key}");
        let field = k.field(&path).ok_or_else(|| InventoryError::UnknownField {
            kind: k.name.into(),
            path: path.clone(),
        })?;
        if !field.opaque {
            check_value(k, &path, value)?;
        }
    }
    Ok(())
}

fn check_value(k: &Kind, path: &str, v: &Value) -> Result<(), InventoryError> {
    match v {
        Value::Object(m) => check_object(k, &format!("{path}."), m),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_value(k, &format!("{path}[]"), item)),
        _ => Ok(()),
    }
}

fn personal_text(p: Personal) -> String {
    match p {
        Personal::No => "No".into(),
        Personal::Indirect(why) => format!("Indirectly: {why}"),
        Personal::Yes(why) => format!("**Yes**: {why}"),
    }
}

/// Markdown table cells must not contain a bare `|`.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `PRIVACY.md`, rendered from the inventory.
pub fn render_markdown() -> String {
    use std::fmt::Write;
    let mut s = String::new();
    s.push_str(PREAMBLE);
    let _ = write!(
        s,
        "\n## Where it is stored\n\n{STORED}\n\n## How long it is kept\n\n{KEPT}\n"
    );
    s.push_str("\n## Summary of event kinds\n\n");
    s.push_str(
        "| Event kind | What it records | Login name | Other personal fields | Seen by the DSL |\n|---|---|---|---|---|\n",
    );
    for k in KINDS {
        let mut personal: Vec<String> = k
            .fields()
            .filter(|f| matches!(f.personal, Personal::Yes(_)))
            .map(|f| format!("`{}`", f.path))
            .collect();
        personal.extend(
            k.fields()
                .filter(|f| matches!(f.personal, Personal::Indirect(_)))
                .map(|f| format!("`{}` (indirectly)", f.path)),
        );
        let personal = if personal.is_empty() {
            "None".to_owned()
        } else {
            personal.join(", ")
        };
        let _ = writeln!(
            s,
            "| [`{}`](#{}) | {} | {} | {} | {} |",
            k.name,
            k.name.replace('.', ""),
            cell(k.summary),
            if k.user.is_some() { "Yes" } else { "No" },
            personal,
            cell(&k.dsl.text()),
        );
    }
    s.push_str("\n## Each event kind\n");
    for k in KINDS {
        let _ = write!(s, "\n### {}\n\n{}\n\n", k.name, k.summary);
        let _ = writeln!(s, "- **Why**: {}", k.why);
        let _ = writeln!(s, "- **Who sees it**: {}", k.seen_by);
        let stored = match k.also_stored {
            Some(extra) => format!("as every event; on the collector also {extra}."),
            None => "as every event (see above).".into(),
        };
        let _ = writeln!(s, "- **Where it is stored**: {stored}");
        s.push_str(
            "- **How long**: as every event (see above): indefinitely on the collector for now.\n",
        );
        let _ = writeln!(
            s,
            "- **User**: {}\n",
            match k.user {
                Some(who) => format!("**yes**, a login name: {who}."),
                None => "none.".into(),
            }
        );
        s.push_str("| Field | What it is | Personal data? |\n|---|---|---|\n");
        for fl in k.fields() {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} |",
                fl.path,
                cell(fl.about),
                cell(&personal_text(fl.personal)),
            );
        }
    }
    s.push_str("\n## Fields any event may carry instead of its own\n\n");
    s.push_str("| Field | What it is | Personal data? |\n|---|---|---|\n");
    for fl in ANY_KIND {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} |",
            fl.path,
            cell(fl.about),
            cell(&personal_text(fl.personal)),
        );
    }
    s
}

const PREAMBLE: &str = concat!(
    "<!-- Generated from proto/src/inventory.rs; do not edit by hand. Regenerate with:\n",
    "     UPDATE_PRIVACY=1 cargo test -p caretaker-proto inventory -->\n",
    "# Caretaker: data inventory\n",
    "\n",
    "This is what Caretaker collects about school laptops and the people who use them, written so a\n",
    "school's Data Protection Officer can use it in a Data Protection Impact Assessment. It is generated\n",
    "from the same table the agent checks every event against, so a field the agent sends and this\n",
    "page does not list fails Caretaker's own tests.\n",
    "\n",
    "## What is collected, and what is not\n",
    "\n",
    "Caretaker's agent runs on each school laptop and reports **events**: facts about the laptop's\n",
    "security (antivirus, screen lock, installed software, USB devices) and about the agent itself.\n",
    "Each event has a kind (listed below), a time, the laptop it came from (from the laptop's\n",
    "certificate, never from the message), a sequence number, and, for some kinds, the **login\n",
    "name** of the person concerned (the logged-in user, or the owner of a home folder). Its\n",
    "details are the fields listed for its kind, and nothing else.\n",
    "\n",
    "Caretaker does **not** collect: the content of any file, document or message; keystrokes\n",
    "(only how long a session has been idle); screenshots or screen content; browsing history,\n",
    "web addresses or network traffic; location; camera or microphone; the names of files on a\n",
    "USB stick (a scan reports counts and malware signature names only). Files in home folders are\n",
    "read only to recognise programs (their type and a hash), and only the program's path inside\n",
    "the home folder is reported.\n",
    "\n",
    "Personal data in this inventory is marked **Yes** where a field names a person (a login name)\n",
    "or is something a person chose (a file name), and *Indirectly* where it\n",
    "identifies a person only with other information the school holds (a laptop's serial number in\n",
    "the asset register).\n",
    "\n",
    "## Who can see it\n",
    "\n",
    "The collector's dashboard and API have four roles (an account has one):\n",
    "\n",
    "- **Network manager**: everything, including the audit log.\n",
    "- **IT technician**: devices, technical events and technical incidents; *not* events or\n",
    "  incidents that concern the DSL (safeguarding).\n",
    "- **Designated Safeguarding Lead (DSL)**: only safeguarding events and incidents (a pupil's\n",
    "  blocked USB storage, filter-bypass software), the pages of devices those concern, and the\n",
    "  DSL's digests (e-mail or webhook) and report, which carry login names.\n",
    "- **Governor**: the governors' report only: counts and percentages, never a name, hostname or\n",
    "  serial.\n",
    "\n",
    "Viewing the DSL's report and a device's uninstall code is recorded in the audit log.\n",
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn inventory_accepts_listed_fields_and_names_an_unlisted_one() {
        let ok = obj(
            json!({"products": [{"name": "ClamAV", "updater": {"name": "freshclam"}}], "status": "current"}),
        );
        assert_eq!(check("antivirus.status", false, &ok), Ok(()));
        let nested = obj(json!({"products": [{"name": "ClamAV", "updater": {"pid": 7}}]}));
        assert_eq!(
            check("antivirus.status", false, &nested),
            Err(InventoryError::UnknownField {
                kind: "antivirus.status".into(),
                path: "products[].updater.pid".into()
            })
        );
        let top = obj(json!({"uptime_secs": 1, "cwd": "/home/pupil01"}));
        assert!(matches!(
            check("agent.heartbeat", false, &top),
            Err(InventoryError::UnknownField { path, .. }) if path == "cwd"
        ));
        assert_eq!(
            check("agent.heartbeat", true, &Map::new()),
            Err(InventoryError::UnexpectedUser("agent.heartbeat".into()))
        );
        assert!(matches!(
            check("agent.sneezed", false, &Map::new()),
            Err(InventoryError::UnknownKind(_))
        ));
        // The spool's note for oversized details fits any kind; an opaque field is not descended.
        let note = obj(json!({"truncated": true, "original_bytes": 70000}));
        assert_eq!(check("usb.inserted", true, &note), Ok(()));
        let items = obj(json!({"items": {"flatpak": [["org.example", "1.0", null, "pupil01"]]}}));
        assert_eq!(check("software.inventory", false, &items), Ok(()));
    }

    #[test]
    fn inventory_entries_are_unique_and_complete() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len(), "a kind is listed twice");
        for k in KINDS {
            assert!(
                !k.summary.is_empty() && !k.why.is_empty() && !k.seen_by.is_empty(),
                "{}",
                k.name
            );
            let mut paths: Vec<&str> = k.fields().map(|f| f.path).collect();
            paths.sort_unstable();
            let n = paths.len();
            paths.dedup();
            assert_eq!(paths.len(), n, "{} lists a field twice", k.name);
            for fl in k.fields() {
                assert!(!fl.about.is_empty(), "{}.{}", k.name, fl.path);
                // A nested field's parent is listed too, so the page reads top-down.
                if let Some((parent, _)) = fl.path.rsplit_once('.') {
                    let parent = parent.trim_end_matches("[]");
                    assert!(
                        k.field(parent).is_some(),
                        "{}: {} has no parent",
                        k.name,
                        fl.path
                    );
                }
            }
        }
    }

    /// PRIVACY.md at the repository root is this table rendered; regenerate it with
    /// `UPDATE_PRIVACY=1 cargo test -p caretaker-proto inventory`.
    #[test]
    fn inventory_privacy_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../PRIVACY.md");
        let want = render();
        if std::env::var_os("UPDATE_PRIVACY").is_some() {
            std::fs::write(&path, &want).expect("write PRIVACY.md");
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "PRIVACY.md is not what proto/src/inventory.rs renders; regenerate it with:\n    UPDATE_PRIVACY=1 cargo test -p caretaker-proto inventory"
        );
    }

    fn render() -> String {
        render_markdown()
    }
}
