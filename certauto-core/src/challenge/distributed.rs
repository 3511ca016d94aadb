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
//!   are bounded in number and lifetime. The caps are split by why the
//!   config would see the name validated (`LookupReason`): names it manages
//!   exactly or has an on-demand issuance in flight for, names its
//!   on-demand allowlist allows, and all others each have their own share
//!   (200, 15 and 10 lookups a second, the last two 50 at most together;
//!   4, 2 and 2 at once, where a managed name's validation waits for a slot
//!   under the handshake deadline and the others are skipped: a fresh
//!   cluster validates every managed name at once, three perspectives each).
//!   A flood of `acme-tls/1` hellos with random names (anyone can send
//!   them) thus uses up only the share of "other" names and never keeps a
//!   managed name's validation from being answered; a flood of managed
//!   names is bounded by the negative cache per name. Per-name caps alone
//!   would not do: random names are unlimited. The newest record of a name
//!   wins, among those neither stale nor dated implausibly (more than
//!   an hour ahead of the reader's clock), so records left by dead instances never
//!   shadow the challenge in progress.
//! - **DNS-01**: the record names the TXT value, so another instance can
//!   remove it through its own solver.
//! - **Crash cleanup**: a record older than [`STALE_CHALLENGE_AGE`] was left
//!   by an instance that died before its cleanup; maintenance
//!   ([`start_maintenance`](crate::start_maintenance)) cleans such records
//!   up at its start and every [`CHALLENGE_CLEANUP_INTERVAL`], through the
//!   solver that presented them ([`Solver::cleanup_stale`]), under a storage lock, a bounded number per
//!   pass ([`Config::clean_stale_challenges`](crate::Config::clean_stale_challenges)),
//!   each pass resuming after the last record the previous one examined. A
//!   record whose creation time is unrepresentable or implausibly in the
//!   future is unreadable: deleted once storage dates it stale.

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
pub(crate) const MAX_SCANNED_PER_PASS: usize = 500;
/// The most records one cleanup pass cleans up.
pub(crate) const MAX_CLEANED_PER_PASS: usize = 50;
/// The largest challenge record read (they are a few hundred bytes).
pub(crate) const MAX_RECORD_BYTES: usize = 16 * 1024;
/// The most records read for one TLS-ALPN-01 name (all of them, unless
/// more instances than this died with a challenge for one name since the
/// last cleanup).
pub(crate) const MAX_RECORDS_PER_NAME: usize = 32;
/// How far after the reader's clock a record may be dated (clock skew
/// between instances) before it is taken as unreadable.
pub(crate) const MAX_FUTURE_SKEW: Duration = Duration::from_secs(3600);
/// How long a name found without a TLS-ALPN-01 record is not looked up again.
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// The most names kept in the negative cache.
pub(crate) const MAX_NEGATIVE: usize = 4096;
/// The most TLS-ALPN-01 storage lookups per second for names the config
/// does not manage (on-demand and other names together).
pub(crate) const MAX_LOOKUPS_PER_SECOND: u32 = 50;
/// The window [`MAX_LOOKUPS_PER_SECOND`] counts in.
pub(crate) const LOOKUP_WINDOW: Duration = Duration::from_secs(1);

/// Why a TLS-ALPN-01 validation's name may have a record in storage; each
/// reason has its own share of the lookup budget (per second and at once),
/// so a flood of names of one kind never uses up another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupReason {
    /// A name the config manages (exactly: TLS-ALPN-01 validates no
    /// wildcard), or with an on-demand issuance in flight here.
    Managed,
    /// A name the config's on-demand allowlist allows (another instance may
    /// be obtaining it on demand).
    OnDemand,
    /// Any other name (instances configured with other names).
    Other,
}

impl LookupReason {
    fn index(self) -> usize {
        match self {
            Self::Managed => 0,
            Self::OnDemand => 1,
            Self::Other => 2,
        }
    }

    /// The lookups a second for this reason (on-demand and other names
    /// also share [`MAX_LOOKUPS_PER_SECOND`]).
    fn per_second(self) -> u32 {
        match self {
            // A validation of every managed name can come at once (a fresh
            // cluster, three validation perspectives each, all instances);
            // a flood of managed names is bounded by the per-name negative
            // cache instead.
            Self::Managed => 200,
            Self::OnDemand => 15,
            Self::Other => 10,
        }
    }

    /// This reason's share of the lookups at once (8 in all).
    fn at_once(self) -> usize {
        match self {
            Self::Managed => 4,
            Self::OnDemand | Self::Other => 2,
        }
    }
}

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
    /// Where [`clean_stale`](Self::clean_stale)'s next pass starts.
    cursor: Arc<Mutex<Option<String>>>,
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
            cursor: Arc::default(),
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
            &self.cursor,
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
pub(crate) struct Record {
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

