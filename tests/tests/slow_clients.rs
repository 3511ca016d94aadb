//! Servers that bound their clients, on both adapters (certauto-axum and
//! certauto-actix), HTTPS and the port-80 side: a connection that sends
//! nothing, or half a request head, is closed after the configured timeout
//! while ordinary requests keep being answered; the connection cap holds; the
//! redirect restricted to managed names refuses other hosts.
//!
//! Certificates come from the local CA (no Pebble needed); clients trust its
//! root. Every wait is bounded and nothing sleeps: a bound only turns a hang
//! into a failure, it is never the thing asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use certauto::{ChallengeTokens, Config, MemoryStorage, ServerLimits};
use certauto_actix::HttpServerAcmeExt;
use certauto_tower::{AcmeLayer, HttpsRedirectLayer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// How long a server may take to close a slow client: generous, since the
/// configured timeouts are 1 s. Only turns a hang into a failure.
const CLOSE_BOUND: Duration = Duration::from_secs(30);
/// Upper bound on one ordinary network step.
const STEP_BOUND: Duration = Duration::from_secs(30);
/// The timeouts the servers under test are configured with.
const SHORT: Duration = Duration::from_secs(1);
const HOST: &str = "localhost";

async fn bounded<F: Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {bound:?}"))
}

/// A config managing `localhost` with the local CA, and the CA's root (DER).
async fn local_config() -> (Config, CertificateDer<'static>) {
    certauto_tests::init_tracing();
    let config = Config::builder()
        .storage(Arc::new(MemoryStorage::new()))
        .build();
    bounded(STEP_BOUND, "manage(localhost)", config.manage([HOST]))
        .await
        .unwrap();
    let pem = config.local_ca().root_pem().await.unwrap();
    let root = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    (config, root)
}

fn short_limits() -> ServerLimits {
    ServerLimits::default()
        .header_read_timeout(SHORT)
        .handshake_timeout(SHORT)
}

fn client_config(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A reqwest client trusting `root`, resolving `localhost` to `addr`.
fn https_client(root: &CertificateDer<'static>, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(root, &[b"h2", b"http/1.1"]))
        .resolve(HOST, addr)
        .no_proxy()
        .build()
        .unwrap()
}

/// A plain-HTTP reqwest client that does not follow redirects.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(&local_dummy_root(), &[]))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// reqwest wants a TLS config even for plain HTTP; any root will do.
fn local_dummy_root() -> CertificateDer<'static> {
    let cert = rcgen::generate_simple_self_signed(vec!["unused.invalid".to_owned()]).unwrap();
    cert.cert.der().clone()
}

/// A TLS connection for `localhost` over HTTP/1.1.
async fn tls_connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = Arc::new(client_config(root, &[b"http/1.1"]));
    bounded(STEP_BOUND, "TLS connect", async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap()
    })
    .await
}

/// Reads until the server closes the connection (EOF or a reset); panics if
/// that takes longer than [`CLOSE_BOUND`]. Returns what was read.
async fn closed_by_server<S: AsyncRead + Unpin>(mut stream: S, what: &str) -> Vec<u8> {
    bounded(CLOSE_BOUND, what, async {
        let mut got = Vec::new();
        let mut buf = [0; 1024];
        // Bounded by the time bound, and by the response size.
        for _ in 0..1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        panic!("{what}: the server kept sending");
    })
    .await
}

const HALF_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";

/// The slow clients of one HTTPS server: one that sends nothing at all (the
/// handshake timeout applies), one that completes TLS and sends nothing, one
/// that sends half a request head. Ordinary requests are answered while they
/// are open; then each is closed by the server.
async fn https_slow_clients_are_closed(addr: SocketAddr, root: &CertificateDer<'static>) {
    let silent_tcp = TcpStream::connect(addr).await.unwrap();
    let silent_tls = tls_connect(addr, root).await;
    let mut half = tls_connect(addr, root).await;
    half.write_all(HALF_HEAD).await.unwrap();
    half.flush().await.unwrap();

    let client = https_client(root, addr);
    for _ in 0..5 {
        let url = format!("https://{HOST}:{}/", addr.port());
        let response = bounded(STEP_BOUND, "HTTPS request", client.get(&url).send())
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "hello");
    }

    closed_by_server(silent_tcp, "silent TCP connection closed").await;
    closed_by_server(silent_tls, "silent TLS connection closed").await;
    let answer = closed_by_server(half, "half-header connection closed").await;
    // Closed without a response, or with 408 Request Timeout (actix).
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// The same for a plain-HTTP (port-80) server: silent and half-header
/// clients are closed, ordinary requests are redirected meanwhile.
async fn http_slow_clients_are_closed(addr: SocketAddr) {
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(HALF_HEAD).await.unwrap();

    let client = http_client();
    for _ in 0..5 {
        let url = format!("http://{HOST}:{}/a?b", addr.port());
        let response = bounded(STEP_BOUND, "HTTP request", client.get(&url).send())
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::PERMANENT_REDIRECT);
        assert_eq!(response.headers()["location"], "https://localhost:8443/a?b");
    }

    closed_by_server(silent, "silent HTTP connection closed").await;
    let answer = closed_by_server(half, "half-header HTTP connection closed").await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

