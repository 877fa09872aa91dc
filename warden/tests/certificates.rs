//! The certificate actor against a fake control plane on the in-memory bus. The tests cover
//! first issuance, the files and listener, forced renewal, and a rejected request that keeps
//! the current certificate. They also cover recovery, a restart that reuses the installed
//! certificate, and the restart of a component that reads the managed certificate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;
use rand::SeedableRng;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden::actors::certificates::{
    CertificateActor, CertificateBoard, CertificateParts, ForceRenewal,
};
use warden::actors::components::{
    Command, ComponentActor, ComponentParts, GetSnapshot, Request, StatusBoard, KERNEL_RELEASE_FILE,
};
use warden::components::definition::ComponentFile;
use warden::components::installer::Installer;
use warden::components::state::ComponentState;
use warden::store::TaskStore;
use warden::tls::{CertificateSlot, TlsFiles, TlsName};
use warden_bus::messages::{CertificateReply, CertificateRequest, Component, ComponentPhase};
use warden_bus::subject::RpcVerb;
use warden_bus::transport::memory::MemoryBus;
use warden_bus::{
    Bus, DeploymentId, Envelope, MessageId, NodeId, SignedEnvelope, SigningKey, Subject,
};

/// Lifetime of issued certificates, in seconds; renewal falls 3 to 4.2 s after issuance.
const LIFETIME_SECS: i64 = 6;

struct FakeControlPlane {
    requests: Arc<AtomicU64>,
    reject: Arc<AtomicBool>,
    ca_pem: String,
}

/// Replies to certificate requests like the control plane: checks the node's signature and signs
/// the request with a CA made here, or rejects it while `reject` is set.
async fn fake_control_plane(bus: Arc<MemoryBus>, node_key: &SigningKey) -> FakeControlPlane {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let requests = Arc::new(AtomicU64::new(0));
    let reject = Arc::new(AtomicBool::new(false));
    let node_public = node_key.public_key();
    let subject = Subject::rpc(
        &DeploymentId::new("prod").unwrap(),
        &NodeId::new("node-1").unwrap(),
        RpcVerb::Certificate,
    );
    let served = FakeControlPlane {
        requests: requests.clone(),
        reject: reject.clone(),
        ca_pem: ca_pem.clone(),
    };
    // Subscribed before the actor starts, so its first request finds a responder.
    let mut inbound = bus.subscribe(&subject, None).await.unwrap();
    tokio::spawn(async move {
        while let Some(message) = inbound.next().await {
            requests.fetch_add(1, Ordering::SeqCst);
            let request: CertificateRequest = SignedEnvelope::decode(&message.payload)
                .unwrap()
                .verify_with(&node_public)
                .unwrap()
                .open()
                .unwrap();
            request.validate().unwrap();
            let reply = if reject.load(Ordering::SeqCst) {
                CertificateReply::Refused {
                    code: "name_not_registered".into(),
                    reason: "10.9.9.9 is not registered for node-1".into(),
                }
            } else {
                let mut csr = CertificateSigningRequestParams::from_pem(&request.csr_pem).unwrap();
                let now_secs = i64::try_from(request.sent_at.0 / 1000).unwrap();
                let now = time::OffsetDateTime::from_unix_timestamp(now_secs).unwrap();
                csr.params.not_before = now - time::Duration::seconds(1);
                csr.params.not_after = now + time::Duration::seconds(LIFETIME_SECS);
                let issuer = Issuer::from_params(&params, &ca_key);
                let leaf = csr.signed_by(&issuer).unwrap().pem();
                CertificateReply::Issued {
                    chain_pem: format!("{leaf}{ca_pem}"),
                    bundle_pem: ca_pem.clone(),
                    bundle_version: 1,
                    not_before: request.sent_at,
                    not_after: request.sent_at,
                }
            };
            let bytes = Envelope::seal(MessageId::from_random([7; 16]), &reply)
                .unwrap()
                .encode()
                .unwrap();
            bus.reply(message.reply.as_deref().unwrap(), bytes.into())
                .await
                .unwrap();
        }
    });
    served
}

