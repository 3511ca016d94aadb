//! [`CertResolver`]: rustls's `ResolvesServerCert` over the [`CertCache`].
//!
//! - SNI present: the cached certificate for it (exact, then wildcard); an
//!   unknown name gets the handshake refused, or the default certificate with
//!   [`CertResolver::default_for_unknown_names`].
//! - No SNI (clients connecting by IP address): the default certificate.
//! - ALPN `acme-tls/1`: the TLS-ALPN-01 challenge certificate for the SNI, so
//!   TLS-ALPN-01 is answered on the application's own TLS port.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::cache::CertCache;
use crate::challenge::tls_alpn01::{ACME_TLS_ALPN, TlsAlpnChallenges};
use crate::metrics::{Lookup, LookupCounters};

/// Hook called (synchronously, on the handshake path) with an SNI value the
/// cache does not hold. On-demand issuance plugs in here.
pub type UnknownNameHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Resolves certificates during TLS handshakes.
pub struct CertResolver {
    cache: CertCache,
    challenges: TlsAlpnChallenges,
    default_name: RwLock<Option<String>>,
    default_for_unknown: bool,
    on_unknown: Option<UnknownNameHook>,
    /// Registered once, here: a lookup is one atomic increment.
    lookups: LookupCounters,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("cache", &self.cache)
            .field("challenges", &self.challenges)
            .field("default_for_unknown", &self.default_for_unknown)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// A resolver over `cache`, answering TLS-ALPN-01 from `challenges`.
    ///
    /// With the `metrics` feature, its handshake-lookup counters are
    /// registered here, with the recorder installed now: install the
    /// application's recorder first (see [`crate::metrics`]).
    pub fn new(cache: CertCache, challenges: TlsAlpnChallenges) -> Self {
        Self {
            cache,
            challenges,
            default_name: RwLock::new(None),
            default_for_unknown: false,
            on_unknown: None,
            lookups: LookupCounters::register(),
        }
    }

    /// Serves the certificate of `name` to clients that send no SNI.
    pub fn with_default_name(self, name: impl Into<String>) -> Self {
        self.set_default_name(Some(name.into()));
        self
    }

    /// Also serves the default certificate for SNI values the cache does not
    /// hold (instead of refusing the handshake).
    pub fn default_for_unknown_names(mut self) -> Self {
        self.default_for_unknown = true;
        self
    }

    /// Calls `hook` for SNI values the cache does not hold.
    pub fn on_unknown_name(mut self, hook: UnknownNameHook) -> Self {
        self.on_unknown = Some(hook);
        self
    }

    /// Changes the default name.
    pub fn set_default_name(&self, name: Option<String>) {
        *self.default_name.write().unwrap_or_else(|e| e.into_inner()) =
            name.map(|n| n.to_ascii_lowercase());
    }

    /// The cache.
    pub fn cache(&self) -> &CertCache {
        &self.cache
    }

    /// The TLS-ALPN-01 challenge certificates.
    pub fn challenges(&self) -> &TlsAlpnChallenges {
        &self.challenges
    }

    fn default_key(&self) -> Option<Arc<CertifiedKey>> {
        let name = self.default_name.read().unwrap_or_else(|e| e.into_inner());
        self.cache.certified_key(name.as_deref()?)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolve_with(hello, true)
    }
}

impl CertResolver {
    /// [`resolve`](ResolvesServerCert::resolve), calling the unknown-name
    /// hook only if `hook` (an acceptor that awaited the on-demand gate
    /// before the handshake passes `false`).
    pub(crate) fn resolve_with(
        &self,
        hello: ClientHello<'_>,
        hook: bool,
    ) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if hello
            .alpn()
            .into_iter()
            .flatten()
            .any(|p| p == ACME_TLS_ALPN)
        {
            // A validator: only the challenge certificate, never a real one.
            return self.challenges.get(sni?);
        }
        let Some(sni) = sni else {
            return self.counted_default();
        };
        if let Some(key) = self.cache.certified_key(sni) {
            self.lookups.record(Lookup::Hit);
            return Some(key);
        }
        if hook && let Some(hook) = &self.on_unknown {
            hook(sni);
        }
        if self.default_for_unknown {
            return self.counted_default();
        }
        self.lookups.record(Lookup::Miss);
        tracing::debug!(sni, "no certificate for this name");
        None
    }

    /// The default certificate, counted as a `default` lookup (a `miss`
    /// when there is none).
    fn counted_default(&self) -> Option<Arc<CertifiedKey>> {
        let key = self.default_key();
        self.lookups.record(if key.is_some() {
            Lookup::Default
        } else {
            Lookup::Miss
        });
        key
    }
}
