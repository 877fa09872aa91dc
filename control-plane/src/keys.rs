//! The task-signing key file and the admin API key.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use warden_bus::signed::KEY_BYTES;
use warden_bus::SigningKey;

/// Prefix of admin API keys, so a leaked key is recognisable in logs and scanners.
pub const API_KEY_PREFIX: &str = "wdn_";

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// I/O failed.
    #[error("task key file {path}: {source}; create one with `wardenctl key create --out FILE`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error(
        "task key file {path} has mode {mode:o}, readable by other users; run chmod 600 on it"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The content is not a hex seed.
    #[error("task key file {path} does not contain a 64-character hex seed: {reason}")]
    Content {
        /// The file.
        path: PathBuf,
        /// Description of the problem.
        reason: String,
    },
}

/// Loads the task-signing key from `path`, a hex seed written by `wardenctl key create`,
/// rejecting a file that other users can read.
pub fn load_task_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let content = |reason: String| KeyFileError::Content {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = hex::decode(text.trim()).map_err(|error| content(error.to_string()))?;
    let seed: [u8; KEY_BYTES] = bytes.try_into().map_err(|bytes: Vec<u8>| {
        content(format!("{} bytes instead of {KEY_BYTES}", bytes.len()))
    })?;
    Ok(SigningKey::from_seed(seed))
}

/// Generates an admin API key: the prefix and 32 random bytes in URL-safe base64.
pub fn generate_api_key(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    format!(
        "{API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// SHA-256 of an API key, hex; only this is stored.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn key_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task-key");
        let key = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        std::fs::write(&path, hex::encode(key.seed())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_task_key(&path).unwrap().id(), key.id());
        let missing = load_task_key(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("wardenctl key create"), "{missing}");
    }

    #[test]
    fn readable_key_file_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task-key");
        std::fs::write(&path, "00".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_task_key(&path).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }

    #[test]
    fn api_key_hash_is_stable() {
        let key = generate_api_key(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        assert!(key.starts_with(API_KEY_PREFIX));
        assert_eq!(hash_api_key(&key), hash_api_key(&key));
        assert_ne!(hash_api_key(&key), hash_api_key("wdn_other"));
    }
}
