//! Node certificates end to end: real Wardens get certificates from the control plane, rotate
//! them every few seconds while TLS clients stay connected to a node's listener, and follow a
//! CA rotation, including a node that was offline through it.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use support::{Cluster, DEPLOYMENT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use warden_control_plane::service::{AlertView, CaView};
use warden_control_plane::views::NodeView;
use warden_testkit::tls::{client_config, read_response};
use warden_testkit::{free_port, wait_until};

fn start(lifetime_secs: &str) -> Cluster {
    Cluster::start_with(&[
        "--certificate-lifetime-secs",
        lifetime_secs,
        "--certificate-rate-max",
        "1000",
        "--certificate-expiring-secs",
        "1",
    ])
}

/// Registers `node` with a TLS listener on a free loopback port and starts its Warden.
fn start_node(cluster: &mut Cluster, node: &str) -> SocketAddr {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    cluster.add_node_with(node, |bootstrap| {
        bootstrap.tls_listen = Some(listen.to_string());
    });
    cluster.start_warden(node, &[]);
    listen
}

fn ca(cluster: &Cluster) -> CaView {
    cluster
        .client()
        .get(&format!("/v1/deployments/{DEPLOYMENT}/ca"))
        .unwrap()
}

fn node_view(cluster: &Cluster, node: &str) -> NodeView {
    cluster
        .nodes()
        .into_iter()
        .find(|view| view.node == node)
        .unwrap()
}

fn reported_bundle(cluster: &Cluster, node: &str) -> u64 {
    node_view(cluster, node)
        .certificate
        .map_or(0, |certificate| certificate.bundle_version)
}

#[derive(Debug, Default)]
struct Seen {
    requests: usize,
    failures: Vec<String>,
    certificates: BTreeSet<String>,
}

