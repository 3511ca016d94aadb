//! DNS-01 (RFC 8555 §8.4): proving control of a name with a TXT record at
//! `_acme-challenge.<name>`, the only challenge that validates wildcards and
//! the only one that needs no open port.
//!
//! The user documentation is on [`Dns01Solver`].

// Used by the providers, which land next.
pub(crate) mod acme_dns;
pub(crate) mod challtestsrv;
pub(crate) mod cloudflare;
pub(crate) mod desec;
pub(crate) mod digitalocean;
pub(crate) mod exec;
pub(crate) mod hetzner;
#[allow(dead_code)]
pub(crate) mod http;
pub(crate) mod name_lock;
pub(crate) mod powerdns;
pub(crate) mod propagation;
mod provider;
#[cfg(test)]
mod provider_checks;
mod query;
pub(crate) mod rfc2136;
pub(crate) mod route53;
#[cfg(test)]
mod standin;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use self::propagation::{Lookup, QUERY_TIMEOUT, Visibility};
pub use self::provider::{DnsError, DnsProvider};
use super::{Challenge, Solver};
use crate::acme::types::ChallengeType;
use crate::error::SolverError;
use crate::identifier::{DomainName, Identifier};

/// How long [`Dns01Solver`] waits for the record to be visible, by default.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often it checks meanwhile, by default.
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(2);
/// The port authoritative name servers are asked on, by default.
pub(crate) const DEFAULT_NAMESERVER_PORT: u16 = 53;
/// How many times a provider call failing with a retryable error is tried.
pub(crate) const PROVIDER_ATTEMPTS: u32 = 4;
/// The first delay before a transiently failed provider call is made again
/// (it doubles, up to [`MAX_PROVIDER_RETRY_DELAY`]).
pub(crate) const DEFAULT_PROVIDER_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between provider attempts, whatever a `Retry-After` says.
pub(crate) const MAX_PROVIDER_RETRY_DELAY: Duration = Duration::from_secs(30);
/// The smallest polling interval accepted (no busy loop).
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest propagation timeout accepted.
pub(crate) const MAX_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Solves DNS-01 challenges through a [`DnsProvider`].
///
/// [`Dns01Solver::builder`] sets the options. One solver may serve many
/// orders at once. It writes the record through its provider and:
///
/// 1. follows a CNAME at `_acme-challenge.<name>` (at most 8 hops) and
///    writes the record where it points: delegating validation to a zone of
///    its own, so the DNS API key can change only that zone, is the safe
///    setup. An
///    explicit [`override_domain`](Dns01SolverBuilder::override_domain)
///    replaces the lookup;
/// 2. waits until every authoritative name server of the record's zone answers
///    the value, asking them directly with recursion off (found through SOA
///    and NS lookups at the bootstrap resolvers), or the given
///    [`resolvers`](Dns01SolverBuilder::resolvers) instead; only then is the CA
///    told to validate;
/// 3. removes exactly its own value afterwards, so the apex and wildcard
///    values of one order, and other tools' values, survive.
///
/// **A wildcard and its apex** are validated at the same record name. Ask
/// for both in one certificate (`obtain(["example.com", "*.example.com"])`):
/// both values are written before the CA is told. As two certificates
/// obtained at the same time, a CA whose resolver caches the TXT set may
/// validate the second order against the set it saw before that order's
/// value was written; the order then fails and is retried at its retry time.
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use std::time::Duration;
/// use certauto::{AcmeIssuer, AcmeIssuerBuilder, Dns01Solver, DnsProvider, LETS_ENCRYPT_STAGING};
///
/// // `dns` is one of the providers of `certauto::dns`, or your own.
/// fn issuer(dns: impl DnsProvider + 'static) -> AcmeIssuerBuilder {
///     let solver = Dns01Solver::with_timeouts(dns, Duration::from_secs(180), Duration::from_secs(5));
///     AcmeIssuer::builder()
///         .ca(LETS_ENCRYPT_STAGING)
///         .email("admin@example.com")
///         .agreed(true)
///         .dns01_solver(solver)
/// }
/// ```
#[derive(Clone)]
pub struct Dns01Solver {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<dyn DnsProvider>,
    lookup: Lookup,
    propagation_delay: Duration,
    propagation_timeout: Duration,
    polling_interval: Duration,
    check_propagation: bool,
    follow_cnames: bool,
    override_domain: Option<DomainName>,
    retry_delay: Duration,
    /// The records presented, by challenge URL, for `wait` and `cleanup`.
    records: Mutex<HashMap<String, Record>>,
}

