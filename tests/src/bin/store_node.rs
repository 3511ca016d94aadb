//! Run by tests/tests/cancel_safety.rs (not by hand): a second process on a shared
//! [`FileStorage`].
//!
//! ```text
//! store-node acme --storage DIR --directory URL --ca-pem FILE --email EMAIL --name NAME
//!                 --op obtain|force-renew
//! store-node renew-loop --storage DIR --name NAME --rounds N
//! ```
//!
//! `acme` builds a [`Config`] on a [`FileStorage`] at `DIR` (locks stale only after an hour,
//! so a lock left behind by a cancelled operation is never broken as stale and shows up as a
//! `LockTimeout` after a 60 s wait) with an ACME issuer for `URL` (trusting only the PEM CA
//! in `FILE` for its HTTPS) whose HTTP-01 tokens go to the shared storage only (another
//! instance answers the CA), runs one `obtain` or `force_renew` of `NAME` and prints one JSON
//! line: `{"ok":true,"serial":"<hex>"}` or `{"ok":false,"lock_timeout":<bool>,"error":".."}`.
//! Exits non-zero on error.
//!
//! `renew-loop` builds a [`Config`] with no issuer (so the `.test` name `NAME` goes to the
//! local CA) on a [`FileStorage`] whose locks go stale after 1 s, and then, `N` times,
//! prints `renew <i>`, force-renews `NAME` and prints `renewed <i> <serial>`. The test kills
//! it with SIGKILL at varied points in between.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use certauto::{AcmeIssuer, Config, Error, FileStorage, Storage, StorageError};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Bound on the whole run, so a stuck instance cannot hang the test that spawned it.
const RUN_BOUND: Duration = Duration::from_secs(300);
/// How long `acme` waits for a held lock before failing with `LockTimeout`.
const ACME_LOCK_WAIT: Duration = Duration::from_secs(60);
/// The stale age of `acme`'s locks: far longer than any test, so only a release frees them.
const ACME_LOCK_STALE: Duration = Duration::from_secs(3600);
/// The stale age of `renew-loop`'s locks: a killed instance's lock is broken after it.
const LOOP_LOCK_STALE: Duration = Duration::from_secs(1);
/// The keepalive of `renew-loop`'s locks (well inside the stale age).
const LOOP_LOCK_KEEPALIVE: Duration = Duration::from_millis(200);
/// How long `renew-loop` waits for a held lock (a killed instance's lock goes stale in 1 s).
const LOOP_LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Args {
    storage: Option<String>,
    directory: Option<String>,
    ca_pem: Option<String>,
    email: Option<String>,
    name: Option<String>,
    op: Option<String>,
    rounds: Option<u32>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args::default();
    let mut args = args;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--storage" => parsed.storage = Some(value),
            "--directory" => parsed.directory = Some(value),
            "--ca-pem" => parsed.ca_pem = Some(value),
            "--email" => parsed.email = Some(value),
            "--name" => parsed.name = Some(value),
            "--op" => parsed.op = Some(value),
            "--rounds" => {
                parsed.rounds = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--rounds {value:?}: {e}"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

fn required<T>(value: Option<T>, flag: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("{flag} is required"))
}

fn is_lock_timeout(e: &Error) -> bool {
    match e {
        Error::Storage(StorageError::LockTimeout(_)) => true,
        Error::AllIssuersFailed(errors) | Error::ManageFailed(errors) => {
            errors.iter().any(|(_, e)| is_lock_timeout(e))
        }
        _ => false,
    }
}

async fn acme(args: Args) -> Result<(), String> {
    let storage_dir = required(args.storage, "--storage")?;
    let directory = required(args.directory, "--directory")?;
    let ca_pem = required(args.ca_pem, "--ca-pem")?;
    let email = required(args.email, "--email")?;
    let name = required(args.name, "--name")?;
    let op = required(args.op, "--op")?;
    let pem = std::fs::read(&ca_pem).map_err(|e| format!("read {ca_pem}: {e}"))?;
    let ca = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| format!("parse the CA in {ca_pem}: {e}"))?;
    let storage: Arc<dyn Storage> = Arc::new(
        FileStorage::builder(&storage_dir)
            .lock_stale_after(ACME_LOCK_STALE)
            .lock_wait_timeout(Some(ACME_LOCK_WAIT))
            .build(),
    );
    // `acme()` wires the config's storage-shared challenge tokens into an HTTP-01
    // solver without a listener: the test's responder answers from storage.
    let config = Config::builder()
        .storage(storage)
        .acme(
            AcmeIssuer::builder()
                .ca(directory)
                .email(email)
                .agreed(true)
                .trust_roots([ca])
                .only_trusted_roots(),
        )
        .build();
    let result = match op.as_str() {
        "obtain" => config.obtain([name.as_str()]).await,
        "force-renew" => config.force_renew([name.as_str()]).await,
        other => return Err(format!("unknown --op {other:?}")),
    };
    match result {
        Ok(cert) => {
            println!(
                "{}",
                serde_json::json!({"ok": true, "serial": cert.serial_hex()})
            );
            Ok(())
        }
        Err(e) => {
            let error = certauto::ErrorChain(&e).to_string();
            println!(
                "{}",
                serde_json::json!({"ok": false, "lock_timeout": is_lock_timeout(&e), "error": error})
            );
            Err(format!("{op} {name}: {error}"))
        }
    }
}

async fn renew_loop(args: Args) -> Result<(), String> {
    let storage_dir = required(args.storage, "--storage")?;
    let name = required(args.name, "--name")?;
    let rounds = required(args.rounds, "--rounds")?;
    let storage: Arc<dyn Storage> = Arc::new(
        FileStorage::builder(&storage_dir)
            .lock_stale_after(LOOP_LOCK_STALE)
            .lock_keepalive(LOOP_LOCK_KEEPALIVE)
            .lock_wait_timeout(Some(LOOP_LOCK_WAIT))
            .build(),
    );
    let config = Config::builder()
        .storage(storage)
        // Renewals as fast as they go: the default limit (20 a minute) is not under test.
        .issuance_rate_limit(u32::MAX, Duration::from_secs(1))
        .build();
    for round in 1..=rounds {
        // `println!` goes through a line-buffered stdout: each line is out before the next step.
        println!("renew {round}");
        let cert = config
            .force_renew([name.as_str()])
            .await
            .map_err(|e| format!("force_renew {name}: {}", certauto::ErrorChain(&e)))?;
        println!("renewed {round} {}", cert.serial_hex());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    certauto_tests::init_stderr_logging();
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    let args = match parse_args(argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("store-node: {e}");
            return ExitCode::from(2);
        }
    };
    let run = async {
        match command.as_str() {
            "acme" => acme(args).await,
            "renew-loop" => renew_loop(args).await,
            other => Err(format!(
                "unknown command {other:?} (expected acme or renew-loop)"
            )),
        }
    };
    match tokio::time::timeout(RUN_BOUND, run).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("store-node: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("store-node: did not finish within {RUN_BOUND:?}");
            ExitCode::FAILURE
        }
    }
}
