//! [`DistributedSolver`]: challenge state in shared storage, so any instance
//! of a cluster answers a validation another instance started, and a
//! challenge left behind by an instance that died is cleaned up by the next.
//!
//! Each challenge in progress is one record in storage,
//! `challenges/<type>/<name>/<token>.json` (see [`keys`](crate::storage::keys)):
//! the identifier, the challenge type, the token, the key authorization, the
//! challenge URL, when it was presented, which solver presented it, and for
//! DNS-01 the TXT record's name and value. From it:
//!
//! - **HTTP-01**: the token's key authorization is also written where every
//!   [`ChallengeTokens`](crate::ChallengeTokens) sharing the storage looks on
//!   a local miss (the one HTTP-01 responder), so any instance answers.
//! - **TLS-ALPN-01**: an instance that receives an `acme-tls/1` ClientHello
//!   for a name it has no challenge certificate for loads the record (in
//!   [`Config`](crate::Config)'s handshake preparation, before the resolver
//!   runs), builds the challenge certificate and serves it to validators for
//!   a while. Bounded: the SNI is validated as a name first, a name found
//!   missing is not looked up again for a short while (negative cache),
//!   lookups per second and at once are capped, and the loaded certificates
//!   are bounded in number and lifetime.
//! - **DNS-01**: the record names the TXT value, so another instance can
//!   remove it through its own solver.
//! - **Crash cleanup**: a record older than [`STALE_CHALLENGE_AGE`] was left
//!   by an instance that died before its cleanup; maintenance
//!   ([`start_maintenance`](crate::start_maintenance)) cleans such records
//!   up at its start and every [`CHALLENGE_CLEANUP_INTERVAL`], through the
//!   solver that presented them ([`Solver::cleanup_stale`]), under a storage lock, a bounded number per
//!   pass ([`Config::clean_stale_challenges`](crate::Config::clean_stale_challenges)).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::http01::is_token;
use super::tls_alpn01::{TlsAlpnChallenges, challenge_certificate, tls_alpn_sni};
use super::{Challenge, Solver};
use crate::acme::types::ChallengeType;
use crate::clock::{Clock, SystemClock};
use crate::error::SolverError;
use crate::handshake::Hello;
use crate::identifier::Identifier;
use crate::storage::Storage;
use crate::storage::keys;

/// A challenge record older than this was left behind by an instance that
/// died: no validation takes this long (CAs expire pending authorizations'
/// attempts well before), so its cleanup is due.
pub const STALE_CHALLENGE_AGE: Duration = Duration::from_secs(3600);

/// How often maintenance looks for stale challenge records (also once at
/// its start).
pub const CHALLENGE_CLEANUP_INTERVAL: Duration = Duration::from_secs(600);

/// The most records one cleanup pass reads.
const MAX_SCANNED_PER_PASS: usize = 500;
/// The most records one cleanup pass cleans up.
const MAX_CLEANED_PER_PASS: usize = 50;
/// The largest challenge record read (they are a few hundred bytes).
const MAX_RECORD_BYTES: usize = 16 * 1024;
/// The most records read for one TLS-ALPN-01 name.
const MAX_RECORDS_PER_NAME: usize = 8;
/// How long a name found without a TLS-ALPN-01 record is not looked up again.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// The most names kept in the negative cache.
const MAX_NEGATIVE: usize = 4096;
/// The most TLS-ALPN-01 storage lookups per second.
const MAX_LOOKUPS_PER_SECOND: u32 = 50;
/// The most TLS-ALPN-01 storage lookups at once.
const MAX_CONCURRENT_LOOKUPS: usize = 8;