/// One TXT value of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    fqdn: String,
    value: String,
}

impl fmt::Debug for Dns01Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Dns01Solver")
            .field("provider", &inner.provider)
            .field("propagation_delay", &inner.propagation_delay)
            .field("propagation_timeout", &inner.propagation_timeout)
            .field("polling_interval", &inner.polling_interval)
            .field("check_propagation", &inner.check_propagation)
            .field("resolvers", &inner.lookup.check_resolvers)
            .field("bootstrap_resolvers", &inner.lookup.bootstrap)
            .field("follow_cnames", &inner.follow_cnames)
            .field("override_domain", &inner.override_domain)
            .finish_non_exhaustive()
    }
}

impl Dns01Solver {
    /// A solver with the default propagation timeout (2 minutes) and polling
    /// interval (2 seconds), checking the authoritative name servers.
    pub fn new(provider: impl DnsProvider + 'static) -> Self {
        Self::builder(provider).build()
    }

    /// A solver that waits at most `propagation_timeout` for the record,
    /// checking every `polling_interval`.
    pub fn with_timeouts(
        provider: impl DnsProvider + 'static,
        propagation_timeout: Duration,
        polling_interval: Duration,
    ) -> Self {
        Self::builder(provider)
            .propagation_timeout(propagation_timeout)
            .polling_interval(polling_interval)
            .build()
    }

    /// A builder for every option.
    pub fn builder(provider: impl DnsProvider + 'static) -> Dns01SolverBuilder {
        Dns01SolverBuilder {
            provider: Arc::new(provider),
            propagation_delay: Duration::ZERO,
            propagation_timeout: DEFAULT_PROPAGATION_TIMEOUT,
            polling_interval: DEFAULT_POLLING_INTERVAL,
            check_propagation: true,
            resolvers: Vec::new(),
            bootstrap: None,
            nameserver_port: DEFAULT_NAMESERVER_PORT,
            query_timeout: QUERY_TIMEOUT,
            follow_cnames: true,
            override_domain: None,
            retry_delay: DEFAULT_PROVIDER_RETRY_DELAY,
        }
    }

    /// The record name and value for `challenge`: CNAMEs followed unless an
    /// override domain is set.
    async fn record_for(&self, challenge: &Challenge) -> Result<Record, SolverError> {
        let inner = &self.inner;
        let Identifier::Dns(name) = &challenge.identifier else {
            return Err(SolverError::Unsupported(ChallengeType::Dns01));
        };
        let value = challenge.dns01_value();
        if let Some(domain) = &inner.override_domain {
            return Ok(Record {
                fqdn: format!("_acme-challenge.{}", domain.as_str()),
                value,
            });
        }
        // The identifier of a wildcard order comes without `*.`; strip it anyway.
        let base = name.as_str().trim_start_matches("*.");
        let fqdn = format!("_acme-challenge.{base}");
        if !inner.follow_cnames {
            return Ok(Record { fqdn, value });
        }
        let target =
            inner
                .lookup
                .follow_cnames(&fqdn)
                .await
                .map_err(|e| SolverError::DnsLookup {
                    record: fqdn.clone(),
                    source: Box::new(e),
                })?;
        if target != fqdn {
            tracing::info!(record = %fqdn, target = %target, "DNS-01: _acme-challenge is a CNAME; writing the record where it points");
        }
        Ok(Record {
            fqdn: target,
            value,
        })
    }

