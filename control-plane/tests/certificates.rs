//! Node certificates against a real control plane and broker. Each check on a signing request
//! is attacked and must reject with its reason. The CA key is sealed at rest, and CA rotation
//! steps and certificate alerts follow what nodes report.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use rand::SeedableRng;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use support::{Cluster, DEPLOYMENT};
use warden_bus::messages::{CertificateReply, CertificateRequest, CertificateStatus};
use warden_bus::transport::nats::NatsBus;
use warden_bus::{
    Bus, Clock, DeploymentId, Envelope, Heartbeat, MessageId, NodeId, RpcVerb, SigningKey, Subject,
    SystemClock, TelemetryKind, UnixMillis,
};
use warden_control_plane::service::{AlertView, CaView};
use warden_control_plane::views::NodeView;
use warden_testkit::wait_until;

/// A node that enrolled through a real Warden, then talks to the control plane by hand.
struct Node {
    cluster: Cluster,
    runtime: tokio::runtime::Runtime,
    bus: NatsBus,
    key: SigningKey,
}

impl Node {
    fn start(control_plane_args: &[&str]) -> Self {
        let mut cluster = Cluster::start_with(control_plane_args);
        cluster.add_node("n1");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (bus, key) = cluster.enroll_and_connect("n1", &runtime);
        Self {
            cluster,
            runtime,
            bus,
            key,
        }
    }

    /// Sends a signing request for `csr_pem` signed with `signer`, naming `node` in the body.
    fn request_as(
        &self,
        signer: &SigningKey,
        node: &str,
        csr_pem: &str,
        sent_at: UnixMillis,
    ) -> CertificateReply {
        let request = CertificateRequest {
            deployment: deployment(),
            node: node_id(node),
            csr_pem: csr_pem.to_owned(),
            sent_at,
        };
        let envelope = Envelope::seal(MessageId::from_random(rand::random()), &request).unwrap();
        let payload = signer.sign(&envelope).unwrap().encode().unwrap();
        let subject = Subject::rpc(&deployment(), &node_id("n1"), RpcVerb::Certificate);
        let reply = self
            .runtime
            .block_on(
                self.bus
                    .request(&subject, payload.into(), Duration::from_secs(10)),
            )
            .unwrap();
        Envelope::decode(&reply)
            .unwrap()
            .open::<CertificateReply>()
            .unwrap()
    }

    fn request(&self, csr_pem: &str) -> CertificateReply {
        self.request_as(&self.key, "n1", csr_pem, SystemClock.now())
    }

    fn heartbeat(&self, sequence: u64, certificate: CertificateStatus) {
        let heartbeat = Heartbeat {
            deployment: deployment(),
            node: node_id("n1"),
            sequence,
            sent_at: SystemClock.now(),
            warden_version: "test".into(),
            config_version: 0,
            components: Vec::new(),
            certificate: Some(certificate),
            access_version: None,
        };
        let envelope = Envelope::seal(MessageId::from_random(rand::random()), &heartbeat).unwrap();
        let payload = self.key.sign(&envelope).unwrap().encode().unwrap();
        let subject = Subject::telemetry(&deployment(), &node_id("n1"), TelemetryKind::Heartbeat);
        self.runtime
            .block_on(self.bus.publish(&subject, payload.into()))
            .unwrap();
    }

    fn ca(&self) -> CaView {
        self.cluster
            .client()
            .get(&format!("/v1/deployments/{DEPLOYMENT}/ca"))
            .unwrap()
    }
}

fn deployment() -> DeploymentId {
    DeploymentId::new(DEPLOYMENT).unwrap()
}

