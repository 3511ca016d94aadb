//! Run with: `cargo run --release -p certauto-tests --bin bench-serve [lookups]`
//! (`lookups` measures only the lookup times and the memory per certificate.)
//!
//! Serving benchmark: what CertAuto costs on the request path. Every figure is measured
//! against a baseline in the same run, interleaved with it, because the machine is shared.
//! CPU times come from `/proc/*/schedstat`, which does not count time other processes had
//! the core but moves in scheduler ticks (4 ms here), so it is only used over long spans.
//!
//! * **Certificates.** [`TOTAL_CERTS`] distinct ECDSA P-256 certificates are issued offline
//!   by one [`LocalCa`] (leaf + root chain, one name each), in parallel on every core.
//!   Every [`WILDCARD_EVERY`]th certificate is a wildcard (`*.w<i>.bench.test`), the others
//!   name one host (`e<i>.bench.test`).
//! * **(1) Full TLS 1.3 handshakes per second** over loopback: a tokio + tokio-rustls accept
//!   loop and [`CONCURRENCY_PER_CORE`] × cores client tasks in this process, each handshake a
//!   fresh TCP connection and a fresh client connection, no resumption (no tickets, no server
//!   session cache, client resumption disabled). The server config's resolver is a
//!   [`CertResolver`] over a [`CertCache`] of 1, 10,000 or 100,000 certificates; the baseline
//!   is `with_single_cert` with one of the same certificates, same settings. Half of the SNI
//!   values of the 10,000 and 100,000 runs are wildcard hits. Per round, [`HANDSHAKES`]
//!   handshakes per configuration in [`CHUNKS`] chunks that alternate with the baseline's;
//!   [`ROUNDS`] rounds. The served certificates are first checked with a WebPKI client.
//!   `resolve` itself is then timed inside real handshakes by a wrapper resolver, for
//!   `CertResolver`, a plain two-map resolver and rustls's `SingleCertAndKey`.
//! * **(2) Lookup time** at 100,000 certificates: `CertCache::certified_key` over [`LOOKUPS`]
//!   SNI values (45 % exact hits, 45 % wildcard hits, 10 % misses) against
//!   `HashMap<String, Arc<CertifiedKey>>::get` of the same values, and against intermediate
//!   variants that take the cache's cost apart ([`VARIANTS`]); interleaved in chunks. Also
//!   over a hot set of [`HOT_SET`] names, per kind of lookup, and the machine's random-read
//!   latency.
//! * **(3) Memory per cached certificate**: `VmRSS` before and after inserting the
//!   [`TOTAL_CERTS`] certificates into an empty `CertCache` (the `Certificate` values already
//!   exist before the first reading, so they are not counted).
//! * **(4) Requests/s** of an axum app over plain HTTP, measured with `wrk` (Debian package
//!   `wrk`), against servers on a one-worker tokio runtime: the bare app against the app with
//!   `AcmeLayer` (`GET /` passes through), `HttpsRedirectLayer`'s 308 against a handler
//!   writing the same 308, `HttpsRedirectLayer`'s pass-through of a challenge path, and both
//!   layers also wrapped around the whole router. [`ROUNDS`] × `-d5s` runs per server, then
//!   [`FINE_PAIRS`] back-to-back pairs of `-d1s` runs, and the same services called
//!   in-process (no network) to measure the middleware's own CPU cost per request.
//!
//! Results go to stdout, progress to stderr. Any failed handshake, wrong certificate, wrong
//! or differing HTTP answer, or missing tool makes the binary exit non-zero.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use certauto::{
    CachedCert, CertCache, CertResolver, Certificate, ChallengeTokens, Identifier, LocalCa,
    MemoryStorage, TlsAlpnChallenges,
};
use certauto_tests::SignatureOnly;
use certauto_tower::{AcmeLayer, HttpsRedirectLayer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::ServiceBuilder;

/// The command that runs this benchmark.
const COMMAND: &str = "cargo run --release -p certauto-tests --bin bench-serve";
/// Distinct certificates issued (and cached in the largest cache).
const TOTAL_CERTS: usize = 100_000;
/// Every this-many-th certificate is a wildcard.
const WILDCARD_EVERY: usize = 10;
/// Cache sizes of the handshake runs (number of certificates, one name each).
const CACHE_SIZES: [usize; 3] = [1, 10_000, 100_000];
/// Index of the certificate used by the one-certificate cache and by the baseline.
const SINGLE_INDEX: usize = 1;
/// Handshakes per timed run.
const HANDSHAKES: usize = 20_000;
/// Untimed handshakes per server before the first timed run.
const WARMUP_HANDSHAKES: usize = 1_000;
/// Rounds of every (baseline, resolver) pair.
const ROUNDS: usize = 3;
/// Each handshake run of a round is split into this many chunks, alternating with the
/// other configuration's chunks.
const CHUNKS: usize = 40;
/// Client tasks (connections in flight) per core.
const CONCURRENCY_PER_CORE: usize = 2;
/// Bound on one handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Lookups per timed lookup run.
const LOOKUPS: usize = 10_000_000;
/// Lookups per timed run of one kind (exact / wildcard / miss) alone.
const LOOKUPS_PER_KIND: usize = 2_000_000;
/// Distinct SNI values the lookups cycle through.
const LOOKUP_POOL: usize = 1_000_000;
/// Distinct SNI values of the hot-set lookup run.
const HOT_SET: usize = 1_000;
/// Each lookup run is split into this many chunks, the variants taking turns.
const LOOKUP_CHUNKS: usize = 10;
/// Parent domain of every name.
const DOMAIN: &str = "bench.test";
/// `wrk` connections, duration and warm-up duration.
const WRK_CONNECTIONS: usize = 32;
const WRK_SECONDS: u32 = 5;
const WRK_WARMUP_SECONDS: u32 = 1;
/// Finely interleaved supplement: pairs of runs of this many seconds, per case.
const FINE_PAIRS: usize = 15;
const FINE_SECONDS: u32 = 1;
/// In-process calls: chunks per service per round, and calls per chunk.
const IN_PROCESS_CHUNKS: usize = 51;
const IN_PROCESS_CHUNK: usize = 1_000;
/// The challenge path requested in the pass-through runs.
const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ";
/// Bound on the whole run.
const RUN_DEADLINE: Duration = Duration::from_secs(40 * 60);

const WRK_MISSING: &str = "wrk not found on PATH: install the Debian package wrk \
                           (apt-get install -y wrk)";

type BenchResult<T> = Result<T, String>;

fn main() -> ExitCode {
    certauto_tests::init_stderr_logging();

    // A watchdog: the run must not hang forever on a shared machine.
    std::thread::spawn(|| {
        std::thread::sleep(RUN_DEADLINE);
        eprintln!("bench-serve: FAILED: the whole run exceeded its deadline of {RUN_DEADLINE:?}");
        std::process::exit(2);
    });

    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-serve: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> BenchResult<()> {
    let started = Instant::now();
    // `bench-serve lookups` measures only (2) and (3).
    let only_lookups = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("lookups") => true,
        Some(other) => {
            return Err(format!(
                "unknown argument {other:?} (expected none or `lookups`)"
            ));
        }
    };
    let wrk = if only_lookups {
        None
    } else {
        Some(find_on_path("wrk").ok_or_else(|| WRK_MISSING.to_owned())?)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut loads = vec![("start".to_owned(), loadavg())];

    // ----- certificates -----
    progress(&format!(
        "issuing {TOTAL_CERTS} P-256 certificates with LocalCa on {cores} threads"
    ));
    let generated = generate_certs(TOTAL_CERTS, cores)?;
    progress(&format!(
        "issued {TOTAL_CERTS} certificates in {:.1} s",
        generated.elapsed.as_secs_f64()
    ));
    loads.push(("after issuing".to_owned(), loadavg()));

    // ----- (3) memory: insert every certificate into an empty cache -----
    progress("(3) memory: inserting every certificate into an empty CertCache");
    let memory = measure_memory(&generated.certs)?;
    let baseline_chain = generated.certs[SINGLE_INDEX].chain().to_vec();
    let baseline_key =
        PrivateKeyDer::from_pem_slice(generated.certs[SINGLE_INDEX].key_pem().as_bytes())
            .map_err(|e| format!("baseline key: {e:?}"))?;
    let rss_before_drop = vm_rss_kib()?;
    drop(generated.certs);
    let rss_after_drop = vm_rss_kib()?;
    let entries = memory.entries;
    let cache_100k = memory.cache;
    let mut caches: Vec<CertCache> = Vec::new();
    for &size in &CACHE_SIZES {
        if size == TOTAL_CERTS {
            caches.push(cache_100k.clone());
        } else if size == 1 {
            let cache = CertCache::new();
            cache.insert_entry(entries[SINGLE_INDEX].clone());
            caches.push(cache);
        } else {
            let cache = CertCache::new();
            for e in &entries[..size] {
                cache.insert_entry(e.clone());
            }
            caches.push(cache);
        }
    }
    for (cache, &size) in caches.iter().zip(&CACHE_SIZES) {
        if cache.len() != size {
            return Err(format!(
                "cache of {size} holds {} certificates",
                cache.len()
            ));
        }
    }
    let plain = Arc::new(PlainMapResolver::new(&entries));
    loads.push(("after memory".to_owned(), loadavg()));

    // ----- (1) handshakes -----
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let handshakes = if only_lookups {
        None
    } else {
        Some(runtime.block_on(handshake_bench(
            cores,
            &caches,
            &entries,
            &generated.root_der,
            baseline_chain,
            baseline_key,
            &plain,
            &mut loads,
        ))?)
    };
    runtime.shutdown_timeout(Duration::from_secs(5));

    // ----- (2) lookups -----
    progress("(2) lookups: building the SNI pools");
    loads.push(("before lookups".to_owned(), loadavg()));
    let lookups = lookup_bench(&cache_100k, &entries, &plain)?;
    loads.push(("after lookups".to_owned(), loadavg()));
    drop(caches);
    drop(cache_100k);
    drop(entries);

    // ----- (4) requests/s with wrk -----
    let requests = match &wrk {
        Some(wrk) => Some(http_bench(wrk, &mut loads)?),
        None => None,
    };
    loads.push(("end".to_owned(), loadavg()));

    Report {
        cores,
        generation: generated.elapsed,
        memory: MemoryFigures {
            rss_before_kib: memory.rss_before_kib,
            rss_after_kib: memory.rss_after_kib,
            rss_before_drop_kib: rss_before_drop,
            rss_after_drop_kib: rss_after_drop,
            insert_time: memory.insert_time,
            chain_der_bytes: memory.chain_der_bytes,
        },
        handshakes,
        lookups,
        requests,
        loads,
        total: started.elapsed(),
    }
    .print();
    Ok(())
}

// ----- names and small helpers -----

fn is_wildcard_index(i: usize) -> bool {
    i.is_multiple_of(WILDCARD_EVERY)
}

/// The name certificate `i` covers.
fn cert_name(i: usize) -> String {
    if is_wildcard_index(i) {
        format!("*.w{i}.{DOMAIN}")
    } else {
        format!("e{i}.{DOMAIN}")
    }
}

/// An SNI value served by certificate `i`: its name, or a host under its wildcard.
fn sni_for(i: usize, host: u64) -> String {
    if is_wildcard_index(i) {
        format!("h{host}.w{i}.{DOMAIN}")
    } else {
        format!("e{i}.{DOMAIN}")
    }
}

/// SplitMix64: a small deterministic generator (no `rand` dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A random exact-name certificate index below `n`.
    fn exact_index(&mut self, n: usize) -> usize {
        let i = self.below(n);
        if is_wildcard_index(i) { i + 1 } else { i }
    }

    /// A random wildcard certificate index below `n`.
    fn wildcard_index(&mut self, n: usize) -> usize {
        self.below(n / WILDCARD_EVERY) * WILDCARD_EVERY
    }
}

fn progress(message: &str) {
    eprintln!("bench-serve: {message}");
}

fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn proc_status_kib(field: &str) -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} line in /proc/self/status"))
}

