//! Maintenance end to end against a real Pebble: the renewal loop swaps a
//! certificate into a live server, two processes sharing `FileStorage` renew a
//! name once, a CA that goes away mid-renewal leaves the old certificate
//! serving with a persisted backoff that a restart resumes, and ARI (RFC 9773)
//! windows (past, future, malformed, 404, `Retry-After`).
//!
//! ARI is tested against Pebble's own `renewalInfo` (windows set through its
//! management interface, `replaces` accepted by Pebble) and, for the answers a
//! real CA rarely gives (malformed JSON, 404, short `Retry-After`) and for
//! outages, through [`AriProxy`], a fault-injecting reverse proxy that
//! overrides `renewalInfo` and can make the CA unreachable. Time is a
//! [`ManualClock`]: decisions are driven by calling
//! [`Config::check_renewals`], never by waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::get;
use certauto::{
    AcmeIssuer, CachedCert, Clock, Config, Event, FileStorage, Http01Solver, Issuer, ManualClock,
    Storage, start_maintenance,
};
use certauto_tests::{
    AriAnswer, AriProxy, Outage, Pebble, init_tracing, normalize_serial, serial_hex,
    webpki_verify_chain,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio_rustls::TlsConnector;

/// Upper bound on one network step (a handshake, a request). Never a timed
/// assertion: only there so that a hang fails the test instead of blocking it.
const STEP_BOUND: Duration = Duration::from_secs(60);
/// Upper bound on one issuance or renewal check against Pebble.
const ISSUE_BOUND: Duration = Duration::from_secs(180);
/// Upper bound on the two `maintain-node` processes.
const PROCESS_BOUND: Duration = Duration::from_secs(300);
/// Account e-mail of every config in this file.
const EMAIL: &str = "maintain@certauto.example";
/// The first retry delay (`certauto::MIN_RETRY_BACKOFF`), and
/// the ±10 % jitter around it.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);

// ----- helpers -------------------------------------------------------------

async fn bounded<F: Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {bound:?}"))
}

/// Everything a test needs around one Pebble (and, for most, the proxy).
struct Env {
    pebble: Pebble,
    proxy: Option<AriProxy>,
    clock: Arc<ManualClock>,
    events: Arc<Mutex<Vec<Event>>>,
    dir: tempfile::TempDir,
}

impl Env {
    async fn with_proxy() -> Self {
        init_tracing();
        let pebble = Pebble::builder().start().await;
        let proxy = AriProxy::start(&pebble).await;
        Self::new(pebble, Some(proxy))
    }

    fn new(pebble: Pebble, proxy: Option<AriProxy>) -> Self {
        Env {
            pebble,
            proxy,
            clock: Arc::new(ManualClock::new(SystemTime::now())),
            events: Arc::new(Mutex::new(Vec::new())),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn proxy(&self) -> &AriProxy {
        self.proxy
            .as_ref()
            .expect("this test runs with the ARI proxy")
    }

    fn storage_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("storage")
    }

    /// A fresh `FileStorage` handle on the shared folder (like a new process).
    fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(FileStorage::new(self.storage_dir()))
    }

    /// An issuer talking to the proxy if there is one, else to Pebble.
    fn issuer(&self, storage: Arc<dyn Storage>) -> AcmeIssuer {
        let (directory, https_ca) = match &self.proxy {
            Some(proxy) => (proxy.directory_url(), proxy.https_ca_der()),
            None => (self.pebble.directory_url(), self.pebble.https_ca_der()),
        };
        AcmeIssuer::builder()
            .ca(directory)
            .email(EMAIL)
            .agreed(true)
            .trust_roots([CertificateDer::from(https_ca)])
            .only_trusted_roots()
            .http01_solver(Http01Solver::bind(SocketAddr::from((
                [127, 0, 0, 1],
                self.pebble.http_port(),
            ))))
            .storage(storage)
            .build()
    }

