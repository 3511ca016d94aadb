//! [`AcmeIssuer`]: certificates from any ACME CA.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell};

use super::presets::{CaPreset, IpCertificates, LETS_ENCRYPT_PRODUCTION};
use super::{IssueRequest, IssuedCertificate, Issuer};
use crate::acme::chain::{ChainPreference, select_chain};
use crate::acme::client::{Account, AcmeClient, ClientLimits, NewAccountOptions, Order};
use crate::acme::jws::{AccountKey, AccountKeyType, ExternalAccountKey};
use crate::acme::types::{
    AuthorizationResource, AuthorizationStatus, ChallengeStatus, ChallengeType, OrderStatus,
    RevocationReason,
};
use crate::certificate::Certificate;
use crate::challenge::{Challenge, Http01Solver, Solver, TlsAlpn01Solver};
use crate::error::{AcmeError, ConfigError, Error};
use crate::identifier::Identifier;
use crate::ratelimit::RateLimits;
use crate::storage::{FileStorage, LockGuard, MemoryStorage, Storage, keys};

/// The order in which challenge types are tried when several are configured.
const CHALLENGE_PREFERENCE: [ChallengeType; 3] = [
    ChallengeType::Http01,
    ChallengeType::TlsAlpn01,
    ChallengeType::Dns01,
];

/// Builds an [`AcmeIssuer`].
#[derive(Debug)]
pub struct AcmeIssuerBuilder {
    ca: String,
    email: Option<String>,
    agreed: bool,
    external_account: Option<ExternalAccountKey>,
    account_key_type: AccountKeyType,
    solvers: BTreeMap<ChallengeType, Arc<dyn Solver>>,
    trusted_roots: Vec<CertificateDer<'static>>,
    only_trusted_roots: bool,
    chain_preference: ChainPreference,
    storage: Option<Arc<dyn Storage>>,
    limits: ClientLimits,
    profile: Option<String>,
    staging: Option<String>,
    preset: Option<CaPreset>,
}

impl AcmeIssuerBuilder {
    /// A known CA ([`CaPreset`]): its directory, its published rate limits
    /// (the issuer's [`rate_limits`](Issuer::rate_limits), which
    /// [`Config`](crate::Config)'s limiter follows) and its staging directory
    /// ([`AcmeIssuer::staging_directory`]). Orders the CA cannot take fail in
    /// [`precheck`](Issuer::precheck), before any request: without EAB
    /// credentials where it requires them
    /// ([`ConfigError::ExternalAccountRequired`]), or for IP addresses it
    /// does not certify, or only under a profile not configured
    /// ([`ConfigError::IpCertificatesNotIssued`]).
    ///
    /// A later [`ca`](Self::ca) replaces only the directory URL (a mirror, a
    /// test server); the preset's rules still apply.
    pub fn preset(mut self, preset: &CaPreset) -> Self {
        self.ca = preset.directory.to_owned();
        self.preset = Some(*preset);
        self
    }

    /// The CA's directory URL (default: [`LETS_ENCRYPT_PRODUCTION`]).
    pub fn ca(mut self, directory_url: impl Into<String>) -> Self {
        self.ca = directory_url.into();
        self
    }

    /// The account's contact e-mail.
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// Whether you agree to the CA's terms of service (required by most CAs).
    pub fn agreed(mut self, agreed: bool) -> Self {
        self.agreed = agreed;
        self
    }

    /// External Account Binding credentials (RFC 8555 §7.3.4).
    pub fn external_account(mut self, eab: ExternalAccountKey) -> Self {
        self.external_account = Some(eab);
        self
    }

    /// The account key type (default ES256).
    pub fn account_key_type(mut self, kind: AccountKeyType) -> Self {
        self.account_key_type = kind;
        self
    }

    /// The HTTP-01 solver.
    pub fn http01_solver(self, solver: impl Solver + 'static) -> Self {
        self.solver(ChallengeType::Http01, Arc::new(solver))
    }

    /// The TLS-ALPN-01 solver.
    pub fn tls_alpn01_solver(self, solver: impl Solver + 'static) -> Self {
        self.solver(ChallengeType::TlsAlpn01, Arc::new(solver))
    }

    /// The DNS-01 solver (the only one that can validate wildcards).
    pub fn dns01_solver(self, solver: impl Solver + 'static) -> Self {
        self.solver(ChallengeType::Dns01, Arc::new(solver))
    }

