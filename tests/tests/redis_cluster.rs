//! A cluster's life on `RedisStorage`, against a real `redis-server` (started per test
//! by [`RedisServer`] on a free loopback port, persistence off) and a real Pebble:
//!
//! - Redis stopped (killed) while serving: handshakes keep succeeding from the cache, a
//!   due renewal fails at once with the typed storage error and schedules a retry with
//!   backoff; Redis started again on the same port, empty (persistence is off): the next
//!   due pass replaces the certificate with the same `Config` and `RedisStorage`, which
//!   reconnected on its own (with no stored record or account left, that is a new order
//!   from a new account, not a renewal of stored state);
//! - Redis hung (`SIGSTOP`) while serving: handshakes succeed while a renewal pass is
//!   blocked on it; the pass fails on the response timeout; resumed with its data, the
//!   next due pass renews the stored record with the stored account (an ARI replacement
//!   order, no second account);
//! - a lock holder paused past its lease (`SIGSTOP`, in a child process) cannot
//!   overwrite the certificate the next holder wrote: its fenced write is refused
//!   (by its own check, which learns of the loss on resuming, or by Redis's fence check:
//!   `redis_storage.rs` delays a write in flight past the lease to prove Redis refuses
//!   one that passed the holder's check);
//! - one storage-cleaning pass on Redis removes an unmanaged certificate expired past
//!   the grace period and nothing else: storage afterwards is the snapshot taken before
//!   minus exactly the reported keys (the managed certificate, its staple and retry
//!   state, an account and the local CA stay).
//!
//! Time is a [`ManualClock`]; waits are bounded and only a hang reaches a bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use certauto::storage::keys;
use certauto::{
    AcmeIssuer, CachedCert, Clock, Config, Error, Event, Http01Solver, Identifier, Issuer, KeyInfo,
    LockGuard, ManualClock, MemoryStorage, RedisStorage, Storage, StorageError,
};
use certauto_tests::webpki_verify_chain;
use certauto_tests::{Pebble, RedisServer, init_tracing, normalize_serial, serial_hex};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

/// Upper bound on one step (a handshake, an issuance, a lock wait); only a hang reaches it.
const BOUND: Duration = Duration::from_secs(180);
const EMAIL: &str = "redis-cluster@certauto.example";
const DAY: Duration = Duration::from_secs(86_400);

async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

/// An issuer for `pebble` answering HTTP-01 on Pebble's validation port.
fn issuer(pebble: &Pebble, storage: Arc<dyn Storage>) -> AcmeIssuer {
    AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email(EMAIL)
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            pebble.http_port(),
        ))))
        .storage(storage)
        .build()
}

fn cached(config: &Config, name: &str) -> Arc<CachedCert> {
    config
        .cache()
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the cache"))
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

/// Serves `config` through certauto-axum (the acceptor) on a fresh loopback port.
async fn serve(config: &Config) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let router = Router::new().route("/", get(|| async { "hello" }));
    let serve = certauto_axum::serve(tcp, router, config).unwrap();
    let task = tokio::spawn(async move { serve.into_future().await.unwrap() });
    (addr, task)
}

