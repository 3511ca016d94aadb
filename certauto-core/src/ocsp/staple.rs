//! Stapling: keeping each managed certificate's staple fresh, in the cache and
//! in storage, and renewing a revoked certificate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::{OcspResponse, OcspStatus, query, verify};
use crate::cache::CachedCert;
use crate::config::Config;
use crate::error::OcspError;
use crate::events::Event;
use crate::identifier::Identifier;
use crate::storage::keys;

/// What one OCSP check ([`Config::check_ocsp`]) did. Names are primary names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OcspReport {
    /// Managed certificates with an OCSP responder that were looked at.
    pub checked: usize,
    /// Certificates that got a new staple (fetched, or loaded from storage).
    pub refreshed: Vec<String>,
    /// Certificates the responder reported revoked.
    pub revoked: Vec<String>,
    /// Revoked certificates that were renewed (or found renewed by another instance).
    pub renewed: Vec<String>,
    /// Certificates for which no usable response could be had (a still-valid
    /// staple keeps being served; a stale one was removed), or whose renewal
    /// after revocation failed or waits for its retry time.
    pub failed: Vec<String>,
}

/// What stapling one cached certificate did.
#[derive(Debug)]
pub(crate) enum StapleOutcome {
    /// The certificate has no OCSP responder.
    NotApplicable,
    /// The staple in place is good until its refresh time.
    Current,
    /// A new staple is in place: fetched, or loaded from storage.
    Stapled,
    /// The responder says the certificate is revoked; the staple was removed.
    Revoked,
    /// No usable response (a staple still valid is kept, a stale one removed).
    Failed(OcspError),
    /// Storage had no staple good until its refresh time; the responder was
    /// not asked.
    NeedsFetch,
}

/// The last stapling outcome of each cached certificate, by serial (hex).
/// Bounded: when it holds more records than the cache has certificates (plus
/// [`STAPLE_RECORD_SLACK`]), the records of certificates no longer cached are dropped.
pub(crate) type StapleRecords = HashMap<String, StapleRecord>;

/// Records kept beyond the number of cached certificates before pruning.
pub(crate) const STAPLE_RECORD_SLACK: usize = 64;

/// The last stapling outcome of one certificate, for [`Config::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StapleRecord {
    /// A good response is stapled.
    Good {
        /// When it goes stale.
        next_update: SystemTime,
        /// When a new one is fetched.
        refresh_at: SystemTime,
    },
    /// No staple yet: the responder is asked in the background or at the next check.
    Pending,
    /// The responder reported the certificate revoked at `revoked_at`.
    Revoked {
        /// The revocation time the responder gave.
        revoked_at: SystemTime,
    },
    /// No usable response at `at`; a still-valid staple keeps being served
    /// until `serving_until`.
    Failed {
        /// The error, with its causes.
        error: String,
        /// The responder answered `unknown` (rather than failing).
        unknown: bool,
        /// When it failed.
        at: SystemTime,
        /// The `nextUpdate` of the staple still served, if one is.
        serving_until: Option<SystemTime>,
    },
}

impl StapleRecord {
    fn good(resp: &OcspResponse) -> Self {
        StapleRecord::Good {
            next_update: resp.next_update,
            refresh_at: resp.refresh_at(),
        }
    }
}

/// Background OCSP fetches (for certificates loaded from storage) running at
/// once, per process.
static BACKGROUND_FETCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

fn names_of(entry: &CachedCert) -> Vec<String> {
    entry
        .names()
        .iter()
        .map(|n| n.as_str().into_owned())
        .collect()
}

impl Config {
    /// One OCSP pass over every managed certificate in the cache (see the
    /// [module docs](crate::ocsp)): a staple past half its validity, missing
    /// or stale is replaced by a fresh response (from storage if another
    /// instance already fetched one, else from the responder); a revoked
    /// certificate is reported to maintenance ([`Config::report_revoked`]),
    /// which renews it. Time comes from the config's clock.
    pub(crate) async fn staple_pass(&self) -> OcspReport {
        let mut report = OcspReport::default();
        let mut seen = HashSet::new();
        let managed = self.managed_snapshot();
        for ids in managed.iter() {
            if self.cache().is_stopped() {
                break;
            }
            let Some(primary) = ids.first().cloned() else {
                continue;
            };
            let Some(entry) = self.cache().get(&primary.as_str()) else {
                continue;
            };
            if entry.ocsp_urls().is_empty() || !seen.insert(entry.serial().to_owned()) {
                continue;
            }
            report.checked += 1;
            let name = primary.to_string();
            match self.staple_entry(&entry).await {
                StapleOutcome::NotApplicable
                | StapleOutcome::Current
                | StapleOutcome::NeedsFetch => {}
                StapleOutcome::Stapled => report.refreshed.push(name),
                StapleOutcome::Failed(e) => {
                    tracing::warn!(name = %primary, error = %e, "OCSP staple not refreshed");
                    report.failed.push(name);
                }
                StapleOutcome::Revoked => {
                    report.revoked.push(name);
                    self.report_revoked(ids.clone(), entry.serial().to_owned());
                }
            }
        }
        report
    }

