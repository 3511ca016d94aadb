//! # CertAuto core
//!
//! Automatic HTTPS for Rust: obtain, renew, store and serve TLS certificates
//! from any ACME CA ([RFC 8555](https://www.rfc-editor.org/rfc/rfc8555)) —
//! Let's Encrypt, ZeroSSL, Google Trust Services, Pebble — with a few lines of code.
//!
//! Applications depend on it renamed, and write `use certauto::…`:
//!
//! ```toml
//! certauto = { package = "certauto-core", version = "0.1" }
//! ```
//!
//! ## Which entry point
//!
//! | you want | use |
//! |---|---|
//! | a `rustls::ServerConfig` for some names, nothing else to decide | [`manage`] |
//! | your CA, storage, key type, events, several issuers | [`Config::builder`], then [`Config::manage`], [`start_maintenance`] and [`Config::server_config`] |
//! | to serve it: axum / actix-web / HTTP-01 on port 80 | the `certauto-axum`, `certauto-actix` and `certauto-tower` crates over [`AcmeAcceptor`] and [`Config::challenge_tokens`] |
//! | one certificate now, no serving | [`Config::obtain`], [`Config::renew`], [`Config::revoke`] |
//! | the ACME protocol alone | [`AcmeClient`] |
//! | to keep certificates elsewhere (a database, a KV store) | implement [`Storage`] (its docs state the lock contract) |
//! | a CA that is not ACME | implement [`Issuer`] |
//!
//! ## Quick start
//!
//! ```no_run
//! # extern crate certauto_core as certauto;
//! # async fn demo() -> Result<(), certauto::Error> {
//! use std::sync::Arc;
//! use certauto::{AcmeIssuer, Config, FileStorage, LETS_ENCRYPT_STAGING};
//!
//! let config = Config::builder()
//!     .storage(Arc::new(FileStorage::new("/var/lib/certauto")))
//!     .acme(AcmeIssuer::builder().ca(LETS_ENCRYPT_STAGING).email("admin@example.com").agreed(true))
//!     .build();
//! config.manage(["example.com", "www.example.com"]).await?;
//! let _maintenance = certauto::start_maintenance(&config);
//! let tls = config.server_config(); // serve it; renewals swap in live
//! # let _ = tls;
//! # Ok(()) }
//! ```
//!
//! ## Where things are
//!
//! Each public item has one path. The types above are at the crate root;
//! the modules hold only what is not: [`acme`] the rest of the RFC 8555
//! protocol layer (resources, statuses, account options), [`storage`] the
//! storage layout (every key) for backend and tool writers, [`ocsp`] OCSP
//! requests and verification for users who check staples themselves,
//! [`status`] the snapshot [`Config::status`] returns (for an admin endpoint),
//! [`env`](mod@env) the `CERTAUTO_*` settings the examples read, [`dns`] the DNS
//! providers, [`metrics`](mod@metrics) the metric names (recorded with the
//! `metrics` feature).
//!
//! Every rustls object CertAuto builds uses the *ring* provider explicitly
//! ([`crypto_provider`]), never the process default. The ring provider has no
//! post-quantum hybrid key exchange.
//!
#![doc = include_str!("defaults.md")]

#[doc(hidden)]
pub mod __defaults;
#[doc(hidden)]
pub mod __fuzz;
pub mod acme;
mod cache;
mod certificate;
mod challenge;
mod clock;
mod config;
#[cfg(test)]
mod defaults_table;
mod der;
pub mod env;
mod error;
mod events;
mod handshake;
mod identifier;
mod issuer;
mod keys;
mod maintain;
pub mod metrics;
mod name_table;
pub mod ocsp;
mod ratelimit;
pub mod status;
pub mod storage;

/// The DNS providers [`Dns01Solver`] writes its TXT records through, one per
/// DNS host; implement [`DnsProvider`] for any other.
pub mod dns {
    // One line per provider module of `challenge/dns01/`.
    pub use crate::challenge::dns01::acme_dns::{AcmeDns, AcmeDnsAccount, AcmeDnsBuilder};
    pub use crate::challenge::dns01::challtestsrv::{ChallTestSrv, ChallTestSrvBuilder};
    pub use crate::challenge::dns01::cloudflare::{Cloudflare, CloudflareBuilder};
    pub use crate::challenge::dns01::desec::{Desec, DesecBuilder};
    pub use crate::challenge::dns01::digitalocean::{DigitalOcean, DigitalOceanBuilder};
    pub use crate::challenge::dns01::exec::Exec;
    pub use crate::challenge::dns01::hetzner::{Hetzner, HetznerBuilder};
    pub use crate::challenge::dns01::powerdns::{PowerDns, PowerDnsBuilder};
    pub use crate::challenge::dns01::rfc2136::{
        Rfc2136, Rfc2136Builder, Rfc2136Transport, TsigAlgorithm,
    };
    pub use crate::challenge::dns01::route53::{Route53, Route53Builder};
}

