//! Metrics: what CertAuto records through the [`metrics`](https://docs.rs/metrics/0.24)
//! facade, with the cargo feature `metrics`.
//!
//! CertAuto installs no recorder and no exporter: the application does
//! (for example `metrics-exporter-prometheus`), and without one every call
//! below is a no-op of the facade. Without the feature nothing is recorded
//! at all (the functions here are empty and inlined away); the names below
//! stay available either way, so dashboards and tests can refer to them.
//!
//! **Install the recorder before building the [`Config`](crate::Config)**
//! (as the examples do): the handshake-lookup and on-demand-decision
//! counters are registered once, when the `Config` is built, and kept as
//! handles, so a TLS handshake costs one atomic increment and takes no lock
//! in the recorder's registry. A recorder installed later still gets every
//! other metric, but not those two, for the `Config`s built before it.
//! For the same reason an exporter that drops idle series must not drop
//! counters (with `metrics-exporter-prometheus`, give `idle_timeout` the
//! gauge mask only): a dropped counter's held handle would count unseen.
//!
//! Every label value is one of a fixed, documented set, except `issuer` (the
//! issuer's stable key, as in storage: one per configured issuer, so bounded
//! by configuration) and the `name` of the per-certificate expiry gauge.
//!
//! | metric | type | labels (values) | unit |
//! |---|---|---|---|
//! | [`certauto_obtains_total`](OBTAINS_TOTAL) | counter | `issuer`; `result` = `success` \| `failure`; `reason` = `new` \| `on_demand` | attempts |
//! | [`certauto_renewals_total`](RENEWALS_TOTAL) | counter | `issuer`; `result` = `success` \| `failure`; `reason` = `ratio_window` \| `ari_window` \| `revoked` \| `forced` \| `on_demand` | attempts |
//! | [`certauto_issuance_duration_seconds`](ISSUANCE_DURATION_SECONDS) | histogram | `issuer`; `result` = `success` \| `failure` | seconds |
//! | [`certauto_acme_requests_total`](ACME_REQUESTS_TOTAL) | counter | `endpoint` = `directory` \| `new_nonce` \| `new_account` \| `new_order` \| `authorization` \| `challenge` \| `finalize` \| `order` \| `certificate` \| `revoke` \| `renewal_info` \| `key_change` \| `other`; `status` = the HTTP status code (`200`, `400`, …) \| `error` | requests |
//! | [`certauto_on_demand_decisions_total`](ON_DEMAND_DECISIONS_TOTAL) | counter | `decision` = `allowed` \| `denied` \| `rate_limited` | decisions |
//! | [`certauto_handshake_lookups_total`](HANDSHAKE_LOOKUPS_TOTAL) | counter | `result` = `hit` \| `miss` \| `default` | lookups |
//! | [`certauto_issuances_in_flight`](ISSUANCES_IN_FLIGHT) | gauge | none | issuances |
//! | [`certauto_lock_waits`](LOCK_WAITS) | gauge | none | tasks |
//! | [`certauto_certificate_expiry_seconds`](CERTIFICATE_EXPIRY_SECONDS) | gauge | `name` (a certificate's primary name) | seconds |
//!
//! What each one counts:
//!
//! - **Obtains and renewals** count attempts *per issuer*: a certificate
//!   whose first issuer fails and whose second succeeds counts one failure
//!   for the first and one success for the second. An attempt with a
//!   certificate already stored for the names is a renewal, else an obtain.
//!   `reason` says why it ran: `new` (a first obtain: [`Config::manage`],
//!   [`Config::obtain`], maintenance retrying a name never obtained),
//!   `on_demand` (during a TLS handshake, on-demand TLS), `ratio_window`
//!   (less than the renewal ratio of the lifetime left, also
//!   [`Config::renew`] of a due certificate), `ari_window` (the CA's ARI
//!   window, RFC 9773), `revoked` (OCSP reported the certificate revoked),
//!   `forced` ([`Config::force_renew`]). An attempt that fails before any
//!   issuer is asked counts once with `issuer` = `none` (and is a renewal
//!   when the cache holds a certificate for the name): no configured issuer
//!   accepts the names (a wildcard without DNS-01, an IP address the CA
//!   cannot certify, EAB missing, no issuers), the storage lock or the
//!   stored record could not be had, the kept certificate could not be
//!   cached, the key or the CSR could not be made, no issuer was left to
//!   try. ([`Config::manage`] refusing a name at the call, before any
//!   attempt, is not counted: it returns the error.) Why an attempt failed
//!   is in the [`Event::CertFailed`](crate::Event::CertFailed) event and the
//!   logs, not in a label.
//! - **Issuance duration**: one issuer's attempt, from the order to the
//!   certificate (or the failure); storage writes not included.
//! - **ACME requests**: every HTTP request to a CA, sent again after a
//!   transport failure or a `badNonce` counted again. `status` is the HTTP
//!   status of the answer, `error` when none came (connection refused,
//!   reset, timeout). Account fetches and updates count as `other`.
//! - **On-demand decisions**, during handshakes (the gate asked again at
//!   renewal time is not counted): `allowed` once per name let through the
//!   gate (the issuance follows); `denied` for each refused handshake (an
//!   invalid SNI, not on the allowlist, refused by the decision function or
//!   its remembered refusal, a decision timeout, no gate); `rate_limited`
//!   when the in-flight bound or the on-demand rate limiter stopped it
//!   (before the decision, or after an `allowed` when the limiter's token,
//!   taken after the storage lookup, is gone by then).
//! - **Handshake lookups**: one per certificate resolution (TLS-ALPN-01
//!   validation handshakes not counted): `hit` (the SNI's certificate),
//!   `default` (the default certificate: no SNI, or an unknown name with
//!   [`CertResolver::default_for_unknown_names`](crate::CertResolver::default_for_unknown_names)),
//!   `miss` (no certificate: the handshake fails).
//! - **In flight**: issuances running now (inside the name lock, across
//!   issuers). **Lock waits**: tasks waiting now for any storage lock
//!   CertAuto takes: a certificate's (with the in-process lock in front of
//!   it: one waiting task counts once, whichever of the two it waits for),
//!   an ACME account's, the local CA root's, the distributed-challenge
//!   cleanup's and the storage cleaning's. Both are kept by drop guards, so
//!   a cancelled task cannot leave a count behind.
//! - **Certificate expiry**: seconds until `notAfter` (negative once expired)
//!   of each managed certificate in the cache, by primary name; set when one
//!   is cached or replaced, and refreshed by every maintenance renewal check.
//!   When a certificate leaves the cache its series is set to **NaN** (the
//!   facade cannot delete a series; NaN compares false, so an alert such as
//!   `certauto_certificate_expiry_seconds < 7 * 86400` does not fire for
//!   it). One series per managed certificate: a fleet with very many names
//!   turns it off with
//!   [`ConfigBuilder::without_certificate_expiry_metric`](crate::ConfigBuilder::without_certificate_expiry_metric)
//!   (on by default).
//!
//! [`Config::manage`]: crate::Config::manage
//! [`Config::obtain`]: crate::Config::obtain
//! [`Config::renew`]: crate::Config::renew
//! [`Config::force_renew`]: crate::Config::force_renew

