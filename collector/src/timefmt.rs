//! Times as a UK school reads them (30 Nov 2026, 14:05, in Europe/London by default), school hours, and the incident CSV export.

use caretaker_proto::policy::screen_lock::SchoolHours;
use chrono::{DateTime, Datelike, NaiveTime, Utc};
use chrono_tz::Tz;

use crate::store::{Incident, IncidentEntry};

/// The school's time zone unless `serve --time-zone` says otherwise.
pub const DEFAULT_TZ: Tz = chrono_tz::Europe::London;

/// "30 Nov 2026, 14:05".
pub fn date_time(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%-d %b %Y, %H:%M").to_string()
}

/// "30 Nov 2026".
pub fn date(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%-d %b %Y").to_string()
}

/// "just now", "5 min ago", "3 h ago", "4 days ago".
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds();
    match s {
        i64::MIN..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        86_400..=172_799 => "yesterday".into(),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// Whether `now` falls within the policy's school hours in the school's time zone `tz`.
pub fn in_school_hours(hours: &SchoolHours, now: DateTime<Utc>, tz: Tz) -> bool {
    let local = now.with_timezone(&tz);
    let day = local.weekday().to_string().to_lowercase();
    let parse = |s: &str| NaiveTime::parse_from_str(s, "%H:%M").ok();
    let (Some(start), Some(end)) = (parse(&hours.start), parse(&hours.end)) else {
        return false;
    };
    hours.days.iter().any(|d| d.eq_ignore_ascii_case(&day))
        && local.time() >= start
        && local.time() < end
}

/// Quotes a CSV field when it needs it (RFC 4180), and defuses spreadsheet formulas: a field
/// starting with `=`, `+`, `-` or `@` gets a leading apostrophe.
pub(crate) fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// An incident and its record as CSV: one row for the incident, then one per entry, with the
/// time zone named in the header.
pub fn incident_csv(inc: &Incident, hostname: &str, entries: &[IncidentEntry], tz: Tz) -> String {
    let when = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string();
    let mut out = format!(
        "incident,row,time ({tz}),by,action,text,device,user,category,severity,occurrences\r\n"
    );
    let row = |fields: &[&str]| {
        fields
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",")
            + "\r\n"
    };
    out += &row(&[
        &inc.id.to_string(),
        "0",
        &when(inc.first_at),
        "caretaker",
        "raised",
        &inc.title,
        hostname,
        inc.user.as_deref().unwrap_or(""),
        inc.category.as_str(),
        &inc.severity,
        &inc.count.to_string(),
    ]);
    for e in entries {
        out += &row(&[
            &inc.id.to_string(),
            &e.n.to_string(),
            &when(e.at),
            &e.by,
            e.action.as_str(),
            &e.text,
            hostname,
            inc.user.as_deref().unwrap_or(""),
            inc.category.as_str(),
            &inc.severity,
            &inc.count.to_string(),
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_read_the_uk_way_in_summer_and_winter() {
        let winter = Utc.with_ymd_and_hms(2026, 11, 30, 14, 5, 0).unwrap();
        assert_eq!(date_time(winter, DEFAULT_TZ), "30 Nov 2026, 14:05");
        let summer = Utc.with_ymd_and_hms(2026, 6, 1, 7, 30, 0).unwrap();
        assert_eq!(date_time(summer, DEFAULT_TZ), "1 Jun 2026, 08:30", "BST");
    }

    #[test]
    fn school_hours_follow_the_local_clock_and_days() {
        let h = SchoolHours::default();
        // 07:30 UTC in June is 08:30 BST: in hours on a Monday.
        assert!(in_school_hours(
            &h,
            Utc.with_ymd_and_hms(2026, 6, 1, 7, 30, 0).unwrap(),
            DEFAULT_TZ
        ));
        // ...but not on a Saturday.
        assert!(!in_school_hours(
            &h,
            Utc.with_ymd_and_hms(2026, 6, 6, 7, 30, 0).unwrap(),
            DEFAULT_TZ
        ));
        // 07:30 UTC in December is 07:30 GMT: before school.
        assert!(!in_school_hours(
            &h,
            Utc.with_ymd_and_hms(2026, 11, 30, 7, 30, 0).unwrap(),
            DEFAULT_TZ
        ));
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    }

    #[test]
    fn ago_is_short() {
        let now = Utc::now();
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - chrono::Duration::minutes(5), now), "5 min ago");
        assert_eq!(ago(now - chrono::Duration::days(3), now), "3 days ago");
    }
}
