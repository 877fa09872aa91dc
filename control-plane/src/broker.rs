//! The broker set-up directory: the operator and account keys, the CA and server certificate,
//! and the nats-server configuration that runs the broker in operator mode with TLS.
//!
//! `wardenctl broker init` writes it once. The control plane reads the account keys from it to
//! mint user JWTs (its own, the system user's, enrollment users' and nodes'), and the CA
//! certificate, which nodes receive in their bootstrap files. Seeds and private keys are
//! written with mode 0600.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nkeys::{KeyPair, KeyPairType};
use rand::{CryptoRng, RngCore};
use warden_bus::subject::enrollment_inbox_prefix;
use warden_bus::transport::nats::NatsCredentials;
use warden_bus::{DeploymentId, NodeId};

use crate::nats_security::jwt::{
    encode_account_jwt, encode_operator_jwt, encode_user_jwt, AccountSpec, JetStreamLimits, Limit,
    OperatorSpec, Permissions, SubjectRule, UserSpec,
};
use crate::nats_security::permissions::{
    control_plane_permissions, enrollment_permissions, node_user,
};
use crate::nats_security::server_config::{
    render_server_config, PreloadedAccount, ServerConfig, TlsFiles,
};
use crate::nats_security::tls::{write_private_key, CertificateAuthority};
use crate::nats_security::{
    generate_nkey, BrokerKeys, NatsSecurityError, APP_ACCOUNT_NAME, SYSTEM_ACCOUNT_NAME,
};

/// Validity of the CA certificate, in seconds (ten years).
pub const CA_VALIDITY_SECS: i64 = 10 * 365 * 86_400;
/// Validity of the broker's server certificate, in seconds (one year).
pub const SERVER_CERTIFICATE_VALIDITY_SECS: i64 = 365 * 86_400;
/// Validity of the control plane's own user JWTs, in seconds (thirty days); a replica mints
/// fresh ones at every start.
pub const CONTROL_PLANE_JWT_VALIDITY_SECS: i64 = 30 * 86_400;

const OPERATOR_SEED: &str = "operator.seed";
const SYSTEM_ACCOUNT_SEED: &str = "system-account.seed";
const APP_ACCOUNT_SEED: &str = "app-account.seed";
const CA_CERTIFICATE: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER_CERTIFICATE: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";
/// The [`Storage`] chosen at init, which every re-signed application account JWT keeps.
const STORAGE_FILE: &str = "jetstream-storage.json";
/// Name of the nats-server configuration file in the directory.
pub const SERVER_CONFIG: &str = "nats.conf";

/// Errors from writing or reading a broker directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A file could not be read or written.
    #[error("broker directory file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A secret file is readable by other users.
    #[error("broker directory file {path} has mode {mode:o}, readable by other users; run chmod 600 on it")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A seed file does not hold a seed of the expected kind.
    #[error("broker directory file {path} does not hold a valid {expected:?} nkey seed")]
    Seed {
        /// The file.
        path: PathBuf,
        /// The kind of key expected.
        expected: KeyPairType,
    },
    /// The JetStream storage sizes are out of range.
    #[error("JetStream storage of {file_bytes} bytes on file and {memory_bytes} in memory is out of range; give at least 64MiB on file and 1 byte in memory, and at most 9223372036854775807 bytes each")]
    Storage {
        /// The file storage given.
        file_bytes: u64,
        /// The memory storage given.
        memory_bytes: u64,
    },
    /// The storage file of the directory cannot be read.
    #[error("broker directory file {path} is not a valid JetStream storage record ({reason}); write {{\"file_bytes\": N, \"memory_bytes\": N}} with the sizes of max_file_store and max_memory_store in nats.conf")]
    StorageFile {
        /// The file.
        path: PathBuf,
        /// The reason it was rejected.
        reason: String,
    },
    /// The directory already holds a set-up.
    #[error("{path} already holds a broker set-up; choose an empty directory")]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// Keys, JWTs or certificates could not be made.
    #[error(transparent)]
    Security(#[from] NatsSecurityError),
}

