//! Publishing released artifacts and serving their chunks to nodes.

use bytes::Bytes;
use futures::Stream;
use warden_bus::messages::{FetchReply, FetchRequest, REASON_BYTES_MAX};
use warden_bus::release::{ReleaseManifest, SignedManifest};
use warden_bus::{BusError, NodeSubject, SignedEnvelope};

use super::{ControlPlane, ServiceError};
use crate::core::issue::FieldError;
use crate::releases::{ReleaseError, ReleaseStore, RELEASE_MANIFESTS_BUCKET};

/// A published release: its signed manifest and the decoded content.
#[derive(Debug, Clone)]
pub struct PublishedRelease {
    /// The manifest as the release key signed it.
    pub signed: SignedManifest,
    /// The decoded manifest.
    pub manifest: ReleaseManifest,
}

impl From<ReleaseError> for ServiceError {
    fn from(error: ReleaseError) -> Self {
        match error {
            ReleaseError::Mismatch { .. } | ReleaseError::Upload(_) => FieldError {
                field: "artifact",
                reason: format!("{error}; upload the file the manifest was signed for"),
            }
            .into(),
            ReleaseError::NotFound { sha256 } => ServiceError::NotFound {
                what: format!("release {sha256}"),
                fix: "publish it with `wardenctl release publish`".into(),
            },
            ReleaseError::Cache { .. } | ReleaseError::CacheDir { .. } => {
                ServiceError::Cache(error.to_string())
            }
            other => ServiceError::Unavailable(other.to_string()),
        }
    }
}

impl ControlPlane {
    fn release_store(&self) -> Result<&ReleaseStore, ServiceError> {
        self.inner.releases.as_ref().ok_or_else(|| {
            ServiceError::Unavailable(
                "this control plane runs without a release store (no NATS object store)".into(),
            )
        })
    }

    /// Checks `signed` against the release keys of the current trust document, receives the
    /// artifact from `body` checking its size and SHA-256 against the manifest, and stores
    /// both. Publishing the same manifest again is accepted.
    pub async fn publish_release<S, E>(
        &self,
        signed: SignedManifest,
        body: S,
    ) -> Result<PublishedRelease, ServiceError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let store = self.release_store()?;
        let trust = self.current_trust().await?;
        let trust = trust.document_unverified().map_err(|error| {
            ServiceError::Unavailable(format!("the stored trust document is damaged: {error}"))
        })?;

        // Check the signature first, so that no byte of an unsigned release is stored.
        let manifest = signed
            .verify(&trust, self.now(), self.inner.settings.release_clock_skew)
            .map_err(|error| FieldError {
                field: "manifest",
                reason: format!(
                    "{error}; sign the manifest with a release key of trust document version {}",
                    trust.version
                ),
            })?;
        let sha256_hex = hex::encode(&manifest.sha256);
        let manifest_bytes = Bytes::from(signed.encode().map_err(|error| FieldError {
            field: "manifest",
            reason: error.to_string(),
        })?);
        self.check_no_other_manifest(&sha256_hex, &manifest_bytes)
            .await?;

