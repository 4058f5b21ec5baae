//! Helpers for central's integration tests: a central (SQLite in a fresh
//! temporary folder, random ports) and sites wired to it, all in-process.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use sitelink_central::{Central, CentralConfig};
use sitelink_commons::{
    contracts::v1::{CentralMessage, SiteMessage},
    SiteName, TrackingRecord,
};
use sitelink_site::{Site, SiteConfig};
use sitelink_test_support::eventually;
use tokio_util::sync::CancellationToken;

pub struct TestCentral {
    central: Option<Central>,
    pub db: sitelink_central::configuration_database::Database,
    pub audit: sitelink_central::site_call_audit::SiteCallAudit,
    pub stats: Arc<sitelink_central::communication::LinkStats>,
    pub link: std::net::SocketAddr,
    pub http: String,
    /// The HTTP port's router, for in-process requests.
    pub app: axum::Router,
    /// Whether this node is active (without asking the database).
    pub cluster: sitelink_central::cluster::ClusterHandle,
    pub cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

pub async fn spawn_central() -> TestCentral {
    spawn_central_with("reconcile_interval_seconds = 1").await
}

/// A central with `extra` lines in its `[central]` section.
/// The relay timeout of every test central (`command_timeout_ms`): a
/// command that gets no answer is `Timeout` after it, and one that cannot
/// be sent is answered well before it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(2000);

pub async fn spawn_central_with(extra: &str) -> TestCentral {
    spawn_central_on("sqlite://central.db", extra).await
}

/// A central on the database at `url` (a relative SQLite path is in a
/// fresh temporary folder), with `extra` lines in its `[central]` section.
pub async fn spawn_central_on(url: &str, extra: &str) -> TestCentral {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CentralConfig::parse(
        &format!(
            "[central]\ndatabase_url = \"{url}\"\nlink_bind = \"127.0.0.1:0\"\nhttp_bind = \"127.0.0.1:0\"\nreconcile_page = 50\ncommand_timeout_ms = {}\n{extra}\n",
            COMMAND_TIMEOUT.as_millis()
        ),
        dir.path(),
    )
    .unwrap();
    let central = Central::build(cfg).await.unwrap();
    let cancel = CancellationToken::new();
    let mut c = TestCentral {
        db: central.database().clone(),
        audit: central.audit().clone(),
        stats: central.link_stats().clone(),
        link: central.link_addr(),
        http: format!("http://{}", central.http_addr()),
        app: central.http_app(),
        cluster: central.cluster_handle(),
        central: Some(central),
        cancel: cancel.clone(),
        _dir: dir,
    };
    tokio::spawn(c.central.take().unwrap().run(cancel));
    c
}

pub struct TestSite {
    site: Option<Site>,
    pub engine: sitelink_site::store_and_forward::Engine,
    pub runtime: Arc<sitelink_site::site_runtime::ScriptRuntime>,
    cancel: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_site(
    name: &str,
    token: &str,
    central: std::net::SocketAddr,
    erp: &str,
    max_retries: u32,
) -> TestSite {
    spawn_site_with(name, token, central, erp, max_retries, "").await
}

/// A site with `extra` lines in its `[central]` section.
pub async fn spawn_site_with(
    name: &str,
    token: &str,
    central: std::net::SocketAddr,
    erp: &str,
    max_retries: u32,
    extra: &str,
) -> TestSite {
    spawn_site_at(name, token, &[central], erp, max_retries, extra).await
}

/// A site that tries these central link addresses in turn.
pub async fn spawn_site_at(
    name: &str,
    token: &str,
    centrals: &[std::net::SocketAddr],
    erp: &str,
    max_retries: u32,
    extra: &str,
) -> TestSite {
    spawn_site_full(name, token, centrals, erp, max_retries, extra, "").await
}

/// A site whose `[external_systems.erp]` also has `erp_extra` lines.
pub async fn spawn_site_full(
    name: &str,
    token: &str,
    centrals: &[std::net::SocketAddr],
    erp: &str,
    max_retries: u32,
    extra: &str,
    erp_extra: &str,
) -> TestSite {
    let addresses = centrals
        .iter()
        .map(|a| format!("\"http://{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = tempfile::tempdir().unwrap();
    let cfg = SiteConfig::parse(
        &format!(
            r#"
[site]
name = "{name}"
data_dir = "data"
[admin]
bind = "127.0.0.1:0"
[central]
addresses = [{addresses}]
token = "{token}"
reconnect_max_ms = 200
{extra}
[external_systems.erp]
base_url = "{erp}"
timeout_ms = 500
retry = {{ interval_ms = 20, backoff = 1.0, max_interval_ms = 20, max_retries = {max_retries}, jitter = 0.0 }}
methods.postOrder = {{ http_method = "POST", path = "/orders" }}
{erp_extra}
"#
        ),
        dir.path(),
    )
    .unwrap();
    let site = Site::build(cfg).await.unwrap();
    let mut s = TestSite {
        engine: site.engine().clone(),
        runtime: site.runtime().clone(),
        site: Some(site),
        cancel: CancellationToken::new(),
        handle: None,
        _dir: dir,
    };
    s.handle = Some(tokio::spawn(s.site.take().unwrap().run(s.cancel.clone())));
    s
}

impl TestSite {
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        self.handle.take().unwrap().await.unwrap().unwrap();
    }

    pub async fn rows(&self) -> Vec<TrackingRecord> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.engine.list(None, after, 1000).await.unwrap();
            let Some(last) = page.last() else { return out };
            after = Some(last.tracked_operation_id);
            out.extend(page.into_iter().map(|mut r| {
                r.change_seq = 0;
                r
            }));
        }
    }
}

pub async fn register(c: &TestCentral, name: &str) -> String {
    c.db.sites()
        .add(&SiteName::parse(name).unwrap())
        .await
        .unwrap()
        .as_str()
        .to_owned()
}

/// Waits until central's SiteCalls for `site` equal the site's tracking
/// table, field by field.
pub async fn converged(c: &TestCentral, site: &TestSite, name: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("central converges to site {name}"),
        || async {
            let want = site.rows().await;
            let got = c.db.site_calls().all_for_site(name).await.unwrap();
            (!want.is_empty() && want == got).then_some(())
        },
    )
    .await;
}

