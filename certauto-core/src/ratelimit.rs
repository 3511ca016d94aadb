//! A token-bucket rate limiter for issuance requests, and the rate limits a
//! CA publishes.
//!
//! [`Config`](crate::Config) keeps one [`RateLimiter`] per issuer (CA) and
//! makes every issuance wait for it: first obtains, renewals from maintenance
//! and on-demand issuance all share it, so a burst never overwhelms a CA.
//! Each limiter follows its issuer's [`Issuer::rate_limits`](crate::Issuer::rate_limits)
//! (an [`AcmeIssuer`](crate::AcmeIssuer) built from a [`CaPreset`](crate::CaPreset)
//! knows its CA's published limits) unless
//! [`ConfigBuilder::issuance_rate_limit`](crate::ConfigBuilder::issuance_rate_limit)
//! set one for all; an issuer that knows none gets [`DEFAULT_RATE_LIMIT_EVENTS`]
//! per [`DEFAULT_RATE_LIMIT_WINDOW`].
//!
//! A bucket holds `max` tokens and refills at `max` per `window`: a fresh
//! server may order `max` certificates at once (Let's Encrypt counts its own
//! limits the same way), then one every `window / max`.
//!
//! ```
//! # async fn demo() {
//! use std::time::Duration;
//! use certauto_core::RateLimiter;
//!
//! let limiter = RateLimiter::new(2, Duration::from_secs(60));
//! limiter.acquire().await;
//! limiter.acquire().await;
//! assert!(!limiter.try_acquire()); // a third waits for a token: 30 s
//! assert_eq!(limiter.available(), 0);
//! # }
//! ```

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The default issuance rate per CA, for issuers that know no limits of their
/// CA: a burst of this many orders...
///
/// It is Let's Encrypt's published "New Orders per Account" limit (300 per 3
/// hours, <https://letsencrypt.org/docs/rate-limits/>), the most common
/// public CA's: a fresh server with 100 names orders them all at once.
pub const DEFAULT_RATE_LIMIT_EVENTS: u32 = 300;
/// ...refilled over this window.
pub const DEFAULT_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(3 * 3600);
/// The longest rate-limit window accepted (a week).
pub const MAX_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest rate-limit window accepted (a millisecond); shorter ones are raised to it.
pub(crate) const MIN_RATE_LIMIT_WINDOW: Duration = Duration::from_millis(1);

/// A CA's published rate limits, as far as a client can respect them.
///
/// Only the new-orders limit drives the [`RateLimiter`]; the others are
/// documentation a caller may act on (they count per registered domain or
/// per IP address, which one limiter per issuer cannot track).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimits {
    /// New orders allowed per ACME account...
    pub new_orders: u32,
    /// ...per this window (a refilling bucket).
    pub new_orders_window: Duration,
    /// New certificates per registered domain per window, if the CA limits them.
    pub certificates_per_domain: Option<(u32, Duration)>,
    /// New accounts per IP address per window, if the CA limits them.
    pub accounts_per_ip: Option<(u32, Duration)>,
}

impl RateLimits {
    /// Limits of `max` new orders per account per `window`.
    pub const fn new_orders(max: u32, window: Duration) -> Self {
        Self {
            new_orders: max,
            new_orders_window: window,
            certificates_per_domain: None,
            accounts_per_ip: None,
        }
    }

    /// Adds a certificates-per-registered-domain limit.
    pub const fn with_certificates_per_domain(mut self, max: u32, window: Duration) -> Self {
        self.certificates_per_domain = Some((max, window));
        self
    }

    /// Adds a new-accounts-per-IP limit.
    pub const fn with_accounts_per_ip(mut self, max: u32, window: Duration) -> Self {
        self.accounts_per_ip = Some((max, window));
        self
    }

    /// A limiter for the new-orders limit.
    pub fn limiter(&self) -> RateLimiter {
        RateLimiter::new(self.new_orders, self.new_orders_window)
    }
}

/// A token bucket: a burst of up to `max` events, refilled at `max` per
/// `window` on average.
///
/// Implemented as a generic cell rate algorithm (one instant of state): each
/// event pushes a "theoretical arrival time" one interval (`window / max`)
/// further; an event is allowed while that time is less than a window ahead
/// of now. Every call is O(1) and allocation-free.
#[derive(Debug)]
pub struct RateLimiter {
    max: u32,
    window: Duration,
    /// `window / max`: the time one token takes to refill.
    interval: Duration,
    /// The theoretical arrival time: when the bucket is full again.
    full_at: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter allowing `max` events (at least 1) per `window` on average,
    /// with a burst of `max`. The window is clamped to between a millisecond
    /// and [`MAX_RATE_LIMIT_WINDOW`].
    pub fn new(max: u32, window: Duration) -> Self {
        let max = max.max(1);
        let window = window.clamp(MIN_RATE_LIMIT_WINDOW, MAX_RATE_LIMIT_WINDOW);
        Self {
            max,
            window,
            // At least a nanosecond: a zero interval would allow everything.
            interval: (window / max).max(Duration::from_nanos(1)),
            full_at: Mutex::new(None),
        }
    }

