//! Certificate rotation on the Warden's own TLS listener, without a control plane. A CA made
//! here signs the node's requests and the certificate core decides. The install path swaps the
//! certificate many times while two clients check that no handshake or request fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair,
};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use warden::certificates;
use warden::core::certificate::{CertificateCore, CertificateEffect, Issued};
use warden::store::TaskStore;
use warden::tls::{signing_request, CertificateSlot, NodeTlsKey, TlsFiles, TlsListener, TlsName};
use warden_bus::{NodeId, UnixMillis};
use warden_testkit::tls::{client_config, read_response};

/// Certificates installed one after the other.
const SWAPS: usize = 30;
/// Lifetime of each certificate, in seconds.
const LIFETIME_SECS: i64 = 4;
/// Time between swaps.
const SWAP_INTERVAL: Duration = Duration::from_millis(150);

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test deployment CA");
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    /// Signs a node's request like the control plane does: its names, a lifetime of seconds.
    fn sign(&self, csr_pem: &str) -> (String, UnixMillis) {
        let mut request = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let now_ms = now_millis();
        let now =
            time::OffsetDateTime::from_unix_timestamp(i64::try_from(now_ms.0 / 1000).unwrap())
                .unwrap();
        request.params.not_before = now - time::Duration::seconds(1);
        request.params.not_after = now + time::Duration::seconds(LIFETIME_SECS);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf = request.signed_by(&issuer).unwrap().pem();
        (format!("{leaf}{}", self.pem), now_ms)
    }
}

fn now_millis() -> UnixMillis {
    warden_actors::clock::system().now()
}

/// Runs one renewal through the core and the install path; returns the certificate's SHA-256.
async fn rotate(
    core: &mut CertificateCore,
    ca: &Ca,
    store: &TaskStore,
    files: &TlsFiles,
    slot: &CertificateSlot,
    bundle_version: u64,
) -> String {
    let node = NodeId::new("node-1").unwrap();
    let names = [TlsName::parse("127.0.0.1").unwrap()];
    let key = NodeTlsKey::generate().unwrap();
    let csr = signing_request(&node, &names, &key).unwrap();
    let (chain_pem, now) = ca.sign(&csr);
    let issued = Issued {
        chain_pem,
        bundle_pem: ca.pem.clone(),
        bundle_version,
    };
    let effects = core.on_issued(issued, &key.public_key_info(), now, 0.5);
    let [CertificateEffect::Install(installation)] = effects.as_slice() else {
        panic!("expected an installation, got {effects:?}");
    };
    let served = certificates::install(store, files, slot, key, installation)
        .await
        .unwrap();
    let effects = core.on_installed();
    assert!(
        matches!(effects.first(), Some(CertificateEffect::Installed(_))),
        "{effects:?}"
    );
    served.sha256().to_owned()
}

fn body_sha256(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(value["node_id"], "node-1");
    assert!(value["not_after"].as_u64().is_some(), "{body}");
    value["certificate_sha256"].as_str().unwrap().to_owned()
}

#[derive(Debug, Default)]
struct Seen {
    requests: usize,
    failures: Vec<String>,
    certificates: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_never_fails_a_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let store = TaskStore::open(&dir.path().join("db")).unwrap();
    let files = TlsFiles::new(dir.path());
    let slot = Arc::new(CertificateSlot::default());
    let ca = Ca::new();

    // The first certificate is installed before the listener serves.
    let (mut core, effects) = CertificateCore::start(None, false, now_millis());
    assert_eq!(effects, vec![CertificateEffect::Request]);
    let mut installed = vec![rotate(&mut core, &ca, &store, &files, &slot, 1).await];
    let listener = TlsListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        slot.clone(),
        NodeId::new("node-1").unwrap(),
    )
    .await
    .unwrap();
    let address = listener.local_addr();
    let server = tokio::spawn(listener.serve());

    let config = client_config(&ca.pem);
    let server_name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let stop = Arc::new(AtomicBool::new(false));

    // Client (a): one connection, held open across every swap.
    let held = {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let stop = stop.clone();
        let server_name = server_name.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let tcp = TcpStream::connect(address).await.unwrap();
            let mut stream = connector.connect(server_name, tcp).await.unwrap();
            while !stop.load(Ordering::SeqCst) {
                let request = stream
                    .write_all(b"GET / HTTP/1.1\r\nhost: node-1\r\n\r\n")
                    .await;
                let response = match request {
                    Ok(()) => read_response(&mut stream).await,
                    Err(error) => Err(error),
                };
                match response {
                    Ok((status, body)) if status == "HTTP/1.1 200 OK" => {
                        seen.requests += 1;
                        seen.certificates.insert(body_sha256(&body));
                    }
                    Ok((status, _)) => seen.failures.push(status),
                    Err(error) => {
                        seen.failures.push(error.to_string());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };

    // Client (b): a new connection for every request.
    let fresh = {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            while !stop.load(Ordering::SeqCst) {
                let attempt = async {
                    let tcp = TcpStream::connect(address).await?;
                    let mut stream = connector.connect(server_name.clone(), tcp).await?;
                    let (_, connection) = stream.get_ref();
                    let leaf = connection
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .ok_or_else(|| std::io::Error::other("no peer certificate"))?;
                    let presented = hex::encode(Sha256::digest(leaf.as_ref()));
                    stream
                        .write_all(b"GET / HTTP/1.1\r\nhost: node-1\r\nconnection: close\r\n\r\n")
                        .await?;
                    let (status, _) = read_response(&mut stream).await?;
                    Ok::<_, std::io::Error>((status, presented))
                };
                match attempt.await {
                    Ok((status, presented)) if status == "HTTP/1.1 200 OK" => {
                        seen.requests += 1;
                        seen.certificates.insert(presented);
                    }
                    Ok((status, _)) => seen.failures.push(status),
                    Err(error) => seen.failures.push(error.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };

    for swap in 0..SWAPS {
        tokio::time::sleep(SWAP_INTERVAL).await;
        assert_eq!(core.force(), vec![CertificateEffect::Request]);
        let version = 1 + u64::try_from(swap).unwrap() / 10;
        installed.push(rotate(&mut core, &ca, &store, &files, &slot, version).await);
    }
    tokio::time::sleep(SWAP_INTERVAL).await;
    stop.store(true, Ordering::SeqCst);
    let held = held.await.unwrap();
    let fresh = fresh.await.unwrap();
    server.abort();

    let distinct: BTreeSet<&String> = installed.iter().collect();
    assert_eq!(
        distinct.len(),
        SWAPS + 1,
        "every installation is a new certificate"
    );
    assert!(
        held.failures.is_empty(),
        "held connection: {:?}",
        held.failures
    );
    assert!(
        fresh.failures.is_empty(),
        "new connections: {:?}",
        fresh.failures
    );
    assert!(
        held.requests > SWAPS,
        "held connection sent {} requests",
        held.requests
    );
    assert!(fresh.requests > SWAPS, "{} new connections", fresh.requests);
    assert!(
        held.certificates.len() >= 10,
        "the held connection saw {} certificates reported",
        held.certificates.len()
    );
    assert!(
        fresh.certificates.len() >= 10,
        "new connections were presented {} certificates",
        fresh.certificates.len()
    );
    assert!(fresh.certificates.iter().all(|sha| distinct.contains(sha)));
    assert_eq!(store.load_certificate().unwrap(), core.installed().copied());
    assert_eq!(core.status().unwrap().bundle_version, 3);
}
