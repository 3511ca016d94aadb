//! The `metrics` feature end to end, with `metrics-util`'s debugging
//! recorder (process-global: this file is its own test binary, and its tests
//! run one at a time) against a real Pebble: an obtain, renewals (forced, by
//! the ratio, in Pebble's ARI window), a failure (an unreachable CA), and
//! on-demand TLS allowing one name and refusing another during real TLS
//! handshakes. Each test compares snapshots taken before and after, and checks
//! label values exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::get;
use certauto::metrics as m;
use certauto::{
    AcmeIssuer, Clock, Config, Http01Solver, Issuer, ManualClock, MemoryStorage, OnDemandConfig,
};
use certauto_tests::{Pebble, init_tracing};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// Upper bound on one step (never a timed assertion: a hang fails the test).
const STEP_BOUND: Duration = Duration::from_secs(180);
const DAY: Duration = Duration::from_secs(24 * 3600);

async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP_BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_BOUND:?}"))
}

/// The tests share the global recorder and metrics without per-test
/// labels: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The recorder, installed once for this binary.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other metrics recorder in this test binary");
        snapshotter
    })
}

/// A metric's name and its labels (sorted).
type Series = (String, Vec<(String, String)>);

/// Every series with its value: counters and gauges as numbers, histograms
/// as the samples recorded since the previous snapshot.
#[derive(Debug, Default)]
struct Snap {
    counters: BTreeMap<Series, u64>,
    gauges: BTreeMap<Series, f64>,
    histograms: BTreeMap<Series, Vec<f64>>,
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// Counters since the recorder was installed: the debugging recorder's
/// snapshot hands out what was recorded since the previous snapshot (it
/// swaps counters and gauges to zero and drains histograms), so counters
/// are summed here; gauges and histograms are as read (a gauge once read
/// reads zero until it is set again).
static COUNTERS: std::sync::Mutex<BTreeMap<Series, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn snapshot() -> Snap {
    let mut snap = Snap::default();
    let mut counters = COUNTERS.lock().unwrap();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let id = (key.name().to_owned(), labels);
        match value {
            DebugValue::Counter(v) => {
                *counters.entry(id).or_default() += v;
            }
            DebugValue::Gauge(v) => {
                snap.gauges.insert(id, v.into_inner());
            }
            DebugValue::Histogram(v) => {
                snap.histograms
                    .insert(id, v.into_iter().map(|f| f.into_inner()).collect());
            }
        }
    }
    snap.counters = counters.clone();
    snap
}

impl Snap {
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .get(&series(name, labels))
            .copied()
            .unwrap_or(0)
    }

    /// How much `name{labels}` grew since `before`.
    fn delta(&self, before: &Snap, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counter(name, labels) - before.counter(name, labels)
    }

    /// Every counter of `name` that grew since `before`, with its growth.
    fn grown(&self, before: &Snap, name: &str) -> BTreeMap<Vec<(String, String)>, u64> {
        self.counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .filter_map(|((_, labels), v)| {
                let was = before
                    .counters
                    .get(&(name.to_owned(), labels.clone()))
                    .copied()
                    .unwrap_or(0);
                (*v > was).then(|| (labels.clone(), v - was))
            })
            .collect()
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.gauges.get(&series(name, labels)).copied()
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.histograms
            .get(&series(name, labels))
            .map_or(0, Vec::len)
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    series("", pairs).1
}

fn seconds_until(not_after: SystemTime, now: SystemTime) -> f64 {
    match not_after.duration_since(now) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    }
}

/// Pebble (no random `badNonce`, so request counts are exact) and an issuer for it.
async fn pebble_and_issuer(storage: &Arc<MemoryStorage>) -> (Pebble, AcmeIssuer) {
    let pebble = Pebble::builder().nonce_reject_percent(0).start().await;
    let issuer = AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email("metrics@certauto.example")
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .storage(storage.clone())
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            pebble.http_port(),
        ))))
        .build();
    (pebble, issuer)
}

/// The in-flight and lock-wait gauges: as many decrements as increments
/// since the previous snapshot (nothing runs, nothing leaked).
fn assert_idle(snap: &Snap) {
    for gauge in [m::ISSUANCES_IN_FLIGHT, m::LOCK_WAITS] {
        assert_eq!(snap.gauge(gauge, &[]), Some(0.0), "{gauge}");
    }
}

