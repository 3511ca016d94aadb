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
pub(crate) const MAX_NAME_SERVERS: usize = 16;
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

/// The longest name handed to providers, in presentation form without the
/// trailing dot (RFC 1035 §2.3.4's 255 octets on the wire).
const MAX_NAME_LEN: usize = 253;

/// A name found in DNS answers (a CNAME target: unauthenticated data) as we
/// hand it to providers (lower case, no trailing dot), or [`LookupError::BadName`] unless it is a host
/// name providers can take: at least two labels, each 1 to 63 of
/// `a-z 0-9 _ -` (lower-cased here), 253 characters at most. A wildcard
/// (`*`), an escaped byte (`\.`) or the root is refused.
pub(crate) fn checked_plain(name: &Name) -> Result<String, LookupError> {
    let bad = |reason: &str| LookupError::BadName {
        name: name.to_ascii(),
        reason: reason.to_owned(),
    };
    let mut labels = Vec::new();
    for label in name.iter() {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("a label is empty or longer than 63 characters"));
        }
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(bad(
                "a label holds a character other than a-z, 0-9, _ and -",
            ));
        }
        // Only ASCII letters, digits, `-` and `_` are left: valid UTF-8.
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    if labels.len() < 2 {
        return Err(bad("fewer than two labels"));
    }
    let text = labels.join(".");
    if text.len() > MAX_NAME_LEN {
        return Err(bad("longer than 253 characters"));
    }
    Ok(text)
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
                // The end of a chain comes from unauthenticated answers.
                return checked_plain(&name);
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
    /// authority section of a negative answer) that encloses the name asked,
    /// walking up the labels.
    pub(crate) async fn find_zone(&self, name: &Name) -> Result<Name, LookupError> {
        let mut candidate = name.clone();
        for _ in 0..=name.num_labels() {
            let answer = self.recursive(&candidate, RecordType::SOA).await?;
            if let Some(zone) = answer.soa_owner(&candidate) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::rdata::CNAME;
    use hickory_proto::rr::{Label, RData, Record};
    use tokio::net::UdpSocket;

    use super::*;

    /// A stand-in for a recursive resolver: answers every CNAME question
    /// for `from` with a CNAME to `to`, and every other one with NXDOMAIN.
    async fn cname_resolver(from: &'static str, to: Name) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let (len, peer) = socket.recv_from(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf[..len]).unwrap();
                let mut response = Message::response(query.metadata.id, OpCode::Query);
                response.add_queries(query.queries.clone());
                let asked = query.queries[0].name().clone();
                if asked == Name::from_ascii(from).unwrap() {
                    response.add_answer(Record::from_rdata(
                        asked,
                        60,
                        RData::CNAME(CNAME(to.clone())),
                    ));
                } else {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                socket
                    .send_to(&response.to_vec().unwrap(), peer)
                    .await
                    .unwrap();
            }
        });
        addr
    }

    fn lookup(resolver: SocketAddr) -> Lookup {
        Lookup {
            bootstrap: vec![resolver],
            check_resolvers: Vec::new(),
            nameserver_port: 53,
            query_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn names_from_answers_are_checked() {
        let checked = |text: &str| checked_plain(&Name::from_ascii(text).unwrap());
        assert_eq!(
            checked("_ACME-challenge.Example.test.").unwrap(),
            "_acme-challenge.example.test"
        );
        let long_label = format!("{}.test.", "a".repeat(63));
        assert!(checked(&long_label).is_ok());
        // The longest name DNS carries (255 octets on the wire) passes; a
        // longer one cannot be decoded from an answer in the first place.
        let longest = format!("{0}.{0}.{0}.{0}.a.", "a".repeat(62));
        assert_eq!(checked(&longest).unwrap().len(), MAX_NAME_LEN);
        let raw = |labels: &[&[u8]]| {
            Name::from_labels(labels.iter().map(|l| Label::from_raw_bytes(l).unwrap())).unwrap()
        };
        for bad in [
            Name::from_ascii("*.example.test.").unwrap(),
            Name::from_ascii("a\\.b.example.test.").unwrap(),
            Name::from_ascii("test.").unwrap(),
            Name::root(),
            raw(&[b"a b", b"example", b"test"]),
            raw(&["café".as_bytes(), b"example", b"test"]),
            raw(&[b"a/b", b"test"]),
        ] {
            assert!(
                matches!(checked_plain(&bad), Err(LookupError::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_cname_target_is_followed_lower_cased_and_checked() {
        let from = "_acme-challenge.example.test.";
        let good = cname_resolver(from, Name::from_ascii("X1.Auth.Example.org.").unwrap()).await;
        assert_eq!(
            lookup(good)
                .follow_cnames(from.trim_end_matches('.'))
                .await
                .unwrap(),
            "x1.auth.example.org"
        );
        for target in ["*.evil.test.", "a\\.b.evil.test.", "."] {
            let resolver = cname_resolver(from, Name::from_ascii(target).unwrap()).await;
            let err = lookup(resolver)
                .follow_cnames(from.trim_end_matches('.'))
                .await
                .unwrap_err();
            assert!(
                matches!(err, LookupError::BadName { .. }),
                "{target}: {err}"
            );
        }
    }
}
