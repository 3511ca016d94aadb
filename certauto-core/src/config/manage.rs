//! Managing names: startup loading from storage, then obtaining what is missing.

use std::collections::HashSet;
use std::sync::Arc;

use crate::certificate::Certificate;
use crate::error::Error;
use crate::events::Event;
use crate::identifier::Identifier;

use super::{Config, RenewMode};

/// How many stored certificates [`Config::manage`] loads at once: the reads
/// overlap, and parsing spreads over the runtime's worker threads.
const LOAD_CONCURRENCY: usize = 8;

/// The certificates under management, in the order they were added, with an
/// index of their primary names (so adding one is O(1), not a scan).
#[derive(Default)]
pub(super) struct Managed {
    /// Shared with maintenance passes in progress, which iterate a snapshot.
    list: Arc<Vec<Vec<Identifier>>>,
    primaries: HashSet<Identifier>,
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
        }
        if !self.inner.default_name_set && managed.list.len() == 1 {
            self.inner
                .resolver
                .set_default_name(Some(primary.as_str().into_owned()));
        }
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
    /// failed renewal is waiting for its retry time: then the stored
    /// certificate serves until maintenance retries), and records the names
    /// for maintenance. Returns when every name has a certificate, or with
    /// the first error.
    pub async fn manage<I, S>(&self, names: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for id in self.start_managing(names).await? {
            // `obtain` checks storage again, under the lock.
            self.obtain([id.as_str()]).await?;
        }
        Ok(())
    }

    /// Like [`manage`](Self::manage), but returns at once: certificates
    /// already in storage are loaded first, the rest are obtained in the
    /// background (so an HTTP-01 or TLS-ALPN-01 challenge can be answered by
    /// the application's own listeners, started after this call). Failures are
    /// reported through `cert_failed` events and logs.
    pub async fn manage_in_background<I, S>(&self, names: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for id in self.start_managing(names).await? {
            let ids = vec![id];
            let config = self.clone();
            // Through the retry schedule: a failure is retried by maintenance
            // after its backoff, not at once by the next check.
            tokio::spawn(async move {
                let outcome = config.renew_with_backoff(ids, RenewMode::IfDue).await;
                if outcome != crate::maintain::RenewOutcome::Renewed {
                    tracing::warn!(?outcome, "background obtain did not complete");
                }
            });
        }
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
    pub(super) fn ensure_cached(&self, cert: &Certificate) -> Result<bool, Error> {
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
            self.record_managed(std::slice::from_ref(id));
        }
        let loaded = self.load_all_into_cache(&names).await?;
        Ok(names
            .into_iter()
            .zip(loaded)
            .filter_map(|(id, loaded)| (!loaded).then_some(id))
            .collect())
    }
}
