//! The usage chart: requests over time, stacked by outcome, drawn as inline SVG on the server.
//!
//! No script and no chart library: the page carries the finished drawing, so it works without
//! JavaScript and under the console's CSP (SVG presentation attributes are not inline styles;
//! colours come from the stylesheet by class). Each bucket is a `<g class="bucket">` holding one
//! `<rect>` per outcome that has a count, each with a `<title>` that a pointer or a screen
//! reader can read; the legend under it says what each colour is and how many of each there
//! were.

use std::fmt::Write as _;
use time::{Duration, OffsetDateTime};

/// How far back a chart looks, and at what granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last hour, per minute (60 buckets).
    Hour,
    /// The last day, per hour (24 buckets).
    Day,
    /// The last 30 days, per day (30 buckets).
    Month,
}

impl Range {
    pub fn parse(s: Option<&str>) -> Range {
        match s {
            Some("day") => Range::Day,
            Some("30d") | Some("month") => Range::Month,
            _ => Range::Hour,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "hour",
            Range::Day => "day",
            Range::Month => "30d",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Range::Hour => "Last hour",
            Range::Day => "Last day",
            Range::Month => "Last 30 days",
        }
    }
    /// The width of one bucket.
    pub fn step(self) -> Duration {
        match self {
            Range::Hour => Duration::minutes(1),
            Range::Day => Duration::hours(1),
            Range::Month => Duration::days(1),
        }
    }
    pub fn buckets(self) -> usize {
        match self {
            Range::Hour => 60,
            Range::Day => 24,
            Range::Month => 30,
        }
    }
    fn per(self) -> &'static str {
        match self {
            Range::Hour => "minute",
            Range::Day => "hour",
            Range::Month => "day",
        }
    }
    /// The start of the first bucket: buckets are aligned to whole minutes, hours or days
    /// (UTC), and the last one is the one `now` is in.
    pub fn start(self, now: OffsetDateTime) -> OffsetDateTime {
        let step = self.step().whole_seconds();
        let t = now.unix_timestamp();
        let last = t - t.rem_euclid(step);
        let first = last - step * (self.buckets() as i64 - 1);
        OffsetDateTime::from_unix_timestamp(first).unwrap_or(now)
    }
    pub fn all() -> [Range; 3] {
        [Range::Hour, Range::Day, Range::Month]
    }
}

/// The outcomes in the order they are stacked (bottom first) and listed; others follow in the
/// order they come.
const ORDER: [&str; 8] = [
    "allowed",
    "rate_limited",
    "insufficient_scope",
    "unknown",
    "revoked",
    "expired",
    "invalid",
    "other",
];

/// Counts per outcome in the buckets of one range.
#[derive(Debug, Clone)]
pub struct Series {
    pub range: Range,
    pub start: OffsetDateTime,
    /// One entry per bucket, oldest first: (outcome, count) with counts above zero.
    pub buckets: Vec<Vec<(String, u64)>>,
}

impl Series {
    /// An empty series for `range` ending at `now`.
    pub fn empty(range: Range, now: OffsetDateTime) -> Series {
        Series {
            range,
            start: range.start(now),
            buckets: vec![Vec::new(); range.buckets()],
        }
    }

    /// Adds `count` requests with `outcome` at `at` (ignored outside the range).
    pub fn add(&mut self, at: OffsetDateTime, outcome: &str, count: u64) {
        if count == 0 || at < self.start {
            return;
        }
        let i = ((at - self.start).whole_seconds() / self.range.step().whole_seconds()) as usize;
        let Some(b) = self.buckets.get_mut(i) else {
            return;
        };
        match b.iter_mut().find(|(o, _)| o == outcome) {
            Some((_, c)) => *c += count,
            None => b.push((outcome.to_string(), count)),
        }
    }

    /// Totals per outcome, in the stacking order.
    pub fn totals(&self) -> Vec<(String, u64)> {
        let mut t: Vec<(String, u64)> = Vec::new();
        for b in &self.buckets {
            for (o, c) in b {
                match t.iter_mut().find(|(x, _)| x == o) {
                    Some((_, n)) => *n += c,
                    None => t.push((o.clone(), *c)),
                }
            }
        }
        t.sort_by_key(|(o, _)| rank(o));
        t
    }