/// A script that makes five cached calls and returns their ids.
pub const BURST: &str = r#"let ids = []; for i in 0..5 { ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{ order: i })); } ids"#;

/// A hand-driven site: the raw stream, as a misbehaving peer would use it.
pub async fn raw_stream(
    link: std::net::SocketAddr,
    token: &str,
    hello_site: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<SiteMessage>,
        tonic::Streaming<CentralMessage>,
    ),
    tonic::Status,
> {
    let mut client = sitelink_commons::contracts::v1::site_link_client::SiteLinkClient::connect(
        format!("http://{link}"),
    )
    .await
    .unwrap()
    .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = sitelink_commons::contracts::v1::Hello {
        site: hello_site.into(),
        protocol_version: 1,
        high_seq: 0,
    };
    tx.send(SiteMessage {
        correlation: 0,
        body: Some(sitelink_commons::contracts::v1::site_message::Body::Hello(
            hello,
        )),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let inbound = client.open(req).await?.into_inner();
    Ok((tx, inbound))
}

/// Every backend this run can test: SQLite always (in the returned
/// folder), PostgreSQL when `SITELINK_TEST_POSTGRES_URL` names a server.
pub async fn databases() -> Vec<(
    &'static str,
    sitelink_central::configuration_database::Database,
    Option<sitelink_test_support::FreshDatabase>,
    tempfile::TempDir,
)> {
    use sitelink_central::configuration_database::Database;
    let (sqlite, dir) = sqlite().await;
    let mut out = vec![("sqlite", sqlite, None, dir)];
    if let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await {
        let db = Database::connect(&pg.url).await.unwrap();
        out.push(("postgres", db, Some(pg), tempfile::tempdir().unwrap()));
    }
    out
}

/// A central database on SQLite in a new temporary folder (kept alive by
/// the returned `TempDir`).
pub async fn sqlite() -> (
    sitelink_central::configuration_database::Database,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = sitelink_central::configuration_database::Database::connect(&format!(
        "sqlite://{}",
        dir.path().join("central.db").display()
    ))
    .await
    .unwrap();
    (db, dir)
}

/// Closes `db` and drops the PostgreSQL database if there is one.
pub async fn cleanup(
    pg: Option<sitelink_test_support::FreshDatabase>,
    db: sitelink_central::configuration_database::Database,
) {
    db.pool().close().await;
    if let Some(pg) = pg {
        pg.drop_database().await;
    }
}

/// A REST client for one central.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(central: &TestCentral) -> Self {
        Self {
            base: central.http.clone(),
            http: reqwest::Client::new(),
        }
    }

    /// GET with HTTP Basic: the status and the JSON body (null if none).
    pub async fn get(&self, path: &str, auth: (&str, &str)) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth(auth.0, Some(auth.1));
        answer(r).await
    }

    /// POST with HTTP Basic: the status and the JSON body (null if none).
    pub async fn post(&self, path: &str, auth: (&str, &str)) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(auth.0, Some(auth.1));
        answer(r).await
    }

    /// POST of a JSON body with HTTP Basic: the status and the JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        auth: (&str, &str),
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(auth.0, Some(auth.1))
            .json(body);
        answer(r).await
    }

    /// GET with this `Authorization` header (or none): the whole answer.
    pub async fn raw(&self, path: &str, authorization: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(a) = authorization {
            r = r.header("authorization", a);
        }
        r.send().await.unwrap()
    }
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let r = r.send().await.unwrap();
    (
        r.status().as_u16(),
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// One answer of the web UI.
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A browser in miniature for in-process page tests: requests go through
/// the central router with `oneshot` (no socket), carrying the cookies it
/// was given, a Host header and, for POSTs, this origin.
pub struct Pages {
    app: axum::Router,
    pub host: String,
    pub cookies: std::collections::BTreeMap<String, String>,
    /// The session's CSRF token, read from the last page that had one.
    pub csrf: String,
}

impl Pages {
    pub fn new(c: &TestCentral) -> Self {
        Self {
            app: c.app.clone(),
            host: c.http.trim_start_matches("http://").to_owned(),
            cookies: Default::default(),
            csrf: String::new(),
        }
    }

    /// A request as built by the caller (with this client's cookies and
    /// host added).
    pub async fn send_raw(&mut self, req: axum::http::request::Builder, body: String) -> Answer {
        self.send(req, body).await
    }

    async fn send(&mut self, req: axum::http::request::Builder, body: String) -> Answer {
        use tower::ServiceExt;
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = req.header("host", &self.host);
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        let mut req = req.body(axum::body::Body::from(body)).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap(),
        ));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for c in headers.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        if let Some(t) = body
            .split_once("data-csrf=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(t, _)| t.to_owned())
        {
            self.csrf = t;
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A GET as htmx sends it (`HX-Request: true`).
    pub async fn get_htmx(&mut self, path: &str) -> Answer {
        self.send(
            axum::http::Request::get(path).header("hx-request", "true"),
            String::new(),
        )
        .await
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(axum::http::Request::get(path), String::new())
            .await
    }

    /// A form POST from a page of this origin.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let origin = format!("http://{}", self.host);
        self.post_from(path, form, Some(&origin)).await
    }

    /// A form POST with this Origin header (or none).
    pub async fn post_from(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> Answer {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = axum::http::Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        self.send(req, body).await
    }

    /// Logs in through the login form; the answer of the POST.
    pub async fn login(&mut self, name: &str, password: &str) -> Answer {
        let form = self.get("/login").await;
        let csrf = field(&form.body, "csrf");
        self.post(
            "/login",
            &[
                ("name", name),
                ("password", password),
                ("csrf", &csrf),
                ("next", "/dashboard"),
            ],
        )
        .await
    }
}

/// The value of a hidden form field in a page.
pub fn field(html: &str, name: &str) -> String {
    attrs(html, &format!("input[name=\"{name}\"]"), "value")
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// The values of `attr` of every element of `html` that `css` selects, in
/// document order (attribute values come back unescaped).
pub fn attrs(html: &str, css: &str, attr: &str) -> Vec<String> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse(css).unwrap_or_else(|e| panic!("selector {css}: {e}"));
    doc.select(&sel)
        .filter_map(|e| e.value().attr(attr).map(str::to_owned))
        .collect()
}

/// Whether `css` selects any element of `html`.
pub fn has(html: &str, css: &str) -> bool {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse(css).unwrap_or_else(|e| panic!("selector {css}: {e}"));
    doc.select(&sel).next().is_some()
}

/// The text of every element of `html` that `css` selects.
pub fn texts(html: &str, css: &str) -> Vec<String> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse(css).unwrap_or_else(|e| panic!("selector {css}: {e}"));
    doc.select(&sel)
        .map(|e| e.text().collect::<String>().trim().to_owned())
        .collect()
}

pub fn url_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
