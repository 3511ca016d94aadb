//! On-demand TLS end to end, in process, against a real Pebble: the first
//! request for an allowed new name succeeds (axum and actix-web
//! `serve(.., &config)`, curl and a rustls client), 200 concurrent
//! handshakes for one new name give one order, 10,000 hostile SNIs give no
//! order and no storage read while a known name keeps being served, fail
//! closed without a gate, and background mode (actix-web's `bind_acme`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use axum::Router;
use axum::routing::get;
use certauto::{AcmeIssuer, Config, Event, Http01Solver, OnDemandConfig, OnDemandRefusal};
use certauto_actix::HttpServerAcmeExt;
use certauto_tests::{CountingStorage, Pebble, init_tracing, serial_hex, webpki_verify_chain};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// Upper bound on one step (never a timed assertion: a hang fails the test).
const STEP_BOUND: Duration = Duration::from_secs(120);
/// Upper bound on a flood.
const FLOOD_BOUND: Duration = Duration::from_secs(600);

async fn bounded<F: Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {bound:?}"))
}

/// A running test setup: Pebble, a config with on-demand TLS, its events.
struct Setup {
    pebble: Pebble,
    root: Vec<u8>,
    config: Config,
    storage: Arc<CountingStorage>,
    events: mpsc::UnboundedReceiver<Event>,
}

async fn setup(on_demand: OnDemandConfig) -> Setup {
    init_tracing();
    let pebble = Pebble::builder().start().await;
    let root = pebble.root_der(0).await;
    let storage = Arc::new(CountingStorage::new());
    let issuer = AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email("on-demand@certauto.example")
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .storage(storage.clone())
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            pebble.http_port(),
        ))))
        .build();
    let (tx, events) = mpsc::unbounded_channel();
    let tx = Mutex::new(tx);
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer)
        .on_demand(on_demand)
        .on_event(move |e| {
            let _ = tx.lock().unwrap().send(e.clone());
        })
        .build();
    Setup {
        pebble,
        root,
        config,
        storage,
        events,
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

/// Orders started (`CertObtaining`) for `name`.
fn orders_for(events: &[Event], name: &str) -> usize {
    events
        .iter()
        .filter(
            |e| matches!(e, Event::CertObtaining { names, .. } if names.iter().any(|n| n == name)),
        )
        .count()
}

fn orders(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::CertObtaining { .. }))
        .count()
}

fn trusting(root_der: &[u8], alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A handshake for `name` verified against Pebble's root: the chain.
async fn handshake(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> io::Result<Vec<Vec<u8>>> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect())
}

async fn serve_axum(config: &Config) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "hello" }));
    let serve = certauto_axum::serve(tcp, app, config).unwrap();
    tokio::spawn(async move { serve.into_future().await.unwrap() });
    addr
}

/// Starts `certauto_actix::serve(.., &config)`; the handle stops it.
fn serve_actix(config: &Config) -> (SocketAddr, actix_web::dev::ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = certauto_actix::serve(listener, config, || {
        App::new().route("/", web::get().to(|| async { "hello" }))
    })
    .unwrap()
    .workers(1)
    .shutdown_timeout(1)
    .disable_signals()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (addr, handle)
}

