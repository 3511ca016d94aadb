//! Managing names: startup loading from storage, then obtaining what is missing.

use std::collections::HashSet;
use std::sync::Arc;

use crate::certificate::Certificate;
use crate::error::{ConfigError, Error};
use crate::events::Event;
use crate::identifier::{DomainName, Identifier};

use super::{Config, RenewMode, RenewOutcome};
use crate::metrics::Reason;

/// How many stored certificates [`Config::manage`] loads at once: the reads
/// overlap, and parsing spreads over the runtime's worker threads.
pub(crate) const LOAD_CONCURRENCY: usize = 8;

/// How many missing certificates [`Config::manage`] obtains at once by default.
pub const DEFAULT_MANAGE_CONCURRENCY: usize = 8;

/// The certificates under management, in the order they were added, with an
/// index of their primary names (so adding one is O(1), not a scan).
#[derive(Default)]
pub(super) struct Managed {
    /// Shared with maintenance passes in progress, which iterate a snapshot.
    list: Arc<Vec<Vec<Identifier>>>,
    primaries: HashSet<Identifier>,
    /// Every name of every managed certificate, for [`Config::is_managed`].
    names: HashSet<Identifier>,
    /// The primary names of certificates obtained on demand (asked about
    /// again before each renewal).
    on_demand: HashSet<Identifier>,
}

impl Config {
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

    /// Records a certificate obtained on demand as managed and on-demand,
    /// unless the application already manages the name (then it stays a
    /// configured name: a gate refusal must never unmanage it).
    pub(crate) fn record_on_demand(&self, ids: &[Identifier]) {
        let Some(primary) = ids.first() else {
            return;
        };
        if self.is_managed_id(primary) {
            return;
        }
        self.record_managed(ids);
        let mut managed = self.inner.managed.lock().unwrap_or_else(|e| e.into_inner());
        managed.on_demand.insert(primary.clone());
    }

    /// Whether the certificate whose primary name is `primary` was obtained on demand.
    pub(crate) fn is_on_demand(&self, primary: &Identifier) -> bool {
        let managed = self.inner.managed.lock().unwrap_or_else(|e| e.into_inner());
        managed.on_demand.contains(primary)
    }