use std::time::Duration;

/// Counter: obtain attempts (no certificate stored for the names yet), by
/// `issuer`, `result` and `reason`.
pub const OBTAINS_TOTAL: &str = "certauto_obtains_total";
/// Counter: renewal attempts, by `issuer`, `result` and `reason`.
pub const RENEWALS_TOTAL: &str = "certauto_renewals_total";
/// Histogram: the duration of one issuer's attempt in seconds, by `issuer` and `result`.
pub const ISSUANCE_DURATION_SECONDS: &str = "certauto_issuance_duration_seconds";
/// Counter: HTTP requests to ACME CAs, by `endpoint` and `status`.
pub const ACME_REQUESTS_TOTAL: &str = "certauto_acme_requests_total";
/// Counter: on-demand TLS gate decisions, by `decision`.
pub const ON_DEMAND_DECISIONS_TOTAL: &str = "certauto_on_demand_decisions_total";
/// Counter: certificate lookups during TLS handshakes, by `result`.
pub const HANDSHAKE_LOOKUPS_TOTAL: &str = "certauto_handshake_lookups_total";
/// Gauge: issuances running now.
pub const ISSUANCES_IN_FLIGHT: &str = "certauto_issuances_in_flight";
/// Gauge: tasks waiting now for a storage lock CertAuto takes (a
/// certificate's, an account's, the local CA root's, a cleanup's; see the
/// module docs).
pub const LOCK_WAITS: &str = "certauto_lock_waits";
/// Gauge: seconds until each cached managed certificate expires, by `name`.
pub const CERTIFICATE_EXPIRY_SECONDS: &str = "certauto_certificate_expiry_seconds";

