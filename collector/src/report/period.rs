//! Report periods: a week, a calendar month, a school term or a chosen range, as whole local days in the school's time zone, and the period before it for trends.
//!
//! Pure date arithmetic, unit-tested at the boundaries that matter (month ends, leap years,
//! the clock changes in Europe/London).

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::settings::Term;

/// What kind of period a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    Week,
    Month,
    Term,
}

impl PeriodKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "week" => PeriodKind::Week,
            "month" => PeriodKind::Month,
            "term" => PeriodKind::Term,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Week => "week",
            PeriodKind::Month => "month",
            PeriodKind::Term => "term",
        }
    }
}

/// What was asked for: a kind of period around a date, or an explicit range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeriodSpec {
    pub kind: Option<PeriodKind>,
    /// With `to`: the first day of an explicit range. Alone: a day inside the period wanted.
    pub from: Option<NaiveDate>,
    /// With `from`: the last day (inclusive). Alone: a day inside the period wanted.
    pub to: Option<NaiveDate>,
}

impl PeriodSpec {
    pub fn of(kind: PeriodKind) -> Self {
        Self {
            kind: Some(kind),
            from: None,
            to: None,
        }
    }
}

/// A period of whole local days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// "Week of 2 Nov 2026", "November 2026", "Autumn term 2026", "2 Nov – 15 Nov 2026".
    pub label: String,
    pub first_day: NaiveDate,
    /// Inclusive.
    pub last_day: NaiveDate,
    /// Local midnight at the start of `first_day`, in UTC.
    pub start: DateTime<Utc>,
    /// Local midnight after `last_day`, in UTC (exclusive).
    pub end: DateTime<Utc>,
}

/// Why a period cannot be worked out; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error(
        "no term dates are set, so there is no term to report on. Add them under \"terms\" in the \
         collector's settings (the Settings page, or `caretaker-collector settings set --file \
         settings.json` with {{\"terms\": [{{\"name\": \"Autumn 2026\", \"start\": \"2026-09-03\", \
         \"end\": \"2026-12-18\"}}]}}), or give --from and --to"
    )]
    NoTerms,
    #[error("no term in the settings has started by {0}; the first starts on {1}")]
    NoTermYet(NaiveDate, NaiveDate),
    #[error("the range ends ({1}) before it starts ({0})")]
    Backwards(NaiveDate, NaiveDate),
    #[error("say which period: --period week, month or term, or --from and --to")]
    Unspecified,
}

/// The UK way of writing a date: 2 Nov 2026.
pub fn uk_date(d: NaiveDate) -> String {
    d.format("%-d %b %Y").to_string()
}

/// Local midnight at the start of `d` in `tz`, as UTC. Midnight exists on every day in the
/// UK (the clocks change at 01:00 and 02:00); elsewhere a skipped midnight takes the first
/// instant after it.
pub fn local_midnight(d: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let naive = d.and_hms_opt(0, 0, 0).expect("midnight is a time");
    match tz.from_local_datetime(&naive).earliest() {
        Some(t) => t.with_timezone(&Utc),
        None => tz
            .from_local_datetime(&(naive + Duration::hours(1)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&naive)),
    }
}

impl Period {
    fn days(label: String, first_day: NaiveDate, last_day: NaiveDate, tz: Tz) -> Self {
        Self {
            label,
            first_day,
            last_day,
            start: local_midnight(first_day, tz),
            end: local_midnight(last_day + Duration::days(1), tz),
        }
    }

    /// How many days it spans.
    pub fn day_count(&self) -> i64 {
        (self.last_day - self.first_day).num_days() + 1
    }

    /// "2 Nov – 8 Nov 2026".
    pub fn dates(&self) -> String {
        format!("{} – {}", uk_date(self.first_day), uk_date(self.last_day))
    }
}

fn week_of(d: NaiveDate, tz: Tz) -> Period {
    let monday = d - Duration::days(d.weekday().num_days_from_monday() as i64);
    Period::days(
        format!("Week of {}", uk_date(monday)),
        monday,
        monday + Duration::days(6),
        tz,
    )
}

fn month_of(d: NaiveDate, tz: Tz) -> Period {
    let first = d.with_day(1).expect("every month has a 1st");
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    }
    .expect("the 1st of a month exists");
    Period::days(
        first.format("%B %Y").to_string(),
        first,
        next - Duration::days(1),
        tz,
    )
}

fn term_period(t: &Term, tz: Tz) -> Period {
    Period::days(t.name.clone(), t.start, t.end, tz)
}

/// The same number of days immediately before `p`.
fn just_before(p: &Period, tz: Tz) -> Period {
    let last = p.first_day - Duration::days(1);
    let first = last - Duration::days(p.day_count() - 1);
    Period::days(
        format!("{} – {}", uk_date(first), uk_date(last)),
        first,
        last,
        tz,
    )
}

