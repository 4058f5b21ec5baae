//! The Notification Outbox against a real SMTP conversation (the fake SMTP
//! server of test-support, over TCP): Delivered, Retrying → Delivered,
//! Parked, Failed, operator Retry/Discard, unknown lists, header injection,
//! KPIs, purge — on SQLite and (when configured) PostgreSQL.

use crate::common;

use std::time::Duration;

use sitelink_central::{
    configuration_database::{Database, NewNotification, NotificationCommand},
    notification_outbox::{message_id, Dispatcher, Outbox},
    CentralConfig,
};
use sitelink_commons::{now_unix_ms, SiteName, TrackedOperationId, TrackedOperationStatus::*};
use sitelink_test_support::{eventually, FakeSmtp, SmtpMode, SmtpSecurity};

const WAIT: Duration = Duration::from_secs(10);

fn config(smtp_port: u16, max_retries: u32) -> CentralConfig {
    config_with(
        "127.0.0.1",
        smtp_port,
        max_retries,
        "",
        std::path::Path::new("/"),
    )
}

/// The outbox of these tests on `host:smtp_port`, with `outbox` (more
/// `[notification_outbox]` keys) added; relative paths resolve at `base`.
fn config_with(
    host: &str,
    smtp_port: u16,
    max_retries: u32,
    outbox: &str,
    base: &std::path::Path,
) -> CentralConfig {
    CentralConfig::parse(
        &format!(
            r#"
[central]
database_url = "sqlite://unused.db"
[notification_outbox]
smtp_host = "{host}"
smtp_port = {smtp_port}
from = "sitelink@plant.example"
smtp_timeout_ms = 2000
{outbox}
[notification_outbox.retry]
interval_ms = 20
max_interval_ms = 50
max_retries = {max_retries}
jitter = 0.0
[notification_lists]
shift-leads = ["anna@plant.example", "ben@plant.example"]
"#
        ),
        base,
    )
    .unwrap()
}

fn notification(list: &str, subject: &str) -> NewNotification {
    NewNotification {
        id: TrackedOperationId::new(),
        list: list.into(),
        subject: subject.into(),
        body: "Reason: jam\r\n.\r\nLine two".into(),
        provenance: "line1/alarms".into(),
        created_at_ms: now_unix_ms(),
    }
}

async fn status_of(
    db: &Database,
    id: TrackedOperationId,
) -> sitelink_commons::TrackedOperationStatus {
    db.notifications()
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .tracking
        .status
}

/// An operator's Retry (`retry`) or Discard of `id`, and its outcome.
async fn operator(db: &Database, id: TrackedOperationId, retry: bool) -> NotificationCommand {
    db.notifications()
        .operator(id, retry, now_unix_ms())
        .await
        .unwrap()
        .0
}

