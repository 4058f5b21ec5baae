//! The demo's SMTP sink: accepts every message over a real SMTP
//! conversation and keeps it as a file in the data directory (`mail/`), so
//! a person can read what the Notification Outbox sent.
//!
//! Written by hand: it speaks just enough SMTP for a client such as central's
//! (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), and no crate offers a small
//! server side of SMTP that stores to files.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Longest message kept (a bigger one is refused with 552).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Serves until `cancel` fires; each message becomes `dir/<ms>-<n>.eml`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dir: PathBuf,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let (dir, count, cancel) = (dir.clone(), count.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = conversation(stream, &dir, &count) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "SMTP sink conversation ended");
                    }
                }
            }
        });
    }
}

async fn conversation(
    stream: tokio::net::TcpStream,
    dir: &std::path::Path,
    count: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sitelink-demo SMTP sink\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 sitelink-demo\r\n",
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut message = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Dot-stuffing (RFC 5321 §4.5.2).
                    message.push_str(line.strip_prefix('.').unwrap_or(&line));
                    if message.len() > MAX_MESSAGE_BYTES {
                        write.write_all(b"552 message too large\r\n").await?;
                        return Ok(());
                    }
                }
                let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let file = dir.join(format!("{}-{n}.eml", sitelink_commons::now_unix_ms()));
                tokio::fs::write(&file, message).await?;
                b"250 kept\r\n"
            }
            _ => b"502 not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}
