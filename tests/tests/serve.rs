//! Serving end to end, in process, against a real Pebble: live certificate
//! swaps under axum and actix-web (open connections keep working), unknown and
//! absent SNI, a handshake storm, and TLS-ALPN-01 answered on the
//! application's own port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpServer, web};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use certauto::{
    AcmeIssuer, AcmeIssuerBuilder, CertResolver, Config, Http01Solver, MemoryStorage, ServerLimits,
    Storage, TlsAlpn01Solver, TlsAlpnChallenges,
};
use certauto_actix::HttpServerAcmeExt;
use certauto_axum::{AcmeTlsListener, TlsConnectInfo};
use certauto_tests::{
    Pebble, SignatureOnly, init_tracing, normalize_serial, serial_hex, webpki_verify_chain,
};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// Upper bound on one network step (a handshake, a request). Never a timed
/// assertion: only there so that a hang fails the test instead of blocking it.
const STEP_BOUND: Duration = Duration::from_secs(60);
/// Upper bound on one issuance against Pebble.
const ISSUE_BOUND: Duration = Duration::from_secs(180);
/// Upper bound on the whole handshake storm.
const STORM_BOUND: Duration = Duration::from_secs(600);

const SWAP: &str = "swap.example";

// ----- helpers -------------------------------------------------------------

async fn bounded<F: Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {bound:?}"))
}

async fn start_pebble() -> Pebble {
    init_tracing();
    Pebble::builder().start().await
}

/// An issuer for `pebble` with no solver yet.
fn issuer_base(pebble: &Pebble, storage: Arc<dyn Storage>) -> AcmeIssuerBuilder {
    AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email("serve@certauto.example")
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .storage(storage)
}

fn http01_issuer(pebble: &Pebble, storage: Arc<dyn Storage>) -> AcmeIssuer {
    issuer_base(pebble, storage)
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            pebble.http_port(),
        ))))
        .build()
}

/// A config issuing from `pebble` over HTTP-01, managing `swap.example`.
async fn swap_config(pebble: &Pebble, storage: Arc<dyn Storage>) -> Config {
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(http01_issuer(pebble, storage))
        .build();
    bounded(ISSUE_BOUND, "manage(swap.example)", config.manage([SWAP]))
        .await
        .unwrap();
    config
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting only `root_der` (Pebble's issuing root).
fn trusting(root_der: &[u8], alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).unwrap();
    let mut config = ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A client config that accepts any certificate (signatures are still
/// checked): for handshakes whose name the certificate cannot match (no SNI,
/// unknown SNI served the default certificate). The chain is checked
/// separately with [`webpki_verify_chain`].
fn accepting_any() -> ClientConfig {
    SignatureOnly::client_config(&[])
}

/// A full TLS handshake with `addr` as `name`; the served chain as DER.
async fn handshake(
    addr: SocketAddr,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> io::Result<Vec<Vec<u8>>> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    Ok(chain)
}

/// A handshake for `name` trusting only Pebble's root; panics unless it succeeds.
async fn verified_chain(addr: SocketAddr, name: &str, root_der: &[u8]) -> Vec<Vec<u8>> {
    let config = Arc::new(trusting(root_der, &[]));
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let chain = bounded(
        STEP_BOUND,
        "handshake",
        handshake(addr, server_name, config),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake for {name} failed: {e}"));
    webpki_verify_chain(&chain, root_der, name).unwrap();
    chain
}

/// A handshake with no SNI (an IP address as server name); the served chain.
async fn chain_without_sni(addr: SocketAddr) -> Vec<Vec<u8>> {
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    bounded(
        STEP_BOUND,
        "handshake without SNI",
        handshake(addr, name, Arc::new(accepting_any())),
    )
    .await
    .unwrap()
}

/// The rustls error inside a failed handshake's `io::Error`, if any.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A reqwest client trusting only Pebble's root, ALPN `h2` + `http/1.1`,
/// resolving `host` to `addr`, reporting the served leaf on every response.
fn http_client(root_der: &[u8], host: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(trusting(root_der, &[b"h2", b"http/1.1"]))
        .tls_info(true)
        .resolve(host, addr)
        .no_proxy()
        .pool_idle_timeout(None)
        .build()
        .unwrap()
}

/// What one request saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    version: reqwest::Version,
    /// The client's port as the server saw it: one value per connection.
    client_port: u16,
    /// Serial of the leaf the connection was established with.
    leaf_serial: String,
}

/// GET `url`; asserts 200 and returns what the request saw.
async fn get_seen(client: &reqwest::Client, url: &str) -> Seen {
    let resp = bounded(STEP_BOUND, "request", client.get(url).send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "GET {url}");
    let version = resp.version();
    let leaf = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec();
    let body = bounded(STEP_BOUND, "response body", resp.text())
        .await
        .unwrap();
    Seen {
        version,
        client_port: body
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("body {body:?}")),
        leaf_serial: serial_hex(&leaf),
    }
}

async fn axum_client_port(ConnectInfo(info): ConnectInfo<TlsConnectInfo>) -> String {
    info.remote_addr.port().to_string()
}

async fn actix_client_port(req: HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.port().to_string())
        .unwrap_or_default()
}

fn hello_router() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// Serves `config` with axum (reporting the client's port) on a fresh port.
async fn serve_axum_with_connect_info(
    config: &Config,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = AcmeTlsListener::new(tcp, Arc::new(config.server_config())).unwrap();
    let app = Router::new().route("/", get(axum_client_port));
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<TlsConnectInfo>(),
    );
    let task = tokio::spawn(async move { serve.await.unwrap() });
    (addr, task)
}

