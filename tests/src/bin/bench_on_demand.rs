//! Run with: cargo run --release -p certauto-tests --bin bench-on-demand
//!
//! On-demand TLS benchmark, one Pebble, one TLS server
//! (`AcmeAcceptor::for_config`, the acceptor of certauto-axum's and
//! certauto-actix's `serve(.., &config)`), in one process:
//!
//! * (a) **first handshake vs issuance**: [`ROUNDS`] rounds; in each, the
//!   time from the first ClientHello for a new allowed name (TCP connect
//!   included) to the finished, verified handshake, against the floor:
//!   `Config::obtain` of another fresh name on the same Pebble and issuer
//!   (HTTP-01, the same solver), start to stored. The two take turns going
//!   first. Goal: median on-demand / median floor within 1.2x.
//! * (b) **hostile SNIs**: [`HANDSHAKES`] handshakes for a known name, then
//!   as many with random unknown names (half refused by the allowlist, half
//!   by the decision function), [`CONCURRENCY`] at a time; handshakes per
//!   second of each, their ratio (goal >= 1.0: a refusal costs no more than
//!   a handshake), and the storage reads (a counting wrapper) and orders
//!   (`CertObtaining` events) during the refusals: both must be 0.
//!
//! The table goes to stdout, progress to stderr; a failed check or the
//! deadline makes the binary exit non-zero. Needs Pebble v2.10.1
//! (`scripts/install-pebble.sh`).

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use certauto::{AcmeAcceptor, AcmeIssuer, Config, Event, Http01Solver, OnDemandConfig};
use certauto_tests::{CountingStorage, PEBBLE_VERSION, Pebble};
use common::{BenchResult, Stats, loadavg, machine, secs, webpki_verify_chain, with_timeout};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// The command that runs this benchmark.
const COMMAND: &str = "cargo run --release -p certauto-tests --bin bench-on-demand";
/// Rounds of (a).
const ROUNDS: usize = 15;
/// Handshakes per side in (b).
const HANDSHAKES: u64 = 4_000;
/// Handshakes in flight at once in (b).
const CONCURRENCY: usize = 32;
/// The bound on one issuance or handshake.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// The client's limits with a 5 ms first polling interval (the default is
/// 50 ms): Pebble validates and issues within a few milliseconds, so with
/// 50 ms a run lands at one or two polling waits per order by chance, and the
/// medians of (a) would compare that luck, not the work. Both sides of (a)
/// use this one issuer.
fn poll_limits() -> certauto::acme::ClientLimits {
    let mut limits = certauto::acme::ClientLimits::default();
    limits.poll_initial_interval = Duration::from_millis(5);
    limits
}

fn main() -> ExitCode {
    common::run_async("bench-on-demand", Duration::from_secs(1800), run())
}

fn client_config(root_der: &[u8]) -> BenchResult<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der.to_vec()))
        .map_err(|e| format!("Pebble's root: {e}"))?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("client config: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A full handshake for `name`; the chain, or the error as text.
async fn handshake(
    addr: SocketAddr,
    name: &str,
    client: Arc<ClientConfig>,
) -> Result<Vec<Vec<u8>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(client)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake for {name}: {e}"))?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect())
}

/// `count` handshakes with the names `name(i)`, `CONCURRENCY` at a time;
/// the wall time and how many succeeded.
async fn storm(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    count: u64,
    name: impl Fn(u64) -> String,
) -> (Duration, u64) {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut next = 0;
    let mut ok = 0;
    while next < count || !tasks.is_empty() {
        while next < count && tasks.len() < CONCURRENCY {
            let name = name(next);
            let client = client.clone();
            tasks.spawn(async move { handshake(addr, &name, client).await.is_ok() });
            next += 1;
        }
        if let Some(Ok(true)) = tasks.join_next().await {
            ok += 1;
        }
    }
    (start.elapsed(), ok)
}

fn random_label(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    format!("r{x:016x}")
}

