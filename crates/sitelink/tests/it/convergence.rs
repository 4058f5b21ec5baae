//! Guarantee 3 of SPEC §6 with real processes: central + 3 sites (the real
//! binary) + a flaky external system, a fault-injecting proxy between each
//! site and central that cuts connections again and again, central killed
//! with SIGKILL and restarted in the middle, one site stopped for several
//! reconcile periods. After healing, every site's tracking table equals
//! central's SiteCalls rows for that site, field by field.

use crate::common;

use std::time::Duration;

use common::{list_all, sigterm, start, BIN};
use sitelink_test_support::{eventually, FakeHttp, Mode, TcpProxy};
use tokio::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_converges_to_every_site_through_faults_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("processes.log");
    let link_port = free_port();
    let central_toml = dir.path().join("central.toml");
    std::fs::write(
        &central_toml,
        format!(
            "[central]\ndatabase_url = \"sqlite://central.db\"\nlink_bind = \"127.0.0.1:{link_port}\"\nhttp_bind = \"127.0.0.1:0\"\nreconcile_interval_seconds = 1\nreconcile_page = 100\n"
        ),
    )
    .unwrap();
    let central_args = ["central", "--config", central_toml.to_str().unwrap()];
    let fake = FakeHttp::start(Mode::SucceedEvery(3)).await;
    std::fs::write(
        dir.path().join("burst.rhai"),
        r#"let ids = []; for i in 0..5 { ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{ order: i })); } ids"#,
    )
    .unwrap();

    let link: std::net::SocketAddr = format!("127.0.0.1:{link_port}").parse().unwrap();
    let mut sites = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let out = Command::new(BIN)
            .args(central_args)
            .args(["site", "add", name])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let proxy = TcpProxy::start(link).await;
        let toml = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &toml,
            format!(
                r#"
[site]
name = "{name}"
data_dir = "{name}-data"
[admin]
bind = "127.0.0.1:0"
[central]
addresses = ["http://{}"]
token = "{token}"
reconnect_max_ms = 300
[external_systems.erp]
base_url = "{}"
timeout_ms = 1000
retry = {{ interval_ms = 30, backoff = 1.0, max_interval_ms = 30, max_retries = 5, jitter = 0.0 }}
methods.postOrder = {{ http_method = "POST", path = "/orders" }}
[[script]]
name = "burst"
file = "burst.rhai"
"#,
                proxy.addr(),
                fake.url()
            ),
        )
        .unwrap();
        sites.push((name, toml, proxy));
    }

    let (mut central, addrs) = start(&central_args, &log, 2).await;
    let mut central_http = format!("http://{}", addrs[1]);
    let mut running = Vec::new();
    for (_, toml, _) in &sites {
        let (child, addrs) = start(&["site", "--config", toml.to_str().unwrap()], &log, 1).await;
        running.push((Some(child), format!("http://{}", addrs[0])));
    }
    let http = reqwest::Client::new();
    let burst = |url: String| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{url}/api/v1/scripts/burst/run"))
                .header("content-type", "application/json")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };

    for round in 0..8 {
        // Cut every other round, kill central at round 3, stop s3 at round 4.
        if round % 2 == 0 {
            sites.iter().for_each(|(_, _, p)| p.cut());
        }
        if round == 3 {
            central.start_kill().unwrap(); // SIGKILL
            central.wait().await.unwrap();
            let (c, addrs) = start(&central_args, &log, 2).await;
            central = c;
            central_http = format!("http://{}", addrs[1]);
        }
        if round == 4 {
            sigterm(running[2].0.take().unwrap()).await;
        }
        for (i, (child, url)) in running.iter().enumerate() {
            if child.is_some() {
                burst(url.clone()).await;
            } else {
                assert_eq!(i, 2);
            }
        }
        if round % 2 == 0 {
            sites.iter().for_each(|(_, _, p)| p.heal());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // s3 was offline for more than three reconcile periods; it comes back.
    let (child, addrs) = start(&["site", "--config", sites[2].1.to_str().unwrap()], &log, 1).await;
    running[2] = (Some(child), format!("http://{}", addrs[0]));
    fake.set_mode(Mode::Ok).await;

    for ((name, _, _), (_, url)) in sites.iter().zip(&running) {
        let site_rows = eventually(
            Duration::from_secs(30),
            &format!("{name}: every call Delivered or Parked"),
            || async {
                let rows =
                    list_all(&http, &format!("{url}/api/v1/operations?limit=500"), false).await;
                rows.iter()
                    .all(|r| matches!(r["status"].as_str(), Some("Delivered" | "Parked")))
                    .then_some(rows)
            },
        )
        .await;
        assert!(site_rows.len() >= 20, "{name}: {}", site_rows.len());
        common::central_converges_to(&http, &central_http, name, &site_rows).await;
    }

    for (child, _) in running {
        sigterm(child.unwrap()).await;
    }
    sigterm(central).await;
}
