//! RFC 2136 dynamic updates: the [`DnsProvider`] for DNS servers you run
//! yourself (BIND, Knot, PowerDNS, Windows DNS and most others), signed with
//! a TSIG key (RFC 8945).
//!
//! [`Rfc2136`] sends one `UPDATE` message per record to the zone's primary
//! server, signed with HMAC-SHA256, -384 or -512, and checks the TSIG
//! signature of the answer before it counts a success:
//!
//! - **adding** a value is an "add to an RRset" (RFC 2136 §2.5.1) with no
//!   prerequisite, so the values already at the name (the other half of a
//!   wildcard-and-apex order, another tool's value) stay, and adding a value
//!   that is there changes nothing;
//! - **removing** a value is a "delete an RR from an RRset" (§2.5.4) that
//!   names the value, never the whole RRset; removing a value that is not
//!   there changes nothing.
//!
//! Each update is applied atomically by the server (RFC 2136 §3.7), and
//! neither reads the record set first, so concurrent calls, including two
//! values at one name, never lose each other's values.
//!
//! **Zone.** Give it with [`Rfc2136Builder::zone`], or the provider asks the
//! server for the SOA of the record's name (recursion off) and uses the zone
//! the answer names.
//!
//! **Credentials.** A TSIG key the server accepts for updates, best limited
//! to TXT records under `_acme-challenge` (BIND:
//! `update-policy { grant <key> wildcard _acme-challenge.*.example.com. TXT; ... };`
//! or a zone of its own that `_acme-challenge` CNAMEs point to). Generate
//! one with `tsig-keygen -a hmac-sha256 <name>`; its `secret` is the base64
//! this provider takes. The secret never appears in logs, errors or `Debug`.
//!
//! **Transport.** TCP by default: an answer over TCP comes from the server
//! the connection was made to, so an unsigned error answer cannot be
//! injected by another host, and a lost answer is an error rather than an
//! unknown outcome. UDP ([`Rfc2136Transport::Udp`]) is there for servers or
//! firewalls that accept updates only over UDP; answers whose signature
//! does not verify are then ignored, and a truncated answer is fetched again
//! over TCP.
//!
//! **Errors.** The server's response codes map to [`DnsError`]:
//! `NOTAUTH` and the TSIG errors `BADSIG`, `BADKEY`, `BADTIME` are
//! [`AuthRefused`](DnsError::AuthRefused) (the key or the clock is wrong);
//! `REFUSED` is [`AuthRefused`](DnsError::AuthRefused) too, since BIND and
//! others answer it when the update policy does not let the key change the
//! name; `NOTZONE`, or no SOA for the name, is
//! [`ZoneNotFound`](DnsError::ZoneNotFound); `SERVFAIL`, time-outs and
//! socket errors are [`Transient`](DnsError::Transient) (retried by the
//! solver); any other code is [`Rejected`](DnsError::Rejected).
//!
//! ```no_run
//! # extern crate certauto_core as certauto;
//! use std::time::Duration;
//! use certauto::Dns01Solver;
//! use certauto::dns::{Rfc2136, TsigAlgorithm};
//!
//! # fn demo() -> Result<(), certauto::DnsError> {
//! let dns = Rfc2136::builder("192.0.2.53:53".parse().unwrap())
//!     .tsig("acme-update", "c2VjcmV0LWZyb20tdHNpZy1rZXlnZW4=", TsigAlgorithm::HmacSha256)
//!     .zone("example.com")
//!     .timeout(Duration::from_secs(10))
//!     .build()?;
//! let solver = Dns01Solver::new(dns);
//! # let _ = solver;
//! # Ok(())
//! # }
//! ```
//!
//! See [RFC 2136](https://www.rfc-editor.org/rfc/rfc2136) (dynamic update)
//! and [RFC 8945](https://www.rfc-editor.org/rfc/rfc8945) (TSIG).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as HickoryTsigAlgorithm, TsigError};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};
use tokio::net::UdpSocket;

use super::http::Secret;
use super::propagation::absolute;
use super::provider::{DnsError, DnsProvider};
use super::query::{QueryError, ask_over, tcp_exchange_raw};

