//! The sled-backed store of a Warden's state: execution records, the current trust document and
//! the latest time seen. Every write is flushed before it returns.

use std::path::Path;
use std::time::{Duration, Instant};

use warden_bus::trust::SignedDocument;
use warden_bus::{TaskId, UnixMillis};

use crate::core::access::AccessRecord;
use crate::core::certificate::CertificateRecord;
use crate::core::record::{decode_stored, encode_stored, RecordError, TaskRecord};

/// Name of the sled tree of execution records.
const TASKS_TREE: &str = "tasks";
/// Name of the sled tree of single values.
const META_TREE: &str = "meta";
/// Key of the current signed trust document in [`META_TREE`].
const TRUST_KEY: &[u8] = b"trust_document";
/// Key of the latest wall-clock time seen in [`META_TREE`].
const CLOCK_KEY: &[u8] = b"clock_high_water";
/// Key of the installed TLS certificate's record in [`META_TREE`].
const CERTIFICATE_KEY: &[u8] = b"tls_certificate";
/// Key of the installed access rules in [`META_TREE`].
const ACCESS_KEY: &[u8] = b"access_rules";

/// How long opening waits for the database's lock.
///
/// sled 0.34 releases the lock from a background thread after its handle is dropped, so a
/// database closed a moment ago can still be locked. A lock held by a running Warden outlasts
/// this wait and is reported as [`StoreError::Locked`].
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled reported an error.
    #[error("state store at {path}: {source}")]
    Sled {
        /// The database directory.
        path: String,
        /// sled's error.
        source: sled::Error,
    },
    /// Another process holds the database's lock for longer than [`LOCK_WAIT`].
    #[error("state store at {path} is locked by another process; stop the other Warden that uses this state directory, or give this one its own `state_dir`")]
    Locked {
        /// The database directory.
        path: String,
    },
    /// A stored value is damaged.
    #[error("state store at {path}: record {key}: {source}; move the state directory aside and re-enroll the node if it cannot be repaired")]
    Record {
        /// The database directory.
        path: String,
        /// Key of the damaged value.
        key: String,
        /// The decoding error.
        source: RecordError,
    },
}

/// Opens (creating if needed) the sled database in `dir`, waiting up to [`LOCK_WAIT`] for its
/// lock.
pub fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    open_db_waiting(dir, LOCK_WAIT)
}

fn open_db_waiting(dir: &Path, wait: Duration) -> Result<sled::Db, StoreError> {
    let path = || dir.display().to_string();
    let deadline = Instant::now() + wait;
    loop {
        match sled::open(dir) {
            Ok(db) => return Ok(db),
            Err(source) if is_lock_contention(&source) => {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked { path: path() });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(StoreError::Sled {
                    path: path(),
                    source,
                })
            }
        }
    }
}