fn node_id(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn csr_with(key: &KeyPair, common_name: &str, names: &[&str]) -> String {
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn csr(common_name: &str, names: &[&str]) -> String {
    csr_with(&KeyPair::generate().unwrap(), common_name, names)
}

fn refusal_code(reply: &CertificateReply) -> (&str, &str) {
    match reply {
        CertificateReply::Refused { code, reason } => (code, reason),
        CertificateReply::Issued { .. } => panic!("expected a refusal, got a certificate"),
    }
}

fn parse_pem_certs(pem: &str) -> Vec<Vec<u8>> {
    let mut ders = Vec::new();
    let mut rest = pem.as_bytes();
    while let Ok((remaining, block)) = x509_parser::pem::parse_x509_pem(rest) {
        ders.push(block.contents);
        rest = remaining;
        if rest.iter().all(u8::is_ascii_whitespace) {
            break;
        }
    }
    ders
}

#[test]
fn signing_request_checks_hold_against_attacks() {
    let node = Node::start(&["--certificate-rate-max", "6"]);

    // A request for the node's registered names gets a certificate that chains to the bundle.
    let key = KeyPair::generate().unwrap();
    let reply = node.request(&csr_with(&key, "n1", &["localhost", "127.0.0.1"]));
    let CertificateReply::Issued {
        chain_pem,
        bundle_pem,
        bundle_version,
        not_after,
        ..
    } = reply
    else {
        panic!("the valid request was refused: {reply:?}");
    };
    assert_eq!(bundle_version, 1);
    let chain = parse_pem_certs(&chain_pem);
    let bundle = parse_pem_certs(&bundle_pem);
    assert_eq!((chain.len(), bundle.len()), (2, 1));
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&bundle[0]).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "the certificate is for the node's own key"
    );
    let lifetime = not_after.since(SystemClock.now());
    assert!(
        lifetime > Duration::from_secs(23 * 3600) && lifetime <= Duration::from_secs(24 * 3600),
        "default lifetime is 24 h, got {lifetime:?}"
    );

    // Each check, attacked.
    let stranger = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(7));
    let now = SystemClock.now();
    let cases: Vec<(&str, CertificateReply, &str)> = vec![
        (
            "a name the node did not register",
            node.request(&csr("n1", &["localhost", "bank.example.com"])),
            "name_not_registered",
        ),
        (
            "an address the node did not register",
            node.request(&csr("n1", &["10.9.9.9"])),
            "name_not_registered",
        ),
        (
            "another node's common name",
            node.request(&csr("n2", &["localhost"])),
            "common_name_mismatch",
        ),
        (
            "an identity proof by another key",
            node.request_as(&stranger, "n1", &csr("n1", &["localhost"]), now),
            "identity_mismatch",
        ),
        (
            "a body naming another node",
            node.request_as(&node.key, "n2", &csr("n2", &["localhost"]), now),
            "identity_mismatch",
        ),
        (
            "a request sent an hour ago",
            node.request_as(
                &node.key,
                "n1",
                &csr("n1", &["localhost"]),
                UnixMillis(now.0 - 3_600_000),
            ),
            "stale_request",
        ),
        (
            "a P-384 key",
            node.request(&csr_with(
                &KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
                "n1",
                &["localhost"],
            )),
            "key_type_not_allowed",
        ),
        (
            "a request that is not PEM",
            node.request("-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n"),
            "malformed_csr",
        ),
    ];
    for (case, reply, expected) in &cases {
        let (code, reason) = refusal_code(reply);
        assert_eq!(code, *expected, "{case}: {reason}");
        assert!(!reason.is_empty(), "{case}: the refusal gives a reason");
    }
    let log = node.cluster.control_plane_log();
    assert!(
        log.contains("certificate request rejected") && log.contains("name_not_registered"),
        "the control plane logs refusals with their code"
    );

    // The rate limit: six certificates per hour. The Warden got one before it was stopped (or
    // not, if it was stopped first) and the test one; the rest pass until the sixth, then none.
    let mut issued = 1;
    let reply = loop {
        let reply = node.request(&csr("n1", &["localhost"]));
        if !matches!(reply, CertificateReply::Issued { .. }) {
            break reply;
        }
        issued += 1;
        assert!(issued <= 6, "more than six certificates in an hour");
    };
    let (code, reason) = refusal_code(&reply);
    assert_eq!(code, "rate_limited", "{reason}");
    assert!(issued >= 5, "refused after {issued} certificates: {reason}");
    let reply = node.request(&csr("n1", &["localhost"]));
    assert_eq!(refusal_code(&reply).0, "rate_limited");

    // A revoked node gets nothing, even with a request signed by its old key: the broker cuts
    // its connection, and the control plane refuses the request if it arrives another way.
    let (status, _, stderr) =
        node.cluster
            .ctl(&["node", "revoke", "n1", "--deployment", DEPLOYMENT]);
    assert_eq!(status, Some(0), "{stderr}");
    let request = CertificateRequest {
        deployment: deployment(),
        node: node_id("n1"),
        csr_pem: csr("n1", &["localhost"]),
        sent_at: SystemClock.now(),
    };
    let envelope = Envelope::seal(MessageId::from_random(rand::random()), &request).unwrap();
    let payload = node.key.sign(&envelope).unwrap().encode().unwrap();
    let subject = Subject::rpc(&deployment(), &node_id("n1"), RpcVerb::Certificate);
    let reply = node.cluster.request_with_inbox(
        &warden_bus::subject::node_inbox_prefix(&deployment(), &node_id("n1")),
        &subject,
        payload,
    );
    let reply = Envelope::decode(&reply)
        .unwrap()
        .open::<CertificateReply>()
        .unwrap();
    let (code, reason) = refusal_code(&reply);
    assert_eq!(code, "node_revoked", "{reason}");
}