/// The provider's name in errors.
const PROVIDER: &str = "rfc2136";
/// The TTL of the records added, by default.
const DEFAULT_TTL: u32 = 60;
/// The time one exchange (SOA lookup or update) may take, by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest and longest exchange time accepted.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The clock difference the server may allow (RFC 8945 §10 recommends 300 s).
const FUDGE: u16 = 300;
/// The most datagrams read while waiting for the answer to an update over UDP.
const MAX_DATAGRAMS: usize = 16;
/// The longest character-string in a TXT record.
const MAX_TXT_STRING: usize = 255;

/// A TSIG algorithm (RFC 8945 §6): HMAC with SHA-256, -384 or -512.
///
/// Parses from and prints as the names BIND's `tsig-keygen -a` and
/// `nsupdate` use: `hmac-sha256`, `hmac-sha384`, `hmac-sha512`.
///
/// ```
/// # extern crate certauto_core as certauto;
/// use certauto::dns::TsigAlgorithm;
///
/// let algorithm: TsigAlgorithm = "hmac-sha512".parse().unwrap();
/// assert_eq!(algorithm, TsigAlgorithm::HmacSha512);
/// assert_eq!(algorithm.as_str(), "hmac-sha512");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TsigAlgorithm {
    /// `hmac-sha256`, the usual choice.
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl TsigAlgorithm {
    /// The algorithm's name: `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    fn to_hickory(self) -> HickoryTsigAlgorithm {
        match self {
            TsigAlgorithm::HmacSha256 => HickoryTsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384 => HickoryTsigAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512 => HickoryTsigAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TsigAlgorithm {
    type Err = DnsError;

    /// Case-insensitive; a trailing dot (the algorithm's DNS name) is accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
        match name.as_str() {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            _ => Err(DnsError::config(
                PROVIDER,
                format!(
                    "unknown TSIG algorithm {s:?}: expected hmac-sha256, hmac-sha384 or hmac-sha512"
                ),
            )),
        }
    }
}

/// How [`Rfc2136`] reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rfc2136Transport {
    /// One TCP connection per update (RFC 1035 §4.2.2 framing). The default:
    /// see the [module docs](self) for why.
    #[default]
    Tcp,
    /// One datagram each way; a truncated answer is fetched again over TCP.
    Udp,
}

/// Adds and removes TXT records by RFC 2136 dynamic update, signed with
/// TSIG. See the [module docs](self).
#[derive(Clone)]
pub struct Rfc2136 {
    server: SocketAddr,
    signer: TSigner,
    key_name: Name,
    algorithm: TsigAlgorithm,
    zone: Option<Name>,
    transport: Rfc2136Transport,
    timeout: Duration,
    ttl: u32,
}

