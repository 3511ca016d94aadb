//! When a certificate is due: the CA's ARI window (RFC 9773), else the
//! renewal ratio.
//!
//! [`Config::renewal_time`] asks the certificate's issuer for its
//! `renewalInfo` window, chooses a random time inside it once per window (the
//! same window keeps its time across fetches, a moved window gets a new one),
//! and asks again after the CA's `Retry-After` (clamped to between a minute
//! and a day; 6 hours when the CA does not say). Without ARI (no AKI in the
//! certificate, an issuer with no such notion, or a failed request) the ratio
//! rules: due when less than [`Config::renewal_ratio`] of the lifetime
//! remains (half of it for short-lived certificates, see
//! [`renewal_ratio_for`](crate::renewal_ratio_for)). A failed request is retried an hour later, a CA with no window a
//! day later. Deciding reads no storage: only the cache and the state kept in
//! [`state`](super::state).

use std::time::{Duration, SystemTime};

use crate::acme::RenewalInfo;
use crate::cache::CachedCert;
use crate::config::Config;
use crate::config::backoff::{random_in, saturating_add};
use crate::error::ErrorChain;
use crate::identifier::Identifier;

use super::state::{AriState, AriWindow};

/// How long to wait before asking the CA for a new ARI window, when it does
/// not say (`Retry-After`).
pub(crate) const ARI_DEFAULT_RECHECK: Duration = Duration::from_secs(6 * 3600);
/// The bounds on the CA's `Retry-After`.
pub(crate) const ARI_MIN_RECHECK: Duration = Duration::from_secs(60);
pub(crate) const ARI_MAX_RECHECK: Duration = Duration::from_secs(24 * 3600);
/// After a failed ARI request, the ratio rules until this much later.
pub(crate) const ARI_ERROR_RECHECK: Duration = Duration::from_secs(3600);

/// What the CA answered to one `renewalInfo` request.
#[derive(Debug, Clone, Copy)]
enum Answer<'a> {
    /// A window.
    Window(&'a RenewalInfo),
    /// The issuer has no ARI.
    NoWindow,
    /// The request failed (logged by the caller).
    Failed,
}

/// When maintenance will renew a cached certificate, and on what basis: what
/// [`Config::renewal_time`] decides, read from the kept ARI state without
/// asking the CA (for [`Config::status`](crate::Config::status)).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planned {
    /// The renewal time (a time in the past means at the next check).
    pub(crate) at: SystemTime,
    /// Why then.
    pub(crate) basis: Basis,
}

/// The basis of a [`Planned`] renewal time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Basis {
    /// The renewal ratio (the one applied, after the short-lived rule);
    /// `ari_pending` when the issuer will be asked for an ARI window at the
    /// next check (the certificate has an ARI CertID, its issuer is an ACME
    /// CA, and no answer is kept yet).
    Ratio { ratio: f64, ari_pending: bool },
    /// The time chosen in the CA's ARI window.
    Ari {
        window: AriWindow,
        explanation_url: Option<String>,
        next_fetch: SystemTime,
    },
}

impl Config {
    /// When `entry` (serving `primary`) is due: the time chosen in its ARI
    /// window, else the ratio. Fetches the window when the kept one is stale.
    pub(super) async fn renewal_time(
        &self,
        primary: &Identifier,
        entry: &CachedCert,
        now: SystemTime,
    ) -> SystemTime {
        let (Some(cert_id), Some(issuer)) =
            (entry.ari_cert_id(), self.issuer_by_key(entry.issuer_key()))
        else {
            return self.plan(entry, None).at;
        };
        let kept = self.kept_ari_state(primary, entry);
        let state = match kept {
            Some(state) if now < state.next_fetch => state,
            previous => {
                let answer = issuer.renewal_info(cert_id).await;
                let answer = match &answer {
                    Ok(Some(info)) => Answer::Window(info),
                    Ok(None) => Answer::NoWindow,
                    Err(e) => {
                        tracing::warn!(serial = entry.serial(), error = %ErrorChain(e), "ARI request failed; using the renewal ratio");
                        Answer::Failed
                    }
                };
                let fetched = next_state(
                    entry.serial(),
                    previous.and_then(|state| state.window),
                    answer,
                    now,
                );
                if let Answer::Window(info) = answer {
                    let recheck = recheck_after(info.retry_after);
                    tracing::debug!(serial = entry.serial(), ?recheck, "ARI window fetched");
                }
                self.maintenance_states()
                    .insert(primary.clone(), fetched.clone());
                fetched
            }
        };
        self.plan(entry, Some(&state)).at
    }