/// Talks to the listener at `address` for `duration`: one connection held open and sending a
/// request every 50 ms, and a new connection every 25 ms. Returns what each saw.
async fn clients(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    duration: Duration,
) -> (Seen, Seen) {
    let server_name = ServerName::try_from("localhost").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let held = {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let server_name = server_name.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let tcp = TcpStream::connect(address).await.unwrap();
            let mut stream = match connector.connect(server_name, tcp).await {
                Ok(stream) => stream,
                Err(error) => {
                    seen.failures.push(format!("handshake: {error}"));
                    return seen;
                }
            };
            while !stop.load(Ordering::SeqCst) {
                let result = match stream
                    .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
                    .await
                {
                    Ok(()) => read_response(&mut stream).await.map(|(status, _)| status),
                    Err(error) => Err(error),
                };
                match result {
                    Ok(status) if status == "HTTP/1.1 200 OK" => seen.requests += 1,
                    Ok(status) => seen.failures.push(status),
                    Err(error) => {
                        seen.failures.push(error.to_string());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let fresh = {
        let connector = tokio_rustls::TlsConnector::from(config);
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
                        .write_all(
                            b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
                        )
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
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            seen
        })
    };
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::SeqCst);
    (held.await.unwrap(), fresh.await.unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn certificates_rotate_many_times_while_clients_stay_connected() {
    let mut cluster = start("4");
    let listen = start_node(&mut cluster, "n1");
    let state_dir = cluster.path("n1");
    wait_until("n1's first certificate", Duration::from_secs(30), || {
        std::fs::metadata(state_dir.join("tls").join("node.crt")).is_ok()
            && std::net::TcpStream::connect(listen).is_ok()
    });
    let key_mode = std::fs::metadata(state_dir.join("tls").join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the key file for Iggy is private");

    let bundle = ca(&cluster).bundle_pem;
    let (held, fresh) = runtime().block_on(clients(
        listen,
        client_config(&bundle),
        Duration::from_secs(15),
    ));
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
        held.requests > 100,
        "the held connection made {} requests",
        held.requests
    );
    assert!(
        fresh.certificates.len() >= 4,
        "clients saw {} certificates in 15 s of 4 s lifetimes",
        fresh.certificates.len()
    );

    // Heartbeats report the certificate, and no renewal failed. With 4-second certificates and
    // a 1-second threshold, a slow renewal may raise certificate_expiring for a moment.
    let view = node_view(&cluster, "n1");
    let certificate = view
        .certificate
        .expect("heartbeats describe the certificate");
    assert_eq!(certificate.bundle_version, 1);
    assert_eq!(certificate.refresh_failures, 0);
    let alerts: Vec<AlertView> = cluster.client().get("/v1/alerts?all=true").unwrap();
    assert!(
        alerts
            .iter()
            .all(|alert| alert.kind != "cert_refresh_failed"),
        "{alerts:?}"
    );
    let log = cluster.control_plane_log();
    assert!(
        support::count(&log, "issued a node certificate") >= 4,
        "the control plane issued the renewals"
    );
}

#[test]
fn ca_rotation_heals_offline_node() {
    let mut cluster = start("30");
    let listens: Vec<SocketAddr> = ["n1", "n2", "n3"]
        .iter()
        .map(|node| start_node(&mut cluster, node))
        .collect();
    wait_until(
        "every node to report bundle 1",
        Duration::from_secs(30),
        || {
            ["n1", "n2", "n3"]
                .iter()
                .all(|node| reported_bundle(&cluster, node) == 1)
        },
    );
    let old_bundle = ca(&cluster).bundle_pem;

    // n3 goes offline and the control plane stops waiting for it.
    cluster.kill_warden("n3");
    wait_until("n3 to be unreachable", Duration::from_secs(15), || {
        node_view(&cluster, "n3").health == "unreachable"
    });

    let client = cluster.client();
    let step = |name: &str| {
        client.post::<_, CaView>(
            &format!("/v1/deployments/{DEPLOYMENT}/ca/{name}"),
            &serde_json::json!({}),
        )
    };
    let mut view = step("begin").unwrap();
    assert_eq!(view.phase, "joining");
    for expected in ["signing", "stable"] {
        let needed = view.bundle_version;
        wait_until(
            &format!("live nodes to report bundle {needed}"),
            Duration::from_secs(30),
            || {
                ["n1", "n2"]
                    .iter()
                    .all(|node| reported_bundle(&cluster, node) == needed)
            },
        );
        view = step("advance").unwrap();
        assert_eq!(view.phase, expected);
    }
    assert_eq!(view.bundle_version, 4);
    assert_eq!(view.signer, 2);
    let new_bundle = view.bundle_pem;
    assert_ne!(new_bundle, old_bundle);

    // Live nodes serve certificates from the new CA: a client that trusts only it connects.
    wait_until(
        "n1 and n2 to report bundle 4",
        Duration::from_secs(30),
        || {
            ["n1", "n2"]
                .iter()
                .all(|node| reported_bundle(&cluster, node) == 4)
        },
    );
    let runtime = runtime();
    let new_only = client_config(&new_bundle);
    let (_, fresh) = runtime.block_on(clients(
        listens[0],
        new_only.clone(),
        Duration::from_millis(500),
    ));
    assert!(
        fresh.requests > 0 && fresh.failures.is_empty(),
        "{:?}",
        fresh.failures
    );

    // n3 comes back with a certificate from the CA that left the bundle, and heals by itself.
    cluster.start_warden("n3", &[]);
    wait_until("n3 to report bundle 4", Duration::from_secs(30), || {
        reported_bundle(&cluster, "n3") == 4
    });
    let bundle_file =
        std::fs::read_to_string(cluster.path("n3").join("tls").join("ca-bundle.pem")).unwrap();
    assert_eq!(bundle_file.trim(), new_bundle.trim());
    let (_, fresh) = runtime.block_on(clients(listens[2], new_only, Duration::from_millis(500)));
    assert!(
        fresh.requests > 0 && fresh.failures.is_empty(),
        "n3 after healing: {:?}",
        fresh.failures
    );
}
