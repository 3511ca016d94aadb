//! The [`DnsProvider`] contract: what a DNS host must do for DNS-01.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{BoxError, ErrorChain};

/// Adds and removes the TXT records of DNS-01 challenges at one DNS host.
///
/// [`Dns01Solver`](super::Dns01Solver) calls it with the record's name and
/// value; it finds the name's zone, follows CNAMEs, retries transient
/// failures and checks propagation itself.
///
/// # Contract
///
/// - **Exact values.** [`create_txt_record`](Self::create_txt_record) adds
///   `value` to the TXT records at `fqdn`, keeping any other value there, and
///   [`delete_txt_record`](Self::delete_txt_record) removes exactly that
///   value, keeping the others. A wildcard and its apex (`*.example.com` and
///   `example.com`) are validated through the same name,
///   `_acme-challenge.example.com`, so two values of ours (and values of
///   other tools) coexist there; replacing the whole record set would make
///   one of the validations fail.
/// - **Names.** `fqdn` is a fully qualified name in lower case, without the
///   trailing dot (`_acme-challenge.www.example.com`). The provider finds the
///   zone holding it (from its API's zone list, an SOA lookup, or its
///   configuration); when it hosts no such zone it fails with
///   [`DnsError::ZoneNotFound`].
/// - **Idempotent.** Creating a value that is already there, or deleting
///   one that is not, succeeds.
/// - **Concurrency.** One provider is shared by all orders of a config: calls
///   for different names and for the same name (a wildcard and its apex) may
///   run at the same time and MUST NOT lose each other's values, for
///   example by a read-modify-write of the record set without a lock.
/// - **Cancellation.** A dropped call may or may not have changed the
///   record; the solver then still calls `delete_txt_record` for it.
/// - **Errors.** Classify failures with [`DnsError`]: the solver retries
///   [`RateLimited`](DnsError::RateLimited) and
///   [`Transient`](DnsError::Transient) a bounded number of times and gives up
///   at once on the others.
/// - **Secrets.** Credentials never appear in logs, errors or `Debug` output.
///
/// # Example
///
/// ```
/// # extern crate certauto_core as certauto;
/// use async_trait::async_trait;
/// use certauto::{DnsError, DnsProvider};
///
/// /// Writes records through some DNS host's API.
/// #[derive(Debug)]
/// struct MyDns;
///
/// #[async_trait]
/// impl DnsProvider for MyDns {
///     async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
///         // call the API: add `value` to the TXT record set at `fqdn`
///         # let _ = (fqdn, value);
///         Ok(())
///     }
///     async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
///         // call the API: remove exactly `value` from the TXT records at `fqdn`
///         # let _ = (fqdn, value);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait DnsProvider: Send + Sync + Debug {
    /// Adds `value` to the TXT records at `fqdn`, keeping the values already there.
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError>;

    /// Removes exactly `value` from the TXT records at `fqdn`; succeeds when it is not there.
    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError>;
}

#[async_trait]
impl<P: DnsProvider + ?Sized> DnsProvider for std::sync::Arc<P> {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        (**self).create_txt_record(fqdn, value).await
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        (**self).delete_txt_record(fqdn, value).await
    }
}

/// Why a [`DnsProvider`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The provider refused the credentials (HTTP 401/403, a TSIG key the
    /// server rejects). Not retried.
    #[error("{provider}: credentials refused: {detail}")]
    AuthRefused {
        /// The provider's name (`cloudflare`, `rfc2136`, ...).
        provider: &'static str,
        /// What the provider said, without the credentials.
        detail: String,
    },
    /// The provider hosts no zone that contains the name. Not retried.
    #[error("{provider}: no zone found for {name}")]
    ZoneNotFound {
        /// The provider's name.
        provider: &'static str,
        /// The record name whose zone was looked for.
        name: String,
    },
    /// The provider asked us to slow down (HTTP 429). Retried after
    /// `retry_after` when given.
    #[error("{provider}: rate limited{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited {
        /// The provider's name.
        provider: &'static str,
        /// How long the provider asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// A failure that may pass: a network error, a timeout, a server error
    /// (HTTP 5xx, DNS `SERVFAIL`). Retried.
    #[error("{provider}: temporary failure: {}", ErrorChain(&**source))]
    Transient {
        /// The provider's name.
        provider: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The provider refused the request for another reason (HTTP 4xx, DNS
    /// `REFUSED`/`NOTZONE`, a malformed answer). Not retried.
    #[error("{provider}: request refused{}: {detail}", status.map(|s| format!(" ({s})")).unwrap_or_default())]
    Rejected {
        /// The provider's name.
        provider: &'static str,
        /// The HTTP status or DNS response code, when there was one.
        status: Option<u16>,
        /// What the provider said.
        detail: String,
    },
    /// The provider's settings are unusable (a missing token, a bad URL).
    #[error("{provider}: invalid settings: {detail}")]
    Config {
        /// The provider's name.
        provider: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A third-party provider failed with an error of its own. Not retried.
    #[error("DNS provider failed: {}", ErrorChain(&**.0))]
    Other(#[source] BoxError),
}

impl DnsError {
    /// Whether retrying the same call may succeed (rate limits and transient failures).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DnsError::RateLimited { .. } | DnsError::Transient { .. }
        )
    }

    /// A [`Transient`](Self::Transient) error from any cause.
    pub fn transient(provider: &'static str, source: impl Into<BoxError>) -> Self {
        DnsError::Transient {
            provider,
            source: source.into(),
        }
    }

    /// A [`Rejected`](Self::Rejected) error.
    pub fn rejected(
        provider: &'static str,
        status: Option<u16>,
        detail: impl Into<String>,
    ) -> Self {
        DnsError::Rejected {
            provider,
            status,
            detail: detail.into(),
        }
    }

    /// A [`Config`](Self::Config) error.
    pub fn config(provider: &'static str, detail: impl Into<String>) -> Self {
        DnsError::Config {
            provider,
            detail: detail.into(),
        }
    }
}