    /// The ARI state kept for `entry` (serving `primary`), if it is about
    /// this certificate.
    fn kept_ari_state(&self, primary: &Identifier, entry: &CachedCert) -> Option<AriState> {
        self.maintenance_states()
            .get(primary)
            .filter(|a| a.serial == entry.serial())
            .cloned()
    }

    /// What [`renewal_time`](Self::renewal_time) would decide for `entry`
    /// (serving `primary`) from the state kept now, without asking the CA.
    pub(crate) fn planned_renewal(&self, primary: &Identifier, entry: &CachedCert) -> Planned {
        // The local CA has no ARI (its `renewal_info` is the trait's `None`).
        let ari = entry.ari_cert_id().is_some()
            && entry.issuer_key() != crate::issuer::LOCAL_CA_ISSUER_KEY
            && self.issuer_by_key(entry.issuer_key()).is_some();
        if !ari {
            return self.plan(entry, None);
        }
        match self.kept_ari_state(primary, entry) {
            Some(state) => self.plan(entry, Some(&state)),
            None => {
                let mut planned = self.plan(entry, None);
                if let Basis::Ratio { ari_pending, .. } = &mut planned.basis {
                    *ari_pending = true;
                }
                planned
            }
        }
    }

    /// The renewal time of `entry` given its ARI `state` (`None`: no ARI).
    fn plan(&self, entry: &CachedCert, state: Option<&AriState>) -> Planned {
        let by_ratio = ratio_time(entry.not_before(), entry.not_after(), self.renewal_ratio());
        let window = state.and_then(|s| s.window);
        let at = due_time(window, entry.not_after(), by_ratio);
        let basis = match (state, window) {
            (Some(state), Some(window)) => Basis::Ari {
                window,
                explanation_url: state.explanation_url.clone(),
                next_fetch: state.next_fetch,
            },
            _ => {
                let lifetime = entry
                    .not_after()
                    .duration_since(entry.not_before())
                    .unwrap_or(Duration::ZERO);
                Basis::Ratio {
                    ratio: crate::certificate::renewal_ratio_for(lifetime, self.renewal_ratio()),
                    ari_pending: false,
                }
            }
        };
        Planned { at, basis }
    }
}

/// The renewal time by the ratio: when less than `ratio` of the lifetime
/// `[not_before, not_after]` remains, or half of it for a short-lived
/// certificate ([`crate::certificate::renewal_ratio_for`]).
fn ratio_time(not_before: SystemTime, not_after: SystemTime, ratio: f64) -> SystemTime {
    crate::certificate::renewal_time(not_before, not_after, ratio)
}

/// How long until the CA is asked again, from its `Retry-After`.
fn recheck_after(retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or(ARI_DEFAULT_RECHECK)
        .clamp(ARI_MIN_RECHECK, ARI_MAX_RECHECK)
}

/// The state of certificate `serial` after the CA's `answer` at `now`;
/// `previous` is the window kept from the last answer, whose chosen time
/// stays when the CA still gives that window.
fn next_state(
    serial: &str,
    previous: Option<AriWindow>,
    answer: Answer<'_>,
    now: SystemTime,
) -> AriState {
    let (window, explanation_url, recheck) = match answer {
        Answer::Window(info) => {
            let chosen = previous
                .filter(|w| w.start == info.window_start && w.end == info.window_end)
                .map_or_else(
                    || random_in(info.window_start, info.window_end),
                    |w| w.chosen,
                );
            let window = AriWindow {
                start: info.window_start,
                end: info.window_end,
                chosen,
            };
            (
                Some(window),
                info.explanation_url.clone(),
                recheck_after(info.retry_after),
            )
        }
        Answer::NoWindow => (None, None, ARI_MAX_RECHECK),
        Answer::Failed => (None, None, ARI_ERROR_RECHECK),
    };
    AriState {
        serial: serial.to_owned(),
        window,
        explanation_url,
        next_fetch: saturating_add(now, recheck),
    }
}

