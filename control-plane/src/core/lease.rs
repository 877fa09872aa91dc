//! The sweep lease. Every replica runs the sweeper, but only the holder of the sweep lease
//! does the work, so N replicas do not read every node and task record N times.
//!
//! The lease is one record in the control bucket, written by compare-and-set: the holder renews
//! it at every sweep, and another replica takes it once it has expired by that replica's clock.
//! Two replicas may both sweep for a while when their clocks disagree or a sweep outlasts the
//! lease. That costs repeated work, not wrong results, since every change a sweep makes is a
//! compare-and-set of its own.
//!
//! A lease that ends further ahead than a holder could write is taken at once: otherwise a
//! replica whose clock ran far ahead, or anyone who can write the control bucket, could stop all
//! sweeping until that time.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::UnixMillis;

/// Sweep intervals a lease lasts without renewal. The holder renews it at every sweep, so it
/// can miss two before another replica takes over.
pub const LEASE_INTERVALS: u32 = 3;

/// How far ahead of a replica's clock another replica's clock may run before that replica's
/// lease counts as written from the future. A replica further ahead loses the lease at every
/// tick, so both sweep, which costs repeated work only.
pub const CLOCK_SKEW_ALLOWED: Duration = Duration::from_secs(60);

/// The stored lease.
///
/// NOTE: a replica that cannot decode a lease replaces it, so during a rolling upgrade that adds
/// a field, old and new replicas would overwrite each other's lease and both sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepLease {
    /// Replica id of the holder.
    pub holder: String,
    /// When the lease ends unless renewed, by the holder's clock.
    pub expires_at: UnixMillis,
}

/// A replica's move at a sweep tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Write this lease (by compare-and-set on what was read) and sweep if the write succeeds.
    Hold {
        /// The lease to write.
        lease: SweepLease,
        /// The replica that held it before, when it was another one.
        taken_from: Option<String>,
        /// The lease taken ended further ahead than any holder could have written it.
        from_the_future: bool,
    },
    /// Another replica holds the lease; skip this sweep.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Returns how long a lease lasts for a sweep interval.
pub fn lease_duration(sweep_interval: Duration) -> Duration {
    sweep_interval.saturating_mul(LEASE_INTERVALS)
}

/// Decides what replica `me` does at `now`, given the stored lease, if any. A missing or
/// unreadable lease counts as expired, and so does one that ends more than a lease duration
/// plus [`CLOCK_SKEW_ALLOWED`] ahead of `now`.
pub fn decide(
    stored: Option<&SweepLease>,
    me: &str,
    now: UnixMillis,
    sweep_interval: Duration,
) -> LeaseDecision {
    let duration = lease_duration(sweep_interval);
    let latest_plausible = now
        .saturating_add(duration)
        .saturating_add(CLOCK_SKEW_ALLOWED);
    let mut from_the_future = false;
    let taken_from = match stored {
        Some(lease) if lease.holder == me => None,
        Some(lease) if lease.expires_at > latest_plausible => {
            from_the_future = true;
            Some(lease.holder.clone())
        }
        Some(lease) if now < lease.expires_at => {
            return LeaseDecision::Wait {
                holder: lease.holder.clone(),
            }
        }
        Some(lease) => Some(lease.holder.clone()),
        None => None,
    };
    LeaseDecision::Hold {
        lease: SweepLease {
            holder: me.to_owned(),
            expires_at: now.saturating_add(duration),
        },
        taken_from,
        from_the_future,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(5);

    fn lease(holder: &str, expires_at: u64) -> SweepLease {
        SweepLease {
            holder: holder.into(),
            expires_at: UnixMillis(expires_at),
        }
    }

    #[test]
    fn no_lease_is_taken() {
        assert_eq!(
            decide(None, "a", UnixMillis(1_000), INTERVAL),
            LeaseDecision::Hold {
                lease: lease("a", 16_000),
                taken_from: None,
                from_the_future: false,
            }
        );
    }

    #[test]
    fn holder_renews_even_after_expiry() {
        for stored_expiry in [50_000, 1_000] {
            assert_eq!(
                decide(
                    Some(&lease("a", stored_expiry)),
                    "a",
                    UnixMillis(2_000),
                    INTERVAL
                ),
                LeaseDecision::Hold {
                    lease: lease("a", 17_000),
                    taken_from: None,
                    from_the_future: false,
                }
            );
        }
    }

    #[test]
    fn live_lease_of_another_replica_is_left_alone() {
        assert_eq!(
            decide(Some(&lease("b", 16_000)), "a", UnixMillis(15_999), INTERVAL),
            LeaseDecision::Wait { holder: "b".into() }
        );
    }

    #[test]
    fn expired_lease_of_another_replica_is_taken() {
        assert_eq!(
            decide(Some(&lease("b", 16_000)), "a", UnixMillis(16_000), INTERVAL),
            LeaseDecision::Hold {
                lease: lease("a", 31_000),
                taken_from: Some("b".into()),
                from_the_future: false,
            }
        );
    }

    #[test]
    fn lease_from_the_future_is_taken() {
        // Written by a clock 61 s ahead: 15 s of lease plus 61 s.
        assert_eq!(
            decide(Some(&lease("b", 77_001)), "a", UnixMillis(1_000), INTERVAL),
            LeaseDecision::Hold {
                lease: lease("a", 16_000),
                taken_from: Some("b".into()),
                from_the_future: true,
            }
        );
        // Written by a clock 60 s ahead: honoured until it ends.
        assert_eq!(
            decide(Some(&lease("b", 76_000)), "a", UnixMillis(1_000), INTERVAL),
            LeaseDecision::Wait { holder: "b".into() }
        );
        assert!(matches!(
            decide(
                Some(&lease("b", u64::MAX)),
                "a",
                UnixMillis(1_000),
                INTERVAL
            ),
            LeaseDecision::Hold {
                from_the_future: true,
                ..
            }
        ));
    }

    #[test]
    fn duration_saturates() {
        assert_eq!(lease_duration(Duration::MAX), Duration::MAX);
        assert_eq!(
            decide(None, "a", UnixMillis(u64::MAX - 1), Duration::MAX),
            LeaseDecision::Hold {
                lease: lease("a", u64::MAX),
                taken_from: None,
                from_the_future: false,
            }
        );
    }
}