/// A fresh TLS handshake with `addr` for `name` trusting only `root_der`; the
/// serial of the leaf served (its chain verified).
async fn served_serial(addr: SocketAddr, name: &str, root_der: &[u8]) -> String {
    let connector = TlsConnector::from(Arc::new(ring_client_config(root_der)));
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let chain: Vec<Vec<u8>> = bounded("handshake", async {
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

/// A time well inside the renewal window of `cert` (and past Pebble's ARI
/// window): 9/10 of its lifetime.
fn due_time(cert: &CachedCert) -> SystemTime {
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    cert.not_before() + lifetime.mul_f64(0.9)
}

// ----- Redis stopped while serving ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_while_serving_then_started_again() {
    const NAME: &str = "outage.redis.example";
    init_tracing();
    let pebble = Pebble::builder().start().await;
    let root = pebble.root_der(0).await;
    let mut redis = RedisServer::builder().start().await;
    let redis_storage = RedisStorage::builder(&redis.url())
        .key_prefix("outage")
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let storage: Arc<dyn Storage> = Arc::new(redis_storage);
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let seen = events.clone();
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer(&pebble, storage.clone()))
        .clock(clock.clone())
        .on_event(move |e| seen.lock().unwrap().push(e.clone()))
        .build();
    bounded("manage", config.manage([NAME])).await.unwrap();
    let old = cached(&config, NAME);
    let old_serial = normalize_serial(old.serial());
    let (addr, server) = serve(&config).await;
    assert_eq!(served_serial(addr, NAME, &root).await, old_serial);

    // Redis goes away. Handshakes keep succeeding from the cache.
    redis.stop().await;
    for _ in 0..3 {
        assert_eq!(served_serial(addr, NAME, &root).await, old_serial);
    }
    // Storage operations fail with the typed error, no panic.
    let err = bounded("load while Redis is down", storage.load("anything"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Unavailable { .. }),
        "want Unavailable, got {err:?}"
    );
    let err = bounded(
        "force_renew while Redis is down",
        config.force_renew([NAME]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Storage(StorageError::Unavailable { .. })),
        "want Error::Storage(Unavailable), got {err:?}"
    );

    // Due: the renewal pass fails and schedules a retry with backoff.
    clock.set(due_time(&old));
    let failed_at = clock.now();
    let report = bounded("check_renewals", config.check_renewals()).await;
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");
    let (attempt, retry_at, error) = events
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::CertFailed {
                attempt,
                retry_at,
                error,
                renewal: true,
                ..
            } => Some((*attempt, *retry_at, error.clone())),
            _ => None,
        })
        .expect("a cert_failed event for the renewal");
    assert_eq!(attempt, 1);
    let retry_at = retry_at.expect("a retry is scheduled");
    assert!(retry_at > failed_at, "retry at {retry_at:?}");
    assert!(
        error.contains("unavailable") || error.contains("Redis"),
        "{error}"
    );
    // Before the retry time nothing is attempted; still serving the old one.
    let report = bounded("check_renewals", config.check_renewals()).await;
    assert_eq!(report.deferred, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(served_serial(addr, NAME, &root).await, old_serial);
    assert_eq!(normalize_serial(cached(&config, NAME).serial()), old_serial);

    // Redis is back on the same port, empty (persistence is off). The next due
    // pass replaces the certificate with the same Config and RedisStorage (which
    // reconnects on its own); with nothing stored, that is a fresh order. The
    // hung-server test below covers renewing a stored record.
    redis.start().await;
    clock.set(retry_at + Duration::from_secs(1));
    let report = bounded("check_renewals", config.check_renewals()).await;
    assert_eq!(report.renewed, vec![NAME.to_owned()], "{report:?}");
    let new_serial = normalize_serial(cached(&config, NAME).serial());
    assert_ne!(new_serial, old_serial);
    assert_eq!(served_serial(addr, NAME, &root).await, new_serial);
    let stored = bounded("load", config.load([NAME]))
        .await
        .unwrap()
        .expect("the renewed certificate is in Redis");
    assert_eq!(normalize_serial(&stored.serial_hex()), new_serial);
    server.abort();
}

// ----- Redis hung while serving ----------------------------------------------

/// A storage that forwards every call to `inner` and keeps track of them: how many
/// started, and which are still waiting for their answer.
#[derive(Debug)]
struct Watched {
    inner: Arc<dyn Storage>,
    started: watch::Sender<u64>,
    in_flight: Mutex<BTreeSet<u64>>,
}

/// Takes a call off the in-flight set when it ends (answered, failed or dropped).
struct Landed<'a>(&'a Watched, u64);

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.0.in_flight.lock().unwrap().remove(&self.1);
    }
}

impl Watched {
    fn new(inner: Arc<dyn Storage>) -> Self {
        Self {
            inner,
            started: watch::Sender::new(0),
            in_flight: Mutex::new(BTreeSet::new()),
        }
    }

