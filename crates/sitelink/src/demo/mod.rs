//! `sitelink demo`: one command to a living system (SPEC §2 component 13,
//! Host). In one process: a central node and two sites ("plant-north",
//! "plant-south") — the real components over the real gRPC link on
//! loopback — plus the demo's own simulated ERP ([`erp`]), a SQLite plant
//! database per site, and an SMTP sink ([`smtp_sink`]) that keeps every
//! message it receives.
//!
//! Everything lives in a data directory (default `./sitelink-demo`):
//! `central.toml`, `central.db`, `plant-*/site.toml`, `plant-*/scripts/`,
//! `plant-*/data/` and `mail/`. The configuration files and scripts are
//! written only when absent ([`files`]), so a person's edits survive a
//! restart, and a second `demo` on the same directory resumes with every
//! row it had. `--speed` divides every interval (script timers, retry
//! delays, the ERP's schedule) at run time; the files keep speed-1 values.
//!
//! Ports: the HTTP port (`--http`, default 127.0.0.1:8080) and five in a row
//! from `--ports` (default 7070): the site link, the two site admin APIs,
//! the ERP and the SMTP sink. A taken port is named with the flag that
//! moves it.

mod erp;
mod files;
mod smtp_sink;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use sitelink_central::{
    configuration_database::{Database, Role},
    Central, CentralConfig,
};
use sitelink_commons::SiteName;
use sitelink_site::{Site, SiteConfig};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its files and databases (created if missing;
    /// a second run resumes there).
    #[arg(long, default_value = "sitelink-demo")]
    data_dir: PathBuf,
    /// The web UI and REST API address (default: central.toml's, at first
    /// 127.0.0.1:8080).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// First of five consecutive loopback ports: site link, the two site
    /// admin APIs, the simulated ERP, the SMTP sink.
    #[arg(long, default_value_t = 7070)]
    ports: u16,
    /// The password of user `admin` (created at the first run; given later,
    /// it is reset). Without it the first run generates one and prints it.
    #[arg(long, env = "SITELINK_DEMO_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Runs every timer this many times faster (0.1–1000).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

/// Writes `text` to `path` unless the file exists; says whether it wrote.
fn write_if_absent(path: &std::path::Path, text: &str) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Binds a demo part's port, or says which part and which flag moves it.
async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "port {} ({what}) is taken: another program (or another demo) uses it; {flag}",
            addr.port()
        )
    })
}

fn scaled(ms: u64, speed: f64) -> u64 {
    ((ms as f64 / speed).round() as u64).max(1)
}

