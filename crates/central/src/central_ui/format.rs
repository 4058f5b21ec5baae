//! How pages show values: status badges in one colour scheme, UTC times
//! with their age, long text folded to one line.

use sitelink_commons::TrackedOperationStatus;

/// The badge class of a status, the same on every page.
pub fn status_class(s: TrackedOperationStatus) -> &'static str {
    use TrackedOperationStatus::*;
    match s {
        Pending => "text-bg-secondary",
        Retrying => "text-bg-info",
        Delivered => "text-bg-success",
        Parked => "text-bg-warning",
        Failed => "text-bg-danger",
        Discarded => "text-bg-dark",
    }
}

/// `2026-11-29 22:40:01 UTC`.
pub fn utc(ms: i64) -> String {
    let t = sitelink_commons::unix_ms_to_utc(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How long ago `ms` was at `now_ms`: "just now", "42 s ago", "3 min ago",
/// "5 h ago", "12 days ago" (and "in the future" for a clock ahead).
pub fn ago(ms: i64, now_ms: i64) -> String {
    let s = (now_ms - ms) / 1000;
    match s {
        s if s < -5 => "in the future".into(),
        s if s < 5 => "just now".into(),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// A duration in seconds as "42 s", "3 min", "5 h", "2 days".
pub fn age(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// Text on one line (whitespace runs become one space), cut after `max`
/// characters with an ellipsis.
pub fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        let now = 1_000_000_000;
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - 42_000, now), "42 s ago");
        assert_eq!(ago(now - 180_000, now), "3 min ago");
        assert_eq!(ago(now - 5 * 3_600_000, now), "5 h ago");
        assert_eq!(ago(now - 12 * 86_400_000, now), "12 days ago");
        assert_eq!(ago(now + 60_000, now), "in the future");
    }

    #[test]
    fn long_text_folds_to_one_line() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line(&"x".repeat(20), 5), "xxxxx…");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    }
}
