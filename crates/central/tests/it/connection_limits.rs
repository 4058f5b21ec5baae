//! Connections that never finish cannot hold central's ports (issue 9
//! item 2): a silent socket, partial HTTP/1 headers, a partial HTTP/2
//! preface, a peer that never authenticates and an idle keep-alive
//! connection are closed after the setup timeout; a flood of 1,000 idle
//! connections is capped, the connected site stays connected and REST
//! answers.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use sitelink_test_support::{
    eventually,
    flood::{slow_bodies, SlowBody},
    FakeHttp, Mode,
};
use std::net::Ipv4Addr;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
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

/// Issue 20 item 1: 300 slow request bodies from one address take neither
/// the port nor the login page from another address, and each is closed
/// within the deadline (answered 408 when it was accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_from_one_address_leave_the_port_to_others() {
    let setup = Duration::from_millis(2000);
    let central = spawn_central_with(&format!("setup_timeout_ms = {}", setup.as_millis())).await;
    sitelink_central::authentication::add_user(
        &central.db,
        "admin",
        "correct horse",
        sitelink_central::configuration_database::Role::Admin,
    )
    .await
    .unwrap();
    let http = central.http.trim_start_matches("http://").parse().unwrap();
    let head = "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n";
    let readers = slow_bodies(http, LOCALHOST, 300, head, setup + Duration::from_secs(3)).await;
    assert_eq!(readers.len(), 300, "every slow connection was made");

    // Another address: the login page and REST answer while the slow
    // bodies are held.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let page = other
        .get(format!("{}/login", central.http))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let rest = other
        .get(format!("{}/api/v1/sites", central.http))
        .basic_auth("admin", Some("correct horse"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 200);
    let answered = Instant::now();

    let mut timed_out = 0;
    for r in readers {
        let SlowBody {
            closed,
            answer: got,
            ..
        } = r.await.unwrap();
        if !got.is_empty() {
            assert!(got.starts_with("HTTP/1.1 408"), "{got}");
            assert!(
                got.contains(r#"{"error":"the request body did not arrive within 2000 ms"}"#),
                "{got}"
            );
            assert!(
                closed > answered,
                "a held slow body was closed before the other address was answered"
            );
            timed_out += 1;
        }
    }
    // The held ones are the address's share, no more (the rest were closed
    // at once); with none held the test would prove nothing.
    assert!((1..=64).contains(&timed_out), "{timed_out} held");
}

/// Issue 20 item 1, the link port: one address may hold at most
/// `link_unauthenticated_per_address` connections that have not
/// authenticated; authenticated ones do not count (six sites share one
/// address here, over a cap of four), and another address is still let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_link_connections_are_capped_per_address() {
    let setup = Duration::from_millis(2000);
    let central = spawn_central_with(&format!(
        "setup_timeout_ms = {}\nlink_unauthenticated_per_address = 4",
        setup.as_millis()
    ))
    .await;
    let erp = FakeHttp::start(Mode::Ok).await;
    let mut sites = Vec::new();
    for i in 0..6 {
        let name = format!("s{i}");
        let token = register(&central, &name).await;
        sites.push(spawn_site(&name, &token, central.link, &erp.url(), 3).await);
    }
    eventually(
        Duration::from_secs(20),
        "six sites from one address connect",
        || async {
            for i in 0..6 {
                if !central.audit.is_online(&format!("s{i}")).await {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // Twenty silent connections from the sites' address: four are held to
    // the setup timeout, the rest closed at once.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(central.link).await.unwrap());
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let elsewhere = tokio::spawn(closed_after(
        socket.connect(central.link).await.unwrap(),
        setup * 3,
    ));
    let closing: Vec<_> = silent
        .into_iter()
        .map(|s| tokio::spawn(closed_after(s, setup * 3)))
        .collect();
    let mut held = 0;
    for c in closing {
        held += usize::from(c.await.unwrap() >= setup / 2);
    }
    assert_eq!(held, 4, "connections held for the sites' address");
    // Another address got a place: held to its setup timeout too.
    assert!(
        elsewhere.await.unwrap() >= setup / 2,
        "the other address was closed at once"
    );
    for i in 0..6 {
        assert!(
            central.audit.is_online(&format!("s{i}")).await,
            "s{i} stayed online"
        );
    }
}
