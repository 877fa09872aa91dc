//! Keeps the node's TLS certificate current: runs the [`CertificateCore`] and carries out its
//! effects. It generates a fresh key and signing request per renewal, sends the request to the
//! control plane, installs what comes back, restarts the components that read the certificate
//! only at start, and starts or updates the Warden's own TLS listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use rand::RngCore;
use tokio::sync::oneshot;
use warden_actors::clock::SharedClock;
use warden_actors::entropy::{self, Entropy};
use warden_actors::{Backoff, BackoffConfig};
use warden_bus::messages::{CertificateReply, CertificateStatus, ComponentPhase};
use warden_bus::{Bus, DeploymentId, NodeId, SigningKey, UnixMillis};

use super::components::{Command, ComponentActor, GetSnapshot, Request};
use crate::certificates::{self, CertificateError};
use crate::core::certificate::{
    CertificateCore, CertificateEffect, CertificateRecord, Installation, Issued,
};
use crate::store::TaskStore;
use crate::tls::{signing_request, CertificateSlot, NodeTlsKey, TlsFiles, TlsListener, TlsName};

/// The certificate status for heartbeats, written by the certificate actor.
pub type CertificateBoard = Arc<Mutex<Option<CertificateStatus>>>;

/// Log one warning for every this many failed attempts in a row, after the first.
const FAILURE_LOG_EVERY: u32 = 10;
/// First delay before the listener tries to bind its address again.
pub const LISTENER_RETRY_BASE: Duration = Duration::from_secs(1);
/// Maximum delay between attempts to bind the listener's address.
pub const LISTENER_RETRY_MAX: Duration = Duration::from_secs(60);

/// Forces a renewal; the result arrives once the new certificate is installed or the attempt
/// failed. Its output names the new certificate's `not_after`, `bundle_version` and SHA-256.
#[derive(Message)]
#[rtype(result = "Result<BTreeMap<String, String>, String>")]
pub struct ForceRenewal;

/// The parts a [`CertificateActor`] is built from.
pub struct CertificateParts {
    /// The broker.
    pub bus: Arc<dyn Bus>,
    /// The node key, which signs the requests.
    pub node_key: SigningKey,
    /// This node's deployment.
    pub deployment: DeploymentId,
    /// This node.
    pub node: NodeId,
    /// Subject alternative names of the certificate.
    pub names: Vec<TlsName>,
    /// The store of the certificate record.
    pub store: TaskStore,
    /// Paths of the key, chain and bundle files.
    pub files: TlsFiles,
    /// The certificate the Warden's own listener presents.
    pub slot: Arc<CertificateSlot>,
    /// Address of the Warden's own listener, if it has one.
    pub listen: Option<SocketAddr>,
    /// Components to restart after each installation, because their configuration reads
    /// the managed certificate file and they load it only at start.
    pub restart_on_install: Vec<(&'static str, Addr<ComponentActor>)>,
    /// The status read by the heartbeat actor.
    pub board: CertificateBoard,
    /// Wall clock.
    pub clock: SharedClock,
}

/// State of the Warden's own listener.
enum Listener {
    /// Not configured, or waiting for the first certificate.
    Idle,
    /// Binding the address.
    Binding,
    /// Serving on this task.
    Serving(tokio::task::JoinHandle<()>),
}

/// Runs the certificate lifecycle of this node.
pub struct CertificateActor {
    parts: CertificateParts,
    core: CertificateCore,
    /// Effects of the start, run once the actor has a context.
    start_effects: Vec<CertificateEffect>,
    rng: Entropy,
    wake: Option<SpawnHandle>,
    /// The key of the outstanding request; it moves into the installation.
    pending_key: Option<NodeTlsKey>,
    waiters: Vec<oneshot::Sender<Result<BTreeMap<String, String>, String>>>,
    listener: Listener,
    listener_backoff: Backoff,
    /// Carries node_id and deployment_id into every log line of this actor.
    span: tracing::Span,
}

impl CertificateActor {
    /// Creates the actor from the stored record and the files on disk, and puts an intact
    /// stored certificate in the listener's slot.
    pub fn new(parts: CertificateParts) -> Self {
        let span = tracing::info_span!(
            "certificates",
            node_id = %parts.node,
            deployment_id = %parts.deployment
        );
        let installed = {
            let _entered = span.enter();
            certificates::load_installed(&parts.store, &parts.files).unwrap_or_else(|error| {
                tracing::error!(error = %error, "cannot read the stored TLS certificate; requesting a new one");
                certificates::Installed {
                    record: None,
                    served: None,
                }
            })
        };
        let intact = installed.served.is_some();
        if let Some(served) = installed.served {
            parts.slot.replace(served);
        }
        let (core, start_effects) =
            CertificateCore::start(installed.record, intact, parts.clock.now());
        Self {
            parts,
            core,
            start_effects,
            rng: entropy::from_os(),
            wake: None,
            pending_key: None,
            waiters: Vec::new(),
            listener: Listener::Idle,
            listener_backoff: Backoff::new(
                BackoffConfig::new(LISTENER_RETRY_BASE, LISTENER_RETRY_MAX).unwrap_or_else(|_| {
                    unreachable!("the constants satisfy base > 0 and max >= base")
                }),
            ),
            span,
        }
    }

