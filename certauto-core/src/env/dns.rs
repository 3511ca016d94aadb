//! The `CERTAUTO_DNS_*` variables: which DNS provider DNS-01 uses, its
//! settings, and how propagation is checked.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::{EnvError, bad, parse_duration};
use crate::challenge::dns01::http::Secret;

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

/// A DNS provider and its settings, read from `CERTAUTO_DNS_*`. Its `Debug`
/// output never shows a credential.
#[derive(Clone)]
#[non_exhaustive]
pub struct DnsSettings {
    pub(super) provider: ProviderSettings,
    /// `CERTAUTO_DNS_RESOLVERS`: check propagation against these instead of
    /// the authoritative servers.
    pub resolvers: Vec<SocketAddr>,
    /// `CERTAUTO_DNS_PROPAGATION_TIMEOUT`.
    pub propagation_timeout: Option<Duration>,
}

#[derive(Clone)]
pub(super) enum ProviderSettings {
    Rfc2136 {
        server: SocketAddr,
        tsig: Option<(String, Secret, String)>,
        zone: Option<String>,
    },
    PowerDns {
        api_url: String,
        api_key: Secret,
        server_id: String,
    },
    Cloudflare {
        token: Secret,
        zone_id: Option<String>,
        api_url: Option<String>,
    },
    Route53 {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
        zone_id: Option<String>,
        api_url: Option<String>,
    },
    DigitalOcean {
        token: Secret,
        api_url: Option<String>,
    },
    Hetzner {
        token: Secret,
        api_url: Option<String>,
    },
    Desec {
        token: Secret,
        api_url: Option<String>,
    },
    AcmeDns {
        api_url: String,
        accounts_file: PathBuf,
    },
    Exec {
        command: PathBuf,
    },
    ChallTestSrv {
        api_url: String,
    },
}

impl ProviderSettings {
    fn name(&self) -> &'static str {
        match self {
            ProviderSettings::Rfc2136 { .. } => "rfc2136",
            ProviderSettings::PowerDns { .. } => "powerdns",
            ProviderSettings::Cloudflare { .. } => "cloudflare",
            ProviderSettings::Route53 { .. } => "route53",
            ProviderSettings::DigitalOcean { .. } => "digitalocean",
            ProviderSettings::Hetzner { .. } => "hetzner",
            ProviderSettings::Desec { .. } => "desec",
            ProviderSettings::AcmeDns { .. } => "acme-dns",
            ProviderSettings::Exec { .. } => "exec",
            ProviderSettings::ChallTestSrv { .. } => "challtestsrv",
        }
    }
}

impl fmt::Debug for DnsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSettings")
            .field("provider", &self.provider.name())
            .field("resolvers", &self.resolvers)
            .field("propagation_timeout", &self.propagation_timeout)
            .finish_non_exhaustive()
    }
}

