//! The RFC 2136 provider: TSIG-signed dynamic updates to a DNS server you
//! run ([`Rfc2136`] documents it).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as HickoryTsigAlgorithm, TsigError};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};

use super::http::Secret;
use super::propagation::absolute;
use super::provider::{DnsError, DnsProvider};
use super::query::{QueryError, ask_over, tcp_exchange_raw, udp_exchange_until};

/// The provider's name in errors.
const PROVIDER: &str = "rfc2136";
/// The TTL of the records added, by default.
pub(crate) const DEFAULT_TTL: u32 = 60;
/// The time one exchange (SOA lookup or update) may take, by default.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest and longest exchange time accepted.
pub(crate) const MIN_TIMEOUT: Duration = Duration::from_millis(10);
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The clock difference the server may allow (RFC 8945 §10 recommends 300 s).
pub(crate) const FUDGE: u16 = 300;
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
    /// see [`Rfc2136`] for why.
    #[default]
    Tcp,
    /// One datagram each way; a truncated answer is fetched again over TCP.
    Udp,
}

/// RFC 2136 dynamic updates: the [`DnsProvider`] for DNS servers you run
/// yourself (BIND, Knot, PowerDNS, Windows DNS and most others), signed with
/// a TSIG key (RFC 8945).
///
/// [`Rfc2136`] sends one `UPDATE` message per record to the zone's primary
/// server, signed with HMAC-SHA256, -384 or -512, and checks the TSIG
/// signature of the answer before it counts a success:
///
/// - **adding** a value is an "add to an RRset" (RFC 2136 §2.5.1) with no
///   prerequisite, so the values already at the name (the other half of a
///   wildcard-and-apex order, another tool's value) stay, and adding a value
///   that is there changes nothing;
/// - **removing** a value is a "delete an RR from an RRset" (§2.5.4) that
///   names the value, never the whole RRset; removing a value that is not
///   there changes nothing.
///
/// Each update is applied atomically by the server (RFC 2136 §3.7), and
/// neither reads the record set first, so concurrent calls, including two
/// values at one name, never lose each other's values.
///
/// **Zone.** Give it with [`Rfc2136Builder::zone`], or the provider asks the
/// server for the SOA of the record's name (recursion off) and uses the zone
/// the answer names.
///
/// **Credentials.** A TSIG key the server accepts for updates, best limited
/// to TXT records under `_acme-challenge` (BIND:
/// `update-policy { grant <key> wildcard _acme-challenge.*.example.com. TXT; ... };`
/// or a zone of its own that `_acme-challenge` CNAMEs point to). Generate
/// one with `tsig-keygen -a hmac-sha256 <name>`; its `secret` is the base64
/// this provider takes. The secret never appears in logs, errors or `Debug`.
///
/// **Transport.** TCP by default: an answer over TCP comes from the server
/// the connection was made to, so an unsigned error answer cannot be
/// injected by another host, and a lost answer is an error rather than an
/// unknown outcome. UDP ([`Rfc2136Transport::Udp`]) is there for servers or
/// firewalls that accept updates only over UDP; a datagram anyone could
/// forge is then ignored (and the wait goes on for the real answer): an
/// answer whose signature does not verify, and an unsigned error answer
/// other than the TSIG errors `BADSIG` and `BADKEY`, which RFC 8945 §5.3.2
/// sends unsigned (and `BADTIME`, signed at a time our clock may refuse).
/// A truncated answer is fetched again over TCP. Over either transport, a
/// signed answer counts only when its signature verifies.
///
/// **Errors.** The server's response codes map to [`DnsError`]:
/// `NOTAUTH` and the TSIG errors `BADSIG`, `BADKEY`, `BADTIME` are
/// [`AuthRefused`](DnsError::AuthRefused) (the key or the clock is wrong);
/// `REFUSED` is [`AuthRefused`](DnsError::AuthRefused) too, since BIND and
/// others answer it when the update policy does not let the key change the
/// name; `NOTZONE`, or no SOA for the name, is
/// [`ZoneNotFound`](DnsError::ZoneNotFound); `SERVFAIL`, time-outs and
/// socket errors are [`Transient`](DnsError::Transient) (retried by the
/// solver); any other code is [`Rejected`](DnsError::Rejected).
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use std::time::Duration;
/// use certauto::Dns01Solver;
/// use certauto::dns::{Rfc2136, TsigAlgorithm};
///
/// # fn demo() -> Result<(), certauto::DnsError> {
/// let dns = Rfc2136::builder("192.0.2.53:53".parse().unwrap())
///     .tsig("acme-update", "c2VjcmV0LWZyb20tdHNpZy1rZXlnZW4=", TsigAlgorithm::HmacSha256)
///     .zone("example.com")
///     .timeout(Duration::from_secs(10))
///     .build()?;
/// let solver = Dns01Solver::new(dns);
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
///
/// See [RFC 2136](https://www.rfc-editor.org/rfc/rfc2136) (dynamic update)
/// and [RFC 8945](https://www.rfc-editor.org/rfc/rfc8945) (TSIG).
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

    /// TCP (the default) or UDP; see [`Rfc2136`].
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
        self.build_naming_setting().map_err(|(_, e)| e)
    }

    /// Like [`build`](Self::build), saying which setting an error is
    /// about (for readers of settings that name them, such as the
    /// `CERTAUTO_DNS_*` variables).
    pub(crate) fn build_naming_setting(self) -> Result<Rfc2136, (Rfc2136Setting, DnsError)> {
        let Some((key_name, secret, algorithm)) = self.tsig else {
            return Err((
                Rfc2136Setting::TsigKeyName,
                DnsError::config(PROVIDER, "a TSIG key is required (Rfc2136Builder::tsig)"),
            ));
        };
        let key_name =
            dns_name(&key_name, "TSIG key name").map_err(|e| (Rfc2136Setting::TsigKeyName, e))?;
        let key = decode_secret(&secret).map_err(|e| (Rfc2136Setting::TsigSecret, e))?;
        let signer =
            TSigner::new(key, algorithm.to_hickory(), key_name.clone(), FUDGE).map_err(|e| {
                (
                    Rfc2136Setting::TsigSecret,
                    DnsError::config(PROVIDER, format!("TSIG key unusable: {e}")),
                )
            })?;
        let zone = self
            .zone
            .as_deref()
            .map(|zone| dns_name(zone, "zone"))
            .transpose()
            .map_err(|e| (Rfc2136Setting::Zone, e))?;
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

/// The setting an [`Rfc2136Builder::build`] error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rfc2136Setting {
    /// The TSIG key's name (or the key, when none was given).
    TsigKeyName,
    /// The TSIG key's secret.
    TsigSecret,
    /// The zone.
    Zone,
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
        answer.soa_owner(name).ok_or_else(not_found)
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
        match checker.judge(&answer, false) {
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
        let mut last = String::from("none");
        let verdict = udp_exchange_until(server, bytes, |datagram| {
            match checker.judge(datagram, true) {
                // A late answer to an earlier message, or a forgery: skipped.
                Verdict::NotOurs(why) => {
                    tracing::debug!(server = %server, reason = %why, "RFC 2136: datagram ignored");
                    last = why;
                    None
                }
                verdict => Some(verdict),
            }
        })
        .await;
        match verdict {
            Ok(Verdict::Done) => Ok(()),
            Ok(Verdict::Failed(e)) => Err(e),
            Ok(Verdict::Truncated) => {
                tracing::debug!(server = %server, "RFC 2136: truncated answer over UDP; asking over TCP");
                self.over_tcp(bytes, checker).await
            }
            Ok(Verdict::NotOurs(_)) | Err(QueryError::Unanswered { .. }) => {
                Err(DnsError::transient(
                    PROVIDER,
                    format!("{server}: no datagram answered the update (last: {last})"),
                ))
            }
            Err(e) => Err(query_error(e, checker.fqdn)),
        }
    }
}

