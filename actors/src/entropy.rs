//! Randomness sources. Production code seeds from the operating system; the simulator and
//! deterministic tests seed from a number, so a run can be replayed.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The random number generator handed to state machines: a cryptographic generator, so the same
/// type can also make keys and ids.
pub type Entropy = ChaCha20Rng;

/// A generator seeded from the operating system.
pub fn from_os() -> Entropy {
    ChaCha20Rng::from_entropy()
}

/// A generator that replays the same sequence for the same seed.
pub fn from_seed(seed: u64) -> Entropy {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Draws a number in `[0, 1)` from 53 random bits.
pub fn unit_interval(rng: &mut impl rand::RngCore) -> f64 {
    const MANTISSA_BITS: u32 = 53;
    let bits = rng.next_u64() >> (64 - MANTISSA_BITS);
    // 53 bits fit exactly in an f64 mantissa, so this conversion is lossless.
    #[allow(clippy::cast_precision_loss)]
    let value = bits as f64 / (1u64 << MANTISSA_BITS) as f64;
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut first = from_seed(7);
        let mut second = from_seed(7);
        for _ in 0..10 {
            assert_eq!(
                unit_interval(&mut first).to_bits(),
                unit_interval(&mut second).to_bits()
            );
        }
    }

    #[test]
    fn unit_interval_stays_in_range() {
        let mut rng = from_seed(1);
        for _ in 0..10_000 {
            let value = unit_interval(&mut rng);
            assert!((0.0..1.0).contains(&value), "{value}");
        }
    }
}
