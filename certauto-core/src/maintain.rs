//! Maintenance: certificates stay valid with nobody watching.
//!
//! [`start_maintenance`] runs a renewal check every
//! [`renew_check_interval`](crate::ConfigBuilder::renew_check_interval)
//! (default 10 minutes) and, beside it, an OCSP staple refresh
//! ([`Config::check_ocsp`], see [`crate::ocsp`]) every
//! [`ocsp_check_interval`](crate::ConfigBuilder::ocsp_check_interval)
//! (default 1 hour), until the cache's [`stop`](crate::CertCache::stop).
//! Each renewal check ([`Config::check_renewals`]) looks at every managed certificate:
//!
//! - **When**: inside the CA's ARI window (RFC 9773) at a random time chosen
//!   once per window, when the issuer offers `renewalInfo`; otherwise when
//!   less than the renewal ratio (default 1/3) of the lifetime remains. A
//!   window in the past means now. Deciding reads no storage: only the cache
//!   and, for ARI, the CA.
//! - **Without downtime**: the renewal is stored, then swapped into the cache;
//!   the old certificate serves until then, and whenever renewal fails.
//!   Under the storage lock, storage is checked first: if another instance
//!   already renewed, its certificate is loaded, not ordered again.
//! - **Retries**: a failed renewal is retried with exponential backoff from a
//!   minute up to 30 days, with jitter. The schedule is kept in storage, so a
//!   restarted process resumes it instead of hammering the CA, and reported in
//!   `cert_failed` events (attempt number and next retry time).
//!
//! Time comes from the config's [`Clock`](crate::Clock), so tests drive
//! renewals with a [`ManualClock`](crate::ManualClock) and
//! [`Config::check_renewals`] instead of waiting.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::cache::CachedCert;
use crate::config::{Config, RenewMode};
use crate::identifier::Identifier;

/// The default interval between renewal checks.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(600);
/// The first retry delay after a failure.
pub const MIN_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// The longest delay between retries.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long to wait before asking the CA for a new ARI window, when it does
/// not say (`Retry-After`).
const ARI_DEFAULT_RECHECK: Duration = Duration::from_secs(6 * 3600);
const ARI_MIN_RECHECK: Duration = Duration::from_secs(60);
const ARI_MAX_RECHECK: Duration = Duration::from_secs(24 * 3600);
/// After a failed ARI request, the ratio rules until this much later.
const ARI_ERROR_RECHECK: Duration = Duration::from_secs(3600);

/// Per-certificate maintenance state, in memory.
#[derive(Debug, Default)]
pub(crate) struct CertState {
    ari: Option<AriState>,
    retry: Option<RetryState>,
    retry_loaded: bool,
}

#[derive(Debug, Clone)]
struct AriState {
    serial: String,
    /// The window and the time chosen in it; `None` when the CA has no ARI or failed.
    window: Option<(SystemTime, SystemTime, SystemTime)>,
    next_fetch: SystemTime,
}

/// The retry schedule of one certificate, kept in storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct RetryState {
    attempts: u32,
    /// Unix seconds.
    next_attempt: u64,
}

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

/// The delay before retry number `attempt + 1` (`attempt` ≥ 1 failures so
/// far): a minute doubled per failure, at most 30 days, before jitter.
pub fn retry_backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    MIN_RETRY_BACKOFF
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(MAX_RETRY_BACKOFF)
        .min(MAX_RETRY_BACKOFF)
}

