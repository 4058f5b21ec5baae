//! `GET /api/v1/audit-log`: the operator audit log, newest first.

use std::collections::HashMap;

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Response},
    Json,
};

use super::{
    answers::{AuditPage, Busy, Errors},
    errors::{bad, internal, ApiError},
    params::{limit_of, only, AuditLogParams, AUDIT_LOG},
    ApiState, Authenticated,
};

#[utoipa::path(get, path = "/api/v1/audit-log", tag = "audit log", params(AuditLogParams),
    responses((status = 200, body = AuditPage), Errors, Busy))]
pub(super) async fn audit_log(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, AUDIT_LOG)?;
    let limit = limit_of(&q)?;
    let after = q
        .get("after")
        .map(|a| {
            sitelink_commons::is_hyphenated_uuid(a)
                .then(|| a.parse::<uuid::Uuid>().ok())
                .flatten()
                .ok_or_else(|| {
                    bad(format!(
                        "after must be the next of an earlier page, got {a:?}"
                    ))
                })
        })
        .transpose()?;
    let items = st
        .db
        .audit_log()
        .list(after.map(|a| a.to_string()).as_deref(), limit)
        .await
        .map_err(internal)?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(AuditPage { items, next }).into_response())
}
