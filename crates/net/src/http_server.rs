//! An HTTP port (central's REST API, `/metrics` and `/healthz`, the web UI
//! next; the site's admin API): the accept loop, hand-written on hyper because `axum::serve`
//! offers neither a header-read timeout, nor a connection cap, nor TLS.
//!
//! Per connection: a place under the port's cap ([`GuardedListener`]);
//! with TLS, a handshake that must finish within the setup timeout; then
//! HTTP/1.1 with hyper's header-read timeout, which runs from the moment
//! the connection (or the previous answer) is done until the next request's
//! headers are complete, so a silent socket, a slow-loris header or an idle
//! keep-alive connection is closed after it. A request's body must then
//! arrive within the same time ([`DeadlineBody`]): a client that announces
//! `Content-Length: 100000` and sends two bytes is answered 408 and its
//! connection closed, so slow bodies cannot hold the port's slots. The
//! client's address reaches
//! handlers as axum's `ConnectInfo<SocketAddr>` (the login throttle keys
//! on it).
//!
//! Shutdown: on cancellation the loop stops accepting, every connection
//! finishes the request it is serving and closes, and [`serve`] returns
//! when the last one has.

use std::{
    future::Future as _,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use anyhow::Context;
use axum::{
    extract::ConnectInfo,
    http::{header, HeaderValue, StatusCode},
    response::IntoResponse as _,
    Router,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::listeners::GuardedListener;

/// Largest request head (request line and headers) accepted; a larger one
/// is answered 431 by hyper.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until `cancel` fires. The listener's
/// setup timeout bounds the TLS handshake, every request's headers and the
/// idle time before them (as hyper's header-read timeout), and then every
/// request's body.
pub async fn serve(
    listener: GuardedListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let timeout = listener.limits().setup_timeout;
    let listener = Arc::new(listener);
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted.context("accepting an HTTP connection")?,
        };
        let peer = stream.info().peer;
        let router = router.clone();
        let tls = tls.clone();
        let cancel = cancel.clone();
        // From the first request on, hyper's header-read timeout watches
        // the connection, so the stream's own deadline (which would cut a
        // busy keep-alive connection) ends once it is usable.
        let established = stream.info().established.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    established.mark();
                    connection(stream, peer, router, timeout, cancel).await
                }
                Some(tls) => match tokio::time::timeout(timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        established.mark();
                        connection(stream, peer, router, timeout, cancel).await
                    }
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    listener.drained().await;
    Ok(())
}

async fn connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            let late = Arc::new(AtomicBool::new(false));
            let req = req.map(|body| {
                axum::body::Body::new(DeadlineBody {
                    inner: body,
                    deadline: Box::pin(tokio::time::sleep(header_timeout)),
                    late: late.clone(),
                })
            });
            async move {
                use tower_service::Service as _;
                let resp = router.call(req).await?;
                // Whatever the handler made of the failed read (a 400 from
                // an extractor, say), the answer is 408, and the connection
                // closes (hyper cannot read the next request after an
                // unfinished body).
                if late.load(Ordering::Relaxed) {
                    return Ok(too_slow(header_timeout));
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r.map_err(Into::into),
        () = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    conn.await.map_err(Into::into)
}

/// A request body that fails once `deadline` has passed before its end.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Set when the deadline cut the body: the answer becomes 408.
    late: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// 408 with the JSON error body, closing the connection.
fn too_slow(limit: Duration) -> axum::response::Response {
    let message = format!(
        "{{\"error\":\"the request body did not arrive within {} ms\"}}",
        limit.as_millis()
    );
    let mut resp = (StatusCode::REQUEST_TIMEOUT, message).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
