//! On-demand TLS: a certificate obtained during the first TLS handshake for
//! a name nobody configured, behind a gate ([`OnDemandConfig`]).
//!
//! # Where it runs
//!
//! - **Awaiting mode** (the handshake holds until the certificate is there):
//!   an acceptor built with [`AcmeAcceptor::for_config`](super::AcmeAcceptor::for_config)
//!   (certauto-axum's and certauto-actix's `serve(.., &config)`) awaits
//!   the gate and the issuance after reading the ClientHello, under the one
//!   handshake deadline, and finishes the handshake with the new certificate.
//! - **Background mode** (for servers that cannot await inside their
//!   handshake: actix-web's `bind_acme` through actix-tls, or
//!   [`Config::server_config`] used directly with rustls): the resolver runs
//!   the cheap part of the gate on the handshake thread and spawns the rest;
//!   this handshake fails (no certificate), a later one for the same name
//!   succeeds once the certificate is obtained.
//!
//! # The order of the steps (each one stops the flood it can)
//!
//! 1. A name the cache serves: nothing more (one cache lookup).
//! 2. The SNI is parsed into an [`Identifier`]: an invalid name (or a
//!    wildcard) is refused; no decision, no storage. A name the application
//!    manages itself ([`Config::manage`]) is left to maintenance: never
//!    obtained or marked on demand.
//! 3. The refusal cache: a name the decision function refused within the
//!    last [`refusal_ttl`](OnDemandConfig::refusal_ttl) is refused at once.
//! 4. An issuance already in flight for the name: the handshake joins it
//!    (single flight: one issuance for any number of handshakes).
//! 5. The gate: the allowlist; then the capacity, cheap: one of
//!    [`max_in_flight`](OnDemandConfig::max_in_flight) slots free and a
//!    token in the on-demand rate limiter (while either is exhausted, no
//!    decision and no storage lookup runs); then the decision function (both
//!    the allowlist and the decision must allow; with neither, nothing is
//!    issued). Only the decision's refusals are cached, not its timeouts.
//! 6. Allowed: one task (holding the slot from step 5, through the decision
//!    and the issuance) checks storage (another instance may have the
//!    certificate), takes the on-demand limiter's token, then obtains
//!    through the normal path (name lock, the per-CA limiter, storage,
//!    events). Handshakes only wait for that task: one whose deadline passes
//!    leaves, the task goes on for the others, and it removes its entry when
//!    done.
//!
//! Certificates obtained on demand are managed (renewed by maintenance) and
//! marked on-demand: at renewal time the gate is asked again
//! ([`OnDemandRequest::is_renewal`]), and a name the gate refuses is dropped
//! from management (its cached certificate serves until it expires or is
//! evicted); a decision that times out only defers that renewal to the next
//! maintenance pass.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::{CertResolver, Hello};
use crate::config::RenewMode;
use crate::error::ErrorChain;
use crate::events::Event;
use crate::identifier::{Identifier, NameError};
use crate::metrics;
use crate::ratelimit::RateLimiter;
use crate::{Config, Error};

/// The default bound on on-demand issuances in flight at once.
pub const DEFAULT_ON_DEMAND_MAX_IN_FLIGHT: usize = 16;
/// How long a refusal by the decision function is remembered by default.
pub const DEFAULT_REFUSAL_TTL: Duration = Duration::from_secs(300);
/// How many refused names are remembered by default.
pub const DEFAULT_REFUSAL_CAPACITY: usize = 10_000;
/// The longest an (async) decision may take; past it, the name is refused
/// for this handshake ([`OnDemandRefusal::DecisionTimeout`]), the refusal is
/// not remembered, and at renewal the name stays managed (asked again at the
/// next maintenance pass).
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(10);

type SyncDecision = Arc<dyn Fn(&OnDemandRequest) -> bool + Send + Sync>;
type AsyncDecision =
    Arc<dyn Fn(OnDemandRequest) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

#[derive(Clone)]
enum Decision {
    Sync(SyncDecision),
    Async(AsyncDecision),
}

/// What the decision function of an [`OnDemandConfig`] is asked about.
#[derive(Debug, Clone)]
pub struct OnDemandRequest {
    name: Identifier,
    peer: Option<SocketAddr>,
    alpn: Vec<Vec<u8>>,
    renewal: bool,
}

impl OnDemandRequest {
    /// The name (the ClientHello's SNI, validated and normalised: lower
    /// case, no trailing dot, never a wildcard).
    pub fn name(&self) -> &Identifier {
        &self.name
    }

    /// The client's address; `None` in background mode and at renewal.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The ALPN protocols the client offered, in its order (empty in
    /// background mode and at renewal).
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.alpn
    }

    /// Whether this is maintenance asking again before renewing a
    /// certificate obtained on demand (no client is waiting).
    pub fn is_renewal(&self) -> bool {
        self.renewal
    }
}

/// Why an on-demand request was refused (see [`Event::OnDemandRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnDemandRefusal {
    /// The SNI is not a valid certificate name (or is a wildcard).
    InvalidName,
    /// Neither an allowlist nor a decision function is configured (fail closed).
    NoGate,
    /// The name is not on the allowlist.
    NotAllowlisted,
    /// The decision function said no (remembered for the refusal period).
    Decision,
    /// The async decision function did not answer within
    /// [`DECISION_TIMEOUT`]: refused for this handshake only, not remembered.
    DecisionTimeout,
    /// The decision function said no recently: the cached refusal.
    Cached,
    /// The issuance failed recently (see [`Event::OnDemandFailed`]); asked
    /// again once the refusal period is over.
    RecentFailure,
}

/// The allowlist: exact names, and `*.suffix` patterns allowing every name
/// below the suffix (any depth, not the suffix itself).
#[derive(Debug, Default, Clone)]
struct Allowlist {
    exact: HashSet<Identifier>,
    suffixes: HashSet<String>,
}

