//! Installed releases of a component, and which one the supervisor runs.
//!
//! Layout: `<state_dir>/components/<component>/releases/<release_counter>-<first 12 hex of
//! sha256>/<binary name>`. [`Installer::install`] moves a staged file into place and makes it
//! executable only after it is on disk under its final name and its SHA-256 matches;
//! [`Installer::activate`] records in sled which release runs, flushed before it returns;
//! [`Installer::rollback`] goes back to the previous one; [`Installer::prune`] keeps the active
//! and the previous release and deletes the others.
//!
//! The installer trusts its caller to have verified the staged file against a signed manifest.
//! It checks the SHA-256 again only to catch a file that changed after that check.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warden_bus::messages::Component;

use crate::core::record::{decode_stored, encode_stored, RecordError};

/// Name of the sled tree of component state.
pub const COMPONENTS_TREE: &str = "components";

/// Errors of installer operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// The operation that failed.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A path that must be a real file or directory is something else, such as a symbolic link.
    #[error("{what} {path} is not a regular file or directory (a symbolic link?); remove it, the installer creates it")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What the path should hold.
        what: &'static str,
    },
    /// The staged file is on another file system, so it cannot be renamed into place.
    #[error("staged file {path} is on another file system than {state_dir}; stage it inside the state directory")]
    CrossDevice {
        /// The staged file.
        path: PathBuf,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// The file's SHA-256 is not the expected one; it was removed and never made executable.
    #[error("{path} has sha256 {actual}, expected {expected}; the file was removed")]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The expected digest, hex.
        expected: String,
        /// The digest of the file, hex.
        actual: String,
    },
    /// The release is already installed with other content.
    #[error("release {release} of {component} is already installed; use a new release counter")]
    AlreadyInstalled {
        /// The component.
        component: Component,
        /// The release directory name.
        release: String,
    },
    /// The release to activate is not installed.
    #[error("release {release} of {component} is not installed; install it first")]
    NotInstalled {
        /// The component.
        component: Component,
        /// The release directory name.
        release: String,
    },
    /// Rollback was asked for but there is no previous release.
    #[error("{component} has no previous release to roll back to")]
    NoPrevious {
        /// The component.
        component: Component,
    },
    /// sled failed.
    #[error("component store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value is damaged.
    #[error("component store: damaged release record of {component}: {source}")]
    Record {
        /// The component.
        component: Component,
        /// The decoding error.
        source: RecordError,
    },
}

/// One installed release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Monotonic release counter from the manifest.
    pub release_counter: u64,
    /// SHA-256 of the binary.
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
}

impl Release {
    /// Directory name: `<counter>-<first 12 hex of sha256>`.
    pub fn directory_name(&self) -> String {
        let hex = hex::encode(&self.sha256);
        format!("{}-{}", self.release_counter, hex.get(..12).unwrap_or(&hex))
    }
}

/// The release that runs, and the one before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveReleases {
    /// The release the supervisor runs.
    pub active: Option<Release>,
    /// The release that ran before, kept for rollback.
    pub previous: Option<Release>,
}

/// Installs and activates releases of one component.
#[derive(Clone)]
pub struct Installer {
    component: Component,
    state_dir: PathBuf,
    tree: sled::Tree,
    db: sled::Db,
}

impl Installer {
    /// Opens the installer of `component`, keeping its record in `db`.
    pub fn new(
        component: Component,
        state_dir: &Path,
        db: &sled::Db,
    ) -> Result<Self, InstallError> {
        Ok(Self {
            component,
            state_dir: state_dir.to_path_buf(),
            tree: db.open_tree(COMPONENTS_TREE)?,
            db: db.clone(),
        })
    }