async fn run() -> BenchResult<()> {
    let load_start = loadavg();
    let pebble = Pebble::builder().start().await;
    let root = pebble.root_der(0).await;
    let storage = Arc::new(CountingStorage::new());
    let issuer = AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email("bench@certauto.example")
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .storage(storage.clone())
        .client_limits(poll_limits())
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            pebble.http_port(),
        ))))
        .build();
    let orders = Arc::new(AtomicU64::new(0));
    let counted = orders.clone();
    let on_demand = OnDemandConfig::new()
        .host_allowlist(["*.od.bench.example", "*.gated.bench.example"])
        .map_err(|e| e.to_string())?
        .decision_func(|request| !request.name().as_str().ends_with(".gated.bench.example"));
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer)
        // Not the per-CA limiter's figure: room for every issuance here.
        .issuance_rate_limit(1000, Duration::from_secs(60))
        .on_demand(on_demand)
        .on_event(move |e| {
            if let Event::CertObtaining { .. } = e {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    let tcp = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = tcp.local_addr().map_err(|e| e.to_string())?;
    // The acceptor certauto-axum's and certauto-actix's `serve(.., &config)`
    // run; finished streams are dropped (only handshakes are measured).
    let mut acceptor = AcmeAcceptor::for_config(&config)
        .listen(tcp)
        .map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move {
        loop {
            let (tls, _) = acceptor.accept().await;
            drop(tls);
        }
    });
    let client = client_config(&root)?;

    // Warm-up: the ACME account and the first connection to Pebble.
    common::certauto_obtain(&config, &["warmup.floor.bench.example"], STEP_LIMIT).await?;

    // (a)
    let mut floor = Vec::new();
    let mut first = Vec::new();
    for round in 0..ROUNDS {
        let floor_name = format!("f{round}.floor.bench.example");
        let od_name = format!("n{round}.od.bench.example");
        for step in 0..2 {
            if (round + step) % 2 == 0 {
                let (took, _) =
                    common::certauto_obtain(&config, &[floor_name.as_str()], STEP_LIMIT).await?;
                floor.push(took);
            } else {
                let start = Instant::now();
                let chain = with_timeout(STEP_LIMIT, "first on-demand handshake", async {
                    handshake(addr, &od_name, client.clone()).await
                })
                .await?;
                first.push(start.elapsed());
                webpki_verify_chain(&chain, &root, &od_name)
                    .map_err(|e| format!("{od_name}: {e:?}"))?;
            }
        }
        eprintln!(
            "round {round}: floor {}, on-demand {}",
            secs(floor[round]),
            secs(first[round])
        );
    }
    let floor_stats = Stats::of(&floor)?;
    let first_stats = Stats::of(&first)?;

    // (b)
    let known = "known.od.bench.example";
    with_timeout(STEP_LIMIT, "known name", async {
        handshake(addr, known, client.clone()).await
    })
    .await?;
    let (known_time, known_ok) = storm(addr, &client, HANDSHAKES, |_| known.to_owned()).await;
    if known_ok != HANDSHAKES {
        return Err(format!(
            "{} of {HANDSHAKES} handshakes for the known name failed",
            HANDSHAKES - known_ok
        ));
    }
    let reads_before = storage.reads();
    let orders_before = orders.load(Ordering::SeqCst);
    let (refused_time, refused_ok) = storm(addr, &client, HANDSHAKES, |i| {
        if i.is_multiple_of(2) {
            format!("{}.gated.bench.example", random_label(i))
        } else {
            format!("{}.elsewhere.bench.example", random_label(i))
        }
    })
    .await;
    let reads = storage.reads() - reads_before;
    let new_orders = orders.load(Ordering::SeqCst) - orders_before;
    if refused_ok != 0 {
        return Err(format!("{refused_ok} unknown names got a certificate"));
    }
    if reads != 0 || new_orders != 0 {
        return Err(format!(
            "refusals read storage {reads} times and placed {new_orders} orders"
        ));
    }
    let known_rate = HANDSHAKES as f64 / known_time.as_secs_f64();
    let refused_rate = HANDSHAKES as f64 / refused_time.as_secs_f64();
    server.abort();
    config.cache().stop();
    let load_end = loadavg();

    println!("# bench-on-demand ({COMMAND})");
    println!();
    println!(
        "Pebble {PEBBLE_VERSION}, HTTP-01, `AcmeAcceptor::for_config`; {}",
        machine(&load_start, &load_end)
    );
    println!();
    println!("## (a) first handshake for a new name vs Pebble's issuance ({ROUNDS} rounds)");
    println!();
    println!("| | median | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| floor: `obtain` of a fresh name | {} | {} | {} |",
        secs(floor_stats.median),
        secs(floor_stats.min),
        secs(floor_stats.max)
    );
    println!(
        "| on-demand: ClientHello to finished handshake | {} | {} | {} |",
        secs(first_stats.median),
        secs(first_stats.min),
        secs(first_stats.max)
    );
    let ratio = first_stats.median.as_secs_f64() / floor_stats.median.as_secs_f64();
    println!();
    println!("ratio (median on-demand / median floor): {ratio:.2}x (goal <= 1.2x)");
    println!();
    println!("## (b) hostile SNIs ({HANDSHAKES} handshakes each, {CONCURRENCY} at a time)");
    println!();
    println!("| | handshakes/s |");
    println!("|---|---|");
    println!("| known name | {known_rate:.0} |");
    println!("| refused unknown names (half allowlist, half decision) | {refused_rate:.0} |");
    println!();
    println!(
        "ratio refused/known: {:.2} (goal >= 1.0); storage reads during refusals: {reads}; orders: {new_orders}",
        refused_rate / known_rate
    );
    Ok(())
}
