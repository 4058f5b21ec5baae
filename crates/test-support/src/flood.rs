//! Load against a server on this machine, for the authentication flood
//! test and `sitelink bench auth`: [`basic_auth_flood`] (many clients, each
//! from its own loopback address, sending HTTP Basic credentials),
//! [`Probe`] (one request a while, timing each), and [`rss_kib`] (a
//! process's resident memory); and [`slow_bodies`] (connections that
//! announce a large body and send two bytes of it). Requests are plain HTTP/1.1 over a fresh
//! connection each (`Connection: close`), written by hand: a client that
//! must bind a chosen source address is a few lines on a `TcpSocket`.
//!
//! Every loop here is bounded in count: loopback only, and it stops by
//! itself.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use base64::Engine as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

/// One GET from `from` (any loopback address) to `server`; the status
/// code, or `None` when the connection failed.
pub async fn get(
    server: SocketAddr,
    from: Ipv4Addr,
    path: &str,
    authorization: Option<&str>,
) -> Option<u16> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from.into(), 0)).ok()?;
    let mut stream = socket.connect(server).await.ok()?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {server}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// How many answers of each status a flood got (0: the connection failed).
#[derive(Clone, Debug, Default)]
pub struct FloodReport {
    pub by_status: BTreeMap<u16, u64>,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn total(&self) -> u64 {
        self.by_status.values().sum()
    }
}

/// `clients` clients at once, client `i` from 127.0.1.(i+1), each sending
/// `requests_each` GETs of `path` with the Basic credentials
/// `credentials(i, n)` gives for its n-th request.
pub async fn basic_auth_flood(
    server: SocketAddr,
    path: &str,
    clients: usize,
    requests_each: usize,
    credentials: impl Fn(usize, usize) -> (String, String) + Send + Sync + 'static,
) -> FloodReport {
    let started = Instant::now();
    let credentials = std::sync::Arc::new(credentials);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients.min(250) {
        let credentials = credentials.clone();
        let path = path.to_owned();
        tasks.spawn(async move {
            let from = Ipv4Addr::new(127, 0, 1, (i + 1) as u8);
            let mut statuses = Vec::with_capacity(requests_each);
            for n in 0..requests_each {
                let (user, password) = credentials(i, n);
                let auth = basic(&user, &password);
                statuses.push(get(server, from, &path, Some(&auth)).await.unwrap_or(0));
            }
            statuses
        });
    }
    let mut report = FloodReport::default();
    while let Some(done) = tasks.join_next().await {
        for s in done.expect("a flood client panicked") {
            *report.by_status.entry(s).or_default() += 1;
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Requests one path every `every` until stopped, recording each
/// answer's status and latency.
pub struct Probe {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(Option<u16>, Duration)>>,
}

impl Probe {
    pub fn start(
        server: SocketAddr,
        path: &str,
        authorization: Option<String>,
        every: Duration,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let path = path.to_owned();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            // Bounded: 100,000 requests at most.
            while !*stopped.borrow() && seen.len() < 100_000 {
                let started = Instant::now();
                let status =
                    get(server, Ipv4Addr::LOCALHOST, &path, authorization.as_deref()).await;
                seen.push((status, started.elapsed()));
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => {}
                }
            }
            seen
        });
        Self { stop, task }
    }

    /// Stops and returns every (status, latency) seen.
    pub async fn finish(self) -> Vec<(Option<u16>, Duration)> {
        let _ = self.stop.send(true);
        self.task.await.expect("the probe panicked")
    }
}

/// The resident memory of process `pid`, in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples [`rss_kib`] of `pid` every 20 ms until stopped; the highest.
pub struct RssPeak {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssPeak {
    pub fn start(pid: u32) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !*stopped.borrow() {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stopped.changed() => {}
                }
            }
            peak.max(rss_kib(pid).unwrap_or(0))
        });
        Self { stop, task }
    }

    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.expect("the sampler panicked")
    }
}

/// What became of one slow-body connection: when the server closed it, and
/// what it answered before (empty when it was closed at once).
pub struct SlowBody {
    /// When the connection was made.
    pub opened: Instant,
    pub closed: Instant,
    pub answer: String,
}

/// Opens `n` connections from `from` to `server`, each sending `head` (a
/// request line and headers announcing `Content-Length: 100000`) and two
/// bytes of the body, then nothing. One task per connection reads until the
/// server closes it, and panics if that takes longer than `limit`.
pub async fn slow_bodies(
    server: SocketAddr,
    from: Ipv4Addr,
    n: usize,
    head: &str,
    limit: Duration,
) -> Vec<tokio::task::JoinHandle<SlowBody>> {
    let mut readers = Vec::new();
    for _ in 0..n {
        let Ok(socket) = TcpSocket::new_v4() else {
            continue;
        };
        if socket.bind(SocketAddr::new(from.into(), 0)).is_err() {
            continue;
        }
        let Ok(mut s) = socket.connect(server).await else {
            continue;
        };
        let opened = Instant::now();
        // A refused connection may be closed already: the write may fail.
        let _ = s.write_all(format!("{head}ab").as_bytes()).await;
        readers.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let left = limit.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, s.read(&mut buf)).await {
                    Err(_) => panic!("a slow-body connection still open after {limit:?}"),
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
                }
            }
            SlowBody {
                opened,
                closed: Instant::now(),
                answer: String::from_utf8_lossy(&got).into_owned(),
            }
        }));
    }
    readers
}