impl Allowlist {
    fn allows(&self, id: &Identifier) -> bool {
        if self.exact.contains(id) {
            return true;
        }
        let Identifier::Dns(name) = id else {
            return false;
        };
        let mut rest = name.as_str();
        // At most 127 labels: bounded.
        while let Some((_, parent)) = rest.split_once('.') {
            if self.suffixes.contains(parent) {
                return true;
            }
            rest = parent;
        }
        false
    }

    fn len(&self) -> usize {
        self.exact.len() + self.suffixes.len()
    }
}

/// The gate and limits of on-demand TLS: which unknown names may get a
/// certificate during their first handshake, and how fast.
///
/// Fail closed: with neither [`host_allowlist`](Self::host_allowlist) nor a
/// decision function, nothing is issued. With both, both must allow.
///
/// Awaiting mode (the first handshake gets the new certificate) needs an
/// acceptor built with [`AcmeAcceptor::for_config`](crate::AcmeAcceptor::for_config)
/// (certauto-axum's and certauto-actix's `serve(.., &config)`). Where the
/// server cannot await inside its handshake (actix-web's `bind_acme`,
/// [`Config::server_config`] used directly) the issuance runs in the
/// background: the first handshake for a new name fails, a later one
/// succeeds.
///
/// **The first handshake waits at most the handshake timeout**, and the
/// decision plus the whole issuance (orders, challenge validation, DNS-01
/// propagation) must fit in it. `AcmeAcceptor::for_config` keeps the 10 s
/// default ([`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT)),
/// enough for a local CA, often too short for a public one: raise it with
/// [`ServerLimits::handshake_timeout`](crate::ServerLimits::handshake_timeout)
/// (or the acceptor builder's `handshake_timeout`), e.g. 30-60 s for a
/// public CA. Past it that handshake fails, the issuance goes on in its task,
/// and a later handshake for the name succeeds once it is done.
///
/// For an SNI the cache does not serve, in this order: the name is validated
/// (an invalid one is refused: no decision, no storage); a name the
/// application manages itself is left alone; a refusal by the decision
/// function within [`refusal_ttl`](Self::refusal_ttl) refuses it at once; an
/// issuance in flight for it is joined (single flight: one decision and one
/// issuance for any number of handshakes); the allowlist; a free
/// [`max_in_flight`](Self::max_in_flight) slot and a token of the on-demand
/// [`rate_limit`](Self::rate_limit) (cheap: while either is exhausted no
/// decision and no storage lookup runs); the decision function; then storage
/// (another instance may hold the certificate) and the normal obtain (name
/// lock, per-CA limiter, storage, events), in a task that a handshake timing
/// out does not cancel. Certificates obtained on demand are renewed like
/// managed ones, after asking the gate again
/// ([`OnDemandRequest::is_renewal`]); a name the gate refuses is not renewed
/// and no longer managed, a decision that times out only skips that pass.
///
/// ```no_run
/// # async fn demo() -> Result<(), certauto_core::Error> {
/// use std::time::Duration;
/// use certauto_core::{Config, OnDemandConfig, RateLimiter};
///
/// let on_demand = OnDemandConfig::new()
///     .host_allowlist(["shop.example.com", "*.customers.example.com"])?
///     .decision_func(|request| !request.name().as_str().starts_with("test-"))
///     .rate_limit(RateLimiter::new(10, Duration::from_secs(60)));
/// let config = Config::builder().on_demand(on_demand).build();
/// # let _ = config;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OnDemandConfig {
    allowlist: Option<Allowlist>,
    decision: Option<Decision>,
    rate_limit: Option<Arc<RateLimiter>>,
    max_in_flight: usize,
    refusal_ttl: Duration,
    refusal_capacity: usize,
}

impl fmt::Debug for OnDemandConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnDemandConfig")
            .field("allowlist", &self.allowlist.as_ref().map(Allowlist::len))
            .field(
                "decision",
                &match self.decision {
                    None => "none",
                    Some(Decision::Sync(_)) => "sync",
                    Some(Decision::Async(_)) => "async",
                },
            )
            .field("rate_limit", &self.rate_limit)
            .field("max_in_flight", &self.max_in_flight)
            .field("refusal_ttl", &self.refusal_ttl)
            .field("refusal_capacity", &self.refusal_capacity)
            .finish()
    }
}

impl Default for OnDemandConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl OnDemandConfig {
    /// A gate that allows nothing yet (fail closed): add an allowlist, a
    /// decision function, or both.
    pub fn new() -> Self {
        Self {
            allowlist: None,
            decision: None,
            rate_limit: None,
            max_in_flight: DEFAULT_ON_DEMAND_MAX_IN_FLIGHT,
            refusal_ttl: DEFAULT_REFUSAL_TTL,
            refusal_capacity: DEFAULT_REFUSAL_CAPACITY,
        }
    }

    /// Adds names to the allowlist: exact names (any case, a trailing dot
    /// allowed, internationalised names in either form) and `*.suffix`
    /// patterns, which allow every name below `suffix` at any depth (not
    /// `suffix` itself). Each entry is validated here; an invalid one is
    /// the error.
    pub fn host_allowlist<I, S>(mut self, names: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list = self.allowlist.get_or_insert_with(Allowlist::default);
        for name in names {
            let id = Identifier::parse(name.as_ref())?;
            match &id {
                Identifier::Dns(dns) if dns.is_wildcard() => {
                    let suffix = dns.as_str().trim_start_matches("*.");
                    list.suffixes.insert(suffix.to_owned());
                }
                _ => {
                    list.exact.insert(id);
                }
            }
        }
        Ok(self)
    }

    /// The decision function: called (synchronously, on the handshake path:
    /// keep it quick) for names that passed the allowlist. A refusal is
    /// remembered for [`refusal_ttl`](Self::refusal_ttl).
    pub fn decision_func(
        mut self,
        decide: impl Fn(&OnDemandRequest) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.decision = Some(Decision::Sync(Arc::new(decide)));
        self
    }

