//! The NATS transport: async-nats with JetStream. Every call has a deadline, so a silent broker
//! turns into a [`BusError::Timeout`] instead of a hung actor.
//!
//! [`NatsBus::connect`] opens a plain connection without credentials. [`NatsBus::connect_with`]
//! takes a [`NatsConnectConfig`] and connects only over TLS (`tls://` or `wss://`). It can trust
//! a private CA and authenticate with a user JWT, signing the server's nonce with the user's
//! nkey. It can also set the inbox prefix that the user's broker permissions allow.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{
    Acknowledge, Bus, BusError, ConsumerSpec, Delivery, Inbound, KvEntry, StreamSpec, Subscription,
};
use crate::subject::Subject;

/// Deadline for one broker operation.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the first connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a NATS server with JetStream.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    consumers: Arc<Mutex<HashMap<(String, String), consumer::PullConsumer>>>,
    buckets: Arc<Mutex<HashMap<String, kv::Store>>>,
}

/// Tells a refusal of the credentials apart from a broker that cannot be reached.
fn connect_error(url: &str, error: &async_nats::ConnectError) -> BusError {
    use async_nats::ConnectErrorKind;
    let reason = error.to_string();
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            BusError::Refused {
                url: url.to_owned(),
                reason,
            }
        }
        _ => BusError::Connect {
            url: url.to_owned(),
            reason,
        },
    }
}

/// Tells whether an event's text reports that the server refused the credentials.
fn is_refusal(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("authorization violation")
        || text.contains("authentication")
        || text.contains("user authentication revoked")
}

/// Logs a connection event. A rejection of the credentials is logged as an error with its
/// cause and the fix, because the client keeps retrying and otherwise logs only the server's
/// short message.
fn log_event(event: &async_nats::Event) {
    let text = event.to_string();
    if is_refusal(&text) {
        tracing::error!(
            event = %text,
            "the broker refused this client's credentials: they expired or were revoked; \
             if the node was revoked, the operator re-enrolls it with `wardenctl node reenroll`"
        );
    } else {
        tracing::info!(event = %text, "nats connection event");
    }
}

impl NatsBus {
    /// Connects to `url`, naming the connection `name` in the server's monitoring.
    ///
    /// After the first connection succeeds the client reconnects by itself, without limit.
    pub async fn connect(url: &str, name: &str) -> Result<Self, BusError> {
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .max_reconnects(None)
            .event_callback(|event| async move { log_event(&event) });
        let client = with_deadline("connect", CONNECT_TIMEOUT * 2, options.connect(url))
            .await?
            .map_err(|error| connect_error(url, &error))?;
        Ok(Self::from_client(client))
    }

    /// Connects with `config`: over TLS only, with the user JWT and inbox prefix it carries.
    ///
    /// After the first connection succeeds the client reconnects by itself, without limit.
    pub async fn connect_with(config: &NatsConnectConfig) -> Result<Self, BusError> {
        let options = config
            .connect_options()?
            .event_callback(|event| async move { log_event(&event) });
        let servers = config.servers.join(",");
        let client = with_deadline(
            "connect",
            CONNECT_TIMEOUT * 2,
            options.connect(config.servers.as_slice()),
        )
        .await?
        .map_err(|error| connect_error(&servers, &error))?;
        Ok(Self::from_client(client))
    }

    /// Wraps an existing client.
    pub fn from_client(client: async_nats::Client) -> Self {
        let jetstream = jetstream::new(client.clone());
        Self {
            client,
            jetstream,
            consumers: Arc::default(),
            buckets: Arc::default(),
        }
    }

    /// The underlying client, for callers that need NATS features outside [`Bus`].
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn consumer(&self, stream: &str, name: &str) -> Result<consumer::PullConsumer, BusError> {
        let key = (stream.to_owned(), name.to_owned());
        if let Some(found) = lock(&self.consumers).get(&key) {
            return Ok(found.clone());
        }
        let operation = format!("looking up consumer {name} on stream {stream}");
        let found: consumer::PullConsumer = with_deadline(
            &operation,
            OPERATION_TIMEOUT,
            self.jetstream.get_consumer_from_stream(name, stream),
        )
        .await?
        .map_err(|error| {
            if error.to_string().contains("not found") {
                BusError::NotFound {
                    what: format!("consumer {name} on stream {stream}"),
                }
            } else {
                BusError::failed(&operation, error)
            }
        })?;
        lock(&self.consumers).insert(key, found.clone());
        Ok(found)
    }

