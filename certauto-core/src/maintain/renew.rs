//! Deciding what is due, and renewing it.
//!
//! A renewal check ([`Config::check_renewals`]) walks every managed
//! certificate: one OCSP reported revoked is renewed first; one served from
//! the cache is renewed once its renewal time ([`ari`](super::ari)) has
//! come; one never obtained (its first obtain failed) is obtained. Every
//! attempt goes through the lifecycle's retry schedule
//! ([`Config::renew_with_backoff`]), so a name waiting for its retry time is
//! deferred, not ordered again. After a renewal, the ARI state of the
//! replaced certificate is dropped.

use crate::config::{Config, RenewMode, RenewOutcome};
use crate::handshake::on_demand::RenewalGate;
use crate::identifier::Identifier;
use crate::metrics::Reason;

/// What one renewal check did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenewalReport {
    /// Managed certificates looked at.
    pub checked: usize,
    /// Primary names that were due.
    pub due: Vec<String>,
    /// Primary names renewed (or found renewed by another instance).
    pub renewed: Vec<String>,
    /// Primary names whose renewal failed (a retry is scheduled).
    pub failed: Vec<String>,
    /// Primary names due but waiting for their retry time (or whose retry
    /// schedule could not be read from storage, or, obtained on demand,
    /// whose decision timed out: asked again at the next pass).
    pub deferred: Vec<String>,
}

impl Config {
    /// One renewal check over every managed certificate; see
    /// [`start_maintenance`](crate::start_maintenance). Certificates an OCSP
    /// check found revoked are renewed first. Returns what it did.
    pub async fn check_renewals(&self) -> RenewalReport {
        let mut report = RenewalReport::default();
        self.cache().refresh_expiry_metric();
        let mut revoked_deferred = Vec::new();
        self.renew_revoked(
            &mut report.renewed,
            &mut report.failed,
            &mut revoked_deferred,
        )
        .await;
        report.deferred.extend(revoked_deferred);
        for ids in self.managed_snapshot().iter() {
            if self.cache().is_stopped() {
                break;
            }
            let primary = &ids[0];
            let now = self.clock().now();
            report.checked += 1;
            let (mode, reason) = match self.cache().get(&primary.as_str()) {
                Some(entry) => {
                    if now < self.renewal_time(primary, &entry, now).await {
                        continue;
                    }
                    (
                        RenewMode::Replace(entry.serial().to_owned()),
                        self.due_reason(primary, entry.serial()),
                    )
                }
                // Managed but never obtained (a first obtain failed): obtain it.
                None => (RenewMode::IfDue, Reason::Requested),
            };
            let name = primary.to_string();
            match self.on_demand_renewal_allowed(primary).await {
                RenewalGate::Renew => {}
                RenewalGate::Later => {
                    report.due.push(name.clone());
                    report.deferred.push(name);
                    continue;
                }
                RenewalGate::Dropped => continue,
            }
            report.due.push(name.clone());
            match self.renew_now(ids.clone(), mode, reason).await {
                RenewOutcome::Renewed => report.renewed.push(name),
                RenewOutcome::Failed(_) => report.failed.push(name),
                RenewOutcome::Deferred => {
                    report.deferred.push(name);
                }
            }
        }
        report
    }

    /// One OCSP pass (see [`crate::ocsp`]), then the renewal of every
    /// certificate the responder reported revoked, at once.
    pub async fn check_ocsp(&self) -> crate::OcspReport {
        let mut report = self.staple_pass().await;
        let mut deferred = Vec::new();
        self.renew_revoked(&mut report.renewed, &mut report.failed, &mut deferred)
            .await;
        for name in deferred {
            if !report.failed.contains(&name) {
                report.failed.push(name);
            }
        }
        report
    }

