//! The `warden` binary: loads the bootstrap file, opens the state directory, connects to NATS
//! and runs the actor tree until SIGINT or SIGTERM.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use warden::actors::{self, WardenParts};
use warden::bootstrap::Bootstrap;
use warden::store::TaskStore;
use warden_actors::{clock, entropy, Backoff, BackoffConfig};
use warden_bus::transport::nats::NatsBus;

/// The Warden node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Bootstrap file written by `wardenctl node add`.
    #[arg(long, env = "WARDEN_BOOTSTRAP")]
    bootstrap: PathBuf,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);

    let bootstrap = Bootstrap::load(&args.bootstrap)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&bootstrap.state_dir)
        .with_context(|| {
            format!(
                "failed to create state directory {}",
                bootstrap.state_dir.display()
            )
        })?;
    let store = TaskStore::open(&bootstrap.state_dir.join("db"))?;
    // Fail fast on a damaged store instead of restarting the task runner forever.
    store.load()?;
    let failpoint = std::env::var("WARDEN_FAILPOINT").ok();

    tracing::info!(
        deployment_id = %bootstrap.deployment,
        node_id = %bootstrap.node,
        nats_url = %bootstrap.nats_url,
        state_dir = %bootstrap.state_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "warden starting"
    );
    let system = actix::System::new();
    system.block_on(async move {
        let node = bootstrap.node.to_string();
        let connect = connect_with_retry(&bootstrap.nats_url, &node);
        let bus = tokio::select! {
            bus = connect => bus,
            () = shutdown_signal() => return Ok(()),
        };
        let _supervisor = actors::start(WardenParts {
            bootstrap,
            bus: Arc::new(bus),
            store,
            clock: clock::system(),
            failpoint,
        });
        shutdown_signal().await;
        tracing::info!("warden stopping");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// Connects to NATS, retrying with back-off until it succeeds.
async fn connect_with_retry(url: &str, node: &str) -> NatsBus {
    let config = BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap_or_else(|_| unreachable!("500 ms base is below the 30 s cap"));
    let mut backoff = Backoff::new(config);
    let mut rng = entropy::from_os();
    loop {
        match NatsBus::connect(url, &format!("warden-{node}")).await {
            Ok(bus) => {
                tracing::info!(nats_url = %url, "connected to NATS");
                return bus;
            }
            Err(error) => {
                let delay = backoff.next_delay(entropy::unit_interval(&mut rng));
                tracing::warn!(error = %error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "failed to connect to NATS; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::terminate(),
    ) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(error = %error, "failed to listen for SIGTERM; only SIGINT stops the warden");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