    /// A new config (a new "process") on the shared storage and clock,
    /// recording its events.
    fn config(&self) -> Config {
        let storage = self.storage();
        let events = self.events.clone();
        Config::builder()
            .storage(storage.clone())
            .issuer(self.issuer(storage))
            .clock(self.clock.clone())
            .on_event(move |e| events.lock().unwrap().push(e.clone()))
            .build()
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn renewed_events(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Event::CertRenewed { .. }))
            .count()
    }
}

/// Manages `name` (obtaining it) and returns what the cache serves.
async fn manage(config: &Config, name: &str) -> Arc<CachedCert> {
    bounded(ISSUE_BOUND, "manage", config.manage([name]))
        .await
        .unwrap_or_else(|e| panic!("manage({name}): {e}"));
    cached(config, name)
}

fn cached(config: &Config, name: &str) -> Arc<CachedCert> {
    config
        .cache()
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the cache"))
}

fn cached_serial(config: &Config, name: &str) -> String {
    normalize_serial(cached(config, name).serial())
}

/// The serial of the certificate storage holds for `name`.
async fn stored_serial(config: &Config, name: &str) -> String {
    let cert = config
        .load([name])
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no stored certificate for {name}"));
    normalize_serial(&cert.serial_hex())
}

async fn check(config: &Config) -> certauto::RenewalReport {
    bounded(ISSUE_BOUND, "check_renewals", config.check_renewals()).await
}

/// A time inside the ratio window (default 1/3) of `cert`: 3/4 of its lifetime.
fn inside_ratio_window(cert: &CachedCert) -> SystemTime {
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    cert.not_before() + lifetime.mul_f64(0.75)
}

/// A time after the end of Pebble's default ARI window for `cert` (two thirds
/// into its lifetime plus one day) for a week-long certificate: 6/7 of its lifetime.
fn past_pebbles_ari_window(cert: &CachedCert) -> SystemTime {
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert!(
        lifetime >= 6 * DAY,
        "only meant for week-long certificates, got {lifetime:?}"
    );
    let at = cert.not_before() + lifetime.mul_f64(6.0 / 7.0);
    assert!(at > cert.not_after() - lifetime / 3 + DAY);
    at
}

fn ari_id(cert: &CachedCert) -> String {
    cert.ari_cert_id()
        .expect("Pebble's certificates carry an AKI, so they have an ARI CertID")
        .to_owned()
}

fn ring_client_config(root_der: &[u8]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).unwrap();
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Serves `config` with `certauto_axum::serve` on a fresh loopback port.
async fn serve(config: &Config) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let router = Router::new().route("/", get(|| async { "hello" }));
    let serve = certauto_axum::serve(tcp, router, config).unwrap();
    let task = tokio::spawn(async move { serve.into_future().await.unwrap() });
    (addr, task)
}

