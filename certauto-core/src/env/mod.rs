//! Configuration from environment variables, for servers configured the
//! twelve-factor way (the examples use it).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `CERTAUTO_DOMAINS` | comma-separated names | `localhost` |
//! | `CERTAUTO_DIRECTORY` | ACME directory URL, or a comma-separated list of them: issuers tried in that order (failover), each with the same e-mail, roots and challenge; unset means the local CA | unset |
//! | `CERTAUTO_CA_ROOTS` | PEM file of extra roots to trust for the CA's own HTTPS | unset |
//! | `CERTAUTO_EMAIL` | ACME account e-mail | unset |
//! | `CERTAUTO_STORAGE` | storage folder, or `redis://…` / `rediss://…` for a Redis server a cluster shares | the OS data folder |
//! | `CERTAUTO_STORAGE_PREFIX` | Redis key prefix (deployments sharing one server) | `certauto` |
//! | `CERTAUTO_STORAGE_CA` | PEM file of extra roots to trust for `rediss://` | unset |
//! | `CERTAUTO_HTTP_ADDR` | HTTP listen address (challenges, redirect) | `127.0.0.1:8080` |
//! | `CERTAUTO_HTTPS_ADDR` | HTTPS listen address | `127.0.0.1:8443` |
//! | `CERTAUTO_CHALLENGE` | `http-01`, `tls-alpn-01` or `dns-01` | `http-01` |
//! | `CERTAUTO_RENEW_CHECK` | renewal-check interval, e.g. `2s`, `10m` | `10m` |
//! | `CERTAUTO_EAB_KID` | External Account Binding key id (with `CERTAUTO_EAB_HMAC`) | unset |
//! | `CERTAUTO_EAB_HMAC` | EAB MAC key, base64url or base64 (with `CERTAUTO_EAB_KID`) | unset |
//! | `CERTAUTO_PROFILE` | ACME certificate profile, e.g. `shortlived` | unset (the CA's default) |
//! | `CERTAUTO_ON_DEMAND` | on-demand TLS allowlist: comma-separated names or `*.suffix` patterns | unset (off) |
//! | `CERTAUTO_ADMIN_ADDR` | admin listener (`GET /metrics`, `GET /status`), e.g. `127.0.0.1:9090`; never a public port | unset (off) |
//!
//! With `CERTAUTO_CHALLENGE=dns-01`, `CERTAUTO_DNS_PROVIDER` names the DNS
//! provider and `CERTAUTO_DNS_*` its settings (see [`DnsSettings`] and the
//! README's table); `CERTAUTO_DOMAINS` may then hold wildcards.
//!
//! A bad value is an [`EnvError`] naming the variable. A Redis server that
//! cannot be reached at start is one too (see [`StorageSettings`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::acme::jws::ExternalAccountKey;
use crate::acme::types::ChallengeType;
use crate::challenge::{ChallengeTokens, Http01Solver, TlsAlpn01Solver, TlsAlpnChallenges};
use crate::config::Config;
use crate::handshake::OnDemandConfig;
use crate::identifier::Identifier;
use crate::issuer::AcmeIssuer;
use crate::storage::Storage;

mod dns;
mod storage;

pub use dns::{DNS_PROVIDERS, DnsSettings};
pub use storage::{RedisSettings, StorageSettings};

/// A bad environment variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
#[non_exhaustive]
pub struct EnvError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(var: &'static str, reason: impl Into<String>) -> EnvError {
    EnvError {
        var,
        reason: reason.into(),
    }
}

/// `CERTAUTO_ADMIN_ADDR`: a socket address whose port is neither public
/// port (the admin endpoints are never served to the public).
fn admin_addr(value: &str, http: SocketAddr, https: SocketAddr) -> Result<SocketAddr, EnvError> {
    const VAR: &str = "CERTAUTO_ADMIN_ADDR";
    let addr: SocketAddr = value
        .trim()
        .parse()
        .map_err(|_| bad(VAR, format!("not a socket address (host:port): {value:?}")))?;
    if addr.port() == 0 {
        return Err(bad(VAR, "the port must be given (not 0)"));
    }
    for (public, name) in [(http, "CERTAUTO_HTTP_ADDR"), (https, "CERTAUTO_HTTPS_ADDR")] {
        if addr.port() == public.port() {
            return Err(bad(
                VAR,
                format!(
                    "port {} is {name}'s: the admin endpoints are never served on a public port",
                    addr.port()
                ),
            ));
        }
    }
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "CERTAUTO_ADMIN_ADDR is not a loopback address: /metrics and /status are \
             reachable from the network; keep it behind a firewall"
        );
    }
    Ok(addr)
}