pub use acme::chain::ChainPreference;
pub use acme::client::{AcmeClient, AcmeClientBuilder};
pub use acme::http::{crypto_provider, parse_pem_roots};
pub use acme::jws::{AccountKey, AccountKeyType, ExternalAccountKey};
pub use acme::problem::{Problem, ProblemType};
pub use acme::types::RevocationReason;
pub use cache::{CachedCert, CertCache, DEFAULT_CACHE_CAPACITY};
pub use certificate::{
    Certificate, CertificateMetadata, SHORT_LIVED_MAX_LIFETIME, SHORT_LIVED_RENEWAL_RATIO,
    renewal_ratio_for,
};
pub use challenge::tls_alpn01::ACME_TLS_ALPN;
pub use challenge::{
    CHALLENGE_CLEANUP_INTERVAL, DistributedSolver, STALE_CHALLENGE_AGE, StaleChallenges,
};
pub use challenge::{
    Challenge, ChallengeTokens, DEFAULT_POLLING_INTERVAL, DEFAULT_PROPAGATION_TIMEOUT, Dns01Solver,
    Dns01SolverBuilder, DnsError, DnsProvider, HTTP01_CONTENT_TYPE, HTTP01_PATH_PREFIX,
    Http01Answer, Http01Solver, Solver, TlsAlpn01Solver, TlsAlpnChallenges,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    Config, ConfigBuilder, DEFAULT_MANAGE_CONCURRENCY, DEFAULT_OCSP_CHECK_INTERVAL,
    DEFAULT_RENEW_INTERVAL, DEFAULT_RENEWAL_RATIO, MAX_CHECK_INTERVAL, MAX_RETRY_BACKOFF,
    MIN_RETRY_BACKOFF,
};
pub use error::{
    AcmeError, BoxError, CertificateError, ConfigError, Error, ErrorChain, KeyError, OcspError,
    SolverError,
};
pub use events::{Event, EventHandler};
pub use handshake::{
    AcmeAcceptor, AcmeAcceptorBuilder, AcmeHandshaker, CertResolver, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PENDING_HANDSHAKES, ServerLimits, UnknownNameHook, accept_tcp,
};
pub use handshake::{
    DECISION_TIMEOUT, DEFAULT_ON_DEMAND_MAX_IN_FLIGHT, DEFAULT_REFUSAL_CAPACITY,
    DEFAULT_REFUSAL_TTL, OnDemandConfig, OnDemandRefusal, OnDemandRequest,
};
pub use identifier::{DomainName, Identifier, NameError};
pub use issuer::{
    AcmeIssuer, AcmeIssuerBuilder, DEFAULT_LOCAL_LEAF_LIFETIME, IssueRequest, IssuedCertificate,
    Issuer, IssuerPolicy, LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING, LOCAL_CA_ISSUER_KEY,
    LocalCa, MAX_LOCAL_LEAF_LIFETIME, is_internal_name, is_local_name,
};
pub use issuer::{
    CaPreset, GOOGLE_TRUST_SERVICES_PRODUCTION, GOOGLE_TRUST_SERVICES_STAGING, IpCertificates,
    ZEROSSL_API_URL, ZEROSSL_DIRECTORY, ZeroSslError, ZeroSslIssuer, ZeroSslIssuerBuilder,
};
pub use keys::{CertificateKey, KeyType};
pub use maintain::{CleanReport, StorageCleaning};
pub use maintain::{MaintenanceHandle, RenewalReport, start_maintenance};
pub use ocsp::staple::OcspReport;
pub use ratelimit::{
    DEFAULT_RATE_LIMIT_EVENTS, DEFAULT_RATE_LIMIT_WINDOW, MAX_RATE_LIMIT_WINDOW, RateLimiter,
    RateLimits,
};
pub use storage::contract::{KeyInfo, Storage, StorageError, TemporariesSweep};
pub use storage::file::{FileStorage, FileStorageBuilder};
pub use storage::lock::{LockGuard, LockLoss};
pub use storage::memory::MemoryStorage;
#[cfg(feature = "redis")]
pub use storage::redis::{RedisStorage, RedisStorageBuilder};

/// Manages certificates for `domains` with the default [`Config`] and returns
/// a rustls server config that serves them, renewed for as long as the
/// runtime runs.
///
/// The default config keeps everything in [`FileStorage`] at the OS default
/// folder. Public names are obtained from Let's Encrypt (production; calling
/// this agrees to its terms of service), validated with HTTP-01 on port 80;
/// local names (`localhost`, `.localhost`, `.internal`, `.test`, `.local`,
/// loopback and private IPs) get certificates from the [`LocalCa`], so this
/// works offline for them. Maintenance ([`start_maintenance`]) runs in the
/// background: renewals, OCSP staples, and retries of names that could not
/// be obtained yet (they are logged and retried at their retry time; the
/// returned config serves them once obtained). Only invalid names are an
/// error. For anything else, build a [`Config`].
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// # async fn demo() -> Result<(), certauto::Error> {
/// let tls = certauto::manage(["localhost"]).await?;
/// # let _ = tls;
/// # Ok(()) }
/// ```
pub async fn manage<I, S>(domains: I) -> Result<rustls::ServerConfig, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    manage_with(Config::builder().build(), domains).await
}

/// [`manage`] with a given config.
async fn manage_with<I, S>(config: Config, domains: I) -> Result<rustls::ServerConfig, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    match config.manage(domains).await {
        Ok(()) => {}
        // Logged, and retried by maintenance at their retry time.
        Err(Error::ManageFailed(failed)) => {
            for (name, e) in &failed {
                tracing::warn!(name = %name, error = %ErrorChain(e), "not obtained yet; maintenance retries it");
            }
        }
        Err(e) => return Err(e),
    }
    // The task holds the config: it renews for as long as the runtime runs.
    drop(start_maintenance(&config));
    Ok(config.server_config())
}