    /// Calls the provider, retrying rate limits and transient failures.
    async fn with_retries<'a, F, Fut>(
        &self,
        record: &'a Record,
        what: &str,
        call: F,
    ) -> Result<(), SolverError>
    where
        F: Fn(&'a str, &'a str) -> Fut,
        Fut: std::future::Future<Output = Result<(), DnsError>>,
    {
        let mut delay = self.inner.retry_delay;
        let mut attempt = 1;
        loop {
            match call(&record.fqdn, &record.value).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < PROVIDER_ATTEMPTS => {
                    let wait = match &e {
                        DnsError::RateLimited {
                            retry_after: Some(after),
                            ..
                        } => *after,
                        _ => delay,
                    }
                    .min(MAX_PROVIDER_RETRY_DELAY);
                    tracing::warn!(record = %record.fqdn, attempt, ?wait, error = %crate::error::ErrorChain(&e),
                        "DNS-01: could not {what} the record; retrying");
                    tokio::time::sleep(wait).await;
                    delay = delay.saturating_mul(2).min(MAX_PROVIDER_RETRY_DELAY);
                    attempt += 1;
                }
                Err(source) => {
                    return Err(SolverError::Dns {
                        record: record.fqdn.clone(),
                        source,
                    });
                }
            }
        }
    }
}

