//! Run with: cargo run --release -p certauto-tests --bin bench-storage
//!
//! Cluster storage benchmark (issue 11): `RedisStorage` on a real `redis-server` (Debian's,
//! started by the harness on a free loopback port, persistence off) against `FileStorage`
//! (a temporary folder) and `MemoryStorage`, in the same run.
//!
//! * **Certificates.** [`TOTAL_CERTS`] distinct ECDSA P-256 certificates, one name each
//!   (`s<i>.storage.test`, 7-day leaves, none in its renewal window), issued offline by
//!   CertAuto's `LocalCa` and written through the `Storage` API as certificate records
//!   (`keys::cert_record`: key then chain) into both storages, with the local CA's root.
//! * **(a) Startup.** A fresh storage client and a fresh `Config`, then
//!   `config.manage(all names)`: every stored certificate loaded into the cache. Rounds
//!   alternate Redis and files (and which goes first); medians of [`STARTUP_ROUNDS`].
//!   Goal: Redis within 1.5x of files and under 2 s.
//! * **(b) Lock round trip.** `lock(name)` then `release()` of an uncontended lock,
//!   [`LOCK_ROUNDS`] times per backend, interleaved; median and 99th percentile.
//! * **(c) Renewal check.** One `Config::check_renewals` pass over the certificates
//!   managed from Redis, and the same from files (after a first pass each): medians of
//!   [`CHECK_PASSES`] passes per backend, interleaved, and the storage calls the passes
//!   made, counted by a wrapper around each storage (the binary fails unless there are
//!   none). Goal: under 50 ms on Redis, as for files.
//!
//! Results go to stdout, progress to stderr; a failed check makes the binary exit non-zero.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use certauto::storage::keys;
use certauto::{
    Config, FileStorage, Identifier, LOCAL_CA_ISSUER_KEY, LocalCa, ManualClock, MemoryStorage,
    RedisStorage, Storage,
};
use certauto_tests::{RecordingStorage, RedisServer};

/// The command that runs this benchmark.
const COMMAND: &str = "cargo run --release -p certauto-tests --bin bench-storage";
/// Managed certificates (`BENCH_STORAGE_CERTS` overrides it, for a quick smoke run).
const TOTAL_CERTS: usize = 10_000;

