//! [`Config`]: obtain, renew and revoke certificates, serialised per name.
//!
//! Work on one certificate is serialised twice: by an in-process mutex (so
//! two tasks of one process never both order), and by the storage lock (so
//! two processes sharing storage never both order). Under the lock, storage is
//! checked first, so a certificate another instance already obtained is reused.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use crate::acme::types::RevocationReason;
use crate::cache::CertCache;
use crate::certificate::Certificate;
use crate::challenge::TlsAlpnChallenges;
use crate::clock::{Clock, SystemClock};
use crate::error::{CertificateError, ConfigError, Error};
use crate::events::{Event, EventHandler};
use crate::handshake::CertResolver;
use crate::identifier::{DomainName, Identifier};
use crate::issuer::{IssueRequest, Issuer, LocalCa, is_local_name};
use crate::keys::{CertificateKey, KeyType};
use crate::maintain::CertState;
use crate::ratelimit::{DEFAULT_RATE_LIMIT_EVENTS, DEFAULT_RATE_LIMIT_WINDOW, RateLimiter};
use crate::storage::{FileStorage, MemoryStorage, Storage, keys};

/// How many stored certificates [`Config::manage`] loads at once: the reads
/// overlap, and parsing spreads over the runtime's worker threads.
const LOAD_CONCURRENCY: usize = 8;

/// The certificates under management, in the order they were added, with an
/// index of their primary names (so adding one is O(1), not a scan).
#[derive(Default)]
struct Managed {
    /// Shared with maintenance passes in progress, which iterate a snapshot.
    list: Arc<Vec<Vec<Identifier>>>,
    primaries: HashSet<Identifier>,
    /// Every name of every managed certificate, for [`Config::is_managed`].
    names: HashSet<Identifier>,
}

/// The default renewal window: renew when less than a third of the lifetime remains.
pub const DEFAULT_RENEWAL_RATIO: f64 = 1.0 / 3.0;