    /// A solver for any challenge type.
    pub fn solver(mut self, challenge: ChallengeType, solver: Arc<dyn Solver>) -> Self {
        self.solvers.insert(challenge, solver);
        self
    }

    /// Extra roots to trust for the CA's own HTTPS (a private CA, Pebble).
    pub fn trust_roots(mut self, roots: impl IntoIterator<Item = CertificateDer<'static>>) -> Self {
        self.trusted_roots.extend(roots);
        self
    }

    /// Trust only the roots given with [`trust_roots`](Self::trust_roots) for the CA's HTTPS.
    pub fn only_trusted_roots(mut self) -> Self {
        self.only_trusted_roots = true;
        self
    }

    /// Which chain to keep when the CA offers alternates.
    pub fn chain_preference(mut self, pref: ChainPreference) -> Self {
        self.chain_preference = pref;
        self
    }

    /// Where the account is kept (default: [`FileStorage`] in the OS data folder).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Protocol limits and timings.
    pub fn client_limits(mut self, limits: ClientLimits) -> Self {
        self.limits = limits;
        self
    }

    /// `storage`, unless a storage was set.
    pub(crate) fn default_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage.get_or_insert(storage);
        self
    }

    /// These solvers, unless solvers were set.
    pub(crate) fn default_solvers(self, http01: Http01Solver, tls_alpn01: TlsAlpn01Solver) -> Self {
        if self.solvers.is_empty() {
            self.http01_solver(http01).tls_alpn01_solver(tls_alpn01)
        } else {
            self
        }
    }

    /// Replaces each solver by `wrap(challenge type, issuer key, solver)`.
    pub(crate) fn wrap_solvers(
        mut self,
        mut wrap: impl FnMut(&ChallengeType, &str, Arc<dyn Solver>) -> Arc<dyn Solver>,
    ) -> Self {
        let issuer_key = keys::issuer_key_from_url(&self.ca);
        for (kind, solver) in &mut self.solvers {
            *solver = wrap(kind, &issuer_key, solver.clone());
        }
        self
    }

    /// The certificate profile to order ([draft-ietf-acme-profiles](https://datatracker.ietf.org/doc/draft-ietf-acme-profiles/)),
    /// such as Let's Encrypt's `"shortlived"` or `"tlsserver"`. Unset (the default), orders
    /// name no profile and the CA picks its default.
    ///
    /// The name must be one the CA's directory lists in `meta.profiles`; otherwise every
    /// issuance fails with [`AcmeError::ProfileNotOffered`] before an account is created or
    /// an order placed.
    ///
    /// ```no_run
    /// use certauto_core::{AcmeIssuer, LETS_ENCRYPT_STAGING};
    ///
    /// let issuer = AcmeIssuer::builder()
    ///     .ca(LETS_ENCRYPT_STAGING)
    ///     .agreed(true)
    ///     .profile("shortlived")
    ///     .build();
    /// assert_eq!(issuer.profile(), Some("shortlived"));
    /// ```
    pub fn profile(mut self, name: impl Into<String>) -> Self {
        self.profile = Some(name.into()).filter(|p| !p.trim().is_empty());
        self
    }

    /// Retries through a staging CA first (CertMagic's "test CA on retry"):
    /// when an attempt for a name is a retry after a failed one
    /// ([`IssueRequest::attempt`] 2 or more), the issuer first orders from the
    /// CA at `directory_url` (same solvers, trusted roots and e-mail; its own
    /// account, kept in storage under the staging CA's issuer key; no EAB),
    /// and orders from this issuer's CA only if that succeeds. If it fails,
    /// the production CA is not contacted and the error is
    /// [`AcmeError::StagingFailed`]. The staging certificate is discarded.
    /// So a broken setup spends the staging CA's generous rate limits, not
    /// production's. First attempts go to production directly. A staging CA
    /// known to require EAB credentials of its own (Google Trust Services'
    /// staging) is not used: it would refuse every trial.
    ///
    /// ```no_run
    /// use certauto_core::{AcmeIssuer, LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING};
    ///
    /// let issuer = AcmeIssuer::builder()
    ///     .ca(LETS_ENCRYPT_PRODUCTION)
    ///     .agreed(true)
    ///     .staging_on_retry(LETS_ENCRYPT_STAGING)
    ///     .build();
    /// assert_eq!(issuer.staging_ca(), Some(LETS_ENCRYPT_STAGING));
    /// ```
    pub fn staging_on_retry(mut self, directory_url: impl Into<String>) -> Self {
        self.staging = Some(directory_url.into()).filter(|u| !u.trim().is_empty());
        self
    }

    /// Builds the issuer. No request is made until it is first used.
    pub fn build(self) -> AcmeIssuer {
        let storage = self.storage.unwrap_or_else(|| match FileStorage::with_default_root() {
            Ok(fs) => Arc::new(fs) as Arc<dyn Storage>,
            Err(e) => {
                tracing::warn!(error = %e, "no default storage folder; keeping the ACME account in memory");
                Arc::new(MemoryStorage::new())
            }
        });
        let mut solvers = self.solvers;
        if solvers.is_empty() {
            solvers.insert(ChallengeType::Http01, Arc::new(Http01Solver::default()));
        }
        let email = self.email.filter(|e| !e.trim().is_empty());
        let issuer = |ca: String, external_account, staging, preset| AcmeIssuer {
            inner: Arc::new(Inner {
                issuer_key: keys::issuer_key_from_url(&ca),
                ca,
                email: email.clone(),
                agreed: self.agreed,
                external_account,
                account_key_type: self.account_key_type,
                solvers: solvers.clone(),
                trusted_roots: self.trusted_roots.clone(),
                only_trusted_roots: self.only_trusted_roots,
                chain_preference: self.chain_preference.clone(),
                storage: storage.clone(),
                limits: self.limits.clone(),
                profile: self.profile.clone(),
                staging,
                preset,
                client: OnceCell::new(),
                account: Mutex::new(None),
            }),
        };
        // The staging CA gets none of the production CA's EAB or preset
        // rules; one that requires EAB (Google's) could never issue, and
        // every retry would end there: no trial then.
        let staging = self.staging.filter(|ca| {
            let needs_eab = CaPreset::for_directory(ca).is_some_and(|p| p.eab_required);
            if needs_eab {
                tracing::warn!(staging = %ca, "this staging CA requires EAB credentials of its own; retries go to production directly");
            }
            !needs_eab
        });
        let staging = staging.map(|ca| issuer(ca, None, None, None));
        issuer(self.ca, self.external_account, staging, self.preset)
    }
}

