//! Errors. One [`Error`] for the crate, with a typed sub-enum per area.

use crate::acme::problem::Problem;
use crate::acme::types::ChallengeType;
use crate::identifier::NameError;
use crate::storage::StorageError;

/// A boxed error from outside CertAuto (a third-party issuer, solver or
/// storage backend, or a dependency whose error type is not part of our API),
/// kept as the source so its cause chain survives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any error from CertAuto.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name was refused before any request was made.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The ACME exchange failed.
    #[error(transparent)]
    Acme(#[from] AcmeError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A key could not be generated, parsed or used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate could not be parsed or is unusable.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// A challenge solver failed.
    #[error(transparent)]
    Solver(#[from] SolverError),
    /// The configuration does not allow the operation.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// OCSP stapling failed.
    #[error(transparent)]
    Ocsp(#[from] OcspError),
    /// ZeroSSL's EAB credentials could not be obtained.
    #[error(transparent)]
    ZeroSsl(#[from] crate::issuer::ZeroSslError),
    /// Every configured issuer failed; the errors are in the order tried.
    #[error("all issuers failed: {}", display_all(.0))]
    AllIssuersFailed(Vec<(String, Error)>),
    /// [`Config::manage`](crate::Config::manage) could not obtain some names
    /// (the others are served); each is retried by maintenance at its retry
    /// time. By name, in the order they failed.
    #[error("could not obtain {} of the managed names: {}", .0.len(), display_all(.0))]
    ManageFailed(Vec<(String, Error)>),
    /// A third-party [`Issuer`](crate::Issuer) (or other extension) failed
    /// with an error of its own.
    #[error("{context}: {}", ErrorChain(&**source))]
    Other {
        /// What failed.
        context: &'static str,
        /// The extension's error.
        #[source]
        source: BoxError,
    },
}

fn display_all(errors: &[(String, Error)]) -> String {
    errors
        .iter()
        .map(|(issuer, e)| format!("[{issuer}] {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The CA's problem document, if this error carries one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Acme(e) => e.problem(),
            Error::AllIssuersFailed(all) | Error::ManageFailed(all) => {
                all.iter().find_map(|(_, e)| e.problem())
            }
            _ => None,
        }
    }
}

/// Displays an error with its whole cause chain, `outer: cause: root cause`,
/// leaving out a cause whose text the message before it already contains.
///
/// Every error CertAuto logs goes through this, so a log line says whether a
/// request failed because the connection was refused, reset or timed out.
///
/// ```
/// use certauto_core::ErrorChain;
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let outer = std::io::Error::other(io);
/// assert_eq!(ErrorChain(&outer).to_string(), "connection refused");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        // Bounded: a cyclic or absurdly deep chain stops here.
        for _ in 0..32 {
            let Some(cause) = next else { break };
            let text = cause.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            next = cause.source();
        }
        Ok(())
    }
}

/// Errors of the ACME protocol exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The CA answered with a problem document.
    #[error("the CA refused {url} (HTTP {status}): {problem}")]
    Problem {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The problem document.
        problem: Box<Problem>,
    },
    /// The request could not be sent or the response not received.
    #[error("request to {url} failed: {}", ErrorChain(&**source))]
    Transport {
        /// The request URL.
        url: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The CA answered with an unexpected HTTP status and no problem document.
    #[error("unexpected HTTP {status} from {url}: {body}")]
    UnexpectedStatus {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body, for diagnosis.
        body: String,
    },
    /// The response body exceeded the size bound.
    #[error("response from {url} is larger than {limit} bytes")]
    BodyTooLarge {
        /// The request URL.
        url: String,
        /// The bound.
        limit: usize,
    },
    /// The response could not be parsed.
    #[error("invalid response from {url}: {reason}")]
    InvalidResponse {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A required header was missing.
    #[error("response from {url} lacks the {header} header")]
    MissingHeader {
        /// The request URL.
        url: String,
        /// The header name.
        header: &'static str,
    },
    /// The CA kept rejecting our nonces.
    #[error("the CA rejected {attempts} nonces in a row for {url}")]
    NonceRetriesExhausted {
        /// The request URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The order became invalid.
    #[error("order {url} is invalid{}", .problem.as_ref().map(|p| format!(": {p}")).unwrap_or_default())]
    OrderInvalid {
        /// The order URL.
        url: String,
        /// Why, if the CA said.
        problem: Option<Box<Problem>>,
    },
    /// An authorization failed.
    #[error("authorization for {identifier} failed{}", .problem.as_ref().map(|p| format!(": {p}")).unwrap_or_default())]
    AuthorizationFailed {
        /// The identifier.
        identifier: String,
        /// The challenge that was attempted.
        challenge: Option<ChallengeType>,
        /// Why, if the CA said.
        problem: Option<Box<Problem>>,
    },
    /// None of the offered challenges has a configured solver.
    #[error("no configured solver for {identifier}: the CA offered {offered:?}")]
    NoUsableChallenge {
        /// The identifier.
        identifier: String,
        /// The challenge types offered.
        offered: Vec<ChallengeType>,
    },
    /// Polling did not reach a final state in time.
    #[error("{what} did not complete within {secs} s")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound, in seconds.
        secs: u64,
    },
    /// No account exists for this key (`onlyReturnExisting`).
    #[error("no account exists at the CA for this key")]
    AccountDoesNotExist,
    /// The CA requires External Account Binding but none was configured.
    #[error("the CA requires External Account Binding (EAB) credentials")]
    ExternalAccountRequired,
    /// The terms of service must be agreed first.
    #[error("the CA's terms of service must be agreed (set `agreed(true)`)")]
    TermsNotAgreed,
    /// The configured certificate profile is not one the CA's directory lists
    /// (draft-ietf-acme-profiles); refused before any order is placed.
    #[error(
        "the CA at {directory_url} offers no certificate profile {profile:?} (it offers {offered:?})"
    )]
    ProfileNotOffered {
        /// The directory URL.
        directory_url: String,
        /// The profile asked for.
        profile: String,
        /// The profiles the directory lists (possibly none).
        offered: Vec<String>,
    },
    /// A retry's trial order at the staging CA
    /// ([`AcmeIssuerBuilder::staging_on_retry`](crate::AcmeIssuerBuilder::staging_on_retry))
    /// failed, so the production CA was not asked.
    #[error("the trial order at the staging CA {directory_url} failed, so the production CA was not asked: {}", ErrorChain(&**source))]
    StagingFailed {
        /// The staging CA's directory URL.
        directory_url: String,
        /// Why the staging order failed.
        #[source]
        source: Box<Error>,
    },
    /// Signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl AcmeError {
    /// The CA's problem document, if any.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            AcmeError::Problem { problem, .. } => Some(problem),
            AcmeError::OrderInvalid { problem, .. }
            | AcmeError::AuthorizationFailed { problem, .. } => problem.as_deref(),
            AcmeError::StagingFailed { source, .. } => source.problem(),
            _ => None,
        }
    }
}

