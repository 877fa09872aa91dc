//! The self-upgrade record on disk, `<state_dir>/warden-release.json`, shared by the launcher
//! and the agent. Decisions about it are in [`crate::core::self_upgrade`].

use std::path::{Path, PathBuf};

use crate::core::self_upgrade::ReleaseRecord;
use crate::executor::write_private;

/// File name of the record inside the state directory.
pub const RECORD_FILE: &str = "warden-release.json";

/// Environment variable with which the launcher tells the agent its process id.
pub const LAUNCHER_PID_ENV: &str = "WARDEN_LAUNCHER_PID";

/// Largest record accepted; a real one is a few hundred bytes.
const RECORD_BYTES_MAX: u64 = 64 * 1024;

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordFileError {
    /// Reading or writing failed.
    #[error("failed to {operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The record file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid record.
    #[error("{path} is not a valid Warden release record ({reason}); fix it or delete it to run the bootstrap binary")]
    Invalid {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Path of the record in `state_dir`.
pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(RECORD_FILE)
}

/// Reads the record; `None` if there is none yet.
pub fn load(path: &Path) -> Result<Option<ReleaseRecord>, RecordFileError> {
    let io = |operation, source| RecordFileError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io("read", error)),
    };
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = metadata.permissions().mode();
        let owner = metadata.uid();
        let me = nix::unistd::geteuid().as_raw();
        if mode & 0o022 != 0 || owner != me {
            return Err(RecordFileError::Invalid {
                path: path.to_path_buf(),
                reason: format!(
                    "owned by uid {owner} with mode {:o}; it must belong to the Warden's user (uid {me}) and be writable by it alone: chown it and chmod 600 it",
                    mode & 0o777
                ),
            });
        }
    }
    if metadata.len() > RECORD_BYTES_MAX {
        return Err(RecordFileError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{} bytes, over {RECORD_BYTES_MAX}", metadata.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(|error| io("read", error))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| RecordFileError::Invalid {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })
}

/// Replaces the record atomically (temporary file, fsync, rename, fsync of the directory).
pub fn store(path: &Path, record: &ReleaseRecord) -> Result<(), RecordFileError> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|error| RecordFileError::Invalid {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    write_private(path, &bytes).map_err(|source| RecordFileError::Io {
        operation: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::self_upgrade::{Trial, TrialState};

    #[test]
    fn record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(dir.path());
        assert_eq!(load(&path).unwrap(), None);
        let mut record = ReleaseRecord::new("/usr/bin/warden".into());
        record.trial = Some(Trial {
            task_id: "t1".into(),
            binary: "/state/warden".into(),
            version: "0.2.0".into(),
            state: TrialState::Failed {
                reason: "exited with status 3".into(),
            },
        });
        store(&path, &record).unwrap();
        assert_eq!(load(&path).unwrap(), Some(record));
    }

    #[test]
    fn damaged_record_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(dir.path());
        std::fs::write(&path, b"{not json").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains(RECORD_FILE), "{error}");
    }
}
