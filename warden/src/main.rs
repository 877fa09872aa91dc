//! The `warden` binary. `warden --bootstrap FILE` runs the agent: it loads the bootstrap file,
//! opens the state directory, connects to NATS and runs the actor tree until SIGINT or SIGTERM.
//! `warden launch --bootstrap FILE` runs the launcher, which runs the agent as its child and
//! switches it to a new binary on a self-upgrade.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use warden::actors::access::AccessParts;
use warden::actors::renewal::RenewalParts;
use warden::actors::{self, WardenParts};
use warden::bootstrap::{Bootstrap, SecureBroker};
use warden::credentials;
use warden::store::TaskStore;
use warden_actors::clock::SharedClock;
use warden_actors::{clock, entropy, Backoff, BackoffConfig};
use warden_bus::transport::nats::NatsBus;
use warden_bus::transport::swappable::SwappableBus;
use warden_bus::{Bus, SigningKey};

/// The Warden node agent.
#[derive(Debug, Parser)]
#[command(version = warden_version(), about, subcommand_negates_reqs = true)]
struct Args {
    /// Bootstrap file written by `wardenctl node add`.
    #[arg(long, env = "WARDEN_BOOTSTRAP", required = true)]
    bootstrap: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the launcher: the process to give a service manager. It runs the agent as its child,
    /// restarts it after a crash and carries out self-upgrades with rollback.
    Launch {
        /// Bootstrap file written by `wardenctl node add`.
        #[arg(long, env = "WARDEN_BOOTSTRAP")]
        bootstrap: PathBuf,
        /// Log format of the launcher and the agent: text or json.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Process id of a running agent to adopt; set by the launcher when it re-executes
        /// itself from a new binary.
        #[arg(long, hide = true)]
        adopt_pid: Option<i32>,
        /// Seconds the agent has to exit after SIGTERM or SIGINT before the launcher sends
        /// SIGKILL, 1 to 3600; keep it below the service manager's own stop timeout.
        #[arg(long, env = warden::launcher::STOP_TIMEOUT_VARIABLE, default_value_t = warden::launcher::STOP_TIMEOUT_DEFAULT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
        stop_timeout_secs: u64,
    },
}

fn warden_version() -> &'static str {
    Box::leak(warden::version().into_boxed_str())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Launch {
        bootstrap,
        log_format,
        adopt_pid,
        stop_timeout_secs,
    }) = args.command
    {
        init_tracing(&log_format);
        let options = warden::launcher::LaunchOptions {
            bootstrap,
            log_format,
            adopt_pid,
            stop_timeout: std::time::Duration::from_secs(stop_timeout_secs),
        };
        let status = warden::launcher::run(&options)?;
        std::process::exit(status);
    }
    init_tracing(&args.log_format);
    // The launcher blocks SIGTERM and SIGINT to read them from a signalfd, and a child
    // inherits that mask. The agent unblocks them before any thread starts.
    let mut stop_signals = nix::sys::signal::SigSet::empty();
    stop_signals.add(nix::sys::signal::Signal::SIGTERM);
    stop_signals.add(nix::sys::signal::Signal::SIGINT);
    stop_signals
        .thread_unblock()
        .context("failed to unblock SIGTERM and SIGINT")?;
    // A build for the self-upgrade tests that must fail its trial; normal builds lack it.
    if let Some(reason) = option_env!("WARDEN_BUILD_BROKEN") {
        anyhow::bail!("this Warden build was made to fail at start: {reason}");
    }
    let bootstrap_path = args
        .bootstrap
        .context("--bootstrap is required; pass the file written by `wardenctl node add`")?;
    let under_launcher = watch_launcher();

    let bootstrap = Bootstrap::load(&bootstrap_path)?;
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
    if let Some(definition) = bootstrap
        .components
        .iter()
        .find(|definition| definition.user.is_some())
    {
        anyhow::ensure!(
            nix::unistd::geteuid().is_root(),
            "[components.{}] sets user, which needs the Warden to run as root; run it as root or remove the field",
            definition.component
        );
        warden::components::ownership::open_state_dir(&bootstrap.state_dir)
            .map_err(anyhow::Error::msg)?;
    }
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
        version = %warden::version(),
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
        // The firewall comes first: no Iggy port may be open to a source no rule allows, not
        // even while the Warden connects.
        let access = match bootstrap.access.clone() {
            Some(firewall) => {
                let (core, listing) = warden::access::start(&store, &firewall, clock.now())
                    .await
                    .map_err(|reason| anyhow::anyhow!("cannot put the access rules in place: {reason}; the Warden does not start without them, because the Iggy ports would be open. Fix nft, or remove the [access] table from the bootstrap file"))?;
                tracing::info!(
                    node_id = %bootstrap.node,
                    access_version = core.version(),
                    open = core.applied().map_or(0, |set| set.open.len()),
                    table = %firewall.table(),
                    "access rules in place"
                );
                Some(AccessParts {
                    version: Arc::new(AtomicU64::new(core.version())),
                    core,
                    listing,
                    firewall,
                    store: store.clone(),
                    clock: clock.clone(),
                    node: bootstrap.node.clone(),
                })
            }
            None => None,
        };
        let connected = match bootstrap.secure.clone() {
            Some(secure) => {
                tokio::select! {
                    connected = connect_secure(&bootstrap, &secure, &node_key, &clock) => connected?,
                    () = shutdown_signal() => return Ok(()),
                }
            }
            None => {
                tokio::select! {
                    connected = connect_plain(&bootstrap, &node_key, &clock) => connected?,
                    () = shutdown_signal() => return Ok(()),
                }
            }
        };
        let (bus, renewal): (Arc<dyn Bus>, _) = match connected {
            Connected::Plain(bus) => (Arc::new(bus), None),
            Connected::Secure(bus, parts) => (bus, Some(parts)),
        };
        let _supervisor = actors::start(WardenParts { bootstrap, bus, store, clock, failpoint, node_key, renewal, under_launcher, access });
        shutdown_signal().await;
        tracing::info!("warden stopping");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// The broker connection the actors use.