    /// The calls started so far.
    fn started(&self) -> u64 {
        *self.started.borrow()
    }

    /// Waits (bounded) until more than `count` calls have started.
    async fn started_more_than(&self, count: u64) {
        let mut rx = self.started.subscribe();
        bounded("a storage call", rx.wait_for(|n| *n > count))
            .await
            .unwrap();
    }

    /// The numbers of the calls still waiting for their answer.
    fn in_flight(&self) -> BTreeSet<u64> {
        self.in_flight.lock().unwrap().clone()
    }

    async fn call<T>(&self, fut: impl Future<Output = T>) -> T {
        // In flight before it counts as started, so that a waiter woken by the
        // count finds it in flight.
        let number = {
            let mut in_flight = self.in_flight.lock().unwrap();
            let number = *self.started.borrow() + 1;
            in_flight.insert(number);
            self.started.send_replace(number);
            number
        };
        let _landed = Landed(self, number);
        fut.await
    }
}

#[async_trait]
impl Storage for Watched {
    async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.call(self.inner.store(key, value)).await
    }
    async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        self.call(self.inner.load(key)).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.call(self.inner.delete(key)).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.call(self.inner.exists(key)).await
    }
    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
        self.call(self.inner.list(prefix, recursive)).await
    }
    async fn stat(&self, key: &str) -> Result<KeyInfo, StorageError> {
        self.call(self.inner.stat(key)).await
    }
    async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
        self.call(self.inner.lock(name)).await
    }
    async fn store_fenced(
        &self,
        guard: &LockGuard,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        self.call(self.inner.store_fenced(guard, key, value)).await
    }
    async fn delete_fenced(&self, guard: &LockGuard, key: &str) -> Result<(), StorageError> {
        self.call(self.inner.delete_fenced(guard, key)).await
    }
    async fn remove_stale_temporaries(
        &self,
        older_than: Duration,
    ) -> Result<certauto::TemporariesSweep, StorageError> {
        self.call(self.inner.remove_stale_temporaries(older_than))
            .await
    }
}

/// Pebble logs this each time it creates an account, with the new total.
const SECOND_ACCOUNT: &str = "There are now 2 accounts in memory";
/// Pebble logs this for a new order that names the certificate it replaces (ARI).
const REPLACEMENT_ORDER: &str = "is a replacement of";

