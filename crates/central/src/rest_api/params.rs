//! Query and path parameters of the routes that are not listings (those
//! parse a [`crate::configuration_database::ListQuery`]). Each route's
//! parameters are a table ([`SITES`], [`AUDIT_LOG`], [`KPIS`]): [`only`]
//! allows exactly its names, and the OpenAPI document is made from it
//! ([`SitesParams`], [`AuditLogParams`], [`KpisParams`]), so what is
//! documented is what is accepted.

use std::collections::HashMap;

use sitelink_commons::TrackedOperationId;
use utoipa::openapi::{
    path::{Parameter, ParameterBuilder, ParameterIn},
    schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type},
    Required,
};

use super::errors::{bad, ApiError};
use crate::configuration_database::listing::{parse_limit, DEFAULT_LIMIT, MAX_LIMIT, SITE_PATTERN};

/// What a query parameter takes.
pub(super) enum Takes {
    /// A page size, 1 to [`MAX_LIMIT`].
    Limit,
    /// A site name.
    SiteName,
    /// An audit-log entry's id (a UUID).
    EntryId,
}

/// One query parameter of a route.
pub(super) struct Param {
    name: &'static str,
    takes: Takes,
    description: &'static str,
}

const LIMIT: Param = Param {
    name: "limit",
    takes: Takes::Limit,
    description: "Page size, default 100.",
};

/// `GET /api/v1/sites`.
pub(super) const SITES: &[Param] = &[
    LIMIT,
    Param {
        name: "after",
        takes: Takes::SiteName,
        description: "The `next` of the previous page (a site name).",
    },
];

/// `GET /api/v1/audit-log`.
pub(super) const AUDIT_LOG: &[Param] = &[
    LIMIT,
    Param {
        name: "after",
        takes: Takes::EntryId,
        description: "The `next` of the previous page.",
    },
];

/// `GET /api/v1/kpis/…`.
pub(super) const KPIS: &[Param] = &[Param {
    name: "site",
    takes: Takes::SiteName,
    description: "One site's KPIs only (404 for a site central does not know).",
}];

fn openapi(params: &[Param]) -> Vec<Parameter> {
    params
        .iter()
        .map(|p| {
            let string = || ObjectBuilder::new().schema_type(Type::String);
            let schema = match p.takes {
                Takes::Limit => ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(MAX_LIMIT)),
                Takes::SiteName => string().pattern(Some(SITE_PATTERN)),
                Takes::EntryId => {
                    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                }
            };
            ParameterBuilder::new()
                .name(p.name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(p.description))
                .schema(Some(schema))
                .build()
        })
        .collect()
}

/// The OpenAPI parameters of `GET /api/v1/sites`.
pub(super) struct SitesParams;
/// The OpenAPI parameters of `GET /api/v1/audit-log`.
pub(super) struct AuditLogParams;
/// The OpenAPI parameters of the KPI routes.
pub(super) struct KpisParams;

impl utoipa::IntoParams for SitesParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        openapi(SITES)
    }
}

impl utoipa::IntoParams for AuditLogParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        openapi(AUDIT_LOG)
    }
}

impl utoipa::IntoParams for KpisParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        openapi(KPIS)
    }
}

pub(super) fn limit_of(q: &HashMap<String, String>) -> Result<u32, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => parse_limit(l).map_err(bad),
    }
}

/// Only the parameters of the route's table, and none with a NUL byte (no
/// database column holds one; PostgreSQL refuses it in a query).
pub(super) fn only(q: &HashMap<String, String>, params: &[Param]) -> Result<(), ApiError> {
    if let Some(k) = q
        .keys()
        .find(|k| !params.iter().any(|p| p.name == k.as_str()))
    {
        let allowed: Vec<&str> = params.iter().map(|p| p.name).collect();
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