#[test]
fn ca_key_sealed_at_rest() {
    let mut node = Node::start(&[]);
    assert!(matches!(
        node.request(&csr("n1", &["localhost"])),
        CertificateReply::Issued { .. }
    ));
    let stored = node
        .cluster
        .kv_get(warden_bus::subject::CAS_BUCKET, DEPLOYMENT)
        .expect("the CA record is stored");
    let text = String::from_utf8(stored).unwrap();
    assert!(text.contains("sealed_key"), "{text}");
    assert!(
        !text.contains("PRIVATE KEY"),
        "the CA key is stored in the clear"
    );

    // A replica with another secrets key cannot sign, and its rejection names the flag.
    node.cluster.kill_control_plane();
    warden_control_plane::ctl::offline::create_key(&node.cluster.path("other-secrets.key"))
        .unwrap();
    std::fs::copy(
        node.cluster.path("other-secrets.key"),
        node.cluster.path("secrets.key"),
    )
    .unwrap();
    node.cluster.start_control_plane(&[]);
    let reply = node.request(&csr("n1", &["localhost"]));
    let (code, reason) = refusal_code(&reply);
    assert_eq!(code, "ca_unavailable", "{reason}");
    assert!(reason.contains("--secrets-key"), "{reason}");
}

#[test]
fn ca_rotation_waits_and_rolls_back() {
    let node = Node::start(&[]);
    let client = node.cluster.client();
    let step = |name: &str| {
        client.post::<_, CaView>(
            &format!("/v1/deployments/{DEPLOYMENT}/ca/{name}"),
            &serde_json::json!({}),
        )
    };
    let first = node.ca();
    assert_eq!((first.phase.as_str(), first.bundle_version), ("stable", 1));
    assert!(step("advance").is_err(), "nothing to advance");
    assert!(step("rollback").is_err(), "nothing to roll back");

    // The node reports bundle 1; the rotation begins and then waits for it.
    node.heartbeat(1, status(1, 3_600_000, 0));
    wait_until("n1 to be live", Duration::from_secs(10), || {
        node.ca().waiting.is_empty()
    });
    let joining = step("begin").unwrap();
    assert_eq!(
        (joining.phase.as_str(), joining.bundle_version),
        ("joining", 2)
    );
    assert_eq!(parse_pem_certs(&joining.bundle_pem).len(), 2);
    assert_eq!(joining.waiting.len(), 1, "{:?}", joining.waiting);
    let error = step("advance").unwrap_err().to_string();
    assert!(error.contains("n1 (at 1)"), "{error}");

    // A node behind the bundle is asked to renew: a rotate_certificate task appears for it, once
    // per bundle version however many heartbeats it sends.
    let mut sequence = 1;
    wait_until(
        "a rotate_certificate task for n1",
        Duration::from_secs(15),
        || {
            sequence += 1;
            node.heartbeat(sequence, status(1, 3_600_000, 0));
            node.cluster.tasks_of_kind("rotate_certificate") >= 1
        },
    );
    for _ in 0..5 {
        sequence += 1;
        node.heartbeat(sequence, status(1, 3_600_000, 0));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.cluster.tasks_of_kind("rotate_certificate"), 1);

    // Renewal hands out bundle 2 with a certificate still from CA 1.
    let CertificateReply::Issued {
        chain_pem,
        bundle_version,
        ..
    } = node.request(&csr("n1", &["localhost"]))
    else {
        panic!("renewal refused");
    };
    assert_eq!(bundle_version, 2);
    let old_ca = parse_pem_certs(&first.bundle_pem).remove(0);
    assert_eq!(parse_pem_certs(&chain_pem)[1], old_ca, "CA 1 still signs");
    node.heartbeat(100, status(2, 3_600_000, 0));
    wait_until("n1 to report bundle 2", Duration::from_secs(10), || {
        node.ca().waiting.is_empty()
    });
    let signing = step("advance").unwrap();
    assert_eq!((signing.phase.as_str(), signing.signer), ("signing", 2));

    // Before the last phase the rotation rolls back, and forward again.
    let back = step("rollback").unwrap();
    assert_eq!((back.phase.as_str(), back.signer), ("joining", 1));
    node.heartbeat(101, status(back.bundle_version, 3_600_000, 0));
    wait_until(
        "n1 to report the rolled-back bundle",
        Duration::from_secs(10),
        || node.ca().waiting.is_empty(),
    );
    let signing = step("advance").unwrap();
    let CertificateReply::Issued {
        chain_pem,
        bundle_version,
        ..
    } = node.request(&csr("n1", &["localhost"]))
    else {
        panic!("renewal refused");
    };
    assert_eq!(bundle_version, signing.bundle_version);
    assert_ne!(parse_pem_certs(&chain_pem)[1], old_ca, "CA 2 signs now");
    node.heartbeat(102, status(bundle_version, 3_600_000, 0));
    wait_until(
        "n1 to report the signing bundle",
        Duration::from_secs(10),
        || node.ca().waiting.is_empty(),
    );
    let done = step("advance").unwrap();
    assert_eq!(done.phase, "stable");
    assert_eq!(done.signer, 2);
    let bundle = parse_pem_certs(&done.bundle_pem);
    assert_eq!(bundle.len(), 1);
    assert_ne!(bundle[0], old_ca, "CA 1 left the bundle");
    assert!(
        step("rollback").is_err(),
        "no rollback after the last phase"
    );
}

