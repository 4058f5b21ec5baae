//! Export (issue 21 item 4): the listing's filter, the whole set, newest
//! first, as CSV (RFC 4180, formula-safe) or JSON lines, streamed (no
//! Content-Length: the body is made as it is sent); notifications with
//! their body and recipients; the pages' Export links give the same bytes
//! as the REST API; a bad query is 400 and an unknown site 404.

use crate::common;

use common::*;
use sitelink_central::configuration_database::{NewNotification, Role};
use sitelink_commons::{
    unix_ms_to_utc, Kind, SiteName, TrackedOperationId, TrackedOperationStatus::*, TrackingRecord,
};

const USER: (&str, &str) = ("vic", "correct horse battery");

fn call(site: &str, i: i64) -> TrackingRecord {
    let created = 1_790_000_000_000 + i;
    let status = [Parked, Delivered, Failed][(i % 3) as usize];
    let error = match i % 4 {
        0 => None,
        1 => Some(format!("HTTP 503 Service Unavailable: request {i}")),
        2 => Some("=HYPERLINK(\"http://evil.example\",\"click\")".to_owned()),
        _ => Some("line one, \"quoted\"\nline two".to_owned()),
    };
    TrackingRecord {
        tracked_operation_id: TrackedOperationId::new(),
        source_site: site.into(),
        kind: Kind::ExternalCall,
        target_summary: "erp.postOrder".into(),
        status,
        retry_count: 2,
        last_error: error,
        provenance: "line1/orders".into(),
        created_at_utc: unix_ms_to_utc(created),
        updated_at_utc: unix_ms_to_utc(created + 1),
        terminal_at_utc: status.is_terminal().then(|| unix_ms_to_utc(created + 1)),
        revision: 3,
        change_seq: 0,
    }
}

/// The records of a CSV text (RFC 4180: quoted fields may hold commas,
/// doubled quotes and line breaks).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_the_listed_set_as_csv_and_json_lines() {
    let c = spawn_central().await;
    sitelink_central::authentication::add_user(&c.db, USER.0, USER.1, Role::Viewer)
        .await
        .unwrap();
    for site in ["north", "south"] {
        let name = SiteName::parse(site).unwrap();
        c.db.sites().add(&name).await.unwrap();
        let rows: Vec<TrackingRecord> = (0..1500).map(|i| call(site, i)).collect();
        c.db.site_calls().ingest(&name, &rows, None).await.unwrap();
    }
    let api = Api::new(&c);
    let get = |path: String| {
        api.http
            .get(format!("{}{path}", api.base))
            .basic_auth(USER.0, Some(USER.1))
            .send()
    };

    // JSON lines: exactly the listing's rows, in its order.
    let filter = "site=north&status=Parked&status=Failed";
    let r = get(format!("/api/v1/site-calls/export?format=jsonl&{filter}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert!(r.headers().get("content-length").is_none(), "streamed");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"site-calls-"));
    let text = r.text().await.unwrap();
    let exported: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["source_site"], "north");
            v["tracked_operation_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let (status, v) = api
            .get(
                &format!("/api/v1/site-calls?{filter}&limit=1000{page}"),
                USER,
            )
            .await;
        assert_eq!(status, 200);
        listed.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["tracked_operation_id"].as_str().unwrap().to_owned()),
        );
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(exported.len(), 1000);
    assert_eq!(
        exported, listed,
        "the export is the listed set, in its order"
    );

    // CSV: a header, one record per call, quoting and formula safety.
    let r = get("/api/v1/site-calls/export?format=csv".into())
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let records = csv_records(&r.text().await.unwrap());
    assert_eq!(records[0][0], "tracked_operation_id");
    assert_eq!(records.len(), 1 + 3000);
    let errors: Vec<&str> = records[1..].iter().map(|r| r[6].as_str()).collect();
    assert!(errors.contains(&"'=HYPERLINK(\"http://evil.example\",\"click\")"));
    assert!(errors.contains(&"line one, \"quoted\"\nline two"));
    assert!(!errors.iter().any(|e| e.starts_with('=')));

    // The page's Export link: the same bytes.
    let mut p = Pages::new(&c);
    assert_eq!(p.login(USER.0, USER.1).await.status, 303);
    let list = p.get(&format!("/site-calls?{filter}")).await;
    let link = attrs(&list.body, "a#export-jsonl", "href").remove(0);
    let from_page = p.get(&link).await;
    assert_eq!(from_page.status, 200, "{link}");
    assert_eq!(from_page.body, text);

    // Notifications, with body and recipients.
    let north = SiteName::parse("north").unwrap();
    for i in 0..3 {
        c.db.notifications()
            .accept(
                &north,
                &NewNotification {
                    id: TrackedOperationId::new(),
                    list: "ops".into(),
                    subject: format!("Line {i} stopped"),
                    body: "Reason: jam".into(),
                    provenance: "line1/alarms".into(),
                    created_at_ms: 1_790_000_000_000 + i,
                },
                Ok(&["ops@plant.example".to_owned()]),
                1_790_000_000_000,
            )
            .await
            .unwrap();
    }
    let r = get("/api/v1/notifications/export?format=csv&site=north".into())
        .await
        .unwrap();
    let records = csv_records(&r.text().await.unwrap());
    assert_eq!(records.len(), 4);
    assert_eq!(&records[0][12..], ["subject", "body", "recipients"]);
    assert_eq!(
        &records[1][12..],
        ["Line 2 stopped", "Reason: jam", "ops@plant.example"]
    );

    // What is refused.
    for (query, status, says) in [
        ("", 400, "format is required"),
        ("format=xml", 400, "format must be csv or jsonl"),
        ("format=csv&limit=10", 400, "not its paging"),
        ("format=csv&site=nowhere", 404, "no site \"nowhere\""),
        ("format=csv&bogus=1", 400, "unknown query parameter"),
    ] {
        let r = get(format!("/api/v1/site-calls/export?{query}"))
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
}