/// Runs dispatch rounds until `id` has `want` (retries are due after a few ms).
async fn dispatch_until(
    dispatcher: &Dispatcher,
    db: &Database,
    id: TrackedOperationId,
    want: sitelink_commons::TrackedOperationStatus,
) {
    eventually(WAIT, &format!("{id} becomes {want:?}"), || async {
        dispatcher.run_once().await.unwrap();
        (status_of(db, id).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_outbox_delivers_retries_parks_and_fails_over_real_smtp() {
    for (label, db, pg, _dir) in common::databases().await {
        let smtp = FakeSmtp::start(SmtpMode::Accept).await;
        let (dispatcher, outbox): (Dispatcher, Outbox) =
            Dispatcher::new(db.clone(), &config(smtp.port(), 2)).unwrap();
        let site = SiteName::parse("plant-1").unwrap();
        db.sites().add(&site).await.unwrap();

        // Delivered: subject, body and every recipient of the list arrive,
        // with a Message-ID derived from the id.
        let n = notification("shift-leads", "Line 1 stopped");
        assert!(outbox.accept(&site, &n).await.unwrap());
        assert!(
            !outbox.accept(&site, &n).await.unwrap(),
            "{label}: insert if not exists"
        );
        let round = dispatcher.run_once().await.unwrap();
        assert_eq!((round.attempted, round.delivered), (1, 1), "{label}");
        assert_eq!(status_of(&db, n.id).await, Delivered, "{label}");
        let mail = smtp.mails().pop().unwrap();
        assert_eq!(mail.header("Subject").as_deref(), Some("Line 1 stopped"));
        assert_eq!(mail.recipients, ["anna@plant.example", "ben@plant.example"]);
        assert!(mail.body().contains("Reason: jam"), "{}", mail.data);
        assert!(
            mail.body().contains("\r\n.\r\nLine two"),
            "dot-stuffed and unstuffed: {}",
            mail.data
        );
        assert_eq!(smtp.count_message_id(&message_id(&n.id)), 1);
        // Another round sends nothing more.
        assert_eq!(dispatcher.run_once().await.unwrap().attempted, 0);

        // 421 (service not available) is transient too: Retrying.
        smtp.set_mode(SmtpMode::RejectRecipients(421, "closing channel".into()))
            .await;
        let n0 = notification("shift-leads", "Line 0 slow");
        outbox.accept(&site, &n0).await.unwrap();
        assert_eq!(dispatcher.run_once().await.unwrap().retrying, 1, "{label}");
        assert!(db
            .notifications()
            .get(n0.id)
            .await
            .unwrap()
            .unwrap()
            .tracking
            .last_error
            .unwrap()
            .contains("421"));

        // 451 (transient) → Retrying, then the server accepts → Delivered.
        smtp.set_mode(SmtpMode::RejectRecipients(451, "try again later".into()))
            .await;
        let n2 = notification("shift-leads", "Line 2 slow");
        outbox.accept(&site, &n2).await.unwrap();
        dispatcher.run_once().await.unwrap();
        let r = db.notifications().get(n2.id).await.unwrap().unwrap();
        assert_eq!(r.tracking.status, Retrying, "{label}");
        assert!(
            r.tracking.last_error.as_deref().unwrap().contains("451"),
            "{r:?}"
        );
        smtp.set_mode(SmtpMode::Accept).await;
        dispatch_until(&dispatcher, &db, n2.id, Delivered).await;
        dispatch_until(&dispatcher, &db, n0.id, Delivered).await;
        assert_eq!(smtp.count_message_id(&message_id(&n2.id)), 1);

        // Down: the budget (2 retries) runs out → Parked. Operator Retry
        // gives a fresh budget; with the server back, Delivered.
        smtp.set_mode(SmtpMode::Down).await;
        let n3 = notification("shift-leads", "Line 3 down");
        outbox.accept(&site, &n3).await.unwrap();
        dispatch_until(&dispatcher, &db, n3.id, Parked).await;
        let parked = db.notifications().get(n3.id).await.unwrap().unwrap();
        assert_eq!(parked.tracking.retry_count, 2, "{label}");
        assert_eq!(
            operator(&db, n.id, true).await,
            NotificationCommand::NotParked
        );
        assert_eq!(
            operator(&db, TrackedOperationId::new(), true).await,
            NotificationCommand::NotFound
        );
        assert_eq!(
            operator(&db, n3.id, true).await,
            NotificationCommand::Applied
        );
        assert_eq!(status_of(&db, n3.id).await, Retrying);
        smtp.set_mode(SmtpMode::Accept).await;
        dispatch_until(&dispatcher, &db, n3.id, Delivered).await;

        // Parked, then discarded: never sent.
        smtp.set_mode(SmtpMode::Down).await;
        let n4 = notification("shift-leads", "Line 4");
        outbox.accept(&site, &n4).await.unwrap();
        dispatch_until(&dispatcher, &db, n4.id, Parked).await;
        assert_eq!(
            operator(&db, n4.id, false).await,
            NotificationCommand::Applied
        );
        assert_eq!(status_of(&db, n4.id).await, Discarded);
        smtp.set_mode(SmtpMode::Accept).await;
        assert_eq!(dispatcher.run_once().await.unwrap().attempted, 0);
        assert_eq!(smtp.count_message_id(&message_id(&n4.id)), 0);

        // 550 (permanent) → Failed at once.
        smtp.set_mode(SmtpMode::RejectRecipients(550, "no such mailbox".into()))
            .await;
        let n5 = notification("shift-leads", "Line 5");
        outbox.accept(&site, &n5).await.unwrap();
        assert_eq!(dispatcher.run_once().await.unwrap().failed, 1, "{label}");
        let failed = db.notifications().get(n5.id).await.unwrap().unwrap();
        assert_eq!(failed.tracking.status, Failed);
        assert!(failed.tracking.last_error.unwrap().contains("550"));
        smtp.set_mode(SmtpMode::Accept).await;

        // An unknown list: Failed, naming the list; never sent.
        let n6 = notification("night-shift", "Line 6");
        outbox.accept(&site, &n6).await.unwrap();
        let unknown = db.notifications().get(n6.id).await.unwrap().unwrap();
        assert_eq!(unknown.tracking.status, Failed);
        assert!(
            unknown
                .tracking
                .last_error
                .unwrap()
                .contains("\"night-shift\""),
            "{label}"
        );
        assert_eq!(dispatcher.run_once().await.unwrap().attempted, 0);

        // Header injection from a peer that did not check: the subject is
        // made one line; no Bcc header reaches the server.
        let n7 = notification("shift-leads", "Alarm\r\nBcc: thief@evil.example");
        outbox.accept(&site, &n7).await.unwrap();
        dispatcher.run_once().await.unwrap();
        let mail = smtp.mails().pop().unwrap();
        assert!(mail.header("Bcc").is_none(), "{}", mail.data);
        assert!(!mail.recipients.iter().any(|r| r.contains("evil")));

        // KPIs: same shape as Site Call Audit's.
        let kpis = db
            .notifications()
            .kpis_per_site(now_unix_ms(), 3600, 600)
            .await
            .unwrap();
        let k = &kpis["plant-1"];
        assert_eq!(
            (
                k.delivered_last_interval,
                k.failed_last_interval,
                k.parked,
                k.buffered
            ),
            (5, 2, 0, 0),
            "{label}: {k:?}"
        );

        // Purge: terminal rows past the window go, nothing else.
        assert_eq!(dispatcher.purge_once(now_unix_ms()).await.unwrap(), 0);
        assert_eq!(
            dispatcher
                .purge_once(now_unix_ms() + 366 * 86_400_000)
                .await
                .unwrap(),
            8,
            "{label}"
        );
        common::cleanup(pg, db).await;
    }
}

#[test]
fn notification_lists_are_checked_at_start() {
    let parse = |lists: &str| {
        CentralConfig::parse(
            &format!(
                "[central]\ndatabase_url = \"sqlite://x.db\"\n[notification_lists]\n{lists}\n"
            ),
            std::path::Path::new("/"),
        )
    };
    let e = parse("empty = []").unwrap_err();
    assert!(
        e.contains("notification_lists.empty") && e.contains("no email address"),
        "{e}"
    );
    let e = parse("ops = [\"ok@x.example\", \"not an address\"]").unwrap_err();
    assert!(
        e.contains("notification_lists.ops") && e.contains("\"not an address\""),
        "{e}"
    );
    assert!(parse("ops = [\"ok@x.example\"]").is_ok());
}

/// A relay that requires STARTTLS and AUTH, with a certificate from a
/// private CA: the outbox trusts `smtp_ca_file`, upgrades, authenticates,
/// and the message travels encrypted. Wrong credentials are a transient
/// failure (retried, then parked), never a Failed notification: the
/// operator fixes the password and retries.
#[tokio::test]
async fn the_outbox_speaks_starttls_and_auth_to_a_relay_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("relay-ca.pem"), cert.cert.pem()).unwrap();
    let smtp = FakeSmtp::start_secure(
        SmtpMode::Accept,
        SmtpSecurity {
            cert_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
            login: Some(("sitelink".into(), "s3cret".into())),
        },
    )
    .await;
    let secure = |password: &str| {
        let outbox = format!(
            "smtp_tls = \"starttls\"\nsmtp_ca_file = \"relay-ca.pem\"\n\
             smtp_username = \"sitelink\"\nsmtp_password = \"{password}\""
        );
        config_with("localhost", smtp.port(), 1, &outbox, dir.path())
    };
    let (db, _db_dir) = common::sqlite().await;
    let site = SiteName::parse("plant-1").unwrap();
    db.sites().add(&site).await.unwrap();

    let (dispatcher, outbox) = Dispatcher::new(db.clone(), &secure("s3cret")).unwrap();
    let n = notification("shift-leads", "Line 1 stopped");
    outbox.accept(&site, &n).await.unwrap();
    let round = dispatcher.run_once().await.unwrap();
    assert_eq!(
        (round.attempted, round.delivered),
        (1, 1),
        "{:?}",
        db.notifications().get(n.id).await.unwrap()
    );
    let mail = smtp.mails().pop().unwrap();
    assert!(mail.tls, "the message went over TLS");
    assert_eq!(mail.user.as_deref(), Some("sitelink"));
    assert_eq!(mail.header("Subject").as_deref(), Some("Line 1 stopped"));

    // Wrong password: 535 from the relay, retried, then parked (not Failed).
    let (dispatcher, outbox) = Dispatcher::new(db.clone(), &secure("wrong")).unwrap();
    let n = notification("shift-leads", "Line 2 stopped");
    outbox.accept(&site, &n).await.unwrap();
    dispatcher.run_once().await.unwrap();
    let record = db.notifications().get(n.id).await.unwrap().unwrap();
    assert_eq!(record.tracking.status, Retrying);
    let error = record.tracking.last_error.unwrap_or_default();
    assert!(
        error.contains("535") && error.contains("credentials"),
        "{error}"
    );
    dispatch_until(&dispatcher, &db, n.id, Parked).await;
    assert_eq!(smtp.accepted(), 1, "nothing sent without authentication");

    // A relay whose certificate is not trusted (no smtp_ca_file): the
    // upgrade fails, which is transient, and nothing is sent in clear.
    let untrusted = config_with(
        "localhost",
        smtp.port(),
        1,
        "smtp_tls = \"starttls\"",
        dir.path(),
    );
    let (dispatcher, outbox) = Dispatcher::new(db.clone(), &untrusted).unwrap();
    let n = notification("shift-leads", "Line 3 stopped");
    outbox.accept(&site, &n).await.unwrap();
    dispatcher.run_once().await.unwrap();
    assert_eq!(status_of(&db, n.id).await, Retrying);
    assert_eq!(smtp.accepted(), 1);
    db.pool().close().await;
}

#[test]
fn smtp_credentials_need_starttls() {
    let parse = |outbox: &str| {
        CentralConfig::parse(
            &format!(
                "[central]\ndatabase_url = \"sqlite://x.db\"\n[notification_outbox]\n\
                 smtp_host = \"relay\"\nfrom = \"s@x.example\"\n{outbox}\n"
            ),
            std::path::Path::new("/etc/sitelink"),
        )
    };
    let e = parse("smtp_username = \"u\"\nsmtp_password = \"p\"").unwrap_err();
    assert!(e.contains("smtp_tls = \"starttls\""), "{e}");
    let e = parse("smtp_ca_file = \"ca.pem\"").unwrap_err();
    assert!(e.contains("smtp_ca_file"), "{e}");
    let ok = parse(
        "smtp_tls = \"starttls\"\nsmtp_ca_file = \"ca.pem\"\nsmtp_username = \"u\"\nsmtp_password = \"p\"",
    )
    .unwrap();
    assert_eq!(
        ok.notification_outbox.unwrap().smtp_ca_file.unwrap(),
        std::path::Path::new("/etc/sitelink/ca.pem")
    );
}
