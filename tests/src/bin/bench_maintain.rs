//! Run with: cargo run --release -p certauto-tests --bin bench-maintain
//!
//! Maintenance benchmark: what 10,000 managed certificates cost a running server. Every
//! figure is set against a baseline measured in the same run and interleaved with it,
//! because the machine is shared.
//!
//! * **Certificates.** [`TOTAL_CERTS`] distinct ECDSA P-256 certificates, one name each
//!   (`m<i>.maint.test`), issued offline by CertAuto's [`LocalCa`] (chain = leaf + root) and
//!   written in the storage layout of `certauto::storage::keys` (`.crt`, `.key`,
//!   `.json`) below a [`FileStorage`] root in a temporary folder. None is inside its renewal
//!   window: the leaves live 7 days, and every [`SHORT_EVERY`]th lives 3 days (still outside
//!   its window at the start; they are the ones that fall due in the variant (d)).
//! * **(a) Startup.** A fresh [`FileStorage`] and a fresh [`Config`] on the same root, then
//!   `config.manage(all 10,000 names)`: the call a server makes at start. It loads every
//!   stored certificate into the cache (one `cached_managed_cert` event each) and obtains
//!   nothing. Wall and CPU time (`utime + stime` from `/proc/self/stat`, the figures
//!   `getrusage` reports; `unsafe` is forbidden in this workspace, so no libc call), median
//!   of [`STARTUP_RUNS`] runs. Baselines, in the same rounds, on one thread each:
//!   * `std::fs::read` of the same 10,000 certificate record files (`.pem`: key and chain), parsing nothing (the I/O
//!     floor);
//!   * `tokio::fs::read` of the same files one after another (what one async read per file
//!     costs: each is a trip through tokio's blocking pool, as in `FileStorage::load`);
//!   * `std::fs::read` + PEM decoding (`rustls_pki_types::pem`, the successor of
//!     `rustls-pemfile`) + `rustls::sign::CertifiedKey::from_der` with the ring provider +
//!     insertion into a `HashMap<String, Arc<CertifiedKey>>`: the least any rustls server
//!     must do to serve 10,000 certificate files. This is the headline baseline.
//!
//!   A breakdown then times `manage`'s steps through the public API on the same files.
//! * **(b) One renewal check** (`Config::check_renewals`) over the 10,000 cached
//!   certificates: the first pass after startup (it fills the per-certificate ARI state;
//!   `LocalCa`, like Pebble, has no ARI), then [`CHECK_PASSES`] passes timed one by one
//!   (median) and a batch of passes lasting at least [`CPU_BATCH`] for the CPU time per
//!   pass. Baselines, interleaved pass by pass: a bare loop over the same 10,000
//!   `Arc<CachedCert>` doing only the ratio comparison (`not_before + (1 - 1/3) × lifetime
//!   <= now`), and the same after looking each managed name up with `CertCache::get`.
//! * **(c) Storage operations** during the check passes, counted by a `Storage` wrapper
//!   that delegates to the `FileStorage` and counts every call by kind and key. The binary
//!   fails unless the passes of (b) made none.
//! * **(d) Variant: 1 % due.** The config's `ManualClock` moves 60 hours on, which puts the
//!   [`TOTAL_CERTS`] / [`SHORT_EVERY`] short-lived certificates inside their window. One pass
//!   renews them through the config's `LocalCa` (real keys, storage writes, file locks);
//!   the binary fails if it renews any other, or if any storage key it touches belongs to a
//!   certificate outside its window. A second pass at the same time must touch no storage.
//!   The configs allow [`RATE_LIMIT`] issuances per minute instead of the default (300 per 3 hours), so
//!   that the pass measures the renewals and not the rate limiter.
//!
//! Results go to stdout, progress to stderr. Any failed check makes the binary exit
//! non-zero. The figures are with a warm page cache: the files were just written, and
//! dropping the kernel's caches would disturb the other work on this shared machine.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use certauto::LOCAL_CA_ISSUER_KEY;
use certauto::storage::keys;
use certauto::{
    CachedCert, CertCache, Certificate, Clock, Config, Event, FileStorage, Identifier, LocalCa,
    ManualClock, Storage,
};
use certauto_tests::RecordingStorage;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The command that runs this benchmark.
const COMMAND: &str = "cargo run --release -p certauto-tests --bin bench-maintain";
/// Managed certificates.
const TOTAL_CERTS: usize = 10_000;
/// Every this-many-th certificate lives [`SHORT_LIFETIME`] instead of 7 days.
const SHORT_EVERY: usize = 100;
/// Lifetime of the short-lived certificates.
const SHORT_LIFETIME: Duration = Duration::from_secs(3 * 24 * 3600);
/// How far the clock moves for the variant (d): past the short certificates' window
/// start (about 47 h after issue), before the others' (about 111 h).
const VARIANT_ADVANCE: Duration = Duration::from_secs(60 * 3600);
/// Timed startup runs (each with every baseline).
const STARTUP_RUNS: usize = 5;
/// Timed breakdown runs of the startup's steps.
const BREAKDOWN_RUNS: usize = 3;
/// Check passes timed one by one.
const CHECK_PASSES: usize = 21;
/// A CPU-time batch runs at least this long (CPU time moves in 10 ms ticks).
const CPU_BATCH: Duration = Duration::from_secs(2);
/// Bound on the number of passes in one CPU batch.
const MAX_BATCH_PASSES: usize = 1_000_000;
/// Goals from the issue.
const CHECK_GOAL: Duration = Duration::from_millis(50);
const STARTUP_GOAL: Duration = Duration::from_secs(2);
/// Issuances per minute allowed to the config (see [`build_config`]).
const RATE_LIMIT: u32 = 1_000;
/// Renewal window ratio (CertAuto's default).
const RATIO: f64 = 1.0 / 3.0;
/// Clock ticks per second of `/proc/self/stat` (`USER_HZ`, fixed at 100 on Linux).
const USER_HZ: f64 = 100.0;
/// Bound on the whole run.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);

