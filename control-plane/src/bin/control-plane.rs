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
use warden_bus::transport::nats::{NatsBus, NatsConnectConfig};
use warden_control_plane::api::{self, ApiState};
use warden_control_plane::broker::Broker;
use warden_control_plane::ca::SecretsKey;
use warden_control_plane::core::certificates as certs;
use warden_control_plane::core::health::UNREACHABLE_AFTER_DEFAULT;
use warden_control_plane::releases::ReleaseStore;
use warden_control_plane::service::{
    check_task_retention, CertificateSettings, ControlPlane, Settings, DUPLICATE_WINDOW_DEFAULT,
    ENROLLMENT_TTL_DEFAULT, EXPIRY_GRACE_DEFAULT, NODE_JWT_TTL_DEFAULT, TASK_ACK_WAIT_DEFAULT,
    TASK_RETENTION_DEFAULT,
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
    /// Task-signing key file (hex seed, mode 0600) from `wardenctl key create`. Replicas
    /// share it.
    #[arg(long)]
    task_key: PathBuf,
    /// Root-signed trust document from `wardenctl trust sign`; it must list the task key. It
    /// becomes the shared current document unless a newer one is already stored.
    #[arg(long)]
    trust_document: PathBuf,
    /// Seconds without heartbeats after which a node is unreachable.
    #[arg(long, default_value_t = UNREACHABLE_AFTER_DEFAULT.as_secs())]
    unreachable_after_secs: u64,
    /// Milliseconds between sweeps (node health, unpublished tasks, expiry).
    #[arg(long, default_value_t = 5000)]
    sweep_interval_ms: u64,
    /// Seconds after a task's expiry before it is marked expired without an outcome.
    #[arg(long, default_value_t = EXPIRY_GRACE_DEFAULT.as_secs())]
    expiry_grace_secs: u64,
    /// Seconds the broker keeps a task record after its last change; listings and the sweep
    /// read every record kept. From 86400 to 31622400, and above 3600 plus the expiry grace
    /// plus the sweep interval. Replicas must share it and the expiry grace: the last replica
    /// to start sets the bucket's retention.
    #[arg(long, default_value_t = TASK_RETENTION_DEFAULT.as_secs())]
    task_retention_secs: u64,
    /// Seconds a node has to acknowledge a task before it is redelivered (for new nodes).
    #[arg(long, default_value_t = TASK_ACK_WAIT_DEFAULT.as_secs())]
    task_ack_wait_secs: u64,
    /// Seconds in which the broker drops a repeated task or report id (when the streams are
    /// created).
    #[arg(long, default_value_t = DUPLICATE_WINDOW_DEFAULT.as_secs())]
    duplicate_window_secs: u64,
    /// Seconds a new node's enrollment token stays valid.
    #[arg(long, default_value_t = ENROLLMENT_TTL_DEFAULT.as_secs())]
    enrollment_ttl_secs: u64,
    /// Broker set-up directory from `wardenctl broker init`. With it the control plane connects
    /// over TLS as its own user, mints node credentials and pushes revocations; without it NATS is
    /// used without TLS or authentication, for development only.
    #[arg(long)]
    broker_dir: Option<PathBuf>,
    /// Seconds a node's user JWT stays valid; nodes renew it before it expires.
    #[arg(long, default_value_t = NODE_JWT_TTL_DEFAULT.as_secs())]
    node_jwt_ttl_secs: u64,
    /// Write the admin API key to this file (mode 0600) instead of printing it, when this
    /// replica creates it.
    #[arg(long)]
    admin_key_out: Option<PathBuf>,
    /// Directory where this replica caches released artifacts to serve chunks to nodes. It is
    /// created with mode 0700 if missing; an existing one must belong to this user and be
    /// writable by no other user.
    #[arg(long, default_value = "/var/cache/warden-control-plane")]
    artifact_cache_dir: PathBuf,
    /// Key file (64 hex characters, mode 0600, from `wardenctl key create`) that seals the
    /// deployment CA keys at rest. Replicas share it. Without it nodes get no TLS certificates.
    #[arg(long)]
    secrets_key: Option<PathBuf>,
    /// Seconds a node TLS certificate stays valid.
    #[arg(long, default_value_t = certs::LIFETIME_DEFAULT.as_secs())]
    certificate_lifetime_secs: u64,
    /// Certificates one node may receive per rate window.
    #[arg(long, default_value_t = certs::RATE_MAX_DEFAULT)]
    certificate_rate_max: u32,
    /// Length of the certificate rate window in seconds.
    #[arg(long, default_value_t = certs::RATE_WINDOW_DEFAULT.as_secs())]
    certificate_rate_window_secs: u64,
    /// Remaining validity in seconds under which `certificate_expiring` is raised; keep it
    /// below 30 % of the lifetime, since nodes renew at 50 to 70 %.
    #[arg(long, default_value_t = certs::EXPIRING_WITHIN_DEFAULT.as_secs())]
    certificate_expiring_secs: u64,
    /// Failed renewals in a row that raise `cert_refresh_failed`.
    #[arg(long, default_value_t = certs::REFRESH_FAILURES_DEFAULT)]
    certificate_refresh_failures: u32,
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
    if !(10..=30 * 86_400).contains(&args.node_jwt_ttl_secs) {
        anyhow::bail!(
            "--node-jwt-ttl-secs {} is outside 10 to 2592000",
            args.node_jwt_ttl_secs
        );
    }
    if !(1..=7 * 86_400).contains(&args.enrollment_ttl_secs) {
        anyhow::bail!(
            "--enrollment-ttl-secs {} is outside 1 to 604800",
            args.enrollment_ttl_secs
        );
    }
    if !(1..=86_400).contains(&args.duplicate_window_secs) {
        anyhow::bail!(
            "--duplicate-window-secs {} is outside 1 to 86400",
            args.duplicate_window_secs
        );
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

    check_task_retention(
        Duration::from_secs(args.task_retention_secs),
        Duration::from_secs(args.expiry_grace_secs),
        Duration::from_millis(args.sweep_interval_ms),
    )
    .map_err(|error| {
        anyhow::anyhow!(
            "--task-retention-secs {} with --expiry-grace-secs {} and --sweep-interval-ms {}: \
             {error}",
            args.task_retention_secs,
            args.expiry_grace_secs,
            args.sweep_interval_ms
        )
    })?;

    let rng = entropy::from_os();
    let signer = keys::load_task_key(&args.task_key)?;
    let trust_document = warden_control_plane::ctl::offline::read_trust(&args.trust_document)?;
    let settings = Settings {
        advertise_nats_url: args
            .advertise_nats_url
            .clone()
            .unwrap_or_else(|| args.nats_url.clone()),
        unreachable_after: Duration::from_secs(args.unreachable_after_secs),
        sweep_interval: Duration::from_millis(args.sweep_interval_ms),
        expiry_grace: Duration::from_secs(args.expiry_grace_secs),
        task_retention: Duration::from_secs(args.task_retention_secs),
        task_ack_wait: Duration::from_secs(args.task_ack_wait_secs),
        duplicate_window: Duration::from_secs(args.duplicate_window_secs),
        enrollment_ttl: Duration::from_secs(args.enrollment_ttl_secs),
        node_jwt_ttl: Duration::from_secs(args.node_jwt_ttl_secs),
        release_clock_skew: warden::core::CLOCK_SKEW_DEFAULT,
        failpoint: std::env::var("WARDEN_FAILPOINT").ok(),
        certificates: certificate_settings(&args)?,
    };
    let secrets = args
        .secrets_key
        .as_deref()
        .map(SecretsKey::load)
        .transpose()?;
    if secrets.is_none() {
        tracing::warn!("running without --secrets-key: nodes cannot get TLS certificates");
    }

    // Checked before connecting, so a bad cache directory is reported even while NATS is down.
    let cache_dir = warden_control_plane::releases::prepare_cache_dir(&args.artifact_cache_dir)?;

    let secure = args
        .broker_dir
        .as_deref()
        .map(|dir| secure_connections(dir, &args.nats_url))
        .transpose()?;
    let system = actix::System::new();
    system.block_on(async move {
        let bus = tokio::select! {
                        bus = connect_with_retry(&args.nats_url, secure.as_ref().map(|secure| &secure.control_plane)) => bus,
            () = shutdown_signal() => return Ok(()),
        };
        let releases = ReleaseStore::open(bus.client().clone(), cache_dir)
            .await
            .with_context(|| format!("failed to open the release store{JETSTREAM_HINT}"))?;
        let control_plane = ControlPlane::new(
            Arc::new(bus),
            signer.clone(),
            clock::system(),
            rng,
            settings,
        )
        .with_releases(releases)
        .with_secrets(secrets);
        let control_plane = match secure {
            Some(secure) => {
                // A separate system-account connection pushes account updates to the broker.
                let pusher = connect_with_retry(&args.nats_url, Some(&secure.system)).await;
                control_plane.with_broker(secure.broker, Some(pusher.client().clone()))
            }
            None => {
                tracing::warn!("running without --broker-dir: NATS without TLS or authentication, for development only");
                control_plane
            }
        };
        control_plane
            .setup()
            .await
            .with_context(|| format!("failed to create the JetStream streams and buckets{JETSTREAM_HINT}"))?;
        let trust = control_plane.setup_trust(&trust_document).await?;
        tracing::info!(trust_version = trust.version, task_key_id = %signer.id(), "trust document in place");
        control_plane.push_account().await.context("failed to push the account to the broker")?;

        // Open the key file before the key exists, so an unwritable path cannot lose the key.
        let key_file = args.admin_key_out.as_deref().map(open_key_file).transpose()?;
        match control_plane.ensure_admin_key().await? {
            Some(key) => announce_admin_key(&key, key_file)?,
            None => tracing::info!("the admin API key was created earlier; it is not shown again"),
        }
        let hash_hex = control_plane.admin_key_hash().await?;
        let admin_key_hash: [u8; 32] = hex::decode(hash_hex.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .context(
                "the stored admin API key hash (key admin_api_key_sha256 of bucket warden_control) \
                 is not 64 hex characters, so something other than the control plane wrote it; \
                 restore the broker's JetStream data from a backup, or delete that key so that \
                 the next start creates a new admin API key",
            )?;

        // Bind before starting the background actors, so a replica that cannot listen does
        // nothing at all.
        let state = actix_web::web::Data::new(ApiState { control_plane: control_plane.clone(), admin_key_hash });
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new().app_data(state.clone()).configure(api::configure)
        })
        .workers(2)
        .disable_signals()
        .bind(args.listen)
        .with_context(|| format!("failed to listen on {}; is another process using the port?", args.listen))?
        .run();
        let replica_id = control_plane.replica_id().to_owned();
        let _supervisor = actors::start(control_plane);
        let handle = server.handle();
        tracing::info!(listen = %args.listen, task_key_id = %signer.id(), replica_id, "control plane ready");
        let server_task = tokio::spawn(server);
        shutdown_signal().await;
        tracing::info!("control plane stopping");
        handle.stop(true).await;
        let _ = server_task.await;
        Ok::<(), anyhow::Error>(())
    })
}