/// A fresh TLS handshake with `addr` for `name`, trusting only Pebble's root;
/// the serial of the leaf served (the chain is verified).
async fn served_serial(addr: SocketAddr, name: &str, root_der: &[u8]) -> String {
    let connector = TlsConnector::from(Arc::new(ring_client_config(root_der)));
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let chain: Vec<Vec<u8>> = bounded(STEP_BOUND, "handshake", async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector.connect(server_name, tcp).await?;
        Ok::<_, std::io::Error>(
            tls.get_ref()
                .1
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("handshake for {name} failed: {e}"));
    webpki_verify_chain(&chain, root_der, name).unwrap();
    serial_hex(&chain[0])
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// The `cert_failed` events so far, as `(attempt, retry_at)`.
fn failures(env: &Env) -> Vec<(u32, Option<SystemTime>)> {
    env.events()
        .iter()
        .filter_map(|e| match e {
            Event::CertFailed {
                attempt, retry_at, ..
            } => Some((*attempt, *retry_at)),
            _ => None,
        })
        .collect()
}

/// Asserts `retry_at` is `backoff` (±10 % jitter, ±1 s for rounding) after `now`.
fn assert_backoff(retry_at: SystemTime, now: SystemTime, backoff: Duration) {
    let delay = retry_at.duration_since(now).unwrap().as_secs_f64();
    let base = backoff.as_secs_f64();
    assert!(
        delay >= base * 0.9 - 1.0 && delay <= base * 1.1 + 1.0,
        "next retry {delay:.1}s after the failure, expected {base}s ±10 %"
    );
}

/// The retry schedule maintenance persisted for `name`, if any.
async fn stored_retry(storage: &Arc<dyn Storage>, name: &str) -> Option<serde_json::Value> {
    match storage
        .load(&format!("maintenance/retry/{name}.json"))
        .await
    {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap()),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("loading the retry schedule: {e}"),
    }
}

// ----- the proxy itself ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_pebble_urls_on_itself_and_adds_renewal_info() {
    let env = Env::with_proxy().await;
    let proxy = env.proxy();
    let client = bounded(
        STEP_BOUND,
        "directory",
        certauto::AcmeClient::builder(proxy.directory_url())
            .trust_roots([CertificateDer::from(proxy.https_ca_der())])
            .only_trusted_roots()
            .build(),
    )
    .await
    .unwrap();
    let dir = client.directory();
    let prefix = format!("https://{}/", proxy.addr());
    for url in [&dir.new_nonce, &dir.new_account, &dir.new_order] {
        assert!(
            url.starts_with(&prefix),
            "Pebble built {url} from the forwarded Host; expected it on the proxy"
        );
    }
    assert_eq!(
        dir.renewal_info.as_deref(),
        Some(proxy.renewal_info_url().as_str())
    );

    // Signed requests through the proxy work end to end (Pebble checks the
    // JWS url against Host), and newOrder is recorded.
    let config = env.config();
    let cert = manage(&config, "proxied.certauto.example").await;
    let orders = proxy.created_orders();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(
        orders[0].payload["identifiers"][0]["value"],
        "proxied.certauto.example"
    );
    assert_eq!(orders[0].replaces(), None, "a first order replaces nothing");
    let root = env.pebble.root_der(0).await;
    let stored = config
        .load(["proxied.certauto.example"])
        .await
        .unwrap()
        .unwrap();
    let chain: Vec<Vec<u8>> = stored.chain().iter().map(|c| c.to_vec()).collect();
    webpki_verify_chain(&chain, &root, "proxied.certauto.example").unwrap();
    assert_eq!(normalize_serial(cert.serial()), serial_hex(&chain[0]));

    // Outages: 503, then closed connections; both are transport-level failures.
    proxy.set_outage(Some(Outage::ServiceUnavailable));
    let unavailable = certauto::AcmeClient::builder(proxy.directory_url())
        .trust_roots([CertificateDer::from(proxy.https_ca_der())])
        .only_trusted_roots()
        .build()
        .await;
    assert!(unavailable.is_err());
    proxy.set_outage(Some(Outage::CloseConnections));
    let closed = certauto::AcmeClient::builder(proxy.directory_url())
        .trust_roots([CertificateDer::from(proxy.https_ca_der())])
        .only_trusted_roots()
        .build()
        .await;
    assert!(closed.is_err());
}

