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

use std::collections::HashSet;
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
    /// The cache directory cannot be used: it cannot be created or read, or another user could
    /// change it, and so the files the replica writes there.
    #[error("artifact cache directory {path} {problem}; {fix}")]
    CacheDir {
        /// The directory.
        path: String,
        /// The problem found.
        problem: String,
        /// The advice for the operator.
        fix: &'static str,
    },
}

/// A cache directory that [`prepare_cache_dir`] created or checked.
#[derive(Debug, Clone)]
pub struct PreparedCacheDir(PathBuf);

impl PreparedCacheDir {
    /// Returns the directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Creates the cache directory with mode 0700 if it is missing, and checks it:
///
/// - it is a real directory owned by this user that no other user may write to;
/// - its path has no `..` and passes through no symbolic link;
/// - every directory above it belongs to root or this user and no other user may write to it,
///   unless its sticky bit keeps others from renaming what they do not own (as in `/tmp`);
/// - it contains nothing but cache files, so a path such as `/etc` given by mistake is rejected.
///
/// The replica creates files there and renames them, so a directory that another user could
/// write to, or rename and replace with a link, would let that user steer those writes.
pub fn prepare_cache_dir(dir: &Path) -> Result<PreparedCacheDir, ReleaseError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};

    let reject = |problem: String, fix| ReleaseError::CacheDir {
        path: dir.display().to_string(),
        problem,
        fix,
    };
    if dir
        .components()
        .any(|component| component == std::path::Component::ParentDir)
    {
        return Err(reject(
            "contains ..".to_owned(),
            "give the path without .. components",
        ));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(reject(
                "has no parent directory".to_owned(),
                "create the parent first, or give --artifact-cache-dir another directory",
            ))
        }
        Err(error) => {
            return Err(reject(
                format!("cannot be created ({error})"),
                "create it for the control plane's user, or give --artifact-cache-dir a \
                 directory this user may create",
            ))
        }
    }
    let unreadable = |error: std::io::Error| {
        reject(
            format!("cannot be read ({error})"),
            "give --artifact-cache-dir a directory this user may read",
        )
    };
    let metadata = std::fs::symlink_metadata(dir).map_err(unreadable)?;
    if !metadata.file_type().is_dir() {
        return Err(reject(
            "is not a directory (a symbolic link is not followed)".to_owned(),
            "give the path of a real directory",
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(reject(
            format!(
                "belongs to uid {}, not to this process's uid {me}",
                metadata.uid()
            ),
            "remove it so the control plane creates it, or chown it to the control plane's user",
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(reject(
            format!(
                "has mode {:o}, writable by other users",
                metadata.mode() & 0o7777
            ),
            "remove it, since other users may have put files in it, and let the control plane \
             create it again",
        ));
    }

    let real = std::fs::canonicalize(dir).map_err(unreadable)?;
    let absolute = std::path::absolute(dir).map_err(unreadable)?;
    if real != absolute {
        return Err(reject(
            format!(
                "passes through a symbolic link; its real path is {}",
                real.display()
            ),
            "give the real path",
        ));
    }
    for ancestor in real.ancestors().skip(1) {
        let metadata = std::fs::metadata(ancestor).map_err(unreadable)?;
        let owner = metadata.uid();
        let mode = metadata.mode();
        let problem = if owner != 0 && owner != me {
            format!("has parent {} of uid {owner}", ancestor.display())
        } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            format!(
                "has parent {} with mode {:o}, writable by other users without the sticky bit",
                ancestor.display(),
                mode & 0o7777
            )
        } else {
            continue;
        };
        return Err(reject(
            problem,
            "another user could rename the cache and put a link in its place; give a \
             directory whose parents only root or this user can change",
        ));
    }

    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let name = entry.map_err(unreadable)?.file_name();
        let name = name.to_string_lossy();
        if !is_cache_file_name(&name) {
            return Err(reject(
                format!("contains {name:?}, which is not a cache file"),
                "give an empty directory or one that only the control plane has used",
            ));
        }
    }
    Ok(PreparedCacheDir(dir.to_path_buf()))
}

/// Tells whether `name` is a cached artifact (its hex SHA-256) or a partial upload or fill of
/// one.
fn is_cache_file_name(name: &str) -> bool {
    let (digest, rest) = name.split_at(name.len().min(64));
    let digest_ok = digest.len() == 64
        && digest
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    digest_ok && (rest.is_empty() || rest.starts_with(".upload-") || rest.starts_with(".fill-"))
}

/// Creates `path` for writing as a new file of mode 0600. A leftover of an earlier run, such as
/// a fill interrupted by a crash, is removed first; a link there is removed, not followed.
async fn create_private(path: &Path) -> Result<tokio::fs::File, ReleaseError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(cache_error(path, error)),
    }
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .await
        .map_err(|error| cache_error(path, error))
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
    /// Digests whose cache file this process wrote or checked; see
    /// [`ReleaseStore::ensure_cached`].
    checked: Arc<std::sync::Mutex<HashSet<String>>>,
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
    /// Opens the object store, creating it if no replica has, with a cache directory from
    /// [`prepare_cache_dir`].
    pub async fn open(
        client: async_nats::Client,
        cache_dir: PreparedCacheDir,
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
        Ok(Self {
            objects,
            cache_dir: cache_dir.0,
            fill_lock: Arc::new(tokio::sync::Mutex::new(())),
            checked: Arc::default(),
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
        let mut file = create_private(path).await?;
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
        // The upload was checked against its digest before it got here.
        self.mark_checked(sha256_hex);
        Ok(())
    }

    fn is_checked(&self, sha256_hex: &str) -> bool {
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(sha256_hex)
    }

    fn mark_checked(&self, sha256_hex: &str) {
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(sha256_hex.to_owned());
    }

    /// Fills the cache with the artifact if it is missing. The first time this process serves
    /// a cache file it did not write, it reads the whole file and checks its SHA-256 against
    /// its name and its size against the manifest. A damaged file is removed and filled again
    /// from the object store, so disk damage heals instead of failing every node's download. A
    /// file changed after the check is caught by the nodes, which check every artifact.
    async fn ensure_cached(&self, sha256_hex: &str, size: u64) -> Result<(), ReleaseError> {
        if self.is_checked(sha256_hex) {
            return Ok(());
        }
        // One check or fill at a time, so concurrent requests read or download it once.
        let _fill = self.fill_lock.lock().await;
        if self.is_checked(sha256_hex) {
            return Ok(());
        }
        let path = self.cache_path(sha256_hex);
        // Looked at without following a link: only a regular file is read, since opening a FIFO
        // would wait for a writer while holding the lock.
        let found = match tokio::fs::symlink_metadata(&path).await {
            Ok(found) => Some(found),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(cache_error(&path, error)),
        };
        if let Some(found) = found {
            let damaged = if found.file_type().is_file() {
                damage(&path, sha256_hex, size).await?
            } else {
                Some(format!("it is a {}, not a file", file_kind(&found)))
            };
            let Some(reason) = damaged else {
                self.mark_checked(sha256_hex);
                return Ok(());
            };
            tracing::warn!(
                sha256 = sha256_hex,
                reason = %reason,
                "cached artifact is damaged; filling it again from the object store"
            );
            remove_any(&path).await?;
        }
        self.fill(sha256_hex, size).await?;
        self.mark_checked(sha256_hex);
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
        self.ensure_cached(sha256_hex, size).await?;
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
    /// its name and its size against the manifest before the file takes its cache name. The
    /// caller holds the fill lock.
    async fn fill(&self, sha256_hex: &str, size: u64) -> Result<(), ReleaseError> {
        let path = self.cache_path(sha256_hex);
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
            let mut file = create_private(&partial).await?;
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

/// Names the kind of a file that is not a regular one.
fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_dir() {
        "directory"
    } else if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else {
        "device"
    }
}

/// Removes whatever is at `path` in the cache directory, a directory with its contents too.
async fn remove_any(path: &Path) -> Result<(), ReleaseError> {
    let is_dir = tokio::fs::symlink_metadata(path)
        .await
        .is_ok_and(|found| found.file_type().is_dir());
    let removed = if is_dir {
        tokio::fs::remove_dir_all(path).await
    } else {
        tokio::fs::remove_file(path).await
    };
    removed.map_err(|error| cache_error(path, error))
}

/// Reads a cache file whole. Returns `None` when it has `size` bytes whose SHA-256 is
/// `sha256_hex`, or what is wrong with it. The file is opened without following a link and
/// without waiting, in case something replaced it since it was looked at.
async fn damage(path: &Path, sha256_hex: &str, size: u64) -> Result<Option<String>, ReleaseError> {
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .await
        .map_err(|error| cache_error(path, error))?;
    let is_file = file
        .metadata()
        .await
        .map_err(|error| cache_error(path, error))?
        .file_type()
        .is_file();
    if !is_file {
        return Ok(Some("it is not a regular file".to_owned()));
    }
    let mut hasher = Sha256::new();
    let mut read_total: u64 = 0;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let read = file
            .read(&mut buffer)
            .await
            .map_err(|error| cache_error(path, error))?;
        if read == 0 {
            break;
        }
        read_total = read_total.saturating_add(read as u64);
        if read_total > size {
            return Ok(Some(format!(
                "it has more than the manifest's {size} bytes"
            )));
        }
        hasher.update(buffer.get(..read).unwrap_or_default());
    }
    if read_total != size {
        return Ok(Some(format!(
            "it has {read_total} bytes; the manifest says {size}"
        )));
    }
    let digest = hex::encode(hasher.finalize());
    Ok((digest != sha256_hex).then(|| format!("its SHA-256 is {digest}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn problem(dir: &Path) -> String {
        match prepare_cache_dir(dir) {
            Err(error @ ReleaseError::CacheDir { .. }) => error.to_string(),
            other => panic!("{dir:?}: expected an unsafe-directory error, got {other:?}"),
        }
    }

    #[test]
    fn missing_cache_dir_created_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        prepare_cache_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // An existing private directory is accepted as it is.
        prepare_cache_dir(&dir).unwrap();
        let error = problem(&root.path().join("no/parent"));
        assert!(error.contains("no parent directory"), "{error}");
    }

    #[test]
    fn cache_dir_writable_by_others_rejected() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        for mode in [0o777, 0o1777, 0o720, 0o702] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = problem(&dir);
            assert!(
                error.contains("writable by other users"),
                "{mode:o}: {error}"
            );
            assert!(error.contains("remove it"), "{mode:o}: {error}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_cache_dir(&dir).unwrap();
    }

    #[test]
    fn link_as_cache_dir_rejected() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let link = root.path().join("cache");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = problem(&link);
        assert!(error.contains("not a directory"), "{error}");
        std::fs::write(root.path().join("file"), b"").unwrap();
        let error = problem(&root.path().join("file"));
        assert!(error.contains("not a directory"), "{error}");
    }

    #[test]
    fn cache_dir_of_another_user_rejected() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can give a directory away; the CI runs these tests as root.
            eprintln!("skipped: needs root to chown the directory");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65_534), Some(65_534)).unwrap();
        let error = problem(&dir);
        assert!(error.contains("belongs to uid 65534"), "{error}");
    }

    #[test]
    fn cache_dir_path_through_link_or_dots_rejected() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let error = problem(&link.join("cache"));
        assert!(error.contains("passes through a symbolic link"), "{error}");
        assert!(
            error.contains(&real.join("cache").display().to_string()),
            "{error}"
        );
        let error = problem(&real.join("..").join("real").join("cache"));
        assert!(error.contains("contains .."), "{error}");
    }

    #[test]
    fn cache_dir_under_open_parent_rejected() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("open");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = problem(&parent.join("cache"));
        assert!(error.contains("without the sticky bit"), "{error}");
        // With the sticky bit, as in /tmp, others cannot rename what they do not own.
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare_cache_dir(&parent.join("cache")).unwrap();
    }

    #[test]
    fn cache_dir_with_other_files_rejected() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        prepare_cache_dir(&dir).unwrap();
        let digest = "ab".repeat(32);
        for name in [
            digest.clone(),
            format!("{digest}.fill-12"),
            format!("{digest}.upload-00ff"),
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        prepare_cache_dir(&dir).unwrap();
        for name in [
            "passwd",
            &digest[..63],
            &format!("{digest}.old"),
            &"AB".repeat(32),
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
            let error = problem(&dir);
            assert!(error.contains("not a cache file"), "{name}: {error}");
            std::fs::remove_file(dir.join(name)).unwrap();
        }
    }

    /// A link planted where a fill or upload writes is removed, not followed.
    #[tokio::test]
    async fn planted_link_at_partial_file_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let partial = root.path().join("abc.fill-1");
        std::os::unix::fs::symlink(&victim, &partial).unwrap();
        let mut file = create_private(&partial).await.unwrap();
        file.write_all(b"artifact bytes").await.unwrap();
        drop(file);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        let metadata = std::fs::symlink_metadata(&partial).unwrap();
        assert!(metadata.file_type().is_file());
        assert_eq!(metadata.mode() & 0o777, 0o600);
    }
}