/// Redis hangs (`SIGSTOP`: connections accepted, nothing answered, data kept) while
/// serving: handshakes for the cached name succeed while a renewal pass is blocked on
/// the hung server; the pass then fails on the response timeout and schedules a retry.
/// Resumed (`SIGCONT`), the next due pass renews the record stored in Redis with the
/// account stored there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_while_serving_then_resumed_renews_the_stored_record() {
    const NAME: &str = "hung.redis.example";
    // A call to the hung server ends only by this timeout (or the resume): far longer
    // than the loopback handshakes made meanwhile.
    const RESPONSE_TIMEOUT: Duration = Duration::from_secs(8);
    init_tracing();
    let pebble = Pebble::builder().start().await;
    let root = pebble.root_der(0).await;
    let redis = RedisServer::builder().start().await;
    let redis_storage = RedisStorage::builder(&redis.url())
        .key_prefix("hung")
        .connect_timeout(RESPONSE_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        // A lock taken by a command the server runs only once resumed is left by a
        // client that gave up on it: the next pass waits out this lease.
        .lock_lease(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let watched = Arc::new(Watched::new(Arc::new(redis_storage)));
    let storage: Arc<dyn Storage> = watched.clone();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let seen = events.clone();
    let issuer = issuer(&pebble, storage.clone());
    let issuer_key = issuer.issuer_key();
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer)
        .clock(clock.clone())
        .on_event(move |e| seen.lock().unwrap().push(e.clone()))
        .build();
    bounded("manage", config.manage([NAME])).await.unwrap();
    let old = cached(&config, NAME);
    let old_serial = normalize_serial(old.serial());
    let (addr, server) = serve(&config).await;
    assert_eq!(served_serial(addr, NAME, &root).await, old_serial);
    // What Redis holds: the certificate record and the account.
    let stored = bounded("load", config.load([NAME]))
        .await
        .unwrap()
        .expect("the certificate is in Redis");
    assert_eq!(normalize_serial(&stored.serial_hex()), old_serial);
    let account_key = keys::account_record(&issuer_key, Some(EMAIL));
    let account = storage.load(&account_key).await.unwrap();
    assert!(!pebble.pebble_log().contains(SECOND_ACCOUNT));

    // Redis hangs; the certificate is due; a renewal pass starts and blocks on it.
    redis.pause();
    clock.set(due_time(&old));
    let failed_at = clock.now();
    let before = watched.started();
    let pass = tokio::spawn({
        let config = config.clone();
        async move { config.check_renewals().await }
    });
    watched.started_more_than(before).await;
    let blocked = watched.in_flight();
    assert!(!blocked.is_empty(), "the pass's first call is unanswered");
    // Handshakes for the cached name succeed meanwhile.
    for _ in 0..3 {
        assert_eq!(served_serial(addr, NAME, &root).await, old_serial);
    }
    // The call the pass sent before the handshakes is still unanswered after them:
    // they were served within the hang, not after a storage timeout.
    assert!(
        !blocked.is_disjoint(&watched.in_flight()),
        "the renewal pass's storage call ended during the handshakes: they took \
         longer than the {RESPONSE_TIMEOUT:?} response timeout (a handshake waiting \
         on storage?)"
    );
    assert!(!pass.is_finished(), "the renewal pass is blocked on Redis");

    // Still hung: the pass fails on the response timeout and schedules a retry.
    let report = bounded("the blocked renewal pass", pass).await.unwrap();
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");
    let (attempt, retry_at, error) = events
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::CertFailed {
                attempt,
                retry_at,
                error,
                renewal: true,
                ..
            } => Some((*attempt, *retry_at, error.clone())),
            _ => None,
        })
        .expect("a cert_failed event for the renewal");
    assert_eq!(attempt, 1, "{error}");
    let retry_at = retry_at.expect("a retry is scheduled");
    assert!(retry_at > failed_at, "retry at {retry_at:?}");
    assert_eq!(served_serial(addr, NAME, &root).await, old_serial);

    // Redis goes on, with its data. The next due pass renews the stored record.
    redis.resume();
    clock.set(retry_at + Duration::from_secs(1));
    let report = bounded("check_renewals", config.check_renewals()).await;
    assert_eq!(report.renewed, vec![NAME.to_owned()], "{report:?}");
    let new_serial = normalize_serial(cached(&config, NAME).serial());
    assert_ne!(new_serial, old_serial);
    assert!(
        events.lock().unwrap().iter().any(|e| matches!(
            e,
            Event::CertRenewed { names, serial, .. }
                if names == &[NAME.to_owned()] && normalize_serial(serial) == new_serial
        )),
        "a cert_renewed event for {NAME}"
    );
    assert_eq!(served_serial(addr, NAME, &root).await, new_serial);
    let stored = bounded("load", config.load([NAME]))
        .await
        .unwrap()
        .expect("the renewed certificate is in Redis");
    assert_eq!(normalize_serial(&stored.serial_hex()), new_serial);
    // The same account, read from Redis: no second account at Pebble, and the order
    // names the stored certificate as the one it replaces.
    assert_eq!(storage.load(&account_key).await.unwrap(), account);
    let log = pebble.pebble_log();
    assert!(
        !log.contains(SECOND_ACCOUNT),
        "a second account was created"
    );
    assert_eq!(
        log.matches(REPLACEMENT_ORDER).count(),
        1,
        "one replacement order"
    );
    server.abort();
}

// ----- a paused holder cannot overwrite --------------------------------------

