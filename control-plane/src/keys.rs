//! The task-signing key file and the admin API key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    #[error("task key file {path}: {source}")]
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
        /// What is wrong.
        reason: String,
    },
}

/// Loads the task-signing key from `path`, generating it with mode 0600 if the file is absent.
/// Returns the key and whether it was generated.
pub fn load_or_create_task_key(
    path: &Path,
    rng: &mut (impl RngCore + rand::CryptoRng),
) -> Result<(SigningKey, bool), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(metadata) => {
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
            Ok((SigningKey::from_seed(seed), false))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let key = SigningKey::generate(rng);
            // create_new: two replicas starting together must not overwrite each other's key.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            file.write_all(format!("{}\n", hex::encode(key.seed())).as_bytes())
                .map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok((key, true))
        }
        Err(error) => Err(io(error)),
    }
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
    fn key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/task-key");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (first, created) = load_or_create_task_key(&path, &mut rng).unwrap();
        assert!(created);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (second, created) = load_or_create_task_key(&path, &mut rng).unwrap();
        assert!(!created);
        assert_eq!(first.id(), second.id());
    }

    #[test]
    fn readable_key_file_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task-key");
        std::fs::write(&path, "00".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create_task_key(&path, &mut rand_chacha::ChaCha20Rng::seed_from_u64(1))
            .unwrap_err();
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
