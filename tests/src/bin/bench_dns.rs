//! Run with: cargo run --release -p certauto-tests --bin bench-dns
//!
//! DNS-01 issuance benchmark: CertAuto (`Dns01Solver` over the RFC 2136
//! provider) against `lego --dns rfc2136` (the Debian package, 4.9), both
//! writing their TXT records with TSIG to **one** authoritative BIND9, and
//! **one** Pebble validating through a recursive BIND in front of it, so both
//! clients face identical conditions in the same run.
//!
//! * (a) one at a time: [`CERTS`] certificates per client, sequential,
//!   interleaved (the clients take turns going first).
//! * (b) [`CONCURRENCY`] at a time: [`CERTS`] more certificates per client.
//! * The goal "wall time per certificate within 2x of the time Pebble needs
//!   to validate" is measured against a baseline in the same rounds of (a):
//!   CertAuto obtaining from the same Pebble with HTTP-01, whose challenge
//!   costs nothing but Pebble's own validation (its solver answers from
//!   memory on Pebble's HTTP-01 port; the name resolves through the same
//!   BIND). DNS-01 / HTTP-01 is the figure.
//! * Where the time goes: a timing wrapper around CertAuto's DNS-01 solver
//!   notes, per challenge, the DNS work (`present` start to `wait` end: the
//!   record written and seen at the authoritative server) and the CA's
//!   validation as the client sees it (`wait` end to `cleanup` start: the
//!   challenge answered and the authorization polled until valid).
//!
//! Both clients use their default propagation polling (2 s); CertAuto checks
//! the authoritative server directly (recursion off), lego with
//! `--dns.disable-cp` checks through the recursive BIND (lego asks name
//! servers on port 53 only, and this BIND listens on a test port).
//!
//! Every certificate is checked (it covers its name, has a P-256 key, verifies
//! against Pebble's root, and is stored); any failure or timeout makes the
//! binary exit non-zero. The table goes to stdout, progress to stderr.
//!
//! Needs Pebble v2.10.1 (`scripts/install-pebble.sh`), BIND9 (Debian `bind9`),
//! `lego` (Debian `lego`), `/usr/bin/time` (Debian `time`) and `timeout`.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use certauto::dns::Rfc2136;
use certauto::{
    AcmeIssuer, Challenge, Config, Dns01Solver, FileStorage, Http01Solver, KeyType, Solver,
    SolverError, Storage,
};
use certauto_tests::{Bind, PEBBLE_VERSION, Pebble, pebble_bin_dir};
use common::lego::{Lego, Tools};
use common::{
    BenchResult, Stats, certauto_obtain, check_certificate, dpkg_version, loadavg, machine, mib,
    run_pool, secs, vm_hwm_kib, with_timeout,
};
use rustls_pki_types::CertificateDer;

/// The command that runs this benchmark.
const COMMAND: &str = "cargo run --release -p certauto-tests --bin bench-dns";
/// Certificates per client in each part.
const CERTS: usize = 20;
/// Obtains in flight at once in (b).
const CONCURRENCY: usize = 8;
/// Bound on one CertAuto obtain.
const OBTAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the whole run.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// Bound on setup steps outside the timed sections.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Account e-mail of both clients.
const EMAIL: &str = "bench@certauto.test";
/// The zone the certificates are for (the BIND harness serves it).
const ZONE: &str = "example.test";

fn main() -> ExitCode {
    common::run_async("bench-dns", RUN_DEADLINE, run())
}

fn progress(message: &str) {
    eprintln!("bench-dns: {message}");
}

fn name(client: &str, phase: &str, i: usize) -> String {
    format!("{phase}-{client}-{i:03}.{ZONE}")
}