    /// Staples the cached entry of a certificate just obtained or renewed.
    /// Returns whether the responder reported it revoked.
    pub(crate) async fn staple_new(&self, cert: &crate::certificate::Certificate) -> bool {
        let Some(entry) = self.stapleable_entry(cert.names(), &cert.serial_hex()) else {
            return false;
        };
        match self.staple_entry(&entry).await {
            StapleOutcome::Failed(e) => {
                tracing::warn!(names = ?entry.names(), error = %e, "no OCSP staple");
                false
            }
            StapleOutcome::Revoked => true,
            StapleOutcome::NotApplicable
            | StapleOutcome::Current
            | StapleOutcome::Stapled
            | StapleOutcome::NeedsFetch => false,
        }
    }

    /// Staples the cached entry of a certificate loaded from storage for
    /// `ids`; a revoked one is reported to maintenance.
    ///
    /// Only storage is read here, so loading many certificates at start never
    /// waits for a responder: a staple that must be fetched is fetched in the
    /// background.
    pub(crate) async fn staple_loaded(
        &self,
        cert: &crate::certificate::Certificate,
        ids: &[Identifier],
    ) {
        let Some(entry) = self.stapleable_entry(cert.names(), &cert.serial_hex()) else {
            return;
        };
        if let StapleOutcome::NeedsFetch = self.staple_entry_with(&entry, false).await {
            let config = self.clone();
            let cert = cert.clone();
            let ids = ids.to_vec();
            tokio::spawn(async move {
                // Loading thousands of certificates must not become thousands
                // of simultaneous requests to one responder.
                let revoked = {
                    let Ok(_permit) = BACKGROUND_FETCHES.acquire().await else {
                        return;
                    };
                    config.staple_new(&cert).await
                };
                if revoked {
                    config.report_revoked(ids, cert.serial_hex());
                }
            });
        }
    }

    /// Brings the staple of `entry` up to date; see [`StapleOutcome`].
    pub(crate) async fn staple_entry(&self, entry: &Arc<CachedCert>) -> StapleOutcome {
        self.staple_entry_with(entry, true).await
    }

    /// [`staple_entry`](Self::staple_entry); with `fetch` false, the
    /// responder is not asked: a staple still valid from storage is put in
    /// place and [`StapleOutcome::NeedsFetch`] says a fetch is due.
    async fn staple_entry_with(&self, entry: &Arc<CachedCert>, fetch: bool) -> StapleOutcome {
        if entry.ocsp_urls().is_empty() {
            return StapleOutcome::NotApplicable;
        }
        let chain = &entry.certified_key().cert;
        let now = self.clock().now();
        let (Some(leaf), Some(issuer), Some(first_name)) =
            (chain.first(), chain.get(1), entry.names().first())
        else {
            self.record_staple(
                entry,
                StapleRecord::Failed {
                    error: OcspError::NoIssuer.to_string(),
                    unknown: false,
                    at: now,
                    serving_until: None,
                },
            );
            return StapleOutcome::Failed(OcspError::NoIssuer);
        };
        let good_at = |der: &[u8]| {
            verify(der, leaf, issuer, now)
                .ok()
                .filter(|r| r.status == OcspStatus::Good)
        };
        let current = entry.certified_key().ocsp.as_deref().and_then(good_at);
        if let Some(current) = current.as_ref().filter(|c| now < c.refresh_at()) {
            self.record_staple(entry, StapleRecord::good(current));
            return StapleOutcome::Current;
        }
        let key = keys::ocsp_staple(first_name, leaf);
        let stored = match self.storage().load(&key).await {
            Ok(der) => good_at(&der),
            Err(e) => {
                if !e.is_not_found() {
                    tracing::warn!(key = %key, error = %e, "could not load the stored OCSP staple");
                }
                None
            }
        };
        // The newest valid response we already have.
        let best = match (current, stored) {
            (Some(c), Some(s)) => Some(if s.this_update > c.this_update { s } else { c }),
            (c, s) => c.or(s),
        };
        if let Some(best) = best.as_ref().filter(|b| now < b.refresh_at()) {
            self.set_staple(entry, Some(best.der.clone()));
            self.record_staple(entry, StapleRecord::good(best));
            self.emit_stapled(entry, best);
            return StapleOutcome::Stapled;
        }
        if !fetch {
            if let Some(best) = &best {
                self.set_staple(entry, Some(best.der.clone()));
            }
            let record = best
                .as_ref()
                .map_or(StapleRecord::Pending, StapleRecord::good);
            self.record_staple(entry, record);
            return StapleOutcome::NeedsFetch;
        }
        match query(entry.ocsp_urls(), leaf, issuer, now).await {
            Ok(resp) => match resp.status {
                OcspStatus::Good => {
                    self.set_staple(entry, Some(resp.der.clone()));
                    self.record_staple(entry, StapleRecord::good(&resp));
                    if let Err(e) = self.storage().store(&key, &resp.der).await {
                        tracing::warn!(key = %key, error = %e, "could not persist the OCSP staple");
                    }
                    self.emit_stapled(entry, &resp);
                    StapleOutcome::Stapled
                }
                OcspStatus::Revoked { time, reason } => {
                    tracing::error!(names = ?entry.names(), serial = entry.serial(), ?reason,
                        "the OCSP responder reports the certificate revoked");
                    self.set_staple(entry, None);
                    self.record_staple(entry, StapleRecord::Revoked { revoked_at: time });
                    if let Err(e) = self.storage().delete(&key).await
                        && !e.is_not_found()
                    {
                        tracing::warn!(key = %key, error = %e, "could not delete the OCSP staple");
                    }
                    self.emit(&Event::CertOcspRevoked {
                        names: names_of(entry),
                        serial: entry.serial().to_owned(),
                        revoked_at: time,
                        reason,
                    });
                    StapleOutcome::Revoked
                }
                OcspStatus::Unknown => {
                    self.record_staple(
                        entry,
                        StapleRecord::Failed {
                            error: OcspError::UnknownStatus.to_string(),
                            unknown: true,
                            at: now,
                            serving_until: best.as_ref().map(|b| b.next_update),
                        },
                    );
                    self.set_staple(entry, best.map(|b| b.der));
                    StapleOutcome::Failed(OcspError::UnknownStatus)
                }
            },
            Err(e) => {
                self.record_staple(
                    entry,
                    StapleRecord::Failed {
                        error: crate::ErrorChain(&e).to_string(),
                        unknown: false,
                        at: now,
                        serving_until: best.as_ref().map(|b| b.next_update),
                    },
                );
                // Keep serving a response that is still valid; drop a stale one.
                self.set_staple(entry, best.map(|b| b.der));
                StapleOutcome::Failed(e)
            }
        }
    }

