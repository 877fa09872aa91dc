//! Downloading a verified release's artifact through the bus and staging it on disk.
//!
//! [`fetch_verified`] requests the artifact from the control plane in chunks of at most
//! [`FETCH_CHUNK_BYTES_MAX`] bytes with `fetch` requests signed by the node key. It writes them
//! to `<state_dir>/artifacts/staging/<sha256>.part`, created with mode 0600, hashing while it
//! writes and never writing past the manifest's size. Only when the size and the SHA-256 match
//! the manifest is the file synced and renamed to `<sha256>.verified`. On any mismatch or error
//! the partial file is deleted. The staged file is never executable; making it so is the
//! installer's step, after this check.
//!
//! Trust: no byte from the control plane is trusted. The manifest was checked by
//! [`crate::core::release::check_upgrade`] before a [`VerifiedRelease`] exists, and the bytes
//! must match it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use warden_bus::messages::{FetchReply, FetchRequest, FETCH_CHUNK_BYTES_MAX};
use warden_bus::release::ReleaseManifest;
use warden_bus::{
    Bus, BusError, Clock, DeploymentId, Envelope, MessageId, NodeId, RpcVerb, SigningKey, Subject,
};

use crate::core::release::VerifiedRelease;

/// Directory under the state directory where artifacts are staged.
pub const STAGING_DIR: &str = "artifacts/staging";

/// Time one chunk request may take before the download fails.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Number of chunk requests in flight at once, so the download is not bound by round trips.
pub const FETCH_REQUESTS_IN_FLIGHT: usize = 4;

/// Error from downloading and staging an artifact. The partial file is gone in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// A request failed or timed out on the bus.
    #[error("fetching artifact {sha256} failed: {source}")]
    Bus {
        /// Hex SHA-256 of the artifact.
        sha256: String,
        /// The bus error.
        source: BusError,
    },
    /// The control plane refused the request.
    #[error("the control plane refused to serve artifact {sha256}: {reason}")]
    Refused {
        /// Hex SHA-256 of the artifact.
        sha256: String,
        /// The control plane's reason.
        reason: String,
    },
    /// The control plane has no artifact with this digest.
    #[error("artifact {sha256} is not published; publish it with `wardenctl release publish`")]
    NotFound {
        /// Hex SHA-256 of the artifact.
        sha256: String,
    },
    /// The bytes served do not match the manifest or the request.
    #[error("artifact {sha256} is corrupt: {reason}")]
    Corrupt {
        /// Hex SHA-256 of the artifact.
        sha256: String,
        /// Description of the mismatch.
        reason: String,
    },
    /// The staging file or directory could not be written.
    #[error("staging file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// An artifact whose size and SHA-256 matched its verified manifest, in a file of mode 0600.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedArtifact {
    path: PathBuf,
    manifest: ReleaseManifest,
}

impl StagedArtifact {
    /// Returns the staged file, `<state_dir>/artifacts/staging/<sha256>.verified`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the manifest the file matched.
    pub fn manifest(&self) -> &ReleaseManifest {
        &self.manifest
    }
}

/// Identity that requests the chunks: the node and its key, which the control plane checks.
#[derive(Clone, Copy)]
pub struct Requester<'a> {
    /// The node's deployment.
    pub deployment: &'a DeploymentId,
    /// The node.
    pub node: &'a NodeId,
    /// The node key that signs each request.
    pub node_key: &'a SigningKey,
    /// Clock for the requests' send time.
    pub clock: &'a dyn Clock,
}

/// Returns the path of the partial download of an artifact.
pub fn partial_path(state_dir: &Path, sha256_hex: &str) -> PathBuf {
    state_dir
        .join(STAGING_DIR)
        .join(format!("{sha256_hex}.part"))
}

/// Returns the path of the verified download of an artifact.
pub fn verified_path(state_dir: &Path, sha256_hex: &str) -> PathBuf {
    state_dir
        .join(STAGING_DIR)
        .join(format!("{sha256_hex}.verified"))
}