/// Builds a [`Config`].
pub struct ConfigBuilder {
    storage: Option<Arc<dyn Storage>>,
    issuers: Vec<Arc<dyn Issuer>>,
    key_type: KeyType,
    renewal_ratio: f64,
    handlers: Vec<EventHandler>,
    clock: Arc<dyn Clock>,
    cache: Option<CertCache>,
    tls_alpn: TlsAlpnChallenges,
    local_names_use_local_ca: bool,
    local_ca_lifetime: Option<std::time::Duration>,
    default_name: Option<String>,
    rate_limit: (u32, Duration),
    renew_interval: Duration,
    ocsp_interval: Duration,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("storage", &self.storage)
            .field("issuers", &self.issuers)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl ConfigBuilder {
    /// Where certificates, keys and locks are kept (default: [`FileStorage`]
    /// in the OS data folder).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The issuers, tried in order until one succeeds.
    pub fn issuers(mut self, issuers: Vec<Arc<dyn Issuer>>) -> Self {
        self.issuers = issuers;
        self
    }

    /// Adds an issuer after those already configured.
    pub fn issuer(mut self, issuer: impl Issuer + 'static) -> Self {
        self.issuers.push(Arc::new(issuer));
        self
    }

    /// The type of new certificate keys (default ECDSA P-256).
    pub fn key_type(mut self, key_type: KeyType) -> Self {
        self.key_type = key_type;
        self
    }

    /// Renew when less than this fraction of the lifetime remains (default 1/3).
    /// Values outside (0, 1) are clamped.
    pub fn renewal_window_ratio(mut self, ratio: f64) -> Self {
        self.renewal_ratio = if ratio.is_finite() {
            ratio.clamp(0.01, 0.99)
        } else {
            DEFAULT_RENEWAL_RATIO
        };
        self
    }

    /// Adds an event handler.
    pub fn on_event(mut self, handler: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// The clock used for renewal decisions (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The certificate cache (default: a new one with the default capacity).
    pub fn cache(mut self, cache: CertCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The TLS-ALPN-01 challenge certificates the resolver serves; give the
    /// same set to a [`TlsAlpn01Solver::inline`](crate::challenge::TlsAlpn01Solver::inline)
    /// to answer TLS-ALPN-01 on the application's own TLS port.
    pub fn tls_alpn_challenges(mut self, challenges: TlsAlpnChallenges) -> Self {
        self.tls_alpn = challenges;
        self
    }

    /// Sends local names (`localhost`, IP addresses, `.internal`, `.localhost`,
    /// `.test`) to the configured issuers too, instead of the local CA.
    pub fn public_ca_for_local_names(mut self) -> Self {
        self.local_names_use_local_ca = false;
        self
    }

    /// The lifetime of local CA leaves (default 7 days).
    pub fn local_ca_leaf_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.local_ca_lifetime = Some(lifetime);
        self
    }

    /// At most `max` issuance requests per `window` to each issuer (default
    /// 20 per minute), shared by obtains, renewals and on-demand issuance.
    pub fn issuance_rate_limit(mut self, max: u32, window: Duration) -> Self {
        self.rate_limit = (max, window);
        self
    }

    /// How often [`start_maintenance`](crate::start_maintenance) checks for
    /// renewals (default 10 minutes).
    pub fn renew_check_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How often [`start_maintenance`](crate::start_maintenance) refreshes
    /// OCSP staples with [`Config::check_ocsp`] (default 1 hour).
    pub fn ocsp_check_interval(mut self, interval: Duration) -> Self {
        self.ocsp_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The name whose certificate is served to clients that send no SNI
    /// (default: the first managed name).
    pub fn default_server_name(mut self, name: impl Into<String>) -> Self {
        self.default_name = Some(name.into());
        self
    }

    /// Builds the config.
    pub fn build(self) -> Config {
        let storage = self.storage.unwrap_or_else(|| match FileStorage::with_default_root() {
            Ok(fs) => Arc::new(fs) as Arc<dyn Storage>,
            Err(e) => {
                tracing::warn!(error = %e, "no default storage folder; keeping certificates in memory");
                Arc::new(MemoryStorage::new())
            }
        });
        let mut local_ca = LocalCa::new(storage.clone());
        if let Some(lifetime) = self.local_ca_lifetime {
            local_ca = local_ca.leaf_lifetime(lifetime);
        }
        let cache = self.cache.unwrap_or_default();
        let resolver = CertResolver::new(cache.clone(), self.tls_alpn.clone());
        resolver.set_default_name(self.default_name.clone());
        Config {
            inner: Arc::new(Inner {
                storage,
                issuers: self.issuers,
                key_type: self.key_type,
                renewal_ratio: self.renewal_ratio,
                handlers: self.handlers,
                clock: self.clock,
                name_locks: StdMutex::new(HashMap::new()),
                local_ca: Arc::new(local_ca),
                local_names_use_local_ca: self.local_names_use_local_ca,
                cache,
                resolver: Arc::new(resolver),
                default_name_set: self.default_name.is_some(),
                managed: StdMutex::new(Managed::default()),
                rate_limit: self.rate_limit,
                rate_limiters: StdMutex::new(HashMap::new()),
                renew_interval: self.renew_interval,
                ocsp_interval: self.ocsp_interval,
                maintenance: StdMutex::new(HashMap::new()),
            }),
        }
    }
}

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
    issuers: Vec<Arc<dyn Issuer>>,
    key_type: KeyType,
    renewal_ratio: f64,
    handlers: Vec<EventHandler>,
    clock: Arc<dyn Clock>,
    name_locks: StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    local_ca: Arc<LocalCa>,
    local_names_use_local_ca: bool,
    cache: CertCache,
    resolver: Arc<CertResolver>,
    default_name_set: bool,
    managed: StdMutex<Managed>,
    rate_limit: (u32, Duration),
    rate_limiters: StdMutex<HashMap<String, Arc<RateLimiter>>>,
    renew_interval: Duration,
    ocsp_interval: Duration,
    maintenance: StdMutex<HashMap<String, CertState>>,
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

/// When [`Config::renew_inner`] orders a new certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RenewMode {
    /// If the stored certificate is missing or inside its renewal window.
    IfDue,
    /// Always.
    Force,
    /// Unless storage already holds a certificate other than this serial.
    Replace(String),
}

/// Holds the in-process and the storage lock for one certificate.
struct NameGuard<'a> {
    config: &'a Config,
    storage_lock: String,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl NameGuard<'_> {
    async fn release(self) {
        if let Err(e) = self.config.inner.storage.unlock(&self.storage_lock).await {
            tracing::warn!(lock = %self.storage_lock, error = %e, "could not release storage lock");
        }
    }
}

impl Config {
    /// Starts building a config.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            storage: None,
            issuers: Vec::new(),
            key_type: KeyType::default(),
            renewal_ratio: DEFAULT_RENEWAL_RATIO,
            handlers: Vec::new(),
            clock: Arc::new(SystemClock),
            cache: None,
            tls_alpn: TlsAlpnChallenges::new(),
            local_names_use_local_ca: true,
            local_ca_lifetime: None,
            default_name: None,
            rate_limit: (DEFAULT_RATE_LIMIT_EVENTS, DEFAULT_RATE_LIMIT_WINDOW),
            renew_interval: crate::maintain::DEFAULT_RENEW_INTERVAL,
            ocsp_interval: crate::ocsp::DEFAULT_OCSP_CHECK_INTERVAL,
        }
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The issuers, in order.
    pub fn issuers(&self) -> &[Arc<dyn Issuer>] {
        &self.inner.issuers
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The renewal window ratio.
    pub fn renewal_ratio(&self) -> f64 {
        self.inner.renewal_ratio
    }

    /// The issuance rate limiter of one issuer.
    pub fn rate_limiter(&self, issuer_key: &str) -> Arc<RateLimiter> {
        let mut limiters = self
            .inner
            .rate_limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        limiters
            .entry(issuer_key.to_owned())
            .or_insert_with(|| {
                Arc::new(RateLimiter::new(
                    self.inner.rate_limit.0,
                    self.inner.rate_limit.1,
                ))
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

    pub(crate) fn maintenance_state(&self) -> &StdMutex<HashMap<String, CertState>> {
        &self.inner.maintenance
    }

    /// The issuer a stored certificate came from, by issuer key.
    pub(crate) fn issuer_by_key(&self, issuer_key: &str) -> Option<Arc<dyn Issuer>> {
        if issuer_key == crate::issuer::LOCAL_CA_ISSUER_KEY {
            return Some(self.inner.local_ca.clone());
        }
        self.inner
            .issuers
            .iter()
            .find(|i| i.issuer_key() == issuer_key)
            .cloned()
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
        &self.inner.local_ca
    }

    /// A rustls server config (ring provider, TLS 1.2 and 1.3) resolving
    /// through [`resolver`](Self::resolver), with ALPN `h2`, `http/1.1` and
    /// `acme-tls/1` (so TLS-ALPN-01 is answered on this port).
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

    /// Names under management (each list is one certificate, primary first).
    pub fn managed(&self) -> Vec<Vec<Identifier>> {
        self.managed_snapshot().as_ref().clone()
    }

    /// The names under management, without copying them.
    pub(crate) fn managed_snapshot(&self) -> Arc<Vec<Vec<Identifier>>> {
        self.inner
            .managed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .clone()
    }

    fn record_managed(&self, ids: &[Identifier]) {
        let Some(primary) = ids.first() else {
            return;
        };
        let mut managed = self.inner.managed.lock().unwrap_or_else(|e| e.into_inner());
        if managed.primaries.insert(primary.clone()) {
            Arc::make_mut(&mut managed.list).push(ids.to_vec());
            managed.names.extend(ids.iter().cloned());
        }
        if !self.inner.default_name_set && managed.list.len() == 1 {
            self.inner
                .resolver
                .set_default_name(Some(primary.as_str().into_owned()));
        }
    }

    /// Whether `host` (a DNS name or IP address, without a port; any case,
    /// a trailing dot allowed, IPv6 in brackets or not) is a name under
    /// management: one of a managed certificate's names, or covered by a
    /// managed wildcard (`*.example.com` covers `a.example.com`, not
    /// `example.com` or `a.b.example.com`). A wildcard `host` is never one.
    ///
    /// O(1): two set lookups. The HTTPS redirect uses this to refuse hosts
    /// it would otherwise redirect anywhere.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), certauto_core::Error> {
    /// use std::sync::Arc;
    /// use certauto_core::{Config, MemoryStorage};
    ///
    /// let config = Config::builder().storage(Arc::new(MemoryStorage::new())).build();
    /// config.manage(["localhost", "*.example.test"]).await?;
    /// assert!(config.is_managed("LocalHost."));
    /// assert!(config.is_managed("a.example.test"));
    /// assert!(!config.is_managed("example.test"));
    /// assert!(!config.is_managed("evil.example"));
    /// # Ok(()) }
    /// ```
    pub fn is_managed(&self, host: &str) -> bool {
        let Ok(id) = Identifier::parse(host) else {
            return false;
        };
        if id.is_wildcard() {
            return false;
        }
        let managed = self.inner.managed.lock().unwrap_or_else(|e| e.into_inner());
        if managed.names.contains(&id) {
            return true;
        }
        match &id {
            Identifier::Dns(name) => name.as_str().split_once('.').is_some_and(|(_, rest)| {
                DomainName::parse(&format!("*.{rest}"))
                    .is_ok_and(|parent| managed.names.contains(&Identifier::Dns(parent)))
            }),
            Identifier::Ip(_) => false,
        }
    }

    /// Loads the stored certificates of `names` (one certificate per name)
    /// into the cache, [`LOAD_CONCURRENCY`] at a time; returns which were.
    async fn load_all_into_cache(&self, names: &[Identifier]) -> Result<Vec<bool>, Error> {
        let mut loaded = vec![false; names.len()];
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0;
        while next < names.len() || !tasks.is_empty() {
            while next < names.len() && tasks.len() < LOAD_CONCURRENCY {
                let config = self.clone();
                let ids = vec![names[next].clone()];
                let i = next;
                tasks.spawn(async move {
                    let result = config.load_into_cache(&ids).await;
                    (i, result.map(|cert| cert.is_some()))
                });
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok((i, result))) => loaded[i] = result?,
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled (the runtime is shutting down): left to the caller's
                // sequential path, as if not in storage.
                Some(Err(_)) | None => {}
            }
        }
        Ok(loaded)
    }

    /// Manages one certificate per name: loads what storage holds into the
    /// cache (`cached_managed_cert`), obtains what is missing or due (unless a
    /// failed renewal is waiting for its retry time: then the stored
    /// certificate serves until maintenance retries), and records the names
    /// for maintenance. Returns when every name has a certificate, or with
    /// the first error.
    pub async fn manage<I, S>(&self, names: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for id in self.start_managing(names).await? {
            // `obtain` checks storage again, under the lock.
            self.obtain([id.as_str()]).await?;
        }
        Ok(())
    }

    /// Like [`manage`](Self::manage), but returns at once: certificates
    /// already in storage are loaded first, the rest are obtained in the
    /// background (so an HTTP-01 or TLS-ALPN-01 challenge can be answered by
    /// the application's own listeners, started after this call). Failures are
    /// reported through `cert_failed` events and logs.
    pub async fn manage_in_background<I, S>(&self, names: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for id in self.start_managing(names).await? {
            let ids = vec![id];
            let config = self.clone();
            // Through the retry schedule: a failure is retried by maintenance
            // after its backoff, not at once by the next check.
            tokio::spawn(async move {
                let outcome = config.renew_with_backoff(ids, RenewMode::IfDue).await;
                if outcome != crate::maintain::RenewOutcome::Renewed {
                    tracing::warn!(?outcome, "background obtain did not complete");
                }
            });
        }
        Ok(())
    }

    /// Loads a stored, not-due certificate for `ids` into the cache.
    async fn load_into_cache(&self, ids: &[Identifier]) -> Result<Option<Certificate>, Error> {
        let Some(cert) = self.load_ids(ids).await? else {
            return Ok(None);
        };
        let now = self.inner.clock.now();
        // A due certificate whose renewal failed (before a restart, too) keeps
        // serving while it is valid: the retry waits for its backoff.
        if cert.needs_renewal(now, self.inner.renewal_ratio)
            && (cert.is_expired(now) || !self.retry_pending(&ids[0]).await)
        {
            return Ok(None);
        }
        if self.ensure_cached(&cert)? {
            self.emit(&Event::CachedManagedCert {
                names: cert
                    .names()
                    .iter()
                    .map(|n| n.as_str().into_owned())
                    .collect(),
                serial: cert.serial_hex(),
            });
        }
        self.staple_loaded(&cert, ids).await;
        Ok(Some(cert))
    }

    /// Puts `cert` in the cache unless it is already what serves its primary
    /// name. Returns whether it was inserted.
    fn ensure_cached(&self, cert: &Certificate) -> Result<bool, Error> {
        let Some(primary) = cert.names().first() else {
            return Ok(false);
        };
        let serial = cert.serial_hex();
        if self
            .inner
            .cache
            .get(&primary.as_str())
            .is_some_and(|c| c.serial() == serial)
        {
            return Ok(false);
        }
        self.inner.cache.insert(cert, true)?;
        Ok(true)
    }

    /// The start of [`manage`](Self::manage) and
    /// [`manage_in_background`](Self::manage_in_background): validates
    /// `names` (each must have an issuer), records them for maintenance,
    /// loads what storage holds into the cache, and returns the names still
    /// to obtain, in order.
    async fn start_managing<I, S>(&self, names: I) -> Result<Vec<Identifier>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<Identifier> = names
            .into_iter()
            .map(|n| Identifier::parse(n.as_ref()))
            .collect::<Result<_, _>>()?;
        for id in &names {
            self.usable_issuers(std::slice::from_ref(id))?;
        }
        for id in &names {
            self.record_managed(std::slice::from_ref(id));
        }
        let loaded = self.load_all_into_cache(&names).await?;
        Ok(names
            .into_iter()
            .zip(loaded)
            .filter_map(|(id, loaded)| (!loaded).then_some(id))
            .collect())
    }

    /// Sends an event to every handler.
    pub fn emit(&self, event: &Event) {
        tracing::debug!(event = event.name(), names = ?event.names(), "event");
        for handler in &self.inner.handlers {
            handler(event);
        }
    }

    async fn lock_name(&self, primary: &Identifier) -> Result<NameGuard<'_>, Error> {
        let local = {
            let mut locks = self
                .inner
                .name_locks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Drop entries nobody holds, so the map stays small.
            locks.retain(|_, m| Arc::strong_count(m) > 1);
            locks
                .entry(primary.storage_key())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        let local = local.lock_owned().await;
        let storage_lock = keys::cert_lock(primary);
        self.inner.storage.lock(&storage_lock).await?;
        Ok(NameGuard {
            config: self,
            storage_lock,
            _local: local,
        })
    }

    /// The issuers for `ids`: the local CA when no issuer is configured or
    /// (unless turned off) when every name is local; else the configured ones.
    fn candidate_issuers(&self, ids: &[Identifier]) -> Vec<Arc<dyn Issuer>> {
        let local = self.inner.local_names_use_local_ca && ids.iter().all(is_local_name);
        if self.inner.issuers.is_empty() || local {
            vec![self.inner.local_ca.clone() as Arc<dyn Issuer>]
        } else {
            self.inner.issuers.clone()
        }
    }

    fn usable_issuers(&self, ids: &[Identifier]) -> Result<Vec<Arc<dyn Issuer>>, Error> {
        let candidates = self.candidate_issuers(ids);
        if candidates.is_empty() {
            return Err(ConfigError::NoIssuers.into());
        }
        let mut first_err = None;
        let mut usable = Vec::new();
        for issuer in &candidates {
            match issuer.precheck(ids) {
                Ok(()) => usable.push(issuer.clone()),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (usable.is_empty(), first_err) {
            (true, Some(e)) => Err(e),
            _ => Ok(usable),
        }
    }

    /// Loads the stored certificate whose primary name is `names[0]` and which
    /// covers every name, from the first issuer that has one.
    pub async fn load<I, S>(&self, names: I) -> Result<Option<Certificate>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids = Identifier::parse_all(names)?;
        self.load_ids(&ids).await
    }

    async fn load_ids(&self, ids: &[Identifier]) -> Result<Option<Certificate>, Error> {
        for issuer in &self.candidate_issuers(ids) {
            let issuer_key = issuer.issuer_key();
            match self.load_from(&issuer_key, &ids[0]).await {
                Ok(Some(cert)) if ids.iter().all(|id| cert.covers(id)) => return Ok(Some(cert)),
                Ok(_) => {}
                Err(Error::Certificate(e)) => {
                    tracing::warn!(name = %ids[0], issuer = %issuer_key, error = %e,
                        "stored certificate is unusable; it will be replaced");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    async fn load_from(
        &self,
        issuer_key: &str,
        primary: &Identifier,
    ) -> Result<Option<Certificate>, Error> {
        let storage = &self.inner.storage;
        let chain = match storage.load(&keys::cert_chain(issuer_key, primary)).await {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let key = match storage.load(&keys::cert_key(issuer_key, primary)).await {
            Ok(k) => k,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let chain = String::from_utf8(chain)
            .map_err(|_| CertificateError::Parse("chain is not UTF-8".into()))?;
        let key = String::from_utf8(key)
            .map_err(|_| CertificateError::Parse("key is not UTF-8".into()))?;
        Ok(Some(Certificate::from_pem(&chain, &key, issuer_key)?))
    }

    async fn store(&self, cert: &Certificate, primary: &Identifier) -> Result<(), Error> {
        let storage = &self.inner.storage;
        let issuer_key = cert.issuer_key();
        let meta = serde_json::to_vec_pretty(&cert.metadata())
            .map_err(|e| CertificateError::Metadata(e.to_string()))?;
        // Each write is atomic; a crash between them leaves a key that does not
        // match the chain, which `load` detects and replaces.
        storage
            .store(
                &keys::cert_key(issuer_key, primary),
                cert.key_pem().as_bytes(),
            )
            .await?;
        storage
            .store(
                &keys::cert_chain(issuer_key, primary),
                cert.chain_pem().as_bytes(),
            )
            .await?;
        storage
            .store(&keys::cert_meta(issuer_key, primary), &meta)
            .await?;
        Ok(())
    }

    /// Obtains a certificate covering `names` (the first is the primary name,
    /// under which it is stored), unless storage already holds one that covers
    /// them and is outside its renewal window.
    pub async fn obtain<I, S>(&self, names: I) -> Result<Certificate, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids = Identifier::parse_all(names)?;
        let issuers = self.usable_issuers(&ids)?;
        let guard = self.lock_name(&ids[0]).await?;
        let result = async {
            if let Some(cert) = self.load_ids(&ids).await?
                && !cert.needs_renewal(self.inner.clock.now(), self.inner.renewal_ratio)
            {
                tracing::debug!(names = ?ids, serial = %cert.serial_hex(), "certificate already in storage");
                self.ensure_cached(&cert)?;
                return Ok(cert);
            }
            self.issue(&ids, &issuers, false, None, None).await
        }
        .await;
        guard.release().await;
        if let Ok(cert) = &result {
            self.staple_new(cert).await;
        }
        result
    }

    /// Renews the certificate for `names` if it is inside its renewal window
    /// (or missing). If another instance renewed it meanwhile, its certificate
    /// is loaded instead.
    pub async fn renew<I, S>(&self, names: I) -> Result<Certificate, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.renew_inner(Identifier::parse_all(names)?, RenewMode::IfDue, None)
            .await
    }

    /// Renews the certificate for `names` now, whatever its remaining lifetime.
    pub async fn force_renew<I, S>(&self, names: I) -> Result<Certificate, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.renew_inner(Identifier::parse_all(names)?, RenewMode::Force, None)
            .await
    }

    /// Renews `ids`; `retry` is the attempt number and next retry time to
    /// report if this attempt fails (maintenance's backoff schedule).
    pub(crate) async fn renew_inner(
        &self,
        ids: Vec<Identifier>,
        mode: RenewMode,
        retry: Option<(u32, SystemTime)>,
    ) -> Result<Certificate, Error> {
        let issuers = self.usable_issuers(&ids)?;
        let guard = self.lock_name(&ids[0]).await?;
        let result = async {
            let existing = self.load_ids(&ids).await?;
            if let Some(cert) = &existing {
                let now = self.inner.clock.now();
                let keep = match &mode {
                    RenewMode::IfDue => !cert.needs_renewal(now, self.inner.renewal_ratio),
                    RenewMode::Force => false,
                    // Storage holds a newer certificate than the one we set out
                    // to replace: another instance renewed it.
                    RenewMode::Replace(serial) => cert.serial_hex() != *serial,
                };
                if keep {
                    self.ensure_cached(cert)?;
                    return Ok(cert.clone());
                }
            }
            let replaces = existing.as_ref().and_then(Certificate::ari_cert_id);
            self.issue(
                &ids,
                &issuers,
                existing.is_some(),
                replaces.as_deref(),
                retry,
            )
            .await
        }
        .await;
        guard.release().await;
        if let Ok(cert) = &result {
            self.staple_new(cert).await;
        }
        result
    }

    /// Issues through the issuers in order, stores the result and emits events.
    /// `replaces` is the ARI CertID of the certificate a renewal replaces.
    async fn issue(
        &self,
        ids: &[Identifier],
        issuers: &[Arc<dyn Issuer>],
        renewal: bool,
        replaces: Option<&str>,
        retry: Option<(u32, SystemTime)>,
    ) -> Result<Certificate, Error> {
        let names: Vec<String> = ids.iter().map(|i| i.as_str().into_owned()).collect();
        self.emit(&Event::CertObtaining {
            names: names.clone(),
            renewal,
        });
        let result = self.try_issuers(ids, issuers, replaces).await;
        match &result {
            Ok(cert) => {
                tracing::info!(names = ?names, serial = %cert.serial_hex(), issuer = cert.issuer_key(), renewal, "certificate obtained");
                self.emit(&Event::CertObtained {
                    names: names.clone(),
                    renewal,
                    issuer: cert.issuer_key().to_owned(),
                    serial: cert.serial_hex(),
                    not_after: cert.not_after(),
                });
                if renewal {
                    self.emit(&Event::CertRenewed {
                        names,
                        issuer: cert.issuer_key().to_owned(),
                        serial: cert.serial_hex(),
                        not_after: cert.not_after(),
                    });
                }
            }
            Err(e) => {
                tracing::error!(names = ?names, error = %e, renewal, "could not obtain certificate");
                self.emit(&Event::CertFailed {
                    names,
                    renewal,
                    error: e.to_string(),
                    attempt: retry.map_or(1, |(attempt, _)| attempt),
                    retry_at: retry.map(|(_, at)| at),
                });
            }
        }
        result
    }

    async fn try_issuers(
        &self,
        ids: &[Identifier],
        issuers: &[Arc<dyn Issuer>],
        replaces: Option<&str>,
    ) -> Result<Certificate, Error> {
        let key = CertificateKey::generate(self.inner.key_type)?;
        let csr = key.csr(ids)?;
        let key_pem = key.to_pem();
        let mut errors = Vec::new();
        for issuer in issuers {
            let issuer_key = issuer.issuer_key();
            let request = IssueRequest::new(ids, &csr).replaces(replaces);
            self.rate_limiter(&issuer_key).acquire().await;
            let issued = match issuer.issue(&request).await {
                Ok(issued) => issued,
                Err(e) => {
                    tracing::warn!(issuer = %issuer_key, error = %e, "issuer failed");
                    errors.push((issuer_key, e));
                    continue;
                }
            };
            let cert = Certificate::from_pem(&issued.chain_pem, &key_pem, &issuer_key)?;
            self.store(&cert, &ids[0]).await?;
            // Stored first, then swapped in: the old certificate serves until now.
            self.inner.cache.insert(&cert, true)?;
            return Ok(cert);
        }
        if errors.len() == 1 {
            // A single issuer's error is more useful unwrapped.
            if let Some((_, e)) = errors.pop() {
                return Err(e);
            }
        }
        Err(Error::AllIssuersFailed(errors))
    }

    /// Revokes the stored certificate whose primary name is `name` and removes
    /// it from storage.
    pub async fn revoke(
        &self,
        name: &str,
        reason: Option<RevocationReason>,
    ) -> Result<Certificate, Error> {
        let id = Identifier::parse(name)?;
        let guard = self.lock_name(&id).await?;
        let result = async {
            for issuer in &self.candidate_issuers(std::slice::from_ref(&id)) {
                let issuer_key = issuer.issuer_key();
                let Some(cert) = self.load_from(&issuer_key, &id).await? else {
                    continue;
                };
                issuer.revoke(&cert, reason).await?;
                self.inner.cache.remove(id.as_str().as_ref());
                let storage = &self.inner.storage;
                for key in [
                    keys::cert_chain(&issuer_key, &id),
                    keys::cert_key(&issuer_key, &id),
                    keys::cert_meta(&issuer_key, &id),
                ] {
                    if let Err(e) = storage.delete(&key).await
                        && !e.is_not_found()
                    {
                        return Err(e.into());
                    }
                }
                self.emit(&Event::CertRevoked {
                    names: cert
                        .names()
                        .iter()
                        .map(|n| n.as_str().into_owned())
                        .collect(),
                    issuer: issuer_key,
                    serial: cert.serial_hex(),
                    reason,
                });
                return Ok(cert);
            }
            Err(ConfigError::NotManaged(id.to_string()).into())
        }
        .await;
        guard.release().await;
        result
    }
}