/// Settings read from `CERTAUTO_*` variables.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EnvSettings {
    /// The names to manage, one certificate each.
    pub domains: Vec<Identifier>,
    /// The ACME directory URLs, one issuer each, tried in this order
    /// (failover); empty means the local CA.
    pub directories: Vec<String>,
    /// Extra roots for the CA's HTTPS.
    pub ca_roots: Vec<CertificateDer<'static>>,
    /// The account e-mail.
    pub email: Option<String>,
    /// The storage: a folder or a Redis server.
    pub storage: StorageSettings,
    /// The HTTP listen address.
    pub http_addr: SocketAddr,
    /// The HTTPS listen address.
    pub https_addr: SocketAddr,
    /// `http-01`, `tls-alpn-01` or `dns-01`.
    pub challenge: ChallengeType,
    /// The DNS provider and propagation settings, with `dns-01`.
    pub dns: Option<DnsSettings>,
    /// How often maintenance checks for renewals.
    pub renew_check: Duration,
    /// EAB credentials for the ACME issuer (`CERTAUTO_EAB_KID` + `CERTAUTO_EAB_HMAC`).
    pub eab: Option<ExternalAccountKey>,
    /// The ACME certificate profile to order (`CERTAUTO_PROFILE`).
    pub profile: Option<String>,
    /// On-demand TLS for the names `CERTAUTO_ON_DEMAND` allows.
    pub on_demand: Option<OnDemandConfig>,
    /// The admin listener's address (`CERTAUTO_ADMIN_ADDR`: `GET /metrics`
    /// and `GET /status` in the examples); `None`: no admin listener. Never
    /// the port of [`http_addr`](Self::http_addr) or
    /// [`https_addr`](Self::https_addr).
    pub admin_addr: Option<SocketAddr>,
}

/// What [`EnvSettings::build`] wires together.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EnvSetup {
    /// The config, with the ACME issuer (or none: the local CA).
    pub config: Config,
    /// The HTTP-01 tokens to answer on the HTTP port (e.g. with `AcmeLayer`).
    pub tokens: ChallengeTokens,
}

/// Parses `CERTAUTO_DIRECTORY`: comma-separated http(s) URLs, in order,
/// without duplicates (empty entries between commas are ignored).
fn parse_directories(list: &str) -> Result<Vec<String>, EnvError> {
    const VAR: &str = "CERTAUTO_DIRECTORY";
    let mut directories: Vec<String> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let scheme_ok = entry.starts_with("https://") || entry.starts_with("http://");
        if !scheme_ok || entry.contains(char::is_whitespace) {
            return Err(bad(VAR, format!("{entry:?} is not an http(s) URL")));
        }
        if directories.iter().any(|d| d == entry) {
            return Err(bad(VAR, format!("{entry:?} is listed twice")));
        }
        directories.push(entry.to_owned());
    }
    if directories.is_empty() {
        return Err(bad(VAR, "no directory URL given"));
    }
    Ok(directories)
}

/// `CERTAUTO_HTTP_ADDR`'s default.
pub(crate) const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// `CERTAUTO_HTTPS_ADDR`'s default.
pub(crate) const DEFAULT_HTTPS_ADDR: &str = "127.0.0.1:8443";

/// Parses a duration such as `500ms`, `2s`, `10m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

