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

/// The in-flight and lock-wait gauges as changed since a baseline: the
/// debugging recorder hands out each gauge's change since the previous
/// snapshot (it swaps it to zero), so the changes are summed here.
struct Gauges {
    net: BTreeMap<&'static str, f64>,
    /// Each gauge's change in the latest snapshot.
    last: BTreeMap<&'static str, f64>,
}

impl Gauges {
    const WATCHED: [&'static str; 2] = [m::ISSUANCES_IN_FLIGHT, m::LOCK_WAITS];

    /// Starts from now: the changes before are read and dropped.
    fn baseline() -> Self {
        let mut gauges = Self {
            net: BTreeMap::new(),
            last: BTreeMap::new(),
        };
        gauges.read();
        gauges.net.clear();
        gauges
    }

    fn read(&mut self) {
        let snap = snapshot();
        for gauge in Self::WATCHED {
            let change = snap.gauge(gauge, &[]).unwrap_or(0.0);
            *self.net.entry(gauge).or_default() += change;
            self.last.insert(gauge, change);
        }
    }

    fn net(&self, gauge: &str) -> f64 {
        self.net.get(gauge).copied().unwrap_or(0.0)
    }

    fn last(&self, gauge: &str) -> f64 {
        self.last.get(gauge).copied().unwrap_or(0.0)
    }

    /// Reads until `gauge` has risen since the baseline, yielding to the
    /// spawned tasks in between (a current-thread runtime: they run only
    /// there, so a read never falls in the middle of one's step). Bounded
    /// in count; no sleeps.
    async fn until_raised(&mut self, gauge: &str) {
        for _ in 0..10_000 {
            self.read();
            if self.net(gauge) != 0.0 {
                // One more round: whatever the step that raised it did
                // next is in too.
                tokio::task::yield_now().await;
                self.read();
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{gauge} never rose: {:?}", self.net);
    }
}

/// An issuer whose `issue` blocks until the test lets it go (it never
/// does here: the tasks are cancelled), so an issuance is observably in
/// flight while it holds the certificate's lock.
#[derive(Debug, Default)]
struct Blocked {
    gate: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Issuer for Blocked {
    fn issuer_key(&self) -> String {
        "blocked".to_owned()
    }

    async fn issue(
        &self,
        _request: &certauto::IssueRequest<'_>,
    ) -> Result<certauto::IssuedCertificate, certauto::Error> {
        self.gate.notified().await;
        Err(certauto::Error::Other {
            context: "the blocked test issuer",
            source: "let go".into(),
        })
    }

    async fn revoke(
        &self,
        _certificate: &certauto::Certificate,
        _reason: Option<certauto::RevocationReason>,
    ) -> Result<(), certauto::Error> {
        Ok(())
    }
}

/// The gauges observed, not only their balance: an obtain blocked inside
/// its issuer reads `certauto_issuances_in_flight` exactly 1; a second
/// `Config` on the same storage waiting for that certificate's lock reads
/// `certauto_lock_waits` exactly 1 (one task, counted once); cancelling
/// each task takes its one back.
#[tokio::test]
async fn gauges_read_one_while_waiting_or_issuing_and_go_back_on_cancel() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    snapshotter();
    const NAME: &str = "gauges.metrics.example";
    let storage = Arc::new(MemoryStorage::new());
    let blocked = Arc::new(Blocked::default());
    let holder = Config::builder()
        .storage(storage.clone())
        .issuer(ArcIssuer(blocked.clone()))
        .build();
    let waiter = Config::builder()
        .storage(storage.clone())
        .issuer(ArcIssuer(blocked.clone()))
        .build();
    let mut gauges = Gauges::baseline();

    // The holder: in its issuer, holding the certificate's lock.
    let issuing = tokio::spawn({
        let holder = holder.clone();
        async move { holder.obtain([NAME]).await }
    });
    gauges.until_raised(m::ISSUANCES_IN_FLIGHT).await;
    assert_eq!(gauges.net(m::ISSUANCES_IN_FLIGHT), 1.0, "{:?}", gauges.net);
    assert_eq!(gauges.net(m::LOCK_WAITS), 0.0, "{:?}", gauges.net);

    // The waiter: another instance on the same storage waits for the lock.
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.obtain([NAME]).await }
    });
    gauges.until_raised(m::LOCK_WAITS).await;
    assert_eq!(gauges.net(m::LOCK_WAITS), 1.0, "{:?}", gauges.net);
    assert_eq!(gauges.net(m::ISSUANCES_IN_FLIGHT), 1.0, "{:?}", gauges.net);

