//! Run with: cargo run --release -p certauto-tests --bin bench-issue
//!
//! Issuance benchmark: CertAuto against `lego` (the Debian package, 4.9) on **one** Pebble
//! started by the test harness (`PEBBLE_VA_NOSLEEP=1`, every other Pebble setting at its
//! default), so both clients face identical conditions in the same run.
//!
//! * (a) latency of one certificate, start to stored: [`LATENCY_RUNS`] sequential obtains of
//!   distinct names per client, interleaved (CertAuto and lego take turns going first).
//!   CertAuto is one long-lived `Config` + `AcmeIssuer` whose account already exists; lego
//!   is one fresh process per certificate (spawn to exit), its account created by an untimed
//!   first run in the same `--path`.
//! * (b) throughput: [`THROUGHPUT_CERTS`] distinct names, [`CONCURRENCY`] at a time.
//!   CertAuto runs concurrent `Config::obtain` tasks sharing one `Http01Solver`; lego runs
//!   concurrent processes with `--http.webroot`, the webroot being served on Pebble's HTTP-01
//!   port by this binary.
//! * peak memory: CertAuto's is this whole process's `VmHWM` (so it includes the harness);
//!   lego's is each process's peak RSS as reported by `/usr/bin/time -f %M`.
//!
//! Every certificate is checked (it covers its name, has a P-256 key matching it, verifies
//! against Pebble's root, and is in storage / in lego's `certificates/` folder); any failure
//! or timeout makes the binary exit non-zero. The table goes to stdout, progress to stderr.
//!
//! Needs `pebble` + `pebble-challtestsrv` (Pebble v2.10.1, installed into `.tools/bin` by
//! `scripts/install-pebble.sh`), `lego` (Debian package `lego`), `/usr/bin/time` (Debian
//! package `time`) and `timeout` (coreutils).

use std::convert::Infallible;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use certauto::{
    AcmeIssuer, Certificate, Config, FileStorage, Http01Solver, Identifier, KeyType, Storage,
};
use certauto_tests::{PEBBLE_VERSION, Pebble, pebble_bin_dir, webpki_verify_chain};
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::process::Command;
use tokio::task::JoinSet;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

/// The command that runs this benchmark.
const COMMAND: &str = "cargo run --release -p certauto-tests --bin bench-issue";
/// Sequential obtains per client for (a).
const LATENCY_RUNS: usize = 20;
/// Certificates per client for (b).
const THROUGHPUT_CERTS: usize = 100;
/// Obtains in flight at once for (b).
const CONCURRENCY: usize = 8;
/// Bound on one CertAuto obtain.
const OBTAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one lego process (enforced by `timeout`, which also kills lego).
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time after [`PROCESS_TIMEOUT`] before this binary gives up on the wrapper itself.
const PROCESS_GRACE: Duration = Duration::from_secs(15);
/// Bound on the whole run.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// Bound on one request to Pebble outside the timed sections (account creation, roots).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Marker in front of `/usr/bin/time`'s `%M` (max RSS in KiB) on lego's stderr.
const RSS_MARKER: &str = "bench-issue-maxrss-kib=";
/// Account e-mail used by both clients.
const EMAIL: &str = "bench@certauto.test";
/// Name suffix of every certificate (Pebble's mock DNS answers 127.0.0.1 for all names).
const DOMAIN: &str = "bench.certauto.test";
/// Environment variables removed for lego: validation and ACME traffic stay on loopback,
/// and nothing from the caller's environment changes lego's behaviour.
const CLEARED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "LEGO_PATH",
    "LEGO_CA_SERVER_NAME",
    "LEGO_CA_SYSTEM_CERT_POOL",
];

const LEGO_MISSING: &str = "lego not found on PATH: install the Debian package lego \
                            (apt-get install -y lego)";
const TIME_MISSING: &str = "/usr/bin/time not found (it reports lego's peak RSS): install the \
                            Debian package time (apt-get install -y time)";
const TIMEOUT_MISSING: &str = "timeout not found on PATH: install the Debian package coreutils";

type BenchResult<T> = Result<T, String>;

