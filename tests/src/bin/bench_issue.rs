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

#[path = "common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certauto::{AcmeIssuer, Certificate, Config, FileStorage, Http01Solver, KeyType, Storage};
use certauto_tests::{PEBBLE_VERSION, Pebble, pebble_bin_dir};
use common::lego::{Lego, Tools};
use common::{
    BenchResult, Stats, check_certificate, dpkg_version, loadavg, machine, mib, run_pool, secs,
    vm_hwm_kib, with_timeout,
};
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;

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
/// Bound on the whole run.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// Bound on one request to Pebble outside the timed sections (account creation, roots).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Account e-mail used by both clients.
const EMAIL: &str = "bench@certauto.test";
/// Name suffix of every certificate (Pebble's mock DNS answers 127.0.0.1 for all names).
const DOMAIN: &str = "bench.certauto.test";
fn main() -> ExitCode {
    common::run_async("bench-issue", RUN_DEADLINE, run())
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
        // The internal issuance rate limit (default: bursts of 300 per 3 hours per CA) is
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
        email: EMAIL.to_owned(),
        env: Vec::new(),
    });
    let listen = Solve::Listen(http_addr).args();
    progress("lego: creating the account with one untimed warm-up run");
    let warmup = lego_name("warmup", 0);
    lego.obtain(&warmup, &listen).await?;
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
                let run = lego.obtain(&lego_name, &listen).await?;
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
    let (certauto_elapsed, certs) = run_pool(names.clone(), CONCURRENCY, move |name| {
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
    let pool = run_pool(names.clone(), CONCURRENCY, move |name| {
        let lego = worker_lego.clone();
        let webroot = webroot.clone();
        async move { lego.obtain(&name, &Solve::Webroot(&webroot).args()).await }
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
        lego_example: lego.command_line("<name>", &listen),
        lego_webroot_example: lego
            .command_line("<name>", &Solve::Webroot(Path::new("<webroot>")).args()),
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

/// One timed CertAuto obtain, start to stored.
async fn certauto_obtain(config: &Config, name: &str) -> BenchResult<(Duration, Certificate)> {
    common::certauto_obtain(config, &[name], OBTAIN_TIMEOUT).await
}

// ----- lego -----

/// How lego answers HTTP-01.
enum Solve<'a> {
    /// lego's own server on Pebble's HTTP-01 port (`--http.port`).
    Listen(SocketAddr),
    /// Files in a webroot (`--http.webroot`) that this binary serves.
    Webroot(&'a Path),
}

impl Solve<'_> {
    /// lego's challenge flags.
    fn args(&self) -> Vec<OsString> {
        match self {
            Solve::Listen(addr) => vec![
                "--http".into(),
                "--http.port".into(),
                addr.to_string().into(),
            ],
            Solve::Webroot(dir) => vec![
                "--http".into(),
                "--http.webroot".into(),
                dir.as_os_str().to_owned(),
            ],
        }
    }
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

impl Report {
    fn print(&self) {
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
        println!("machine:  {}", machine(&self.load_start, &self.load_end));
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
