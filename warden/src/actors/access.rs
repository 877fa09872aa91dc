//! Keeps the node's firewall equal to its access rules: runs the [`AccessCore`], installs the
//! documents that `apply_access_rules` tasks carry, closes expired rules on a timer, and puts
//! the table back when someone changes it by hand.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use warden_actors::clock::SharedClock;
use warden_bus::messages::AccessRules;
use warden_bus::{NodeId, UnixMillis};

use crate::access::{carry_out, Firewall};
use crate::core::access::{AccessCore, AccessEffect, AccessRecord};
use crate::core::ExecutionOutcome;
use crate::store::TaskStore;

/// How often the actor looks for expired rules. The kernel closes them at their expiry by
/// itself; this takes them out of the table and notices clock steps.
pub const ACCESS_TICK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the actor compares the kernel's table with the one it applied last.
pub const DRIFT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Log one error for every this many failed applications in a row, after the first.
const FAILURE_LOG_EVERY: u32 = 60;

/// Installs a document. The result names the version and counts the open and expired rules.
#[derive(Message)]
#[rtype(result = "ExecutionOutcome")]
pub struct Install(pub AccessRules);

/// The parts an [`AccessActor`] is built from.
pub struct AccessParts {
    /// The core, already started and applied.
    pub core: AccessCore,
    /// The table as nft listed it after the start's application.
    pub listing: Option<String>,
    /// The nftables table.
    pub firewall: Firewall,
    /// The store of the access record.
    pub store: TaskStore,
    /// Wall clock.
    pub clock: SharedClock,
    /// This node, for logs.
    pub node: NodeId,
    /// Version of the installed document, read by the heartbeat actor.
    pub version: Arc<AtomicU64>,
}

/// Runs the access core and carries out its effects one batch at a time.
pub struct AccessActor {
    parts: AccessParts,
    failures: u32,
}

impl AccessActor {
    /// Creates the actor.
    pub fn new(parts: AccessParts) -> Self {
        Self { parts, failures: 0 }
    }

    fn note_failure(&mut self, reason: &str) {
        self.failures += 1;
        if self.failures == 1 || self.failures.is_multiple_of(FAILURE_LOG_EVERY) {
            tracing::error!(node_id = %self.parts.node, failures = self.failures, reason = %reason, "cannot update the access rules; the kernel still closes expired rules by itself");
        }
    }

    /// Runs the core's tick and carries out what it returns, holding other messages back
    /// until it is done.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.parts.clock.now();
        let effects = self.parts.core.tick(now);
        if effects.is_empty() {
            return;
        }
        let store = self.parts.store.clone();
        let firewall = self.parts.firewall.clone();
        let work = async move { carry_out(effects, &store, &firewall).await };
        ctx.wait(work.into_actor(self).map(move |result, actor, _| match result {
            Ok(listing) => {
                actor.failures = 0;
                actor.parts.listing = listing;
                tracing::info!(node_id = %actor.parts.node, access_version = actor.parts.core.version(), open = actor.parts.core.applied().map_or(0, |set| set.open.len()), "access rules applied");
            }
            Err(reason) => {
                actor.note_failure(&reason);
                if let Ok(Some(stored)) = actor.parts.store.load_access() {
                    actor.parts.core = restart_from(stored, now);
                } else {
                    actor.parts.core.forget_applied();
                }
            }
        }));
    }

    /// Lists the table and applies the rules again if it is not the table applied last.
    fn check_drift(&mut self, ctx: &mut Context<Self>) {
        let firewall = self.parts.firewall.clone();
        let work = async move {
            tokio::task::spawn_blocking(move || firewall.list())
                .await
                .map_err(|error| format!("the nft thread failed: {error}"))?
                .map_err(|error| error.to_string())
        };
        ctx.wait(work.into_actor(self).map(|result, actor, ctx| {
            let current = match result {
                Ok(current) => current,
                Err(reason) => {
                    tracing::warn!(node_id = %actor.parts.node, reason = %reason, "cannot list the access rules table");
                    return;
                }
            };
            if current == actor.parts.listing {
                return;
            }
            tracing::warn!(node_id = %actor.parts.node, table = %actor.parts.firewall.table(), present = current.is_some(), "the access rules table changed outside the Warden; applying the rules again");
            actor.parts.core.forget_applied();
            actor.tick(ctx);
        }));
    }
}

impl Actor for AccessActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(ACCESS_TICK_INTERVAL, |actor, ctx| actor.tick(ctx));
        ctx.run_interval(DRIFT_CHECK_INTERVAL, |actor, ctx| actor.check_drift(ctx));
    }
}

impl Handler<Install> for AccessActor {
    type Result = AtomicResponse<Self, ExecutionOutcome>;

    fn handle(&mut self, Install(document): Install, _: &mut Self::Context) -> Self::Result {
        let now = self.parts.clock.now();
        let previous = self.parts.core.record().clone();
        let effects = match self.parts.core.install(&document, now) {
            Ok(effects) => effects,
            Err(error) => {
                return AtomicResponse::new(Box::pin(fut::ready(Err(error.to_string()))));
            }
        };
        let store = self.parts.store.clone();
        let firewall = self.parts.firewall.clone();
        let work = async move { install(effects, previous, &store, &firewall).await };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, actor, _| match result {
                Ok(listing) => {
                    actor.failures = 0;
                    actor.parts.listing = listing;
                    actor
                        .parts
                        .version
                        .store(actor.parts.core.version(), Ordering::SeqCst);
                    Ok(output(&actor.parts.core, &actor.parts.firewall))
                }
                Err((reason, previous)) => {
                    actor.parts.core = restart_from(previous, now);
                    Err(reason)
                }
            },
        )))
    }
}

/// Carries out an installation's effects. On failure it writes the previous record back, so
/// the failed task changes nothing on disk, and returns it with the reason.
async fn install(
    effects: Vec<AccessEffect>,
    previous: AccessRecord,
    store: &TaskStore,
    firewall: &Firewall,
) -> Result<Option<String>, (String, AccessRecord)> {
    match carry_out(effects, store, firewall).await {
        Ok(listing) => Ok(listing),
        Err(reason) => {
            if let Err(error) = store.persist_access(&previous).await {
                tracing::error!(error = %error, "cannot write the previous access rules back; the next start applies the new ones");
            }
            Err((reason, previous))
        }
    }
}

/// Rebuilds a core from a record; its next tick applies the record again.
fn restart_from(record: AccessRecord, now: UnixMillis) -> AccessCore {
    // `start` counts its rule set as applied, but the failed nft run may have changed the
    // table or left it as it was, so the next tick must apply it.
    let (mut core, _) = AccessCore::start(Some(record), now);
    core.forget_applied();
    core
}

fn output(core: &AccessCore, firewall: &Firewall) -> BTreeMap<String, String> {
    let open = core.applied().map_or(0, |set| set.open.len());
    BTreeMap::from([
        ("access_version".to_owned(), core.version().to_string()),
        ("rules_open".to_owned(), open.to_string()),
        (
            "rules_expired".to_owned(),
            core.record().rules.len().saturating_sub(open).to_string(),
        ),
        ("table".to_owned(), format!("inet {}", firewall.table())),
    ])
}
