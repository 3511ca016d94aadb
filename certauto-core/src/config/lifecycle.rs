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
use std::time::SystemTime;

use crate::acme::types::RevocationReason;
use crate::certificate::Certificate;
use crate::error::{ConfigError, Error, ErrorChain};
use crate::events::Event;
use crate::identifier::Identifier;
use crate::issuer::{IssueRequest, Issuer};
use crate::keys::CertificateKey;
use crate::storage::{LockGuard, certs, keys};

use super::Config;

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

impl Config {
    /// Takes the in-process and the storage lock of the certificate whose
    /// primary name is `primary`.
    async fn lock_name(&self, primary: &Identifier) -> Result<NameGuard, Error> {
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

    /// Loads the stored certificate whose primary name is `names[0]` and which
    /// covers every name, from the first issuer that has one.
    pub async fn load<I, S>(&self, names: I) -> Result<Option<Certificate>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids = Identifier::parse_all(names)?;
        self.load_ids(&ids).await
    }

    pub(crate) async fn load_ids(&self, ids: &[Identifier]) -> Result<Option<Certificate>, Error> {
        for issuer in &self.candidate_issuers(ids) {
            let issuer_key = issuer.issuer_key();
            match self.load_from(&issuer_key, &ids[0]).await {
                Ok(Some(cert)) if ids.iter().all(|id| cert.covers(id)) => return Ok(Some(cert)),
                Ok(_) => {}
                Err(Error::Certificate(e)) => {
                    tracing::warn!(name = %ids[0], issuer = %issuer_key, error = %ErrorChain(&e),
                        "stored certificate is unusable; it will be replaced");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
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
        self.renew_inner(Identifier::parse_all(names)?, RenewMode::IfDue, None)
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
        self.renew_inner(Identifier::parse_all(names)?, RenewMode::IfDue, None)
            .await
    }

    /// Renews the certificate for `names` now, whatever its remaining lifetime.
    pub async fn force_renew<I, S>(&self, names: I) -> Result<Certificate, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.renew_inner(Identifier::parse_all(names)?, RenewMode::Force, None)
            .await
    }

    /// Renews `ids`; `retry` is the attempt number and next retry time to
    /// report if this attempt fails (maintenance's backoff schedule).
    pub(crate) async fn renew_inner(
        &self,
        ids: Vec<Identifier>,
        mode: RenewMode,
        retry: Option<(u32, SystemTime)>,
    ) -> Result<Certificate, Error> {
        let issuers = self.usable_issuers(&ids)?;
        let guard = self.lock_name(&ids[0]).await?;
        let result = async {
            let existing = self.load_ids(&ids).await?;
            if let Some(cert) = &existing {
                let now = self.inner.clock.now();
                let keep = match &mode {
                    RenewMode::IfDue => !cert.needs_renewal(now, self.inner.renewal_ratio),
                    RenewMode::Force => false,
                    // Storage holds a newer certificate than the one we set out
                    // to replace: another instance renewed it.
                    RenewMode::Replace(serial) => cert.serial_hex() != *serial,
                };
                if keep {
                    self.ensure_cached(cert)?;
                    return Ok(cert.clone());
                }
            }
            let replaces = existing.as_ref().and_then(Certificate::ari_cert_id);
            self.issue(
                &guard.storage,
                &ids,
                &issuers,
                existing.is_some(),
                replaces.as_deref(),
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

    /// Issues through the issuers in order, stores the result and emits events.
    /// `replaces` is the ARI CertID of the certificate a renewal replaces.
    async fn issue(
        &self,
        lock: &LockGuard,
        ids: &[Identifier],
        issuers: &[Arc<dyn Issuer>],
        renewal: bool,
        replaces: Option<&str>,
        retry: Option<(u32, SystemTime)>,
    ) -> Result<Certificate, Error> {
        let names: Vec<String> = ids.iter().map(|i| i.as_str().into_owned()).collect();
        self.emit(&Event::CertObtaining {
            names: names.clone(),
            renewal,
        });
        let result = self.try_issuers(lock, ids, issuers, replaces).await;
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
                    retry_at: retry.map(|(_, at)| at),
                });
            }
        }
        result
    }

    async fn try_issuers(
        &self,
        lock: &LockGuard,
        ids: &[Identifier],
        issuers: &[Arc<dyn Issuer>],
        replaces: Option<&str>,
    ) -> Result<Certificate, Error> {
        let key = CertificateKey::generate(self.inner.key_type)?;
        let csr = key.csr(ids)?;
        let key_pem = key.to_pem();
        let mut errors = Vec::new();
        for issuer in issuers {
            let issuer_key = issuer.issuer_key();
            let request = IssueRequest::new(ids, &csr).replaces(replaces);
            self.rate_limiter(&issuer_key).acquire().await;
            // A lock lost mid-order ends the order: another instance may be
            // ordering the same name, and this one must not store.
            let issued = tokio::select! {
                issued = issuer.issue(&request) => issued,
                () = lock.lost() => Err(crate::storage::StorageError::LockLost(lock.name().to_owned()).into()),
            };
            let issued = match issued {
                Ok(issued) => issued,
                Err(e) => {
                    tracing::warn!(issuer = %issuer_key, error = %ErrorChain(&e), "issuer failed");
                    let next = crate::issuer::IssuerSet::fails_over(&e);
                    errors.push((issuer_key, e));
                    if !next {
                        break;
                    }
                    continue;
                }
            };
            let cert = Certificate::from_pem(&issued.chain_pem, &key_pem, &issuer_key)?;
            lock.ensure_held()?;
            certs::store(self.inner.storage.as_ref(), &cert, &ids[0]).await?;
            // Stored first, then swapped in: the old certificate serves until now.
            self.inner.cache.insert(&cert, true)?;
            return Ok(cert);
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