    /// The record's age at `now`. `None` (an unreadable record: never
    /// served, deleted as garbage once storage dates it stale) when its
    /// creation time cannot be represented or lies more than
    /// [`MAX_FUTURE_SKEW`] after `now`, which no instance's clock explains;
    /// a creation time slightly ahead (clock skew) is age 0.
    fn age(&self, now: SystemTime) -> Option<Duration> {
        let created = UNIX_EPOCH.checked_add(Duration::from_secs(self.created))?;
        match now.duration_since(created) {
            Ok(age) => Some(age),
            Err(ahead) if ahead.duration() <= MAX_FUTURE_SKEW => Some(Duration::ZERO),
            Err(_) => None,
        }
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
///
/// A pass examines the keys in sorted order starting after `cursor` (the
/// last key the previous pass examined), wrapping around, and leaves the
/// last key it examined there: records it skips (not stale, no solver here)
/// cannot keep later records from being reached by later passes.
pub(crate) async fn clean_stale(
    storage: &Arc<dyn Storage>,
    solvers: &[DistributedSolver],
    cursor: &Mutex<Option<String>>,
    now: SystemTime,
    max_age: Duration,
) -> StaleChallenges {
    let mut report = StaleChallenges::default();
    let mut listed = match storage.list(keys::CHALLENGES_PREFIX, true).await {
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
    let guard = match crate::storage::lock::acquire(storage.as_ref(), keys::CHALLENGES_CLEANUP_LOCK)
        .await
    {
        Ok(guard) => guard,
        Err(e) => {
            tracing::warn!(error = %crate::ErrorChain(&e), "could not lock the challenge records for cleanup");
            return report;
        }
    };
    listed.sort_unstable();
    listed.dedup();
    let start = cursor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_deref()
        .map_or(0, |last| listed.partition_point(|k| k.as_str() <= last));
    let order = listed.iter().skip(start).chain(listed.iter().take(start));
    for key in order.take(MAX_SCANNED_PER_PASS) {
        if report.cleaned.len() + report.failed.len() >= MAX_CLEANED_PER_PASS {
            break;
        }
        *cursor.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.clone());
        // Gone meanwhile (cleaned up by its owner, or by an earlier pass).
        let Ok(bytes) = storage.load(key).await else {
            continue;
        };
        let Some((record, challenge, age)) = Record::parse(&bytes).and_then(|r| {
            let age = r.age(now)?;
            let challenge = r.challenge()?;
            Some((r, challenge, age))
        }) else {
            // Not a record this version can use, or dated where no clock
            // is (see `Record::age`): delete it once storage dates it stale.
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
    /// The lookups at once, one share per [`LookupReason`].
    slots: [Semaphore; 3],
    /// Where the next stale-cleanup pass starts.
    cleanup_cursor: Mutex<Option<String>>,
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
    /// The current one-second window and the lookups made in it, per
    /// [`LookupReason`].
    window: Option<(Instant, [u32; 3])>,
}

impl Lookups {
    /// Whether `name` may be looked up now for `reason` (and if so, counts
    /// it): not in the negative cache, within the reason's share and within
    /// the global cap.
    fn admit(&mut self, name: &str, reason: LookupReason, now: Instant) -> bool {
        if self.negative.get(name).is_some_and(|until| *until > now) {
            return false;
        }
        let counts = match &mut self.window {
            Some((start, counts)) if now.duration_since(*start) < LOOKUP_WINDOW => counts,
            window => &mut window.insert((now, [0; 3])).1,
        };
        // Managed names are outside the global cap (see `per_second`).
        let total: u32 = counts.iter().skip(1).sum();
        let Some(count) = counts.get_mut(reason.index()) else {
            return false;
        };
        let over_total = reason != LookupReason::Managed && total >= MAX_LOOKUPS_PER_SECOND;
        if *count >= reason.per_second() || over_total {
            return false;
        }
        *count += 1;
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
            slots: [
                LookupReason::Managed,
                LookupReason::OnDemand,
                LookupReason::Other,
            ]
            .map(|r| Semaphore::new(r.at_once())),
            cleanup_cursor: Mutex::new(None),
        }
    }

    /// Before a handshake: for a TLS-ALPN-01 validation of a name this
    /// process holds no challenge certificate for, loads the certificate
    /// another instance presented (see the module docs for the bounds);
    /// `reason` says why the config would see that name validated.
    pub(crate) async fn prepare(
        &self,
        hello: &Hello,
        reason: impl FnOnce(&Identifier) -> LookupReason,
    ) {
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
        if self.tls_alpn.get_local(name.as_str()).is_some() {
            return;
        }
        let reason = reason(&Identifier::Dns(name.clone()));
        let name = name.as_str();
        let admitted = self
            .lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(name, reason, Instant::now());
        if !admitted {
            tracing::debug!(
                sni = name,
                ?reason,
                "TLS-ALPN-01 lookup skipped (negative cache or rate)"
            );
            return;
        }
        let Some(slots) = self.slots.get(reason.index()) else {
            return;
        };
        // A managed name's validation waits for a slot (under the handshake
        // deadline: the CA's validation is real work of ours); the others
        // are skipped past their share.
        let slot = if reason == LookupReason::Managed {
            slots.acquire().await.ok()
        } else {
            slots.try_acquire().ok()
        };
        let Some(_slot) = slot else {
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

    /// The newest TLS-ALPN-01 challenge recorded for the SNI `name`, among
    /// the records not stale (a stale record was left by an instance that
    /// died: never the challenge being validated) and not unreadable.
    async fn load_tls_alpn(&self, name: &str) -> Option<Challenge> {
        let folder = keys::challenge_records(ChallengeType::TlsAlpn01.as_str(), name);
        let listed = self.storage.list(&folder, false).await.ok()?;
        if listed.len() > MAX_RECORDS_PER_NAME {
            tracing::warn!(
                sni = name,
                records = listed.len(),
                read = MAX_RECORDS_PER_NAME,
                "more TLS-ALPN-01 records for one name than a lookup reads; maintenance cleans up the stale ones"
            );
        }
        let now = self.clock.now();
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
            if record.age(now).is_none_or(|age| age >= STALE_CHALLENGE_AGE) {
                continue;
            }
            if newest.as_ref().is_none_or(|(t, _)| record.created >= *t) {
                newest = Some((record.created, challenge));
            }
        }
        newest.map(|(_, c)| c)
    }

    /// One stale-challenge cleanup pass (see [`clean_stale`]).
    pub(crate) async fn clean_stale(&self) -> StaleChallenges {
        self.clean_stale_older_than(STALE_CHALLENGE_AGE).await
    }

    /// [`clean_stale`](Self::clean_stale) of the records older than `max_age`.
    pub(crate) async fn clean_stale_older_than(&self, max_age: Duration) -> StaleChallenges {
        clean_stale(
            &self.storage,
            &self.solvers,
            &self.cleanup_cursor,
            self.clock.now(),
            max_age,
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
        async fn store_fenced(
            &self,
            guard: &LockGuard,
            key: &str,
            value: &[u8],
        ) -> Result<(), StorageError> {
            self.inner.store_fenced(guard, key, value).await
        }
        async fn delete_fenced(&self, guard: &LockGuard, key: &str) -> Result<(), StorageError> {
            self.inner.delete_fenced(guard, key).await
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

    fn other(_: &Identifier) -> LookupReason {
        LookupReason::Other
    }

    /// The key authorization digest in a TLS-ALPN-01 certificate.
    fn acme_digest(key: &rustls::sign::CertifiedKey) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.31);
        let ext = cert.extensions().iter().find(|e| e.oid == oid).unwrap();
        ext.value[2..].to_vec()
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
        assert_eq!(
            record.age(at + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
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
        b.prepare(&plain, other).await;
        assert!(b.tls_alpn.get("b.example.com").is_none());
        b.prepare(&hello("B.Example.com"), other).await;
        let key = b.tls_alpn.get("b.example.com").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.31);
        let ext = cert.extensions().iter().find(|e| e.oid == oid).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, b"tok_3.thumbprint");
        assert_eq!(&ext.value[2..], digest.as_ref());
        // Loaded again on the next validation: the same certificate, refreshed.
        b.prepare(&hello("b.example.com"), other).await;
        assert!(Arc::ptr_eq(&key, &b.tls_alpn.get("b.example.com").unwrap()));

        // Once cleaned up, the record is gone and a later lookup forgets it.
        a.cleanup(&c).await.unwrap();
        assert!(a_challenges.get("b.example.com").is_none());
        tokio::time::pause();
        tokio::time::advance(NEGATIVE_TTL).await;
        b.prepare(&hello("b.example.com"), other).await;
        assert!(b.tls_alpn.get("b.example.com").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn tls_alpn01_lookups_are_bounded() {
        let counting = Arc::new(Counting::default());
        let storage: Arc<dyn Storage> = counting.clone();
        let b = shared(storage.clone(), Vec::new());
        // Names that are not DNS names cost nothing.
        for sni in ["", "1.2.3.4", "*.example.com", "a..b", "-x-.example.com/"] {
            b.prepare(&hello(sni), other).await;
        }
        assert_eq!(counting.reads.load(Ordering::SeqCst), 0);
        // One unknown name, asked for again and again: one lookup per
        // negative-cache period.
        for _ in 0..100 {
            b.prepare(&hello("unknown.example.com"), other).await;
        }
        assert_eq!(counting.reads.load(Ordering::SeqCst), 1);
        tokio::time::advance(NEGATIVE_TTL).await;
        b.prepare(&hello("unknown.example.com"), other).await;
        assert_eq!(counting.reads.load(Ordering::SeqCst), 2);
        // A flood of random names: at most their share a second.
        tokio::time::advance(Duration::from_secs(1)).await;
        for i in 0..1000 {
            b.prepare(&hello(&format!("r{i}.example.com")), other).await;
        }
        let share = LookupReason::Other.per_second() as usize;
        assert_eq!(counting.reads.load(Ordering::SeqCst), 2 + share);

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
            if i % share == 0 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            b.prepare(&hello(&format!("n{i}.example.com")), other).await;
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

    /// Stores a record for `c` presented by solver `solver` at `created`
    /// seconds since the epoch (any value, as another instance could write).
    async fn store_raw(storage: &Arc<dyn Storage>, solver: &str, c: &Challenge, created: u64) {
        let mut record = Record::new(solver, c, UNIX_EPOCH);
        record.created = created;
        let key = record_key(c).unwrap();
        storage
            .store(&key, &serde_json::to_vec(&record).unwrap())
            .await
            .unwrap();
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[tokio::test]
    async fn implausible_creation_times_are_unreadable_and_removed_once_stale() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = challenge(ChallengeType::Dns01, "x.example.com", "tok");
        let mut record = Record::new("dns", &c, now);
        record.created = u64::MAX;
        assert_eq!(record.age(now), None);
        record.created = secs(now) + 2 * 3600;
        assert_eq!(record.age(now), None);
        // Within the skew: age 0, not yet stale.
        record.created = secs(now) + 600;
        assert_eq!(record.age(now), Some(Duration::ZERO));

        // In storage: no panic; deleted once storage dates it stale, never
        // through a solver.
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let inner = Arc::new(Recording::default());
        let solver = DistributedSolver::from_arc(inner.clone(), storage.clone()).solver_id("dns");
        let overflow = challenge(ChallengeType::Dns01, "a.example.com", "tok_max");
        store_raw(&storage, "dns", &overflow, u64::MAX).await;
        let later = SystemTime::now() + STALE_CHALLENGE_AGE + Duration::from_secs(60);
        let future = challenge(ChallengeType::Dns01, "b.example.com", "tok_future");
        store_raw(&storage, "dns", &future, secs(later) + 3 * 3600).await;
        // Written just now: not stale by storage's date yet.
        assert_eq!(solver.clean_stale().await, StaleChallenges::default());
        assert_eq!(
            storage
                .list(keys::CHALLENGES_PREFIX, true)
                .await
                .unwrap()
                .len(),
            2
        );
        let cursor = Mutex::new(None);
        let report = clean_stale(
            &storage,
            std::slice::from_ref(&solver),
            &cursor,
            later,
            STALE_CHALLENGE_AGE,
        )
        .await;
        assert_eq!(report, StaleChallenges::default());
        assert!(inner.cleaned.lock().unwrap().is_empty());
        assert!(
            storage
                .list(keys::CHALLENGES_PREFIX, true)
                .await
                .is_err_and(|e| e.is_not_found())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_random_names_leaves_managed_names_answered() {
        let counting = Arc::new(Counting::default());
        let storage: Arc<dyn Storage> = counting.clone();
        let a = DistributedSolver::new(Recording::default(), storage.clone());
        let c = challenge(ChallengeType::TlsAlpn01, "v.example.com", "tok_v");
        a.present(&c).await.unwrap();
        let b = shared(storage.clone(), Vec::new());
        let reason = |id: &Identifier| {
            if id.as_str() == "v.example.com" {
                LookupReason::Managed
            } else {
                LookupReason::Other
            }
        };
        for i in 0..1000 {
            b.prepare(&hello(&format!("r{i}.example.com")), reason)
                .await;
        }
        assert_eq!(
            counting.reads.load(Ordering::SeqCst),
            LookupReason::Other.per_second() as usize
        );
        // The validator's hello, in the same second: still looked up.
        b.prepare(&hello("v.example.com"), reason).await;
        let key = b.tls_alpn.get("v.example.com").unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, b"tok_v.thumbprint");
        assert_eq!(acme_digest(&key), digest.as_ref());
        // Each share holds; on-demand and other names stay within the
        // global cap together; managed names have their own, larger share.
        let mut lookups = Lookups::default();
        let now = Instant::now();
        let mut admitted = 0;
        for i in 0..1000 {
            for r in [
                LookupReason::Managed,
                LookupReason::OnDemand,
                LookupReason::Other,
            ] {
                admitted += u32::from(lookups.admit(&format!("{r:?}{i}"), r, now));
            }
        }
        let others = LookupReason::OnDemand.per_second() + LookupReason::Other.per_second();
        assert!(others <= MAX_LOOKUPS_PER_SECOND);
        assert_eq!(admitted, LookupReason::Managed.per_second() + others);
    }

    #[tokio::test]
    async fn the_newest_live_record_wins_over_stale_and_future_ones() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let now = SystemTime::now();
        let name = "w.example.com";
        // Left by dead instances, sorting before the current one.
        for i in 0..12 {
            let c = challenge(ChallengeType::TlsAlpn01, name, &format!("a{i:02}"));
            let created = now - STALE_CHALLENGE_AGE - Duration::from_secs(60 + i);
            store_raw(&storage, "default", &c, secs(created)).await;
        }
        // Dated where no clock is, and an older attempt still live.
        let future = challenge(ChallengeType::TlsAlpn01, name, "b_future");
        store_raw(&storage, "default", &future, secs(now) + 3 * 3600).await;
        let older = challenge(ChallengeType::TlsAlpn01, name, "c_older");
        store_raw(&storage, "default", &older, secs(now) - 600).await;
        let current = challenge(ChallengeType::TlsAlpn01, name, "z_current");
        store_raw(&storage, "default", &current, secs(now)).await;

        let b = shared(storage.clone(), Vec::new());
        b.prepare(&hello(name), other).await;
        let key = b.tls_alpn.get(name).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, b"z_current.thumbprint");
        assert_eq!(acme_digest(&key), digest.as_ref());
    }

    #[tokio::test]
    async fn cleanup_passes_resume_where_the_last_one_stopped() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let inner = Arc::new(Recording::default());
        let solver = DistributedSolver::from_arc(inner.clone(), storage.clone()).solver_id("dns");
        // More live records than a pass reads, all sorting first.
        for i in 0..MAX_SCANNED_PER_PASS + 100 {
            let c = challenge(ChallengeType::Dns01, "a.example.com", &format!("t{i:04}"));
            solver.present(&c).await.unwrap();
        }
        let long_ago = SystemTime::now() - STALE_CHALLENGE_AGE - Duration::from_secs(60);
        let stale = challenge(ChallengeType::Dns01, "z.example.com", "tok_stale");
        store_raw(&storage, "dns", &stale, secs(long_ago)).await;

        assert_eq!(solver.clean_stale().await, StaleChallenges::default());
        let report = solver.clean_stale().await;
        assert_eq!(report.cleaned, ["dns-01 z.example.com"]);
        assert_eq!(inner.cleaned.lock().unwrap().as_slice(), [stale]);
        // Wraps around: the next passes start over from the first key.
        assert_eq!(solver.clean_stale().await, StaleChallenges::default());
        assert_eq!(
            storage
                .list(keys::CHALLENGES_PREFIX, true)
                .await
                .unwrap()
                .len(),
            MAX_SCANNED_PER_PASS + 100
        );
    }

    #[tokio::test]
    async fn a_config_gives_the_reason_for_a_validation() {
        let config = crate::Config::builder()
            .storage(Arc::new(MemoryStorage::new()))
            .on_demand(
                crate::OnDemandConfig::new()
                    .host_allowlist(["*.users.test"])
                    .unwrap(),
            )
            .build();
        config
            .manage(["m.example.test", "*.w.example.test"])
            .await
            .unwrap();
        let reason = |name: &str| config.tls_alpn_lookup_reason(&Identifier::parse(name).unwrap());
        assert_eq!(reason("m.example.test"), LookupReason::Managed);
        // TLS-ALPN-01 validates no wildcard: a name it covers is no reason.
        assert_eq!(reason("a.w.example.test"), LookupReason::Other);
        assert_eq!(reason("a.users.test"), LookupReason::OnDemand);
        assert_eq!(reason("random.example.test"), LookupReason::Other);
    }
}
