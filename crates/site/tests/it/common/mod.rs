//! Helpers for the site's integration tests: build a site from a config
//! fragment in a fresh temporary folder, drive its retry worker one step at
//! a time, or spawn it whole with its admin API on a random port.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use sitelink_commons::{TrackedOperationId, TrackedOperationStatus, TrackingRecord};
use sitelink_site::{
    external_system_gateway::Gateway,
    site_runtime::{ScriptError, ScriptRun, ScriptRuntime},
    store_and_forward::{Engine, RetryWorker, RunOnce},
    Site, SiteConfig,
};
use tokio_util::sync::CancellationToken;

pub const BASE: &str = r#"
[site]
name = "test-site"
data_dir = "data"

[admin]
bind = "127.0.0.1:0"
"#;

/// An external system `erp` at `url` with fast, jitter-free retries.
pub fn erp(url: &str, max_retries: u32) -> String {
    format!(
        r#"
[external_systems.erp]
base_url = "{url}"
timeout_ms = 300
retry = {{ interval_ms = 1, backoff = 1.0, max_interval_ms = 1, max_retries = {max_retries}, jitter = 0.0 }}
methods.postOrder = {{ http_method = "POST", path = "/orders" }}
methods.getOrder = {{ http_method = "GET", path = "/orders/{{id}}" }}
"#
    )
}

/// A site that is built but whose loops do not run: tests step the retry
/// worker with [`TestSite::retry_once`].
pub struct TestSite {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
    pub gateway: Arc<Gateway>,
    pub runtime: Arc<ScriptRuntime>,
    pub site: Option<Site>,
}

pub async fn build_site(fragment: &str) -> TestSite {
    build_site_in(tempfile::tempdir().unwrap(), fragment).await
}

pub async fn build_site_in(dir: tempfile::TempDir, fragment: &str) -> TestSite {
    let config =
        SiteConfig::parse(&format!("{BASE}\n{fragment}"), dir.path()).expect("test config parses");
    let site = Site::build(config).await.expect("site builds");
    TestSite {
        engine: site.engine().clone(),
        gateway: site.gateway().clone(),
        runtime: site.runtime().clone(),
        site: Some(site),
        dir,
    }
}

impl TestSite {
    pub async fn run(&self, source: &str) -> Result<ScriptRun, ScriptError> {
        self.runtime.run_source("test", "line1", source).await
    }

    /// Runs a script that must succeed and returns its result.
    pub async fn run_ok(&self, source: &str) -> Value {
        match self.run(source).await {
            Ok(run) => run.result,
            Err(e) => panic!("script failed: {e}"),
        }
    }

    pub async fn record(&self, id: &str) -> TrackingRecord {
        let id: TrackedOperationId = id.parse().unwrap();
        self.engine.get(id).await.unwrap().expect("record exists")
    }

    /// One retry pass, once something is due (retry intervals are 1 ms).
    pub async fn retry_once(&self) -> RunOnce {
        let worker = RetryWorker::new(self.engine.clone(), self.gateway.clone());
        sitelink_test_support::eventually(
            Duration::from_secs(5),
            "a buffered operation to come due",
            || async {
                let r = worker.run_once().await.unwrap();
                (r.attempted > 0).then_some(r)
            },
        )
        .await
    }

    /// One retry pass over whatever is due now (possibly nothing).
    pub async fn retry_pass(&self) -> RunOnce {
        RetryWorker::new(self.engine.clone(), self.gateway.clone())
            .run_once()
            .await
            .unwrap()
    }

    /// Starts the loops and the admin API; returns the admin base URL.
    pub fn start(
        &mut self,
    ) -> (
        String,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let site = self.site.take().expect("not started yet");
        let url = format!("http://{}", site.admin_addr());
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(site.run(cancel.clone()));
        (url, cancel, handle)
    }
}

/// The engine alone (site `s1`), on `buffer.db` in `dir`.
pub async fn open_engine(dir: &tempfile::TempDir) -> Engine {
    Engine::open(
        &dir.path().join("buffer.db"),
        "s1",
        sitelink_site::store_and_forward::EngineSettings::default(),
    )
    .await
    .unwrap()
}

pub fn status_of(v: &Value) -> TrackedOperationStatus {
    v["status"].as_str().unwrap().parse().unwrap()
}
