//! [`FakeSmtp`]: an SMTP server in the test process that speaks the
//! protocol over TCP (EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing,
//! RSET, NOOP, QUIT) and can be told how to answer. Started with
//! [`FakeSmtp::start_secure`] it behaves like a submission server: it offers
//! STARTTLS, and over TLS only AUTH PLAIN, and refuses mail before both.
//!
//! Hand-written: the point is fault injection (421/451/550 replies, being
//! down with the port closed), which the embeddable SMTP servers on
//! crates.io do not offer; the protocol subset a client needs is small.
//! TLS itself is tokio-rustls (ring), as everywhere else in the build.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// What [`FakeSmtp::start_secure`] requires of a client.
#[derive(Clone)]
pub struct SmtpSecurity {
    /// The server's certificate chain and key (PEM), offered on STARTTLS.
    pub cert_pem: String,
    pub key_pem: String,
    /// The user and password AUTH PLAIN must present before MAIL; `None`:
    /// TLS only, no AUTH.
    pub login: Option<(String, String)>,
}

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
    /// Whether it came over TLS (after STARTTLS).
    pub tls: bool,
    /// The user that authenticated for it, if any.
    pub user: Option<String>,
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
    security: Option<Security>,
    mails: Vec<ReceivedMail>,
    /// Messages accepted per Message-ID.
    per_message_id: HashMap<String, usize>,
    /// How long the end of a message's data waits before it is accepted (a
    /// slow relay).
    accept_delay: std::time::Duration,
}

/// The fake server. Stops when dropped.
pub struct FakeSmtp {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

/// [`SmtpSecurity`], ready to serve.
#[derive(Clone)]
struct Security {
    tls: tokio_rustls::TlsAcceptor,
    login: Option<(String, String)>,
}

impl FakeSmtp {
    pub async fn start(mode: SmtpMode) -> Self {
        Self::start_with(mode, None).await
    }

    /// A server that requires STARTTLS (and AUTH PLAIN if `security.login`
    /// is set) before it takes mail.
    pub async fn start_secure(mode: SmtpMode, security: SmtpSecurity) -> Self {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(security.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(security.key_pem.as_bytes()).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
        let security = Security {
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            login: security.login,
        };
        Self::start_with(mode, Some(security)).await
    }

    async fn start_with(mode: SmtpMode, security: Option<Security>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let s = Self {
            addr,
            shared: Arc::new(Mutex::new(Shared {
                mode: Some(SmtpMode::Accept),
                security,
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
    /// Every message waits this long after its data before it is accepted.
    pub fn set_accept_delay(&self, delay: std::time::Duration) {
        self.shared.lock().unwrap().accept_delay = delay;
    }

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

/// A connection before or after STARTTLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn reply(conn: &mut BufReader<Box<dyn Io>>, text: &str) -> std::io::Result<()> {
    let w = conn.get_mut();
    w.write_all(format!("{text}\r\n").as_bytes()).await?;
    // TLS buffers writes until flushed.
    w.flush().await
}

async fn session(stream: TcpStream, shared: Arc<Mutex<Shared>>) -> std::io::Result<()> {
    // Replies go out at once (no Nagle delay behind the client's ACKs).
    stream.set_nodelay(true)?;
    // A second handle on the socket, for `ack_now` once TLS wraps it.
    let socket = stream.into_std()?;
    let raw = socket.try_clone()?;
    let stream = TcpStream::from_std(socket)?;
    let security = shared.lock().unwrap().security.clone();
    let mut conn: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    reply(&mut conn, "220 fake-smtp ready").await?;
    let (mut from, mut recipients) = (String::new(), Vec::new());
    let (mut tls, mut user) = (false, None::<String>);
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if shared.lock().unwrap().mode == Some(SmtpMode::Down) {
            // Down also ends the connections a client kept open.
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let needs_tls = security.is_some() && !tls;
        let needs_auth = security.as_ref().is_some_and(|s| s.login.is_some()) && user.is_none();
        let answer: String = if upper.starts_with("EHLO") {
            let mut lines = vec!["fake-smtp", "8BITMIME"];
            if needs_tls {
                lines.push("STARTTLS");
            } else if security.as_ref().is_some_and(|s| s.login.is_some()) {
                lines.push("AUTH PLAIN");
            }
            lines.push("SMTPUTF8");
            let last = lines.len() - 1;
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
                .collect::<Vec<_>>()
                .join("\r\n")
        } else if upper.starts_with("HELO") {
            "250 fake-smtp".into()
        } else if upper == "STARTTLS" {
            let Some(sec) = security.as_ref().filter(|_| !tls) else {
                reply(&mut conn, "503 5.5.1 TLS not available").await?;
                continue;
            };
            reply(&mut conn, "220 2.0.0 ready to start TLS").await?;
            // The client waits for the 220 before its handshake, so
            // nothing is buffered here yet.
            let plain = conn.into_inner();
            conn = BufReader::new(Box::new(sec.tls.accept(plain).await?));
            // RFC 3207: the session starts over.
            tls = true;
            (from, user) = (String::new(), None);
            recipients.clear();
            continue;
        } else if upper.starts_with("AUTH PLAIN") {
            match (&security, tls) {
                (_, false) => "538 5.7.11 encryption required for AUTH".into(),
                (
                    Some(Security {
                        login: Some((u, p)),
                        ..
                    }),
                    true,
                ) => match plain_login(cmd[10..].trim()) {
                    Some((gu, gp)) if &gu == u && &gp == p => {
                        user = Some(gu);
                        "235 2.7.0 authentication successful".into()
                    }
                    _ => "535 5.7.8 authentication credentials invalid".into(),
                },
                _ => "503 5.5.1 AUTH not offered".into(),
            }
        } else if upper.starts_with("MAIL FROM:") {
            if needs_tls {
                "530 5.7.0 must issue a STARTTLS command first".into()
            } else if needs_auth {
                "530 5.7.0 authentication required".into()
            } else {
                from = address(&cmd[10..]);
                recipients.clear();
                "250 ok".into()
            }
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
            reply(&mut conn, "354 end with <CRLF>.<CRLF>").await?;
            let mut data = String::new();
            loop {
                line.clear();
                ack_now(&raw);
                if conn.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let l = line.strip_prefix('.').unwrap_or(&line);
                data.push_str(l);
            }
            let delay = shared.lock().unwrap().accept_delay;
            // Only when asked for: even a zero sleep waits for the timer's
            // next tick (a millisecond), which would slow every message.
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mail = ReceivedMail {
                from: from.clone(),
                recipients: std::mem::take(&mut recipients),
                data,
                tls,
                user: user.clone(),
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
            reply(&mut conn, "221 bye").await?;
            return Ok(());
        } else {
            "502 command not implemented".into()
        };
        reply(&mut conn, &answer).await?;
    }
}

/// The user and password of an AUTH PLAIN initial response
/// (base64 of `authzid NUL user NUL password`).
fn plain_login(b64: &str) -> Option<(String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split('\0');
    let (_authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    Some((user.to_owned(), password.to_owned()))
}

/// lettre writes a message body and its terminating "." line in two
/// writes; with the client's Nagle algorithm and this side's delayed ACK
/// that costs 40 ms per message (a real server sees the same). The fake
/// acknowledges at once, so benchmarks measure sitelink, not that pause.
fn ack_now(socket: &std::net::TcpStream) {
    let _ = socket2::SockRef::from(socket).set_tcp_quickack(true);
}

/// `<a@b> SIZE=…` → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or("").to_owned(),
    }
}