    /// An async decision function (replacing a sync one), for a decision
    /// that asks a backend. In awaiting mode it runs under the handshake
    /// deadline; it is also bounded by [`DECISION_TIMEOUT`] (past it, refused
    /// for that handshake and not remembered). At most
    /// [`max_in_flight`](Self::max_in_flight) decisions and issuances run at once.
    pub fn async_decision_func<F, Fut>(mut self, decide: F) -> Self
    where
        F: Fn(OnDemandRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.decision = Some(Decision::Async(Arc::new(move |request| {
            Box::pin(decide(request))
        })));
        self
    }

    /// At most this rate of on-demand issuances (on top of the per-CA
    /// limiter every issuance goes through). While the limiter has no token,
    /// new names are refused for the handshake before any decision or
    /// storage lookup, and not remembered as refused.
    pub fn rate_limit(mut self, limiter: RateLimiter) -> Self {
        self.rate_limit = Some(Arc::new(limiter));
        self
    }

    /// At most `max` on-demand issuances in flight at once, their decisions
    /// included (default [`DEFAULT_ON_DEMAND_MAX_IN_FLIGHT`]; at least 1).
    /// Past it, new names are refused for this handshake, before any
    /// decision or storage lookup.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// How long a refusal by the decision function (or a failed issuance)
    /// is remembered (default [`DEFAULT_REFUSAL_TTL`]).
    pub fn refusal_ttl(mut self, ttl: Duration) -> Self {
        self.refusal_ttl = ttl.min(Duration::from_secs(365 * 24 * 3600));
        self
    }

    /// How many refused names are remembered at most (default
    /// [`DEFAULT_REFUSAL_CAPACITY`]; at least 1): past it, the oldest
    /// refusal is forgotten, so a flood of distinct names takes bounded memory.
    pub fn refusal_capacity(mut self, capacity: usize) -> Self {
        self.refusal_capacity = capacity.max(1);
        self
    }

    /// The static part of the gate: a gate exists and the allowlist allows.
    fn check_allowlist(&self, request: &OnDemandRequest) -> Result<(), OnDemandRefusal> {
        if self.allowlist.is_none() && self.decision.is_none() {
            return Err(OnDemandRefusal::NoGate);
        }
        if let Some(list) = &self.allowlist
            && !list.allows(&request.name)
        {
            return Err(OnDemandRefusal::NotAllowlisted);
        }
        Ok(())
    }

    /// The sync decision (after [`check_allowlist`](Self::check_allowlist)).
    /// `Ok(false)` means "ask the async decision function".
    fn decide_sync(&self, request: &OnDemandRequest) -> Result<bool, OnDemandRefusal> {
        match &self.decision {
            None => Ok(true),
            Some(Decision::Sync(decide)) => {
                if decide(request) {
                    Ok(true)
                } else {
                    Err(OnDemandRefusal::Decision)
                }
            }
            Some(Decision::Async(_)) => Ok(false),
        }
    }

    /// The whole gate, without the refusal cache.
    async fn check(&self, request: &OnDemandRequest) -> Result<(), OnDemandRefusal> {
        self.check_allowlist(request)?;
        self.decide(request, None).await
    }

    /// The decision (after the allowlist): `sync_allowed` is what
    /// [`decide_sync`](Self::decide_sync) already said, so a sync decision
    /// is not asked twice.
    async fn decide(
        &self,
        request: &OnDemandRequest,
        sync_allowed: Option<bool>,
    ) -> Result<(), OnDemandRefusal> {
        let sync_allowed = match sync_allowed {
            Some(allowed) => allowed,
            None => self.decide_sync(request)?,
        };
        if sync_allowed {
            return Ok(());
        }
        let Some(Decision::Async(decide)) = &self.decision else {
            return Ok(());
        };
        match tokio::time::timeout(DECISION_TIMEOUT, decide(request.clone())).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(OnDemandRefusal::Decision),
            Err(_) => {
                tracing::warn!(name = %request.name, "on-demand decision timed out; refused for now");
                Err(OnDemandRefusal::DecisionTimeout)
            }
        }
    }
}

/// Refused names and until when, bounded in count: the oldest refusal is
/// forgotten first (with one TTL for all, the oldest is also the first to expire).
#[derive(Debug, Default)]
struct Refusals {
    until: HashMap<Identifier, (Instant, OnDemandRefusal)>,
    order: VecDeque<(Identifier, Instant)>,
}

impl Refusals {
    fn get(&self, id: &Identifier, now: Instant) -> Option<OnDemandRefusal> {
        self.until
            .get(id)
            .filter(|(until, _)| *until > now)
            .map(|(_, why)| *why)
    }

    fn insert(&mut self, id: Identifier, until: Instant, why: OnDemandRefusal, capacity: usize) {
        let now = Instant::now();
        // Forget what expired, then the oldest past the capacity. Each
        // iteration pops one entry: bounded by the queue's length.
        while let Some((old, at)) = self.order.front() {
            if *at > now && self.order.len() < capacity {
                break;
            }
            if self.until.get(old).is_some_and(|(u, _)| u == at) {
                self.until.remove(old);
            }
            self.order.pop_front();
        }
        self.order.push_back((id.clone(), until));
        self.until.insert(id, (until, why));
    }

    fn remove(&mut self, id: &Identifier) {
        self.until.remove(id);
    }
}

/// How an on-demand issuance ended, as the handshakes waiting on it see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ready,
    NotIssued,
}

/// The on-demand state of one [`Config`]: the gate, the refusal cache, the
/// issuances in flight (one per name) and the slots bounding them.
pub(crate) struct OnDemand {
    config: OnDemandConfig,
    refusals: Mutex<Refusals>,
    in_flight: Mutex<HashMap<Identifier, watch::Receiver<Option<Outcome>>>>,
    slots: Arc<Semaphore>,
    /// Registered once, when the `Config` is built.
    decisions: metrics::DecisionCounters,
}

