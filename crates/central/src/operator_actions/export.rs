//! Export (issue 21 item 4): a filtered set of site calls or notifications
//! as CSV or as JSON lines, so an operator can keep a set before they
//! discard it. The REST API (`GET /api/v1/site-calls/export`, and the same
//! for notifications) and the pages' Export links call [`site_calls`] and
//! [`notifications`] with the listing's own filter: what was listed is
//! what is exported.
//!
//! Invariant: memory stays flat at any count. The rows come from the
//! repositories' `export` streams (one pooled connection, a bounded
//! read-ahead), each is encoded as it arrives, and the answer body is that
//! stream: nothing collects the set.
//!
//! CSV is written by hand (RFC 4180: a field with a comma, a quote or a
//! line break is quoted, its quotes doubled), a few lines no crate would
//! shorten. A field that a spreadsheet would take for a formula (it starts
//! with `=`, `+`, `-`, `@`, a tab or a carriage return) is led by `'`, so an
//! error text from a remote system cannot run as a formula (OWASP's advice
//! on CSV injection); the JSON lines keep every value as it is.

use axum::{
    body::Body,
    http::{header, HeaderValue},
    response::{IntoResponse as _, Response},
};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use sitelink_commons::TrackingRecord;

use crate::configuration_database::{
    listing::unknown_site, Database, Dialect, ListFilter, ListQuery, Listed, NotificationRecord,
};

/// Why an export was not made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The query is wrong (a 400; the message names what).
    #[error("{0}")]
    BadQuery(String),
    /// `site` names no registered site (a 404).
    #[error("{0}")]
    UnknownSite(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The filter and format of an export query: the listing's parameters
/// without `limit`, `after` and `before` (an export is the whole set), and
/// `format`.
pub fn parse(
    pairs: &[(String, String)],
    listed: Listed,
    dialect: Dialect,
) -> Result<(ListQuery, ExportFormat), String> {
    let mut format = None;
    let mut rest = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        match k.as_str() {
            "format" if format.is_some() => return Err("format is given more than once".into()),
            "format" => format = Some(ExportFormat::parse(v)?),
            "limit" | "after" | "before" => {
                return Err(format!(
                    "{k}: an export is the whole filtered set; it takes the listing's filters, not its paging"
                ))
            }
            _ => rest.push((k.clone(), v.clone())),
        }
    }
    let format = format.ok_or("format is required: csv or jsonl")?;
    let q = ListQuery::parse(&rest, listed, dialect).map_err(|e| e.0)?;
    Ok((q, format))
}

/// The export answer of a query (the REST API and the pages alike, once
/// the caller is authenticated): the stream, with its content type and an
/// attachment name.
pub async fn answer(
    db: &Database,
    pairs: &[(String, String)],
    listed: Listed,
    dialect: Dialect,
) -> Result<Response, ExportError> {
    let (q, format) = parse(pairs, listed, dialect).map_err(ExportError::BadQuery)?;
    if let Some(m) = unknown_site(db, q.filter.site.as_deref())
        .await
        .map_err(|e| ExportError::Internal(e.into()))?
    {
        return Err(ExportError::UnknownSite(m));
    }
    let (stream, name) = match listed {
        Listed::SiteCalls => (site_calls(db, &q.filter, format), "site-calls"),
        Listed::Notifications => (notifications(db, &q.filter, format), "notifications"),
    };
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{name}-{stamp}.{}\"",
        format.extension()
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// The format of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    JsonLines,
}

impl ExportFormat {
    /// `csv` or `jsonl`, or the message of a 400.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "csv" => Ok(Self::Csv),
            "jsonl" => Ok(Self::JsonLines),
            other => Err(format!(
                "format must be csv or jsonl, got {:?}",
                other.chars().take(40).collect::<String>()
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::JsonLines => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::JsonLines => "jsonl",
        }
    }
}

/// One export: its bytes as they are made. A database error ends the
/// stream with an error (the client sees a cut answer, the log says why).
pub type ExportStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

const SITE_CALL_COLUMNS: &[&str] = &[
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
];

