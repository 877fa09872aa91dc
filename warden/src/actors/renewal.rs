//! Renews the node's broker credentials before they expire and reconnects with the new ones.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::RngCore;
use warden_actors::clock::SharedClock;
use warden_actors::entropy::{self, Entropy};
use warden_actors::{Backoff, BackoffConfig, ChildGuard};
use warden_bus::transport::swappable::SwappableBus;
use warden_bus::{DeploymentId, NodeId, SigningKey};

use crate::core::credentials::renewal_time;
use crate::credentials::{self, Credential, CredentialError};

/// Retry back-off of a failed renewal.
pub const RETRY_BASE: Duration = Duration::from_secs(2);
/// Maximum retry back-off of a failed renewal.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// What a [`Renewer`] is built from.
#[derive(Clone)]
pub struct RenewalParts {
    /// The bus the actors use; renewal swaps its connection.
    pub bus: Arc<SwappableBus>,
    /// The node key, which is also its NATS user key.
    pub node_key: SigningKey,
    /// This node's deployment.
    pub deployment: DeploymentId,
    /// This node.
    pub node: NodeId,
    /// Where the credential file lives.
    pub state_dir: PathBuf,
    /// The broker's CA certificate.
    pub ca_file: PathBuf,
    /// The broker URL.
    pub url: String,
    /// Wall clock.
    pub clock: SharedClock,
}

/// Renews the credential at a jittered point of its lifetime, retrying with back-off.
pub struct Renewer {
    parts: RenewalParts,
    credential: Credential,
    rng: Entropy,
    backoff: Backoff,
    _guard: ChildGuard,
}

impl Renewer {
    /// Loads the stored credential; the Warden stored one before it started its actors.
    pub fn load(parts: RenewalParts, guard: ChildGuard) -> Result<Self, String> {
        let credential = credentials::load(&parts.state_dir)
            .map_err(|error| error.to_string())?
            .ok_or("no node credential is stored")?;
        let backoff = BackoffConfig::new(RETRY_BASE, RETRY_MAX)
            .unwrap_or_else(|_| unreachable!("the constants satisfy base > 0 and max >= base"));
        Ok(Self {
            parts,
            credential,
            rng: entropy::from_os(),
            backoff: Backoff::new(backoff),
            _guard: guard,
        })
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let at = renewal_time(
            self.credential.obtained_at,
            self.credential.expires_at,
            entropy::unit_interval(&mut self.rng),
        );
        let delay = at.since(self.parts.clock.now());
        tracing::info!(node_id = %self.parts.node, renew_at = %at, expires_at = %self.credential.expires_at, "node credential renewal scheduled");
        ctx.run_later(delay, |renewer, ctx| renewer.renew(ctx));
    }

    fn renew(&mut self, ctx: &mut Context<Self>) {
        let parts = self.parts.clone();
        let mut message_id = [0u8; 16];
        self.rng.fill_bytes(&mut message_id);
        let work = async move {
            let now = parts.clock.now();
            let credential = credentials::renew(
                &*parts.bus,
                &parts.node_key,
                &parts.deployment,
                &parts.node,
                now,
                message_id,
            )
            .await?;
            credentials::store(&parts.state_dir, &credential)?;
            let bus = credentials::connect_node(
                &parts.url,
                &parts.ca_file,
                &credential,
                &parts.node_key,
                &parts.deployment,
                &parts.node,
            )
            .await?;
            parts.bus.swap(Arc::new(bus));
            Ok::<Credential, CredentialError>(credential)
        };
        ctx.spawn(work.into_actor(self).map(|result, renewer, ctx| match result {
            Ok(credential) => {
                tracing::info!(node_id = %renewer.parts.node, expires_at = %credential.expires_at, "node credential renewed; reconnected with it");
                renewer.credential = credential;
                renewer.backoff.reset();
                renewer.schedule(ctx);
            }
            Err(error) => {
                let delay = renewer.backoff.next_delay(entropy::unit_interval(&mut renewer.rng));
                tracing::warn!(node_id = %renewer.parts.node, error = %error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "failed to renew the node credential; retrying");
                ctx.run_later(delay, |renewer, ctx| renewer.renew(ctx));
            }
        }));
    }
}

impl Actor for Renewer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.schedule(ctx);
    }
}