/// Downloads the artifact of `release` in chunks, checks its size and SHA-256 and stages it.
/// Deletes the partial file on any error.
///
/// Not cancel safe: dropping the future leaves the `.part` file, which the next call for the
/// same artifact replaces. Two calls for the same artifact must not run at once, because they
/// share that file.
///
/// NOTE: no chunk request is retried, so one lost reply or timeout fails the whole download and
/// the caller has to start again.
pub async fn fetch_verified(
    bus: &dyn Bus,
    requester: Requester<'_>,
    release: &VerifiedRelease,
    state_dir: &Path,
) -> Result<StagedArtifact, ArtifactError> {
    let manifest = release.manifest();
    let sha256_hex = hex::encode(&manifest.sha256);
    let partial = partial_path(state_dir, &sha256_hex);
    let result = download(bus, requester, manifest, state_dir, &partial).await;
    match result {
        Ok(path) => {
            tracing::info!(sha256 = %sha256_hex, size = manifest.size, path = %path.display(), "artifact downloaded and verified");
            Ok(StagedArtifact {
                path,
                manifest: manifest.clone(),
            })
        }
        Err(error) => {
            if let Err(remove) = std::fs::remove_file(&partial) {
                if remove.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(path = %partial.display(), error = %remove, "failed to delete a partial artifact");
                }
            }
            tracing::warn!(sha256 = %sha256_hex, error = %error, "artifact download failed; partial file deleted");
            Err(error)
        }
    }
}

async fn download(
    bus: &dyn Bus,
    requester: Requester<'_>,
    manifest: &ReleaseManifest,
    state_dir: &Path,
    partial: &Path,
) -> Result<PathBuf, ArtifactError> {
    let sha256_hex = hex::encode(&manifest.sha256);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Io { path, source }
    };
    let corrupt = |reason: String| ArtifactError::Corrupt {
        sha256: sha256_hex.clone(),
        reason,
    };

    // A private directory and a new file of mode 0600: no exec bit, no reader but the Warden.
    let staging = state_dir.join(STAGING_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&staging)
        .map_err(io(&staging))?;
    match std::fs::remove_file(partial) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(partial)(error)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(io(partial))?;

    // Chunk requests go out a few at a time and come back in order.
    let chunk = u64::from(FETCH_CHUNK_BYTES_MAX);
    let offsets = (0..manifest.size.div_ceil(chunk)).map(|index| index * chunk);
    let mut replies = futures::stream::iter(offsets)
        .map(|offset| {
            let length = chunk.min(manifest.size - offset);
            request_chunk(bus, requester, manifest, offset, length)
        })
        .buffered(FETCH_REQUESTS_IN_FLIGHT);

    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    while let Some((offset, length, reply)) = replies.try_next().await? {
        let bytes = match reply {
            FetchReply::Chunk {
                offset: served_offset,
                size,
                bytes,
            } => {
                if served_offset != offset {
                    return Err(corrupt(format!(
                        "asked for offset {offset}, got offset {served_offset}"
                    )));
                }
                if size != manifest.size {
                    return Err(corrupt(format!(
                        "the control plane has {size} bytes; the manifest says {}",
                        manifest.size
                    )));
                }
                if bytes.len() as u64 != length {
                    return Err(corrupt(format!(
                        "asked for {length} bytes at offset {offset}, got {}",
                        bytes.len()
                    )));
                }
                bytes
            }
            FetchReply::NotFound => {
                return Err(ArtifactError::NotFound {
                    sha256: sha256_hex.clone(),
                })
            }
            FetchReply::OutOfRange { size } => {
                return Err(corrupt(format!(
                    "the control plane has {size} bytes; the manifest says {}",
                    manifest.size
                )))
            }
            FetchReply::Refused { reason } => {
                return Err(ArtifactError::Refused {
                    sha256: sha256_hex.clone(),
                    reason,
                })
            }
        };
        debug_assert!(written + bytes.len() as u64 <= manifest.size);
        hasher.update(&bytes);
        file.write_all(&bytes).map_err(io(partial))?;
        written += bytes.len() as u64;
    }

    // Size and digest are checked before the file gets its verified name.
    if written != manifest.size {
        return Err(corrupt(format!(
            "downloaded {written} bytes; the manifest says {}",
            manifest.size
        )));
    }
    let digest = hasher.finalize();
    if digest.as_slice() != manifest.sha256.as_slice() {
        return Err(corrupt(format!(
            "downloaded bytes have SHA-256 {}",
            hex::encode(digest)
        )));
    }
    file.sync_all().map_err(io(partial))?;
    drop(file);
    let verified = verified_path(state_dir, &sha256_hex);
    std::fs::rename(partial, &verified).map_err(io(&verified))?;
    std::fs::File::open(&staging)
        .and_then(|dir| dir.sync_all())
        .map_err(io(&staging))?;

    let mode = std::fs::metadata(&verified)
        .map_err(io(&verified))?
        .permissions()
        .mode();
    debug_assert_eq!(mode & 0o777, 0o600, "staged artifact mode {mode:o}");
    Ok(verified)
}