        // The artifact goes into the object store before its manifest, so a listed release
        // always has its bytes.
        let upload_id = hex::encode(self.random_bytes());
        let staged = store.receive(&manifest, &upload_id, body).await?;
        if let Err(error) = store.store(&sha256_hex, &staged).await {
            if let Err(remove) = tokio::fs::remove_file(&staged).await {
                tracing::warn!(path = %staged.display(), error = %remove, "failed to delete an upload that was not stored");
            }
            return Err(error.into());
        }
        match self
            .inner
            .bus
            .kv_create(
                RELEASE_MANIFESTS_BUCKET,
                &sha256_hex,
                manifest_bytes.clone(),
            )
            .await
        {
            Ok(_) => {}
            // Another publish of the same bytes stored its manifest while this upload ran.
            Err(BusError::KeyExists { .. }) => {
                self.check_no_other_manifest(&sha256_hex, &manifest_bytes)
                    .await?;
            }
            Err(error) => return Err(error.into()),
        }
        tracing::info!(sha256 = %sha256_hex, component = ?manifest.component, version = %manifest.version, release_counter = manifest.release_counter, size = manifest.size, "release published");
        Ok(PublishedRelease { signed, manifest })
    }

    /// Fails with a conflict when the artifact is already published with another manifest.
    async fn check_no_other_manifest(
        &self,
        sha256_hex: &str,
        manifest_bytes: &[u8],
    ) -> Result<(), ServiceError> {
        let existing = self
            .inner
            .bus
            .kv_get(RELEASE_MANIFESTS_BUCKET, sha256_hex)
            .await?;
        match existing {
            Some(existing) if existing.value.as_ref() != manifest_bytes => {
                Err(ServiceError::Conflict {
                    what: format!(
                        "release {sha256_hex} is already published with another manifest"
                    ),
                    fix: "an artifact is published once; check `wardenctl release list`".into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Lists the published releases.
    pub async fn list_releases(&self) -> Result<Vec<PublishedRelease>, ServiceError> {
        let mut releases = Vec::new();
        for key in self.inner.bus.kv_keys(RELEASE_MANIFESTS_BUCKET).await? {
            if let Some(release) = self.stored_release(&key).await? {
                releases.push(release);
            }
        }
        releases.sort_by(|a, b| {
            (a.manifest.component as u8, a.manifest.release_counter)
                .cmp(&(b.manifest.component as u8, b.manifest.release_counter))
        });
        Ok(releases)
    }

    /// Returns one published release by its hex SHA-256.
    pub async fn get_release(&self, sha256_hex: &str) -> Result<PublishedRelease, ServiceError> {
        self.stored_release(sha256_hex)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                what: format!("release {sha256_hex}"),
                fix: "check `wardenctl release list`".into(),
            })
    }

    async fn stored_release(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<PublishedRelease>, ServiceError> {
        let Some(entry) = self
            .inner
            .bus
            .kv_get(RELEASE_MANIFESTS_BUCKET, sha256_hex)
            .await?
        else {
            return Ok(None);
        };
        let damaged = |reason: String| {
            ServiceError::Unavailable(format!(
                "the stored manifest of release {sha256_hex} is damaged: {reason}"
            ))
        };
        let signed = SignedManifest::decode(&entry.value).map_err(|e| damaged(e.to_string()))?;
        let manifest = signed
            .manifest_unverified()
            .map_err(|e| damaged(e.to_string()))?;
        Ok(Some(PublishedRelease { signed, manifest }))
    }

    /// Serves a node's chunk request. The request must verify with the node's enrolled key and
    /// name the node of its subject; otherwise the reply is a refusal, which is logged.
    pub(super) async fn fetch(
        &self,
        origin: &NodeSubject,
        signed: &SignedEnvelope,
    ) -> Result<FetchReply, ServiceError> {
        let refuse = |reason: String| {
            if let Some(suppressed) = self.may_log(origin) {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, reason = %reason, suppressed, "artifact fetch refused");
            }
            Ok(FetchReply::Refused {
                reason: warden_bus::messages::truncate(&reason, REASON_BYTES_MAX),
            })
        };
        let opened = self
            .open_from_node::<FetchRequest>(origin, signed, |request| {
                (&request.deployment, &request.node)
            })
            .await?;
        let request = match opened {
            Ok((_, request)) => request,
            Err(reason) => return refuse(reason),
        };
        if let Err(reason) = request.validate() {
            return refuse(reason);
        }

        let sha256_hex = hex::encode(&request.sha256);
        let Some(release) = self.stored_release(&sha256_hex).await? else {
            return Ok(FetchReply::NotFound);
        };
        let store = self.release_store()?;
        match store
            .chunk(
                &sha256_hex,
                release.manifest.size,
                request.offset,
                request.length,
            )
            .await
        {
            Ok(chunk) if chunk.bytes.is_empty() => Ok(FetchReply::OutOfRange { size: chunk.size }),
            Ok(chunk) => Ok(FetchReply::Chunk {
                offset: request.offset,
                size: chunk.size,
                bytes: chunk.bytes,
            }),
            // The release is listed, so its artifact went missing from the object store.
            Err(ReleaseError::NotFound { .. }) => {
                if let Some(suppressed) = self.may_log(origin) {
                    tracing::error!(
                        sha256 = %sha256_hex,
                        deployment_id = %origin.deployment,
                        node_id = %origin.node,
                        suppressed,
                        "a published release has no artifact in the object store, so no node can download it; publish it again with `wardenctl release publish`"
                    );
                }
                Ok(FetchReply::NotFound)
            }
            Err(error) => {
                tracing::error!(sha256 = %sha256_hex, error = %error, "failed to serve an artifact chunk");
                Err(error.into())
            }
        }
    }
}
