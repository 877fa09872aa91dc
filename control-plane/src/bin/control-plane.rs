//! The `control-plane` binary: one stateless replica of the Warden control plane.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use warden_actors::{clock, entropy, Backoff, BackoffConfig};
use warden_bus::transport::nats::NatsBus;
use warden_control_plane::api::{self, ApiState};
use warden_control_plane::core::health::UNREACHABLE_AFTER_DEFAULT;
use warden_control_plane::service::{
    ControlPlane, Settings, EXPIRY_GRACE_DEFAULT, TASK_ACK_WAIT_DEFAULT,
};
use warden_control_plane::{actors, keys};

/// One replica of the Warden control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// NATS server URL to connect to.
    #[arg(long, env = "WARDEN_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// NATS URL written into node bootstrap files; defaults to --nats-url.
    #[arg(long)]
    advertise_nats_url: Option<String>,
    /// Address and port of the operator HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for the task key when --task-key is not given.
    #[arg(long, default_value = "control-plane-state")]
    state_dir: PathBuf,
    /// Task-signing key file (hex seed, mode 0600); created if absent. Replicas share it.
    #[arg(long)]
    task_key: Option<PathBuf>,
    /// Seconds without heartbeats after which a node is unreachable.
    #[arg(long, default_value_t = UNREACHABLE_AFTER_DEFAULT.as_secs())]
    unreachable_after_secs: u64,
    /// Milliseconds between sweeps (node health, unpublished tasks, expiry).
    #[arg(long, default_value_t = 5000)]
    sweep_interval_ms: u64,
    /// Seconds after a task's expiry before it is marked expired without an outcome.
    #[arg(long, default_value_t = EXPIRY_GRACE_DEFAULT.as_secs())]
    expiry_grace_secs: u64,
    /// Seconds a node has to acknowledge a task before it is redelivered (for new nodes).
    #[arg(long, default_value_t = TASK_ACK_WAIT_DEFAULT.as_secs())]
    task_ack_wait_secs: u64,
    /// Write the admin API key to this file (mode 0600) instead of printing it, when this
    /// replica creates it.
    #[arg(long)]
    admin_key_out: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    if args.unreachable_after_secs == 0 {
        anyhow::bail!("--unreachable-after-secs must be above 0");
    }
    if !(1..=3600).contains(&args.task_ack_wait_secs) {
        anyhow::bail!(
            "--task-ack-wait-secs {} is outside 1 to 3600",
            args.task_ack_wait_secs
        );
    }
    if !(100..=600_000).contains(&args.sweep_interval_ms) {
        anyhow::bail!(
            "--sweep-interval-ms {} is outside 100 to 600000",
            args.sweep_interval_ms
        );
    }

    let mut rng = entropy::from_os();
    let key_path = args
        .task_key
        .clone()
        .unwrap_or_else(|| args.state_dir.join("task-key"));
    let (signer, created) = keys::load_or_create_task_key(&key_path, &mut rng)?;
    if created {
        tracing::info!(key_id = %signer.id(), path = %key_path.display(), "generated the task-signing key");
    }
    let settings = Settings {
        advertise_nats_url: args
            .advertise_nats_url
            .clone()
            .unwrap_or_else(|| args.nats_url.clone()),
        unreachable_after: Duration::from_secs(args.unreachable_after_secs),
        expiry_grace: Duration::from_secs(args.expiry_grace_secs),
        task_ack_wait: Duration::from_secs(args.task_ack_wait_secs),
        failpoint: std::env::var("WARDEN_FAILPOINT").ok(),
    };

    let system = actix::System::new();
    system.block_on(async move {
        let bus = tokio::select! {
            bus = connect_with_retry(&args.nats_url) => bus,
            () = shutdown_signal() => return Ok(()),
        };
        let control_plane = ControlPlane::new(
            Arc::new(bus),
            signer.clone(),
            clock::system(),
            rng,
            settings,
        );
        control_plane
            .setup()
            .await
            .context("failed to create the JetStream streams and buckets")?;

        if let Some(key) = control_plane.ensure_admin_key().await? {
            announce_admin_key(&key, args.admin_key_out.as_deref())?;
        }
        let hash_hex = control_plane.admin_key_hash().await?;
        let admin_key_hash: [u8; 32] = hex::decode(hash_hex.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .context("the stored admin API key hash is not 64 hex characters")?;

        let _supervisor = actors::start(
            control_plane.clone(),
            Duration::from_millis(args.sweep_interval_ms),
        );
        let state = actix_web::web::Data::new(ApiState {
            control_plane,
            admin_key_hash,
        });
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(state.clone())
                .configure(api::configure)
        })
        .workers(2)
        .disable_signals()
        .bind(args.listen)
        .with_context(|| {
            format!(
                "failed to listen on {}; is another process using the port?",
                args.listen
            )
        })?
        .run();
        let handle = server.handle();
        tracing::info!(listen = %args.listen, task_key_id = %signer.id(), "control plane ready");
        let server_task = tokio::spawn(server);
        shutdown_signal().await;
        tracing::info!("control plane stopping");
        handle.stop(true).await;
        let _ = server_task.await;
        Ok::<(), anyhow::Error>(())
    })
}

fn announce_admin_key(key: &str, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!("failed to write the admin API key to {}", path.display())
                })?;
            file.write_all(format!("{key}\n").as_bytes())?;
            file.sync_all()?;
            println!(
                "admin API key created and written to {} (mode 0600); it is not shown again",
                path.display()
            );
        }
        None => println!("admin API key (shown once; store it now): {key}"),
    }
    Ok(())
}

async fn connect_with_retry(url: &str) -> NatsBus {
    let config = BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap_or_else(|_| unreachable!("500 ms base is below the 30 s cap"));
    let mut backoff = Backoff::new(config);
    let mut rng = entropy::from_os();
    loop {
        match NatsBus::connect(url, "control-plane").await {
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
            tracing::error!(error = %error, "failed to listen for SIGTERM; only SIGINT stops the control plane");
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
