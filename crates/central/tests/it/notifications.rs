//! Notifications end to end: a site script calls `Notify.Send`, the site
//! forwards through the link (behind a fault-injecting proxy), central's
//! outbox delivers to a real SMTP conversation (the fake SMTP server), and
//! `Notify.Status` answers from central or, without it, from the site.

use crate::common;

use std::time::Duration;

use common::{register, spawn_central_with, spawn_site};
use serde_json::Value;
use sitelink_central::notification_outbox::message_id;
use sitelink_commons::TrackedOperationId;
use sitelink_test_support::{eventually, FakeHttp, FakeSmtp, Mode, SmtpMode, TcpProxy};

/// How long a step may take before the test fails. Generous: each step
/// normally takes well under a second, but the burst's 300 notifications
/// each cost the site an fsync, and one run on a machine whose disk was
/// busy with a 10-million-row bulk load ran out of 20 s. A longer bound
/// only changes how late a real failure is reported.
const WAIT: Duration = Duration::from_secs(60);

fn outbox_config(smtp_port: u16) -> String {
    format!(
        r#"
[notification_outbox]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
from = "sitelink@plant.example"
smtp_timeout_ms = 2000
retry = {{ interval_ms = 20, backoff = 1.0, max_interval_ms = 20, max_retries = 50, jitter = 0.0 }}
[notification_lists]
shift-leads = ["anna@plant.example", "ben@plant.example"]
"#
    )
}