/// An obtain, then renewals forced, by the ratio and in Pebble's ARI window:
/// each counted once with its issuer, result and reason; the duration
/// histogram, every ACME request by endpoint and status, the expiry gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtain_and_renewals_are_counted_with_their_reasons() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    snapshotter();
    const NAME: &str = "renewed.metrics.example";
    let storage = Arc::new(MemoryStorage::new());
    let (pebble, issuer) = pebble_and_issuer(&storage).await;
    let issuer_key = issuer.issuer_key();
    let t0 = SystemTime::now();
    let clock = Arc::new(ManualClock::new(t0));
    let config = Config::builder()
        .storage(storage.clone())
        .clock(clock.clone())
        .issuer(issuer)
        .build();
    let ik = issuer_key.as_str();

    // The first obtain (manage: maintenance's path).
    let before = snapshot();
    bounded("manage", config.manage([NAME])).await.unwrap();
    let after = snapshot();
    assert_eq!(
        after.grown(&before, m::OBTAINS_TOTAL),
        BTreeMap::from([(
            labels(&[("issuer", ik), ("result", "success"), ("reason", "new")]),
            1
        )])
    );
    assert!(after.grown(&before, m::RENEWALS_TOTAL).is_empty());
    assert_eq!(
        after.samples(
            m::ISSUANCE_DURATION_SECONDS,
            &[("issuer", ik), ("result", "success")]
        ),
        1
    );
    // Every request of a first order: the directory, a nonce, the account,
    // the order, its authorization (fetched, then polled), the challenge,
    // finalize, the order polled, the certificate.
    let requests = after.grown(&before, m::ACME_REQUESTS_TOTAL);
    let count = |endpoint: &str, status: &str| {
        requests
            .get(&labels(&[("endpoint", endpoint), ("status", status)]))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("directory", "200"), 1, "{requests:?}");
    assert_eq!(count("new_nonce", "200"), 1, "{requests:?}");
    assert_eq!(count("new_account", "201"), 1, "{requests:?}");
    assert_eq!(count("new_order", "201"), 1, "{requests:?}");
    assert_eq!(count("challenge", "200"), 1, "{requests:?}");
    assert_eq!(count("finalize", "200"), 1, "{requests:?}");
    assert_eq!(count("certificate", "200"), 1, "{requests:?}");
    assert!(count("authorization", "200") >= 2, "{requests:?}");
    assert!(count("order", "200") >= 1, "{requests:?}");
    let endpoints = [
        "directory",
        "new_nonce",
        "new_account",
        "new_order",
        "authorization",
        "challenge",
        "finalize",
        "order",
        "certificate",
        "renewal_info",
    ];
    for labels in requests.keys() {
        let endpoint = &labels[0];
        let status = &labels[1];
        assert_eq!(
            (endpoint.0.as_str(), status.0.as_str()),
            ("endpoint", "status")
        );
        assert!(endpoints.contains(&endpoint.1.as_str()), "{requests:?}");
        assert!(matches!(status.1.as_str(), "200" | "201"), "{requests:?}");
    }
    assert_idle(&after);
    let cert = config.load([NAME]).await.unwrap().unwrap();
    assert_eq!(
        after.gauge(m::CERTIFICATE_EXPIRY_SECONDS, &[("name", NAME)]),
        Some(seconds_until(cert.not_after(), t0))
    );

    // Forced.
    let before = snapshot();
    let forced = bounded("force_renew", config.force_renew([NAME]))
        .await
        .unwrap();
    let after = snapshot();
    assert_eq!(
        after.grown(&before, m::RENEWALS_TOTAL),
        BTreeMap::from([(
            labels(&[("issuer", ik), ("result", "success"), ("reason", "forced")]),
            1
        )])
    );
    assert!(after.grown(&before, m::OBTAINS_TOTAL).is_empty());
    assert_eq!(
        after.delta(
            &before,
            m::ACME_REQUESTS_TOTAL,
            &[("endpoint", "new_account"), ("status", "201")]
        ),
        0,
        "the account is reused"
    );
    assert_eq!(
        after.gauge(m::CERTIFICATE_EXPIRY_SECONDS, &[("name", NAME)]),
        Some(seconds_until(forced.not_after(), t0))
    );

    // Due by the ratio (Pebble's certificates live 5 years by default;
    // its default ARI window is two thirds in, the ratio's one third left
    // comes first only for `renew`, which looks at the ratio alone).
    let lifetime = forced
        .not_after()
        .duration_since(forced.not_before())
        .unwrap();
    let due = forced.not_before() + lifetime.mul_f64(0.8);
    clock.set(due);
    let before = snapshot();
    let by_ratio = bounded("renew", config.renew([NAME])).await.unwrap();
    let after = snapshot();
    assert_ne!(by_ratio.serial_hex(), forced.serial_hex());
    assert_eq!(
        after.grown(&before, m::RENEWALS_TOTAL),
        BTreeMap::from([(
            labels(&[
                ("issuer", ik),
                ("result", "success"),
                ("reason", "ratio_window")
            ]),
            1
        )])
    );
    assert_eq!(
        after.gauge(m::CERTIFICATE_EXPIRY_SECONDS, &[("name", NAME)]),
        Some(seconds_until(by_ratio.not_after(), due))
    );

    // In Pebble's ARI window, moved to well before the ratio: the
    // maintenance check renews, for that reason, and asked for the window.
    clock.set(t0);
    let now = clock.now();
    pebble
        .set_renewal_window(by_ratio.chain_pem(), now + DAY, now + 2 * DAY)
        .await;
    let before = snapshot();
    let report = bounded("check", config.check_renewals()).await;
    assert!(report.due.is_empty(), "{report:?}");
    let after = snapshot();
    assert_eq!(
        after.delta(
            &before,
            m::ACME_REQUESTS_TOTAL,
            &[("endpoint", "renewal_info"), ("status", "200")]
        ),
        1
    );
    // The refresh counts from the clock's now.
    assert_eq!(
        after.gauge(m::CERTIFICATE_EXPIRY_SECONDS, &[("name", NAME)]),
        Some(seconds_until(by_ratio.not_after(), now))
    );
    clock.set(now + 3 * DAY);
    let before = snapshot();
    let report = bounded("check", config.check_renewals()).await;
    assert_eq!(report.renewed, [NAME], "{report:?}");
    let after = snapshot();
    assert_eq!(
        after.grown(&before, m::RENEWALS_TOTAL),
        BTreeMap::from([(
            labels(&[
                ("issuer", ik),
                ("result", "success"),
                ("reason", "ari_window")
            ]),
            1
        )])
    );
    assert_idle(&after);

    // Revoked and removed: the series leaves with NaN.
    bounded("revoke", config.revoke(NAME, None)).await.unwrap();
    let gone = snapshot().gauge(m::CERTIFICATE_EXPIRY_SECONDS, &[("name", NAME)]);
    assert!(gone.is_some_and(f64::is_nan), "{gone:?}");
    let after = snapshot();
    assert_eq!(
        after.delta(
            &before,
            m::ACME_REQUESTS_TOTAL,
            &[("endpoint", "revoke"), ("status", "200")]
        ),
        1,
        "{:?}",
        after.grown(&before, m::ACME_REQUESTS_TOTAL)
    );
    config.cache().stop();
}