impl EnvSettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (for tests and other sources).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let domains = match var("CERTAUTO_DOMAINS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|d| Identifier::parse(d).map_err(|e| bad("CERTAUTO_DOMAINS", e.to_string())))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![
                Identifier::parse("localhost")
                    .map_err(|e| bad("CERTAUTO_DOMAINS", e.to_string()))?,
            ],
        };
        if domains.is_empty() {
            return Err(bad("CERTAUTO_DOMAINS", "no names given"));
        }
        let directories = match var("CERTAUTO_DIRECTORY") {
            Some(list) => parse_directories(&list)?,
            None => Vec::new(),
        };
        let ca_roots = match var("CERTAUTO_CA_ROOTS") {
            Some(path) => {
                let pem = std::fs::read(&path)
                    .map_err(|e| bad("CERTAUTO_CA_ROOTS", format!("{path}: {e}")))?;
                crate::acme::http::parse_pem_roots(&pem)
                    .map_err(|e| bad("CERTAUTO_CA_ROOTS", format!("{path}: {e}")))?
            }
            None => Vec::new(),
        };
        let storage = storage::from_vars(&var)?;
        let addr = |k: &'static str, default: &str| -> Result<SocketAddr, EnvError> {
            var(k)
                .unwrap_or_else(|| default.to_owned())
                .parse()
                .map_err(|_| bad(k, "must be an address such as 0.0.0.0:443"))
        };
        let challenge = match var("CERTAUTO_CHALLENGE").as_deref() {
            None | Some("http-01") => ChallengeType::Http01,
            Some("tls-alpn-01") => ChallengeType::TlsAlpn01,
            Some("dns-01") => ChallengeType::Dns01,
            Some(other) => {
                return Err(bad(
                    "CERTAUTO_CHALLENGE",
                    format!("{other:?}: expected http-01, tls-alpn-01 or dns-01"),
                ));
            }
        };
        let dns = match challenge {
            ChallengeType::Dns01 => Some(DnsSettings::from_vars(&var)?),
            _ => None,
        };
        if challenge != ChallengeType::Dns01
            && let Some(wild) = domains.iter().find(|d| d.is_wildcard())
        {
            return Err(bad(
                "CERTAUTO_DOMAINS",
                format!("{wild} is a wildcard: wildcards need CERTAUTO_CHALLENGE=dns-01"),
            ));
        }
        let renew_check = match var("CERTAUTO_RENEW_CHECK") {
            Some(v) => parse_duration(&v).ok_or_else(|| {
                bad(
                    "CERTAUTO_RENEW_CHECK",
                    format!("{v:?}: expected e.g. 2s, 10m, 1h"),
                )
            })?,
            None => crate::config::DEFAULT_RENEW_INTERVAL,
        };
        let eab = match (var("CERTAUTO_EAB_KID"), var("CERTAUTO_EAB_HMAC")) {
            (None, None) => None,
            (Some(kid), Some(hmac)) => Some(ExternalAccountKey::new(kid, &hmac).map_err(|_| {
                bad(
                    "CERTAUTO_EAB_HMAC",
                    "not a base64url or base64 MAC key (as the CA gave it)",
                )
            })?),
            (Some(_), None) => {
                return Err(bad(
                    "CERTAUTO_EAB_HMAC",
                    "unset, but CERTAUTO_EAB_KID is set: give both or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "CERTAUTO_EAB_KID",
                    "unset, but CERTAUTO_EAB_HMAC is set: give both or neither",
                ));
            }
        };
        let profile = var("CERTAUTO_PROFILE");
        if let Some(p) = &profile
            && !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad(
                "CERTAUTO_PROFILE",
                format!("{p:?}: a profile name such as shortlived"),
            ));
        }
        let on_demand = match var("CERTAUTO_ON_DEMAND") {
            Some(list) => {
                let names: Vec<&str> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect();
                if names.is_empty() {
                    return Err(bad("CERTAUTO_ON_DEMAND", "no names given"));
                }
                Some(
                    OnDemandConfig::new()
                        .host_allowlist(names)
                        .map_err(|e| bad("CERTAUTO_ON_DEMAND", e.to_string()))?,
                )
            }
            None => None,
        };
        let http_addr = addr("CERTAUTO_HTTP_ADDR", DEFAULT_HTTP_ADDR)?;
        let https_addr = addr("CERTAUTO_HTTPS_ADDR", DEFAULT_HTTPS_ADDR)?;
        let admin_addr = match var("CERTAUTO_ADMIN_ADDR") {
            None => None,
            Some(v) => Some(admin_addr(&v, http_addr, https_addr)?),
        };
        Ok(Self {
            domains,
            directories,
            ca_roots,
            email: var("CERTAUTO_EMAIL"),
            storage,
            http_addr,
            https_addr,
            admin_addr,
            challenge,
            dns,
            renew_check,
            eab,
            profile,
            on_demand,
        })
    }

    /// Opens the storage ([`StorageSettings::open`]: a Redis server that
    /// cannot be reached is an error naming `CERTAUTO_STORAGE`) and builds
    /// the config on it ([`build_on`](Self::build_on)).
    pub async fn build(&self) -> Result<EnvSetup, EnvError> {
        let storage = self.storage.open().await?;
        Ok(self.build_on(storage))
    }

    /// Builds the config on `storage`: one ACME issuer per directory, in
    /// order (each with the chosen challenge answered on the application's
    /// own ports, its state shared through the storage by a
    /// [`DistributedSolver`](crate::DistributedSolver), so instances sharing
    /// `CERTAUTO_STORAGE` answer each other's challenges), the local CA when
    /// none is set.
    pub fn build_on(&self, storage: Arc<dyn Storage>) -> EnvSetup {
        let tokens = ChallengeTokens::new().with_storage(storage.clone());
        let tls_alpn = TlsAlpnChallenges::new();
        let mut builder = Config::builder()
            .storage(storage.clone())
            .tls_alpn_challenges(tls_alpn.clone())
            .renew_check_interval(self.renew_check);
        for directory in &self.directories {
            let mut issuer = AcmeIssuer::builder()
                .ca(directory)
                .agreed(true)
                .trust_roots(self.ca_roots.iter().cloned())
                .storage(storage.clone());
            if let Some(email) = &self.email {
                issuer = issuer.email(email);
            }
            if let Some(eab) = &self.eab {
                issuer = issuer.external_account(eab.clone());
            }
            if let Some(profile) = &self.profile {
                issuer = issuer.profile(profile);
            }
            issuer = match (&self.challenge, &self.dns) {
                (ChallengeType::TlsAlpn01, _) => {
                    issuer.tls_alpn01_solver(TlsAlpn01Solver::inline(tls_alpn.clone()))
                }
                (ChallengeType::Dns01, Some(dns)) => issuer.dns01_solver(dns.solver()),
                _ => issuer.http01_solver(Http01Solver::without_listener(tokens.clone())),
            };
            builder = builder.acme(issuer);
        }
        if let Some(on_demand) = &self.on_demand {
            builder = builder.on_demand(on_demand.clone());
        }
        EnvSetup {
            config: builder.build(),
            tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<EnvSettings, EnvError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("CERTAUTO_STORAGE".to_owned(), "/tmp/x".to_owned())])
            .collect();
        EnvSettings::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_values() {
        let s = from(&[]).unwrap();
        assert_eq!(s.domains.len(), 1);
        assert_eq!(s.domains[0].as_str(), "localhost");
        assert!(s.directories.is_empty());
        assert_eq!(s.http_addr.port(), 8080);
        assert_eq!(s.renew_check, Duration::from_secs(600));
        let s = from(&[
            ("CERTAUTO_DOMAINS", "a.test, B.test"),
            ("CERTAUTO_CHALLENGE", "tls-alpn-01"),
            ("CERTAUTO_RENEW_CHECK", "2s"),
            ("CERTAUTO_HTTPS_ADDR", "[::1]:9443"),
        ])
        .unwrap();
        assert_eq!(s.domains[1].as_str(), "b.test");
        assert_eq!(s.challenge, ChallengeType::TlsAlpn01);
        assert_eq!(s.renew_check, Duration::from_secs(2));
        assert_eq!(s.https_addr.port(), 9443);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("CERTAUTO_DOMAINS", "a..b"),
            ("CERTAUTO_DIRECTORY", "ftp://x"),
            ("CERTAUTO_HTTP_ADDR", "nope"),
            ("CERTAUTO_CHALLENGE", "dns-02"),
            ("CERTAUTO_RENEW_CHECK", "soon"),
            ("CERTAUTO_CA_ROOTS", "/nonexistent/roots.pem"),
            ("CERTAUTO_PROFILE", "short lived"),
            ("CERTAUTO_ON_DEMAND", "a.test, *.*.b.test"),
            ("CERTAUTO_ON_DEMAND", " , "),
        ] {
            let err = from(&[(k, v)]).unwrap_err();
            assert_eq!(err.var, k);
            assert!(err.to_string().starts_with(k));
        }
    }

    #[test]
    fn admin_listener() {
        assert_eq!(from(&[]).unwrap().admin_addr, None);
        let s = from(&[("CERTAUTO_ADMIN_ADDR", "127.0.0.1:9090")]).unwrap();
        assert_eq!(s.admin_addr, Some("127.0.0.1:9090".parse().unwrap()));
        for (pairs, wanted) in [
            (
                vec![("CERTAUTO_ADMIN_ADDR", "localhost")],
                "not a socket address",
            ),
            (
                vec![("CERTAUTO_ADMIN_ADDR", "127.0.0.1:0")],
                "must be given",
            ),
            (
                vec![("CERTAUTO_ADMIN_ADDR", "127.0.0.1:8443")],
                "CERTAUTO_HTTPS_ADDR's",
            ),
            (
                vec![
                    ("CERTAUTO_HTTP_ADDR", "0.0.0.0:80"),
                    ("CERTAUTO_ADMIN_ADDR", "127.0.0.1:80"),
                ],
                "CERTAUTO_HTTP_ADDR's",
            ),
        ] {
            let err = from(&pairs).unwrap_err();
            assert_eq!(err.var, "CERTAUTO_ADMIN_ADDR", "{err}");
            assert!(err.to_string().contains(wanted), "{err}");
        }
    }

    #[test]
    fn on_demand_allowlist() {
        assert!(from(&[]).unwrap().on_demand.is_none());
        let s = from(&[("CERTAUTO_ON_DEMAND", "A.test, *.shop.test")]).unwrap();
        let debug = format!("{:?}", s.on_demand.unwrap());
        assert!(debug.contains("allowlist: Some(2)"), "{debug}");
    }

    #[test]
    fn directory_lists() {
        let s = from(&[(
            "CERTAUTO_DIRECTORY",
            " https://a.example/dir ,http://127.0.0.1:14000/dir,",
        )])
        .unwrap();
        assert_eq!(
            s.directories,
            ["https://a.example/dir", "http://127.0.0.1:14000/dir"]
        );
        let one = from(&[("CERTAUTO_DIRECTORY", "https://a.example/dir")]).unwrap();
        assert_eq!(one.directories, ["https://a.example/dir"]);
        for bad in [
            "https://a.example/dir,ftp://b",
            "https://a.example/dir, https://a.example/dir",
            " , ",
            "https://a.example/ dir",
            "a.example",
        ] {
            let err = from(&[("CERTAUTO_DIRECTORY", bad)]).unwrap_err();
            assert_eq!(err.var, "CERTAUTO_DIRECTORY", "{bad}");
        }
    }

    /// Each directory becomes one issuer, in order.
    #[test]
    fn one_issuer_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = from(&[(
            "CERTAUTO_DIRECTORY",
            "https://a.example/dir,https://b.example/dir",
        )])
        .unwrap();
        s.storage = StorageSettings::Folder(dir.path().to_owned());
        let setup = s.build_on(Arc::new(crate::storage::FileStorage::new(dir.path())));
        let keys: Vec<String> = setup
            .config
            .issuers()
            .iter()
            .map(|i| i.issuer_key())
            .collect();
        assert_eq!(
            keys,
            [
                crate::storage::keys::issuer_key_from_url("https://a.example/dir"),
                crate::storage::keys::issuer_key_from_url("https://b.example/dir"),
            ]
        );
    }

    #[test]
    fn eab_and_profile() {
        let s = from(&[]).unwrap();
        assert!(s.eab.is_none() && s.profile.is_none());
        // Both, the MAC key in base64url or standard base64, padded or not.
        for hmac in [
            "-_-_AQ",
            "+/+/AQ==",
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
        ] {
            let s = from(&[
                ("CERTAUTO_EAB_KID", "kid-1"),
                ("CERTAUTO_EAB_HMAC", hmac),
                ("CERTAUTO_PROFILE", "shortlived"),
                ("CERTAUTO_DIRECTORY", "https://ca.test/dir"),
            ])
            .unwrap();
            assert_eq!(s.eab.as_ref().unwrap().kid(), "kid-1");
            assert_eq!(s.profile.as_deref(), Some("shortlived"));
        }
        // A bad MAC key names its variable and does not show the value.
        let err = from(&[
            ("CERTAUTO_EAB_KID", "kid-1"),
            ("CERTAUTO_EAB_HMAC", "not*base64"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "CERTAUTO_EAB_HMAC");
        assert!(!err.to_string().contains("not*base64"));
        // One without the other names the missing one.
        let err = from(&[("CERTAUTO_EAB_KID", "kid-1")]).unwrap_err();
        assert_eq!(err.var, "CERTAUTO_EAB_HMAC");
        let err = from(&[("CERTAUTO_EAB_HMAC", "-_-_AQ")]).unwrap_err();
        assert_eq!(err.var, "CERTAUTO_EAB_KID");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("1d"), None);
    }
}
