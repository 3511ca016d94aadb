//! Typed per-certificate maintenance state: the ARI window of the serving
//! certificate and the retry schedule of a failed obtain or renewal.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::identifier::Identifier;

/// The maintenance state of every managed certificate, by primary name.
pub(crate) type States = HashMap<Identifier, CertState>;

/// The maintenance state of one certificate, in memory.
#[derive(Debug, Default)]
pub(crate) struct CertState {
    /// The CA's renewal window for the certificate now serving, if fetched.
    pub(crate) ari: Option<AriState>,
    /// The retry schedule, once loaded from storage (`None` inside: no failure).
    pub(crate) retry: Option<Option<RetryState>>,
}

/// What the CA said about when to renew one certificate (RFC 9773).
#[derive(Debug, Clone)]
pub(crate) struct AriState {
    /// The certificate this is about; state for another serial is stale.
    pub(crate) serial: String,
    /// The window and the time chosen in it; `None` when the CA has no ARI or failed.
    pub(crate) window: Option<AriWindow>,
    /// When to ask the CA again.
    pub(crate) next_fetch: SystemTime,
}

/// An ARI window with the renewal time chosen in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AriWindow {
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) chosen: SystemTime,
}

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
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The earliest retry due among `states` (only schedules already loaded).
pub(crate) fn next_retry(states: &States) -> Option<SystemTime> {
    states
        .values()
        .filter_map(|s| s.retry.as_ref()?.as_ref())
        .map(RetryState::due_at)
        .min()
}
