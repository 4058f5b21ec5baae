//! [`FakeHttp`]: a controllable external system.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

/// How the fake answers the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with `{"ok":true}`.
    Ok,
    /// 400 (permanent).
    BadRequest,
    /// 429 (transient).
    TooManyRequests,
    /// 503 (transient).
    Unavailable,
    /// Never answers (until the mode changes or 60 s pass).
    Hang,
    /// Port closed: connections are refused.
    Down,
    /// 200 with a body that is not JSON.
    NotJson,
    /// 200 with a JSON string body of about this many bytes.
    Huge(usize),
    /// 503 for every request except each n-th, which gets 200.
    SucceedEvery(u64),
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    /// Every header, names in lower case.
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: serde_json::Value,
    /// The status the fake answered (0 while hanging).
    pub answered: u16,
}

struct Inner {
    mode: Mutex<Mode>,
    requests: Mutex<Vec<Recorded>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    counter: std::sync::atomic::AtomicU64,
}

/// A controllable external system on 127.0.0.1 (random port).
#[derive(Clone)]
pub struct FakeHttp {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl FakeHttp {
    pub async fn start(mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake http");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            mode: Mutex::new(mode),
            requests: Mutex::new(Vec::new()),
            server: Mutex::new(None),
            counter: Default::default(),
        });
        let fake = Self { addr, inner };
        if mode == Mode::Down {
            drop(listener);
        } else {
            fake.serve(listener);
        }
        fake
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.inner.server.lock().unwrap() = Some(task);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the answers. `Down` closes the port; leaving `Down` opens it
    /// again on the same port.
    pub async fn set_mode(&self, mode: Mode) {
        let was = std::mem::replace(&mut *self.inner.mode.lock().unwrap(), mode);
        if mode == Mode::Down && was != Mode::Down {
            let task = self.inner.server.lock().unwrap().take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        } else if was == Mode::Down && mode != Mode::Down {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket
                .bind(self.addr)
                .expect("rebind fake http on its port");
            self.serve(socket.listen(1024).unwrap());
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The `Idempotency-Key` of every request received, in order.
    pub fn idempotency_keys(&self) -> Vec<Option<String>> {
        self.requests()
            .into_iter()
            .map(|r| r.idempotency_key)
            .collect()
    }
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let header = |h: &HeaderMap, n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mode = *inner.mode.lock().unwrap();
    let n = inner
        .counter
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    let (status, answer): (StatusCode, String) = match mode {
        Mode::Ok => (StatusCode::OK, r#"{"ok":true}"#.into()),
        Mode::BadRequest => (StatusCode::BAD_REQUEST, r#"{"error":"bad order"}"#.into()),
        Mode::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, String::new()),
        Mode::Unavailable | Mode::Down => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        Mode::Hang => (StatusCode::from_u16(299).unwrap(), String::new()),
        Mode::NotJson => (StatusCode::OK, "<html>surprise</html>".into()),
        Mode::Huge(len) => (StatusCode::OK, format!("\"{}\"", "x".repeat(len))),
        Mode::SucceedEvery(k) if n % k.max(1) == 0 => (StatusCode::OK, r#"{"ok":true}"#.into()),
        Mode::SucceedEvery(_) => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
    };
    inner.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        idempotency_key: header(&parts.headers, "idempotency-key"),
        authorization: header(&parts.headers, "authorization"),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        answered: if mode == Mode::Hang {
            0
        } else {
            status.as_u16()
        },
    });
    if mode == Mode::Hang {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    // No keep-alive: a connection pooled by the client must not outlive a
    // switch to `Down`.
    (
        status,
        [
            (header::CONNECTION, "close"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        answer,
    )
        .into_response()
}
