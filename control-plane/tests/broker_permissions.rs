//! Broker-enforced node identity against a real nats-server in operator mode with TLS on the
//! client port and on the WebSocket port.
//!
//! Node A's credentials are used for attacks that the server must refuse: every subject class of
//! node B, the control plane's wildcards and key-value subjects, and the JetStream API. Each
//! refusal is checked twice: the server reports a permission violation to the client, and the
//! message does not reach a subscriber of the control plane. Then A's allowed operations must
//! still work. Bad credentials and plaintext connections must be rejected.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use nkeys::{KeyPair, KeyPairType};
use rand::SeedableRng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use warden_bus::subject::{self, RpcVerb, Subject, TelemetryKind, REPORT_STREAM, TASK_STREAM};
use warden_bus::transport::nats::{NatsBus, NatsConnectConfig, NatsCredentials};
use warden_bus::transport::{ConsumerSpec, StreamSpec};
use warden_bus::{Bus, BusError, Clock, DeploymentId, NodeId, SystemClock};
use warden_control_plane::nats_security::jwt::{
    encode_account_jwt, encode_operator_jwt, encode_user_jwt, revoke_user, AccountSpec,
    JetStreamLimits, Limit, OperatorSpec, Permissions, SubjectRule, UserSpec,
};
use warden_control_plane::nats_security::permissions::{
    control_plane_permissions, enrollment_permissions, node_user,
};
use warden_control_plane::nats_security::server_config::{
    render_server_config, PreloadedAccount, ServerConfig, TlsFiles,
};
use warden_control_plane::nats_security::tls::{write_private_key, CertificateAuthority};
use warden_control_plane::nats_security::{
    generate_nkey, push_account_jwt, BrokerKeys, APP_ACCOUNT_NAME, SYSTEM_ACCOUNT_NAME,
};
use warden_testkit::NatsServer;

// Only the probe: the rest of the support starts whole clusters, which these tests build by hand.
#[path = "support/probe.rs"]
mod probe;

use probe::{Probe, VIOLATION_WAIT};

const DEPLOYMENT: &str = "prod";
const NODE_A: &str = "node-a";
const NODE_B: &str = "node-b";
const KV_BUCKET: &str = "warden_control";

/// How long a check waits to be sure a refused message was not delivered. The violation has
/// already come back by then, so the server has dealt with the message.
const DELIVERY_WAIT: Duration = Duration::from_millis(300);
/// How long a refused request may wait for a reply.
const REQUEST_WAIT: Duration = Duration::from_millis(500);

fn now_secs() -> i64 {
    i64::try_from(SystemClock.now().0 / 1000).unwrap()
}

