//! Execution records: what a Warden has done with each task it accepted, and their storage
//! encoding.
//!
//! A record is written and flushed before the task runs (state [`RecordState::Started`]) and
//! again with the outcome before the delivery is acknowledged (state [`RecordState::Finished`]).
//! Stored bytes are `version (1 byte) | SHA-256 prefix of the payload (8 bytes) | MessagePack
//! payload`, checked on read under a size cap.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warden_bus::{ReportStatus, TaskId, UnixMillis};

/// Storage format version of [`TaskRecord`].
pub const RECORD_VERSION: u8 = 1;

/// Maximum size of a stored record, in bytes.
pub const RECORD_BYTES_MAX: usize = 64 * 1024;

const CHECKSUM_BYTES: usize = 8;
const HEADER_BYTES: usize = 1 + CHECKSUM_BYTES;

/// What a Warden did with one accepted task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task.
    pub task_id: TaskId,
    /// Stream sequence of the message that carried it; a redelivery has the same sequence.
    pub stream_sequence: u64,
    /// The task's expiry, kept so records can be pruned once a replay would be rejected as
    /// expired anyway.
    pub expires_at: UnixMillis,
    /// Progress of the execution.
    pub state: RecordState,
}

/// Progress of one task's execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Execution began; no outcome was recorded, so the Warden may have stopped mid-way.
    Started,
    /// Execution ended with this outcome, which is reported again on redelivery.
    Finished(ReportStatus),
}

/// Why stored bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Over the size cap.
    #[error("stored record of {len} bytes is over the maximum of {RECORD_BYTES_MAX} bytes")]
    TooLarge {
        /// Size found.
        len: usize,
    },
    /// Shorter than the header.
    #[error("stored record of {len} bytes is shorter than its {HEADER_BYTES}-byte header")]
    Truncated {
        /// Size found.
        len: usize,
    },
    /// Written by another storage version.
    #[error("stored record has version {found}; this build reads version {RECORD_VERSION}")]
    UnsupportedVersion {
        /// Version found.
        found: u8,
    },
    /// The checksum does not match: the bytes were damaged on disk.
    #[error("stored record checksum does not match its contents; the state directory is damaged")]
    Checksum,
    /// The payload does not decode.
    #[error("stored record does not decode: {reason}")]
    Malformed {
        /// Decoder message.
        reason: String,
    },
    /// Encoding failed.
    #[error("failed to encode a record: {reason}")]
    Encode {
        /// Encoder message.
        reason: String,
    },
}

impl TaskRecord {
    /// Encodes the record with its version and checksum.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode_stored(self)
    }

    /// Decodes stored bytes, checking size, version and checksum before the payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_stored(bytes)
    }
}

/// Encodes any stored value as `version | checksum | MessagePack`.
pub fn encode_stored<T: Serialize>(value: &T) -> Result<Vec<u8>, RecordError> {
    let payload = rmp_serde::to_vec(value).map_err(|error| RecordError::Encode {
        reason: error.to_string(),
    })?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.push(RECORD_VERSION);
    bytes.extend_from_slice(&checksum(&payload));
    bytes.extend_from_slice(&payload);
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(RecordError::TooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// Decodes a value written by [`encode_stored`], checking size, version and checksum before
/// the payload.
pub fn decode_stored<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(RecordError::TooLarge { len: bytes.len() });
    }
    let (header, payload) = bytes
        .split_at_checked(HEADER_BYTES)
        .ok_or(RecordError::Truncated { len: bytes.len() })?;
    let (version, stored_checksum) = header
        .split_first()
        .ok_or(RecordError::Truncated { len: bytes.len() })?;
    if *version != RECORD_VERSION {
        return Err(RecordError::UnsupportedVersion { found: *version });
    }
    if stored_checksum != checksum(payload) {
        return Err(RecordError::Checksum);
    }
    rmp_serde::from_slice(payload).map_err(|error| RecordError::Malformed {
        reason: error.to_string(),
    })
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let digest = Sha256::digest(payload);
    let mut out = [0u8; CHECKSUM_BYTES];
    for (slot, byte) in out.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use warden_bus::RejectCode;

    use super::*;

    fn state() -> impl Strategy<Value = RecordState> {
        prop_oneof![
            Just(RecordState::Started),
            ".{0,50}".prop_map(|reason| RecordState::Finished(ReportStatus::Failed { reason })),
            proptest::collection::btree_map("[a-z]{1,8}", ".{0,20}", 0..4).prop_map(
                |output: BTreeMap<String, String>| RecordState::Finished(ReportStatus::Succeeded {
                    output
                })
            ),
            Just(RecordState::Finished(ReportStatus::rejected(
                RejectCode::StaleVersion,
                "old"
            ))),
        ]
    }

    proptest! {
        #[test]
        fn record_round_trips(id in any::<[u8; 16]>(), sequence in any::<u64>(), expires in any::<u64>(), state in state()) {
            let record = TaskRecord { task_id: TaskId::from_random(id), stream_sequence: sequence, expires_at: UnixMillis(expires), state };
            prop_assert_eq!(TaskRecord::decode(&record.encode().unwrap()).unwrap(), record);
        }

        #[test]
        fn any_flipped_bit_is_detected(id in any::<[u8; 16]>(), position in any::<usize>(), bit in 0u8..8) {
            let record = TaskRecord { task_id: TaskId::from_random(id), stream_sequence: 7, expires_at: UnixMillis(9), state: RecordState::Started };
            let mut bytes = record.encode().unwrap();
            let index = position % bytes.len();
            bytes[index] ^= 1 << bit;
            prop_assert!(TaskRecord::decode(&bytes).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = TaskRecord::decode(&bytes);
        }
    }

    #[test]
    fn version_one_fixture_still_decodes() {
        // Bytes written by storage version 1; a schema change must keep this passing or migrate.
        let record = TaskRecord {
            task_id: TaskId::from_random([0xab; 16]),
            stream_sequence: 42,
            expires_at: UnixMillis(1_796_428_800_000),
            state: RecordState::Finished(ReportStatus::Failed {
                reason: "disk full".into(),
            }),
        };
        let fixture = hex_fixture();
        assert_eq!(TaskRecord::decode(&fixture).unwrap(), record);
    }

    fn hex_fixture() -> Vec<u8> {
        hex::decode(include_str!("record_v1.hex").trim()).unwrap()
    }
}