/// Where the broker listens, for the configuration and the server certificate.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Host names and addresses the server certificate covers; the first is the bind address.
    pub hosts: Vec<String>,
    /// TLS NATS client port.
    pub client_port: u16,
    /// TLS WebSocket port; 443 lets nodes through firewalls that only allow HTTPS out.
    pub websocket_port: u16,
}

/// JetStream storage for the application account. The broker reserves exactly this much: the
/// account's limits and the server's `max_file_store` and `max_memory_store` are the same
/// numbers, so whether JetStream starts does not depend on the free disk space at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// File storage in bytes: tasks, reports, key-value buckets and release artifacts.
    pub file_bytes: u64,
    /// Memory storage in bytes.
    pub memory_bytes: u64,
}

/// The smallest file storage [`init`] accepts. A release artifact of a server binary is tens
/// of megabytes (an estimate), and the object store keeps every published one.
pub const MIN_FILE_STORAGE: u64 = 64 << 20;

impl Storage {
    /// Tells whether the file storage is from [`MIN_FILE_STORAGE`] to [`MAX_STORAGE`] and the
    /// memory storage from 1 byte to [`MAX_STORAGE`].
    pub fn in_range(&self) -> bool {
        (MIN_FILE_STORAGE..=MAX_STORAGE).contains(&self.file_bytes)
            && (1..=MAX_STORAGE).contains(&self.memory_bytes)
    }
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            file_bytes: 16 << 30,
            memory_bytes: 256 << 20,
        }
    }
}

/// The largest storage size nats-server reads: its configuration numbers are signed 64-bit.
pub const MAX_STORAGE: u64 = i64::MAX.unsigned_abs();

/// A storage size that [`parse_size`] could not read.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not a storage size: {reason}; write a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 16GiB")]
pub struct SizeError {
    /// The text given.
    pub value: String,
    /// The reason it was rejected.
    pub reason: &'static str,
}

