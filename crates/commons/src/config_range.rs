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

#[cfg(test)]
mod tests {
    use super::*;

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