/// Serves `hello_router` with `certauto_axum::serve` on a fresh port.
async fn serve_axum(config: &Config) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let serve = certauto_axum::serve(tcp, hello_router(), config).unwrap();
    let task = tokio::spawn(async move { serve.into_future().await.unwrap() });
    (addr, task)
}

/// The serial the cache serves for `name`, in [`serial_hex`] form.
fn cached_serial(config: &Config, name: &str) -> String {
    normalize_serial(config.cache().get(name).expect("cached").serial())
}

/// Asserts a request to `url` gets 200 from a fresh client.
async fn assert_serves(root_der: &[u8], host: &str, addr: SocketAddr) {
    let client = http_client(root_der, host, addr);
    let url = format!("https://{host}:{}/", addr.port());
    let resp = bounded(STEP_BOUND, "request", client.get(&url).send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
}

/// An HTTP/1.1 keep-alive connection over TLS, driven by hand.
struct KeepAlive {
    stream: tokio::io::BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
    host: String,
    local_port: u16,
    leaf_serial: String,
}

impl KeepAlive {
    async fn open(addr: SocketAddr, host: &str, root_der: &[u8]) -> Self {
        let config = Arc::new(trusting(root_der, &[b"http/1.1"]));
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let tls = bounded(STEP_BOUND, "keep-alive handshake", async {
            let tcp = TcpStream::connect(addr).await?;
            TlsConnector::from(config).connect(name, tcp).await
        })
        .await
        .unwrap();
        let local_port = tls.get_ref().0.local_addr().unwrap().port();
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        Self {
            stream: tokio::io::BufReader::new(tls),
            host: host.to_owned(),
            local_port,
            leaf_serial: serial_hex(&leaf),
        }
    }

    /// `GET /` on this connection; asserts 200 and keep-alive, returns the body.
    async fn get(&mut self) -> String {
        let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        bounded(STEP_BOUND, "keep-alive request", async {
            self.stream
                .get_mut()
                .write_all(request.as_bytes())
                .await
                .unwrap();
            let mut status = String::new();
            self.stream.read_line(&mut status).await.unwrap();
            assert!(
                status.starts_with("HTTP/1.1 200 "),
                "status line {status:?}"
            );
            let mut length = None;
            loop {
                let mut line = String::new();
                let n = self.stream.read_line(&mut line).await.unwrap();
                assert!(n > 0, "connection closed in the headers");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse::<usize>().unwrap());
                }
                if name.eq_ignore_ascii_case("connection") {
                    assert!(!value.eq_ignore_ascii_case("close"), "server closes");
                }
            }
            let mut body = vec![0; length.expect("content-length")];
            self.stream.read_exact(&mut body).await.unwrap();
            String::from_utf8(body).unwrap()
        })
        .await
    }
}