fn deployment() -> DeploymentId {
    DeploymentId::new(DEPLOYMENT).unwrap()
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

/// A user's JWT and nkey.
#[derive(Clone)]
struct Identity {
    jwt: String,
    key: KeyPair,
}

impl Identity {
    fn credentials(&self) -> NatsCredentials {
        NatsCredentials::new(&self.jwt, &self.key.seed().unwrap()).unwrap()
    }
}

/// A nats-server in operator mode with its keys, CA and users.
struct Broker {
    server: NatsServer,
    ca_file: PathBuf,
    keys: BrokerKeys,
    app_account: AccountSpec,
    now: i64,
    rng: rand_chacha::ChaCha20Rng,
}

impl Broker {
    fn start() -> Self {
        let now = now_secs();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let keys = BrokerKeys::generate(&mut rng).unwrap();
        let operator_jwt = encode_operator_jwt(
            &keys.operator,
            &OperatorSpec {
                name: "warden-test".to_owned(),
                system_account: keys.system_account.public_key(),
                expires_at: None,
            },
            now,
        )
        .unwrap();
        let system_account =
            AccountSpec::new(SYSTEM_ACCOUNT_NAME, keys.system_account.public_key());
        let app_account = AccountSpec::new(APP_ACCOUNT_NAME, keys.app_account.public_key())
            .with_jetstream(JetStreamLimits {
                memory_storage: Limit::Max(64 << 20),
                disk_storage: Limit::Max(256 << 20),
                streams: Limit::Max(16),
                consumers: Limit::Max(64),
            });
        let accounts = vec![
            PreloadedAccount {
                public_key: system_account.public_key.clone(),
                jwt: encode_account_jwt(&keys.operator, &system_account, now).unwrap(),
            },
            PreloadedAccount {
                public_key: app_account.public_key.clone(),
                jwt: encode_account_jwt(&keys.operator, &app_account, now).unwrap(),
            },
        ];

        let mut ca_file = PathBuf::new();
        let server = NatsServer::start_with_config(|setup| {
            let ca =
                CertificateAuthority::generate("Warden test CA", now - 60, now + 3600).unwrap();
            let certificate = ca
                .issue_server_certificate(&["localhost", "127.0.0.1"], now - 60, now + 3600)
                .unwrap();
            ca_file = setup.dir.join("ca.pem");
            std::fs::write(&ca_file, ca.certificate_pem()).unwrap();
            let tls = TlsFiles {
                certificate: setup.dir.join("server.pem"),
                private_key: setup.dir.join("server.key"),
            };
            std::fs::write(&tls.certificate, &certificate.certificate_pem).unwrap();
            write_private_key(&tls.private_key, certificate.private_key_pem()).unwrap();
            render_server_config(&ServerConfig {
                host: "127.0.0.1".to_owned(),
                client_port: setup.client_port,
                websocket_port: setup.websocket_port,
                client_tls: tls.clone(),
                websocket_tls: tls,
                operator_jwt,
                system_account: keys.system_account.public_key(),
                accounts,
                resolver_dir: setup.dir.join("jwt"),
                jetstream_dir: setup.dir.join("jetstream"),
                max_file_store: 256 << 20,
                max_memory_store: 64 << 20,
            })
            .unwrap()
        });
        Self {
            server,
            ca_file,
            keys,
            app_account,
            now,
            rng,
        }
    }

    fn user_key(&mut self) -> KeyPair {
        generate_nkey(KeyPairType::User, &mut self.rng).unwrap()
    }

    fn app_user(&mut self, name: &str, permissions: Permissions) -> Identity {
        let key = self.user_key();
        let spec = UserSpec {
            name: name.to_owned(),
            public_key: key.public_key(),
            permissions,
            expires_at: Some(self.now + 3600),
        };
        let jwt = encode_user_jwt(&self.keys.app_account, &spec, self.now).unwrap();
        Identity { jwt, key }
    }

    fn node_identity(&mut self, name: &str) -> Identity {
        let key = self.user_key();
        let spec = node_user(
            &deployment(),
            &node(name),
            &key.public_key(),
            self.now + 3600,
        );
        let jwt = encode_user_jwt(&self.keys.app_account, &spec, self.now).unwrap();
        Identity { jwt, key }
    }

    fn system_user(&mut self) -> Identity {
        let key = self.user_key();
        let spec = UserSpec {
            name: "system".to_owned(),
            public_key: key.public_key(),
            permissions: Permissions {
                publish: SubjectRule::Any,
                subscribe: SubjectRule::Any,
                allow_responses: None,
            },
            expires_at: Some(self.now + 3600),
        };
        let jwt = encode_user_jwt(&self.keys.system_account, &spec, self.now).unwrap();
        Identity { jwt, key }
    }

    fn config(&self, url: &str, identity: &Identity, name: &str) -> NatsConnectConfig {
        NatsConnectConfig::new(vec![url.to_owned()], name)
            .with_ca_file(&self.ca_file)
            .with_credentials(identity.credentials())
    }

    fn node_config(&self, url: &str, identity: &Identity, name: &str) -> NatsConnectConfig {
        self.config(url, identity, name)
            .with_inbox_prefix(subject::node_inbox_prefix(&deployment(), &node(name)))
    }

    /// Connects the control plane and creates the streams, consumers and bucket.
    async fn control_plane(&mut self) -> NatsBus {
        let identity = self.app_user("control-plane", control_plane_permissions());
        let bus =
            NatsBus::connect_with(&self.config(&self.server.tls_url(), &identity, "control-plane"))
                .await
                .unwrap();

        bus.ensure_stream(&StreamSpec {
            name: TASK_STREAM.to_owned(),
            subjects: vec![Subject::all_tasks()],
            max_age: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(60),
            max_message_bytes: None,
            max_messages_per_subject: None,
        })
        .await
        .unwrap();
        bus.ensure_stream(&StreamSpec {
            name: REPORT_STREAM.to_owned(),
            subjects: vec![Subject::all_telemetry(TelemetryKind::Report)],
            max_age: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(60),
            max_message_bytes: None,
            max_messages_per_subject: None,
        })
        .await
        .unwrap();

        for name in [NODE_A, NODE_B] {
            bus.ensure_consumer(&ConsumerSpec {
                stream: TASK_STREAM.to_owned(),
                name: subject::task_consumer(&deployment(), &node(name)),
                filter: Subject::tasks(&deployment(), &node(name)),
                ack_wait: Duration::from_secs(60),
            })
            .await
            .unwrap();
        }
        bus.ensure_consumer(&ConsumerSpec {
            stream: REPORT_STREAM.to_owned(),
            name: subject::REPORT_CONSUMER.to_owned(),
            filter: Subject::all_telemetry(TelemetryKind::Report),
            ack_wait: Duration::from_secs(60),
        })
        .await
        .unwrap();

        bus.ensure_bucket(KV_BUCKET, None).await.unwrap();
        bus.kv_create(KV_BUCKET, "admin", Bytes::from_static(b"hash"))
            .await
            .unwrap();
        bus
    }
}

/// Subscribes the control plane to `filter` and waits until the server has registered the
/// subscription.
///
/// `flush` only writes the client's buffer, so the server might not have processed the
/// subscription yet when another connection publishes. The server processes one connection's
/// operations in order, so a message that comes back on a second, later subscription proves
/// that the first one is in place.
async fn observe(observer: &async_nats::Client, filter: &str) -> async_nats::Subscriber {
    let subscription = observer.subscribe(filter.to_owned()).await.unwrap();
    let sync_subject = observer.new_inbox();
    let mut sync = observer.subscribe(sync_subject.clone()).await.unwrap();
    observer
        .publish(sync_subject, Bytes::from_static(b"sync"))
        .await
        .unwrap();
    observer.flush().await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), sync.next()).await;
    assert!(
        matches!(echoed, Ok(Some(_))),
        "the server did not confirm the control plane's subscription to {filter}"
    );
    subscription
}