/// Tells whether sled failed only because another handle has the database's lock. sled 0.34
/// reports this as an I/O error of kind `Other` with its own text. The test of
/// [`StoreError::Locked`] fails if a later sled words it differently.
fn is_lock_contention(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// A Warden's persistent state in sled.
#[derive(Clone)]
pub struct TaskStore {
    db: sled::Db,
    tasks: sled::Tree,
    meta: sled::Tree,
    path: String,
}

impl TaskStore {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let sled_error = |source| StoreError::Sled {
            path: path.clone(),
            source,
        };
        let db = open_db(dir)?;
        let tasks = db.open_tree(TASKS_TREE).map_err(sled_error)?;
        let meta = db.open_tree(META_TREE).map_err(sled_error)?;
        Ok(Self {
            db,
            tasks,
            meta,
            path,
        })
    }

    /// The database, shared with the component state and the release installer.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn sled_error(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn record_error(&self, key: &[u8], source: RecordError) -> StoreError {
        StoreError::Record {
            path: self.path.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        }
    }

    /// Reads every execution record, failing on the first damaged one.
    pub fn load(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let mut records = Vec::new();
        for entry in &self.tasks {
            let (key, value) = entry.map_err(|source| self.sled_error(source))?;
            records.push(
                TaskRecord::decode(&value).map_err(|source| self.record_error(&key, source))?,
            );
        }
        Ok(records)
    }

    /// Writes a record and waits until it is flushed to disk.
    pub async fn persist(&self, record: &TaskRecord) -> Result<(), StoreError> {
        let key = record.task_id.as_str().as_bytes();
        let bytes = record
            .encode()
            .map_err(|source| self.record_error(key, source))?;
        self.tasks
            .insert(key, bytes)
            .map_err(|source| self.sled_error(source))?;
        self.flush().await
    }

    /// Deletes records and waits until the deletion is flushed.
    pub async fn forget(&self, ids: &[TaskId]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(id.as_str().as_bytes());
        }
        self.tasks
            .apply_batch(batch)
            .map_err(|source| self.sled_error(source))?;
        self.flush().await
    }

    /// The stored trust document, if any.
    pub fn load_trust(&self) -> Result<Option<SignedDocument>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(TRUST_KEY)
            .map_err(|source| self.sled_error(source))?
        else {
            return Ok(None);
        };
        decode_stored(&bytes)
            .map(Some)
            .map_err(|source| self.record_error(TRUST_KEY, source))
    }

    /// Stores the trust document and waits until it is flushed.
    pub async fn persist_trust(&self, document: &SignedDocument) -> Result<(), StoreError> {
        let bytes =
            encode_stored(document).map_err(|source| self.record_error(TRUST_KEY, source))?;
        self.meta
            .insert(TRUST_KEY, bytes)
            .map_err(|source| self.sled_error(source))?;
        self.flush().await
    }

    /// The latest wall-clock time recorded, or the epoch if none.
    pub fn load_clock(&self) -> Result<UnixMillis, StoreError> {
        let Some(bytes) = self
            .meta
            .get(CLOCK_KEY)
            .map_err(|source| self.sled_error(source))?
        else {
            return Ok(UnixMillis(0));
        };
        decode_stored(&bytes).map_err(|source| self.record_error(CLOCK_KEY, source))
    }

    /// Records the latest wall-clock time seen and waits until it is flushed.
    pub async fn persist_clock(&self, time: UnixMillis) -> Result<(), StoreError> {
        let bytes = encode_stored(&time).map_err(|source| self.record_error(CLOCK_KEY, source))?;
        self.meta
            .insert(CLOCK_KEY, bytes)
            .map_err(|source| self.sled_error(source))?;
        self.flush().await
    }

    /// Reads the record of the installed TLS certificate, if any.
    pub fn load_certificate(&self) -> Result<Option<CertificateRecord>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(CERTIFICATE_KEY)
            .map_err(|source| self.sled_error(source))?
        else {
            return Ok(None);
        };
        let record: CertificateRecord =
            decode_stored(&bytes).map_err(|source| self.record_error(CERTIFICATE_KEY, source))?;
        if record.not_before >= record.not_after {
            let reason = format!(
                "not_before {} is not before not_after {}",
                record.not_before, record.not_after
            );
            return Err(self.record_error(CERTIFICATE_KEY, RecordError::Malformed { reason }));
        }
        Ok(Some(record))
    }

    /// Stores the record of the TLS certificate about to be installed and waits until it is
    /// flushed.
    pub async fn persist_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        debug_assert!(record.not_before < record.not_after);
        let bytes =
            encode_stored(record).map_err(|source| self.record_error(CERTIFICATE_KEY, source))?;
        self.meta
            .insert(CERTIFICATE_KEY, bytes)
            .map_err(|source| self.sled_error(source))?;
        self.flush().await
    }

    /// Reads the record of the installed access rules, if any.
    pub fn load_access(&self) -> Result<Option<AccessRecord>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(ACCESS_KEY)
            .map_err(|source| self.sled_error(source))?
        else {
            return Ok(None);
        };
        decode_stored(&bytes)
            .map(Some)
            .map_err(|source| self.record_error(ACCESS_KEY, source))
    }

    /// Stores the record of the access rules about to be applied and waits until it is
    /// flushed.
    pub async fn persist_access(&self, record: &AccessRecord) -> Result<(), StoreError> {
        let bytes =
            encode_stored(record).map_err(|source| self.record_error(ACCESS_KEY, source))?;
        self.meta
            .insert(ACCESS_KEY, bytes)
            .map_err(|source| self.sled_error(source))?;
        self.flush().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map_err(|source| self.sled_error(source))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use warden_bus::{ReportStatus, TaskId, UnixMillis};

    use super::*;
    use crate::core::record::RecordState;

    fn record(id: u8) -> TaskRecord {
        TaskRecord {
            task_id: TaskId::from_random([id; 16]),
            stream_sequence: 3,
            expires_at: UnixMillis(10),
            state: RecordState::Finished(ReportStatus::Failed { reason: "x".into() }),
        }
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = TaskStore::open(dir.path()).unwrap();
            store.persist(&record(1)).await.unwrap();
            store.persist(&record(2)).await.unwrap();
            store.forget(&[TaskId::from_random([2; 16])]).await.unwrap();
            store.persist_clock(UnixMillis(42)).await.unwrap();
            store.persist_certificate(&certificate()).await.unwrap();
            store.persist_access(&access()).await.unwrap();
        }
        let store = TaskStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![record(1)]);
        assert_eq!(store.load_clock().unwrap(), UnixMillis(42));
        assert_eq!(store.load_trust().unwrap(), None);
        assert_eq!(store.load_certificate().unwrap(), Some(certificate()));
        assert_eq!(store.load_access().unwrap(), Some(access()));
    }

    fn access() -> AccessRecord {
        AccessRecord {
            version: 3,
            rules: vec![warden_bus::messages::AccessRule {
                cidr: "10.0.0.0/8".into(),
                protocol: warden_bus::messages::Protocol::Tcp,
                expires_at: Some(UnixMillis(9_000)),
            }],
            closed_through: UnixMillis(5_000),
        }
    }

    fn certificate() -> CertificateRecord {
        CertificateRecord {
            not_before: UnixMillis(1_000),
            not_after: UnixMillis(61_000),
            bundle_version: 4,
            renew_at: UnixMillis(37_000),
        }
    }

    #[test]
    fn certificate_absent_until_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::open(dir.path()).unwrap();
        assert_eq!(store.load_certificate().unwrap(), None);
    }

    #[test]
    fn held_lock_reported_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first_handle = open_db(dir.path()).unwrap();
        let error = open_db_waiting(dir.path(), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
        assert!(
            error.to_string().contains("locked by another process"),
            "{error}"
        );
    }

    #[test]
    fn open_waits_for_released_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first_handle = open_db(dir.path()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first_handle);
        });
        let reopened = open_db_waiting(dir.path(), Duration::from_secs(10));
        release.join().unwrap();
        assert!(reopened.is_ok(), "{:?}", reopened.err());
    }

    #[test]
    fn damaged_record_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = TaskStore::open(dir.path()).unwrap();
            store.tasks.insert(b"bad", b"\x01garbage".to_vec()).unwrap();
        }
        let store = TaskStore::open(dir.path()).unwrap();
        let error = store.load().unwrap_err().to_string();
        assert!(error.contains("record bad"), "{error}");
    }
}
