//! Issuers: where certificates come from.
//!
//! [`Config`](crate::Config) generates the key and CSR and hands them to an
//! [`Issuer`] (whose contract is on the trait); with several issuers
//! configured it tries them in order or at random ([`IssuerPolicy`]),
//! failing over to the next, and names no public CA can
//! issue go to the [`LocalCa`] (the routing is in `set.rs`). [`AcmeIssuer`]
//! obtains certificates from any ACME CA, [`CaPreset`]s describe the known
//! public ones, and [`ZeroSslIssuer`] fetches ZeroSSL's EAB credentials
//! before issuing through ACME.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::acme::types::RevocationReason;
use crate::certificate::Certificate;
use crate::error::Error;
use crate::identifier::Identifier;

pub(crate) mod acme;
pub(crate) mod local;
pub(crate) mod presets;
pub(crate) mod set;
pub(crate) mod zerossl;

pub use acme::{AcmeIssuer, AcmeIssuerBuilder};
pub use local::{
    DEFAULT_LOCAL_LEAF_LIFETIME, LOCAL_CA_ISSUER_KEY, LocalCa, MAX_LOCAL_LEAF_LIFETIME,
    is_internal_name, is_local_name,
};
pub use presets::{
    CaPreset, GOOGLE_TRUST_SERVICES_PRODUCTION, GOOGLE_TRUST_SERVICES_STAGING, IpCertificates,
    LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING, ZEROSSL_DIRECTORY,
};
pub use set::IssuerPolicy;
pub(crate) use set::{IssuerSet, pick_ready};
pub use zerossl::{ZEROSSL_API_URL, ZeroSslError, ZeroSslIssuer, ZeroSslIssuerBuilder};

/// What to issue.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssueRequest<'a> {
    /// The names, primary first; the CSR carries exactly these.
    pub names: &'a [Identifier],
    /// The DER CSR.
    pub csr_der: &'a [u8],
    /// The ARI CertID of the certificate being replaced (RFC 9773), for renewals.
    pub replaces: Option<&'a str>,
    /// Which attempt this is for these names: 1 for the first, 2 and more
    /// for retries after failed attempts (the retry schedule's count). An
    /// issuer may act on it, as [`AcmeIssuerBuilder::staging_on_retry`] does.
    pub attempt: u32,
}

impl<'a> IssueRequest<'a> {
    /// Creates a request.
    pub fn new(names: &'a [Identifier], csr_der: &'a [u8]) -> Self {
        Self {
            names,
            csr_der,
            replaces: None,
            attempt: 1,
        }
    }

    /// Sets the attempt number (at least 1).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Sets the certificate this replaces.
    pub fn replaces(mut self, cert_id: Option<&'a str>) -> Self {
        self.replaces = cert_id;
        self
    }
}

/// A certificate chain an issuer produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuedCertificate {
    /// The PEM chain, leaf first.
    pub chain_pem: String,
    /// Where the CA keeps it, if it says.
    pub url: Option<String>,
}

impl IssuedCertificate {
    /// Creates an issued certificate.
    pub fn new(chain_pem: String, url: Option<String>) -> Self {
        Self { chain_pem, url }
    }
}

/// Something that issues certificates.
///
/// # Contract
///
/// Implementations MUST:
/// - be safe to call concurrently: [`Config`](crate::Config) serialises work
///   per certificate name (in process and through the storage lock), but
///   orders for different names run at the same time on one issuer (8 at a
///   time by default in [`Config::manage`](crate::Config::manage));
/// - be cancel-safe: the future of [`issue`](Self::issue) may be dropped at
///   any await (a caller's timeout, a lost storage lock, shutdown); it must
///   then leave no state that affects later calls (presented challenges are
///   cleaned up, as [`AcmeIssuer`] does from a drop guard). A dropped order
///   may have been created at the CA: that is harmless;
/// - never store the certificate themselves: `Config` stores it, in one
///   atomic record, while it still holds the lock;
/// - be stable in [`issuer_key`](Self::issuer_key): certificates are stored
///   and found under it.
///
/// Errors: every error from `issue` makes `Config` try the next configured
/// issuer (failover) and puts this issuer behind the others for these names
/// for a while (see [`ConfigBuilder::issuer_policy`](crate::ConfigBuilder::issuer_policy));
/// the errors of all are returned together in
/// [`Error::AllIssuersFailed`]. Refusals that
/// do not depend on the CA (a wildcard without DNS-01, a profile the CA does
/// not offer) belong in [`precheck`](Self::precheck), so they fail before any
/// request. A third-party issuer wraps its own errors in
/// [`Error::Other`] so their cause chain survives.
#[async_trait]
pub trait Issuer: Send + Sync + Debug {
    /// A stable, storage-safe name for this issuer; certificates are stored
    /// under it (`certificates/<issuer_key>/...`).
    fn issuer_key(&self) -> String;

    /// Refuses, before any network request, names this issuer cannot issue
    /// for as configured (e.g. a wildcard without a DNS-01 solver).
    fn precheck(&self, _names: &[Identifier]) -> Result<(), Error> {
        Ok(())
    }

    /// The CA's published rate limits, which [`Config`](crate::Config)'s
    /// issuance limiter for this issuer follows unless
    /// [`issuance_rate_limit`](crate::ConfigBuilder::issuance_rate_limit) set
    /// one; `None` (the default) means the default limiter
    /// ([`DEFAULT_RATE_LIMIT_EVENTS`](crate::DEFAULT_RATE_LIMIT_EVENTS) per
    /// [`DEFAULT_RATE_LIMIT_WINDOW`](crate::DEFAULT_RATE_LIMIT_WINDOW)).
    fn rate_limits(&self) -> Option<crate::ratelimit::RateLimits> {
        None
    }

    /// Issues a certificate.
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedCertificate, Error>;

    /// The CA's suggested renewal window for the certificate with this ARI
    /// CertID (RFC 9773), or `Ok(None)` when the issuer has no such notion.
    async fn renewal_info(
        &self,
        _ari_cert_id: &str,
    ) -> Result<Option<crate::acme::RenewalInfo>, Error> {
        Ok(None)
    }

    /// Revokes a certificate this issuer issued.
    async fn revoke(
        &self,
        certificate: &Certificate,
        reason: Option<RevocationReason>,
    ) -> Result<(), Error>;
}