struct KeyFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

fn open_key_file(path: &std::path::Path) -> anyhow::Result<KeyFile> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to open {} for the admin API key", path.display()))?;
    Ok(KeyFile {
        path: path.to_path_buf(),
        file,
    })
}

/// Appended to errors of the first JetStream requests, which fail with "jetstream unavailable"
/// when the broker cannot give the account its storage.
const JETSTREAM_HINT: &str = "; if the cause says \"jetstream unavailable\", nats-server runs \
    without JetStream or cannot reserve the account's file storage. Without max_file_store in \
    the jetstream block of nats.conf (set-ups written before wardenctl broker init had \
    --jetstream-storage), nats-server offers JetStream 75 % of the free disk space of its store \
    directory; add max_file_store at least as large as the account's reservation (16 GiB by \
    default)";

/// The control plane's broker connections in operator mode.
struct Secure {
    broker: Broker,
    control_plane: NatsConnectConfig,
    system: NatsConnectConfig,
}

fn secure_connections(dir: &std::path::Path, url: &str) -> anyhow::Result<Secure> {
    if !(url.starts_with("tls://") || url.starts_with("wss://")) {
        anyhow::bail!(
            "--nats-url {url:?} must start with tls:// or wss:// when --broker-dir is given"
        );
    }
    let broker = Broker::load(dir)?;
    let now = i64::try_from(clock::system().now().0 / 1000).unwrap_or(i64::MAX);
    let mut rng = entropy::from_os();
    let control_plane_user = broker.mint_control_plane(now, &mut rng)?;
    let system_user = broker.mint_system_user(now, &mut rng)?;
    let control_plane = NatsConnectConfig::new(vec![url.to_owned()], "control-plane")
        .with_credentials(control_plane_user.credentials()?)
        .with_ca_file(broker.ca_file());
    let system = NatsConnectConfig::new(vec![url.to_owned()], "control-plane-system")
        .with_credentials(system_user.credentials()?)
        .with_ca_file(broker.ca_file());
    Ok(Secure {
        broker,
        control_plane,
        system,
    })
}

