//! The one listing path: the same query through the Site Calls page and
//! through `GET /api/v1/site-calls` (and the Notification Outbox's twins)
//! gives the same ids in the same order and the same cursors, page after
//! page, both ways; several statuses and `target` work in both.

use crate::common;

use common::*;
use sitelink_central::configuration_database::{NewNotification, Role};
use sitelink_commons::{
    unix_ms_to_utc, Kind, SiteName, TrackedOperationId, TrackedOperationStatus::*, TrackingRecord,
};

const PASSWORD: &str = "correct horse battery";
/// Rows a page shows (the REST query asks for the same `limit`).
const PAGE: u32 = sitelink_central::central_ui::PAGE_ROWS;

fn call(site: &str, i: i64) -> TrackingRecord {
    let created = 1_790_000_000_000 + i / 3; // several rows share a time
    let status = [Parked, Failed, Delivered, Retrying][(i % 4) as usize];
    TrackingRecord {
        tracked_operation_id: TrackedOperationId::new(),
        source_site: site.into(),
        kind: Kind::ExternalCall,
        target_summary: format!(
            "erp.{} #{i}",
            if i % 5 == 0 { "postOrder" } else { "stock" }
        ),
        status,
        retry_count: 1,
        last_error: None,
        provenance: "line1/orders".into(),
        created_at_utc: unix_ms_to_utc(created),
        updated_at_utc: unix_ms_to_utc(created + 1),
        terminal_at_utc: status.is_terminal().then(|| unix_ms_to_utc(created + 1)),
        revision: 2,
        change_seq: 0,
    }
}

/// The ids a page lists, and the cursors of its Older and Newer links.
fn page_of(html: &str) -> (Vec<String>, Option<String>, Option<String>) {
    let cursor = |id: &str, key: &str| {
        attrs(html, &format!("a#{id}"), "href")
            .first()
            .and_then(|h| h.split(&format!("{key}=")).nth(1).map(str::to_owned))
    };
    (
        attrs(html, "#rows tbody tr", "data-id"),
        cursor("older", "after"),
        cursor("newer", "before"),
    )
}

/// The same of a REST answer.
fn api_page(v: &serde_json::Value) -> (Vec<String>, Option<String>, Option<String>) {
    let ids = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tracked_operation_id"].as_str().unwrap().to_owned())
        .collect();
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    (ids, s("next"), s("prev"))
}

#[tokio::test]
async fn the_page_and_the_rest_api_list_the_same_rows_with_the_same_cursors() {
    let c = spawn_central().await;
    sitelink_central::authentication::add_user(&c.db, "vic", PASSWORD, Role::Viewer)
        .await
        .unwrap();
    for site in ["north", "south"] {
        let name = SiteName::parse(site).unwrap();
        c.db.sites().add(&name).await.unwrap();
        let rows: Vec<TrackingRecord> = (0..400).map(|i| call(site, i)).collect();
        c.db.site_calls().ingest(&name, &rows, None).await.unwrap();
        for i in 0..130 {
            let n = NewNotification {
                id: TrackedOperationId::new(),
                list: if i % 3 == 0 {
                    "shift-leads"
                } else {
                    "maintenance"
                }
                .into(),
                subject: format!("report {i}"),
                body: "b".into(),
                provenance: "line1/report".into(),
                created_at_ms: 1_790_000_000_000 + i / 2,
            };
            let recipients = ["ops@example.com".to_owned()];
            c.db.notifications()
                .accept(&name, &n, Ok(&recipients), 1_790_000_000_000)
                .await
                .unwrap();
        }
    }
    let mut pages = Pages::new(&c);
    assert_eq!(pages.login("vic", PASSWORD).await.status, 303);
    let api = Api::new(&c);
    for (page_base, api_base, query) in [
        (
            "/site-calls",
            "/api/v1/site-calls",
            "site=north&status=Parked&status=Failed",
        ),
        ("/site-calls", "/api/v1/site-calls", "target=postOrder"),
        (
            "/site-calls",
            "/api/v1/site-calls",
            "status=Retrying&kind=ExternalCall&from=2026-09-21T00:00:00Z",
        ),
        (
            "/notifications",
            "/api/v1/notifications",
            "target=shift&status=Pending",
        ),
    ] {
        // Older all the way, then Newer all the way back.
        let mut seen = 0;
        let mut cursor: Option<(&str, String)> = None;
        let mut forward = true;
        for step in 0..40 {
            let paging = cursor
                .as_ref()
                .map(|(k, c)| format!("&{k}={c}"))
                .unwrap_or_default();
            let html = pages.get(&format!("{page_base}?{query}{paging}")).await;
            assert_eq!(html.status, 200, "{query}: {}", html.body);
            let (status, json) = api
                .get(
                    &format!("{api_base}?{query}&limit={PAGE}{paging}"),
                    ("vic", PASSWORD),
                )
                .await;
            assert_eq!(status, 200, "{query}: {json}");
            let from_page = page_of(&html.body);
            let from_api = api_page(&json);
            assert_eq!(from_page, from_api, "{query}, step {step}");
            assert!(
                !from_page.0.is_empty(),
                "{query}, step {step}: an empty page"
            );
            seen += from_page.0.len();
            cursor = match (forward, from_page.1, from_page.2) {
                (true, Some(older), _) => Some(("after", older)),
                (true, None, newer) => {
                    forward = false;
                    newer.map(|n| ("before", n))
                }
                (false, _, Some(newer)) => Some(("before", newer)),
                (false, _, None) => break,
            };
            if cursor.is_none() {
                break;
            }
        }
        assert!(
            seen > PAGE as usize,
            "{query}: only {seen} rows: no paging tested"
        );
    }
}

#[tokio::test]
async fn several_statuses_and_a_target_filter_the_rest_listing() {
    let c = spawn_central().await;
    sitelink_central::authentication::add_user(&c.db, "vic", PASSWORD, Role::Viewer)
        .await
        .unwrap();
    let rows: Vec<TrackingRecord> = (0..40).map(|i| call("north", i)).collect();
    c.db.site_calls()
        .ingest(&SiteName::parse("north").unwrap(), &rows, None)
        .await
        .unwrap();
    let api = Api::new(&c);
    let (status, json) = api
        .get(
            "/api/v1/site-calls?status=Parked&status=Failed&target=postOrder&limit=1000",
            ("vic", PASSWORD),
        )
        .await;
    assert_eq!(status, 200, "{json}");
    let mut want: Vec<&TrackingRecord> = rows
        .iter()
        .filter(|r| matches!(r.status, Parked | Failed) && r.target_summary.contains("postOrder"))
        .collect();
    want.sort_by_key(|r| std::cmp::Reverse((r.created_at_utc, r.tracked_operation_id)));
    let want: Vec<String> = want
        .iter()
        .map(|r| r.tracked_operation_id.to_string())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(api_page(&json), (want, None, None));
    // What the API refuses it names.
    for (query, names) in [
        ("status=Lost", "Lost"),
        ("target=", "target"),
        ("site=a&site=b", "site"),
        ("after=1.x&before=1.x", "after"),
    ] {
        let (status, json) = api
            .get(&format!("/api/v1/site-calls?{query}"), ("vic", PASSWORD))
            .await;
        assert_eq!(status, 400, "{query}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains(names),
            "{query}: {json}"
        );
    }
}
