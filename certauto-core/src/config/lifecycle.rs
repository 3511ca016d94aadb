//! Obtain, renew and revoke, serialised per certificate name.
//!
//! Work on one certificate is serialised twice: by an in-process mutex (so
//! two tasks of one process never both order), and by the storage lock (so
//! two processes sharing storage never both order). Under the lock, storage is
//! checked first, so a certificate another instance already obtained is reused.
//!
//! # Cancel safety
//!
//! Every future here may be dropped at any await (a caller's `timeout`, a
//! `select!`, an aborted task): both locks live in a [`NameGuard`] whose drop
//! releases them (the storage lock in the background), and the issuers clean
//! up presented challenges the same way. A certificate is stored in one
//! atomic write only after the order completed, and only while the storage
//! lock is still held; a lock lost mid-order stops the order.

use std::sync::Arc;
use std::time::Duration;

use crate::acme::types::RevocationReason;
use crate::certificate::Certificate;
use crate::error::{ConfigError, Error, ErrorChain};
use crate::events::Event;
use crate::identifier::Identifier;
use crate::issuer::{IssueRequest, Issuer, LOCAL_CA_ISSUER_KEY, pick_ready};
use crate::keys::CertificateKey;
use crate::metrics::{self, Reason};
use crate::storage::{LockGuard, certs, keys};

use super::Config;
use super::backoff::saturating_add;

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

/// Holds the in-process and the storage lock for one certificate; dropping
/// it releases both.
struct NameGuard {
    storage: LockGuard,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl NameGuard {
    async fn release(self) {
        let name = self.storage.name().to_owned();
        if let Err(e) = self.storage.release().await {
            tracing::warn!(lock = %name, error = %ErrorChain(&e), "could not release storage lock");
        }
    }
}

/// Whether `issuer_key` is a staging or test CA's (a known preset's staging
/// directory, or a key naming `staging` or Google's `test-api`): its
/// certificates are not trusted by browsers, so one is never served in place
/// of a production certificate after an issuer change (developing against
/// Let's Encrypt's staging CA, then switching to production, must order
/// anew, not serve the staging certificate until it is due).
fn is_test_ca_key(issuer_key: &str) -> bool {
    crate::issuer::CaPreset::ALL.iter().any(|p| {
        p.staging_directory
            .is_some_and(|url| keys::issuer_key_from_url(url) == issuer_key)
    }) || issuer_key.contains("staging")
        || issuer_key.contains("test-api")
}

impl Config {
    /// Takes the in-process and the storage lock of the certificate whose
    /// primary name is `primary`.
    async fn lock_name(&self, primary: &Identifier) -> Result<NameGuard, Error> {
        // Both waits count as one lock wait: the storage lock is taken with
        // `Storage::lock` directly, not `storage::lock::acquire`, which would
        // count this task a second time.
        let _waiting = metrics::lock_wait_started();
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
        let storage = self.inner.storage.lock(&keys::cert_lock(primary)).await?;
        Ok(NameGuard {
            storage,
            _local: local,
        })
    }

    /// Whether an obtain or renewal of the certificate whose primary name is
    /// `primary` is running in this process (its name lock is held). O(1).
    pub(crate) fn attempt_in_progress(&self, primary: &Identifier) -> bool {
        let locks = self
            .inner
            .name_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks
            .get(&primary.storage_key())
            .is_some_and(|m| m.try_lock().is_err())
    }

    /// Loads the stored certificate whose primary name is `names[0]` and which
    /// covers every name: among the records of the configured issuers, the
    /// one valid longest; when they hold none, the one valid longest stored
    /// by an issuer no longer configured (an issuer change: it serves, and
    /// is renewed by the configured issuers when due).
    pub async fn load<I, S>(&self, names: I) -> Result<Option<Certificate>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids = Identifier::parse_all(names)?;
        self.load_ids(&ids).await
    }

    /// See [`load`](Self::load). Storage is listed (the `certificates/`
    /// prefix, not recursively) only when no configured issuer's key holds a
    /// usable record.
    pub(crate) async fn load_ids(&self, ids: &[Identifier]) -> Result<Option<Certificate>, Error> {
        let configured: Vec<String> = self
            .candidate_issuers(ids)
            .iter()
            .map(|i| i.issuer_key())
            .collect();
        if let Some(cert) = self.longest_valid(ids, &configured).await? {
            return Ok(Some(cert));
        }
        let others = self.other_issuer_keys(&configured).await?;
        let cert = self.longest_valid(ids, &others).await?;
        if let Some(cert) = &cert {
            tracing::info!(name = %ids[0], issuer = cert.issuer_key(),
                "using a certificate stored by an issuer no longer configured; the configured issuers renew it");
        }
        Ok(cert)
    }

