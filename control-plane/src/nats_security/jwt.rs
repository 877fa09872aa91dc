//! NATS JWT v2: operator, account and user claims, signed with nkeys.
//!
//! A token is `base64url(header) "." base64url(claims) "." base64url(signature)`, without
//! padding. The header is `{"typ":"JWT","alg":"ed25519-nkey"}` and the signature is Ed25519 over
//! the first two parts, made by the issuer's nkey. The claims carry `jti`, `iat`, `iss`, `name`,
//! `sub`, an optional `exp`, and a `nats` object with the claim `type`, `version: 2` and the
//! type's fields. The layout follows the nats-io/jwt v2 Go library (`claims.go`,
//! `operator_claims.go`, `account_claims.go`, `user_claims.go`, `types.go`).
//!
//! `jti` is computed as that library does: SHA-512/256 over the JSON of the standard claims
//! without `jti`, in base32 without padding. NOTE: Go's JSON encoder escapes `<`, `>` and `&`
//! in strings and serde_json does not, so a name with those characters gets another `jti` than
//! nsc would give it. nats-server does not check `jti`.
//!
//! An empty allow list in a NATS permission means "no restriction". [`SubjectRule::Only`] with
//! no subjects is therefore encoded as a deny of `>`, so that it means "nothing".

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::{KeyPair, KeyPairType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512_256};

use super::{check_public_key, NatsSecurityError};

/// The JOSE header of every NATS v2 JWT.
const HEADER_JSON: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// `nats.version` of the claims this module writes.
const CLAIMS_VERSION: u8 = 2;

/// A count or size limit in an account or user JWT. NATS writes "unlimited" as -1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum Limit {
    /// No limit.
    Unlimited,
    /// At most this many (connections, subscriptions, bytes, streams…).
    Max(u64),
}

impl From<i64> for Limit {
    fn from(value: i64) -> Self {
        u64::try_from(value).map_or(Self::Unlimited, Self::Max)
    }
}

impl From<Limit> for i64 {
    fn from(limit: Limit) -> Self {
        match limit {
            Limit::Unlimited => -1,
            Limit::Max(value) => i64::try_from(value).unwrap_or(i64::MAX),
        }
    }
}

/// The operator JWT: self-signed by the operator key, trusted by the server's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorSpec {
    /// Operator name.
    pub name: String,
    /// Public key of the system account.
    pub system_account: String,
    /// Expiry in Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
}

/// Connection and subject limits of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLimits {
    /// Client connections at once.
    pub connections: Limit,
    /// Leaf node connections at once.
    pub leaf_connections: Limit,
    /// Subscriptions at once.
    pub subscriptions: Limit,
    /// Bytes in flight.
    pub data: Limit,
    /// Largest message payload in bytes.
    pub payload: Limit,
    /// Imports from other accounts.
    pub imports: Limit,
    /// Exports to other accounts.
    pub exports: Limit,
    /// Whether exports may contain wildcards.
    pub wildcard_exports: bool,
}

impl AccountLimits {
    /// No limits, the defaults of the nats-io/jwt library.
    pub const UNLIMITED: Self = Self {
        connections: Limit::Unlimited,
        leaf_connections: Limit::Unlimited,
        subscriptions: Limit::Unlimited,
        data: Limit::Unlimited,
        payload: Limit::Unlimited,
        imports: Limit::Unlimited,
        exports: Limit::Unlimited,
        wildcard_exports: true,
    };
}

/// JetStream limits of an account. An account with no JetStream limits cannot use JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JetStreamLimits {
    /// Bytes of memory storage across all streams.
    pub memory_storage: Limit,
    /// Bytes of file storage across all streams.
    pub disk_storage: Limit,
    /// Number of streams.
    pub streams: Limit,
    /// Number of consumers.
    pub consumers: Limit,
}

/// An account JWT's content. The control plane keeps this and re-signs it whenever it changes,
/// for example to revoke a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSpec {
    /// Account name.
    pub name: String,
    /// The account's public key (`A…`), the JWT's subject.
    pub public_key: String,
    /// Connection and subject limits.
    pub limits: AccountLimits,
    /// JetStream limits; `None` leaves JetStream disabled for the account.
    pub jetstream: Option<JetStreamLimits>,
    /// Revoked user public keys, each with the time in Unix seconds at or before which its
    /// JWTs were issued to be rejected.
    pub revocations: BTreeMap<String, i64>,
    /// Expiry in Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
}

