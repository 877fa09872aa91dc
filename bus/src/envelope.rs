//! The versioned MessagePack envelope that wraps every message on the wire.
//!
//! Decoding checks the byte length against [`ENVELOPE_BYTES_MAX`] before it reads anything, and
//! checks the format version and message type before it decodes the body.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;

/// Format version written by this build and the only one it reads.
pub const FORMAT_VERSION: u8 = 1;

/// Maximum size of an encoded envelope, signed or not, in bytes.
pub const ENVELOPE_BYTES_MAX: usize = 256 * 1024;

/// Maximum nesting depth accepted by the decoder; our messages nest a few levels at most.
const DECODE_DEPTH_MAX: usize = 32;

/// Types of message that travel in an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// A [`crate::messages::Task`], always inside a signed envelope.
    Task,
    /// A [`crate::messages::TaskReport`].
    TaskReport,
    /// A [`crate::messages::Heartbeat`].
    Heartbeat,
    /// A [`crate::messages::EnrollRequest`].
    EnrollRequest,
    /// A [`crate::messages::RenewRequest`].
    RenewRequest,
    /// A [`crate::messages::CredentialReply`].
    CredentialReply,
    /// A [`crate::messages::ComponentLogs`].
    ComponentLogs,
    /// A [`crate::messages::FetchRequest`].
    FetchRequest,
    /// A [`crate::messages::CertificateRequest`].
    CertificateRequest,
    /// A [`crate::messages::CertificateReply`].
    CertificateReply,
}

/// A message body type and the envelope type that carries it.
pub trait Message: Serialize + DeserializeOwned {
    /// The envelope type that carries this body.
    const TYPE: MessageType;
}

/// Why bytes could not be encoded or decoded as an envelope or message body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input is over the size cap; nothing was decoded.
    #[error("message of {len} bytes is over the maximum of {max} bytes")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The cap that applied.
        max: usize,
    },
    /// The bytes are not a valid MessagePack encoding of the expected structure.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Name of the decoded item.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The envelope was written by an incompatible format version.
    #[error(
        "unsupported envelope format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion {
        /// The version in the envelope.
        found: u8,
    },
    /// The envelope carries a different message type than the caller expected.
    #[error("expected a {expected:?} message but the envelope carries {found:?}")]
    WrongType {
        /// Type the caller asked for.
        expected: MessageType,
        /// Type in the envelope.
        found: MessageType,
    },
    /// Encoding failed, which only happens for values serde cannot represent.
    #[error("failed to encode {what}: {reason}")]
    Encode {
        /// Name of the encoded item.
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
}

/// Version, type, id and encoded body of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version, [`FORMAT_VERSION`] when written by this build.
    pub version: u8,
    /// Type of the body.
    pub message_type: MessageType,
    /// Unique id of this envelope.
    pub id: MessageId,
    /// MessagePack encoding of the body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl Envelope {
    /// Encodes `body` and wraps it in an envelope of the current format version.
    pub fn seal<T: Message>(id: MessageId, body: &T) -> Result<Self, WireError> {
        let body = encode("message body", body)?;
        Ok(Self {
            version: FORMAT_VERSION,
            message_type: T::TYPE,
            id,
            body,
        })
    }

    /// Encodes the envelope, failing if the result is over [`ENVELOPE_BYTES_MAX`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode("envelope", self)
    }

    /// Decodes an envelope, checking the size cap first and the format version after.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let envelope: Self = decode("envelope", bytes)?;
        if envelope.version != FORMAT_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: envelope.version,
            });
        }
        Ok(envelope)
    }

    /// Decodes the body as `T` after checking that the envelope carries that type.
    pub fn open<T: Message>(&self) -> Result<T, WireError> {
        if self.message_type != T::TYPE {
            return Err(WireError::WrongType {
                expected: T::TYPE,
                found: self.message_type,
            });
        }
        decode("message body", &self.body)
    }
}

/// Encodes a value as MessagePack, failing if the result is over [`ENVELOPE_BYTES_MAX`].
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, WireError> {
    encode_capped(what, value, ENVELOPE_BYTES_MAX)
}

/// Encodes a value as MessagePack, failing if the result is over `max` bytes.
pub(crate) fn encode_capped<T: Serialize>(
    what: &'static str,
    value: &T,
    max: usize,
) -> Result<Vec<u8>, WireError> {
    let bytes = rmp_serde::to_vec(value).map_err(|error| WireError::Encode {
        what,
        reason: error.to_string(),
    })?;
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// Decodes MessagePack after checking the input against [`ENVELOPE_BYTES_MAX`].
///
/// Trailing bytes after the value are an error, so one value has exactly one encoding that
/// decodes.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, WireError> {
    decode_capped(what, bytes, ENVELOPE_BYTES_MAX)
}

/// Decodes MessagePack after checking the input against `max` bytes, like [`decode`].
pub(crate) fn decode_capped<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    deserializer.set_max_depth(DECODE_DEPTH_MAX);
    let value = T::deserialize(&mut deserializer).map_err(|error| WireError::Malformed {
        what,
        reason: error.to_string(),
    })?;
    let consumed = usize::try_from(deserializer.position()).unwrap_or(usize::MAX);
    if consumed != bytes.len() {
        return Err(WireError::Malformed {
            what,
            reason: format!(
                "{} trailing bytes after the value",
                bytes.len().saturating_sub(consumed)
            ),
        });
    }
    Ok(value)
}