// ----- 1. axum: live swap --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_swaps_the_certificate_live_and_open_connections_keep_working() {
    let pebble = start_pebble().await;
    let root = pebble.root_der(0).await;
    let config = swap_config(&pebble, Arc::new(MemoryStorage::new())).await;
    let (addr, server) = serve_axum_with_connect_info(&config).await;
    let url = format!("https://{SWAP}:{}/", addr.port());

    // One HTTP/2 connection, negotiated by ALPN.
    let old_client = http_client(&root, SWAP, addr);
    let first = get_seen(&old_client, &url).await;
    assert_eq!(first.version, reqwest::Version::HTTP_2);

    // The leaf served now, read by a separate handshake.
    let before = verified_chain(addr, SWAP, &root).await;
    let old_serial = serial_hex(&before[0]);
    assert_eq!(old_serial, cached_serial(&config, SWAP));
    assert_eq!(first.leaf_serial, old_serial);

    let renewed = bounded(ISSUE_BOUND, "force_renew", config.force_renew([SWAP]))
        .await
        .unwrap();
    let new_serial = normalize_serial(&renewed.serial_hex());
    assert_ne!(
        new_serial, old_serial,
        "force_renew must issue a new certificate"
    );

    // A new handshake gets the new certificate, which verifies.
    let after = verified_chain(addr, SWAP, &root).await;
    assert_eq!(serial_hex(&after[0]), new_serial);

    // The old HTTP/2 connection keeps working, unchanged, with no restart.
    for _ in 0..5 {
        let seen = get_seen(&old_client, &url).await;
        assert_eq!(
            seen, first,
            "the pooled connection (same client port, old leaf) keeps serving"
        );
    }

    // A new client gets a new connection with the new certificate.
    let fresh = get_seen(&http_client(&root, SWAP, addr), &url).await;
    assert_eq!(fresh.version, reqwest::Version::HTTP_2);
    assert_eq!(fresh.leaf_serial, new_serial);
    assert_ne!(fresh.client_port, first.client_port);

    assert!(!server.is_finished(), "the server is still running");
    server.abort();
}