// ----- the renewal loop ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_renews_a_due_certificate_and_the_server_serves_it_without_restart() {
    init_tracing();
    const NAME: &str = "loop.certauto.example";
    // Short-lived certificates (a week), straight from Pebble. Pebble's own ARI
    // window is two thirds into the lifetime, one day either side, and maintenance
    // renews at a random time inside it; the clock is moved past its end (and into
    // the ratio window), where ARI and the ratio both say "now".
    let pebble = Pebble::builder()
        .certificate_validity_secs(7 * 86_400)
        .start()
        .await;
    let root = pebble.root_der(0).await;
    let env = Env::new(pebble, None);
    let (renewed_tx, mut renewed_rx) = tokio::sync::mpsc::unbounded_channel();
    let clock = env.clock.clone();
    let storage = env.storage();
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(env.issuer(storage))
        .clock(env.clock.clone())
        .renew_check_interval(Duration::from_millis(50))
        .on_event(move |e| {
            if let Event::CertRenewed { serial, .. } = e {
                // Back to the present: the new certificate is not due, so the
                // loop renews exactly once.
                clock.set(SystemTime::now());
                let _ = renewed_tx.send(serial.clone());
            }
        })
        .build();
    let old = manage(&config, NAME).await;
    let old_serial = normalize_serial(old.serial());
    let (addr, server) = serve(&config).await;
    assert_eq!(served_serial(addr, NAME, &root).await, old_serial);

    // Nothing is due yet; the loop checks every 50 ms.
    let maintenance = start_maintenance(&config);

    // Past Pebble's window (6/7 of the week has passed: day 6, the window ends
    // on day 5.67) and inside the ratio window.
    env.clock.set(past_pebbles_ari_window(&old));
    let renewed = bounded(ISSUE_BOUND, "the loop's renewal", renewed_rx.recv())
        .await
        .expect("the event channel stays open");
    let new_serial = normalize_serial(&renewed);
    assert_ne!(new_serial, old_serial);

    // The running server's next handshake shows the new certificate.
    assert_eq!(served_serial(addr, NAME, &root).await, new_serial);
    assert_eq!(cached_serial(&config, NAME), new_serial);
    assert_eq!(stored_serial(&config, NAME).await, new_serial);

    config.cache().stop();
    bounded(STEP_BOUND, "maintenance shutdown", maintenance).await;
    server.abort();
    assert!(
        renewed_rx.try_recv().is_err(),
        "the loop renewed more than once"
    );
    drop(env);
}

// ----- two processes -------------------------------------------------------

/// A running `maintain-node` process.
struct Node {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stdin: tokio::process::ChildStdin,
}

impl Node {
    fn spawn(env: &Env, ca_pem: &Path, name: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_maintain-node"))
            .arg("--storage")
            .arg(env.storage_dir())
            .arg("--directory")
            .arg(env.proxy().directory_url())
            .arg("--ca-pem")
            .arg(ca_pem)
            .arg("--http-port")
            .arg(env.pebble.http_port().to_string())
            .arg("--email")
            .arg(EMAIL)
            .arg("--name")
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn maintain-node");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stdin = child.stdin.take().unwrap();
        Node {
            child,
            stdout,
            stdin,
        }
    }