    /// Stops managing the certificate whose primary name is `primary`
    /// (maintenance no longer renews it; the cache keeps serving it).
    pub(crate) fn unmanage(&self, primary: &Identifier) {
        let mut managed = self.inner.managed.lock().unwrap_or_else(|e| e.into_inner());
        if !managed.primaries.remove(primary) {
            return;
        }
        managed.on_demand.remove(primary);
        let list = Arc::make_mut(&mut managed.list);
        let mut removed = Vec::new();
        list.retain(|ids| {
            if ids.first() == Some(primary) {
                removed.extend(ids.iter().cloned());
                false
            } else {
                true
            }
        });
        for id in removed {
            if !managed.list.iter().any(|ids| ids.contains(&id)) {
                managed.names.remove(&id);
            }
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
        Identifier::parse(host).is_ok_and(|id| self.is_managed_id(&id))
    }

    /// [`is_managed`](Self::is_managed) for a parsed name.
    pub(crate) fn is_managed_id(&self, id: &Identifier) -> bool {
        if id.is_wildcard() {
            return false;
        }
        let managed = self.inner.managed.lock().unwrap_or_else(|e| e.into_inner());
        if managed.names.contains(id) {
            return true;
        }
        match id {
            Identifier::Dns(name) => name.as_str().split_once('.').is_some_and(|(_, rest)| {
                DomainName::parse(&format!("*.{rest}"))
                    .is_ok_and(|parent| managed.names.contains(&Identifier::Dns(parent)))
            }),
            Identifier::Ip(_) => false,
        }
    }

    /// Whether `id` itself is a name of a managed certificate (a name a
    /// wildcard covers is not). O(1).
    pub(crate) fn manages_exactly(&self, id: &Identifier) -> bool {
        let managed = self.inner.managed.lock().unwrap_or_else(|e| e.into_inner());
        managed.names.contains(id)
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
    /// failed attempt is waiting for its retry time: then a stored certificate
    /// serves until maintenance retries), and records the names for
    /// maintenance. Obtains run [`DEFAULT_MANAGE_CONCURRENCY`] at a time
    /// (see [`ConfigBuilder::manage_concurrency`](super::ConfigBuilder::manage_concurrency)),
    /// and one failing name does not stop the others: each failure is
    /// reported (event `cert_failed`, log), scheduled for retry by
    /// [maintenance](crate::start_maintenance) at its retry time, and returned in
    /// [`Error::ManageFailed`] once every name was tried.
    pub async fn manage<I, S>(&self, names: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let missing = self.start_managing(names).await?;
        let limit = self.inner.manage_concurrency;
        let mut failed = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut pending = missing.into_iter();
        loop {
            while tasks.len() < limit {
                let Some(id) = pending.next() else { break };
                let config = self.clone();
                tasks.spawn(async move {
                    // Checks storage again, under the lock; a failure is
                    // scheduled for retry.
                    let outcome = config
                        .renew_with_backoff(vec![id.clone()], RenewMode::IfDue, Reason::Requested)
                        .await;
                    (id, outcome)
                });
            }
            match tasks.join_next().await {
                Some(Ok((id, outcome))) => match outcome {
                    RenewOutcome::Renewed => {}
                    RenewOutcome::Failed(e) => {
                        failed.push((id.to_string(), e));
                    }
                    RenewOutcome::Deferred => {
                        failed.push((
                            id.to_string(),
                            ConfigError::RetryPending(id.to_string()).into(),
                        ));
                    }
                },
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Some(Err(_)) => {}
                None => break,
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::ManageFailed(failed))
        }
    }

    /// Like [`manage`](Self::manage), but returns at once: certificates
    /// already in storage are loaded first, the rest are obtained in the
    /// background (so an HTTP-01 or TLS-ALPN-01 challenge can be answered by
    /// the application's own listeners, started after this call). Failures are
    /// reported through `cert_failed` events and logs, and retried by
    /// maintenance at their retry time.
    pub async fn manage_in_background<I, S>(&self, names: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let missing = self.start_managing(names).await?;
        let config = self.clone();
        tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(config.inner.manage_concurrency));
            let mut tasks = tokio::task::JoinSet::new();
            for id in missing {
                let config = config.clone();
                let limit = limit.clone();
                tasks.spawn(async move {
                    let Ok(_permit) = limit.acquire().await else { return };
                    // Through the retry schedule: a failure is retried by
                    // maintenance after its backoff.
                    if let RenewOutcome::Failed(e) =
                        config.renew_with_backoff(vec![id.clone()], RenewMode::IfDue, Reason::Requested).await
                    {
                        tracing::debug!(name = %id, error = %crate::ErrorChain(&e), "background obtain failed");
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        });
        Ok(())
    }

    /// Loads a stored, not-due certificate for `ids` into the cache.
    pub(super) async fn load_into_cache(
        &self,
        ids: &[Identifier],
    ) -> Result<Option<Certificate>, Error> {
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
    pub(crate) fn ensure_cached(&self, cert: &Certificate) -> Result<bool, Error> {
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
            let ids = std::slice::from_ref(id);
            tracing::info!(name = %id, issuer = %self.issuer_name_for(ids), "managing certificate");
            self.record_managed(ids);
        }
        let loaded = self.load_all_into_cache(&names).await?;
        Ok(names
            .into_iter()
            .zip(loaded)
            .filter_map(|(id, loaded)| (!loaded).then_some(id))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, SystemTime};

    use async_trait::async_trait;
    use tokio::sync::mpsc;

    use crate::acme::types::RevocationReason;
    use crate::error::AcmeError;
    use crate::events::Event;
    use crate::issuer::{IssueRequest, IssuedCertificate, Issuer, LocalCa};
    use crate::storage::MemoryStorage;
    use crate::{Certificate, Clock, Config, Error, ManualClock, start_maintenance};

    /// A fault injector in front of the local CA: it refuses the names in
    /// `refused` and the first `fail_first` orders, and counts orders.
    #[derive(Debug)]
    struct FaultyCa {
        ca: LocalCa,
        refused: HashSet<String>,
        fail_first: AtomicU32,
        orders: AtomicU32,
    }

    #[async_trait]
    impl Issuer for FaultyCa {
        fn issuer_key(&self) -> String {
            "faulty-ca".to_owned()
        }

        async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedCertificate, Error> {
            self.orders.fetch_add(1, Ordering::SeqCst);
            let name = request.names[0].to_string();
            let first = self
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if first || self.refused.contains(&name) {
                return Err(AcmeError::InvalidResponse {
                    url: "fault-injector".into(),
                    reason: format!("refused {name}"),
                }
                .into());
            }
            self.ca.issue(request).await
        }

        async fn revoke(&self, _: &Certificate, _: Option<RevocationReason>) -> Result<(), Error> {
            Ok(())
        }
    }

    fn faulty(
        storage: &std::sync::Arc<MemoryStorage>,
        refused: &[&str],
        fail_first: u32,
    ) -> FaultyCa {
        FaultyCa {
            ca: LocalCa::new(storage.clone()),
            refused: refused.iter().map(|s| (*s).to_owned()).collect(),
            fail_first: AtomicU32::new(fail_first),
            orders: AtomicU32::new(0),
        }
    }

    fn events(
        builder: crate::ConfigBuilder,
    ) -> (crate::ConfigBuilder, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let tx = Mutex::new(tx);
        let builder = builder.on_event(move |e| {
            let _ = tx.lock().unwrap().send(e.clone());
        });
        (builder, rx)
    }

    /// 20 names, one refused by the CA: the other 19 are obtained and
    /// served, one failure event is sent, and the error names the refused one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_refused_name_does_not_stop_the_others() {
        let storage = std::sync::Arc::new(MemoryStorage::new());
        let names: Vec<String> = (0..20).map(|i| format!("n{i}.example.com")).collect();
        let (builder, mut rx) = events(Config::builder().storage(storage.clone()).issuer(faulty(
            &storage,
            &["n7.example.com"],
            0,
        )));
        let config = builder.build();
        let err = config.manage(&names).await.unwrap_err();
        let Error::ManageFailed(failed) = err else {
            panic!("{err}")
        };
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "n7.example.com");
        for name in &names {
            assert_eq!(
                config.cache().get(name).is_some(),
                name != "n7.example.com",
                "{name}"
            );
        }
        let mut failures = Vec::new();
        while let Ok(e) = rx.try_recv() {
            if let Event::CertFailed { names, .. } = e {
                failures.push(names);
            }
        }
        assert_eq!(failures, vec![vec!["n7.example.com".to_owned()]]);
        assert_eq!(config.managed().len(), 20, "the refused name stays managed");
    }

    /// A first obtain that fails is retried at its retry time (about a
    /// minute), not at the next renewal check (10 minutes away).
    #[tokio::test(start_paused = true)]
    async fn failed_first_obtain_is_retried_when_due() {
        let storage = std::sync::Arc::new(MemoryStorage::new());
        let clock = std::sync::Arc::new(ManualClock::new(SystemTime::now()));
        let ca = faulty(&storage, &[], 1);
        let (builder, mut rx) = events(
            Config::builder()
                .storage(storage.clone())
                .clock(clock.clone())
                .issuer(ca),
        );
        let config = builder.build();
        assert_eq!(config.renew_check_interval(), Duration::from_secs(600));
        let _maintenance = start_maintenance(&config);
        config
            .manage_in_background(["retry.example.com"])
            .await
            .unwrap();
        let bound = Duration::from_secs(300); // virtual time, well under 10 minutes
        let retry_at = loop {
            match tokio::time::timeout(bound, rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Event::CertFailed {
                    attempt,
                    retry_at,
                    renewal,
                    ..
                } => {
                    assert_eq!(attempt, 1);
                    assert!(!renewal);
                    break retry_at.unwrap();
                }
                _ => continue,
            }
        };
        let delay = retry_at.duration_since(clock.now()).unwrap();
        assert!(
            delay >= Duration::from_secs(50) && delay <= Duration::from_secs(70),
            "{delay:?}"
        );
        clock.advance(delay + Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout(bound, rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Event::CertObtained { names, .. } => {
                    assert_eq!(names, vec!["retry.example.com".to_owned()]);
                    break;
                }
                Event::CertFailed { error, .. } => panic!("retry failed: {error}"),
                _ => continue,
            }
        }
        assert!(
            started.elapsed() < config.renew_check_interval(),
            "retried by the renewal check, not at its retry time"
        );
        assert!(config.cache().get("retry.example.com").is_some());
        config.cache().stop();
    }

    /// `manage()` keeps renewing: past the renewal window (injected clock)
    /// and one check interval later, the served certificate is a new one.
    #[tokio::test(start_paused = true)]
    async fn manage_keeps_renewing() {
        let storage = std::sync::Arc::new(MemoryStorage::new());
        let clock = std::sync::Arc::new(ManualClock::new(SystemTime::now()));
        let (builder, mut rx) = events(
            Config::builder()
                .storage(storage)
                .clock(clock.clone())
                .renew_check_interval(Duration::from_secs(60)),
        );
        let config = builder.build();
        let _tls = crate::manage_with(config.clone(), ["renew.test"])
            .await
            .unwrap();
        let first = config
            .cache()
            .get("renew.test")
            .unwrap()
            .serial()
            .to_owned();
        clock.advance(Duration::from_secs(6 * 24 * 3600)); // of a 7-day leaf
        loop {
            let event = tokio::time::timeout(Duration::from_secs(600), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if let Event::CertRenewed { serial, .. } = event {
                assert_ne!(serial, first);
                break;
            }
        }
        assert_ne!(config.cache().get("renew.test").unwrap().serial(), first);
        config.cache().stop();
    }

    /// Huge durations from configuration are clamped: nothing overflows,
    /// in the builder or in the maintenance task.
    #[tokio::test(start_paused = true)]
    async fn huge_configured_durations_do_not_panic() {
        let storage = std::sync::Arc::new(MemoryStorage::new());
        let config = Config::builder()
            .storage(storage)
            .renew_check_interval(Duration::MAX)
            .ocsp_check_interval(Duration::MAX)
            .issuance_rate_limit(1, Duration::MAX)
            .local_ca_leaf_lifetime(Duration::MAX)
            .build();
        assert_eq!(config.renew_check_interval(), crate::MAX_CHECK_INTERVAL);
        config.manage(["huge.test"]).await.unwrap();
        let handle = start_maintenance(&config);
        // Two issuances through a limiter whose window is clamped.
        config.force_renew(["huge.test"]).await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        config.cache().stop();
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .unwrap();
        let cert = config.load(["huge.test"]).await.unwrap().unwrap();
        assert!(cert.lifetime() <= crate::MAX_LOCAL_LEAF_LIFETIME + Duration::from_secs(3600));
    }
}
