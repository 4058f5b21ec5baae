//! Connections that never finish cannot hold central's ports (issue 9
//! item 2): a silent socket, partial HTTP/1 headers, a partial HTTP/2
//! preface, a peer that never authenticates and an idle keep-alive
//! connection are closed after the setup timeout; a flood of 1,000 idle
//! connections is capped, the connected site stays connected and REST
//! answers.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use sitelink_test_support::{eventually, FakeHttp, Mode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Reads until the server closes the connection; how long that took.
async fn closed_after(mut s: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await
        {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_connections_are_closed_after_the_setup_timeout() {
    let central = spawn_central_with("setup_timeout_ms = 500").await;
    let http = central.http.trim_start_matches("http://").to_owned();
    let link = central.link;
    let limit = Duration::from_secs(5);
    let started = Instant::now();

    let mut cases: Vec<(&str, TcpStream)> = Vec::new();
    cases.push(("HTTP, silent", TcpStream::connect(&http).await.unwrap()));
    let mut partial = TcpStream::connect(&http).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    cases.push(("HTTP, partial headers", partial));
    let mut keep_alive = TcpStream::connect(&http).await.unwrap();
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    let n = keep_alive.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    cases.push(("HTTP, idle keep-alive after a request", keep_alive));
    cases.push(("link, silent", TcpStream::connect(link).await.unwrap()));
    let mut preface = TcpStream::connect(link).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    cases.push(("link, partial HTTP/2 preface", preface));
    let mut no_auth = TcpStream::connect(link).await.unwrap();
    no_auth
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    cases.push(("link, HTTP/2 without a stream", no_auth));

    // All at once: each must be closed within the limit, and none before
    // the timeout (measured from the start of this test, before any of
    // them connected).
    let checks: Vec<_> = cases
        .into_iter()
        .map(|(what, stream)| {
            tokio::spawn(async move {
                closed_after(stream, limit).await;
                (what, started.elapsed())
            })
        })
        .collect();
    for c in checks {
        let (what, took) = c.await.unwrap();
        assert!(
            took >= Duration::from_millis(500),
            "{what}: closed too early ({took:?}): the timeout is 500 ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_leave_the_site_connected_and_rest_answering() {
    let central = spawn_central_with(
        "setup_timeout_ms = 1000\nhttp_max_connections = 64\nlink_max_connections = 64",
    )
    .await;
    let erp = FakeHttp::start(Mode::Ok).await;
    let token = register(&central, "s1").await;
    let site = spawn_site("s1", &token, central.link, &erp.url(), 3).await;
    eventually(Duration::from_secs(10), "the site connects", || async {
        central.audit.is_online("s1").await.then_some(())
    })
    .await;

    // 500 idle connections to each port, as fast as they go.
    let http = central.http.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for i in 0..1000 {
        let target = if i % 2 == 0 {
            http.clone()
        } else {
            central.link.to_string()
        };
        if let Ok(s) = TcpStream::connect(target).await {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 900, "{} connected", idle.len());

    // REST answers (at the latest once the held ones time out), and the
    // site never dropped: telemetry of a new call still arrives.
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(10), "REST answers", || async {
        let r = client
            .get(format!("{}/healthz", central.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(central.audit.is_online("s1").await);
    site.runtime
        .run_source("one", "line1", BURST)
        .await
        .unwrap();
    converged(&central, &site, "s1").await;
    assert!(central.audit.is_online("s1").await);

    // Every idle connection is closed by central within the timeout.
    let closing: Vec<_> = idle
        .into_iter()
        .map(|s| tokio::spawn(closed_after(s, Duration::from_secs(10))))
        .collect();
    for c in closing {
        c.await.unwrap();
    }
}

/// The setup timeout bounds only what comes before a connection is in use:
/// a keep-alive connection that keeps sending requests outlives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_keep_alive_connection_outlives_the_setup_timeout() {
    let setup = Duration::from_millis(300);
    let central = spawn_central_with(&format!("setup_timeout_ms = {}", setup.as_millis())).await;
    let http = central.http.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&http).await.unwrap();
    let started = Instant::now();
    let mut answers = 0;
    // Bounded: a request every 100 ms for four setup timeouts.
    while started.elapsed() < setup * 4 {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "request {answers} after {:?}: {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&answer[..n])
        );
        answers += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers >= 8, "{answers}");
}