async fn assert_nothing_received(subscription: &mut async_nats::Subscriber, what: &str) {
    let received = tokio::time::timeout(DELIVERY_WAIT, subscription.next()).await;
    if let Ok(Some(message)) = received {
        panic!("{what}: a message on {} was delivered", message.subject);
    }
}

/// Node A publishes on `subject`: the server must report a violation, and the control plane's
/// subscriber on that subject must receive nothing.
async fn assert_publish_refused(
    attacker: &mut Probe,
    observer: &async_nats::Client,
    subject: &str,
) {
    let mut watch = observe(observer, subject).await;
    attacker
        .client
        .publish(subject.to_owned(), Bytes::from_static(b"attack"))
        .await
        .unwrap();
    attacker.client.flush().await.unwrap();
    attacker.expect_violation("publish on", subject).await;
    assert_nothing_received(&mut watch, &format!("publish on {subject}")).await;
}

/// Node A subscribes to `filter`: the server must report a violation, and a message the control
/// plane then publishes on `sample`, which `filter` matches, must not reach node A.
async fn assert_subscribe_refused(
    attacker: &mut Probe,
    observer: &async_nats::Client,
    filter: &str,
    sample: &str,
) {
    let mut subscription = attacker.client.subscribe(filter.to_owned()).await.unwrap();
    attacker.client.flush().await.unwrap();
    attacker.expect_violation("subscribe to", filter).await;
    observer
        .publish(sample.to_owned(), Bytes::from_static(b"secret"))
        .await
        .unwrap();
    observer.flush().await.unwrap();
    assert_nothing_received(
        &mut subscription,
        &format!("subscribe to {filter} (sent on {sample})"),
    )
    .await;
}

