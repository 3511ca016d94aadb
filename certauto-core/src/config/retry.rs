//! The retry schedule of failed obtains and renewals: exponential backoff
//! with jitter, persisted in storage so a restarted process resumes it, and
//! the one entry point every attempt goes through ([`Config::renew_with_backoff`]).
//! Maintenance decides *when* to renew; this decides whether an attempt may
//! run now and records its outcome.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::backoff::{jittered_backoff, saturating_add};
use super::{Config, RenewMode};
use crate::error::{Error, ErrorChain};
use crate::identifier::Identifier;
use crate::storage::keys;

/// The retry schedules, by primary name: `None` inside means "loaded, no failure".
pub(crate) type Retries = HashMap<Identifier, Option<RetryState>>;

/// The retry schedule of one certificate, kept in storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RetryState {
    /// Failures so far.
    pub(crate) attempts: u32,
    /// When the next attempt is due, Unix seconds.
    pub(crate) next_attempt: u64,
}

impl RetryState {
    /// When the next attempt is due.
    pub(crate) fn due_at(&self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.next_attempt))
            .unwrap_or(UNIX_EPOCH)
    }

    /// Whether the next attempt is due at `now`.
    pub(crate) fn is_due(&self, now: SystemTime) -> bool {
        unix(now) >= self.next_attempt
    }
}

/// `t` in Unix seconds (0 before the epoch).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Config {
    fn retries(&self) -> std::sync::MutexGuard<'_, Retries> {
        self.inner.retries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The retry schedule of `primary`, loaded from storage the first time.
    async fn retry_state(&self, primary: &Identifier) -> Option<RetryState> {
        if let Some(retry) = self.retries().get(primary).cloned() {
            return retry;
        }
        let loaded = match self.storage().load(&keys::retry_schedule(primary)).await {
            Ok(bytes) => serde_json::from_slice::<RetryState>(&bytes).ok(),
            Err(e) => {
                if !e.is_not_found() {
                    tracing::warn!(name = %primary, error = %ErrorChain(&e), "could not load the retry schedule");
                }
                None
            }
        };
        self.retries().insert(primary.clone(), loaded.clone());
        if loaded.is_some() {
            self.retry_scheduled().notify_one();
        }
        loaded
    }

    /// Whether a failed obtain or renewal of `primary` is waiting for its
    /// retry time (the schedule is persisted, so this holds across restarts).
    pub(crate) async fn retry_pending(&self, primary: &Identifier) -> bool {
        let now = self.clock().now();
        self.retry_state(primary)
            .await
            .is_some_and(|r| !r.is_due(now))
    }

    async fn set_retry_state(&self, primary: &Identifier, retry: Option<RetryState>) {
        self.retries().insert(primary.clone(), retry.clone());
        if retry.is_some() {
            // The maintenance task sleeps until the earliest retry: wake it.
            self.retry_scheduled().notify_one();
        }
        let key = keys::retry_schedule(primary);
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
            tracing::warn!(error = %ErrorChain(&e), name = %primary, "could not persist the retry schedule");
        }
    }

    /// When the earliest scheduled retry is due, if any.
    pub(crate) fn next_retry_at(&self) -> Option<SystemTime> {
        self.retries()
            .values()
            .filter_map(|r| r.as_ref().map(RetryState::due_at))
            .min()
    }
}

/// What [`Config::renew_with_backoff`] did.
#[derive(Debug)]
pub(crate) enum RenewOutcome {
    /// Renewed, or found renewed by another instance.
    Renewed,
    /// The attempt failed; a retry is scheduled.
    Failed(Error),
    /// Not tried: a previous failure's retry time has not come yet.
    Deferred,
}

impl Config {
    /// Obtains or renews `ids` now with `mode`, honouring and updating the
    /// persisted retry schedule: renewal checks, revoked certificates,
    /// [`manage`](Config::manage) and background obtains all go through here.
    pub(crate) async fn renew_with_backoff(
        &self,
        ids: Vec<Identifier>,
        mode: RenewMode,
        reason: crate::metrics::Reason,
    ) -> RenewOutcome {
        let primary = ids[0].clone();
        let now = self.clock().now();
        let previous = self.retry_state(&primary).await;
        if let Some(r) = &previous
            && !r.is_due(now)
        {
            return RenewOutcome::Deferred;
        }
        let attempt = previous.map_or(1, |r| r.attempts.saturating_add(1));
        let next = saturating_add(now, jittered_backoff(attempt));
        let first_obtain = self.cache().get(&primary.as_str()).is_none();
        match self
            .renew_inner(ids, mode, Some((attempt, next)), reason)
            .await
        {
            Ok(_) => {
                self.set_retry_state(&primary, None).await;
                RenewOutcome::Renewed
            }
            Err(e) => {
                let what = if first_obtain {
                    "obtain failed; retry scheduled"
                } else {
                    "renewal failed; retry scheduled"
                };
                tracing::warn!(name = %primary, attempt, error = %ErrorChain(&e), retry_at = ?next, "{what}");
                self.set_retry_state(
                    &primary,
                    Some(RetryState {
                        attempts: attempt,
                        next_attempt: unix(next),
                    }),
                )
                .await;
                RenewOutcome::Failed(e)
            }
        }
    }
}
