//! [`ConfigBuilder`]: the one place a [`Config`] is wired.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex, OnceLock, Weak};
use std::time::Duration;

use crate::cache::CertCache;
use crate::challenge::TlsAlpnChallenges;
use crate::clock::{Clock, SystemClock};
use crate::events::{Event, EventHandler};
use crate::handshake::on_demand::OnDemand;
use crate::handshake::{CertResolver, OnDemandConfig};
use crate::issuer::{Issuer, IssuerPolicy, LocalCa};
use crate::keys::KeyType;
use crate::storage::{FileStorage, MemoryStorage, Storage};

use crate::challenge::distributed::SharedChallenges;
use crate::challenge::{ChallengeTokens, DistributedSolver, Http01Solver, TlsAlpn01Solver};
use crate::issuer::{AcmeIssuer, AcmeIssuerBuilder, IssuerSet, LETS_ENCRYPT_PRODUCTION};

use super::manage::Managed;
use super::{Config, Inner};

/// The default renewal window: renew when less than a third of the lifetime remains.
pub const DEFAULT_RENEWAL_RATIO: f64 = 1.0 / 3.0;
/// The default interval between renewal checks of
/// [`start_maintenance`](crate::start_maintenance).
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(600);
/// The default interval between OCSP checks of
/// [`start_maintenance`](crate::start_maintenance).
pub const DEFAULT_OCSP_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest interval between maintenance checks (renewal and OCSP)
/// accepted from configuration (a year); longer values are clamped to it.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest interval between maintenance checks accepted from
/// configuration; shorter values are raised to it (no busy loop).
pub(crate) const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

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
    rate_limit: Option<(u32, Duration)>,
    renew_interval: Duration,
    ocsp_interval: Duration,
    manage_concurrency: usize,
    pending_acme: Vec<AcmeIssuerBuilder>,
    on_demand: Option<OnDemandConfig>,
    issuer_policy: IssuerPolicy,
    storage_cleaning: crate::maintain::StorageCleaning,
    expiry_metric: bool,
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

    /// In which order the issuers are tried for each attempt (default
    /// [`IssuerPolicy::First`]: as configured; [`IssuerPolicy::Random`]: a
    /// new random order per attempt).
    ///
    /// With either policy, failover is per name: when an issuer fails for a
    /// name, the next one is tried, and the failed issuer backs off for that
    /// name only (a minute, doubling per failure in a row): while it does, it
    /// is skipped for that name unless every issuer is backing off (then all
    /// are tried, the one whose backoff ends first first). And an issuer
    /// whose [rate limiter](Config::rate_limiter) allows an order now is
    /// preferred to one that would make the order wait; the attempt waits
    /// only when all would, and then for the one that allows one soonest.
    ///
    /// ```no_run
    /// use certauto_core::{AcmeIssuer, Config, IssuerPolicy};
    ///
    /// let config = Config::builder()
    ///     .acme(AcmeIssuer::builder().ca("https://ca-one.example/directory").agreed(true))
    ///     .acme(AcmeIssuer::builder().ca("https://ca-two.example/directory").agreed(true))
    ///     .issuer_policy(IssuerPolicy::Random)
    ///     .build();
    /// # let _ = config;
    /// ```
    pub fn issuer_policy(mut self, policy: IssuerPolicy) -> Self {
        self.issuer_policy = policy;
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

    /// Records no [`certauto_certificate_expiry_seconds`](crate::metrics::CERTIFICATE_EXPIRY_SECONDS)
    /// gauge. By default (with the `metrics` feature) every managed
    /// certificate in the cache has a series of its own, labelled with its
    /// primary name: one per certificate, which a fleet with very many names
    /// (on-demand TLS, hosting) may not want in its metrics store. The other
    /// metrics carry no names.
    pub fn without_certificate_expiry_metric(mut self) -> Self {
        self.expiry_metric = false;
        self
    }

    /// The lifetime of local CA leaves (default 7 days; clamped to between a
    /// minute and 397 days).
    pub fn local_ca_leaf_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.local_ca_lifetime = Some(lifetime);
        self
    }

    /// At most `max` issuance requests per `window` on average to each
    /// issuer, in bursts of up to `max` (a token bucket, see
    /// [`RateLimiter`](crate::RateLimiter)), shared by obtains, renewals and
    /// on-demand issuance. Unset (the default), each issuer's limiter follows
    /// its CA's published limits ([`Issuer::rate_limits`], known from its
    /// [`CaPreset`](crate::CaPreset)), else
    /// [`DEFAULT_RATE_LIMIT_EVENTS`](crate::DEFAULT_RATE_LIMIT_EVENTS) per
    /// [`DEFAULT_RATE_LIMIT_WINDOW`](crate::DEFAULT_RATE_LIMIT_WINDOW)
    /// (300 per 3 hours).
    pub fn issuance_rate_limit(mut self, max: u32, window: Duration) -> Self {
        self.rate_limit = Some((max, window));
        self
    }

    /// How often [`start_maintenance`](crate::start_maintenance) checks for
    /// renewals (default 10 minutes; clamped to between 10 ms and a year).
    pub fn renew_check_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = interval.clamp(MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL);
        self
    }

    /// How often [`start_maintenance`](crate::start_maintenance) refreshes
    /// OCSP staples with [`Config::check_ocsp`] (default 1 hour; clamped to
    /// between 10 ms and a year).
    pub fn ocsp_check_interval(mut self, interval: Duration) -> Self {
        self.ocsp_interval = interval.clamp(MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL);
        self
    }

    /// How many missing certificates [`Config::manage`] obtains at once
    /// (default 8; at least 1).
    pub fn manage_concurrency(mut self, max: usize) -> Self {
        self.manage_concurrency = max.max(1);
        self
    }

    /// The name whose certificate is served to clients that send no SNI
    /// (default: the first managed name).
    pub fn default_server_name(mut self, name: impl Into<String>) -> Self {
        self.default_name = Some(name.into());
        self
    }

    /// Adds an ACME issuer built by this builder, after those already
    /// configured: it gets this config's storage (unless it was given one)
    /// and, unless it was given solvers, an HTTP-01 solver recording tokens
    /// in [`Config::challenge_tokens`] (serve them with `AcmeLayer` on port
    /// 80) and a TLS-ALPN-01 solver answering on every port that serves
    /// [`Config::server_config`]. So nothing is wired twice.
    ///
    /// Every solver of the issuer (these defaults, or the HTTP-01,
    /// TLS-ALPN-01 and DNS-01 solvers it was given) is wrapped in a
    /// [`DistributedSolver`] keeping its challenges in this config's
    /// storage: every instance sharing the storage answers HTTP-01 and
    /// TLS-ALPN-01 (through [`AcmeAcceptor::for_config`](crate::AcmeAcceptor::for_config))
    /// for challenges another instance started, and maintenance cleans up the
    /// challenges of an instance that died ([`Config::clean_stale_challenges`]).
    /// Each is named `"<issuer key> <challenge type>"` (for example
    /// `"acme-v02.api.letsencrypt.org-directory dns-01"`, see
    /// [`DistributedSolver::solver_id`]). Don't give it solvers already
    /// wrapped in a `DistributedSolver`.
    ///
    ///
    /// ```no_run
    /// use certauto_core::{AcmeIssuer, Config, LETS_ENCRYPT_STAGING};
    ///
    /// let config = Config::builder()
    ///     .acme(AcmeIssuer::builder().ca(LETS_ENCRYPT_STAGING).email("admin@example.com").agreed(true))
    ///     .build();
    /// let tokens = config.challenge_tokens().clone(); // for AcmeLayer::new(tokens)
    /// # let _ = tokens;
    /// ```
    pub fn acme(mut self, issuer: AcmeIssuerBuilder) -> Self {
        self.pending_acme.push(issuer);
        self
    }

    /// Turns on on-demand TLS: certificates obtained during the first
    /// handshake for unknown names that `on_demand` allows (see
    /// [`OnDemandConfig`] for the gate, and which servers hold the first
    /// handshake until the certificate is there).
    pub fn on_demand(mut self, on_demand: OnDemandConfig) -> Self {
        self.on_demand = Some(on_demand);
        self
    }

    /// How maintenance cleans storage (default [`StorageCleaning::new`](crate::StorageCleaning::new):
    /// a pass a day across the cluster; [`StorageCleaning::disabled`](crate::StorageCleaning::disabled)
    /// turns it off). See [`Config::clean_storage`].
    pub fn storage_cleaning(mut self, cleaning: crate::maintain::StorageCleaning) -> Self {
        self.storage_cleaning = cleaning;
        self
    }

    /// Builds the config.
    pub fn build(mut self) -> Config {
        let storage = self.storage.take().unwrap_or_else(|| match FileStorage::with_default_root() {
            Ok(fs) => Arc::new(fs) as Arc<dyn Storage>,
            Err(e) => {
                tracing::warn!(error = %crate::ErrorChain(&e), "no default storage folder; keeping certificates in memory");
                Arc::new(MemoryStorage::new())
            }
        });
        let challenge_tokens = ChallengeTokens::new().with_storage(storage.clone());
        let mut distributed = Vec::new();
        for builder in std::mem::take(&mut self.pending_acme) {
            let issuer = builder
                .default_storage(storage.clone())
                .default_solvers(
                    Http01Solver::without_listener(challenge_tokens.clone()),
                    TlsAlpn01Solver::inline(self.tls_alpn.clone()),
                )
                .wrap_solvers(|kind, issuer_key, solver| {
                    let solver = DistributedSolver::from_arc(solver, storage.clone())
                        .clock(self.clock.clone())
                        .solver_id(format!("{issuer_key} {}", kind.as_str()));
                    distributed.push(solver.clone());
                    Arc::new(solver)
                })
                .build();
            self.issuers.push(Arc::new(issuer));
        }
        let issuers_configured = !self.issuers.is_empty();
        if !issuers_configured {
            // The spec's default: public names from Let's Encrypt, validated
            // on port 80 (a listener held only while validating) or on the
            // port serving this config (TLS-ALPN-01). Local names never
            // reach it (they go to the local CA).
            let issuer = AcmeIssuer::builder()
                .ca(LETS_ENCRYPT_PRODUCTION)
                .agreed(true)
                .storage(storage.clone())
                .http01_solver(Http01Solver::new(80).with_tokens(challenge_tokens.clone()))
                .tls_alpn01_solver(TlsAlpn01Solver::inline(self.tls_alpn.clone()))
                .build();
            self.issuers.push(Arc::new(issuer));
        }
        let mut local_ca = LocalCa::new(storage.clone());
        if let Some(lifetime) = self.local_ca_lifetime {
            local_ca = local_ca.leaf_lifetime(lifetime);
        }
        let cache = self.cache.unwrap_or_default();
        if self.expiry_metric {
            cache.track_expiry(self.clock.clone());
        }
        let shared_challenges = SharedChallenges::new(
            storage.clone(),
            self.tls_alpn.clone(),
            distributed,
            self.clock.clone(),
        );
        let mut resolver = CertResolver::new(cache.clone(), self.tls_alpn.clone());
        resolver.set_default_name(self.default_name.clone());
        // Background on-demand issuance from the resolver (for servers that
        // cannot await in their handshake); a weak reference, so the config
        // and its resolver do not keep each other alive.
        let this: Arc<OnceLock<Weak<Inner>>> = Arc::new(OnceLock::new());
        if self.on_demand.is_some() {
            let this = this.clone();
            resolver = resolver.on_unknown_name(Arc::new(move |sni: &str| {
                if let Some(inner) = this.get().and_then(Weak::upgrade) {
                    crate::handshake::on_demand::background(&Config { inner }, sni);
                }
            }));
        }
        let config = Config {
            inner: Arc::new(Inner {
                storage,
                issuers: IssuerSet::new(
                    self.issuers,
                    issuers_configured,
                    Arc::new(local_ca),
                    self.local_names_use_local_ca,
                )
                .with_policy(self.issuer_policy),
                key_type: self.key_type,
                renewal_ratio: self.renewal_ratio,
                handlers: self.handlers,
                clock: self.clock,
                name_locks: StdMutex::new(HashMap::new()),
                cache,
                resolver: Arc::new(resolver),
                default_name_set: self.default_name.is_some(),
                managed: StdMutex::new(Managed::default()),
                rate_limit: self.rate_limit,
                rate_limiters: StdMutex::new(HashMap::new()),
                renew_interval: self.renew_interval,
                ocsp_interval: self.ocsp_interval,
                maintenance: StdMutex::new(HashMap::new()),
                retries: StdMutex::new(HashMap::new()),
                retry_scheduled: tokio::sync::Notify::new(),
                revoked: StdMutex::new(Vec::new()),
                staples: StdMutex::new(HashMap::new()),
                manage_concurrency: self.manage_concurrency,
                challenge_tokens,
                shared_challenges,
                on_demand: self.on_demand.map(|od| Arc::new(OnDemand::new(od))),
                storage_cleaning: self.storage_cleaning,
            }),
        };
        let _ = this.set(Arc::downgrade(&config.inner));
        config
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
            rate_limit: None,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            ocsp_interval: DEFAULT_OCSP_CHECK_INTERVAL,
            manage_concurrency: super::DEFAULT_MANAGE_CONCURRENCY,
            pending_acme: Vec::new(),
            on_demand: None,
            issuer_policy: IssuerPolicy::default(),
            storage_cleaning: crate::maintain::StorageCleaning::new(),
            expiry_metric: true,
        }
    }
}
