//! The link over TLS (rustls): a site that trusts central's self-signed
//! certificate converges; one that trusts another certificate cannot
//! connect, and neither can a plain-text client.

use crate::common;

use std::time::Duration;

use sitelink_central::{Central, CentralConfig};
use sitelink_commons::SiteName;
use sitelink_site::{Site, SiteConfig};
use sitelink_test_support::{eventually, FakeHttp, Mode};
use tokio_util::sync::CancellationToken;

fn self_signed(dir: &std::path::Path, stem: &str) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
}

async fn tls_site(
    dir: &std::path::Path,
    token: &str,
    link: std::net::SocketAddr,
    ca: &str,
    erp: &str,
) -> (Site, tempfile::TempDir) {
    let site_dir = tempfile::tempdir().unwrap();
    let cfg = SiteConfig::parse(
        &format!(
            r#"
[site]
name = "s1"
data_dir = "data"
[admin]
bind = "127.0.0.1:0"
[central]
addresses = ["https://localhost:{}"]
token = "{token}"
ca_file = "{}"
reconnect_max_ms = 200
[external_systems.erp]
base_url = "{erp}"
methods.postOrder = {{ http_method = "POST", path = "/orders" }}
"#,
            link.port(),
            dir.join(ca).display()
        ),
        site_dir.path(),
    )
    .unwrap();
    (Site::build(cfg).await.unwrap(), site_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_runs_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path(), "central");
    self_signed(dir.path(), "other");
    let cfg = CentralConfig::parse(
        "[central]\ndatabase_url = \"sqlite://central.db\"\nlink_bind = \"127.0.0.1:0\"\nhttp_bind = \"127.0.0.1:0\"\nsetup_timeout_ms = 200\n[central.tls]\ncert_file = \"central.crt\"\nkey_file = \"central.key\"\n",
        dir.path(),
    )
    .unwrap();
    let central = Central::build(cfg).await.unwrap();
    let (db, sessions, link, stats) = (
        central.database().clone(),
        central.audit().clone(),
        central.link_addr(),
        central.link_stats().clone(),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(central.run(cancel.clone()));
    let token = db
        .sites()
        .add(&SiteName::parse("s1").unwrap())
        .await
        .unwrap()
        .as_str()
        .to_owned();
    let fake = FakeHttp::start(Mode::Ok).await;

    // A client trusting another certificate cannot even connect.
    let other = std::fs::read(dir.path().join("other.crt")).unwrap();
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", link.port()))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(other)),
            )
            .unwrap();
    let e = endpoint
        .connect()
        .await
        .expect_err("a certificate it does not trust");
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
    // Nor can a plain-text client open a stream.
    let plain = sitelink_commons::contracts::v1::site_link_client::SiteLinkClient::connect(
        format!("http://{link}"),
    )
    .await;
    if let Ok(mut client) = plain {
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        assert!(client
            .open(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .is_err());
    }
    assert!(!sessions.is_online("s1").await);

    // Trusting central's certificate: connected, and calls converge.
    let (site, _d2) = tls_site(dir.path(), &token, link, "central.crt", &fake.url()).await;
    let runtime = site.runtime().clone();
    let engine = site.engine().clone();
    let site_cancel = CancellationToken::new();
    let site_task = tokio::spawn(site.run(site_cancel.clone()));
    eventually(Duration::from_secs(10), "s1 online over TLS", || async {
        sessions.is_online("s1").await.then_some(())
    })
    .await;
    let ids = runtime
        .run_source("burst", "line1", common::BURST)
        .await
        .unwrap()
        .tracked_operation_ids;
    eventually(Duration::from_secs(10), "central has the calls", || async {
        (db.site_calls().all_for_site("s1").await.unwrap().len() == ids.len()).then_some(())
    })
    .await;
    assert_eq!(engine.list(None, None, 10).await.unwrap().len(), ids.len());
    // The authenticated TLS connection outlives the 200 ms setup deadline
    // (it was marked established): five deadlines later it is still the
    // one stream central ever accepted.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(sessions.is_online("s1").await);
    assert_eq!(
        stats
            .streams_opened
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the site had to reconnect"
    );
    site_cancel.cancel();
    site_task.await.unwrap().unwrap();
    cancel.cancel();
}

/// Central's HTTP port over TLS (`[central.http_tls]`): a client that
/// trusts the certificate gets the API; a plain-text client gets nothing;
/// a client that opens a TLS connection and never finishes the handshake
/// is closed after the setup timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path(), "http");
    let cfg = CentralConfig::parse(
        "[central]\ndatabase_url = \"sqlite://central.db\"\nlink_bind = \"127.0.0.1:0\"\n\
         http_bind = \"127.0.0.1:0\"\nsetup_timeout_ms = 500\n\
         [central.http_tls]\ncert_file = \"http.crt\"\nkey_file = \"http.key\"\n",
        dir.path(),
    )
    .unwrap();
    let central = Central::build(cfg).await.unwrap();
    let port = central.http_addr().port();
    let db = central.database().clone();
    let cancel = CancellationToken::new();
    tokio::spawn(central.run(cancel.clone()));

    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("http.crt")).unwrap())
        .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("https://localhost:{port}/api/v1/sites"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "TLS carries the API, which wants credentials"
    );
    // Plain text on the TLS port: no HTTP answer.
    let plain = reqwest::get(format!("http://localhost:{port}/healthz")).await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // A client that never sends its ClientHello is closed.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await
    .expect("closed within the setup timeout");
    assert!(matches!(read, Ok(0) | Err(_)));

    // The web UI over TLS: its cookies are Secure and `__Host-` prefixed,
    // and the Origin it accepts is the https one.
    sitelink_central::authentication::add_user(
        &db,
        "ops",
        "correct horse battery",
        sitelink_central::configuration_database::Role::Viewer,
    )
    .await
    .unwrap();
    let no_redirects = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("http.crt")).unwrap())
                .unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let form = no_redirects
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap();
    let login_cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        login_cookie.starts_with("__Host-sitelink_login="),
        "{login_cookie}"
    );
    assert!(
        login_cookie.contains("; Secure") && login_cookie.contains("HttpOnly"),
        "{login_cookie}"
    );
    let csrf = login_cookie
        .split_once('=')
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let login = |origin: String| {
        no_redirects
            .post(format!("{base}/login"))
            .header("origin", origin)
            .header("cookie", format!("__Host-sitelink_login={csrf}"))
            .form(&[
                ("name", "ops"),
                ("password", "correct horse battery"),
                ("csrf", csrf.as_str()),
            ])
            .send()
    };
    assert_eq!(
        login(format!("http://localhost:{port}"))
            .await
            .unwrap()
            .status(),
        403
    );
    let ok = login(base.clone()).await.unwrap();
    assert_eq!(ok.status(), 303);
    let session = ok
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-sitelink_session="))
        .expect("a session cookie");
    assert!(
        session.contains("; Secure") && session.contains("SameSite=Strict"),
        "{session}"
    );
    cancel.cancel();
}
