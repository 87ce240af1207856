//! How the console writes things for reading at a glance: long ids shortened (the whole id on
//! hover and behind a copy button), durations in words both ways ("15 minutes" shown, and
//! typed), and an event's details as a one-line summary.

use super::chart::esc;
use keyplane_core::domain::usage::{LimitShare, RateLimit, Window};
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Whether a word is one of our ids or client ids: `prefix_` then at least 12 base62
/// characters (`key_…`, `mem_…`, `kpc_…`).
fn is_long_id(w: &str) -> bool {
    match w.split_once('_') {
        Some((pre, rest)) => {
            !pre.is_empty()
                && pre.len() <= 8
                && pre.bytes().all(|b| b.is_ascii_lowercase())
                && rest.len() >= 12
                && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        None => false,
    }
}

/// `key_AbCdEfGh…` → `key_AbCd…wxyz`.
pub fn short_id(id: &str) -> String {
    if !is_long_id(id) {
        return id.to_string();
    }
    let (pre, rest) = id.split_once('_').unwrap_or(("", id));
    format!("{pre}_{}…{}", &rest[..4], &rest[rest.len() - 4..])
}

/// An id shortened, the whole of it in the title and behind a copy button.
pub struct Ident<'a>(pub &'a str);

impl fmt::Display for Ident<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = esc(self.0);
        write!(
            f,
            "<span class=\"ident\"><code class=\"id\" title=\"{full}\">{}</code><button type=\"button\" class=\"copy\" data-copy=\"{full}\" aria-label=\"Copy {full}\" title=\"Copy\">Copy</button></span>",
            esc(&short_id(self.0))
        )
    }
}

/// Text that may hold ids (`member:mem_… via console`), escaped, with each id shortened.
pub fn with_ids(text: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if is_long_id(word) {
            out.push_str(&Ident(word).to_string());
        } else {
            out.push_str(&esc(word));
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push_str(&esc(&c.to_string()));
        }
    }
    flush(&mut word, &mut out);
    out
}

/// An event's details (JSON text) in one line: `key: value` pairs of its top level, long
/// values cut, ids shortened; empty for none.
pub fn details_summary(details: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(details) else {
        return details.chars().take(80).collect();
    };
    let one = |v: &serde_json::Value| -> String {
        let s = match v {
            serde_json::Value::String(s) => short_id(s),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    serde_json::Value::String(s) => short_id(s),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" "),
            serde_json::Value::Object(o) => format!("{{{} fields}}", o.len()),
            other => other.to_string(),
        };
        if s.chars().count() > 40 {
            s.chars().take(39).collect::<String>() + "…"
        } else {
            s
        }
    };
    match &v {
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k}: {}", one(v)))
            .collect::<Vec<_>>()
            .join(" · "),
        serde_json::Value::Null => String::new(),
        other => one(other),
    }
}

/// The details as indented JSON, for the expanded view.
pub fn details_pretty(details: &str) -> String {
    serde_json::from_str::<serde_json::Value>(details)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| details.to_string())
}

/// A duration typed in words: "1 hour", "15 minutes", "90s", "1h 30m", "2 days"; a bare
/// number is seconds. `None` when it does not read as one.
pub fn parse_span(text: &str) -> Option<i64> {
    let t = text.trim().to_lowercase();
    if t.is_empty() {
        return None;
    }
    if let Ok(n) = t.parse::<i64>() {
        return (n > 0).then_some(n);
    }
    let mut total: i64 = 0;
    let mut rest = t.as_str();
    let mut any = false;
    while !rest.trim_start().is_empty() {
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        if let Some(r) = rest.strip_prefix("and ") {
            rest = r.trim_start();
        }
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        // "an hour", "a day": one.
        let (n, after) = if digits == 0 {
            if let Some(r) = rest.strip_prefix("an ").or_else(|| rest.strip_prefix("a ")) {
                (1, r)
            } else {
                return None;
            }
        } else {
            (rest[..digits].parse::<i64>().ok()?, &rest[digits..])
        };
        let after = after.trim_start();
        let letters = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let unit = &after[..letters];
        let secs = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(secs)?)?;
        rest = &after[letters..];
        any = true;
    }
    (any && total > 0).then_some(total)
}

