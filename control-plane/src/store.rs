//! Typed records in JetStream key-value buckets, with compare-and-set updates.
//!
//! Values are JSON, `{"schema": N, "record": {...}}`, so an operator can read them with the
//! `nats kv` tool and a later build can migrate old schemas. Reads check a size cap before
//! decoding.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warden_bus::subject::{node_key, DEPLOYMENTS_BUCKET, NODES_BUCKET, TASKS_BUCKET};
use warden_bus::{Bus, BusError, DeploymentId, UnixMillis};

use crate::core::health::NodeRecord;
use crate::core::lifecycle::TaskRecord;

/// Maximum size of a stored record, in bytes.
pub const RECORD_BYTES_MAX: usize = 512 * 1024;

/// How many times an update retries after another writer changed the record.
pub const UPDATE_ATTEMPTS_MAX: u32 = 16;

/// A record kind stored in its own bucket.
pub trait Record: Serialize + DeserializeOwned {
    /// Bucket holding records of this kind.
    const BUCKET: &'static str;
    /// Schema version written by this build.
    const SCHEMA: u32;
    /// What the record is called in messages.
    const NAME: &'static str;
    /// The record's key.
    fn key(&self) -> String;
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Deployment id.
    pub id: DeploymentId,
    /// Free text from the operator.
    #[serde(default)]
    pub description: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// The customer's approval public key, hex; when set, access rules and encryption keys need
    /// its signature before they are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_key: Option<String>,
    /// The access rule set last issued to all nodes, with the highest version so far. Nodes
    /// that report an older version get it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_rules: Option<warden_bus::messages::AccessRules>,
    /// The Iggy configuration last issued to all nodes, with the highest version so far. Nodes
    /// that report an older version get it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<warden_bus::messages::ApplyConfig>,
    /// The issue of `access_rules` to all nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_rules_issue: Option<crate::core::desired::IssueWindow>,
    /// The issue of `config` to all nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_issue: Option<crate::core::desired::IssueWindow>,
}

impl Record for DeploymentRecord {
    const BUCKET: &'static str = DEPLOYMENTS_BUCKET;
    const SCHEMA: u32 = 1;
    const NAME: &'static str = "deployment";
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for NodeRecord {
    const BUCKET: &'static str = NODES_BUCKET;
    const SCHEMA: u32 = 1;
    const NAME: &'static str = "node";
    fn key(&self) -> String {
        node_key(&self.deployment, &self.node)
    }
}

impl Record for TaskRecord {
    const BUCKET: &'static str = TASKS_BUCKET;
    const SCHEMA: u32 = 1;
    const NAME: &'static str = "task";
    fn key(&self) -> String {
        self.id.to_string()
    }
}

#[derive(Serialize, Deserialize)]
struct Stored<T> {
    schema: u32,
    record: T,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The broker failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A record with this key exists.
    #[error("{name} {key} already exists")]
    Exists {
        /// Record kind.
        name: &'static str,
        /// Key.
        key: String,
    },
    /// A stored value does not decode.
    #[error("stored {name} {key} is damaged: {reason}")]
    Damaged {
        /// Record kind.
        name: &'static str,
        /// Key.
        key: String,
        /// Description of the problem.
        reason: String,
    },
    /// Other writers kept changing the record.
    #[error("{name} {key} kept changing under {UPDATE_ATTEMPTS_MAX} update attempts; try again")]
    Contended {
        /// Record kind.
        name: &'static str,
        /// Key.
        key: String,
    },
}

/// Typed access to the control plane's buckets.
#[derive(Clone)]
pub struct Store {
    bus: Arc<dyn Bus>,
}

impl Store {
    /// Wraps a bus.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self { bus }
    }

    /// Creates the buckets if they do not exist. Task records go `task_retention` after their
    /// last change; the other records stay.
    pub async fn ensure_buckets(&self, task_retention: Duration) -> Result<(), StoreError> {
        for bucket in [
            DeploymentRecord::BUCKET,
            NodeRecord::BUCKET,
            crate::ca::CaRecord::BUCKET,
        ] {
            self.bus.ensure_bucket(bucket, None).await?;
        }
        self.bus
            .ensure_bucket(TaskRecord::BUCKET, Some(task_retention))
            .await?;
        Ok(())
    }

    /// Reads a record and its revision.
    pub async fn get<T: Record>(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        let Some(entry) = self.bus.kv_get(T::BUCKET, key).await? else {
            return Ok(None);
        };
        Ok(Some((decode::<T>(key, &entry.value)?, entry.revision)))
    }

    /// Writes a new record, failing with [`StoreError::Exists`] if the key is taken.
    pub async fn create<T: Record>(&self, record: &T) -> Result<u64, StoreError> {
        let key = record.key();
        match self.bus.kv_create(T::BUCKET, &key, encode(record)?).await {
            Ok(revision) => Ok(revision),
            Err(BusError::KeyExists { .. }) => Err(StoreError::Exists { name: T::NAME, key }),
            Err(error) => Err(error.into()),
        }
    }

