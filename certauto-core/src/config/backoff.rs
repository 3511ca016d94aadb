//! Retry delays: exponential backoff with jitter, and random times in windows.

use std::time::{Duration, SystemTime};

/// The first retry delay after a failure.
pub const MIN_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// The longest delay between retries.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30 * 24 * 3600);
/// The jitter on each retry delay: it is moved by up to this fraction either way.
pub(crate) const RETRY_JITTER: f64 = 0.1;

/// The delay before retry number `attempt + 1` (`attempt` ≥ 1 failures so
/// far): a minute doubled per failure, at most 30 days, before jitter.
pub(crate) fn retry_backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    MIN_RETRY_BACKOFF
        .checked_mul(1u32 << exp)
        .unwrap_or(MAX_RETRY_BACKOFF)
        .min(MAX_RETRY_BACKOFF)
}

/// A uniformly random fraction in [0, 1).
pub(crate) fn random_fraction() -> f64 {
    let mut b = [0u8; 4];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// [`retry_backoff`] with ±10 % jitter, still at most 30 days.
pub(crate) fn jittered_backoff(attempt: u32) -> Duration {
    let base = retry_backoff(attempt).as_secs_f64();
    let jittered = base * (1.0 - RETRY_JITTER + 2.0 * RETRY_JITTER * random_fraction());
    Duration::try_from_secs_f64(jittered)
        .unwrap_or(MAX_RETRY_BACKOFF)
        .min(MAX_RETRY_BACKOFF)
}

/// A point chosen uniformly at random in `[start, end)`.
pub(crate) fn random_in(start: SystemTime, end: SystemTime) -> SystemTime {
    let span = end.duration_since(start).unwrap_or(Duration::ZERO);
    start
        .checked_add(span.mul_f64(random_fraction()))
        .unwrap_or(start)
}

/// `t + d`, or `t` pushed as far as representable when that overflows.
pub(crate) fn saturating_add(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .or_else(|| t.checked_add(MAX_RETRY_BACKOFF))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