impl DnsSettings {
    /// The provider's name, as `CERTAUTO_DNS_PROVIDER` spells it.
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
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
        let secret = |k: &'static str| required(k).map(Secret::new);
        let url = |k: &'static str, value: String| -> Result<String, EnvError> {
            if value.starts_with("https://") || value.starts_with("http://") {
                Ok(value)
            } else {
                Err(bad(k, "must be an http(s) URL"))
            }
        };
        let optional_url = |k: &'static str| var(k).map(|v| url(k, v)).transpose();
        let provider = match name.as_str() {
            "rfc2136" => {
                let server = required("CERTAUTO_DNS_SERVER")?;
                let server = resolve_host_port("CERTAUTO_DNS_SERVER", &server)?;
                let tsig = match (
                    var("CERTAUTO_DNS_TSIG_NAME"),
                    var("CERTAUTO_DNS_TSIG_SECRET"),
                ) {
                    (Some(key), Some(secret)) => {
                        let alg = var("CERTAUTO_DNS_TSIG_ALG")
                            .unwrap_or_else(|| "hmac-sha256".to_owned())
                            .to_ascii_lowercase();
                        if !matches!(alg.as_str(), "hmac-sha256" | "hmac-sha384" | "hmac-sha512") {
                            return Err(bad(
                                "CERTAUTO_DNS_TSIG_ALG",
                                format!(
                                    "{alg:?}: expected hmac-sha256, hmac-sha384 or hmac-sha512"
                                ),
                            ));
                        }
                        use base64::Engine as _;
                        if base64::engine::general_purpose::STANDARD
                            .decode(secret.as_bytes())
                            .map_or(true, |k| k.is_empty())
                        {
                            return Err(bad(
                                "CERTAUTO_DNS_TSIG_SECRET",
                                "must be non-empty base64",
                            ));
                        }
                        Some((key, Secret::new(secret), alg))
                    }
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(bad(
                            "CERTAUTO_DNS_TSIG_SECRET",
                            "required with CERTAUTO_DNS_TSIG_NAME",
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(bad(
                            "CERTAUTO_DNS_TSIG_NAME",
                            "required with CERTAUTO_DNS_TSIG_SECRET",
                        ));
                    }
                };
                ProviderSettings::Rfc2136 {
                    server,
                    tsig,
                    zone: var("CERTAUTO_DNS_ZONE"),
                }
            }
            "powerdns" => ProviderSettings::PowerDns {
                api_url: url("CERTAUTO_DNS_API_URL", required("CERTAUTO_DNS_API_URL")?)?,
                api_key: secret("CERTAUTO_DNS_API_KEY")?,
                server_id: var("CERTAUTO_DNS_SERVER_ID").unwrap_or_else(|| "localhost".to_owned()),
            },
            "cloudflare" => ProviderSettings::Cloudflare {
                token: secret("CERTAUTO_DNS_API_TOKEN")?,
                zone_id: var("CERTAUTO_DNS_ZONE_ID"),
                api_url: optional_url("CERTAUTO_DNS_API_URL")?,
            },
            "route53" => ProviderSettings::Route53 {
                access_key_id: required("CERTAUTO_DNS_ACCESS_KEY_ID")?,
                secret_access_key: secret("CERTAUTO_DNS_SECRET_ACCESS_KEY")?,
                session_token: var("CERTAUTO_DNS_SESSION_TOKEN").map(Secret::new),
                zone_id: var("CERTAUTO_DNS_ZONE_ID"),
                api_url: optional_url("CERTAUTO_DNS_API_URL")?,
            },
            "digitalocean" => ProviderSettings::DigitalOcean {
                token: secret("CERTAUTO_DNS_API_TOKEN")?,
                api_url: optional_url("CERTAUTO_DNS_API_URL")?,
            },
            "hetzner" => ProviderSettings::Hetzner {
                token: secret("CERTAUTO_DNS_API_TOKEN")?,
                api_url: optional_url("CERTAUTO_DNS_API_URL")?,
            },
            "desec" => ProviderSettings::Desec {
                token: secret("CERTAUTO_DNS_API_TOKEN")?,
                api_url: optional_url("CERTAUTO_DNS_API_URL")?,
            },
            "acme-dns" => {
                let accounts_file = PathBuf::from(required("CERTAUTO_DNS_ACCOUNTS_FILE")?);
                if !accounts_file.is_file() {
                    return Err(bad(
                        "CERTAUTO_DNS_ACCOUNTS_FILE",
                        format!("{}: no such file", accounts_file.display()),
                    ));
                }
                ProviderSettings::AcmeDns {
                    api_url: url("CERTAUTO_DNS_API_URL", required("CERTAUTO_DNS_API_URL")?)?,
                    accounts_file,
                }
            }
            "exec" => {
                let command = PathBuf::from(required("CERTAUTO_DNS_COMMAND")?);
                if !command.is_file() {
                    return Err(bad(
                        "CERTAUTO_DNS_COMMAND",
                        format!("{}: no such program", command.display()),
                    ));
                }
                ProviderSettings::Exec { command }
            }
            "challtestsrv" => ProviderSettings::ChallTestSrv {
                api_url: url("CERTAUTO_DNS_API_URL", required("CERTAUTO_DNS_API_URL")?)?,
            },
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
        Ok(Self {
            provider,
            resolvers,
            propagation_timeout,
        })
    }
}

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
