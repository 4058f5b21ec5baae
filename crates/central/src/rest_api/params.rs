//! Query and path parameters of the routes that are not listings (those
//! parse a [`crate::configuration_database::ListQuery`]).

use std::collections::HashMap;

use sitelink_commons::TrackedOperationId;

use super::errors::{bad, ApiError};
use crate::configuration_database::listing::{DEFAULT_LIMIT, MAX_LIMIT};

pub(super) fn limit_of(q: &HashMap<String, String>) -> Result<u32, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                bad(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, got {l:?}"
                ))
            }),
    }
}

/// Only the `allowed` query parameters, and none with a NUL byte (no
/// database column holds one; PostgreSQL refuses it in a query).
pub(super) fn only(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown query parameter {k:?} (allowed: {})",
            allowed.join(", ")
        )));
    }
    if let Some(k) = q.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return Err(bad(format!("{k} contains a NUL byte")));
    }
    Ok(())
}

/// A query parameter that names a site: a valid site name or a 400.
pub(super) fn site_param(
    q: &HashMap<String, String>,
    key: &str,
) -> Result<Option<String>, ApiError> {
    q.get(key)
        .map(|s| {
            sitelink_commons::SiteName::parse(s)
                .map(|n| n.as_str().to_owned())
                .map_err(|e| bad(format!("{key}: {e}")))
        })
        .transpose()
}

pub(super) fn parse_id(id: &str) -> Result<TrackedOperationId, ApiError> {
    id.parse()
        .map_err(|e: sitelink_commons::ParseIdError| bad(e.to_string()))
}