impl fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The TSigner (which holds the secret) is left out.
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("key_name", &self.key_name.to_ascii())
            .field("algorithm", &self.algorithm)
            .field("zone", &self.zone.as_ref().map(Name::to_ascii))
            .field("transport", &self.transport)
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Rfc2136`] provider; see [`Rfc2136::builder`].
#[derive(Debug)]
pub struct Rfc2136Builder {
    server: SocketAddr,
    tsig: Option<(String, Secret, TsigAlgorithm)>,
    zone: Option<String>,
    transport: Rfc2136Transport,
    timeout: Duration,
    ttl: u32,
}

impl Rfc2136 {
    /// A builder for updates sent to `server` (the zone's primary, with its
    /// port, usually 53). [`tsig`](Rfc2136Builder::tsig) is required.
    pub fn builder(server: SocketAddr) -> Rfc2136Builder {
        Rfc2136Builder {
            server,
            tsig: None,
            zone: None,
            transport: Rfc2136Transport::default(),
            timeout: DEFAULT_TIMEOUT,
            ttl: DEFAULT_TTL,
        }
    }
}

impl Rfc2136Builder {
    /// The TSIG key the updates are signed with: its name (as the server
    /// knows it, e.g. `acme-update`), its secret in base64 (as
    /// `tsig-keygen` prints it) and its algorithm. Required.
    pub fn tsig(
        mut self,
        key_name: impl Into<String>,
        secret_base64: impl Into<String>,
        algorithm: TsigAlgorithm,
    ) -> Self {
        self.tsig = Some((key_name.into(), Secret::new(secret_base64), algorithm));
        self
    }

    /// The zone every record is written in (e.g. `example.com`). By default
    /// the zone is found per record by asking the server for the SOA of the
    /// record's name; a record outside the zone given here fails with
    /// [`DnsError::ZoneNotFound`].
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// TCP (the default) or UDP; see the [module docs](self).
    pub fn transport(mut self, transport: Rfc2136Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The time one exchange with the server (SOA lookup or update) may
    /// take (default 10 seconds; between 10 ms and 5 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(MIN_TIMEOUT, MAX_TIMEOUT);
        self
    }

    /// The TTL of the records added (default 60 seconds).
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// The provider.
    ///
    /// # Errors
    ///
    /// [`DnsError::Config`] when no TSIG key was given, the secret is not
    /// base64 or empty, or the key name or zone is not a DNS name.
    pub fn build(self) -> Result<Rfc2136, DnsError> {
        let Some((key_name, secret, algorithm)) = self.tsig else {
            return Err(DnsError::config(
                PROVIDER,
                "a TSIG key is required (Rfc2136Builder::tsig)",
            ));
        };
        let key_name = dns_name(&key_name, "TSIG key name")?;
        let key = decode_secret(&secret)?;
        let signer = TSigner::new(key, algorithm.to_hickory(), key_name.clone(), FUDGE)
            .map_err(|e| DnsError::config(PROVIDER, format!("TSIG key unusable: {e}")))?;
        let zone = self
            .zone
            .as_deref()
            .map(|zone| dns_name(zone, "zone"))
            .transpose()?;
        Ok(Rfc2136 {
            server: self.server,
            signer,
            key_name,
            algorithm,
            zone,
            transport: self.transport,
            timeout: self.timeout,
            ttl: self.ttl,
        })
    }
}

/// `text` as an absolute, lower-case DNS name.
fn dns_name(text: &str, what: &str) -> Result<Name, DnsError> {
    let trimmed = text.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(DnsError::config(PROVIDER, format!("the {what} is empty")));
    }
    Name::from_ascii(format!("{}.", trimmed.to_ascii_lowercase()))
        .map_err(|e| DnsError::config(PROVIDER, format!("invalid {what} {text:?}: {e}")))
}

/// The key bytes of a base64 secret (padding optional).
fn decode_secret(secret: &Secret) -> Result<Vec<u8>, DnsError> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    // The decoder's error names the offending byte's position, not the secret.
    let key = engine
        .decode(secret.expose().trim())
        .map_err(|e| DnsError::config(PROVIDER, format!("the TSIG secret is not base64: {e}")))?;
    if key.is_empty() {
        return Err(DnsError::config(PROVIDER, "the TSIG secret is empty"));
    }
    Ok(key)
}

/// Add a value, or delete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Delete,
}

/// What one answer to an update means.
#[derive(Debug)]
enum Verdict {
    /// The update was applied (NOERROR, signature verified).
    Done,
    /// The server refused it.
    Failed(DnsError),
    /// The answer was truncated: ask again over TCP.
    Truncated,
    /// Not a (verifiable) answer to our update; says why.
    NotOurs(String),
}

impl Rfc2136 {
    /// The zone holding `name`: the configured one, or the owner of the
    /// SOA the server names for it.
    async fn zone_for(&self, name: &Name, fqdn: &str) -> Result<Name, DnsError> {
        let not_found = || DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        };
        if let Some(zone) = &self.zone {
            return if zone.zone_of(name) {
                Ok(zone.clone())
            } else {
                Err(not_found())
            };
        }
        let answer = ask_over(
            self.server,
            name,
            RecordType::SOA,
            false,
            self.timeout,
            self.transport == Rfc2136Transport::Tcp,
        )
        .await
        .map_err(|e| query_error(e, fqdn))?;
        match answer.code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            // Not authoritative for the name.
            ResponseCode::Refused | ResponseCode::NotAuth => return Err(not_found()),
            ResponseCode::ServFail => {
                return Err(DnsError::transient(
                    PROVIDER,
                    format!("{}: SERVFAIL looking up the zone of {fqdn}", self.server),
                ));
            }
            code => {
                return Err(DnsError::rejected(
                    PROVIDER,
                    Some(u16::from(code)),
                    format!("{}: {code} looking up the zone of {fqdn}", self.server),
                ));
            }
        }
        // The deepest SOA owner that contains the name (an answer that
        // followed a CNAME may carry the target zone's SOA too).
        answer
            .message
            .answers
            .iter()
            .chain(answer.message.authorities.iter())
            .filter(|r| matches!(r.data, RData::SOA(_)) && r.name.zone_of(name))
            .map(|r| r.name.clone())
            .max_by_key(Name::num_labels)
            .ok_or_else(not_found)
    }

    /// The UPDATE message adding or deleting `value` at `name` in `zone`.
    fn update_message(&self, zone: &Name, name: &Name, value: &str, change: Change) -> Message {
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        // The zone section (RFC 2136 §2.3): the zone's name, type SOA.
        let mut zone_query = Query::query(zone.clone(), RecordType::SOA);
        zone_query.set_query_class(DNSClass::IN);
        message.add_query(zone_query);
        let mut record = Record::from_rdata(name.clone(), self.ttl, RData::TXT(txt_rdata(value)));
        match change {
            // §2.5.1: class of the zone, the TTL wanted.
            Change::Add => record.dns_class = DNSClass::IN,
            // §2.5.4: class NONE, TTL 0, the exact RDATA.
            Change::Delete => {
                record.dns_class = DNSClass::NONE;
                record.ttl = 0;
            }
        }
        // The update section is the authority section's place.
        message.add_authority(record);
        message
    }

    /// Applies one change to `fqdn`.
    async fn change(&self, fqdn: &str, value: &str, change: Change) -> Result<(), DnsError> {
        let name = absolute(fqdn).map_err(|e| DnsError::rejected(PROVIDER, None, e.to_string()))?;
        let zone = self.zone_for(&name, fqdn).await?;
        tracing::debug!(record = fqdn, zone = %zone, server = %self.server, ?change, transport = ?self.transport,
            "RFC 2136: sending update");
        let message = self.update_message(&zone, &name, value, change);
        self.send(message, fqdn).await
    }

    /// Signs `message`, sends it and checks the answer, within the timeout.
    async fn send(&self, mut message: Message, fqdn: &str) -> Result<(), DnsError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let verifier = message
            .finalize(&self.signer, now)
            .map_err(|e| DnsError::rejected(PROVIDER, None, format!("cannot sign update: {e}")))?
            .ok_or_else(|| DnsError::rejected(PROVIDER, None, "TSIG signing gave no verifier"))?;
        let bytes = message.to_vec().map_err(|e| {
            DnsError::rejected(PROVIDER, None, format!("cannot encode update: {e}"))
        })?;
        let id = message.metadata.id;
        let mut checker = Checker { id, verifier, fqdn };
        let exchange = async {
            match self.transport {
                Rfc2136Transport::Tcp => self.over_tcp(&bytes, &mut checker).await,
                Rfc2136Transport::Udp => self.over_udp(&bytes, &mut checker).await,
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                DnsError::transient(
                    PROVIDER,
                    format!(
                        "{}: no answer to the update of {fqdn} within {:?}",
                        self.server, self.timeout
                    ),
                )
            })?
    }

    async fn over_tcp(&self, bytes: &[u8], checker: &mut Checker<'_>) -> Result<(), DnsError> {
        let answer = tcp_exchange_raw(self.server, bytes)
            .await
            .map_err(|e| query_error(e, checker.fqdn))?;
        match checker.judge(&answer) {
            Verdict::Done => Ok(()),
            Verdict::Failed(e) => Err(e),
            Verdict::Truncated => Err(DnsError::rejected(
                PROVIDER,
                None,
                format!("{}: truncated answer over TCP", self.server),
            )),
            Verdict::NotOurs(why) => Err(DnsError::rejected(
                PROVIDER,
                None,
                format!("{}: unusable answer to the update: {why}", self.server),
            )),
        }
    }

    async fn over_udp(&self, bytes: &[u8], checker: &mut Checker<'_>) -> Result<(), DnsError> {
        let server = self.server;
        let io = |e: std::io::Error| DnsError::transient(PROVIDER, format!("{server}: UDP: {e}"));
        let local: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(server).await.map_err(io)?;
        socket.send(bytes).await.map_err(io)?;
        let mut buf = vec![0u8; 65_535];
        let mut last = String::from("none");
        for _ in 0..MAX_DATAGRAMS {
            let len = socket.recv(&mut buf).await.map_err(io)?;
            let datagram = buf.get(..len).unwrap_or_default();
            match checker.judge(datagram) {
                Verdict::Done => return Ok(()),
                Verdict::Failed(e) => return Err(e),
                Verdict::Truncated => {
                    tracing::debug!(server = %server, "RFC 2136: truncated answer over UDP; asking over TCP");
                    return self.over_tcp(bytes, checker).await;
                }
                // A late answer to an earlier message, or a forgery: skipped.
                Verdict::NotOurs(why) => {
                    tracing::debug!(server = %server, reason = %why, "RFC 2136: datagram ignored");
                    last = why;
                }
            }
        }
        Err(DnsError::transient(
            PROVIDER,
            format!("{server}: no datagram answered the update (last: {last})"),
        ))
    }
}

/// Checks answers against the update they should answer.
struct Checker<'a> {
    id: u16,
    verifier: TSigVerifier,
    fqdn: &'a str,
}

impl Checker<'_> {
    fn judge(&mut self, bytes: &[u8]) -> Verdict {
        let message = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => return Verdict::NotOurs(format!("undecodable: {e}")),
        };
        let meta = &message.metadata;
        if meta.id != self.id
            || meta.message_type != MessageType::Response
            || meta.op_code != OpCode::Update
        {
            return Verdict::NotOurs("not an answer to our update".to_owned());
        }
        if meta.truncation {
            return Verdict::Truncated;
        }
        let code = meta.response_code;
        if code == ResponseCode::NoError {
            // Only a signed success counts (RFC 8945 §5.3: the server signs
            // every answer to a request signed with a key it knows).
            return match self.verifier.verify(bytes) {
                Ok(_) => Verdict::Done,
                Err(e) => Verdict::NotOurs(format!("its TSIG signature does not verify: {e}")),
            };
        }
        // Error answers to a bad key are unsigned by design (RFC 8945
        // §5.3.2); trusting an unsigned error can only make us fail.
        let tsig_error = message.signature.as_ref().and_then(|s| s.data.error);
        Verdict::Failed(classify(code, tsig_error, self.fqdn))
    }
}

/// The error for an update answered with `code` (and the TSIG error, if any).
fn classify(code: ResponseCode, tsig_error: Option<TsigError>, fqdn: &str) -> DnsError {
    let refused = |detail: String| DnsError::AuthRefused {
        provider: PROVIDER,
        detail,
    };
    if let Some(error) = tsig_error {
        let name = match error {
            TsigError::BadSig => "BADSIG: the signature does not match the key's secret".to_owned(),
            TsigError::BadKey => {
                "BADKEY: the server does not know the key (name or algorithm)".to_owned()
            }
            TsigError::BadTime => {
                "BADTIME: the clocks of this host and the server differ by more than 5 minutes"
                    .to_owned()
            }
            TsigError::BadTrunc => "BADTRUNC".to_owned(),
            TsigError::Unknown(n) => format!("TSIG error {n}"),
        };
        return refused(format!("{code} ({name}) updating {fqdn}"));
    }
    match code {
        ResponseCode::NotAuth => refused(format!(
            "NOTAUTH updating {fqdn}: the server is not authoritative for the zone or does not accept the key"
        )),
        ResponseCode::Refused => refused(format!(
            "REFUSED updating {fqdn}: the server's update policy does not let this key change the name"
        )),
        ResponseCode::NotZone => DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        },
        ResponseCode::ServFail => {
            DnsError::transient(PROVIDER, format!("SERVFAIL updating {fqdn}"))
        }
        code => DnsError::rejected(
            PROVIDER,
            Some(u16::from(code)),
            format!("{code} updating {fqdn}"),
        ),
    }
}

/// The error for a failed exchange with the server.
fn query_error(error: QueryError, fqdn: &str) -> DnsError {
    match error {
        QueryError::Encode { .. } => DnsError::rejected(PROVIDER, None, error.to_string()),
        QueryError::Timeout { .. } | QueryError::Io { .. } | QueryError::Malformed { .. } => {
            DnsError::transient(PROVIDER, format!("{fqdn}: {error}"))
        }
    }
}

/// TXT RDATA holding `value`, in character-strings of at most 255 bytes.
fn txt_rdata(value: &str) -> TXT {
    let parts: Vec<&[u8]> = if value.is_empty() {
        vec![&[][..]]
    } else {
        value.as_bytes().chunks(MAX_TXT_STRING).collect()
    };
    TXT::from_bytes(parts)
}

#[async_trait]
impl DnsProvider for Rfc2136 {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.change(fqdn, value, Change::Add).await
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.change(fqdn, value, Change::Delete).await
    }
}
