//! The node's own Ed25519 key: generated on the node at first start, kept in the state
//! directory with mode 0600, never sent anywhere. Reports and heartbeats are signed with it;
//! the control plane learns its public half through enrollment.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use warden_bus::signed::KEY_BYTES;
use warden_bus::SigningKey;

/// File name of the node key in the state directory.
pub const NODE_KEY_FILE: &str = "node.key";

/// Why the node key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// I/O failed.
    #[error("node key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is readable by other users.
    #[error("node key {path} has mode {mode:o}, readable by other users; run chmod 600 on it")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file does not hold a key.
    #[error("node key {path} is damaged: {reason}; move it aside and re-enroll the node")]
    Damaged {
        /// The key file.
        path: PathBuf,
        /// Description of the problem.
        reason: String,
    },
}

/// Loads the node key from `state_dir`, generating it on first start. Returns the key and
/// whether it was generated.
pub fn load_or_create(
    state_dir: &Path,
    rng: &mut (impl rand::RngCore + rand::CryptoRng),
) -> Result<(SigningKey, bool), IdentityError> {
    let path = state_dir.join(NODE_KEY_FILE);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::metadata(&path) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path, mode });
            }
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let damaged = |reason: String| IdentityError::Damaged {
                path: path.clone(),
                reason,
            };
            let bytes = hex::decode(text.trim()).map_err(|error| damaged(error.to_string()))?;
            let seed: [u8; KEY_BYTES] = bytes.try_into().map_err(|bytes: Vec<u8>| {
                damaged(format!("{} bytes instead of {KEY_BYTES}", bytes.len()))
            })?;
            Ok((SigningKey::from_seed(seed), false))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // Through a temporary file, so a crash never leaves a half-written key behind. The
            // task store's lock, taken before this, keeps a second Warden out.
            let key = SigningKey::generate(rng);
            crate::executor::write_private(
                &path,
                format!("{}\n", hex::encode(key.seed())).as_bytes(),
            )
            .map_err(io)?;
            Ok((key, true))
        }
        Err(error) => Err(io(error)),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn key_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (first, created) = load_or_create(dir.path(), &mut rng).unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join(NODE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (second, created) = load_or_create(dir.path(), &mut rng).unwrap();
        assert!(!created);
        assert_eq!(first.id(), second.id());
    }

    #[test]
    fn readable_key_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        std::fs::write(&path, "00".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(dir.path(), &mut rand_chacha::ChaCha20Rng::seed_from_u64(1))
            .unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
}