/// A uniformly random fraction in [0, 1).
fn random_fraction() -> f64 {
    let mut b = [0u8; 4];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// [`retry_backoff`] with ±10 % jitter, still at most 30 days.
fn jittered_backoff(attempt: u32) -> Duration {
    let base = retry_backoff(attempt).as_secs_f64();
    let jittered = base * (0.9 + 0.2 * random_fraction());
    Duration::from_secs_f64(jittered).min(MAX_RETRY_BACKOFF)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn retry_key(primary: &Identifier) -> String {
    format!("maintenance/retry/{}.json", primary.storage_key())
}

/// A point chosen uniformly at random in `[start, end)`.
fn random_in(start: SystemTime, end: SystemTime) -> SystemTime {
    let span = end.duration_since(start).unwrap_or(Duration::ZERO);
    start + span.mul_f64(random_fraction())
}

impl Config {
    /// When `entry` is due: the time chosen in its ARI window, else the ratio.
    async fn renewal_time(&self, entry: &CachedCert, now: SystemTime) -> SystemTime {
        let lifetime = entry
            .not_after()
            .duration_since(entry.not_before())
            .unwrap_or(Duration::ZERO);
        let by_ratio = entry.not_before() + lifetime.mul_f64(1.0 - self.renewal_ratio());
        let (Some(cert_id), Some(issuer)) =
            (entry.ari_cert_id(), self.issuer_by_key(entry.issuer_key()))
        else {
            return by_ratio;
        };
        let key = format!("serial:{}", entry.serial());
        let cached = {
            let states = self
                .maintenance_state()
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            states
                .get(&key)
                .and_then(|s| s.ari.as_ref())
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
                            .filter(|(s, e, _)| *s == info.window_start && *e == info.window_end);
                        let chosen = same_window.map_or_else(
                            || random_in(info.window_start, info.window_end),
                            |(_, _, chosen)| chosen,
                        );
                        let recheck = info
                            .retry_after
                            .unwrap_or(ARI_DEFAULT_RECHECK)
                            .clamp(ARI_MIN_RECHECK, ARI_MAX_RECHECK);
                        tracing::debug!(serial = entry.serial(), ?recheck, "ARI window fetched");
                        AriState {
                            serial: entry.serial().to_owned(),
                            window: Some((info.window_start, info.window_end, chosen)),
                            next_fetch: now + recheck,
                        }
                    }
                    Ok(None) => AriState {
                        serial: entry.serial().to_owned(),
                        window: None,
                        next_fetch: now + ARI_MAX_RECHECK,
                    },
                    Err(e) => {
                        tracing::warn!(serial = entry.serial(), error = %e, "ARI request failed; using the renewal ratio");
                        AriState {
                            serial: entry.serial().to_owned(),
                            window: None,
                            next_fetch: now + ARI_ERROR_RECHECK,
                        }
                    }
                };
                let mut states = self
                    .maintenance_state()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let window = fetched.window;
                states.entry(key).or_default().ari = Some(fetched);
                window
            }
        };
        match window {
            Some((_, _, chosen)) => chosen.min(entry.not_after()),
            None => by_ratio,
        }
    }

    /// The retry schedule of `primary`, loaded from storage the first time.
    async fn retry_state(&self, primary: &Identifier) -> Option<RetryState> {
        let key = primary.storage_key();
        {
            let states = self
                .maintenance_state()
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(state) = states.get(&key)
                && state.retry_loaded
            {
                return state.retry.clone();
            }
        }
        let loaded = match self.storage().load(&retry_key(primary)).await {
            Ok(bytes) => serde_json::from_slice::<RetryState>(&bytes).ok(),
            Err(_) => None,
        };
        let mut states = self
            .maintenance_state()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let state = states.entry(key).or_default();
        state.retry_loaded = true;
        state.retry = loaded.clone();
        loaded
    }

    /// Whether a failed renewal of `primary` is waiting for its retry time
    /// (the schedule is persisted, so this holds across restarts).
    pub(crate) async fn retry_pending(&self, primary: &Identifier) -> bool {
        let now = unix(self.clock().now());
        self.retry_state(primary)
            .await
            .is_some_and(|r| r.next_attempt > now)
    }

    async fn set_retry_state(&self, primary: &Identifier, retry: Option<RetryState>) {
        {
            let mut states = self
                .maintenance_state()
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let state = states.entry(primary.storage_key()).or_default();
            state.retry_loaded = true;
            state.retry = retry.clone();
        }
        let key = retry_key(primary);
        let result = match &retry {
            Some(r) => match serde_json::to_vec(r) {
                Ok(bytes) => self.storage().store(&key, &bytes).await,
                Err(_) => Ok(()),
            },
            None => match self.storage().delete(&key).await {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            },
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, name = %primary, "could not persist the retry schedule");
        }
    }

    /// One renewal check over every managed certificate; see the [module
    /// docs](crate::maintain). Returns what it did.
    pub async fn check_renewals(&self) -> RenewalReport {
        let mut report = RenewalReport::default();
        for ids in self.managed_snapshot().iter() {
            if self.cache().is_stopped() {
                break;
            }
            let primary = &ids[0];
            let now = self.clock().now();
            report.checked += 1;
            let mode = match self.cache().get(&primary.as_str()) {
                Some(entry) => {
                    if now < self.renewal_time(&entry, now).await {
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
                RenewOutcome::Failed => report.failed.push(name),
                RenewOutcome::Deferred => report.deferred.push(name),
            }
        }
        report
    }
}

/// What [`Config::renew_with_backoff`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RenewOutcome {
    /// Renewed, or found renewed by another instance.
    Renewed,
    /// The renewal failed; a retry is scheduled.
    Failed,
    /// Not tried: a previous failure's retry time has not come yet.
    Deferred,
}