fn main() -> ExitCode {
    certauto_tests::init_stderr_logging();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-issue: FAILED: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async { tokio::time::timeout(RUN_DEADLINE, run()).await });
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("bench-issue: FAILED: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "bench-issue: FAILED: the whole run exceeded its deadline of {RUN_DEADLINE:?}"
            );
            ExitCode::FAILURE
        }
    }
}

async fn run() -> BenchResult<()> {
    let tools = Tools::find()?;
    let load_start = loadavg();
    let work = tempfile::Builder::new()
        .prefix("certauto-bench-issue-")
        .tempdir()
        .map_err(|e| format!("create a temporary directory: {e}"))?;

    progress("starting Pebble");
    let pebble = Pebble::builder().start().await;
    let http_addr = SocketAddr::from(([127, 0, 0, 1], pebble.http_port()));
    let root_der = with_timeout(SETUP_TIMEOUT, "fetch Pebble's root", async {
        Ok(pebble.root_der(0).await)
    })
    .await?;

    // ----- CertAuto: one long-lived Config, account created before timing -----
    let certauto_dir = work.path().join("certauto");
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(&certauto_dir));
    let issuer = AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email(EMAIL)
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .http01_solver(Http01Solver::bind(http_addr))
        .storage(storage.clone())
        .build();
    let config = Config::builder()
        .storage(storage)
        .issuer(issuer.clone())
        .key_type(KeyType::EcdsaP256)
        // `.test` names would otherwise go to CertAuto's local CA, not to Pebble.
        .public_ca_for_local_names()
        // The internal issuance rate limit (default 20 per minute per CA) is
        // raised for the bench, as the issue asks: Pebble has no such limit.
        .issuance_rate_limit(100_000, Duration::from_secs(1))
        .build();
    progress("CertAuto: creating the account and one untimed warm-up certificate");
    with_timeout(SETUP_TIMEOUT, "CertAuto account creation", async {
        issuer
            .account()
            .await
            .map_err(|e| format!("CertAuto account creation: {e}"))
    })
    .await?;
    let warmup = certauto_name("warmup", 0);
    let cert = certauto_obtain(&config, &warmup).await?.1;
    check_certificate(&cert, &warmup, &root_der, "CertAuto")?;

    // ----- lego: account created by an untimed first run in the shared --path -----
    let ca_file = work.path().join("pebble-https-ca.pem");
    std::fs::write(&ca_file, pebble.https_ca_pem())
        .map_err(|e| format!("write {}: {e}", ca_file.display()))?;
    let lego = Arc::new(Lego {
        tools,
        server: pebble.directory_url(),
        ca_file,
        path: work.path().join("lego"),
        http_addr,
    });
    progress("lego: creating the account with one untimed warm-up run");
    let warmup = lego_name("warmup", 0);
    lego.obtain(&warmup, Solve::Listen).await?;
    lego.check(&warmup, &root_der)?;

    // ----- (a) latency, interleaved -----
    let mut certauto_latency = Vec::with_capacity(LATENCY_RUNS);
    let mut lego_latency = Vec::with_capacity(LATENCY_RUNS);
    let mut lego_rss = Vec::new();
    let mut certauto_names = Vec::new();
    let mut lego_names = Vec::new();
    for i in 0..LATENCY_RUNS {
        progress(&format!("(a) latency round {}/{LATENCY_RUNS}", i + 1));
        let ca_name = certauto_name("a", i);
        let lego_name = lego_name("a", i);
        for turn in 0..2 {
            if (turn == 0) == i.is_multiple_of(2) {
                let (elapsed, cert) = certauto_obtain(&config, &ca_name).await?;
                check_certificate(&cert, &ca_name, &root_der, "CertAuto")?;
                certauto_latency.push(elapsed);
            } else {
                let run = lego.obtain(&lego_name, Solve::Listen).await?;
                lego_latency.push(run.elapsed);
                lego_rss.push(run.max_rss_kib);
            }
        }
        certauto_names.push(ca_name);
        lego_names.push(lego_name);
    }

    // ----- (b) throughput: CertAuto -----
    progress(&format!(
        "(b) CertAuto: {THROUGHPUT_CERTS} certificates, {CONCURRENCY} at a time"
    ));
    let names: Vec<String> = (0..THROUGHPUT_CERTS)
        .map(|i| certauto_name("b", i))
        .collect();
    let worker_config = config.clone();
    let (certauto_elapsed, certs) = run_pool(names.clone(), move |name| {
        let config = worker_config.clone();
        async move { Ok(certauto_obtain(&config, &name).await?.1) }
    })
    .await?;
    for (name, cert) in names.iter().zip(&certs) {
        check_certificate(cert, name, &root_der, "CertAuto")?;
    }
    certauto_names.extend(names);

    // ----- (b) throughput: lego with a webroot served here -----
    progress(&format!(
        "(b) lego: {THROUGHPUT_CERTS} certificates, {CONCURRENCY} processes at a time"
    ));
    let webroot = work.path().join("webroot");
    std::fs::create_dir_all(webroot.join(".well-known/acme-challenge"))
        .map_err(|e| format!("create the webroot: {e}"))?;
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|e| format!("bind the webroot server on {http_addr}: {e}"))?;
    let server = tokio::spawn(serve_webroot(listener, webroot.clone()));
    let names: Vec<String> = (0..THROUGHPUT_CERTS).map(|i| lego_name("b", i)).collect();
    let worker_lego = lego.clone();
    let pool = run_pool(names.clone(), move |name| {
        let lego = worker_lego.clone();
        let webroot = webroot.clone();
        async move { lego.obtain(&name, Solve::Webroot(&webroot)).await }
    })
    .await;
    server.abort();
    let (lego_elapsed, runs) = pool?;
    lego_rss.extend(runs.iter().map(|r| r.max_rss_kib));
    lego_names.extend(names);

    // ----- verification of everything that should be stored -----
    progress("verifying every stored certificate");
    for name in &certauto_names {
        let stored = config
            .load([name.as_str()])
            .await
            .map_err(|e| format!("CertAuto: loading {name} from storage: {e}"))?
            .ok_or_else(|| format!("CertAuto: {name} is not in storage"))?;
        check_certificate(&stored, name, &root_der, "CertAuto (stored)")?;
    }
    for name in &lego_names {
        lego.check(name, &root_der)?;
    }

    let certauto_hwm_kib = vm_hwm_kib()?;
    let load_end = loadavg();
    drop(pebble);

    let report = Report {
        lego_bin: lego.tools.lego.clone(),
        lego_example: lego.command_line("<name>", &Solve::Listen),
        lego_webroot_example: lego.command_line("<name>", &Solve::Webroot(Path::new("<webroot>"))),
        certauto_latency: Stats::of(&certauto_latency)?,
        lego_latency: Stats::of(&lego_latency)?,
        certauto_samples: certauto_latency,
        lego_samples: lego_latency,
        certauto_elapsed,
        lego_elapsed,
        certauto_hwm_kib,
        lego_rss,
        load_start,
        load_end,
    };
    report.print();
    Ok(())
}

