//! Released artifacts: the JetStream object store that holds them and the local cache that
//! serves chunks to nodes.
//!
//! An artifact is stored in the [`RELEASES_OBJECT_STORE`] object store under the hex SHA-256 of
//! its bytes, and its signed manifest under the same key in the [`RELEASE_MANIFESTS_BUCKET`]
//! key-value bucket. Each replica serves chunks from a content-addressed cache directory,
//! filled from the object store on a miss and checked against the digest and the manifest's
//! size before it is used.
//!
//! Trust: the control plane checks uploads against the release keys of its trust document, so
//! an operator learns at once that a release would be rejected. Nodes do not rely on that
//! check: they verify the manifest and the downloaded bytes themselves, and trust no chunk this
//! module serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::jetstream::object_store::{self, ObjectStore};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use warden_bus::release::ReleaseManifest;

/// JetStream object store that holds released artifacts, named by their hex SHA-256.
pub const RELEASES_OBJECT_STORE: &str = "WARDEN_RELEASES";

/// Key-value bucket that stores each artifact's signed manifest under its hex SHA-256.
pub const RELEASE_MANIFESTS_BUCKET: &str = "warden_release_manifests";

/// Size of the buffer used to copy artifacts between files, the network and the object store.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// Error of a release-store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The uploaded bytes do not match the manifest.
    #[error("artifact {field} mismatch: the manifest says {expected}, the upload has {found}")]
    Mismatch {
        /// `size` or `sha256`.
        field: &'static str,
        /// Value in the manifest.
        expected: String,
        /// Value of the upload.
        found: String,
    },
    /// The upload stream failed.
    #[error("failed to receive the artifact: {0}")]
    Upload(String),
    /// No artifact with this digest is in the store.
    #[error("artifact {sha256} not found")]
    NotFound {
        /// Hex SHA-256.
        sha256: String,
    },
    /// The stored artifact does not match its name or manifest, so it is not served.
    #[error("stored artifact {sha256} is damaged: {reason}")]
    Damaged {
        /// Hex SHA-256.
        sha256: String,
        /// Description of the mismatch.
        reason: String,
    },
    /// A file in the cache directory could not be read or written.
    #[error("cache file {path}: {reason}")]
    Cache {
        /// The file.
        path: String,
        /// The operating system's message.
        reason: String,
    },
    /// The object store failed.
    #[error("object store {RELEASES_OBJECT_STORE}: {0}")]
    ObjectStore(String),
}