type BenchResult<T> = Result<T, String>;

fn main() -> ExitCode {
    certauto_tests::init_stderr_logging();

    // A watchdog: the run must not hang forever on a shared machine.
    std::thread::spawn(|| {
        std::thread::sleep(RUN_DEADLINE);
        eprintln!(
            "bench-maintain: FAILED: the whole run exceeded its deadline of {RUN_DEADLINE:?}"
        );
        std::process::exit(2);
    });

    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-maintain: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> BenchResult<()> {
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut loads = vec![("start".to_owned(), loadavg())];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let root = dir.path().join("storage");

    // ----- certificates -----
    progress(&format!(
        "issuing {TOTAL_CERTS} P-256 certificates with LocalCa on {cores} threads"
    ));
    let t0 = SystemTime::now();
    let generated = rt.block_on(generate(&root, cores))?;
    progress(&format!(
        "issued and wrote {TOTAL_CERTS} certificates in {:.1} s ({:.1} s writing)",
        generated.elapsed.as_secs_f64(),
        generated.write_time.as_secs_f64()
    ));
    loads.push(("after issuing".to_owned(), loadavg()));

    // ----- (a) startup -----
    progress(&format!(
        "(a) startup: {STARTUP_RUNS} rounds of Config::manage and three baselines"
    ));
    let startup = startup_bench(&rt, &root, &generated, t0)?;
    progress("(a) breakdown of manage's steps");
    let breakdown = breakdown_bench(&rt, &root, &generated, t0)?;
    loads.push(("after startup".to_owned(), loadavg()));

    // ----- (b), (c), (d) -----
    progress("(b) renewal check passes");
    let check = check_bench(&rt, &root, &generated, t0)?;
    loads.push(("end".to_owned(), loadavg()));

    Report {
        cores,
        generation: generated.elapsed,
        startup,
        breakdown,
        check,
        loads,
        total: started.elapsed(),
    }
    .print();
    Ok(())
}

// ----- small helpers -----

fn progress(message: &str) {
    eprintln!("bench-maintain: {message}");
}

/// The name of certificate `i`.
fn cert_name(i: usize) -> String {
    format!("m{i}.maint.test")
}

fn is_short(i: usize) -> bool {
    i.is_multiple_of(SHORT_EVERY)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// CPU time of this process so far (user and system, every thread including exited ones),
/// as `getrusage(RUSAGE_SELF)` reports it: `utime` and `stime` of `/proc/self/stat`.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: f64,
    system: f64,
}

impl Cpu {
    fn now() -> BenchResult<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat")
            .map_err(|e| format!("read /proc/self/stat: {e}"))?;
        // Fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, utime field 14, stime field 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or("malformed /proc/self/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| -> BenchResult<f64> {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .map(|t| t as f64 / USER_HZ)
                .ok_or_else(|| format!("no field {} in /proc/self/stat", i + 3))
        };
        Ok(Self {
            user: tick(11)?,
            system: tick(12)?,
        })
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }

    fn total(self) -> f64 {
        self.user + self.system
    }
}

/// Wall and CPU time of one timed run, in seconds.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: Cpu,
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

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Values joined with " / ", `scale`d, with `digits` decimals.
fn list(values: &[f64], scale: f64, digits: usize) -> String {
    values
        .iter()
        .map(|v| format!("{:.digits$}", v * scale))
        .collect::<Vec<_>>()
        .join(" / ")
}

// ----- certificates -----

struct Generated {
    names: Vec<String>,
    ids: Vec<Identifier>,
    serials: Vec<String>,
    /// The `.crt` and `.key` file of each certificate.
    files: Vec<PathBuf>,
    elapsed: Duration,
    write_time: Duration,
}