// ----- names, progress, small helpers -----

fn certauto_name(phase: &str, i: usize) -> String {
    format!("{phase}-certauto-{i:03}.{DOMAIN}")
}

fn lego_name(phase: &str, i: usize) -> String {
    format!("{phase}-lego-{i:03}.{DOMAIN}")
}

fn progress(message: &str) {
    eprintln!("bench-issue: {message}");
}

async fn with_timeout<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = BenchResult<T>>,
) -> BenchResult<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{what} did not finish within {limit:?}"))?
}

/// One timed CertAuto obtain, start to stored (`obtain` returns after storing).
async fn certauto_obtain(config: &Config, name: &str) -> BenchResult<(Duration, Certificate)> {
    let start = Instant::now();
    let cert = tokio::time::timeout(OBTAIN_TIMEOUT, config.obtain([name]))
        .await
        .map_err(|_| format!("CertAuto: obtaining {name} exceeded {OBTAIN_TIMEOUT:?}"))?
        .map_err(|e| format!("CertAuto: obtaining {name} failed: {e}"))?;
    Ok((start.elapsed(), cert))
}

/// Checks that `cert` is a P-256 certificate for `name` that verifies against Pebble's root
/// (`Certificate::from_pem` has already checked that the key matches the leaf).
fn check_certificate(
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
fn describe(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => format!("{{{} <- {}}}", cert.subject(), cert.issuer()),
        Err(e) => format!("{{unparsable: {e}}}"),
    }
}