impl AccountSpec {
    /// Creates an account without limits, JetStream or revocations.
    pub fn new(name: impl Into<String>, public_key: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            public_key: public_key.into(),
            limits: AccountLimits::UNLIMITED,
            jetstream: None,
            revocations: BTreeMap::new(),
            expires_at: None,
        }
    }

    /// Enables JetStream with `limits`.
    pub fn with_jetstream(mut self, limits: JetStreamLimits) -> Self {
        self.jetstream = Some(limits);
        self
    }

    /// Adds `user_public_key` to the revocation list with time `revoked_at`. nats-server rejects
    /// every JWT of that user issued at or before `revoked_at` (it compares `iat` with the
    /// stored time, in `isRevoked` of `server/accounts.go`). A later entry for the same key
    /// is kept.
    pub fn revoke(
        &mut self,
        user_public_key: &str,
        revoked_at: i64,
    ) -> Result<(), NatsSecurityError> {
        check_public_key("revoked user", user_public_key, KeyPairType::User)?;
        let entry = self
            .revocations
            .entry(user_public_key.to_owned())
            .or_insert(revoked_at);
        *entry = (*entry).max(revoked_at);
        Ok(())
    }
}

/// The subjects a user may publish or subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubjectRule {
    /// Every subject of the account.
    Any,
    /// Only subjects matching these filters; an empty list allows nothing.
    Only(Vec<String>),
}

/// Permission to publish replies to the reply subjects of requests the user received, for a
/// bounded number of messages and time, beyond its publish permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponsePermission {
    /// Replies allowed per request.
    pub max_messages: u32,
    /// How long after the request the replies are allowed.
    pub ttl: Duration,
}

/// A user's permissions, enforced by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Subjects the user may publish on.
    pub publish: SubjectRule,
    /// Subjects the user may subscribe to.
    pub subscribe: SubjectRule,
    /// Replies allowed beyond `publish`; `None` allows none.
    pub allow_responses: Option<ResponsePermission>,
}

/// A user JWT's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    /// User name.
    pub name: String,
    /// The user's public key (`U…`), the JWT's subject.
    pub public_key: String,
    /// The user's permissions.
    pub permissions: Permissions,
    /// Expiry in Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
}

/// Encodes the operator JWT, self-signed by `operator` at `issued_at` (Unix seconds).
pub fn encode_operator_jwt(
    operator: &KeyPair,
    spec: &OperatorSpec,
    issued_at: i64,
) -> Result<String, NatsSecurityError> {
    check_signer("operator", operator, KeyPairType::Operator)?;
    check_public_key("system account", &spec.system_account, KeyPairType::Account)?;
    let nats = OperatorNats {
        system_account: spec.system_account.clone(),
        kind: "operator",
        version: CLAIMS_VERSION,
    };
    let standard = StandardClaims::new(
        operator,
        operator.public_key(),
        &spec.name,
        issued_at,
        spec.expires_at,
    )?;
    encode("operator", operator, standard, nats)
}

/// Encodes an account JWT, signed by `operator` at `issued_at` (Unix seconds).
pub fn encode_account_jwt(
    operator: &KeyPair,
    spec: &AccountSpec,
    issued_at: i64,
) -> Result<String, NatsSecurityError> {
    check_signer("account", operator, KeyPairType::Operator)?;
    check_public_key("account", &spec.public_key, KeyPairType::Account)?;
    for user in spec.revocations.keys() {
        check_public_key("revoked user", user, KeyPairType::User)?;
    }
    let jetstream = spec.jetstream.unwrap_or(JetStreamLimits {
        memory_storage: Limit::Max(0),
        disk_storage: Limit::Max(0),
        streams: Limit::Max(0),
        consumers: Limit::Max(0),
    });
    if spec.jetstream.is_some()
        && jetstream.memory_storage == Limit::Max(0)
        && jetstream.disk_storage == Limit::Max(0)
    {
        return Err(NatsSecurityError::JetStreamDisabled {
            account: spec.name.clone(),
        });
    }
    let limits = &spec.limits;
    let nats = AccountNats {
        limits: WireAccountLimits {
            subs: limits.subscriptions.into(),
            data: limits.data.into(),
            payload: limits.payload.into(),
            imports: limits.imports.into(),
            exports: limits.exports.into(),
            wildcards: limits.wildcard_exports,
            conn: limits.connections.into(),
            leaf: limits.leaf_connections.into(),
            mem_storage: jetstream.memory_storage.into(),
            disk_storage: jetstream.disk_storage.into(),
            streams: jetstream.streams.into(),
            consumer: jetstream.consumers.into(),
        },
        revocations: spec.revocations.clone(),
        kind: "account",
        version: CLAIMS_VERSION,
    };
    let standard = StandardClaims::new(
        operator,
        spec.public_key.clone(),
        &spec.name,
        issued_at,
        spec.expires_at,
    )?;
    encode("account", operator, standard, nats)
}

