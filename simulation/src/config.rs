//! What a run simulates: its size, its mode and the fault rates drawn from its seed.

use std::time::Duration;

use rand::Rng;
use warden_actors::entropy::Entropy;

/// Kind of checks a run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Faults for the whole run; invariants checked after every event.
    Safety,
    /// Faults, then a healed phase in which every live node must converge.
    Liveness,
}

impl Mode {
    /// Returns the mode as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Safety => "safety",
            Self::Liveness => "liveness",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "safety" => Ok(Self::Safety),
            "liveness" => Ok(Self::Liveness),
            other => Err(format!("unknown mode {other:?}; use safety or liveness")),
        }
    }
}

/// Size, seed and mode of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// Seed of every random choice in the run.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Simulated time with faults.
    pub duration: Duration,
    /// Kind of checks to make.
    pub mode: Mode,
    /// Whether faults are injected at all.
    pub faults: bool,
}

impl RunConfig {
    /// Returns the command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p warden-simulation -- run --seed {} --nodes {} --duration {}s --mode {}{}",
            self.seed,
            self.nodes,
            self.duration.as_secs(),
            self.mode.as_str(),
            if self.faults { "" } else { " --no-faults" }
        )
    }
}

/// Probabilities and intervals of each fault, drawn from the seed so different seeds stress
/// different mixes.
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    /// A core NATS message (heartbeat) is lost.
    pub message_loss: f64,
    /// A core NATS message is delayed, which also reorders it.
    pub message_delay: f64,
    /// Maximum delay of a delayed message.
    pub delay_max: Duration,
    /// A message is stored or published twice.
    pub duplicate: f64,
    /// A store request fails before the broker stores the message.
    pub store_loss: f64,
    /// A store request is stored but the reply is lost, so the client sees an error.
    pub store_ambiguous: f64,
    /// An acknowledgement is lost on the way, so the message comes back after the ack wait.
    pub ack_loss: f64,
    /// A pull returns nothing although messages are waiting.
    pub pull_empty: f64,
    /// A control-plane key-value operation fails, aborting the operation midway.
    pub kv_failure: f64,
    /// A node crashes at one of its I/O steps.
    pub node_crash: f64,
    /// Mean time between partitions.
    pub partition_every: Duration,
    /// Mean time between control-plane replica crashes.
    pub replica_crash_every: Duration,
    /// Mean time between node clock jumps.
    pub clock_jump_every: Duration,
    /// Mean time between hostile injections.
    pub hostile_every: Duration,
    /// Mean time from a component process's start to its crash; one process in four crashes
    /// within seconds instead.
    pub component_crash_every: Duration,
    /// Mean time from a component process's start until it hangs.
    pub component_hang_every: Duration,
    /// A component process fails to start.
    pub component_spawn_failure: f64,
}

impl FaultRates {
    /// No faults at all.
    pub fn none() -> Self {
        Self {
            message_loss: 0.0,
            message_delay: 0.0,
            delay_max: Duration::ZERO,
            duplicate: 0.0,
            store_loss: 0.0,
            store_ambiguous: 0.0,
            ack_loss: 0.0,
            pull_empty: 0.0,
            kv_failure: 0.0,
            node_crash: 0.0,
            partition_every: Duration::MAX,
            replica_crash_every: Duration::MAX,
            clock_jump_every: Duration::MAX,
            hostile_every: Duration::MAX,
            component_crash_every: Duration::MAX,
            component_hang_every: Duration::MAX,
            component_spawn_failure: 0.0,
        }
    }

    /// Draws rates from the seed's generator: each between zero and about twice its base.
    pub fn draw(rng: &mut Entropy) -> Self {
        let mut scale = |base: f64| base * rng.gen_range(0.0..2.0);
        let message_loss = scale(0.05);
        let message_delay = scale(0.1);
        let duplicate = scale(0.03);
        let store_loss = scale(0.02);
        let store_ambiguous = scale(0.02);
        let ack_loss = scale(0.03);
        let pull_empty = scale(0.1);
        let kv_failure = scale(0.01);
        let node_crash = scale(0.005);
        let component_spawn_failure = scale(0.05);
        let mut every =
            |base_secs: u64| Duration::from_secs(rng.gen_range(base_secs / 2..=base_secs * 2));
        Self {
            message_loss,
            message_delay,
            delay_max: Duration::from_secs(3),
            duplicate,
            store_loss,
            store_ambiguous,
            ack_loss,
            pull_empty,
            kv_failure,
            node_crash,
            partition_every: every(60),
            replica_crash_every: every(120),
            clock_jump_every: every(90),
            hostile_every: every(20),
            component_crash_every: every(120),
            component_hang_every: every(300),
            component_spawn_failure,
        }
    }
}
