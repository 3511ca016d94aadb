//! Cancel safety, lost locks and crash consistency end to end (issue 8, items
//! 4, 5 and 6), against a real Pebble and real second processes sharing one
//! `FileStorage`.
//!
//! - **Cancelled operations** (`obtain`, `renew`, `force_renew`) are dropped
//!   by a `select!` at several points of the order: inside the solver's
//!   `present`, in its `wait` (after present, before the challenge is
//!   answered), and while Pebble's validation request is held unanswered by
//!   the test's HTTP-01 responder (the order waits on validation). After each,
//!   the lock file is gone, the token is no longer served (neither from
//!   `ChallengeTokens`, nor from storage, nor by the responder), and the same
//!   name is obtained at once from this process and from a `store-node`
//!   process, with exactly one new order. With the solver's own listener
//!   (`Http01Solver::bind`) instead of the responder, the listener stops.
//! - **A lock broken under its holder**: while an obtain is blocked in the
//!   solver, its lock file is replaced by another owner's, or broken by a
//!   second `FileStorage` with a tiny stale age; the obtain fails with
//!   `StorageError::LockLost`, emits `cert_failed`, stores nothing and leaves
//!   the other owner's lock alone.
//! - **Crash consistency of the certificate record**: a `store-node` child
//!   force-renews one local-CA name in a loop and is killed with SIGKILL at
//!   varied points, 20 times; after each kill a fresh `Config` loads the old
//!   or the new certificate, whole, and the next child starts once the dead
//!   child's lock goes stale.
//!
//! Locks in the cancel tests go stale only after an hour, so a lock left
//! behind is never rescued by the stale-lock breaker: it shows up as a lock
//! file that stays and a `LockTimeout` in the second process. Every wait is
//! bounded; a bound only turns a hang into a failure and is never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use certauto::LOCAL_CA_ISSUER_KEY;
use certauto::storage::keys;
use certauto::{
    AcmeIssuer, Certificate, ChallengeTokens, Config, Error, Event, FileStorage, Http01Solver,
    Identifier, ManualClock, SolverError, Storage, StorageError,
};
use certauto::{Challenge, HTTP01_PATH_PREFIX, Solver};
use certauto_tests::{AriProxy, Pebble, init_tracing, normalize_serial, webpki_verify_chain};
use certauto_tower::AcmeLayer;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;

/// Upper bound on one network step. Only turns a hang into a failure.
const STEP_BOUND: Duration = Duration::from_secs(60);
/// Upper bound on one issuance against Pebble (or on reaching a hold point).
const ISSUE_BOUND: Duration = Duration::from_secs(180);
/// Upper bound on one `store-node` process.
const PROCESS_BOUND: Duration = Duration::from_secs(300);
/// Upper bound on a cancelled operation's cleanup (lock file, token) running
/// in the background. The lock would otherwise stay for an hour.
const CLEANUP_BOUND: Duration = Duration::from_secs(30);
/// Pause between two looks at a state awaited with a bound.
const POLL: Duration = Duration::from_millis(10);
/// Stale age of the cancel tests' locks: far beyond any test.
const LONG_STALE: Duration = Duration::from_secs(3600);
/// How long the cancel tests' locks are waited for before `LockTimeout`.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// How often [`Env::cancel_at`] tries again when Pebble reused an
/// authorization (1 % of orders), so there was nothing to hold.
const MAX_REUSED_AUTHZ_RETRIES: u32 = 3;
/// Account e-mail of every config in this file.
const EMAIL: &str = "cancel@certauto.example";

// ----- helpers -------------------------------------------------------------

async fn bounded<F: Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {bound:?}"))
}