// ----- 2. actix-web: live swap ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_swaps_the_certificate_live_and_open_connections_keep_working() {
    actix_live_swap(|listener, config| {
        HttpServer::new(|| App::new().route("/", web::get().to(actix_client_port)))
            .workers(1)
            .shutdown_timeout(5)
            .disable_signals()
            .listen_acme(listener, config)
            .unwrap()
            // After listen_acme (which applies CertAuto's limits): longer than
            // the renewal, so idleness never closes the connection under test.
            .keep_alive(Duration::from_secs(600))
            .run()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_serve_swaps_the_certificate_live_and_open_connections_keep_working() {
    actix_live_swap(|listener, config| {
        certauto_actix::serve(listener, config, || {
            App::new().route("/", web::get().to(actix_client_port))
        })
        .unwrap()
        .workers(1)
        .shutdown_timeout(5)
        .disable_signals()
        // Longer than the renewal, so idleness never closes the connection
        // under test.
        .limits(ServerLimits::default().idle_timeout(Duration::from_secs(600)))
        .run()
    })
    .await;
}

/// The live swap on an actix server that `start` runs on a listener with a
/// config: open connections (HTTP/2 and HTTP/1.1) keep their certificate and
/// keep serving, new handshakes get the renewed one, and a graceful stop
/// ends the server.
async fn actix_live_swap(
    start: impl FnOnce(std::net::TcpListener, &Config) -> actix_web::dev::Server,
) {
    let pebble = start_pebble().await;
    let root = pebble.root_der(0).await;
    let config = swap_config(&pebble, Arc::new(MemoryStorage::new())).await;

    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let server = start(std_listener, &config);
    let handle = server.handle();
    let server = tokio::spawn(server);
    let url = format!("https://{SWAP}:{}/", addr.port());

    // certauto-actix turns on actix-web's `http2` feature: h2 is negotiated.
    let old_client = http_client(&root, SWAP, addr);
    let first = get_seen(&old_client, &url).await;
    assert_eq!(first.version, reqwest::Version::HTTP_2);
    // An HTTP/1.1 keep-alive connection held by hand: the same connection by
    // construction (reqwest's HTTP/1.1 pool may race a new connection
    // against returning the idle one).
    let mut kept = KeepAlive::open(addr, SWAP, &root).await;
    let kept_port = kept.local_port;
    assert_eq!(kept.get().await, kept_port.to_string());

    let before = verified_chain(addr, SWAP, &root).await;
    let old_serial = serial_hex(&before[0]);
    assert_eq!(old_serial, cached_serial(&config, SWAP));
    assert_eq!(first.leaf_serial, old_serial);

    let renewed = bounded(ISSUE_BOUND, "force_renew", config.force_renew([SWAP]))
        .await
        .unwrap();
    let new_serial = normalize_serial(&renewed.serial_hex());
    assert_ne!(new_serial, old_serial);

    let after = verified_chain(addr, SWAP, &root).await;
    assert_eq!(serial_hex(&after[0]), new_serial);

    assert_eq!(kept.leaf_serial, old_serial);
    for _ in 0..5 {
        // The connection opened before the swap keeps serving.
        assert_eq!(kept.get().await, kept_port.to_string());
        let seen = get_seen(&old_client, &url).await;
        assert_eq!(
            seen, first,
            "the pooled HTTP/2 connection (same client port, old leaf) keeps serving"
        );
    }

    let fresh = get_seen(&http_client(&root, SWAP, addr), &url).await;
    assert_eq!(fresh.leaf_serial, new_serial);
    assert_ne!(fresh.client_port, first.client_port);

    drop((old_client, kept));
    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
    bounded(STEP_BOUND, "actix server end", server)
        .await
        .unwrap()
        .unwrap();
}

// ----- 3. unknown SNI, no SNI, default certificate -------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_is_refused_cleanly_and_the_default_certificate_is_served() {
    let pebble = start_pebble().await;
    let root = pebble.root_der(0).await;
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let config = swap_config(&pebble, storage.clone()).await;
    let (addr, server) = serve_axum(&config).await;
    let swap_chain = verified_chain(addr, SWAP, &root).await;

    // Unknown SNI, no default for unknown names: a fatal alert, not a hang.
    let err = bounded(
        STEP_BOUND,
        "handshake with unknown SNI",
        handshake(
            addr,
            ServerName::try_from("unknown.example").unwrap(),
            Arc::new(trusting(&root, &[])),
        ),
    )
    .await
    .expect_err("a handshake for an unknown name must fail");
    assert!(
        matches!(rustls_error(&err), Some(rustls::Error::AlertReceived(_))),
        "expected a fatal alert from the server, got {err:?}"
    );
    // Same without certificate verification: the refusal is the server's.
    let err = bounded(
        STEP_BOUND,
        "handshake with unknown SNI",
        handshake(
            addr,
            ServerName::try_from("unknown.example").unwrap(),
            Arc::new(accepting_any()),
        ),
    )
    .await
    .expect_err("a handshake for an unknown name must fail");
    assert!(
        matches!(rustls_error(&err), Some(rustls::Error::AlertReceived(_))),
        "{err:?}"
    );

    // The server keeps serving swap.example.
    assert_serves(&root, SWAP, addr).await;
    assert_eq!(verified_chain(addr, SWAP, &root).await, swap_chain);

    // No SNI: the default certificate, i.e. the first managed name's.
    let chain = chain_without_sni(addr).await;
    assert_eq!(chain, swap_chain);
    webpki_verify_chain(&chain, &root, SWAP).unwrap();

    // A second config on the same storage with an explicit default name that
    // is not the first managed one.
    let config2 = Config::builder()
        .storage(storage.clone())
        .issuer(http01_issuer(&pebble, storage.clone()))
        .default_server_name(SWAP)
        .build();
    bounded(
        ISSUE_BOUND,
        "manage(first.example, swap.example)",
        config2.manage(["first.example", SWAP]),
    )
    .await
    .unwrap();
    assert_eq!(
        cached_serial(&config2, SWAP),
        cached_serial(&config, SWAP),
        "swap.example comes from storage, not a new order"
    );
    let (addr2, server2) = serve_axum(&config2).await;
    assert_eq!(chain_without_sni(addr2).await, swap_chain);
    let err = bounded(
        STEP_BOUND,
        "handshake with unknown SNI",
        handshake(
            addr2,
            ServerName::try_from("unknown.example").unwrap(),
            Arc::new(accepting_any()),
        ),
    )
    .await
    .expect_err("config2 has no default for unknown names either");
    assert!(
        matches!(rustls_error(&err), Some(rustls::Error::AlertReceived(_))),
        "{err:?}"
    );

    // A resolver that serves the default certificate to unknown names.
    let resolver = CertResolver::new(config2.cache().clone(), TlsAlpnChallenges::new())
        .with_default_name(SWAP)
        .default_for_unknown_names();
    let mut tls = rustls::ServerConfig::builder_with_provider(certauto::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr3 = tcp.local_addr().unwrap();
    let serve = certauto_axum::serve_with(tcp, hello_router(), Arc::new(tls)).unwrap();
    let server3 = tokio::spawn(async move { serve.into_future().await.unwrap() });

    for unknown in ["unknown.example", "another.unknown.example", "UNKNOWN.test"] {
        let chain = bounded(
            STEP_BOUND,
            "handshake with unknown SNI",
            handshake(
                addr3,
                ServerName::try_from(unknown).unwrap(),
                Arc::new(accepting_any()),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{unknown}: {e}"));
        assert_eq!(chain, swap_chain, "{unknown} gets the default certificate");
    }
    assert_eq!(chain_without_sni(addr3).await, swap_chain);
    // Known names still get their own certificate.
    assert_eq!(verified_chain(addr3, SWAP, &root).await, swap_chain);
    let first = verified_chain(addr3, "first.example", &root).await;
    assert_ne!(first[0], swap_chain[0]);
    assert_serves(&root, SWAP, addr3).await;

    for task in [server, server2, server3] {
        assert!(!task.is_finished());
        task.abort();
    }
}

/// Serves `config` with `certauto_actix::serve` (one worker) on a fresh port.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_serve_refuses_unknown_sni_cleanly_and_serves_the_default_certificate() {
    let pebble = start_pebble().await;
    let root = pebble.root_der(0).await;
    let config = swap_config(&pebble, Arc::new(MemoryStorage::new())).await;
    let (addr, handle) = serve_actix(&config);
    let swap_chain = verified_chain(addr, SWAP, &root).await;

    // Unknown SNI: a fatal alert from the server, not a hang.
    for client in [trusting(&root, &[]), accepting_any()] {
        let err = bounded(
            STEP_BOUND,
            "handshake with unknown SNI",
            handshake(
                addr,
                ServerName::try_from("unknown.example").unwrap(),
                Arc::new(client),
            ),
        )
        .await
        .expect_err("a handshake for an unknown name must fail");
        assert!(
            matches!(rustls_error(&err), Some(rustls::Error::AlertReceived(_))),
            "expected a fatal alert from the server, got {err:?}"
        );
    }

    // The server keeps serving swap.example, and without SNI serves the
    // default certificate (the first managed name's).
    assert_serves(&root, SWAP, addr).await;
    assert_eq!(verified_chain(addr, SWAP, &root).await, swap_chain);
    let chain = chain_without_sni(addr).await;
    assert_eq!(chain, swap_chain);
    webpki_verify_chain(&chain, &root, SWAP).unwrap();

    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
}

// ----- 4. handshake storm --------------------------------------------------

/// xorshift64*: deterministic, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn label(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut s: String = (0..len)
            .map(|_| CHARS[self.below(CHARS.len())] as char)
            .collect();
        if len > 2 && self.below(4) == 0 {
            s.replace_range(len / 2..len / 2 + 1, "-");
        }
        s
    }
}

/// One storm client.
#[derive(Debug, Clone)]
enum Probe {
    /// A rustls client for `swap.example` in some letter case: must succeed.
    Good(String),
    /// A rustls client with this name (unknown, long, random, garbage): the
    /// name decides whether rustls sends it at all.
    Name(String),
    /// A rustls client connecting by IP address (no SNI): the default certificate.
    Ip(IpAddr),
    /// Connect, close at once.
    CloseAtOnce,
    /// Send random bytes, close the write side, read to the end.
    Garbage(Vec<u8>),
    /// A hand-made ClientHello whose SNI is not a valid host name.
    RawHello(Vec<u8>),
    /// Half of a ClientHello, then close.
    TruncatedHello(Vec<u8>),
}

fn probe(rng: &mut Rng) -> Probe {
    match rng.below(12) {
        0 | 1 => {
            let name: String = SWAP
                .chars()
                .map(|c| {
                    if rng.below(2) == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            Probe::Good(name)
        }
        2 | 3 => {
            let labels = 1 + rng.below(3);
            let mut name = String::new();
            for _ in 0..labels {
                let len = 1 + rng.below(20);
                name.push_str(&rng.label(len));
                name.push('.');
            }
            name.push_str(["example", "test", "com", "Example"][rng.below(4)]);
            Probe::Name(name)
        }
        4 => {
            // Very long: sometimes within 253 bytes and 63 per label, sometimes not.
            let target = 200 + rng.below(120);
            let mut name = String::new();
            while name.len() < target {
                let len = 1 + rng.below(70);
                name.push_str(&rng.label(len));
                name.push('.');
            }
            name.push_str("example");
            Probe::Name(name)
        }
        5 => {
            let len = rng.below(40);
            Probe::Name(String::from_utf8_lossy(&rng.bytes(len)).into_owned())
        }
        6 => Probe::Ip(match rng.below(3) {
            0 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            1 => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(
                (u128::from(rng.next()) << 64) | u128::from(rng.next()),
            )),
        }),
        7 => Probe::CloseAtOnce,
        8 => {
            let len = rng.below(600);
            Probe::Garbage(rng.bytes(len))
        }
        9 | 10 => {
            // Never a valid host name: it starts with a byte no name may hold.
            let mut sni = vec![[0x00, 0xff, b' ', b'/', b'@'][rng.below(5)]];
            let len = rng.below(300);
            sni.extend(rng.bytes(len));
            Probe::RawHello(sni)
        }
        _ => {
            let hello = raw_client_hello(SWAP.as_bytes());
            let cut = 1 + rng.below(hello.len() - 1);
            Probe::TruncatedHello(hello[..cut].to_vec())
        }
    }
}

/// A TLS 1.2 ClientHello with `sni` as its host name, byte for byte (so any
/// bytes can be sent, which rustls as a client refuses to do).
fn raw_client_hello(sni: &[u8]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    let mut name = vec![0u8]; // host_name
    name.extend((sni.len() as u16).to_be_bytes());
    name.extend(sni);
    let mut server_name = (name.len() as u16).to_be_bytes().to_vec();
    server_name.extend(name);

    let mut exts = Vec::new();
    ext(&mut exts, 0x0000, &server_name);
    // supported_groups: x25519, secp256r1
    ext(&mut exts, 0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    ext(&mut exts, 0x000b, &[0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
    ext(&mut exts, 0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);

    let mut body = vec![0x03, 0x03];
    body.extend([0x42u8; 32]); // random
    body.push(0); // no session id
    // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ECDHE_RSA_WITH_AES_128_GCM_SHA256
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend([0x01, 0x00]); // compression: null
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);

    let mut handshake = vec![0x01]; // client_hello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends `bytes` raw, closes the write side and reads everything the server
/// sends until it closes.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(bytes).await?;
    tcp.shutdown().await?;
    let mut answer = Vec::new();
    // A reset after the server's alert is an ending too.
    match tcp.read_to_end(&mut answer).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(e),
    }
    Ok(answer)
}

/// What one storm client ended with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Handshake done; the served leaf was swap.example's current one.
    ServedSwap,
    /// Handshake done with some other leaf (never expected).
    ServedOther,
    /// The server refused the handshake with a fatal alert.
    Alert,
    /// rustls would not send this name (not a valid server name).
    RefusedByClient,
    /// The server answered raw bytes with a TLS alert record.
    RawAlert,
    /// The server answered raw bytes with a handshake record (never expected
    /// for an invalid SNI).
    RawHandshake,
    /// The server closed the connection without answering.
    Closed,
    /// Any other error.
    Error(String),
}

fn outcome_of_handshake(result: io::Result<Vec<Vec<u8>>>, swap_leaf: &[u8]) -> Outcome {
    match result {
        Ok(chain) if chain.first().map(Vec::as_slice) == Some(swap_leaf) => Outcome::ServedSwap,
        Ok(_) => Outcome::ServedOther,
        Err(e) => match rustls_error(&e) {
            Some(rustls::Error::AlertReceived(_)) => Outcome::Alert,
            _ => Outcome::Error(format!("{e:?}")),
        },
    }
}

fn outcome_of_raw(result: io::Result<Vec<u8>>) -> Outcome {
    match result {
        Ok(answer) => match answer.first() {
            None => Outcome::Closed,
            Some(0x15) => Outcome::RawAlert,
            Some(0x16) => Outcome::RawHandshake,
            Some(_) => Outcome::Error(format!("unexpected answer {answer:02x?}")),
        },
        Err(e) => Outcome::Error(format!("{e:?}")),
    }
}

async fn run_probe(
    probe: Probe,
    addr: SocketAddr,
    verifying: Arc<ClientConfig>,
    any: Arc<ClientConfig>,
    swap_leaf: Arc<Vec<u8>>,
) -> Outcome {
    match probe {
        Probe::Good(name) | Probe::Name(name) => match ServerName::try_from(name) {
            Err(_) => Outcome::RefusedByClient,
            // The name parsed as an IP address: no SNI is sent.
            Ok(ip @ ServerName::IpAddress(_)) => {
                outcome_of_handshake(handshake(addr, ip, any).await, &swap_leaf)
            }
            Ok(name) => outcome_of_handshake(handshake(addr, name, verifying).await, &swap_leaf),
        },
        Probe::Ip(ip) => outcome_of_handshake(
            handshake(addr, ServerName::IpAddress(ip.into()), any).await,
            &swap_leaf,
        ),
        Probe::CloseAtOnce => match TcpStream::connect(addr).await {
            Ok(tcp) => {
                drop(tcp);
                Outcome::Closed
            }
            Err(e) => Outcome::Error(format!("{e:?}")),
        },
        Probe::Garbage(bytes) | Probe::TruncatedHello(bytes) => {
            match outcome_of_raw(raw_exchange(addr, &bytes).await) {
                // Either way the connection ended; record it as an ending.
                Outcome::RawAlert | Outcome::Closed => Outcome::Closed,
                other => other,
            }
        }
        Probe::RawHello(sni) => outcome_of_raw(raw_exchange(addr, &raw_client_hello(&sni)).await),
    }
}

fn kind(probe: &Probe) -> &'static str {
    match probe {
        Probe::Good(_) => "good",
        Probe::Name(_) => "name",
        Probe::Ip(_) => "ip",
        Probe::CloseAtOnce => "close-at-once",
        Probe::Garbage(_) => "garbage",
        Probe::RawHello(_) => "raw-hello-invalid-sni",
        Probe::TruncatedHello(_) => "truncated-hello",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_storm_with_random_sni_leaves_the_server_serving() {
    const HANDSHAKES: usize = 1_000;
    const CONCURRENCY: usize = 32;
    const SEED: u64 = 0x5eed_cafe_f00d_0001;

    let pebble = start_pebble().await;
    let root = pebble.root_der(0).await;
    let config = swap_config(&pebble, Arc::new(MemoryStorage::new())).await;
    let (addr, server) = serve_axum(&config).await;
    let swap_chain = verified_chain(addr, SWAP, &root).await;
    let swap_leaf = Arc::new(swap_chain[0].clone());

    // The hand-made ClientHello is a real one: with a known name, the server
    // answers with its handshake; with an unknown one, with an alert.
    let control = bounded(
        STEP_BOUND,
        "raw hello",
        raw_exchange(addr, &raw_client_hello(SWAP.as_bytes())),
    )
    .await;
    assert_eq!(outcome_of_raw(control), Outcome::RawHandshake);
    let control = bounded(
        STEP_BOUND,
        "raw hello",
        raw_exchange(addr, &raw_client_hello(b"unknown.example")),
    )
    .await;
    assert_eq!(outcome_of_raw(control), Outcome::RawAlert);

    let verifying = Arc::new(trusting(&root, &[]));
    let any = Arc::new(accepting_any());
    let mut rng = Rng(SEED);
    let mut probes: Vec<Probe> = (0..HANDSHAKES).map(|_| probe(&mut rng)).collect();
    // Make sure every kind is present, whatever the seed.
    probes[0] = Probe::Good("SWAP.EXAMPLE".to_owned());
    probes[1] = Probe::Good("Swap.Example".to_owned());
    probes[2] = Probe::Name("x".repeat(300));
    probes[3] =
        Probe::Name("a".repeat(63) + "." + &"b".repeat(63) + "." + &"c".repeat(63) + ".example");
    probes[4] = Probe::Name("bad name\u{0}.example".to_owned());
    probes[5] = Probe::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
    probes[6] = Probe::CloseAtOnce;
    probes[7] = Probe::Garbage(b"GET / HTTP/1.1\r\nHost: swap.example\r\n\r\n".to_vec());
    probes[8] = Probe::RawHello(Vec::new());
    probes[9] = Probe::RawHello(b"swap.example\0.evil".to_vec());

    let results = bounded(STORM_BOUND, "the handshake storm", async {
        let mut results: Vec<(Probe, Outcome)> = Vec::with_capacity(HANDSHAKES);
        let mut set = JoinSet::new();
        let mut pending = probes.into_iter();
        loop {
            while set.len() < CONCURRENCY {
                let Some(p) = pending.next() else { break };
                let (verifying, any, leaf) = (verifying.clone(), any.clone(), swap_leaf.clone());
                set.spawn(async move {
                    let outcome = tokio::time::timeout(
                        STEP_BOUND,
                        run_probe(p.clone(), addr, verifying, any, leaf),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("{p:?} did not end within {STEP_BOUND:?}"));
                    (p, outcome)
                });
            }
            match set.join_next().await {
                Some(r) => results.push(r.unwrap()),
                None => break,
            }
        }
        results
    })
    .await;
    assert_eq!(results.len(), HANDSHAKES);

    let mut counts: BTreeMap<(&str, Outcome), usize> = BTreeMap::new();
    for (p, o) in &results {
        *counts.entry((kind(p), o.clone())).or_default() += 1;
    }
    eprintln!("handshake storm (seed {SEED:#x}): {counts:#?}");

    for (p, o) in &results {
        let ok = match (p, o) {
            (Probe::Good(_), Outcome::ServedSwap) => true,
            (Probe::Good(_), _) => false,
            // A name rustls sends is unknown here (none equals swap.example):
            // refused with an alert. IP literals are served the default.
            (Probe::Name(n), Outcome::Alert) => !n.eq_ignore_ascii_case(SWAP),
            (Probe::Name(n), Outcome::ServedSwap) => n.parse::<IpAddr>().is_ok(),
            (Probe::Name(_), Outcome::RefusedByClient) => true,
            (Probe::Ip(_), Outcome::ServedSwap) => true,
            (
                Probe::CloseAtOnce | Probe::Garbage(_) | Probe::TruncatedHello(_),
                Outcome::Closed,
            ) => true,
            (Probe::RawHello(_), Outcome::RawAlert) => true,
            _ => false,
        };
        assert!(ok, "unexpected outcome {o:?} for {p:?}");
    }
    let good = results
        .iter()
        .filter(|(p, _)| matches!(p, Probe::Good(_)))
        .count();
    assert!(good >= 2, "good SNI probes ran: {good}");

    // Still serving, with a valid handshake and HTTP 200.
    assert_eq!(verified_chain(addr, SWAP, &root).await, swap_chain);
    assert_serves(&root, SWAP, addr).await;
    assert!(!server.is_finished());
    server.abort();
}

// ----- 5. TLS-ALPN-01 on the application's own port ------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_is_answered_on_the_applications_own_port() {
    const NAME: &str = "alpn.example";
    let pebble = start_pebble().await;
    let root = pebble.root_der(0).await;
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let challenges = TlsAlpnChallenges::new();
    // TLS-ALPN-01 is the only challenge this issuer can answer.
    let issuer = issuer_base(&pebble, storage.clone())
        .tls_alpn01_solver(TlsAlpn01Solver::inline(challenges.clone()))
        .build();
    let config = Config::builder()
        .storage(storage)
        .issuer(issuer)
        .tls_alpn_challenges(challenges.clone())
        .build();

    // The application listens first, where Pebble validates TLS-ALPN-01.
    let tcp = TcpListener::bind(("127.0.0.1", pebble.tls_port()))
        .await
        .unwrap();
    let addr = tcp.local_addr().unwrap();
    let serve = certauto_axum::serve(tcp, hello_router(), &config).unwrap();
    let server = tokio::spawn(async move { serve.into_future().await.unwrap() });

    bounded(ISSUE_BOUND, "manage(alpn.example)", config.manage([NAME]))
        .await
        .unwrap();
    assert!(
        challenges.get(NAME).is_none(),
        "the challenge certificate is withdrawn after validation"
    );

    // The same port now serves HTTPS with the issued certificate.
    let chain = verified_chain(addr, NAME, &root).await;
    assert_eq!(serial_hex(&chain[0]), cached_serial(&config, NAME));
    assert_serves(&root, NAME, addr).await;

    // With no challenge pending, an acme-tls/1 client gets no certificate
    // (never the real one).
    let mut acme = accepting_any();
    acme.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let err = bounded(
        STEP_BOUND,
        "acme-tls/1 handshake",
        handshake(addr, ServerName::try_from(NAME).unwrap(), Arc::new(acme)),
    )
    .await
    .expect_err("no challenge certificate is pending");
    assert!(
        matches!(rustls_error(&err), Some(rustls::Error::AlertReceived(_))),
        "{err:?}"
    );

    assert!(!server.is_finished());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_serve_answers_tls_alpn01_on_the_applications_own_port() {
    const NAME: &str = "alpn-actix.example";
    let pebble = start_pebble().await;
    let root = pebble.root_der(0).await;
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let challenges = TlsAlpnChallenges::new();
    // TLS-ALPN-01 is the only challenge this issuer can answer.
    let issuer = issuer_base(&pebble, storage.clone())
        .tls_alpn01_solver(TlsAlpn01Solver::inline(challenges.clone()))
        .build();
    let config = Config::builder()
        .storage(storage)
        .issuer(issuer)
        .tls_alpn_challenges(challenges.clone())
        .build();

    // The actix app listens first, where Pebble validates TLS-ALPN-01.
    let listener = std::net::TcpListener::bind(("127.0.0.1", pebble.tls_port())).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = certauto_actix::serve(listener, &config, || {
        App::new().route("/", web::get().to(|| async { "hello" }))
    })
    .unwrap()
    .workers(1)
    .shutdown_timeout(1)
    .disable_signals()
    .run();
    let handle = server.handle();
    tokio::spawn(server);

    bounded(
        ISSUE_BOUND,
        "manage(alpn-actix.example)",
        config.manage([NAME]),
    )
    .await
    .unwrap();
    assert!(
        challenges.get(NAME).is_none(),
        "the challenge certificate is withdrawn after validation"
    );

    // The same port now serves HTTPS with the issued certificate.
    let chain = verified_chain(addr, NAME, &root).await;
    assert_eq!(serial_hex(&chain[0]), cached_serial(&config, NAME));
    assert_serves(&root, NAME, addr).await;

    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
}
