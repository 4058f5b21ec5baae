//! [`Mailer`]: sends one notification over SMTP with lettre (plain or
//! STARTTLS, optional AUTH) and classifies the result.
//!
//! Classification (SPEC §5.3): no SMTP reply at all (connection refused or
//! reset, timeout, TLS failure) and 4xx replies are transient; 5xx replies
//! and addresses that cannot be used are permanent.

use std::time::Duration;

use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::{authentication::Credentials, Error as SmtpError},
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

use crate::{
    config::{OutboxSection, SmtpTls},
    configuration_database::{DueNotification, SendOutcome},
};

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
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.smtp_host).map_err(
                    |e| anyhow::anyhow!("notification_outbox.smtp_host {:?}: {e}", cfg.smtp_host),
                )?
            }
        }
        .port(cfg.smtp_port)
        .timeout(Some(Duration::from_millis(cfg.smtp_timeout_ms)));
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

/// Transient or permanent, by the SMTP reply code when there is one.
pub fn classify(e: &SmtpError) -> SendOutcome {
    let text = format!("SMTP: {e}");
    match e.status() {
        Some(code) if e.is_permanent() => SendOutcome::Permanent(format!("{text} (reply {code})")),
        Some(code) => SendOutcome::Transient(format!("{text} (reply {code})")),
        // No reply: the server could not be reached or went away.
        None => SendOutcome::Transient(text),
    }
}