impl fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnDemand")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The in-flight entry of a name while its gate runs: dropping it removes
/// the entry, unless the issuance task took it over.
struct Deciding<'a> {
    od: &'a OnDemand,
    id: &'a Identifier,
    handed_over: bool,
}

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.od.in_flight().remove(self.id);
        }
    }
}

impl OnDemand {
    pub(crate) fn new(config: OnDemandConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_in_flight));
        Self {
            config,
            refusals: Mutex::new(Refusals::default()),
            in_flight: Mutex::new(HashMap::new()),
            slots,
            decisions: metrics::DecisionCounters::register(),
        }
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, Refusals> {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Identifier, watch::Receiver<Option<Outcome>>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an issuance for `id` is in flight here. O(1).
    pub(crate) fn is_in_flight(&self, id: &Identifier) -> bool {
        self.in_flight().contains_key(id)
    }

    /// Whether the allowlist (not the decision function) allows `id`.
    pub(crate) fn allowlisted(&self, id: &Identifier) -> bool {
        self.config
            .allowlist
            .as_ref()
            .is_some_and(|list| list.allows(id))
    }

    fn remember_refusal(&self, id: &Identifier, why: OnDemandRefusal) {
        let until = Instant::now() + self.config.refusal_ttl;
        self.refusals()
            .insert(id.clone(), until, why, self.config.refusal_capacity);
    }

    /// Steps 2 to 4: the validated name, or `None` when it was refused or
    /// an issuance for it is in flight (then `Some(receiver)` in the second field).
    fn screen(
        &self,
        config: &Config,
        sni: &str,
    ) -> Result<Identifier, Option<watch::Receiver<Option<Outcome>>>> {
        let id = match Identifier::parse(sni) {
            Ok(id) if !id.is_wildcard() => id,
            _ => {
                refused(config, sni, OnDemandRefusal::InvalidName);
                return Err(None);
            }
        };
        // A name the application manages itself (its first order may have
        // failed) is never on-demand: maintenance obtains it.
        if config.is_managed_id(&id) {
            return Err(None);
        }
        // Into a local first: the guard must not live through the
        // then-block, where event handlers run.
        let cached = self.refusals().get(&id, Instant::now());
        if let Some(why) = cached {
            let shown = if why == OnDemandRefusal::Decision {
                OnDemandRefusal::Cached
            } else {
                why
            };
            refused(config, &id.as_str(), shown);
            return Err(None);
        }
        if let Some(rx) = self.in_flight().get(&id) {
            return Err(Some(rx.clone()));
        }
        Ok(id)
    }

    /// The capacity checks, cheap, before any decision or storage lookup: a
    /// free slot (returned, held through the decision and the issuance) and
    /// a token of the on-demand limiter (looked at here, taken after the
    /// storage lookup). While either is exhausted, handshakes for allowed
    /// names cost no decision and no storage access.
    fn admit(&self, config: &Config, id: &Identifier) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        let wait = self
            .config
            .rate_limit
            .as_ref()
            .map_or(Duration::ZERO, |limiter| limiter.next_available_in());
        match permit {
            Some(permit) if wait.is_zero() => Some(permit),
            _ => {
                tracing::warn!(name = %id, max = self.config.max_in_flight, ?wait, "on-demand issuances in flight at their bound or rate limited; refused for now");
                self.decisions.record(metrics::Decision::RateLimited);
                config.emit(&Event::OnDemandRateLimited {
                    name: id.to_string(),
                });
                None
            }
        }
    }

    /// Step 5 and the start of step 6: the gate, then the issuance in a task
    /// of its own. The name is in flight from before the decision, so
    /// concurrent handshakes for one new name cost one decision and one
    /// issuance. `admitted`: background mode already checked the allowlist,
    /// took a slot and asked a sync decision. Returns what to wait on, if anything.
    async fn gate_and_start(
        &self,
        config: &Config,
        request: OnDemandRequest,
        admitted: Option<Admitted>,
    ) -> Option<watch::Receiver<Option<Outcome>>> {
        let (tx, rx) = watch::channel(None);
        {
            let mut in_flight = self.in_flight();
            if let Some(rx) = in_flight.get(&request.name) {
                return Some(rx.clone());
            }
            in_flight.insert(request.name.clone(), rx.clone());
        }
        // Removes the entry if this future is dropped while deciding, or
        // when the name is not issued; waiters then see the sender gone.
        let mut deciding = Deciding {
            od: self,
            id: &request.name,
            handed_over: false,
        };
        let name = request.name.to_string();
        let (permit, sync_allowed) = match admitted {
            Some(Admitted {
                permit,
                sync_allowed,
            }) => (permit, Some(sync_allowed)),
            None => {
                if let Err(why) = self.config.check_allowlist(&request) {
                    refused(config, &name, why);
                    return None;
                }
                (self.admit(config, &request.name)?, None)
            }
        };
        if let Err(why) = self.config.decide(&request, sync_allowed).await {
            // Only an answer is remembered, not a timeout.
            if why == OnDemandRefusal::Decision {
                self.remember_refusal(&request.name, why);
            }
            refused(config, &name, why);
            return None;
        }
        tracing::info!(name = %name, peer = ?request.peer, "on-demand certificate allowed");
        self.decisions.record(metrics::Decision::Allowed);
        config.emit(&Event::OnDemandAllowed { name: name.clone() });
        deciding.handed_over = true;
        let config = config.clone();
        let id = request.name.clone();
        tokio::spawn(async move {
            let entry = InFlight {
                config: config.clone(),
                id: id.clone(),
                _permit: permit,
            };
            let outcome = obtain(&config, &id).await;
            // Removed before the waiters wake, so a later handshake that
            // finds no certificate (a failure) starts afresh.
            drop(entry);
            let _ = tx.send(Some(outcome));
        });
        Some(rx)
    }

    /// The gate alone (no refusal cache), for maintenance before renewing
    /// an on-demand certificate.
    async fn still_allowed(&self, id: &Identifier) -> Result<(), OnDemandRefusal> {
        let request = OnDemandRequest {
            name: id.clone(),
            peer: None,
            alpn: Vec::new(),
            renewal: true,
        };
        self.config.check(&request).await
    }
}