    async fn bucket(&self, bucket: &str) -> Result<kv::Store, BusError> {
        if let Some(found) = lock(&self.buckets).get(bucket) {
            return Ok(found.clone());
        }
        let operation = format!("opening bucket {bucket}");
        let found = with_deadline(
            &operation,
            OPERATION_TIMEOUT,
            self.jetstream.get_key_value(bucket),
        )
        .await?
        .map_err(|error| {
            if error.to_string().contains("not found") {
                BusError::NotFound {
                    what: format!("bucket {bucket}"),
                }
            } else {
                BusError::failed(&operation, error)
            }
        })?;
        lock(&self.buckets).insert(bucket.to_owned(), found.clone());
        Ok(found)
    }

    /// Gives an existing bucket a new maximum age, so a bucket made by an older version or
    /// with another setting gets the current one. Keys already older than the new age go.
    async fn set_bucket_max_age(&self, bucket: &str, max_age: Duration) -> Result<(), BusError> {
        let operation = format!("setting the maximum age of bucket {bucket}");
        with_deadline(&operation, OPERATION_TIMEOUT, async {
            let stream = self
                .jetstream
                .get_stream(format!("KV_{bucket}"))
                .await
                .map_err(|error| BusError::failed(&operation, error))?;
            let mut config = stream.cached_info().config.clone();
            if config.max_age == max_age {
                return Ok(());
            }
            if config.max_age.is_zero() {
                tracing::info!(
                    bucket,
                    to_secs = max_age.as_secs(),
                    "setting the maximum age of a bucket"
                );
            } else {
                // Another process asked for another age, or this one did with other settings.
                tracing::warn!(
                    bucket,
                    from_secs = config.max_age.as_secs(),
                    to_secs = max_age.as_secs(),
                    "changing the maximum age of a bucket; every process that opens it must ask for the same age, or the last one to start sets it"
                );
            }
            config.max_age = max_age;
            // The broker refuses a dedup window longer than the maximum age.
            if !max_age.is_zero() && config.duplicate_window > max_age {
                config.duplicate_window = max_age;
            }
            self.jetstream
                .update_stream(config)
                .await
                .map(|_| ())
                .map_err(|error| BusError::failed(&operation, error))
        })
        .await?
    }
}

/// URL schemes [`NatsBus::connect_with`] accepts: NATS over TLS and WebSocket over TLS.
const TLS_SCHEMES: [&str; 2] = ["tls", "wss"];

/// Settings for [`NatsBus::connect_with`].
#[derive(Debug, Clone)]
pub struct NatsConnectConfig {
    /// Server URLs, each `tls://host:port` or `wss://host:port`. The client tries them in turn.
    pub servers: Vec<String>,
    /// Connection name shown in the server's monitoring.
    pub name: String,
    /// User JWT and nkey; without them the client presents no credentials.
    pub credentials: Option<NatsCredentials>,
    /// PEM file of the CA that signed the server certificate. Without it the client trusts the
    /// operating system's root certificates.
    pub ca_file: Option<PathBuf>,
    /// Prefix of the client's reply subjects (default `_INBOX`). It must match the inbox that
    /// the user's subscribe permission allows, or no request gets its reply.
    pub inbox_prefix: Option<String>,
}

impl NatsConnectConfig {
    /// Settings with no credentials, the system's root certificates and the default inbox prefix.
    pub fn new(servers: Vec<String>, name: impl Into<String>) -> Self {
        Self {
            servers,
            name: name.into(),
            credentials: None,
            ca_file: None,
            inbox_prefix: None,
        }
    }

    /// Sets the user JWT and nkey.
    pub fn with_credentials(mut self, credentials: NatsCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Trusts the CA certificate in the PEM file at `path`.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets the prefix of the client's reply subjects.
    pub fn with_inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = Some(prefix.into());
        self
    }