/// A moment typed in a `datetime-local` field (`2026-11-29T22:50`, seconds optional), read as
/// UTC, or an RFC 3339 timestamp.
pub fn parse_when(text: &str) -> Option<OffsetDateTime> {
    let t = text.trim();
    if let Ok(v) = OffsetDateTime::parse(t, &Rfc3339) {
        return Some(v);
    }
    let with_secs = if t.len() == 16 {
        format!("{t}:00")
    } else {
        t.to_string()
    };
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(&with_secs, &fmt)
        .ok()
        .map(|p| p.assume_utc())
}

/// A moment as a `datetime-local` field's value (UTC).
pub fn when_input(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// One rate limit as the console writes and reads it: `burst: 100 per second`,
/// `daily: 10000 per day shared by owner`, `500 per 10 minutes`, `heavy: 10 per second cost 2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitText {
    pub name: String,
    pub limit: u64,
    /// The window in milliseconds.
    pub window_ms: u64,
    /// What one request costs, when not 1.
    pub cost: Option<u64>,
    /// `owner`, `project` (or `credential`) when said.
    pub shared: Option<String>,
}

fn unit_words(ms: u64) -> (u64, &'static str) {
    for (n, unit) in [
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1000, "second"),
    ] {
        if ms.is_multiple_of(n) {
            return (ms / n, unit);
        }
    }
    (ms, "millisecond")
}

impl fmt::Display for LimitText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, unit) = unit_words(self.window_ms);
        write!(f, "{}: {} per ", self.name, self.limit)?;
        if n == 1 {
            write!(f, "{unit}")?;
        } else {
            write!(f, "{n} {unit}s")?;
        }
        if let Some(c) = self.cost {
            write!(f, " cost {c}")?;
        }
        match self.shared.as_deref() {
            None | Some("credential") => {}
            Some(s) => write!(f, " shared by {s}")?,
        }
        Ok(())
    }
}

impl From<&RateLimit> for LimitText {
    fn from(l: &RateLimit) -> Self {
        LimitText {
            name: l.name.clone(),
            limit: l.limit,
            window_ms: l.window.0.as_millis() as u64,
            cost: l.cost,
            shared: l.shared.map(|s| {
                match s {
                    LimitShare::Credential => "credential",
                    LimitShare::Owner => "owner",
                    LimitShare::Project => "project",
                }
                .to_string()
            }),
        }
    }
}

impl LimitText {
    /// The limit as the use cases take it (their checks — names, sizes, windows — still apply).
    pub fn to_rate_limit(&self) -> RateLimit {
        RateLimit {
            name: self.name.clone(),
            limit: self.limit,
            window: Window(std::time::Duration::from_millis(self.window_ms)),
            cost: self.cost,
            shared: match self.shared.as_deref() {
                Some("owner") => Some(LimitShare::Owner),
                Some("project") => Some(LimitShare::Project),
                Some("credential") => Some(LimitShare::Credential),
                _ => None,
            },
        }
    }
}