/// A [`Solver`] that keeps the state of each challenge in shared
/// [`Storage`], so any instance of a cluster answers it and a challenge
/// started by an instance that died is cleaned up by another.
///
/// [`Config::builder`](crate::Config::builder)`.acme(..)` wraps every solver
/// of its ACME issuers in one, with the config's storage and clock; wrap a
/// solver yourself for issuers you build (and don't give a
/// `DistributedSolver` to `.acme(..)`: it would be wrapped twice).
///
/// # Guarantees
/// - [`present`](Solver::present) writes the challenge's record to storage
///   before it presents through the inner solver, so the record exists
///   whenever the challenge can be answered; a failed write fails the
///   present.
/// - [`cleanup`](Solver::cleanup) cleans up through the inner solver, then
///   deletes the record; when the inner cleanup fails, the record is kept,
///   so the stale-record cleanup tries again later.
/// - Cancel safe, as the [`Solver`] contract asks: a dropped `present` is
///   followed by `cleanup`, which removes whatever was written; if the
///   process dies instead, the record outlives it and
///   [`clean_stale`](Self::clean_stale) (or maintenance, for the solvers a
///   `Config` wrapped) cleans it up after [`STALE_CHALLENGE_AGE`].
/// - Other instances answer from the record: HTTP-01 through their
///   [`ChallengeTokens`](crate::ChallengeTokens) (a `Config`'s share its
///   storage), TLS-ALPN-01 through an acceptor built with
///   [`AcmeAcceptor::for_config`](crate::AcmeAcceptor::for_config), DNS-01
///   needs nothing (the TXT record is in DNS).
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use std::sync::Arc;
/// use certauto::{AcmeIssuer, DistributedSolver, FileStorage, Http01Solver, Storage};
///
/// let storage: Arc<dyn Storage> = Arc::new(FileStorage::new("/shared/certauto"));
/// let solver = DistributedSolver::new(Http01Solver::new(80), storage.clone())
///     .solver_id("my-http01");
/// let issuer = AcmeIssuer::builder()
///     .agreed(true)
///     .storage(storage)
///     .http01_solver(solver)
///     .build();
/// # let _ = issuer;
/// ```
#[derive(Clone)]
pub struct DistributedSolver {
    solver: Arc<dyn Solver>,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    id: String,
}