/// Runs `task` for every name, [`CONCURRENCY`] at a time (that many workers taking the next
/// name as soon as they are free). Returns the wall time and the results in name order.
async fn run_pool<T, F, Fut>(names: Vec<String>, task: F) -> BenchResult<(Duration, Vec<T>)>
where
    T: Send + 'static,
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = BenchResult<T>> + Send + 'static,
{
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..CONCURRENCY {
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

// ----- lego -----

struct Tools {
    lego: PathBuf,
    time: PathBuf,
    timeout: PathBuf,
}

impl Tools {
    fn find() -> BenchResult<Self> {
        let lego = find_on_path("lego").ok_or(LEGO_MISSING)?;
        let time = PathBuf::from("/usr/bin/time");
        if !is_executable(&time) {
            return Err(TIME_MISSING.to_owned());
        }
        let timeout = find_on_path("timeout").ok_or(TIMEOUT_MISSING)?;
        Ok(Self {
            lego,
            time,
            timeout,
        })
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How lego answers HTTP-01.
enum Solve<'a> {
    /// lego's own server on Pebble's HTTP-01 port (`--http.port`).
    Listen,
    /// Files in a webroot (`--http.webroot`) that this binary serves.
    Webroot(&'a Path),
}

struct Lego {
    tools: Tools,
    server: String,
    ca_file: PathBuf,
    path: PathBuf,
    http_addr: SocketAddr,
}

/// One finished lego process.
struct LegoRun {
    /// Spawn to exit.
    elapsed: Duration,
    /// Peak RSS in KiB (`/usr/bin/time -f %M`).
    max_rss_kib: u64,
}

impl Lego {
    fn lego_args(&self, name: &str, solve: &Solve<'_>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--server".into(),
            self.server.clone().into(),
            "--email".into(),
            EMAIL.into(),
            "--accept-tos".into(),
            "--key-type".into(),
            "ec256".into(),
            "--path".into(),
            self.path.clone().into(),
            "--domains".into(),
            name.into(),
            "--http".into(),
        ];
        match solve {
            Solve::Listen => {
                args.push("--http.port".into());
                args.push(self.http_addr.to_string().into());
            }
            Solve::Webroot(dir) => {
                args.push("--http.webroot".into());
                args.push(dir.as_os_str().to_owned());
            }
        }
        args.push("run".into());
        args
    }

    /// The full argument vector: `/usr/bin/time -f .. timeout -k 5 60 lego ..`.
    fn argv(&self, name: &str, solve: &Solve<'_>) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            self.tools.time.clone().into(),
            "-f".into(),
            format!("{RSS_MARKER}%M").into(),
            self.tools.timeout.clone().into(),
            "-k".into(),
            "5".into(),
            PROCESS_TIMEOUT.as_secs().to_string().into(),
            self.tools.lego.clone().into(),
        ];
        argv.extend(self.lego_args(name, solve));
        argv
    }

    fn command_line(&self, name: &str, solve: &Solve<'_>) -> String {
        let argv = self.argv(name, solve);
        let words: Vec<String> = argv
            .iter()
            .map(|a| {
                let s = a.to_string_lossy();
                if s.contains(['%', '<', '>', ' ']) {
                    format!("'{s}'")
                } else {
                    s.into_owned()
                }
            })
            .collect();
        format!(
            "LEGO_CA_CERTIFICATES={} {}",
            self.ca_file.display(),
            words.join(" ")
        )
    }

    /// Runs one lego process to completion; its time is spawn to exit.
    async fn obtain(&self, name: &str, solve: Solve<'_>) -> BenchResult<LegoRun> {
        let argv = self.argv(name, &solve);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("LEGO_CA_CERTIFICATES", &self.ca_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("lego: spawning {}: {e}", self.tools.time.display()))?;
        let limit = PROCESS_TIMEOUT + PROCESS_GRACE;
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| format!("lego for {name}: the process did not exit within {limit:?}"))?
            .map_err(|e| format!("lego for {name}: waiting for the process: {e}"))?;
        let elapsed = start.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let timed_out = if output.status.code() == Some(124) {
                format!(" (exit 124: killed by the {PROCESS_TIMEOUT:?} per-process timeout)")
            } else {
                String::new()
            };
            return Err(format!(
                "lego for {name} failed: {}{timed_out}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                output.status,
                tail(&stderr, 40),
                tail(&String::from_utf8_lossy(&output.stdout), 20)
            ));
        }
        let max_rss_kib = stderr
            .lines()
            .rev()
            .find_map(|line| line.trim().strip_prefix(RSS_MARKER))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                format!(
                    "lego for {name}: no `{RSS_MARKER}<KiB>` line from /usr/bin/time in:\n{}",
                    tail(&stderr, 10)
                )
            })?;
        Ok(LegoRun {
            elapsed,
            max_rss_kib,
        })
    }

    /// Checks that lego stored a certificate (`<path>/certificates/<name>.crt`) and its key:
    /// the leaf names `name`, has a P-256 key, the stored key matches it, and the chain
    /// verifies against Pebble's root. lego writes SEC1 (`EC PRIVATE KEY`) keys, which
    /// `certauto::Certificate::from_pem` does not read, so rustls and x509-parser check
    /// them here.
    fn check(&self, name: &str, root_der: &[u8]) -> BenchResult<()> {
        let dir = self.path.join("certificates");
        let read = |ext: &str| {
            let file = dir.join(format!("{name}.{ext}"));
            std::fs::read(&file)
                .map_err(|e| format!("lego: {} is missing or unreadable: {e}", file.display()))
        };
        let chain_pem = read("crt")?;
        let key_pem = read("key")?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("lego: {name}.crt is not PEM: {e:?}"))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("lego: {name}.key is not a PEM private key: {e:?}"))?;
        let leaf = chain
            .first()
            .ok_or_else(|| format!("lego: {name}.crt holds no certificate"))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain.clone(), key, &provider)
            .map_err(|e| format!("lego: {name}.key is unusable or does not match: {e}"))?;
        certified
            .keys_match()
            .map_err(|e| format!("lego: {name}.key does not match {name}.crt: {e}"))?;

        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("lego: {name}.crt does not parse: {e}"))?;
        let covers = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value
                    .general_names
                    .iter()
                    .any(|g| matches!(g, GeneralName::DNSName(n) if n.eq_ignore_ascii_case(name)))
            });
        if !covers {
            return Err(format!("lego: the certificate for {name} does not name it"));
        }
        let spki = parsed.public_key();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
            return Err(format!(
                "lego: the certificate for {name} does not have an ECDSA P-256 key"
            ));
        }
        let der: Vec<Vec<u8>> = chain.iter().map(|c| c.as_ref().to_vec()).collect();
        webpki_verify_chain(&der, root_der, name).map_err(|e| format!("lego: {e}"))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ----- the webroot server for lego's --http.webroot -----