async fn run() -> BenchResult<()> {
    let tools = Tools::find()?;
    let load_start = loadavg();
    let work = tempfile::Builder::new()
        .prefix("certauto-bench-dns-")
        .tempdir()
        .map_err(|e| format!("create a temporary directory: {e}"))?;

    progress("starting BIND9 (authoritative and recursive) and Pebble");
    let bind = Bind::builder().recursive(true).start().await;
    let pebble = Pebble::builder()
        .dns_server(bind.recursive_addr())
        .start()
        .await;
    let root_der = with_timeout(SETUP_TIMEOUT, "fetch Pebble's root", async {
        Ok(pebble.root_der(0).await)
    })
    .await?;

    // ----- CertAuto: one Config, account created before timing -----
    let provider = Rfc2136::builder(bind.addr())
        .tsig(bind.key_name(), bind.key_secret(), bind.key_algorithm())
        .build()
        .map_err(|e| format!("the RFC 2136 provider: {e}"))?;
    let dns01 = Dns01Solver::builder(provider)
        .bootstrap_resolvers([bind.recursive_addr()])
        .nameserver_port(bind.addr().port())
        .build();
    let timed = TimedSolver::new(dns01);
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(work.path().join("certauto")));
    let issuer = AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email(EMAIL)
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .dns01_solver(timed.clone())
        .storage(storage.clone())
        .build();
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer.clone())
        .key_type(KeyType::EcdsaP256)
        // `.test` names would otherwise go to CertAuto's local CA, not to Pebble.
        .public_ca_for_local_names()
        // Pebble has no issuance limit; CertAuto's own (20 a minute) is raised.
        .issuance_rate_limit(100_000, Duration::from_secs(1))
        .build();
    progress("CertAuto: account and one untimed warm-up certificate");
    with_timeout(SETUP_TIMEOUT, "CertAuto account creation", async {
        issuer
            .account()
            .await
            .map_err(|e| format!("CertAuto account creation: {e}"))
    })
    .await?;
    let warmup = name("certauto", "warmup", 0);
    let (_, cert) = certauto_obtain(&config, &[&warmup], OBTAIN_TIMEOUT).await?;
    check_certificate(&cert, &warmup, &root_der, "CertAuto")?;
    timed.reset();

    // ----- the baseline: the same account and Pebble, HTTP-01 -----
    let http01 = Config::builder()
        .storage(storage.clone())
        .issuer(
            AcmeIssuer::builder()
                .ca(pebble.directory_url())
                .email(EMAIL)
                .agreed(true)
                .trust_roots([CertificateDer::from(pebble.https_ca_der())])
                .only_trusted_roots()
                .http01_solver(Http01Solver::bind(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    pebble.http_port(),
                ))))
                .storage(storage.clone())
                .build(),
        )
        .key_type(KeyType::EcdsaP256)
        .public_ca_for_local_names()
        .issuance_rate_limit(100_000, Duration::from_secs(1))
        .build();
    let warmup = name("http01", "warmup", 0);
    let (_, cert) = certauto_obtain(&http01, &[&warmup], OBTAIN_TIMEOUT).await?;
    check_certificate(&cert, &warmup, &root_der, "CertAuto HTTP-01")?;

    // ----- lego: account made by an untimed first run -----
    let ca_file = work.path().join("pebble-https-ca.pem");
    std::fs::write(&ca_file, pebble.https_ca_pem())
        .map_err(|e| format!("write {}: {e}", ca_file.display()))?;
    let lego = Arc::new(Lego {
        tools,
        server: pebble.directory_url(),
        ca_file,
        path: work.path().join("lego"),
        email: EMAIL.to_owned(),
        env: vec![
            ("RFC2136_NAMESERVER".into(), bind.addr().to_string()),
            ("RFC2136_TSIG_KEY".into(), format!("{}.", bind.key_name())),
            ("RFC2136_TSIG_SECRET".into(), bind.key_secret().to_owned()),
            (
                "RFC2136_TSIG_ALGORITHM".into(),
                format!("{}.", bind.key_algorithm().as_str()),
            ),
        ],
    });
    let challenge: Vec<OsString> = vec![
        "--dns".into(),
        "rfc2136".into(),
        "--dns.resolvers".into(),
        bind.recursive_addr().to_string().into(),
        "--dns.disable-cp".into(),
    ];
    progress("lego: account with one untimed warm-up run");
    let warmup = name("lego", "warmup", 0);
    lego.obtain(&warmup, &challenge).await?;
    lego.check(&warmup, &root_der)?;

    // ----- (a) one at a time, interleaved -----
    let mut certauto_a = Vec::with_capacity(CERTS);
    let mut http01_a = Vec::with_capacity(CERTS);
    let mut lego_a = Vec::with_capacity(CERTS);
    let mut lego_rss = Vec::new();
    let mut certauto_names = Vec::new();
    let mut lego_names = Vec::new();
    for i in 0..CERTS {
        progress(&format!("(a) round {}/{CERTS}", i + 1));
        let ours = name("certauto", "a", i);
        let theirs = name("lego", "a", i);
        let baseline = name("http01", "a", i);
        // Each client goes first, second and third in turn.
        for turn in 0..3 {
            match (turn + i) % 3 {
                0 => {
                    let (elapsed, cert) =
                        certauto_obtain(&config, &[&ours], OBTAIN_TIMEOUT).await?;
                    check_certificate(&cert, &ours, &root_der, "CertAuto")?;
                    certauto_a.push(elapsed);
                }
                1 => {
                    let (elapsed, cert) =
                        certauto_obtain(&http01, &[&baseline], OBTAIN_TIMEOUT).await?;
                    check_certificate(&cert, &baseline, &root_der, "CertAuto HTTP-01")?;
                    http01_a.push(elapsed);
                }
                _ => {
                    let run = lego.obtain(&theirs, &challenge).await?;
                    lego_a.push(run.elapsed);
                    lego_rss.push(run.max_rss_kib);
                }
            }
        }
        certauto_names.push(ours);
        lego_names.push(theirs);
    }
    let phases_a = timed.take();

    // ----- (b) CONCURRENCY at a time -----
    progress(&format!(
        "(b) CertAuto: {CERTS} certificates, {CONCURRENCY} at a time"
    ));
    let names: Vec<String> = (0..CERTS).map(|i| name("certauto", "b", i)).collect();
    let worker = config.clone();
    let (certauto_b, certs) = run_pool(names.clone(), CONCURRENCY, move |name| {
        let config = worker.clone();
        async move { Ok(certauto_obtain(&config, &[&name], OBTAIN_TIMEOUT).await?.1) }
    })
    .await?;
    for (name, cert) in names.iter().zip(&certs) {
        check_certificate(cert, name, &root_der, "CertAuto")?;
    }
    certauto_names.extend(names);
    let phases_b = timed.take();

    progress(&format!(
        "(b) lego: {CERTS} certificates, {CONCURRENCY} processes at a time"
    ));
    let names: Vec<String> = (0..CERTS).map(|i| name("lego", "b", i)).collect();
    let worker = lego.clone();
    let flags = challenge.clone();
    let (lego_b, runs) = run_pool(names.clone(), CONCURRENCY, move |name| {
        let lego = worker.clone();
        let flags = flags.clone();
        async move { lego.obtain(&name, &flags).await }
    })
    .await?;
    lego_rss.extend(runs.iter().map(|r| r.max_rss_kib));
    lego_names.extend(names);

    // ----- everything stored, and no TXT value left behind -----
    progress("verifying every stored certificate and the zone");
    for name in &certauto_names {
        let stored = config
            .load([name.as_str()])
            .await
            .map_err(|e| format!("CertAuto: loading {name}: {e}"))?
            .ok_or_else(|| format!("CertAuto: {name} is not in storage"))?;
        check_certificate(&stored, name, &root_der, "CertAuto (stored)")?;
        let left = bind.lookup_txt(&format!("_acme-challenge.{name}")).await;
        if !left.is_empty() {
            return Err(format!("CertAuto left TXT values at {name}: {left:?}"));
        }
    }
    for name in &lego_names {
        lego.check(name, &root_der)?;
    }

    let report = Report {
        lego_command: lego.command_line("<name>", &challenge),
        certauto_a: Stats::of(&certauto_a)?,
        http01_a: Stats::of(&http01_a)?,
        lego_a: Stats::of(&lego_a)?,
        certauto_b,
        lego_b,
        validation_a: Stats::of(&phases_a.validation)?,
        dns_a: Stats::of(&phases_a.dns)?,
        validation_b: Stats::of(&phases_b.validation)?,
        certauto_hwm_kib: vm_hwm_kib()?,
        lego_rss,
        load_start,
        load_end: loadavg(),
    };
    drop(pebble);
    drop(bind);
    report.print();
    Ok(())
}

