//! When to renew the node's broker credentials.

use std::time::Duration;

use warden_bus::UnixMillis;

/// Shortest wait before a renewal attempt, so a JWT that is nearly expired is not renewed in a
/// tight loop.
pub const RENEWAL_DELAY_MIN: Duration = Duration::from_secs(1);

/// Picks the renewal time of a credential obtained at `obtained_at` and expiring at
/// `expires_at`: a point between 50 % and 70 % of its lifetime, from `unit` in `[0, 1)`, so
/// nodes that enrolled together do not renew together.
pub fn renewal_time(obtained_at: UnixMillis, expires_at: UnixMillis, unit: f64) -> UnixMillis {
    let lifetime = expires_at.since(obtained_at);
    let share = 0.5 + 0.2 * unit.clamp(0.0, 1.0);
    obtained_at.saturating_add(lifetime.mul_f64(share).max(RENEWAL_DELAY_MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_between_half_and_seventy_percent() {
        let start = UnixMillis(1_000_000);
        let end = UnixMillis(1_000_000 + 86_400_000);
        assert_eq!(
            renewal_time(start, end, 0.0),
            UnixMillis(1_000_000 + 43_200_000)
        );
        let late = renewal_time(start, end, 0.999_999);
        assert!(
            late <= UnixMillis(1_000_000 + 60_480_000) && late > UnixMillis(1_000_000 + 60_000_000)
        );
    }

    #[test]
    fn expired_credential_renews_soon() {
        let start = UnixMillis(5_000);
        assert_eq!(
            renewal_time(start, UnixMillis(4_000), 0.5),
            start.saturating_add(RENEWAL_DELAY_MIN)
        );
    }
}