/// An unreachable CA: the obtain fails, counted for its issuer with the
/// reason it ran; the directory request as `error`, sent three times
/// (two transport retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_obtain_and_transport_errors_are_counted() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    snapshotter();
    // A port nothing listens on: bound, then closed.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let storage = Arc::new(MemoryStorage::new());
    let issuer = AcmeIssuer::builder()
        .ca(format!("https://127.0.0.1:{port}/dir"))
        .email("metrics@certauto.example")
        .agreed(true)
        .only_trusted_roots()
        .storage(storage.clone())
        .build();
    let issuer_key = issuer.issuer_key();
    let config = Config::builder().storage(storage).issuer(issuer).build();
    let before = snapshot();
    let err = bounded("obtain", config.obtain(["down.metrics.example"]))
        .await
        .unwrap_err();
    let after = snapshot();
    assert_eq!(
        after.grown(&before, m::OBTAINS_TOTAL),
        BTreeMap::from([(
            labels(&[
                ("issuer", issuer_key.as_str()),
                ("result", "failure"),
                ("reason", "new")
            ]),
            1
        )]),
        "{err}"
    );
    assert_eq!(
        after.samples(
            m::ISSUANCE_DURATION_SECONDS,
            &[("issuer", issuer_key.as_str()), ("result", "failure")]
        ),
        1
    );
    assert_eq!(
        after.grown(&before, m::ACME_REQUESTS_TOTAL),
        BTreeMap::from([(labels(&[("endpoint", "directory"), ("status", "error")]), 3)])
    );
    assert_eq!(
        after.gauge(
            m::CERTIFICATE_EXPIRY_SECONDS,
            &[("name", "down.metrics.example")]
        ),
        None
    );
    assert_idle(&after);
}

