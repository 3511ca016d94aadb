//! Starting and driving a Pebble ACME server (with `pebble-challtestsrv` as its DNS server).
//!
//! The binaries are Pebble [`PEBBLE_VERSION`], built with `go install` into
//! [`pebble_bin_dir`] by `scripts/install-pebble.sh` (which `scripts/test.sh` runs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::dns::{self, Transport};
use crate::pki;
use crate::util::{PortReservation, is_executable, log_tail, read_log};

/// The Pebble release the harness is written for (and `scripts/install-pebble.sh` installs).
pub const PEBBLE_VERSION: &str = "v2.10.1";
/// Environment variable naming the folder holding `pebble` and `pebble-challtestsrv`
/// (default: `.tools/bin` at the workspace root). See [`pebble_bin_dir`].
pub const PEBBLE_DIR_ENV: &str = "CERTAUTO_PEBBLE_DIR";
/// The User-Agent of the harness's own HTTP clients: Pebble refuses requests without one
/// (RFC 8555 §6.1).
pub const HARNESS_USER_AGENT: &str = concat!("certauto-tests/", env!("CARGO_PKG_VERSION"));

/// How often the whole start is attempted when a child process dies early (e.g. because
/// another process grabbed one of the chosen ports in the meantime).
const MAX_START_ATTEMPTS: u32 = 3;
/// Total time allowed for one start attempt to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Upper bound on readiness polls per attempt.
const READY_MAX_POLLS: u32 = 200;
/// Pause between readiness polls.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Timeout of a single readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of each child's log shown in panic messages.
const LOG_TAIL_LINES: usize = 60;

/// The profile every harness Pebble has (see [`PebbleBuilder::profile`]).
pub const DEFAULT_PROFILE: &str = "default";
/// Pebble's own default certificate lifetime (90 days), used for [`DEFAULT_PROFILE`] unless
/// [`PebbleBuilder::certificate_validity_secs`] says otherwise.
pub const PEBBLE_DEFAULT_VALIDITY_SECS: u64 = 7_776_000;

/// The folder the harness runs `pebble` and `pebble-challtestsrv` from: `$CERTAUTO_PEBBLE_DIR`
/// if set (and not empty; give an absolute path, as tests run in their crate's folder), else
/// `.tools/bin` at the workspace root, where
/// `scripts/install-pebble.sh` puts them. `PATH` is not searched, so a system Pebble of
/// another version (Debian's 2.4) is never picked up by accident.
pub fn pebble_bin_dir() -> PathBuf {
    match std::env::var_os(PEBBLE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|root| root.join(".tools").join("bin"))
            .unwrap_or_else(|| PathBuf::from(".tools/bin")),
    }
}

/// The path of one of the two binaries.
///
/// # Panics
///
/// If it is missing, with a message saying how to install it.
fn pebble_tool(name: &str) -> PathBuf {
    let dir = pebble_bin_dir();
    let path = dir.join(name);
    if !is_executable(&path) {
        panic!(
            "{name} not found at {path}: the suite needs Pebble {PEBBLE_VERSION} in {dir} \
             (override with {PEBBLE_DIR_ENV}). Install it with ./scripts/install-pebble.sh \
             (needs Go 1.24+), or run `GOBIN={dir} go install \
             github.com/letsencrypt/pebble/v2/cmd/{name}@{PEBBLE_VERSION}`",
            path = path.display(),
            dir = dir.display(),
        );
    }
    path
}

/// Environment variables that change Pebble's behaviour; all are cleared for the child so a
/// stray value in the developer's or CI's environment cannot change test results.
const PEBBLE_ENV_VARS: &[&str] = &[
    "PEBBLE_VA_NOSLEEP",
    "PEBBLE_VA_SLEEPTIME",
    "PEBBLE_VA_ALWAYS_VALID",
    "PEBBLE_WFE_NONCEREJECT",
    "PEBBLE_AUTHZREUSE",
    "PEBBLE_ALTERNATE_ROOTS",
    "PEBBLE_CHAIN_LENGTH",
    "PEBBLE_WFE_ORDERS_PER_PAGE",
];
/// Proxy variables are cleared too: validation traffic must go straight to loopback.
const PROXY_ENV_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// The two EAB key pairs from Pebble's `test/config/pebble-config-external-account-bindings.json`
/// example, as `(kid, base64url HMAC key)`. Handy for [`PebbleBuilder::eab_keys`].
pub const PEBBLE_EXAMPLE_EAB_KEYS: [(&str, &str); 2] = [
    (
        "kid-1",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    ),
    (
        "kid-2",
        "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH",
    ),
];

