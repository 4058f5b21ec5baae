//! `TrackedOperationId`: a UUID v7, so ids sort by creation time.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The id of one cached call, cached write or notification.
///
/// Made at the site at call time ([`TrackedOperationId::new`]); parsed from
/// outside input only through [`FromStr`], which names what was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrackedOperationId(Uuid);

/// Notifications use the same id type under their own name (SPEC §3).
pub type NotificationId = TrackedOperationId;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a tracked operation id (a UUID was expected): {input:?}")]
pub struct ParseIdError {
    pub input: String,
}

impl TrackedOperationId {
    /// A fresh id (UUID v7: time-ordered, random tail).
    #[allow(clippy::new_without_default)] // a default id would be a surprise
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The smallest id [`Self::new`] can make at or after `unix_ms`: every
    /// id made earlier sorts (as a value and in its hyphenated text) before
    /// it. What "ids sort by creation time" buys a range scan by age.
    pub fn lowest_at(unix_ms: u64) -> Self {
        Self(uuid::Builder::from_unix_timestamp_millis(unix_ms, &[0; 10]).into_uuid())
    }

    /// The hyphenated lower-case form (as [`fmt::Display`] writes it),
    /// encoded into `buf` without allocating.
    pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        self.0.hyphenated().encode_lower(buf)
    }
}

/// Whether `s` is a UUID in the hyphenated form this system writes
/// (`8-4-4-4-12` hex digits), the only form its APIs document.
pub fn is_hyphenated_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

impl FromStr for TrackedOperationId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| ParseIdError {
                input: s.chars().take(64).collect(),
            })
    }
}

impl TryFrom<String> for TrackedOperationId {
    type Error = ParseIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TrackedOperationId> for String {
    fn from(id: TrackedOperationId) -> String {
        id.to_string()
    }
}

impl fmt::Display for TrackedOperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hyphenated lower case: the form stored, sent and shown everywhere.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_and_round_trip_as_text() {
        let a = TrackedOperationId::new();
        let b = TrackedOperationId::new();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<TrackedOperationId>().unwrap(), a);
        assert_eq!(a.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn lowest_at_separates_ids_made_before_from_ids_made_after() {
        let before = TrackedOperationId::new();
        let (secs, nanos) = before.as_uuid().get_timestamp().unwrap().to_unix();
        let now_ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        let bound = TrackedOperationId::lowest_at(now_ms + 1);
        assert!(before < bound);
        assert!(before.to_string() < bound.to_string());
        // Made at the bound's millisecond or later: never below it.
        assert!(TrackedOperationId::lowest_at(now_ms) <= before);
        let mut buf = [0; 36];
        assert_eq!(bound.encode(&mut buf), bound.to_string());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = "not-an-id".parse::<TrackedOperationId>().unwrap_err();
        assert!(err.to_string().contains("not-an-id"), "{err}");
    }
}