impl fmt::Debug for DistributedSolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedSolver")
            .field("id", &self.id)
            .field("solver", &self.solver)
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl DistributedSolver {
    /// Wraps `solver`, keeping challenge records in `storage` (the storage
    /// every instance of the cluster shares).
    pub fn new(solver: impl Solver + 'static, storage: Arc<dyn Storage>) -> Self {
        Self::from_arc(Arc::new(solver), storage)
    }

    /// Wraps a shared solver.
    pub fn from_arc(solver: Arc<dyn Solver>, storage: Arc<dyn Storage>) -> Self {
        Self {
            solver,
            storage,
            clock: Arc::new(SystemClock),
            id: "default".to_owned(),
        }
    }

    /// Names this solver in its records (default `default`), so the stale
    /// cleanup of any instance cleans a record up through the solver with
    /// the same name: give the same name to the same solver on every
    /// instance, and different names to solvers of different DNS providers.
    pub fn solver_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The clock that dates records (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The name given with [`solver_id`](Self::solver_id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Cleans up the records in this solver's storage older than
    /// [`STALE_CHALLENGE_AGE`], through this solver for its own records
    /// (HTTP-01 and TLS-ALPN-01 records of other solvers are only deleted:
    /// they leave nothing outside storage and the dead process).
    pub async fn clean_stale(&self) -> StaleChallenges {
        clean_stale(
            &self.storage,
            std::slice::from_ref(self),
            self.clock.now(),
            STALE_CHALLENGE_AGE,
        )
        .await
    }
}

#[async_trait]
impl Solver for DistributedSolver {
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
        let key = record_key(challenge)?;
        let record = Record::new(&self.id, challenge, self.clock.now());
        let bytes = serde_json::to_vec(&record).map_err(|e| SolverError::Other(Box::new(e)))?;
        self.storage
            .store(&key, &bytes)
            .await
            .map_err(SolverError::Storage)?;
        if challenge.challenge_type == ChallengeType::Http01 {
            self.storage
                .store(
                    &keys::challenge_token(&challenge.token),
                    challenge.key_authorization.as_bytes(),
                )
                .await
                .map_err(SolverError::Storage)?;
        }
        self.solver.present(challenge).await
    }

    async fn wait(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.solver.wait(challenge).await
    }

    async fn cleanup(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.solver.cleanup(challenge).await?;
        if let Ok(key) = record_key(challenge) {
            delete_record(&self.storage, &key, challenge).await;
        }
        Ok(())
    }

    async fn cleanup_stale(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.solver.cleanup_stale(challenge).await?;
        if let Ok(key) = record_key(challenge) {
            delete_record(&self.storage, &key, challenge).await;
        }
        Ok(())
    }
}

/// The storage key of a challenge's record; refuses malformed tokens.
fn record_key(challenge: &Challenge) -> Result<String, SolverError> {
    if !is_token(&challenge.token) {
        return Err(SolverError::MalformedToken(
            challenge.token.chars().take(64).collect(),
        ));
    }
    let name = match challenge.challenge_type {
        ChallengeType::TlsAlpn01 => tls_alpn_sni(&challenge.identifier),
        _ => challenge.identifier.storage_key(),
    };
    Ok(keys::challenge_record(
        challenge.challenge_type.as_str(),
        &name,
        &challenge.token,
    ))
}

/// Deletes a challenge's record (and its HTTP-01 token), logging failures.
async fn delete_record(storage: &Arc<dyn Storage>, key: &str, challenge: &Challenge) {
    let mut keys = vec![key.to_owned()];
    if challenge.challenge_type == ChallengeType::Http01 && is_token(&challenge.token) {
        keys.push(keys::challenge_token(&challenge.token));
    }
    for key in keys {
        if let Err(e) = storage.delete(&key).await
            && !e.is_not_found()
        {
            tracing::warn!(key, error = %crate::ErrorChain(&e), "could not delete a challenge record");
        }
    }
}

/// One challenge in progress, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The [`DistributedSolver::solver_id`] that presented it.
    solver: String,
    identifier: String,
    challenge_type: String,
    token: String,
    key_authorization: String,
    url: String,
    /// When it was presented, in seconds since the Unix epoch.
    created: u64,
    /// DNS-01: the TXT record's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns_name: Option<String>,
    /// DNS-01: the TXT record's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns_value: Option<String>,
}

impl Record {
    fn new(solver: &str, challenge: &Challenge, now: SystemTime) -> Self {
        let dns = challenge.challenge_type == ChallengeType::Dns01;
        Self {
            solver: solver.to_owned(),
            identifier: challenge.identifier.as_str().into_owned(),
            challenge_type: challenge.challenge_type.as_str().to_owned(),
            token: challenge.token.clone(),
            key_authorization: challenge.key_authorization.clone(),
            url: challenge.url.clone(),
            created: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            dns_name: dns.then(|| challenge.dns01_record_name()),
            dns_value: dns.then(|| challenge.dns01_value()),
        }
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_RECORD_BYTES {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }

    /// The challenge it describes, if the record is well-formed.
    fn challenge(&self) -> Option<Challenge> {
        let identifier = Identifier::parse(&self.identifier).ok()?;
        if !is_token(&self.token) {
            return None;
        }
        let challenge_type = match self.challenge_type.as_str() {
            "http-01" => ChallengeType::Http01,
            "dns-01" => ChallengeType::Dns01,
            "tls-alpn-01" => ChallengeType::TlsAlpn01,
            other => ChallengeType::Other(other.to_owned()),
        };
        Some(Challenge::new(
            identifier,
            challenge_type,
            self.token.clone(),
            self.key_authorization.clone(),
            self.url.clone(),
        ))
    }

    fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.created)
    }
}

/// What a stale-challenge cleanup pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StaleChallenges {
    /// The challenges cleaned up and their records deleted, as
    /// `<type> <identifier>`.
    pub cleaned: Vec<String>,
    /// The stale challenges that could not be cleaned up (kept for the next
    /// pass), as `<type> <identifier>: <why>`.
    pub failed: Vec<String>,
}