/// Options for a [`Pebble`] instance; create it with [`Pebble::builder`].
///
/// Every option left unset keeps Pebble's own default, except that random validation sleeps
/// are always disabled (`PEBBLE_VA_NOSLEEP=1`), issuing keys are RSA (`keyAlgorithm: "rsa"`,
/// the only kind the management interface hands out) and there is one profile,
/// [`DEFAULT_PROFILE`], unless more are added with [`PebbleBuilder::profile`].
#[derive(Debug, Clone, Default)]
pub struct PebbleBuilder {
    nonce_reject_percent: Option<u8>,
    alternate_roots: Option<u8>,
    authz_reuse_percent: Option<u8>,
    chain_length: Option<u8>,
    orders_per_page: Option<u32>,
    va_always_valid: bool,
    eab_keys: Vec<(String, String)>,
    eab_required: bool,
    certificate_validity_secs: Option<u64>,
    profiles: BTreeMap<String, (String, u64)>,
    ocsp_responder_url: Option<String>,
    http_port: Option<u16>,
    tls_port: Option<u16>,
    retry_after: Option<(u64, u64)>,
    dns_server: Option<SocketAddr>,
    acme_port: Option<u16>,
    https_pki: Option<pki::HttpsPki>,
}

impl PebbleBuilder {
    /// Percentage of valid nonces Pebble rejects with `badNonce` (`PEBBLE_WFE_NONCEREJECT`).
    ///
    /// Unset by default, which keeps Pebble's default of rejecting 5 % of good nonces, so
    /// every test exercises the client's `badNonce` retry. Use `0` for a deterministic run.
    pub fn nonce_reject_percent(mut self, percent: u8) -> Self {
        assert!(
            percent <= 100,
            "nonce_reject_percent must be 0..=100, got {percent}"
        );
        self.nonce_reject_percent = Some(percent);
        self
    }

    /// Number of alternate root chains (`PEBBLE_ALTERNATE_ROOTS`). Their roots are
    /// available as [`Pebble::root_pem`]`(1..)`.
    pub fn alternate_roots(mut self, count: u8) -> Self {
        self.alternate_roots = Some(count);
        self
    }

    /// Percentage of new orders that reuse an existing valid authorization
    /// (`PEBBLE_AUTHZREUSE`; Pebble's default is 50).
    pub fn authz_reuse_percent(mut self, percent: u8) -> Self {
        assert!(
            percent <= 100,
            "authz_reuse_percent must be 0..=100, got {percent}"
        );
        self.authz_reuse_percent = Some(percent);
        self
    }

    /// Number of intermediates between leaf and root (`PEBBLE_CHAIN_LENGTH`; default and
    /// minimum 1). Extra intermediates are not exposed by the management interface.
    pub fn chain_length(mut self, intermediates: u8) -> Self {
        assert!(intermediates >= 1, "chain_length must be at least 1");
        self.chain_length = Some(intermediates);
        self
    }

    /// Orders per page when listing an account's orders (`PEBBLE_WFE_ORDERS_PER_PAGE`;
    /// Pebble's default is 3).
    pub fn orders_per_page(mut self, count: u32) -> Self {
        assert!(count >= 1, "orders_per_page must be positive");
        self.orders_per_page = Some(count);
        self
    }

    /// Makes Pebble treat every challenge as valid without contacting the client
    /// (`PEBBLE_VA_ALWAYS_VALID=1`). Off by default: real validation is the point of most
    /// tests.
    pub fn va_always_valid(mut self, always_valid: bool) -> Self {
        self.va_always_valid = always_valid;
        self
    }

    /// External account binding keys as `(kid, base64url HMAC key)`
    /// (config `externalAccountMACKeys`). See also [`PEBBLE_EXAMPLE_EAB_KEYS`].
    pub fn eab_keys(mut self, keys: Vec<(String, String)>) -> Self {
        self.eab_keys = keys;
        self
    }

    /// Whether new accounts must carry an external account binding
    /// (config `externalAccountBindingRequired`; default false).
    pub fn eab_required(mut self, required: bool) -> Self {
        self.eab_required = required;
        self
    }

    /// Validity in seconds of certificates issued with [`DEFAULT_PROFILE`] (config
    /// `profiles.default.validityPeriod`; Pebble's default is
    /// [`PEBBLE_DEFAULT_VALIDITY_SECS`], 90 days). Pebble 2.10 ignores the old top-level
    /// `certificateValidityPeriod`.
    pub fn certificate_validity_secs(mut self, secs: u64) -> Self {
        assert!(secs >= 1, "certificate_validity_secs must be positive");
        self.certificate_validity_secs = Some(secs);
        self
    }

