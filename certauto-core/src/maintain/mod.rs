//! Maintenance: the background task that keeps certificates valid.
//!
//! Data flows one way: maintenance decides *when* and asks the lifecycle
//! ([`Config::renew_with_backoff`](crate::Config), `config/retry.rs`) to renew;
//! the lifecycle goes through the issuer set, the certificate store and the
//! cache. Nothing below calls back into maintenance: OCSP reports a revoked
//! certificate ([`Config::report_revoked`]) and maintenance renews it.
//!
//! - `mod.rs` (this file): the task ([`start_maintenance`]), its
//!   [`MaintenanceHandle`] and its shutdown (the cache's stop signal).
//! - [`state`]: the typed per-certificate state (the CA's ARI window and the
//!   time chosen in it, by primary name, for one serial).
//! - [`renew`]: deciding what is due and renewing it ([`Config::check_renewals`],
//!   [`Config::check_ocsp`], revoked certificates).
//! - `clean`: storage hygiene ([`Config::clean_storage`], see
//!   [`StorageCleaning`]): expired certificates no name needs, orphaned OCSP
//!   staples, stale challenge and retry state, crash temporaries.
//! - [`ari`]: when a certificate is due: ARI `renewalInfo` windows (fetching,
//!   the random time inside the window, `Retry-After`), else the renewal ratio.
//!
//! Retry backoff (exponential, jittered) lives in `config/backoff.rs` and the
//! persisted retry schedule in `config/retry.rs`: they are the lifecycle's,
//! used by every obtain and renewal, not only by maintenance. The check
//! intervals' defaults and bounds ([`DEFAULT_RENEW_INTERVAL`](crate::DEFAULT_RENEW_INTERVAL),
//! [`MAX_CHECK_INTERVAL`](crate::MAX_CHECK_INTERVAL)) live with the builder's
//! setters.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::config::Config;

pub(crate) mod ari;
pub(crate) mod clean;
mod renew;
pub(crate) mod state;

pub use clean::{CleanReport, StorageCleaning};
pub use renew::RenewalReport;

/// The longest the maintenance task sleeps between looks at the retry
/// schedule (it also wakes whenever a retry is scheduled).
pub(crate) const MAX_RETRY_SLEEP: Duration = Duration::from_secs(3600);

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
/// renewal of a certificate found revoked as soon as it is reported, and
/// storage cleaning when due ([`Config::storage_cleaning`]), until
/// `config.cache().stop()`. A check in progress finishes its current
/// certificate before stopping; a cleaning pass in progress (its own task)
/// is aborted.
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
        // Challenges left by instances that died: at the start, then periodically.
        let mut challenge_cleanup = tokio::time::interval(crate::CHALLENGE_CLEANUP_INTERVAL);
        challenge_cleanup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Storage cleaning: at the start, then whenever the cluster's next
        // pass is due. A pass runs in its own task, one at a time: it holds
        // certificate and challenge-cleanup locks that the checks below
        // take too, so it must make progress while they wait (polled only
        // by this loop, it would not while a check is awaited, and the check
        // would wait on a lock its own task holds). Dropping the handle (the
        // loop stops, or this task is aborted) aborts the pass.
        let cleaning = config.storage_cleaning();
        let mut clean_check = tokio::time::interval(cleaning.check_interval());
        clean_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut clean_pass: Option<AbortOnDrop> = None;
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
                    let (mut renewed, mut failed, mut deferred) = (Vec::new(), Vec::new(), Vec::new());
                    config.renew_revoked(&mut renewed, &mut failed, &mut deferred).await;
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
                _ = challenge_cleanup.tick() => {
                    let report = config.clean_stale_challenges().await;
                    if !report.cleaned.is_empty() || !report.failed.is_empty() {
                        tracing::info!(?report, "stale challenges cleaned up");
                    }
                }
                _ = clean_check.tick(), if cleaning.is_enabled() => {
                    if clean_pass.as_ref().is_none_or(AbortOnDrop::is_finished) {
                        let config = config.clone();
                        clean_pass = Some(AbortOnDrop(tokio::spawn(async move {
                            if let Err(e) = config.clean_storage_if_due().await {
                                tracing::warn!(error = %crate::ErrorChain(&e), "storage cleaning failed; tried again at the next check");
                            }
                        })));
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
        // A cleaning pass in progress stops with the task (its locks are
        // released in the background).
        drop(clean_pass);
        tracing::debug!("maintenance stopped");
    });
    MaintenanceHandle { task }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