/// Checks answers against the update they should answer.
struct Checker<'a> {
    id: u16,
    verifier: TSigVerifier,
    fqdn: &'a str,
}

impl Checker<'_> {
    /// What `bytes`, received over UDP or TCP, mean for our update.
    fn judge(&mut self, bytes: &[u8], udp: bool) -> Verdict {
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
        let tsig_error = message.signature.as_ref().and_then(|s| s.data.error);
        match (&message.signature, tsig_error) {
            // The answers to a request the server could not check carry the
            // TSIG error unsigned (BADSIG, BADKEY: RFC 8945 §5.3.2), or
            // signed at a time our clock may not accept (BADTIME): taken
            // as they are, since they can only make us fail.
            (Some(_), Some(TsigError::BadSig | TsigError::BadKey | TsigError::BadTime)) => {}
            // Any other signed answer counts only when its signature verifies.
            (Some(_), _) => {
                if let Err(e) = self.verifier.verify(bytes) {
                    return Verdict::NotOurs(format!(
                        "{code} answer whose TSIG signature does not verify: {e}"
                    ));
                }
            }
            // An unsigned error over UDP may come from anyone who guessed
            // the id; over TCP it comes from the server connected to.
            (None, _) if udp => {
                return Verdict::NotOurs(format!("unsigned {code} answer over UDP"));
            }
            (None, _) => {}
        }
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
        QueryError::Timeout { .. }
        | QueryError::Io { .. }
        | QueryError::Malformed { .. }
        | QueryError::Unanswered { .. } => {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use hickory_proto::rr::TSigResponseContext;
    use hickory_proto::rr::rdata::SOA;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};

    use super::*;

    /// `base64("test-secret-of-the-fake-server!")`.
    const SECRET: &str = "dGVzdC1zZWNyZXQtb2YtdGhlLWZha2Utc2VydmVyIQ==";
    const KEY: &str = "acme-key";

    fn server_signer(algorithm: TsigAlgorithm) -> TSigner {
        TSigner::new(
            base64::engine::general_purpose::STANDARD
                .decode(SECRET)
                .unwrap(),
            algorithm.to_hickory(),
            Name::from_ascii("acme-key.").unwrap(),
            FUDGE,
        )
        .unwrap()
    }

    fn provider(server: SocketAddr) -> Rfc2136Builder {
        Rfc2136::builder(server)
            .tsig(KEY, SECRET, TsigAlgorithm::HmacSha256)
            .timeout(Duration::from_secs(5))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// What the fake server answers to one request: each element is sent
    /// as one datagram (UDP) or the first one framed (TCP).
    type Handler = Arc<dyn Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync>;

    /// A stand-in for a DNS server: records the requests, answers through `handler`.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Seen {
        fn messages(&self) -> Vec<Message> {
            let raw = self.0.lock().unwrap().clone();
            raw.iter().map(|b| Message::from_vec(b).unwrap()).collect()
        }
        fn raw(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

    async fn fake_tcp(handler: Handler) -> (SocketAddr, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.unwrap();
                let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut msg).await.unwrap();
                log.0.lock().unwrap().push(msg.clone());
                if let Some(answer) = handler(&msg).into_iter().next() {
                    let mut framed = u16::try_from(answer.len()).unwrap().to_be_bytes().to_vec();
                    framed.extend_from_slice(&answer);
                    stream.write_all(&framed).await.unwrap();
                }
            }
        });
        (addr, seen)
    }

    async fn fake_udp(handler: Handler) -> (SocketAddr, Seen) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Seen::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let (len, peer) = socket.recv_from(&mut buf).await.unwrap();
                let msg = buf[..len].to_vec();
                log.0.lock().unwrap().push(msg.clone());
                for answer in handler(&msg) {
                    socket.send_to(&answer, peer).await.unwrap();
                }
            }
        });
        (addr, seen)
    }

    /// The answer to `request` with `code`, signed with `signer` as a
    /// server does (RFC 8945 §5.3), or unsigned.
    fn answer(request: &[u8], code: ResponseCode, signer: Option<&TSigner>) -> Vec<u8> {
        let request = Message::from_vec(request).unwrap();
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.response_code = code;
        response.add_queries(request.queries.clone());
        if let Some(signer) = signer {
            let mac = request.signature.as_ref().unwrap().data.mac.clone();
            let unsigned = response.to_vec().unwrap();
            let tsig =
                TSigResponseContext::new(request.metadata.id, now(), signer.clone(), mac, None)
                    .sign(&unsigned)
                    .unwrap();
            response.set_signature(tsig);
        }
        response.to_vec().unwrap()
    }

    /// A NOTAUTH answer with the unsigned TSIG error BADSIG (RFC 8945 §5.3.2).
    fn bad_signature(request: &[u8]) -> Vec<u8> {
        let request = Message::from_vec(request).unwrap();
        let mut response = Message::response(request.metadata.id, OpCode::Update);
        response.metadata.response_code = ResponseCode::NotAuth;
        response.add_queries(request.queries.clone());
        let unsigned = response.to_vec().unwrap();
        let tsig = TSigResponseContext::bad_signature(
            request.metadata.id,
            now(),
            server_signer(TsigAlgorithm::HmacSha256),
        )
        .sign(&unsigned)
        .unwrap();
        response.set_signature(tsig);
        response.to_vec().unwrap()
    }

    /// Answers SOA queries for names under `example.test` with NXDOMAIN and
    /// the zone's SOA, and updates with a signed NOERROR.
    fn authoritative(signer: TSigner) -> Handler {
        Arc::new(move |request| {
            let message = Message::from_vec(request).unwrap();
            if message.metadata.op_code == OpCode::Update {
                return vec![answer(request, ResponseCode::NoError, Some(&signer))];
            }
            let zone = Name::from_ascii("example.test.").unwrap();
            let mut response = Message::response(message.metadata.id, OpCode::Query);
            response.add_queries(message.queries.clone());
            let asked = message.queries[0].name().clone();
            if zone.zone_of(&asked) {
                response.metadata.response_code = ResponseCode::NXDomain;
                let soa = SOA::new(
                    Name::from_ascii("ns.example.test.").unwrap(),
                    Name::from_ascii("admin.example.test.").unwrap(),
                    1,
                    60,
                    60,
                    600,
                    1,
                );
                response.add_authority(Record::from_rdata(zone, 1, RData::SOA(soa)));
            } else {
                response.metadata.response_code = ResponseCode::Refused;
            }
            vec![response.to_vec().unwrap()]
        })
    }

    #[test]
    fn algorithm_names() {
        for algorithm in [
            TsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512,
        ] {
            assert_eq!(
                algorithm.as_str().parse::<TsigAlgorithm>().unwrap(),
                algorithm
            );
            assert_eq!(algorithm.to_string(), algorithm.as_str());
        }
        assert_eq!(
            "HMAC-SHA384.".parse::<TsigAlgorithm>().unwrap(),
            TsigAlgorithm::HmacSha384
        );
        for bad in ["hmac-md5", "hmac-sha1", "", "sha256"] {
            assert!(
                matches!(bad.parse::<TsigAlgorithm>(), Err(DnsError::Config { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn settings_are_checked_and_the_secret_never_shown() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let config_error = |b: Rfc2136Builder| match b.build() {
            Err(DnsError::Config { detail, .. }) => detail,
            other => panic!("{other:?}"),
        };
        assert!(config_error(Rfc2136::builder(server)).contains("TSIG key is required"));
        let detail = config_error(Rfc2136::builder(server).tsig(
            KEY,
            "not base64 at all!",
            TsigAlgorithm::HmacSha256,
        ));
        assert!(detail.contains("not base64"), "{detail}");
        assert!(!detail.contains("at all"), "{detail}");
        config_error(Rfc2136::builder(server).tsig(KEY, "", TsigAlgorithm::HmacSha256));
        config_error(Rfc2136::builder(server).tsig("", SECRET, TsigAlgorithm::HmacSha256));
        config_error(provider(server).zone("bad..zone"));
        // Unpadded base64 is accepted.
        provider(server).build().unwrap();
        Rfc2136::builder(server)
            .tsig(KEY, SECRET.trim_end_matches('='), TsigAlgorithm::HmacSha512)
            .build()
            .unwrap();

        let builder = provider(server).zone("Example.TEST.");
        assert!(!format!("{builder:?}").contains(SECRET));
        let dns = builder.build().unwrap();
        let shown = format!("{dns:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(
            shown.contains("acme-key") && shown.contains("example.test."),
            "{shown}"
        );
        assert_eq!(dns.ttl, DEFAULT_TTL);
        assert_eq!(dns.transport, Rfc2136Transport::Tcp);
    }

    #[test]
    fn update_messages_follow_rfc2136() {
        let dns = provider("127.0.0.1:53".parse().unwrap())
            .ttl(120)
            .build()
            .unwrap();
        let zone = Name::from_ascii("example.test.").unwrap();
        let name = Name::from_ascii("_acme-challenge.example.test.").unwrap();

        let add = dns.update_message(&zone, &name, "value-1", Change::Add);
        let decoded = Message::from_vec(&add.to_vec().unwrap()).unwrap();
        assert_eq!(decoded.metadata.op_code, OpCode::Update);
        assert!(!decoded.metadata.recursion_desired);
        assert_eq!(decoded.queries.len(), 1, "one zone");
        assert_eq!(decoded.queries[0].name(), &zone);
        assert_eq!(decoded.queries[0].query_type(), RecordType::SOA);
        assert_eq!(decoded.queries[0].query_class(), DNSClass::IN);
        assert!(decoded.answers.is_empty(), "no prerequisite");
        assert_eq!(decoded.authorities.len(), 1);
        let update = &decoded.authorities[0];
        assert_eq!(update.name, name);
        assert_eq!(update.dns_class, DNSClass::IN);
        assert_eq!(update.ttl, 120);
        match &update.data {
            RData::TXT(txt) => assert_eq!(&*txt.txt_data, [b"value-1".to_vec().into_boxed_slice()]),
            other => panic!("{other:?}"),
        }

        let delete = dns.update_message(&zone, &name, "value-1", Change::Delete);
        let decoded = Message::from_vec(&delete.to_vec().unwrap()).unwrap();
        assert!(decoded.answers.is_empty(), "no prerequisite");
        let update = &decoded.authorities[0];
        assert_eq!(update.dns_class, DNSClass::NONE);
        assert_eq!(update.ttl, 0);
        assert!(matches!(&update.data, RData::TXT(txt) if txt.txt_data.len() == 1));

        // Long values are split into 255-byte character-strings.
        let long = "x".repeat(300);
        let txt = txt_rdata(&long);
        assert_eq!(txt.txt_data.len(), 2);
        assert_eq!(txt.txt_data[0].len(), 255);
        assert_eq!(txt.txt_data[1].len(), 45);
    }

    #[test]
    fn response_codes_map_to_typed_errors() {
        let fqdn = "_acme-challenge.example.test";
        let auth = |e: DnsError| matches!(e, DnsError::AuthRefused { .. });
        assert!(auth(classify(ResponseCode::NotAuth, None, fqdn)));
        assert!(auth(classify(ResponseCode::Refused, None, fqdn)));
        for tsig in [TsigError::BadSig, TsigError::BadKey, TsigError::BadTime] {
            let e = classify(ResponseCode::NotAuth, Some(tsig), fqdn);
            assert!(matches!(&e, DnsError::AuthRefused { .. }), "{e}");
            assert!(
                e.to_string().contains(&format!("{tsig:?}").to_uppercase()),
                "{e}"
            );
        }
        assert!(matches!(
            classify(ResponseCode::NotZone, None, fqdn),
            DnsError::ZoneNotFound { name, .. } if name == fqdn
        ));
        let e = classify(ResponseCode::ServFail, None, fqdn);
        assert!(e.is_retryable(), "{e}");
        for code in [
            ResponseCode::FormErr,
            ResponseCode::NotImp,
            ResponseCode::YXRRSet,
            ResponseCode::NXRRSet,
        ] {
            let e = classify(code, None, fqdn);
            assert!(
                matches!(&e, DnsError::Rejected { status: Some(s), .. } if *s == u16::from(code)),
                "{e}"
            );
            assert!(!e.is_retryable());
        }
        let timeout = query_error(
            QueryError::Timeout {
                server: "127.0.0.1:53".parse().unwrap(),
                timeout: Duration::from_secs(1),
            },
            fqdn,
        );
        assert!(timeout.is_retryable(), "{timeout}");
    }

    #[tokio::test]
    async fn signed_update_over_tcp_with_the_zone_found_by_soa() {
        let signer = server_signer(TsigAlgorithm::HmacSha256);
        let (addr, seen) = fake_tcp(authoritative(signer.clone())).await;
        let dns = provider(addr).build().unwrap();
        dns.create_txt_record("_acme-challenge.www.example.test", "v1")
            .await
            .unwrap();
        dns.delete_txt_record("_acme-challenge.www.example.test", "v1")
            .await
            .unwrap();
        let messages = seen.messages();
        assert_eq!(messages.len(), 4, "SOA, update, SOA, update");
        assert_eq!(messages[0].metadata.op_code, OpCode::Query);
        assert!(!messages[0].metadata.recursion_desired);
        assert_eq!(messages[0].queries[0].query_type(), RecordType::SOA);
        assert_eq!(messages[1].metadata.op_code, OpCode::Update);
        assert_eq!(
            messages[1].queries[0].name(),
            &Name::from_ascii("example.test.").unwrap()
        );
        assert_eq!(messages[3].authorities[0].dns_class, DNSClass::NONE);
        // The server can verify our signature.
        for raw in [&seen.raw()[1], &seen.raw()[3]] {
            signer.verify_message_byte(raw, None, true).unwrap();
        }
        // A name the server is not authoritative for.
        let err = dns
            .create_txt_record("_acme-challenge.other.test", "v1")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
        // A fixed zone not holding the name: no update is sent.
        let before = seen.raw().len();
        let fixed = provider(addr).zone("delegated.test").build().unwrap();
        let err = fixed
            .create_txt_record("_acme-challenge.www.example.test", "v1")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
        assert_eq!(seen.raw().len(), before);
    }

    #[tokio::test]
    async fn every_algorithm_signs_and_verifies() {
        for algorithm in [TsigAlgorithm::HmacSha384, TsigAlgorithm::HmacSha512] {
            let signer = server_signer(algorithm);
            let (addr, seen) = fake_tcp(Arc::new(move |req| {
                vec![answer(req, ResponseCode::NoError, Some(&signer))]
            }))
            .await;
            let dns = Rfc2136::builder(addr)
                .tsig(KEY, SECRET, algorithm)
                .zone("example.test")
                .build()
                .unwrap();
            dns.create_txt_record("_acme-challenge.example.test", "v")
                .await
                .unwrap();
            let sent = &seen.messages()[0];
            let tsig = sent.signature.as_ref().unwrap();
            assert_eq!(tsig.data.algorithm, algorithm.to_hickory());
        }
    }

    #[tokio::test]
    async fn an_unsigned_success_is_not_trusted() {
        let (addr, _) = fake_tcp(Arc::new(|req| {
            vec![answer(req, ResponseCode::NoError, None)]
        }))
        .await;
        let dns = provider(addr).zone("example.test").build().unwrap();
        let err = dns
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DnsError::Rejected { detail, .. } if detail.contains("TSIG")),
            "{err}"
        );
        // Signed with another secret: not trusted either.
        let other = forger();
        let (addr, _) = fake_tcp(Arc::new(move |req| {
            vec![answer(req, ResponseCode::NoError, Some(&other))]
        }))
        .await;
        let dns = provider(addr).zone("example.test").build().unwrap();
        let err = dns
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_bad_signature_answer_is_auth_refused() {
        let (addr, _) = fake_tcp(Arc::new(|req| vec![bad_signature(req)])).await;
        let dns = provider(addr).zone("example.test").build().unwrap();
        let err = dns
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DnsError::AuthRefused { detail, .. } if detail.contains("BADSIG")),
            "{err}"
        );
        assert!(!err.to_string().contains(SECRET));
    }

    #[tokio::test]
    async fn udp_skips_forged_answers_and_accepts_the_signed_one() {
        let signer = server_signer(TsigAlgorithm::HmacSha256);
        let (addr, seen) = fake_udp(Arc::new(move |req| {
            // An unsigned "success" (what an off-path forger could send), a
            // datagram with another id, then the real answer.
            let mut other_id = answer(req, ResponseCode::NoError, Some(&signer));
            other_id[0] ^= 0xff;
            vec![
                answer(req, ResponseCode::NoError, None),
                other_id,
                answer(req, ResponseCode::NoError, Some(&signer)),
            ]
        }))
        .await;
        let dns = provider(addr)
            .zone("example.test")
            .transport(Rfc2136Transport::Udp)
            .build()
            .unwrap();
        dns.create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap();
        assert_eq!(seen.raw().len(), 1);
    }

    /// A signer with the right key name but another secret: what a forger
    /// without the secret can produce at best.
    fn forger() -> TSigner {
        TSigner::new(
            b"another secret".to_vec(),
            HickoryTsigAlgorithm::HmacSha256,
            Name::from_ascii("acme-key.").unwrap(),
            FUDGE,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn udp_skips_forged_error_answers() {
        let signer = server_signer(TsigAlgorithm::HmacSha256);
        let (addr, _) = fake_udp(Arc::new(move |req| {
            // What an off-path forger could send before the real answer:
            // an unsigned REFUSED, a NOTAUTH signed with another secret.
            vec![
                answer(req, ResponseCode::Refused, None),
                answer(req, ResponseCode::NotAuth, Some(&forger())),
                answer(req, ResponseCode::NoError, Some(&signer)),
            ]
        }))
        .await;
        let dns = provider(addr)
            .zone("example.test")
            .transport(Rfc2136Transport::Udp)
            .build()
            .unwrap();
        dns.create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap();

        // Alone, a forged error is no answer: the update times out (retried).
        let (addr, _) = fake_udp(Arc::new(|req| {
            vec![answer(req, ResponseCode::Refused, None)]
        }))
        .await;
        let dns = provider(addr)
            .zone("example.test")
            .transport(Rfc2136Transport::Udp)
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = dns
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn udp_takes_signed_errors_and_the_unsigned_tsig_errors() {
        let signer = server_signer(TsigAlgorithm::HmacSha256);
        let (addr, _) = fake_udp(Arc::new(move |req| {
            vec![answer(req, ResponseCode::Refused, Some(&signer))]
        }))
        .await;
        let udp = |addr| {
            provider(addr)
                .zone("example.test")
                .transport(Rfc2136Transport::Udp)
                .build()
                .unwrap()
        };
        let err = udp(addr)
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DnsError::AuthRefused { detail, .. } if detail.contains("REFUSED")),
            "{err}"
        );
        // BADSIG comes unsigned (RFC 8945 §5.3.2) and still counts.
        let (addr, _) = fake_udp(Arc::new(|req| vec![bad_signature(req)])).await;
        let err = udp(addr)
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DnsError::AuthRefused { detail, .. } if detail.contains("BADSIG")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn tcp_trusts_unsigned_errors_but_not_badly_signed_ones() {
        let (addr, _) = fake_tcp(Arc::new(|req| {
            vec![answer(req, ResponseCode::Refused, None)]
        }))
        .await;
        let dns = provider(addr).zone("example.test").build().unwrap();
        let err = dns
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::AuthRefused { .. }), "{err}");
        let (addr, _) = fake_tcp(Arc::new(|req| {
            vec![answer(req, ResponseCode::Refused, Some(&forger()))]
        }))
        .await;
        let dns = provider(addr).zone("example.test").build().unwrap();
        let err = dns
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DnsError::Rejected { detail, .. } if detail.contains("does not verify")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_transient() {
        let (addr, _) = fake_udp(Arc::new(|_| Vec::new())).await;
        let dns = provider(addr)
            .zone("example.test")
            .transport(Rfc2136Transport::Udp)
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let err = dns
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        // Without a fixed zone, the SOA lookup times out the same way.
        let dns = provider(addr)
            .transport(Rfc2136Transport::Udp)
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let err = dns
            .delete_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }
}