enum Connected {
    /// NATS without TLS or authentication (no CA in the bootstrap file).
    Plain(NatsBus),
    /// TLS as the node user, with what renewal needs.
    Secure(Arc<dyn Bus>, RenewalParts),
}

/// Connects without TLS and sends the enrollment request on the report stream.
async fn connect_plain(
    bootstrap: &Bootstrap,
    node_key: &SigningKey,
    clock: &SharedClock,
) -> anyhow::Result<Connected> {
    tracing::warn!("the bootstrap file has no CA certificate: connecting to NATS without TLS or authentication, for development only");
    let bus = connect_with_retry(&bootstrap.nats_url, &bootstrap.node.to_string()).await;
    match &bootstrap.enrollment_token {
        Some(token) => {
            let enrollment = warden::enroll::request(&bootstrap.deployment, &bootstrap.node, token, node_key, clock.now())?;
            send_enrollment(&bus, &enrollment).await;
            tracing::info!(node_key_id = %node_key.id(), "enrollment request sent");
        }
        None => tracing::warn!("the bootstrap file has no enrollment token; the control plane will ignore this node's reports until it is enrolled"),
    }
    Ok(Connected::Plain(bus))
}

/// Enrolls if the node has no usable credential yet, then connects over TLS as the node user.
async fn connect_secure(
    bootstrap: &Bootstrap,
    secure: &SecureBroker,
    node_key: &SigningKey,
    clock: &SharedClock,
) -> anyhow::Result<Connected> {
    let ca_file = credentials::write_ca(&bootstrap.state_dir, &secure.ca_certificate)?;
    let config = BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap_or_else(|_| unreachable!("500 ms base is below the 30 s cap"));
    let mut backoff = Backoff::new(config);
    let mut rng = entropy::from_os();

    // A stored credential that is still good for a while is used as it is; renewal takes over.
    let usable = credentials::load(&bootstrap.state_dir)?.filter(|credential| {
        credential.expires_at > clock.now().saturating_add(Duration::from_secs(60))
    });
    let credential = match usable {
        Some(credential) => credential,
        None => loop {
            let (Some(enrollment), Some(token)) = (&secure.enrollment, &bootstrap.enrollment_token)
            else {
                anyhow::bail!(
                    "the node has no usable credential and the bootstrap file no enrollment user; get a new bootstrap file with `wardenctl node reenroll`"
                );
            };
            let request = warden::enroll::request(
                &bootstrap.deployment,
                &bootstrap.node,
                token,
                node_key,
                clock.now(),
            )?;
            match credentials::enroll(
                &bootstrap.nats_url,
                &ca_file,
                enrollment,
                &request,
                &bootstrap.deployment,
                &bootstrap.node,
                clock.now(),
            )
            .await
            {
                Ok(credential) => {
                    credentials::store(&bootstrap.state_dir, &credential)?;
                    tracing::info!(node_key_id = %node_key.id(), expires_at = %credential.expires_at, "enrolled; node credential stored");
                    break credential;
                }
                Err(error) => {
                    let delay = backoff.next_delay(entropy::unit_interval(&mut rng));
                    tracing::warn!(error = %error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "enrollment failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        },
    };

    backoff.reset();
    let bus = loop {
        match credentials::connect_node(
            &bootstrap.nats_url,
            &ca_file,
            &credential,
            node_key,
            &bootstrap.deployment,
            &bootstrap.node,
        )
        .await
        {
            Ok(bus) => break bus,
            Err(error) => {
                let delay = backoff.next_delay(entropy::unit_interval(&mut rng));
                tracing::warn!(error = %error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "failed to connect as the node user; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    };
    tracing::info!(nats_url = %bootstrap.nats_url, "connected to NATS over TLS as the node user");
    let bus = Arc::new(SwappableBus::new(Arc::new(bus)));
    let parts = RenewalParts {
        bus: bus.clone(),
        node_key: node_key.clone(),
        deployment: bootstrap.deployment.clone(),
        node: bootstrap.node.clone(),
        state_dir: bootstrap.state_dir.clone(),
        ca_file,
        url: bootstrap.nats_url.clone(),
        clock: clock.clone(),
    };
    Ok(Connected::Secure(bus, parts))
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

/// Tells whether a launcher started this process. If so, a thread ends the agent once the
/// launcher is gone, so a killed launcher leaves no agent behind for its successor to double.
fn watch_launcher() -> bool {
    let Some(launcher) = std::env::var(warden::self_upgrade::LAUNCHER_PID_ENV)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return false;
    };
    // Only the launcher sets the variable, so another parent means it died during the start.
    if nix::unistd::getppid().as_raw() != launcher {
        tracing::error!(
            launcher_pid = launcher,
            "the launcher is gone; the agent stops"
        );
        std::process::exit(1);
    }
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if nix::unistd::getppid().as_raw() != launcher {
            tracing::error!(
                launcher_pid = launcher,
                "the launcher is gone; the agent stops"
            );
            std::process::exit(1);
        }
    });
    true
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
