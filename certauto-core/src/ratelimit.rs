//! A sliding-window rate limiter for issuance requests.
//!
//! [`Config`](crate::Config) keeps one per issuer (CA) and makes every
//! issuance wait for it: first obtains, renewals from maintenance and (later)
//! on-demand issuance all share it, so a burst never overwhelms a CA.
//!
//! ```
//! # async fn demo() {
//! use std::time::Duration;
//! use certauto_core::RateLimiter;
//!
//! let limiter = RateLimiter::new(2, Duration::from_secs(60));
//! limiter.acquire().await;
//! limiter.acquire().await;
//! assert!(!limiter.try_acquire()); // a third would wait for the window to slide
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The default issuance rate per CA: this many events...
pub const DEFAULT_RATE_LIMIT_EVENTS: u32 = 20;
/// ...per this window.
pub const DEFAULT_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(60);
/// The longest rate-limit window accepted (a week).
pub const MAX_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Allows at most `max` events in any `window`.
#[derive(Debug)]
pub struct RateLimiter {
    max: u32,
    window: Duration,
    events: Mutex<VecDeque<Instant>>,
}

impl RateLimiter {
    /// A limiter allowing `max` events (at least 1) per `window` (at most
    /// [`MAX_RATE_LIMIT_WINDOW`]; a longer one is clamped).
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window: window.min(MAX_RATE_LIMIT_WINDOW),
            events: Mutex::new(VecDeque::new()),
        }
    }

    /// The allowed events per window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records an event now if allowed; otherwise returns when one will be.
    fn try_at(&self, now: Instant) -> Result<(), Instant> {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        while events
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            events.pop_front();
        }
        if events.len() < self.max as usize {
            events.push_back(now);
            return Ok(());
        }
        // The oldest event leaves the window first.
        Err(events
            .front()
            .and_then(|t| t.checked_add(self.window))
            .unwrap_or(now))
    }

    /// How long from now until an event would be allowed (zero when one is
    /// allowed now). Records nothing: the issuer set uses it to prefer an
    /// issuer whose limiter allows an order now, and to wait for the one
    /// that allows one soonest.
    pub fn ready_in(&self) -> Duration {
        let now = Instant::now();
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let live = events
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.window);
        if live.clone().count() < self.max as usize {
            return Duration::ZERO;
        }
        // The oldest event still in the window leaves it first.
        live.min()
            .and_then(|t| t.checked_add(self.window))
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// Records an event if the limit allows it now.
    pub fn try_acquire(&self) -> bool {
        self.try_at(Instant::now()).is_ok()
    }

    /// Waits until an event is allowed, then records it. The wait is at most
    /// one window per event queued ahead.
    pub async fn acquire(&self) {
        loop {
            match self.try_at(Instant::now()) {
                Ok(()) => return,
                Err(at) => {
                    tracing::debug!(wait = ?at.saturating_duration_since(Instant::now()), "issuance rate limit reached; waiting");
                    tokio::time::sleep_until(at).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_max_per_window_then_waits_for_the_window() {
        let limiter = RateLimiter::new(3, Duration::from_secs(10));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(Instant::now(), start, "the first three pass at once");
        assert!(!limiter.try_acquire());
        // The paused clock advances exactly to when the oldest leaves the window.
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        // A window later, the whole budget is back.
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..3 {
            assert!(limiter.try_acquire());
        }
        assert!(!limiter.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn ready_in_says_when_the_next_event_is_allowed() {
        let limiter = RateLimiter::new(2, Duration::from_secs(10));
        assert_eq!(limiter.ready_in(), Duration::ZERO);
        assert!(limiter.try_acquire());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(limiter.try_acquire());
        assert_eq!(limiter.ready_in(), Duration::from_secs(7));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(limiter.ready_in(), Duration::ZERO);
        assert!(limiter.try_acquire());
    }

    #[test]
    fn zero_max_means_one() {
        assert_eq!(RateLimiter::new(0, Duration::from_secs(1)).max(), 1);
    }
}