/// Obtains certificates from an ACME CA, keeping its account in storage.
///
/// ```no_run
/// # async fn demo() -> Result<(), certauto_core::Error> {
/// use std::sync::Arc;
/// use certauto_core::{AcmeIssuer, FileStorage, Http01Solver, LETS_ENCRYPT_STAGING};
///
/// let issuer = AcmeIssuer::builder()
///     .ca(LETS_ENCRYPT_STAGING)
///     .email("admin@example.com")
///     .agreed(true)
///     .http01_solver(Http01Solver::new(80))
///     .storage(Arc::new(FileStorage::new("/var/lib/certauto")))
///     .build();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AcmeIssuer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ca: String,
    issuer_key: String,
    email: Option<String>,
    agreed: bool,
    external_account: Option<ExternalAccountKey>,
    account_key_type: AccountKeyType,
    solvers: BTreeMap<ChallengeType, Arc<dyn Solver>>,
    trusted_roots: Vec<CertificateDer<'static>>,
    only_trusted_roots: bool,
    chain_preference: ChainPreference,
    storage: Arc<dyn Storage>,
    limits: ClientLimits,
    profile: Option<String>,
    /// The staging CA a retry goes through first.
    staging: Option<AcmeIssuer>,
    preset: Option<CaPreset>,
    client: OnceCell<Arc<AcmeClient>>,
    account: Mutex<Option<Account>>,
}

/// The account record kept beside the account key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AccountRecord {
    url: String,
    #[serde(default)]
    contact: Vec<String>,
}

/// A challenge presented to a solver, remembered for cleanup.
struct Presented {
    challenge: Challenge,
    solver: Arc<dyn Solver>,
    authz_url: String,
}

/// The challenges of one order, cleaned up when the order ends however it
/// ends: [`clean_up`](Self::clean_up) at the end of the order, or, if the
/// order's future is dropped (cancelled), in a background task from `Drop`.
/// A challenge is recorded before its solver is asked to present it, so a
/// cancellation during `present` is cleaned up too.
#[derive(Default)]
struct PresentedSet {
    presented: Vec<Presented>,
}

impl PresentedSet {
    async fn clean_up(&mut self) {
        for p in std::mem::take(&mut self.presented) {
            p.clean_up().await;
        }
    }
}