/// What background mode did on the handshake thread before spawning.
struct Admitted {
    /// The slot, held through the decision and the issuance.
    permit: OwnedSemaphorePermit,
    /// What the sync decision said (`false`: ask the async one).
    sync_allowed: bool,
}

/// An issuance in flight: dropping it (at the end, or if the task is
/// aborted) removes the entry and frees the slot.
struct InFlight {
    config: Config,
    id: Identifier,
    _permit: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(od) = self.config.on_demand() {
            od.in_flight().remove(&self.id);
        }
    }
}

fn refused(config: &Config, name: &str, reason: OnDemandRefusal) {
    tracing::debug!(name, ?reason, "on-demand certificate refused");
    match config.on_demand() {
        Some(od) => od.decisions.record(metrics::Decision::Denied),
        None => metrics::on_demand_decision(metrics::Decision::Denied),
    }
    config.emit(&Event::OnDemandRefused {
        name: name.to_owned(),
        reason,
    });
}

/// Step 6: storage, the on-demand limiter, then the normal obtain.
async fn obtain(config: &Config, id: &Identifier) -> Outcome {
    let Some(od) = config.on_demand() else {
        return Outcome::NotIssued;
    };
    let ids = vec![id.clone()];
    let name = id.to_string();
    let result: Result<Option<crate::Certificate>, Error> = async {
        if let Some(cert) = config.load_ids(&ids).await?
            && !cert.needs_renewal(config.clock().now(), config.renewal_ratio())
        {
            config.ensure_cached(&cert)?;
            return Ok(Some(cert));
        }
        if let Some(limiter) = &od.config.rate_limit
            && !limiter.try_acquire()
        {
            return Ok(None);
        }
        config
            .renew_inner(
                ids.clone(),
                RenewMode::IfDue,
                None,
                metrics::Reason::OnDemand,
            )
            .await
            .map(Some)
    }
    .await;
    match result {
        Ok(Some(cert)) => {
            config.record_on_demand(&ids);
            tracing::info!(name = %name, serial = %cert.serial_hex(), "on-demand certificate ready");
            config.emit(&Event::OnDemandObtained {
                name,
                serial: cert.serial_hex(),
            });
            Outcome::Ready
        }
        Ok(None) => {
            tracing::warn!(name = %name, "on-demand rate limit reached; refused for now");
            od.decisions.record(metrics::Decision::RateLimited);
            config.emit(&Event::OnDemandRateLimited { name });
            Outcome::NotIssued
        }
        Err(e) => {
            tracing::error!(name = %name, error = %ErrorChain(&e), "on-demand issuance failed");
            od.remember_refusal(id, OnDemandRefusal::RecentFailure);
            config.emit(&Event::OnDemandFailed {
                name,
                error: ErrorChain(&e).to_string(),
            });
            Outcome::NotIssued
        }
    }
}

async fn wait(mut rx: watch::Receiver<Option<Outcome>>) {
    // Err: the task is gone without a word (aborted); nothing to wait for.
    let _ = rx.wait_for(Option::is_some).await;
}

/// Awaiting mode, from [`Config::prepare_handshake`]: returns once the
/// certificate for the SNI is in the cache, or when it will not be.
pub(crate) async fn prepare(config: &Config, hello: &Hello) {
    let Some(od) = config.on_demand() else {
        return;
    };
    if hello.is_tls_alpn_validation() {
        return;
    }
    let Some(sni) = hello.server_name.as_deref() else {
        return;
    };
    if config.cache().certified_key(sni).is_some() {
        return;
    }
    let id = match od.screen(config, sni) {
        Ok(id) => id,
        Err(Some(rx)) => return wait(rx).await,
        Err(None) => return,
    };
    let request = OnDemandRequest {
        name: id,
        peer: Some(hello.peer),
        alpn: hello.alpn.clone(),
        renewal: false,
    };
    if let Some(rx) = od.gate_and_start(config, request, None).await {
        wait(rx).await;
    }
}

/// Background mode, from the resolver's unknown-name hook: the screening
/// and the allowlist on the handshake thread, the rest in a task.
pub(crate) fn background(config: &Config, sni: &str) {
    let Some(od) = config.on_demand() else {
        return;
    };
    let Ok(id) = od.screen(config, sni) else {
        return;
    };
    let request = OnDemandRequest {
        name: id,
        peer: None,
        alpn: Vec::new(),
        renewal: false,
    };
    // The cheap refusals stay on this thread.
    if let Err(why) = od.config.check_allowlist(&request) {
        refused(config, &request.name.as_str(), why);
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(name = %request.name, "no tokio runtime on the handshake thread; on-demand issuance skipped");
        return;
    };
    // The task holds this slot through the decision and the issuance, so a
    // flood spawns at most `max_in_flight` tasks (and backend calls).
    let Some(permit) = od.admit(config, &request.name) else {
        return;
    };
    let sync_allowed = match od.config.decide_sync(&request) {
        Ok(allowed) => allowed,
        Err(why) => {
            if why == OnDemandRefusal::Decision {
                od.remember_refusal(&request.name, why);
            }
            refused(config, &request.name.as_str(), why);
            return;
        }
    };
    let config = config.clone();
    runtime.spawn(async move {
        let Some(od) = config.on_demand() else { return };
        let admitted = Admitted {
            permit,
            sync_allowed,
        };
        let _ = od.gate_and_start(&config, request, Some(admitted)).await;
    });
}

/// What maintenance does with a due certificate, after asking the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RenewalGate {
    /// Renew it (not on-demand, or still allowed).
    Renew,
    /// Not this pass: the decision timed out; still managed, asked again
    /// at the next pass.
    Later,
    /// Refused: dropped from management.
    Dropped,
}

