//! An HTTP port (central's REST API, `/metrics` and `/healthz`, the web UI
//! next; the site's admin API): the accept loop, hand-written on hyper because `axum::serve`
//! offers neither a header-read timeout, nor a connection cap, nor TLS.
//!
//! Per connection: a place under the port's cap ([`GuardedListener`]);
//! with TLS, a handshake that must finish within the setup timeout; then
//! HTTP/1.1 with hyper's header-read timeout, which runs from the moment
//! the connection (or the previous answer) is done until the next request's
//! headers are complete, so a silent socket, a slow-loris header or an idle
//! keep-alive connection is closed after it. The client's address reaches
//! handlers as axum's `ConnectInfo<SocketAddr>` (the login throttle keys
//! on it).
//!
//! Shutdown: on cancellation the loop stops accepting, every connection
//! finishes the request it is serving and closes, and [`serve`] returns
//! when the last one has.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{extract::ConnectInfo, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::listeners::GuardedListener;

/// Largest request head (request line and headers) accepted; a larger one
/// is answered 431 by hyper.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until `cancel` fires. The listener's
/// setup timeout bounds the TLS handshake and, as hyper's header-read
/// timeout, every request's headers and the idle time before them.
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
            async move {
                use tower_service::Service as _;
                router.call(req.map(axum::body::Body::new)).await
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