impl Presented {
    async fn clean_up(self) {
        if let Err(e) = self.solver.cleanup(&self.challenge).await {
            tracing::warn!(error = %crate::ErrorChain(&e), identifier = %self.challenge.identifier, "challenge cleanup failed");
        }
    }
}

impl Drop for PresentedSet {
    fn drop(&mut self) {
        if self.presented.is_empty() {
            return;
        }
        let left = std::mem::take(&mut self.presented);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(
                    challenges = left.len(),
                    "order cancelled; cleaning up its challenges"
                );
                runtime.spawn(async move {
                    for p in left {
                        p.clean_up().await;
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    challenges = left.len(),
                    "order dropped outside a runtime; its challenges are not cleaned up"
                );
            }
        }
    }
}

impl AcmeIssuer {
    /// Starts building an issuer.
    pub fn builder() -> AcmeIssuerBuilder {
        AcmeIssuerBuilder {
            ca: LETS_ENCRYPT_PRODUCTION.to_owned(),
            email: None,
            agreed: false,
            external_account: None,
            account_key_type: AccountKeyType::default(),
            solvers: BTreeMap::new(),
            trusted_roots: Vec::new(),
            only_trusted_roots: false,
            chain_preference: ChainPreference::default(),
            storage: None,
            limits: ClientLimits::default(),
            profile: None,
            staging: None,
            preset: None,
        }
    }

    /// The staging CA's directory URL retries go through first, if one is
    /// configured ([`AcmeIssuerBuilder::staging_on_retry`]).
    pub fn staging_ca(&self) -> Option<&str> {
        self.inner.staging.as_ref().map(AcmeIssuer::ca)
    }

    /// The CA's directory URL.
    pub fn ca(&self) -> &str {
        &self.inner.ca
    }

    /// The certificate profile orders ask for, if one is configured
    /// ([`AcmeIssuerBuilder::profile`]).
    pub fn profile(&self) -> Option<&str> {
        self.inner.profile.as_deref()
    }

    /// The CA preset this issuer was built from ([`AcmeIssuerBuilder::preset`]).
    pub fn preset(&self) -> Option<&CaPreset> {
        self.inner.preset.as_ref()
    }

    /// The staging directory of this issuer's CA, if its preset names one.
    pub fn staging_directory(&self) -> Option<&str> {
        self.inner.preset.as_ref().and_then(|p| p.staging_directory)
    }

    /// The preset's refusals: EAB missing, IP addresses the CA (or the
    /// configured profile) does not certify.
    fn check_preset(&self, names: &[Identifier]) -> Result<(), ConfigError> {
        let Some(preset) = &self.inner.preset else {
            return Ok(());
        };
        if preset.eab_required && self.inner.external_account.is_none() {
            return Err(ConfigError::ExternalAccountRequired { ca: preset.name });
        }
        let Some(ip) = names.iter().find(|n| matches!(n, Identifier::Ip(_))) else {
            return Ok(());
        };
        let needed = match preset.ip_certificates {
            IpCertificates::Yes => return Ok(()),
            IpCertificates::WithProfile(p) if self.profile() == Some(p) => return Ok(()),
            IpCertificates::WithProfile(p) => Some(p),
            IpCertificates::No => None,
        };
        Err(ConfigError::IpCertificatesNotIssued {
            name: ip.to_string(),
            ca: preset.name,
            profile_needed: needed,
        })
    }

    /// Refuses a configured profile the CA's directory does not list.
    fn check_profile(&self, client: &AcmeClient) -> Result<(), AcmeError> {
        let Some(profile) = &self.inner.profile else {
            return Ok(());
        };
        let offered = &client.directory().meta.profiles;
        if offered.contains_key(profile) {
            return Ok(());
        }
        Err(AcmeError::ProfileNotOffered {
            directory_url: client.directory_url().to_owned(),
            profile: profile.clone(),
            offered: offered.keys().cloned().collect(),
        })
    }

    /// The protocol client, created (and the directory fetched) on first use.
    pub async fn client(&self) -> Result<Arc<AcmeClient>, Error> {
        let inner = &self.inner;
        inner
            .client
            .get_or_try_init(|| async {
                let mut b = AcmeClient::builder(&inner.ca)
                    .trust_roots(inner.trusted_roots.iter().cloned())
                    .limits(inner.limits.clone());
                if inner.only_trusted_roots {
                    b = b.only_trusted_roots();
                }
                Ok::<_, Error>(Arc::new(b.build().await?))
            })
            .await
            .cloned()
    }

