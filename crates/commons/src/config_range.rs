//! [`in_range`]: the one check every numeric configuration key goes through,
//! so that every out-of-range value stops the start with the same kind of
//! message: the key, the allowed range and what was given.

use std::fmt::Display;

/// `Ok` when `lo <= value <= hi`, else `"<key> must be from <lo> to <hi>,
/// got <value>"`.
pub fn in_range<T: PartialOrd + Display>(key: &str, value: T, lo: T, hi: T) -> Result<(), String> {
    if lo <= value && value <= hi {
        Ok(())
    } else {
        Err(format!("{key} must be from {lo} to {hi}, got {value}"))
    }
}

/// A page size from a query parameter: ASCII digits only (no sign, no
/// space), from 1 to `max`, or an error naming the rule and what was
/// given. The one limit rule of central's REST API and the site's admin
/// API.
pub fn parse_limit(v: &str, max: u32) -> Result<u32, String> {
    Some(v)
        .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(|| {
            format!(
                "limit must be a whole number from 1 to {max}, got {:?}",
                v.chars().take(40).collect::<String>()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_digits_only() {
        assert_eq!(parse_limit("5", 10), Ok(5));
        for bad in ["+5", " 5", "5 ", "-1", "0", "11", "", "5.0", "0x5"] {
            let e = parse_limit(bad, 10).unwrap_err();
            assert!(e.contains("from 1 to 10"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn names_key_range_and_value() {
        assert_eq!(in_range("a.b", 5, 1, 10), Ok(()));
        assert_eq!(in_range("a.b", 1, 1, 10), Ok(()));
        assert_eq!(
            in_range("central.retention_days", -1, 1, 36500),
            Err("central.retention_days must be from 1 to 36500, got -1".into())
        );
    }
}