/// The period asked for and the one before it (for trends). `today` is the school's local
/// date, used when the spec names no day.
pub fn resolve(
    spec: &PeriodSpec,
    today: NaiveDate,
    terms: &[Term],
    tz: Tz,
) -> Result<(Period, Period), PeriodError> {
    if let (Some(from), Some(to)) = (spec.from, spec.to) {
        if to < from {
            return Err(PeriodError::Backwards(from, to));
        }
        let p = Period::days(format!("{} – {}", uk_date(from), uk_date(to)), from, to, tz);
        let prev = just_before(&p, tz);
        return Ok((p, prev));
    }
    let day = spec.from.or(spec.to).unwrap_or(today);
    match spec.kind.ok_or(PeriodError::Unspecified)? {
        PeriodKind::Week => {
            let p = week_of(day, tz);
            let prev = week_of(p.first_day - Duration::days(1), tz);
            Ok((p, prev))
        }
        PeriodKind::Month => {
            let p = month_of(day, tz);
            let prev = month_of(p.first_day - Duration::days(1), tz);
            Ok((p, prev))
        }
        PeriodKind::Term => {
            if terms.is_empty() {
                return Err(PeriodError::NoTerms);
            }
            let mut sorted: Vec<&Term> = terms.iter().collect();
            sorted.sort_by_key(|t| t.start);
            // The term that contains the day, or in a holiday the one that ended last.
            let Some(i) = sorted.iter().rposition(|t| t.start <= day) else {
                return Err(PeriodError::NoTermYet(day, sorted[0].start));
            };
            let p = term_period(sorted[i], tz);
            let prev = match i.checked_sub(1) {
                Some(j) => term_period(sorted[j], tz),
                None => just_before(&p, tz),
            };
            Ok((p, prev))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONDON: Tz = chrono_tz::Europe::London;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn term(name: &str, start: &str, end: &str) -> Term {
        Term {
            name: name.into(),
            start: d(start),
            end: d(end),
        }
    }

    #[test]
    fn a_week_runs_monday_to_sunday_in_local_midnights_across_the_clock_change() {
        // Sunday 25 Oct 2026: the clocks go back at 02:00 BST.
        let (p, prev) = resolve(
            &PeriodSpec::of(PeriodKind::Week),
            d("2026-10-28"),
            &[],
            LONDON,
        )
        .unwrap();
        assert_eq!(
            (p.first_day, p.last_day),
            (d("2026-10-26"), d("2026-11-01"))
        );
        assert_eq!(p.label, "Week of 26 Oct 2026");
        assert_eq!(p.start, utc("2026-10-26T00:00:00Z"), "GMT again");
        assert_eq!(
            (prev.first_day, prev.last_day),
            (d("2026-10-19"), d("2026-10-25"))
        );
        assert_eq!(prev.start, utc("2026-10-18T23:00:00Z"), "BST midnight");
        // The week with the change is 169 hours long, and the periods meet exactly.
        assert_eq!(prev.end, p.start);
        assert_eq!((prev.end - prev.start).num_hours(), 169);
    }

    #[test]
    fn a_month_is_the_calendar_month_and_february_knows_leap_years() {
        let (p, prev) = resolve(
            &PeriodSpec {
                kind: Some(PeriodKind::Month),
                from: Some(d("2028-03-31")),
                to: None,
            },
            d("2026-01-01"),
            &[],
            LONDON,
        )
        .unwrap();
        assert_eq!(p.label, "March 2028");
        assert_eq!(
            (p.first_day, p.last_day),
            (d("2028-03-01"), d("2028-03-31"))
        );
        // The clocks go forward on 26 Mar 2028: the month ends at BST midnight.
        assert_eq!(p.end, utc("2028-03-31T23:00:00Z"));
        assert_eq!(
            (prev.first_day, prev.last_day),
            (d("2028-02-01"), d("2028-02-29"))
        );
        let (jan, dec) = resolve(
            &PeriodSpec::of(PeriodKind::Month),
            d("2027-01-15"),
            &[],
            LONDON,
        )
        .unwrap();
        assert_eq!(
            (jan.label.as_str(), dec.label.as_str()),
            ("January 2027", "December 2026")
        );
    }

    #[test]
    fn a_term_comes_from_the_settings_and_the_holidays_belong_to_the_last_term() {
        let terms = vec![
            term("Spring 2027", "2027-01-05", "2027-03-26"),
            term("Autumn 2026", "2026-09-03", "2026-12-18"),
        ];
        let spec = PeriodSpec::of(PeriodKind::Term);
        let (p, prev) = resolve(&spec, d("2027-02-01"), &terms, LONDON).unwrap();
        assert_eq!(p.label, "Spring 2027");
        assert_eq!(prev.label, "Autumn 2026");
        assert_eq!(p.end, utc("2027-03-27T00:00:00Z"));
        // In the Christmas holiday, "the term" is the one just ended; before it, the same
        // number of days.
        let (p, prev) = resolve(&spec, d("2026-12-27"), &terms, LONDON).unwrap();
        assert_eq!(p.label, "Autumn 2026");
        assert_eq!(prev.day_count(), p.day_count());
        assert_eq!(prev.last_day, d("2026-09-02"));
        assert!(matches!(
            resolve(&spec, d("2026-08-01"), &terms, LONDON),
            Err(PeriodError::NoTermYet(..))
        ));
    }

    #[test]
    fn a_term_without_terms_says_how_to_set_them() {
        let e = resolve(
            &PeriodSpec::of(PeriodKind::Term),
            d("2026-11-30"),
            &[],
            LONDON,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("settings set --file"), "{e}");
        assert!(e.contains("Settings page"), "{e}");
    }

    #[test]
    fn an_explicit_range_wins_and_must_run_forwards() {
        let spec = PeriodSpec {
            kind: Some(PeriodKind::Term),
            from: Some(d("2026-11-02")),
            to: Some(d("2026-11-15")),
        };
        let (p, prev) = resolve(&spec, d("2026-11-30"), &[], LONDON).unwrap();
        assert_eq!(p.day_count(), 14);
        assert_eq!(
            (prev.first_day, prev.last_day),
            (d("2026-10-19"), d("2026-11-01"))
        );
        let back = PeriodSpec {
            from: Some(d("2026-11-15")),
            to: Some(d("2026-11-02")),
            kind: None,
        };
        assert!(matches!(
            resolve(&back, d("2026-11-30"), &[], LONDON),
            Err(PeriodError::Backwards(..))
        ));
    }
}