    /// The ACME account: loaded from storage, or found or created at the CA
    /// and then stored. Creation is serialised across instances by a storage lock.
    pub async fn account(&self) -> Result<Account, Error> {
        let mut cached = self.inner.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let client = self.client().await?;
        let storage = &self.inner.storage;
        let email = self.inner.email.as_deref();
        let lock = keys::account_lock(&self.inner.issuer_key, email);
        let lock = crate::storage::lock::acquire(storage.as_ref(), &lock).await?;
        let result = self.load_or_create_account(&client, &lock).await;
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %crate::ErrorChain(&e), "could not release the account lock");
        }
        let account = result?;
        *cached = Some(account.clone());
        Ok(account)
    }

    /// Loads the account, or finds or creates it at the CA and stores it
    /// with writes fenced by `lock` (the account lock).
    async fn load_or_create_account(
        &self,
        client: &AcmeClient,
        lock: &LockGuard,
    ) -> Result<Account, Error> {
        let storage = &self.inner.storage;
        let email = self.inner.email.as_deref();
        let key_path = keys::account_key(&self.inner.issuer_key, email);
        let record_path = keys::account_record(&self.inner.issuer_key, email);
        let key = match storage.load(&key_path).await {
            Ok(pem) => {
                let pem = String::from_utf8(pem).map_err(|_| crate::error::KeyError::InvalidPem)?;
                Some(Arc::new(AccountKey::from_pem(&pem)?))
            }
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(key) = key {
            match storage.load(&record_path).await {
                Ok(bytes) => {
                    if let Ok(record) = serde_json::from_slice::<AccountRecord>(&bytes) {
                        tracing::debug!(account = %record.url, "using stored ACME account");
                        return Ok(Account {
                            url: record.url,
                            key,
                            resource: serde_json::from_value(serde_json::json!({
                                "status": "valid", "contact": record.contact
                            }))
                            .map_err(|e| {
                                AcmeError::InvalidResponse {
                                    url: self.inner.ca.clone(),
                                    reason: e.to_string(),
                                }
                            })?,
                        });
                    }
                    tracing::warn!(
                        "stored ACME account record is unreadable; looking the account up"
                    );
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            let account = match client.find_account(key.clone()).await {
                Ok(account) => account,
                Err(AcmeError::AccountDoesNotExist) => {
                    client.new_account(key, &self.account_options()).await?
                }
                Err(e) => return Err(e.into()),
            };
            self.store_account_record(&account, lock).await?;
            return Ok(account);
        }
        let key = Arc::new(AccountKey::generate(self.inner.account_key_type)?);
        let account = client
            .new_account(key.clone(), &self.account_options())
            .await?;
        // Key first: a record without its key is useless, a key without a record is recoverable.
        storage
            .store_fenced(lock, &key_path, key.to_pem().as_bytes())
            .await?;
        self.store_account_record(&account, lock).await?;
        tracing::info!(account = %account.url, ca = %self.inner.ca, "created ACME account");
        Ok(account)
    }

    async fn store_account_record(&self, account: &Account, lock: &LockGuard) -> Result<(), Error> {
        let record = AccountRecord {
            url: account.url.clone(),
            contact: account.resource.contact.clone(),
        };
        let path = keys::account_record(&self.inner.issuer_key, self.inner.email.as_deref());
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| AcmeError::InvalidResponse {
            url: account.url.clone(),
            reason: e.to_string(),
        })?;
        self.inner.storage.store_fenced(lock, &path, &bytes).await?;
        Ok(())
    }

    fn account_options(&self) -> NewAccountOptions {
        NewAccountOptions {
            contact: self
                .inner
                .email
                .iter()
                .map(|e| format!("mailto:{}", e.trim()))
                .collect(),
            terms_of_service_agreed: self.inner.agreed,
            external_account: self.inner.external_account.clone(),
        }
    }

    /// Picks the solver for an authorization: DNS-01 only for wildcards,
    /// otherwise the first configured type the CA offers.
    fn choose(
        &self,
        authz: &AuthorizationResource,
    ) -> Option<(ChallengeType, Arc<dyn Solver>, String, String)> {
        for kind in &CHALLENGE_PREFERENCE {
            if authz.wildcard && *kind != ChallengeType::Dns01 {
                continue;
            }
            let Some(solver) = self.inner.solvers.get(kind) else {
                continue;
            };
            if let Some(ch) = authz.challenges.iter().find(|c| &c.type_ == kind)
                && let Some(token) = &ch.token
            {
                return Some((kind.clone(), solver.clone(), token.clone(), ch.url.clone()));
            }
        }
        None
    }

    async fn present_all(
        &self,
        client: &AcmeClient,
        account: &Account,
        order: &Order,
        presented: &mut PresentedSet,
    ) -> Result<(), Error> {
        for authz_url in &order.resource.authorizations {
            let authz = client.get_authorization(account, authz_url).await?;
            let identifier =
                authz
                    .identifier
                    .to_identifier()
                    .ok_or_else(|| AcmeError::InvalidResponse {
                        url: authz_url.clone(),
                        reason: format!("unusable identifier {:?}", authz.identifier.value),
                    })?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                _ => {
                    return Err(AcmeError::AuthorizationFailed {
                        identifier: identifier.to_string(),
                        challenge: None,
                        problem: authz
                            .challenges
                            .iter()
                            .find_map(|c| c.error.clone())
                            .map(Box::new),
                    }
                    .into());
                }
            }
            let Some((kind, solver, token, url)) = self.choose(&authz) else {
                return Err(AcmeError::NoUsableChallenge {
                    identifier: identifier.to_string(),
                    offered: authz.challenges.iter().map(|c| c.type_.clone()).collect(),
                }
                .into());
            };
            let key_authorization = account.key.key_authorization(&token);
            let challenge = Challenge::new(identifier, kind, token, key_authorization, url);
            presented.presented.push(Presented {
                challenge: challenge.clone(),
                solver: solver.clone(),
                authz_url: authz_url.clone(),
            });
            solver.present(&challenge).await?;
        }
        Ok(())
    }

    async fn validate_all(
        &self,
        client: &AcmeClient,
        account: &Account,
        presented: &PresentedSet,
    ) -> Result<(), Error> {
        let presented = &presented.presented;
        // Propagation waits run together: each may take the DNS-01 timeout.
        for waited in
            futures_util::future::join_all(presented.iter().map(|p| p.solver.wait(&p.challenge)))
                .await
        {
            waited?;
        }
        for p in presented {
            let ch = client
                .respond_to_challenge(account, &p.challenge.url)
                .await?;
            if ch.status == ChallengeStatus::Invalid {
                return Err(self.authz_failed(p, ch.error));
            }
        }
        for p in presented {
            let authz = client.poll_authorization(account, &p.authz_url).await?;
            if authz.status != AuthorizationStatus::Valid {
                let problem = authz
                    .challenges
                    .iter()
                    .find(|c| c.url == p.challenge.url)
                    .and_then(|c| c.error.clone());
                return Err(self.authz_failed(p, problem));
            }
        }
        Ok(())
    }

    fn authz_failed(&self, p: &Presented, problem: Option<crate::acme::problem::Problem>) -> Error {
        AcmeError::AuthorizationFailed {
            identifier: p.challenge.identifier.to_string(),
            challenge: Some(p.challenge.challenge_type.clone()),
            problem: problem.map(Box::new),
        }
        .into()
    }

    async fn run_order(
        &self,
        client: &AcmeClient,
        account: &Account,
        request: &IssueRequest<'_>,
    ) -> Result<IssuedCertificate, Error> {
        let profile = self.inner.profile.as_deref();
        let order = client
            .new_order_with_profile(account, request.names, request.replaces, profile)
            .await?;
        tracing::debug!(order = %order.url, names = ?request.names, "created order");
        let mut presented = PresentedSet::default();
        let result = async {
            self.present_all(client, account, &order, &mut presented)
                .await?;
            self.validate_all(client, account, &presented).await
        }
        .await;
        presented.clean_up().await;
        result?;
        let mut order = order;
        if order.resource.status != OrderStatus::Ready {
            order = client.poll_order(account, &order.url, true).await?;
        }
        if order.resource.status == OrderStatus::Invalid {
            return Err(AcmeError::OrderInvalid {
                url: order.url,
                problem: order.resource.error.map(Box::new),
            }
            .into());
        }
        let mut order = client.finalize(account, &order, request.csr_der).await?;
        if order.resource.status != OrderStatus::Valid {
            order = client.poll_order(account, &order.url, false).await?;
        }
        let Some(cert_url) = order
            .resource
            .certificate
            .clone()
            .filter(|_| order.resource.status == OrderStatus::Valid)
        else {
            return Err(AcmeError::OrderInvalid {
                url: order.url,
                problem: order.resource.error.map(Box::new),
            }
            .into());
        };
        let want_alternates = self.inner.chain_preference != ChainPreference::Default;
        let chains = client
            .download_certificate(account, &cert_url, want_alternates)
            .await?;
        let chosen = select_chain(&chains, &self.inner.chain_preference)
            .cloned()
            .ok_or_else(|| AcmeError::InvalidResponse {
                url: cert_url.clone(),
                reason: "no certificate chain".into(),
            })?;
        Ok(IssuedCertificate::new(chosen.pem, Some(chosen.url)))
    }

    /// Revokes with the certificate's own key instead of the account key
    /// (for a certificate issued to another account).
    pub async fn revoke_with_certificate_key(
        &self,
        certificate: &Certificate,
        reason: Option<RevocationReason>,
    ) -> Result<(), Error> {
        let client = self.client().await?;
        let key = AccountKey::from_pem(certificate.key_pem())?;
        client
            .revoke_with_certificate_key(&key, certificate.leaf(), reason)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Issuer for AcmeIssuer {
    fn issuer_key(&self) -> String {
        self.inner.issuer_key.clone()
    }

    fn precheck(&self, names: &[Identifier]) -> Result<(), Error> {
        if let Some(wild) = names.iter().find(|n| n.is_wildcard())
            && !self.inner.solvers.contains_key(&ChallengeType::Dns01)
        {
            return Err(ConfigError::WildcardNeedsDns01 {
                name: wild.to_string(),
            }
            .into());
        }
        self.check_preset(names)?;
        Ok(())
    }

    fn rate_limits(&self) -> Option<RateLimits> {
        self.inner.preset.as_ref().and_then(|p| p.rate_limits)
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedCertificate, Error> {
        self.precheck(request.names)?;
        if request.attempt >= 2
            && let Some(staging) = &self.inner.staging
        {
            // The staging CA does not know the certificate being replaced.
            let trial = request.clone().replaces(None);
            if let Err(e) = staging.issue(&trial).await {
                return Err(AcmeError::StagingFailed {
                    directory_url: staging.ca().to_owned(),
                    source: Box::new(e),
                }
                .into());
            }
            tracing::info!(names = ?request.names, staging = %staging.ca(), ca = %self.inner.ca,
                "the trial order at the staging CA succeeded; ordering from production");
        }
        let client = self.client().await?;
        // Before the account too: a profile the CA lacks is a configuration error.
        self.check_profile(&client)?;
        let account = self.account().await?;
        // `replaces` only goes to CAs that speak ARI.
        let mut request = request.clone();
        if client.directory().renewal_info.is_none() {
            request.replaces = None;
        }
        match self.run_order(&client, &account, &request).await {
            // The CA refused the order because of `replaces` (already
            // replaced, e.g. by another instance, or a CertID it cannot
            // match): `replaces` is only a hint, so order without it.
            Err(Error::Acme(AcmeError::Problem { url, problem, .. }))
                if request.replaces.is_some()
                    && url == client.directory().new_order
                    && problem.kind() != crate::acme::problem::ProblemType::RateLimited =>
            {
                tracing::warn!(problem = %problem, "the CA refused the order naming the certificate it replaces; ordering without `replaces`");
                let request = request.replaces(None);
                self.run_order(&client, &account, &request).await
            }
            other => other,
        }
    }

    async fn renewal_info(
        &self,
        ari_cert_id: &str,
    ) -> Result<Option<crate::acme::RenewalInfo>, Error> {
        let client = self.client().await?;
        Ok(client.renewal_info(ari_cert_id).await?)
    }

    async fn revoke(
        &self,
        certificate: &Certificate,
        reason: Option<RevocationReason>,
    ) -> Result<(), Error> {
        let client = self.client().await?;
        let account = self.account().await?;
        match client
            .revoke_with_account(&account, certificate.leaf(), reason)
            .await
        {
            Ok(()) => Ok(()),
            // Issued to another account: the certificate key can still revoke it.
            Err(AcmeError::Problem { problem, .. })
                if problem.kind() == crate::acme::problem::ProblemType::Unauthorized =>
            {
                self.revoke_with_certificate_key(certificate, reason).await
            }
            Err(e) => Err(e.into()),
        }
    }
}