/// Encodes a user JWT, signed by `account` at `issued_at` (Unix seconds).
pub fn encode_user_jwt(
    account: &KeyPair,
    spec: &UserSpec,
    issued_at: i64,
) -> Result<String, NatsSecurityError> {
    check_signer("user", account, KeyPairType::Account)?;
    check_public_key("user", &spec.public_key, KeyPairType::User)?;
    let permissions = &spec.permissions;
    let nats = UserNats {
        publish: WirePermission::from_rule(&permissions.publish)?,
        subscribe: WirePermission::from_rule(&permissions.subscribe)?,
        responses: permissions.allow_responses.map(|response| WireResponse {
            max: response.max_messages,
            ttl: i64::try_from(response.ttl.as_nanos()).unwrap_or(i64::MAX),
        }),
        subs: -1,
        data: -1,
        payload: -1,
        kind: "user",
        version: CLAIMS_VERSION,
    };
    let standard = StandardClaims::new(
        account,
        spec.public_key.clone(),
        &spec.name,
        issued_at,
        spec.expires_at,
    )?;
    encode("user", account, standard, nats)
}

/// Adds `user_public_key` to `account`'s revocation list at `now` and re-signs the account JWT
/// with `operator`. Push the returned JWT to the server with
/// [`push_account_jwt`](super::push_account_jwt).
///
/// Every JWT of that user issued at or before `now` is then rejected, so a replacement JWT for
/// the same key must be issued at least one second later. Giving the node a new key is simpler.
pub fn revoke_user(
    operator: &KeyPair,
    account: &mut AccountSpec,
    user_public_key: &str,
    now: i64,
) -> Result<String, NatsSecurityError> {
    account.revoke(user_public_key, now)?;
    encode_account_jwt(operator, account, now)
}

fn check_signer(
    claim: &'static str,
    signer: &KeyPair,
    expected: KeyPairType,
) -> Result<(), NatsSecurityError> {
    let found = signer.key_pair_type();
    if found != expected {
        return Err(NatsSecurityError::WrongSigner {
            claim,
            expected,
            found,
        });
    }
    Ok(())
}