fn cache_error(path: &Path, error: impl std::fmt::Display) -> ReleaseError {
    ReleaseError::Cache {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// A replica's handle on the object store and its cache directory. Cheap to clone.
#[derive(Clone)]
pub struct ReleaseStore {
    objects: ObjectStore,
    cache_dir: PathBuf,
    fill_lock: Arc<tokio::sync::Mutex<()>>,
}

/// One chunk read from a cached artifact.
#[derive(Debug)]
pub struct Chunk {
    /// The bytes; shorter than asked only at the end of the artifact, empty past it.
    pub bytes: Vec<u8>,
    /// Size of the whole artifact.
    pub size: u64,
}

impl ReleaseStore {
    /// Opens the object store, creating it if no replica has, and creates the cache directory.
    pub async fn open(
        client: async_nats::Client,
        cache_dir: PathBuf,
    ) -> Result<Self, ReleaseError> {
        let jetstream = async_nats::jetstream::new(client);
        let objects = match jetstream.get_object_store(RELEASES_OBJECT_STORE).await {
            Ok(objects) => objects,
            Err(_) => jetstream
                .create_object_store(object_store::Config {
                    bucket: RELEASES_OBJECT_STORE.into(),
                    description: Some("Warden release artifacts by hex SHA-256".into()),
                    ..Default::default()
                })
                .await
                .map_err(|error| ReleaseError::ObjectStore(error.to_string()))?,
        };
        tokio::fs::create_dir_all(&cache_dir)
            .await
            .map_err(|error| cache_error(&cache_dir, error))?;
        Ok(Self {
            objects,
            cache_dir,
            fill_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Directory of the cached artifacts.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Path of the cached artifact with this hex digest.
    pub fn cache_path(&self, sha256_hex: &str) -> PathBuf {
        self.cache_dir.join(sha256_hex)
    }

    /// Writes an upload to a temporary file, hashing while writing and stopping as soon as it
    /// grows past the manifest's size, then checks size and SHA-256. Returns the file.
    pub async fn receive<S, E>(
        &self,
        manifest: &ReleaseManifest,
        upload_id: &str,
        mut body: S,
    ) -> Result<PathBuf, ReleaseError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.cache_dir.join(format!(
            "{}.upload-{upload_id}",
            hex::encode(&manifest.sha256)
        ));
        let result = self.receive_into(manifest, &path, &mut body).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        result.map(|()| path)
    }

    async fn receive_into<S, E>(
        &self,
        manifest: &ReleaseManifest,
        path: &Path,
        body: &mut S,
    ) -> Result<(), ReleaseError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|error| cache_error(path, error))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| ReleaseError::Upload(error.to_string()))?;
            size = size.saturating_add(chunk.len() as u64);
            if size > manifest.size {
                return Err(ReleaseError::Mismatch {
                    field: "size",
                    expected: manifest.size.to_string(),
                    found: format!("more than {}", manifest.size),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|error| cache_error(path, error))?;
        }
        if size != manifest.size {
            return Err(ReleaseError::Mismatch {
                field: "size",
                expected: manifest.size.to_string(),
                found: size.to_string(),
            });
        }
        let digest = hasher.finalize();
        if digest.as_slice() != manifest.sha256.as_slice() {
            return Err(ReleaseError::Mismatch {
                field: "sha256",
                expected: hex::encode(&manifest.sha256),
                found: hex::encode(digest),
            });
        }
        file.sync_all()
            .await
            .map_err(|error| cache_error(path, error))?;
        Ok(())
    }

    /// Puts a checked upload into the object store, then moves the file into the cache.
    pub async fn store(&self, sha256_hex: &str, path: &Path) -> Result<(), ReleaseError> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|error| cache_error(path, error))?;
        self.objects
            .put(sha256_hex, &mut file)
            .await
            .map_err(|error| ReleaseError::ObjectStore(error.to_string()))?;
        tokio::fs::rename(path, self.cache_path(sha256_hex))
            .await
            .map_err(|error| cache_error(path, error))?;
        Ok(())
    }

    /// Reads up to `length` bytes at `offset` of the artifact, filling the cache from the
    /// object store first if needed. A newly filled cache file must have `size` bytes, the
    /// manifest's size. The returned size is the cache file's, so a node notices a cache file
    /// that changed after it was filled. The bytes are empty if `offset` is at or past its end.
    pub async fn chunk(
        &self,
        sha256_hex: &str,
        size: u64,
        offset: u64,
        length: u32,
    ) -> Result<Chunk, ReleaseError> {
        let path = self.cache_path(sha256_hex);
        if tokio::fs::metadata(&path).await.is_err() {
            self.fill(sha256_hex, size).await?;
        }
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|error| cache_error(&path, error))?;
        let cached_size = file
            .metadata()
            .await
            .map_err(|error| cache_error(&path, error))?
            .len();
        if offset >= cached_size {
            return Ok(Chunk {
                bytes: Vec::new(),
                size: cached_size,
            });
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|error| cache_error(&path, error))?;
        let want = u64::from(length).min(cached_size - offset);
        let mut bytes = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
        (&mut file)
            .take(want)
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| cache_error(&path, error))?;
        Ok(Chunk {
            bytes,
            size: cached_size,
        })
    }

    /// Copies the artifact from the object store into the cache, checking its SHA-256 against
    /// its name and its size against the manifest before the file takes its cache name.
    async fn fill(&self, sha256_hex: &str, size: u64) -> Result<(), ReleaseError> {
        // One fill at a time, so concurrent misses download the artifact once.
        let _fill = self.fill_lock.lock().await;
        let path = self.cache_path(sha256_hex);
        if tokio::fs::metadata(&path).await.is_ok() {
            return Ok(());
        }
        let mut object = match self.objects.get(sha256_hex).await {
            Ok(object) => object,
            Err(error) if error.kind() == object_store::GetErrorKind::NotFound => {
                return Err(ReleaseError::NotFound {
                    sha256: sha256_hex.to_owned(),
                })
            }
            Err(error) => return Err(ReleaseError::ObjectStore(error.to_string())),
        };
        // The process id keeps replicas that share a cache directory out of each other's file.
        let partial = self
            .cache_dir
            .join(format!("{sha256_hex}.fill-{}", std::process::id()));
        let result = async {
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(|error| cache_error(&partial, error))?;
            let mut hasher = Sha256::new();
            let mut copied: u64 = 0;
            let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
            loop {
                let read = object
                    .read(&mut buffer)
                    .await
                    .map_err(|error| ReleaseError::ObjectStore(error.to_string()))?;
                if read == 0 {
                    break;
                }
                let data = buffer.get(..read).unwrap_or_default();
                copied = copied.saturating_add(read as u64);
                if copied > size {
                    break;
                }
                hasher.update(data);
                file.write_all(data)
                    .await
                    .map_err(|error| cache_error(&partial, error))?;
            }
            let damaged = |reason: String| ReleaseError::Damaged {
                sha256: sha256_hex.to_owned(),
                reason,
            };
            if copied != size {
                return Err(damaged(format!(
                    "the object has {copied} bytes or more; the manifest says {size}"
                )));
            }
            let digest = hex::encode(hasher.finalize());
            if digest != sha256_hex {
                return Err(damaged(format!("the object's SHA-256 is {digest}")));
            }
            file.sync_all()
                .await
                .map_err(|error| cache_error(&partial, error))?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(|error| cache_error(&partial, error))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        } else {
            tracing::info!(
                sha256 = sha256_hex,
                size,
                "artifact cached from the object store"
            );
        }
        result
    }
}