    /// File name of the component's binary inside a release directory.
    pub fn binary_name(&self) -> &'static str {
        match self.component {
            Component::Iggy => "iggy-server",
            Component::Connectors => "iggy-connectors",
            Component::Warden => "warden",
        }
    }

    /// Directory holding the component's releases.
    pub fn releases_dir(&self) -> PathBuf {
        self.state_dir
            .join("components")
            .join(self.component.as_str())
            .join("releases")
    }

    /// Path of the binary of `release`.
    pub fn binary_path(&self, release: &Release) -> PathBuf {
        self.releases_dir()
            .join(release.directory_name())
            .join(self.binary_name())
    }

    /// Moves the staged file into its release directory, checks its SHA-256, fsyncs it and
    /// only then makes it executable (mode 0755). A file with another digest is removed.
    pub fn install(&self, staged: &Path, release: &Release) -> Result<PathBuf, InstallError> {
        let io = |operation, path: &Path| {
            let path = path.to_path_buf();
            move |source| InstallError::Io {
                operation,
                path,
                source,
            }
        };
        let directory = self.releases_dir().join(release.directory_name());
        let target = directory.join(self.binary_name());
        if target.exists() {
            return Err(InstallError::AlreadyInstalled {
                component: self.component,
                release: release.directory_name(),
            });
        }
        // A symbolic link in place of the release directory or the staged file would make the
        // installed binary live outside the releases directory, where the checks below do not
        // reach; refuse both.
        if std::fs::symlink_metadata(&directory).is_ok_and(|metadata| !metadata.is_dir()) {
            return Err(InstallError::NotRegular {
                path: directory,
                what: "release directory",
            });
        }
        match std::fs::symlink_metadata(staged) {
            Ok(metadata) if metadata.file_type().is_file() => {}
            _ => {
                return Err(InstallError::NotRegular {
                    path: staged.to_path_buf(),
                    what: "staged artifact",
                })
            }
        }
        std::fs::create_dir_all(&directory).map_err(io("creating", &directory))?;

        // Rename first: the file is under its final name before anything can run it, and it
        // is not executable yet, because the mode is set last.
        if let Err(source) = std::fs::rename(staged, &target) {
            if source.raw_os_error() == Some(nix::libc::EXDEV) {
                return Err(InstallError::CrossDevice {
                    path: staged.to_path_buf(),
                    state_dir: self.state_dir.clone(),
                });
            }
            return Err(io("moving the staged file to", &target)(source));
        }
        // The staged path may have been swapped between the check above and the rename.
        if !std::fs::symlink_metadata(&target).is_ok_and(|metadata| metadata.file_type().is_file())
        {
            let _ = std::fs::remove_file(&target);
            return Err(InstallError::NotRegular {
                path: target,
                what: "installed artifact",
            });
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
            .map_err(io("restricting", &target))?;

        // The digest again: the staged file may have changed since the caller checked it.
        let actual = sha256_file(&target).map_err(io("hashing", &target))?;
        if actual.as_slice() != release.sha256.as_slice() {
            let _ = std::fs::remove_file(&target);
            let _ = std::fs::remove_dir(&directory);
            return Err(InstallError::DigestMismatch {
                path: target,
                expected: hex::encode(&release.sha256),
                actual: hex::encode(actual),
            });
        }
        std::fs::File::open(&target)
            .and_then(|file| file.sync_all())
            .map_err(io("syncing", &target))?;
        sync_dir(&directory).map_err(io("syncing", &directory))?;
        sync_dir(&self.releases_dir()).map_err(io("syncing", &self.releases_dir()))?;

        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
            .map_err(io("making executable", &target))?;
        std::fs::File::open(&target)
            .and_then(|file| file.sync_all())
            .map_err(io("syncing", &target))?;
        tracing::info!(component = %self.component, release = %release.directory_name(), "installed release");
        Ok(target)
    }

    /// The active and previous releases as recorded.
    pub fn releases(&self) -> Result<ActiveReleases, InstallError> {
        let Some(bytes) = self.tree.get(self.key())? else {
            return Ok(ActiveReleases::default());
        };
        decode_stored(&bytes).map_err(|source| InstallError::Record {
            component: self.component,
            source,
        })
    }

    /// The binary of the active release, if one is installed.
    pub fn active_binary(&self) -> Result<Option<PathBuf>, InstallError> {
        Ok(self
            .releases()?
            .active
            .map(|release| self.binary_path(&release)))
    }

    /// Makes `release` the one the supervisor runs; the former active one becomes previous.
    /// Flushed before it returns.
    pub async fn activate(&self, release: &Release) -> Result<(), InstallError> {
        if !self.binary_path(release).is_file() {
            return Err(InstallError::NotInstalled {
                component: self.component,
                release: release.directory_name(),
            });
        }
        let mut releases = self.releases()?;
        if releases.active.as_ref() == Some(release) {
            return Ok(());
        }
        releases.previous = releases.active.take();
        releases.active = Some(release.clone());
        self.store(&releases).await?;
        tracing::info!(component = %self.component, release = %release.directory_name(), "activated release");
        Ok(())
    }

    /// Makes the previous release active again and returns it; the rolled-back release is
    /// forgotten as previous, and [`Self::prune`] deletes it.
    pub async fn rollback(&self) -> Result<Release, InstallError> {
        let releases = self.releases()?;
        let Some(previous) = releases.previous else {
            return Err(InstallError::NoPrevious {
                component: self.component,
            });
        };
        let rolled_back = ActiveReleases {
            active: Some(previous.clone()),
            previous: None,
        };
        self.store(&rolled_back).await?;
        tracing::warn!(component = %self.component, release = %previous.directory_name(), "rolled back to the previous release");
        Ok(previous)
    }

    /// Puts back a record read earlier with [`Self::releases`], so an upgrade that failed
    /// returns to exactly what ran before, the bootstrap file's binary included. Flushed before
    /// it returns.
    pub async fn restore(&self, releases: &ActiveReleases) -> Result<(), InstallError> {
        self.store(releases).await?;
        tracing::warn!(
            component = %self.component,
            release = %releases.active.as_ref().map_or("the bootstrap binary".to_owned(), Release::directory_name),
            "restored the release that ran before"
        );
        Ok(())
    }

    /// Deletes every release directory but the active and the previous one; returns the names
    /// deleted.
    pub fn prune(&self) -> Result<Vec<String>, InstallError> {
        let releases = self.releases()?;
        let keep: Vec<String> = [releases.active, releases.previous]
            .into_iter()
            .flatten()
            .map(|release| release.directory_name())
            .collect();
        let root = self.releases_dir();
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(InstallError::Io {
                    operation: "listing",
                    path: root,
                    source,
                })
            }
        };
        let mut deleted = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| InstallError::Io {
                operation: "listing",
                path: root.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            std::fs::remove_dir_all(entry.path()).map_err(|source| InstallError::Io {
                operation: "deleting",
                path: entry.path(),
                source,
            })?;
            deleted.push(name);
        }
        deleted.sort();
        Ok(deleted)
    }

    async fn store(&self, releases: &ActiveReleases) -> Result<(), InstallError> {
        let bytes = encode_stored(releases).map_err(|source| InstallError::Record {
            component: self.component,
            source,
        })?;
        self.tree.insert(self.key(), bytes)?;
        self.db.flush_async().await?;
        Ok(())
    }

    fn key(&self) -> String {
        format!("release/{}", self.component.as_str())
    }
}