/// Cleans up the records older than `max_age` at `now` (bounded per pass),
/// under [`keys::CHALLENGES_CLEANUP_LOCK`], through the solver of `solvers`
/// that presented each.
pub(crate) async fn clean_stale(
    storage: &Arc<dyn Storage>,
    solvers: &[DistributedSolver],
    now: SystemTime,
    max_age: Duration,
) -> StaleChallenges {
    let mut report = StaleChallenges::default();
    let listed = match storage.list(keys::CHALLENGES_PREFIX, true).await {
        Ok(listed) => listed,
        Err(e) if e.is_not_found() => return report,
        Err(e) => {
            tracing::warn!(error = %crate::ErrorChain(&e), "could not list challenge records");
            return report;
        }
    };
    if listed.is_empty() {
        return report;
    }
    let guard = match storage.lock(keys::CHALLENGES_CLEANUP_LOCK).await {
        Ok(guard) => guard,
        Err(e) => {
            tracing::warn!(error = %crate::ErrorChain(&e), "could not lock the challenge records for cleanup");
            return report;
        }
    };
    for key in listed.iter().take(MAX_SCANNED_PER_PASS) {
        if report.cleaned.len() + report.failed.len() >= MAX_CLEANED_PER_PASS {
            break;
        }
        // Gone meanwhile (cleaned up by its owner, or by an earlier pass).
        let Ok(bytes) = storage.load(key).await else {
            continue;
        };
        let Some((record, challenge)) =
            Record::parse(&bytes).and_then(|r| r.challenge().map(|c| (r, c)))
        else {
            // Not a record this version can use: delete it once it is stale.
            let stale = storage
                .stat(key)
                .await
                .ok()
                .and_then(|info| info.modified)
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= max_age);
            if stale && guard.ensure_held().is_ok() {
                tracing::warn!(key, "deleting an unreadable stale challenge record");
                let _ = storage.delete(key).await;
            }
            continue;
        };
        let age = now.duration_since(record.created()).unwrap_or_default();
        if age < max_age {
            continue;
        }
        let what = format!("{} {}", record.challenge_type, record.identifier);
        let solver = solvers.iter().find(|s| s.id == record.solver);
        match (solver, &challenge.challenge_type) {
            (Some(solver), _) => {
                if let Err(e) = solver.solver.cleanup_stale(&challenge).await {
                    tracing::warn!(challenge = %what, error = %crate::ErrorChain(&e), "could not clean up a stale challenge");
                    report.failed.push(format!("{what}: {e}"));
                    continue;
                }
            }
            // Only the process that died held anything else.
            (None, ChallengeType::Http01 | ChallengeType::TlsAlpn01) => {}
            (None, _) => {
                tracing::debug!(challenge = %what, solver = record.solver, "no solver here cleans up this stale challenge");
                continue;
            }
        }
        if guard.ensure_held().is_err() {
            break;
        }
        delete_record(storage, key, &challenge).await;
        tracing::info!(
            challenge = %what,
            dns_name = record.dns_name.as_deref().unwrap_or(""),
            dns_value = record.dns_value.as_deref().unwrap_or(""),
            age_secs = age.as_secs(),
            "cleaned up a challenge left by an instance that did not finish it"
        );
        report.cleaned.push(what);
    }
    let _ = guard.release().await;
    report
}

/// A config's side of distributed challenges: the solvers it wrapped (for
/// the stale cleanup) and the loading of TLS-ALPN-01 challenge certificates
/// other instances presented.
pub(crate) struct SharedChallenges {
    storage: Arc<dyn Storage>,
    tls_alpn: TlsAlpnChallenges,
    solvers: Vec<DistributedSolver>,
    clock: Arc<dyn Clock>,
    lookups: Mutex<Lookups>,
    slots: Semaphore,
}

impl fmt::Debug for SharedChallenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedChallenges")
            .field("solvers", &self.solvers)
            .finish_non_exhaustive()
    }
}

/// The bounds on TLS-ALPN-01 storage lookups.
#[derive(Default)]
struct Lookups {
    /// Names found without a record, until when they are not looked up.
    negative: HashMap<String, Instant>,
    /// The current one-second window and the lookups made in it.
    window: Option<(Instant, u32)>,
}