/// When a certificate expiring at `not_after` is due: the time chosen in its
/// window (never after expiry), else `by_ratio`.
fn due_time(window: Option<AriWindow>, not_after: SystemTime, by_ratio: SystemTime) -> SystemTime {
    match window {
        Some(w) => w.chosen.min(not_after),
        None => by_ratio,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::UNIX_EPOCH;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn info(start: SystemTime, end: SystemTime, retry_after: Option<Duration>) -> RenewalInfo {
        RenewalInfo {
            window_start: start,
            window_end: end,
            explanation_url: None,
            retry_after,
        }
    }

    #[test]
    fn the_ratio_is_measured_from_the_end_of_the_lifetime() {
        let nb = at(1_000_000);
        let near = |a: SystemTime, b: SystemTime| {
            let d = a.duration_since(b).unwrap_or_else(|e| e.duration());
            assert!(d < Duration::from_millis(1), "{a:?} != {b:?}");
        };
        near(ratio_time(nb, nb + 90 * DAY, 1.0 / 3.0), nb + 60 * DAY);
        near(ratio_time(nb, nb + 90 * DAY, 0.5), nb + 45 * DAY);
        // A certificate expiring before it starts is due at once.
        assert_eq!(ratio_time(nb, at(0), 1.0 / 3.0), nb);
    }

    #[test]
    fn short_lived_certificates_renew_at_half_their_life() {
        let nb = at(1_000_000);
        let near = |a: SystemTime, b: SystemTime| {
            let d = a.duration_since(b).unwrap_or_else(|e| e.duration());
            assert!(d < Duration::from_millis(1), "{a:?} != {b:?}");
        };
        // Six days (Let's Encrypt's `shortlived`): at half, not at two thirds.
        near(ratio_time(nb, nb + 6 * DAY, 1.0 / 3.0), nb + 3 * DAY);
        // The boundary is inclusive; just over it the configured ratio rules.
        let ten = crate::certificate::SHORT_LIVED_MAX_LIFETIME;
        near(ratio_time(nb, nb + ten, 1.0 / 3.0), nb + ten / 2);
        near(ratio_time(nb, nb + 11 * DAY, 0.25), nb + 11 * DAY * 3 / 4);
        // A configured ratio above a half still applies to short-lived ones.
        near(ratio_time(nb, nb + 6 * DAY, 0.75), nb + 6 * DAY / 4);
    }

    #[test]
    fn retry_after_is_clamped_and_defaults_to_six_hours() {
        assert_eq!(recheck_after(None), ARI_DEFAULT_RECHECK);
        assert_eq!(recheck_after(Some(Duration::ZERO)), ARI_MIN_RECHECK);
        assert_eq!(recheck_after(Some(Duration::MAX)), ARI_MAX_RECHECK);
        let two_hours = Duration::from_secs(7200);
        assert_eq!(recheck_after(Some(two_hours)), two_hours);
    }

    #[test]
    fn a_new_window_gets_a_random_time_inside_it() {
        let now = at(10_000_000);
        let (start, end) = (now + DAY, now + 2 * DAY);
        for _ in 0..50 {
            let state = next_state("01", None, Answer::Window(&info(start, end, None)), now);
            let w = state.window.unwrap();
            assert_eq!((w.start, w.end), (start, end));
            assert!(w.chosen >= start && w.chosen < end, "{w:?}");
            assert_eq!(state.next_fetch, now + ARI_DEFAULT_RECHECK);
            assert_eq!(state.serial, "01");
        }
    }

    #[test]
    fn the_same_window_keeps_its_time_and_a_moved_one_gets_a_new_time() {
        let now = at(10_000_000);
        let (start, end) = (now + DAY, now + 2 * DAY);
        // A time no random draw could give for the moved window below.
        let kept = AriWindow {
            start,
            end,
            chosen: start + Duration::from_secs(1),
        };
        let same = next_state(
            "01",
            Some(kept),
            Answer::Window(&info(start, end, None)),
            now,
        );
        assert_eq!(same.window, Some(kept));

        let (moved_start, moved_end) = (now + 3 * DAY, now + 4 * DAY);
        let moved = next_state(
            "01",
            Some(kept),
            Answer::Window(&info(
                moved_start,
                moved_end,
                Some(Duration::from_secs(600)),
            )),
            now,
        );
        let w = moved.window.unwrap();
        assert!(w.chosen >= moved_start && w.chosen < moved_end, "{w:?}");
        assert_eq!(moved.next_fetch, now + Duration::from_secs(600));
    }

    #[test]
    fn no_window_or_a_failed_request_falls_back_to_the_ratio() {
        let now = at(10_000_000);
        let none = next_state("01", None, Answer::NoWindow, now);
        assert_eq!(
            (none.window, none.next_fetch),
            (None, now + ARI_MAX_RECHECK)
        );
        let failed = next_state("01", None, Answer::Failed, now);
        assert_eq!(
            (failed.window, failed.next_fetch),
            (None, now + ARI_ERROR_RECHECK)
        );
        let by_ratio = now + 5 * DAY;
        assert_eq!(due_time(None, now + 10 * DAY, by_ratio), by_ratio);
    }

    #[test]
    fn the_chosen_time_is_never_after_expiry() {
        let now = at(10_000_000);
        let window = AriWindow {
            start: now,
            end: now + 3 * DAY,
            chosen: now + 2 * DAY,
        };
        let by_ratio = now + 5 * DAY;
        assert_eq!(due_time(Some(window), now + DAY, by_ratio), now + DAY);
        assert_eq!(
            due_time(Some(window), now + 9 * DAY, by_ratio),
            now + 2 * DAY
        );
    }
}
