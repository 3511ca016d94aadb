//! Where the TXT record goes and when the CA can see it.
//!
//! - [`Lookup::follow_cnames`]: `_acme-challenge.<name>` may be a CNAME to
//!   another zone (the usual way to delegate validation to a zone an API
//!   key may change); the record is written where the chain ends.
//! - [`Lookup::is_visible`]: by default, every authoritative name server of
//!   the record's zone (found with SOA and NS lookups through the bootstrap
//!   resolvers) is asked directly, with recursion off, and all must answer
//!   the value. A recursive resolver would cache the NXDOMAIN it saw before
//!   the record existed (for the zone's negative TTL, often minutes); the
//!   authoritative servers answer what they hold now. With explicit check
//!   resolvers, those are asked instead (split-horizon setups, tests).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};

use futures_util::future::join_all;

use super::query::{QueryError, ask};

/// The longest CNAME chain followed at `_acme-challenge.<name>`.
pub(crate) const MAX_CNAME_HOPS: usize = 8;
/// The most authoritative servers (addresses) asked per check.
const MAX_NAME_SERVERS: usize = 16;
/// The time one DNS exchange may take.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How names are looked up: the resolvers, their port for authoritative
/// servers, and whether checks go to the authoritative servers.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    /// Recursive resolvers for SOA, NS, address and CNAME lookups.
    pub(crate) bootstrap: Vec<SocketAddr>,
    /// When not empty, propagation is checked against these (recursion on)
    /// instead of the authoritative servers.
    pub(crate) check_resolvers: Vec<SocketAddr>,
    /// The port authoritative servers are asked on.
    pub(crate) nameserver_port: u16,
    /// The time one exchange may take.
    pub(crate) query_timeout: Duration,
}

/// The outcome of one propagation check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Visibility {
    /// Every server asked answers the value.
    Visible,
    /// Some do not yet; says which and what they answered.
    Pending(String),
}

/// Why a lookup failed (not: why a record is not there yet).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// No resolver to ask.
    #[error("no DNS resolver configured (none in /etc/resolv.conf; set the bootstrap resolvers)")]
    NoResolvers,
    /// Every resolver failed.
    #[error("looking up {name} {record_type}: {source}")]
    Query {
        name: String,
        record_type: RecordType,
        #[source]
        source: QueryError,
    },
    /// A resolver answered with an error code.
    #[error("looking up {name} {record_type}: {code}")]
    Code {
        name: String,
        record_type: RecordType,
        code: ResponseCode,
    },
    /// The CNAME chain is too long or loops.
    #[error("CNAME chain at {name} longer than {MAX_CNAME_HOPS} or looping")]
    CnameLoop { name: String },
    /// No zone holds the name.
    #[error("no SOA found for {name} or any of its parents")]
    NoZone { name: String },
    /// The zone's name servers could not be found.
    #[error("no usable name server address for zone {zone}")]
    NoNameServers { zone: String },
    /// The name is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    BadName { name: String, reason: String },
}

/// `fqdn` (without the trailing dot) as an absolute DNS name.
pub(crate) fn absolute(fqdn: &str) -> Result<Name, LookupError> {
    let text = format!("{}.", fqdn.trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|e| LookupError::BadName {
        name: fqdn.to_owned(),
        reason: e.to_string(),
    })
}

