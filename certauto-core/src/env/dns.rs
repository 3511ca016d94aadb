//! The `CERTAUTO_DNS_*` variables: which DNS provider DNS-01 uses, its
//! settings, and how propagation is checked.

use std::ffi::OsStr;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use super::{EnvError, bad, parse_duration};
use crate::challenge::dns01::rfc2136::Rfc2136Setting;
use crate::challenge::{Dns01Solver, DnsError, DnsProvider};
use crate::dns::{
    AcmeDns, ChallTestSrv, Cloudflare, Desec, DigitalOcean, Exec, Hetzner, PowerDns, Rfc2136,
    Route53, TsigAlgorithm,
};

/// The provider names `CERTAUTO_DNS_PROVIDER` accepts.
pub const DNS_PROVIDERS: [&str; 10] = [
    "rfc2136",
    "powerdns",
    "cloudflare",
    "route53",
    "digitalocean",
    "hetzner",
    "desec",
    "acme-dns",
    "exec",
    "challtestsrv",
];

/// The DNS-01 solver read from `CERTAUTO_DNS_*`: its provider built (so a
/// bad setting stops the program at start, naming the variable) and its
/// propagation settings. Its `Debug` output never shows a credential.
#[derive(Clone)]
#[non_exhaustive]
pub struct DnsSettings {
    provider: &'static str,
    solver: Dns01Solver,
    /// `CERTAUTO_DNS_RESOLVERS`: check propagation against these instead of
    /// the authoritative servers.
    pub resolvers: Vec<SocketAddr>,
    /// `CERTAUTO_DNS_PROPAGATION_TIMEOUT`.
    pub propagation_timeout: Option<Duration>,
}

impl fmt::Debug for DnsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSettings")
            .field("provider", &self.provider)
            .field("resolvers", &self.resolvers)
            .field("propagation_timeout", &self.propagation_timeout)
            .finish_non_exhaustive()
    }
}