/// On-CPU time of one thread from its `schedstat` (first field, nanoseconds).
fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// On-CPU time of the calling thread, in nanoseconds: unlike wall time, it does not grow
/// while other processes on the shared machine have the core.
fn thread_cpu_ns() -> BenchResult<u64> {
    schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat"))
        .ok_or_else(|| "cannot read /proc/thread-self/schedstat".to_owned())
}

/// On-CPU time of every thread of this process, in nanoseconds.
fn process_cpu_ns() -> BenchResult<u64> {
    let tasks =
        std::fs::read_dir("/proc/self/task").map_err(|e| format!("read /proc/self/task: {e}"))?;
    Ok(tasks
        .filter_map(Result::ok)
        .filter_map(|t| schedstat_ns(&t.path().join("schedstat")))
        .sum())
}

fn vm_rss_kib() -> BenchResult<u64> {
    proc_status_kib("VmRSS:")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The `q` quantile (nearest rank) of `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n.is_multiple_of(2) {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    } else {
        sorted[n / 2]
    }
}

// ----- certificates -----

struct Generated {
    certs: Vec<Certificate>,
    root_der: Vec<u8>,
    elapsed: Duration,
}

/// Issues `total` certificates (one name each, see [`cert_name`]) from one `LocalCa`, on
/// `threads` OS threads each driving a current-thread runtime.
fn generate_certs(total: usize, threads: usize) -> BenchResult<Generated> {
    let start = Instant::now();
    let ca = LocalCa::new(Arc::new(MemoryStorage::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let root_pem = rt
        .block_on(ca.root_pem())
        .map_err(|e| format!("LocalCa root: {e}"))?;
    let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
        .map_err(|e| format!("LocalCa root PEM: {e:?}"))?
        .as_ref()
        .to_vec();
    let done = AtomicUsize::new(0);
    let per_thread: Vec<BenchResult<Vec<(usize, Certificate)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ca = ca.clone();
                let done = &done;
                s.spawn(move || -> BenchResult<Vec<(usize, Certificate)>> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
                    let mut out = Vec::with_capacity(total / threads + 1);
                    for i in (t..total).step_by(threads) {
                        let id = Identifier::parse(&cert_name(i))
                            .map_err(|e| format!("name {}: {e}", cert_name(i)))?;
                        let cert = rt
                            .block_on(ca.issue_for(&[id]))
                            .map_err(|e| format!("LocalCa issue for {}: {e}", cert_name(i)))?;
                        out.push((i, cert));
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(20_000) {
                            progress(&format!("  {n} certificates issued"));
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("an issuing thread panicked".to_owned()))
            })
            .collect()
    });
    let mut all: Vec<(usize, Certificate)> = Vec::with_capacity(total);
    for part in per_thread {
        all.extend(part?);
    }
    all.sort_by_key(|(i, _)| *i);
    let certs: Vec<Certificate> = all.into_iter().map(|(_, c)| c).collect();
    for (i, cert) in certs.iter().enumerate() {
        let expected = Identifier::parse(&cert_name(i)).map_err(|e| e.to_string())?;
        if cert.names() != [expected] || cert.chain().len() != 2 {
            return Err(format!(
                "certificate {i}: names {:?}, chain of {}",
                cert.names(),
                cert.chain().len()
            ));
        }
    }
    Ok(Generated {
        certs,
        root_der,
        elapsed: start.elapsed(),
    })
}

// ----- (3) memory -----

struct MemoryRun {
    cache: CertCache,
    entries: Vec<Arc<CachedCert>>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    insert_time: Duration,
    chain_der_bytes: f64,
}

struct MemoryFigures {
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_before_drop_kib: u64,
    rss_after_drop_kib: u64,
    insert_time: Duration,
    chain_der_bytes: f64,
}

impl MemoryFigures {
    fn bytes_per_cert(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) * 1024.0 / TOTAL_CERTS as f64
    }
}

/// Inserts every certificate into an empty cache, on this thread, reading `VmRSS` before and
/// after. The `Certificate` values, the cache and the vector of entries exist before the
/// first reading, so the difference is what the cache allocated.
fn measure_memory(certs: &[Certificate]) -> BenchResult<MemoryRun> {
    let cache = CertCache::new();
    let mut entries: Vec<Arc<CachedCert>> = Vec::with_capacity(certs.len());
    let rss_before_kib = vm_rss_kib()?;
    let start = Instant::now();
    for cert in certs {
        entries.push(
            cache
                .add_unmanaged(cert)
                .map_err(|e| format!("CertCache::add_unmanaged: {e}"))?,
        );
    }
    let insert_time = start.elapsed();
    let rss_after_kib = vm_rss_kib()?;
    if cache.len() != certs.len() {
        return Err(format!(
            "the cache holds {} of {} certificates",
            cache.len(),
            certs.len()
        ));
    }
    let chain_bytes: usize = entries
        .iter()
        .map(|e| {
            e.certified_key()
                .cert
                .iter()
                .map(|c| c.len())
                .sum::<usize>()
        })
        .sum();
    Ok(MemoryRun {
        cache,
        chain_der_bytes: chain_bytes as f64 / entries.len() as f64,
        entries,
        rss_before_kib,
        rss_after_kib,
        insert_time,
    })
}

// ----- (1) handshakes -----

/// Wraps a resolver and adds up the time spent in its `resolve`.
#[derive(Debug)]
struct TimedResolver {
    inner: Arc<dyn ResolvesServerCert>,
    nanos: AtomicU64,
    calls: AtomicU64,
    samples: std::sync::Mutex<Vec<u64>>,
}

impl TimedResolver {
    fn new(inner: Arc<dyn ResolvesServerCert>) -> Self {
        Self {
            inner,
            nanos: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            samples: std::sync::Mutex::new(Vec::with_capacity(2 * HANDSHAKES)),
        }
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset(&self) {
        self.nanos.store(0, Ordering::Relaxed);
        self.calls.store(0, Ordering::Relaxed);
        self.samples().clear();
    }

    /// Mean, median and 90th percentile of the timed calls, in ns.
    fn stats(&self) -> ResolveStats {
        let mean =
            self.nanos.load(Ordering::Relaxed) as f64 / self.calls.load(Ordering::Relaxed) as f64;
        let mut samples = self.samples().clone();
        samples.sort_unstable();
        let at = |q: usize| samples.get(samples.len() * q / 100).copied().unwrap_or(0) as f64;
        ResolveStats {
            mean,
            median: at(50),
            p90: at(90),
        }
    }
}

#[derive(Clone, Copy)]
struct ResolveStats {
    mean: f64,
    median: f64,
    p90: f64,
}

impl ResolvesServerCert for TimedResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let start = Instant::now();
        let key = self.inner.resolve(hello);
        let ns = start.elapsed().as_nanos() as u64;
        self.nanos.fetch_add(ns, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.samples().push(ns);
        key
    }
}

/// The simplest resolver over plain maps, for comparison with [`CertResolver`]: the exact
/// name, then the one-label wildcard, as `CertCache` does, but with no lock and the
/// `Arc<CertifiedKey>` stored in the maps (its keys are allocated one after another).
#[derive(Debug)]
struct PlainMapResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl PlainMapResolver {
    fn new(entries: &[Arc<CachedCert>]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for e in entries {
            for id in e.names() {
                let name = id.as_str();
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_owned(), e.certified_key().clone()),
                    None => exact.insert(name.into_owned(), e.certified_key().clone()),
                };
            }
        }
        Self { exact, wildcard }
    }

    fn find(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(key) = self.exact.get(sni) {
            return Some(key.clone());
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

impl ResolvesServerCert for PlainMapResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(hello.server_name()?)
    }
}

/// The server settings shared by every configuration: TLS 1.3 only, ring, no tickets, no
/// session cache, ALPN `http/1.1`.
fn server_builder()
-> BenchResult<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>> {
    Ok(
        ServerConfig::builder_with_provider(certauto::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("server protocol versions: {e}"))?
            .with_no_client_auth(),
    )
}

fn finish_server_config(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn resolver_config(resolver: Arc<dyn ResolvesServerCert>) -> BenchResult<Arc<ServerConfig>> {
    Ok(finish_server_config(
        server_builder()?.with_cert_resolver(resolver),
    ))
}

fn client_config(verifier: Option<rustls::RootCertStore>) -> BenchResult<Arc<ClientConfig>> {
    let provider = certauto::crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("client protocol versions: {e}"))?;
    let mut config = match verifier {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignatureOnly::new()))
            .with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

struct TlsServer {
    addr: SocketAddr,
    errors: Arc<AtomicU64>,
}

/// Binds a free 127.0.0.1 port and accepts TLS on it until the runtime stops: each
/// connection completes the handshake, writes one byte and closes (close_notify, FIN), so
/// that the client knows the server finished the handshake, and TIME_WAIT stays server-side.
async fn start_tls_server(config: Arc<ServerConfig>) -> BenchResult<TlsServer> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind a TLS listener: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listener address: {e}"))?;
    let errors = Arc::new(AtomicU64::new(0));
    let acceptor = TlsAcceptor::from(config);
    let task_errors = errors.clone();
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let errors = task_errors.clone();
            tokio::spawn(async move {
                let served = async {
                    tcp.set_nodelay(true)?;
                    let mut tls = acceptor.accept(tcp).await?;
                    tls.write_all(b"k").await?;
                    tls.shutdown().await
                };
                if served.await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(TlsServer { addr, errors })
}

/// One full handshake on a fresh connection; returns the server's leaf certificate.
async fn handshake(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: ServerName<'static>,
) -> std::io::Result<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name, tcp).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| std::io::Error::other("no server certificate"))?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await?;
    // Wait for the server's close_notify (read returns 0), so that the server closes first.
    let rest = tls.read(&mut byte).await?;
    if byte != *b"k" || rest != 0 {
        return Err(std::io::Error::other("unexpected data from the server"));
    }
    Ok(leaf)
}

/// Runs `total` handshakes with `concurrency` client tasks, the SNI values taken from
/// `names` from index `start` on; returns the wall time.
async fn run_handshakes(
    server: &TlsServer,
    connector: &TlsConnector,
    names: &Arc<Vec<ServerName<'static>>>,
    start: usize,
    total: usize,
    concurrency: usize,
) -> BenchResult<Duration> {
    let errors_before = server.errors.load(Ordering::Relaxed);
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let names = names.clone();
        let connector = connector.clone();
        let addr = server.addr;
        tasks.spawn(async move {
            let mut done = 0usize;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let name = names[(start + k) % names.len()].clone();
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(addr, &connector, name))
                    .await
                    .map_err(|_| format!("a handshake exceeded {HANDSHAKE_TIMEOUT:?}"))?
                    .map_err(|e| format!("handshake {k} failed: {e}"))?;
                done += 1;
            }
            Ok::<_, String>(done)
        });
    }
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        done += joined.map_err(|e| format!("client task: {e}"))??;
    }
    let elapsed = began.elapsed();
    let server_errors = server.errors.load(Ordering::Relaxed) - errors_before;
    if done != total || server_errors != 0 {
        return Err(format!(
            "{done} of {total} handshakes completed, {server_errors} server-side errors"
        ));
    }
    Ok(elapsed)
}

/// One configuration of an interleaved handshake run.
struct Target<'a> {
    server: &'a TlsServer,
    names: &'a Arc<Vec<ServerName<'static>>>,
}

/// Runs `per_target` handshakes against each target, in [`CHUNKS`] chunks: chunk after
/// chunk, every target takes its turn (the order reversing every chunk, so that neither
/// always goes first), so that a change of load on the shared machine hits them alike.
/// Returns each target's handshakes/s (wall clock) and the CPU time this process spent
/// per handshake (client and server together, from `/proc/self/task/*/schedstat`), in µs.
async fn run_interleaved(
    targets: &[Target<'_>],
    connector: &TlsConnector,
    per_target: usize,
    concurrency: usize,
    round: usize,
) -> BenchResult<(Vec<f64>, Vec<f64>)> {
    let chunk = per_target / CHUNKS;
    let mut elapsed = vec![Duration::ZERO; targets.len()];
    let mut cpu_ns = vec![0u64; targets.len()];
    for c in 0..CHUNKS {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if !(c + round).is_multiple_of(2) {
            order.reverse();
        }
        for t in order {
            let target = &targets[t];
            let cpu_before = process_cpu_ns()?;
            elapsed[t] += run_handshakes(
                target.server,
                connector,
                target.names,
                c * chunk,
                chunk,
                concurrency,
            )
            .await?;
            cpu_ns[t] += process_cpu_ns()?.saturating_sub(cpu_before);
        }
    }
    let done = (chunk * CHUNKS) as f64;
    Ok((
        elapsed.iter().map(|e| done / e.as_secs_f64()).collect(),
        cpu_ns.iter().map(|&ns| ns as f64 / 1000.0 / done).collect(),
    ))
}

/// SNI values for a run against a cache of `size`: for 10,000 and more, alternately an
/// exact name and a host under a wildcard; for 1, the one name.
fn handshake_names(size: usize, seed: u64) -> BenchResult<(Vec<ServerName<'static>>, Vec<usize>)> {
    let mut rng = Rng(seed);
    let mut names = Vec::with_capacity(HANDSHAKES);
    let mut indices = Vec::with_capacity(HANDSHAKES);
    for k in 0..HANDSHAKES {
        let i = if size == 1 {
            SINGLE_INDEX
        } else if k.is_multiple_of(2) {
            rng.exact_index(size)
        } else {
            rng.wildcard_index(size)
        };
        let sni = sni_for(i, rng.next() % 1000);
        names.push(ServerName::try_from(sni).map_err(|e| format!("server name: {e}"))?);
        indices.push(i);
    }
    Ok((names, indices))
}

struct HandshakeRun {
    size: usize,
    baseline: Vec<f64>,
    resolver: Vec<f64>,
    /// CPU µs per handshake (whole process: client and server).
    baseline_cpu: Vec<f64>,
    resolver_cpu: Vec<f64>,
}

impl HandshakeRun {
    fn ratios(&self) -> Vec<f64> {
        self.resolver
            .iter()
            .zip(&self.baseline)
            .map(|(r, b)| r / b)
            .collect()
    }

    /// Baseline CPU per handshake / resolver CPU per handshake, per round.
    fn cpu_ratios(&self) -> Vec<f64> {
        self.baseline_cpu
            .iter()
            .zip(&self.resolver_cpu)
            .map(|(b, r)| b / r)
            .collect()
    }
}

struct HandshakeFigures {
    concurrency: usize,
    runs: Vec<HandshakeRun>,
    checked: usize,
    resolve_single: ResolveStats,
    resolve_plain: ResolveStats,
    resolve_100k: ResolveStats,
    resolve_calls: u64,
    timer_ns: f64,
}

#[allow(clippy::too_many_arguments)]
async fn handshake_bench(
    cores: usize,
    caches: &[CertCache],
    entries: &[Arc<CachedCert>],
    root_der: &[u8],
    baseline_chain: Vec<CertificateDer<'static>>,
    baseline_key: PrivateKeyDer<'static>,
    plain: &Arc<PlainMapResolver>,
    loads: &mut Vec<(String, String)>,
) -> BenchResult<HandshakeFigures> {
    let concurrency = CONCURRENCY_PER_CORE * cores;
    let baseline_config = finish_server_config(
        server_builder()?
            .with_single_cert(baseline_chain, baseline_key)
            .map_err(|e| format!("with_single_cert: {e}"))?,
    );
    let baseline = start_tls_server(baseline_config).await?;
    let mut servers = Vec::new();
    for cache in caches {
        let resolver = CertResolver::new(cache.clone(), TlsAlpnChallenges::new());
        servers.push(start_tls_server(resolver_config(Arc::new(resolver))?).await?);
    }
    let fast = TlsConnector::from(client_config(None)?);

    // Correctness first: a full WebPKI client trusting the LocalCa root gets the right
    // certificate for exact and wildcard names, and an unknown name is refused.
    progress("(1) handshakes: checking the served certificates with a WebPKI client");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der.to_vec()))
        .map_err(|e| format!("LocalCa root rejected: {e}"))?;
    let strict = TlsConnector::from(client_config(Some(roots))?);
    let mut checked = 0;
    for (cache_index, (server, &size)) in servers.iter().zip(&CACHE_SIZES).enumerate() {
        let (names, indices) = handshake_names(size, 0xc0ffee + cache_index as u64)?;
        for (name, &i) in names.iter().zip(&indices).take(200) {
            let leaf = handshake(server.addr, &strict, name.clone())
                .await
                .map_err(|e| format!("WebPKI check of {name:?} (cache {size}): {e}"))?;
            if leaf != entries[i].certified_key().cert[0] {
                return Err(format!(
                    "cache {size}: wrong certificate served for {name:?}"
                ));
            }
            checked += 1;
        }
        let unknown = ServerName::try_from(format!("unknown.a.{DOMAIN}"))
            .map_err(|e| format!("server name: {e}"))?;
        if handshake(server.addr, &fast, unknown).await.is_ok() {
            return Err(format!("cache {size}: an unknown name was not refused"));
        }
        server.errors.store(0, Ordering::Relaxed);
    }

    let mut name_lists = Vec::new();
    for (k, &size) in CACHE_SIZES.iter().enumerate() {
        name_lists.push(Arc::new(handshake_names(size, 42 + k as u64)?.0));
    }
    let baseline_names = name_lists[CACHE_SIZES.len() - 1].clone();

    progress("(1) handshakes: warming up");
    run_handshakes(
        &baseline,
        &fast,
        &baseline_names,
        0,
        WARMUP_HANDSHAKES,
        concurrency,
    )
    .await?;
    for (server, names) in servers.iter().zip(&name_lists) {
        run_handshakes(server, &fast, names, 0, WARMUP_HANDSHAKES, concurrency).await?;
    }

    loads.push(("before handshakes".to_owned(), loadavg()));
    let mut runs: Vec<HandshakeRun> = CACHE_SIZES
        .iter()
        .map(|&size| HandshakeRun {
            size,
            baseline: Vec::new(),
            resolver: Vec::new(),
            baseline_cpu: Vec::new(),
            resolver_cpu: Vec::new(),
        })
        .collect();
    for round in 0..ROUNDS {
        for (k, run) in runs.iter_mut().enumerate() {
            let targets = [
                Target {
                    server: &baseline,
                    names: &baseline_names,
                },
                Target {
                    server: &servers[k],
                    names: &name_lists[k],
                },
            ];
            let (rates, cpu) =
                run_interleaved(&targets, &fast, HANDSHAKES, concurrency, round + k).await?;
            progress(&format!(
                "  round {} cache {:>6}: baseline {:.0}, resolver {:.0} handshakes/s ({:.3}x); \
                 CPU {:.0} / {:.0} us per handshake",
                round + 1,
                run.size,
                rates[0],
                rates[1],
                rates[1] / rates[0],
                cpu[0],
                cpu[1]
            ));
            run.baseline.push(rates[0]);
            run.resolver.push(rates[1]);
            run.baseline_cpu.push(cpu[0]);
            run.resolver_cpu.push(cpu[1]);
        }
    }
    loads.push(("after handshakes".to_owned(), loadavg()));

    // The full resolve path, timed inside real handshakes: rustls's own single-certificate
    // resolver, a plain two-map resolver and CertResolver, the last two over the same
    // 100,000 certificates, with the SNI values of the 100,000 runs.
    progress("(1b) timing resolve() inside real handshakes");
    let single_entry = entries[SINGLE_INDEX].certified_key().clone();
    let timed_single = Arc::new(TimedResolver::new(Arc::new(SingleCertAndKey::from(
        single_entry,
    ))));
    let timed_plain = Arc::new(TimedResolver::new(plain.clone()));
    let timed_100k = Arc::new(TimedResolver::new(Arc::new(CertResolver::new(
        caches[CACHE_SIZES.len() - 1].clone(),
        TlsAlpnChallenges::new(),
    ))));
    let timed_servers = [
        start_tls_server(resolver_config(timed_single.clone())?).await?,
        start_tls_server(resolver_config(timed_plain.clone())?).await?,
        start_tls_server(resolver_config(timed_100k.clone())?).await?,
    ];
    let targets: Vec<Target<'_>> = timed_servers
        .iter()
        .map(|server| Target {
            server,
            names: &baseline_names,
        })
        .collect();
    for target in &targets {
        run_handshakes(
            target.server,
            &fast,
            target.names,
            0,
            WARMUP_HANDSHAKES,
            concurrency,
        )
        .await?;
    }
    timed_single.reset();
    timed_plain.reset();
    timed_100k.reset();
    run_interleaved(&targets, &fast, HANDSHAKES, concurrency, 0).await?;

    Ok(HandshakeFigures {
        concurrency,
        runs,
        checked,
        resolve_single: timed_single.stats(),
        resolve_plain: timed_plain.stats(),
        resolve_100k: timed_100k.stats(),
        resolve_calls: timed_100k.calls.load(Ordering::Relaxed),
        timer_ns: timer_cost_ns(),
    })
}

/// The cost of one `Instant::now()` + `elapsed()` pair, to read the resolve timings against.
fn timer_cost_ns() -> f64 {
    const N: u32 = 1_000_000;
    let start = Instant::now();
    let mut total = Duration::ZERO;
    for _ in 0..N {
        let t = Instant::now();
        total += black_box(t).elapsed();
    }
    black_box(total);
    start.elapsed().as_nanos() as f64 / f64::from(N)
}

// ----- (2) lookups -----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Wildcard,
    Miss,
}

/// ns per lookup, by wall clock and by on-CPU time of the timing thread (schedstat, which
/// moves in 4 ms ticks here: meaningful for long runs only).
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: f64,
}

fn medians(t: &[Timing]) -> Timing {
    let wall: Vec<f64> = t.iter().map(|t| t.wall).collect();
    let cpu: Vec<f64> = t.iter().map(|t| t.cpu).collect();
    Timing {
        wall: median(&wall),
        cpu: median(&cpu),
    }
}

/// The lookups compared, in table order.
const VARIANTS: [&str; 5] = [
    "CertCache::certified_key",
    "two maps of Arc<CachedCert>, entry Arc cloned (CertCache's steps without the lock)",
    "two maps of Arc<CachedCert>, only the CertifiedKey Arc cloned",
    "two maps of Arc<CertifiedKey> (exact, then wildcard)",
    "one HashMap<String, Arc<CertifiedKey>>::get (baseline)",
];

struct LookupFigures {
    /// Per variant: one timing per round.
    mix: Vec<Vec<Timing>>,
    /// Per variant: the same mix over a hot set of [`HOT_SET`] names.
    hot: Vec<Timing>,
    /// Per kind of lookup alone: label, then one timing per variant.
    per_kind: Vec<(&'static str, Vec<Timing>)>,
    hit_share: f64,
    /// Dependent random reads over 4 MiB and 256 MiB (ns per read).
    read_latency: [(usize, f64); 2],
}

/// Maps keyed like `CertCache`'s index (exact names; wildcard parents) holding the same
/// `Arc<CachedCert>` entries, their keys allocated one after another: CertCache's lookup
/// steps without its lock, to take its cost apart.
struct EntryMaps {
    exact: HashMap<String, Arc<CachedCert>>,
    wildcard: HashMap<String, Arc<CachedCert>>,
}

impl EntryMaps {
    fn new(entries: &[Arc<CachedCert>]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for e in entries {
            for id in e.names() {
                let name = id.as_str();
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_owned(), e.clone()),
                    None => exact.insert(name.into_owned(), e.clone()),
                };
            }
        }
        Self { exact, wildcard }
    }

    fn get(&self, sni: &str) -> Option<&Arc<CachedCert>> {
        if let Some(e) = self.exact.get(sni) {
            return Some(e);
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent)
    }
}

struct LookupSubjects<'a> {
    cache: &'a CertCache,
    entry_maps: EntryMaps,
    plain: &'a PlainMapResolver,
    map: HashMap<String, Arc<CertifiedKey>>,
}

impl LookupSubjects<'_> {
    /// Times variant `v` (an index into [`VARIANTS`]).
    fn time(&self, v: usize, pool: &[String], lookups: usize) -> BenchResult<(Timing, usize)> {
        match v {
            0 => time_lookups(pool, lookups, |sni| self.cache.certified_key(sni)),
            1 => time_lookups(pool, lookups, |sni| {
                self.entry_maps
                    .get(sni)
                    .cloned()
                    .map(|e| e.certified_key().clone())
            }),
            2 => time_lookups(pool, lookups, |sni| {
                self.entry_maps.get(sni).map(|e| e.certified_key().clone())
            }),
            3 => time_lookups(pool, lookups, |sni| self.plain.find(sni)),
            _ => time_lookups(pool, lookups, |sni| self.map.get(sni).cloned()),
        }
    }

    /// Times every variant on `pool`, `lookups` each, in [`LOOKUP_CHUNKS`] chunks taking
    /// turns (the order rotating), so that a change of load hits them alike. Returns one
    /// timing per variant (wall: the median of its chunks, which drops chunks during which
    /// another process had the core; CPU: the mean) and the hits of the first.
    fn time_all(
        &self,
        pool: &[String],
        lookups: usize,
        turn: usize,
    ) -> BenchResult<(Vec<Timing>, usize)> {
        let chunk = lookups / LOOKUP_CHUNKS;
        let mut wall: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut cpu = vec![0.0; VARIANTS.len()];
        let mut hits = 0;
        for c in 0..LOOKUP_CHUNKS {
            let mut order: Vec<usize> = (0..VARIANTS.len()).collect();
            order.rotate_left((c + turn) % VARIANTS.len());
            if (c + turn) % 2 == 1 {
                order.reverse();
            }
            for v in order {
                let (t, h) = self.time(v, pool, chunk)?;
                wall[v].push(t.wall);
                cpu[v] += t.cpu;
                if v == 0 {
                    hits += h;
                }
            }
        }
        let n = LOOKUP_CHUNKS as f64;
        Ok((
            wall.iter()
                .zip(&cpu)
                .map(|(w, c)| Timing {
                    wall: median(w),
                    cpu: c / n,
                })
                .collect(),
            hits,
        ))
    }

    fn all(&self, sni: &str) -> [Option<Arc<CertifiedKey>>; 5] {
        [
            self.cache.certified_key(sni),
            self.entry_maps
                .get(sni)
                .cloned()
                .map(|e| e.certified_key().clone()),
            self.entry_maps.get(sni).map(|e| e.certified_key().clone()),
            self.plain.find(sni),
            self.map.get(sni).cloned(),
        ]
    }
}

/// `count` SNI values of the given kinds (kinds chosen at random with the weights).
fn lookup_pool(rng: &mut Rng, weights: [(Kind, u64); 3], count: usize) -> Vec<String> {
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    (0..count)
        .map(|_| {
            let mut pick = rng.next() % total;
            let mut kind = Kind::Miss;
            for (k, w) in weights {
                if pick < w {
                    kind = k;
                    break;
                }
                pick -= w;
            }
            match kind {
                Kind::Exact => sni_for(rng.exact_index(TOTAL_CERTS), 0),
                Kind::Wildcard => sni_for(rng.wildcard_index(TOTAL_CERTS), 0),
                Kind::Miss => format!("m{}.{DOMAIN}", rng.next() % 1_000_000),
            }
        })
        .collect()
}

/// Times `lookups` calls of `find` cycling through `pool`; returns the timing and the hits.
fn time_lookups<F>(pool: &[String], lookups: usize, find: F) -> BenchResult<(Timing, usize)>
where
    F: Fn(&str) -> Option<Arc<CertifiedKey>>,
{
    let mut hits = 0usize;
    let cpu_start = thread_cpu_ns()?;
    let start = Instant::now();
    for k in 0..lookups {
        let sni = black_box(pool[k % pool.len()].as_str());
        if let Some(key) = find(sni) {
            hits += 1;
            black_box(&key);
        }
    }
    let wall = start.elapsed();
    let cpu = thread_cpu_ns()?.saturating_sub(cpu_start);
    let n = lookups as f64;
    Ok((
        Timing {
            wall: wall.as_nanos() as f64 / n,
            cpu: cpu as f64 / n,
        },
        hits,
    ))
}

/// ns per dependent random read (pointer chasing, one read per cache line) over a buffer of
/// `mib` MiB, best of three runs: what a lookup pays for a memory access that misses the CPU
/// caches.
fn read_latency_ns(mib: usize) -> BenchResult<f64> {
    const STEPS: usize = 2_000_000;
    let lines = mib * 1024 * 1024 / 64;
    let mut next = vec![0u32; lines * 16];
    // Sattolo's algorithm: one random cycle through every line.
    let mut order: Vec<u32> = (0..lines as u32).collect();
    let mut rng = Rng(99);
    for i in (1..lines).rev() {
        order.swap(i, rng.below(i));
    }
    for i in 0..lines {
        next[order[i] as usize * 16] = order[(i + 1) % lines] * 16;
    }
    let mut at = 0u32;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..STEPS {
            at = next[at as usize];
        }
        best = best.min(start.elapsed().as_nanos() as f64 / STEPS as f64);
    }
    black_box(at);
    Ok(best)
}

const MIX: [(Kind, u64); 3] = [(Kind::Exact, 45), (Kind::Wildcard, 45), (Kind::Miss, 10)];

fn lookup_bench(
    cache: &CertCache,
    entries: &[Arc<CachedCert>],
    plain: &PlainMapResolver,
) -> BenchResult<LookupFigures> {
    let mut rng = Rng(7);
    let mix = lookup_pool(&mut rng, MIX, LOOKUP_POOL);
    // The baseline map holds every SNI value the pools can hit, one entry per certificate
    // (the wildcard hits all use host `h0`), so each of its lookups is one `get` in a map of
    // the same size as the cache's index.
    let mut map: HashMap<String, Arc<CertifiedKey>> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        map.insert(sni_for(i, 0), e.certified_key().clone());
    }
    let subjects = LookupSubjects {
        cache,
        entry_maps: EntryMaps::new(entries),
        plain,
        map,
    };

    // The same answers from all of them.
    for sni in mix.iter().take(100_000) {
        let [first, rest @ ..] = subjects.all(sni);
        let same = rest.iter().all(|other| match (&first, other) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        });
        if !same {
            return Err(format!("lookup of {sni}: the cache and the maps disagree"));
        }
    }

    progress("(2) lookups: warming up");
    for v in 0..VARIANTS.len() {
        subjects.time(v, &mix, LOOKUP_POOL)?;
    }
    let mut timings: Vec<Vec<Timing>> = vec![Vec::new(); VARIANTS.len()];
    let mut hits = 0;
    for round in 0..ROUNDS {
        let (round_timings, h) = subjects.time_all(&mix, LOOKUPS, round)?;
        hits = h;
        for (v, t) in round_timings.into_iter().enumerate() {
            timings[v].push(t);
        }
        let line: Vec<String> = timings
            .iter()
            .map(|t| format!("{:.1}", t[round].wall))
            .collect();
        progress(&format!(
            "  round {}: ns per lookup {}",
            round + 1,
            line.join(" / ")
        ));
    }

    // The same mix over a small hot set: what a lookup costs when its data is in the CPU
    // caches, as for a server whose traffic goes to few names.
    let hot_set = lookup_pool(&mut rng, MIX, HOT_SET);
    subjects.time_all(&hot_set, LOOKUPS_PER_KIND, 0)?;
    let hot = subjects.time_all(&hot_set, LOOKUPS, 1)?.0;

    let mut per_kind = Vec::new();
    for (label, kind) in [
        ("exact hits", Kind::Exact),
        ("wildcard hits", Kind::Wildcard),
        ("misses", Kind::Miss),
    ] {
        let weights = [
            (Kind::Exact, u64::from(kind == Kind::Exact)),
            (Kind::Wildcard, u64::from(kind == Kind::Wildcard)),
            (Kind::Miss, u64::from(kind == Kind::Miss)),
        ];
        let pool = lookup_pool(&mut rng, weights, LOOKUP_POOL);
        per_kind.push((label, subjects.time_all(&pool, LOOKUPS_PER_KIND, 0)?.0));
    }
    drop(mix);
    drop(subjects);
    progress("(2) measuring the machine's random-read latency");
    let read_latency = [(4, read_latency_ns(4)?), (256, read_latency_ns(256)?)];
    Ok(LookupFigures {
        mix: timings,
        hot,
        per_kind,
        hit_share: hits as f64 / LOOKUPS as f64,
        read_latency,
    })
}

// ----- (4) requests/s with wrk -----

struct WrkPair {
    label: &'static str,
    baseline_label: &'static str,
    layered_label: &'static str,
    /// Layered / baseline requests/s of each back-to-back pair of short runs.
    fine_ratios: Vec<f64>,
    /// On-CPU ns per in-process call, per round: baseline, layered.
    in_process: (Vec<f64>, Vec<f64>),
    baseline: Vec<f64>,
    layered: Vec<f64>,
    /// Server CPU µs per request.
    baseline_cpu: Vec<f64>,
    layered_cpu: Vec<f64>,
}

impl WrkPair {
    fn ratios(&self) -> Vec<f64> {
        self.layered
            .iter()
            .zip(&self.baseline)
            .map(|(l, b)| l / b)
            .collect()
    }
}

async fn hello() -> &'static str {
    "Hello, world!"
}

/// The bare app: `GET /` and a route of its own on the challenge path.
fn bare_app() -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/.well-known/acme-challenge/{token}", get(hello))
}

/// A handler writing the redirect `HttpsRedirectLayer` writes: 308 to
/// `https://<Host without port><path and query>`.
async fn manual_redirect(
    headers: HeaderMap,
    uri: Uri,
) -> (StatusCode, [(header::HeaderName, HeaderValue); 1]) {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(':').next())
        .unwrap_or("localhost");
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = HeaderValue::try_from(format!("https://{host}{path}"))
        .unwrap_or_else(|_| HeaderValue::from_static("https://localhost/"));
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, location)],
    )
}

/// Serves `service` with `axum::serve` on a free 127.0.0.1 port, on `rt`.
fn serve_http<S>(rt: &tokio::runtime::Runtime, service: S) -> BenchResult<SocketAddr>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("bind an HTTP listener: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listener address: {e}"))?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    rt.spawn(async move {
        let make_service = axum::ServiceExt::<Request>::into_make_service(service);
        if let Err(e) = axum::serve(listener, make_service).await {
            tracing::warn!(error = %e, "axum::serve ended");
        }
    });
    Ok(addr)
}

/// One HTTP/1.1 request on a fresh connection: the status line and the raw response.
fn http_get(addr: SocketAddr, path: &str) -> BenchResult<String> {
    let mut tcp = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    Ok(response)
}

/// Requests `path` and checks the status and a substring of the (lower-cased) response;
/// returns the response without its `date` header, to compare answers.
fn checked_response(
    addr: SocketAddr,
    path: &str,
    status: &str,
    contains: &str,
    what: &str,
) -> BenchResult<String> {
    let response = http_get(addr, path)?;
    let lower = response.to_ascii_lowercase();
    if !response.starts_with(&format!("HTTP/1.1 {status}")) || !lower.contains(contains) {
        return Err(format!(
            "{what}: GET {path} answered unexpectedly:\n{response}"
        ));
    }
    Ok(response
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n"))
}

/// ns per call of `a` and of `b` on `path` (the service cloned per request, as hyper's
/// adapter does; the response body read to its end), per round: the median over
/// [`IN_PROCESS_CHUNKS`] short chunks of [`IN_PROCESS_CHUNK`] calls, the two services taking
/// turns. Chunks are timed by the wall clock (schedstat's CPU time only moves in 4 ms
/// ticks here); the median drops the chunks during which another process had the core.
async fn time_pair<A, B>(a: &A, b: &B, path: &'static str) -> BenchResult<(Vec<f64>, Vec<f64>)>
where
    A: tower::Service<Request, Response = Response, Error = Infallible> + Clone,
    B: tower::Service<Request, Response = Response, Error = Infallible> + Clone,
{
    call_ns(a, path, 10 * IN_PROCESS_CHUNK).await?;
    call_ns(b, path, 10 * IN_PROCESS_CHUNK).await?;
    let mut a_ns = Vec::new();
    let mut b_ns = Vec::new();
    for round in 0..ROUNDS {
        let mut chunks_a = Vec::new();
        let mut chunks_b = Vec::new();
        for c in 0..IN_PROCESS_CHUNKS {
            if (c + round).is_multiple_of(2) {
                chunks_a.push(call_ns(a, path, IN_PROCESS_CHUNK).await?);
                chunks_b.push(call_ns(b, path, IN_PROCESS_CHUNK).await?);
            } else {
                chunks_b.push(call_ns(b, path, IN_PROCESS_CHUNK).await?);
                chunks_a.push(call_ns(a, path, IN_PROCESS_CHUNK).await?);
            }
        }
        a_ns.push(median(&chunks_a));
        b_ns.push(median(&chunks_b));
    }
    Ok((a_ns, b_ns))
}

/// Wall-clock ns per call of `calls` calls of `service` on `path`.
async fn call_ns<S>(service: &S, path: &'static str, calls: usize) -> BenchResult<f64>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone,
{
    use tower::ServiceExt as _;
    let start = Instant::now();
    for _ in 0..calls {
        let request = Request::builder()
            .uri(path)
            .header(header::HOST, "127.0.0.1:8080")
            .body(axum::body::Body::empty())
            .map_err(|e| format!("request: {e}"))?;
        let response = match service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_err(|e| format!("response body: {e}"))?;
        black_box(body);
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}

/// Runs `wrk -t1 -c32 -d<seconds>s <url>` and returns its requests/s and the CPU time
/// this process (the server: nothing else in it is busy meanwhile) spent per request, in µs.
fn wrk_rate(wrk: &std::path::Path, url: &str, seconds: u32) -> BenchResult<(f64, f64)> {
    let cpu_before = process_cpu_ns()?;
    let output = std::process::Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{WRK_CONNECTIONS}"),
            &format!("-d{seconds}s"),
            url,
        ])
        .output()
        .map_err(|e| format!("run {}: {e}", wrk.display()))?;
    let cpu = process_cpu_ns()?.saturating_sub(cpu_before);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk {url} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if stdout.contains("Non-2xx or 3xx responses") || stdout.contains("Socket errors") {
        return Err(format!("wrk {url} saw errors:\n{stdout}"));
    }
    let rate: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{stdout}"))?;
    let requests: f64 = stdout
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .filter(|&n: &f64| n > 0.0)
        .ok_or_else(|| format!("no request count in wrk's output:\n{stdout}"))?;
    Ok((rate, cpu as f64 / 1000.0 / requests))
}

struct RequestFigures {
    pairs: Vec<WrkPair>,
    /// Size of each case's answer (without the Date header).
    response_bytes: Vec<usize>,
}

fn http_bench(
    wrk: &std::path::Path,
    loads: &mut Vec<(String, String)>,
) -> BenchResult<RequestFigures> {
    progress("(4) requests/s: starting the axum servers (one worker thread)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the server runtime: {e}"))?;
    let bare_svc = bare_app();
    let acme_svc = bare_app().layer(AcmeLayer::new(ChallengeTokens::new()));
    let redirect_svc = bare_app().layer(HttpsRedirectLayer::permanent());
    let manual_svc = Router::new().route("/", get(manual_redirect));
    // The layers around the whole router, as certauto-tower's docs show for that case.
    let acme_outside_svc = ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(AcmeLayer::new(ChallengeTokens::new()))
        .service(bare_app());
    let redirect_outside_svc = ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(HttpsRedirectLayer::permanent())
        .service(bare_app());
    // A layer that adds nothing: what axum's `Router::layer` itself costs per request.
    let noop_svc = bare_app().layer(tower::layer::util::Identity::new());
    let bare = serve_http(&rt, bare_svc.clone())?;
    let noop = serve_http(&rt, noop_svc.clone())?;
    let acme = serve_http(&rt, acme_svc.clone())?;
    let redirect = serve_http(&rt, redirect_svc.clone())?;
    let manual = serve_http(&rt, manual_svc.clone())?;
    let acme_outside = serve_http(&rt, acme_outside_svc.clone())?;
    let redirect_outside = serve_http(&rt, redirect_outside_svc.clone())?;

    // (label, baseline label, layered label, path, expected status, expected text,
    //  baseline server, layered server)
    let ok = ("200", "hello, world!");
    let moved = ("308", "location: https://127.0.0.1/\r\n");
    let cases = [
        (
            "(a) GET /: AcmeLayer pass-through (Router::layer)",
            "bare app",
            "app + AcmeLayer",
            "/",
            ok,
            bare,
            acme,
        ),
        (
            "(b) GET /: HttpsRedirectLayer's 308 (Router::layer)",
            "handler writing the 308",
            "app + HttpsRedirectLayer",
            "/",
            moved,
            manual,
            redirect,
        ),
        (
            "(c) GET challenge path: HttpsRedirectLayer pass-through (Router::layer)",
            "bare app",
            "app + HttpsRedirectLayer",
            CHALLENGE_PATH,
            ok,
            bare,
            redirect,
        ),
        (
            "(d) GET /: AcmeLayer around the whole router",
            "bare app",
            "AcmeLayer(app)",
            "/",
            ok,
            bare,
            acme_outside,
        ),
        (
            "(e) GET challenge path: HttpsRedirectLayer around the whole router",
            "bare app",
            "HttpsRedirectLayer(app)",
            CHALLENGE_PATH,
            ok,
            bare,
            redirect_outside,
        ),
        (
            "(f) GET /: a no-op layer (tower Identity) via Router::layer, axum's own cost",
            "bare app",
            "app + Identity layer",
            "/",
            ok,
            bare,
            noop,
        ),
        (
            "(g) GET /: AcmeLayer against the no-op layer (Router::layer), the layer's own cost",
            "app + Identity layer",
            "app + AcmeLayer",
            "/",
            ok,
            noop,
            acme,
        ),
    ];
    // Before anything is timed: the expected answers, and the baseline's and the layered
    // server's answers byte for byte the same (apart from the Date header).
    let mut response_bytes = Vec::new();
    for (label, bl, ll, path, (status, text), base, layered) in &cases {
        let a = checked_response(*base, path, status, text, bl)?;
        let b = checked_response(*layered, path, status, text, ll)?;
        if a != b {
            return Err(format!(
                "{label}: the answers differ:\n{bl}:\n{a}\n{ll}:\n{b}"
            ));
        }
        response_bytes.push(a.len());
    }
    let url = |addr: SocketAddr, path: &str| format!("http://{addr}{path}");
    let cases: Vec<_> = cases
        .iter()
        .map(|(label, bl, ll, path, _, base, layered)| {
            (*label, *bl, *ll, url(*base, path), url(*layered, path))
        })
        .collect();
    // The middleware's own cost, without the network, hyper or wrk: the same services called
    // in-process on this thread, in the order of `cases`.
    progress("(4) in-process calls of the services");
    let local = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let in_process = local.block_on(async {
        Ok::<_, String>(vec![
            time_pair(&bare_svc, &acme_svc, "/").await?,
            time_pair(&manual_svc, &redirect_svc, "/").await?,
            time_pair(&bare_svc, &redirect_svc, CHALLENGE_PATH).await?,
            time_pair(&bare_svc, &acme_outside_svc, "/").await?,
            time_pair(&bare_svc, &redirect_outside_svc, CHALLENGE_PATH).await?,
            time_pair(&bare_svc, &noop_svc, "/").await?,
            time_pair(&noop_svc, &acme_svc, "/").await?,
        ])
    })?;
    drop(local);

    progress("(4) requests/s: warming up");
    for (_, _, _, a, b) in &cases {
        wrk_rate(wrk, a, WRK_WARMUP_SECONDS)?;
        wrk_rate(wrk, b, WRK_WARMUP_SECONDS)?;
    }
    loads.push(("before wrk".to_owned(), loadavg()));
    let mut pairs: Vec<WrkPair> = cases
        .iter()
        .zip(in_process)
        .map(|((label, bl, ll, _, _), in_process)| WrkPair {
            label,
            baseline_label: bl,
            layered_label: ll,
            fine_ratios: Vec::new(),
            in_process,
            baseline: Vec::new(),
            layered: Vec::new(),
            baseline_cpu: Vec::new(),
            layered_cpu: Vec::new(),
        })
        .collect();
    for round in 0..ROUNDS {
        for (k, (pair, (_, _, _, base_url, layered_url))) in
            pairs.iter_mut().zip(&cases).enumerate()
        {
            let baseline_first = (round + k).is_multiple_of(2);
            for step in 0..2 {
                let is_baseline = (step == 0) == baseline_first;
                let target = if is_baseline { base_url } else { layered_url };
                let (rate, cpu) = wrk_rate(wrk, target, WRK_SECONDS)?;
                progress(&format!(
                    "  round {} {} {}: {rate:.0} requests/s, {cpu:.2} us server CPU per request",
                    round + 1,
                    pair.label,
                    if is_baseline {
                        pair.baseline_label
                    } else {
                        pair.layered_label
                    }
                ));
                if is_baseline {
                    pair.baseline.push(rate);
                    pair.baseline_cpu.push(cpu);
                } else {
                    pair.layered.push(rate);
                    pair.layered_cpu.push(cpu);
                }
            }
        }
    }
    // The same comparison interleaved finely: many back-to-back pairs of short runs, the
    // ratio taken within each pair, so that a change of load between runs moves few ratios.
    progress("(4) requests/s: finely interleaved pairs");
    for pair_index in 0..FINE_PAIRS {
        for (k, (pair, (_, _, _, base_url, layered_url))) in
            pairs.iter_mut().zip(&cases).enumerate()
        {
            let baseline_first = (pair_index + k).is_multiple_of(2);
            let mut base = 0.0;
            let mut layered = 0.0;
            for step in 0..2 {
                if (step == 0) == baseline_first {
                    base = wrk_rate(wrk, base_url, FINE_SECONDS)?.0;
                } else {
                    layered = wrk_rate(wrk, layered_url, FINE_SECONDS)?.0;
                }
            }
            pair.fine_ratios.push(layered / base);
        }
    }
    loads.push(("after fine pairs".to_owned(), loadavg()));
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(RequestFigures {
        pairs,
        response_bytes,
    })
}

// ----- the report -----

struct Report {
    cores: usize,
    generation: Duration,
    memory: MemoryFigures,
    /// `None` when only the lookups and memory were asked for.
    handshakes: Option<HandshakeFigures>,
    lookups: LookupFigures,
    /// `None` when only the lookups and memory were asked for.
    requests: Option<RequestFigures>,
    loads: Vec<(String, String)>,
    total: Duration,
}

fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

impl Report {
    fn print(&self) {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        println!("== bench-serve: handshakes, lookups, memory, middleware ==");
        println!("command:  {COMMAND}");
        println!(
            "machine:  {} cores (available_parallelism), kernel {kernel}",
            self.cores
        );
        println!("load averages (1, 5, 15 min):");
        for (when, load) in &self.loads {
            println!("  {when:<18} {load}");
        }
        println!(
            "certificates: {TOTAL_CERTS} distinct P-256 leaves from one LocalCa (chain = leaf + \
             root), one name each, every {WILDCARD_EVERY}th a wildcard; issued in {:.1} s",
            self.generation.as_secs_f64()
        );
        println!("total run time: {:.0} s", self.total.as_secs_f64());
        println!();

        let mut ratio_100k = f64::NAN;
        let mut cpu_ratio_100k = f64::NAN;
        if let Some(h) = &self.handshakes {
            println!(
                "(1) full TLS 1.3 handshakes/s, loopback, {} client tasks, no resumption; baseline \
                 = with_single_cert; per round {HANDSHAKES} handshakes per configuration in \
                 {CHUNKS} chunks alternating with the baseline's; {ROUNDS} rounds",
                h.concurrency
            );
            println!(
                "    {} handshakes checked first with a WebPKI client trusting the LocalCa root \
                 (right certificate for exact and wildcard names; unknown names refused)",
                h.checked
            );
            println!(
                "| cached certificates | baseline handshakes/s, median (per round) | resolver \
                 handshakes/s, median (per round) | ratio per round | median ratio | CPU us per \
                 handshake, baseline / resolver (medians) | CPU ratio baseline/resolver per round |"
            );
            for run in &h.runs {
                let ratios = run.ratios();
                let cpu_ratios = run.cpu_ratios();
                let m = median(&ratios);
                if run.size == TOTAL_CERTS {
                    ratio_100k = m;
                    cpu_ratio_100k = median(&cpu_ratios);
                }
                println!(
                    "| {} | {:.0} ({}) | {:.0} ({}) | {} | {:.3} | {:.0} / {:.0} | {} |",
                    run.size,
                    median(&run.baseline),
                    list(&run.baseline, 0),
                    median(&run.resolver),
                    list(&run.resolver, 0),
                    list(&ratios, 3),
                    m,
                    median(&run.baseline_cpu),
                    median(&run.resolver_cpu),
                    list(&cpu_ratios, 3)
                );
            }
            let t = h.timer_ns;
            println!(
                "    resolve() timed inside real handshakes ({} calls each, interleaved; one \
                 Instant::now()+elapsed() pair costs {t:.1} ns and is subtracted), ns median / p90 / \
                 mean:",
                h.resolve_calls
            );
            for (label, r) in [
                (
                    "SingleCertAndKey (rustls, with_single_cert's resolver)",
                    h.resolve_single,
                ),
                (
                    "plain two-map resolver, 100000 certificates",
                    h.resolve_plain,
                ),
                ("CertResolver, 100000 certificates", h.resolve_100k),
            ] {
                println!(
                    "      {label:<56} {:.0} / {:.0} / {:.0}",
                    r.median - t,
                    r.p90 - t,
                    r.mean - t
                );
            }
            println!();
        }
        let l = &self.lookups;
        println!(
            "(2) lookups at {TOTAL_CERTS} certificates, {LOOKUPS} per run cycling through \
             {LOOKUP_POOL} SNI values (45 % exact / 45 % wildcard / 10 % miss, {:.1} % hits), \
             one thread, {ROUNDS} rounds, the variants taking turns in {LOOKUP_CHUNKS} chunks per \
             run; ns per lookup = median of the chunks (wall clock), and the run's mean by the \
             thread's on-CPU time",
            l.hit_share * 100.0
        );
        println!(
            "| lookup | ns, median of rounds (per round) | on-CPU ns | hot set of {HOT_SET} \
             names | exact hits alone | wildcard hits alone | misses alone |"
        );
        let walls = |t: &[Timing]| list(&t.iter().map(|t| t.wall).collect::<Vec<_>>(), 1);
        let mut cache = medians(&l.mix[0]);
        for (v, label) in VARIANTS.iter().enumerate() {
            let m = medians(&l.mix[v]);
            if v == 0 {
                cache = m;
            }
            let kinds: Vec<String> = l
                .per_kind
                .iter()
                .map(|(_, row)| format!("{:.1}", row[v].wall))
                .collect();
            println!(
                "| {label} | {:.1} ({}) | {:.1} | {:.1} | {} |",
                m.wall,
                walls(&l.mix[v]),
                m.cpu,
                l.hot[v].wall,
                kinds.join(" | ")
            );
        }
        let base = medians(&l.mix[VARIANTS.len() - 1]);
        println!(
            "    ratio CertCache / HashMap: {:.2}x; hot set {:.2}x",
            cache.wall / base.wall,
            l.hot[0].wall / l.hot[VARIANTS.len() - 1].wall
        );
        println!(
            "    machine: a dependent random read costs {:.1} ns over {} MiB and {:.1} ns over \
             {} MiB (best of 3; this host's memory latency varies from run to run)",
            l.read_latency[0].1, l.read_latency[0].0, l.read_latency[1].1, l.read_latency[1].0
        );
        println!();

        let m = &self.memory;
        let per_cert = m.bytes_per_cert();
        println!("(3) memory of {TOTAL_CERTS} cached certificates (VmRSS)");
        println!(
            "    before insert {} KiB, after {} KiB: {:.0} bytes per certificate ({:.2} KiB); \
             chain DER is {:.0} bytes per certificate; insert took {:.1} s ({:.1} us each)",
            m.rss_before_kib,
            m.rss_after_kib,
            per_cert,
            per_cert / 1024.0,
            m.chain_der_bytes,
            m.insert_time.as_secs_f64(),
            m.insert_time.as_secs_f64() * 1e6 / TOTAL_CERTS as f64
        );
        println!(
            "    VmRSS before dropping the Certificate values {} KiB, after {} KiB (freed heap \
             memory is mostly kept by the allocator)",
            m.rss_before_drop_kib, m.rss_after_drop_kib
        );
        println!();

        let mut worst_pass_through = f64::INFINITY;
        let mut worst_fine = f64::INFINITY;
        let mut worst_predicted = f64::INFINITY;
        if let Some(r) = &self.requests {
            println!(
                "(4) requests/s, wrk -t1 -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s, server on a \
                 one-worker tokio runtime; {ROUNDS} runs per server per case, back to back, the \
                 order alternating; server CPU us per request from schedstat. Then {FINE_PAIRS} \
                 back-to-back pairs of -d{FINE_SECONDS}s runs per case, ratio within each pair."
            );
            println!(
                "| case | baseline req/s, median (per run) | layered req/s, median (per run) | \
                 ratio per round | ratio of medians | server CPU us/request baseline / layered \
                 (medians) | {FINE_PAIRS} fine pairs: median ratio (quartiles) | answer bytes |"
            );
            for (pair, bytes) in r.pairs.iter().zip(&r.response_bytes) {
                let ratio = median(&pair.layered) / median(&pair.baseline);
                let fine = median(&pair.fine_ratios);
                if !["(b)", "(f)", "(g)"]
                    .iter()
                    .any(|p| pair.label.starts_with(p))
                {
                    worst_pass_through = worst_pass_through.min(ratio);
                    worst_fine = worst_fine.min(fine);
                }
                println!(
                    "| {} | {}: {:.0} ({}) | {}: {:.0} ({}) | {} | {:.3} | {:.2} / {:.2} | {:.3} \
                     ({:.3}-{:.3}) | {bytes} |",
                    pair.label,
                    pair.baseline_label,
                    median(&pair.baseline),
                    list(&pair.baseline, 0),
                    pair.layered_label,
                    median(&pair.layered),
                    list(&pair.layered, 0),
                    list(&pair.ratios(), 3),
                    ratio,
                    median(&pair.baseline_cpu),
                    median(&pair.layered_cpu),
                    fine,
                    quantile(&pair.fine_ratios, 0.25),
                    quantile(&pair.fine_ratios, 0.75)
                );
            }
            println!(
                "    in-process calls (no network; per round the median of {IN_PROCESS_CHUNKS} chunks of \
                 {IN_PROCESS_CHUNK} calls per service, the two services taking turns; {ROUNDS} \
                 rounds): ns per request, and the requests/s ratio this predicts when the difference \
                 is added to the lowest server CPU per request measured with wrk"
            );
            println!(
                "| case | baseline ns/request, median (per round) | layered ns/request, median (per \
                 round) | difference | predicted requests/s ratio |"
            );
            for pair in &r.pairs {
                let base = median(&pair.in_process.0);
                let layered = median(&pair.in_process.1);
                let server_ns = pair
                    .baseline_cpu
                    .iter()
                    .chain(&pair.layered_cpu)
                    .copied()
                    .fold(f64::INFINITY, f64::min)
                    * 1000.0;
                let predicted = server_ns / (server_ns + layered - base);
                if !["(b)", "(f)", "(g)"]
                    .iter()
                    .any(|p| pair.label.starts_with(p))
                {
                    worst_predicted = worst_predicted.min(predicted);
                }
                println!(
                    "| {} | {:.0} ({}) | {:.0} ({}) | {:+.0} ns | {:.3} |",
                    pair.label,
                    base,
                    list(&pair.in_process.0, 0),
                    layered,
                    list(&pair.in_process.1, 0),
                    layered - base,
                    predicted
                );
            }
            println!();
        }
        println!("goals:");
        if self.handshakes.is_some() {
            println!(
                "  handshakes at {TOTAL_CERTS} names >= 0.97x baseline: {ratio_100k:.3}x -> {} \
                 (by CPU time per handshake: {cpu_ratio_100k:.3}x)",
                verdict(ratio_100k >= 0.97)
            );
        }
        println!(
            "  lookup < 200 ns: {:.1} ns -> {} (on-CPU {:.1} ns; hot set of {HOT_SET} names: \
             {:.1} ns -> {})",
            cache.wall,
            verdict(cache.wall < 200.0),
            cache.cpu,
            l.hot[0].wall,
            verdict(l.hot[0].wall < 200.0)
        );
        println!(
            "  memory < 8 KiB per cached certificate: {:.2} KiB -> {}",
            per_cert / 1024.0,
            verdict(per_cert < 8192.0)
        );
        if self.requests.is_some() {
            println!(
                "  requests/s with a layer's pass-through >= 0.98x bare: worst ratio of medians \
                 {worst_pass_through:.3}x -> {}; worst median of the fine pairs {worst_fine:.3}x -> {}",
                verdict(worst_pass_through >= 0.98),
                verdict(worst_fine >= 0.98)
            );
            println!(
                "    predicted from the in-process cost: worst {worst_predicted:.3}x -> {}",
                verdict(worst_predicted >= 0.98)
            );
        }
    }
}
