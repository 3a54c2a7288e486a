//! Inline SVG charts drawn from a report's counts: stacked bars per day, with a legend in words, for screen and paper alike.
//!
//! No script and no external asset: the SVG goes straight into the HTML, which Chromium prints
//! to PDF as vectors. Only numbers, dates and this module's labels go in.

use std::fmt::Write;

use chrono::NaiveDate;

use super::model::{ComplianceSeries, MediaDay};

const WIDTH: f64 = 680.0;
const HEIGHT: f64 = 210.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 52.0;

/// Colours with at least 3:1 contrast against white, paired with words in the legend (never
/// colour alone).
pub const GOOD: &str = "#00703c";
pub const BAD: &str = "#d4351c";
pub const UNKNOWN: &str = "#6f777b";
pub const ALLOWED: &str = "#1d70b8";
pub const REFUSED: &str = "#b35c00";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A layer of a stacked bar chart: its name, colour and one value per day.
pub struct Layer<'a> {
    pub label: &'a str,
    pub colour: &'a str,
    pub values: Vec<u32>,
}

/// A rounded-up axis maximum: 1, 2, 5 × 10^n.
fn nice_max(v: u32) -> u32 {
    let mut step = 1u32;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= v.max(1) {
                return step * m;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// Stacked bars, one per day, bottom layer first.
pub fn stacked_bars(title: &str, summary: &str, days: &[NaiveDate], layers: &[Layer]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-labelledby="t-{id} d-{id}" xmlns="http://www.w3.org/2000/svg" font-family="DejaVu Sans, Arial, sans-serif" font-size="11"><title id="t-{id}">{t}</title><desc id="d-{id}">{d}</desc>"#,
        id = title
            .bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(char::from)
            .collect::<String>(),
        t = esc(title),
        d = esc(summary),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let totals: Vec<u32> = (0..days.len())
        .map(|i| layers.iter().map(|l| l.values[i]).sum())
        .collect();
    let max = nice_max(totals.iter().copied().max().unwrap_or(0));
    // Grid and y labels at 0, half and the top.
    // A half-way line only where it falls on a whole number of devices.
    let fracs: &[f64] = if max.is_multiple_of(2) {
        &[0.0, 0.5, 1.0]
    } else {
        &[0.0, 1.0]
    };
    for &frac in fracs {
        let y = TOP + plot_h * (1.0 - frac);
        let v = (f64::from(max) * frac).round();
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#d8d8d8" stroke-width="1"/><text x="{tx}" y="{ty:.1}" text-anchor="end" fill="#0b0c0c">{v}</text>"##,
            x2 = WIDTH - RIGHT,
            tx = LEFT - 4.0,
            ty = y + 4.0,
        );
    }
    if days.is_empty() {
        let _ = write!(
            s,
            r##"<text x="{x}" y="{y}" text-anchor="middle" fill="#0b0c0c">No days in this period yet</text>"##,
            x = LEFT + plot_w / 2.0,
            y = TOP + plot_h / 2.0,
        );
    }
    let n = days.len().max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.8).clamp(0.5, 40.0);
    for (i, _) in days.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = 0u32;
        for l in layers {
            let v = l.values[i];
            if v == 0 {
                continue;
            }
            let y0 = TOP + plot_h * (1.0 - f64::from(base) / f64::from(max));
            let y1 = TOP + plot_h * (1.0 - f64::from(base + v) / f64::from(max));
            let _ = write!(
                s,
                r#"<rect x="{x:.2}" y="{y1:.2}" width="{bar:.2}" height="{h:.2}" fill="{c}"/>"#,
                h = y0 - y1,
                c = l.colour,
            );
            base += v;
        }
    }
    // Date labels: the first, the last and a few between.
    let ticks = 6.min(days.len());
    let mut shown: Vec<usize> = (0..ticks)
        .map(|k| {
            if ticks <= 1 {
                0
            } else {
                k * (days.len() - 1) / (ticks - 1)
            }
        })
        .collect();
    shown.dedup();
    for i in shown {
        let x = LEFT + slot * (i as f64 + 0.5);
        // The first and last labels must not run off the chart's edges.
        let (x, anchor) = if days.len() > 3 && i == 0 {
            (LEFT, "start")
        } else if days.len() > 3 && i == days.len() - 1 {
            (WIDTH - RIGHT, "end")
        } else {
            (x, "middle")
        };
        let _ = write!(
            s,
            r##"<text x="{x:.1}" y="{y}" text-anchor="{anchor}" fill="#0b0c0c">{d}</text>"##,
            y = TOP + plot_h + 14.0,
            d = days[i].format("%-d %b"),
        );
    }
    // Legend in words.
    let mut lx = LEFT;
    let ly = HEIGHT - 12.0;
    for l in layers {
        let _ = write!(
            s,
            r##"<rect x="{lx}" y="{y}" width="10" height="10" fill="{c}"/><text x="{tx}" y="{ly}" fill="#0b0c0c">{t}</text>"##,
            y = ly - 9.0,
            c = l.colour,
            tx = lx + 14.0,
            t = esc(l.label),
        );
        lx += 24.0 + 6.5 * l.label.chars().count() as f64;
    }
    s.push_str("</svg>");
    s
}