async fn request_chunk(
    bus: &dyn Bus,
    requester: Requester<'_>,
    manifest: &ReleaseManifest,
    offset: u64,
    length: u64,
) -> Result<(u64, u64, FetchReply), ArtifactError> {
    let sha256_hex = hex::encode(&manifest.sha256);
    let malformed = |reason: String| ArtifactError::Corrupt {
        sha256: sha256_hex.clone(),
        reason,
    };
    let now = requester.clock.now();
    let request = FetchRequest {
        deployment: requester.deployment.clone(),
        node: requester.node.clone(),
        sha256: manifest.sha256.clone(),
        offset,
        // The length is at most FETCH_CHUNK_BYTES_MAX, which is a u32.
        length: u32::try_from(length).unwrap_or(FETCH_CHUNK_BYTES_MAX),
        sent_at: now,
    };

    // The message id only has to differ between requests; derive it from what differs.
    let mut id_source = Sha256::new();
    id_source.update(&manifest.sha256);
    id_source.update(offset.to_be_bytes());
    id_source.update(now.0.to_be_bytes());
    let mut id = [0u8; 16];
    for (slot, byte) in id.iter_mut().zip(id_source.finalize()) {
        *slot = byte;
    }
    let bytes = Envelope::seal(MessageId::from_random(id), &request)
        .and_then(|envelope| requester.node_key.sign(&envelope))
        .and_then(|signed| signed.encode())
        .map_err(|error| malformed(format!("failed to encode the request: {error}")))?;
    let subject = Subject::rpc(requester.deployment, requester.node, RpcVerb::Fetch);
    let reply = bus
        .request(&subject, bytes.into(), FETCH_TIMEOUT)
        .await
        .map_err(|source| ArtifactError::Bus {
            sha256: sha256_hex.clone(),
            source,
        })?;
    let reply = FetchReply::decode(&reply)
        .map_err(|error| malformed(format!("undecodable reply at offset {offset}: {error}")))?;
    Ok((offset, length, reply))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::{RngCore, SeedableRng};
    use warden_bus::messages::{Component, Upgrade};
    use warden_bus::release::SignedManifest;
    use warden_bus::transport::memory::MemoryBus;
    use warden_bus::trust::{KeyGrant, TrustDocument};
    use warden_bus::{ManualClock, SignedEnvelope, UnixMillis};

    use super::*;
    use crate::core::release::{check_upgrade, ReleaseContext};
    use crate::core::verify::Identity;

    const NOW: UnixMillis = UnixMillis(1_796_428_800_000);
    const SIZE: usize = 2 * FETCH_CHUNK_BYTES_MAX as usize + 100;

    /// A scripted control plane: the reply to a request, given the honest artifact.
    type Serve = fn(&FetchRequest, &[u8]) -> FetchReply;

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    fn artifact() -> Vec<u8> {
        let mut bytes = vec![0u8; SIZE];
        rand_chacha::ChaCha20Rng::seed_from_u64(5).fill_bytes(&mut bytes);
        bytes
    }

    fn identity() -> Identity {
        Identity {
            deployment: DeploymentId::new("prod").unwrap(),
            node: NodeId::new("n1").unwrap(),
            approval_key: None,
        }
    }

    fn release() -> VerifiedRelease {
        let grant = |key: &SigningKey| KeyGrant {
            public_key: key.public_key().as_bytes().to_vec(),
            not_before: UnixMillis(0),
            not_after: UnixMillis(u64::MAX / 2),
        };
        let trust = TrustDocument {
            version: 1,
            issued_at: UnixMillis(0),
            expires_at: UnixMillis(u64::MAX / 2),
            root_key: key(1).public_key().as_bytes().to_vec(),
            task_keys: vec![grant(&key(2))],
            release_keys: vec![grant(&key(3))],
        };
        let manifest = ReleaseManifest {
            component: Component::Iggy,
            version: "0.8.1".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            sha256: Sha256::digest(artifact()).to_vec(),
            size: SIZE as u64,
            release_counter: 1,
            issued_at: NOW,
        };
        let upgrade = Upgrade {
            component: manifest.component,
            version: manifest.version.clone(),
            sha256: manifest.sha256.clone(),
            release_counter: 1,
            manifest: Box::new(SignedManifest::sign(&manifest, &key(3)).unwrap()),
            rollback_permit: None,
        };
        check_upgrade(
            &upgrade,
            &ReleaseContext {
                trust: &trust,
                identity: &identity(),
                now: NOW,
                skew: Duration::from_secs(300),
                target: "x86_64-unknown-linux-gnu",
                installed_counter: 0,
            },
        )
        .unwrap()
    }

    /// Answers fetch requests on a memory bus with `serve`, which sees each request and the
    /// honest artifact, and downloads the release.
    async fn download_with(
        state_dir: &Path,
        serve: Serve,
    ) -> Result<StagedArtifact, ArtifactError> {
        let clock = Arc::new(ManualClock::new(NOW));
        let bus = Arc::new(MemoryBus::new(clock.clone()));
        let mut requests = bus
            .subscribe(&Subject::all_rpc(RpcVerb::Fetch), None)
            .await
            .unwrap();
        let responder_bus = bus.clone();
        let responder = tokio::spawn(async move {
            let artifact = artifact();
            while let Some(inbound) = requests.next().await {
                let request: FetchRequest = SignedEnvelope::decode(&inbound.payload)
                    .unwrap()
                    .verify_with(&key(9).public_key())
                    .unwrap()
                    .open()
                    .unwrap();
                let reply = serve(&request, &artifact).encode().unwrap();
                responder_bus
                    .reply(inbound.reply.as_deref().unwrap(), reply.into())
                    .await
                    .unwrap();
            }
        });
        let identity = identity();
        let node_key = key(9);
        let requester = Requester {
            deployment: &identity.deployment,
            node: &identity.node,
            node_key: &node_key,
            clock: clock.as_ref(),
        };
        let result = fetch_verified(bus.as_ref(), requester, &release(), state_dir).await;
        responder.abort();
        result
    }

    fn honest(request: &FetchRequest, artifact: &[u8]) -> FetchReply {
        let start = usize::try_from(request.offset).unwrap();
        let end = (start + request.length as usize).min(artifact.len());
        FetchReply::Chunk {
            offset: request.offset,
            size: artifact.len() as u64,
            bytes: artifact[start..end].to_vec(),
        }
    }

    fn assert_nothing_staged(state_dir: &Path, case: &str) {
        let staging = state_dir.join(STAGING_DIR);
        let left: Vec<_> = std::fs::read_dir(&staging)
            .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "{case}: {left:?} left in {}",
            staging.display()
        );
    }

    #[tokio::test]
    async fn honest_server_stages_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let staged = download_with(dir.path(), honest).await.unwrap();
        assert_eq!(std::fs::read(staged.path()).unwrap(), artifact());
        let mode = std::fs::metadata(staged.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let staging_mode = std::fs::metadata(dir.path().join(STAGING_DIR))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(staging_mode & 0o777, 0o700, "mode {staging_mode:o}");
    }

    #[tokio::test]
    async fn hostile_server_never_staged() {
        let cases: [(&str, Serve); 6] = [
            ("longer chunk than asked", |request, artifact| {
                let mut reply = honest(request, artifact);
                if let FetchReply::Chunk { bytes, .. } = &mut reply {
                    bytes.push(0);
                }
                reply
            }),
            ("shifted offset", |request, artifact| {
                let mut shifted = request.clone();
                shifted.offset += 1;
                let mut reply = honest(&shifted, artifact);
                if let FetchReply::Chunk { offset, .. } = &mut reply {
                    *offset = request.offset;
                }
                reply
            }),
            ("other size", |request, artifact| {
                let mut reply = honest(request, artifact);
                if let FetchReply::Chunk { size, .. } = &mut reply {
                    *size += 1;
                }
                reply
            }),
            ("offset out of range", |_, artifact| {
                FetchReply::OutOfRange {
                    size: artifact.len() as u64 - 1,
                }
            }),
            ("not found", |_, _| FetchReply::NotFound),
            ("refused", |_, _| FetchReply::Refused {
                reason: "no".into(),
            }),
        ];
        for (case, serve) in cases {
            let dir = tempfile::tempdir().unwrap();
            let error = download_with(dir.path(), serve).await.unwrap_err();
            let expected = match case {
                "not found" => matches!(error, ArtifactError::NotFound { .. }),
                "refused" => matches!(error, ArtifactError::Refused { .. }),
                _ => matches!(error, ArtifactError::Corrupt { .. }),
            };
            assert!(expected, "{case}: {error}");
            assert_nothing_staged(dir.path(), case);
        }
    }
}