/// Histogram bucket bounds (seconds) that suit
/// [`ISSUANCE_DURATION_SECONDS`]: an issuance takes from about a second (a
/// valid authorization reused) to minutes (DNS-01 propagation, a slow CA).
/// For exporters that need buckets to render a histogram (the examples give
/// them to `metrics-exporter-prometheus`).
pub const ISSUANCE_DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Label key: the issuer's stable key.
pub const LABEL_ISSUER: &str = "issuer";
/// Label key: `success` or `failure`; for handshake lookups `hit`, `miss` or `default`.
pub const LABEL_RESULT: &str = "result";
/// Label key: why an obtain or renewal ran.
pub const LABEL_REASON: &str = "reason";
/// Label key: the ACME resource a request went to.
pub const LABEL_ENDPOINT: &str = "endpoint";
/// Label key: an HTTP status code, or `error`.
pub const LABEL_STATUS: &str = "status";
/// Label key: an on-demand decision.
pub const LABEL_DECISION: &str = "decision";
/// Label key: a certificate's primary name.
pub const LABEL_NAME: &str = "name";

/// The `issuer` label of an attempt that failed before any issuer was asked.
pub const NO_ISSUER: &str = "none";

/// Why an obtain or a renewal ran (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Asked by the application, or maintenance obtaining a name never
    /// obtained; a renewal of a stored certificate this way is due by the ratio.
    Requested,
    /// On-demand TLS, during a handshake.
    OnDemand,
    /// Maintenance: due by the renewal ratio.
    RatioWindow,
    /// Maintenance: due in the CA's ARI window.
    AriWindow,
    /// OCSP reported the certificate revoked.
    Revoked,
    /// [`Config::force_renew`](crate::Config::force_renew).
    Forced,
}

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
impl Reason {
    /// The label value, for an obtain (`renewal` false) or a renewal.
    pub(crate) fn label(self, renewal: bool) -> &'static str {
        match (self, renewal) {
            (Self::OnDemand, _) => "on_demand",
            (_, false) => "new",
            (Self::Requested | Self::RatioWindow, true) => "ratio_window",
            (Self::AriWindow, true) => "ari_window",
            (Self::Revoked, true) => "revoked",
            (Self::Forced, true) => "forced",
        }
    }
}

/// The ACME resource a request goes to (the `endpoint` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Directory,
    NewNonce,
    NewAccount,
    NewOrder,
    Authorization,
    Challenge,
    Finalize,
    Order,
    Certificate,
    Revoke,
    RenewalInfo,
    KeyChange,
    Other,
}

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
impl Endpoint {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Directory => "directory",
            Self::NewNonce => "new_nonce",
            Self::NewAccount => "new_account",
            Self::NewOrder => "new_order",
            Self::Authorization => "authorization",
            Self::Challenge => "challenge",
            Self::Finalize => "finalize",
            Self::Order => "order",
            Self::Certificate => "certificate",
            Self::Revoke => "revoke",
            Self::RenewalInfo => "renewal_info",
            Self::KeyChange => "key_change",
            Self::Other => "other",
        }
    }
}

/// An on-demand gate decision (the `decision` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allowed,
    Denied,
    RateLimited,
}

/// The result of a handshake's certificate lookup (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit,
    Miss,
    Default,
}

/// The `status` label value: the status code, or `error` without an answer.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn status_label(status: Option<u16>) -> ::std::borrow::Cow<'static, str> {
    match status {
        None => "error".into(),
        Some(200) => "200".into(),
        Some(201) => "201".into(),
        Some(204) => "204".into(),
        Some(400) => "400".into(),
        Some(403) => "403".into(),
        Some(404) => "404".into(),
        Some(429) => "429".into(),
        Some(code) => code.to_string().into(),
    }
}

#[cfg(feature = "metrics")]
fn result_label(success: bool) -> &'static str {
    if success { "success" } else { "failure" }
}