#[async_trait]
impl Solver for Dns01Solver {
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
        if challenge.challenge_type != ChallengeType::Dns01 {
            return Err(SolverError::Unsupported(challenge.challenge_type.clone()));
        }
        let record = self.record_for(challenge).await?;
        // Remembered before the provider is called: a present dropped midway
        // is followed by a cleanup that must know what to delete.
        if let Ok(mut records) = self.inner.records.lock() {
            records.insert(challenge.url.clone(), record.clone());
        }
        tracing::debug!(record = %record.fqdn, identifier = %challenge.identifier, "DNS-01: adding TXT value");
        let provider = &self.inner.provider;
        self.with_retries(&record, "add", |fqdn, value| {
            provider.create_txt_record(fqdn, value)
        })
        .await
    }

    async fn wait(&self, challenge: &Challenge) -> Result<(), SolverError> {
        let inner = &self.inner;
        let record = inner
            .records
            .lock()
            .ok()
            .and_then(|records| records.get(&challenge.url).cloned());
        let Some(record) = record else {
            return Ok(());
        };
        if !inner.propagation_delay.is_zero() {
            tokio::time::sleep(inner.propagation_delay).await;
        }
        if !inner.check_propagation {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let deadline = started + inner.propagation_timeout;
        let mut servers = None;
        let mut last = String::from("not checked yet");
        let mut checks = 0u32;
        loop {
            checks += 1;
            // One round (finding the zone and its servers through slow or
            // dead resolvers, then asking them) may take many query
            // timeouts: it is cut at the deadline.
            let round = async {
                // The servers are looked up once and again after a failure.
                if servers.is_none() {
                    match inner.lookup.check_servers(&record.fqdn).await {
                        Ok(found) => servers = Some(found),
                        Err(e) => last = e.to_string(),
                    }
                }
                if let Some((list, recursion)) = &servers {
                    match inner
                        .lookup
                        .is_visible(&record.fqdn, &record.value, list, *recursion)
                        .await
                    {
                        Ok(Visibility::Visible) => return true,
                        Ok(Visibility::Pending(detail)) => last = detail,
                        Err(e) => {
                            last = e.to_string();
                            servers = None;
                        }
                    }
                }
                false
            };
            match tokio::time::timeout_at(deadline, round).await {
                Ok(true) => {
                    tracing::debug!(record = %record.fqdn, checks, waited = ?started.elapsed(), "DNS-01: record visible");
                    return Ok(());
                }
                Ok(false) => {}
                Err(_) => {
                    last = format!("a check was still running at the deadline; before it: {last}");
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(SolverError::PropagationTimeout {
                    record: record.fqdn.clone(),
                    waited: now - started,
                    detail: last,
                });
            }
            tracing::trace!(record = %record.fqdn, detail = %last, "DNS-01: record not visible yet");
            tokio::time::sleep(inner.polling_interval.min(deadline - now)).await;
        }
    }

    async fn cleanup(&self, challenge: &Challenge) -> Result<(), SolverError> {
        let record = self
            .inner
            .records
            .lock()
            .ok()
            .and_then(|mut records| records.remove(&challenge.url));
        let Some(record) = record else {
            return Ok(());
        };
        tracing::debug!(record = %record.fqdn, "DNS-01: removing TXT value");
        let provider = &self.inner.provider;
        self.with_retries(&record, "delete", |fqdn, value| {
            provider.delete_txt_record(fqdn, value)
        })
        .await
    }

    /// Deletes the challenge's TXT value where [`present`](Solver::present)
    /// would have written it (following the CNAME, or at the override
    /// domain), though this solver did not present it.
    async fn cleanup_stale(&self, challenge: &Challenge) -> Result<(), SolverError> {
        if challenge.challenge_type != ChallengeType::Dns01 {
            return Ok(());
        }
        let remembered = self
            .inner
            .records
            .lock()
            .ok()
            .is_some_and(|records| records.contains_key(&challenge.url));
        if remembered {
            return self.cleanup(challenge).await;
        }
        let record = self.record_for(challenge).await?;
        tracing::debug!(record = %record.fqdn, "DNS-01: removing a TXT value another instance added");
        let provider = &self.inner.provider;
        self.with_retries(&record, "delete", |fqdn, value| {
            provider.delete_txt_record(fqdn, value)
        })
        .await
    }
}

/// Builds a [`Dns01Solver`].
#[derive(Debug)]
pub struct Dns01SolverBuilder {
    provider: Arc<dyn DnsProvider>,
    propagation_delay: Duration,
    propagation_timeout: Duration,
    polling_interval: Duration,
    check_propagation: bool,
    resolvers: Vec<SocketAddr>,
    bootstrap: Option<Vec<SocketAddr>>,
    nameserver_port: u16,
    query_timeout: Duration,
    follow_cnames: bool,
    override_domain: Option<DomainName>,
    retry_delay: Duration,
}

impl Dns01SolverBuilder {
    /// How long to wait after writing the record before the first check
    /// (default none): for providers whose API answers before the record
    /// is served.
    pub fn propagation_delay(mut self, delay: Duration) -> Self {
        self.propagation_delay = delay.min(MAX_PROPAGATION_TIMEOUT);
        self
    }

    /// The longest wait for the record to be visible (default 2 minutes,
    /// at most a day). The order fails with
    /// [`SolverError::PropagationTimeout`] after it.
    pub fn propagation_timeout(mut self, timeout: Duration) -> Self {
        self.propagation_timeout = timeout.min(MAX_PROPAGATION_TIMEOUT);
        self
    }

    /// How often to check meanwhile (default 2 seconds, at least 10 ms).
    pub fn polling_interval(mut self, interval: Duration) -> Self {
        self.polling_interval = interval.max(MIN_INTERVAL);
        self
    }

    /// Whether to check propagation at all (default yes). Without the check
    /// the CA is told as soon as the provider accepted the record (after the
    /// [`propagation_delay`](Self::propagation_delay)).
    pub fn check_propagation(mut self, check: bool) -> Self {
        self.check_propagation = check;
        self
    }

    /// Check propagation against these resolvers (asked with recursion on)
    /// instead of the zone's authoritative servers: for split-horizon DNS,
    /// where the CA's view is not the authoritative servers', and for tests.
    /// They also serve as the bootstrap resolvers unless those are set.
    pub fn resolvers(mut self, resolvers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.resolvers = resolvers.into_iter().collect();
        self
    }

    /// The recursive resolvers used to follow CNAMEs and to find the zone
    /// and its name servers (default: those of `/etc/resolv.conf`, or the
    /// [`resolvers`](Self::resolvers) when set).
    pub fn bootstrap_resolvers(mut self, resolvers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.bootstrap = Some(resolvers.into_iter().collect());
        self
    }

    /// The port the authoritative name servers are asked on (default 53;
    /// another only for test setups, since NS records carry no port).
    pub fn nameserver_port(mut self, port: u16) -> Self {
        self.nameserver_port = port;
        self
    }

    /// The time one DNS exchange may take (default 5 seconds).
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout.clamp(MIN_INTERVAL, MAX_PROPAGATION_TIMEOUT);
        self
    }

    /// Whether to follow a CNAME at `_acme-challenge.<name>` (default yes).
    pub fn follow_cnames(mut self, follow: bool) -> Self {
        self.follow_cnames = follow;
        self
    }

    /// Write every record at `_acme-challenge.<domain>` instead of at the
    /// validated name, with no CNAME lookup: for a delegation the resolvers
    /// cannot see (the CNAME itself must still be in place for the CA).
    pub fn override_domain(mut self, domain: DomainName) -> Self {
        self.override_domain = Some(domain);
        self
    }

    /// The first wait before retrying a provider call that failed
    /// transiently (default 1 second, doubling, at most 30 seconds; a
    /// provider's `Retry-After` wins). Calls are tried 4 times.
    pub fn provider_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay.min(MAX_PROVIDER_RETRY_DELAY);
        self
    }

    /// The solver.
    pub fn build(self) -> Dns01Solver {
        let bootstrap = match self.bootstrap {
            Some(list) => list,
            None if !self.resolvers.is_empty() => self.resolvers.clone(),
            None => query::system_resolvers(),
        };
        Dns01Solver {
            inner: Arc::new(Inner {
                provider: self.provider,
                lookup: Lookup {
                    bootstrap,
                    check_resolvers: self.resolvers,
                    nameserver_port: self.nameserver_port,
                    query_timeout: self.query_timeout,
                },
                propagation_delay: self.propagation_delay,
                propagation_timeout: self.propagation_timeout,
                polling_interval: self.polling_interval,
                check_propagation: self.check_propagation,
                follow_cnames: self.follow_cnames,
                override_domain: self.override_domain,
                retry_delay: self.retry_delay,
                records: Mutex::new(HashMap::new()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A fault injector standing in for a DNS host: fails the first
    /// `failures` calls with `fault`, then keeps values in memory.
    #[derive(Debug, Default)]
    struct FaultyProvider {
        failures: AtomicU32,
        fault: Mutex<Option<fn() -> DnsError>>,
        calls: AtomicU32,
        values: Mutex<Vec<(String, String)>>,
    }

    impl FaultyProvider {
        fn failing(times: u32, fault: fn() -> DnsError) -> Arc<Self> {
            let p = Self::default();
            p.failures.store(times, Ordering::SeqCst);
            *p.fault.lock().unwrap() = Some(fault);
            Arc::new(p)
        }

        fn fail(&self) -> Result<(), DnsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                if let Some(fault) = *self.fault.lock().unwrap() {
                    return Err(fault());
                }
            }
            Ok(())
        }
    }

    #[async_trait]
    impl DnsProvider for FaultyProvider {
        async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
            self.fail()?;
            self.values
                .lock()
                .unwrap()
                .push((fqdn.to_owned(), value.to_owned()));
            Ok(())
        }

        async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
            self.fail()?;
            self.values
                .lock()
                .unwrap()
                .retain(|(f, v)| !(f == fqdn && v == value));
            Ok(())
        }
    }

    fn challenge(name: &str, url: &str) -> Challenge {
        Challenge::new(
            Identifier::parse(name).unwrap(),
            ChallengeType::Dns01,
            "token".into(),
            format!("token.{url}"),
            url.into(),
        )
    }

    fn solver(provider: Arc<FaultyProvider>) -> Dns01SolverBuilder {
        Dns01Solver::builder(provider)
            .follow_cnames(false)
            .check_propagation(false)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_cleanup_removes_exactly_ours() {
        let provider =
            FaultyProvider::failing(2, || DnsError::transient("test", "connection reset"));
        let solver = solver(provider.clone()).build();
        let apex = challenge("example.test", "https://ca/chall/1");
        let wildcard = challenge("example.test", "https://ca/chall/2");
        solver.present(&apex).await.unwrap();
        solver.present(&wildcard).await.unwrap();
        solver.wait(&apex).await.unwrap();
        assert_eq!(provider.calls.load(Ordering::SeqCst), 4);
        assert_eq!(provider.values.lock().unwrap().len(), 2);
        solver.cleanup(&apex).await.unwrap();
        let left = provider.values.lock().unwrap().clone();
        assert_eq!(
            left,
            [(
                "_acme-challenge.example.test".to_owned(),
                wildcard.dns01_value()
            )]
        );
        // A second cleanup, or one for a challenge never presented, asks nothing.
        let calls = provider.calls.load(Ordering::SeqCst);
        solver.cleanup(&apex).await.unwrap();
        solver
            .cleanup(&challenge("other.test", "https://ca/chall/9"))
            .await
            .unwrap();
        assert_eq!(provider.calls.load(Ordering::SeqCst), calls);
    }

    #[tokio::test(start_paused = true)]
    async fn auth_errors_are_not_retried() {
        let provider = FaultyProvider::failing(10, || DnsError::AuthRefused {
            provider: "test",
            detail: "bad token".into(),
        });
        let solver = solver(provider.clone()).build();
        let err = solver
            .present(&challenge("example.test", "https://ca/chall/1"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SolverError::Dns {
                    source: DnsError::AuthRefused { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let provider = FaultyProvider::failing(100, || DnsError::RateLimited {
            provider: "test",
            retry_after: Some(Duration::from_secs(3600)),
        });
        let solver = solver(provider.clone()).build();
        let err = solver
            .present(&challenge("example.test", "https://ca/chall/1"))
            .await
            .unwrap_err();
        assert!(matches!(err, SolverError::Dns { .. }), "{err}");
        assert_eq!(provider.calls.load(Ordering::SeqCst), PROVIDER_ATTEMPTS);
    }

    #[tokio::test]
    async fn override_domain_and_unsupported_challenges() {
        let provider = Arc::new(FaultyProvider::default());
        let solver = solver(provider.clone())
            .override_domain(DomainName::parse("acme.delegated.test").unwrap())
            .build();
        solver
            .present(&challenge("www.example.test", "https://ca/chall/1"))
            .await
            .unwrap();
        assert_eq!(
            provider.values.lock().unwrap()[0].0,
            "_acme-challenge.acme.delegated.test"
        );
        let mut http = challenge("www.example.test", "https://ca/chall/2");
        http.challenge_type = ChallengeType::Http01;
        assert!(matches!(
            solver.present(&http).await,
            Err(SolverError::Unsupported(ChallengeType::Http01))
        ));
        let ip = Challenge::new(
            Identifier::parse("192.0.2.1").unwrap(),
            ChallengeType::Dns01,
            "t".into(),
            "t.k".into(),
            "https://ca/chall/3".into(),
        );
        assert!(matches!(
            solver.present(&ip).await,
            Err(SolverError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn propagation_times_out_naming_the_record() {
        // A resolver that never answers: every check times out.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let provider = Arc::new(FaultyProvider::default());
        let solver = Dns01Solver::builder(provider)
            .follow_cnames(false)
            .resolvers([silent.local_addr().unwrap()])
            .query_timeout(Duration::from_millis(20))
            .propagation_timeout(Duration::from_millis(100))
            .polling_interval(Duration::from_millis(10))
            .build();
        let c = challenge("example.test", "https://ca/chall/1");
        solver.present(&c).await.unwrap();
        let err = solver.wait(&c).await.unwrap_err();
        match err {
            SolverError::PropagationTimeout { record, detail, .. } => {
                assert_eq!(record, "_acme-challenge.example.test");
                assert!(detail.contains("no answer"), "{detail}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_round_is_cut_at_the_propagation_deadline() {
        // Silent bootstrap resolvers: finding the zone alone takes one query
        // timeout per resolver, far past the propagation timeout.
        let silent = [
            tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        ];
        let provider = Arc::new(FaultyProvider::default());
        let timeout = Duration::from_secs(1);
        let solver = Dns01Solver::builder(provider)
            .follow_cnames(false)
            .bootstrap_resolvers(silent.iter().map(|s| s.local_addr().unwrap()))
            .query_timeout(Duration::from_secs(60))
            .propagation_timeout(timeout)
            .build();
        let c = challenge("example.test", "https://ca/chall/1");
        solver.present(&c).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = solver.wait(&c).await.unwrap_err();
        // The paused clock only moves to the next timer: no slack needed.
        assert!(started.elapsed() <= timeout, "{:?}", started.elapsed());
        match err {
            SolverError::PropagationTimeout { waited, detail, .. } => {
                assert!(waited <= timeout, "{waited:?}");
                assert!(detail.contains("still running at the deadline"), "{detail}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn debug_and_defaults() {
        let solver = Dns01Solver::new(Arc::new(FaultyProvider::default()));
        assert_eq!(
            solver.inner.propagation_timeout,
            DEFAULT_PROPAGATION_TIMEOUT
        );
        assert_eq!(solver.inner.polling_interval, DEFAULT_POLLING_INTERVAL);
        let solver = Dns01Solver::with_timeouts(
            Arc::new(FaultyProvider::default()),
            Duration::MAX,
            Duration::ZERO,
        );
        assert_eq!(solver.inner.propagation_timeout, MAX_PROPAGATION_TIMEOUT);
        assert_eq!(solver.inner.polling_interval, MIN_INTERVAL);
        assert!(format!("{solver:?}").contains("Dns01Solver"));
    }
}