    // Cancelled while waiting: the wait is taken back.
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    gauges.read();
    assert_eq!(gauges.last(m::LOCK_WAITS), -1.0, "{:?}", gauges.last);
    assert_eq!(gauges.net(m::LOCK_WAITS), 0.0, "{:?}", gauges.net);
    assert_eq!(gauges.net(m::ISSUANCES_IN_FLIGHT), 1.0, "{:?}", gauges.net);

    // Cancelled mid-issuance: the issuance is taken back.
    issuing.abort();
    assert!(issuing.await.unwrap_err().is_cancelled());
    gauges.read();
    assert_eq!(
        gauges.last(m::ISSUANCES_IN_FLIGHT),
        -1.0,
        "{:?}",
        gauges.last
    );
    assert_eq!(gauges.net(m::ISSUANCES_IN_FLIGHT), 0.0, "{:?}", gauges.net);
    assert_eq!(gauges.net(m::LOCK_WAITS), 0.0, "{:?}", gauges.net);
    holder.cache().stop();
    waiter.cache().stop();
}

/// The storage-cleaning lock counts as a lock wait too (every storage lock
/// CertAuto takes does): a clean waiting for the lock another instance
/// holds reads `certauto_lock_waits` exactly 1, and its cancellation takes
/// it back.
#[tokio::test]
async fn a_storage_clean_waiting_for_its_lock_is_a_lock_wait() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    snapshotter();
    let storage = Arc::new(MemoryStorage::new());
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(ArcIssuer(Arc::new(Blocked::default())))
        .build();
    // Another instance on the same storage is cleaning.
    let held = certauto::Storage::lock(
        storage.as_ref(),
        certauto::storage::keys::STORAGE_CLEAN_LOCK,
    )
    .await
    .unwrap();
    let mut gauges = Gauges::baseline();
    let cleaning = tokio::spawn({
        let config = config.clone();
        async move { config.clean_storage().await }
    });
    gauges.until_raised(m::LOCK_WAITS).await;
    assert_eq!(gauges.net(m::LOCK_WAITS), 1.0, "{:?}", gauges.net);
    cleaning.abort();
    assert!(cleaning.await.unwrap_err().is_cancelled());
    gauges.read();
    assert_eq!(gauges.last(m::LOCK_WAITS), -1.0, "{:?}", gauges.last);
    assert_eq!(gauges.net(m::LOCK_WAITS), 0.0, "{:?}", gauges.net);
    held.release().await.unwrap();
    config.cache().stop();
}

/// Shares one [`Blocked`] between two `Config`s.
#[derive(Debug)]
struct ArcIssuer(Arc<Blocked>);

#[async_trait::async_trait]
impl Issuer for ArcIssuer {
    fn issuer_key(&self) -> String {
        self.0.issuer_key()
    }

    async fn issue(
        &self,
        request: &certauto::IssueRequest<'_>,
    ) -> Result<certauto::IssuedCertificate, certauto::Error> {
        self.0.issue(request).await
    }

    async fn revoke(
        &self,
        certificate: &certauto::Certificate,
        reason: Option<certauto::RevocationReason>,
    ) -> Result<(), certauto::Error> {
        self.0.revoke(certificate, reason).await
    }
}