impl DnsSettings {
    /// The provider's name, as `CERTAUTO_DNS_PROVIDER` spells it.
    pub fn provider_name(&self) -> &'static str {
        self.provider
    }

    /// The DNS-01 solver (cheap to clone: solvers share their state).
    pub fn solver(&self) -> Dns01Solver {
        self.solver.clone()
    }

    /// Reads the variables through `var` (values trimmed, empty as unset).
    pub(super) fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        const PROVIDER: &str = "CERTAUTO_DNS_PROVIDER";
        let Some(name) = var(PROVIDER) else {
            return Err(bad(
                PROVIDER,
                format!(
                    "required with CERTAUTO_CHALLENGE=dns-01; one of {}",
                    DNS_PROVIDERS.join(", ")
                ),
            ));
        };
        let required = |k: &'static str| {
            var(k).ok_or_else(|| bad(k, format!("required with {PROVIDER}={name}")))
        };
        let url = |k: &'static str, value: String| -> Result<String, EnvError> {
            if value.starts_with("https://") || value.starts_with("http://") {
                Ok(value)
            } else {
                Err(bad(k, "must be an http(s) URL"))
            }
        };
        let optional_url = |k: &'static str| var(k).map(|v| url(k, v)).transpose();
        // A provider refusing its settings names the variable that holds them:
        // the API URL when one is given (a bad URL is the likely cause), else
        // the credential.
        let blame = |credential: &'static str| {
            if var("CERTAUTO_DNS_API_URL").is_some() {
                "CERTAUTO_DNS_API_URL"
            } else {
                credential
            }
        };
        let provider: Arc<dyn DnsProvider> = match name.as_str() {
            "rfc2136" => {
                let server = required("CERTAUTO_DNS_SERVER")?;
                let server = resolve_host_port("CERTAUTO_DNS_SERVER", &server)?;
                let key = required("CERTAUTO_DNS_TSIG_NAME")?;
                let secret = required("CERTAUTO_DNS_TSIG_SECRET")?;
                let alg = var("CERTAUTO_DNS_TSIG_ALG").unwrap_or_else(|| "hmac-sha256".to_owned());
                let alg: TsigAlgorithm = alg.parse().map_err(|_| {
                    bad(
                        "CERTAUTO_DNS_TSIG_ALG",
                        format!("{alg:?}: expected hmac-sha256, hmac-sha384 or hmac-sha512"),
                    )
                })?;
                let mut builder = Rfc2136::builder(server).tsig(key, secret, alg);
                if let Some(zone) = var("CERTAUTO_DNS_ZONE") {
                    builder = builder.zone(zone);
                }
                // The provider checks its settings (the secret with its own
                // base64 decoder) and says which one it refuses.
                match builder.build_naming_setting() {
                    Ok(provider) => Arc::new(provider),
                    Err((setting, e)) => {
                        let var = match setting {
                            Rfc2136Setting::TsigKeyName => "CERTAUTO_DNS_TSIG_NAME",
                            Rfc2136Setting::TsigSecret => "CERTAUTO_DNS_TSIG_SECRET",
                            Rfc2136Setting::Zone => "CERTAUTO_DNS_ZONE",
                        };
                        return Err(bad(var, e.to_string()));
                    }
                }
            }
            "powerdns" => {
                let url = url("CERTAUTO_DNS_API_URL", required("CERTAUTO_DNS_API_URL")?)?;
                let mut builder = PowerDns::builder(url, required("CERTAUTO_DNS_API_KEY")?);
                if let Some(id) = var("CERTAUTO_DNS_SERVER_ID") {
                    builder = builder.server_id(id);
                }
                built("CERTAUTO_DNS_API_URL", builder.build())?
            }
            "cloudflare" => {
                let mut builder = Cloudflare::builder(required("CERTAUTO_DNS_API_TOKEN")?);
                if let Some(id) = var("CERTAUTO_DNS_ZONE_ID") {
                    builder = builder.zone_id(id);
                }
                if let Some(url) = optional_url("CERTAUTO_DNS_API_URL")? {
                    builder = builder.api_url(url);
                }
                built(blame("CERTAUTO_DNS_API_TOKEN"), builder.build())?
            }
            "route53" => {
                let mut builder = Route53::builder(
                    required("CERTAUTO_DNS_ACCESS_KEY_ID")?,
                    required("CERTAUTO_DNS_SECRET_ACCESS_KEY")?,
                );
                if let Some(token) = var("CERTAUTO_DNS_SESSION_TOKEN") {
                    builder = builder.session_token(token);
                }
                if let Some(id) = var("CERTAUTO_DNS_ZONE_ID") {
                    builder = builder.hosted_zone_id(id);
                }
                if let Some(url) = optional_url("CERTAUTO_DNS_API_URL")? {
                    builder = builder.api_url(url);
                }
                built(blame("CERTAUTO_DNS_ACCESS_KEY_ID"), builder.build())?
            }
            "digitalocean" => {
                let mut builder = DigitalOcean::builder(required("CERTAUTO_DNS_API_TOKEN")?);
                if let Some(url) = optional_url("CERTAUTO_DNS_API_URL")? {
                    builder = builder.api_url(url);
                }
                built(blame("CERTAUTO_DNS_API_TOKEN"), builder.build())?
            }
            "hetzner" => {
                let mut builder = Hetzner::builder(required("CERTAUTO_DNS_API_TOKEN")?);
                if let Some(url) = optional_url("CERTAUTO_DNS_API_URL")? {
                    builder = builder.api_url(url);
                }
                built(blame("CERTAUTO_DNS_API_TOKEN"), builder.build())?
            }
            "desec" => {
                let mut builder = Desec::builder(required("CERTAUTO_DNS_API_TOKEN")?);
                if let Some(url) = optional_url("CERTAUTO_DNS_API_URL")? {
                    builder = builder.api_url(url);
                }
                built(blame("CERTAUTO_DNS_API_TOKEN"), builder.build())?
            }
            "acme-dns" => {
                let accounts_file = PathBuf::from(required("CERTAUTO_DNS_ACCOUNTS_FILE")?);
                if !accounts_file.is_file() {
                    return Err(bad(
                        "CERTAUTO_DNS_ACCOUNTS_FILE",
                        format!("{}: no such file", accounts_file.display()),
                    ));
                }
                let url = url("CERTAUTO_DNS_API_URL", required("CERTAUTO_DNS_API_URL")?)?;
                built(
                    "CERTAUTO_DNS_ACCOUNTS_FILE",
                    AcmeDns::builder(url).accounts_file(&accounts_file).build(),
                )?
            }
            "exec" => {
                let command = PathBuf::from(required("CERTAUTO_DNS_COMMAND")?);
                if !program_exists(&command, std::env::var_os("PATH").as_deref()) {
                    return Err(bad(
                        "CERTAUTO_DNS_COMMAND",
                        format!(
                            "{}: no such program (a path to a file, or a name found in PATH)",
                            command.display()
                        ),
                    ));
                }
                Arc::new(Exec::new(command))
            }
            "challtestsrv" => {
                let url = url("CERTAUTO_DNS_API_URL", required("CERTAUTO_DNS_API_URL")?)?;
                built("CERTAUTO_DNS_API_URL", ChallTestSrv::builder(url).build())?
            }
            other => {
                return Err(bad(
                    PROVIDER,
                    format!("{other:?}: expected one of {}", DNS_PROVIDERS.join(", ")),
                ));
            }
        };
        let resolvers = match var("CERTAUTO_DNS_RESOLVERS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| resolve_host_port("CERTAUTO_DNS_RESOLVERS", s))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let propagation_timeout = match var("CERTAUTO_DNS_PROPAGATION_TIMEOUT") {
            Some(v) => Some(parse_duration(&v).ok_or_else(|| {
                bad(
                    "CERTAUTO_DNS_PROPAGATION_TIMEOUT",
                    format!("{v:?}: expected e.g. 30s, 2m"),
                )
            })?),
            None => None,
        };
        let mut solver = Dns01Solver::builder(provider);
        if !resolvers.is_empty() {
            solver = solver.resolvers(resolvers.clone());
        }
        if let Some(timeout) = propagation_timeout {
            solver = solver.propagation_timeout(timeout);
        }
        Ok(Self {
            provider: DNS_PROVIDERS
                .into_iter()
                .find(|p| *p == name)
                .unwrap_or("unknown"),
            solver: solver.build(),
            resolvers,
            propagation_timeout,
        })
    }
}