    /// The allowed events per window (and the burst).
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How long one token takes to refill (`window / max`).
    pub fn refill_interval(&self) -> Duration {
        self.interval
    }

    /// How many events would be allowed at once now.
    pub fn available(&self) -> u32 {
        let now = Instant::now();
        let full_at = *self.full_at.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ahead) = full_at.map(|t| t.saturating_duration_since(now)) else {
            return self.max;
        };
        // Tokens missing: ceil(ahead / interval); the rest are available.
        let interval = self.interval.as_nanos().max(1);
        let missing = ahead.as_nanos().div_ceil(interval);
        let missing = u32::try_from(missing).unwrap_or(u32::MAX);
        self.max.saturating_sub(missing)
    }

    /// How long until the next event is allowed (zero when one is allowed now).
    pub fn next_available_in(&self) -> Duration {
        let now = Instant::now();
        match self.due(now) {
            Ok(()) => Duration::ZERO,
            Err(at) => at.saturating_duration_since(now),
        }
    }

    /// `Ok` when an event is allowed at `now`, else when it will be.
    fn due(&self, now: Instant) -> Result<(), Instant> {
        let full_at = *self.full_at.lock().unwrap_or_else(|e| e.into_inner());
        self.check(full_at, now).map(|_| ())
    }

    /// With the bucket full at `full_at`: `Ok(new full_at)` when an event is
    /// allowed at `now`, else `Err(when it will be)`.
    fn check(&self, full_at: Option<Instant>, now: Instant) -> Result<Instant, Instant> {
        let start = full_at.map_or(now, |t| t.max(now));
        let new_full = start.checked_add(self.interval).unwrap_or(start);
        // Allowed while the bucket would still be full within a window.
        let ahead = new_full.saturating_duration_since(now);
        if ahead <= self.window {
            Ok(new_full)
        } else {
            Err(now + (ahead - self.window))
        }
    }

    /// Records an event now if allowed; otherwise returns when one will be.
    fn try_at(&self, now: Instant) -> Result<(), Instant> {
        let mut full_at = self.full_at.lock().unwrap_or_else(|e| e.into_inner());
        let new_full = self.check(*full_at, now)?;
        *full_at = Some(new_full);
        Ok(())
    }

    /// Records an event if the limit allows it now.
    pub fn try_acquire(&self) -> bool {
        self.try_at(Instant::now()).is_ok()
    }

    /// Waits until an event is allowed, then records it. Each wait is at
    /// most one refill interval per event queued ahead.
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_max_then_one_per_refill_interval() {
        let limiter = RateLimiter::new(3, Duration::from_secs(30));
        assert_eq!(limiter.refill_interval(), Duration::from_secs(10));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(Instant::now(), start, "the first three pass at once");
        assert!(!limiter.try_acquire());
        assert_eq!(limiter.available(), 0);
        assert_eq!(limiter.next_available_in(), Duration::from_secs(10));
        // The paused clock advances exactly to the next token.
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(20));
        // A whole window idle refills the whole burst, and no more.
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(limiter.available(), 3);
        for _ in 0..3 {
            assert!(limiter.try_acquire());
        }
        assert!(!limiter.try_acquire());
        // Half a window refills half the tokens (rounded down).
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(limiter.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_lets_100_names_order_at_once() {
        let limiter = RateLimiter::new(DEFAULT_RATE_LIMIT_EVENTS, DEFAULT_RATE_LIMIT_WINDOW);
        let start = Instant::now();
        for _ in 0..100 {
            limiter.acquire().await;
        }
        assert_eq!(Instant::now(), start);
        assert_eq!(limiter.available(), DEFAULT_RATE_LIMIT_EVENTS - 100);
        // It refills at 300 per 3 hours: one every 36 s.
        assert_eq!(limiter.refill_interval(), Duration::from_secs(36));
    }

    #[tokio::test(start_paused = true)]
    async fn huge_values_do_not_overflow() {
        for (max, window) in [
            (u32::MAX, Duration::MAX),
            (u32::MAX, Duration::ZERO),
            (1, Duration::MAX),
            (0, Duration::from_nanos(1)),
        ] {
            let limiter = RateLimiter::new(max, window);
            assert!(limiter.window() <= MAX_RATE_LIMIT_WINDOW);
            assert!(limiter.window() >= MIN_RATE_LIMIT_WINDOW);
            for _ in 0..1000 {
                if !limiter.try_acquire() {
                    break;
                }
            }
            let _ = limiter.available();
            let _ = limiter.next_available_in();
        }
        // A week-long single token: the second waits the week, no panic.
        let limiter = RateLimiter::new(1, Duration::MAX);
        let start = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, MAX_RATE_LIMIT_WINDOW);
    }

    #[test]
    fn more_events_than_nanoseconds_in_the_window_still_limit() {
        let limiter = RateLimiter::new(u32::MAX, Duration::from_millis(1));
        assert!(limiter.try_acquire());
        assert!(limiter.refill_interval() > Duration::ZERO);
    }

    #[test]
    fn zero_max_means_one() {
        assert_eq!(RateLimiter::new(0, Duration::from_secs(1)).max(), 1);
    }
}
