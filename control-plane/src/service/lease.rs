//! Reading and writing the sweep lease; [`crate::core::lease`] decides.

use bytes::Bytes;
use warden_bus::subject::CONTROL_BUCKET;
use warden_bus::{BusError, UnixMillis};

use super::{ControlPlane, ServiceError};
use crate::core::lease::{self, LeaseDecision, SweepLease};

/// Key in [`CONTROL_BUCKET`] that stores the sweep lease, as JSON.
pub const SWEEP_LEASE_KEY: &str = "sweep_lease";

impl ControlPlane {
    /// Takes or renews the sweep lease. Returns whether this replica holds it and should sweep
    /// now. Losing a compare-and-set to another replica is not an error: that one sweeps.
    pub(super) async fn hold_sweep_lease(&self, now: UnixMillis) -> Result<bool, ServiceError> {
        let bus = &self.inner.bus;
        let me = self.inner.replica_id.as_str();
        let stored = bus.kv_get(CONTROL_BUCKET, SWEEP_LEASE_KEY).await?;
        let lease = match &stored {
            None => None,
            Some(entry) => match serde_json::from_slice::<SweepLease>(&entry.value) {
                Ok(lease) => Some(lease),
                Err(error) => {
                    // Nothing in a lease is worth keeping, so a replica that cannot read it
                    // writes a good one over it.
                    tracing::warn!(
                        replica_id = me,
                        error = %error,
                        "the stored sweep lease ({CONTROL_BUCKET}/{SWEEP_LEASE_KEY}) does not decode; replacing it"
                    );
                    None
                }
            },
        };
        let stored_end = lease.as_ref().map(|lease| lease.expires_at.0);
        let (lease, taken_from, from_the_future) =
            match lease::decide(lease.as_ref(), me, now, self.inner.settings.sweep_interval) {
                LeaseDecision::Wait { holder } => {
                    self.note_sweep_holder(&holder);
                    return Ok(false);
                }
                LeaseDecision::Hold {
                    lease,
                    taken_from,
                    from_the_future,
                } => (lease, taken_from, from_the_future),
            };
        let value = Bytes::from(serde_json::to_vec(&lease).map_err(|error| {
            ServiceError::Damaged(format!("the sweep lease does not encode: {error}"))
        })?);
        let written = match &stored {
            None => bus.kv_create(CONTROL_BUCKET, SWEEP_LEASE_KEY, value).await,
            Some(entry) => {
                bus.kv_update(CONTROL_BUCKET, SWEEP_LEASE_KEY, value, entry.revision)
                    .await
            }
        };
        match written {
            Ok(_) => {
                // A `&str` field is written escaped, so a line break in a holder's name, which
                // anyone who can write the control bucket chooses, cannot start a log line.
                match taken_from {
                    Some(previous) if from_the_future => tracing::warn!(
                        replica_id = me,
                        previous_holder = previous.as_str(),
                        lease_end_ms = stored_end.unwrap_or_default(),
                        "took over a sweep lease that ended too far ahead to be written by a replica with a correct clock; check the replicas' clocks and who can write {CONTROL_BUCKET}"
                    ),
                    Some(previous) => tracing::info!(
                        replica_id = me,
                        previous_holder = previous.as_str(),
                        "took over the expired sweep lease"
                    ),
                    None => {}
                }
                self.note_sweep_holder(me);
                Ok(true)
            }
            // Another replica wrote the lease since this one read it, so that one sweeps this time.
            Err(BusError::KeyExists { .. } | BusError::RevisionMismatch { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Logs a change of the sweep lease holder, as this replica reads it.
    fn note_sweep_holder(&self, holder: &str) {
        let mut known = self
            .inner
            .sweep_holder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.as_deref() == Some(holder) {
            return;
        }
        let me = self.inner.replica_id.as_str();
        if holder == me {
            tracing::info!(
                replica_id = me,
                "this replica holds the sweep lease and sweeps"
            );
        } else {
            tracing::info!(
                replica_id = me,
                holder,
                "another replica holds the sweep lease; this one does not sweep"
            );
        }
        *known = Some(holder.to_owned());
    }
}