async fn serve_webroot(listener: tokio::net::TcpListener, root: PathBuf) {
    let root = Arc::new(root);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "webroot accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let root = root.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let root = root.clone();
                    let method = req.method().clone();
                    let path = req.uri().path().to_owned();
                    async move { Ok::<_, Infallible>(webroot_answer(&root, &method, &path).await) }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// Answers `GET /.well-known/acme-challenge/<token>` from
/// `<root>/.well-known/acme-challenge/<token>`; everything else is a 404.
async fn webroot_answer(root: &Path, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let token = path
        .strip_prefix("/.well-known/acme-challenge/")
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let body = match token {
        Some(token) if method == Method::GET || method == Method::HEAD => {
            tokio::fs::read(root.join(".well-known/acme-challenge").join(token))
                .await
                .ok()
        }
        _ => None,
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    match body {
        Some(body) => {
            if method == Method::GET {
                *response.body_mut() = Full::new(Bytes::from(body));
            }
        }
        None => *response.status_mut() = StatusCode::NOT_FOUND,
    }
    response
}

// ----- measurements and the report -----

#[derive(Clone, Copy)]
struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
    max: Duration,
}

impl Stats {
    /// Median (mean of the two middle samples for an even count), p90 (nearest rank), min, max.
    fn of(samples: &[Duration]) -> BenchResult<Self> {
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

fn vm_hwm_kib() -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM line in /proc/self/status".to_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn dpkg_version(package: &str) -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

struct Report {
    lego_bin: PathBuf,
    lego_example: String,
    lego_webroot_example: String,
    certauto_latency: Stats,
    lego_latency: Stats,
    certauto_samples: Vec<Duration>,
    lego_samples: Vec<Duration>,
    certauto_elapsed: Duration,
    lego_elapsed: Duration,
    certauto_hwm_kib: u64,
    lego_rss: Vec<u64>,
    load_start: String,
    load_end: String,
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Report {
    fn print(&self) {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let (a, l) = (self.certauto_latency, self.lego_latency);
        let latency_ratio = l.median.as_secs_f64() / a.median.as_secs_f64();
        let certauto_rate = THROUGHPUT_CERTS as f64 / self.certauto_elapsed.as_secs_f64();
        let lego_rate = THROUGHPUT_CERTS as f64 / self.lego_elapsed.as_secs_f64();
        let mut rss = self.lego_rss.clone();
        rss.sort_unstable();
        let lego_max_rss = rss.last().copied().unwrap_or(0);
        let lego_median_rss = rss.get(rss.len() / 2).copied().unwrap_or(0);

        println!("== bench-issue: CertAuto vs lego on one Pebble ==");
        println!("command:  {COMMAND}");
        println!(
            "machine:  {cores} cores (available_parallelism), kernel {kernel}, load average \
             {} at start, {} at end",
            self.load_start, self.load_end
        );
        println!(
            "pebble:   Pebble {PEBBLE_VERSION} from {} (go install; PEBBLE_VA_NOSLEEP=1, all \
             other settings default)",
            pebble_bin_dir().display()
        );
        println!(
            "lego:     Debian lego {} ({})",
            dpkg_version("lego"),
            self.lego_bin.display()
        );
        println!("lego (a): {}", self.lego_example);
        println!("lego (b): {}", self.lego_webroot_example);
        println!(
            "certauto: one Config + AcmeIssuer, FileStorage in a tempdir, Http01Solver on \
             Pebble's HTTP-01 port, ECDSA P-256; account created before timing"
        );
        println!();
        println!(
            "(a) latency of one certificate, start to stored ({LATENCY_RUNS} sequential \
             obtains of distinct names per client, interleaved)"
        );
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>10}",
            "client", "median", "p90", "min", "max"
        );
        for (who, s) in [("CertAuto", a), ("lego", l)] {
            println!(
                "{:<10} {:>10} {:>10} {:>10} {:>10}",
                who,
                secs(s.median),
                secs(s.p90),
                secs(s.min),
                secs(s.max)
            );
        }
        println!("ratio lego_median / certauto_median: {latency_ratio:.1}x");
        for (who, samples) in [
            ("CertAuto", &self.certauto_samples),
            ("lego", &self.lego_samples),
        ] {
            let list: Vec<String> = samples
                .iter()
                .map(|d| format!("{:.3}", d.as_secs_f64()))
                .collect();
            println!("samples {who} (s, run order): {}", list.join(" "));
        }
        println!();
        println!("(b) throughput: {THROUGHPUT_CERTS} distinct names, {CONCURRENCY} at a time");
        println!("{:<10} {:>10} {:>10}", "client", "wall", "certs/s");
        for (who, elapsed, rate) in [
            ("CertAuto", self.certauto_elapsed, certauto_rate),
            ("lego", self.lego_elapsed, lego_rate),
        ] {
            println!("{:<10} {:>10} {:>10.2}", who, secs(elapsed), rate);
        }
        println!("ratio certauto / lego: {:.1}x", certauto_rate / lego_rate);
        println!();
        println!("peak memory");
        println!(
            "CertAuto   {:>10}  VmHWM of the whole bench process at the end (includes the \
             bench harness: tokio runtime, Pebble harness client, lego supervision, webroot \
             server)",
            mib(self.certauto_hwm_kib)
        );
        println!(
            "lego       {:>10}  peak RSS per process, max over {} processes (median {}), \
             from /usr/bin/time -f %M",
            mib(lego_max_rss),
            rss.len(),
            mib(lego_median_rss)
        );
        println!();
        println!(
            "all {} CertAuto and {} lego certificates verified (name, P-256 key, chain to \
             Pebble's root, stored)",
            LATENCY_RUNS + THROUGHPUT_CERTS + 1,
            LATENCY_RUNS + THROUGHPUT_CERTS + 1
        );
    }
}
