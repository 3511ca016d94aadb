//! The issuer set: which issuers a certificate's names go to, in which
//! order, and when to fail over to the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{Issuer, LOCAL_CA_ISSUER_KEY, LocalCa, is_internal_name, is_local_name};
use crate::config::backoff::{jittered_backoff, random_fraction, saturating_add};
use crate::error::{ConfigError, Error};
use crate::identifier::Identifier;
use crate::ratelimit::RateLimiter;
use crate::storage::StorageError;

/// The most (issuer, name) backoff entries kept; expired ones are dropped
/// first when it is reached, and beyond it new failures are not recorded.
pub(crate) const MAX_BACKOFF_ENTRIES: usize = 65_536;

/// In which order the configured issuers are tried for each attempt
/// ([`ConfigBuilder::issuer_policy`](crate::ConfigBuilder::issuer_policy)).
///
/// Whatever the policy, an issuer that failed for a name recently is put
/// behind the others for that name (see
/// [`ConfigBuilder::issuer_policy`](crate::ConfigBuilder::issuer_policy)),
/// and an issuer whose rate limiter allows an order now is preferred to one
/// that would make the order wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssuerPolicy {
    /// In the configured order: the first issuer is used while it works, the
    /// next ones are fallbacks (the default).
    #[default]
    First,
    /// In a new random order for every attempt, which spreads certificates
    /// over the issuers (and their rate limits); the others remain fallbacks.
    Random,
}

/// The backoff of one issuer for one name after it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IssuerBackoff {
    /// Failures in a row.
    failures: u32,
    /// Until when the issuer is put behind the others for this name.
    until: SystemTime,
}

/// The configured issuers, in order, and the local CA.
///
/// # Routing
/// - With issuers configured by the user: names no public CA can issue
///   ([`is_internal_name`]) go to the local CA (unless
///   `public_ca_for_local_names` is set), every other certificate to the
///   configured issuers, in order.
/// - With none: local names ([`is_local_name`], `.test` included) go to the
///   local CA, every other certificate to the default issuer (Let's Encrypt).
///
/// # Failover
/// An order is tried with each usable issuer in turn (one whose
/// [`precheck`](Issuer::precheck) accepts the names) until one issues, in
/// the order [`order`](Self::order) gives.
/// Every error from [`Issuer::issue`] moves on to the next issuer, except a
/// lost storage lock, which ends the attempt (another instance may be
/// ordering the same name).
///
/// # Per-issuer backoff
/// An issuer that failed for a name is backed off *for that name only*
/// (a minute, doubling per failure in a row, at most 30 days, with jitter;
/// kept in memory): while its backoff runs it is skipped for that name
/// if any other usable issuer is not backing off; when all are, all are
/// tried, the one whose backoff ends first first. A success clears the
/// issuer's backoff for the name. Other names and other issuers are not
/// affected.
#[derive(Debug)]
pub(crate) struct IssuerSet {
    issuers: Vec<Arc<dyn Issuer>>,
    configured: bool,
    local_ca: Arc<LocalCa>,
    local_names_use_local_ca: bool,
    policy: IssuerPolicy,
    /// By (issuer key, primary name).
    backoff: Mutex<HashMap<(String, Identifier), IssuerBackoff>>,
}