async fn status(site: &common::TestSite, id: TrackedOperationId) -> Value {
    site.runtime
        .run_source("status", "line1", &format!(r#"Notify.Status("{id}")"#))
        .await
        .unwrap()
        .result
}

#[tokio::test]
async fn a_notification_sent_while_the_wan_is_down_is_mailed_once_after_it_returns() {
    let smtp = FakeSmtp::start(SmtpMode::Accept).await;
    let central = spawn_central_with(&format!(
        "reconcile_interval_seconds = 1\n{}",
        outbox_config(smtp.port())
    ))
    .await;
    let token = register(&central, "plant-1").await;
    let proxy = TcpProxy::start(central.link).await;
    proxy.cut();
    let erp = FakeHttp::start(Mode::Ok).await;
    let site = spawn_site("plant-1", &token, proxy.addr(), &erp.url(), 3).await;

    // WAN down: the id comes at once, and the local record says why it is
    // all the site knows.
    let run = site
        .runtime
        .run_source(
            "alarm",
            "line1",
            r#"Notify.Send("shift-leads", "Line 1 stopped", "Reason: jam")"#,
        )
        .await
        .unwrap();
    let id = run.tracked_operation_ids[0];
    assert_eq!(run.result, Value::String(id.to_string()));
    let local = status(&site, id).await;
    assert_eq!(local["status"], "Pending", "{local}");
    assert!(
        local["last_error"]
            .as_str()
            .unwrap()
            .contains("not yet forwarded"),
        "{local}"
    );

    // The WAN returns: forwarded, acknowledged, mailed; Notify.Status now
    // answers from central.
    proxy.heal();
    eventually(WAIT, "the mail arrives", || async {
        (smtp.count_message_id(&message_id(&id)) == 1).then_some(())
    })
    .await;
    let mail = &smtp.mails()[0];
    assert_eq!(mail.header("Subject").as_deref(), Some("Line 1 stopped"));
    assert!(mail.body().contains("Reason: jam"));
    assert_eq!(mail.recipients, ["anna@plant.example", "ben@plant.example"]);
    eventually(WAIT, "Notify.Status says Delivered", || async {
        (status(&site, id).await["status"] == "Delivered").then_some(())
    })
    .await;

    // Many notifications sent while the link is down, then forwarded while
    // the link is restored and cut again several times: each is mailed
    // exactly once.
    proxy.cut();
    let run = site
        .runtime
        .run_source(
            "burst",
            "line1",
            r#"let ids = []; for i in 0..300 { ids.push(Notify.Send("shift-leads", `Alarm ${i}`, "body")); } ids"#,
        )
        .await
        .unwrap();
    let mut cuts_while_forwarding = 0;
    for _ in 0..8 {
        proxy.heal();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let waiting = site
            .engine
            .notifications_to_forward(1000)
            .await
            .unwrap()
            .len();
        proxy.cut();
        if waiting > 0 {
            cuts_while_forwarding += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.heal();
    println!("link cut {cuts_while_forwarding} times with notifications still unacknowledged");
    assert!(
        cuts_while_forwarding > 0,
        "the cuts must land while forwarding is under way"
    );
    for id in &run.tracked_operation_ids {
        eventually(WAIT, &format!("{id} mailed"), || async {
            (smtp.count_message_id(&message_id(id)) >= 1).then_some(())
        })
        .await;
    }
    // Everything forwarded is acknowledged, so nothing is left to resend;
    // then no id was mailed twice.
    eventually(WAIT, "every notification acknowledged", || async {
        site.engine
            .notifications_to_forward(100)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    for id in &run.tracked_operation_ids {
        assert_eq!(smtp.count_message_id(&message_id(id)), 1, "{id}");
    }
    // Every one was acknowledged at least once (again after a cut).
    assert!(
        central
            .stats
            .notifications_forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 301
    );
    assert_eq!(smtp.mails().len(), 301);

    // At the site, forwarded notifications are central's now: no Pending
    // work in the counts or the Pending listing, each with when it went.
    let counts = site.engine.status_counts().await.unwrap();
    assert_eq!(counts.forwarded_notifications, 301, "{counts:?}");
    assert!(
        !counts
            .by_status
            .iter()
            .any(|(s, n)| *s == sitelink_commons::TrackedOperationStatus::Pending && *n > 0),
        "{counts:?}"
    );
    let pending = site
        .engine
        .list_local(
            Some(sitelink_commons::TrackedOperationStatus::Pending),
            None,
            1000,
        )
        .await
        .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    let one = site.engine.get_local(id).await.unwrap().unwrap();
    assert!(one.forwarded_at_utc.is_some_and(|t| t.ends_with('Z')));

    // Notifications never appear among the site calls.
    assert!(central
        .db
        .site_calls()
        .all_for_site("plant-1")
        .await
        .unwrap()
        .is_empty());

    // Central unreachable: Notify.Status answers from the local record.
    proxy.cut();
    eventually(WAIT, "the local answer while central is down", || async {
        let s = status(&site, id).await;
        (s["status"] == "Pending"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("forwarded to central")))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_notifications_get_clear_errors_or_a_failed_status() {
    let smtp = FakeSmtp::start(SmtpMode::Accept).await;
    let central = spawn_central_with(&format!(
        "reconcile_interval_seconds = 1\n{}",
        outbox_config(smtp.port())
    ))
    .await;
    let token = register(&central, "plant-2").await;
    let erp = FakeHttp::start(Mode::Ok).await;
    let site = spawn_site("plant-2", &token, central.link, &erp.url(), 3).await;

    // An unknown list: accepted at the site (it cannot know central's
    // lists), Failed at central naming the list, and Notify.Status shows it.
    let run = site
        .runtime
        .run_source(
            "alarm",
            "line1",
            r#"Notify.Send("night-shift", "Line 1 stopped", "Reason: jam")"#,
        )
        .await
        .unwrap();
    let id = run.tracked_operation_ids[0];
    let failed = eventually(WAIT, "central fails the unknown list", || async {
        let s = status(&site, id).await;
        (s["status"] == "Failed").then_some(s)
    })
    .await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("\"night-shift\""),
        "{failed}"
    );

    // Header injection, an oversized body, an empty list: a clear error to
    // the script; nothing is stored, nothing is sent.
    for (source, expect) in [
        (
            r#"Notify.Send("shift-leads", "Alarm\r\nBcc: thief@evil.example", "b")"#,
            "line break",
        ),
        (
            r#"let b = "x"; for i in 0..17 { b += b; } Notify.Send("shift-leads", "s", b)"#,
            "131072 bytes",
        ),
        (r#"Notify.Send("", "s", "b")"#, "list name is empty"),
        (r#"Notify.Send("shift-leads", "s", blob(3))"#, "Send"),
    ] {
        let e = site
            .runtime
            .run_source("bad", "line1", source)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(expect), "{source}: {e}");
    }
    assert_eq!(smtp.mails().len(), 0);
    assert_eq!(
        site.engine
            .notifications_to_forward(10)
            .await
            .unwrap()
            .len(),
        0
    );
}