impl Config {
    /// Maintenance, before renewing: whether the certificate for `primary`,
    /// obtained on demand, is still allowed. A name the gate refuses is
    /// dropped from management (`OnDemandDropped`); a decision that timed
    /// out only skips this pass.
    pub(crate) async fn on_demand_renewal_allowed(&self, primary: &Identifier) -> RenewalGate {
        if !self.is_on_demand(primary) {
            return RenewalGate::Renew;
        }
        let allowed = match self.on_demand() {
            Some(od) => od.still_allowed(primary).await,
            None => Err(OnDemandRefusal::NoGate),
        };
        if allowed == Err(OnDemandRefusal::DecisionTimeout) {
            tracing::warn!(name = %primary, "on-demand decision timed out at renewal; kept, asked again at the next pass");
            return RenewalGate::Later;
        }
        if allowed.is_err() {
            tracing::info!(name = %primary, "on-demand name no longer allowed; not renewed");
            self.unmanage(primary);
            if let Some(od) = self.on_demand() {
                od.refusals().remove(primary);
            }
            self.emit(&Event::OnDemandDropped {
                name: primary.to_string(),
            });
            return RenewalGate::Dropped;
        }
        RenewalGate::Renew
    }
}

/// The resolver of an acceptor that awaited [`prepare`]: the same lookups,
/// without the background hook (the gate already ran for this handshake).
#[derive(Debug)]
pub(crate) struct AwaitedResolver(pub(crate) Arc<CertResolver>);

impl ResolvesServerCert for AwaitedResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.resolve_with(hello, false)
    }
}

