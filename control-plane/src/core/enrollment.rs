//! Enrollment: binding a node record to the public key the node generated, with a one-time
//! token.
//!
//! The control plane keeps only the token's SHA-256 and an expiry. The first request that
//! presents the token before the expiry, signed by the key it names, binds that key and burns
//! the token. The same key enrolling again is a no-op; any other key is refused, so a copied
//! bootstrap file is useless once the real node has started.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warden_bus::UnixMillis;

/// Enrollment state of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// SHA-256 of the unused token, hex; `None` once used or never issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// When the unused token stops working.
    #[serde(default)]
    pub token_expires_at: UnixMillis,
    /// The enrolled Ed25519 public key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key: Option<String>,
    /// When the key was enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<UnixMillis>,
    /// Why the last refused request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<String>,
}

/// What an enrollment request led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    /// The key is now bound and the token burned.
    Enrolled,
    /// The key was already bound; nothing changed.
    AlreadyEnrolled,
    /// The request was refused.
    Rejected(String),
}

/// SHA-256 of a token, hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Enrollment {
    /// A fresh token's state; the previous key, if any, is revoked.
    pub fn issue(token: &str, expires_at: UnixMillis) -> Self {
        Self {
            token_sha256: Some(hash_token(token)),
            token_expires_at: expires_at,
            ..Self::default()
        }
    }

    /// Applies a request that presents `token` for the key `key_hex`, received at `now`. The
    /// caller has verified that the key signed the request.
    pub fn enroll(&mut self, token: &str, key_hex: &str, now: UnixMillis) -> EnrollOutcome {
        if self.node_key.as_deref() == Some(key_hex) {
            return EnrollOutcome::AlreadyEnrolled;
        }
        let outcome = match &self.token_sha256 {
            None if self.node_key.is_some() => Err("the enrollment token was already used by another key; re-enroll the node with `wardenctl node reenroll` if it lost its state".to_owned()),
            None => Err("no enrollment token is outstanding; issue one with `wardenctl node reenroll`".to_owned()),
            Some(_) if now > self.token_expires_at => Err(format!(
                "the enrollment token expired at {}; issue a new one with `wardenctl node reenroll`",
                self.token_expires_at
            )),
            Some(expected) if !bool::from(hash_token(token).as_bytes().ct_eq(expected.as_bytes())) => {
                Err("the enrollment token does not match the one issued for this node".to_owned())
            }
            Some(_) => Ok(()),
        };
        match outcome {
            Ok(()) => {
                self.node_key = Some(key_hex.to_owned());
                self.token_sha256 = None;
                self.enrolled_at = Some(now);
                self.last_rejection = None;
                EnrollOutcome::Enrolled
            }
            Err(reason) => {
                self.last_rejection = Some(reason.clone());
                EnrollOutcome::Rejected(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "aa";
    const KEY_B: &str = "bb";

    #[test]
    fn token_binds_first_key_once() {
        let mut enrollment = Enrollment::issue("secret-token-0123", UnixMillis(1_000));
        assert_eq!(
            enrollment.enroll("secret-token-0123", KEY_A, UnixMillis(500)),
            EnrollOutcome::Enrolled
        );
        assert_eq!(enrollment.token_sha256, None, "the token must be burned");
        assert_eq!(
            enrollment.enroll("secret-token-0123", KEY_A, UnixMillis(600)),
            EnrollOutcome::AlreadyEnrolled
        );
        let reused = enrollment.enroll("secret-token-0123", KEY_B, UnixMillis(700));
        assert!(
            matches!(reused, EnrollOutcome::Rejected(reason) if reason.contains("already used"))
        );
        assert_eq!(enrollment.node_key.as_deref(), Some(KEY_A));
    }

    #[test]
    fn expired_or_wrong_token_rejected() {
        let mut enrollment = Enrollment::issue("secret-token-0123", UnixMillis(1_000));
        let wrong = enrollment.enroll("guess-token-00000", KEY_A, UnixMillis(500));
        assert!(
            matches!(wrong, EnrollOutcome::Rejected(reason) if reason.contains("does not match"))
        );
        let late = enrollment.enroll("secret-token-0123", KEY_A, UnixMillis(1_001));
        assert!(matches!(late, EnrollOutcome::Rejected(reason) if reason.contains("expired")));
        assert_eq!(enrollment.node_key, None);
        assert!(enrollment.last_rejection.is_some());
    }

    #[test]
    fn reissue_revokes_old_key() {
        let mut enrollment = Enrollment::issue("first-token-00000", UnixMillis(1_000));
        enrollment.enroll("first-token-00000", KEY_A, UnixMillis(1));
        enrollment = Enrollment::issue("second-token-0000", UnixMillis(2_000));
        assert_eq!(enrollment.node_key, None);
        assert_eq!(
            enrollment.enroll("second-token-0000", KEY_B, UnixMillis(2)),
            EnrollOutcome::Enrolled
        );
    }
}
