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
use crate::storage::{StorageError, keys};

/// The retry schedules, by primary name: `None` inside means "loaded, no failure".
pub(crate) type Retries = HashMap<Identifier, Option<RetryState>>;

/// The retry schedule of one certificate, kept in storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RetryState {
    /// Failures so far.
    pub(crate) attempts: u32,
    /// When the next attempt is due, Unix seconds.
    pub(crate) next_attempt: u64,
    /// When the last attempt failed, Unix seconds (absent in records written
    /// before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failed_at: Option<u64>,
    /// The last attempt's error with its causes, at most
    /// [`MAX_ERROR_LEN`] bytes (absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
}

/// The longest error message kept in a retry record (longer ones are cut at
/// a character boundary and end with `…`).
pub(crate) const MAX_ERROR_LEN: usize = 1024;

/// `message` cut to at most [`MAX_ERROR_LEN`] bytes.
fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

impl RetryState {
    /// When the next attempt is due.
    pub(crate) fn due_at(&self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.next_attempt))
            .unwrap_or(UNIX_EPOCH)
    }

    /// When the last attempt failed, if the record says.
    pub(crate) fn failed_time(&self) -> Option<SystemTime> {
        self.failed_at
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
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

    /// The retry schedule of `primary` if this process has read it already
    /// (`Some(None)`: read, no failure); never reads storage.
    pub(crate) fn known_retry_state(&self, primary: &Identifier) -> Option<Option<RetryState>> {
        self.retries().get(primary).cloned()
    }

    /// The retry schedule of `primary`, loaded from storage the first time.
    ///
    /// A storage error other than not-found is returned and nothing is
    /// remembered: the schedule is read again next time (it may hold a
    /// backoff that must not be taken for "no failure").
    pub(crate) async fn retry_state(
        &self,
        primary: &Identifier,
    ) -> Result<Option<RetryState>, StorageError> {
        if let Some(retry) = self.retries().get(primary).cloned() {
            return Ok(retry);
        }
        let loaded = match self.storage().load(&keys::retry_schedule(primary)).await {
            Ok(bytes) => match serde_json::from_slice::<RetryState>(&bytes) {
                Ok(state) => Some(state),
                Err(e) => {
                    tracing::warn!(name = %primary, error = %e, "unreadable retry schedule record; treated as no failure");
                    None
                }
            },
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                tracing::warn!(name = %primary, error = %ErrorChain(&e), "could not load the retry schedule; read again next time");
                return Err(e);
            }
        };
        self.retries().insert(primary.clone(), loaded.clone());
        if loaded.is_some() {
            self.retry_scheduled().notify_one();
        }
        Ok(loaded)
    }

    /// Whether a failed obtain or renewal of `primary` is waiting for its
    /// retry time (the schedule is persisted, so this holds across restarts).
    /// A schedule that cannot be read does not count as pending (see
    /// [`renew_with_backoff`](Self::renew_with_backoff)).
    pub(crate) async fn retry_pending(&self, primary: &Identifier) -> bool {
        let now = self.clock().now();
        match self.retry_state(primary).await {
            Ok(retry) => retry.is_some_and(|r| !r.is_due(now)),
            Err(_) => false,
        }
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
        // Not readable (logged by `retry_state`, not remembered, read again
        // next time): the attempt goes ahead as if no failure were recorded.
        // Waiting instead would never renew a name whose record stays
        // unreadable (a key the storage refuses, a permission error); a
        // persisted backoff is then not honoured while it cannot be read.
        let previous = self.retry_state(&primary).await.unwrap_or(None);
        if let Some(r) = &previous
            && !r.is_due(now)
        {
            return RenewOutcome::Deferred;
        }
        let attempt = previous.map_or(1, |r| r.attempts.saturating_add(1));
        // The delay counts from the failure (the clock after the attempt),
        // not from the attempt's start.
        let backoff = jittered_backoff(attempt);
        let first_obtain = self.cache().get(&primary.as_str()).is_none();
        match self
            .renew_inner(ids, mode, Some((attempt, backoff)), reason)
            .await
        {
            Ok(_) => {
                self.set_retry_state(&primary, None).await;
                RenewOutcome::Renewed
            }
            Err(e) => {
                let failed_at = self.clock().now();
                let next = saturating_add(failed_at, backoff);
                let what = if first_obtain {
                    "obtain failed; retry scheduled"
                } else {
                    "renewal failed; retry scheduled"
                };
                tracing::warn!(name = %primary, attempt, error = %ErrorChain(&e), retry_at = ?next, "{what}");
                let message = bounded_message(ErrorChain(&e).to_string());
                self.set_retry_state(
                    &primary,
                    Some(RetryState {
                        attempts: attempt,
                        next_attempt: unix(next),
                        failed_at: Some(unix(failed_at)),
                        last_error: Some(message),
                    }),
                )
                .await;
                RenewOutcome::Failed(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Clock;

    /// An issuer whose orders take `takes` of the config's clock and fail.
    #[derive(Debug)]
    struct SlowFailingCa {
        clock: std::sync::Arc<crate::ManualClock>,
        takes: Duration,
    }

    #[async_trait::async_trait]
    impl crate::issuer::Issuer for SlowFailingCa {
        fn issuer_key(&self) -> String {
            "slow-failing-ca".to_owned()
        }

        async fn issue(
            &self,
            _: &crate::issuer::IssueRequest<'_>,
        ) -> Result<crate::issuer::IssuedCertificate, Error> {
            self.clock.advance(self.takes);
            Err(crate::error::AcmeError::InvalidResponse {
                url: "fault-injector".into(),
                reason: "refused".into(),
            }
            .into())
        }

        async fn revoke(
            &self,
            _: &crate::Certificate,
            _: Option<crate::acme::types::RevocationReason>,
        ) -> Result<(), Error> {
            Ok(())
        }
    }

    /// The first retry is due a minute (±10 %) after the attempt failed,
    /// however long the attempt took, and the snapshot gives that backoff.
    #[tokio::test]
    async fn the_retry_delay_counts_from_the_failure() {
        #![allow(clippy::unwrap_used)]
        let start = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let clock = std::sync::Arc::new(crate::ManualClock::new(start));
        let takes = Duration::from_secs(600);
        let config = Config::builder()
            .storage(std::sync::Arc::new(crate::MemoryStorage::new()))
            .clock(clock.clone())
            .issuer(SlowFailingCa {
                clock: clock.clone(),
                takes,
            })
            .build();
        let id = Identifier::parse("slow.test").unwrap();
        // manage goes through renew_with_backoff; its attempt fails.
        assert!(config.manage(["slow.test"]).await.is_err());
        let state = config.retry_state(&id).await.unwrap().unwrap();
        let failed_at = unix(start + takes);
        assert_eq!(state.failed_at, Some(failed_at));
        let delay = state.next_attempt - failed_at;
        assert!((54..=66).contains(&delay), "{state:?}");
        assert!(!state.is_due(clock.now()));

        let status = config.status().await;
        let c = &status.certificates[0];
        assert!(
            matches!(
                c.next_renewal.reason,
                crate::status::RenewalReason::Retry {
                    attempt: 2,
                    backoff_secs: Some(secs)
                } if secs == delay
            ),
            "{c:?}"
        );
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        assert_eq!(bounded_message("short".to_owned()), "short");
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = bounded_message(long);
        assert!(cut.len() <= MAX_ERROR_LEN, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn records_without_the_failure_read_and_new_ones_round_trip() {
        let old: RetryState = serde_json::from_str(r#"{"attempts":2,"next_attempt":100}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((old.failed_at, old.last_error.as_deref()), (None, None));
        assert_eq!(old.failed_time(), None);
        let new = RetryState {
            last_error: Some("refused".to_owned()),
            failed_at: Some(40),
            ..old
        };
        let json = serde_json::to_string(&new).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"attempts":2,"next_attempt":100,"failed_at":40,"last_error":"refused"}"#
        );
    }
}