/// The provider `result` built, or an error naming `var`.
fn built<P: DnsProvider + 'static>(
    var: &'static str,
    result: Result<P, DnsError>,
) -> Result<Arc<dyn DnsProvider>, EnvError> {
    match result {
        Ok(provider) => Ok(Arc::new(provider)),
        Err(e) => Err(bad(var, e.to_string())),
    }
}

/// Whether `program` can be run as [`Exec`] runs it: a path (anything with
/// a `/`) to an existing file, or a bare name found in one of the `PATH`
/// folders (`path`), as the operating system looks it up.
fn program_exists(program: &Path, path: Option<&OsStr>) -> bool {
    let bare = program.components().count() == 1
        && !program.as_os_str().as_encoded_bytes().contains(&b'/');
    if !bare {
        return program.is_file();
    }
    path.map(std::env::split_paths)
        .into_iter()
        .flatten()
        // An empty entry means the current folder, as for the shell.
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            }
        })
        .take(MAX_PATH_ENTRIES)
        .any(|dir| dir.join(program).is_file())
}

/// The most `PATH` folders looked into.
const MAX_PATH_ENTRIES: usize = 256;

/// `host:port` (a name is resolved now, once) as a socket address.
fn resolve_host_port(var: &'static str, value: &str) -> Result<SocketAddr, EnvError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| bad(var, format!("{value:?}: expected host:port")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(var, format!("{value:?}: bad port")))?;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(var, format!("{value:?}: {e}")))?
        .next()
        .ok_or_else(|| bad(var, format!("{value:?}: no address")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<DnsSettings, EnvError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        DnsSettings::from_vars(&|k: &str| vars.get(k).cloned())
    }

    const SECRET: &str = "c2VjcmV0LXRzaWcta2V5LWZvci10ZXN0cw==";

    #[test]
    fn a_command_is_a_path_or_a_name_in_path() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("dns-hook");
        std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        let exists = |program: &str, path: Option<&OsStr>| program_exists(Path::new(program), path);
        assert!(exists("dns-hook", Some(&path)));
        assert!(exists(hook.to_str().unwrap(), None));
        assert!(!exists("dns-hook", None));
        assert!(!exists("other-hook", Some(&path)));
        // A name with a folder is a path, never looked up in PATH.
        assert!(!exists("bin/dns-hook", Some(&path)));
        assert!(!exists(dir.path().to_str().unwrap(), Some(&path)));
        assert!(!exists("", Some(&path)));
    }

    #[test]
    fn every_provider_builds_from_its_variables() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = dir.path().join("accounts.json");
        std::fs::write(
            &accounts,
            r#"{"example.com":{"username":"u","password":"p","fulldomain":"x.auth.example.org","subdomain":"x","allowfrom":[]}}"#,
        )
        .unwrap();
        let program = dir.path().join("hook.sh");
        std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        let accounts = accounts.to_str().unwrap();
        let program = program.to_str().unwrap();
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![
                ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                ("CERTAUTO_DNS_SERVER", "127.0.0.1:5353"),
                ("CERTAUTO_DNS_TSIG_NAME", "acme-key"),
                ("CERTAUTO_DNS_TSIG_SECRET", SECRET),
                ("CERTAUTO_DNS_TSIG_ALG", "HMAC-SHA512"),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "powerdns"),
                ("CERTAUTO_DNS_API_URL", "http://127.0.0.1:8081"),
                ("CERTAUTO_DNS_API_KEY", "pdns-key"),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "cloudflare"),
                ("CERTAUTO_DNS_API_TOKEN", "cf-token"),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "route53"),
                ("CERTAUTO_DNS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("CERTAUTO_DNS_SECRET_ACCESS_KEY", "aws-secret"),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "digitalocean"),
                ("CERTAUTO_DNS_API_TOKEN", "do-token"),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "hetzner"),
                ("CERTAUTO_DNS_API_TOKEN", "hz-token"),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "desec"),
                ("CERTAUTO_DNS_API_TOKEN", "desec-token"),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "acme-dns"),
                ("CERTAUTO_DNS_API_URL", "https://auth.example.org"),
                ("CERTAUTO_DNS_ACCOUNTS_FILE", accounts),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "exec"),
                ("CERTAUTO_DNS_COMMAND", program),
            ],
            vec![
                ("CERTAUTO_DNS_PROVIDER", "challtestsrv"),
                ("CERTAUTO_DNS_API_URL", "http://127.0.0.1:8055"),
                ("CERTAUTO_DNS_RESOLVERS", "127.0.0.1:8053, [::1]:53"),
                ("CERTAUTO_DNS_PROPAGATION_TIMEOUT", "90s"),
            ],
        ];
        assert_eq!(cases.len(), DNS_PROVIDERS.len());
        for (case, name) in cases.iter().zip(DNS_PROVIDERS) {
            let settings = read(case).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(settings.provider_name(), name);
            // No credential shows, neither in the settings nor in the solver.
            let shown = format!("{settings:?} {:?}", settings.solver());
            for (var, value) in case {
                if !var.ends_with("_ID")
                    && (var.contains("SECRET") || var.contains("TOKEN") || var.contains("KEY"))
                {
                    assert!(!shown.contains(value), "{name}: {var} shown in {shown}");
                }
            }
        }
        // The provider's own decoder reads the secret: padding is optional.
        let unpadded = read(&[
            ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
            ("CERTAUTO_DNS_SERVER", "127.0.0.1:5353"),
            ("CERTAUTO_DNS_TSIG_NAME", "acme-key"),
            ("CERTAUTO_DNS_TSIG_SECRET", SECRET.trim_end_matches('=')),
        ]);
        assert!(unpadded.is_ok(), "{unpadded:?}");
        let last = read(cases.last().unwrap()).unwrap();
        assert_eq!(last.resolvers.len(), 2);
        assert_eq!(last.propagation_timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn bad_or_missing_settings_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "CERTAUTO_DNS_PROVIDER"),
            (
                &[("CERTAUTO_DNS_PROVIDER", "bind")],
                "CERTAUTO_DNS_PROVIDER",
            ),
            (
                &[("CERTAUTO_DNS_PROVIDER", "rfc2136")],
                "CERTAUTO_DNS_SERVER",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                    ("CERTAUTO_DNS_SERVER", "no-port"),
                ],
                "CERTAUTO_DNS_SERVER",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                    ("CERTAUTO_DNS_SERVER", "127.0.0.1:53"),
                    ("CERTAUTO_DNS_TSIG_NAME", "k"),
                    ("CERTAUTO_DNS_TSIG_SECRET", "not base64!"),
                ],
                "CERTAUTO_DNS_TSIG_SECRET",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                    ("CERTAUTO_DNS_SERVER", "127.0.0.1:53"),
                ],
                "CERTAUTO_DNS_TSIG_NAME",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                    ("CERTAUTO_DNS_SERVER", "127.0.0.1:53"),
                    ("CERTAUTO_DNS_TSIG_SECRET", SECRET),
                ],
                "CERTAUTO_DNS_TSIG_NAME",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                    ("CERTAUTO_DNS_SERVER", "127.0.0.1:53"),
                    ("CERTAUTO_DNS_TSIG_NAME", "bad..key"),
                    ("CERTAUTO_DNS_TSIG_SECRET", SECRET),
                ],
                "CERTAUTO_DNS_TSIG_NAME",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                    ("CERTAUTO_DNS_SERVER", "127.0.0.1:53"),
                    ("CERTAUTO_DNS_TSIG_NAME", "k"),
                    ("CERTAUTO_DNS_TSIG_SECRET", SECRET),
                    ("CERTAUTO_DNS_ZONE", "bad..zone"),
                ],
                "CERTAUTO_DNS_ZONE",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                    ("CERTAUTO_DNS_SERVER", "127.0.0.1:53"),
                    ("CERTAUTO_DNS_TSIG_NAME", "k"),
                    ("CERTAUTO_DNS_TSIG_SECRET", SECRET),
                    ("CERTAUTO_DNS_TSIG_ALG", "hmac-md5"),
                ],
                "CERTAUTO_DNS_TSIG_ALG",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
                    ("CERTAUTO_DNS_SERVER", "127.0.0.1:53"),
                    ("CERTAUTO_DNS_TSIG_NAME", "k"),
                ],
                "CERTAUTO_DNS_TSIG_SECRET",
            ),
            (
                &[("CERTAUTO_DNS_PROVIDER", "powerdns")],
                "CERTAUTO_DNS_API_URL",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "powerdns"),
                    ("CERTAUTO_DNS_API_URL", "ftp://x"),
                    ("CERTAUTO_DNS_API_KEY", "k"),
                ],
                "CERTAUTO_DNS_API_URL",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "cloudflare"),
                    ("CERTAUTO_DNS_API_TOKEN", "t"),
                    // Plain HTTP is for loopback stand-ins only.
                    ("CERTAUTO_DNS_API_URL", "http://api.example.com"),
                ],
                "CERTAUTO_DNS_API_URL",
            ),
            (
                &[("CERTAUTO_DNS_PROVIDER", "route53")],
                "CERTAUTO_DNS_ACCESS_KEY_ID",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "acme-dns"),
                    ("CERTAUTO_DNS_API_URL", "https://auth.example.org"),
                    ("CERTAUTO_DNS_ACCOUNTS_FILE", "/nonexistent/accounts.json"),
                ],
                "CERTAUTO_DNS_ACCOUNTS_FILE",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "exec"),
                    ("CERTAUTO_DNS_COMMAND", "/nonexistent/hook"),
                ],
                "CERTAUTO_DNS_COMMAND",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "exec"),
                    ("CERTAUTO_DNS_COMMAND", "certauto-no-such-dns-hook"),
                ],
                "CERTAUTO_DNS_COMMAND",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "challtestsrv"),
                    ("CERTAUTO_DNS_API_URL", "http://127.0.0.1:8055"),
                    ("CERTAUTO_DNS_RESOLVERS", "127.0.0.1"),
                ],
                "CERTAUTO_DNS_RESOLVERS",
            ),
            (
                &[
                    ("CERTAUTO_DNS_PROVIDER", "challtestsrv"),
                    ("CERTAUTO_DNS_API_URL", "http://127.0.0.1:8055"),
                    ("CERTAUTO_DNS_PROPAGATION_TIMEOUT", "soon"),
                ],
                "CERTAUTO_DNS_PROPAGATION_TIMEOUT",
            ),
        ];
        for (pairs, var) in cases {
            let err = read(pairs).unwrap_err();
            assert_eq!(err.var, *var, "{pairs:?}: {err}");
        }
        // A secret refused is not quoted.
        let err = read(&[
            ("CERTAUTO_DNS_PROVIDER", "rfc2136"),
            ("CERTAUTO_DNS_SERVER", "127.0.0.1:53"),
            ("CERTAUTO_DNS_TSIG_NAME", "k"),
            ("CERTAUTO_DNS_TSIG_SECRET", "hunter2 hunter2"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "CERTAUTO_DNS_TSIG_SECRET");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
