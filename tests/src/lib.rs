//! Test harness for CertAuto's end-to-end tests against a real [Pebble] ACME server.
//!
//! [`Pebble::builder`] starts, per test, a `pebble-challtestsrv` (the mock DNS server every
//! name resolves through, answering 127.0.0.1) and a `pebble` configured with a freshly
//! generated HTTPS certificate, everything on free 127.0.0.1 ports inside a temporary
//! directory. Both processes are killed when the [`Pebble`] value is dropped.
//!
//! ```no_run
//! # async fn demo() {
//! use certauto_tests::Pebble;
//!
//! let pebble = Pebble::builder().nonce_reject_percent(0).start().await;
//! let directory = pebble.directory_url();        // https://127.0.0.1:<port>/dir
//! let trust = pebble.https_ca_pem();             // trust this for Pebble's HTTPS
//! let http01_port = pebble.http_port();          // listen here for HTTP-01
//! let root = pebble.root_der(0).await;           // verify issued chains against this
//! # let _ = (directory, trust, http01_port, root);
//! # }
//! ```
//!
//! The binaries are Pebble [`PEBBLE_VERSION`] (with its ARI `renewalInfo` endpoint, ACME
//! profiles and `alreadyReplaced`), built with `go install` by `scripts/install-pebble.sh`
//! into `.tools/bin` at the workspace root ([`pebble_bin_dir`]; `CERTAUTO_PEBBLE_DIR`
//! overrides it). `PATH` is not searched, and a missing binary is a test failure saying how
//! to install it, never a skip.
//!
//! [Pebble]: https://github.com/letsencrypt/pebble

mod ari_proxy;
mod balancer;
mod bind;
mod counting;
mod dns;
mod fault_proxy;
mod ocsp;
mod pebble;
mod pki;
mod powerdns;
mod recording;
mod redis;
mod util;
mod verify;

use std::sync::{Arc, Once};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

pub use ari_proxy::{AriAnswer, AriProxy, NewOrderRecord, Outage};
pub use balancer::Balancer;
pub use bind::{BIND_ZONES, Bind, BindBuilder};
pub use counting::CountingStorage;
pub use fault_proxy::{CutFault, FaultProxy, HoldFault};
pub use ocsp::{OCSP_REVOKED_AT, OcspResponder};
pub use pebble::{
    DEFAULT_PROFILE, HARNESS_USER_AGENT, PEBBLE_DEFAULT_VALIDITY_SECS, PEBBLE_DIR_ENV,
    PEBBLE_EXAMPLE_EAB_KEYS, PEBBLE_VERSION, Pebble, PebbleBuilder, normalize_serial,
    pebble_bin_dir, serial_hex,
};
pub use powerdns::{PowerDnsServer, PowerDnsServerBuilder};
pub use recording::RecordingStorage;
pub use redis::{RedisCluster, RedisServer, RedisServerBuilder};
pub use util::{find_on_path, is_executable};
pub use verify::SignatureOnly;

/// Installs a `tracing` fmt subscriber that writes through the test harness's captured
/// output. Safe to call from every test; only the first call does anything (and it is a
/// no-op if another global subscriber is already set).
///
/// `RUST_LOG` selects what is shown (default `warn`), e.g.
/// `RUST_LOG=certauto=debug,certauto_tests=info`.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Verifies a certificate chain like a TLS client would: `chain_der[0]` is the leaf, the rest
/// are intermediates (any order), `root_der` is the only trust anchor, `name` is the server
/// name (DNS name or IP address literal), at the current time. Uses rustls's
/// `WebPkiServerVerifier` with the ring provider.
pub fn webpki_verify_chain(
    chain_der: &[Vec<u8>],
    root_der: &[u8],
    name: &str,
) -> Result<(), String> {
    let (leaf, intermediates) = chain_der
        .split_first()
        .ok_or_else(|| "empty certificate chain".to_owned())?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der.to_vec()))
        .map_err(|e| format!("root certificate rejected: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("building the verifier failed: {e}"))?;
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|e| format!("invalid server name {name:?}: {e}"))?;
    let leaf = CertificateDer::from(leaf.clone());
    let intermediates: Vec<CertificateDer<'static>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    verifier
        .verify_server_cert(&leaf, &intermediates, &server_name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| format!("chain does not verify for {name:?}: {e}"))
}

/// A config obtaining from `pebble` (trusting its HTTPS only) with `solver`
/// for DNS-01, on fresh in-memory storage: what the DNS-01 tests share.
pub fn dns01_config(pebble: &Pebble, solver: certauto::Dns01Solver) -> certauto::Config {
    let storage: Arc<dyn certauto::Storage> = Arc::new(certauto::MemoryStorage::new());
    let issuer = certauto::AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email("dns@certauto.example")
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .dns01_solver(solver)
        .storage(storage.clone())
        .build();
    certauto::Config::builder()
        .storage(storage)
        .issuer(issuer)
        .build()
}

/// Panics unless `cert` names exactly `names` and its chain verifies against
/// Pebble's root for each of them (a wildcard through a name it covers).
pub async fn assert_issued_for(pebble: &Pebble, cert: &certauto::Certificate, names: &[&str]) {
    let mut sans: Vec<String> = cert.names().iter().map(|n| n.to_string()).collect();
    sans.sort();
    let mut want: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    want.sort();
    assert_eq!(sans, want, "the certificate's names");
    let root = pebble.root_der(0).await;
    let chain: Vec<Vec<u8>> = cert.chain().iter().map(|c| c.as_ref().to_vec()).collect();
    for name in names {
        let host = name.replace("*.", "host.");
        if let Err(e) = webpki_verify_chain(&chain, &root, &host) {
            panic!("{e}");
        }
    }
}

/// The README's examples, compiled as doc tests of this crate (which depends
/// on every CertAuto crate).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// Logs to stderr (stdout carries the benchmark figures or a child process's
/// protocol lines), at `RUST_LOG` or else `warn`. For the binaries of this crate.
pub fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