/// SHA-256 of a file, read in 64 KiB chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        let Some(chunk) = buffer.get(..read) else {
            break;
        };
        if read == 0 {
            break;
        }
        hasher.update(chunk);
    }
    Ok(hasher.finalize().into())
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        state_dir: PathBuf,
        db: sled::Db,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_path_buf();
        let db = sled::open(state_dir.join("db")).unwrap();
        Fixture {
            _dir: dir,
            state_dir,
            db,
        }
    }

    fn stage(fixture: &Fixture, contents: &[u8]) -> (PathBuf, Release) {
        let path = fixture.state_dir.join(format!("staged-{}", contents.len()));
        std::fs::write(&path, contents).unwrap();
        let digest = Sha256::digest(contents).to_vec();
        (
            path,
            Release {
                release_counter: contents.len() as u64,
                sha256: digest,
            },
        )
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn symbolic_links_refused() {
        let fixture = fixture();
        let installer = Installer::new(Component::Iggy, &fixture.state_dir, &fixture.db).unwrap();
        let outside = tempfile::tempdir().unwrap();

        // A staged "file" that is a link to a file outside, even with the right content.
        let (staged, release) = stage(&fixture, b"release bytes");
        let target = outside.path().join("pointee");
        std::fs::rename(&staged, &target).unwrap();
        std::os::unix::fs::symlink(&target, &staged).unwrap();
        let error = installer.install(&staged, &release).unwrap_err();
        assert!(matches!(error, InstallError::NotRegular { .. }), "{error}");
        assert_eq!(
            mode(&target) & 0o111,
            0,
            "the file behind the link became executable"
        );

        // A release directory that is a link to a directory outside.
        let (staged, release) = stage(&fixture, b"other release");
        let directory = installer.releases_dir().join(release.directory_name());
        std::fs::create_dir_all(installer.releases_dir()).unwrap();
        std::os::unix::fs::symlink(outside.path(), &directory).unwrap();
        let error = installer.install(&staged, &release).unwrap_err();
        assert!(matches!(error, InstallError::NotRegular { .. }), "{error}");
        assert!(!outside.path().join(installer.binary_name()).exists());
    }

    #[tokio::test]
    async fn install_activate_rollback_prune() {
        let fixture = fixture();
        let installer = Installer::new(Component::Iggy, &fixture.state_dir, &fixture.db).unwrap();
        assert_eq!(installer.active_binary().unwrap(), None);

        let mut installed = Vec::new();
        for contents in [&b"one"[..], b"two2", b"three"] {
            let (staged, release) = stage(&fixture, contents);
            let path = installer.install(&staged, &release).unwrap();
            assert!(!staged.exists(), "the staged file is moved, not copied");
            assert_eq!(mode(&path), 0o755);
            assert_eq!(std::fs::read(&path).unwrap(), contents);
            let expected_dir =
                format!("{}-{}", contents.len(), &hex::encode(&release.sha256)[..12]);
            assert!(
                path.ends_with(format!("{expected_dir}/iggy-server")),
                "{path:?}"
            );
            installer.activate(&release).await.unwrap();
            installed.push(release);
        }
        assert_eq!(
            installer.active_binary().unwrap(),
            Some(installer.binary_path(&installed[2]))
        );
        assert_eq!(
            installer.prune().unwrap(),
            vec![installed[0].directory_name()]
        );

        let back = installer.rollback().await.unwrap();
        assert_eq!(back, installed[1]);
        assert!(matches!(
            installer.rollback().await,
            Err(InstallError::NoPrevious { .. })
        ));
        assert_eq!(
            installer.prune().unwrap(),
            vec![installed[2].directory_name()]
        );

        // The record survives a reopen.
        drop(installer);
        let installer = Installer::new(Component::Iggy, &fixture.state_dir, &fixture.db).unwrap();
        assert_eq!(
            installer.releases().unwrap().active,
            Some(installed[1].clone())
        );
    }

    #[tokio::test]
    async fn tampered_file_is_removed_and_never_executable() {
        let fixture = fixture();
        let installer =
            Installer::new(Component::Connectors, &fixture.state_dir, &fixture.db).unwrap();
        let (staged, mut release) = stage(&fixture, b"payload");
        release.sha256[0] ^= 1;
        let error = installer.install(&staged, &release).unwrap_err();
        assert!(
            matches!(error, InstallError::DigestMismatch { .. }),
            "{error}"
        );
        assert!(!installer.binary_path(&release).exists());
        assert!(matches!(
            installer.activate(&release).await,
            Err(InstallError::NotInstalled { .. })
        ));
    }

    #[tokio::test]
    async fn same_release_twice_is_rejected() {
        let fixture = fixture();
        let installer = Installer::new(Component::Iggy, &fixture.state_dir, &fixture.db).unwrap();
        let (staged, release) = stage(&fixture, b"abc");
        installer.install(&staged, &release).unwrap();
        let (staged, _) = stage(&fixture, b"abc");
        let error = installer.install(&staged, &release).unwrap_err();
        assert!(error.to_string().contains("already installed"), "{error}");
    }
}