    fn now(&self) -> UnixMillis {
        self.parts.clock.now()
    }

    fn unit(&mut self) -> f64 {
        entropy::unit_interval(&mut self.rng)
    }

    fn core(&mut self) -> &mut CertificateCore {
        &mut self.core
    }

    fn run(&mut self, effects: Vec<CertificateEffect>, ctx: &mut Context<Self>) {
        let _entered = self.span.clone().entered();
        for effect in effects {
            match effect {
                CertificateEffect::Request => self.request(ctx),
                CertificateEffect::Install(installation) => self.install(*installation, ctx),
                CertificateEffect::WakeAt(at) => {
                    if let Some(handle) = self.wake.take() {
                        ctx.cancel_future(handle);
                    }
                    let delay = at.since(self.now());
                    self.wake = Some(ctx.run_later(delay, |actor, ctx| {
                        actor.wake = None;
                        let now = actor.now();
                        let effects = actor.core().tick(now);
                        actor.run(effects, ctx);
                    }));
                }
                CertificateEffect::Status(status) => {
                    *self
                        .parts
                        .board
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
                }
                CertificateEffect::Installed(record) => self.installed(&record, ctx),
                CertificateEffect::Failed {
                    reason,
                    failures,
                    retry_at,
                } => {
                    // Any certificate in use stays in use until a renewal succeeds.
                    let in_use = self.core.installed().is_some();
                    if failures == 1 || failures % FAILURE_LOG_EVERY == 0 {
                        tracing::warn!(reason = %reason, failures, retry_at = %retry_at, certificate_in_use = in_use, "failed to get a TLS certificate; retrying");
                    } else {
                        tracing::debug!(reason = %reason, failures, retry_at = %retry_at, certificate_in_use = in_use, "failed to get a TLS certificate; retrying");
                    }
                    // The key of a failed attempt is never used again.
                    self.pending_key = None;
                    for waiter in self.waiters.drain(..) {
                        // A waiter whose task gave up is gone, which needs no action.
                        let _ = waiter.send(Err(reason.clone()));
                    }
                }
            }
        }
    }

    /// Generates a key and signing request and sends it; the reply feeds the core.
    fn request(&mut self, ctx: &mut Context<Self>) {
        let prepared = NodeTlsKey::generate().and_then(|key| {
            signing_request(&self.parts.node, &self.parts.names, &key).map(|csr| (key, csr))
        });
        let (key, csr_pem) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                let (now, unit) = (self.now(), self.unit());
                let effects = self.core().on_failed(&error.to_string(), now, unit);
                self.run(effects, ctx);
                return;
            }
        };
        let requested_key = key.public_key_info();
        self.pending_key = Some(key);

        let mut message_id = [0u8; 16];
        self.rng.fill_bytes(&mut message_id);
        let bus = self.parts.bus.clone();
        let node_key = self.parts.node_key.clone();
        let deployment = self.parts.deployment.clone();
        let node = self.parts.node.clone();
        let now = self.now();
        let work = async move {
            certificates::request(
                &*bus,
                &node_key,
                &deployment,
                &node,
                csr_pem,
                now,
                message_id,
            )
            .await
        };

