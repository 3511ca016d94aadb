#![doc = include_str!("overview.md")]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::cache::CachedCert;
use crate::config::{Config, RenewMode, RenewOutcome};
use crate::error::ErrorChain;
use crate::identifier::Identifier;

pub(crate) mod state;

use crate::config::backoff::{random_in, saturating_add};
use state::{AriState, AriWindow};

/// The default interval between renewal checks.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(600);
/// The longest interval between checks accepted from configuration (a year);
/// longer values are clamped to it.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long to wait before asking the CA for a new ARI window, when it does
/// not say (`Retry-After`).
const ARI_DEFAULT_RECHECK: Duration = Duration::from_secs(6 * 3600);
const ARI_MIN_RECHECK: Duration = Duration::from_secs(60);
const ARI_MAX_RECHECK: Duration = Duration::from_secs(24 * 3600);
/// After a failed ARI request, the ratio rules until this much later.
const ARI_ERROR_RECHECK: Duration = Duration::from_secs(3600);
/// The longest the maintenance task sleeps between looks at the retry
/// schedule (it also wakes whenever a retry is scheduled).
const MAX_RETRY_SLEEP: Duration = Duration::from_secs(3600);

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
    /// Primary names due but waiting for their retry time.
    pub deferred: Vec<String>,
}

impl Config {
    /// When `entry` is due: the time chosen in its ARI window, else the ratio.
    async fn renewal_time(
        &self,
        primary: &Identifier,
        entry: &CachedCert,
        now: SystemTime,
    ) -> SystemTime {
        let lifetime = entry
            .not_after()
            .duration_since(entry.not_before())
            .unwrap_or(Duration::ZERO);
        let by_ratio = saturating_add(
            entry.not_before(),
            lifetime.mul_f64(1.0 - self.renewal_ratio()),
        );
        let (Some(cert_id), Some(issuer)) =
            (entry.ari_cert_id(), self.issuer_by_key(entry.issuer_key()))
        else {
            return by_ratio;
        };
        let cached = {
            let states = self.maintenance_states();
            states
                .get(primary)
                .filter(|a| a.serial == entry.serial())
                .map(|a| (a.window, a.next_fetch))
        };
        let window = match cached {
            Some((window, next_fetch)) if now < next_fetch => window,
            previous => {
                let fetched = match issuer.renewal_info(cert_id).await {
                    Ok(Some(info)) => {
                        let same_window = previous
                            .and_then(|(window, _)| window)
                            .filter(|w| w.start == info.window_start && w.end == info.window_end);
                        let chosen = same_window.map_or_else(
                            || random_in(info.window_start, info.window_end),
                            |w| w.chosen,
                        );
                        let recheck = info
                            .retry_after
                            .unwrap_or(ARI_DEFAULT_RECHECK)
                            .clamp(ARI_MIN_RECHECK, ARI_MAX_RECHECK);
                        tracing::debug!(serial = entry.serial(), ?recheck, "ARI window fetched");
                        AriState {
                            serial: entry.serial().to_owned(),
                            window: Some(AriWindow {
                                start: info.window_start,
                                end: info.window_end,
                                chosen,
                            }),
                            next_fetch: saturating_add(now, recheck),
                        }
                    }
                    Ok(None) => AriState {
                        serial: entry.serial().to_owned(),
                        window: None,
                        next_fetch: saturating_add(now, ARI_MAX_RECHECK),
                    },
                    Err(e) => {
                        tracing::warn!(serial = entry.serial(), error = %ErrorChain(&e), "ARI request failed; using the renewal ratio");
                        AriState {
                            serial: entry.serial().to_owned(),
                            window: None,
                            next_fetch: saturating_add(now, ARI_ERROR_RECHECK),
                        }
                    }
                };
                let window = fetched.window;
                self.maintenance_states().insert(primary.clone(), fetched);
                window
            }
        };
        match window {
            Some(w) => w.chosen.min(entry.not_after()),
            None => by_ratio,
        }
    }

    /// One renewal check over every managed certificate; see
    /// [`start_maintenance`]. Certificates an OCSP check found revoked are
    /// renewed first. Returns what it did.
    pub async fn check_renewals(&self) -> RenewalReport {
        let mut report = RenewalReport::default();
        self.renew_revoked(&mut report.renewed, &mut report.failed)
            .await;
        for ids in self.managed_snapshot().iter() {
            if self.cache().is_stopped() {
                break;
            }
            let primary = &ids[0];
            let now = self.clock().now();
            report.checked += 1;
            let mode = match self.cache().get(&primary.as_str()) {
                Some(entry) => {
                    if now < self.renewal_time(primary, &entry, now).await {
                        continue;
                    }
                    RenewMode::Replace(entry.serial().to_owned())
                }
                // Managed but never obtained (a first obtain failed): obtain it.
                None => RenewMode::IfDue,
            };
            let name = primary.to_string();
            report.due.push(name.clone());
            match self.renew_with_backoff(ids.clone(), mode).await {
                RenewOutcome::Renewed => report.renewed.push(name),
                RenewOutcome::Failed(_) => report.failed.push(name),
                RenewOutcome::Deferred => report.deferred.push(name),
            }
        }
        report
    }