impl IssuerSet {
    /// `issuers` in order; `configured` says whether the user chose them (or
    /// they are the default); `local_names_use_local_ca` is the routing switch.
    pub(crate) fn new(
        issuers: Vec<Arc<dyn Issuer>>,
        configured: bool,
        local_ca: Arc<LocalCa>,
        local_names_use_local_ca: bool,
    ) -> Self {
        Self {
            issuers,
            configured,
            local_ca,
            local_names_use_local_ca,
            policy: IssuerPolicy::First,
            backoff: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the order policy.
    pub(crate) fn with_policy(mut self, policy: IssuerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The issuers, in order (the local CA not included).
    pub(crate) fn issuers(&self) -> &[Arc<dyn Issuer>] {
        &self.issuers
    }

    /// The local CA.
    pub(crate) fn local_ca(&self) -> &Arc<LocalCa> {
        &self.local_ca
    }

    /// The issuers the certificate for `ids` goes to, in order (see [Routing](Self#routing)).
    pub(crate) fn candidates(&self, ids: &[Identifier]) -> Vec<Arc<dyn Issuer>> {
        let local = if self.configured {
            self.local_names_use_local_ca && ids.iter().all(is_internal_name)
        } else {
            ids.iter().all(is_local_name)
        };
        if self.issuers.is_empty() || local {
            vec![self.local_ca.clone() as Arc<dyn Issuer>]
        } else {
            self.issuers.clone()
        }
    }

    /// The candidates whose precheck accepts `ids`; the first precheck error
    /// when none does.
    pub(crate) fn usable(&self, ids: &[Identifier]) -> Result<Vec<Arc<dyn Issuer>>, Error> {
        let candidates = self.candidates(ids);
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

    /// The order in which one attempt for the certificate whose primary name
    /// is `primary` tries `usable` at `now`: the [policy](IssuerPolicy)'s
    /// order, then the [per-issuer backoff](Self#per-issuer-backoff).
    pub(crate) fn order(
        &self,
        primary: &Identifier,
        mut usable: Vec<Arc<dyn Issuer>>,
        now: SystemTime,
    ) -> Vec<Arc<dyn Issuer>> {
        if self.policy == IssuerPolicy::Random {
            shuffle(&mut usable);
        }
        let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let until = |issuer: &Arc<dyn Issuer>| {
            backoff
                .get(&(issuer.issuer_key(), primary.clone()))
                .map(|b| b.until)
                .filter(|until| *until > now)
        };
        let (healthy, mut backing_off): (Vec<_>, Vec<_>) = usable
            .into_iter()
            .map(|issuer| (until(&issuer), issuer))
            .partition(|(until, _)| until.is_none());
        if !healthy.is_empty() {
            return healthy.into_iter().map(|(_, issuer)| issuer).collect();
        }
        // A stable sort: equal ends keep the policy's order.
        backing_off.sort_by_key(|(until, _)| *until);
        backing_off.into_iter().map(|(_, issuer)| issuer).collect()
    }

    /// Records that `issuer_key` failed for `primary` at `now`: it backs off
    /// for that name.
    pub(crate) fn record_failure(&self, issuer_key: &str, primary: &Identifier, now: SystemTime) {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        if backoff.len() >= MAX_BACKOFF_ENTRIES {
            backoff.retain(|_, b| b.until > now);
        }
        let key = (issuer_key.to_owned(), primary.clone());
        let failures = match backoff.get(&key) {
            Some(b) => b.failures.saturating_add(1),
            None if backoff.len() >= MAX_BACKOFF_ENTRIES => return,
            None => 1,
        };
        let until = saturating_add(now, jittered_backoff(failures));
        backoff.insert(key, IssuerBackoff { failures, until });
    }

    /// Records that `issuer_key` issued for `primary`: its backoff for that
    /// name ends.
    pub(crate) fn record_success(&self, issuer_key: &str, primary: &Identifier) {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(issuer_key.to_owned(), primary.clone()));
    }

    /// The issuer a stored certificate came from, by issuer key.
    pub(crate) fn by_key(&self, issuer_key: &str) -> Option<Arc<dyn Issuer>> {
        if issuer_key == LOCAL_CA_ISSUER_KEY {
            return Some(self.local_ca.clone());
        }
        self.issuers
            .iter()
            .find(|i| i.issuer_key() == issuer_key)
            .cloned()
    }

    /// Whether, after `error` from one issuer, the next one is tried (see [Failover](Self#failover)).
    pub(crate) fn fails_over(error: &Error) -> bool {
        !matches!(error, Error::Storage(StorageError::LockLost(_)))
    }
}

/// Which of `limiters` (in the order to try) to use: `Ok(i)` for the first
/// that allowed an event now (recorded), `Err(i)` for the one that allows
/// one soonest when none does now (nothing recorded: wait on it with
/// [`RateLimiter::acquire`]). `Err(0)` when `limiters` is empty.
pub(crate) fn pick_ready(limiters: &[Arc<RateLimiter>]) -> Result<usize, usize> {
    if let Some(i) = limiters.iter().position(|l| l.try_acquire()) {
        return Ok(i);
    }
    Err(limiters
        .iter()
        .enumerate()
        .min_by_key(|(_, l)| l.next_available_in())
        .map_or(0, |(i, _)| i))
}

/// Shuffles `items` uniformly (Fisher-Yates over ring's system random).
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        // A fraction in [0, 1) times i + 1 truncates to 0..=i.
        let j = ((random_fraction() * (i + 1) as f64) as usize).min(i);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::MemoryStorage;
    use std::time::Duration;

    fn ids(names: &[&str]) -> Vec<Identifier> {
        names
            .iter()
            .map(|n| Identifier::parse(n).unwrap())
            .collect()
    }

    #[derive(Debug)]
    struct Named(&'static str);

    #[async_trait::async_trait]
    impl Issuer for Named {
        fn issuer_key(&self) -> String {
            self.0.to_owned()
        }
        async fn issue(
            &self,
            _: &super::super::IssueRequest<'_>,
        ) -> Result<super::super::IssuedCertificate, Error> {
            Err(ConfigError::NoIssuers.into())
        }
        async fn revoke(
            &self,
            _: &crate::Certificate,
            _: Option<crate::acme::types::RevocationReason>,
        ) -> Result<(), Error> {
            Ok(())
        }
    }

    fn set(configured: bool, local_names_use_local_ca: bool) -> IssuerSet {
        let local = Arc::new(LocalCa::new(Arc::new(MemoryStorage::new())));
        IssuerSet::new(
            vec![Arc::new(Named("ca"))],
            configured,
            local,
            local_names_use_local_ca,
        )
    }

    fn first(set: &IssuerSet, names: &[&str]) -> String {
        set.candidates(&ids(names))[0].issuer_key()
    }

    #[test]
    fn routing_follows_the_documented_rules() {
        // The default issuer: .test and internal names are local.
        let default = set(false, true);
        for local in [
            "localhost",
            "a.test",
            "a.internal",
            "a.local",
            "a.home.arpa",
            "10.0.0.1",
            "::1",
        ] {
            assert_eq!(first(&default, &[local]), LOCAL_CA_ISSUER_KEY, "{local}");
        }
        assert_eq!(first(&default, &["example.com"]), "ca");
        assert_eq!(first(&default, &["a.test", "example.com"]), "ca");
        // A configured issuer: .test goes to it, internal names stay local.
        let configured = set(true, true);
        assert_eq!(first(&configured, &["a.test"]), "ca");
        assert_eq!(first(&configured, &["a.internal"]), LOCAL_CA_ISSUER_KEY);
        assert_eq!(first(&configured, &["8.8.8.8"]), "ca");
        // Unless local names are sent to the issuer too.
        assert_eq!(first(&set(true, false), &["localhost"]), "ca");
        assert!(set(true, true).by_key(LOCAL_CA_ISSUER_KEY).is_some());
        assert!(set(true, true).by_key("ca").is_some());
        assert!(set(true, true).by_key("other").is_none());
    }

    fn two(policy: IssuerPolicy) -> IssuerSet {
        let local = Arc::new(LocalCa::new(Arc::new(MemoryStorage::new())));
        IssuerSet::new(
            vec![Arc::new(Named("a")), Arc::new(Named("b"))],
            true,
            local,
            true,
        )
        .with_policy(policy)
    }

    fn order(set: &IssuerSet, name: &str, now: SystemTime) -> Vec<String> {
        let id = Identifier::parse(name).unwrap();
        set.order(&id, set.issuers().to_vec(), now)
            .iter()
            .map(|i| i.issuer_key())
            .collect()
    }

    #[test]
    fn first_keeps_the_configured_order_and_random_uses_both() {
        let now = SystemTime::now();
        let first = two(IssuerPolicy::First);
        for _ in 0..20 {
            assert_eq!(order(&first, "x.example", now), ["a", "b"]);
        }
        let random = two(IssuerPolicy::Random);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let o = order(&random, "x.example", now);
            assert_eq!(o.len(), 2, "each issuer once");
            firsts.insert(o[0].clone());
        }
        assert_eq!(firsts.len(), 2, "both come first sometimes");
        assert_eq!(IssuerPolicy::default(), IssuerPolicy::First);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut items: Vec<u32> = (0..50).collect();
        shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        shuffle::<u32>(&mut []);
    }

    /// A failed issuer is skipped for that name while its backoff runs;
    /// other names keep the order; when all back off, all are tried, the
    /// soonest first; success clears the backoff.
    #[test]
    fn a_failed_issuer_backs_off_for_that_name_only() {
        use crate::config::MIN_RETRY_BACKOFF;
        let set = two(IssuerPolicy::First);
        let now = SystemTime::now();
        let x = Identifier::parse("x.example").unwrap();
        set.record_failure("a", &x, now);
        assert_eq!(order(&set, "x.example", now), ["b"]);
        assert_eq!(order(&set, "y.example", now), ["a", "b"], "other names");
        // Both failed: both are tried, the one whose backoff ends first first.
        let later = now + Duration::from_secs(20);
        set.record_failure("b", &x, later);
        assert_eq!(order(&set, "x.example", later), ["a", "b"]);
        // A second failure in a row doubles a's backoff: b now ends first.
        set.record_failure("a", &x, later);
        assert_eq!(order(&set, "x.example", later), ["b", "a"]);
        // After b's backoff (at most 1.1 minutes), b is healthy again, a not.
        let after_b = later + MIN_RETRY_BACKOFF.mul_f64(1.11);
        assert_eq!(order(&set, "x.example", after_b), ["b"]);
        // After both (at most 2.2 minutes for a's second), both, in order.
        let after_a = later + MIN_RETRY_BACKOFF.mul_f64(2.21);
        assert_eq!(order(&set, "x.example", after_a), ["a", "b"]);
        // A success clears the backoff at once.
        set.record_failure("a", &x, after_a);
        assert_eq!(order(&set, "x.example", after_a), ["b"]);
        set.record_success("a", &x);
        assert_eq!(order(&set, "x.example", after_a), ["a", "b"]);
    }

    /// The first limiter that allows now wins; when none does, the one that
    /// allows soonest is named and nothing is recorded.
    #[tokio::test(start_paused = true)]
    async fn pick_ready_prefers_a_limiter_that_allows_now() {
        let slow = Arc::new(RateLimiter::new(1, Duration::from_secs(100)));
        let fast = Arc::new(RateLimiter::new(1, Duration::from_secs(10)));
        assert_eq!(pick_ready(&[slow.clone(), fast.clone()]), Ok(0));
        assert_eq!(pick_ready(&[slow.clone(), fast.clone()]), Ok(1));
        // Both used up: `fast` allows again sooner.
        assert_eq!(pick_ready(&[slow.clone(), fast.clone()]), Err(1));
        assert_eq!(
            fast.next_available_in(),
            Duration::from_secs(10),
            "nothing recorded"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pick_ready(&[slow.clone(), fast.clone()]), Ok(1));
        assert_eq!(pick_ready(&[]), Err(0));
    }

    #[test]
    fn a_lost_lock_ends_failover() {
        assert!(IssuerSet::fails_over(&ConfigError::NoIssuers.into()));
        assert!(!IssuerSet::fails_over(
            &StorageError::LockLost("cert_x".into()).into()
        ));
    }
}
