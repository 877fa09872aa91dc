//! Bounds how many lines about one node the control plane writes: warnings about its bad
//! messages, and the output lines of its components.
//!
//! Anyone holding a node's credentials can publish as fast as the broker lets them, and every
//! message would otherwise cost at least one line. Each node gets a number of lines per
//! window; the rest are counted, and the next line that is written carries the count.

use std::collections::HashMap;
use std::time::Duration;

use warden_bus::UnixMillis;

/// Lines written per node and window by default.
pub const LINES_PER_WINDOW_DEFAULT: u32 = 10;

/// Length of a window by default.
pub const WINDOW_DEFAULT: Duration = Duration::from_secs(10);

/// Nodes tracked at once; past this, windows that ended are forgotten, and if that is not
/// enough, all of them.
const KEYS_MAX: usize = 10_000;

/// Decides which warnings about a node's messages are written.
#[derive(Debug)]
pub struct LogLimiter {
    lines_per_window: u32,
    window: Duration,
    windows: HashMap<String, Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: UnixMillis,
    written: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// Creates a limiter that writes `lines_per_window` lines per node and `window`.
    pub fn new(lines_per_window: u32, window: Duration) -> Self {
        Self {
            lines_per_window,
            window,
            windows: HashMap::new(),
        }
    }

    /// Returns `Some(suppressed)` if a line about `key` may be written now, with the number of
    /// lines held back since the last one written; `None` if this one is held back.
    pub fn admit(&mut self, key: &str, now: UnixMillis) -> Option<u64> {
        let admission = self.admit_many(key, now, 1);
        (admission.written == 1).then_some(admission.held_back)
    }

    /// Admits up to `requested` lines about `key` now. Lines past the window's allowance are
    /// counted as held back; the count is returned with the next admission that writes at
    /// least one line.
    pub fn admit_many(&mut self, key: &str, now: UnixMillis, requested: u32) -> Admission {
        if !self.windows.contains_key(key) && self.windows.len() >= KEYS_MAX {
            let window = self.window;
            self.windows
                .retain(|_, entry| now.since(entry.start) < window);
            if self.windows.len() >= KEYS_MAX {
                self.windows.clear();
            }
        }
        let entry = self.windows.entry(key.to_owned()).or_insert(Window {
            start: now,
            written: 0,
            suppressed: 0,
        });
        if now.since(entry.start) >= self.window {
            entry.start = now;
            entry.written = 0;
        }
        let written = requested.min(self.lines_per_window.saturating_sub(entry.written));
        entry.written += written;
        let held_back = if written > 0 {
            std::mem::take(&mut entry.suppressed)
        } else {
            0
        };
        entry.suppressed = entry
            .suppressed
            .saturating_add(u64::from(requested - written));
        Admission { written, held_back }
    }
}

/// The lines [`LogLimiter::admit_many`] allows, and the count held back before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Lines that may be written now.
    pub written: u32,
    /// Lines held back before this admission; reported only when `written` is above zero.
    pub held_back: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(LINES_PER_WINDOW_DEFAULT, WINDOW_DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMillis = UnixMillis(1_000_000);

    #[test]
    fn lines_capped_per_window_then_counted() {
        let mut limiter = LogLimiter::new(3, Duration::from_secs(10));
        let admitted: Vec<Option<u64>> = (0..10).map(|_| limiter.admit("prod.a", T0)).collect();
        assert_eq!(admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));

        // Another node has its own allowance.
        assert_eq!(limiter.admit("prod.b", T0), Some(0));

        // The next window's first line carries the count held back.
        let later = UnixMillis(T0.0 + 10_000);
        assert_eq!(limiter.admit("prod.a", later), Some(7));
        assert_eq!(limiter.admit("prod.a", later), Some(0));
    }

    #[test]
    fn batches_admitted_in_part_then_counted() {
        let mut limiter = LogLimiter::new(100, Duration::from_secs(10));
        let admission = limiter.admit_many("prod.a", T0, 64);
        assert_eq!(
            admission,
            Admission {
                written: 64,
                held_back: 0
            }
        );
        let admission = limiter.admit_many("prod.a", T0, 64);
        assert_eq!(
            admission,
            Admission {
                written: 36,
                held_back: 0
            }
        );
        let admission = limiter.admit_many("prod.a", T0, 64);
        assert_eq!(
            admission,
            Admission {
                written: 0,
                held_back: 0
            }
        );
        assert_eq!(limiter.admit_many("prod.a", T0, 0).written, 0);

        // The next window reports the 28 + 64 lines held back with its first admitted lines.
        let later = UnixMillis(T0.0 + 10_000);
        let admission = limiter.admit_many("prod.a", later, 10);
        assert_eq!(
            admission,
            Admission {
                written: 10,
                held_back: 92
            }
        );
        assert_eq!(limiter.admit_many("prod.a", later, 1).held_back, 0);
    }

    #[test]
    fn tracked_nodes_bounded() {
        let mut limiter = LogLimiter::new(1, Duration::from_secs(10));
        for index in 0..(KEYS_MAX + 50) {
            assert_eq!(limiter.admit(&format!("prod.n{index}"), T0), Some(0));
        }
        assert!(limiter.windows.len() <= KEYS_MAX);
    }
}