/// Issues [`TOTAL_CERTS`] certificates from a `LocalCa` whose root lives in the
/// `FileStorage` at `root` (so a `Config` on that root finds the same CA), and writes each
/// certificate's chain, key and metadata where `Config` stores them.
async fn generate(root: &Path, threads: usize) -> BenchResult<Generated> {
    let start = Instant::now();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(root));
    let long = LocalCa::new(storage.clone());
    let short = LocalCa::new(storage.clone()).leaf_lifetime(SHORT_LIFETIME);
    // Create (then load) the root once, before the threads use it.
    long.root_pem()
        .await
        .map_err(|e| format!("LocalCa root: {e}"))?;
    short
        .root_pem()
        .await
        .map_err(|e| format!("LocalCa root: {e}"))?;
    let issued: Vec<BenchResult<Vec<(usize, Certificate)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (long, short) = (long.clone(), short.clone());
                s.spawn(move || -> BenchResult<Vec<(usize, Certificate)>> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
                    let mut out = Vec::with_capacity(TOTAL_CERTS / threads + 1);
                    for i in (t..TOTAL_CERTS).step_by(threads) {
                        let name = cert_name(i);
                        let id = Identifier::parse(&name).map_err(|e| format!("{name}: {e}"))?;
                        let ca = if is_short(i) { &short } else { &long };
                        let cert = rt
                            .block_on(ca.issue_for(&[id]))
                            .map_err(|e| format!("LocalCa issue for {name}: {e}"))?;
                        out.push((i, cert));
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
    let mut all: Vec<(usize, Certificate)> = Vec::with_capacity(TOTAL_CERTS);
    for part in issued {
        all.extend(part?);
    }
    all.sort_by_key(|(i, _)| *i);

    let writing = Instant::now();
    let mut generated = Generated {
        names: Vec::with_capacity(TOTAL_CERTS),
        ids: Vec::with_capacity(TOTAL_CERTS),
        serials: Vec::with_capacity(TOTAL_CERTS),
        files: Vec::with_capacity(TOTAL_CERTS),
        elapsed: Duration::ZERO,
        write_time: Duration::ZERO,
    };
    for (i, cert) in &all {
        let name = cert_name(*i);
        let id = Identifier::parse(&name).map_err(|e| format!("{name}: {e}"))?;
        if cert.names() != std::slice::from_ref(&id) || cert.chain().len() != 2 {
            return Err(format!(
                "certificate {i}: names {:?}, chain of {}",
                cert.names(),
                cert.chain().len()
            ));
        }
        let path = |key: String| {
            storage
                .local_path(&key)
                .ok_or_else(|| format!("FileStorage has no path for {key}"))
        };
        // The certificate record as `Config` stores it: the key, then the chain.
        let record = path(keys::cert_record(LOCAL_CA_ISSUER_KEY, &id))?;
        let bundle = format!("{}\n{}", cert.key_pem().trim_end(), cert.chain_pem());
        write_private(&record, bundle.as_bytes())?;
        generated.names.push(name);
        generated.ids.push(id);
        generated.serials.push(cert.serial_hex());
        generated.files.push(record);
    }
    generated.write_time = writing.elapsed();
    generated.elapsed = start.elapsed();
    Ok(generated)
}

/// Writes a file with mode 0600 in a 0700 folder, as `FileStorage` does (without its
/// fsyncs: this is setup, not what is measured).
fn write_private(path: &Path, value: &[u8]) -> BenchResult<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no folder", path.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(value))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

// ----- a counting storage wrapper -----

/// The kinds of [`Storage`] calls.
const OPS: [&str; 7] = ["store", "load", "delete", "exists", "list", "stat", "lock"];

/// Calls per kind, in [`OPS`] order, as "load 20000, stat 0, ...".
fn count_by_op(calls: &[(&'static str, String)]) -> String {
    OPS.iter()
        .map(|op| format!("{op} {}", calls.iter().filter(|(o, _)| o == op).count()))
        .collect::<Vec<_>>()
        .join(", ")
}

// ----- (a) startup -----

/// A config on `storage` as a server builds it, with a manual clock and a counter of
/// `cached_managed_cert` events. The issuance rate limit is raised from 20 to
/// [`RATE_LIMIT`] per minute, so that the 100 renewals of the variant (d) measure the
/// renewal work rather than the limiter (which would spread them over 4 minutes).
fn build_config(storage: Arc<dyn Storage>, clock: Arc<ManualClock>) -> (Config, Arc<AtomicUsize>) {
    let cached = Arc::new(AtomicUsize::new(0));
    let counter = cached.clone();
    let config = Config::builder()
        .storage(storage)
        .clock(clock)
        .issuance_rate_limit(RATE_LIMIT, Duration::from_secs(60))
        .on_event(move |e| {
            if matches!(e, Event::CachedManagedCert { .. }) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build();
    (config, cached)
}

/// Checks that `config` manages every certificate and serves the stored one for each name.
fn verify_loaded(config: &Config, generated: &Generated, events: usize) -> BenchResult<()> {
    if config.cache().len() != TOTAL_CERTS || config.managed().len() != TOTAL_CERTS {
        return Err(format!(
            "after manage: {} cached, {} managed, expected {TOTAL_CERTS}",
            config.cache().len(),
            config.managed().len()
        ));
    }
    if events != TOTAL_CERTS {
        return Err(format!(
            "after manage: {events} cached_managed_cert events, expected {TOTAL_CERTS}"
        ));
    }
    for (name, serial) in generated.names.iter().zip(&generated.serials) {
        match config.cache().get(name) {
            Some(e) if e.serial() == serial && e.is_managed() => {}
            other => {
                return Err(format!(
                    "{name}: cache holds {:?}, expected managed serial {serial}",
                    other.map(|e| e.serial().to_owned())
                ));
            }
        }
    }
    Ok(())
}

/// What each startup contender timed, one sample per round.
#[derive(Default)]
struct StartupRuns {
    manage: Vec<Sample>,
    std_read: Vec<Sample>,
    tokio_read: Vec<Sample>,
    parse: Vec<Sample>,
}

fn timed<T>(work: impl FnOnce() -> BenchResult<T>) -> BenchResult<(T, Sample)> {
    let cpu = Cpu::now()?;
    let start = Instant::now();
    let out = work()?;
    let wall = start.elapsed().as_secs_f64();
    Ok((
        out,
        Sample {
            wall,
            cpu: Cpu::now()?.since(cpu),
        },
    ))
}

fn startup_bench(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    generated: &Generated,
    t0: SystemTime,
) -> BenchResult<StartupRuns> {
    let mut runs = StartupRuns::default();
    for round in 0..STARTUP_RUNS {
        for turn in 0..4 {
            match (round + turn) % 4 {
                0 => {
                    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(root));
                    let (config, events) = build_config(storage, Arc::new(ManualClock::new(t0)));
                    let ((), sample) = timed(|| {
                        rt.block_on(config.manage(&generated.names))
                            .map_err(|e| format!("Config::manage: {e}"))
                    })?;
                    verify_loaded(&config, generated, events.load(Ordering::Relaxed))?;
                    runs.manage.push(sample);
                }
                1 => {
                    let (bytes, sample) = timed(|| {
                        let mut bytes = 0usize;
                        for path in &generated.files {
                            bytes += std::fs::read(path)
                                .map_err(|e| format!("read {}: {e}", path.display()))?
                                .len();
                        }
                        Ok(bytes)
                    })?;
                    black_box(bytes);
                    runs.std_read.push(sample);
                }
                2 => {
                    let (bytes, sample) = timed(|| {
                        rt.block_on(async {
                            let mut bytes = 0usize;
                            for path in &generated.files {
                                bytes += tokio::fs::read(path)
                                    .await
                                    .map_err(|e| format!("read {}: {e}", path.display()))?
                                    .len();
                            }
                            Ok(bytes)
                        })
                    })?;
                    black_box(bytes);
                    runs.tokio_read.push(sample);
                }
                _ => {
                    let (map, sample) = timed(|| parse_baseline(generated))?;
                    if map.len() != TOTAL_CERTS {
                        return Err(format!("parse baseline: {} keys", map.len()));
                    }
                    drop(map);
                    runs.parse.push(sample);
                }
            }
        }
        progress(&format!(
            "  round {}: manage {:.3} s, std::fs {:.3} s, tokio::fs {:.3} s, parse {:.3} s",
            round + 1,
            runs.manage.last().map_or(f64::NAN, |s| s.wall),
            runs.std_read.last().map_or(f64::NAN, |s| s.wall),
            runs.tokio_read.last().map_or(f64::NAN, |s| s.wall),
            runs.parse.last().map_or(f64::NAN, |s| s.wall),
        ));
    }
    Ok(runs)
}

/// Reads every `.crt` + `.key`, decodes the PEM and builds the rustls `CertifiedKey` (ring),
/// keyed by name: the least a rustls server does to serve the files.
fn parse_baseline(generated: &Generated) -> BenchResult<HashMap<String, Arc<CertifiedKey>>> {
    let provider = certauto::crypto_provider();
    let mut map = HashMap::with_capacity(TOTAL_CERTS);
    for (name, path) in generated.names.iter().zip(&generated.files) {
        let record = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let chain = CertificateDer::pem_slice_iter(&record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}: chain PEM: {e:?}"))?;
        let key = PrivateKeyDer::from_pem_slice(&record)
            .map_err(|e| format!("{name}: key PEM: {e:?}"))?;
        let ck = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| format!("{name}: CertifiedKey: {e}"))?;
        map.insert(name.clone(), Arc::new(ck));
    }
    Ok(map)
}

/// Seconds spent in each step of loading, summed over the 10,000 certificates.
#[derive(Default, Clone, Copy)]
struct Breakdown {
    /// The managed-list check `Config::record_managed` made before the startup fix,
    /// replayed: a linear scan of a `Vec<Vec<Identifier>>` for the primary name, then a
    /// push.
    managed_scan: f64,
    /// One `FileStorage::load` call per certificate (its record), awaited one after another.
    storage_load: f64,
    /// `Certificate::from_pem` (PEM, X.509 parse, key parse and match).
    from_pem: f64,
    /// `CachedCert::new` (key parsed again, `CertifiedKey::from_der`).
    cached_cert: f64,
    /// `CertCache::insert_entry`.
    insert: f64,
    /// The whole loop.
    total: f64,
}

/// Times, through the public API, the steps `Config::manage` takes for each certificate.
fn breakdown_bench(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    generated: &Generated,
    t0: SystemTime,
) -> BenchResult<Vec<Breakdown>> {
    let mut out = Vec::new();
    for _ in 0..BREAKDOWN_RUNS {
        let storage = FileStorage::new(root);
        let cache = CertCache::new();
        let mut managed: Vec<Vec<Identifier>> = Vec::new();
        let mut b = Breakdown::default();
        let all = Instant::now();
        for id in &generated.ids {
            let t = Instant::now();
            let ids = vec![id.clone()];
            if !managed.iter().any(|m| m.first() == ids.first()) {
                managed.push(ids);
            }
            let scanned = Instant::now();
            b.managed_scan += (scanned - t).as_secs_f64();
            let record = rt
                .block_on(async {
                    storage
                        .load(&keys::cert_record(LOCAL_CA_ISSUER_KEY, id))
                        .await
                })
                .map_err(|e| format!("{id}: {e}"))?;
            let t1 = Instant::now();
            let record = String::from_utf8(record).map_err(|e| format!("{id}: {e}"))?;
            // The record holds both: PEM parsing picks the key and the certificates.
            let cert = Certificate::from_pem(&record, &record, LOCAL_CA_ISSUER_KEY)
                .map_err(|e| format!("{id}: {e}"))?;
            if cert.needs_renewal(t0, RATIO) {
                return Err(format!("{id} is inside its renewal window at the start"));
            }
            let t2 = Instant::now();
            let entry = Arc::new(CachedCert::new(&cert, true).map_err(|e| format!("{id}: {e}"))?);
            let t3 = Instant::now();
            cache.insert_entry(entry);
            let t4 = Instant::now();
            b.storage_load += (t1 - scanned).as_secs_f64();
            b.from_pem += (t2 - t1).as_secs_f64();
            b.cached_cert += (t3 - t2).as_secs_f64();
            b.insert += (t4 - t3).as_secs_f64();
        }
        b.total = all.elapsed().as_secs_f64();
        if cache.len() != TOTAL_CERTS || managed.len() != TOTAL_CERTS {
            return Err(format!("breakdown: {} cached", cache.len()));
        }
        out.push(b);
    }
    Ok(out)
}

// ----- (b), (c), (d) check passes -----

/// The baseline check: the ratio comparison over the entries, nothing else.
fn bare_due(entries: &[Arc<CachedCert>], now: SystemTime) -> usize {
    entries
        .iter()
        .filter(|e| {
            let lifetime = e
                .not_after()
                .duration_since(e.not_before())
                .unwrap_or(Duration::ZERO);
            e.not_before() + lifetime.mul_f64(1.0 - RATIO) <= now
        })
        .count()
}

/// The same after finding each managed name's entry in the cache.
fn lookup_due(cache: &CertCache, names: &[String], now: SystemTime) -> usize {
    names
        .iter()
        .filter(|n| {
            cache.get(n).is_some_and(|e| {
                let lifetime = e
                    .not_after()
                    .duration_since(e.not_before())
                    .unwrap_or(Duration::ZERO);
                e.not_before() + lifetime.mul_f64(1.0 - RATIO) <= now
            })
        })
        .count()
}

/// Per-pass figures of one contender.
#[derive(Default)]
struct PassFigures {
    /// Wall time of each individually timed pass, in seconds.
    walls: Vec<f64>,
    /// CPU seconds per pass over the batch, and the batch's pass count and wall time.
    batch_cpu: f64,
    batch_passes: usize,
    batch_wall: f64,
}

struct CheckFigures {
    startup_calls: String,
    first_pass: Sample,
    first_pass_calls: usize,
    check: PassFigures,
    bare: PassFigures,
    lookup: PassFigures,
    /// Storage calls during every steady pass (individually timed and batch).
    steady_calls: usize,
    steady_passes: usize,
    variant: Variant,
}

struct Variant {
    due: usize,
    renewed: usize,
    failed: usize,
    pass: Sample,
    calls: BTreeMap<&'static str, usize>,
    due_name_keys: usize,
    local_ca_keys: usize,
    second_pass: Sample,
    second_calls: usize,
    second_due: usize,
}

/// Runs `pass` repeatedly for at least [`CPU_BATCH`]; returns CPU seconds per pass, the
/// number of passes and the batch's wall time.
fn cpu_batch(mut pass: impl FnMut() -> BenchResult<()>) -> BenchResult<(f64, usize, f64)> {
    let cpu = Cpu::now()?;
    let start = Instant::now();
    let mut passes = 0;
    while start.elapsed() < CPU_BATCH && passes < MAX_BATCH_PASSES {
        pass()?;
        passes += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = Cpu::now()?.since(cpu).total();
    Ok((cpu / passes as f64, passes, wall))
}

fn check_bench(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    generated: &Generated,
    t0: SystemTime,
) -> BenchResult<CheckFigures> {
    let counting = Arc::new(RecordingStorage::new(Arc::new(FileStorage::new(root))));
    let clock = Arc::new(ManualClock::new(t0));
    let (config, events) = build_config(counting.clone(), clock.clone());
    rt.block_on(config.manage(&generated.names))
        .map_err(|e| format!("Config::manage: {e}"))?;
    verify_loaded(&config, generated, events.load(Ordering::Relaxed))?;
    let startup_calls = count_by_op(&counting.take());

    let check_pass = |expect_due: usize| -> BenchResult<()> {
        let report = rt.block_on(config.check_renewals());
        if report.checked != TOTAL_CERTS || report.due.len() != expect_due {
            return Err(format!(
                "check_renewals: checked {}, due {}, expected {TOTAL_CERTS} and {expect_due}",
                report.checked,
                report.due.len()
            ));
        }
        Ok(())
    };

    // The first pass after startup fills the per-certificate ARI state.
    let ((), first_pass) = timed(|| check_pass(0))?;
    let first_pass_calls = counting.take().len();

    let entries: Vec<Arc<CachedCert>> = generated
        .names
        .iter()
        .map(|n| {
            config
                .cache()
                .get(n)
                .ok_or_else(|| format!("{n} not cached"))
        })
        .collect::<BenchResult<_>>()?;
    let now = clock.now();
    let bare_pass = || -> BenchResult<()> {
        match black_box(bare_due(black_box(&entries), now)) {
            0 => Ok(()),
            n => Err(format!("bare loop found {n} due")),
        }
    };
    let lookup_pass = || -> BenchResult<()> {
        match black_box(lookup_due(config.cache(), black_box(&generated.names), now)) {
            0 => Ok(()),
            n => Err(format!("lookup loop found {n} due")),
        }
    };

    let steady_check = || check_pass(0);
    let contenders: [&dyn Fn() -> BenchResult<()>; 3] = [&steady_check, &bare_pass, &lookup_pass];
    let mut figures: [PassFigures; 3] = Default::default();
    for round in 0..CHECK_PASSES {
        for turn in 0..3 {
            let which = (round + turn) % 3;
            let start = Instant::now();
            contenders[which]()?;
            figures[which].walls.push(start.elapsed().as_secs_f64());
        }
    }
    for (f, pass) in figures.iter_mut().zip(contenders) {
        let (cpu, passes, wall) = cpu_batch(pass)?;
        f.batch_cpu = cpu;
        f.batch_passes = passes;
        f.batch_wall = wall;
    }
    let [check, bare, lookup] = figures;
    let steady_calls = counting.take().len();
    if steady_calls != 0 {
        return Err(format!(
            "{steady_calls} storage calls during check passes with nothing due"
        ));
    }
    let steady_passes = CHECK_PASSES + check.batch_passes;

    progress("(d) variant: 1 % of the certificates due");
    let variant = variant_bench(rt, &config, &counting, &clock, generated)?;
    Ok(CheckFigures {
        startup_calls,
        first_pass,
        first_pass_calls,
        check,
        bare,
        lookup,
        steady_calls,
        steady_passes,
        variant,
    })
}

/// The certificate storage keys (`Identifier::storage_key`) a storage key or lock name can
/// belong to: `certificates/<issuer>/<name>/<name>.crt`, `maintenance/retry/<name>.json`,
/// the lock `cert_<name>`.
fn key_names(key: &str) -> impl Iterator<Item = &str> {
    key.split('/').flat_map(|part| {
        [
            Some(part),
            part.strip_prefix("cert_"),
            part.rsplit_once('.').map(|(stem, _)| stem),
        ]
        .into_iter()
        .flatten()
    })
}

fn variant_bench(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    counting: &RecordingStorage,
    clock: &ManualClock,
    generated: &Generated,
) -> BenchResult<Variant> {
    clock.advance(VARIANT_ADVANCE);
    let expected: Vec<&String> = generated
        .names
        .iter()
        .enumerate()
        .filter(|(i, _)| is_short(*i))
        .map(|(_, n)| n)
        .collect();
    let (report, pass) = timed(|| Ok(rt.block_on(config.check_renewals())))?;
    let calls = counting.take();
    let mut due = report.due.clone();
    due.sort();
    let mut want: Vec<String> = expected.iter().map(|n| (*n).clone()).collect();
    want.sort();
    if due != want || report.renewed.len() != want.len() || !report.failed.is_empty() {
        return Err(format!(
            "variant pass: {} due, {} renewed, {} failed; expected exactly the {} short-lived \
             certificates due and renewed",
            report.due.len(),
            report.renewed.len(),
            report.failed.len(),
            want.len()
        ));
    }
    // Every key the pass touched must belong to a due certificate (or be the local CA's
    // root, which the renewals issue under).
    let due_keys: std::collections::HashSet<String> = generated
        .ids
        .iter()
        .enumerate()
        .filter(|(i, _)| is_short(*i))
        .map(|(_, id)| id.storage_key())
        .collect();
    let mut due_name_keys = 0;
    let mut local_ca_keys = 0;
    for (op, key) in &calls {
        if key_names(key).any(|n| due_keys.contains(n)) {
            due_name_keys += 1;
        } else if key.starts_with("local_ca") {
            local_ca_keys += 1;
        } else {
            return Err(format!(
                "variant pass: {op} {key:?} belongs to no certificate inside its window"
            ));
        }
    }
    let mut by_op = BTreeMap::new();
    for (op, _) in &calls {
        *by_op.entry(*op).or_insert(0) += 1;
    }
    for (i, (name, old)) in generated.names.iter().zip(&generated.serials).enumerate() {
        let entry = config
            .cache()
            .get(name)
            .ok_or_else(|| format!("{name} left the cache"))?;
        if is_short(i) == (entry.serial() == old) {
            return Err(format!(
                "{name}: serial {} after the variant pass (before: {old})",
                entry.serial()
            ));
        }
    }
    let (second, second_pass) = timed(|| Ok(rt.block_on(config.check_renewals())))?;
    let second_calls = counting.take().len();
    if second_calls != 0 || !second.due.is_empty() {
        return Err(format!(
            "second variant pass: {second_calls} storage calls, {} due; expected none",
            second.due.len()
        ));
    }
    Ok(Variant {
        due: report.due.len(),
        renewed: report.renewed.len(),
        failed: report.failed.len(),
        pass,
        calls: by_op,
        due_name_keys,
        local_ca_keys,
        second_pass,
        second_calls,
        second_due: second.due.len(),
    })
}

// ----- report -----

struct Report {
    cores: usize,
    generation: Duration,
    startup: StartupRuns,
    breakdown: Vec<Breakdown>,
    check: CheckFigures,
    loads: Vec<(String, String)>,
    total: Duration,
}

fn walls(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.wall).collect()
}

fn cpus(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.cpu.total()).collect()
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

impl Report {
    fn print(&self) {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        println!("== bench-maintain: startup and renewal checks, {TOTAL_CERTS} certificates ==");
        println!("command:  {COMMAND}");
        println!(
            "machine:  {} cores (available_parallelism), CPU {model}, kernel {kernel}",
            self.cores
        );
        println!("load averages (1, 5, 15 min):");
        for (when, load) in &self.loads {
            println!("  {when:<14} {load}");
        }
        println!(
            "certificates: {TOTAL_CERTS} P-256 leaves from one LocalCa (leaf + root chain), \
             one name each, in FileStorage; issued and written in {:.1} s",
            self.generation.as_secs_f64()
        );
        println!("total run time: {:.0} s", self.total.as_secs_f64());
        println!();

        let s = &self.startup;
        let manage_wall = median(&walls(&s.manage));
        let manage_cpu = median(&cpus(&s.manage));
        println!(
            "(a) startup: load {TOTAL_CERTS} certificates from FileStorage into the cache; \
             {STARTUP_RUNS} rounds, contenders interleaved; CPU = utime + stime (/proc/self/stat)"
        );
        println!(
            "| contender | wall, median (per round) | CPU, median | CPU user / system \
             (median round) | wall ratio to manage | CPU ratio to manage |"
        );
        let rows: [(&str, &[Sample]); 4] = [
            ("Config::manage(10,000 names)", &s.manage),
            ("std::fs::read of the .crt and .key files", &s.std_read),
            ("tokio::fs::read of the same, one at a time", &s.tokio_read),
            (
                "std::fs::read + PEM + CertifiedKey::from_der + HashMap",
                &s.parse,
            ),
        ];
        for (what, samples) in rows {
            let w = walls(samples);
            let c = cpus(samples);
            let mid = samples
                .iter()
                .min_by(|a, b| {
                    (a.wall - median(&w))
                        .abs()
                        .total_cmp(&(b.wall - median(&w)).abs())
                })
                .map_or(
                    Cpu {
                        user: f64::NAN,
                        system: f64::NAN,
                    },
                    |x| x.cpu,
                );
            println!(
                "| {what} | {:.3} s ({}) | {:.2} s | {:.2} / {:.2} s | {:.2}x | {:.2}x |",
                median(&w),
                list(&w, 1.0, 3),
                median(&c),
                mid.user,
                mid.system,
                manage_wall / median(&w),
                manage_cpu / median(&c),
            );
        }
        println!(
            "  per certificate: manage {:.0} us wall; parse baseline {:.0} us; std::fs {:.0} us",
            manage_wall / TOTAL_CERTS as f64 * 1e6,
            median(&walls(&s.parse)) / TOTAL_CERTS as f64 * 1e6,
            median(&walls(&s.std_read)) / TOTAL_CERTS as f64 * 1e6,
        );
        println!();
        println!(
            "    breakdown: manage's steps timed one by one through the public API, sequential \
             ({BREAKDOWN_RUNS} runs; seconds summed over {TOTAL_CERTS} certificates)"
        );
        println!("| step | seconds, median (per run) | us per certificate |");
        let field =
            |f: fn(&Breakdown) -> f64| -> Vec<f64> { self.breakdown.iter().map(f).collect() };
        let steps: [(&str, Vec<f64>); 6] = [
            (
                "managed-list check before the fix (a linear scan), replayed; now a HashSet insert",
                field(|b| b.managed_scan),
            ),
            (
                "2 x FileStorage::load (spawn_blocking + read)",
                field(|b| b.storage_load),
            ),
            (
                "Certificate::from_pem (PEM, X.509, key parse + match)",
                field(|b| b.from_pem),
            ),
            (
                "CachedCert::new (key parsed again, CertifiedKey::from_der)",
                field(|b| b.cached_cert),
            ),
            ("CertCache::insert_entry", field(|b| b.insert)),
            ("whole loop", field(|b| b.total)),
        ];
        for (what, v) in &steps {
            println!(
                "| {what} | {:.3} ({}) | {:.1} |",
                median(v),
                list(v, 1.0, 3),
                median(v) / TOTAL_CERTS as f64 * 1e6
            );
        }
        let loop_total = median(&field(|b| b.total));
        println!(
            "  manage's median wall time minus the whole loop's (events, cache checks, ...): {:.3} \
             s",
            manage_wall - loop_total
        );
        println!();

        let c = &self.check;
        println!("storage calls during manage(): {}", c.startup_calls);
        println!(
            "(b) one renewal check pass over {TOTAL_CERTS} cached certificates, none due; wall = \
             median of {CHECK_PASSES} passes timed one by one (contenders interleaved); CPU = \
             utime + stime over a batch of at least {:.0} s, per pass",
            CPU_BATCH.as_secs_f64()
        );
        println!(
            "  first pass after startup (fills the ARI state): {:.2} ms wall, {:.0} ms CPU, {} \
             storage calls",
            c.first_pass.wall * 1e3,
            c.first_pass.cpu.total() * 1e3,
            c.first_pass_calls
        );
        println!(
            "| contender | wall ms, median (min-max) | CPU ms per pass (batch: passes, s) | wall \
             ratio check/contender | CPU ratio |"
        );
        let check_wall = median(&c.check.walls);
        let rows: [(&str, &PassFigures); 3] = [
            ("Config::check_renewals()", &c.check),
            (
                "bare loop over the 10,000 Arc<CachedCert>, ratio comparison only",
                &c.bare,
            ),
            (
                "loop over the managed names: CertCache::get + comparison",
                &c.lookup,
            ),
        ];
        for (what, f) in rows {
            println!(
                "| {what} | {:.3} ({:.3}-{:.3}) | {:.3} ({}, {:.1} s) | {:.1}x | {:.1}x |",
                median(&f.walls) * 1e3,
                min(&f.walls) * 1e3,
                max(&f.walls) * 1e3,
                f.batch_cpu * 1e3,
                f.batch_passes,
                f.batch_wall,
                check_wall / median(&f.walls),
                c.check.batch_cpu / f.batch_cpu,
            );
        }
        println!();
        println!(
            "(c) storage calls during the {} steady check passes: {} (the binary fails unless 0)",
            c.steady_passes, c.steady_calls
        );
        println!();
        let v = &c.variant;
        println!(
            "(d) variant: clock moved {} h on, {} of {TOTAL_CERTS} inside their window",
            VARIANT_ADVANCE.as_secs() / 3600,
            v.due
        );
        println!(
            "  pass renewing them: {:.0} ms wall, {:.0} ms CPU; due {}, renewed {}, failed {}",
            v.pass.wall * 1e3,
            v.pass.cpu.total() * 1e3,
            v.due,
            v.renewed,
            v.failed
        );
        println!(
            "  storage calls: {} ({} on keys of due certificates, {} on the local CA root, 0 \
             on any other certificate)",
            v.calls
                .iter()
                .map(|(op, n)| format!("{op} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            v.due_name_keys,
            v.local_ca_keys
        );
        println!(
            "  next pass at the same time: {:.2} ms wall, {} due, {} storage calls",
            v.second_pass.wall * 1e3,
            v.second_due,
            v.second_calls
        );
        println!();

        let parse_wall = median(&walls(&s.parse));
        println!("goals (from the issue):");
        println!("| goal | measured | met? |");
        println!(
            "| one check pass < 50 ms | {:.2} ms wall median, {:.2} ms CPU per pass (first \
             pass {:.2} ms) | {} |",
            check_wall * 1e3,
            c.check.batch_cpu * 1e3,
            c.first_pass.wall * 1e3,
            met(check_wall < CHECK_GOAL.as_secs_f64()
                && c.first_pass.wall < CHECK_GOAL.as_secs_f64())
        );
        println!(
            "| no storage reads for certificates outside their window | {} calls in {} passes \
             with none due; 0 of {} calls in the 1 % variant | {} |",
            c.steady_calls,
            c.steady_passes,
            v.calls.values().sum::<usize>(),
            met(c.steady_calls == 0 && c.first_pass_calls == 0)
        );
        println!(
            "| startup with {TOTAL_CERTS} certificates < 2 s | {:.3} s wall median, {:.2} s CPU \
             ({:.2}x the parse baseline's wall) | {} |",
            manage_wall,
            manage_cpu,
            manage_wall / parse_wall,
            met(manage_wall < STARTUP_GOAL.as_secs_f64())
        );
    }
}