    /// Adds an ACME profile (config `profiles.<name>`, listed in the directory's
    /// `meta.profiles` with `description`) whose certificates are valid for `validity_secs`.
    ///
    /// **With more than one profile, Pebble picks one at random for every order that names
    /// none**, so a test that adds a profile should name it (or [`DEFAULT_PROFILE`]) in the
    /// orders whose lifetime it checks.
    pub fn profile(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        validity_secs: u64,
    ) -> Self {
        let name = name.into();
        assert!(
            name != DEFAULT_PROFILE,
            "set the default profile's lifetime with certificate_validity_secs"
        );
        assert!(validity_secs >= 1, "a profile's validity must be positive");
        self.profiles
            .insert(name, (description.into(), validity_secs));
        self
    }

    /// OCSP responder URL put into issued certificates (config `ocspResponderURL`; default
    /// none). Pebble does not answer OCSP itself; the test has to serve this URL.
    pub fn ocsp_responder_url(mut self, url: impl Into<String>) -> Self {
        self.ocsp_responder_url = Some(url.into());
        self
    }

    /// Port of Pebble's ACME endpoint (config `listenAddress`, so the directory is
    /// `https://127.0.0.1:<port>/dir`). By default a free port is chosen. For a CA that
    /// comes back where a client already points (failover tests).
    pub fn acme_port(mut self, port: u16) -> Self {
        self.acme_port = Some(port);
        self
    }

    /// Serves Pebble's HTTPS endpoints with the same CA and leaf as `other`, so a client
    /// built to trust `other` ([`Pebble::https_ca_der`]) trusts this one too. By default
    /// each Pebble has its own throw-away HTTPS CA.
    ///
    /// # Panics
    ///
    /// If `other`'s HTTPS certificate files cannot be read.
    pub fn same_https_ca_as(mut self, other: &Pebble) -> Self {
        let read = |name: &str| {
            std::fs::read_to_string(other.temp_dir().join(name))
                .unwrap_or_else(|e| panic!("read {name} of the other Pebble: {e}"))
        };
        self.https_pki = Some(pki::HttpsPki {
            ca_pem: other.https_ca_pem(),
            ca_der: other.https_ca_der(),
            leaf_cert_pem: read("https-cert.pem"),
            leaf_key_pem: read("https-key.pem"),
        });
        self
    }

    /// Port Pebble connects to for HTTP-01 validation (config `httpPort`). By default a free
    /// port is chosen; read it back with [`Pebble::http_port`] and listen on it.
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    /// Port Pebble connects to for TLS-ALPN-01 validation (config `tlsPort`). By default a
    /// free port is chosen; read it back with [`Pebble::tls_port`] and listen on it.
    pub fn tls_port(mut self, port: u16) -> Self {
        self.tls_port = Some(port);
        self
    }

    /// Writes a `retryAfter` object (`{"authz": .., "order": ..}`, seconds) into the config:
    /// Pebble then sends `Retry-After` with pending authorizations and processing orders.
    /// Nothing is written unless this is called (Pebble then sends none).
    pub fn retry_after(mut self, authz_secs: u64, order_secs: u64) -> Self {
        self.retry_after = Some((authz_secs, order_secs));
        self
    }

    /// The DNS server Pebble's validation authority resolves through (its `-dnsserver`),
    /// e.g. [`Bind::recursive_addr`](crate::Bind::recursive_addr) for DNS-01 tests
    /// against real DNS. Pebble 2.10 asks it over TCP. By default it is the harness's
    /// `pebble-challtestsrv` (which is started either way).
    pub fn dns_server(mut self, server: SocketAddr) -> Self {
        self.dns_server = Some(server);
        self
    }

    /// Starts `pebble-challtestsrv` and `pebble` and waits until both answer.
    ///
    /// # Panics
    ///
    /// If either binary is missing from [`pebble_bin_dir`] (the message says how to install
    /// it), or Pebble does not become ready (the panic message then contains the tail of
    /// both processes' output).
    pub async fn start(self) -> Pebble {
        let pebble_bin = pebble_tool("pebble");
        let challtestsrv_bin = pebble_tool("pebble-challtestsrv");
        let mut failures = String::new();
        for attempt in 1..=MAX_START_ATTEMPTS {
            match self.try_start(&pebble_bin, &challtestsrv_bin).await {
                Ok(pebble) => {
                    tracing::info!(
                        directory = %pebble.directory_url(),
                        management = %pebble.management_url(),
                        dns = %pebble.dns_addr(),
                        http_port = pebble.http_port(),
                        tls_port = pebble.tls_port(),
                        "Pebble is ready"
                    );
                    return pebble;
                }
                Err(StartFailure::Retry(report)) => {
                    tracing::warn!(attempt, "Pebble start attempt failed, retrying:\n{report}");
                    let _ = writeln!(failures, "--- attempt {attempt} ---\n{report}");
                }
                Err(StartFailure::Fatal(report)) => {
                    panic!("Pebble did not start (attempt {attempt}):\n{failures}{report}")
                }
            }
        }
        panic!("Pebble did not start after {MAX_START_ATTEMPTS} attempts:\n{failures}");
    }

