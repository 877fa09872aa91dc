//! Everything that crosses the wire between the Warden control plane and its node agents.
//!
//! - [`subject`]: the subject scheme, the only code that builds subjects and JetStream names.
//! - [`envelope`]: the versioned MessagePack envelope with its size cap.
//! - [`signed`]: Ed25519-signed envelopes, signing keys and keyrings.
//! - [`messages`]: typed message bodies.
//! - [`transport`]: the [`Bus`] trait with a NATS transport and an in-memory one.
//!
//! Trust: this crate trusts nothing it decodes. Every decoder checks the size cap before it reads
//! and returns an error, never a panic, for any input. A signed envelope's body is decoded only
//! after its signature verifies. Deciding whether a verified message may be acted on (audience,
//! expiry, replay) is the caller's job.

#![forbid(unsafe_code)]

pub mod envelope;
pub mod ids;
pub mod messages;
pub mod release;
pub mod signed;
pub mod subject;
pub mod time;
pub mod transport;
pub mod trust;

pub use envelope::{Envelope, Message, MessageType, WireError, ENVELOPE_BYTES_MAX};
pub use ids::{DeploymentId, IdError, KeyId, MessageId, NodeId, TaskId};
pub use messages::{
    ApplyConfig, Heartbeat, RejectCode, ReportStatus, Task, TaskAction, TaskReport,
};
pub use signed::{KeySignature, Keyring, PublicKey, SignedEnvelope, SigningKey};
pub use subject::{NodeSubject, RpcVerb, Subject, TelemetryKind};
pub use time::{Clock, ManualClock, SystemClock, UnixMillis};
pub use transport::{Bus, BusError, Delivery, Inbound, KvEntry};
