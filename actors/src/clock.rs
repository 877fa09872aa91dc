//! Time sources. Actors read the clock and pass the reading to state machines as an input.

use std::sync::Arc;

pub use warden_bus::time::{Clock, ManualClock, SystemClock, UnixMillis};

/// A clock shared between actors.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}