/// Polls `cond` every [`POLL`] until it holds, for at most `bound` (and at most
/// `bound / POLL` looks); panics naming `what` otherwise.
async fn eventually<F, Fut>(bound: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    let max_looks = bound.as_millis() / POLL.as_millis() + 1;
    for _ in 0..max_looks {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("{what} did not happen within {bound:?}");
}

/// The lock file of the certificate lock of `name` (`storage/keys.rs`
/// `cert_lock`, `FileStorage`'s `<root>/locks/<lock>.lock`).
fn cert_lock_file(root: &Path, name: &str) -> PathBuf {
    let lock = keys::cert_lock(&Identifier::parse(name).unwrap());
    root.join("locks").join(format!("{lock}.lock"))
}

/// The `owner` token recorded in a lock file.
fn lock_owner(path: &Path) -> String {
    let content = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let meta: serde_json::Value = serde_json::from_slice(&content)
        .unwrap_or_else(|e| panic!("lock file {} is not JSON: {e}", path.display()));
    meta["owner"].as_str().unwrap_or_default().to_owned()
}

/// One HTTP/1.1 GET to `addr`, returning the status code.
async fn http_get_status(addr: SocketAddr, path: &str) -> u16 {
    let mut stream = bounded(STEP_BOUND, "connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    bounded(
        STEP_BOUND,
        "HTTP response",
        stream.read_to_end(&mut response),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

// ----- the gated solver ----------------------------------------------------

/// Where a [`GatedSolver`] holds an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Nowhere: the solver passes straight through.
    Nowhere,
    /// Inside `present`, after the real solver presented the token.
    InPresent,
    /// Inside `wait`: presented, the challenge not yet answered at the CA.
    InWait,
}

/// The shared state of a [`GatedSolver`].
#[derive(Debug)]
struct Gate {
    hold: Mutex<Hold>,
    /// How many times an operation reached the hold point (and stays there
    /// until its future is dropped).
    held: watch::Sender<u32>,
    /// Tokens the real solver presented, in order.
    presented: Mutex<Vec<String>>,
    /// Tokens the real solver cleaned up, in order.
    cleaned: Mutex<Vec<String>>,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Gate {
            hold: Mutex::new(Hold::Nowhere),
            held: watch::channel(0).0,
            presented: Mutex::new(Vec::new()),
            cleaned: Mutex::new(Vec::new()),
        })
    }

    fn set(&self, hold: Hold) {
        *self.hold.lock().unwrap() = hold;
    }

    fn held_count(&self) -> u32 {
        *self.held.borrow()
    }

    /// Blocks forever (until the caller's future is dropped) if `point` is
    /// the hold point.
    async fn pass(&self, point: Hold) {
        if *self.hold.lock().unwrap() == point {
            self.held.send_modify(|n| *n += 1);
            std::future::pending::<()>().await;
        }
    }

    /// Waits until an operation reached the hold point more than `before` times.
    async fn wait_held(&self, before: u32) {
        let mut rx = self.held.subscribe();
        bounded(
            ISSUE_BOUND,
            "the operation reaching its hold point",
            rx.wait_for(|n| *n > before),
        )
        .await
        .unwrap();
    }

    fn last_presented(&self) -> String {
        self.presented
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a token was presented")
    }

    fn was_cleaned(&self, token: &str) -> bool {
        self.cleaned.lock().unwrap().iter().any(|t| t == token)
    }
}

/// A real [`Http01Solver`] (recording into shared [`ChallengeTokens`]) that
/// can hold the operation at a [`Hold`] point.
#[derive(Debug)]
struct GatedSolver {
    inner: Http01Solver,
    gate: Arc<Gate>,
}

#[async_trait]
impl Solver for GatedSolver {
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.inner.present(challenge).await?;
        self.gate
            .presented
            .lock()
            .unwrap()
            .push(challenge.token.clone());
        self.gate.pass(Hold::InPresent).await;
        Ok(())
    }

    async fn wait(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.inner.wait(challenge).await?;
        self.gate.pass(Hold::InWait).await;
        Ok(())
    }

    async fn cleanup(&self, challenge: &Challenge) -> Result<(), SolverError> {
        let result = self.inner.cleanup(challenge).await;
        self.gate
            .cleaned
            .lock()
            .unwrap()
            .push(challenge.token.clone());
        result
    }
}

// ----- the HTTP-01 responder -----------------------------------------------

/// Holds Pebble's validation requests unanswered while `on`.
#[derive(Debug)]
struct Stall {
    on: AtomicBool,
    /// How many validation requests arrived while stalling.
    arrived: watch::Sender<u32>,
    /// Set to let the held requests through.
    released: watch::Sender<bool>,
}

/// The application's port 80: `AcmeLayer` over storage-shared tokens (so it
/// answers tokens any instance presented), behind a switch that holds
/// challenge requests unanswered.
#[derive(Debug)]
struct Responder {
    addr: SocketAddr,
    stall: Arc<Stall>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stall_layer(State(stall): State<Arc<Stall>>, req: Request, next: Next) -> Response {
    if stall.on.load(Ordering::SeqCst) && req.uri().path().starts_with(HTTP01_PATH_PREFIX) {
        stall.arrived.send_modify(|n| *n += 1);
        let mut released = stall.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
    next.run(req).await
}

impl Responder {
    async fn start(port: u16, tokens: ChallengeTokens) -> Self {
        let stall = Arc::new(Stall {
            on: AtomicBool::new(false),
            arrived: watch::channel(0).0,
            released: watch::channel(false).0,
        });
        let router = Router::new()
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(AcmeLayer::new(tokens))
            .layer(from_fn_with_state(stall.clone(), stall_layer));
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("bind the HTTP-01 port 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).into_future().await;
        });
        Responder { addr, stall, task }
    }

    /// Holds validation requests from now on; returns the arrivals so far.
    fn stall(&self) -> u32 {
        self.stall.released.send_replace(false);
        self.stall.on.store(true, Ordering::SeqCst);
        *self.stall.arrived.borrow()
    }

    /// Lets held requests through and stops holding new ones.
    fn unstall(&self) {
        self.stall.on.store(false, Ordering::SeqCst);
        self.stall.released.send_replace(true);
    }

    async fn wait_arrived(&self, before: u32) {
        let mut rx = self.stall.arrived.subscribe();
        bounded(
            ISSUE_BOUND,
            "Pebble's validation request",
            rx.wait_for(|n| *n > before),
        )
        .await
        .unwrap();
    }

    async fn status_of(&self, token: &str) -> u16 {
        http_get_status(self.addr, &format!("{HTTP01_PATH_PREFIX}{token}")).await
    }
}

// ----- the environment -----------------------------------------------------

/// Where a cancelled operation is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelPoint {
    /// Held by the solver.
    Solver(Hold),
    /// Pebble's validation request is held by the responder: the order
    /// waits on validation.
    ValidationPending,
}