    /// Reads a record, lets `change` modify it, and writes it back if `change` returned true,
    /// retrying when another writer got there first. Returns the record as written, or as read
    /// if unchanged, or `None` if it does not exist.
    pub async fn update<T: Record>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut T) -> bool,
    ) -> Result<Option<T>, StoreError> {
        for _ in 0..UPDATE_ATTEMPTS_MAX {
            let Some((mut record, revision)) = self.get::<T>(key).await? else {
                return Ok(None);
            };
            if !change(&mut record) {
                return Ok(Some(record));
            }
            match self
                .bus
                .kv_update(T::BUCKET, key, encode(&record)?, revision)
                .await
            {
                Ok(_) => return Ok(Some(record)),
                Err(BusError::RevisionMismatch { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(StoreError::Contended {
            name: T::NAME,
            key: key.to_owned(),
        })
    }

    /// Reads every record of a kind. Damaged records are logged and skipped.
    ///
    /// NOTE: this reads the whole bucket; listings and sweeps need an index before the task
    /// bucket holds many thousands of records.
    pub async fn list<T: Record>(&self) -> Result<Vec<T>, StoreError> {
        let mut records = Vec::new();
        for key in self.bus.kv_keys(T::BUCKET).await? {
            match self.get::<T>(&key).await {
                Ok(Some((record, _))) => records.push(record),
                Ok(None) => {}
                Err(StoreError::Damaged { name, key, reason }) => {
                    tracing::error!(record = name, key = %key, reason = %reason, "skipping damaged record");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(records)
    }
}

fn encode<T: Record>(record: &T) -> Result<Bytes, StoreError> {
    let bytes = serde_json::to_vec(&Stored {
        schema: T::SCHEMA,
        record,
    })
    .map_err(|error| StoreError::Damaged {
        name: T::NAME,
        key: record.key(),
        reason: format!("failed to encode: {error}"),
    })?;
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(StoreError::Damaged {
            name: T::NAME,
            key: record.key(),
            reason: format!(
                "{} bytes is over the maximum of {RECORD_BYTES_MAX}",
                bytes.len()
            ),
        });
    }
    Ok(bytes.into())
}

fn decode<T: Record>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let damaged = |reason: String| StoreError::Damaged {
        name: T::NAME,
        key: key.to_owned(),
        reason,
    };
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(damaged(format!(
            "{} bytes is over the maximum of {RECORD_BYTES_MAX}",
            bytes.len()
        )));
    }
    let stored: Stored<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|error| damaged(error.to_string()))?;
    if stored.schema != T::SCHEMA {
        return Err(damaged(format!(
            "schema {} is not the supported {}",
            stored.schema,
            T::SCHEMA
        )));
    }
    serde_json::from_value(stored.record).map_err(|error| damaged(error.to_string()))
}

#[cfg(test)]
mod tests {
    use warden_bus::transport::memory::MemoryBus;
    use warden_bus::ManualClock;

    use super::*;

    fn store() -> Store {
        Store::new(Arc::new(MemoryBus::new(Arc::new(ManualClock::new(
            UnixMillis(0),
        )))))
    }

    fn deployment(id: &str) -> DeploymentRecord {
        DeploymentRecord {
            id: DeploymentId::new(id).unwrap(),
            description: String::new(),
            created_at: UnixMillis(1),
            approval_key: None,
            access_rules: None,
            config: None,
            access_rules_issue: None,
            config_issue: None,
        }
    }

    #[tokio::test]
    async fn create_get_update() {
        let store = store();
        store
            .ensure_buckets(Duration::from_secs(3600))
            .await
            .unwrap();
        store.create(&deployment("a")).await.unwrap();
        assert!(matches!(
            store.create(&deployment("a")).await,
            Err(StoreError::Exists { .. })
        ));
        let updated = store
            .update::<DeploymentRecord>("a", |record| {
                record.description = "changed".into();
                true
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.description, "changed");
        let (read, _) = store.get::<DeploymentRecord>("a").await.unwrap().unwrap();
        assert_eq!(read, updated);
        assert!(store
            .update::<DeploymentRecord>("missing", |_| true)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn task_records_expire_after_retention() {
        let clock = ManualClock::new(UnixMillis(0));
        let store = Store::new(Arc::new(MemoryBus::new(Arc::new(clock.clone()))));
        let retention = Duration::from_secs(24 * 3600);
        store.ensure_buckets(retention).await.unwrap();
        let task = TaskRecord::pending(
            warden_bus::TaskId::from_random([7; 16]),
            DeploymentId::new("a").unwrap(),
            warden_bus::NodeId::new("n1").unwrap(),
            "collect_diagnostics".into(),
            std::collections::BTreeMap::new(),
            UnixMillis(0),
            UnixMillis(60_000),
            String::new(),
        );
        store.create(&task).await.unwrap();
        store.create(&deployment("a")).await.unwrap();

        clock.advance(retention - Duration::from_secs(1));
        assert!(store
            .get::<TaskRecord>(&task.key())
            .await
            .unwrap()
            .is_some());
        clock.advance(Duration::from_secs(1));
        assert!(store
            .get::<TaskRecord>(&task.key())
            .await
            .unwrap()
            .is_none());
        assert!(store.list::<TaskRecord>().await.unwrap().is_empty());
        assert!(store.get::<DeploymentRecord>("a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn damaged_value_is_an_error() {
        let bus = Arc::new(MemoryBus::new(Arc::new(ManualClock::new(UnixMillis(0)))));
        let store = Store::new(bus.clone());
        store
            .ensure_buckets(Duration::from_secs(3600))
            .await
            .unwrap();
        bus.kv_create(
            DEPLOYMENTS_BUCKET,
            "x",
            Bytes::from_static(b"{\"schema\":9,\"record\":{}}"),
        )
        .await
        .unwrap();
        let error = store
            .get::<DeploymentRecord>("x")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("schema 9"), "{error}");
        assert!(store.list::<DeploymentRecord>().await.unwrap().is_empty());
    }
}
