//! [`Mailer`]: sends one notification over SMTP with lettre (plain or
//! STARTTLS, optional AUTH) and classifies the result.
//!
//! Classification (SPEC §5.3): no SMTP reply at all (connection refused or
//! reset, timeout, TLS failure) and 4xx replies are transient; 5xx replies
//! and addresses that cannot be used are permanent, except the 5xx replies
//! that refuse our session rather than the message (authentication: see
//! `SESSION_REFUSALS`), which are transient.

use std::time::Duration;

use anyhow::Context;

use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
        Error as SmtpError, PoolConfig,
    },
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

use crate::{
    config::{OutboxSection, SmtpTls},
    configuration_database::{DueNotification, SendOutcome},
};

/// Cheap to clone: the transport's connection pool is shared.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// The Message-ID of a notification: derived from its id, so every attempt
/// of one notification carries the same one and a receiver can count or
/// drop duplicates.
pub fn message_id(id: &sitelink_commons::TrackedOperationId) -> String {
    format!("<{id}@sitelink>")
}

impl Mailer {
    pub fn new(cfg: &OutboxSection) -> anyhow::Result<Self> {
        let mut builder = match cfg.smtp_tls {
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.smtp_host)
            }
            SmtpTls::Starttls => {
                // What `starttls_relay` does, plus the operator's own CA.
                let mut tls = TlsParameters::builder(cfg.smtp_host.clone());
                if let Some(path) = &cfg.smtp_ca_file {
                    let pem = std::fs::read(path).with_context(|| {
                        format!("notification_outbox.smtp_ca_file {}", path.display())
                    })?;
                    let ca = Certificate::from_pem(&pem).map_err(|e| {
                        anyhow::anyhow!("notification_outbox.smtp_ca_file {}: {e}", path.display())
                    })?;
                    tls = tls.add_root_certificate(ca);
                }
                let tls = tls.build_rustls().map_err(|e| {
                    anyhow::anyhow!("notification_outbox.smtp_host {:?}: {e}", cfg.smtp_host)
                })?;
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.smtp_host)
                    .tls(Tls::Required(tls))
            }
        }
        .port(cfg.smtp_port)
        .timeout(Some(Duration::from_millis(cfg.smtp_timeout_ms)))
        // Conversations stay open between messages (RSET, then the next
        // MAIL), one per concurrent send: no TCP connect, banner, EHLO and
        // TLS handshake per message. An idle one closes after a minute.
        .pool_config(
            PoolConfig::new()
                .max_size(super::CONCURRENT_SENDS as u32)
                .idle_timeout(Duration::from_secs(60)),
        );
        if let (Some(user), Some(password)) = (&cfg.smtp_username, &cfg.smtp_password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let from = cfg
            .from
            .parse::<Mailbox>()
            .map_err(|e| anyhow::anyhow!("notification_outbox.from {:?}: {e}", cfg.from))?;
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    /// One attempt to hand `n` to the SMTP server.
    pub async fn send(&self, n: &DueNotification) -> SendOutcome {
        let message = match self.message(n) {
            Ok(m) => m,
            Err(e) => return SendOutcome::Permanent(e),
        };
        match self.transport.send(message).await {
            Ok(_) => SendOutcome::Delivered,
            Err(e) => classify(&e),
        }
    }

    fn message(&self, n: &DueNotification) -> Result<Message, String> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(n.subject.clone())
            .message_id(Some(message_id(&n.id)))
            .header(ContentType::TEXT_PLAIN);
        if n.recipients.is_empty() {
            return Err("the notification has no recipient".into());
        }
        for r in &n.recipients {
            let to = r
                .parse::<Mailbox>()
                .map_err(|e| format!("recipient {r:?} is not an email address: {e}"))?;
            b = b.to(to);
        }
        b.body(n.body.clone())
            .map_err(|e| format!("building the message: {e}"))
    }
}

/// Replies that refuse our session, not the message: authentication
/// required (530), mechanism too weak (534), credentials invalid (535),
/// encryption required (538). They mean the relay or our credentials are
/// misconfigured. Failing the message for good would lose it while an
/// operator fixes that, so they are retried like an outage (and park once
/// the retry budget is spent, for an operator to retry).
const SESSION_REFUSALS: [&str; 4] = ["530", "534", "535", "538"];

/// Transient or permanent, by the SMTP reply code when there is one.
pub fn classify(e: &SmtpError) -> SendOutcome {
    let text = format!("SMTP: {e}");
    match e.status() {
        Some(code) if SESSION_REFUSALS.contains(&code.to_string().as_str()) => {
            SendOutcome::Transient(format!("{text} (reply {code}: check the SMTP credentials)"))
        }
        Some(code) if e.is_permanent() => SendOutcome::Permanent(format!("{text} (reply {code})")),
        Some(code) => SendOutcome::Transient(format!("{text} (reply {code})")),
        // No reply: the server could not be reached or went away.
        None => SendOutcome::Transient(text),
    }
}