/// Checks a permission subject as nats-io/jwt's `Subject.Validate` does, and also rejects
/// whitespace (queue groups are not used here) and a `>` that is not the last token.
fn check_subject(subject: &str) -> Result<(), NatsSecurityError> {
    let invalid = |reason| NatsSecurityError::InvalidSubject {
        subject: subject.to_owned(),
        reason,
    };
    if subject.is_empty() {
        return Err(invalid("it is empty"));
    }
    if subject.contains(char::is_whitespace) {
        return Err(invalid("it contains whitespace"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.iter().any(|token| token.is_empty()) {
        return Err(invalid(
            "it has an empty token (a leading, trailing or double dot)",
        ));
    }
    let last = tokens.len() - 1;
    if tokens
        .iter()
        .enumerate()
        .any(|(index, token)| *token == ">" && index != last)
    {
        return Err(invalid("`>` may only be the last token"));
    }
    Ok(())
}

/// The claims every NATS JWT has, in the field order of nats-io/jwt's `ClaimsData`, which the
/// `jti` hash depends on.
#[derive(Serialize)]
struct StandardClaims {
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    jti: String,
    iat: i64,
    iss: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    sub: String,
}

impl StandardClaims {
    fn new(
        issuer: &KeyPair,
        subject: String,
        name: &str,
        issued_at: i64,
        expires_at: Option<i64>,
    ) -> Result<Self, NatsSecurityError> {
        if let Some(expires_at) = expires_at {
            if expires_at <= issued_at {
                return Err(NatsSecurityError::ExpiryNotAfterIssue {
                    name: name.to_owned(),
                    expires_at,
                    issued_at,
                });
            }
        }
        let mut claims = Self {
            exp: expires_at,
            jti: String::new(),
            iat: issued_at,
            iss: issuer.public_key(),
            name: name.to_owned(),
            sub: subject,
        };
        // The hash covers the claims with `jti` left out, so it can be recomputed from them.
        let json = serde_json::to_vec(&claims).map_err(|source| NatsSecurityError::Json {
            name: name.to_owned(),
            source,
        })?;
        claims.jti = data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(&json));
        Ok(claims)
    }
}

#[derive(Serialize)]
struct Claims<N> {
    #[serde(flatten)]
    standard: StandardClaims,
    nats: N,
}

fn encode<N: Serialize>(
    claim: &'static str,
    signer: &KeyPair,
    standard: StandardClaims,
    nats: N,
) -> Result<String, NatsSecurityError> {
    let name = standard.name.clone();
    let claims = Claims { standard, nats };
    let payload = serde_json::to_vec(&claims).map_err(|source| NatsSecurityError::Json {
        name: name.clone(),
        source,
    })?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER_JSON),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature =
        signer
            .sign(signing_input.as_bytes())
            .map_err(|error| NatsSecurityError::Signing {
                claim,
                name,
                reason: error.to_string(),
            })?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

#[derive(Serialize)]
struct OperatorNats {
    system_account: String,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

#[derive(Serialize)]
struct AccountNats {
    limits: WireAccountLimits,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    revocations: BTreeMap<String, i64>,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

/// nats-io/jwt's `OperatorLimits`: its `NatsLimits`, `AccountLimits` and `JetStreamLimits`
/// flattened into one object. A JetStream storage limit of 0 in both leaves JetStream off.
#[derive(Serialize)]
struct WireAccountLimits {
    subs: i64,
    data: i64,
    payload: i64,
    imports: i64,
    exports: i64,
    wildcards: bool,
    conn: i64,
    leaf: i64,
    mem_storage: i64,
    disk_storage: i64,
    streams: i64,
    consumer: i64,
}

#[derive(Serialize)]
struct UserNats {
    #[serde(rename = "pub")]
    publish: WirePermission,
    #[serde(rename = "sub")]
    subscribe: WirePermission,
    #[serde(rename = "resp", skip_serializing_if = "Option::is_none")]
    responses: Option<WireResponse>,
    subs: i64,
    data: i64,
    payload: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

#[derive(Serialize)]
struct WirePermission {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    deny: Vec<String>,
}

impl WirePermission {
    fn from_rule(rule: &SubjectRule) -> Result<Self, NatsSecurityError> {
        let (allow, deny) = match rule {
            SubjectRule::Any => (Vec::new(), Vec::new()),
            SubjectRule::Only(subjects) if subjects.is_empty() => {
                (Vec::new(), vec![">".to_owned()])
            }
            SubjectRule::Only(subjects) => {
                for subject in subjects {
                    check_subject(subject)?;
                }
                (subjects.clone(), Vec::new())
            }
        };
        Ok(Self { allow, deny })
    }
}

/// nats-io/jwt's `ResponsePermission`; `ttl` is a Go `time.Duration`, in nanoseconds.
#[derive(Serialize)]
struct WireResponse {
    max: u32,
    ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats_security::{generate_nkey, BrokerKeys};
    use rand::SeedableRng;
    use serde_json::Value;

    const NOW: i64 = 1_700_000_000;

    fn keys() -> BrokerKeys {
        BrokerKeys::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(11)).unwrap()
    }

    fn user_key(seed: u64) -> KeyPair {
        generate_nkey(
            KeyPairType::User,
            &mut rand_chacha::ChaCha20Rng::seed_from_u64(seed),
        )
        .unwrap()
    }

    /// Splits a token, checks its signature against its `iss` and returns header and claims.
    fn decode(token: &str) -> (Value, Value) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let issuer = KeyPair::from_public_key(claims["iss"].as_str().unwrap()).unwrap();
        issuer
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("signature verifies with the issuer's key");
        (header, claims)
    }

    fn node_spec(key: &KeyPair) -> UserSpec {
        UserSpec {
            name: "prod/n1".to_owned(),
            public_key: key.public_key(),
            permissions: Permissions {
                publish: SubjectRule::Only(vec!["ld.prod.n1.telemetry.>".to_owned()]),
                subscribe: SubjectRule::Only(vec!["_INBOX.prod.n1.>".to_owned()]),
                allow_responses: None,
            },
            expires_at: Some(NOW + 3600),
        }
    }

    #[test]
    fn operator_jwt_is_self_signed() {
        let keys = keys();
        let spec = OperatorSpec {
            name: "warden".to_owned(),
            system_account: keys.system_account.public_key(),
            expires_at: None,
        };
        let token = encode_operator_jwt(&keys.operator, &spec, NOW).unwrap();
        let (header, claims) = decode(&token);
        assert_eq!(
            header,
            serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"})
        );
        assert_eq!(claims["iss"], claims["sub"]);
        assert_eq!(claims["iss"], keys.operator.public_key().as_str());
        assert_eq!(claims["iat"], NOW);
        assert!(claims.get("exp").is_none());
        assert_eq!(claims["nats"]["type"], "operator");
        assert_eq!(claims["nats"]["version"], 2);
        assert_eq!(
            claims["nats"]["system_account"],
            keys.system_account.public_key().as_str()
        );
    }

    #[test]
    fn jti_hashes_standard_claims() {
        let keys = keys();
        let user = user_key(1);
        let token = encode_user_jwt(&keys.app_account, &node_spec(&user), NOW).unwrap();
        let (_, claims) = decode(&token);
        // Recompute the hash from the claims, in nats-io/jwt's ClaimsData field order.
        let standard = format!(
            r#"{{"exp":{},"iat":{},"iss":"{}","name":"{}","sub":"{}"}}"#,
            claims["exp"],
            claims["iat"],
            claims["iss"].as_str().unwrap(),
            claims["name"].as_str().unwrap(),
            claims["sub"].as_str().unwrap()
        );
        let expected = data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(standard.as_bytes()));
        assert_eq!(claims["jti"], expected.as_str());
    }

    #[test]
    fn account_jwt_carries_jetstream_limits() {
        let keys = keys();
        let spec = AccountSpec::new("WARDEN", keys.app_account.public_key()).with_jetstream(
            JetStreamLimits {
                memory_storage: Limit::Max(1 << 20),
                disk_storage: Limit::Max(1 << 30),
                streams: Limit::Max(10),
                consumers: Limit::Unlimited,
            },
        );
        let token = encode_account_jwt(&keys.operator, &spec, NOW).unwrap();
        let (_, claims) = decode(&token);
        assert_eq!(claims["iss"], keys.operator.public_key().as_str());
        assert_eq!(claims["sub"], keys.app_account.public_key().as_str());
        let limits = &claims["nats"]["limits"];
        assert_eq!(limits["mem_storage"], 1 << 20);
        assert_eq!(limits["disk_storage"], 1 << 30);
        assert_eq!(limits["streams"], 10);
        assert_eq!(limits["consumer"], -1);
        assert_eq!(limits["conn"], -1);
        assert_eq!(limits["wildcards"], true);
        assert_eq!(claims["nats"]["type"], "account");
        assert!(claims["nats"].get("revocations").is_none());
    }

    #[test]
    fn account_without_jetstream_has_zero_storage() {
        let keys = keys();
        let spec = AccountSpec::new("SYS", keys.system_account.public_key());
        let (_, claims) = decode(&encode_account_jwt(&keys.operator, &spec, NOW).unwrap());
        assert_eq!(claims["nats"]["limits"]["mem_storage"], 0);
        assert_eq!(claims["nats"]["limits"]["disk_storage"], 0);
    }

    #[test]
    fn zero_jetstream_storage_rejected() {
        let keys = keys();
        let spec = AccountSpec::new("WARDEN", keys.app_account.public_key()).with_jetstream(
            JetStreamLimits {
                memory_storage: Limit::Max(0),
                disk_storage: Limit::Max(0),
                streams: Limit::Unlimited,
                consumers: Limit::Unlimited,
            },
        );
        let error = encode_account_jwt(&keys.operator, &spec, NOW).unwrap_err();
        assert!(
            matches!(error, NatsSecurityError::JetStreamDisabled { .. }),
            "{error}"
        );
    }

    #[test]
    fn user_jwt_carries_permissions() {
        let keys = keys();
        let user = user_key(2);
        let token = encode_user_jwt(&keys.app_account, &node_spec(&user), NOW).unwrap();
        let (_, claims) = decode(&token);
        assert_eq!(claims["iss"], keys.app_account.public_key().as_str());
        assert_eq!(claims["sub"], user.public_key().as_str());
        assert_eq!(claims["exp"], NOW + 3600);
        let nats = &claims["nats"];
        assert_eq!(nats["type"], "user");
        assert_eq!(nats["version"], 2);
        assert_eq!(
            nats["pub"]["allow"],
            serde_json::json!(["ld.prod.n1.telemetry.>"])
        );
        assert!(nats["pub"].get("deny").is_none());
        assert_eq!(
            nats["sub"]["allow"],
            serde_json::json!(["_INBOX.prod.n1.>"])
        );
        assert!(nats.get("resp").is_none());
        assert_eq!(nats["subs"], -1);
    }

    #[test]
    fn empty_allow_list_denies_everything() {
        let keys = keys();
        let user = user_key(3);
        let mut spec = node_spec(&user);
        spec.permissions.subscribe = SubjectRule::Only(Vec::new());
        let (_, claims) = decode(&encode_user_jwt(&keys.app_account, &spec, NOW).unwrap());
        assert_eq!(claims["nats"]["sub"], serde_json::json!({"deny": [">"]}));
    }

    #[test]
    fn any_rule_has_no_lists() {
        let keys = keys();
        let user = user_key(4);
        let mut spec = node_spec(&user);
        spec.permissions.publish = SubjectRule::Any;
        spec.permissions.allow_responses = Some(ResponsePermission {
            max_messages: 1,
            ttl: Duration::from_secs(2),
        });
        let (_, claims) = decode(&encode_user_jwt(&keys.app_account, &spec, NOW).unwrap());
        assert_eq!(claims["nats"]["pub"], serde_json::json!({}));
        assert_eq!(
            claims["nats"]["resp"],
            serde_json::json!({"max": 1, "ttl": 2_000_000_000_i64})
        );
    }

    #[test]
    fn wrong_signer_rejected() {
        let keys = keys();
        let user = user_key(5);
        let error = encode_user_jwt(&keys.operator, &node_spec(&user), NOW).unwrap_err();
        assert!(
            matches!(error, NatsSecurityError::WrongSigner { .. }),
            "{error}"
        );
        let spec = AccountSpec::new("WARDEN", keys.app_account.public_key());
        let error = encode_account_jwt(&keys.app_account, &spec, NOW).unwrap_err();
        assert!(
            matches!(error, NatsSecurityError::WrongSigner { .. }),
            "{error}"
        );
    }

    #[test]
    fn wrong_subject_kind_rejected() {
        let keys = keys();
        let mut spec = node_spec(&user_key(6));
        spec.public_key = keys.app_account.public_key();
        let error = encode_user_jwt(&keys.app_account, &spec, NOW).unwrap_err();
        assert!(
            matches!(error, NatsSecurityError::InvalidPublicKey { .. }),
            "{error}"
        );
    }

    #[test]
    fn past_expiry_rejected() {
        let keys = keys();
        let mut spec = node_spec(&user_key(7));
        spec.expires_at = Some(NOW);
        let error = encode_user_jwt(&keys.app_account, &spec, NOW).unwrap_err();
        assert!(
            matches!(error, NatsSecurityError::ExpiryNotAfterIssue { .. }),
            "{error}"
        );
    }

    #[test]
    fn invalid_subjects_rejected() {
        for subject in ["", "a b", ".a", "a.", "a..b", "a.>.b"] {
            assert!(check_subject(subject).is_err(), "{subject:?} was accepted");
        }
        for subject in ["a", "a.*.b", "a.>", ">", "$JS.ACK.S.C.>"] {
            assert!(check_subject(subject).is_ok(), "{subject:?} was rejected");
        }
    }

    #[test]
    fn revocation_resigns_account() {
        let keys = keys();
        let user = user_key(8);
        let mut spec = AccountSpec::new("WARDEN", keys.app_account.public_key());
        let token = revoke_user(&keys.operator, &mut spec, &user.public_key(), NOW).unwrap();
        let (_, claims) = decode(&token);
        assert_eq!(
            claims["nats"]["revocations"][user.public_key().as_str()],
            NOW
        );
        assert_eq!(claims["iat"], NOW);
        // An earlier revocation time does not move the stored one back.
        spec.revoke(&user.public_key(), NOW - 10).unwrap();
        assert_eq!(spec.revocations[&user.public_key()], NOW);
    }

    #[test]
    fn revocation_needs_user_key() {
        let keys = keys();
        let mut spec = AccountSpec::new("WARDEN", keys.app_account.public_key());
        let error = spec
            .revoke(&keys.app_account.public_key(), NOW)
            .unwrap_err();
        assert!(
            matches!(error, NatsSecurityError::InvalidPublicKey { .. }),
            "{error}"
        );
    }

    #[test]
    fn limit_round_trips_through_json() {
        for limit in [Limit::Unlimited, Limit::Max(0), Limit::Max(42)] {
            let text = serde_json::to_string(&limit).unwrap();
            assert_eq!(serde_json::from_str::<Limit>(&text).unwrap(), limit);
        }
        assert_eq!(serde_json::to_string(&Limit::Unlimited).unwrap(), "-1");
    }
}