fn trusting(root_der: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS handshake for `name`: whether it succeeded.
async fn handshake(addr: SocketAddr, name: &str, client: Arc<ClientConfig>) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(client)
        .connect(server_name, tcp)
        .await
        .is_ok()
}

/// On-demand TLS behind axum: a name outside the allowlist is denied
/// during a real handshake (which fails: a lookup miss); an allowed one is
/// obtained (reason `on_demand`) and then served (a hit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_decisions_and_handshake_lookups_are_counted() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    snapshotter();
    let storage = Arc::new(MemoryStorage::new());
    let (pebble, issuer) = pebble_and_issuer(&storage).await;
    let issuer_key = issuer.issuer_key();
    let root = pebble.root_der(0).await;
    let config = Config::builder()
        .storage(storage)
        .issuer(issuer)
        .on_demand(
            OnDemandConfig::new()
                .host_allowlist(["*.allowed.metrics.example"])
                .unwrap(),
        )
        .build();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "hello" }));
    let serve = certauto_axum::serve(tcp, app, &config).unwrap();
    tokio::spawn(async move { serve.into_future().await.unwrap() });
    let client = trusting(&root);

    let before = snapshot();
    let refused = bounded(
        "refused handshake",
        handshake(addr, "other.metrics.example", client.clone()),
    )
    .await;
    assert!(!refused, "no certificate for a name outside the allowlist");
    let after = snapshot();
    assert_eq!(
        after.grown(&before, m::ON_DEMAND_DECISIONS_TOTAL),
        BTreeMap::from([(labels(&[("decision", "denied")]), 1)])
    );
    assert_eq!(
        after.grown(&before, m::HANDSHAKE_LOOKUPS_TOTAL),
        BTreeMap::from([(labels(&[("result", "miss")]), 1)])
    );
    assert!(after.grown(&before, m::OBTAINS_TOTAL).is_empty());
    assert!(after.grown(&before, m::ACME_REQUESTS_TOTAL).is_empty());

    let name = "a.allowed.metrics.example";
    let before = snapshot();
    assert!(bounded("allowed handshake", handshake(addr, name, client.clone())).await);
    assert!(bounded("second handshake", handshake(addr, name, client)).await);
    let after = snapshot();
    assert_eq!(
        after.grown(&before, m::ON_DEMAND_DECISIONS_TOTAL),
        BTreeMap::from([(labels(&[("decision", "allowed")]), 1)])
    );
    assert_eq!(
        after.grown(&before, m::OBTAINS_TOTAL),
        BTreeMap::from([(
            labels(&[
                ("issuer", issuer_key.as_str()),
                ("result", "success"),
                ("reason", "on_demand")
            ]),
            1
        )])
    );
    assert_eq!(
        after.grown(&before, m::HANDSHAKE_LOOKUPS_TOTAL),
        BTreeMap::from([(labels(&[("result", "hit")]), 2)])
    );
    assert_idle(&after);
    config.cache().stop();
}

/// Without the per-certificate gauge (fleets with very many names), an
/// obtain sets no expiry series; the other metrics are still recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_gauge_can_be_switched_off() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    snapshotter();
    let storage = Arc::new(MemoryStorage::new());
    let (_pebble, issuer) = pebble_and_issuer(&storage).await;
    let issuer_key = issuer.issuer_key();
    let config = Config::builder()
        .storage(storage)
        .issuer(issuer)
        .without_certificate_expiry_metric()
        .build();
    let name = "quiet.metrics.example";
    let before = snapshot();
    bounded("obtain", config.obtain([name])).await.unwrap();
    let after = snapshot();
    assert_eq!(
        after.gauge(m::CERTIFICATE_EXPIRY_SECONDS, &[("name", name)]),
        None
    );
    assert_eq!(
        after.delta(
            &before,
            m::OBTAINS_TOTAL,
            &[
                ("issuer", issuer_key.as_str()),
                ("result", "success"),
                ("reason", "new")
            ]
        ),
        1
    );
    config.cache().stop();
}
