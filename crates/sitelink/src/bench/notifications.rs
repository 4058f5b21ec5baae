//! `sitelink bench notifications`: notifications/s from `Notify.Send` in
//! site scripts to acceptance by an SMTP sink, through everything in
//! between: the site's durable row and buffer entry, forwarding over the
//! link with acknowledgements, central's insert-if-not-exists, and the
//! outbox dispatcher (lettre, 8 conversations at once).
//!
//! Baseline in the same run: the same number of messages handed straight to
//! the same sink by the same `Mailer` at the same concurrency (what SMTP
//! alone costs). Rounds alternate baseline and pipeline; medians reported.
//! The sink is the fake SMTP server of `sitelink-test-support` (in this
//! process, over loopback TCP).

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::json;
use sitelink_central::{configuration_database::DueNotification, notification_outbox::Mailer};
use sitelink_commons::{TrackedOperationId, TrackedOperationStatus};
use sitelink_test_support::{FakeSmtp, SmtpMode};
use tokio_util::sync::CancellationToken;

use super::{
    central_world::{build_site, BenchDb, Db},
    median,
};

const SITES: usize = 2;

pub async fn run(size: super::Size) -> anyhow::Result<()> {
    let (per_site, rounds) = size.pick((2000, 5), (300, 3), (20, 1));
    let total = per_site * SITES;
    let smtp = FakeSmtp::start(SmtpMode::Accept).await;
    let outbox = format!(
        "[notification_outbox]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nfrom = \"bench@sitelink.example\"\n[notification_lists]\nops = [\"ops@plant.example\", \"lead@plant.example\"]\n",
        smtp.port()
    );
    let bench_db = BenchDb::new(Db::Sqlite).await?;
    let central = bench_db.central_with(300, 1000, &outbox).await?;
    let database = central.database().clone();
    let audit = central.audit().clone();
    let stats = central.link_stats().clone();
    let link = central.link_addr();
    let cancel = CancellationToken::new();
    let server = super::central_world::run_active(central, &cancel).await?;
    let dirs: Vec<tempfile::TempDir> = (0..SITES)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut runtimes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let site = build_site(&database, &format!("plant{i}"), link, dir.path()).await?;
        runtimes.push(site.runtime().clone());
        tokio::spawn(site.run(cancel.clone()));
    }
    while audit.online().await.len() < SITES {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mailer = Mailer::new(
        &sitelink_central::CentralConfig::parse(
            &format!("[central]\ndatabase_url = \"sqlite://unused\"\n{outbox}"),
            std::path::Path::new("/"),
        )
        .map_err(anyhow::Error::msg)?
        .notification_outbox
        .expect("configured above"),
    )?;

    let (mut plain, mut pipeline, mut sending) = (Vec::new(), Vec::new(), Vec::new());
    let mut forwarding = Vec::new();
    for round in 0..rounds {
        // Baseline: the same messages straight to the sink.
        let before = smtp.accepted();
        let start = Instant::now();
        let messages: Vec<DueNotification> = (0..total)
            .map(|i| DueNotification {
                id: TrackedOperationId::new(),
                recipients: vec!["ops@plant.example".into(), "lead@plant.example".into()],
                subject: format!("Alarm {i}"),
                body: "Line 1 stopped. Reason: jam".into(),
                status: TrackedOperationStatus::Pending,
                retry_count: 0,
                revision: 1,
            })
            .collect();
        let outcomes: Vec<_> = futures::stream::iter(messages.iter())
            .map(|m| mailer.send(m))
            .buffer_unordered(8)
            .collect()
            .await;
        anyhow::ensure!(
            outcomes
                .iter()
                .all(|o| *o == sitelink_central::configuration_database::SendOutcome::Delivered),
            "the sink refused a plain send"
        );
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(smtp.accepted() - before == total, "plain sends lost");
        plain.push(total as f64 / secs);

        // Pipeline: scripts at both sites send; wait for the sink.
        let before = smtp.accepted();
        let forwarded_before = stats.notifications_forwarded.load(Ordering::Relaxed);
        let start = Instant::now();
        let mut scripts = tokio::task::JoinSet::new();
        for rt in &runtimes {
            let rt = rt.clone();
            let source = format!(
                r#"for i in 0..{per_site} {{ Notify.Send("ops", `Alarm {round}/${{i}}`, "Line 1 stopped. Reason: jam"); }}"#
            );
            scripts.spawn(async move { rt.run_source("alarms", "line1", &source).await });
        }
        while let Some(r) = scripts.join_next().await {
            r?.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let sent_secs = start.elapsed().as_secs_f64();
        sending.push(total as f64 / sent_secs);
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut forwarded_secs = None;
        while smtp.accepted() - before < total {
            anyhow::ensure!(
                Instant::now() < deadline,
                "notifications did not all arrive"
            );
            if forwarded_secs.is_none()
                && stats.notifications_forwarded.load(Ordering::Relaxed) - forwarded_before
                    >= total as u64
            {
                forwarded_secs = Some(start.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        pipeline.push(total as f64 / secs);
        forwarding.push(total as f64 / forwarded_secs.unwrap_or(secs));
        println!(
            "round {round}: plain SMTP {:.0} msg/s, Notify.Send → SMTP {:.0} notifications/s (the scripts' Notify.Send alone: {:.0}/s; stored and acknowledged at central: {:.0}/s)",
            plain[round],
            pipeline[round],
            sending[round],
            forwarding[round]
        );
    }
    // Exactly once: the sink saw every message of the pipeline once.
    let twice = smtp
        .mails()
        .iter()
        .filter_map(|m| m.header("Message-ID"))
        .fold(
            std::collections::HashMap::<String, usize>::new(),
            |mut m, id| {
                *m.entry(id).or_default() += 1;
                m
            },
        );
    let duplicates = twice.values().filter(|&&n| n > 1).count();
    cancel.cancel();
    let _ = server.await;
    let (p, n) = (median(&plain), median(&pipeline));
    let out = json!({
        "bench": "notifications",
        "quick": size.quick(),
        "sites": SITES,
        "notifications_per_round": total,
        "rounds": rounds,
        "notifications_per_second": n,
        "plain_smtp_per_second": p,
        "notifications_vs_plain_ratio": n / p,
        "rounds_notifications_per_second": pipeline,
        "rounds_plain_smtp_per_second": plain,
        "notify_send_per_second": median(&sending),
        "forwarded_per_second": median(&forwarding),
        "duplicate_message_ids": duplicates,
    });
    println!("{out}");
    Ok(())
}