    /// Renews the certificates OCSP reported revoked (see
    /// [`Config::report_revoked`]); pushes the primary names to `renewed`,
    /// `failed` or `deferred` (waiting for the retry time of a failed
    /// attempt). A revoked serial is kept until a renewal replaces it, so a
    /// failed renewal is tried again by a later renewal check once its retry
    /// is due, whatever later OCSP fetches give; it is dropped once the
    /// cache serves another certificate for the name, or the name is no
    /// longer managed.
    pub(super) async fn renew_revoked(
        &self,
        renewed: &mut Vec<String>,
        failed: &mut Vec<String>,
        deferred: &mut Vec<String>,
    ) {
        for (ids, serial) in self.revoked_pending() {
            let primary = &ids[0];
            let replaced = self
                .cache()
                .get(&primary.as_str())
                .is_some_and(|entry| entry.serial() != serial);
            let managed = self.managed_snapshot().iter().any(|m| m[0] == *primary);
            if replaced || !managed {
                self.forget_revoked(&serial);
                continue;
            }
            let name = primary.to_string();
            match self
                .renew_now(ids, RenewMode::Replace(serial.clone()), Reason::Revoked)
                .await
            {
                RenewOutcome::Renewed => {
                    self.forget_revoked(&serial);
                    renewed.push(name);
                }
                RenewOutcome::Failed(_) => failed.push(name),
                RenewOutcome::Deferred => {
                    deferred.push(name);
                }
            }
        }
    }

    /// Renews `ids` through the retry schedule; after a renewal, the ARI
    /// state of the replaced certificate is stale and dropped.
    async fn renew_now(
        &self,
        ids: Vec<Identifier>,
        mode: RenewMode,
        reason: Reason,
    ) -> RenewOutcome {
        let primary = ids[0].clone();
        let outcome = self.renew_with_backoff(ids, mode, reason).await;
        if let RenewOutcome::Renewed = outcome {
            self.maintenance_states().remove(&primary);
        }
        outcome
    }

    /// Why the certificate `serial` serving `primary` is due, as
    /// [`renewal_time`](Self::renewal_time) decided: the ARI window when one
    /// is kept for it, else the ratio.
    fn due_reason(&self, primary: &Identifier, serial: &str) -> Reason {
        let ari = self
            .maintenance_states()
            .get(primary)
            .is_some_and(|state| state.serial == serial && state.window.is_some());
        if ari {
            Reason::AriWindow
        } else {
            Reason::RatioWindow
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::storage::MemoryStorage;
    use crate::{Config, ManualClock};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn serial(config: &Config, name: &str) -> String {
        config.cache().get(name).unwrap().serial().to_owned()
    }

    /// Local-CA certificates (7-day leaves, no ARI) are renewed by the ratio,
    /// revoked ones at once, and the replaced certificate's state is dropped.
    #[tokio::test]
    async fn due_and_revoked_certificates_are_renewed() {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let config = Config::builder()
            .storage(Arc::new(MemoryStorage::new()))
            .clock(clock.clone())
            .build();
        config.manage(["due.test"]).await.unwrap();
        let first = serial(&config, "due.test");

        let report = config.check_renewals().await;
        assert_eq!((report.checked, report.due.len()), (1, 0), "{report:?}");
        assert_eq!(config.maintenance_states().len(), 1);

        clock.advance(6 * DAY);
        let report = config.check_renewals().await;
        assert_eq!(report.renewed, ["due.test"], "{report:?}");
        let second = serial(&config, "due.test");
        assert_ne!(second, first);
        assert!(config.maintenance_states().is_empty());

        // The local CA dates its leaves by the system clock: back to it, so
        // the new certificate is not due by the ratio.
        clock.set(SystemTime::now());
        let ids = config.managed_snapshot()[0].clone();
        config.report_revoked(ids, second.clone());
        let report = config.check_renewals().await;
        assert_eq!(report.renewed, ["due.test"], "{report:?}");
        assert!(report.due.is_empty(), "{report:?}");
        assert_ne!(serial(&config, "due.test"), second);
    }
}