fn free_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Sends `GET /` over a new TLS connection and returns the response body.
async fn get_status(address: std::net::SocketAddr, ca_pem: &str) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut stream = connector.connect(name, tcp).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: node-1\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..100 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[actix_rt::test]
async fn certificate_issued_renewed_and_kept_on_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let clock = warden_actors::clock::system();
    let bus = Arc::new(MemoryBus::new(clock.clone()));
    let node_key = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(3));
    let control_plane = fake_control_plane(bus.clone(), &node_key).await;
    let store = TaskStore::open(&dir.path().join("db")).unwrap();
    let files = TlsFiles::new(dir.path());
    let board = CertificateBoard::default();
    let slot = Arc::new(CertificateSlot::default());
    let address = free_address();
    let parts = |slot: Arc<CertificateSlot>| CertificateParts {
        bus: bus.clone(),
        node_key: node_key.clone(),
        deployment: DeploymentId::new("prod").unwrap(),
        node: NodeId::new("node-1").unwrap(),
        names: vec![TlsName::parse("127.0.0.1").unwrap()],
        store: store.clone(),
        files: files.clone(),
        slot,
        listen: Some(address),
        restart_on_install: Vec::new(),
        board: board.clone(),
        clock: clock.clone(),
    };
    let actor = CertificateActor::new(parts(slot.clone())).start();

    // The first certificate is requested at once and installed.
    let status = || *board.lock().unwrap();
    wait_for("the first certificate", || status().is_some()).await;
    let first = slot.current().unwrap();
    let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&files.certificate)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(
        std::fs::read_to_string(&files.bundle).unwrap(),
        control_plane.ca_pem
    );
    assert_eq!(
        store.load_certificate().unwrap().unwrap().not_after,
        first.not_after()
    );

    // The listener serves once the certificate is in place.
    let mut body = String::new();
    for _ in 0..50 {
        match get_status(address, &control_plane.ca_pem).await {
            Ok(response) => {
                body = response;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("\"node_id\":\"node-1\""), "{body}");

    // A forced renewal finishes with the new certificate installed.
    let output = actor.send(ForceRenewal).await.unwrap().unwrap();
    let renewed = slot.current().unwrap();
    assert_ne!(renewed.sha256(), first.sha256());
    assert_eq!(output["certificate_sha256"], renewed.sha256());

    // A rejected request fails the forced renewal and keeps the certificate in use.
    control_plane.reject.store(true, Ordering::SeqCst);
    let error = actor.send(ForceRenewal).await.unwrap().unwrap_err();
    assert!(error.contains("name_not_registered"), "{error}");
    assert!(error.contains("10.9.9.9"), "{error}");
    assert_eq!(slot.current().unwrap().sha256(), renewed.sha256());
    assert!(status().unwrap().refresh_failures >= 1);
    let body = get_status(address, &control_plane.ca_pem).await.unwrap();
    assert!(body.contains(renewed.sha256()), "{body}");

    // Once the control plane issues again, the retry succeeds and the failures reset.
    control_plane.reject.store(false, Ordering::SeqCst);
    wait_for("a successful retry", || {
        status().is_some_and(|status| status.refresh_failures == 0)
    })
    .await;

    // The lifetime is seconds, so renewals keep happening without a task.
    let before = control_plane.requests.load(Ordering::SeqCst);
    wait_for("a scheduled renewal", || {
        control_plane.requests.load(Ordering::SeqCst) > before
    })
    .await;

    // A restarted actor presents the installed certificate before any request.
    wait_for("the renewal to be installed", || {
        slot.current().unwrap().sha256() != renewed.sha256()
    })
    .await;
    actor.send(ForceRenewal).await.unwrap().unwrap();
    let installed = slot.current().unwrap();
    let restarted_slot = Arc::new(CertificateSlot::default());
    let mut restarted_parts = parts(restarted_slot.clone());
    restarted_parts.listen = None;
    let _restarted = CertificateActor::new(restarted_parts);
    assert_eq!(
        restarted_slot.current().unwrap().sha256(),
        installed.sha256()
    );
}

async fn component_phase(actor: &Addr<ComponentActor>) -> (ComponentPhase, Option<u32>) {
    let snapshot = actor.send(GetSnapshot).await.unwrap();
    (snapshot.phase, snapshot.pid)
}

async fn wait_component(
    actor: &Addr<ComponentActor>,
    what: &str,
    mut condition: impl FnMut(ComponentPhase, Option<u32>) -> bool,
) -> (ComponentPhase, Option<u32>) {
    for _ in 0..200 {
        let (phase, pid) = component_phase(actor).await;
        if condition(phase, pid) {
            return (phase, pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for the component: {what}");
}

#[actix_rt::test]
async fn installation_restarts_component_using_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let clock = warden_actors::clock::system();
    let bus = Arc::new(MemoryBus::new(clock.clone()));
    let node_key = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(4));
    let _control_plane = fake_control_plane(bus.clone(), &node_key).await;
    let store = TaskStore::open(&dir.path().join("db")).unwrap();
    let files = TlsFiles::new(dir.path());

    // A component whose configuration reads the managed certificate and key.
    let port = warden_testkit::free_port();
    let definition = ComponentFile {
        binary: warden_testkit::workspace_binary("fake-component"),
        args: vec!["--http".into(), format!("127.0.0.1:{port}")],
        data_dir: dir.path().join("data"),
        config_path: Some(dir.path().join("config.toml")),
        stop_timeout_secs: Some(5),
        start_timeout_secs: Some(10),
        http_address: Some(format!("127.0.0.1:{port}")),
        health_http_path: Some("/healthz".into()),
        tls_cert_file: Some(files.certificate.clone()),
        tls_key_file: Some(files.key.clone()),
        ..ComponentFile::default()
    }
    .validate(Component::Iggy, &dir.path().join("unused.toml"))
    .unwrap();
    let component = ComponentActor::new(ComponentParts {
        definition,
        state: ComponentState::open(Component::Iggy, store.db()).unwrap(),
        installer: Installer::new(Component::Iggy, dir.path(), store.db()).unwrap(),
        board: StatusBoard::default(),
        clock: clock.clone(),
        bus: bus.clone(),
        deployment: DeploymentId::new("prod").unwrap(),
        node: NodeId::new("node-1").unwrap(),
        node_key: node_key.clone(),
        kernel_release_file: KERNEL_RELEASE_FILE.into(),
        tls_files: files.clone(),
    })
    .start();

    let board = CertificateBoard::default();
    let actor = CertificateActor::new(CertificateParts {
        bus: bus.clone(),
        node_key: node_key.clone(),
        deployment: DeploymentId::new("prod").unwrap(),
        node: NodeId::new("node-1").unwrap(),
        names: Vec::new(),
        store: store.clone(),
        files: files.clone(),
        slot: Arc::new(CertificateSlot::default()),
        listen: None,
        restart_on_install: vec![("iggy", component.clone())],
        board: board.clone(),
        clock: clock.clone(),
    })
    .start();

    // An installation does not start a stopped component.
    wait_for("the first certificate", || board.lock().unwrap().is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(component_phase(&component).await.0, ComponentPhase::Stopped);

    // A running component gets a new process after the next installation.
    component
        .send(Command {
            request: Request::Start,
            config_version: None,
        })
        .await
        .unwrap()
        .unwrap();
    let (_, before) = wait_component(&component, "running", |phase, _| {
        phase == ComponentPhase::Running
    })
    .await;
    actor.send(ForceRenewal).await.unwrap().unwrap();
    wait_component(&component, "running with a new process", |phase, pid| {
        phase == ComponentPhase::Running && pid != before
    })
    .await;

    component
        .send(Command {
            request: Request::Stop,
            config_version: None,
        })
        .await
        .unwrap()
        .unwrap();
    wait_component(&component, "stopped", |phase, _| {
        phase == ComponentPhase::Stopped
    })
    .await;
}