    fn emit_stapled(&self, entry: &CachedCert, resp: &OcspResponse) {
        tracing::debug!(names = ?entry.names(), serial = entry.serial(),
            next_update = ?resp.next_update, "OCSP response stapled");
        self.emit(&Event::CertOcspStapled {
            names: names_of(entry),
            serial: entry.serial().to_owned(),
            this_update: resp.this_update,
            next_update: resp.next_update,
        });
    }

    /// Keeps `record` as the last stapling outcome of `entry`; drops the
    /// records of certificates no longer cached when there are too many.
    fn record_staple(&self, entry: &CachedCert, record: StapleRecord) {
        let bound = self.cache().len().saturating_add(STAPLE_RECORD_SLACK);
        let len = {
            let mut records = self.staple_records();
            records.insert(entry.serial().to_owned(), record);
            records.len()
        };
        if len > bound {
            // The cache's own lock is not taken under ours.
            let cached: HashSet<String> = self
                .cache()
                .entries()
                .iter()
                .map(|e| e.serial().to_owned())
                .collect();
            self.staple_records()
                .retain(|serial, _| cached.contains(serial));
        }
    }

    /// The cache entry serving `names` if it is the certificate `serial`.
    fn cached_entry(&self, names: &[Identifier], serial: &str) -> Option<Arc<CachedCert>> {
        let primary = names.first()?;
        self.cache()
            .get(&primary.as_str())
            .filter(|e| e.serial() == serial)
    }

    /// [`cached_entry`](Self::cached_entry), if it names an OCSP responder.
    fn stapleable_entry(&self, names: &[Identifier], serial: &str) -> Option<Arc<CachedCert>> {
        self.cached_entry(names, serial)
            .filter(|e| !e.ocsp_urls().is_empty())
    }

    /// Puts `staple` on the cached entry, unless it is already there or the
    /// cache no longer serves this certificate (a renewal replaced it).
    fn set_staple(&self, entry: &CachedCert, staple: Option<Vec<u8>>) {
        let Some(cached) = self.cached_entry(entry.names(), entry.serial()) else {
            return;
        };
        if cached.certified_key().ocsp == staple {
            return;
        }
        let stapled = Arc::new(cached.with_ocsp(staple));
        self.cache().replace_entry(&cached, stapled);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::MemoryStorage;

    /// Local CA certificates name no OCSP responder: nothing is fetched,
    /// stapled or reported, and nothing fails.
    #[tokio::test]
    async fn no_ocsp_url_is_normal() {
        let config = Config::builder()
            .storage(Arc::new(MemoryStorage::new()))
            .on_event(|e| assert!(!e.name().starts_with("cert_ocsp"), "{e:?}"))
            .build();
        config.manage(["a.test", "b.test"]).await.unwrap();
        let entry = config.cache().get("a.test").unwrap();
        assert!(entry.ocsp_urls().is_empty());
        assert!(matches!(
            config.staple_entry(&entry).await,
            StapleOutcome::NotApplicable
        ));
        assert_eq!(config.check_ocsp().await, OcspReport::default());
        assert!(
            config
                .cache()
                .certified_key("a.test")
                .unwrap()
                .ocsp
                .is_none()
        );
        let stored = config.storage().list(keys::OCSP_PREFIX, true).await;
        assert!(stored.map_or(true, |k| k.is_empty()));
    }
}