impl Lookups {
    /// Whether `name` may be looked up now (and if so, counts it).
    fn admit(&mut self, name: &str, now: Instant) -> bool {
        if self.negative.get(name).is_some_and(|until| *until > now) {
            return false;
        }
        match &mut self.window {
            Some((start, count)) if now.duration_since(*start) < Duration::from_secs(1) => {
                if *count >= MAX_LOOKUPS_PER_SECOND {
                    return false;
                }
                *count += 1;
            }
            window => *window = Some((now, 1)),
        }
        true
    }

    fn remember_missing(&mut self, name: String, now: Instant) {
        if self.negative.len() >= MAX_NEGATIVE {
            self.negative.retain(|_, until| *until > now);
            if self.negative.len() >= MAX_NEGATIVE {
                self.negative.clear();
            }
        }
        self.negative.insert(name, now + NEGATIVE_TTL);
    }
}

impl SharedChallenges {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        tls_alpn: TlsAlpnChallenges,
        solvers: Vec<DistributedSolver>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            storage,
            tls_alpn,
            solvers,
            clock,
            lookups: Mutex::new(Lookups::default()),
            slots: Semaphore::new(MAX_CONCURRENT_LOOKUPS),
        }
    }

    /// Before a handshake: for a TLS-ALPN-01 validation of a name this
    /// process holds no challenge certificate for, loads the certificate
    /// another instance presented (see the module docs for the bounds).
    pub(crate) async fn prepare(&self, hello: &Hello) {
        if !hello.is_tls_alpn_validation() {
            return;
        }
        let Some(sni) = hello.server_name.as_deref() else {
            return;
        };
        // A DNS name (IP identifiers are validated under reverse names).
        let Ok(Identifier::Dns(name)) = Identifier::parse(sni) else {
            return;
        };
        if name.is_wildcard() {
            return;
        }
        let name = name.as_str();
        if self.tls_alpn.get_local(name).is_some() {
            return;
        }
        let admitted = self
            .lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(name, Instant::now());
        if !admitted {
            tracing::debug!(
                sni = name,
                "TLS-ALPN-01 lookup skipped (negative cache or rate)"
            );
            return;
        }
        let Ok(_slot) = self.slots.try_acquire() else {
            tracing::debug!(sni = name, "TLS-ALPN-01 lookup skipped (too many at once)");
            return;
        };
        match self.load_tls_alpn(name).await {
            Some(challenge) => {
                if self
                    .tls_alpn
                    .refresh_loaded(name, &challenge.key_authorization)
                {
                    return;
                }
                match challenge_certificate(&challenge) {
                    Ok(key) => {
                        tracing::debug!(
                            sni = name,
                            "loaded a TLS-ALPN-01 challenge another instance presented"
                        );
                        self.tls_alpn.insert_loaded(
                            name.to_owned(),
                            Arc::new(key),
                            challenge.key_authorization,
                        );
                    }
                    Err(e) => {
                        tracing::warn!(sni = name, error = %crate::ErrorChain(&e), "could not build a TLS-ALPN-01 challenge certificate");
                    }
                }
            }
            None => {
                self.tls_alpn.remove_loaded(name);
                self.lookups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remember_missing(name.to_owned(), Instant::now());
            }
        }
    }

    /// The newest TLS-ALPN-01 challenge recorded for the SNI `name`.
    async fn load_tls_alpn(&self, name: &str) -> Option<Challenge> {
        let folder = keys::challenge_records(ChallengeType::TlsAlpn01.as_str(), name);
        let listed = self.storage.list(&folder, false).await.ok()?;
        let mut newest: Option<(u64, Challenge)> = None;
        for key in listed.iter().take(MAX_RECORDS_PER_NAME) {
            let Ok(bytes) = self.storage.load(key).await else {
                continue;
            };
            let Some(record) = Record::parse(&bytes) else {
                continue;
            };
            let Some(challenge) = record
                .challenge()
                .filter(|c| c.challenge_type == ChallengeType::TlsAlpn01)
                .filter(|c| tls_alpn_sni(&c.identifier) == name)
            else {
                continue;
            };
            if newest.as_ref().is_none_or(|(t, _)| record.created >= *t) {
                newest = Some((record.created, challenge));
            }
        }
        newest.map(|(_, c)| c)
    }

    /// One stale-challenge cleanup pass (see [`clean_stale`]).
    pub(crate) async fn clean_stale(&self) -> StaleChallenges {
        clean_stale(
            &self.storage,
            &self.solvers,
            self.clock.now(),
            STALE_CHALLENGE_AGE,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::challenge::tls_alpn01::{
        ACME_TLS_ALPN, LOADED_CHALLENGE_TTL, MAX_LOADED_CHALLENGES,
    };
    use crate::clock::ManualClock;
    use crate::storage::{KeyInfo, LockGuard, MemoryStorage, StorageError};

    /// Records the challenges presented and cleaned up.
    #[derive(Debug, Default)]
    struct Recording {
        presented: Mutex<Vec<Challenge>>,
        cleaned: Mutex<Vec<Challenge>>,
    }

    #[async_trait]
    impl Solver for Recording {
        async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
            self.presented.lock().unwrap().push(challenge.clone());
            Ok(())
        }
        async fn cleanup(&self, challenge: &Challenge) -> Result<(), SolverError> {
            self.cleaned.lock().unwrap().push(challenge.clone());
            Ok(())
        }
        async fn cleanup_stale(&self, challenge: &Challenge) -> Result<(), SolverError> {
            self.cleaned.lock().unwrap().push(challenge.clone());
            Ok(())
        }
    }

    /// Memory storage counting `list` and `load` calls.
    #[derive(Debug, Default)]
    struct Counting {
        inner: MemoryStorage,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Storage for Counting {
        async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
            self.inner.store(key, value).await
        }
        async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.load(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.inner.delete(key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, StorageError> {
            self.inner.exists(key).await
        }
        async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.list(prefix, recursive).await
        }
        async fn stat(&self, key: &str) -> Result<KeyInfo, StorageError> {
            self.inner.stat(key).await
        }
        async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
            self.inner.lock(name).await
        }
    }

    fn challenge(kind: ChallengeType, name: &str, token: &str) -> Challenge {
        Challenge::new(
            Identifier::parse(name).unwrap(),
            kind,
            token.to_owned(),
            format!("{token}.thumbprint"),
            format!("https://ca.test/chall/{token}"),
        )
    }

    fn hello(sni: &str) -> Hello {
        Hello {
            server_name: Some(sni.to_owned()),
            alpn: vec![ACME_TLS_ALPN.to_vec()],
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn shared(storage: Arc<dyn Storage>, solvers: Vec<DistributedSolver>) -> SharedChallenges {
        SharedChallenges::new(
            storage,
            TlsAlpnChallenges::new(),
            solvers,
            Arc::new(SystemClock),
        )
    }

    #[tokio::test]
    async fn record_round_trip() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let inner = Arc::new(Recording::default());
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let solver = DistributedSolver::from_arc(inner.clone(), storage.clone())
            .solver_id("dns")
            .clock(Arc::new(ManualClock::new(at)));
        let c = challenge(ChallengeType::Dns01, "Www.Example.com", "tok_1");
        solver.present(&c).await.unwrap();
        assert_eq!(*inner.presented.lock().unwrap(), vec![c.clone()]);
        let key = "challenges/dns-01/www.example.com/tok_1.json";
        let record = Record::parse(&storage.load(key).await.unwrap()).unwrap();
        assert_eq!(
            record,
            Record {
                solver: "dns".into(),
                identifier: "www.example.com".into(),
                challenge_type: "dns-01".into(),
                token: "tok_1".into(),
                key_authorization: "tok_1.thumbprint".into(),
                url: "https://ca.test/chall/tok_1".into(),
                created: 1_700_000_000,
                dns_name: Some("_acme-challenge.www.example.com".into()),
                dns_value: Some(c.dns01_value()),
            }
        );
        assert_eq!(record.challenge().unwrap(), c);
        assert_eq!(record.created(), at);
        solver.cleanup(&c).await.unwrap();
        assert_eq!(*inner.cleaned.lock().unwrap(), vec![c.clone()]);
        assert!(!storage.exists(key).await.unwrap());

        // HTTP-01: the token is shared where every ChallengeTokens looks.
        let h = challenge(ChallengeType::Http01, "a.example.com", "tok_2");
        solver.present(&h).await.unwrap();
        let tokens = crate::ChallengeTokens::new().with_storage(storage.clone());
        assert_eq!(
            tokens.get("tok_2").await.as_deref(),
            Some("tok_2.thumbprint")
        );
        solver.cleanup(&h).await.unwrap();
        assert_eq!(tokens.get("tok_2").await, None);

        // A malformed token never reaches a key nor the inner solver.
        let bad = challenge(ChallengeType::Http01, "a.example.com", "../x");
        assert!(solver.present(&bad).await.is_err());
        assert_eq!(inner.presented.lock().unwrap().len(), 2);
        // Garbage records are refused.
        assert_eq!(Record::parse(b"{}"), None);
        assert_eq!(Record::parse(&vec![b' '; MAX_RECORD_BYTES + 1]), None);
    }

    #[tokio::test]
    async fn tls_alpn01_answered_from_storage_by_another_instance() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let a_challenges = TlsAlpnChallenges::new();
        let a = DistributedSolver::new(
            crate::TlsAlpn01Solver::inline(a_challenges.clone()),
            storage.clone(),
        );
        let c = challenge(ChallengeType::TlsAlpn01, "b.example.com", "tok_3");
        a.present(&c).await.unwrap();
        assert!(a_challenges.get("b.example.com").is_some());

        let b = shared(storage.clone(), Vec::new());
        assert!(b.tls_alpn.get("b.example.com").is_none());
        // Not a validation: nothing loaded.
        let mut plain = hello("b.example.com");
        plain.alpn = vec![b"h2".to_vec()];
        b.prepare(&plain).await;
        assert!(b.tls_alpn.get("b.example.com").is_none());
        b.prepare(&hello("B.Example.com")).await;
        let key = b.tls_alpn.get("b.example.com").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.31);
        let ext = cert.extensions().iter().find(|e| e.oid == oid).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, b"tok_3.thumbprint");
        assert_eq!(&ext.value[2..], digest.as_ref());
        // Loaded again on the next validation: the same certificate, refreshed.
        b.prepare(&hello("b.example.com")).await;
        assert!(Arc::ptr_eq(&key, &b.tls_alpn.get("b.example.com").unwrap()));

        // Once cleaned up, the record is gone and a later lookup forgets it.
        a.cleanup(&c).await.unwrap();
        assert!(a_challenges.get("b.example.com").is_none());
        tokio::time::pause();
        tokio::time::advance(NEGATIVE_TTL).await;
        b.prepare(&hello("b.example.com")).await;
        assert!(b.tls_alpn.get("b.example.com").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn tls_alpn01_lookups_are_bounded() {
        let counting = Arc::new(Counting::default());
        let storage: Arc<dyn Storage> = counting.clone();
        let b = shared(storage.clone(), Vec::new());
        // Names that are not DNS names cost nothing.
        for sni in ["", "1.2.3.4", "*.example.com", "a..b", "-x-.example.com/"] {
            b.prepare(&hello(sni)).await;
        }
        assert_eq!(counting.reads.load(Ordering::SeqCst), 0);
        // One unknown name, asked for again and again: one lookup per
        // negative-cache period.
        for _ in 0..100 {
            b.prepare(&hello("unknown.example.com")).await;
        }
        assert_eq!(counting.reads.load(Ordering::SeqCst), 1);
        tokio::time::advance(NEGATIVE_TTL).await;
        b.prepare(&hello("unknown.example.com")).await;
        assert_eq!(counting.reads.load(Ordering::SeqCst), 2);
        // A flood of random names: at most MAX_LOOKUPS_PER_SECOND a second.
        tokio::time::advance(Duration::from_secs(1)).await;
        for i in 0..1000 {
            b.prepare(&hello(&format!("r{i}.example.com"))).await;
        }
        assert_eq!(
            counting.reads.load(Ordering::SeqCst),
            2 + MAX_LOOKUPS_PER_SECOND as usize
        );

        // Loaded certificates: bounded in number and lifetime.
        let a = DistributedSolver::new(Recording::default(), storage.clone());
        let n = MAX_LOADED_CHALLENGES + 10;
        for i in 0..n {
            let c = challenge(
                ChallengeType::TlsAlpn01,
                &format!("n{i}.example.com"),
                "tok",
            );
            a.present(&c).await.unwrap();
        }
        for i in 0..n {
            if i % MAX_LOOKUPS_PER_SECOND as usize == 0 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            b.prepare(&hello(&format!("n{i}.example.com"))).await;
        }
        assert_eq!(b.tls_alpn.loaded_len(), MAX_LOADED_CHALLENGES);
        let last = format!("n{}.example.com", n - 1);
        assert!(b.tls_alpn.get(&last).is_some());
        tokio::time::advance(LOADED_CHALLENGE_TTL).await;
        assert!(b.tls_alpn.get(&last).is_none());
    }

    #[tokio::test]
    async fn stale_challenges_are_cleaned_up_through_their_solver() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let long_ago = SystemTime::now() - STALE_CHALLENGE_AGE - Duration::from_secs(60);
        let old_clock: Arc<dyn Clock> = Arc::new(ManualClock::new(long_ago));
        // The instance that died: presented, never cleaned up.
        let dead_inner = Arc::new(Recording::default());
        let dead = DistributedSolver::from_arc(dead_inner.clone(), storage.clone())
            .solver_id("dns")
            .clock(old_clock.clone());
        let stale_dns = challenge(ChallengeType::Dns01, "old.example.com", "tok_4");
        dead.present(&stale_dns).await.unwrap();
        let stale_http = challenge(ChallengeType::Http01, "old.example.com", "tok_5");
        dead.clone()
            .solver_id("elsewhere")
            .present(&stale_http)
            .await
            .unwrap();
        let unknown_dns = challenge(ChallengeType::Dns01, "other.example.com", "tok_6");
        dead.clone()
            .solver_id("elsewhere")
            .present(&unknown_dns)
            .await
            .unwrap();
        // A live instance's challenge in progress.
        let live = DistributedSolver::new(Recording::default(), storage.clone()).solver_id("dns");
        let fresh = challenge(ChallengeType::Dns01, "new.example.com", "tok_7");
        live.present(&fresh).await.unwrap();

        // The next instance, with the same solver.
        let next_inner = Arc::new(Recording::default());
        let next =
            DistributedSolver::from_arc(next_inner.clone(), storage.clone()).solver_id("dns");
        let b = shared(storage.clone(), vec![next]);
        let report = b.clean_stale().await;
        let mut cleaned = report.cleaned.clone();
        cleaned.sort();
        assert_eq!(
            cleaned,
            ["dns-01 old.example.com", "http-01 old.example.com"]
        );
        assert_eq!(next_inner.cleaned.lock().unwrap().as_slice(), [stale_dns]);
        let mut left = storage.list(keys::CHALLENGES_PREFIX, true).await.unwrap();
        left.sort();
        assert_eq!(
            left,
            [
                "challenges/dns-01/new.example.com/tok_7.json",
                "challenges/dns-01/other.example.com/tok_6.json"
            ]
        );
        assert!(
            !storage
                .exists(&keys::challenge_token("tok_5"))
                .await
                .unwrap()
        );
        // Nothing more to do on the next pass.
        assert_eq!(b.clean_stale().await, StaleChallenges::default());
        assert!(dead_inner.cleaned.lock().unwrap().is_empty());
    }
}