/// An obtain no configured issuer accepts (a wildcard, only HTTP-01): it
/// fails before any issuer is asked, counted once with `issuer="none"` and
/// reported once with `CertFailed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_obtain_before_any_issuer_is_counted_once() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    snapshotter();
    let storage = Arc::new(MemoryStorage::new());
    // Never contacted: the precheck refuses first.
    let issuer = AcmeIssuer::builder()
        .ca("https://127.0.0.1:9/dir")
        .email("metrics@certauto.example")
        .agreed(true)
        .only_trusted_roots()
        .storage(storage.clone())
        .http01_solver(Http01Solver::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .build();
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let config = Config::builder()
        .storage(storage)
        .issuer(issuer)
        .on_event({
            let failed = failed.clone();
            move |e| {
                if let certauto::Event::CertFailed { names, renewal, .. } = e {
                    failed.lock().unwrap().push((names.clone(), *renewal));
                }
            }
        })
        .build();
    let before = snapshot();
    let err = bounded("obtain", config.obtain(["*.wild.metrics.example"]))
        .await
        .unwrap_err();
    let after = snapshot();
    assert_eq!(
        after.grown(&before, m::OBTAINS_TOTAL),
        BTreeMap::from([(
            labels(&[
                ("issuer", m::NO_ISSUER),
                ("result", "failure"),
                ("reason", "new")
            ]),
            1
        )]),
        "{err}"
    );
    assert!(after.grown(&before, m::RENEWALS_TOTAL).is_empty());
    assert!(after.grown(&before, m::ACME_REQUESTS_TOTAL).is_empty());
    assert_eq!(
        *failed.lock().unwrap(),
        [(vec!["*.wild.metrics.example".to_owned()], false)],
        "{err}"
    );
    config.cache().stop();
}

/// A recorder that counts registrations of each counter and what was
/// added to it, for one test through `metrics::with_local_recorder`.
#[derive(Debug, Default)]
struct Registrations {
    counters: std::sync::Mutex<BTreeMap<String, (u64, Arc<std::sync::atomic::AtomicU64>)>>,
}

impl Registrations {
    /// (times registered, total added) of `name{label}`.
    fn get(&self, name: &str, label: (&str, &str)) -> (u64, u64) {
        let key = format!("{name}{{{}={}}}", label.0, label.1);
        self.counters
            .lock()
            .unwrap()
            .get(&key)
            .map_or((0, 0), |(n, v)| {
                (*n, v.load(std::sync::atomic::Ordering::SeqCst))
            })
    }
}

impl metrics::Recorder for Registrations {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let id = format!("{}{{{}}}", key.name(), labels.join(","));
        let mut counters = self.counters.lock().unwrap();
        let entry = counters.entry(id).or_default();
        entry.0 += 1;
        metrics::Counter::from_arc(entry.1.clone())
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The handshake hot path: the lookup counters are registered once, when
/// the `Config` is built (with the recorder installed then), and every
/// handshake only increments the handles: the recorder sees three
/// registrations however many handshakes there are, and every lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_lookups_are_registered_once_at_build() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    snapshotter();
    let recorder = Arc::new(Registrations::default());
    let config = metrics::with_local_recorder(recorder.as_ref(), || {
        Config::builder()
            .storage(Arc::new(MemoryStorage::new()))
            .issuer(ArcIssuer(Arc::new(Blocked::default())))
            .build()
    });
    for result in ["hit", "miss", "default"] {
        assert_eq!(
            recorder.get(m::HANDSHAKE_LOOKUPS_TOTAL, ("result", result)),
            (1, 0),
            "{result}"
        );
    }
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "hello" }));
    let serve = certauto_axum::serve(tcp, app, &config).unwrap();
    let server = tokio::spawn(async move { serve.into_future().await.unwrap() });
    // Handshakes for names the cache does not hold: each a miss, on the
    // server's tasks (where no local recorder is set).
    let client = trusting(
        rcgen::generate_simple_self_signed(["unused.example".to_owned()])
            .unwrap()
            .cert
            .der(),
    );
    for i in 0..3 {
        let name = format!("unknown{i}.metrics.example");
        assert!(!bounded("handshake", handshake(addr, &name, client.clone())).await);
    }
    assert_eq!(
        recorder.get(m::HANDSHAKE_LOOKUPS_TOTAL, ("result", "miss")),
        (1, 3)
    );
    server.abort();
    config.cache().stop();
}