/// Records one issuer's finished attempt: the obtain or renewal counter and
/// the duration histogram.
#[inline]
pub(crate) fn issuance_finished(
    issuer: &str,
    renewal: bool,
    reason: Reason,
    success: bool,
    duration: Duration,
) {
    #[cfg(feature = "metrics")]
    {
        let name = if renewal {
            RENEWALS_TOTAL
        } else {
            OBTAINS_TOTAL
        };
        let result = result_label(success);
        ::metrics::counter!(name,
            LABEL_ISSUER => issuer.to_owned(),
            LABEL_RESULT => result,
            LABEL_REASON => reason.label(renewal))
        .increment(1);
        ::metrics::histogram!(ISSUANCE_DURATION_SECONDS,
            LABEL_ISSUER => issuer.to_owned(),
            LABEL_RESULT => result)
        .record(duration.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (issuer, renewal, reason, success, duration);
}

/// Records an attempt that failed before any issuer was asked (`issuer` = `none`).
#[inline]
pub(crate) fn attempt_failed_early(renewal: bool, reason: Reason) {
    #[cfg(feature = "metrics")]
    {
        let name = if renewal {
            RENEWALS_TOTAL
        } else {
            OBTAINS_TOTAL
        };
        ::metrics::counter!(name,
            LABEL_ISSUER => NO_ISSUER,
            LABEL_RESULT => "failure",
            LABEL_REASON => reason.label(renewal))
        .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (renewal, reason);
}

/// Records one HTTP request to a CA; `status` is `None` when no answer came.
#[inline]
pub(crate) fn acme_request(endpoint: Endpoint, status: Option<u16>) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(ACME_REQUESTS_TOTAL,
        LABEL_ENDPOINT => endpoint.as_str(),
        LABEL_STATUS => status_label(status))
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (endpoint, status);
}

/// The [`ON_DEMAND_DECISIONS_TOTAL`] counters, registered once with the
/// recorder installed then (see the module docs): recording one is an
/// atomic increment. Without the feature, empty.
#[derive(Debug, Clone)]
pub(crate) struct DecisionCounters {
    #[cfg(feature = "metrics")]
    allowed: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    denied: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    rate_limited: ::metrics::Counter,
}

impl DecisionCounters {
    /// Registers the three counters with the current recorder.
    pub(crate) fn register() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            allowed: ::metrics::counter!(ON_DEMAND_DECISIONS_TOTAL, LABEL_DECISION => "allowed"),
            #[cfg(feature = "metrics")]
            denied: ::metrics::counter!(ON_DEMAND_DECISIONS_TOTAL, LABEL_DECISION => "denied"),
            #[cfg(feature = "metrics")]
            rate_limited: ::metrics::counter!(ON_DEMAND_DECISIONS_TOTAL, LABEL_DECISION => "rate_limited"),
        }
    }

    /// Records one decision.
    #[inline]
    pub(crate) fn record(&self, decision: Decision) {
        #[cfg(feature = "metrics")]
        match decision {
            Decision::Allowed => self.allowed.increment(1),
            Decision::Denied => self.denied.increment(1),
            Decision::RateLimited => self.rate_limited.increment(1),
        }
        #[cfg(not(feature = "metrics"))]
        let _ = decision;
    }
}

/// The [`HANDSHAKE_LOOKUPS_TOTAL`] counters, registered once with the
/// recorder installed then (see the module docs): a handshake's lookup is
/// one atomic increment, with no lock and no allocation. Without the
/// feature, empty.
#[derive(Debug, Clone)]
pub(crate) struct LookupCounters {
    #[cfg(feature = "metrics")]
    hit: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    miss: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    default: ::metrics::Counter,
}

impl LookupCounters {
    /// Registers the three counters with the current recorder.
    pub(crate) fn register() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            hit: ::metrics::counter!(HANDSHAKE_LOOKUPS_TOTAL, LABEL_RESULT => "hit"),
            #[cfg(feature = "metrics")]
            miss: ::metrics::counter!(HANDSHAKE_LOOKUPS_TOTAL, LABEL_RESULT => "miss"),
            #[cfg(feature = "metrics")]
            default: ::metrics::counter!(HANDSHAKE_LOOKUPS_TOTAL, LABEL_RESULT => "default"),
        }
    }

    /// Records one lookup.
    #[inline]
    pub(crate) fn record(&self, lookup: Lookup) {
        #[cfg(feature = "metrics")]
        match lookup {
            Lookup::Hit => self.hit.increment(1),
            Lookup::Miss => self.miss.increment(1),
            Lookup::Default => self.default.increment(1),
        }
        #[cfg(not(feature = "metrics"))]
        let _ = lookup;
    }
}