    /// Among the records of `ids[0]` under `issuer_keys`, the one covering
    /// every name that is valid longest. An unusable record is skipped
    /// (logged): it will be replaced.
    async fn longest_valid(
        &self,
        ids: &[Identifier],
        issuer_keys: &[String],
    ) -> Result<Option<Certificate>, Error> {
        let mut best: Option<Certificate> = None;
        for issuer_key in issuer_keys {
            match self.load_from(issuer_key, &ids[0]).await {
                Ok(Some(cert)) if ids.iter().all(|id| cert.covers(id)) => {
                    if best
                        .as_ref()
                        .is_none_or(|b| cert.not_after() > b.not_after())
                    {
                        best = Some(cert);
                    }
                }
                Ok(_) => {}
                Err(Error::Certificate(e)) => {
                    tracing::warn!(name = %ids[0], issuer = %issuer_key, error = %ErrorChain(&e),
                        "stored certificate is unusable; it will be replaced");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(best)
    }

    /// The issuer keys under `certificates/` other than `configured` and
    /// the local CA's (a local certificate never stands in for a public
    /// one), in storage's order.
    async fn other_issuer_keys(&self, configured: &[String]) -> Result<Vec<String>, Error> {
        let listed = match self
            .inner
            .storage
            .list(keys::CERTIFICATES_PREFIX, false)
            .await
        {
            Ok(listed) => listed,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let configured: Vec<String> = configured
            .iter()
            .map(|k| crate::identifier::safe_key_component(k))
            .collect();
        Ok(listed
            .iter()
            .filter_map(|key| key.trim_end_matches('/').rsplit('/').next())
            .filter(|k| {
                !k.is_empty()
                    && *k != LOCAL_CA_ISSUER_KEY
                    && !configured.iter().any(|c| c == k)
                    && !is_test_ca_key(k)
            })
            .map(str::to_owned)
            .collect())
    }

    async fn load_from(
        &self,
        issuer_key: &str,
        primary: &Identifier,
    ) -> Result<Option<Certificate>, Error> {
        certs::load(self.inner.storage.as_ref(), issuer_key, primary).await
    }

    /// Obtains a certificate covering `names` (the first is the primary name,
    /// under which it is stored), unless storage already holds one that covers
    /// them and is outside its renewal window.
    pub async fn obtain<I, S>(&self, names: I) -> Result<Certificate, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // A stored certificate inside its renewal window is renewed (and
        // reported as a renewal, with `replaces`).
        self.renew_inner(
            Identifier::parse_all(names)?,
            RenewMode::IfDue,
            None,
            Reason::Requested,
        )
        .await
    }

    /// Renews the certificate for `names` if it is inside its renewal window
    /// (or missing). If another instance renewed it meanwhile, its certificate
    /// is loaded instead.
    pub async fn renew<I, S>(&self, names: I) -> Result<Certificate, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.renew_inner(
            Identifier::parse_all(names)?,
            RenewMode::IfDue,
            None,
            Reason::Requested,
        )
        .await
    }

    /// Renews the certificate for `names` now, whatever its remaining lifetime.
    pub async fn force_renew<I, S>(&self, names: I) -> Result<Certificate, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.renew_inner(
            Identifier::parse_all(names)?,
            RenewMode::Force,
            None,
            Reason::Forced,
        )
        .await
    }

    /// Renews `ids`; `retry` is the attempt number and the backoff delay to
    /// report if this attempt fails (maintenance's backoff schedule: the
    /// retry is due that long after the failure);
    /// `reason` why it runs (the metrics' `reason` label).
    pub(crate) async fn renew_inner(
        &self,
        ids: Vec<Identifier>,
        mode: RenewMode,
        retry: Option<(u32, Duration)>,
        reason: Reason,
    ) -> Result<Certificate, Error> {
        let issuers = match self.usable_issuers(&ids) {
            Ok(issuers) => issuers,
            Err(e) => return Err(self.failed_before_issuing(&ids, e, retry, reason)),
        };
        let guard = match self.lock_name(&ids[0]).await {
            Ok(guard) => guard,
            Err(e) => return Err(self.failed_before_issuing(&ids, e, retry, reason)),
        };
        let result = async {
            let existing = match self.load_ids(&ids).await {
                Ok(existing) => existing,
                Err(e) => return Err(self.failed_before_issuing(&ids, e, retry, reason)),
            };
            if let Some(cert) = &existing {
                let now = self.inner.clock.now();
                let keep = match &mode {
                    RenewMode::IfDue => !cert.needs_renewal(now, self.inner.renewal_ratio),
                    RenewMode::Force => false,
                    // Storage holds another certificate than the one we set out
                    // to replace, not itself due: another instance renewed it.
                    // (A due one, such as a longer-lived certificate of another
                    // configured issuer, is no renewal: order.)
                    RenewMode::Replace(serial) => {
                        cert.serial_hex() != *serial
                            && !cert.needs_renewal(now, self.inner.renewal_ratio)
                    }
                };
                if keep {
                    if let Err(e) = self.ensure_cached(cert) {
                        return Err(self.failed_before_issuing(&ids, e, retry, reason));
                    }
                    return Ok(cert.clone());
                }
            }
            // `replaces` names a certificate of one CA: only that CA gets it.
            let replaces = existing.as_ref().and_then(|cert| {
                cert.ari_cert_id()
                    .map(|id| (cert.issuer_key().to_owned(), id))
            });
            self.issue(
                &guard.storage,
                &ids,
                &issuers,
                (existing.is_some(), reason),
                replaces.as_ref().map(|(k, id)| (k.as_str(), id.as_str())),
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

    /// Reports an attempt that failed before reaching the issuers (no
    /// configured issuer accepts the names, the storage lock or the stored
    /// record could not be had, e.g. storage unreachable, or the stored
    /// certificate could not be cached): counted once with `issuer` =
    /// `none` and reported with `CertFailed`, as [`issue`](Self::issue)
    /// reports the failures after; returns `error`.
    fn failed_before_issuing(
        &self,
        ids: &[Identifier],
        error: Error,
        retry: Option<(u32, Duration)>,
        reason: Reason,
    ) -> Error {
        let renewal = self.cache().get(&ids[0].as_str()).is_some();
        metrics::attempt_failed_early(renewal, reason);
        tracing::error!(names = ?ids, error = %ErrorChain(&error), renewal, "could not start the attempt");
        self.emit(&Event::CertFailed {
            names: ids.iter().map(|i| i.as_str().into_owned()).collect(),
            renewal,
            error: ErrorChain(&error).to_string(),
            problem: None,
            attempt: retry.map_or(1, |(attempt, _)| attempt),
            retry_at: retry.map(|(_, delay)| saturating_add(self.inner.clock.now(), delay)),
        });
        error
    }

    /// Issues through the issuers in order, stores the result and emits events.
    /// `replaces` is the issuer key and ARI CertID of the certificate a
    /// renewal replaces; `kind` whether this renews, and why it runs.
    async fn issue(
        &self,
        lock: &LockGuard,
        ids: &[Identifier],
        issuers: &[Arc<dyn Issuer>],
        kind: (bool, Reason),
        replaces: Option<(&str, &str)>,
        retry: Option<(u32, Duration)>,
    ) -> Result<Certificate, Error> {
        let renewal = kind.0;
        let _in_flight = metrics::issuance_started();
        let names: Vec<String> = ids.iter().map(|i| i.as_str().into_owned()).collect();
        self.emit(&Event::CertObtaining {
            names: names.clone(),
            renewal,
        });
        let attempt = retry.map_or(1, |(attempt, _)| attempt);
        let result = self
            .try_issuers(lock, ids, issuers, replaces, attempt, kind)
            .await;
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
                let what = if renewal {
                    "renewal failed"
                } else {
                    "obtain failed"
                };
                tracing::error!(names = ?names, error = %ErrorChain(e), renewal, "{what}");
                self.emit(&Event::CertFailed {
                    names,
                    renewal,
                    error: ErrorChain(e).to_string(),
                    problem: e.problem().cloned().map(Box::new),
                    attempt: retry.map_or(1, |(attempt, _)| attempt),
                    retry_at: retry.map(|(_, delay)| saturating_add(self.inner.clock.now(), delay)),
                });
            }
        }
        result
    }

    /// Tries `issuers` for `ids` in the issuer set's order (policy, then
    /// per-issuer backoff), each when its rate limiter allows: an issuer
    /// whose limiter allows an order now goes before one that would wait,
    /// and the attempt waits only when all would (for the soonest). Each
    /// issuer's attempt is counted in the metrics with `kind` (whether it
    /// renews, and why it runs).
    async fn try_issuers(
        &self,
        lock: &LockGuard,
        ids: &[Identifier],
        issuers: &[Arc<dyn Issuer>],
        replaces: Option<(&str, &str)>,
        attempt: u32,
        kind: (bool, Reason),
    ) -> Result<Certificate, Error> {
        let (renewal, reason) = kind;
        // Failures before any issuer is asked count once, with no issuer
        // (`issue` reports them with `CertFailed` like the others).
        let prepared = CertificateKey::generate(self.inner.key_type)
            .map_err(Error::from)
            .and_then(|key| {
                let csr = key.csr(ids)?;
                Ok::<_, Error>((key, csr))
            });
        let (key, csr) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                metrics::attempt_failed_early(renewal, reason);
                return Err(e);
            }
        };
        let key_pem = key.to_pem();
        let set = &self.inner.issuers;
        let mut remaining = set.order(&ids[0], issuers.to_vec(), self.inner.clock.now());
        let mut errors = Vec::new();
        // Each pass removes one issuer: at most `issuers.len()` passes.
        while !remaining.is_empty() {
            let limiters: Vec<_> = remaining
                .iter()
                .map(|i| self.rate_limiter(&i.issuer_key()))
                .collect();
            let index = match pick_ready(&limiters) {
                Ok(ready) => ready,
                Err(soonest) => {
                    if let Some(limiter) = limiters.get(soonest) {
                        limiter.acquire().await;
                    }
                    soonest
                }
            };
            if index >= remaining.len() {
                break;
            }
            let issuer = remaining.remove(index);
            let issuer_key = issuer.issuer_key();
            let request = IssueRequest::new(ids, &csr)
                .replaces(replaces.filter(|(k, _)| *k == issuer_key).map(|(_, id)| id))
                .attempt(attempt);
            // A lock lost mid-order ends the order: another instance may be
            // ordering the same name, and this one must not store.
            let started = std::time::Instant::now();
            let issued = tokio::select! {
                issued = issuer.issue(&request) => issued,
                () = lock.lost() => Err(crate::storage::StorageError::LockLost(lock.name().to_owned()).into()),
            };
            let issued = match issued {
                Ok(issued) => issued,
                Err(e) => {
                    metrics::issuance_finished(
                        &issuer_key,
                        renewal,
                        reason,
                        false,
                        started.elapsed(),
                    );
                    tracing::warn!(issuer = %issuer_key, error = %ErrorChain(&e), "issuer failed");
                    let next = crate::issuer::IssuerSet::fails_over(&e);
                    if next {
                        set.record_failure(&issuer_key, &ids[0], self.inner.clock.now());
                    }
                    errors.push((issuer_key, e));
                    if !next {
                        break;
                    }
                    continue;
                }
            };
            set.record_success(&issuer_key, &ids[0]);
            let stored = async {
                let cert = Certificate::from_pem(&issued.chain_pem, &key_pem, &issuer_key)?;
                certs::store(self.inner.storage.as_ref(), lock, &cert, &ids[0]).await?;
                // Stored first, then swapped in: the old certificate serves until now.
                self.inner.cache.insert(&cert, true)?;
                Ok::<_, Error>(cert)
            }
            .await;
            // Counted once it serves: a chain that cannot be used or stored
            // is a failed attempt.
            metrics::issuance_finished(
                &issuer_key,
                renewal,
                reason,
                stored.is_ok(),
                started.elapsed(),
            );
            return stored;
        }
        if errors.is_empty() {
            // No issuer was asked (none left to try): one failure, no issuer.
            metrics::attempt_failed_early(renewal, reason);
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
                guard.storage.ensure_held()?;
                certs::delete(self.inner.storage.as_ref(), &issuer_key, &id).await?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, SystemTime};

    use async_trait::async_trait;

    use crate::acme::types::RevocationReason;
    use crate::error::AcmeError;
    use crate::issuer::{IssueRequest, IssuedCertificate, Issuer, LocalCa};
    use crate::storage::{MemoryStorage, Storage, keys};
    use crate::{Certificate, Config, Error, ManualClock};

    /// Staging and test CAs' certificates never stand in after an issuer change.
    #[test]
    fn staging_keys_are_never_a_fallback() {
        for url in [
            crate::LETS_ENCRYPT_STAGING,
            crate::GOOGLE_TRUST_SERVICES_STAGING,
            "https://acme.staging.example.net/directory",
        ] {
            assert!(
                super::is_test_ca_key(&keys::issuer_key_from_url(url)),
                "{url}"
            );
        }
        for url in [
            crate::LETS_ENCRYPT_PRODUCTION,
            crate::GOOGLE_TRUST_SERVICES_PRODUCTION,
            crate::ZEROSSL_DIRECTORY,
            "https://127.0.0.1:14000/dir",
        ] {
            assert!(
                !super::is_test_ca_key(&keys::issuer_key_from_url(url)),
                "{url}"
            );
        }
    }

    /// The local CA under another issuer key, counting orders; it refuses
    /// every order when `refuse` is set.
    #[derive(Debug)]
    struct KeyedCa {
        key: &'static str,
        ca: LocalCa,
        refuse: bool,
        orders: AtomicU32,
    }

    impl KeyedCa {
        fn new(key: &'static str, storage: &Arc<MemoryStorage>, lifetime_days: u64) -> Arc<Self> {
            Arc::new(Self {
                key,
                ca: LocalCa::new(storage.clone())
                    .leaf_lifetime(Duration::from_secs(lifetime_days * 24 * 3600)),
                refuse: false,
                orders: AtomicU32::new(0),
            })
        }

        fn refusing(key: &'static str, storage: &Arc<MemoryStorage>) -> Arc<Self> {
            Arc::new(Self {
                key,
                ca: LocalCa::new(storage.clone()),
                refuse: true,
                orders: AtomicU32::new(0),
            })
        }

        fn orders(&self) -> u32 {
            self.orders.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Issuer for KeyedCa {
        fn issuer_key(&self) -> String {
            self.key.to_owned()
        }

        async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedCertificate, Error> {
            self.orders.fetch_add(1, Ordering::SeqCst);
            if self.refuse {
                return Err(AcmeError::InvalidResponse {
                    url: "fault-injector".into(),
                    reason: format!("{} refuses", self.key),
                }
                .into());
            }
            self.ca.issue(request).await
        }

        async fn revoke(&self, _: &Certificate, _: Option<RevocationReason>) -> Result<(), Error> {
            Ok(())
        }
    }

    fn config(
        storage: &Arc<MemoryStorage>,
        clock: &Arc<ManualClock>,
        issuers: &[&Arc<KeyedCa>],
    ) -> Config {
        Config::builder()
            .storage(storage.clone())
            .clock(clock.clone())
            .issuers(
                issuers
                    .iter()
                    .map(|i| (*i).clone() as Arc<dyn Issuer>)
                    .collect(),
            )
            .build()
    }

    /// caddy #6732: after the issuer set changed, the certificate of the old
    /// issuer is still found and served without an order, renewed by the new
    /// issuer when due (stored under its key), and after that the new one wins.
    #[tokio::test]
    async fn a_certificate_from_an_issuer_no_longer_configured_serves_and_is_renewed() {
        let storage = Arc::new(MemoryStorage::new());
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let old = KeyedCa::new("old-ca", &storage, 30);
        let name = "moved.example.com";
        let first = config(&storage, &clock, &[&old])
            .obtain([name])
            .await
            .unwrap();
        assert_eq!(first.issuer_key(), "old-ca");

        let new = KeyedCa::new("new-ca", &storage, 30);
        let changed = config(&storage, &clock, &[&new]);
        changed.manage([name]).await.unwrap();
        assert_eq!(new.orders(), 0, "served from storage, not ordered");
        assert_eq!(
            changed.cache().get(name).unwrap().serial(),
            first.serial_hex()
        );
        // Not due: renew keeps it.
        let kept = changed.renew([name]).await.unwrap();
        assert_eq!(kept.serial_hex(), first.serial_hex());
        assert_eq!(new.orders(), 0);

        // Due: the new issuer renews it, under its own key.
        clock.advance(Duration::from_secs(25 * 24 * 3600));
        let renewed = changed.renew([name]).await.unwrap();
        assert_eq!(new.orders(), 1);
        assert_eq!(renewed.issuer_key(), "new-ca");
        let id = crate::Identifier::parse(name).unwrap();
        assert!(
            storage
                .exists(&keys::cert_record("new-ca", &id))
                .await
                .unwrap()
        );
        assert_eq!(
            changed.cache().get(name).unwrap().serial(),
            renewed.serial_hex()
        );

        // A restart loads the new one, though the old record still exists.
        let restarted = config(&storage, &clock, &[&new]);
        let loaded = restarted.load([name]).await.unwrap().unwrap();
        assert_eq!(loaded.serial_hex(), renewed.serial_hex());
        assert_eq!(new.orders(), 1);
    }

    /// The same with [`FileStorage`](crate::FileStorage), whose listing is
    /// of folders.
    #[tokio::test]
    async fn an_old_issuers_record_is_found_in_file_storage() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(crate::FileStorage::new(dir.path()));
        let keyed = |key| {
            Arc::new(KeyedCa {
                key,
                ca: LocalCa::new(storage.clone()),
                refuse: false,
                orders: AtomicU32::new(0),
            }) as Arc<dyn Issuer>
        };
        let build = |issuer: Arc<dyn Issuer>| {
            Config::builder()
                .storage(storage.clone())
                .issuers(vec![issuer])
                .build()
        };
        let name = "file.example.com";
        let old = build(keyed("old-ca")).obtain([name]).await.unwrap();
        let loaded = build(keyed("new-ca")).load([name]).await.unwrap().unwrap();
        assert_eq!(loaded.serial_hex(), old.serial_hex());
        assert_eq!(loaded.issuer_key(), "old-ca");
        // Nothing stored at all: no certificate, no error.
        let empty = tempfile::tempdir().unwrap();
        let none = Config::builder()
            .storage(Arc::new(crate::FileStorage::new(empty.path())))
            .issuers(vec![keyed("new-ca")])
            .build();
        assert!(none.load([name]).await.unwrap().is_none());
    }

    /// Among several records of configured issuers, the one valid longest
    /// is loaded; an old issuer's record does not compete with them.
    #[tokio::test]
    async fn the_record_valid_longest_is_loaded() {
        let storage = Arc::new(MemoryStorage::new());
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let short = KeyedCa::new("short-ca", &storage, 10);
        let long = KeyedCa::new("long-ca", &storage, 60);
        let longest = KeyedCa::new("gone-ca", &storage, 90);
        let name = "both.example.com";
        config(&storage, &clock, &[&longest])
            .obtain([name])
            .await
            .unwrap();
        // Forced: each would otherwise serve gone-ca's certificate.
        let from_long = config(&storage, &clock, &[&long])
            .force_renew([name])
            .await
            .unwrap();
        config(&storage, &clock, &[&short])
            .force_renew([name])
            .await
            .unwrap();
        assert_eq!(short.orders() + long.orders(), 2);
        for order in [[&short, &long], [&long, &short]] {
            let loaded = config(&storage, &clock, &order)
                .load([name])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(loaded.serial_hex(), from_long.serial_hex());
            assert_eq!(loaded.issuer_key(), "long-ca");
        }
    }

    /// A failing first issuer: the second issues; the first backs off for
    /// that name only (skipped on its renewal), while another name still
    /// tries it first.
    #[tokio::test]
    async fn a_failing_issuer_backs_off_per_name_without_stopping_the_others() {
        let storage = Arc::new(MemoryStorage::new());
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let bad = KeyedCa::refusing("bad-ca", &storage);
        let good = KeyedCa::new("good-ca", &storage, 30);
        let config = config(&storage, &clock, &[&bad, &good]);
        let x = config.obtain(["x.example.com"]).await.unwrap();
        assert_eq!(x.issuer_key(), "good-ca");
        assert_eq!((bad.orders(), good.orders()), (1, 1));
        // Another name tries the first issuer again, then the second.
        let y = config.obtain(["y.example.com"]).await.unwrap();
        assert_eq!(y.issuer_key(), "good-ca");
        assert_eq!((bad.orders(), good.orders()), (2, 2));
        // While its backoff for x runs, the first is skipped for x.
        config.force_renew(["x.example.com"]).await.unwrap();
        assert_eq!((bad.orders(), good.orders()), (2, 3));
        // After it, the first is tried again.
        clock.advance(Duration::from_secs(3600));
        config.force_renew(["x.example.com"]).await.unwrap();
        assert_eq!((bad.orders(), good.orders()), (3, 4));
    }
}
