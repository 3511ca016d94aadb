//! [`Config`]: obtain, renew and revoke certificates, serialised per name.
//!
//! Work on one certificate is serialised twice: by an in-process mutex (so
//! two tasks of one process never both order), and by the storage lock (so
//! two processes sharing storage never both order). Under the lock, storage is
//! checked first, so a certificate another instance already obtained is reused.

pub(crate) mod backoff;
pub(crate) mod builder;
mod lifecycle;
pub(crate) mod manage;
pub(crate) mod retry;

pub use backoff::{MAX_RETRY_BACKOFF, MIN_RETRY_BACKOFF};
pub use builder::{
    ConfigBuilder, DEFAULT_OCSP_CHECK_INTERVAL, DEFAULT_RENEW_INTERVAL, DEFAULT_RENEWAL_RATIO,
    MAX_CHECK_INTERVAL,
};
pub(crate) use lifecycle::RenewMode;
pub use manage::DEFAULT_MANAGE_CONCURRENCY;
use manage::Managed;
pub(crate) use retry::RenewOutcome;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use crate::cache::CertCache;
use crate::challenge::ChallengeTokens;
use crate::clock::Clock;
use crate::error::Error;
use crate::events::{Event, EventHandler};
use crate::handshake::CertResolver;
use crate::identifier::Identifier;
use crate::issuer::{Issuer, IssuerSet, LocalCa};
use crate::keys::KeyType;
use crate::maintain::state::States;
use crate::ratelimit::RateLimiter;
use crate::storage::Storage;

