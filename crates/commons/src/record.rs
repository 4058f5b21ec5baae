//! [`TrackingRecord`]: one tracking row in the shape of SPEC §7, as the site
//! admin API and (later) the central API answer it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Kind, TrackedOperationId, TrackedOperationStatus};

/// One tracked operation. Field names are a contract (SPEC §7): add fields,
/// never rename or remove. Times are RFC 3339 UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrackingRecord {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "01a21dc7-e371-702d-9d9a-b8a61109dc05"))]
    pub tracked_operation_id: TrackedOperationId,
    pub source_site: String,
    pub kind: Kind,
    pub target_summary: String,
    pub status: TrackedOperationStatus,
    /// Retry attempts so far; the immediate attempt is not counted.
    pub retry_count: u32,
    pub last_error: Option<String>,
    /// `instance/script` that made the call.
    pub provenance: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at_utc: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at_utc: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub terminal_at_utc: Option<OffsetDateTime>,
    /// +1 on every change, starting at 1. "Newer" means a higher revision.
    pub revision: u64,
    /// Site-wide change sequence of this row's latest change.
    pub change_seq: u64,
}

/// Longest `last_error` a site sends and central stores, in characters.
/// Both sides cut with [`truncate_chars`], so the limit lives here once.
pub const LAST_ERROR_MAX_CHARS: usize = 4096;

/// `s` cut to at most `max` characters (at a character boundary), marked
/// `…[truncated]` when cut.
pub fn truncate_chars(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((cut, _)) => format!("{}…[truncated]", &s[..cut]).into(),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    utc_to_unix_ms(OffsetDateTime::now_utc())
}

/// Milliseconds since the Unix epoch, the form times are stored and sent in.
pub fn utc_to_unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`utc_to_unix_ms`]; out-of-range input clamps to the epoch
/// rather than failing, since it can only come from a corrupt peer.
pub fn unix_ms_to_utc(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_by_characters_and_marked() {
        assert_eq!(truncate_chars("héllo", 10), "héllo");
        assert_eq!(truncate_chars("héllo", 2), "hé…[truncated]");
    }

    #[test]
    fn json_shape_matches_spec_section_7() {
        let r = TrackingRecord {
            tracked_operation_id: TrackedOperationId::new(),
            source_site: "plant-1".into(),
            kind: Kind::ExternalCall,
            target_summary: "erp.postOrder".into(),
            status: TrackedOperationStatus::Parked,
            retry_count: 3,
            last_error: Some("HTTP 503".into()),
            provenance: "line1/orders".into(),
            created_at_utc: unix_ms_to_utc(1_700_000_000_123),
            updated_at_utc: unix_ms_to_utc(1_700_000_001_000),
            terminal_at_utc: None,
            revision: 4,
            change_seq: 17,
        };
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "tracked_operation_id",
            "source_site",
            "kind",
            "target_summary",
            "status",
            "retry_count",
            "last_error",
            "provenance",
            "created_at_utc",
            "updated_at_utc",
            "terminal_at_utc",
            "revision",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["status"], "Parked");
        assert_eq!(v["kind"], "ExternalCall");
        assert_eq!(v["created_at_utc"], "2023-11-14T22:13:20.123Z");
        let back: TrackingRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
