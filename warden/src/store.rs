//! The sled-backed store of execution records.

use std::path::Path;

use crate::core::record::{RecordError, TaskRecord};

/// Name of the sled tree of execution records.
const TASKS_TREE: &str = "tasks";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled reported an error.
    #[error("task store at {path}: {source}")]
    Sled {
        /// The database directory.
        path: String,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored record is damaged.
    #[error("task store at {path}: record {key}: {source}; move the state directory aside and re-enroll the node if it cannot be repaired")]
    Record {
        /// The database directory.
        path: String,
        /// Key of the damaged record.
        key: String,
        /// The decoding error.
        source: RecordError,
    },
}

/// Execution records in a sled tree, keyed by task id.
#[derive(Clone)]
pub struct TaskStore {
    db: sled::Db,
    tree: sled::Tree,
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
        let db = sled::open(dir).map_err(sled_error)?;
        let tree = db.open_tree(TASKS_TREE).map_err(sled_error)?;
        Ok(Self { db, tree, path })
    }

    /// Reads every record, failing on the first damaged one.
    pub fn load(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let mut records = Vec::new();
        for entry in &self.tree {
            let (key, value) = entry.map_err(|source| StoreError::Sled {
                path: self.path.clone(),
                source,
            })?;
            let record = TaskRecord::decode(&value).map_err(|source| StoreError::Record {
                path: self.path.clone(),
                key: String::from_utf8_lossy(&key).into_owned(),
                source,
            })?;
            records.push(record);
        }
        Ok(records)
    }

    /// Writes a record and waits until it is flushed to disk.
    pub async fn persist(&self, record: &TaskRecord) -> Result<(), StoreError> {
        let bytes = record.encode().map_err(|source| StoreError::Record {
            path: self.path.clone(),
            key: record.task_id.to_string(),
            source,
        })?;
        let sled_error = |source| StoreError::Sled {
            path: self.path.clone(),
            source,
        };
        self.tree
            .insert(record.task_id.as_str().as_bytes(), bytes)
            .map_err(sled_error)?;
        self.db.flush_async().await.map_err(sled_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use warden_bus::{ReportStatus, TaskId, UnixMillis};

    use super::*;
    use crate::core::record::RecordState;

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let record = TaskRecord {
            task_id: TaskId::from_random([1; 16]),
            stream_sequence: 3,
            expires_at: UnixMillis(10),
            state: RecordState::Finished(ReportStatus::Failed { reason: "x".into() }),
        };
        {
            let store = TaskStore::open(dir.path()).unwrap();
            store.persist(&record).await.unwrap();
        }
        let store = TaskStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![record]);
    }

    #[test]
    fn damaged_record_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = TaskStore::open(dir.path()).unwrap();
            store.tree.insert(b"bad", b"\x01garbage".to_vec()).unwrap();
        }
        let store = TaskStore::open(dir.path()).unwrap();
        let error = store.load().unwrap_err().to_string();
        assert!(error.contains("record bad"), "{error}");
    }
}