/// A credential's limits as the edit form's text, one a line.
pub fn limits_text(limits: &[RateLimit]) -> String {
    limits
        .iter()
        .map(|l| LimitText::from(l).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads rate limits typed one a line (or separated by `;`). An error names the line at fault.
pub fn parse_limits(text: &str) -> Result<Vec<LimitText>, String> {
    let mut out = Vec::new();
    for line in text
        .split(['\n', ';'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let bad = || {
            format!(
                "“{line}” is not a rate limit: write it like “burst: 100 per second” or “daily: 10000 per day”"
            )
        };
        let (name, rest) = match line.split_once(':') {
            Some((n, r)) => (Some(n.trim().to_string()), r.trim()),
            None => (None, line),
        };
        let mut rest = rest.to_lowercase();
        let mut shared = None;
        if let Some((r, who)) = rest.clone().split_once("shared by") {
            let who = who
                .trim()
                .trim_start_matches("the ")
                .trim_start_matches("its ");
            shared = Some(
                match who.trim() {
                    "owner" => "owner",
                    "project" => "project",
                    _ => {
                        return Err(format!(
                            "“{line}”: a limit is shared by “owner” or “project”"
                        ))
                    }
                }
                .to_string(),
            );
            rest = r.trim().to_string();
        }
        let mut cost = None;
        if let Some((r, c)) = rest.clone().rsplit_once(" cost") {
            let c = c.trim().trim_start_matches("ing").trim();
            cost = Some(c.parse::<u64>().map_err(|_| bad())?);
            rest = r.trim().trim_end_matches(',').to_string();
        }
        let (count, per) = rest
            .split_once(" per ")
            .or_else(|| rest.split_once('/'))
            .ok_or_else(bad)?;
        let limit: u64 = count
            .trim()
            .replace([',', '_'], "")
            .parse()
            .map_err(|_| bad())?;
        if limit == 0 {
            return Err(format!("“{line}”: the limit must be at least 1"));
        }
        let per = per.trim();
        // "second" alone is one second; "10 minutes" is read as a span.
        let window = if per.starts_with(|c: char| c.is_ascii_digit()) {
            parse_span(per).ok_or_else(bad)?
        } else {
            parse_span(&format!("1 {per}")).ok_or_else(bad)?
        };
        let window_ms = window as u64 * 1000;
        let name = name.filter(|n| !n.is_empty()).unwrap_or_else(|| {
            let (n, unit) = unit_words(window_ms);
            if n == 1 {
                format!("per-{unit}")
            } else {
                format!("per-{n}-{unit}s")
            }
        });
        out.push(LimitText {
            name,
            limit,
            window_ms,
            cost,
            shared,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_shortened_with_the_whole_on_hover() {
        assert_eq!(short_id("key_AbCdEfGhIjKlMnOpQrSt"), "key_AbCd…QrSt");
        assert_eq!(short_id("admin-key"), "admin-key");
        let html = with_ids("member:mem_AbCdEfGhIjKlMnOpQrSt via console");
        assert!(html.starts_with("member:<span class=\"ident\">"));
        assert!(html.contains("title=\"mem_AbCdEfGhIjKlMnOpQrSt\""));
        assert!(html.contains("data-copy=\"mem_AbCdEfGhIjKlMnOpQrSt\""));
        assert!(html.ends_with(" via console"));
        assert_eq!(with_ids("<b>"), "&lt;b&gt;");
    }

    #[test]
    fn durations_read_as_typed() {
        assert_eq!(parse_span("1 hour"), Some(3600));
        assert_eq!(parse_span("15 minutes"), Some(900));
        assert_eq!(parse_span("90s"), Some(90));
        assert_eq!(parse_span("1h 30m"), Some(5400));
        assert_eq!(parse_span("an hour"), Some(3600));
        assert_eq!(parse_span("2 days"), Some(172_800));
        assert_eq!(parse_span("3600"), Some(3600));
        assert_eq!(parse_span("soon"), None);
        assert_eq!(parse_span("0 minutes"), None);
        assert_eq!(parse_span("5 fortnights"), None);
    }

    #[test]
    fn details_in_one_line() {
        assert_eq!(
            details_summary(r#"{"name":"x","scopes":["a:read","b:write"]}"#),
            "name: x · scopes: a:read b:write"
        );
        assert_eq!(details_summary("null"), "");
    }

    #[test]
    fn limits_read_and_written_in_words() {
        let l =
            parse_limits("burst: 100 per second\ndaily: 10,000 per day shared by owner").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].name.as_str(), l[0].limit, l[0].window_ms),
            ("burst", 100, 1000)
        );
        assert_eq!((l[1].limit, l[1].window_ms), (10_000, 86_400_000));
        assert_eq!(l[1].shared.as_deref(), Some("owner"));
        assert_eq!(l[0].to_string(), "burst: 100 per second");
        assert_eq!(l[1].to_string(), "daily: 10000 per day shared by owner");
        let l = parse_limits("500/10 minutes; 5 per 1h").unwrap();
        assert_eq!(
            (l[0].name.as_str(), l[0].window_ms),
            ("per-10-minutes", 600_000)
        );
        assert_eq!(
            (l[1].name.as_str(), l[1].window_ms),
            ("per-hour", 3_600_000)
        );
        let l = parse_limits("heavy: 10 per second cost 2").unwrap();
        assert_eq!(l[0].cost, Some(2));
        assert_eq!(l[0].to_string(), "heavy: 10 per second cost 2");
        // What the use cases store reads back as typed.
        let back = LimitText::from(&l[0].to_rate_limit());
        assert_eq!(back, l[0]);
        assert!(parse_limits("lots").is_err());
        assert!(parse_limits("x: 0 per second").is_err());
        assert!(parse_limits("x: 5 per second shared by everyone").is_err());
        assert_eq!(parse_limits("  \n").unwrap(), vec![]);
    }

    #[test]
    fn moments_typed_in_a_field() {
        let t = parse_when("2026-11-29T22:50").unwrap();
        assert_eq!(t.unix_timestamp() % 60, 0);
        assert_eq!(when_input(t), "2026-11-29T22:50:00");
        assert_eq!(parse_when("2026-11-29T22:50:00Z"), Some(t));
        assert_eq!(parse_when("yesterday"), None);
    }
}
