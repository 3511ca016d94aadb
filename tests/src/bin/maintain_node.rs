//! Run by tests/tests/maintenance.rs (not by hand): one instance of a renewal "cluster".
//!
//! ```text
//! maintain-node --storage DIR --directory URL --ca-pem FILE --http-port PORT
//!               --email EMAIL --name NAME
//! ```
//!
//! Builds a [`Config`] on a [`FileStorage`] at `DIR` with an ACME issuer for `URL` (trusting
//! only the PEM CA in `FILE` for its HTTPS, answering HTTP-01 on `127.0.0.1:PORT`), manages
//! `NAME` (loading the stored certificate), prints `ready <serial>`, waits for one line on
//! stdin, runs one [`Config::check_renewals`] and prints one JSON line:
//! `{"checked":1,"due":[..],"renewed":[..],"failed":[..],"deferred":[..],"serial":"<hex>"}`
//! where `serial` is the certificate the cache serves afterwards. Exits non-zero on error.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use certauto::{AcmeIssuer, Config, FileStorage, Http01Solver, Storage};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Bound on the whole run, so a stuck instance cannot hang the test that spawned it.
const RUN_BOUND: Duration = Duration::from_secs(300);

struct Args {
    storage: String,
    directory: String,
    ca_pem: String,
    http_port: u16,
    email: String,
    name: String,
}

fn parse_args() -> Result<Args, String> {
    let mut storage = None;
    let mut directory = None;
    let mut ca_pem = None;
    let mut http_port = None;
    let mut email = None;
    let mut name = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--storage" => storage = Some(value),
            "--directory" => directory = Some(value),
            "--ca-pem" => ca_pem = Some(value),
            "--http-port" => {
                http_port = Some(
                    value
                        .parse::<u16>()
                        .map_err(|e| format!("--http-port {value:?}: {e}"))?,
                );
            }
            "--email" => email = Some(value),
            "--name" => name = Some(value),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        storage: storage.ok_or("--storage is required")?,
        directory: directory.ok_or("--directory is required")?,
        ca_pem: ca_pem.ok_or("--ca-pem is required")?,
        http_port: http_port.ok_or("--http-port is required")?,
        email: email.ok_or("--email is required")?,
        name: name.ok_or("--name is required")?,
    })
}

async fn run(args: Args) -> Result<(), String> {
    let pem = std::fs::read(&args.ca_pem).map_err(|e| format!("read {}: {e}", args.ca_pem))?;
    let ca = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| format!("parse the CA in {}: {e}", args.ca_pem))?;
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(&args.storage));
    let issuer = AcmeIssuer::builder()
        .ca(&args.directory)
        .email(&args.email)
        .agreed(true)
        .trust_roots([ca])
        .only_trusted_roots()
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            args.http_port,
        ))))
        .storage(storage.clone())
        .build();
    let config = Config::builder().storage(storage).issuer(issuer).build();
    let serial = |config: &Config| {
        config
            .cache()
            .get(&args.name)
            .map(|c| c.serial().to_owned())
            .unwrap_or_default()
    };
    config
        .manage([args.name.as_str()])
        .await
        .map_err(|e| format!("manage {}: {e}", args.name))?;
    println!("ready {}", serial(&config));

    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| format!("stdin reader: {e}"))?
    .map_err(|e| format!("read stdin: {e}"))?;
    if line.trim().is_empty() {
        return Err("stdin closed before the go line".to_owned());
    }

    let report = config.check_renewals().await;
    let out = serde_json::json!({
        "checked": report.checked,
        "due": report.due,
        "renewed": report.renewed,
        "failed": report.failed,
        "deferred": report.deferred,
        "serial": serial(&config),
    });
    println!("{out}");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    certauto_tests::init_stderr_logging();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("maintain-node: {e}");
            return ExitCode::from(2);
        }
    };
    match tokio::time::timeout(RUN_BOUND, run(args)).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("maintain-node: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("maintain-node: did not finish within {RUN_BOUND:?}");
            ExitCode::FAILURE
        }
    }
}