    /// Checks the settings and turns them into async-nats options that require TLS.
    ///
    /// [`NatsBus::connect_with`] adds a logging event callback and a deadline; callers that need
    /// their own event callback can start from these options.
    pub fn connect_options(&self) -> Result<async_nats::ConnectOptions, BusError> {
        self.validate()?;
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.name)
            .connection_timeout(CONNECT_TIMEOUT)
            .max_reconnects(None)
            .require_tls(true);
        if let Some(path) = &self.ca_file {
            options = options.add_root_certificates(path.clone());
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        if let Some(credentials) = &self.credentials {
            let key = Arc::clone(&credentials.key);
            options = options.jwt(credentials.jwt.clone(), move |nonce| {
                let key = Arc::clone(&key);
                async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
            });
        }
        Ok(options)
    }

    fn validate(&self) -> Result<(), BusError> {
        let invalid = |reason: String| BusError::InvalidConfig { reason };
        if self.servers.is_empty() {
            return Err(invalid(
                "no server URL given; add at least one tls:// or wss:// URL".to_owned(),
            ));
        }
        for url in &self.servers {
            let address: async_nats::ServerAddr = url
                .parse()
                .map_err(|error| invalid(format!("server URL {url:?} is invalid: {error}")))?;
            if !TLS_SCHEMES.contains(&address.scheme()) {
                return Err(invalid(format!(
                    "server URL {url:?} has scheme {:?}, which does not use TLS; use tls:// or wss://",
                    address.scheme()
                )));
            }
        }
        if let Some(prefix) = &self.inbox_prefix {
            let has_bad_token = prefix
                .split('.')
                .any(|token| token.is_empty() || token == "*" || token == ">");
            if has_bad_token || prefix.contains(char::is_whitespace) {
                return Err(invalid(format!(
                    "inbox prefix {prefix:?} is not a valid subject prefix; use dot-separated \
                     tokens without wildcards or spaces, such as _INBOX.prod.node-1"
                )));
            }
        }
        Ok(())
    }
}

/// A user JWT and the nkey it was issued to. The client signs the server's nonce with the key,
/// which proves that it has the private key of the user the JWT names.
///
/// `Debug` shows only the user's public key, never the seed or the JWT.
#[derive(Clone)]
pub struct NatsCredentials {
    jwt: String,
    key: Arc<nkeys::KeyPair>,
}

impl NatsCredentials {
    /// Pairs a user JWT with the user's nkey seed (`SU…`).
    pub fn new(jwt: impl Into<String>, seed: &str) -> Result<Self, BusError> {
        let key = nkeys::KeyPair::from_seed(seed).map_err(|error| BusError::InvalidConfig {
            // The nkeys error text names the failed check, never the seed itself.
            reason: format!("the user nkey seed is invalid: {}", error.kind()),
        })?;
        if key.key_pair_type() != nkeys::KeyPairType::User {
            return Err(BusError::InvalidConfig {
                reason: format!(
                    "the nkey seed is of a {:?} key, not a user key; pass the seed that starts with SU",
                    key.key_pair_type()
                ),
            });
        }
        Ok(Self {
            jwt: jwt.into(),
            key: Arc::new(key),
        })
    }

    /// Returns the user's public key (`U…`).
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }
}

impl fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCredentials")
            .field("user", &self.key.public_key())
            .field("jwt", &"<redacted>")
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Locks a cache map; a poisoned lock only means another thread panicked mid-insert of a
/// cloneable handle, so the map is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn with_deadline<T>(
    operation: &str,
    timeout: Duration,
    future: impl Future<Output = T>,
) -> Result<T, BusError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| BusError::Timeout {
            operation: operation.to_owned(),
            timeout,
        })
}

async fn collect_deliveries(
    mut messages: consumer::pull::Batch,
    operation: &str,
) -> Result<Vec<Delivery>, BusError> {
    let mut deliveries = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|error| BusError::failed(operation, error))?;
        let info = message
            .info()
            .map_err(|error| BusError::failed(operation, error))?;
        let (stream_sequence, delivered) = (info.stream_sequence, info.delivered);
        let (message, acker) = message.split();
        deliveries.push(Delivery::new(
            message.subject.to_string(),
            message.payload,
            stream_sequence,
            u64::try_from(delivered).unwrap_or(0),
            Box::new(NatsAcker(acker)),
        ));
    }
    Ok(deliveries)
}