        // The reply, a rejection or a failed request each feed the core.
        ctx.spawn(work.into_actor(self).map(move |result, actor, ctx| {
            let _entered = actor.span.clone().entered();
            let (now, unit) = (actor.now(), actor.unit());
            let effects = match result {
                Ok(CertificateReply::Issued {
                    chain_pem,
                    bundle_pem,
                    bundle_version,
                    ..
                }) => {
                    let issued = Issued {
                        chain_pem,
                        bundle_pem,
                        bundle_version,
                    };
                    actor.core().on_issued(issued, &requested_key, now, unit)
                }
                Ok(CertificateReply::Refused { code, reason }) => {
                    // The failure is logged as a warning below, rate-limited, with the code.
                    tracing::debug!(code = %code, reason = %reason, "the control plane rejected the certificate request");
                    let reason =
                        format!("the control plane rejected the certificate request ({code}): {reason}");
                    actor.core().on_failed(&reason, now, unit)
                }
                Err(error) => actor.core().on_failed(&error.to_string(), now, unit),
            };
            actor.run(effects, ctx);
        }));
    }

    /// Installs a validated certificate; the outcome feeds the core.
    fn install(&mut self, installation: Installation, ctx: &mut Context<Self>) {
        let Some(key) = self.pending_key.take() else {
            let (now, unit) = (self.now(), self.unit());
            let effects = self
                .core()
                .on_failed("the key of the request is missing", now, unit);
            self.run(effects, ctx);
            return;
        };
        let store = self.parts.store.clone();
        let files = self.parts.files.clone();
        let slot = self.parts.slot.clone();
        let work = async move {
            certificates::install(&store, &files, &slot, key, &installation).await?;
            Ok::<(), CertificateError>(())
        };
        ctx.spawn(work.into_actor(self).map(|result, actor, ctx| {
            let effects = match result {
                Ok(()) => actor.core().on_installed(),
                Err(error) => {
                    let (now, unit) = (actor.now(), actor.unit());
                    actor.core().on_failed(&error.to_string(), now, unit)
                }
            };
            actor.run(effects, ctx);
        }));
    }

    /// Reloads what serves the new certificate and completes waiting forced renewals.
    fn installed(&mut self, record: &CertificateRecord, ctx: &mut Context<Self>) {
        let sha256 = self
            .parts
            .slot
            .current()
            .map(|served| served.sha256().to_owned())
            .unwrap_or_default();
        tracing::info!(not_after = %record.not_after, renew_at = %record.renew_at, bundle_version = record.bundle_version, certificate_sha256 = %sha256, "installed a new TLS certificate");
        self.start_listener(ctx);
        self.restart_components(ctx);
        let output = BTreeMap::from([
            ("not_after".to_owned(), record.not_after.to_string()),
            (
                "bundle_version".to_owned(),
                record.bundle_version.to_string(),
            ),
            ("certificate_sha256".to_owned(), sha256),
        ]);
        for waiter in self.waiters.drain(..) {
            // A waiter whose task gave up is gone, which needs no action.
            let _ = waiter.send(Ok(output.clone()));
        }
    }

    /// Starts the Warden's own listener once a certificate is in place; later certificates
    /// reach it through the slot.
    fn start_listener(&mut self, ctx: &mut Context<Self>) {
        let Some(address) = self.parts.listen else {
            return;
        };
        if !matches!(self.listener, Listener::Idle) || self.parts.slot.current().is_none() {
            return;
        }
        self.listener = Listener::Binding;
        let bind = TlsListener::bind(address, self.parts.slot.clone(), self.parts.node.clone());
        ctx.spawn(bind.into_actor(self).map(move |result, actor, ctx| {
            let _entered = actor.span.clone().entered();
            match result {
                Ok(listener) => {
                    tracing::info!(address = %listener.local_addr(), "the TLS listener is serving");
                    actor.listener_backoff.reset();
                    actor.listener = Listener::Serving(tokio::spawn(listener.serve()));
                }
                Err(error) => {
                    let unit = actor.unit();
                    let delay = actor.listener_backoff.next_delay(unit);
                    tracing::error!(error = %error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "failed to start the TLS listener; retrying");
                    actor.listener = Listener::Idle;
                    ctx.run_later(delay, |actor, ctx| actor.start_listener(ctx));
                }
            }
        }));
    }

    /// Restarts the running components that load the managed certificate only at start.
    fn restart_components(&mut self, ctx: &mut Context<Self>) {
        for (name, component) in self.parts.restart_on_install.clone() {
            let work = async move {
                let snapshot = component
                    .send(GetSnapshot)
                    .await
                    .map_err(|error| error.to_string())?;
                let running = matches!(
                    snapshot.phase,
                    ComponentPhase::Starting | ComponentPhase::Running | ComponentPhase::Unhealthy
                );
                if !running {
                    return Ok(false);
                }
                component
                    .send(Command {
                        request: Request::Restart,
                        config_version: None,
                    })
                    .await
                    .map_err(|error| error.to_string())??;
                Ok::<bool, String>(true)
            };
            ctx.spawn(work.into_actor(self).map(move |result, actor, _| {
                let _entered = actor.span.clone().entered();
                match result {
                    Ok(true) => tracing::info!(component = name, "restarting the component to load the new TLS certificate"),
                    Ok(false) => tracing::debug!(component = name, "the component is not running; it loads the new TLS certificate when it starts"),
                    Err(reason) => tracing::error!(component = name, reason = %reason, "failed to restart the component with the new TLS certificate"),
                }
            }));
        }
    }
}

impl Actor for CertificateActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_listener(ctx);
        let effects = std::mem::take(&mut self.start_effects);
        self.run(effects, ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Listener::Serving(task) = std::mem::replace(&mut self.listener, Listener::Idle) {
            task.abort();
        }
    }
}

impl Handler<ForceRenewal> for CertificateActor {
    type Result = ResponseFuture<Result<BTreeMap<String, String>, String>>;

    fn handle(&mut self, _: ForceRenewal, ctx: &mut Self::Context) -> Self::Result {
        let (sender, receiver) = oneshot::channel();
        self.waiters.push(sender);
        let effects = self.core().force();
        self.run(effects, ctx);
        Box::pin(async move {
            receiver
                .await
                .unwrap_or_else(|_| Err("the certificate actor stopped".to_owned()))
        })
    }
}