impl Config {
    /// Renews (or first obtains) `ids` now with `mode`, honouring and
    /// updating the persisted retry schedule: the renewal checks, an OCSP
    /// `revoked` answer and background obtains all go through here.
    pub(crate) async fn renew_with_backoff(
        &self,
        ids: Vec<Identifier>,
        mode: RenewMode,
    ) -> RenewOutcome {
        let primary = ids[0].clone();
        let now = self.clock().now();
        let previous = self.retry_state(&primary).await;
        if let Some(r) = &previous
            && r.next_attempt > unix(now)
        {
            return RenewOutcome::Deferred;
        }
        let attempt = previous.map_or(1, |r| r.attempts.saturating_add(1));
        let next = now + jittered_backoff(attempt);
        let replaced = match &mode {
            RenewMode::Replace(serial) => Some(format!("serial:{serial}")),
            _ => None,
        };
        match self.renew_inner(ids, mode, Some((attempt, next))).await {
            Ok(_) => {
                self.set_retry_state(&primary, None).await;
                if let Some(old) = replaced {
                    self.maintenance_state()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&old);
                }
                RenewOutcome::Renewed
            }
            Err(e) => {
                tracing::warn!(name = %primary, attempt, error = %e, retry_at = ?next, "renewal failed; retry scheduled");
                self.set_retry_state(
                    &primary,
                    Some(RetryState {
                        attempts: attempt,
                        next_attempt: unix(next),
                    }),
                )
                .await;
                RenewOutcome::Failed
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

/// Starts background maintenance for `config`: a renewal check every
/// [`Config::renew_check_interval`] and an OCSP check ([`Config::check_ocsp`])
/// every [`Config::ocsp_check_interval`], until `config.cache().stop()`. A
/// check in progress finishes its current certificate before stopping.
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
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ocsp_interval = tokio::time::interval(config.ocsp_check_interval());
        ocsp_interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_minute_to_thirty_days() {
        assert_eq!(retry_backoff(1), Duration::from_secs(60));
        assert_eq!(retry_backoff(2), Duration::from_secs(120));
        assert_eq!(retry_backoff(5), Duration::from_secs(960));
        assert_eq!(retry_backoff(16), Duration::from_secs(60 << 15));
        assert_eq!(retry_backoff(17), MAX_RETRY_BACKOFF);
        assert_eq!(retry_backoff(u32::MAX), MAX_RETRY_BACKOFF);
        for attempt in 1..40 {
            let j = jittered_backoff(attempt).as_secs_f64();
            let b = retry_backoff(attempt).as_secs_f64();
            assert!(
                j >= b * 0.9 - 1e-6 && j <= (b * 1.1).min(MAX_RETRY_BACKOFF.as_secs_f64()) + 1e-6
            );
        }
    }

    #[test]
    fn random_times_fall_inside_the_window() {
        let start = UNIX_EPOCH + Duration::from_secs(1000);
        let end = start + Duration::from_secs(100);
        for _ in 0..100 {
            let t = random_in(start, end);
            assert!(t >= start && t < end);
        }
        assert_eq!(random_in(end, start), end);
    }
}