    async fn line(&mut self) -> String {
        bounded(
            PROCESS_BOUND,
            "a line from maintain-node",
            self.stdout.next_line(),
        )
        .await
        .unwrap()
        .expect("maintain-node exited early (see its stderr above)")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_file_storage_renew_a_name_once() {
    const NAME: &str = "cluster.certauto.example";
    let env = Env::with_proxy().await;
    let proxy = env.proxy();
    let config = env.config();
    let old = manage(&config, NAME).await;
    let old_serial = normalize_serial(old.serial());
    // The CA asks for this certificate to be replaced now (a window in the past).
    let now = SystemTime::now();
    proxy.set_ari_for(&ari_id(&old), AriAnswer::window(now - 2 * DAY, now - DAY));
    let ca_pem = env.dir.path().join("proxy-ca.pem");
    std::fs::write(&ca_pem, proxy.https_ca_pem()).unwrap();
    let orders_before = proxy.created_orders().len();

    let mut nodes = [
        Node::spawn(&env, &ca_pem, NAME),
        Node::spawn(&env, &ca_pem, NAME),
    ];
    for node in &mut nodes {
        let ready = node.line().await;
        assert_eq!(
            ready.strip_prefix("ready ").map(normalize_serial),
            Some(old_serial.clone()),
            "each process starts serving the stored certificate: {ready:?}"
        );
    }
    // Both renewal checks start together.
    for node in &mut nodes {
        node.stdin.write_all(b"go\n").await.unwrap();
        node.stdin.flush().await.unwrap();
    }
    let mut results = Vec::new();
    for node in &mut nodes {
        let line = node.line().await;
        let result: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let status = bounded(PROCESS_BOUND, "maintain-node exit", node.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "maintain-node failed: {status}");
        results.push(result);
    }

    let created = proxy.created_orders();
    assert_eq!(
        created.len() - orders_before,
        1,
        "two processes sharing storage must order once: {created:?}"
    );
    assert_eq!(renewal_replaces(proxy), Some(ari_id(&old)));
    let serials: Vec<String> = results
        .iter()
        .map(|r| normalize_serial(r["serial"].as_str().unwrap()))
        .collect();
    for result in &results {
        assert_eq!(result["renewed"], serde_json::json!([NAME]), "{result}");
        assert_eq!(result["failed"], serde_json::json!([]), "{result}");
    }
    assert_eq!(
        serials[0], serials[1],
        "both processes serve the same certificate"
    );
    assert_ne!(serials[0], old_serial);
    assert_eq!(stored_serial(&config, NAME).await, serials[0]);
}

// ----- the CA goes away ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_keeps_the_old_certificate_and_a_restart_resumes_the_backoff() {
    const NAME: &str = "outage.certauto.example";
    let env = Env::with_proxy().await;
    let proxy = env.proxy();
    let root = env.pebble.root_der(0).await;
    let storage = env.storage();

    // Process A obtains and serves the certificate.
    let a = env.config();
    let old = manage(&a, NAME).await;
    let old_serial = normalize_serial(old.serial());
    let (addr, server) = serve(&a).await;

    // Due by the ratio (the CA answers 404 to ARI); the CA disappears right
    // after accepting the new order.
    env.clock.set(inside_ratio_window(&old));
    proxy.outage_after_next_order(Outage::CloseConnections);
    let report = check(&a).await;
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(proxy.outage(), Some(Outage::CloseConnections));
    let failed_at = env.clock.now();

    // The old certificate still serves, from the cache and in handshakes.
    assert_eq!(cached_serial(&a, NAME), old_serial);
    assert_eq!(served_serial(addr, NAME, &root).await, old_serial);
    assert_eq!(stored_serial(&a, NAME).await, old_serial);

    // `cert_failed` with attempt 1 and a retry a minute (± jitter) later, persisted.
    let failed = failures(&env);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (attempt, retry_at) = failed[0];
    assert_eq!(attempt, 1);
    let retry_at = retry_at.expect("a retry is scheduled");
    assert_backoff(retry_at, failed_at, FIRST_BACKOFF);
    let schedule = stored_retry(&storage, NAME)
        .await
        .expect("retry schedule stored");
    assert_eq!(schedule["attempts"], 1);
    assert_eq!(schedule["next_attempt"], unix(retry_at));

    // Still before the retry time: nothing is attempted.
    let attempts_before = proxy.new_orders().len();
    let report = check(&a).await;
    assert_eq!(report.deferred, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(proxy.new_orders().len(), attempts_before);

    // Restart: A goes away; the CA is back; B starts on the same storage at
    // the same time. It serves the stored certificate and waits for the
    // stored retry time instead of ordering at once.
    a.cache().stop();
    server.abort();
    drop(a);
    proxy.set_outage(None);
    let b = env.config();
    let loaded = manage(&b, NAME).await;
    assert_eq!(normalize_serial(loaded.serial()), old_serial);
    let report = check(&b).await;
    assert_eq!(report.deferred, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(
        proxy.new_orders().len(),
        attempts_before,
        "a restarted process must not order before the stored retry time"
    );

    // Past the retry time, with the CA down again: attempt 2, two minutes later.
    proxy.set_outage(Some(Outage::CloseConnections));
    env.clock.set(retry_at + Duration::from_secs(1));
    let second_failure_at = env.clock.now();
    let report = check(&b).await;
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");
    let failed = failures(&env);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[1].0, 2);
    let retry_at = failed[1].1.expect("a retry is scheduled");
    assert_backoff(retry_at, second_failure_at, 2 * FIRST_BACKOFF);
    assert_eq!(stored_retry(&storage, NAME).await.unwrap()["attempts"], 2);
    assert_eq!(cached_serial(&b, NAME), old_serial);

    // The CA is back and the retry time has passed: renewed, schedule cleared.
    proxy.set_outage(None);
    env.clock.set(retry_at + Duration::from_secs(1));
    let report = check(&b).await;
    assert_eq!(report.renewed, vec![NAME.to_owned()], "{report:?}");
    let new_serial = cached_serial(&b, NAME);
    assert_ne!(new_serial, old_serial);
    assert_eq!(stored_serial(&b, NAME).await, new_serial);
    assert_eq!(stored_retry(&storage, NAME).await, None);
    assert_eq!(env.renewed_events(), 1);
    assert_eq!(renewal_replaces(proxy), Some(ari_id(&old)));
}

// ----- ARI from Pebble itself ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebbles_ari_window_is_honoured_and_pebble_accepts_the_replacement() {
    const NAME: &str = "ari-pebble.certauto.example";
    init_tracing();
    let env = Env::new(Pebble::builder().start().await, None);
    let config = env.config();
    let old = manage(&config, NAME).await;
    let old_id = ari_id(&old);
    let old_pem = config
        .load([NAME])
        .await
        .unwrap()
        .expect("stored after manage")
        .chain_pem()
        .to_owned();
    // Pebble's default window is two thirds into the 90-day lifetime, where the ratio
    // would renew as well; move it well before that, so only ARI explains a renewal.
    let t0 = env.clock.now();
    let (start, end) = (t0 + 10 * DAY, t0 + 12 * DAY);
    env.pebble.set_renewal_window(&old_pem, start, end).await;

    for at in [t0, t0 + 5 * DAY, start - Duration::from_secs(1)] {
        env.clock.set(at);
        let report = check(&config).await;
        assert!(
            report.due.is_empty(),
            "not due before the window: {report:?}"
        );
    }
    // Walk through the window in 4-hour steps (Pebble's Retry-After is six hours, so the
    // window is fetched again on the way), ending exactly at its end.
    let step = 4 * HOUR;
    let mut renewed_at = None;
    for k in 0..=12 {
        let at = start + step * k;
        env.clock.set(at);
        let report = check(&config).await;
        if !report.renewed.is_empty() {
            assert_eq!(report.renewed, vec![NAME.to_owned()]);
            renewed_at = Some(at);
            break;
        }
    }
    let renewed_at = renewed_at.expect("renewed by the end of Pebble's window");
    assert!(renewed_at >= start && renewed_at <= end);
    assert_eq!(env.renewed_events(), 1);
    let new = cached(&config, NAME);
    assert_ne!(new.serial(), old.serial());
    // The renewal order named the old certificate in `replaces`, and Pebble took it.
    let log = env.pebble.pebble_log();
    assert_eq!(log.matches("is a replacement of").count(), 1, "{log}");

    // Pebble's own window for the new certificate: two thirds into its lifetime, one day
    // either side of that. Not due now.
    let info = env
        .issuer(env.storage())
        .renewal_info(&ari_id(&new))
        .await
        .unwrap()
        .expect("Pebble offers renewalInfo");
    let lifetime = new.not_after().duration_since(new.not_before()).unwrap();
    let ideal = new.not_after() - lifetime / 3;
    for (got, want) in [
        (info.window_start, ideal - DAY),
        (info.window_end, ideal + DAY),
    ] {
        let off = got
            .duration_since(want)
            .unwrap_or_else(|e| e.duration())
            .as_secs();
        assert!(off <= 2, "window edge {got:?}, expected about {want:?}");
    }
    assert!(info.retry_after.is_some());
    let report = check(&config).await;
    assert!(report.due.is_empty(), "{report:?}");
    assert_ne!(ari_id(&new), old_id);
}

// ----- ARI through the fault injector -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ari_window_in_the_past_renews_now_and_replaces_the_old_certificate() {
    const NAME: &str = "ari-past.certauto.example";
    let env = Env::with_proxy().await;
    let proxy = env.proxy();
    let config = env.config();
    let old = manage(&config, NAME).await;
    let old_id = ari_id(&old);
    let now = env.clock.now();
    // Only the old certificate is to be replaced (others get 404: the ratio rules).
    proxy.set_ari_for(&old_id, AriAnswer::window(now - 2 * DAY, now - DAY));

