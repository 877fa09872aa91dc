//! Per-deployment values that a replica reads from the store and reuses for a few seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use warden_bus::{DeploymentId, UnixMillis};

/// Number of deployments above which the cache is emptied before it takes another entry.
const ENTRIES_MAX: usize = 10_000;

/// Values by deployment, each with the time it was read.
pub(super) struct DeploymentCache<V> {
    entries: Mutex<HashMap<DeploymentId, (UnixMillis, V)>>,
}

impl<V> Default for DeploymentCache<V> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> DeploymentCache<V> {
    /// Returns the value of `deployment` if it was read less than `max_age` before `now`.
    pub(super) fn fresh(
        &self,
        deployment: &DeploymentId,
        now: UnixMillis,
        max_age: Duration,
    ) -> Option<V> {
        let entries = self.lock();
        let (read_at, value) = entries.get(deployment)?;
        (now.since(*read_at) < max_age).then(|| value.clone())
    }

    /// Stores the value of `deployment` as read at `now`.
    pub(super) fn put(&self, deployment: &DeploymentId, now: UnixMillis, value: V) {
        let mut entries = self.lock();
        if entries.len() >= ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(deployment.clone(), (now, value));
    }

    /// Drops the value of `deployment`, so the next read goes to the store.
    pub(super) fn forget(&self, deployment: &DeploymentId) {
        self.lock().remove(deployment);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeploymentId, (UnixMillis, V)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