/// One Pebble behind the order-counting proxy, a shared storage folder, the
/// responder on Pebble's HTTP-01 port (or, with [`Env::with_solver_listener`],
/// none: this process's solver listens there itself while it has challenges),
/// and the gate of this process's solver.
struct Env {
    pebble: Pebble,
    proxy: AriProxy,
    dir: tempfile::TempDir,
    ca_pem: PathBuf,
    tokens: ChallengeTokens,
    responder: Option<Responder>,
    gate: Arc<Gate>,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Env {
    /// With the storage-sharing responder on the HTTP-01 port.
    async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Without the responder: this process's `Http01Solver` binds the HTTP-01
    /// port itself while it has challenges presented.
    async fn with_solver_listener() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(responder: bool) -> Self {
        init_tracing();
        // No reuse of authorizations: each order validates afresh, so the
        // cancelled order's held authorization is never the next one's.
        let pebble = Pebble::builder()
            .nonce_reject_percent(0)
            .authz_reuse_percent(0)
            .start()
            .await;
        let proxy = AriProxy::start(&pebble).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = dir.path().join("proxy-ca.pem");
        std::fs::write(&ca_pem, proxy.https_ca_pem()).unwrap();
        let storage_dir = dir.path().join("storage");
        let tokens = ChallengeTokens::new().with_storage(Arc::new(FileStorage::new(&storage_dir)));
        let responder = match responder {
            true => Some(Responder::start(pebble.http_port(), tokens.clone()).await),
            false => None,
        };
        Env {
            pebble,
            proxy,
            dir,
            ca_pem,
            tokens,
            responder,
            gate: Gate::new(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// A `FileStorage` handle on the shared folder whose locks never go stale
    /// during a test.
    fn storage(&self, keepalive: Option<Duration>) -> Arc<dyn Storage> {
        let mut builder = FileStorage::builder(self.storage_dir())
            .lock_stale_after(LONG_STALE)
            .lock_wait_timeout(Some(LOCK_WAIT));
        if let Some(keepalive) = keepalive {
            builder = builder.lock_keepalive(keepalive);
        }
        Arc::new(builder.build())
    }

    /// This process's config: the gated solver, events recorded.
    fn config(&self, storage: Arc<dyn Storage>, clock: Option<Arc<ManualClock>>) -> Config {
        let events = self.events.clone();
        let inner = match self.responder {
            Some(_) => Http01Solver::without_listener(self.tokens.clone()),
            None => Http01Solver::bind(SocketAddr::from(([127, 0, 0, 1], self.pebble.http_port())))
                .with_tokens(self.tokens.clone()),
        };
        let solver = GatedSolver {
            inner,
            gate: self.gate.clone(),
        };
        let issuer = AcmeIssuer::builder()
            .ca(self.proxy.directory_url())
            .email(EMAIL)
            .agreed(true)
            .trust_roots([CertificateDer::from(self.proxy.https_ca_der())])
            .only_trusted_roots()
            .http01_solver(solver);
        let mut builder = Config::builder()
            .storage(storage)
            .acme(issuer)
            .on_event(move |e| events.lock().unwrap().push(e.clone()));
        if let Some(clock) = clock {
            builder = builder.clock(clock);
        }
        builder.build()
    }

    fn responder(&self) -> &Responder {
        self.responder
            .as_ref()
            .expect("holding validation needs the responder")
    }

    fn created_orders(&self) -> usize {
        self.proxy.created_orders().len()
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Runs the operation `make_op` makes until it reaches `point`, checks its
    /// lock file is there, and drops it. Returns the token it presented.
    ///
    /// Pebble reuses a valid authorization in 1 % of orders even with
    /// `PEBBLE_AUTHZREUSE=0` (its check is `rand.Intn(100) > percent`); such an
    /// order presents nothing and cannot be held, so it is tried again, at most
    /// [`MAX_REUSED_AUTHZ_RETRIES`] times. Any other early end fails the test.
    async fn cancel_at<F>(
        &self,
        what: &str,
        name: &str,
        point: CancelPoint,
        mut make_op: impl FnMut() -> F,
    ) -> String
    where
        F: Future<Output = Result<Certificate, Error>>,
    {
        for attempt in 0..=MAX_REUSED_AUTHZ_RETRIES {
            let orders_before = self.created_orders();
            let presented_before = self.gate.presented.lock().unwrap().len();
            let held_before = self.gate.held_count();
            let arrived_before = match point {
                CancelPoint::Solver(hold) => {
                    self.gate.set(hold);
                    0
                }
                CancelPoint::ValidationPending => {
                    self.gate.set(Hold::Nowhere);
                    self.responder().stall()
                }
            };
            let lock_file = cert_lock_file(&self.storage_dir(), name);
            let reached = async {
                match point {
                    CancelPoint::Solver(_) => self.gate.wait_held(held_before).await,
                    CancelPoint::ValidationPending => {
                        self.responder().wait_arrived(arrived_before).await;
                    }
                }
                assert!(
                    lock_file.exists(),
                    "{what}: the lock file {} is there while the order runs (the test watches the right file)",
                    lock_file.display()
                );
            };
            let early = tokio::select! {
                result = make_op() => Some(result),
                () = reached => None,
            };
            // The operation's future is dropped here: the cancellation.
            self.gate.set(Hold::Nowhere);
            match early {
                None => {
                    assert_eq!(
                        self.created_orders(),
                        orders_before + 1,
                        "{what}: the cancelled operation had created its order"
                    );
                    return self.gate.last_presented();
                }
                Some(Ok(cert))
                    if self.gate.presented.lock().unwrap().len() == presented_before
                        && attempt < MAX_REUSED_AUTHZ_RETRIES =>
                {
                    if let Some(responder) = &self.responder {
                        responder.unstall();
                    }
                    tracing::warn!(what, serial = %cert.serial_hex(),
                        "Pebble reused an authorization: nothing to hold; trying again");
                }
                Some(result) => {
                    panic!("{what} finished before it was cancelled at {point:?}: {result:?}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// What a cancelled operation must leave: no lock file, no token served
    /// (by this process's tokens, by storage, by the responder).
    async fn assert_cleaned_up(&self, what: &str, name: &str, token: &str) {
        let lock_file = cert_lock_file(&self.storage_dir(), name);
        eventually(
            CLEANUP_BOUND,
            &format!("{what}: the lock file {} going away", lock_file.display()),
            || async { !lock_file.exists() },
        )
        .await;
        eventually(
            CLEANUP_BOUND,
            &format!("{what}: the solver cleaning up token {token}"),
            || async { self.gate.was_cleaned(token) },
        )
        .await;
        assert_eq!(
            self.tokens.get(token).await,
            None,
            "{what}: token still served"
        );
        // Another instance looks in storage.
        let fresh =
            ChallengeTokens::new().with_storage(Arc::new(FileStorage::new(self.storage_dir())));
        assert_eq!(
            fresh.get(token).await,
            None,
            "{what}: token still in storage"
        );
        assert!(
            !FileStorage::new(self.storage_dir())
                .exists(&keys::challenge_token(token))
                .await
                .unwrap(),
            "{what}: token key still in storage"
        );
        match &self.responder {
            Some(responder) => {
                // Let held validation requests go (they now get 404), then ask ourselves.
                responder.unstall();
                assert_eq!(
                    responder.status_of(token).await,
                    404,
                    "{what}: the responder still answers token {token}"
                );
            }
            None => {
                // The solver's own listener stopped with its last challenge.
                let addr = SocketAddr::from(([127, 0, 0, 1], self.pebble.http_port()));
                eventually(
                    CLEANUP_BOUND,
                    &format!("{what}: the solver's listener on {addr} stopping"),
                    || async { TcpStream::connect(addr).await.is_err() },
                )
                .await;
            }
        }
    }

    /// Runs `store-node acme --op <op>` for `name` to its end.
    async fn store_node(&self, op: &str, name: &str) -> serde_json::Value {
        let mut node = Node::spawn(&[
            "acme",
            "--storage",
            path_str(&self.storage_dir()),
            "--directory",
            &self.proxy.directory_url(),
            "--ca-pem",
            path_str(&self.ca_pem),
            "--email",
            EMAIL,
            "--name",
            name,
            "--op",
            op,
        ]);
        let line = node
            .line()
            .await
            .unwrap_or_else(|| panic!("store-node {op} {name} printed nothing (see its stderr)"));
        let status = node.wait().await;
        let result: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(
            result["lock_timeout"],
            serde_json::Value::Null,
            "store-node {op} {name} timed out on the lock: {result}"
        );
        assert!(
            status.success() && result["ok"] == true,
            "store-node {op} {name} failed ({status}): {result}"
        );
        result
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A `store-node` process; killed (and reaped by tokio) when dropped.
struct Node {
    child: Child,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Node {
    fn spawn(args: &[&str]) -> Self {
        let bin = env!("CARGO_BIN_EXE_store-node");
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not start the store-node binary at {bin}: {e} (cargo builds it with the tests)")
            });
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Node { child, stdout }
    }

    /// The next stdout line; `None` once the process closed stdout.
    async fn line(&mut self) -> Option<String> {
        bounded(
            PROCESS_BOUND,
            "a line from store-node",
            self.stdout.next_line(),
        )
        .await
        .unwrap()
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        bounded(PROCESS_BOUND, "store-node exiting", self.child.wait())
            .await
            .unwrap()
    }
}

// ----- cancelled obtains ---------------------------------------------------

/// Cancels an obtain of a fresh name at `point`, checks what it leaves, then
/// obtains the name at once from this process and from a second process, at
/// the same time: both succeed with the same certificate, through exactly one
/// new order (the lock serialises them; the second loads the first's).
async fn cancelled_obtain_then_two_processes_obtain(point: CancelPoint, name: &str) {
    let env = Env::start().await;
    let config = env.config(env.storage(None), None);
    let what = format!("obtain cancelled at {point:?}");
    let token = env
        .cancel_at(&what, name, point, || config.obtain([name]))
        .await;
    env.assert_cleaned_up(&what, name, &token).await;

    let orders_before = env.created_orders();
    let (here, there) = tokio::join!(
        bounded(
            ISSUE_BOUND,
            "obtain after the cancel",
            config.obtain([name])
        ),
        env.store_node("obtain", name),
    );
    let here = here.unwrap_or_else(|e| panic!("{what}: obtain at once failed: {e}"));
    assert_eq!(
        normalize_serial(&here.serial_hex()),
        normalize_serial(there["serial"].as_str().unwrap()),
        "both processes end up with the one certificate"
    );
    assert_eq!(
        env.created_orders(),
        orders_before + 1,
        "{what}: exactly one new order for the two obtains: {:?}",
        env.proxy.created_orders()
    );
    let root = env.pebble.root_der(0).await;
    let chain: Vec<Vec<u8>> = here.chain().iter().map(|c| c.to_vec()).collect();
    webpki_verify_chain(&chain, &root, name).unwrap();
    // And nothing is held now.
    assert!(!cert_lock_file(&env.storage_dir(), name).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtain_cancelled_in_present_frees_lock_and_token() {
    cancelled_obtain_then_two_processes_obtain(
        CancelPoint::Solver(Hold::InPresent),
        "in-present.certauto.example",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtain_cancelled_after_present_frees_lock_and_token() {
    cancelled_obtain_then_two_processes_obtain(
        CancelPoint::Solver(Hold::InWait),
        "after-present.certauto.example",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtain_cancelled_while_validation_pending_frees_lock_and_token() {
    cancelled_obtain_then_two_processes_obtain(
        CancelPoint::ValidationPending,
        "validating.certauto.example",
    )
    .await;
}

/// The solver's own listener (`Http01Solver::bind`) too: a cancelled obtain
/// stops it, and the next obtain binds the port again and succeeds with one
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtain_cancelled_stops_the_solvers_own_listener() {
    const NAME: &str = "own-listener.certauto.example";
    let env = Env::with_solver_listener().await;
    let config = env.config(env.storage(None), None);
    for point in [Hold::InPresent, Hold::InWait] {
        let what = format!("obtain with its own listener cancelled at {point:?}");
        let token = env
            .cancel_at(&what, NAME, CancelPoint::Solver(point), || {
                config.obtain([NAME])
            })
            .await;
        env.assert_cleaned_up(&what, NAME, &token).await;
    }
    let orders_before = env.created_orders();
    let cert = bounded(
        ISSUE_BOUND,
        "obtain after the cancels",
        config.obtain([NAME]),
    )
    .await
    .unwrap_or_else(|e| panic!("obtain at once after the cancels failed: {e}"));
    assert_eq!(env.created_orders(), orders_before + 1, "one new order");
    let chain: Vec<Vec<u8>> = cert.chain().iter().map(|c| c.to_vec()).collect();
    webpki_verify_chain(&chain, &env.pebble.root_der(0).await, NAME).unwrap();
    assert!(!cert_lock_file(&env.storage_dir(), NAME).exists());
}

// ----- cancelled renewals --------------------------------------------------

/// `renew` (due by the injected clock) and `force_renew` cancelled mid-order:
/// each time the lock and token are freed, and the same renewal at once, from
/// this process and from a second process, orders exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_cancelled_mid_order_free_lock_and_token() {
    const NAME: &str = "renew-cancel.certauto.example";
    let env = Env::start().await;
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let config = env.config(env.storage(None), Some(clock.clone()));
    let first = bounded(ISSUE_BOUND, "first obtain", config.obtain([NAME]))
        .await
        .unwrap();
    let mut serials = HashSet::from([normalize_serial(&first.serial_hex())]);
    // Three quarters into its lifetime: inside the default renewal window of
    // every certificate this test gets (all issued within minutes).
    let lifetime = first
        .not_after()
        .duration_since(first.not_before())
        .unwrap();
    clock.set(first.not_before() + lifetime.mul_f64(0.75));

    // renew, cancelled after present and while validation is pending; then
    // renewed at once in this process.
    for point in [
        CancelPoint::Solver(Hold::InWait),
        CancelPoint::ValidationPending,
    ] {
        let what = format!("renew cancelled at {point:?}");
        let token = env
            .cancel_at(&what, NAME, point, || config.renew([NAME]))
            .await;
        env.assert_cleaned_up(&what, NAME, &token).await;
        let orders_before = env.created_orders();
        let renewed = bounded(ISSUE_BOUND, "renew at once", config.renew([NAME]))
            .await
            .unwrap_or_else(|e| panic!("{what}: renew at once failed: {e}"));
        assert_eq!(
            env.created_orders(),
            orders_before + 1,
            "{what}: one new order"
        );
        assert!(
            serials.insert(normalize_serial(&renewed.serial_hex())),
            "{what}: a new certificate"
        );
    }

    // force_renew, cancelled in present and while validation is pending; then
    // force-renewed at once by a second process, and by this one.
    for point in [
        CancelPoint::Solver(Hold::InPresent),
        CancelPoint::ValidationPending,
    ] {
        let what = format!("force_renew cancelled at {point:?}");
        let token = env
            .cancel_at(&what, NAME, point, || config.force_renew([NAME]))
            .await;
        env.assert_cleaned_up(&what, NAME, &token).await;

        let orders_before = env.created_orders();
        let there = env.store_node("force-renew", NAME).await;
        let there_serial = normalize_serial(there["serial"].as_str().unwrap());
        assert_eq!(
            env.created_orders(),
            orders_before + 1,
            "{what}: one new order by the second process"
        );
        assert!(
            serials.insert(there_serial.clone()),
            "{what}: a new certificate"
        );
        let stored = config.load([NAME]).await.unwrap().unwrap();
        assert_eq!(normalize_serial(&stored.serial_hex()), there_serial);

        let orders_before = env.created_orders();
        let here = bounded(
            ISSUE_BOUND,
            "force_renew at once",
            config.force_renew([NAME]),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: force_renew at once failed: {e}"));
        assert_eq!(
            env.created_orders(),
            orders_before + 1,
            "{what}: one new order by this process"
        );
        assert!(
            serials.insert(normalize_serial(&here.serial_hex())),
            "{what}: a new certificate"
        );
    }
    assert!(!cert_lock_file(&env.storage_dir(), NAME).exists());
}

// ----- a lock broken under its holder --------------------------------------

/// How the lock is taken from the holder.
#[derive(Debug, Clone, Copy)]
enum Breaker {
    /// The lock file is replaced by one naming another owner, as a client
    /// that broke it as stale and took it would leave it.
    ReplaceFile,
    /// A second `FileStorage` whose locks go stale after 1 ms breaks it and
    /// takes it.
    SecondStorage,
}

async fn lock_broken_under_obtain(breaker: Breaker, name: &str) {
    let env = Env::start().await;
    // The holder refreshes (and so checks) its lock every 50 ms.
    let config = env.config(env.storage(Some(Duration::from_millis(50))), None);
    let lock_file = cert_lock_file(&env.storage_dir(), name);
    let what = format!("obtain whose lock was broken ({breaker:?})");

    env.gate.set(Hold::InWait);
    let held_before = env.gate.held_count();
    let task = tokio::spawn({
        let config = config.clone();
        let name = name.to_owned();
        async move { config.obtain([name.as_str()]).await }
    });
    env.gate.wait_held(held_before).await;
    let holder = lock_owner(&lock_file);

    // Take the lock away from the holder.
    let mut second_guard = None;
    let new_owner = match breaker {
        Breaker::ReplaceFile => {
            let owner = "another-instance-0123456789abcdef".to_owned();
            let meta = serde_json::json!({
                "created": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
                "pid": 1,
                "owner": owner,
            });
            let tmp = lock_file.with_file_name(".replacement.tmp");
            std::fs::write(&tmp, serde_json::to_vec(&meta).unwrap()).unwrap();
            std::fs::rename(&tmp, &lock_file).unwrap();
            owner
        }
        Breaker::SecondStorage => {
            let second = FileStorage::builder(env.storage_dir())
                .lock_stale_after(Duration::from_millis(1))
                .lock_poll_interval(Duration::from_millis(1))
                .lock_keepalive(Duration::from_secs(3600))
                .lock_wait_timeout(Some(STEP_BOUND))
                .build();
            let lock_name = keys::cert_lock(&Identifier::parse(name).unwrap());
            let guard = bounded(
                STEP_BOUND,
                "the second storage's lock",
                second.lock(&lock_name),
            )
            .await
            .unwrap();
            let owner = lock_owner(&lock_file);
            second_guard = Some(guard);
            owner
        }
    };
    assert_ne!(new_owner, holder);

    let result = bounded(STEP_BOUND, "the obtain noticing its lost lock", task)
        .await
        .unwrap();
    match &result {
        Err(Error::Storage(StorageError::LockLost(lock))) => {
            assert_eq!(lock, &keys::cert_lock(&Identifier::parse(name).unwrap()));
        }
        other => panic!("{what}: expected Error::Storage(StorageError::LockLost), got {other:?}"),
    }
    env.gate.set(Hold::Nowhere);

    // Reported: a cert_failed event for the name.
    let failed: Vec<Event> = env
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::CertFailed { names, .. } if names.iter().any(|n| n == name)))
        .collect();
    assert_eq!(failed.len(), 1, "{what}: one cert_failed event: {failed:?}");
    if let Event::CertFailed { error, renewal, .. } = &failed[0] {
        assert!(!renewal);
        assert!(
            error.contains("lost"),
            "{what}: the event says why: {error}"
        );
    }
    // Nothing stored for the name, by this config or as seen by a fresh one.
    assert!(
        config.load([name]).await.unwrap().is_none(),
        "{what}: stored"
    );
    let fresh = Config::builder()
        .storage(Arc::new(FileStorage::new(env.storage_dir())))
        .acme(
            AcmeIssuer::builder()
                .ca(env.proxy.directory_url())
                .email(EMAIL)
                .agreed(true),
        )
        .build();
    assert!(
        fresh.load([name]).await.unwrap().is_none(),
        "{what}: stored"
    );
    let stored = FileStorage::new(env.storage_dir())
        .list("certificates", true)
        .await
        .unwrap_or_default();
    assert!(
        !stored.iter().any(|k| k.contains(name)),
        "{what}: certificate files for {name}: {stored:?}"
    );
    assert!(
        !env.events()
            .iter()
            .any(|e| matches!(e, Event::CertObtained { .. })),
        "{what}: nothing obtained"
    );
    // The holder's cleanup left the other owner's lock alone.
    let token = env.gate.last_presented();
    eventually(CLEANUP_BOUND, "the token cleaned up", || async {
        env.gate.was_cleaned(&token)
    })
    .await;
    assert!(env.tokens.get(&token).await.is_none());
    assert!(
        lock_file.exists(),
        "{what}: the other owner's lock was removed"
    );
    assert_eq!(lock_owner(&lock_file), new_owner);
    if let Some(guard) = second_guard {
        assert!(!guard.is_lost(), "the new owner's lock was touched");
        guard.release().await.unwrap();
        assert!(!lock_file.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_replaced_under_an_obtain_is_lost_and_nothing_is_stored() {
    lock_broken_under_obtain(Breaker::ReplaceFile, "replaced-lock.certauto.example").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_broken_by_a_second_storage_is_lost_and_nothing_is_stored() {
    lock_broken_under_obtain(Breaker::SecondStorage, "broken-lock.certauto.example").await;
}

// ----- crash consistency ---------------------------------------------------

/// SIGKILLs a `store-node renew-loop` child at varied points of its
/// force-renewal loop, 20 times; after every kill a fresh config loads the
/// old or the new certificate, whole, verifying against the local CA root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_renewals_leave_the_old_or_the_new_certificate_whole() {
    const NAME: &str = "crash.certauto.test";
    const KILLS: u32 = 20;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let storage_dir = dir.path().join("storage");
    let fresh_config = || {
        Config::builder()
            .storage(Arc::new(FileStorage::new(&storage_dir)))
            .build()
    };
    // The local CA root and a first certificate exist before any child runs.
    let config = fresh_config();
    let first = bounded(STEP_BOUND, "first obtain", config.obtain([NAME]))
        .await
        .unwrap();
    let root_pem = config.local_ca().root_pem().await.unwrap();
    let root = CertificateDer::from_pem_slice(root_pem.as_bytes())
        .unwrap()
        .to_vec();
    let record_key = keys::cert_record(LOCAL_CA_ISSUER_KEY, &Identifier::parse(NAME).unwrap());

    // Every serial a child reported, and the last one it reported.
    let mut seen = HashSet::from([normalize_serial(&first.serial_hex())]);
    let mut last = normalize_serial(&first.serial_hex());
    let (mut kept_old, mut got_new_unreported) = (0, 0);
    for kill in 0..KILLS {
        // Varied kill points: after the k-th "renew" line (k = 2..=4, so each
        // child first completes a renewal: the dead child's lock broke), then
        // 0..=20 ms later.
        let k = 2 + kill % 3;
        let delay = Duration::from_millis(u64::from((kill * 7 + 3) % 21));
        let mut node = Node::spawn(&[
            "renew-loop",
            "--storage",
            path_str(&storage_dir),
            "--name",
            NAME,
            "--rounds",
            "1000",
        ]);
        let mut renews = 0;
        while renews < k {
            let line = node.line().await.unwrap_or_else(|| {
                panic!("kill {kill}: the child stopped before its renewal {k} (see its stderr)")
            });
            if line.starts_with("renew ") {
                renews += 1;
            } else if let Some(rest) = line.strip_prefix("renewed ") {
                let serial = normalize_serial(rest.split_whitespace().nth(1).unwrap());
                seen.insert(serial.clone());
                last = serial;
            }
        }
        tokio::time::sleep(delay).await;
        node.child.start_kill().unwrap();
        let status = node.wait().await;
        assert!(!status.success(), "kill {kill}: the child was killed");
        // Lines written before the kill.
        while let Some(line) = node.line().await {
            if let Some(rest) = line.strip_prefix("renewed ") {
                let serial = normalize_serial(rest.split_whitespace().nth(1).unwrap());
                seen.insert(serial.clone());
                last = serial;
            }
        }

        // The record itself is whole: one key and the chain it belongs to.
        let bytes = FileStorage::new(&storage_dir)
            .load(&record_key)
            .await
            .unwrap_or_else(|e| panic!("kill {kill}: the record is gone: {e}"));
        let text = String::from_utf8(bytes).expect("the record is PEM");
        let end = "PRIVATE KEY-----";
        let split = text
            .find("-----END ")
            .and_then(|i| text[i..].find(end).map(|j| i + j + end.len()))
            .unwrap_or_else(|| panic!("kill {kill}: no key in the record: {text}"));
        Certificate::from_pem(&text[split..], &text[..split], LOCAL_CA_ISSUER_KEY)
            .unwrap_or_else(|e| panic!("kill {kill}: the record is not whole: {e}\n{text}"));

        // A fresh config (a restarted process) loads it.
        let loaded = fresh_config()
            .load([NAME])
            .await
            .unwrap_or_else(|e| panic!("kill {kill}: load failed: {e}"))
            .unwrap_or_else(|| panic!("kill {kill}: no usable certificate loads"));
        let chain: Vec<Vec<u8>> = loaded.chain().iter().map(|c| c.to_vec()).collect();
        webpki_verify_chain(&chain, &root, NAME)
            .unwrap_or_else(|e| panic!("kill {kill}: the loaded chain does not verify: {e}"));
        let serial = normalize_serial(&loaded.serial_hex());
        if serial == last {
            kept_old += 1;
        } else {
            assert!(
                !seen.contains(&serial),
                "kill {kill}: loaded {serial}, an older certificate than the last stored one ({last})"
            );
            // Stored by the killed child just before it could report it.
            got_new_unreported += 1;
            seen.insert(serial.clone());
            last = serial;
        }
    }
    eprintln!(
        "{KILLS} kills: {kept_old} left the last reported certificate, {got_new_unreported} a newer one stored before it was reported"
    );

    // One more child starts cleanly after the last kill and finishes.
    let mut node = Node::spawn(&[
        "renew-loop",
        "--storage",
        path_str(&storage_dir),
        "--name",
        NAME,
        "--rounds",
        "1",
    ]);
    let mut lines = Vec::new();
    while let Some(line) = node.line().await {
        lines.push(line);
    }
    let status = node.wait().await;
    assert!(
        status.success(),
        "the last child failed: {status} {lines:?}"
    );
    let serial = lines
        .last()
        .and_then(|l| l.strip_prefix("renewed 1 "))
        .map(normalize_serial)
        .unwrap_or_else(|| panic!("the last child did not renew: {lines:?}"));
    let loaded = fresh_config().load([NAME]).await.unwrap().unwrap();
    assert_eq!(normalize_serial(&loaded.serial_hex()), serial);
}