// ----- timing CertAuto's solver -----

/// What one part of the run measured per challenge.
#[derive(Default)]
struct Phases {
    /// `present` start to `wait` end: writing the record and seeing it.
    dns: Vec<Duration>,
    /// `wait` end to `cleanup` start: the CA validating, as the client sees it.
    validation: Vec<Duration>,
}

/// Wraps a solver and times its steps per challenge (by challenge URL).
#[derive(Debug, Clone)]
struct TimedSolver {
    inner: Dns01Solver,
    state: Arc<Mutex<Timing>>,
}

#[derive(Debug, Default)]
struct Timing {
    started: HashMap<String, Instant>,
    visible: HashMap<String, Instant>,
    dns: Vec<Duration>,
    validation: Vec<Duration>,
}

impl TimedSolver {
    fn new(inner: Dns01Solver) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new(Timing::default())),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Timing) -> T) -> T {
        // A poisoned lock only means a panicking bench task; its data is still usable.
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn reset(&self) {
        self.with(|t| *t = Timing::default());
    }

    fn take(&self) -> Phases {
        self.with(|t| Phases {
            dns: std::mem::take(&mut t.dns),
            validation: std::mem::take(&mut t.validation),
        })
    }
}

#[async_trait]
impl Solver for TimedSolver {
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.with(|t| t.started.insert(challenge.url.clone(), Instant::now()));
        self.inner.present(challenge).await
    }

    async fn wait(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.inner.wait(challenge).await?;
        let now = Instant::now();
        self.with(|t| {
            if let Some(start) = t.started.remove(&challenge.url) {
                t.dns.push(now - start);
            }
            t.visible.insert(challenge.url.clone(), now);
        });
        Ok(())
    }

    async fn cleanup(&self, challenge: &Challenge) -> Result<(), SolverError> {
        let now = Instant::now();
        self.with(|t| {
            if let Some(visible) = t.visible.remove(&challenge.url) {
                t.validation.push(now - visible);
            }
        });
        self.inner.cleanup(challenge).await
    }
}

