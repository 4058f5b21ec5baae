//! [`FakeSmtp`]: an SMTP server in the test process that speaks the
//! protocol over TCP (EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing,
//! RSET, NOOP, QUIT) and can be told how to answer.
//!
//! Hand-written: the point is fault injection (421/451/550 replies, being
//! down with the port closed), which the embeddable SMTP servers on
//! crates.io do not offer; the protocol subset a client needs is small.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// How the server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmtpMode {
    /// Accept every message.
    Accept,
    /// Answer every `RCPT TO` with this code and text (e.g. 451, 421: a
    /// transient failure; 550: a permanent one).
    RejectRecipients(u16, String),
    /// The port is closed: connections are refused.
    Down,
}

/// One accepted message.
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    pub from: String,
    pub recipients: Vec<String>,
    /// The message as sent (headers and body), dot-unstuffed.
    pub data: String,
}

impl ReceivedMail {
    /// The value of the first header called `name` (unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut lines = head.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.eq_ignore_ascii_case(name) {
                let mut value = v.trim().to_owned();
                while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                    value.push(' ');
                    value.push_str(next.trim());
                    lines.next();
                }
                return Some(value);
            }
        }
        None
    }

    /// Everything after the header block.
    pub fn body(&self) -> &str {
        self.data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("")
    }
}

#[derive(Default)]
struct Shared {
    mode: Option<SmtpMode>,
    mails: Vec<ReceivedMail>,
    /// Messages accepted per Message-ID.
    per_message_id: HashMap<String, usize>,
}

/// The fake server. Stops when dropped.
pub struct FakeSmtp {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl FakeSmtp {
    pub async fn start(mode: SmtpMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let s = Self {
            addr,
            shared: Arc::new(Mutex::new(Shared {
                mode: Some(SmtpMode::Accept),
                ..Default::default()
            })),
            listener: Mutex::new(None),
        };
        *s.listener.lock().unwrap() = Some(tokio::spawn(serve(listener, s.shared.clone())));
        s.set_mode(mode).await;
        s
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Changes how the server answers; `Down` closes the port, anything
    /// else opens it again (on the same port).
    pub async fn set_mode(&self, mode: SmtpMode) {
        let down = mode == SmtpMode::Down;
        self.shared.lock().unwrap().mode = Some(mode);
        let running = self.listener.lock().unwrap().take();
        match (down, running) {
            (true, Some(task)) => {
                task.abort();
                let _ = task.await;
            }
            (false, None) => {
                let listener = TcpListener::bind(self.addr).await.expect("rebind");
                *self.listener.lock().unwrap() =
                    Some(tokio::spawn(serve(listener, self.shared.clone())));
            }
            (_, running) => *self.listener.lock().unwrap() = running,
        }
    }

    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.shared.lock().unwrap().mails.clone()
    }

    /// How many messages were accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.lock().unwrap().mails.len()
    }

    /// How many messages with this Message-ID header were accepted.
    pub fn count_message_id(&self, message_id: &str) -> usize {
        self.shared
            .lock()
            .unwrap()
            .per_message_id
            .get(message_id)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Mutex<Shared>>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(session(stream, shared.clone()));
    }
}

async fn session(stream: TcpStream, shared: Arc<Mutex<Shared>>) -> std::io::Result<()> {
    // Replies go out at once (no Nagle delay behind the client's ACKs).
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 fake-smtp ready\r\n").await?;
    let (mut from, mut recipients) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if shared.lock().unwrap().mode == Some(SmtpMode::Down) {
            // Down also ends the connections a client kept open.
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-fake-smtp\r\n250-8BITMIME\r\n250 SMTPUTF8".into()
        } else if upper.starts_with("HELO") {
            "250 fake-smtp".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&cmd[10..]);
            recipients.clear();
            "250 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let mode = shared.lock().unwrap().mode.clone();
            match mode {
                Some(SmtpMode::RejectRecipients(code, text)) => format!("{code} {text}"),
                _ => {
                    recipients.push(address(&cmd[8..]));
                    "250 ok".into()
                }
            }
        } else if upper == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                ack_now(&lines);
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let l = line.strip_prefix('.').unwrap_or(&line);
                data.push_str(l);
            }
            let mail = ReceivedMail {
                from: from.clone(),
                recipients: std::mem::take(&mut recipients),
                data,
            };
            let mut s = shared.lock().unwrap();
            if let Some(id) = mail.header("Message-ID") {
                *s.per_message_id.entry(id).or_default() += 1;
            }
            s.mails.push(mail);
            "250 queued".into()
        } else if upper == "RSET" {
            recipients.clear();
            "250 ok".into()
        } else if upper == "NOOP" {
            "250 ok".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 command not implemented".into()
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

/// lettre writes a message body and its terminating "." line in two
/// writes; with the client's Nagle algorithm and this side's delayed ACK
/// that costs 40 ms per message (a real server sees the same). The fake
/// acknowledges at once, so benchmarks measure sitelink, not that pause.
fn ack_now(r: &BufReader<tokio::net::tcp::OwnedReadHalf>) {
    let _ = socket2::SockRef::from(r.get_ref().as_ref()).set_tcp_quickack(true);
}

/// `<a@b> SIZE=…` → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or("").to_owned(),
    }
}