/// Node A sends a request on `subject` while the control plane responds on it: the request must
/// get no reply, the server must report a violation, and the responder must see nothing.
async fn assert_request_refused(
    attacker: &mut Probe,
    observer: &async_nats::Client,
    subject: &str,
) {
    let mut watch = observe(observer, subject).await;
    let request = attacker
        .client
        .request(subject.to_owned(), Bytes::from_static(b"attack"));
    let reply = tokio::time::timeout(REQUEST_WAIT, request).await;
    assert!(
        !matches!(reply, Ok(Ok(_))),
        "request on {subject}: node A got a reply"
    );
    attacker.expect_violation("request on", subject).await;
    assert_nothing_received(&mut watch, &format!("request on {subject}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refused_outside_its_subjects() {
    let mut broker = Broker::start();
    let control_plane = broker.control_plane().await;
    let observer = control_plane.client().clone();
    let identity_a = broker.node_identity(NODE_A);
    let mut attacker =
        Probe::connect(&broker.node_config(&broker.server.tls_url(), &identity_a, NODE_A)).await;

    // A task waits for each node, so that a pull that got through would show.
    for name in [NODE_A, NODE_B] {
        control_plane
            .persist(
                &Subject::tasks(&deployment(), &node(name)),
                Bytes::from_static(b"task"),
                None,
            )
            .await
            .unwrap();
    }
    let consumer_b = subject::task_consumer(&deployment(), &node(NODE_B));
    let consumer_a = subject::task_consumer(&deployment(), &node(NODE_A));

    // Node B's subjects.
    let b = format!("ld.{DEPLOYMENT}.{NODE_B}");
    let inbox_b = subject::node_inbox_prefix(&deployment(), &node(NODE_B));
    for subject in [
        format!("{b}.tasks"),
        format!("{b}.telemetry.report"),
        format!("{b}.telemetry.heartbeat"),
        format!("{b}.rpc.enroll"),
        format!("{inbox_b}.reply"),
    ] {
        assert_publish_refused(&mut attacker, &observer, &subject).await;
        assert_request_refused(&mut attacker, &observer, &subject).await;
    }
    for (filter, sample) in [
        (format!("{b}.tasks"), format!("{b}.tasks")),
        (
            format!("{b}.telemetry.*"),
            format!("{b}.telemetry.heartbeat"),
        ),
        (format!("{b}.telemetry.>"), format!("{b}.telemetry.report")),
        (format!("{b}.rpc.*"), format!("{b}.rpc.enroll")),
        (format!("{inbox_b}.>"), format!("{inbox_b}.reply")),
    ] {
        assert_subscribe_refused(&mut attacker, &observer, &filter, &sample).await;
    }

    // The control plane's wildcards, node A's own task subject, and key-value subjects.
    for (filter, sample) in [
        ("ld.*.*.telemetry.>", format!("{b}.telemetry.heartbeat")),
        ("ld.>", format!("{b}.tasks")),
        (">", format!("{b}.tasks")),
        ("_INBOX.>", format!("{inbox_b}.reply")),
        ("ld.prod.node-a.tasks", "ld.prod.node-a.tasks".to_owned()),
        ("$KV.>", "$KV.probe.key".to_owned()),
        (
            "$KV.warden_control.>",
            "$KV.warden_control.probe".to_owned(),
        ),
        ("$SYS.>", "$SYS.probe".to_owned()),
    ] {
        assert_subscribe_refused(&mut attacker, &observer, filter, &sample).await;
    }
    for subject in [
        "$KV.warden_control.admin".to_owned(),
        format!("{b}.telemetry"),
        format!("ld.{DEPLOYMENT}.{NODE_A}.tasks"),
    ] {
        assert_publish_refused(&mut attacker, &observer, &subject).await;
    }

    // The JetStream API: streams, node B's consumer, direct gets, key-value and object stores.
    for subject in [
        "$JS.API.INFO".to_owned(),
        "$JS.API.STREAM.NAMES".to_owned(),
        "$JS.API.STREAM.LIST".to_owned(),
        format!("$JS.API.STREAM.INFO.{TASK_STREAM}"),
        format!("$JS.API.STREAM.CREATE.{TASK_STREAM}"),
        format!("$JS.API.STREAM.UPDATE.{TASK_STREAM}"),
        format!("$JS.API.STREAM.DELETE.{TASK_STREAM}"),
        format!("$JS.API.STREAM.PURGE.{TASK_STREAM}"),
        format!("$JS.API.STREAM.MSG.GET.{TASK_STREAM}"),
        format!("$JS.API.STREAM.MSG.DELETE.{TASK_STREAM}"),
        format!("$JS.API.STREAM.DELETE.{REPORT_STREAM}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{TASK_STREAM}.{consumer_b}"),
        format!("$JS.API.CONSUMER.INFO.{TASK_STREAM}.{consumer_b}"),
        format!("$JS.API.CONSUMER.DELETE.{TASK_STREAM}.{consumer_b}"),
        format!("$JS.API.CONSUMER.CREATE.{TASK_STREAM}.{consumer_b}"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{TASK_STREAM}.{consumer_b}"),
        format!("$JS.API.CONSUMER.DELETE.{TASK_STREAM}.{consumer_a}"),
        format!("$JS.API.CONSUMER.CREATE.{TASK_STREAM}"),
        format!("$JS.API.CONSUMER.NAMES.{TASK_STREAM}"),
        format!("$JS.API.DIRECT.GET.{TASK_STREAM}"),
        format!("$JS.API.DIRECT.GET.KV_{KV_BUCKET}"),
        format!("$JS.API.DIRECT.GET.KV_{KV_BUCKET}.$KV.{KV_BUCKET}.admin"),
        format!("$JS.API.STREAM.INFO.KV_{KV_BUCKET}"),
        format!("$JS.API.STREAM.DELETE.KV_{KV_BUCKET}"),
        format!("$JS.API.STREAM.PURGE.KV_{KV_BUCKET}"),
        "$JS.API.STREAM.CREATE.KV_stolen".to_owned(),
        "$JS.API.STREAM.CREATE.OBJ_stolen".to_owned(),
        "$JS.API.STREAM.DELETE.OBJ_stolen".to_owned(),
    ] {
        assert_request_refused(&mut attacker, &observer, &subject).await;
    }
    assert_publish_refused(
        &mut attacker,
        &observer,
        &format!("$JS.ACK.{TASK_STREAM}.{consumer_b}.1.2.2.1700000000000000000.0"),
    )
    .await;
    assert_publish_refused(&mut attacker, &observer, "$O.stolen.C.chunk").await;
    for (filter, sample) in [
        ("$JS.API.>", format!("$JS.API.STREAM.INFO.{TASK_STREAM}")),
        (
            "$JS.ACK.>",
            format!("$JS.ACK.{TASK_STREAM}.{consumer_b}.1.2.2.1.0"),
        ),
        ("$O.>", "$O.stolen.C.chunk".to_owned()),
    ] {
        assert_subscribe_refused(&mut attacker, &observer, filter, &sample).await;
    }

    // Nothing the attacks aimed at changed.
    let admin = control_plane.kv_get(KV_BUCKET, "admin").await.unwrap();
    assert_eq!(
        admin.map(|entry| entry.value),
        Some(Bytes::from_static(b"hash")),
        "the key-value entry changed"
    );
    // The control plane's own sample messages above also landed in the task stream, so check
    // that nothing was delivered from node B's consumer rather than count its messages.
    let jetstream = async_nats::jetstream::new(observer.clone());
    let mut task_stream = jetstream.get_stream(TASK_STREAM).await.unwrap();
    let info_b = task_stream.consumer_info(&consumer_b).await.unwrap();
    assert_eq!(
        info_b.delivered.consumer_sequence, 0,
        "a message was delivered from node B's consumer"
    );
    assert!(
        info_b.num_pending >= 1,
        "node B's task is no longer waiting for node B"
    );
    let stream_info = task_stream.info().await.unwrap();
    assert!(
        stream_info.state.messages >= 2,
        "the task stream lost messages: {} left",
        stream_info.state.messages
    );

    // Node A's own operations still work on the same connection.
    let node_a = NatsBus::from_client(attacker.client.clone());
    let deliveries = node_a
        .pull(TASK_STREAM, &consumer_a, 10, Duration::from_secs(2))
        .await
        .expect("node A pulls from its own consumer");
    // The task, and the control plane's sample message of the subscribe check on node A's task
    // subject, which the task stream stored too.
    assert_eq!(deliveries.len(), 2, "node A did not receive its tasks");
    for delivery in &deliveries {
        assert_eq!(delivery.subject, format!("ld.{DEPLOYMENT}.{NODE_A}.tasks"));
        delivery.ack().await.expect("node A acknowledges its task");
    }
    let again = node_a
        .pull(TASK_STREAM, &consumer_a, 10, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "the acknowledged task was delivered again"
    );

    let report_subject = Subject::telemetry(&deployment(), &node(NODE_A), TelemetryKind::Report);
    node_a
        .persist(
            &report_subject,
            Bytes::from_static(b"report"),
            Some("report-1"),
        )
        .await
        .expect("node A stores a report in the reports stream");
    let reports = control_plane
        .pull(
            REPORT_STREAM,
            subject::REPORT_CONSUMER,
            10,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    // The stream also contains the control plane's sample message on node B's report subject.
    let from_a: Vec<_> = reports
        .iter()
        .filter(|report| report.subject == report_subject.as_str())
        .collect();
    assert_eq!(
        from_a.len(),
        1,
        "the control plane did not receive node A's report"
    );
    assert_eq!(from_a[0].payload, Bytes::from_static(b"report"));

    let heartbeat = Subject::telemetry(&deployment(), &node(NODE_A), TelemetryKind::Heartbeat);
    let mut heartbeats = observe(&observer, heartbeat.as_str()).await;
    node_a
        .publish(&heartbeat, Bytes::from_static(b"alive"))
        .await
        .expect("node A publishes a heartbeat");
    let received = tokio::time::timeout(Duration::from_secs(2), heartbeats.next()).await;
    assert!(
        matches!(received, Ok(Some(_))),
        "the control plane did not receive node A's heartbeat"
    );

    let rpc = Subject::rpc(&deployment(), &node(NODE_A), RpcVerb::Enroll);
    let responder = answer_requests(&observer, rpc.as_str()).await;
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        attacker
            .client
            .request(rpc.as_str().to_owned(), Bytes::from_static(b"enroll")),
    )
    .await
    .expect("request on node A's rpc subject timed out")
    .expect("request on node A's rpc subject failed");
    assert_eq!(reply.payload, Bytes::from_static(b"answer"));
    responder.abort();
}

/// Replies "answer" to every request on `subject`, as the control plane.
async fn answer_requests(
    observer: &async_nats::Client,
    subject: &str,
) -> tokio::task::JoinHandle<()> {
    let mut requests = observe(observer, subject).await;
    let client = observer.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = client.publish(reply, Bytes::from_static(b"answer")).await;
                let _ = client.flush().await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_needs_its_inbox_prefix() {
    let mut broker = Broker::start();
    let control_plane = broker.control_plane().await;
    let observer = control_plane.client().clone();
    let identity = broker.node_identity(NODE_A);
    // The default inbox prefix _INBOX is outside node A's subscribe permission.
    let config = broker.config(&broker.server.tls_url(), &identity, NODE_A);
    let mut probe = Probe::connect(&config).await;
    let rpc = Subject::rpc(&deployment(), &node(NODE_A), RpcVerb::Enroll);
    let responder = answer_requests(&observer, rpc.as_str()).await;
    let reply = tokio::time::timeout(
        REQUEST_WAIT,
        probe
            .client
            .request(rpc.as_str().to_owned(), Bytes::from_static(b"enroll")),
    )
    .await;
    assert!(
        !matches!(reply, Ok(Ok(_))),
        "request on {rpc} with the default inbox prefix got a reply"
    );
    probe
        .expect_error(
            "subscribe to the default inbox",
            "permissions violation",
            VIOLATION_WAIT,
        )
        .await;
    responder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_user_limited_to_enroll() {
    let mut broker = Broker::start();
    let control_plane = broker.control_plane().await;
    let observer = control_plane.client().clone();
    let key = broker.user_key();
    let inbox = subject::enrollment_inbox_prefix(&key.public_key());
    let spec = UserSpec {
        name: "enroll".to_owned(),
        public_key: key.public_key(),
        permissions: enrollment_permissions(
            &DeploymentId::new("prod").unwrap(),
            &NodeId::new("node-c").unwrap(),
            &inbox,
        ),
        expires_at: Some(broker.now + 3600),
    };
    let identity = Identity {
        jwt: encode_user_jwt(&broker.keys.app_account, &spec, broker.now).unwrap(),
        key,
    };
    let config = broker
        .config(&broker.server.tls_url(), &identity, "enroll")
        .with_inbox_prefix(&inbox);
    let mut probe = Probe::connect(&config).await;

    let enroll = "ld.prod.node-c.rpc.enroll";
    let responder = answer_requests(&observer, enroll).await;
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        probe
            .client
            .request(enroll.to_owned(), Bytes::from_static(b"token")),
    )
    .await
    .expect("enrollment request timed out")
    .expect("enrollment request failed");
    assert_eq!(reply.payload, Bytes::from_static(b"answer"));
    responder.abort();

    // A leaked bootstrap file of node-c cannot ask to enroll any other node.
    for subject in [
        "ld.prod.node-c.telemetry.report",
        "ld.prod.node-c.rpc.other",
        "ld.prod.node-c.tasks",
        "ld.prod.node-d.rpc.enroll",
        "ld.staging.node-c.rpc.enroll",
    ] {
        assert_publish_refused(&mut probe, &observer, subject).await;
    }
    assert_request_refused(
        &mut probe,
        &observer,
        &format!("$JS.API.STREAM.INFO.{TASK_STREAM}"),
    )
    .await;
    assert_subscribe_refused(&mut probe, &observer, "ld.>", "ld.prod.node-c.tasks").await;
    assert_subscribe_refused(
        &mut probe,
        &observer,
        "_INBOX.>",
        "_INBOX.prod.node-a.reply",
    )
    .await;
}

/// Asserts that connecting with `config` fails with an authorization error from the server.
async fn assert_connect_rejected(config: &NatsConnectConfig, what: &str) {
    match NatsBus::connect_with(config).await {
        Ok(_) => panic!("{what}: the server accepted the connection"),
        Err(BusError::Refused { reason, .. }) => assert!(
            reason.to_lowercase().contains("authorization"),
            "{what}: the connection failed, but not with an authorization error: {reason}"
        ),
        Err(error) => panic!("{what}: unexpected error: {error}"),
    }
}

fn signing_input(token: &str) -> &str {
    let end = token.rfind('.').unwrap();
    &token[..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_rejected() {
    let mut broker = Broker::start();
    let url = broker.server.tls_url();
    let identity_a = broker.node_identity(NODE_A);
    let identity_b = broker.node_identity(NODE_B);

    // The genuine credentials work, so the failures below come from what each case changes.
    NatsBus::connect_with(&broker.node_config(&url, &identity_a, NODE_A))
        .await
        .expect("node A connects with its own credentials");

    let key = broker.user_key();
    let past = broker.now - 7200;
    let expired_spec = node_user(&deployment(), &node(NODE_A), &key.public_key(), past + 3600);
    let expired = Identity {
        jwt: encode_user_jwt(&broker.keys.app_account, &expired_spec, past).unwrap(),
        key,
    };
    assert_connect_rejected(
        &broker.node_config(&url, &expired, NODE_A),
        "expired user JWT",
    )
    .await;

    // Node A's claims, signed by a key the operator never vouched for, keeping the real issuer.
    let forger = generate_nkey(KeyPairType::Account, &mut broker.rng).unwrap();
    let input = signing_input(&identity_a.jwt);
    let forged_signature = URL_SAFE_NO_PAD.encode(forger.sign(input.as_bytes()).unwrap());
    let forged = Identity {
        jwt: format!("{input}.{forged_signature}"),
        key: identity_a.key.clone(),
    };
    assert_connect_rejected(
        &broker.node_config(&url, &forged, NODE_A),
        "user JWT with a forged signature",
    )
    .await;

    // Node A widens its own permissions to everything and keeps the account's signature.
    let parts: Vec<&str> = identity_a.jwt.split('.').collect();
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let widened = claims.replace(
        &format!("\"ld.{DEPLOYMENT}.{NODE_A}.telemetry.>\""),
        "\">\"",
    );
    assert_ne!(widened, claims, "the test did not change the claims");
    let tampered = Identity {
        jwt: format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(widened),
            parts[2]
        ),
        key: identity_a.key.clone(),
    };
    assert_connect_rejected(
        &broker.node_config(&url, &tampered, NODE_A),
        "user JWT with widened permissions",
    )
    .await;

    // Node A's JWT with node B's seed: the nonce signature does not match the JWT's subject.
    let wrong_seed = Identity {
        jwt: identity_a.jwt.clone(),
        key: identity_b.key.clone(),
    };
    assert_connect_rejected(
        &broker.node_config(&url, &wrong_seed, NODE_A),
        "valid JWT with the wrong seed",
    )
    .await;

    // A user of an account the operator never signed.
    let stranger_account = generate_nkey(KeyPairType::Account, &mut broker.rng).unwrap();
    let stranger_key = broker.user_key();
    let stranger_spec = node_user(
        &deployment(),
        &node(NODE_A),
        &stranger_key.public_key(),
        broker.now + 3600,
    );
    let stranger = Identity {
        jwt: encode_user_jwt(&stranger_account, &stranger_spec, broker.now).unwrap(),
        key: stranger_key,
    };
    assert_connect_rejected(
        &broker.node_config(&url, &stranger, NODE_A),
        "user of an unknown account",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_user_rejected() {
    let mut broker = Broker::start();
    let url = broker.server.tls_url();
    let identity_a = broker.node_identity(NODE_A);
    let identity_b = broker.node_identity(NODE_B);
    let mut connected_a = Probe::connect(&broker.node_config(&url, &identity_a, NODE_A)).await;

    let system = broker.system_user();
    let system_bus = NatsBus::connect_with(&broker.config(&url, &system, "system"))
        .await
        .expect("the system account user connects");
    let revoked_jwt = revoke_user(
        &broker.keys.operator,
        &mut broker.app_account,
        &identity_a.key.public_key(),
        now_secs(),
    )
    .unwrap();
    push_account_jwt(
        system_bus.client(),
        &broker.keys.app_account.public_key(),
        &revoked_jwt,
    )
    .await
    .expect("the server accepts the account JWT with the revocation");

    connected_a
        .expect_error(
            "node A's open connection after its revocation",
            "revoked",
            Duration::from_secs(5),
        )
        .await;
    assert_connect_rejected(
        &broker.node_config(&url, &identity_a, NODE_A),
        "revoked user",
    )
    .await;
    NatsBus::connect_with(&broker.node_config(&url, &identity_b, NODE_B))
        .await
        .expect("node B, which was not revoked, still connects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_connection_rejected() {
    let mut broker = Broker::start();
    let identity = broker.node_identity(NODE_A);

    // Speak the NATS protocol without TLS, with valid credentials and a valid nonce signature.
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", broker.server.port()))
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut info_line = String::new();
    reader.read_line(&mut info_line).await.unwrap();
    let info: serde_json::Value =
        serde_json::from_str(info_line.trim().strip_prefix("INFO ").unwrap()).unwrap();
    assert_eq!(
        info["tls_required"], true,
        "the server does not announce TLS: {info_line}"
    );
    let nonce = info["nonce"].as_str().unwrap_or_default();
    let signature = URL_SAFE_NO_PAD.encode(identity.key.sign(nonce.as_bytes()).unwrap());
    let connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "name": "plaintext",
        "lang": "raw",
        "version": "0",
        "protocol": 1,
        "jwt": identity.jwt,
        "sig": signature,
    });
    let request = format!("CONNECT {connect}\r\nPING\r\nSUB ld.> 1\r\n");
    // The server may close the socket while this is sent, which is the expected outcome.
    let _ = reader.get_mut().write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server kept the plaintext connection open for 5 s"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains("PONG"),
        "the server answered a plaintext client: {answer}"
    );

    // A WebSocket client without TLS on the WebSocket port.
    let key = identity.key.clone();
    let plain_websocket = async_nats::ConnectOptions::new()
        .jwt(identity.jwt.clone(), move |nonce| {
            let key = key.clone();
            async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
        })
        .connection_timeout(Duration::from_secs(2))
        .connect(broker.server.wss_url().replace("wss://", "ws://"))
        .await;
    assert!(
        plain_websocket.is_err(),
        "a ws:// client without TLS connected to the WebSocket port"
    );

    // A TLS client that does not trust the test CA.
    let untrusted = NatsConnectConfig::new(vec![broker.server.tls_url()], NODE_A)
        .with_credentials(identity.credentials());
    assert!(
        NatsBus::connect_with(&untrusted).await.is_err(),
        "a client that does not trust the server's CA connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_works_over_tls_and_wss() {
    let mut broker = Broker::start();
    let control_plane = broker.control_plane().await;
    let identity = broker.node_identity(NODE_A);
    let consumer = subject::task_consumer(&deployment(), &node(NODE_A));
    let report = Subject::telemetry(&deployment(), &node(NODE_A), TelemetryKind::Report);

    for (index, url) in [broker.server.tls_url(), broker.server.wss_url()]
        .into_iter()
        .enumerate()
    {
        let bus = NatsBus::connect_with(&broker.node_config(&url, &identity, NODE_A))
            .await
            .unwrap_or_else(|error| panic!("node A connects over {url}: {error}"));
        control_plane
            .persist(
                &Subject::tasks(&deployment(), &node(NODE_A)),
                Bytes::from_static(b"task"),
                None,
            )
            .await
            .unwrap();
        let deliveries = bus
            .pull(TASK_STREAM, &consumer, 10, Duration::from_secs(2))
            .await
            .unwrap_or_else(|error| panic!("pull over {url}: {error}"));
        assert_eq!(deliveries.len(), 1, "pull over {url} returned no task");
        deliveries[0]
            .ack()
            .await
            .unwrap_or_else(|error| panic!("ack over {url}: {error}"));
        let dedup_id = format!("report-{index}");
        bus.persist(&report, Bytes::from_static(b"report"), Some(&dedup_id))
            .await
            .unwrap_or_else(|error| panic!("report over {url}: {error}"));
    }
    let reports = control_plane
        .pull(
            REPORT_STREAM,
            subject::REPORT_CONSUMER,
            10,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(
        reports.len(),
        2,
        "the control plane did not get both reports"
    );
}