// ----- the report -----

struct Report {
    lego_command: String,
    certauto_a: Stats,
    http01_a: Stats,
    lego_a: Stats,
    certauto_b: Duration,
    lego_b: Duration,
    validation_a: Stats,
    dns_a: Stats,
    validation_b: Stats,
    certauto_hwm_kib: u64,
    lego_rss: Vec<u64>,
    load_start: String,
    load_end: String,
}

impl Report {
    fn print(&self) {
        let rate = |elapsed: Duration| CERTS as f64 / elapsed.as_secs_f64();
        let (ours, theirs) = (rate(self.certauto_b), rate(self.lego_b));
        let mut rss = self.lego_rss.clone();
        rss.sort_unstable();

        println!("== bench-dns: DNS-01 through RFC 2136 on BIND9, CertAuto vs lego ==");
        println!("command:  {COMMAND}");
        println!("machine:  {}", machine(&self.load_start, &self.load_end));
        println!(
            "pebble:   Pebble {PEBBLE_VERSION} from {} (PEBBLE_VA_NOSLEEP=1), -dnsserver = the \
             recursive BIND",
            pebble_bin_dir().display()
        );
        println!(
            "bind:     Debian bind9 {}: one authoritative server (TSIG hmac-sha256 updates), one \
             recursive in front of it",
            dpkg_version("bind9")
        );
        println!("lego:     Debian lego {}", dpkg_version("lego"));
        println!("lego cmd: {}", self.lego_command);
        println!(
            "certauto: one Config + AcmeIssuer, Dns01Solver (default 2 s polling, checks the \
             authoritative server with recursion off) over certauto::dns::Rfc2136, ECDSA P-256"
        );
        println!();
        println!("(a) one at a time: {CERTS} certificates per client, interleaved");
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>10}",
            "client", "median", "p90", "min", "max"
        );
        for (who, s) in [
            ("CertAuto", self.certauto_a),
            ("lego", self.lego_a),
            ("HTTP-01", self.http01_a),
        ] {
            println!(
                "{:<10} {:>10} {:>10} {:>10} {:>10}",
                who,
                secs(s.median),
                secs(s.p90),
                secs(s.min),
                secs(s.max)
            );
        }
        println!(
            "(HTTP-01: CertAuto on the same Pebble, the baseline whose challenge costs only \
             Pebble's validation)"
        );
        println!(
            "ratio lego_median / certauto_median: {:.1}x",
            self.lego_a.median.as_secs_f64() / self.certauto_a.median.as_secs_f64()
        );
        println!(
            "CertAuto DNS-01 / HTTP-01 baseline, medians: {:.2}x (goal <= 2x)",
            self.certauto_a.median.as_secs_f64() / self.http01_a.median.as_secs_f64()
        );
        println!(
            "CertAuto's DNS work (present + visible) per challenge: median {}, p90 {}",
            secs(self.dns_a.median),
            secs(self.dns_a.p90)
        );
        println!(
            "Pebble's validation as the client sees it (answer + authorization polls): median \
             {}, p90 {}",
            secs(self.validation_a.median),
            secs(self.validation_a.p90)
        );
        println!();
        println!("(b) {CERTS} certificates per client, {CONCURRENCY} at a time");
        println!("{:<10} {:>10} {:>10}", "client", "wall", "certs/s");
        for (who, elapsed, r) in [
            ("CertAuto", self.certauto_b, ours),
            ("lego", self.lego_b, theirs),
        ] {
            println!("{:<10} {:>10} {:>10.2}", who, secs(elapsed), r);
        }
        println!("ratio certauto / lego: {:.1}x (goal >= 10x)", ours / theirs);
        println!(
            "Pebble's validation under load: median {}, p90 {}",
            secs(self.validation_b.median),
            secs(self.validation_b.p90)
        );
        println!();
        println!(
            "peak memory: CertAuto {} (VmHWM of the whole bench process), lego {} (max RSS per \
             process over {} processes)",
            mib(self.certauto_hwm_kib),
            mib(rss.last().copied().unwrap_or(0)),
            rss.len()
        );
        println!(
            "all {} CertAuto DNS-01, {} CertAuto HTTP-01 and {} lego certificates verified \
             (name, P-256 key, chain to Pebble's root, stored); no CertAuto TXT value left in \
             the zone",
            2 * CERTS + 1,
            CERTS + 1,
            2 * CERTS + 1
        );
    }
}