    /// One OCSP pass (see [`crate::ocsp`]), then the renewal of every
    /// certificate the responder reported revoked, at once.
    pub async fn check_ocsp(&self) -> crate::OcspReport {
        let mut report = self.staple_pass().await;
        self.renew_revoked(&mut report.renewed, &mut report.failed)
            .await;
        report
    }

    /// Renews the certificates OCSP reported revoked (see
    /// [`Config::report_revoked`]); pushes the primary names to `renewed` or `failed`.
    async fn renew_revoked(&self, renewed: &mut Vec<String>, failed: &mut Vec<String>) {
        for (ids, serial) in self.take_revoked() {
            let name = ids[0].to_string();
            match self
                .renew_with_backoff(ids, RenewMode::Replace(serial))
                .await
            {
                RenewOutcome::Renewed => renewed.push(name),
                RenewOutcome::Failed(_) | RenewOutcome::Deferred => failed.push(name),
            }
        }
    }
}

/// The handle of the maintenance task: await it after
/// [`CertCache::stop`](crate::CertCache::stop) for a graceful shutdown.
#[derive(Debug)]
pub struct MaintenanceHandle {
    task: JoinHandle<()>,
}

impl MaintenanceHandle {
    /// Stops the task without waiting for a check in progress to finish.
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Future for MaintenanceHandle {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.task).poll(cx).map(|_| ())
    }
}

#[doc = include_str!("overview.md")]
///
/// Starts background maintenance for `config`: a renewal check every
/// [`Config::renew_check_interval`], an OCSP check ([`Config::check_ocsp`])
/// every [`Config::ocsp_check_interval`], a check as soon as a failed
/// obtain or renewal is due for its retry (by the config's clock), and the
/// renewal of a certificate found revoked as soon as it is reported, until
/// `config.cache().stop()`. A check in progress finishes its current
/// certificate before stopping.
pub fn start_maintenance(config: &Config) -> MaintenanceHandle {
    let config = config.clone();
    let task = tokio::spawn(async move {
        let mut stop = config.cache().stop_signal();
        // The first renewal check comes one interval after the start:
        // `manage` and `manage_in_background` have just obtained or loaded
        // every name, and an immediate check would race a background obtain
        // still running. The first OCSP check runs at once (it only fetches
        // what is due).
        let every = config.renew_check_interval();
        let start = tokio::time::Instant::now();
        let mut interval =
            tokio::time::interval_at(start.checked_add(every).unwrap_or(start), every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The due time of the retry last acted on: one that is still due
        // after its check (nothing needed doing) is not acted on again.
        let mut handled_due: Option<SystemTime> = None;
        let mut ocsp_interval = tokio::time::interval(config.ocsp_check_interval());
        ocsp_interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                break;
            }
            // Until the earliest retry is due by the config's clock (looked
            // at again whenever a retry is scheduled or a revocation reported).
            let next_due = config
                .next_retry_at()
                .filter(|due| Some(*due) != handled_due);
            let retry_sleep = next_due.map(|due| {
                due.duration_since(config.clock().now())
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_RETRY_SLEEP)
            });
            let retry_wait = async {
                match retry_sleep {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                () = config.retry_scheduled().notified() => {
                    let (mut renewed, mut failed) = (Vec::new(), Vec::new());
                    config.renew_revoked(&mut renewed, &mut failed).await;
                    if !renewed.is_empty() || !failed.is_empty() {
                        tracing::info!(?renewed, ?failed, "revoked certificates renewed");
                    }
                }
                () = retry_wait => {
                    if let Some(due) = next_due.filter(|t| *t <= config.clock().now()) {
                        handled_due = Some(due);
                        let report = config.check_renewals().await;
                        tracing::info!(?report, "retry check");
                    }
                }
                _ = interval.tick() => {
                    let report = config.check_renewals().await;
                    if !report.due.is_empty() {
                        tracing::info!(?report, "renewal check");
                    }
                }
                _ = ocsp_interval.tick() => {
                    let report = config.check_ocsp().await;
                    if !report.revoked.is_empty() || !report.failed.is_empty() {
                        tracing::info!(?report, "OCSP check");
                    }
                }
            }
        }
        tracing::debug!("maintenance stopped");
    });
    MaintenanceHandle { task }
}
