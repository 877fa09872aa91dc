//! Persisted supervision state of a component: whether it should run, with which
//! configuration version, and which process the Warden started last.
//!
//! The desired state brings components back after a Warden restart. The process record lets a
//! restarted Warden find a process its previous run left behind, so that process is stopped
//! before a new one starts and the component never runs twice.

use serde::{Deserialize, Serialize};
use warden_bus::messages::Component;

use super::installer::COMPONENTS_TREE;
use crate::core::record::{decode_stored, encode_stored, RecordError};

/// What the operator's tasks asked of a component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Whether the component should run.
    pub running: bool,
    /// Configuration version of the latest start, restart or reconfiguration; 0 if none.
    pub config_version: u64,
}

/// The process a Warden started for a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Process id, also its process group id.
    pub pid: u32,
    /// Its start time in clock ticks since boot, to tell it from a later process with the same
    /// id.
    pub start_ticks: u64,
}

/// Why the component state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// sled failed.
    #[error("component state store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value is damaged.
    #[error(
        "component state store: damaged {key}: {source}; delete the key or the state directory"
    )]
    Record {
        /// The key.
        key: String,
        /// The decoding error.
        source: RecordError,
    },
}

/// The component state in sled; every write is flushed before it returns.
#[derive(Clone)]
pub struct ComponentState {
    component: Component,
    db: sled::Db,
    tree: sled::Tree,
}

impl ComponentState {
    /// Opens the state of `component` in `db`.
    pub fn open(component: Component, db: &sled::Db) -> Result<Self, StateError> {
        Ok(Self {
            component,
            db: db.clone(),
            tree: db.open_tree(COMPONENTS_TREE)?,
        })
    }

    fn key(&self, kind: &str) -> String {
        format!("{kind}/{}", self.component.as_str())
    }

    fn load<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<Option<T>, StateError> {
        let key = self.key(kind);
        let Some(bytes) = self.tree.get(&key)? else {
            return Ok(None);
        };
        decode_stored(&bytes)
            .map(Some)
            .map_err(|source| StateError::Record { key, source })
    }

    fn store<T: Serialize>(&self, kind: &str, value: Option<&T>) -> Result<(), StateError> {
        let key = self.key(kind);
        match value {
            Some(value) => {
                let bytes = encode_stored(value).map_err(|source| StateError::Record {
                    key: key.clone(),
                    source,
                })?;
                self.tree.insert(key, bytes)?;
            }
            None => {
                self.tree.remove(key)?;
            }
        }
        // A blocking flush: the records are small and the caller must not act before they
        // are on disk.
        self.db.flush()?;
        Ok(())
    }

    /// The desired state; nothing desired if none was stored.
    pub fn desired(&self) -> Result<DesiredState, StateError> {
        Ok(self.load("desired")?.unwrap_or_default())
    }

    /// Stores the desired state and flushes.
    pub fn set_desired(&self, desired: DesiredState) -> Result<(), StateError> {
        self.store("desired", Some(&desired))
    }

    /// The last recorded process.
    pub fn process(&self) -> Result<Option<ProcessRecord>, StateError> {
        self.load("process")
    }

    /// Records the running process, or clears the record, and flushes.
    pub fn set_process(&self, record: Option<ProcessRecord>) -> Result<(), StateError> {
        self.store("process", record.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let state = ComponentState::open(Component::Iggy, &db).unwrap();
            assert_eq!(state.desired().unwrap(), DesiredState::default());
            state
                .set_desired(DesiredState {
                    running: true,
                    config_version: 4,
                })
                .unwrap();
            state
                .set_process(Some(ProcessRecord {
                    pid: 42,
                    start_ticks: 7,
                }))
                .unwrap();
            let other = ComponentState::open(Component::Connectors, &db).unwrap();
            assert_eq!(other.process().unwrap(), None);
        }
        let db = sled::open(dir.path()).unwrap();
        let state = ComponentState::open(Component::Iggy, &db).unwrap();
        assert!(state.desired().unwrap().running);
        assert_eq!(state.desired().unwrap().config_version, 4);
        assert_eq!(state.process().unwrap().map(|record| record.pid), Some(42));
        state.set_process(None).unwrap();
        assert_eq!(state.process().unwrap(), None);
    }
}