struct NatsAcker(jetstream::message::Acker);

#[async_trait]
impl Acknowledge for NatsAcker {
    async fn ack(&self) -> Result<(), BusError> {
        with_deadline(
            "acknowledging a delivery",
            OPERATION_TIMEOUT,
            self.0.double_ack(),
        )
        .await?
        .map_err(|error| BusError::failed("acknowledging a delivery", error))
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        with_deadline(
            "rejecting a delivery",
            OPERATION_TIMEOUT,
            self.0.ack_with(AckKind::Nak(delay)),
        )
        .await?
        .map_err(|error| BusError::failed("rejecting a delivery", error))
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        with_deadline(
            "marking a delivery in progress",
            OPERATION_TIMEOUT,
            self.0.ack_with(AckKind::Progress),
        )
        .await?
        .map_err(|error| BusError::failed("marking a delivery in progress", error))
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        let operation = format!("publishing on {subject}");
        with_deadline(&operation, OPERATION_TIMEOUT, async {
            self.client
                .publish(subject.as_str().to_owned(), payload)
                .await
                .map_err(|error| BusError::failed(&operation, error))?;
            self.client
                .flush()
                .await
                .map_err(|error| BusError::failed(&operation, error))
        })
        .await?
    }

    async fn request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let operation = format!("request on {subject}");
        let message = with_deadline(
            &operation,
            timeout,
            self.client.request(subject.as_str().to_owned(), payload),
        )
        .await?
        .map_err(|error| BusError::failed(&operation, error))?;
        Ok(message.payload)
    }

    async fn reply(&self, reply_subject: &str, payload: Bytes) -> Result<(), BusError> {
        let operation = "publishing a reply";
        with_deadline(operation, OPERATION_TIMEOUT, async {
            self.client
                .publish(reply_subject.to_owned(), payload)
                .await
                .map_err(|error| BusError::failed(operation, error))?;
            self.client
                .flush()
                .await
                .map_err(|error| BusError::failed(operation, error))
        })
        .await?
    }

    async fn subscribe(
        &self,
        filter: &Subject,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        let operation = format!("subscribing to {filter}");
        let subject = filter.as_str().to_owned();
        let subscriber = match queue_group {
            Some(group) => {
                with_deadline(
                    &operation,
                    OPERATION_TIMEOUT,
                    self.client.queue_subscribe(subject, group.to_owned()),
                )
                .await?
            }
            None => {
                with_deadline(
                    &operation,
                    OPERATION_TIMEOUT,
                    self.client.subscribe(subject),
                )
                .await?
            }
        }
        .map_err(|error| BusError::failed(&operation, error))?;
        Ok(Box::pin(subscriber.map(|message| Inbound {
            subject: message.subject.to_string(),
            payload: message.payload,
            reply: message.reply.map(|reply| reply.to_string()),
        })))
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        let operation = format!("creating stream {}", spec.name);
        let config = stream::Config {
            name: spec.name.clone(),
            subjects: spec
                .subjects
                .iter()
                .map(|subject| subject.as_str().to_owned())
                .collect(),
            max_age: spec.max_age,
            duplicate_window: spec.duplicate_window,
            storage: stream::StorageType::File,
            max_message_size: spec
                .max_message_bytes
                .map_or(-1, |bytes| i32::try_from(bytes).unwrap_or(i32::MAX)),
            max_messages_per_subject: spec
                .max_messages_per_subject
                .map_or(-1, |count| i64::try_from(count).unwrap_or(i64::MAX)),
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        };
        // Create or update, so a stream made by an older version gets the current limits.
        with_deadline(
            &operation,
            OPERATION_TIMEOUT,
            self.jetstream.create_or_update_stream(config),
        )
        .await?
        .map_err(|error| BusError::failed(&operation, error))?;
        Ok(())
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        let operation = format!("creating consumer {} on stream {}", spec.name, spec.stream);
        let config = consumer::pull::Config {
            durable_name: Some(spec.name.clone()),
            filter_subject: spec.filter.as_str().to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        with_deadline(&operation, OPERATION_TIMEOUT, async {
            let stream = self
                .jetstream
                .get_stream(&spec.stream)
                .await
                .map_err(|error| BusError::failed(&operation, error))?;
            stream
                .get_or_create_consumer(&spec.name, config)
                .await
                .map_err(|error| BusError::failed(&operation, error))
        })
        .await??;
        Ok(())
    }

    async fn persist(
        &self,
        subject: &Subject,
        payload: Bytes,
        dedup_id: Option<&str>,
    ) -> Result<u64, BusError> {
        let operation = format!("storing a message on {subject}");
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = dedup_id {
            headers.insert("Nats-Msg-Id", id);
        }
        let ack = with_deadline(&operation, OPERATION_TIMEOUT, async {
            let pending = self
                .jetstream
                .publish_with_headers(subject.as_str().to_owned(), headers, payload)
                .await
                .map_err(|error| BusError::failed(&operation, error))?;
            pending
                .await
                .map_err(|error| BusError::failed(&operation, error))
        })
        .await??;
        Ok(ack.sequence)
    }

    async fn pull(
        &self,
        stream: &str,
        consumer: &str,
        batch: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let handle = self.consumer(stream, consumer).await?;
        let operation = format!("pulling from consumer {consumer}");
        // Take what is ready without waiting; if nothing is, wait for one message. A plain
        // batch request would hold every message back until the batch fills or expires.
        let result = with_deadline(&operation, wait + OPERATION_TIMEOUT, async {
            let ready = handle
                .fetch()
                .max_messages(batch)
                .messages()
                .await
                .map_err(|error| BusError::failed(&operation, error))?;
            let deliveries = collect_deliveries(ready, &operation).await?;
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let next = handle
                .batch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
                .map_err(|error| BusError::failed(&operation, error))?;
            collect_deliveries(next, &operation).await
        })
        .await?;
        if result.is_err() {
            // The consumer may have been deleted and recreated; look it up again next time.
            lock(&self.consumers).remove(&(stream.to_owned(), consumer.to_owned()));
        }
        result
    }

    async fn ensure_bucket(&self, bucket: &str, max_age: Option<Duration>) -> Result<(), BusError> {
        super::check_bucket_max_age(bucket, max_age)?;
        // The broker reads a zero maximum age as "no limit".
        let max_age = max_age.unwrap_or_default();
        if self.bucket(bucket).await.is_ok() {
            return self.set_bucket_max_age(bucket, max_age).await;
        }
        let operation = format!("creating bucket {bucket}");
        let config = kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let created = with_deadline(
            &operation,
            OPERATION_TIMEOUT,
            self.jetstream.create_key_value(config),
        )
        .await?;
        match created {
            Ok(store) => {
                lock(&self.buckets).insert(bucket.to_owned(), store);
                Ok(())
            }
            // Another replica may have created it between our lookup and our create.
            Err(error) => {
                self.bucket(bucket)
                    .await
                    .map_err(|_| BusError::failed(&operation, error))?;
                self.set_bucket_max_age(bucket, max_age).await
            }
        }
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError> {
        let store = self.bucket(bucket).await?;
        let operation = format!("reading {key} from bucket {bucket}");
        let entry = with_deadline(&operation, OPERATION_TIMEOUT, store.entry(key))
            .await?
            .map_err(|error| BusError::failed(&operation, error))?;
        Ok(entry.and_then(|entry| match entry.operation {
            kv::Operation::Put => Some(KvEntry {
                value: entry.value,
                revision: entry.revision,
            }),
            kv::Operation::Delete | kv::Operation::Purge => None,
        }))
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError> {
        let store = self.bucket(bucket).await?;
        let operation = format!("creating {key} in bucket {bucket}");
        with_deadline(&operation, OPERATION_TIMEOUT, store.create(key, value))
            .await?
            .map_err(|error| match error.kind() {
                kv::CreateErrorKind::AlreadyExists => BusError::KeyExists {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                },
                _ => BusError::failed(&operation, error),
            })
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BusError> {
        let store = self.bucket(bucket).await?;
        let operation = format!("updating {key} in bucket {bucket}");
        with_deadline(
            &operation,
            OPERATION_TIMEOUT,
            store.update(key, value, revision),
        )
        .await?
        .map_err(|error| match error.kind() {
            kv::UpdateErrorKind::WrongLastRevision => BusError::RevisionMismatch {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                expected: revision,
            },
            _ => BusError::failed(&operation, error),
        })
    }

    async fn kv_keys(&self, bucket: &str) -> Result<Vec<String>, BusError> {
        let operation = format!("listing keys of bucket {bucket}");
        // The key-value store's own key listing reads the last message of each key with a
        // consumer. With a history of one, a key updated during the listing loses that message
        // and can be left out. The stream's subject counts are one snapshot instead; deleted
        // keys appear there too, and reading them returns nothing.
        with_deadline(&operation, OPERATION_TIMEOUT, async {
            let stream = self
                .jetstream
                .get_stream(format!("KV_{bucket}"))
                .await
                .map_err(|error| BusError::failed(&operation, error))?;
            let prefix = format!("$KV.{bucket}.");
            let mut subjects = stream
                .info_with_subjects(format!("{prefix}>"))
                .await
                .map_err(|error| BusError::failed(&operation, error))?;
            let mut found = Vec::new();
            while let Some(subject) = subjects.next().await {
                let (subject, _) = subject.map_err(|error| BusError::failed(&operation, error))?;
                if let Some(key) = subject.strip_prefix(&prefix) {
                    found.push(key.to_owned());
                }
            }
            found.sort();
            Ok(found)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_seed() -> String {
        nkeys::KeyPair::new_user().seed().unwrap()
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let seed = user_seed();
        let jwt = "eyJ0eXAiOiJKV1QifQ.e30.c2ln";
        let credentials = NatsCredentials::new(jwt, &seed).unwrap();
        let config = NatsConnectConfig::new(vec!["tls://127.0.0.1:4222".to_owned()], "test")
            .with_credentials(credentials.clone());
        for text in [format!("{credentials:?}"), format!("{config:?}")] {
            assert!(!text.contains(&seed), "Debug shows the seed: {text}");
            assert!(!text.contains(jwt), "Debug shows the JWT: {text}");
            assert!(
                text.contains(&credentials.public_key()),
                "Debug lacks the user's public key: {text}"
            );
        }
    }

    #[test]
    fn credentials_reject_non_user_seed() {
        let account_seed = nkeys::KeyPair::new_account().seed().unwrap();
        let error = NatsCredentials::new("jwt", &account_seed).unwrap_err();
        assert!(error.to_string().contains("not a user key"), "{error}");
        assert!(!error.to_string().contains(&account_seed), "{error}");
    }

    #[test]
    fn credentials_reject_garbage_seed() {
        let error = NatsCredentials::new("jwt", "SUNOTASEED").unwrap_err();
        assert!(matches!(error, BusError::InvalidConfig { .. }), "{error:?}");
        assert!(!error.to_string().contains("SUNOTASEED"), "{error}");
    }

    #[test]
    fn config_requires_tls_schemes() {
        for url in ["nats://127.0.0.1:4222", "ws://127.0.0.1:443"] {
            let config = NatsConnectConfig::new(vec![url.to_owned()], "test");
            let error = config.connect_options().unwrap_err();
            assert!(
                error.to_string().contains("does not use TLS"),
                "{url}: {error}"
            );
        }
        for url in ["tls://127.0.0.1:4222", "wss://127.0.0.1:443"] {
            let config = NatsConnectConfig::new(vec![url.to_owned()], "test");
            assert!(config.connect_options().is_ok(), "{url} was rejected");
        }
    }

    #[test]
    fn config_requires_a_server() {
        let error = NatsConnectConfig::new(Vec::new(), "test")
            .connect_options()
            .unwrap_err();
        assert!(error.to_string().contains("no server URL"), "{error}");
    }

    #[test]
    fn config_rejects_wildcard_inbox_prefix() {
        for prefix in [
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX..a",
            "_INBOX.a.",
            "_INBOX a",
            "",
        ] {
            let config = NatsConnectConfig::new(vec!["tls://127.0.0.1:4222".to_owned()], "test")
                .with_inbox_prefix(prefix);
            assert!(
                config.connect_options().is_err(),
                "inbox prefix {prefix:?} was accepted"
            );
        }
    }
}