// ----- handlers that hold their connection, to test the cap ----------------

/// Counts handlers in progress; each waits for a permit of `release`.
#[derive(Debug)]
struct Hold {
    /// (in progress now, most ever in progress at once, entered in total)
    counts: watch::Sender<(usize, usize, usize)>,
    release: Semaphore,
}

impl Hold {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            counts: watch::Sender::new((0, 0, 0)),
            release: Semaphore::new(0),
        })
    }

    async fn hold(&self) -> &'static str {
        self.counts.send_modify(|(now, max, total)| {
            *now += 1;
            *max = (*max).max(*now);
            *total += 1;
        });
        self.release.acquire().await.unwrap().forget();
        self.counts.send_modify(|(now, _, _)| *now -= 1);
        "held"
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&(usize, usize, usize)) -> bool) {
        let mut rx = self.counts.subscribe();
        bounded(STEP_BOUND, what, rx.wait_for(|c| pred(c)))
            .await
            .unwrap();
    }
}

const CAP: usize = 2;
const CLIENTS: usize = CAP + 3;

/// `CLIENTS` connections each ask for `/hold` (and to close afterwards) on a
/// server capped at `CAP` connections: handlers are released one at a time,
/// and never more than `CAP` run at once.
async fn the_connection_cap_holds(addr: SocketAddr, root: &CertificateDer<'static>, hold: &Hold) {
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let root = root.clone();
        clients.spawn(async move {
            let mut tls = tls_connect(addr, &root).await;
            tls.write_all(b"GET /hold HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            tls.flush().await.unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        });
    }
    hold.wait_for("CAP handlers in progress", |&(now, _, _)| now >= CAP)
        .await;
    for released in 1..=CLIENTS {
        hold.release.add_permits(1);
        // The next connection is served once a slot is free.
        let entered = (released + CAP).min(CLIENTS);
        hold.wait_for("the next handler", |&(_, _, total)| total >= entered)
            .await;
    }
    for _ in 0..CLIENTS {
        let answer = bounded(STEP_BOUND, "held response", clients.join_next())
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.ends_with("held"), "{answer:?}");
    }
    let (now, max, total) = *hold.counts.borrow();
    assert_eq!((now, total), (0, CLIENTS));
    assert_eq!(max, CAP, "never more than the cap served at once");
}

// ----- axum ------------------------------------------------------------------

fn axum_app(hold: Arc<Hold>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/hold",
            get(|State(hold): State<Arc<Hold>>| async move { hold.hold().await }),
        )
        .with_state(hold)
}