/// The server config an acceptor built with `for_config` finishes its
/// handshakes with.
pub(crate) fn awaited_server_config(config: &Config) -> rustls::ServerConfig {
    let mut tls = config.server_config();
    tls.cert_resolver = Arc::new(AwaitedResolver(config.resolver()));
    tls
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::SystemTime;

    use tokio::sync::mpsc;

    use super::*;
    use crate::storage::MemoryStorage;
    use crate::{ManualClock, start_maintenance};

    fn hello(sni: &str) -> Hello {
        Hello {
            server_name: Some(sni.to_owned()),
            alpn: vec![b"h2".to_vec()],
            peer: "127.0.0.1:4444".parse().unwrap(),
        }
    }

    fn build(
        on_demand: OnDemandConfig,
        clock: Option<Arc<ManualClock>>,
    ) -> (Config, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let tx = StdMutex::new(tx);
        let mut builder = Config::builder()
            .storage(Arc::new(MemoryStorage::new()))
            .on_demand(on_demand)
            .on_event(move |e| {
                let _ = tx.lock().unwrap().send(e.clone());
            });
        if let Some(clock) = clock {
            builder = builder.clock(clock);
        }
        (builder.build(), rx)
    }

    /// A config with `max_in_flight` slots whose async decision never
    /// answers; the third receiver gets one message per decision started.
    fn never_deciding(
        max_in_flight: usize,
    ) -> (
        Config,
        mpsc::UnboundedReceiver<Event>,
        mpsc::UnboundedReceiver<()>,
    ) {
        let (started_tx, started) = mpsc::unbounded_channel();
        let started_tx = StdMutex::new(started_tx);
        let (config, rx) = build(
            OnDemandConfig::new()
                .max_in_flight(max_in_flight)
                .async_decision_func(move |_| {
                    let _ = started_tx.lock().unwrap().send(());
                    std::future::pending::<bool>()
                }),
            None,
        );
        (config, rx, started)
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        events
    }

    fn refusals(events: &[Event]) -> Vec<OnDemandRefusal> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::OnDemandRefused { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn orders(events: &[Event]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Event::CertObtaining { .. }))
            .count()
    }

    #[tokio::test]
    async fn without_a_gate_nothing_is_issued() {
        let (config, mut rx) = build(OnDemandConfig::new(), None);
        prepare(&config, &hello("new.test")).await;
        assert!(config.cache().get("new.test").is_none());
        let events = drain(&mut rx);
        assert_eq!(refusals(&events), vec![OnDemandRefusal::NoGate]);
        assert_eq!(orders(&events), 0);
    }

    #[test]
    fn allowlist_exact_names_and_suffixes() {
        let on_demand = OnDemandConfig::new()
            .host_allowlist(["Shop.Example.test.", "*.users.test"])
            .unwrap();
        let list = on_demand.allowlist.as_ref().unwrap();
        let allows = |n: &str| list.allows(&Identifier::parse(n).unwrap());
        assert!(allows("shop.example.test"));
        assert!(allows("SHOP.example.test"));
        assert!(!allows("other.example.test"));
        assert!(allows("a.users.test"));
        assert!(allows("a.b.users.test"));
        assert!(!allows("users.test"));
        assert!(!allows("ausers.test"));
        assert!(OnDemandConfig::new().host_allowlist(["a..b"]).is_err());
        assert!(OnDemandConfig::new().host_allowlist(["*.com"]).is_err());
    }

    #[tokio::test]
    async fn an_invalid_sni_never_reaches_the_decision() {
        let asked = Arc::new(AtomicU32::new(0));
        let counter = asked.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new().decision_func(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                true
            }),
            None,
        );
        for sni in ["a..test", "-x.test", "*.wild.test", "under_score.test", ""] {
            prepare(&config, &hello(sni)).await;
        }
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        let events = drain(&mut rx);
        assert_eq!(refusals(&events), vec![OnDemandRefusal::InvalidName; 5]);
        assert_eq!(orders(&events), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_asked_once_per_period() {
        let asked = Arc::new(AtomicU32::new(0));
        let counter = asked.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new()
                .refusal_ttl(Duration::from_secs(60))
                .decision_func(move |request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(request.peer().unwrap().port(), 4444);
                    assert_eq!(request.alpn(), &[b"h2".to_vec()]);
                    false
                }),
            None,
        );
        for _ in 0..100 {
            prepare(&config, &hello("No.test")).await;
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        prepare(&config, &hello("no.test")).await;
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        prepare(&config, &hello("no.test")).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        let events = drain(&mut rx);
        let r = refusals(&events);
        assert_eq!(r.len(), 102);
        assert_eq!(r[0], OnDemandRefusal::Decision);
        assert_eq!(r[1], OnDemandRefusal::Cached);
        assert_eq!(orders(&events), 0);
    }

    #[test]
    fn the_refusal_cache_is_bounded() {
        let mut refusals = Refusals::default();
        let until = Instant::now() + Duration::from_secs(600);
        for i in 0..1000 {
            let id = Identifier::parse(&format!("n{i}.test")).unwrap();
            refusals.insert(id, until, OnDemandRefusal::Decision, 10);
        }
        assert!(refusals.until.len() <= 10 && refusals.order.len() <= 10);
        let last = Identifier::parse("n999.test").unwrap();
        assert!(refusals.get(&last, Instant::now()).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_handshakes_for_one_new_name_share_one_issuance() {
        let asked = Arc::new(AtomicU32::new(0));
        let counter = asked.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new()
                .host_allowlist(["*.shop.test"])
                .unwrap()
                .decision_func(move |_| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    true
                }),
            None,
        );
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let config = config.clone();
            tasks.spawn(async move { prepare(&config, &hello("a.shop.test")).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert!(config.cache().get("a.shop.test").is_some());
        let events = drain(&mut rx);
        assert_eq!(orders(&events), 1);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        let od = config.on_demand().unwrap();
        assert!(od.in_flight().is_empty(), "no entry left behind");
        assert_eq!(
            od.slots.available_permits(),
            DEFAULT_ON_DEMAND_MAX_IN_FLIGHT
        );
        assert!(config.is_on_demand(&Identifier::parse("a.shop.test").unwrap()));
        // Served from the cache now: no more decisions.
        prepare(&config, &hello("a.shop.test")).await;
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        config.cache().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_handshake_that_times_out_does_not_cancel_the_issuance() {
        let (config, mut rx) = build(
            OnDemandConfig::new().host_allowlist(["slow.test"]).unwrap(),
            None,
        );
        // Dropped at its first await: the issuance is already spawned.
        let _ = tokio::time::timeout(Duration::ZERO, prepare(&config, &hello("slow.test"))).await;
        loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Event::OnDemandObtained { name, .. } => {
                    assert_eq!(name, "slow.test");
                    break;
                }
                Event::OnDemandFailed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
        assert!(config.cache().get("slow.test").is_some());
        assert!(config.on_demand().unwrap().in_flight().is_empty());
        config.cache().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_name_is_not_remembered_as_refused() {
        let (config, mut rx) = build(
            OnDemandConfig::new()
                .host_allowlist(["*.rl.test"])
                .unwrap()
                .rate_limit(RateLimiter::new(1, Duration::from_secs(60))),
            None,
        );
        prepare(&config, &hello("a.rl.test")).await;
        prepare(&config, &hello("b.rl.test")).await;
        assert!(config.cache().get("a.rl.test").is_some());
        assert!(config.cache().get("b.rl.test").is_none());
        let events = drain(&mut rx);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::OnDemandRateLimited { name } if name == "b.rl.test"))
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        prepare(&config, &hello("b.rl.test")).await;
        assert!(config.cache().get("b.rl.test").is_some());
        config.cache().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn an_async_decision_is_awaited() {
        let (config, _rx) = build(
            OnDemandConfig::new().async_decision_func(|request: OnDemandRequest| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                request.name().as_str() == "yes.test"
            }),
            None,
        );
        prepare(&config, &hello("yes.test")).await;
        prepare(&config, &hello("nope.test")).await;
        assert!(config.cache().get("yes.test").is_some());
        assert!(config.cache().get("nope.test").is_none());
        config.cache().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_no_longer_allowed_is_not_renewed() {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let allowed = Arc::new(AtomicBool::new(true));
        let flag = allowed.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new().decision_func(move |_| flag.load(Ordering::SeqCst)),
            Some(clock.clone()),
        );
        prepare(&config, &hello("gone.test")).await;
        prepare(&config, &hello("kept.test")).await;
        assert_eq!(config.managed().len(), 2);
        allowed.store(false, Ordering::SeqCst);
        let id = Identifier::parse("kept.test").unwrap();
        clock.advance(Duration::from_secs(6 * 24 * 3600)); // of a 7-day local leaf
        drain(&mut rx);
        let report = config.check_renewals().await;
        assert!(report.renewed.is_empty(), "{report:?}");
        assert!(config.managed().is_empty());
        assert!(!config.is_on_demand(&id));
        let events = drain(&mut rx);
        assert_eq!(orders(&events), 0);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::OnDemandDropped { .. }))
                .count(),
            2
        );
        // Still served until it expires or is evicted.
        assert!(config.cache().get("gone.test").is_some());
        let _ = start_maintenance; // maintenance runs check_renewals
        config.cache().stop();
    }

    // One thread: the spawned issuance cannot run before this test yields.
    #[tokio::test]
    async fn background_mode_serves_a_later_handshake() {
        let (config, mut rx) = build(
            OnDemandConfig::new().host_allowlist(["bg.test"]).unwrap(),
            None,
        );
        // The resolver's hook, as rustls calls it from a handshake.
        background(&config, "bg.test");
        background(&config, "bg.test");
        // This handshake got nothing: the certificate is not there yet.
        assert!(config.cache().get("bg.test").is_none());
        loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Event::OnDemandObtained { .. } => break,
                Event::OnDemandFailed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
        assert!(config.cache().get("bg.test").is_some());
        background(&config, "other.test");
        let events = drain(&mut rx);
        assert_eq!(refusals(&events), vec![OnDemandRefusal::NotAllowlisted]);
        config.cache().stop();
    }

    fn count(events: &[Event], pred: impl Fn(&Event) -> bool) -> usize {
        events.iter().filter(|e| pred(e)).count()
    }

    // One thread: the spawned tasks run only when the test awaits.
    #[tokio::test]
    async fn background_tasks_hold_their_slot_through_an_async_decision() {
        let (config, mut rx, mut started) = never_deciding(2);
        for i in 0..100 {
            background(&config, &format!("n{i}.flood.test"));
        }
        let events = drain(&mut rx);
        assert_eq!(
            count(&events, |e| matches!(e, Event::OnDemandRateLimited { .. })),
            98
        );
        started.recv().await.unwrap();
        started.recv().await.unwrap();
        let od = config.on_demand().unwrap();
        assert_eq!(od.slots.available_permits(), 0);
        assert_eq!(od.in_flight().len(), 2);
        assert!(started.try_recv().is_err(), "two decisions at most");
    }

    #[tokio::test]
    async fn background_asks_a_sync_decision_once() {
        let asked = Arc::new(AtomicU32::new(0));
        let counter = asked.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new().decision_func(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                true
            }),
            None,
        );
        background(&config, "once.test");
        loop {
            match rx.recv().await.unwrap() {
                Event::OnDemandObtained { .. } => break,
                Event::OnDemandFailed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        config.cache().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_decision_timeout_is_not_remembered() {
        let asked = Arc::new(AtomicU32::new(0));
        let counter = asked.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new().async_decision_func(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<bool>()
            }),
            None,
        );
        prepare(&config, &hello("slow.test")).await;
        prepare(&config, &hello("slow.test")).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        let events = drain(&mut rx);
        assert_eq!(refusals(&events), vec![OnDemandRefusal::DecisionTimeout; 2]);
        assert!(config.cache().get("slow.test").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_decision_timeout_at_renewal_keeps_the_name() {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        // 0: allow, 1: time out, 2: refuse.
        let mode = Arc::new(AtomicU32::new(0));
        let flag = mode.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new().async_decision_func(move |_| {
                let mode = flag.load(Ordering::SeqCst);
                async move {
                    if mode == 1 {
                        std::future::pending::<()>().await;
                    }
                    mode == 0
                }
            }),
            Some(clock.clone()),
        );
        prepare(&config, &hello("kept.test")).await;
        let id = Identifier::parse("kept.test").unwrap();
        assert!(config.is_on_demand(&id));
        clock.advance(Duration::from_secs(6 * 24 * 3600)); // of a 7-day local leaf
        mode.store(1, Ordering::SeqCst);
        drain(&mut rx);
        let report = config.check_renewals().await;
        assert_eq!(report.deferred, vec!["kept.test".to_owned()]);
        assert!(report.renewed.is_empty());
        assert_eq!(config.managed().len(), 1);
        assert!(config.is_on_demand(&id));
        let events = drain(&mut rx);
        assert_eq!(
            count(&events, |e| matches!(e, Event::OnDemandDropped { .. })),
            0
        );
        // An explicit refusal drops it.
        mode.store(2, Ordering::SeqCst);
        config.check_renewals().await;
        assert!(config.managed().is_empty());
        config.cache().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_the_application_manages_is_never_on_demand() {
        let asked = Arc::new(AtomicU32::new(0));
        let counter = asked.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new().decision_func(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                false
            }),
            None,
        );
        config.manage(["conf.test"]).await.unwrap();
        let id = Identifier::parse("conf.test").unwrap();
        // As if its first order had failed: not in the cache.
        config.cache().remove("conf.test");
        drain(&mut rx);
        prepare(&config, &hello("conf.test")).await;
        background(&config, "conf.test");
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        assert!(drain(&mut rx).is_empty());
        config.record_on_demand(std::slice::from_ref(&id));
        assert!(!config.is_on_demand(&id));
        // The gate refuses everything, yet maintenance keeps the name.
        config.check_renewals().await;
        assert_eq!(config.managed(), vec![vec![id]]);
        config.cache().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn at_capacity_no_decision_runs() {
        let asked = Arc::new(AtomicU32::new(0));
        let counter = asked.clone();
        let (config, mut rx) = build(
            OnDemandConfig::new()
                .rate_limit(RateLimiter::new(1, Duration::from_secs(60)))
                .decision_func(move |_| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    true
                }),
            None,
        );
        prepare(&config, &hello("a.test")).await;
        assert!(config.cache().get("a.test").is_some());
        drain(&mut rx);
        for _ in 0..10 {
            prepare(&config, &hello("b.test")).await;
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1, "no decision while limited");
        let events = drain(&mut rx);
        assert_eq!(
            count(&events, |e| matches!(e, Event::OnDemandRateLimited { .. })),
            10
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        prepare(&config, &hello("b.test")).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert!(config.cache().get("b.test").is_some());
        config.cache().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_in_flight_bound_no_decision_runs() {
        let (config, mut rx, mut started) = never_deciding(1);
        // Holds the only slot while its decision is pending.
        let held = config.clone();
        let first = tokio::spawn(async move { prepare(&held, &hello("a.test")).await });
        started.recv().await.unwrap();
        for _ in 0..10 {
            prepare(&config, &hello("b.test")).await;
        }
        assert!(started.try_recv().is_err(), "one decision only");
        let events = drain(&mut rx);
        assert_eq!(
            count(&events, |e| matches!(e, Event::OnDemandRateLimited { .. })),
            10
        );
        first.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn event_handlers_run_outside_the_refusal_lock() {
        let cell: Arc<std::sync::OnceLock<Config>> = Arc::new(std::sync::OnceLock::new());
        let locked = Arc::new(AtomicU32::new(0));
        let (c, l) = (cell.clone(), locked.clone());
        let config = Config::builder()
            .storage(Arc::new(MemoryStorage::new()))
            .on_demand(OnDemandConfig::new().decision_func(|_| false))
            .on_event(move |e| {
                if let Event::OnDemandRefused { .. } = e
                    && let Some(config) = c.get()
                    && config.on_demand().unwrap().refusals.try_lock().is_err()
                {
                    l.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build();
        cell.set(config.clone()).unwrap();
        prepare(&config, &hello("no.test")).await;
        prepare(&config, &hello("no.test")).await; // the cached refusal
        assert_eq!(locked.load(Ordering::SeqCst), 0);
    }
}
