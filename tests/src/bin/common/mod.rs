//! What the benchmark binaries share: finding tools, running lego and
//! checking what it stored, running obtains N at a time, checking
//! certificates, and the statistics and figures of a report.
//!
//! Each binary includes this folder with `#[path = "common/mod.rs"] mod
//! common;` and uses a part of it.
#![allow(dead_code)]

pub(crate) mod lego;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use certauto::{Certificate, Config, Identifier, KeyType};
pub(crate) use certauto_tests::{find_on_path, is_executable, webpki_verify_chain};
use tokio::task::JoinSet;

/// A benchmark step's result; the error says what failed, for the report.
pub(crate) type BenchResult<T> = Result<T, String>;

/// The `main` of an async benchmark: stderr logging, a multi-threaded
/// runtime, `run` bounded by `deadline`; a failure or the deadline is said
/// on stderr as `<name>: FAILED: ...` and the exit code fails.
pub(crate) fn run_async<F>(name: &str, deadline: Duration, run: F) -> std::process::ExitCode
where
    F: Future<Output = BenchResult<()>>,
{
    use std::process::ExitCode;
    certauto_tests::init_stderr_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: FAILED: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async { tokio::time::timeout(deadline, run).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{name}: FAILED: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{name}: FAILED: the whole run exceeded its deadline of {deadline:?}");
            ExitCode::FAILURE
        }
    }
}

/// `fut`, or an error naming `what` after `limit`.
pub(crate) async fn with_timeout<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = BenchResult<T>>,
) -> BenchResult<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{what} did not finish within {limit:?}"))?
}

/// One timed CertAuto obtain of `names`, start to stored (`obtain` returns
/// after storing), bounded by `limit`.
pub(crate) async fn certauto_obtain(
    config: &Config,
    names: &[&str],
    limit: Duration,
) -> BenchResult<(Duration, Certificate)> {
    let start = Instant::now();
    let cert = tokio::time::timeout(limit, config.obtain(names.iter().copied()))
        .await
        .map_err(|_| format!("CertAuto: obtaining {names:?} exceeded {limit:?}"))?
        .map_err(|e| format!("CertAuto: obtaining {names:?} failed: {e}"))?;
    Ok((start.elapsed(), cert))
}

/// Checks that `cert` is a P-256 certificate for `name` that verifies against
/// the CA's root (`Certificate::from_pem` has already checked that the key
/// matches the leaf).
pub(crate) fn check_certificate(
    cert: &Certificate,
    name: &str,
    root_der: &[u8],
    who: &str,
) -> BenchResult<()> {
    let id = Identifier::parse(name).map_err(|e| format!("{who}: bad name {name:?}: {e}"))?;
    if !cert.covers(&id) {
        return Err(format!(
            "{who}: the certificate for {name} does not cover it (names: {:?})",
            cert.names()
        ));
    }
    if cert.key_type() != KeyType::EcdsaP256 {
        return Err(format!(
            "{who}: the certificate for {name} has a {} key, not ECDSA P-256",
            cert.key_type()
        ));
    }
    let chain: Vec<Vec<u8>> = cert.chain().iter().map(|c| c.as_ref().to_vec()).collect();
    webpki_verify_chain(&chain, root_der, name).map_err(|e| {
        let described: Vec<String> = chain.iter().map(|der| describe(der)).collect();
        format!(
            "{who}: {e}\n  chain: [{}]\n  root: {}",
            described.join(", "),
            describe(root_der)
        )
    })
}

/// `subject <- issuer` of a DER certificate, for error messages.
pub(crate) fn describe(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => format!("{{{} <- {}}}", cert.subject(), cert.issuer()),
        Err(e) => format!("{{unparsable: {e}}}"),
    }
}

/// Runs `task` for every name, `concurrency` at a time (that many workers
/// taking the next name as soon as they are free). Returns the wall time and
/// the results in name order.
pub(crate) async fn run_pool<T, F, Fut>(
    names: Vec<String>,
    concurrency: usize,
    task: F,
) -> BenchResult<(Duration, Vec<T>)>
where
    T: Send + 'static,
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = BenchResult<T>> + Send + 'static,
{
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let names = names.clone();
        let next = next.clone();
        let task = task.clone();
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else {
                    break;
                };
                done.push((i, task(name.clone()).await?));
            }
            Ok::<_, String>(done)
        });
    }
    let mut results = Vec::with_capacity(names.len());
    while let Some(joined) = workers.join_next().await {
        // An error returns early; dropping the JoinSet aborts the other workers.
        results.extend(joined.map_err(|e| format!("worker task: {e}"))??);
    }
    let elapsed = start.elapsed();
    if results.len() != names.len() {
        return Err(format!(
            "{} of {} obtains completed",
            results.len(),
            names.len()
        ));
    }
    results.sort_by_key(|(i, _)| *i);
    Ok((elapsed, results.into_iter().map(|(_, r)| r).collect()))
}

// ----- tools -----

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ----- measurements -----

/// Order statistics of a set of durations.
#[derive(Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) median: Duration,
    pub(crate) p90: Duration,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Stats {
    /// Median (mean of the two middle samples for an even count), p90 (nearest rank), min, max.
    pub(crate) fn of(samples: &[Duration]) -> BenchResult<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let n = sorted.len();
        if n == 0 {
            return Err("no samples".to_owned());
        }
        let median = if n.is_multiple_of(2) {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        } else {
            sorted[n / 2]
        };
        let rank = (n * 9).div_ceil(10).max(1);
        Ok(Self {
            median,
            p90: sorted[rank - 1],
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// This process's peak resident set, in KiB.
pub(crate) fn vm_hwm_kib() -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM line in /proc/self/status".to_owned())
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// An installed Debian package's version.
pub(crate) fn dpkg_version(package: &str) -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The machine line of a report.
pub(crate) fn machine(load_start: &str, load_end: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!(
        "{cores} cores (available_parallelism), kernel {kernel}, load average {load_start} at \
         start, {load_end} at end"
    )
}

/// Seconds with three decimals.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// KiB as MiB with one decimal.
pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