    async fn try_start(
        &self,
        pebble_bin: &Path,
        challtestsrv_bin: &Path,
    ) -> Result<Pebble, StartFailure> {
        let dir = tempfile::Builder::new()
            .prefix("certauto-pebble-")
            .tempdir()
            .expect("create a temporary directory for Pebble");
        let path = |name: &str| dir.path().join(name);

        let pki = self.https_pki.clone().unwrap_or_else(pki::generate);
        write_file(&path("https-ca.pem"), &pki.ca_pem);
        write_file(&path("https-cert.pem"), &pki.leaf_cert_pem);
        write_file(&path("https-key.pem"), &pki.leaf_key_pem);

        let mut ports = PortReservation::default();
        let dns_port = ports.tcp_and_udp();
        let challtestsrv_management_port = ports.tcp();
        let listen_port = self.acme_port.unwrap_or_else(|| ports.tcp());
        let management_port = ports.tcp();
        let http_port = self.http_port.unwrap_or_else(|| ports.tcp());
        let tls_port = self.tls_port.unwrap_or_else(|| ports.tcp());
        drop(ports);

        let dns_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, dns_port));
        let config = self.config_json(&dir, listen_port, management_port, http_port, tls_port);
        write_file(
            &path("pebble.json"),
            &serde_json::to_string_pretty(&config).expect("serialize the Pebble config"),
        );

        let challtestsrv_log = path("challtestsrv.log");
        let mut challtestsrv = Command::new(challtestsrv_bin);
        // `-dnsserver` answers over UDP and TCP on the same port; Pebble's VA uses TCP.
        // Every other listener (challenge responders, DNS over HTTPS) is switched off.
        challtestsrv
            .arg("-dnsserver")
            .arg(dns_addr.to_string())
            .arg("-management")
            .arg(format!("127.0.0.1:{challtestsrv_management_port}"))
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let challtestsrv = spawn(
            challtestsrv,
            dir.path(),
            &challtestsrv_log,
            "pebble-challtestsrv",
        )?;

        let pebble_log = path("pebble.log");
        let mut pebble = Command::new(pebble_bin);
        pebble
            .arg("-config")
            .arg(path("pebble.json"))
            .arg("-dnsserver")
            .arg(self.dns_server.unwrap_or(dns_addr).to_string());
        for var in PEBBLE_ENV_VARS {
            pebble.env_remove(var);
        }
        pebble.env("PEBBLE_VA_NOSLEEP", "1");
        let env_u = |v: Option<u8>| v.map(|v| v.to_string());
        let envs = [
            ("PEBBLE_WFE_NONCEREJECT", env_u(self.nonce_reject_percent)),
            ("PEBBLE_ALTERNATE_ROOTS", env_u(self.alternate_roots)),
            ("PEBBLE_AUTHZREUSE", env_u(self.authz_reuse_percent)),
            ("PEBBLE_CHAIN_LENGTH", env_u(self.chain_length)),
            (
                "PEBBLE_WFE_ORDERS_PER_PAGE",
                self.orders_per_page.map(|v| v.to_string()),
            ),
            (
                "PEBBLE_VA_ALWAYS_VALID",
                self.va_always_valid.then(|| "1".to_owned()),
            ),
        ];
        for (key, value) in envs {
            if let Some(value) = value {
                pebble.env(key, value);
            }
        }
        let pebble = match spawn(pebble, dir.path(), &pebble_log, "pebble") {
            Ok(child) => child,
            Err(e) => {
                drop(KillOnDrop(challtestsrv));
                return Err(e);
            }
        };

        let ca_der = pki.ca_der.clone();
        let mut harness = Pebble {
            pebble,
            challtestsrv,
            client: build_client(&ca_der),
            listen_port,
            management_port,
            challtestsrv_management_port,
            http_port,
            tls_port,
            dns_addr,
            ca_pem: pki.ca_pem,
            ca_der,
            eab_keys: self.eab_keys.clone(),
            pebble_log,
            challtestsrv_log,
            dir,
        };
        harness.wait_ready().await?;
        Ok(harness)
    }

    fn config_json(
        &self,
        dir: &TempDir,
        listen_port: u16,
        management_port: u16,
        http_port: u16,
        tls_port: u16,
    ) -> Value {
        let mut cfg = json!({
            "listenAddress": format!("127.0.0.1:{listen_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.path().join("https-cert.pem"),
            "privateKey": dir.path().join("https-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": self.ocsp_responder_url.clone().unwrap_or_default(),
            "externalAccountBindingRequired": self.eab_required,
            "keyAlgorithm": "rsa",
        });
        let obj = cfg.as_object_mut().expect("config is a JSON object");
        if !self.eab_keys.is_empty() {
            let keys: serde_json::Map<String, Value> = self
                .eab_keys
                .iter()
                .map(|(kid, key)| (kid.clone(), Value::from(key.clone())))
                .collect();
            obj.insert("externalAccountMACKeys".to_owned(), Value::Object(keys));
        }
        let mut profiles = serde_json::Map::new();
        profiles.insert(
            DEFAULT_PROFILE.to_owned(),
            json!({
                "description": "The certauto-tests default profile",
                "validityPeriod": self
                    .certificate_validity_secs
                    .unwrap_or(PEBBLE_DEFAULT_VALIDITY_SECS),
            }),
        );
        for (name, (description, validity)) in &self.profiles {
            profiles.insert(
                name.clone(),
                json!({ "description": description, "validityPeriod": validity }),
            );
        }
        obj.insert("profiles".to_owned(), Value::Object(profiles));
        if let Some((authz, order)) = self.retry_after {
            obj.insert(
                "retryAfter".to_owned(),
                json!({ "authz": authz, "order": order }),
            );
        }
        json!({ "pebble": cfg })
    }
}

/// Why a start attempt failed, with the captured logs.
enum StartFailure {
    /// A child exited or could not bind: worth trying again with new ports.
    Retry(String),
    /// Anything else: give up.
    Fatal(String),
}

/// Kills a child that has not been moved into a [`Pebble`] yet.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_and_reap(&mut [&mut self.0]);
    }
}

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn spawn(mut cmd: Command, cwd: &Path, log: &Path, what: &str) -> Result<Child, StartFailure> {
    let out =
        std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log file handle");
    for var in PROXY_ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| StartFailure::Fatal(format!("could not spawn {what} ({cmd:?}): {e}")))
}

