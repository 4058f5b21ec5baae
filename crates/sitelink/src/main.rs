//! `sitelink`: the one binary of SPEC §2 component 13 (Host). Thin: parse
//! the command line, start tracing, build the role (`site` or `central`),
//! run it until SIGTERM or SIGINT; `central site add|list|revoke` manage
//! the sites; `demo` runs a whole system in one process; `chaos` runs a
//! fault campaign and checks SPEC §6; `bench` runs benchmarks.

mod bench;
mod chaos;
mod demo;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sitelink_central::{
    configuration_database::{Database, Role},
    Central, CentralConfig,
};
use sitelink_commons::SiteName;
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
    /// Run the central role, or manage it (`central site add NAME`, ...).
    Central {
        #[arg(long, default_value = "central.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: Option<CentralCommand>,
    },
    /// A living system in one command: a central node, two sites, a
    /// simulated ERP, plant databases and an SMTP sink, on SQLite in a data
    /// directory (a second run resumes).
    Demo(demo::DemoArgs),
    /// A fault campaign against this build (SIGKILLs, pauses, link cuts,
    /// failing external systems, full disks) that checks every SPEC §6
    /// guarantee afterwards; prints a verdict and one JSON line.
    Chaos(chaos::ChaosArgs),
    /// Run a benchmark; the last line printed is one JSON object.
    Bench {
        #[command(subcommand)]
        name: bench::BenchName,
    },
}

#[derive(Subcommand)]
enum CentralCommand {
    /// Manage the sites allowed to connect.
    Site {
        #[command(subcommand)]
        action: SiteAction,
    },
    /// Manage operators (users, roles, API tokens).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add an operator. The password comes from --password or, better,
    /// the SITELINK_PASSWORD environment variable (not in shell history).
    Add {
        name: String,
        /// Admin, Deployment or Viewer.
        #[arg(long)]
        role: String,
        #[arg(long, env = "SITELINK_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Disable a user: their passwords and API tokens stop working at once.
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
    /// A user's bearer API tokens: issue, list, revoke.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Issue a token (shown only this once), named for listing and revoking.
    Issue {
        user: String,
        /// A name for the token (default: a random one).
        #[arg(long)]
        label: Option<String>,
    },
    /// List a user's tokens: name, created, last used (never the token).
    List { user: String },
    /// Revoke one token by its name: refused from the next request on.
    Revoke { user: String, label: String },
}

#[derive(Subcommand)]
enum SiteAction {
    /// Register a site and print its token (shown only this once).
    Add { name: String },
    /// List the registered sites.
    List,
    /// Revoke a site's token: its streams are refused from now on.
    Revoke { name: String },
}

fn main() -> std::process::ExitCode {
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    let cli = Cli::parse();
    // `RUST_LOG` as `level,target=level,…` (e.g. `info,sqlx=warn`); one
    // that does not parse is said and the default used.
    const DEFAULT_LOG: &str = "info,sqlx=warn";
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) => v.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={v:?} ignored ({e}); using {DEFAULT_LOG:?}");
            DEFAULT_LOG.parse().expect("the default log filter parses")
        }),
        Err(_) => DEFAULT_LOG.parse().expect("the default log filter parses"),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, without a backtrace: the
            // message names what was wrong.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        match cli.command {
            Command::Site { config } => run_site(config).await,
            Command::Central {
                config,
                command: None,
            } => run_central(config).await,
            Command::Central {
                config,
                command: Some(CentralCommand::Site { action }),
            } => manage_sites(config, action).await,
            Command::Central {
                config,
                command: Some(CentralCommand::User { action }),
            } => manage_users(config, action).await,
            Command::Bench { name } => bench::run(name).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Chaos(args) => chaos::run(args).await,
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

async fn run_central(config: PathBuf) -> anyhow::Result<()> {
    let central = Central::build(CentralConfig::load(&config)?).await?;
    // On stdout, for tools and tests that start central with port 0.
    println!("site link listening on {}", central.link_addr());
    println!("http listening on {}", central.http_addr());
    let cancel = CancellationToken::new();
    tokio::spawn(stop_on_signal(cancel.clone()));
    central.run(cancel).await
}

async fn manage_sites(config: PathBuf, action: SiteAction) -> anyhow::Result<()> {
    let config = CentralConfig::load(&config)?;
    let db = Database::connect(&config.central.database_url).await?;
    match action {
        SiteAction::Add { name } => {
            let name = SiteName::parse(&name)?;
            let token = db.sites().add(&name).await?;
            eprintln!("site {name} added; put this token in its site.toml under [central] (it is not shown again):");
            println!("{}", token.as_str());
        }
        SiteAction::List => {
            println!(
                "{:<24} {:<8} {:>12} {:>12}  last seen (ms since epoch)",
                "site", "revoked", "cursor", "high_seq"
            );
            for s in db.sites().list().await? {
                let seen = s.last_seen_ms.map_or("never".to_owned(), |t| t.to_string());
                println!(
                    "{:<24} {:<8} {:>12} {:>12}  {seen}",
                    s.name, s.revoked, s.reconcile_cursor, s.high_seq
                );
            }
        }
        SiteAction::Revoke { name } => {
            db.sites().revoke(&name).await?;
            println!("site {name} revoked");
        }
    }
    Ok(())
}

async fn manage_users(config: PathBuf, action: UserAction) -> anyhow::Result<()> {
    let config = CentralConfig::load(&config)?;
    let db = Database::connect(&config.central.database_url).await?;
    match action {
        UserAction::Add {
            name,
            role,
            password,
        } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            sitelink_central::authentication::add_user(&db, &name, &password, role).await?;
            println!("user {name} added with role {}", role.as_str());
        }
        UserAction::Disable { name } => {
            db.users().set_disabled(&name, true).await?;
            println!("user {name} disabled");
        }
        UserAction::Enable { name } => {
            db.users().set_disabled(&name, false).await?;
            println!("user {name} enabled");
        }
        UserAction::Token {
            action: TokenAction::Issue { user, label },
        } => {
            let (token, label) = db.users().issue_token(&user, label.as_deref()).await?;
            eprintln!("API token {label} for {user} (send it as `Authorization: Bearer …`; it is not shown again):");
            println!("{token}");
        }
        UserAction::Token {
            action: TokenAction::List { user },
        } => {
            println!("{:<24} {:<22} last used", "token", "created");
            for t in db.users().tokens(&user).await? {
                let used = t.last_used_at_utc.unwrap_or_else(|| "never".into());
                println!("{:<24} {:<22} {used}", t.name, t.created_at_utc);
            }
        }
        UserAction::Token {
            action: TokenAction::Revoke { user, label },
        } => {
            db.users().revoke_token(&user, &label).await?;
            println!("token {label} of {user} revoked");
        }
    }
    Ok(())
}

pub(crate) async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received; shutting down");
    cancel.cancel();
}