/// A compliance series as a chart.
pub fn compliance(c: &ComplianceSeries) -> String {
    let days: Vec<NaiveDate> = c.days.iter().map(|d| d.day).collect();
    let last = c.last();
    let summary = format!(
        "Devices per day. At the end: {} {}, {} {}, {} {}.",
        last.good,
        c.good_label.to_lowercase(),
        last.bad,
        c.bad_label.to_lowercase(),
        last.unknown,
        c.unknown_label.to_lowercase()
    );
    stacked_bars(
        c.title,
        &summary,
        &days,
        &[
            Layer {
                label: c.good_label,
                colour: GOOD,
                values: c.days.iter().map(|d| d.good).collect(),
            },
            Layer {
                label: c.bad_label,
                colour: BAD,
                values: c.days.iter().map(|d| d.bad).collect(),
            },
            Layer {
                label: c.unknown_label,
                colour: UNKNOWN,
                values: c.days.iter().map(|d| d.unknown).collect(),
            },
        ],
    )
}

/// Removable media per day: sticks refused and allowed.
pub fn media(m: &[MediaDay]) -> String {
    let days: Vec<NaiveDate> = m.iter().map(|d| d.day).collect();
    let refused: u32 = m.iter().map(|d| d.refused).sum();
    let allowed: u32 = m.iter().map(|d| d.allowed).sum();
    stacked_bars(
        "USB storage per day",
        &format!("{refused} pupils' sticks refused, {allowed} allowed in the period."),
        &days,
        &[
            Layer {
                label: "Pupils' sticks refused",
                colour: REFUSED,
                values: m.iter().map(|d| d.refused).collect(),
            },
            Layer {
                label: "Allowed (staff, permitted or scanned)",
                colour: ALLOWED,
                values: m.iter().map(|d| d.allowed).collect(),
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_to_the_day_total_on_a_rounded_axis() {
        let d0: NaiveDate = "2026-11-02".parse().unwrap();
        let days = vec![d0, d0.succ_opt().unwrap()];
        let svg = stacked_bars(
            "T",
            "S",
            &days,
            &[
                Layer {
                    label: "a",
                    colour: GOOD,
                    values: vec![3, 0],
                },
                Layer {
                    label: "b",
                    colour: BAD,
                    values: vec![1, 4],
                },
            ],
        );
        assert_eq!(nice_max(4), 5);
        assert_eq!(nice_max(1001), 2000);
        // Three drawn bars (a zero is not drawn), the axis top is 5, both dates are labelled.
        assert_eq!(svg.matches("<rect x=\"").count(), 3 + 2, "{svg}");
        assert!(svg.contains(">5</text>") && svg.contains(">2 Nov<") && svg.contains(">3 Nov<"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