/// An absolute name as we hand it to providers: lower case, no trailing dot.
pub(crate) fn plain(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

impl Lookup {
    /// Asks the bootstrap resolvers in turn until one answers without a
    /// server failure.
    async fn recursive(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<super::query::Answer, LookupError> {
        if self.bootstrap.is_empty() {
            return Err(LookupError::NoResolvers);
        }
        let mut last = None;
        for server in &self.bootstrap {
            match ask(*server, name, record_type, true, self.query_timeout).await {
                Ok(answer)
                    if matches!(answer.code, ResponseCode::NoError | ResponseCode::NXDomain) =>
                {
                    return Ok(answer);
                }
                Ok(answer) => {
                    last = Some(LookupError::Code {
                        name: name.to_ascii(),
                        record_type,
                        code: answer.code,
                    });
                }
                Err(source) => {
                    last = Some(LookupError::Query {
                        name: name.to_ascii(),
                        record_type,
                        source,
                    });
                }
            }
        }
        Err(last.unwrap_or(LookupError::NoResolvers))
    }

    /// Follows CNAMEs from `fqdn`, at most [`MAX_CNAME_HOPS`], and returns
    /// where the chain ends (`fqdn` itself when it is no alias).
    pub(crate) async fn follow_cnames(&self, fqdn: &str) -> Result<String, LookupError> {
        let mut name = absolute(fqdn)?;
        let mut seen = vec![name.clone()];
        for _ in 0..MAX_CNAME_HOPS {
            let answer = self.recursive(&name, RecordType::CNAME).await?;
            let Some(target) = answer.cname_of(&name) else {
                return Ok(plain(&name));
            };
            tracing::debug!(from = %name, to = %target, "DNS-01: following CNAME");
            if seen.contains(&target) {
                break;
            }
            seen.push(target.clone());
            name = target;
        }
        Err(LookupError::CnameLoop {
            name: fqdn.to_owned(),
        })
    }

    /// The zone holding `name`: the owner of the SOA in the answer (or the
    /// authority section of a negative answer), walking up the labels.
    pub(crate) async fn find_zone(&self, name: &Name) -> Result<Name, LookupError> {
        let mut candidate = name.clone();
        for _ in 0..=name.num_labels() {
            let answer = self.recursive(&candidate, RecordType::SOA).await?;
            if let Some(zone) = answer.soa_owner() {
                return Ok(zone);
            }
            if candidate.is_root() {
                break;
            }
            candidate = candidate.base_name();
        }
        Err(LookupError::NoZone {
            name: name.to_ascii(),
        })
    }

    /// The addresses of the zone's authoritative servers.
    async fn name_servers(&self, zone: &Name) -> Result<Vec<SocketAddr>, LookupError> {
        let answer = self.recursive(zone, RecordType::NS).await?;
        let mut addrs = Vec::new();
        for ns in answer.ns_names().into_iter().take(MAX_NAME_SERVERS) {
            let mut ips = answer.addresses_of(&ns);
            if ips.is_empty() {
                for record_type in [RecordType::A, RecordType::AAAA] {
                    match self.recursive(&ns, record_type).await {
                        Ok(a) => ips.extend(a.addresses_of(&ns)),
                        Err(e) => {
                            tracing::debug!(ns = %ns, error = %e, "DNS-01: name server address lookup failed")
                        }
                    }
                }
            }
            for ip in ips {
                let addr = SocketAddr::new(ip, self.nameserver_port);
                if !addrs.contains(&addr) && addrs.len() < MAX_NAME_SERVERS {
                    addrs.push(addr);
                }
            }
        }
        if addrs.is_empty() {
            return Err(LookupError::NoNameServers {
                zone: zone.to_ascii(),
            });
        }
        Ok(addrs)
    }

    /// The servers a check asks, and whether with recursion: the check
    /// resolvers if set, else the authoritative servers of `fqdn`'s zone.
    pub(crate) async fn check_servers(
        &self,
        fqdn: &str,
    ) -> Result<(Vec<SocketAddr>, bool), LookupError> {
        if !self.check_resolvers.is_empty() {
            return Ok((self.check_resolvers.clone(), true));
        }
        let name = absolute(fqdn)?;
        let zone = self.find_zone(&name).await?;
        let servers = self.name_servers(&zone).await?;
        tracing::debug!(record = fqdn, zone = %zone, servers = ?servers, "DNS-01: checking propagation at the authoritative servers");
        Ok((servers, false))
    }

    /// Whether every server in `servers` answers `value` at `fqdn`.
    pub(crate) async fn is_visible(
        &self,
        fqdn: &str,
        value: &str,
        servers: &[SocketAddr],
        recursion: bool,
    ) -> Result<Visibility, LookupError> {
        let name = absolute(fqdn)?;
        let checks = servers.iter().map(|server| {
            let name = name.clone();
            async move {
                let outcome = ask(
                    *server,
                    &name,
                    RecordType::TXT,
                    recursion,
                    self.query_timeout,
                )
                .await;
                (*server, outcome)
            }
        });
        let mut pending = Vec::new();
        for (server, outcome) in join_all(checks).await {
            match outcome {
                Ok(answer) if answer.txt_values().iter().any(|v| v == value) => {}
                Ok(answer) => pending.push(format!(
                    "{server}: {}, {} TXT value(s), none ours",
                    answer.code,
                    answer.txt_values().len()
                )),
                Err(e) => pending.push(e.to_string()),
            }
        }
        Ok(if pending.is_empty() {
            Visibility::Visible
        } else {
            Visibility::Pending(pending.join("; "))
        })
    }
}