fn build_client(ca_der: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(ca_der))
        .user_agent(HARNESS_USER_AGENT)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the reqwest client for Pebble")
}

/// A rustls client config (ring provider, ALPN `http/1.1`) trusting only `ca_der`.
fn client_config(ca_der: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .expect("add the test HTTPS CA to a root store");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring provider supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Sends SIGKILL to every child, then reaps them (bounded wait).
pub(crate) fn kill_and_reap(children: &mut [&mut Child]) {
    for child in children.iter_mut() {
        let _ = child.start_kill();
    }
    for child in children.iter_mut() {
        for _ in 0..200 {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Ok(Some(_)) | Err(_) => break,
            }
        }
    }
}

/// Lower-case hex without separators, `0x` or leading zeros: the form Pebble's
/// `/cert-status-by-serial/` reports (it accepts any case and leading zeros, but not colons).
pub fn normalize_serial(serial: &str) -> String {
    let lower = serial.trim().to_ascii_lowercase();
    let digits: String = lower
        .strip_prefix("0x")
        .unwrap_or(&lower)
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect();
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The serial number of a DER certificate in the form [`Pebble::cert_status`] expects.
///
/// # Panics
///
/// If `cert_der` is not a parseable X.509 certificate.
pub fn serial_hex(cert_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .expect("serial_hex: parse the DER certificate");
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    normalize_serial(&hex)
}

/// A running Pebble ACME server plus its `pebble-challtestsrv` mock DNS server.
///
/// Everything listens on 127.0.0.1 only; both processes are killed and reaped when this
/// value is dropped, and the temporary directory (config, HTTPS certificates, logs) is
/// removed afterwards.
#[derive(Debug)]
pub struct Pebble {
    pebble: Child,
    challtestsrv: Child,
    client: reqwest::Client,
    listen_port: u16,
    management_port: u16,
    challtestsrv_management_port: u16,
    http_port: u16,
    tls_port: u16,
    dns_addr: SocketAddr,
    ca_pem: String,
    ca_der: Vec<u8>,
    eab_keys: Vec<(String, String)>,
    pebble_log: PathBuf,
    challtestsrv_log: PathBuf,
    // Dropped last (fields drop after `Drop::drop` has killed the children).
    dir: TempDir,
}

impl Pebble {
    /// A builder with Pebble's defaults (random nonce rejection stays on).
    pub fn builder() -> PebbleBuilder {
        PebbleBuilder::default()
    }

    /// Starts Pebble with default options; shorthand for `Pebble::builder().start()`.
    pub async fn start() -> Pebble {
        Self::builder().start().await
    }

    /// The ACME directory URL, `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen_port)
    }

    /// Base URL of Pebble's management interface, `https://127.0.0.1:<port>` (no trailing
    /// slash). It is served with the same certificate as the ACME endpoint.
    pub fn management_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.management_port)
    }

    /// Base URL of `pebble-challtestsrv`'s management API, `http://127.0.0.1:<port>`.
    pub fn challtestsrv_management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.challtestsrv_management_port)
    }

    /// PEM of the CA to trust for Pebble's HTTPS endpoints (not the CA that issues ACME
    /// certificates; for that see [`Pebble::root_pem`]).
    pub fn https_ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// DER of the CA to trust for Pebble's HTTPS endpoints.
    pub fn https_ca_der(&self) -> Vec<u8> {
        self.ca_der.clone()
    }

    /// Port on 127.0.0.1 that Pebble connects to for HTTP-01 validation.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Port on 127.0.0.1 that Pebble connects to for TLS-ALPN-01 validation.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// Address of the mock DNS server Pebble resolves with. Every name resolves to
    /// 127.0.0.1 (A) unless changed; there are no AAAA answers.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// The EAB keys Pebble was configured with, as `(kid, base64url HMAC key)`.
    pub fn eab_keys(&self) -> &[(String, String)] {
        &self.eab_keys
    }

    /// A rustls client config trusting only [`Pebble::https_ca_der`] (ring provider, ALPN
    /// `http/1.1`).
    pub fn rustls_client_config(&self) -> rustls::ClientConfig {
        client_config(&self.ca_der)
    }

    /// The reqwest client the harness uses (built from [`Pebble::rustls_client_config`],
    /// proxies disabled). Cloning it is cheap.
    pub fn http_client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// The per-instance temporary directory (config, HTTPS certificates, logs).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything Pebble has written to stdout/stderr so far.
    pub fn pebble_log(&self) -> String {
        read_log(&self.pebble_log)
    }

    /// Everything `pebble-challtestsrv` has written to stdout/stderr so far.
    pub fn challtestsrv_log(&self) -> String {
        read_log(&self.challtestsrv_log)
    }

    // ----- Pebble management interface -----

    /// PEM of root certificate `index` (0 is the default chain; `1..` are alternate roots).
    pub async fn root_pem(&self, index: usize) -> String {
        self.management_get(&format!("/roots/{index}")).await
    }

    /// DER of root certificate `index`.
    pub async fn root_der(&self, index: usize) -> Vec<u8> {
        first_cert_der(&self.root_pem(index).await, "root")
    }

    /// PEM of the intermediate of chain `index`.
    pub async fn intermediate_pem(&self, index: usize) -> String {
        self.management_get(&format!("/intermediates/{index}"))
            .await
    }

    /// DER of the intermediate of chain `index`.
    pub async fn intermediate_der(&self, index: usize) -> Vec<u8> {
        first_cert_der(&self.intermediate_pem(index).await, "intermediate")
    }

    /// PEM private key of root `index`.
    pub async fn root_key_pem(&self, index: usize) -> String {
        self.management_get(&format!("/root-keys/{index}")).await
    }

    /// PEM private key of the intermediate of chain `index`.
    pub async fn intermediate_key_pem(&self, index: usize) -> String {
        self.management_get(&format!("/intermediate-keys/{index}"))
            .await
    }

    /// Status of an issued certificate from `/cert-status-by-serial/<serial>`, e.g.
    /// `{"Status": "Valid", "Serial": "103cb3ab06bccda9", "Certificate": "<PEM>"}`; revoked
    /// ones also have `"Reason"` and `"RevokedAt"`.
    ///
    /// `serial_hex` may use either case, colons or leading zeros; see [`serial_hex`] to get
    /// it from a DER certificate.
    ///
    /// # Panics
    ///
    /// If Pebble does not know the serial (use [`Pebble::try_cert_status`]) or the request
    /// fails.
    pub async fn cert_status(&self, serial_hex: &str) -> Value {
        self.try_cert_status(serial_hex)
            .await
            .unwrap_or_else(|| panic!("Pebble has no certificate with serial {serial_hex:?} (404)"))
    }

    /// Like [`Pebble::cert_status`], but `None` when Pebble answers 404 (unknown serial).
    pub async fn try_cert_status(&self, serial_hex: &str) -> Option<Value> {
        let url = format!(
            "{}/cert-status-by-serial/{}",
            self.management_url(),
            normalize_serial(serial_hex)
        );
        let (status, body) = self.send(self.client.get(&url), &url).await;
        if status == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(status.is_success(), "GET {url} returned {status}: {body}");
        Some(
            serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {url}: invalid JSON ({e}): {body}")),
        )
    }

    /// Makes Pebble's ARI endpoint (`renewalInfo`, RFC 9773) answer `body` verbatim for the
    /// certificate `cert_pem` (its first certificate is used; Pebble finds it by serial),
    /// through the management interface's `POST /set-renewal-info/`. `body` may be anything,
    /// even invalid JSON. Pebble sends `Retry-After: 21600` (six hours) with it.
    ///
    /// Without this, Pebble answers a window around two thirds of the certificate's
    /// lifetime (or "now" for a revoked certificate).
    ///
    /// # Panics
    ///
    /// If Pebble does not know the certificate or the request fails.
    pub async fn set_renewal_info(&self, cert_pem: &str, body: &str) {
        let url = format!("{}/set-renewal-info/", self.management_url());
        let request = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json!({ "Certificate": cert_pem, "ARIResponse": body }).to_string());
        let (status, text) = self.send(request, &url).await;
        assert!(status.is_success(), "POST {url} returned {status}: {text}");
    }

    /// Sets the ARI `suggestedWindow` Pebble reports for `cert_pem` to `[start, end]` (see
    /// [`Pebble::set_renewal_info`]).
    pub async fn set_renewal_window(&self, cert_pem: &str, start: SystemTime, end: SystemTime) {
        let body = json!({
            "suggestedWindow": { "start": rfc3339(start), "end": rfc3339(end) }
        });
        self.set_renewal_info(cert_pem, &body.to_string()).await;
    }

    // ----- pebble-challtestsrv (mock DNS) -----

    /// Adds an A record for `host` (in addition to earlier ones); without one, every name
    /// resolves to the default IPv4 address (127.0.0.1).
    ///
    /// # Panics
    ///
    /// If `ip` is not a loopback address (tests must stay on loopback).
    pub async fn add_a_record(&self, host: &str, ip: Ipv4Addr) {
        assert!(
            ip.is_loopback(),
            "add_a_record: only loopback addresses may be used, got {ip}"
        );
        self.challtestsrv_post(
            "/add-a",
            json!({ "host": fqdn(host), "addresses": [ip.to_string()] }),
        )
        .await;
    }

    /// Removes the A records added for `host`.
    pub async fn clear_a_record(&self, host: &str) {
        self.challtestsrv_post("/clear-a", json!({ "host": fqdn(host) }))
            .await;
    }

    /// Sets the address returned for A queries without a specific record.
    ///
    /// # Panics
    ///
    /// If `ip` is not a loopback address.
    pub async fn set_default_ipv4(&self, ip: Ipv4Addr) {
        assert!(
            ip.is_loopback(),
            "set_default_ipv4: only loopback addresses may be used, got {ip}"
        );
        self.challtestsrv_post("/set-default-ipv4", json!({ "ip": ip.to_string() }))
            .await;
    }

    /// Adds a TXT record (e.g. `_acme-challenge.example.test`); several values per name
    /// accumulate. A trailing dot is added if missing: challtestsrv only matches
    /// fully-qualified names for TXT.
    pub async fn add_txt_record(&self, host: &str, value: &str) {
        self.challtestsrv_post("/set-txt", json!({ "host": fqdn(host), "value": value }))
            .await;
    }

    /// Removes all TXT records of `host`.
    pub async fn clear_txt_record(&self, host: &str) {
        self.challtestsrv_post("/clear-txt", json!({ "host": fqdn(host) }))
            .await;
    }

    /// Resolves `host` (A) through the mock DNS server, as Pebble would (over TCP).
    pub async fn lookup_a(&self, host: &str) -> Vec<Ipv4Addr> {
        let answers = dns::query(
            self.dns_addr,
            host,
            dns::TYPE_A,
            Transport::Tcp,
            PROBE_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("DNS A lookup of {host}: {e}"));
        dns::a_records(&answers)
    }

    /// Looks up the TXT records of `host` through the mock DNS server, as Pebble would (over
    /// TCP).
    pub async fn lookup_txt(&self, host: &str) -> Vec<String> {
        let answers = dns::query(
            self.dns_addr,
            host,
            dns::TYPE_TXT,
            Transport::Tcp,
            PROBE_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("DNS TXT lookup of {host}: {e}"));
        dns::txt_records(&answers)
    }

    // ----- internals -----

    async fn management_get(&self, path: &str) -> String {
        let url = format!("{}{path}", self.management_url());
        let (status, body) = self.send(self.client.get(&url), &url).await;
        assert!(status.is_success(), "GET {url} returned {status}: {body}");
        body
    }

    async fn challtestsrv_post(&self, path: &str, body: Value) {
        let url = format!("{}{path}", self.challtestsrv_management_url());
        let request = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, text) = self.send(request, &url).await;
        assert!(
            status.is_success(),
            "POST {url} with {body} returned {status}: {text}"
        );
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> (reqwest::StatusCode, String) {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
        let status = response.status();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("read body of {url}: {e}"));
        (status, body)
    }

    fn log_report(&self) -> String {
        format!(
            "--- pebble output (last {LOG_TAIL_LINES} lines) ---\n{}--- pebble-challtestsrv output \
             (last {LOG_TAIL_LINES} lines) ---\n{}",
            log_tail(&self.pebble_log, LOG_TAIL_LINES),
            log_tail(&self.challtestsrv_log, LOG_TAIL_LINES),
        )
    }

    /// Polls until Pebble's directory and management interface and challtestsrv's DNS and
    /// management API all answer.
    async fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        let mut challtestsrv_ready = false;
        let mut last_problem = String::from("not polled yet");
        for _ in 0..READY_MAX_POLLS {
            let exited = if let Ok(Some(status)) = self.pebble.try_wait() {
                Some(("pebble", status))
            } else if let Ok(Some(status)) = self.challtestsrv.try_wait() {
                Some(("pebble-challtestsrv", status))
            } else {
                None
            };
            if let Some((name, status)) = exited {
                return Err(StartFailure::Retry(format!(
                    "{name} exited early ({status}).\n{}",
                    self.log_report()
                )));
            }
            // challtestsrv logs bind failures but keeps running.
            if read_log(&self.challtestsrv_log).contains("address already in use") {
                return Err(StartFailure::Retry(format!(
                    "pebble-challtestsrv could not bind a port.\n{}",
                    self.log_report()
                )));
            }
            match self.probe(&mut challtestsrv_ready).await {
                Ok(()) => return Ok(()),
                Err(problem) => last_problem = problem,
            }
            if tokio::time::Instant::now() + READY_POLL_INTERVAL >= deadline {
                break;
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        Err(StartFailure::Fatal(format!(
            "not ready within {READY_DEADLINE:?} ({READY_MAX_POLLS} polls max); last problem: \
             {last_problem}\n{}",
            self.log_report()
        )))
    }

    async fn probe(&self, challtestsrv_ready: &mut bool) -> Result<(), String> {
        if !*challtestsrv_ready {
            for transport in [Transport::Udp, Transport::Tcp] {
                dns::query(
                    self.dns_addr,
                    "readiness-probe.certauto-tests.invalid",
                    dns::TYPE_A,
                    transport,
                    PROBE_TIMEOUT,
                )
                .await
                .map_err(|e| format!("challtestsrv DNS over {transport:?}: {e}"))?;
            }
            let url = format!("{}/set-default-ipv4", self.challtestsrv_management_url());
            let status = self
                .client
                .post(&url)
                .timeout(PROBE_TIMEOUT)
                .body(r#"{"ip":"127.0.0.1"}"#)
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e:?}"))?
                .status();
            if !status.is_success() {
                return Err(format!("POST {url}: {status}"));
            }
            *challtestsrv_ready = true;
        }
        let url = self.directory_url();
        let response = self
            .client
            .get(&url)
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e:?}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| format!("GET {url} body: {e}"))?;
        if !status.is_success() || !body.contains("newNonce") {
            return Err(format!("GET {url}: {status}: {body}"));
        }
        let url = format!("{}/roots/0", self.management_url());
        let status = self
            .client
            .get(&url)
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e:?}"))?
            .status();
        if !status.is_success() {
            return Err(format!("GET {url}: {status}"));
        }
        Ok(())
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        kill_and_reap(&mut [&mut self.pebble, &mut self.challtestsrv]);
        if std::thread::panicking() {
            // The test failed: show what the servers saw (captured by the test runner).
            eprintln!(
                "certauto-tests: Pebble instance dropped during a panic.\n{}",
                self.log_report()
            );
        }
    }
}

/// RFC 3339 in UTC, as ARI windows are written.
fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("format {t:?} as RFC 3339: {e}"))
}

/// Appends the trailing dot challtestsrv's DNS tables are keyed by.
fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_owned()
    } else {
        format!("{host}.")
    }
}

fn first_cert_der(pem: &str, what: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap_or_else(|| panic!("no certificate in Pebble's {what} PEM: {pem}"))
        .unwrap_or_else(|e| panic!("invalid {what} PEM from Pebble ({e:?}): {pem}"))
        .to_vec()
}
