//! The ordered record of a run: every event is hashed, and the last ones are kept to print
//! when a run fails.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};
use warden_bus::UnixMillis;

/// How many of the latest events a trace keeps in full.
pub const TRACE_TAIL_MAX: usize = 40;

/// Hash and tail of a run's events.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    hasher: Sha256,
    count: u64,
    tail: VecDeque<String>,
}

impl Trace {
    /// Records one event at `at`, in milliseconds since the start of the run.
    pub fn push(&mut self, at: UnixMillis, start: UnixMillis, event: &str) {
        let line = format!("{} {event}", at.0.saturating_sub(start.0));
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.count += 1;
        if self.tail.len() == TRACE_TAIL_MAX {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Number of events recorded.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The latest events.
    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.tail.iter()
    }

    /// SHA-256 over every event, hex.
    pub fn hash(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}