/// [`TOTAL_CERTS`], or `BENCH_STORAGE_CERTS`.
fn total_certs() -> usize {
    std::env::var("BENCH_STORAGE_CERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(TOTAL_CERTS)
}
/// Startup rounds per backend.
const STARTUP_ROUNDS: usize = 5;
/// Lock round trips per backend.
const LOCK_ROUNDS: usize = 2_000;
/// Timed renewal-check passes.
const CHECK_PASSES: usize = 21;
/// Concurrent writers while filling the storages (setup, not measured).
const WRITERS: usize = 16;
const STARTUP_GOAL: Duration = Duration::from_secs(2);
const STARTUP_RATIO_GOAL: f64 = 1.5;
const CHECK_GOAL: Duration = Duration::from_millis(50);
/// Bound on the whole run.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);

type BenchResult<T> = Result<T, String>;

fn main() -> ExitCode {
    certauto_tests::init_stderr_logging();
    std::thread::spawn(|| {
        std::thread::sleep(RUN_DEADLINE);
        eprintln!("bench-storage: FAILED: the run exceeded its deadline of {RUN_DEADLINE:?}");
        std::process::exit(2);
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-storage: FAILED: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-storage: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn progress(message: &str) {
    eprintln!("bench-storage: {message}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The value at quantile `q` (0..=1) of `samples` (sorted here).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    let last = samples.len().saturating_sub(1);
    // Rounded to the nearest rank; `last` bounds it.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((last as f64) * q).round() as usize;
    samples.get(rank.min(last)).copied().unwrap_or_default()
}

async fn redis_client(server: &RedisServer) -> BenchResult<RedisStorage> {
    RedisStorage::builder(&server.url())
        .key_prefix("bench")
        .build()
        .await
        .map_err(|e| format!("RedisStorage: {}", certauto::ErrorChain(&e)))
}

async fn run() -> BenchResult<()> {
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let redis = RedisServer::builder().start().await;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let root = dir.path().join("storage");
    let clock = Arc::new(ManualClock::new(SystemTime::now()));

    // ----- certificates -----
    progress(&format!(
        "issuing {} certificates with LocalCa",
        total_certs()
    ));
    let t = Instant::now();
    let (names, records) = generate().await?;
    progress(&format!("issued in {:.1} s", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let file: Arc<dyn Storage> = Arc::new(FileStorage::new(&root));
    let red: Arc<dyn Storage> = Arc::new(redis_client(&redis).await?);
    fill(&file, &records).await?;
    fill(&red, &records).await?;
    progress(&format!(
        "wrote {} records into each storage in {:.1} s",
        records.len(),
        t.elapsed().as_secs_f64()
    ));

    // ----- (a) startup -----
    progress(&format!("(a) startup: {STARTUP_ROUNDS} rounds per backend"));
    let mut startup_file = Vec::new();
    let mut startup_redis = Vec::new();
    for round in 0..STARTUP_ROUNDS {
        for redis_first in [round % 2 == 1, round % 2 == 0] {
            let storage: Arc<dyn Storage> = if redis_first {
                Arc::new(redis_client(&redis).await?)
            } else {
                Arc::new(FileStorage::new(&root))
            };
            let config = Config::builder()
                .storage(storage)
                .clock(clock.clone())
                .build();
            let t = Instant::now();
            config
                .manage(&names)
                .await
                .map_err(|e| format!("manage: {}", certauto::ErrorChain(&e)))?;
            let elapsed = t.elapsed();
            verify_loaded(&config, &names)?;
            config.cache().stop();
            if redis_first {
                startup_redis.push(elapsed);
            } else {
                startup_file.push(elapsed);
            }
        }
    }

    // ----- (b) lock round trip -----
    progress(&format!("(b) lock round trips: {LOCK_ROUNDS} per backend"));
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let backends: [(&str, &Arc<dyn Storage>); 3] = [
        ("RedisStorage", &red),
        ("FileStorage", &file),
        ("MemoryStorage", &memory),
    ];
    let mut lock_samples: Vec<Vec<Duration>> = vec![Vec::new(); backends.len()];
    for _ in 0..LOCK_ROUNDS {
        for (i, (name, storage)) in backends.iter().enumerate() {
            let t = Instant::now();
            let guard = storage
                .lock("bench_lock")
                .await
                .map_err(|e| format!("{name} lock: {}", certauto::ErrorChain(&e)))?;
            guard
                .release()
                .await
                .map_err(|e| format!("{name} release: {}", certauto::ErrorChain(&e)))?;
            if let Some(samples) = lock_samples.get_mut(i) {
                samples.push(t.elapsed());
            }
        }
    }

    // ----- (c) renewal check, Redis and files interleaved -----
    progress(&format!(
        "(c) renewal check: {CHECK_PASSES} passes per backend, interleaved"
    ));
    let mut checks = Vec::new();
    for (what, storage) in [("RedisStorage", &red), ("FileStorage", &file)] {
        let counting = Arc::new(RecordingStorage::new(storage.clone()));
        let config = Config::builder()
            .storage(counting.clone())
            .clock(clock.clone())
            .build();
        config
            .manage(&names)
            .await
            .map_err(|e| format!("manage: {}", certauto::ErrorChain(&e)))?;
        verify_loaded(&config, &names)?;
        let first = config.check_renewals().await;
        if !first.due.is_empty() || !first.failed.is_empty() {
            return Err(format!(
                "{what}: the first pass found due certificates: {first:?}"
            ));
        }
        counting.take();
        checks.push((what, config, counting, Vec::with_capacity(CHECK_PASSES)));
    }
    for _ in 0..CHECK_PASSES {
        for (what, config, _, passes) in &mut checks {
            let t = Instant::now();
            let report = config.check_renewals().await;
            passes.push(t.elapsed());
            if report.checked != names.len() || !report.due.is_empty() {
                return Err(format!(
                    "{what}: a pass checked {} and found {} due",
                    report.checked,
                    report.due.len()
                ));
            }
        }
    }
    let mut check_passes = Vec::new();
    for (what, config, counting, passes) in checks {
        let calls = counting.take();
        config.cache().stop();
        if !calls.is_empty() {
            return Err(format!(
                "{what}: {} storage calls during the check passes, want 0: {:?}",
                calls.len(),
                calls.iter().take(5).collect::<Vec<_>>()
            ));
        }
        check_passes.push((what, passes));
    }

    // ----- report -----
    let file_median = quantile(&mut startup_file, 0.5);
    let redis_median = quantile(&mut startup_redis, 0.5);
    let ratio = redis_median.as_secs_f64() / file_median.as_secs_f64().max(f64::MIN_POSITIVE);
    let [(_, redis_passes), (_, file_passes)] = &mut check_passes[..] else {
        return Err("two backends' renewal-check passes".into());
    };
    let check_median = quantile(redis_passes, 0.5);
    let file_check_median = quantile(file_passes, 0.5);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("## bench-storage ({COMMAND})");
    println!();
    println!(
        "{} certificates, {cores} cores, redis-server {}, load average {}",
        names.len(),
        redis_version(),
        loadavg()
    );
    println!();
    println!("| what | median | min | max |");
    println!("|---|---|---|---|");
    let n = names.len();
    for (what, samples) in [
        ("FileStorage", &startup_file),
        ("RedisStorage", &startup_redis),
    ] {
        println!(
            "| startup manage({n} names) from {what} | {:.0} ms | {:.0} ms | {:.0} ms |",
            ms(quantile(&mut samples.clone(), 0.5)),
            ms(samples.iter().min().copied().unwrap_or_default()),
            ms(samples.iter().max().copied().unwrap_or_default()),
        );
    }
    for (what, passes) in &check_passes {
        println!(
            "| renewal check pass, {n} names on {what} | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(quantile(&mut passes.clone(), 0.5)),
            ms(passes.iter().min().copied().unwrap_or_default()),
            ms(passes.iter().max().copied().unwrap_or_default()),
        );
    }
    println!();
    println!("| lock + release ({LOCK_ROUNDS} rounds) | median | p99 |");
    println!("|---|---|---|");
    for ((name, _), samples) in backends.iter().zip(lock_samples.iter_mut()) {
        let median = quantile(samples, 0.5);
        let p99 = quantile(samples, 0.99);
        println!(
            "| {name} | {:.0} µs | {:.0} µs |",
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    println!();
    println!(
        "Startup: Redis / files = {ratio:.2}x (goal <= {STARTUP_RATIO_GOAL}x: {}); Redis {:.0} ms \
         (goal < {} ms: {}).",
        met(ratio <= STARTUP_RATIO_GOAL),
        ms(redis_median),
        STARTUP_GOAL.as_millis(),
        met(redis_median < STARTUP_GOAL),
    );
    println!(
        "Renewal check on Redis: {:.2} ms (goal < {} ms: {}), files {:.2} ms (Redis / files = \
         {:.2}x); storage calls during {CHECK_PASSES} passes on each: 0.",
        ms(check_median),
        CHECK_GOAL.as_millis(),
        met(check_median < CHECK_GOAL),
        ms(file_check_median),
        check_median.as_secs_f64() / file_check_median.as_secs_f64().max(f64::MIN_POSITIVE),
    );
    println!("Total run: {:.0} s.", started.elapsed().as_secs_f64());
    Ok(())
}

/// Issues the certificates; returns the names and every key to write (records and the
/// local CA's root), with their values.
async fn generate() -> BenchResult<(Vec<String>, Vec<(String, Vec<u8>)>)> {
    let ca_storage = Arc::new(MemoryStorage::new());
    let ca = LocalCa::new(ca_storage.clone());
    let total = total_certs();
    let mut names = Vec::with_capacity(total);
    let mut records = Vec::with_capacity(total + 4);
    for i in 0..total {
        let name = format!("s{i}.storage.test");
        let id = Identifier::parse(&name).map_err(|e| format!("{name}: {e}"))?;
        let cert = ca
            .issue_for(std::slice::from_ref(&id))
            .await
            .map_err(|e| format!("LocalCa issue for {name}: {e}"))?;
        let bundle = format!("{}\n{}", cert.key_pem().trim_end(), cert.chain_pem());
        records.push((
            keys::cert_record(LOCAL_CA_ISSUER_KEY, &id),
            bundle.into_bytes(),
        ));
        names.push(name);
    }
    // The local CA's root, so configs on either storage find the same CA.
    let ca_keys = ca_storage
        .list("", true)
        .await
        .map_err(|e| format!("list the CA storage: {e}"))?;
    for key in ca_keys {
        let value = ca_storage
            .load(&key)
            .await
            .map_err(|e| format!("load {key}: {e}"))?;
        records.push((key, value));
    }
    Ok((names, records))
}

/// Writes `records` into `storage` through the `Storage` API, [`WRITERS`] at a time.
async fn fill(storage: &Arc<dyn Storage>, records: &[(String, Vec<u8>)]) -> BenchResult<()> {
    let records = Arc::new(records.to_vec());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (storage, records) = (storage.clone(), records.clone());
        tasks.spawn(async move {
            for (key, value) in records.iter().skip(w).step_by(WRITERS) {
                storage
                    .store(key, value)
                    .await
                    .map_err(|e| format!("store {key}: {}", certauto::ErrorChain(&e)))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("a writer panicked: {e}"))??;
    }
    Ok(())
}

/// Every name is in the cache.
fn verify_loaded(config: &Config, names: &[String]) -> BenchResult<()> {
    let missing = names
        .iter()
        .filter(|n| config.cache().get(n.as_str()).is_none())
        .count();
    if missing == 0 {
        Ok(())
    } else {
        Err(format!("{missing} names not loaded into the cache"))
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn redis_version() -> String {
    std::process::Command::new("/usr/bin/redis-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