    pub fn total(&self) -> u64 {
        self.buckets.iter().flatten().map(|(_, c)| c).sum()
    }
}

fn rank(outcome: &str) -> usize {
    ORDER
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(ORDER.len())
}

/// An outcome as a CSS class: only `[a-z0-9_]`, anything else dropped.
fn class_of(outcome: &str) -> String {
    outcome
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .collect()
}

/// An outcome in words: `insufficient_scope` → "insufficient scope".
pub fn outcome_words(outcome: &str) -> String {
    outcome.replace('_', " ")
}

pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round ceiling for the y axis: 1, 2 or 5 times a power of ten.
fn nice_max(n: u64) -> u64 {
    let mut p = 1u64;
    loop {
        for m in [1, 2, 5] {
            if m * p >= n.max(1) {
                return m * p;
            }
        }
        p = p.saturating_mul(10);
    }
}

fn label_at(range: Range, t: OffsetDateTime) -> String {
    match range {
        Range::Hour | Range::Day => format!("{:02}:{:02}", t.hour(), t.minute()),
        Range::Month => format!("{} {}", t.day(), &t.month().to_string()[..3]),
    }
}

fn iso(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The drawing's own units: each bucket is 10 wide, the plot 100 high. The SVG is stretched
/// to the box (`preserveAspectRatio="none"`, strokes kept thin by `non-scaling-stroke`); its
/// labels are HTML around it, so they stay legible at any width.
const SLOT: f64 = 10.0;
const BAR: f64 = 7.6;
const PLOT_H: f64 = 100.0;

/// The chart as HTML: a `<figure>` with the SVG, its axes and its legend. `id` makes the
/// title's ids unique on the page; `what` names what is counted ("Requests with this key").
pub fn render(series: &Series, id: &str, what: &str) -> String {
    let range = series.range;
    let n = series.buckets.len().max(1);
    let totals = series.totals();
    let total = series.total();
    let peak = series
        .buckets
        .iter()
        .map(|b| b.iter().map(|(_, c)| c).sum::<u64>())
        .max()
        .unwrap_or(0);
    let max = nice_max(peak);
    let width = SLOT * n as f64;
    let id = class_of(&id.to_lowercase().replace('-', "_"));
    let title = format!(
        "{what}, per {}, {}",
        range.per(),
        range.label().to_lowercase()
    );
    let desc = if total == 0 {
        "No requests in this period.".to_string()
    } else {
        let parts: Vec<String> = totals
            .iter()
            .map(|(o, c)| format!("{} {c}", outcome_words(o)))
            .collect();
        format!("{total} requests: {}.", parts.join(", "))
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<figure class=\"chart\" data-testid=\"usage-chart\" data-range=\"{}\" data-buckets=\"{}\" data-total=\"{total}\"><div class=\"chart-grid\">",
        range.as_str(),
        series.buckets.len()
    );
    let _ = write!(
        s,
        "<div class=\"y-axis\" aria-hidden=\"true\"><span>{max}</span><span>{}</span><span>0</span></div>",
        if max >= 2 { (max / 2).to_string() } else { String::new() }
    );
    let _ = write!(
        s,
        "<svg viewBox=\"0 0 {width} {PLOT_H}\" preserveAspectRatio=\"none\" role=\"img\" aria-labelledby=\"{id}-title {id}-desc\" focusable=\"false\">\
         <title id=\"{id}-title\">{}</title><desc id=\"{id}-desc\">{}</desc><g class=\"grid\">",
        esc(&title),
        esc(&desc)
    );
    for y in [0.5, PLOT_H / 2.0, PLOT_H - 0.5] {
        let _ = write!(
            s,
            "<line x1=\"0\" x2=\"{width}\" y1=\"{y}\" y2=\"{y}\" vector-effect=\"non-scaling-stroke\"/>"
        );
    }
    s.push_str("</g><g class=\"bars\">");
    for (i, b) in series.buckets.iter().enumerate() {
        let at = series.start + range.step() * i as i32;
        let sum: u64 = b.iter().map(|(_, c)| c).sum();
        let x0 = SLOT * i as f64;
        let x = x0 + (SLOT - BAR) / 2.0;
        let mut parts: Vec<&(String, u64)> = b.iter().filter(|(_, c)| *c > 0).collect();
        parts.sort_by_key(|(o, _)| rank(o));
        let words: Vec<String> = parts
            .iter()
            .map(|(o, c)| format!("{} {c}", outcome_words(o)))
            .collect();
        let _ = write!(
            s,
            "<g class=\"bucket\" data-start=\"{}\" data-total=\"{sum}\"><title>{} UTC: {}</title>\
             <rect class=\"hit\" x=\"{x0}\" y=\"0\" width=\"{SLOT}\" height=\"{PLOT_H}\"/>",
            iso(at),
            label_at(range, at),
            if sum == 0 {
                "no requests".to_string()
            } else {
                esc(&words.join(", "))
            },
        );
        let mut y = PLOT_H;
        for (o, c) in parts {
            let h = PLOT_H * (*c as f64) / (max as f64);
            y -= h;
            let _ = write!(
                s,
                "<rect class=\"seg o-{}\" data-outcome=\"{}\" data-count=\"{c}\" x=\"{x:.2}\" y=\"{y:.3}\" width=\"{BAR}\" height=\"{h:.3}\"/>",
                class_of(o),
                esc(o)
            );
        }
        s.push_str("</g>");
    }
    s.push_str("</g></svg><span></span><div class=\"x-axis\" aria-hidden=\"true\">");
    // Time labels: the first bucket, a middle one and the last (the script shows them in the
    // viewer's local time).
    for i in [0, n / 2, n - 1] {
        let at = series.start + range.step() * i as i32;
        let _ = write!(
            s,
            "<span data-datetime=\"{}\" data-unit=\"{}\">{}</span>",
            iso(at),
            range.per(),
            label_at(range, at)
        );
    }
    s.push_str("</div></div><figcaption><ul class=\"legend\">");
    for (o, c) in &totals {
        let _ = write!(
            s,
            "<li data-outcome=\"{}\"><span class=\"swatch o-{}\" aria-hidden=\"true\"></span>{} <strong>{c}</strong></li>",
            esc(o),
            class_of(o),
            esc(&outcome_words(o))
        );
    }
    let _ = write!(
        s,
        "<li class=\"muted total\">{total} in all, {}</li></ul></figcaption></figure>",
        range.label().to_lowercase()
    );
    s
}

/// The range switcher's links, keeping the page's other query parameters (`base` ends in `?`
/// or `&`).
pub fn range_links(base: &str, current: Range) -> String {
    let mut s = String::from("<nav class=\"ranges\" aria-label=\"Period\">");
    for r in Range::all() {
        let _ = write!(
            s,
            "<a href=\"{}range={}\"{}>{}</a>",
            esc(base),
            r.as_str(),
            if r == current {
                " aria-current=\"true\""
            } else {
                ""
            },
            r.label()
        );
    }
    s.push_str("</nav>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_aligned_and_counted() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000 + 30).unwrap();
        let mut s = Series::empty(Range::Hour, now);
        assert_eq!(s.buckets.len(), 60);
        assert_eq!(s.start.unix_timestamp() % 60, 0);
        s.add(now, "allowed", 3);
        s.add(now, "revoked", 2);
        s.add(now - Duration::minutes(59), "allowed", 1);
        s.add(now - Duration::minutes(61), "allowed", 100);
        assert_eq!(s.total(), 6);
        assert_eq!(s.buckets[59].len(), 2);
        assert_eq!(s.buckets[0], vec![("allowed".to_string(), 1)]);
        let html = render(&s, "k", "Requests");
        assert_eq!(html.matches("<g class=\"bucket\"").count(), 60);
        assert_eq!(html.matches("class=\"seg ").count(), 3);
        assert!(html.contains("6 requests: allowed 4, revoked 2."));
    }

    #[test]
    fn an_outcome_cannot_break_out_of_its_attribute() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut s = Series::empty(Range::Day, now);
        s.add(now, "\"><script>", 1);
        let html = render(&s, "x", "R");
        assert!(!html.contains("<script>"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(3), 5);
        assert_eq!(nice_max(11), 20);
        assert_eq!(nice_max(500), 500);
    }
}
