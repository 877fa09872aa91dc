//! Persisted supervision state of a component: whether it should run, with which
//! configuration version, and which process the Warden started last.
//!
//! The desired state brings components back after a Warden restart. The process record lets a
//! restarted Warden find a process its previous run left behind, so that process is stopped
//! before a new one starts and the component never runs twice. The launch record covers the
//! moment between the spawn and the process record, and processes that left the group.

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

/// The id of the Warden's latest launch of a component, written before the process starts.
///
/// The process and all it starts inherit it in
/// [`LAUNCH_ID_VARIABLE`](super::process::LAUNCH_ID_VARIABLE), so a restarted Warden finds them
/// even when it crashed before writing the [`ProcessRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRecord {
    /// 32 lowercase hex digits, random per launch.
    pub id: String,
}

impl LaunchRecord {
    /// Draws a new launch id from `rng`.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self {
            id: bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
        }
    }
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

    /// Returns why the component failed, while it stays down after reaching its crash limit.
    pub fn failed(&self) -> Result<Option<String>, StateError> {
        self.load("failed")
    }

    /// Stores the desired state and the failure reason (`None` clears it) in one batch, and
    /// flushes, so a crash leaves both records or neither.
    pub fn set_desired_and_failure(
        &self,
        desired: DesiredState,
        failed: Option<&str>,
    ) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        let desired_key = self.key("desired");
        let desired_bytes = encode_stored(&desired).map_err(|source| StateError::Record {
            key: desired_key.clone(),
            source,
        })?;
        batch.insert(desired_key.as_bytes(), desired_bytes);
        let failed_key = self.key("failed");
        match failed {
            Some(detail) => {
                let bytes =
                    encode_stored(&detail.to_owned()).map_err(|source| StateError::Record {
                        key: failed_key.clone(),
                        source,
                    })?;
                batch.insert(failed_key.as_bytes(), bytes);
            }
            None => batch.remove(failed_key.as_bytes()),
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Returns the latest launch.
    pub fn launch(&self) -> Result<Option<LaunchRecord>, StateError> {
        self.load("launch")
    }

    /// Records a launch about to happen, or clears the record, and flushes.
    pub fn set_launch(&self, record: Option<&LaunchRecord>) -> Result<(), StateError> {
        self.store("launch", record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::store::open_db(dir.path()).unwrap();
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
            state
                .set_launch(Some(&LaunchRecord {
                    id: "0f".repeat(16),
                }))
                .unwrap();
            let other = ComponentState::open(Component::Connectors, &db).unwrap();
            assert_eq!(other.process().unwrap(), None);
        }
        let db = crate::store::open_db(dir.path()).unwrap();
        let state = ComponentState::open(Component::Iggy, &db).unwrap();
        assert!(state.desired().unwrap().running);
        assert_eq!(state.desired().unwrap().config_version, 4);
        assert_eq!(state.process().unwrap().map(|record| record.pid), Some(42));
        assert_eq!(state.launch().unwrap().unwrap().id, "0f".repeat(16));
        assert_eq!(state.failed().unwrap(), None);
        state
            .set_desired_and_failure(DesiredState::default(), Some("5 crashes"))
            .unwrap();
        assert_eq!(state.failed().unwrap().as_deref(), Some("5 crashes"));
        assert!(!state.desired().unwrap().running);
        state
            .set_desired_and_failure(DesiredState::default(), None)
            .unwrap();
        assert_eq!(state.failed().unwrap(), None);
        state.set_process(None).unwrap();
        assert_eq!(state.process().unwrap(), None);
        state.set_launch(None).unwrap();
        assert_eq!(state.launch().unwrap(), None);
    }

    #[test]
    fn launch_ids_are_random_hex() {
        let mut rng = rand::rngs::OsRng;
        let first = LaunchRecord::generate(&mut rng);
        let second = LaunchRecord::generate(&mut rng);
        assert_eq!(first.id.len(), 32);
        assert!(first.id.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }
}
