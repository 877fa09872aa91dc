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
    store.load_clock()?;
    let stored_trust = store.load_trust()?;
    let clock = clock::system();
    let (trust, changed) = warden::core::starting_trust(
        &bootstrap.root_key,
        &bootstrap.trust_document,
        stored_trust.as_ref(),
        clock.now(),
        bootstrap.clock_skew,
    )
    .context("the trust document is not usable; get a current bootstrap file from `wardenctl node add` or ask for an update_trust task")?;
    // A configuration file whose version cannot be read would stop every task; say so now.
    warden::executor::read_config_version(&bootstrap.iggy_config_path).with_context(|| {
        format!(
            "fix or remove the first line of {}, which Warden writes as its version header",
            bootstrap.iggy_config_path.display()
        )
    })?;
    let failpoint = std::env::var("WARDEN_FAILPOINT").ok();
    let (node_key, created) =
        warden::identity::load_or_create(&bootstrap.state_dir, &mut entropy::from_os())?;
    if created {
        tracing::info!(node_key_id = %node_key.id(), "generated the node key");
    }

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
        if let Some(signed) = changed {
            store.persist_trust(&signed).await?;
            tracing::info!(
                trust_version = trust.version,
                "stored the trust document from the bootstrap file"
            );
        }
        let node = bootstrap.node.to_string();
        let connect = connect_with_retry(&bootstrap.nats_url, &node);
        let bus = tokio::select! {
            bus = connect => bus,
            () = shutdown_signal() => return Ok(()),
        };
                if let Some(token) = &bootstrap.enrollment_token {
            let enrollment = warden::enroll::request(&bootstrap.deployment, &bootstrap.node, token, &node_key, clock.now())?;
            tokio::select! {
                () = send_enrollment(&bus, &enrollment) => {}
                () = shutdown_signal() => return Ok(()),
            }
            tracing::info!(node_key_id = %node_key.id(), "enrollment request sent");
        } else {
            tracing::warn!("the bootstrap file has no enrollment token; the control plane will ignore this node's reports until it is enrolled");
        }
        let _supervisor = actors::start(WardenParts {
            bootstrap,
            bus: Arc::new(bus),
            store,
            clock,
                        failpoint,
            node_key,
        });
        shutdown_signal().await;
        tracing::info!("warden stopping");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// Stores the enrollment request, retrying with back-off until the broker accepts it.
async fn send_enrollment(bus: &NatsBus, enrollment: &warden::enroll::Enrollment) {
    let config = BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap_or_else(|_| unreachable!("500 ms base is below the 30 s cap"));
    let mut backoff = Backoff::new(config);
    let mut rng = entropy::from_os();
    loop {
        let payload = enrollment.bytes.clone().into();
        match warden_bus::Bus::persist(
            bus,
            &enrollment.subject,
            payload,
            Some(&enrollment.dedup_id),
        )
        .await
        {
            Ok(_) => return,
            Err(error) => {
                let delay = backoff.next_delay(entropy::unit_interval(&mut rng));
                tracing::warn!(error = %error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "failed to send the enrollment request; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
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