fn status(bundle_version: u64, valid_for_ms: u64, refresh_failures: u32) -> CertificateStatus {
    CertificateStatus {
        not_after: UnixMillis(SystemClock.now().0 + valid_for_ms),
        bundle_version,
        refresh_failures,
    }
}

#[test]
fn certificate_alerts_raise_and_resolve() {
    let node = Node::start(&[
        "--certificate-expiring-secs",
        "60",
        "--certificate-refresh-failures",
        "3",
    ]);
    let client = node.cluster.client();
    let active = || -> Vec<String> {
        client
            .get::<Vec<AlertView>>("/v1/alerts")
            .unwrap()
            .into_iter()
            .map(|alert| alert.kind)
            .collect()
    };
    node.heartbeat(1, status(1, 3_600_000, 0));
    wait_until("the heartbeat to land", Duration::from_secs(10), || {
        node.cluster
            .nodes()
            .iter()
            .any(|view: &NodeView| view.certificate.is_some())
    });
    assert!(active().is_empty());

    node.heartbeat(2, status(1, 30_000, 2));
    wait_until("certificate_expiring", Duration::from_secs(10), || {
        active() == vec!["certificate_expiring".to_owned()]
    });
    node.heartbeat(3, status(1, 30_000, 3));
    wait_until("cert_refresh_failed", Duration::from_secs(10), || {
        active().len() == 2
    });
    let (code, stdout, stderr) = node.cluster.ctl(&["alert", "list"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("cert_refresh_failed"), "{stdout}");

    // A renewed certificate resolves both; they stay in the history.
    node.heartbeat(4, status(2, 3_600_000, 0));
    wait_until("the alerts to resolve", Duration::from_secs(10), || {
        active().is_empty()
    });
    let all: Vec<AlertView> = client.get("/v1/alerts?all=true").unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|alert| alert.resolved_at.is_some()));
    let log = node.cluster.control_plane_log();
    assert!(log.contains("alert raised"));
    assert!(log.contains("alert resolved"));
}

#[test]
fn heartbeat_flood_from_a_node_is_bounded() {
    let node = Node::start(&[]);
    for sequence in 1..=200 {
        node.heartbeat(sequence, status(1, 3_600_000, 0));
    }
    wait_until("the flood to be dropped", Duration::from_secs(10), || {
        node.cluster
            .control_plane_log()
            .contains("dropping heartbeats over the rate bound")
    });
    std::thread::sleep(Duration::from_millis(500));
    let (record, _) = node
        .cluster
        .kv_get(
            warden_bus::subject::NODES_BUCKET,
            &warden_bus::subject::node_key(&deployment(), &node_id("n1")),
        )
        .map(|bytes| (String::from_utf8(bytes).unwrap(), ()))
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&record).unwrap();
    let last = stored["record"]["last_sequence"].as_u64().unwrap();
    assert!(
        last <= u64::from(warden_control_plane::service::HEARTBEATS_PER_WINDOW),
        "the control plane took heartbeat {last} of a flood of 200"
    );
}
