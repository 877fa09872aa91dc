//! A supervisor that restarts failed child actors after a capped, jittered back-off.
//!
//! A child holds a [`ChildGuard`]. When the child's actor stops for any reason, its state is
//! dropped and the guard tells the supervisor, with the reason the child recorded through
//! [`ChildGuard::fail`] or "stopped without a reason". The supervisor then waits out the
//! back-off and starts a new instance through the child's factory. A child that ran longer than
//! the stability period starts over from the base delay.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;

use crate::backoff::{Backoff, BackoffConfig};
use crate::entropy::{self, Entropy};

/// How long a child must run before its back-off starts over.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

type Factory = Box<dyn Fn(ChildGuard)>;

struct ChildSlot {
    name: String,
    factory: Factory,
    generation: u64,
    backoff: Backoff,
    started_at: tokio::time::Instant,
    restarts: u64,
}

/// Starts children, watches them and restarts the ones that stop.
pub struct Supervisor {
    name: String,
    children: Vec<ChildSlot>,
    backoff: BackoffConfig,
    rng: Entropy,
}

impl Supervisor {
    /// Creates a supervisor whose restarts follow `backoff`, with jitter drawn from `rng`.
    pub fn new(name: impl Into<String>, backoff: BackoffConfig, rng: Entropy) -> Self {
        Self {
            name: name.into(),
            children: Vec::new(),
            backoff,
            rng,
        }
    }

    /// Adds a child. `factory` starts one instance of the child's actor and must move the guard
    /// into that actor's state.
    pub fn child(
        mut self,
        name: impl Into<String>,
        factory: impl Fn(ChildGuard) + 'static,
    ) -> Self {
        self.children.push(ChildSlot {
            name: name.into(),
            factory: Box::new(factory),
            generation: 0,
            backoff: Backoff::new(self.backoff),
            started_at: tokio::time::Instant::now(),
            restarts: 0,
        });
        self
    }

    fn start_child(&mut self, index: usize, ctx: &mut Context<Self>) {
        let Some(slot) = self.children.get_mut(index) else {
            return;
        };
        slot.generation += 1;
        slot.started_at = tokio::time::Instant::now();
        let guard = ChildGuard {
            supervisor: ctx.address().recipient(),
            index,
            generation: slot.generation,
            name: slot.name.clone(),
            reason: None,
            armed: true,
        };
        tracing::debug!(supervisor = %self.name, child = %slot.name, generation = slot.generation, "starting child actor");
        (slot.factory)(guard);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for index in 0..self.children.len() {
            self.start_child(index, ctx);
        }
    }
}

/// Sent by a [`ChildGuard`] when its actor stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChildExited {
    index: usize,
    generation: u64,
    reason: String,
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, exited: ChildExited, ctx: &mut Self::Context) {
        let unit = entropy::unit_interval(&mut self.rng);
        let supervisor = self.name.clone();
        let Some(slot) = self.children.get_mut(exited.index) else {
            return;
        };
        if slot.generation != exited.generation {
            return;
        }
        if slot.started_at.elapsed() >= STABLE_AFTER {
            slot.backoff.reset();
        }
        let delay = slot.backoff.next_delay(unit);
        slot.restarts += 1;
        tracing::warn!(
            supervisor = %supervisor,
            child = %slot.name,
            reason = %exited.reason,
            restart = slot.restarts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "child actor stopped; restarting after back-off"
        );
        let index = exited.index;
        ctx.run_later(delay, move |supervisor, ctx| {
            supervisor.start_child(index, ctx)
        });
    }
}

/// Asks a supervisor how many times each child was restarted.
#[derive(Message)]
#[rtype(result = "BTreeMap<String, u64>")]
pub struct GetRestarts;

impl Handler<GetRestarts> for Supervisor {
    type Result = MessageResult<GetRestarts>;

    fn handle(&mut self, _: GetRestarts, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.children
                .iter()
                .map(|slot| (slot.name.clone(), slot.restarts))
                .collect(),
        )
    }
}

/// Held in a child actor's state; tells the supervisor when the actor stops.
pub struct ChildGuard {
    supervisor: Recipient<ChildExited>,
    index: usize,
    generation: u64,
    name: String,
    reason: Option<String>,
    armed: bool,
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl ChildGuard {
    /// Records why the child is about to stop; the supervisor logs it with the restart.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.reason = Some(reason.into());
    }

    /// The child's name in its supervisor.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops watching: the child may stop without being restarted, as during shutdown.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| "stopped without a reason".to_owned());
        self.supervisor.do_send(ChildExited {
            index: self.index,
            generation: self.generation,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Fails `failures` times on start, then keeps running.
    struct Flaky {
        guard: ChildGuard,
        starts: Arc<AtomicU32>,
        failures: u32,
    }

    impl Actor for Flaky {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Self::Context) {
            let start = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
            if start <= self.failures {
                self.guard.fail(format!("simulated failure {start}"));
                ctx.stop();
                return;
            }
            // An actor with no address and no pending work stops; a timer keeps this one alive.
            ctx.run_interval(Duration::from_secs(3600), |_, _| {});
        }
    }

    #[actix_rt::test]
    async fn failed_child_restarts_with_backoff() {
        let starts = Arc::new(AtomicU32::new(0));
        let counter = starts.clone();
        let backoff =
            BackoffConfig::new(Duration::from_millis(20), Duration::from_millis(80)).unwrap();
        let supervisor = Supervisor::new("test", backoff, entropy::from_seed(1))
            .child("flaky", move |guard| {
                Flaky {
                    guard,
                    starts: counter.clone(),
                    failures: 3,
                }
                .start();
            })
            .start();

        let began = tokio::time::Instant::now();
        while starts.load(Ordering::SeqCst) < 4 && began.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            starts.load(Ordering::SeqCst),
            4,
            "three failures then one healthy start"
        );
        // Delays are at least half of 20, 40 and 80 ms.
        assert!(
            began.elapsed() >= Duration::from_millis(70),
            "restarted too fast: {:?}",
            began.elapsed()
        );

        let restarts = supervisor.send(GetRestarts).await.unwrap();
        assert_eq!(restarts.get("flaky"), Some(&3));

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            4,
            "a healthy child must not be restarted"
        );
    }

    #[actix_rt::test]
    async fn disarmed_child_is_not_restarted() {
        struct Quits {
            guard: ChildGuard,
        }
        impl Actor for Quits {
            type Context = Context<Self>;
            fn started(&mut self, ctx: &mut Self::Context) {
                self.guard.disarm();
                ctx.stop();
            }
        }
        let backoff =
            BackoffConfig::new(Duration::from_millis(1), Duration::from_millis(2)).unwrap();
        let supervisor = Supervisor::new("test", backoff, entropy::from_seed(2))
            .child("quits", |guard| {
                Quits { guard }.start();
            })
            .start();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let restarts = supervisor.send(GetRestarts).await.unwrap();
        assert_eq!(restarts.get("quits"), Some(&0));
    }
}