const NOTIFICATION_COLUMNS: &[&str] = &[
    "notification_id",
    "source_site",
    "kind",
    "list",
    "status",
    "retry_count",
    "last_error",
    "provenance",
    "created_at_utc",
    "updated_at_utc",
    "terminal_at_utc",
    "revision",
    "subject",
    "body",
    "recipients",
];

/// The site calls `f` matches, newest first.
pub fn site_calls(db: &Database, f: &ListFilter, format: ExportFormat) -> ExportStream {
    let rows = db.site_calls().export(f);
    encode(rows, format, SITE_CALL_COLUMNS, |r: &TrackingRecord| {
        tracking_fields(r)
    })
}

/// The notifications `f` matches, newest first, with subject, body and
/// recipients.
pub fn notifications(db: &Database, f: &ListFilter, format: ExportFormat) -> ExportStream {
    let rows = db.notifications().export(f);
    encode(
        rows,
        format,
        NOTIFICATION_COLUMNS,
        |n: &NotificationRecord| {
            let mut fields = tracking_fields(&n.tracking);
            fields.push(n.subject.clone());
            fields.push(n.body.clone().unwrap_or_default());
            fields.push(n.recipients.clone().unwrap_or_default().join(" "));
            fields
        },
    )
}

fn tracking_fields(r: &TrackingRecord) -> Vec<String> {
    let time = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    vec![
        r.tracked_operation_id.to_string(),
        r.source_site.clone(),
        r.kind.to_string(),
        r.target_summary.clone(),
        r.status.to_string(),
        r.retry_count.to_string(),
        r.last_error.clone().unwrap_or_default(),
        r.provenance.clone(),
        time(r.created_at_utc),
        time(r.updated_at_utc),
        r.terminal_at_utc.map(time).unwrap_or_default(),
        r.revision.to_string(),
    ]
}

fn encode<T, S>(
    rows: S,
    format: ExportFormat,
    columns: &'static [&'static str],
    fields: fn(&T) -> Vec<String>,
) -> ExportStream
where
    T: serde::Serialize + Send + 'static,
    S: Stream<Item = Result<T, sqlx::Error>> + Send + 'static,
{
    let header = match format {
        ExportFormat::Csv => Some(Ok(Bytes::from(csv_line(
            columns.iter().map(|c| c.to_string()),
        )))),
        ExportFormat::JsonLines => None,
    };
    let body = rows.map(move |row| {
        let row = row.map_err(|e| {
            let reference = sitelink_net::internal_error_reference(&e, "export");
            std::io::Error::other(format!("export cut (reference {reference})"))
        })?;
        Ok(Bytes::from(match format {
            ExportFormat::Csv => csv_line(fields(&row).into_iter()),
            ExportFormat::JsonLines => {
                let mut line = serde_json::to_string(&row).map_err(std::io::Error::other)?;
                line.push('\n');
                line
            }
        }))
    });
    Box::pin(futures::stream::iter(header).chain(body))
}

/// One CSV line (CRLF-terminated, RFC 4180), formula-safe.
fn csv_line(fields: impl Iterator<Item = String>) -> String {
    let mut line = String::new();
    for (i, f) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        let f = if f.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{f}")
        } else {
            f
        };
        if f.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&f.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&f);
        }
    }
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formula_safe() {
        let line = csv_line(
            [
                "plain",
                "a,b",
                "say \"hi\"",
                "two\nlines",
                "=HYPERLINK(\"http://evil\")",
                "-1",
                "",
            ]
            .map(String::from)
            .into_iter(),
        );
        assert_eq!(
            line,
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\"'=HYPERLINK(\"\"http://evil\"\")\",'-1,\r\n"
        );
    }

    #[test]
    fn formats_parse_or_say_what_is_allowed() {
        assert_eq!(ExportFormat::parse("csv"), Ok(ExportFormat::Csv));
        assert_eq!(ExportFormat::parse("jsonl"), Ok(ExportFormat::JsonLines));
        assert!(ExportFormat::parse("xml")
            .unwrap_err()
            .contains("csv or jsonl"));
    }
}
