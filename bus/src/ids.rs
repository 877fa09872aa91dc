//! Validated identifiers that appear in subjects, storage keys and message bodies.
//!
//! Every identifier is 1 to 63 characters of lowercase ASCII letters, digits and `-`, starting with
//! a letter or digit. That keeps them safe as NATS subject tokens, JetStream consumer names, KV keys
//! and file names, and makes `_` free to use as an unambiguous separator.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Maximum length of an identifier, in bytes.
pub const ID_BYTES_MAX: usize = 63;

/// Error from parsing an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string is empty.
    #[error(
        "invalid {kind}: the value is empty; use 1 to {ID_BYTES_MAX} characters of a-z, 0-9 and -"
    )]
    Empty {
        /// Kind of identifier being parsed.
        kind: &'static str,
    },
    /// The string is longer than [`ID_BYTES_MAX`].
    #[error("invalid {kind} {value:?}: {len} characters is over the maximum of {ID_BYTES_MAX}")]
    TooLong {
        /// Kind of identifier being parsed.
        kind: &'static str,
        /// The rejected value, cut to the maximum length.
        value: String,
        /// Length of the rejected value.
        len: usize,
    },
    /// The string contains a character outside the allowed set.
    #[error("invalid {kind} {value:?}: character {character:?} at position {position} is not allowed; use a-z, 0-9 and -, starting with a letter or digit")]
    BadCharacter {
        /// Kind of identifier being parsed.
        kind: &'static str,
        /// The rejected value.
        value: String,
        /// The first character that is not allowed.
        character: char,
        /// Its byte position.
        position: usize,
    },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > ID_BYTES_MAX {
        let cut: String = value.chars().take(ID_BYTES_MAX).collect();
        return Err(IdError::TooLong {
            kind,
            value: cut,
            len: value.len(),
        });
    }
    for (position, character) in value.char_indices() {
        let allowed = character.is_ascii_lowercase()
            || character.is_ascii_digit()
            || (character == '-' && position > 0);
        if !allowed {
            return Err(IdError::BadCharacter {
                kind,
                value: value.to_owned(),
                character,
                position,
            });
        }
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            /// Returns the identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

identifier!(
    /// Identifier of a deployment: one Iggy cluster and the nodes that run it.
    DeploymentId,
    "deployment id"
);
identifier!(
    /// Identifier of a node within its deployment.
    NodeId,
    "node id"
);
identifier!(
    /// Identifier of a task; the control plane draws 128 random bits and writes them as hex.
    TaskId,
    "task id"
);
identifier!(
    /// Identifier of an envelope on the wire.
    MessageId,
    "message id"
);
identifier!(
    /// Identifier of a signing key: the first 8 bytes of the SHA-256 of its public key, as hex.
    KeyId,
    "key id"
);

impl TaskId {
    /// Builds a task id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }
}

impl MessageId {
    /// Builds a message id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_names() {
        for value in [
            "a",
            "node-1",
            "eu-west-3",
            "0abc",
            &"x".repeat(ID_BYTES_MAX),
        ] {
            assert!(NodeId::new(value).is_ok(), "{value} should be valid");
        }
    }

    #[test]
    fn rejects_subject_and_path_characters() {
        for value in [
            "",
            "-a",
            "A",
            "a.b",
            "a*",
            "a>",
            "a b",
            "a/b",
            "a_b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(NodeId::new(value).is_err(), "{value:?} should be rejected");
        }
    }

    #[test]
    fn error_names_value_and_fix() {
        let error = DeploymentId::new("prod.eu").unwrap_err().to_string();
        assert!(error.contains("deployment id"), "{error}");
        assert!(error.contains("\"prod.eu\""), "{error}");
        assert!(error.contains("use a-z, 0-9 and -"), "{error}");
    }

    #[test]
    fn deserialize_validates() {
        let bytes = rmp_serde::to_vec(&"bad.id").unwrap();
        assert!(rmp_serde::from_slice::<NodeId>(&bytes).is_err());
    }
}
