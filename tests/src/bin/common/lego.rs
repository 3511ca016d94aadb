//! Running `lego` (the Debian package) against the same CA as CertAuto, one
//! process per certificate, and checking what it stored.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use certauto_tests::webpki_verify_chain;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::process::Command;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

use super::{BenchResult, find_on_path, is_executable, tail};

/// Bound on one lego process (enforced by `timeout`, which also kills lego).
pub(crate) const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time after [`PROCESS_TIMEOUT`] before the bench gives up on the wrapper itself.
const PROCESS_GRACE: Duration = Duration::from_secs(15);
/// Marker in front of `/usr/bin/time`'s `%M` (max RSS in KiB) on lego's stderr.
const RSS_MARKER: &str = "bench-maxrss-kib=";
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

/// The programs a lego run needs.
pub(crate) struct Tools {
    pub(crate) lego: PathBuf,
    time: PathBuf,
    timeout: PathBuf,
}

impl Tools {
    /// Finds lego, `/usr/bin/time` and `timeout`, or says what to install.
    pub(crate) fn find() -> BenchResult<Self> {
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

/// lego against one CA, with one `--path` (so its account is made once).
pub(crate) struct Lego {
    pub(crate) tools: Tools,
    /// The CA's directory URL.
    pub(crate) server: String,
    /// A PEM file lego trusts for the CA's HTTPS (`LEGO_CA_CERTIFICATES`).
    pub(crate) ca_file: PathBuf,
    /// lego's `--path`.
    pub(crate) path: PathBuf,
    /// The account e-mail.
    pub(crate) email: String,
    /// More environment for every run (a DNS provider's settings).
    pub(crate) env: Vec<(String, String)>,
}

/// One finished lego process.
pub(crate) struct LegoRun {
    /// Spawn to exit.
    pub(crate) elapsed: Duration,
    /// Peak RSS in KiB (`/usr/bin/time -f %M`).
    pub(crate) max_rss_kib: u64,
}

impl Lego {
    /// lego's own arguments for `name`, `challenge` being the solver's flags.
    fn lego_args(&self, name: &str, challenge: &[OsString]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--server".into(),
            self.server.clone().into(),
            "--email".into(),
            self.email.clone().into(),
            "--accept-tos".into(),
            "--key-type".into(),
            "ec256".into(),
            "--path".into(),
            self.path.clone().into(),
            "--domains".into(),
            name.into(),
        ];
        args.extend(challenge.iter().cloned());
        args.push("run".into());
        args
    }

    /// The full argument vector: `/usr/bin/time -f .. timeout -k 5 60 lego ..`.
    fn argv(&self, name: &str, challenge: &[OsString]) -> Vec<OsString> {
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
        argv.extend(self.lego_args(name, challenge));
        argv
    }

    /// The command line of a run, for the report (secrets in `env` are the
    /// caller's to leave out).
    pub(crate) fn command_line(&self, name: &str, challenge: &[OsString]) -> String {
        let argv = self.argv(name, challenge);
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
        let env: Vec<String> =
            std::iter::once(format!("LEGO_CA_CERTIFICATES={}", self.ca_file.display()))
                .chain(self.env.iter().map(|(k, v)| format!("{k}={v}")))
                .collect();
        format!("{} {}", env.join(" "), words.join(" "))
    }

    /// Runs one lego process to completion; its time is spawn to exit.
    pub(crate) async fn obtain(&self, name: &str, challenge: &[OsString]) -> BenchResult<LegoRun> {
        let argv = self.argv(name, challenge);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("LEGO_CA_CERTIFICATES", &self.ca_file)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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
    /// verifies against the CA's root. lego writes SEC1 (`EC PRIVATE KEY`) keys, which
    /// `certauto::Certificate::from_pem` does not read, so rustls and x509-parser check
    /// them here.
    pub(crate) fn check(&self, name: &str, root_der: &[u8]) -> BenchResult<()> {
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