fn scale_retry(r: &mut sitelink_commons::RetryPolicy, speed: f64) {
    r.interval_ms = scaled(r.interval_ms, speed);
    r.max_interval_ms = scaled(r.max_interval_ms, speed).max(r.interval_ms);
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.1..=1000.0).contains(&args.speed),
        "--speed must be from 0.1 to 1000, got {}",
        args.speed
    );
    anyhow::ensure!(
        args.ports <= u16::MAX - 4 && args.ports >= 1024,
        "--ports must be from 1024 to 65531 (five ports from it are used), got {}",
        args.ports
    );
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let dir = args.data_dir.canonicalize()?;
    let port = |i: u16| args.ports + i;
    let (link_port, erp_port, smtp_port) = (port(0), port(3), port(4));
    let moved = "pass --ports N to move the demo's five ports (N to N+4)";

    // Central: its file (once), then the node itself.
    let central_file = dir.join("central.toml");
    write_if_absent(
        &central_file,
        &files::central_toml(
            link_port,
            args.http
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            smtp_port,
        ),
    )?;
    let mut central_config = CentralConfig::load(&central_file)?;
    if let Some(http) = args.http {
        if !http.ip().is_loopback() && central_config.central.metrics_token.is_none() {
            anyhow::bail!(
                "--http {http} is not loopback: add metrics_token = \"<16 or more characters>\" \
                 to the [central] section of {} (or remove the file to have it written anew)",
                central_file.display()
            );
        }
        central_config.central.http_bind = http;
    }
    let http = central_config.central.http_bind;
    if let Some(o) = central_config.notification_outbox.as_mut() {
        scale_retry(&mut o.retry, args.speed);
    }
    central_config.central.reconcile_interval_seconds = (scaled(
        central_config.central.reconcile_interval_seconds * 1000,
        args.speed,
    ) / 1000)
        .max(1);
    let db = Database::connect(&central_config.central.database_url).await?;
    let password = admin(&db, args.admin_password.as_deref()).await?;

    // The sites: register each at the first run and write its files.
    let mut site_configs = Vec::new();
    for (i, (name, scripts)) in files::SITES.iter().enumerate() {
        let site_dir = dir.join(name);
        let site_file = site_dir.join("site.toml");
        if !site_file.exists() {
            let site = SiteName::parse(name)?;
            let token = match db.sites().add(&site).await {
                Ok(t) => t,
                Err(e) => anyhow::bail!(
                    "{name} is registered at this demo's central but its site.toml is gone ({e}); \
                     start over with an empty --data-dir"
                ),
            };
            let text = files::site_toml(
                name,
                link_port,
                token.as_str(),
                port(1 + i as u16),
                erp_port,
                scripts,
            );
            write_if_absent(&site_file, &text)?;
        }
        for (_, file, _, source) in scripts.iter() {
            write_if_absent(&site_dir.join("scripts").join(file), source)?;
        }
        let mut config = SiteConfig::load(&site_file)?;
        for s in &mut config.scripts {
            s.interval_ms = s.interval_ms.map(|ms| scaled(ms, args.speed));
        }
        for e in config.external_systems.values_mut() {
            scale_retry(&mut e.retry, args.speed);
        }
        for d in config.databases.values_mut() {
            scale_retry(&mut d.retry, args.speed);
        }
        site_configs.push((name, config));
    }
    db.pool().close().await;

    // The simulated outside world first, so the sites find it.
    let erp_listener = bind(
        SocketAddr::from(([127, 0, 0, 1], erp_port)),
        "the simulated ERP",
        moved,
    )
    .await?;
    let smtp_listener = bind(
        SocketAddr::from(([127, 0, 0, 1], smtp_port)),
        "the SMTP sink",
        moved,
    )
    .await?;
    let central = Central::build(central_config).await.map_err(|e| {
        let text = format!("{e:#}");
        if text.contains("binding the HTTP API") {
            e.context(format!(
                "the web UI's port {http} is taken; pass --http ADDR (e.g. --http 127.0.0.1:8090)"
            ))
        } else if text.contains("binding the site link") {
            e.context(format!(
                "the site link's port {link_port} is taken; {moved}"
            ))
        } else {
            e
        }
    })?;
    let mut sites = Vec::new();
    for (name, config) in site_configs {
        let admin = config.admin.bind;
        let site = Site::build(config).await.map_err(|e| {
            if format!("{e:#}").contains("bind") {
                e.context(format!(
                    "{name}'s admin API port {} is taken; {moved}",
                    admin.port()
                ))
            } else {
                e
            }
        })?;
        sites.push((name, site));
    }

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(erp::serve(erp_listener, args.speed, cancel.clone()));
    tasks.spawn(smtp_sink::serve(
        smtp_listener,
        dir.join("mail"),
        cancel.clone(),
    ));
    let http_addr = central.http_addr();
    tasks.spawn(central.run(cancel.clone()));
    let mut admin_urls = Vec::new();
    for (name, site) in sites {
        admin_urls.push((name, format!("http://{}/", site.admin_addr())));
        tasks.spawn(site.run(cancel.clone()));
    }

    println!();
    println!(
        "sitelink demo is running (speed {}×). Ctrl-C stops it; running it again resumes.",
        args.speed
    );
    println!();
    println!("  web UI       http://{http_addr}/");
    match &password {
        Some(p) => println!("  login        admin / {p}   (shown once; --admin-password sets another)"),
        None => println!("  login        admin (password as printed at the first run; --admin-password resets it)"),
    }
    for (name, url) in &admin_urls {
        println!("  {name:<12} {url}   (site admin API)");
    }
    println!("  ERP          http://127.0.0.1:{erp_port}/  (curl -X POST http://127.0.0.1:{erp_port}/control/down, /up, /auto)");
    println!("  files        {}", dir.display());
    println!("               central.toml, plant-*/site.toml, plant-*/scripts/*.rhai (edit a script: it reloads)");
    println!("  mail         {}", dir.join("mail").display());
    println!();

    tokio::spawn(crate::stop_on_signal(cancel.clone()));
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result {
            // One part failed: stop the others, then report it.
            cancel.cancel();
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            println!("sitelink demo stopped.");
            Ok(())
        }
    }
}

/// User `admin`: created at the first run (with `given` or a generated
/// password, returned to be printed once); with `given` later, its
/// password is reset.
async fn admin(db: &Database, given: Option<&str>) -> anyhow::Result<Option<String>> {
    let exists = db.users().credentials("admin").await?.is_some();
    match (exists, given) {
        (false, _) => {
            let password = given.map(str::to_owned).unwrap_or_else(|| {
                use rand::distr::{Alphanumeric, SampleString};
                Alphanumeric.sample_string(&mut rand::rng(), 16)
            });
            sitelink_central::authentication::add_user(db, "admin", &password, Role::Admin).await?;
            Ok(Some(password))
        }
        (true, Some(p)) => {
            sitelink_central::authentication::set_password(db, "admin", p).await?;
            Ok(Some(p.to_owned()))
        }
        (true, None) => Ok(None),
    }
}