/// Reads a size such as `16GiB`, `512MiB` or `1073741824`. Units are powers of 1024; `K`, `M`,
/// `G` and `T` (with or without `B`) mean the same as `KiB`, `MiB`, `GiB` and `TiB`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let error = |reason| SizeError {
        value: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(error("it does not start with a number"));
    }
    if unit.starts_with(['.', ',']) {
        return Err(error("it is not a whole number"));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(error("the unit is unknown")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| error("the number is too large"))?;
    number
        .checked_mul(1 << shift)
        .filter(|size| *size <= MAX_STORAGE)
        .ok_or_else(|| error("it is above 9223372036854775807 bytes, the most nats-server reads"))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BrokerError + '_ {
    move |source| BrokerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_secret(path: &Path, text: &str) -> Result<(), BrokerError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

fn read_secret(path: &Path) -> Result<String, BrokerError> {
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(BrokerError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(io(path))
}

fn read_seed(path: &Path, expected: KeyPairType) -> Result<KeyPair, BrokerError> {
    let text = read_secret(path)?;
    let key = KeyPair::from_seed(text.trim()).map_err(|_| BrokerError::Seed {
        path: path.to_path_buf(),
        expected: expected.clone(),
    })?;
    if key.key_pair_type() != expected {
        return Err(BrokerError::Seed {
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(key)
}

/// Reads the storage record; a set-up written before the record existed used the defaults.
fn read_storage(path: &Path) -> Result<Storage, BrokerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Storage::default()),
        Err(source) => return Err(io(path)(source)),
    };
    let storage: Storage =
        serde_json::from_str(&text).map_err(|error| BrokerError::StorageFile {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    if !storage.in_range() {
        return Err(BrokerError::StorageFile {
            path: path.to_path_buf(),
            reason: format!(
                "file_bytes must be from {MIN_FILE_STORAGE} to {MAX_STORAGE} and memory_bytes \
                 from 1 to {MAX_STORAGE}"
            ),
        });
    }
    Ok(storage)
}

fn seed_text(key: &KeyPair) -> Result<String, BrokerError> {
    key.seed().map_err(|error| {
        BrokerError::Security(NatsSecurityError::KeyGeneration {
            kind: key.key_pair_type(),
            reason: error.to_string(),
        })
    })
}

fn app_account(keys_public: String, storage: &Storage) -> AccountSpec {
    AccountSpec::new(APP_ACCOUNT_NAME, keys_public).with_jetstream(JetStreamLimits {
        memory_storage: Limit::Max(storage.memory_bytes),
        disk_storage: Limit::Max(storage.file_bytes),
        streams: Limit::Max(64),
        consumers: Limit::Unlimited,
    })
}

/// Writes a new broker set-up into `dir`, which must not hold one yet. `now` is Unix seconds.
pub fn init(
    dir: &Path,
    listen: &Listen,
    storage: &Storage,
    now: i64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(), BrokerError> {
    if !storage.in_range() {
        return Err(BrokerError::Storage {
            file_bytes: storage.file_bytes,
            memory_bytes: storage.memory_bytes,
        });
    }
    if dir.join(OPERATOR_SEED).exists() {
        return Err(BrokerError::Exists {
            path: dir.to_path_buf(),
        });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;

    // Keys: the seeds never leave this directory.
    let keys = BrokerKeys::generate(rng)?;
    write_secret(&dir.join(OPERATOR_SEED), &seed_text(&keys.operator)?)?;
    write_secret(
        &dir.join(SYSTEM_ACCOUNT_SEED),
        &seed_text(&keys.system_account)?,
    )?;
    write_secret(&dir.join(APP_ACCOUNT_SEED), &seed_text(&keys.app_account)?)?;

    // The CA and the server certificate for every listed host.
    let ca = CertificateAuthority::generate("Warden broker CA", now - 60, now + CA_VALIDITY_SECS)?;
    let host_names: Vec<&str> = listen.hosts.iter().map(String::as_str).collect();
    let server = ca.issue_server_certificate(
        &host_names,
        now - 60,
        now + SERVER_CERTIFICATE_VALIDITY_SECS,
    )?;
    std::fs::write(dir.join(CA_CERTIFICATE), ca.certificate_pem())
        .map_err(io(&dir.join(CA_CERTIFICATE)))?;
    write_private_key(&dir.join(CA_KEY), &ca.private_key_pem())?;
    std::fs::write(dir.join(SERVER_CERTIFICATE), &server.certificate_pem)
        .map_err(io(&dir.join(SERVER_CERTIFICATE)))?;
    write_private_key(&dir.join(SERVER_KEY), server.private_key_pem())?;

    // The server configuration: operator mode, both accounts preloaded, TLS on both listeners.
    let operator_jwt = encode_operator_jwt(
        &keys.operator,
        &OperatorSpec {
            name: "warden".into(),
            system_account: keys.system_account.public_key(),
            expires_at: None,
        },
        now,
    )?;
    let system = AccountSpec::new(SYSTEM_ACCOUNT_NAME, keys.system_account.public_key());
    let app = app_account(keys.app_account.public_key(), storage);
    let tls = TlsFiles {
        certificate: dir.join(SERVER_CERTIFICATE),
        private_key: dir.join(SERVER_KEY),
    };
    let config = render_server_config(&ServerConfig {
        host: listen
            .hosts
            .first()
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into()),
        client_port: listen.client_port,
        websocket_port: listen.websocket_port,
        client_tls: tls.clone(),
        websocket_tls: tls,
        operator_jwt,
        system_account: keys.system_account.public_key(),
        accounts: vec![
            PreloadedAccount {
                public_key: system.public_key.clone(),
                jwt: encode_account_jwt(&keys.operator, &system, now)?,
            },
            PreloadedAccount {
                public_key: app.public_key.clone(),
                jwt: encode_account_jwt(&keys.operator, &app, now)?,
            },
        ],
        resolver_dir: dir.join("resolver"),
        jetstream_dir: dir.join("jetstream"),
        max_file_store: storage.file_bytes,
        max_memory_store: storage.memory_bytes,
    })?;
    let storage_text =
        serde_json::to_string(storage).map_err(|error| BrokerError::StorageFile {
            path: dir.join(STORAGE_FILE),
            reason: error.to_string(),
        })?;
    std::fs::write(dir.join(STORAGE_FILE), storage_text).map_err(io(&dir.join(STORAGE_FILE)))?;
    std::fs::write(dir.join(SERVER_CONFIG), config).map_err(io(&dir.join(SERVER_CONFIG)))?;
    Ok(())
}

/// The keys and CA the control plane needs from a broker directory.
pub struct Broker {
    operator: KeyPair,
    system_account: KeyPair,
    app_account: KeyPair,
    ca_file: PathBuf,
    ca_pem: String,
    storage: Storage,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("operator", &self.operator.public_key())
            .field("app_account", &self.app_account.public_key())
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// A minted identity: a user JWT and the user's nkey seed.
pub struct MintedUser {
    /// The user JWT.
    pub jwt: String,
    /// The user's nkey seed (`SU…`).
    pub seed: String,
    /// The user's public key (`U…`).
    pub public_key: String,
}

impl std::fmt::Debug for MintedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedUser")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl MintedUser {
    /// The credentials for a NATS connection.
    pub fn credentials(&self) -> Result<NatsCredentials, warden_bus::BusError> {
        NatsCredentials::new(self.jwt.clone(), &self.seed)
    }
}

impl Broker {
    /// Reads a broker directory written by [`init`].
    pub fn load(dir: &Path) -> Result<Self, BrokerError> {
        let ca_file = dir.join(CA_CERTIFICATE);
        Ok(Self {
            operator: read_seed(&dir.join(OPERATOR_SEED), KeyPairType::Operator)?,
            system_account: read_seed(&dir.join(SYSTEM_ACCOUNT_SEED), KeyPairType::Account)?,
            app_account: read_seed(&dir.join(APP_ACCOUNT_SEED), KeyPairType::Account)?,
            ca_pem: std::fs::read_to_string(&ca_file).map_err(io(&ca_file))?,
            ca_file,
            storage: read_storage(&dir.join(STORAGE_FILE))?,
        })
    }

    /// The CA certificate file that clients trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The CA certificate, PEM, as written into bootstrap files.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn mint(
        &self,
        account: &KeyPair,
        name: &str,
        permissions: Permissions,
        now: i64,
        expires_at: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<MintedUser, BrokerError> {
        let key = generate_nkey(KeyPairType::User, rng)?;
        let spec = UserSpec {
            name: name.to_owned(),
            public_key: key.public_key(),
            permissions,
            expires_at: Some(expires_at),
        };
        let jwt = encode_user_jwt(account, &spec, now)?;
        Ok(MintedUser {
            jwt,
            seed: seed_text(&key)?,
            public_key: key.public_key(),
        })
    }

    /// Mints the control plane's own user in the application account.
    pub fn mint_control_plane(
        &self,
        now: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<MintedUser, BrokerError> {
        self.mint(
            &self.app_account,
            "control-plane",
            control_plane_permissions(),
            now,
            now + CONTROL_PLANE_JWT_VALIDITY_SECS,
            rng,
        )
    }

    /// Mints a system-account user, which may push account updates to the server.
    pub fn mint_system_user(
        &self,
        now: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<MintedUser, BrokerError> {
        let permissions = Permissions {
            publish: SubjectRule::Any,
            subscribe: SubjectRule::Any,
            allow_responses: None,
        };
        self.mint(
            &self.system_account,
            "control-plane system",
            permissions,
            now,
            now + CONTROL_PLANE_JWT_VALIDITY_SECS,
            rng,
        )
    }

    /// Mints a one-node enrollment user: it may only request on this node's enroll subject and
    /// read replies on its own inbox, until `expires_at`.
    pub fn mint_enrollment_user(
        &self,
        deployment: &DeploymentId,
        node: &NodeId,
        now: i64,
        expires_at: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<MintedUser, BrokerError> {
        let key = generate_nkey(KeyPairType::User, rng)?;
        let permissions = enrollment_permissions(
            deployment,
            node,
            &enrollment_inbox_prefix(&key.public_key()),
        );
        let spec = UserSpec {
            name: format!("enrollment {deployment}/{node}"),
            public_key: key.public_key(),
            permissions,
            expires_at: Some(expires_at),
        };
        let jwt = encode_user_jwt(&self.app_account, &spec, now)?;
        Ok(MintedUser {
            jwt,
            seed: seed_text(&key)?,
            public_key: key.public_key(),
        })
    }

    /// Mints a node's user JWT for the public key it enrolled, with exactly its own subjects.
    pub fn mint_node_jwt(
        &self,
        deployment: &DeploymentId,
        node: &NodeId,
        user_public_key: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<String, BrokerError> {
        Ok(encode_user_jwt(
            &self.app_account,
            &node_user(deployment, node, user_public_key, expires_at),
            now,
        )?)
    }

    /// Re-signs the application account JWT with these revoked user keys.
    pub fn app_account_jwt(
        &self,
        revocations: &BTreeMap<String, i64>,
        now: i64,
    ) -> Result<String, BrokerError> {
        let mut account = app_account(self.app_account.public_key(), &self.storage);
        account.revocations = revocations.clone();
        Ok(encode_account_jwt(&self.operator, &account, now)?)
    }

    /// The application account's public key.
    pub fn app_account_public_key(&self) -> String {
        self.app_account.public_key()
    }
}

/// The NATS user public key (`U…`) of a node key: the same Ed25519 key, encoded as an nkey.
pub fn node_user_public_key(node_key: &warden_bus::PublicKey) -> Result<String, BrokerError> {
    // An nkey public key is the Ed25519 public key with a type prefix and checksum.
    let seedless = nkeys::KeyPair::from_public_key(&encode_user_public(node_key.as_bytes()))
        .map_err(|error| {
            BrokerError::Security(NatsSecurityError::KeyGeneration {
                kind: KeyPairType::User,
                reason: error.to_string(),
            })
        })?;
    Ok(seedless.public_key())
}

fn encode_user_public(bytes: &[u8; 32]) -> String {
    // Prefix byte for user public keys (U) is 20 << 3; then the key; then CRC16 little-endian.
    let mut raw = Vec::with_capacity(35);
    raw.push(20 << 3);
    raw.extend_from_slice(bytes);
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    data_encoding::BASE32_NOPAD.encode(&raw)
}

/// CRC-16/XMODEM as nkeys uses it.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn node_key_maps_to_the_same_nkey() {
        let node =
            warden_bus::SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        let nkey = KeyPair::new_from_raw(KeyPairType::User, node.seed()).unwrap();
        assert_eq!(
            node_user_public_key(&node.public_key()).unwrap(),
            nkey.public_key()
        );
    }

    #[test]
    fn init_writes_private_files_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let broker_dir = dir.path().join("broker");
        let listen = Listen {
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            client_port: 4222,
            websocket_port: 443,
        };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        init(
            &broker_dir,
            &listen,
            &Storage::default(),
            1_796_428_800,
            &mut rng,
        )
        .unwrap();
        for secret in [
            OPERATOR_SEED,
            SYSTEM_ACCOUNT_SEED,
            APP_ACCOUNT_SEED,
            CA_KEY,
            SERVER_KEY,
        ] {
            let mode = std::fs::metadata(broker_dir.join(secret))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{secret}");
        }
        let config = std::fs::read_to_string(broker_dir.join(SERVER_CONFIG)).unwrap();
        assert!(
            config.contains("4222") && config.contains("443"),
            "{config}"
        );
        assert!(
            config.contains(&format!("max_file_store: {}", 16u64 << 30)),
            "{config}"
        );
        assert!(matches!(
            init(&broker_dir, &listen, &Storage::default(), 1, &mut rng),
            Err(BrokerError::Exists { .. })
        ));
        let broker = Broker::load(&broker_dir).unwrap();
        assert!(broker.ca_pem().contains("BEGIN CERTIFICATE"));

        std::fs::set_permissions(
            broker_dir.join(APP_ACCOUNT_SEED),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            Broker::load(&broker_dir),
            Err(BrokerError::Permissions { .. })
        ));
    }

    fn loopback_listen() -> Listen {
        Listen {
            hosts: vec!["127.0.0.1".into()],
            client_port: 4222,
            websocket_port: 443,
        }
    }

    #[test]
    fn too_small_storage_rejected_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let broker_dir = dir.path().join("broker");
        let listen = loopback_listen();
        let storage = Storage {
            file_bytes: MIN_FILE_STORAGE - 1,
            ..Storage::default()
        };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let error = init(&broker_dir, &listen, &storage, 1, &mut rng).unwrap_err();
        assert!(error.to_string().contains("at least 64MiB"), "{error}");
        let storage = Storage {
            file_bytes: MAX_STORAGE + 1,
            ..Storage::default()
        };
        assert!(init(&broker_dir, &listen, &storage, 1, &mut rng).is_err());
        assert!(!broker_dir.exists());
    }

    #[test]
    fn sizes_read_with_binary_units() {
        assert_eq!(parse_size("1073741824").unwrap(), 1 << 30);
        assert_eq!(parse_size("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        for (bad, reason) in [
            ("", "does not start with a number"),
            ("GiB", "does not start with a number"),
            ("-1GiB", "does not start with a number"),
            ("1.5GiB", "not a whole number"),
            ("16XB", "unit is unknown"),
            ("16GB2", "unit is unknown"),
            ("99999999999999999999", "number is too large"),
            ("99999999999TiB", "the most nats-server reads"),
            ("9223372036854775808", "the most nats-server reads"),
        ] {
            let error = parse_size(bad).unwrap_err().to_string();
            assert!(error.contains(reason), "{bad:?}: {error}");
            assert!(error.contains("such as 16GiB"), "{bad:?}: {error}");
        }
    }

    fn disk_storage_claim(token: &str) -> serde_json::Value {
        use base64::Engine;
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        claims["nats"]["limits"]["disk_storage"].clone()
    }

    #[test]
    fn resigned_account_keeps_chosen_storage() {
        let dir = tempfile::tempdir().unwrap();
        let broker_dir = dir.path().join("broker");
        let listen = loopback_listen();
        let storage = Storage {
            file_bytes: 1 << 30,
            ..Storage::default()
        };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        init(&broker_dir, &listen, &storage, 1, &mut rng).unwrap();
        let config = std::fs::read_to_string(broker_dir.join(SERVER_CONFIG)).unwrap();
        assert!(config.contains("max_file_store: 1073741824"), "{config}");

        let broker = Broker::load(&broker_dir).unwrap();
        let token = broker.app_account_jwt(&BTreeMap::new(), 2).unwrap();
        assert_eq!(disk_storage_claim(&token), 1u64 << 30);

        // A set-up from before the record existed keeps the old fixed reservation.
        std::fs::remove_file(broker_dir.join(STORAGE_FILE)).unwrap();
        let broker = Broker::load(&broker_dir).unwrap();
        let token = broker.app_account_jwt(&BTreeMap::new(), 2).unwrap();
        assert_eq!(disk_storage_claim(&token), 16u64 << 30);

        for bad in [
            "not json",
            r#"{"file_bytes": 1, "memory_bytes": 1}"#,
            r#"{"file_bytes": 1073741824, "memory_bytes": 0}"#,
            r#"{"file_bytes": 1073741824, "memory_bytes": 1, "extra": 1}"#,
            r#"{"file_bytes": 18446744073709551615, "memory_bytes": 1}"#,
        ] {
            std::fs::write(broker_dir.join(STORAGE_FILE), bad).unwrap();
            let error = Broker::load(&broker_dir).unwrap_err().to_string();
            assert!(error.contains(STORAGE_FILE), "{bad}: {error}");
            assert!(error.contains("max_file_store"), "{bad}: {error}");
        }
    }
}