/// Key errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Key generation failed.
    #[error("could not generate a {0} key")]
    Generation(&'static str),
    /// RSA keys need the `rsa` cargo feature.
    #[error("RSA key generation needs the `rsa` cargo feature of certauto-core")]
    RsaFeatureDisabled,
    /// The key is not of a supported type.
    #[error("unsupported key type")]
    Unsupported,
    /// The PEM could not be parsed.
    #[error("invalid PEM private key")]
    InvalidPem,
    /// Signing failed.
    #[error("signing failed")]
    Signing,
    /// The private key's signatures do not verify with its public key (a
    /// corrupted or inconsistent key, such as an RSA key with a bad CRT
    /// parameter, that parses but cannot sign).
    #[error("the private key does not sign what its public key verifies")]
    Inconsistent,
    /// The EAB MAC key is not valid base64url.
    #[error("the External Account Binding MAC key is not valid base64url")]
    InvalidEabKey,
    /// Building the CSR failed.
    #[error("could not build the CSR: {0}")]
    Csr(String),
}

/// Certificate errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The PEM chain holds no certificate.
    #[error("no certificate in PEM data")]
    Empty,
    /// A certificate (or chain) could not be parsed.
    #[error("invalid certificate: {}", ErrorChain(&**.0))]
    Parse(#[source] BoxError),
    /// The local CA could not load, create or use its root.
    #[error("local CA: {}", ErrorChain(&**.0))]
    LocalCa(#[source] BoxError),
    /// The stored certificate record is malformed.
    #[error("invalid certificate record: {0}")]
    Record(&'static str),
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The private key could not be read.
    #[error("unreadable private key: {0}")]
    InvalidKey(#[source] KeyError),
}

/// Challenge solver errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SolverError {
    /// The solver could not listen.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The solver does not support this challenge.
    #[error("solver cannot solve {0} challenges")]
    Unsupported(ChallengeType),
    /// The CA sent a token that is not base64url (RFC 8555 §8.1); it is
    /// never used in a path or a storage key.
    #[error("malformed challenge token {0:?}")]
    MalformedToken(String),
    /// Sharing the challenge through storage failed.
    #[error("could not share the challenge through storage: {0}")]
    Storage(#[source] StorageError),
    /// The TLS-ALPN-01 challenge certificate or its TLS listener could not be built.
    #[error("TLS-ALPN-01 setup failed: {}", ErrorChain(&**.0))]
    TlsAlpn(#[source] BoxError),
    /// The DNS provider could not add or remove the DNS-01 record.
    #[error("DNS-01 record {record}: {source}")]
    Dns {
        /// The TXT record's name.
        record: String,
        /// What the provider said.
        #[source]
        source: crate::challenge::DnsError,
    },
    /// The DNS-01 record did not become visible at every server checked
    /// within the propagation timeout.
    #[error("DNS-01 record {record} not visible after {waited:?}: {detail}")]
    PropagationTimeout {
        /// The TXT record's name.
        record: String,
        /// How long the solver waited.
        waited: std::time::Duration,
        /// Which servers did not answer the value, and what they answered.
        detail: String,
    },
    /// A DNS lookup the DNS-01 solver needs (CNAME, SOA, NS) failed.
    #[error("DNS-01 lookup for {record} failed: {}", ErrorChain(&**source))]
    DnsLookup {
        /// The name being looked up.
        record: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A third-party solver failed with an error of its own.
    #[error("challenge solver failed: {}", ErrorChain(&**.0))]
    Other(#[source] BoxError),
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No issuer is configured.
    #[error("no issuer configured")]
    NoIssuers,
    /// Wildcard names can only be validated through DNS-01.
    #[error(
        "wildcard name {name} needs a DNS-01 solver; HTTP-01 and TLS-ALPN-01 cannot validate wildcards"
    )]
    WildcardNeedsDns01 {
        /// The wildcard name.
        name: String,
    },
    /// No certificate is stored for the name.
    #[error("no certificate is managed for {0}")]
    NotManaged(String),
    /// An earlier attempt for the name failed and its retry time has not come.
    #[error("an earlier attempt for {0} failed; it is retried at its scheduled time")]
    RetryPending(String),
    /// No solver is configured.
    #[error("no challenge solver configured for this issuer")]
    NoSolvers,
    /// A URL is not usable.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A PEM bundle of trusted roots could not be parsed.
    #[error("invalid trusted root certificates: {0}")]
    InvalidRoots(String),
    /// The CA ([`CaPreset`](crate::CaPreset)) requires External Account
    /// Binding and the issuer has no EAB credentials.
    #[error(
        "{ca} requires External Account Binding: give the issuer EAB credentials (external_account)"
    )]
    ExternalAccountRequired {
        /// The CA's name.
        ca: &'static str,
    },
    /// The CA ([`CaPreset`](crate::CaPreset)) does not issue certificates for
    /// IP addresses, or only under a profile the issuer does not order.
    #[error("{ca} does not issue a certificate for the IP address {name}{}", profile_hint(.profile_needed))]
    IpCertificatesNotIssued {
        /// The IP address.
        name: String,
        /// The CA's name.
        ca: &'static str,
        /// The profile that would allow it, if one does.
        profile_needed: Option<&'static str>,
    },
}

fn profile_hint(profile: &Option<&'static str>) -> String {
    profile.map_or_else(String::new, |p| {
        format!(" without the {p:?} profile (set it with .profile({p:?}))")
    })
}

/// OCSP errors: fetching or verifying a response ([`crate::ocsp`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    /// The certificate has no OCSP responder URL.
    #[error("the certificate names no OCSP responder")]
    NoResponder,
    /// The served chain holds no issuer certificate to check the response against.
    #[error("the certificate chain has no issuer certificate")]
    NoIssuer,
    /// The certificate or its issuer could not be parsed or do not belong together.
    #[error("unusable certificate for OCSP: {0}")]
    Certificate(String),
    /// The request could not be sent or the response not received.
    #[error("OCSP request to {url} failed: {source}")]
    Transport {
        /// The responder URL.
        url: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The responder answered with an HTTP error status.
    #[error("OCSP responder {url} answered HTTP {status}")]
    HttpStatus {
        /// The responder URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The response body exceeded the size bound.
    #[error("OCSP response from {url} is larger than {limit} bytes")]
    BodyTooLarge {
        /// The responder URL.
        url: String,
        /// The bound.
        limit: usize,
    },
    /// The response is not valid DER of the expected structure.
    #[error("malformed OCSP response: {0}")]
    Malformed(&'static str),
    /// The responder did not answer `successful` (RFC 6960 §4.2.1:
    /// 1 malformedRequest, 2 internalError, 3 tryLater, 5 sigRequired, 6 unauthorized).
    #[error("the OCSP responder refused the request (responseStatus {status})")]
    Unsuccessful {
        /// The `responseStatus` code.
        status: u8,
    },
    /// The response is not an `id-pkix-ocsp-basic` response.
    #[error("unsupported OCSP response type")]
    UnsupportedResponseType,
    /// The signature algorithm or the signer's key type is not supported.
    #[error("unsupported OCSP signature algorithm or key type")]
    UnsupportedAlgorithm,
    /// The response's signature does not verify.
    #[error("the OCSP response signature does not verify")]
    BadSignature,
    /// The response is signed by neither the issuer nor a responder the issuer authorised.
    #[error("the OCSP response is signed by neither the issuer nor an authorised responder")]
    UntrustedResponder,
    /// The response holds no status for this certificate.
    #[error("the OCSP response has no status for this certificate")]
    NoMatchingResponse,
    /// `thisUpdate` is in the future.
    #[error("the OCSP response is not yet valid (thisUpdate {this_update:?})")]
    NotYetValid {
        /// The response's `thisUpdate`.
        this_update: std::time::SystemTime,
    },
    /// The response has no `nextUpdate`, so its freshness cannot be judged.
    #[error("the OCSP response has no nextUpdate")]
    NoNextUpdate,
    /// `nextUpdate` has passed.
    #[error("the OCSP response is stale (nextUpdate {next_update:?} has passed)")]
    Stale {
        /// The response's `nextUpdate`.
        next_update: std::time::SystemTime,
    },
    /// The responder does not know the certificate.
    #[error("the OCSP responder does not know the certificate (status unknown)")]
    UnknownStatus,
}