/// The central coordinator: obtains, renews and revokes certificates through
/// its issuers and keeps them in its storage. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), certauto_core::Error> {
/// use std::sync::Arc;
/// use certauto_core::{AcmeIssuer, Config, FileStorage, LETS_ENCRYPT_STAGING};
///
/// let storage = Arc::new(FileStorage::new("/var/lib/certauto"));
/// let issuer = AcmeIssuer::builder()
///     .ca(LETS_ENCRYPT_STAGING)
///     .email("admin@example.com")
///     .agreed(true)
///     .storage(storage.clone())
///     .build();
/// let config = Config::builder().storage(storage).issuer(issuer).build();
/// let cert = config.obtain(["example.com", "www.example.com"]).await?;
/// println!("valid until {:?}", cert.not_after());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Config {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    /// The issuers and the local CA, with the routing between them.
    issuers: IssuerSet,
    key_type: KeyType,
    renewal_ratio: f64,
    handlers: Vec<EventHandler>,
    clock: Arc<dyn Clock>,
    name_locks: StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cache: CertCache,
    resolver: Arc<CertResolver>,
    default_name_set: bool,
    managed: StdMutex<Managed>,
    /// The limit set with `issuance_rate_limit`, for every issuer.
    rate_limit: Option<(u32, Duration)>,
    rate_limiters: StdMutex<HashMap<String, Arc<RateLimiter>>>,
    renew_interval: Duration,
    ocsp_interval: Duration,
    /// ARI state, maintenance's.
    maintenance: StdMutex<States>,
    /// Retry schedules of failed attempts (see `retry.rs`).
    retries: StdMutex<retry::Retries>,
    /// Woken when a retry is scheduled or a revocation reported, so the
    /// maintenance task looks at its schedule again.
    retry_scheduled: tokio::sync::Notify,
    /// Certificates OCSP reported revoked, for maintenance to renew: primary
    /// names and the revoked serial, kept until a renewal replaces that
    /// serial (or it is no longer served).
    revoked: StdMutex<Vec<(Vec<Identifier>, String)>>,
    /// The last stapling outcome of each cached certificate, by serial (for
    /// [`Config::status`]; see `ocsp/staple.rs`).
    staples: StdMutex<crate::ocsp::staple::StapleRecords>,
    /// How many obtains `manage` runs at once.
    manage_concurrency: usize,
    /// HTTP-01 key authorizations, shared by the solvers the builder made
    /// and the application's `AcmeLayer`.
    challenge_tokens: ChallengeTokens,
    /// The solvers `acme(..)` wrapped, and TLS-ALPN-01 challenges loaded from storage.
    shared_challenges: crate::challenge::distributed::SharedChallenges,
    /// On-demand TLS, when configured.
    on_demand: Option<Arc<crate::handshake::on_demand::OnDemand>>,
    /// Storage cleaning (`maintain/clean.rs`).
    storage_cleaning: crate::maintain::StorageCleaning,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("storage", &self.inner.storage)
            .field("issuers", &self.inner.issuers)
            .field("key_type", &self.inner.key_type)
            .field("renewal_ratio", &self.inner.renewal_ratio)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The issuers, in order.
    pub fn issuers(&self) -> &[Arc<dyn Issuer>] {
        self.inner.issuers.issuers()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The renewal window ratio.
    pub fn renewal_ratio(&self) -> f64 {
        self.inner.renewal_ratio
    }

    /// The issuance rate limiter of one issuer: the limit set with
    /// [`issuance_rate_limit`](ConfigBuilder::issuance_rate_limit), else the
    /// issuer's [`rate_limits`](Issuer::rate_limits) (its CA's published
    /// ones), else the default ([`DEFAULT_RATE_LIMIT_EVENTS`](crate::DEFAULT_RATE_LIMIT_EVENTS)
    /// per [`DEFAULT_RATE_LIMIT_WINDOW`](crate::DEFAULT_RATE_LIMIT_WINDOW)).
    pub fn rate_limiter(&self, issuer_key: &str) -> Arc<RateLimiter> {
        let mut limiters = self
            .inner
            .rate_limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        limiters
            .entry(issuer_key.to_owned())
            .or_insert_with(|| {
                let (max, window) = self.inner.rate_limit.unwrap_or_else(|| {
                    self.issuer_by_key(issuer_key)
                        .and_then(|i| i.rate_limits())
                        .map_or(
                            (
                                crate::ratelimit::DEFAULT_RATE_LIMIT_EVENTS,
                                crate::ratelimit::DEFAULT_RATE_LIMIT_WINDOW,
                            ),
                            |l| (l.new_orders, l.new_orders_window),
                        )
                });
                Arc::new(RateLimiter::new(max, window))
            })
            .clone()
    }

    /// How often maintenance checks for renewals.
    pub fn renew_check_interval(&self) -> Duration {
        self.inner.renew_interval
    }

    /// How often maintenance refreshes OCSP staples.
    pub fn ocsp_check_interval(&self) -> Duration {
        self.inner.ocsp_interval
    }

    /// The ARI state of every managed certificate.
    pub(crate) fn maintenance_states(&self) -> std::sync::MutexGuard<'_, States> {
        self.inner
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Woken when the maintenance schedule changed.
    pub(crate) fn retry_scheduled(&self) -> &tokio::sync::Notify {
        &self.inner.retry_scheduled
    }

    /// OCSP's report to maintenance: the certificate `serial` serving `ids`
    /// is revoked. Maintenance renews it at once (see [`crate::maintain`]).
    pub(crate) fn report_revoked(&self, ids: Vec<Identifier>, serial: String) {
        {
            let mut revoked = self.inner.revoked.lock().unwrap_or_else(|e| e.into_inner());
            if !revoked.iter().any(|(i, s)| i == &ids && s == &serial) {
                revoked.push((ids, serial));
            }
        }
        self.inner.retry_scheduled.notify_one();
    }

    /// The last stapling outcome of each cached certificate, by serial.
    pub(crate) fn staple_records(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::ocsp::staple::StapleRecords> {
        self.inner.staples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether OCSP reported the certificate `serial` revoked and no renewal
    /// has replaced it yet (a failed renewal keeps it here, whatever later
    /// OCSP fetches give).
    pub(crate) fn is_reported_revoked(&self, serial: &str) -> bool {
        self.inner
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(_, s)| s == serial)
    }

    /// The revoked certificates waiting for a renewal that replaces them.
    pub(crate) fn revoked_pending(&self) -> Vec<(Vec<Identifier>, String)> {
        self.inner
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets the revoked certificate `serial`: replaced, or no longer served.
    pub(crate) fn forget_revoked(&self, serial: &str) {
        self.inner
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, s)| s != serial);
    }

    /// The issuer a stored certificate came from, by issuer key.
    pub(crate) fn issuer_by_key(&self, issuer_key: &str) -> Option<Arc<dyn Issuer>> {
        self.inner.issuers.by_key(issuer_key)
    }

    /// The HTTP-01 tokens of this config's solvers: give them to
    /// `certauto_tower::AcmeLayer` (or the actix challenge route) so the
    /// application's own port 80 answers HTTP-01.
    pub fn challenge_tokens(&self) -> &ChallengeTokens {
        &self.inner.challenge_tokens
    }

    /// Cleans up the challenges instances left in storage without finishing
    /// them (crashed), older than [`STALE_CHALLENGE_AGE`](crate::STALE_CHALLENGE_AGE),
    /// through the solvers [`ConfigBuilder::acme`] wrapped, under a storage
    /// lock, a bounded number per call. Maintenance calls it at its start and
    /// every [`CHALLENGE_CLEANUP_INTERVAL`](crate::CHALLENGE_CLEANUP_INTERVAL).
    pub async fn clean_stale_challenges(&self) -> crate::StaleChallenges {
        self.inner.shared_challenges.clean_stale().await
    }

    /// [`clean_stale_challenges`](Self::clean_stale_challenges) with another
    /// age (storage cleaning's `challenge_max_age`).
    pub(crate) async fn clean_stale_challenges_older_than(
        &self,
        max_age: Duration,
    ) -> crate::StaleChallenges {
        self.inner
            .shared_challenges
            .clean_stale_older_than(max_age)
            .await
    }

    /// How storage cleaning runs.
    pub(crate) fn storage_cleaning_options(&self) -> crate::maintain::StorageCleaning {
        self.inner.storage_cleaning
    }

    /// Loads what a handshake needs from shared challenge state (TLS-ALPN-01).
    pub(crate) async fn prepare_shared_challenge(&self, hello: &crate::handshake::Hello) {
        self.inner
            .shared_challenges
            .prepare(hello, |id| self.tls_alpn_lookup_reason(id))
            .await;
    }

    /// Why this config would see `id` validated by TLS-ALPN-01 (the share of
    /// the storage-lookup budget a validation of it uses). O(1) set lookups.
    pub(crate) fn tls_alpn_lookup_reason(
        &self,
        id: &Identifier,
    ) -> crate::challenge::distributed::LookupReason {
        use crate::challenge::distributed::LookupReason;
        let on_demand = self.on_demand();
        if self.manages_exactly(id) || on_demand.is_some_and(|od| od.is_in_flight(id)) {
            LookupReason::Managed
        } else if on_demand.is_some_and(|od| od.allowlisted(id)) {
            LookupReason::OnDemand
        } else {
            LookupReason::Other
        }
    }

    /// The issuer `ids` go to first (for logs: `local-ca` or an issuer key).
    pub(crate) fn issuer_name_for(&self, ids: &[Identifier]) -> String {
        self.candidate_issuers(ids)
            .first()
            .map_or_else(|| "none".to_owned(), |i| i.issuer_key())
    }

    /// The on-demand state, when on-demand TLS is configured.
    pub(crate) fn on_demand(&self) -> Option<&Arc<crate::handshake::on_demand::OnDemand>> {
        self.inner.on_demand.as_ref()
    }

    /// The certificate cache.
    pub fn cache(&self) -> &CertCache {
        &self.inner.cache
    }

    /// The resolver serving the cache in TLS handshakes.
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.inner.resolver.clone()
    }

    /// The local CA (used for local names and when no issuer is configured).
    pub fn local_ca(&self) -> &LocalCa {
        self.inner.issuers.local_ca()
    }

    /// A rustls server config (ring provider, TLS 1.2 and 1.3) resolving
    /// through [`resolver`](Self::resolver), with ALPN `h2`, `http/1.1` and
    /// `acme-tls/1` (so TLS-ALPN-01 is answered on this port).
    ///
    /// With [on-demand TLS](crate::OnDemandConfig), rustls cannot await
    /// inside its handshake: an allowed new name is obtained in the
    /// background, its first handshake fails and a later one succeeds. An
    /// acceptor built with [`AcmeAcceptor::for_config`](crate::AcmeAcceptor::for_config)
    /// holds the first handshake until the certificate is there instead.
    pub fn server_config(&self) -> rustls::ServerConfig {
        let mut config = self.server_config_without_alpn();
        config.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            crate::challenge::tls_alpn01::ACME_TLS_ALPN.to_vec(),
        ];
        config
    }

    /// Like [`server_config`](Self::server_config) with only `acme-tls/1` in
    /// ALPN, for servers that add their own protocols (actix-web prepends
    /// `h2` and `http/1.1`).
    pub fn server_config_without_alpn(&self) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            // The ring provider supports the default versions; this cannot fail.
            .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"))
            .with_no_client_auth()
            .with_cert_resolver(self.inner.resolver.clone());
        config.alpn_protocols = vec![crate::challenge::tls_alpn01::ACME_TLS_ALPN.to_vec()];
        config
    }

    /// Sends an event to every handler.
    pub(crate) fn emit(&self, event: &Event) {
        tracing::debug!(event = event.name(), names = ?event.names(), "event");
        for handler in &self.inner.handlers {
            handler(event);
        }
    }

    /// The issuers for `ids` (see [`IssuerSet`]).
    pub(crate) fn candidate_issuers(&self, ids: &[Identifier]) -> Vec<Arc<dyn Issuer>> {
        self.inner.issuers.candidates(ids)
    }

    /// The candidates whose precheck accepts `ids`.
    pub(crate) fn usable_issuers(&self, ids: &[Identifier]) -> Result<Vec<Arc<dyn Issuer>>, Error> {
        self.inner.issuers.usable(ids)
    }
}
