//! `sitelink`: the one binary of SPEC §2 component 13 (Host). Thin: parse
//! the command line, start tracing, build the role, run it until SIGTERM or
//! SIGINT.

mod bench;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sitelink_site::{Site, SiteConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sitelink",
    version,
    about = "Tracked, store-and-forward calls for remote industrial sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the site role: scripts, store-and-forward, local admin API.
    Site {
        #[arg(long, default_value = "site.toml")]
        config: PathBuf,
    },
    /// Run a benchmark; the last line printed is one JSON object.
    Bench {
        #[command(subcommand)]
        name: bench::BenchName,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        match cli.command {
            Command::Site { config } => run_site(config).await,
            Command::Bench { name } => bench::run(name).await,
        }
    })
}

async fn run_site(config: PathBuf) -> anyhow::Result<()> {
    let config = SiteConfig::load(&config)?;
    let site = Site::build(config).await?;
    // Printed on stdout so that tools (and tests) that start the binary
    // with port 0 learn where the admin API is.
    println!("admin listening on {}", site.admin_addr());
    let cancel = CancellationToken::new();
    tokio::spawn(stop_on_signal(cancel.clone()));
    site.run(cancel).await
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received; shutting down");
    cancel.cancel();
}