/// Records one on-demand gate decision through the facade (registering
/// the counter on each call); [`DecisionCounters`] where a `Config`'s
/// on-demand state is at hand.
#[inline]
pub(crate) fn on_demand_decision(decision: Decision) {
    #[cfg(feature = "metrics")]
    match decision {
        Decision::Allowed => {
            ::metrics::counter!(ON_DEMAND_DECISIONS_TOTAL, "decision" => "allowed").increment(1)
        }
        Decision::Denied => {
            ::metrics::counter!(ON_DEMAND_DECISIONS_TOTAL, "decision" => "denied").increment(1)
        }
        Decision::RateLimited => {
            ::metrics::counter!(ON_DEMAND_DECISIONS_TOTAL, "decision" => "rate_limited")
                .increment(1)
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = decision;
}

/// Which gauge a [`GaugeGuard`] holds up.
#[derive(Debug, Clone, Copy)]
enum Held {
    InFlight,
    LockWait,
}

/// Holds one of [`ISSUANCES_IN_FLIGHT`] or [`LOCK_WAITS`] up by one while it
/// lives: dropping it (at the end, or when the future holding it is
/// cancelled) takes the one back.
#[derive(Debug)]
#[must_use = "the gauge goes back down when the guard is dropped"]
pub(crate) struct GaugeGuard(#[cfg_attr(not(feature = "metrics"), allow(dead_code))] Held);

impl GaugeGuard {
    #[inline]
    fn new(held: Held) -> Self {
        #[cfg(feature = "metrics")]
        match held {
            Held::InFlight => ::metrics::gauge!(ISSUANCES_IN_FLIGHT).increment(1.0),
            Held::LockWait => ::metrics::gauge!(LOCK_WAITS).increment(1.0),
        }
        Self(held)
    }
}

impl Drop for GaugeGuard {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        match self.0 {
            Held::InFlight => ::metrics::gauge!(ISSUANCES_IN_FLIGHT).decrement(1.0),
            Held::LockWait => ::metrics::gauge!(LOCK_WAITS).decrement(1.0),
        }
    }
}

/// An issuance starts: [`ISSUANCES_IN_FLIGHT`] is one higher while the guard lives.
#[inline]
pub(crate) fn issuance_started() -> GaugeGuard {
    GaugeGuard::new(Held::InFlight)
}

/// A task starts waiting for a lock: [`LOCK_WAITS`] is one higher while the guard lives.
#[inline]
pub(crate) fn lock_wait_started() -> GaugeGuard {
    GaugeGuard::new(Held::LockWait)
}

/// Sets the expiry gauge of the certificate whose primary name is `name`;
/// `None` (it left the cache) sets it to NaN.
#[inline]
pub(crate) fn certificate_expiry(name: String, seconds: Option<f64>) {
    #[cfg(feature = "metrics")]
    ::metrics::gauge!(CERTIFICATE_EXPIRY_SECONDS, LABEL_NAME => name)
        .set(seconds.unwrap_or(f64::NAN));
    #[cfg(not(feature = "metrics"))]
    let _ = (name, seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason maps to one documented value per kind.
    #[test]
    fn reason_labels() {
        let obtains: Vec<_> = [
            Reason::Requested,
            Reason::OnDemand,
            Reason::RatioWindow,
            Reason::AriWindow,
            Reason::Revoked,
            Reason::Forced,
        ]
        .iter()
        .map(|r| r.label(false))
        .collect();
        assert_eq!(obtains, ["new", "on_demand", "new", "new", "new", "new"]);
        let renewals: Vec<_> = [
            Reason::Requested,
            Reason::OnDemand,
            Reason::RatioWindow,
            Reason::AriWindow,
            Reason::Revoked,
            Reason::Forced,
        ]
        .iter()
        .map(|r| r.label(true))
        .collect();
        assert_eq!(
            renewals,
            [
                "ratio_window",
                "on_demand",
                "ratio_window",
                "ari_window",
                "revoked",
                "forced"
            ]
        );
    }

    #[test]
    fn status_labels() {
        assert_eq!(status_label(None), "error");
        assert_eq!(status_label(Some(200)), "200");
        assert_eq!(status_label(Some(503)), "503");
    }

    /// Every endpoint value is in the module docs' table.
    #[test]
    fn endpoint_labels_are_documented() {
        let docs = include_str!("metrics.rs");
        for e in [
            Endpoint::Directory,
            Endpoint::NewNonce,
            Endpoint::NewAccount,
            Endpoint::NewOrder,
            Endpoint::Authorization,
            Endpoint::Challenge,
            Endpoint::Finalize,
            Endpoint::Order,
            Endpoint::Certificate,
            Endpoint::Revoke,
            Endpoint::RenewalInfo,
            Endpoint::KeyChange,
            Endpoint::Other,
        ] {
            assert!(docs.contains(&format!("`{}`", e.as_str())), "{e:?}");
        }
    }
}