async fn axum_https(config: &Config, limits: ServerLimits, hold: Arc<Hold>) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serve = certauto_axum::serve(tcp, axum_app(hold), config)
        .unwrap()
        .limits(limits);
    let addr = serve.local_addr();
    tokio::spawn(serve.into_future());
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_closes_slow_clients_and_keeps_serving() {
    let (config, root) = local_config().await;
    let addr = axum_https(&config, short_limits(), Hold::new()).await;
    https_slow_clients_are_closed(addr, &root).await;

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = certauto_axum::serve_plain(
        tcp,
        certauto_axum::http_router(ChallengeTokens::new(), 8443),
    )
    .unwrap()
    .limits(short_limits());
    let http_addr = http.local_addr();
    tokio::spawn(http.into_future());
    http_slow_clients_are_closed(http_addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_connection_cap_holds() {
    let (config, root) = local_config().await;
    let hold = Hold::new();
    let addr = axum_https(
        &config,
        ServerLimits::default().max_connections(CAP),
        hold.clone(),
    )
    .await;
    the_connection_cap_holds(addr, &root, &hold).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_redirect_refuses_unmanaged_hosts_when_restricted() {
    let (config, _) = local_config().await;
    let router = Router::new()
        .layer(HttpsRedirectLayer::only_managed(&config))
        .layer(AcmeLayer::new(ChallengeTokens::new()));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serve = certauto_axum::serve_plain(tcp, router).unwrap();
    let addr = serve.local_addr();
    tokio::spawn(serve.into_future());
    assert_redirect_restricted(addr, 443).await;
}

/// `localhost` (managed) is redirected; `evil.example` gets 421.
async fn assert_redirect_restricted(addr: SocketAddr, https_port: u16) {
    let client = http_client();
    let url = format!("http://127.0.0.1:{}/p?q", addr.port());
    let managed = bounded(
        STEP_BOUND,
        "managed host",
        client.get(&url).header("host", "LocalHost:80").send(),
    )
    .await
    .unwrap();
    assert_eq!(managed.status(), reqwest::StatusCode::PERMANENT_REDIRECT);
    let expected = if https_port == 443 {
        "https://LocalHost/p?q".to_owned()
    } else {
        format!("https://LocalHost:{https_port}/p?q")
    };
    assert_eq!(managed.headers()["location"], expected.as_str());

    let unmanaged = bounded(
        STEP_BOUND,
        "unmanaged host",
        client.get(&url).header("host", "evil.example").send(),
    )
    .await
    .unwrap();
    assert_eq!(unmanaged.status(), reqwest::StatusCode::MISDIRECTED_REQUEST);
    assert!(unmanaged.headers().get("location").is_none());
}

// ----- actix-web -------------------------------------------------------------

/// Runs an actix server (one worker) built by `build` on a fresh port.
fn actix<F>(build: F) -> (SocketAddr, actix_web::dev::ServerHandle)
where
    F: FnOnce(std::net::TcpListener) -> actix_web::dev::Server,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = build(listener);
    let handle = server.handle();
    tokio::spawn(server);
    (addr, handle)
}

fn actix_https(
    config: &Config,
    limits: ServerLimits,
    hold: Arc<Hold>,
) -> (SocketAddr, actix_web::dev::ServerHandle) {
    let config = config.clone();
    actix(move |listener| {
        let hold = web::Data::from(hold);
        HttpServer::new(move || {
            App::new()
                .app_data(hold.clone())
                .route("/", web::get().to(|| async { "hello" }))
                .route(
                    "/hold",
                    web::get().to(|hold: web::Data<Hold>| async move { hold.hold().await }),
                )
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen_acme(listener, &config)
        .unwrap()
        .server_limits(&limits)
        .run()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_closes_slow_clients_and_keeps_serving() {
    let (config, root) = local_config().await;
    let (addr, https) = actix_https(&config, short_limits(), Hold::new());
    https_slow_clients_are_closed(addr, &root).await;

    let (http_addr, http) = actix(|listener| {
        HttpServer::new(|| {
            App::new()
                .configure(certauto_actix::acme_http01(ChallengeTokens::new()))
                .default_service(certauto_actix::https_redirect(8443))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen_http(listener)
        .unwrap()
        .server_limits(&short_limits())
        .run()
    });
    http_slow_clients_are_closed(http_addr).await;
    bounded(STEP_BOUND, "actix stop", https.stop(false)).await;
    bounded(STEP_BOUND, "actix stop", http.stop(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_connection_cap_holds() {
    let (config, root) = local_config().await;
    let hold = Hold::new();
    let (addr, handle) = actix_https(
        &config,
        ServerLimits::default().max_connections(CAP),
        hold.clone(),
    );
    the_connection_cap_holds(addr, &root, &hold).await;
    bounded(STEP_BOUND, "actix stop", handle.stop(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_redirect_refuses_unmanaged_hosts_when_restricted() {
    let (config, _) = local_config().await;
    let (addr, handle) = actix(move |listener| {
        HttpServer::new(move || {
            App::new()
                .configure(certauto_actix::acme_http01(ChallengeTokens::new()))
                .default_service(certauto_actix::https_redirect_only_managed(8443, &config))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen_http(listener)
        .unwrap()
        .run()
    });
    assert_redirect_restricted(addr, 8443).await;
    bounded(STEP_BOUND, "actix stop", handle.stop(false)).await;
}

// ----- actix-web over certauto-core's acceptor (`certauto_actix::serve`) ----

/// Runs the `Hold` app with `certauto_actix::serve_with` (one worker).
fn actix_serve_with(
    tls: Arc<rustls::ServerConfig>,
    limits: ServerLimits,
    hold: Arc<Hold>,
) -> (SocketAddr, actix_web::dev::ServerHandle) {
    actix(move |listener| {
        let hold = web::Data::from(hold);
        certauto_actix::serve_with(listener, tls, move || {
            App::new()
                .app_data(hold.clone())
                .route("/", web::get().to(|| async { "hello" }))
                .route(
                    "/hold",
                    web::get().to(|hold: web::Data<Hold>| async move { hold.hold().await }),
                )
        })
        .unwrap()
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .limits(limits)
        .run()
    })
}

fn actix_serve(
    config: &Config,
    limits: ServerLimits,
    hold: Arc<Hold>,
) -> (SocketAddr, actix_web::dev::ServerHandle) {
    actix_serve_with(Arc::new(config.server_config()), limits, hold)
}

/// A TLS config serving a self-signed `localhost` certificate whatever the
/// ALPN (so an `acme-tls/1` handshake completes with no ACME challenge
/// pending), and that certificate.
fn self_signed_tls() -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(certauto::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        certauto::ACME_TLS_ALPN.to_vec(),
    ];
    (Arc::new(tls), cert.der().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_serve_closes_slow_clients_and_keeps_serving() {
    let (config, root) = local_config().await;
    let (addr, handle) = actix_serve(&config, short_limits(), Hold::new());
    https_slow_clients_are_closed(addr, &root).await;
    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_serve_connection_cap_holds() {
    let (config, root) = local_config().await;
    let hold = Hold::new();
    let (addr, handle) = actix_serve(
        &config,
        ServerLimits::default().max_connections(CAP),
        hold.clone(),
    );
    the_connection_cap_holds(addr, &root, &hold).await;
    bounded(STEP_BOUND, "actix stop", handle.stop(false)).await;
}

/// An `acme-tls/1` connection is closed right after its handshake: the
/// client reads a clean EOF without sending anything, well before the 10 s
/// header-read timeout (which would end in a `408`), and the connection never
/// reaches the app. Ordinary clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_serve_closes_acme_tls_1_connections_after_the_handshake() {
    let (tls, root) = self_signed_tls();
    let (addr, handle) = actix_serve_with(tls, ServerLimits::default(), Hold::new());

    let validation = bounded(STEP_BOUND, "acme-tls/1 handshake", async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = Arc::new(client_config(&root, &[certauto::ACME_TLS_ALPN]));
        tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        validation.get_ref().1.alpn_protocol(),
        Some(certauto::ACME_TLS_ALPN)
    );
    let answer = closed_by_server(validation, "acme-tls/1 connection closed").await;
    assert!(
        answer.is_empty(),
        "nothing is sent after the handshake: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let client = https_client(&root, addr);
    let url = format!("https://{HOST}:{}/", addr.port());
    let response = bounded(STEP_BOUND, "HTTPS request", client.get(&url).send())
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
}

/// With one handshake allowed in progress, a client that connects and sends
/// nothing holds it: the next client's handshake completes only once the
/// server has closed the silent one at its handshake deadline. (Without the
/// bound, the second handshake would complete while the silent connection is
/// still open, and the final check would find it open.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_serve_bounds_handshakes_in_progress() {
    let (config, root) = local_config().await;
    let limits = short_limits().max_pending_handshakes(1);
    let (addr, handle) = actix_serve(&config, limits, Hold::new());

    // A plain socket, to look at its state with a non-blocking read below.
    let silent = std::net::TcpStream::connect(addr).unwrap();
    let tls = tls_connect(addr, &root).await;
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0; 1];
    let read = std::io::Read::read(&mut &silent, &mut buf);
    assert!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock),
        "the silent connection was closed before the next handshake finished: {read:?}"
    );
    drop(tls);
    bounded(STEP_BOUND, "actix stop", handle.stop(true)).await;
}