fn announce_admin_key(key: &str, out: Option<KeyFile>) -> anyhow::Result<()> {
    match out {
        Some(KeyFile { path, mut file }) => {
            file.set_len(0)?;
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

async fn connect_with_retry(url: &str, config: Option<&NatsConnectConfig>) -> NatsBus {
    let backoff_config = BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap_or_else(|_| unreachable!("500 ms base is below the 30 s cap"));
    let mut backoff = Backoff::new(backoff_config);
    let mut rng = entropy::from_os();
    loop {
        let connected = match config {
            Some(config) => NatsBus::connect_with(config).await,
            None => NatsBus::connect(url, "control-plane").await,
        };
        match connected {
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

fn certificate_settings(args: &Args) -> anyhow::Result<CertificateSettings> {
    if !(2..=366 * 86_400).contains(&args.certificate_lifetime_secs) {
        anyhow::bail!(
            "--certificate-lifetime-secs {} is outside 2 to 31622400",
            args.certificate_lifetime_secs
        );
    }
    if args.certificate_rate_max == 0 || args.certificate_rate_window_secs == 0 {
        anyhow::bail!("--certificate-rate-max and --certificate-rate-window-secs must be above 0");
    }
    if args.certificate_expiring_secs >= args.certificate_lifetime_secs {
        anyhow::bail!(
            "--certificate-expiring-secs {} must be below --certificate-lifetime-secs {}",
            args.certificate_expiring_secs,
            args.certificate_lifetime_secs
        );
    }
    if args.certificate_refresh_failures == 0 {
        anyhow::bail!("--certificate-refresh-failures must be above 0");
    }
    Ok(CertificateSettings {
        lifetime: Duration::from_secs(args.certificate_lifetime_secs),
        rate: certs::RateLimit {
            max: args.certificate_rate_max,
            window: Duration::from_secs(args.certificate_rate_window_secs),
        },
        alerts: certs::AlertPolicy {
            expiring_within: Duration::from_secs(args.certificate_expiring_secs),
            refresh_failures: args.certificate_refresh_failures,
        },
    })
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