/// curl's first request for `name` (trusting only Pebble's root): the body.
async fn curl(root_pem: &str, dir: &std::path::Path, name: &str, addr: SocketAddr) -> String {
    let curl = certauto_tests::find_on_path("curl")
        .expect("curl is needed for this test: install it (apt-get install curl)");
    let ca = dir.join("pebble-root.pem");
    std::fs::write(&ca, root_pem).unwrap();
    let out = bounded(
        STEP_BOUND,
        "curl",
        tokio::process::Command::new(curl)
            .arg("--silent")
            .arg("--show-error")
            .arg("--fail")
            .arg("--max-time")
            .arg("60")
            .arg("--cacert")
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("{name}:{}:127.0.0.1", addr.port()))
            .arg(format!("https://{name}:{}/", addr.port()))
            .output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The first request for an allowed new name succeeds (curl), the chain
/// verifies against Pebble's root (rustls), and one order was placed.
async fn first_request_succeeds(setup: &mut Setup, addr: SocketAddr, name: &str) {
    let root_pem = setup.pebble.root_pem(0).await;
    let body = curl(&root_pem, setup.pebble.temp_dir(), name, addr).await;
    assert_eq!(body, "hello");
    let chain = bounded(
        STEP_BOUND,
        "handshake",
        handshake(addr, name, Arc::new(trusting(&setup.root, &[]))),
    )
    .await
    .unwrap();
    webpki_verify_chain(&chain, &setup.root, name).unwrap();
    let events = drain(&mut setup.events);
    assert_eq!(orders_for(&events, name), 1);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::OnDemandObtained { name: n, .. } if n == name))
    );
    assert_eq!(
        serial_hex(&chain[0]),
        certauto_tests::normalize_serial(setup.config.cache().get(name).unwrap().serial())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_first_request_for_an_allowed_new_name_succeeds() {
    let mut setup = setup(
        OnDemandConfig::new()
            .host_allowlist(["*.od.example"])
            .unwrap(),
    )
    .await;
    let addr = serve_axum(&setup.config).await;
    first_request_succeeds(&mut setup, addr, "first.od.example").await;
    setup.config.cache().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_first_request_for_an_allowed_new_name_succeeds() {
    let mut setup = setup(
        OnDemandConfig::new()
            .host_allowlist(["*.od.example"])
            .unwrap(),
    )
    .await;
    let (addr, handle) = serve_actix(&setup.config);
    first_request_succeeds(&mut setup, addr, "first.od.example").await;
    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
    setup.config.cache().stop();
}

/// 200 handshakes at once for one new name: every one gets the same
/// trusted certificate, from one order.
async fn one_order_for_many_handshakes(setup: &mut Setup, addr: SocketAddr) {
    let name = "crowd.od.example";
    let client = Arc::new(trusting(&setup.root, &[]));
    let mut tasks = JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        tasks.spawn(async move { handshake(addr, name, client).await });
    }
    let mut serials = std::collections::HashSet::new();
    bounded(FLOOD_BOUND, "200 handshakes", async {
        while let Some(result) = tasks.join_next().await {
            let chain = result.unwrap().unwrap();
            serials.insert(serial_hex(&chain[0]));
        }
    })
    .await;
    assert_eq!(serials.len(), 1, "one certificate for all");
    let events = drain(&mut setup.events);
    assert_eq!(orders_for(&events, name), 1);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::CertObtained { .. }))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_200_concurrent_handshakes_for_one_new_name_give_one_order() {
    let mut setup = setup(
        OnDemandConfig::new()
            .host_allowlist(["*.od.example"])
            .unwrap(),
    )
    .await;
    let addr = serve_axum(&setup.config).await;
    one_order_for_many_handshakes(&mut setup, addr).await;
    setup.config.cache().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_200_concurrent_handshakes_for_one_new_name_give_one_order() {
    let mut setup = setup(
        OnDemandConfig::new()
            .host_allowlist(["*.od.example"])
            .unwrap(),
    )
    .await;
    let (addr, handle) = serve_actix(&setup.config);
    one_order_for_many_handshakes(&mut setup, addr).await;
    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
    setup.config.cache().stop();
}

/// A name drawn from `i` (xorshift), so no two floods look alike.
fn random_label(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    format!("r{x:016x}")
}

/// 10,000 handshakes with random unknown SNIs (half refused by the
/// allowlist, half by the decision function), interleaved with handshakes
/// for a known name: no order, no storage read, the known name always served.
async fn hostile_flood(setup: &mut Setup, addr: SocketAddr) {
    let known = "known.od.example";
    let client = Arc::new(trusting(&setup.root, &[]));
    // The known name, obtained on demand first.
    bounded(STEP_BOUND, "known", handshake(addr, known, client.clone()))
        .await
        .unwrap();
    drain(&mut setup.events);
    let reads = setup.storage.reads();
    let mut tasks = JoinSet::new();
    let mut next = 0u64;
    let mut known_ok = 0;
    bounded(FLOOD_BOUND, "hostile flood", async {
        while next < 10_000 || !tasks.is_empty() {
            while next < 10_000 && tasks.len() < 64 {
                let name = if next.is_multiple_of(2) {
                    format!("{}.gated.example", random_label(next))
                } else {
                    format!("{}.elsewhere.example", random_label(next))
                };
                let c = client.clone();
                tasks.spawn(async move { (false, handshake(addr, &name, c).await) });
                if next.is_multiple_of(100) {
                    let c = client.clone();
                    tasks.spawn(async move { (true, handshake(addr, known, c).await) });
                }
                next += 1;
            }
            if let Some(joined) = tasks.join_next().await {
                let (is_known, result) = joined.unwrap();
                if is_known {
                    result.expect("the known name is served throughout");
                    known_ok += 1;
                } else {
                    assert!(result.is_err(), "an unknown name got a certificate");
                }
            }
        }
    })
    .await;
    assert_eq!(known_ok, 100);
    assert_eq!(setup.storage.reads(), reads, "storage was read");
    let events = drain(&mut setup.events);
    assert_eq!(orders(&events), 0);
    let refused = |why: OnDemandRefusal| {
        events
            .iter()
            .filter(|e| matches!(e, Event::OnDemandRefused { reason, .. } if *reason == why))
            .count()
    };
    assert_eq!(refused(OnDemandRefusal::NotAllowlisted), 5_000);
    assert_eq!(refused(OnDemandRefusal::Decision), 5_000);
}

fn gated() -> OnDemandConfig {
    OnDemandConfig::new()
        .host_allowlist(["*.gated.example", "known.od.example"])
        .unwrap()
        .decision_func(|request| !request.name().as_str().ends_with(".gated.example"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_10000_hostile_snis_give_no_order_and_no_storage_read() {
    let mut setup = setup(gated()).await;
    let addr = serve_axum(&setup.config).await;
    hostile_flood(&mut setup, addr).await;
    setup.config.cache().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_10000_hostile_snis_give_no_order_and_no_storage_read() {
    let mut setup = setup(gated()).await;
    let (addr, handle) = serve_actix(&setup.config);
    hostile_flood(&mut setup, addr).await;
    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
    setup.config.cache().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gate_nothing_is_issued() {
    let mut setup = setup(OnDemandConfig::new()).await;
    let addr = serve_axum(&setup.config).await;
    let client = Arc::new(trusting(&setup.root, &[]));
    let result = bounded(
        STEP_BOUND,
        "handshake",
        handshake(addr, "any.example", client),
    )
    .await;
    assert!(result.is_err());
    let events = drain(&mut setup.events);
    assert_eq!(orders(&events), 0);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::OnDemandRefused {
            reason: OnDemandRefusal::NoGate,
            ..
        }
    )));
    setup.config.cache().stop();
}

/// actix-web's `bind_acme` (actix-tls) cannot await in its handshake: the
/// first handshake for an allowed new name fails, the issuance runs in the
/// background, and a handshake after it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_mode_first_handshake_fails_a_later_one_succeeds() {
    let mut setup = setup(
        OnDemandConfig::new()
            .host_allowlist(["*.od.example"])
            .unwrap(),
    )
    .await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(|| App::new().route("/", web::get().to(|| async { "hello" })))
        .workers(1)
        .shutdown_timeout(1)
        .disable_signals()
        .listen_acme(listener, &setup.config)
        .unwrap()
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    let name = "later.od.example";
    let client = Arc::new(trusting(&setup.root, &[]));
    let first = bounded(
        STEP_BOUND,
        "first handshake",
        handshake(addr, name, client.clone()),
    )
    .await;
    assert!(first.is_err(), "the first handshake has no certificate yet");
    bounded(STEP_BOUND, "background issuance", async {
        loop {
            match setup.events.recv().await.unwrap() {
                Event::OnDemandObtained { name: n, .. } if n == name => break,
                Event::OnDemandFailed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    })
    .await;
    let chain = bounded(STEP_BOUND, "later handshake", handshake(addr, name, client))
        .await
        .unwrap();
    webpki_verify_chain(&chain, &setup.root, name).unwrap();
    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
    setup.config.cache().stop();
}