/// The `storage-child redis-fenced` process.
struct FencedChild {
    process: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl FencedChild {
    fn spawn(url: &str, prefix: &str, lease: Duration) -> Self {
        let mut process = Command::new(env!("CARGO_BIN_EXE_storage-child"))
            .args(["redis-fenced", url, prefix, &lease.as_millis().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn storage-child");
        let stdin = process.stdin.take().unwrap();
        let lines = BufReader::new(process.stdout.take().unwrap()).lines();
        Self {
            process,
            stdin,
            lines,
        }
    }

    async fn line(&mut self) -> String {
        bounded("a line from storage-child", self.lines.next_line())
            .await
            .unwrap()
            .expect("storage-child closed its output")
    }

    async fn ask(&mut self, command: &str) -> String {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        self.line().await
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.id().expect("the child is running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill (procps)");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }
}

/// Obtains `name` from Pebble on fresh in-memory storage; the certificate
/// record's storage key and bytes, and its serial.
async fn obtained_record(pebble: &Pebble, name: &str) -> (String, Vec<u8>, String) {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let issuer = issuer(pebble, storage.clone());
    let issuer_key = issuer.issuer_key();
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer)
        .build();
    let cert = bounded("obtain", config.obtain([name])).await.unwrap();
    let key = keys::cert_record(&issuer_key, &Identifier::parse(name).unwrap());
    let record = storage.load(&key).await.unwrap();
    (key, record, normalize_serial(&cert.serial_hex()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_cannot_overwrite_the_next_holders_certificate() {
    const NAME: &str = "fenced.redis.example";
    const PREFIX: &str = "fenced";
    init_tracing();
    let pebble = Pebble::builder().start().await;
    let redis = RedisServer::builder().start().await;
    // Two real certificate records for the name: the paused holder's and ours.
    let (key, child_record, child_serial) = obtained_record(&pebble, NAME).await;
    let (our_key, our_record, our_serial) = obtained_record(&pebble, NAME).await;
    assert_eq!(key, our_key);
    assert_ne!(child_serial, our_serial);
    let dir = tempfile::tempdir().unwrap();
    let child_file = dir.path().join("child-record.json");
    std::fs::write(&child_file, &child_record).unwrap();

    let lock = keys::cert_lock(&Identifier::parse(NAME).unwrap());
    let mut child = FencedChild::spawn(&redis.url(), PREFIX, Duration::from_millis(600));
    assert_eq!(child.line().await, "ready");
    let answer = child.ask(&format!("lock {lock}")).await;
    let child_fence: u64 = answer
        .strip_prefix("locked ")
        .unwrap_or_else(|| panic!("lock: {answer}"))
        .parse()
        .unwrap();

    // Paused: no keepalive any more. We wait for its lease to run out by
    // acquiring the lock ourselves (polling, bounded by the wait timeout).
    child.signal("-STOP");
    let storage = RedisStorage::builder(&redis.url())
        .key_prefix(PREFIX)
        .lock_poll_interval(Duration::from_millis(20))
        .lock_wait_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let guard = bounded("taking over the paused holder's lock", storage.lock(&lock))
        .await
        .unwrap();
    assert!(
        guard.fence().unwrap() > child_fence,
        "fence {:?} after {child_fence}",
        guard.fence()
    );
    storage
        .store_fenced(&guard, &key, &our_record)
        .await
        .unwrap();
    guard.release().await.unwrap();

    // The holder resumes and writes its record under its old guard: refused.
    child.signal("-CONT");
    let file = child_file.to_str().unwrap();
    let answer = child.ask(&format!("store {lock} {key} {file}")).await;
    assert!(
        answer.starts_with("refused "),
        "the paused holder's write: {answer}"
    );
    assert_eq!(storage.load(&key).await.unwrap(), our_record);
    // Read back as a certificate: our serial.
    let reader: Arc<dyn Storage> = Arc::new(storage.clone());
    let config = Config::builder()
        .storage(reader.clone())
        .issuer(issuer(&pebble, reader))
        .build();
    let stored = config.load([NAME]).await.unwrap().unwrap();
    assert_eq!(normalize_serial(&stored.serial_hex()), our_serial);
    child.stdin.write_all(b"exit\n").await.unwrap();
    let status = bounded("storage-child's exit", child.process.wait())
        .await
        .unwrap();
    assert!(status.success(), "storage-child: {status}");
}

// ----- storage cleaning on Redis --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleaning_on_redis_removes_an_expired_unmanaged_certificate_and_nothing_else() {
    init_tracing();
    let redis = RedisServer::builder().start().await;
    let storage: Arc<dyn Storage> = Arc::new(
        RedisStorage::builder(&redis.url())
            .key_prefix("clean")
            .build()
            .await
            .unwrap(),
    );
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let config_on = |clock: Arc<ManualClock>| {
        Config::builder()
            .storage(storage.clone())
            .clock(clock)
            .local_ca_leaf_lifetime(DAY)
            .build()
    };
    // This instance manages `managed.test`; another one once managed
    // `gone.test`, on the same Redis.
    let config = config_on(clock.clone());
    config.manage(["managed.test"]).await.unwrap();
    config_on(clock.clone())
        .manage(["gone.test"])
        .await
        .unwrap();
    let record = |name: &str| {
        keys::cert_record(
            certauto::LOCAL_CA_ISSUER_KEY,
            &Identifier::parse(name).unwrap(),
        )
    };
    let (managed, gone) = (record("managed.test"), record("gone.test"));
    assert!(storage.exists(&gone).await.unwrap());
    // What a managed name needs besides its certificate, and what cleaning
    // never touches: its OCSP staple, its retry state, an ACME account.
    let managed_id = Identifier::parse("managed.test").unwrap();
    let leaf = cached(&config, "managed.test").certified_key().cert[0].to_vec();
    let kept = [
        keys::ocsp_staple(&managed_id, &leaf),
        keys::retry_schedule(&managed_id),
        keys::account_record("acme.example-directory", Some(EMAIL)),
    ];
    for key in &kept {
        storage.store(key, b"kept by cleaning").await.unwrap();
    }
    let mut before = storage.list("", true).await.unwrap();
    before.sort();
    for key in kept.iter().chain([&managed, &gone]) {
        assert!(before.contains(key), "{key} not listed in {before:?}");
    }
    assert!(
        before.iter().any(|k| k.starts_with("local_ca/")),
        "the local CA is in storage: {before:?}"
    );

    // Both expired more than the grace period (a day) ago.
    clock.advance(DAY * 3);
    let report = bounded("clean_storage", config.clean_storage())
        .await
        .unwrap();
    assert!(
        !report.certificates.is_empty()
            && report
                .certificates
                .iter()
                .all(|k| k.starts_with("certificates/") && k.contains("gone.test")),
        "only gone.test's certificate keys are removed: {report:?}"
    );
    assert!(report.certificates.contains(&gone), "{report:?}");
    assert!(report.ocsp_staples.is_empty(), "{report:?}");
    assert!(report.challenges.is_empty(), "{report:?}");
    assert!(report.challenge_tokens.is_empty(), "{report:?}");
    assert!(report.retry_states.is_empty(), "{report:?}");
    assert!(report.temporaries.is_empty(), "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(!report.budget_exhausted && !report.lock_lost, "{report:?}");
    // Storage afterwards is the snapshot minus exactly the keys reported
    // removed, plus the pass's own schedule record.
    let mut after = storage.list("", true).await.unwrap();
    after.sort();
    let mut expected: Vec<String> = before
        .iter()
        .filter(|k| !report.certificates.contains(k))
        .cloned()
        .collect();
    if !expected.iter().any(|k| k == keys::STORAGE_CLEAN_STATE) {
        expected.push(keys::STORAGE_CLEAN_STATE.to_owned());
        expected.sort();
    }
    assert_eq!(after, expected, "report: {report:?}");
    for key in kept.iter().chain([&managed]) {
        assert!(storage.exists(key).await.unwrap(), "{key} was removed");
    }
    assert!(!storage.exists(&gone).await.unwrap());
}