    let report = check(&config).await;
    assert_eq!(report.renewed, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(proxy.renewal_info_requests(), vec![old_id.clone()]);
    let orders = proxy.created_orders();
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert_eq!(renewal_replaces(proxy), Some(old_id.clone()));
    let new = cached(&config, NAME);
    assert_ne!(new.serial(), old.serial());

    // The new certificate is asked about in turn and is not due.
    let report = check(&config).await;
    assert!(report.due.is_empty(), "{report:?}");
    assert_eq!(proxy.renewal_info_requests().last(), Some(&ari_id(&new)));
    assert_eq!(proxy.created_orders().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ari_window_in_the_future_renews_at_a_random_time_inside_it() {
    const NAME: &str = "ari-future.certauto.example";
    let env = Env::with_proxy().await;
    let proxy = env.proxy();
    let config = env.config();
    let old = manage(&config, NAME).await;
    let old_id = ari_id(&old);
    let t0 = env.clock.now();
    let (start, end) = (t0 + 10 * DAY, t0 + 12 * DAY);
    proxy.set_ari_for(&old_id, AriAnswer::window(start, end));

    for at in [t0, t0 + 5 * DAY, start - Duration::from_secs(1)] {
        env.clock.set(at);
        let report = check(&config).await;
        assert!(
            report.due.is_empty(),
            "not due before the window: {report:?}"
        );
    }
    assert!(!proxy.renewal_info_requests().is_empty());

    // Walk through the window in 4-hour steps, ending exactly at its end.
    let step = 4 * HOUR;
    let steps = 12; // 48 hours
    let mut renewed_at = None;
    for k in 0..=steps {
        let at = start + step * k;
        env.clock.set(at);
        let report = check(&config).await;
        if !report.renewed.is_empty() {
            assert_eq!(report.renewed, vec![NAME.to_owned()]);
            renewed_at = Some(at);
            break;
        }
    }
    let renewed_at = renewed_at.expect("renewed by the end of the window");
    assert!(renewed_at >= start && renewed_at <= end);
    let orders = proxy.created_orders();
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert_eq!(renewal_replaces(proxy), Some(old_id.clone()));
    assert_eq!(env.renewed_events(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_retry_after_is_honoured() {
    const NAME: &str = "ari-retry-after.certauto.example";
    let env = Env::with_proxy().await;
    let proxy = env.proxy();
    let config = env.config();
    let old = manage(&config, NAME).await;
    let old_id = ari_id(&old);
    let t0 = env.clock.now();
    proxy.set_ari_for(
        &old_id,
        AriAnswer::window(t0 + 10 * DAY, t0 + 12 * DAY).retry_after(2 * 3600),
    );

    assert!(check(&config).await.due.is_empty());
    assert_eq!(proxy.renewal_info_requests().len(), 1);
    // Before Retry-After has passed, the window is not asked for again.
    for at in [t0 + HOUR, t0 + 2 * HOUR - Duration::from_secs(1)] {
        env.clock.set(at);
        assert!(check(&config).await.due.is_empty());
        assert_eq!(
            proxy.renewal_info_requests().len(),
            1,
            "asked again at {at:?}"
        );
    }
    // Once it has, it is; the CA now says the window is in the past.
    proxy.set_ari_for(&old_id, AriAnswer::window(t0 - 2 * DAY, t0 - DAY));
    env.clock.set(t0 + 2 * HOUR + Duration::from_secs(1));
    let report = check(&config).await;
    assert_eq!(proxy.renewal_info_requests().len(), 2);
    assert_eq!(report.renewed, vec![NAME.to_owned()], "{report:?}");
}

/// The `replaces` the last renewal asked for: that of the last newOrder
/// request carrying one, created or not. Pebble 2.10 refuses a `replaces`
/// whose serial starts with a zero byte (it drops the byte when matching the
/// CertID), and the issuer then orders again without it, so the order Pebble
/// created may lack it although the renewal sent it.
fn renewal_replaces(proxy: &AriProxy) -> Option<String> {
    proxy
        .new_orders()
        .iter()
        .rev()
        .find_map(|o| o.replaces().map(str::to_owned))
}

/// A malformed or failing ARI answer: the ratio decides.
async fn ari_failure_falls_back_to_the_ratio(name: &str, answer: AriAnswer) {
    let env = Env::with_proxy().await;
    let proxy = env.proxy();
    proxy.set_ari(answer);
    let config = env.config();
    let old = manage(&config, name).await;

    // Outside the ratio window: asked, failed, not due.
    let report = check(&config).await;
    assert!(report.due.is_empty(), "{report:?}");
    assert_eq!(proxy.renewal_info_requests(), vec![ari_id(&old)]);
    assert_eq!(proxy.created_orders().len(), 1);

    // A day later, still outside the ratio window: still not due.
    env.clock.set(env.clock.now() + DAY);
    assert!(check(&config).await.due.is_empty());

    // Inside it: renewed, still telling the CA what it replaces.
    env.clock.set(inside_ratio_window(&old));
    let report = check(&config).await;
    assert_eq!(report.renewed, vec![name.to_owned()], "{report:?}");
    let orders = proxy.created_orders();
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert_eq!(renewal_replaces(proxy), Some(ari_id(&old)));
    assert!(proxy.renewal_info_requests().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_ari_answer_falls_back_to_the_ratio() {
    ari_failure_falls_back_to_the_ratio("ari-malformed.certauto.example", AriAnswer::Malformed)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ari_404_falls_back_to_the_ratio() {
    ari_failure_falls_back_to_the_ratio("ari-404.certauto.example", AriAnswer::NotFound).await;
}

// ----- storage cleaning ------------------------------------------------------

/// Storage cleaning on certificates from Pebble: with the clock past their
/// expiry and the grace period, a pass removes the record of a name no
/// config here manages any more, and keeps the managed name's record (expired
/// too: maintenance renews it) with its serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleaning_keeps_the_managed_names_record_and_removes_an_unmanaged_one() {
    const NAME: &str = "clean-kept.certauto.example";
    const GONE: &str = "clean-gone.certauto.example";
    init_tracing();
    let env = Env::new(Pebble::builder().start().await, None);
    // An earlier deployment managed GONE; this one manages NAME only.
    let earlier = env.config();
    let gone = manage(&earlier, GONE).await;
    earlier.cache().stop();
    let config = env.config();
    let kept = manage(&config, NAME).await;
    let kept_serial = stored_serial(&config, NAME).await;
    let grace = config.storage_cleaning().get_expired_grace();
    let past = kept.not_after().max(gone.not_after()) + grace + HOUR;
    env.clock.set(past);

    let report = bounded(ISSUE_BOUND, "clean_storage", config.clean_storage())
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(!report.lock_lost, "{report:?}");
    let certificates = format!("{}/", certauto::storage::keys::CERTIFICATES_PREFIX);
    assert!(!report.certificates.is_empty(), "{report:?}");
    assert!(
        report
            .certificates
            .iter()
            .all(|key| key.starts_with(&certificates) && key.contains(GONE)),
        "only {GONE}'s keys: {report:?}"
    );
    assert!(config.load([GONE]).await.unwrap().is_none(), "{report:?}");
    assert_eq!(stored_serial(&config, NAME).await, kept_serial);
    assert_eq!(
        cached_serial(&config, NAME),
        normalize_serial(kept.serial())
    );
    config.cache().stop();
}
