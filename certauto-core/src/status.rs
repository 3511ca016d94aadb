//! [`Config::status`]: a snapshot of what CertAuto is doing for each managed
//! certificate, and why, for an admin endpoint or a CLI.
//!
//! For each managed certificate ([`CertificateStatus`], sorted by primary
//! name) the snapshot gives the certificate serving it (serial, issuer,
//! validity), when maintenance will next renew or obtain it and on what
//! basis ([`RenewalReason`]: the renewal ratio, the CA's ARI window with its
//! explanation URL, a retry after a failure with its backoff, a revocation,
//! a first obtain), the last error with its time and attempt number, the
//! OCSP staple's state ([`StapleState`]), and whether on-demand TLS obtained
//! it. Names that are managed but have no certificate yet (being obtained, or
//! failing) are listed too, without a certificate; so are certificates that
//! are stored but were evicted from the cache at its capacity (fleets larger
//! than the cache): they show [`RenewalReason::NotCached`] until maintenance
//! loads them again.
//!
//! The renewal time is computed by the functions maintenance decides with
//! (the same ARI state, ratio rule and retry schedule), from the state kept
//! now: the snapshot never asks the CA. When maintenance has not asked the CA
//! for a certificate's ARI window yet, the ratio is shown with
//! `ari_pending: true`; the next check may replace it with the CA's window.
//!
//! ## Serialised form
//!
//! Every type is `serde` `Serialize` and `Deserialize`. Times are RFC 3339
//! strings in UTC, to the second (`"2026-12-05T01:37:27Z"`); enums carry
//! their variant in a `kind` (reasons) or `state` (OCSP) field in
//! `snake_case`. A renewal time at or before [`Status::at`] means "at the next
//! maintenance check".
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use certauto_core::{Config, MemoryStorage};
//! use certauto_core::status::RenewalReason;
//!
//! let config = Config::builder().storage(Arc::new(MemoryStorage::new())).build();
//! config.manage(["localhost"]).await?;
//!
//! let status = config.status().await;
//! let localhost = &status.certificates[0];
//! assert_eq!(localhost.name, "localhost");
//! assert!(matches!(localhost.next_renewal.reason, RenewalReason::Ratio { .. }));
//!
//! let json = serde_json::to_string(&status)?; // for GET /status
//! assert!(json.contains(r#""kind":"ratio""#));
//! # Ok(()) }
//! ```

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cache::CachedCert;
use crate::config::Config;
use crate::identifier::Identifier;
use crate::maintain::ari::Basis;
use crate::ocsp::staple::StapleRecord;

/// How many certificates [`Config::status`] looks at before yielding to the
/// runtime, so a snapshot of many names never holds a worker thread long.
pub(crate) const YIELD_EVERY: usize = 256;

/// The longest one [`Config::status`] spends reading retry schedules from
/// storage and checking for stored certificates the cache does not hold (a
/// slow or unreachable storage); schedules not read by then are reported as
/// unread (`retry_schedule_unread`), certificates not looked up as
/// [`RenewalReason::NotCached`].
pub const STATUS_STORAGE_BUDGET: Duration = Duration::from_secs(5);

/// A snapshot of every managed certificate; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// When the snapshot was taken, by the config's clock.
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// One entry per managed certificate, sorted by primary name.
    pub certificates: Vec<CertificateStatus>,
}

/// The state of one managed certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CertificateStatus {
    /// The primary name (the certificate's storage and lock name).
    pub name: String,
    /// Every name the certificate is managed for, primary first.
    pub names: Vec<String>,
    /// Whether on-demand TLS obtained it (it is asked about again before
    /// each renewal) rather than the application's configuration.
    pub on_demand: bool,
    /// The certificate serving the names; `None` when none was obtained yet
    /// (being obtained, or failing: see `last_error`), or when the stored
    /// one is not in the cache ([`RenewalReason::NotCached`]).
    pub certificate: Option<ServingCertificate>,
    /// Whether an obtain or renewal of it is running in this process now.
    pub in_progress: bool,
    /// When maintenance will next renew (or obtain) it, and why.
    pub next_renewal: NextRenewal,
    /// The last failed attempt, while it is not followed by a success.
    pub last_error: Option<LastError>,
    /// The persisted retry schedule could not be read (a storage error, or
    /// not within [`STATUS_STORAGE_BUDGET`]): `next_renewal` and
    /// `last_error` leave out a failure it may hold. Maintenance does not
    /// renew the certificate until the schedule is read (it tries again at
    /// each check).
    pub retry_schedule_unread: bool,
    /// The OCSP staple served with the certificate.
    pub ocsp: StapleState,
}

/// The certificate serving a managed name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServingCertificate {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The key of the issuer it came from (an ACME CA's key, derived from its
    /// directory URL, or [`LOCAL_CA_ISSUER_KEY`](crate::LOCAL_CA_ISSUER_KEY)).
    pub issuer_key: String,
    /// The certificate's issuer distinguished name (RFC 4514 form).
    pub issuer: String,
    /// Start of validity.
    #[serde(with = "rfc3339")]
    pub not_before: SystemTime,
    /// End of validity.
    #[serde(with = "rfc3339")]
    pub not_after: SystemTime,
}

/// When maintenance will next renew (or obtain) a certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NextRenewal {
    /// The time (at or before [`Status::at`]: at the next maintenance check).
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// Why then.
    pub reason: RenewalReason,
}

/// Why a certificate is renewed (or obtained) when [`NextRenewal::at`] says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RenewalReason {
    /// Less than `ratio` of the certificate's lifetime remains then (the
    /// configured [renewal ratio](crate::Config::renewal_ratio), or
    /// half for short-lived certificates, see
    /// [`renewal_ratio_for`](crate::renewal_ratio_for)).
    Ratio {
        /// The share of the lifetime left at renewal.
        ratio: f64,
        /// Maintenance has not asked the certificate's CA for an ARI window
        /// yet and does at the next check: a window it gives then replaces
        /// the ratio.
        ari_pending: bool,
    },
    /// A time chosen at random inside the CA's ARI window (RFC 9773).
    AriWindow {
        /// The window's start.
        #[serde(with = "rfc3339")]
        window_start: SystemTime,
        /// The window's end.
        #[serde(with = "rfc3339")]
        window_end: SystemTime,
        /// The page the CA gave to explain the window, if any.
        explanation_url: Option<String>,
        /// When maintenance asks the CA again (the window may move).
        #[serde(with = "rfc3339")]
        next_check: SystemTime,
    },
    /// A retry after failed attempts, by the exponential backoff (see
    /// [`MIN_RETRY_BACKOFF`](crate::MIN_RETRY_BACKOFF)).
    Retry {
        /// The attempt this will be (failures so far plus one).
        attempt: u32,
        /// The delay from the last failure to the retry, in seconds (it
        /// counts from the failure, not from the attempt's start; `None`
        /// only for records written before the failure time was kept).
        backoff_secs: Option<u64>,
    },
    /// OCSP reported the serving certificate revoked: renewed at once (at
    /// the next check; after a failed attempt, by the first renewal check
    /// once the retry time has come, shown as [`Retry`](Self::Retry)). The
    /// revocation is remembered until a renewal replaces the certificate,
    /// even when later OCSP fetches fail.
    Revoked,
    /// Not obtained yet: obtained at the next check (or now, when
    /// `in_progress`).
    FirstObtain,
    /// A certificate is stored but not in this process's cache (evicted at
    /// the cache's capacity, earliest expiry first): maintenance loads it
    /// from storage at the next check, and renews it then if it is due.
    /// `certificate` is `None` until then. (Also reported when storage could
    /// not be asked within [`STATUS_STORAGE_BUDGET`].)
    NotCached,
}

/// The last failed obtain or renewal of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LastError {
    /// The error with its causes (at most 1 KiB).
    pub message: Option<String>,
    /// When it failed (`None` for records written before this was kept).
    #[serde(with = "rfc3339::option")]
    pub at: Option<SystemTime>,
    /// Which attempt it was (1 for the first failure, counted since the last success).
    pub attempt: u32,
}

/// The state of a certificate's OCSP staple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StapleState {
    /// The certificate names no OCSP responder (or none is served yet):
    /// nothing to staple.
    None,
    /// Not fetched yet: at the next OCSP check, or in the background.
    Pending,
    /// A good response is stapled.
    Good {
        /// When it goes stale.
        #[serde(with = "rfc3339")]
        next_update: SystemTime,
        /// When a newer one is fetched (half way through its validity).
        #[serde(with = "rfc3339")]
        refresh_at: SystemTime,
    },
    /// The responder reports the certificate revoked; it is renewed at once.
    Revoked {
        /// The revocation time the responder gave.
        #[serde(with = "rfc3339")]
        revoked_at: SystemTime,
    },
    /// The responder does not know the certificate.
    Unknown {
        /// When it answered so.
        #[serde(with = "rfc3339")]
        at: SystemTime,
        /// The `nextUpdate` of an earlier good staple still served, if any.
        #[serde(with = "rfc3339::option")]
        serving_until: Option<SystemTime>,
    },
    /// No usable response could be had.
    FetchFailing {
        /// The error, with its causes.
        error: String,
        /// When the last fetch failed.
        #[serde(with = "rfc3339")]
        at: SystemTime,
        /// The `nextUpdate` of an earlier good staple still served, if any.
        #[serde(with = "rfc3339::option")]
        serving_until: Option<SystemTime>,
    },
}

impl Config {
    /// A snapshot of every managed certificate: what serves it, when it is
    /// renewed next and why, its last error and its OCSP staple. See the
    /// [module docs](crate::status) for the form and an example.
    ///
    /// Cost: O(managed certificates) work in memory (a cache lookup, a parse
    /// of the leaf's issuer name and a few map lookups each), yielding to the
    /// runtime every 256 certificates, plus one storage read per
    /// certificate whose retry schedule this process has not read yet (the
    /// first snapshot after a start; later ones read none) and, for each
    /// managed name with no certificate in the cache, one existence check
    /// per configured issuer (to tell a certificate evicted from the cache,
    /// [`RenewalReason::NotCached`], from one never obtained), all of them
    /// within [`STATUS_STORAGE_BUDGET`] per snapshot. It never asks a CA or
    /// OCSP responder and never takes a certificate lock, so it does not wait
    /// on obtains or renewals in progress.
    pub async fn status(&self) -> Status {
        let now = self.clock().now();
        let mut managed: Vec<Vec<Identifier>> = self.managed_snapshot().as_ref().clone();
        managed.sort_by_cached_key(|ids| ids[0].to_string());
        let mut certificates = Vec::with_capacity(managed.len());
        let deadline = tokio::time::Instant::now() + STATUS_STORAGE_BUDGET;
        for (i, ids) in managed.iter().enumerate() {
            if i > 0 && i % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            certificates.push(self.certificate_status(ids, now, deadline).await);
        }
        Status {
            at: now,
            certificates,
        }
    }

    async fn certificate_status(
        &self,
        ids: &[Identifier],
        now: SystemTime,
        deadline: tokio::time::Instant,
    ) -> CertificateStatus {
        let primary = &ids[0];
        let entry = self.cache().get(&primary.as_str());
        let (retry, retry_schedule_unread) = match self.known_retry_state(primary) {
            Some(retry) => (retry, false),
            // Cancelling the read leaves nothing behind: it is kept only once read.
            None => match tokio::time::timeout_at(deadline, self.retry_state(primary)).await {
                Ok(Ok(retry)) => (retry, false),
                // A storage error: read again by the next snapshot.
                Ok(Err(_)) | Err(_) => (None, true),
            },
        };
        let in_progress = self.attempt_in_progress(primary);

        // What check_renewals does: the renewal time of the cached
        // certificate (a revoked one at once), or an obtain when none is
        // cached; either waits for a pending retry time.
        let base = match &entry {
            Some(entry) if self.is_revoked(entry) => NextRenewal {
                at: now,
                reason: RenewalReason::Revoked,
            },
            Some(entry) => {
                let planned = self.planned_renewal(primary, entry);
                let reason = match planned.basis {
                    Basis::Ratio { ratio, ari_pending } => {
                        RenewalReason::Ratio { ratio, ari_pending }
                    }
                    Basis::Ari {
                        window,
                        explanation_url,
                        next_fetch,
                    } => RenewalReason::AriWindow {
                        window_start: window.start,
                        window_end: window.end,
                        explanation_url,
                        next_check: next_fetch,
                    },
                };
                NextRenewal {
                    at: planned.at,
                    reason,
                }
            }
            None => NextRenewal {
                at: now,
                reason: if self.stored_uncached(ids, deadline).await {
                    RenewalReason::NotCached
                } else {
                    RenewalReason::FirstObtain
                },
            },
        };
        let next_renewal = match &retry {
            Some(r) if r.due_at() >= base.at => NextRenewal {
                at: r.due_at(),
                reason: RenewalReason::Retry {
                    attempt: r.attempts.saturating_add(1),
                    // A retry due before the failure time (records written
                    // when the delay counted from the attempt's start): 0.
                    backoff_secs: r
                        .failed_time()
                        .map(|failed| r.due_at().duration_since(failed).map_or(0, |d| d.as_secs())),
                },
            },
            _ => base,
        };
        let last_error = retry.as_ref().map(|r| LastError {
            message: r.last_error.clone(),
            at: r.failed_time(),
            attempt: r.attempts,
        });
        let ocsp = entry
            .as_deref()
            .map_or(StapleState::None, |e| self.ocsp_state(e));
        CertificateStatus {
            name: primary.to_string(),
            names: ids.iter().map(ToString::to_string).collect(),
            on_demand: self.is_on_demand(primary),
            certificate: entry.as_deref().map(serving_certificate),
            in_progress,
            next_renewal,
            last_error,
            retry_schedule_unread,
            ocsp,
        }
    }

    /// Whether storage holds a certificate for `ids` that the cache does not
    /// (one existence check per configured issuer, within the snapshot's
    /// storage budget); `true` when storage cannot tell (an error, or the
    /// budget spent), so a stored certificate is never reported as a first
    /// obtain.
    async fn stored_uncached(&self, ids: &[Identifier], deadline: tokio::time::Instant) -> bool {
        let keys: Vec<String> = self
            .candidate_issuers(ids)
            .iter()
            .map(|issuer| crate::storage::keys::cert_record(&issuer.issuer_key(), &ids[0]))
            .collect();
        let lookup = async {
            for key in &keys {
                match self.storage().exists(key).await {
                    Ok(false) => {}
                    Ok(true) | Err(_) => return true,
                }
            }
            false
        };
        tokio::time::timeout_at(deadline, lookup)
            .await
            .unwrap_or(true)
    }

    /// Whether OCSP reported `entry` revoked and no renewal replaced it yet
    /// (waiting for maintenance, or its renewal failed: then renewed by the
    /// first renewal check once its retry time has come), whatever later
    /// OCSP fetches gave.
    fn is_revoked(&self, entry: &CachedCert) -> bool {
        self.is_reported_revoked(entry.serial())
    }

    /// The staple state of a cached certificate, from the last stapling outcome.
    fn ocsp_state(&self, entry: &CachedCert) -> StapleState {
        if entry.ocsp_urls().is_empty() {
            return StapleState::None;
        }
        let record = self.staple_records().get(entry.serial()).cloned();
        match record {
            None | Some(StapleRecord::Pending) => StapleState::Pending,
            Some(StapleRecord::Good {
                next_update,
                refresh_at,
            }) => StapleState::Good {
                next_update,
                refresh_at,
            },
            Some(StapleRecord::Revoked { revoked_at }) => StapleState::Revoked { revoked_at },
            Some(StapleRecord::Failed {
                unknown: true,
                at,
                serving_until,
                ..
            }) => StapleState::Unknown { at, serving_until },
            Some(StapleRecord::Failed {
                error,
                at,
                serving_until,
                ..
            }) => StapleState::FetchFailing {
                error,
                at,
                serving_until,
            },
        }
    }
}

/// The serving-certificate facts of a cache entry.
fn serving_certificate(entry: &CachedCert) -> ServingCertificate {
    // The leaf parsed when it was cached; a parse failure here (it cannot
    // happen) leaves the issuer name empty rather than failing the snapshot.
    let issuer = entry
        .certified_key()
        .cert
        .first()
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, leaf)| leaf.issuer().to_string())
        .unwrap_or_default();
    ServingCertificate {
        serial: entry.serial().to_owned(),
        issuer_key: entry.issuer_key().to_owned(),
        issuer,
        not_before: entry.not_before(),
        not_after: entry.not_after(),
    }
}

/// `SystemTime` as an RFC 3339 UTC string to the second.
mod rfc3339 {
    use super::{Duration, SystemTime};
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    /// `t` as RFC 3339 UTC, to the second; times outside what RFC 3339 can
    /// write (years after 9999) are written as the last second of 9999.
    pub(super) fn format(t: SystemTime) -> String {
        let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => {
                // Before the epoch: round down to the second.
                let d = e.duration();
                let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                -whole - i64::from(d.subsec_nanos() > 0)
            }
        };
        // 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
        const MAX: i64 = 253_402_300_799;
        let dt = OffsetDateTime::from_unix_timestamp(secs.clamp(0, MAX))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        dt.format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
    }

    pub(super) fn parse(s: &str) -> Result<SystemTime, String> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("{s:?}: {e}"))?;
        let secs = dt.unix_timestamp();
        let t = if secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
        };
        t.ok_or_else(|| format!("{s:?}: out of range"))
    }

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// `Option<SystemTime>` as an RFC 3339 string or `null`.
    pub(super) mod option {
        use super::super::SystemTime;
        use serde::{Deserialize, Deserializer, Serializer};

        pub(in crate::status) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&super::format(*t)),
                None => s.serialize_none(),
            }
        }

        pub(in crate::status) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| super::parse(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde_json::Value;

    use super::*;
    use crate::storage::{MemoryStorage, keys};
    use crate::{ManualClock, Storage};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn config(clock: &Arc<ManualClock>, storage: &Arc<MemoryStorage>) -> Config {
        Config::builder()
            .storage(storage.clone())
            .clock(clock.clone())
            .build()
    }

    fn json(status: &Status) -> Value {
        serde_json::to_value(status).unwrap()
    }

    /// The local CA's 7-day leaves renew at half their life (the short-lived
    /// rule); after the clock passes that and a check renews, the snapshot
    /// shows the new serial and its own renewal time.
    #[tokio::test]
    async fn a_ratio_window_before_and_after_renewal() {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let storage = Arc::new(MemoryStorage::new());
        let config = config(&clock, &storage);
        config.manage(["b.test", "a.test"]).await.unwrap();

        let status = config.status().await;
        let names: Vec<_> = status
            .certificates
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["a.test", "b.test"], "sorted by primary name");
        let a = &status.certificates[0];
        let cert = a.certificate.clone().unwrap();
        assert_eq!(cert.serial, config.cache().get("a.test").unwrap().serial());
        assert_eq!(cert.issuer_key, crate::LOCAL_CA_ISSUER_KEY);
        assert!(cert.issuer.contains("CN="), "{}", cert.issuer);
        let next = a.next_renewal.clone();
        let half = cert.not_before + (cert.not_after.duration_since(cert.not_before).unwrap() / 2);
        let off = next
            .at
            .duration_since(half)
            .unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_millis(1), "{next:?} vs {half:?}");
        assert_eq!(
            next.reason,
            RenewalReason::Ratio {
                ratio: 0.5,
                ari_pending: false
            }
        );
        assert_eq!(
            (a.last_error.clone(), a.ocsp.clone()),
            (None, StapleState::None)
        );
        assert!(!a.on_demand && !a.in_progress);

        let value = json(&status);
        let a_json = &value["certificates"][0];
        assert_eq!(a_json["name"], "a.test");
        assert_eq!(a_json["names"], serde_json::json!(["a.test"]));
        assert_eq!(a_json["certificate"]["serial"], cert.serial.as_str());
        assert_eq!(a_json["next_renewal"]["reason"]["kind"], "ratio");
        assert_eq!(a_json["next_renewal"]["reason"]["ratio"], 0.5);
        assert_eq!(a_json["next_renewal"]["at"], rfc3339::format(next.at));
        assert_eq!(a_json["ocsp"]["state"], "none");
        assert!(a_json["last_error"].is_null());
        // It reads back, and writes the same JSON again.
        let back: Status = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(json(&back), value);

        // Past the renewal time, a maintenance pass renews.
        clock.set(next.at + Duration::from_secs(1));
        let report = config.check_renewals().await;
        assert!(report.renewed.contains(&"a.test".to_owned()), "{report:?}");
        let after = config.status().await;
        let renewed = after.certificates[0].certificate.clone().unwrap();
        assert_ne!(renewed.serial, cert.serial);
        assert_eq!(
            renewed.serial,
            config.cache().get("a.test").unwrap().serial()
        );
        // The local CA dates its leaves by the system clock: the new one's
        // renewal time is again half way through its own validity.
        let next_after = after.certificates[0].next_renewal.clone();
        assert_half_way(&next_after, &renewed);
        assert!(after.certificates[0].last_error.is_none());
    }

    /// A name whose first obtain waits for its retry time is listed without a
    /// certificate, with the retry as its next renewal; a record written
    /// before failure times and errors were kept still reads.
    #[tokio::test]
    async fn a_pending_retry_without_a_certificate() {
        let now = at(2_000_000_000);
        let clock = Arc::new(ManualClock::new(now));
        let storage = Arc::new(MemoryStorage::new());
        let id = Identifier::parse("wait.test").unwrap();
        let due = now + DAY;
        let old_record = format!(r#"{{"attempts":3,"next_attempt":{}}}"#, unix(due));
        storage
            .store(&keys::retry_schedule(&id), old_record.as_bytes())
            .await
            .unwrap();
        let config = config(&clock, &storage);
        // Deferred: the retry time has not come.
        let _ = config.manage(["wait.test"]).await;
        assert!(config.cache().get("wait.test").is_none());

        let status = config.status().await;
        let c = &status.certificates[0];
        assert_eq!(c.name, "wait.test");
        assert!(c.certificate.is_none());
        assert_eq!(
            c.next_renewal,
            NextRenewal {
                at: due,
                reason: RenewalReason::Retry {
                    attempt: 4,
                    backoff_secs: None
                }
            }
        );
        assert_eq!(
            c.last_error,
            Some(LastError {
                message: None,
                at: None,
                attempt: 3
            })
        );
        let value = json(&status);
        assert_eq!(
            value["certificates"][0]["next_renewal"]["reason"]["kind"],
            "retry"
        );
        assert_eq!(
            value["certificates"][0]["next_renewal"]["at"],
            "2033-05-19T03:33:20Z"
        );
        assert!(value["certificates"][0]["certificate"].is_null());

        // Once due, the check obtains it and the failure is gone.
        clock.set(due);
        let report = config.check_renewals().await;
        assert_eq!(report.renewed, ["wait.test"], "{report:?}");
        let c = config.status().await.certificates[0].clone();
        assert!(c.certificate.is_some() && c.last_error.is_none());
    }

    /// A certificate on-demand TLS obtained says so; one OCSP reported
    /// revoked is renewed at the next check.
    #[tokio::test]
    async fn on_demand_and_revoked_certificates() {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let config = Config::builder()
            .storage(Arc::new(MemoryStorage::new()))
            .clock(clock.clone())
            .on_demand(
                crate::OnDemandConfig::new()
                    .host_allowlist(["od.test"])
                    .unwrap(),
            )
            .build();
        config.manage(["managed.test"]).await.unwrap();
        let hello = crate::handshake::Hello {
            server_name: Some("od.test".to_owned()),
            alpn: vec![b"h2".to_vec()],
            peer: "127.0.0.1:4444".parse().unwrap(),
        };
        crate::handshake::on_demand::prepare(&config, &hello).await;
        assert!(config.cache().get("od.test").is_some());

        let status = config.status().await;
        let flags: Vec<_> = status
            .certificates
            .iter()
            .map(|c| (c.name.as_str(), c.on_demand, c.certificate.is_some()))
            .collect();
        assert_eq!(
            flags,
            [("managed.test", false, true), ("od.test", true, true)]
        );
        assert_eq!(json(&status)["certificates"][1]["on_demand"], true);

        let ids = vec![Identifier::parse("managed.test").unwrap()];
        let serial = config
            .cache()
            .get("managed.test")
            .unwrap()
            .serial()
            .to_owned();
        config.report_revoked(ids, serial.clone());
        let status = config.status().await;
        let managed = &status.certificates[0];
        assert_eq!(
            managed.next_renewal,
            NextRenewal {
                at: status.at,
                reason: RenewalReason::Revoked
            }
        );
        assert_eq!(
            json(&status)["certificates"][0]["next_renewal"]["reason"]["kind"],
            "revoked"
        );
        let report = config.check_renewals().await;
        assert_eq!(report.renewed, ["managed.test"], "{report:?}");
        let status = config.status().await;
        assert_ne!(
            status.certificates[0].certificate.as_ref().unwrap().serial,
            serial
        );
        assert!(matches!(
            status.certificates[0].next_renewal.reason,
            RenewalReason::Ratio { .. }
        ));
        config.cache().stop();
    }

    /// A managed certificate evicted from a full cache is reported as stored
    /// but not cached, not as a first obtain; a name with nothing stored is
    /// still a first obtain.
    #[tokio::test]
    async fn a_certificate_evicted_from_the_cache_is_not_a_first_obtain() {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let storage = Arc::new(MemoryStorage::new());
        let config = Config::builder()
            .storage(storage.clone())
            .clock(clock.clone())
            .cache(crate::CertCache::with_capacity(1))
            .build();
        config.manage(["a.test", "b.test"]).await.unwrap();
        let cached: Vec<bool> = ["a.test", "b.test"]
            .iter()
            .map(|n| config.cache().get(n).is_some())
            .collect();
        assert_eq!(cached.iter().filter(|c| **c).count(), 1, "{cached:?}");

        let status = config.status().await;
        for (c, cached) in status.certificates.iter().zip(cached) {
            if cached {
                assert!(c.certificate.is_some(), "{c:?}");
                assert!(
                    matches!(c.next_renewal.reason, RenewalReason::Ratio { .. }),
                    "{c:?}"
                );
            } else {
                assert!(c.certificate.is_none(), "{c:?}");
                assert_eq!(c.next_renewal.reason, RenewalReason::NotCached, "{c:?}");
                assert_eq!(c.next_renewal.at, status.at);
            }
        }
        let evicted = status
            .certificates
            .iter()
            .position(|c| c.certificate.is_none())
            .unwrap();
        assert_eq!(
            json(&status)["certificates"][evicted]["next_renewal"]["reason"]["kind"],
            "not_cached"
        );

        // Nothing stored for it: a first obtain.
        let gone = Identifier::parse(&status.certificates[evicted].name).unwrap();
        for key in storage.list("certificates", true).await.unwrap() {
            if key.contains(&*gone.as_str()) {
                storage.delete(&key).await.unwrap();
            }
        }
        let status = config.status().await;
        assert_eq!(
            status.certificates[evicted].next_renewal.reason,
            RenewalReason::FirstObtain
        );
        config.cache().stop();
    }

    /// A [`MemoryStorage`] whose retry-schedule reads never finish while
    /// `stall` is set: a storage gone unresponsive.
    #[derive(Debug, Default)]
    struct StallingRetries {
        inner: MemoryStorage,
        stall: std::sync::atomic::AtomicBool,
        /// Retry-schedule reads fail with an I/O error while set.
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Storage for StallingRetries {
        async fn store(&self, key: &str, value: &[u8]) -> Result<(), crate::StorageError> {
            self.inner.store(key, value).await
        }
        async fn store_fenced(
            &self,
            guard: &crate::LockGuard,
            key: &str,
            value: &[u8],
        ) -> Result<(), crate::StorageError> {
            self.inner.store_fenced(guard, key, value).await
        }
        async fn load(&self, key: &str) -> Result<Vec<u8>, crate::StorageError> {
            if key.starts_with("maintenance/retry/")
                && self.stall.load(std::sync::atomic::Ordering::SeqCst)
            {
                std::future::pending::<()>().await;
            }
            if key.starts_with("maintenance/retry/")
                && self.fail.load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(crate::StorageError::Io {
                    key: key.to_owned(),
                    source: std::io::Error::other("injected read failure"),
                });
            }
            self.inner.load(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), crate::StorageError> {
            self.inner.delete(key).await
        }
        async fn delete_fenced(
            &self,
            guard: &crate::LockGuard,
            key: &str,
        ) -> Result<(), crate::StorageError> {
            self.inner.delete_fenced(guard, key).await
        }
        async fn remove_stale_temporaries(
            &self,
            older_than: Duration,
        ) -> Result<crate::TemporariesSweep, crate::StorageError> {
            self.inner.remove_stale_temporaries(older_than).await
        }
        async fn exists(&self, key: &str) -> Result<bool, crate::StorageError> {
            self.inner.exists(key).await
        }
        async fn list(
            &self,
            prefix: &str,
            recursive: bool,
        ) -> Result<Vec<String>, crate::StorageError> {
            self.inner.list(prefix, recursive).await
        }
        async fn stat(&self, key: &str) -> Result<crate::KeyInfo, crate::StorageError> {
            self.inner.stat(key).await
        }
        async fn lock(&self, name: &str) -> Result<crate::LockGuard, crate::StorageError> {
            self.inner.lock(name).await
        }
    }

    /// A storage that stops answering cannot hold a snapshot beyond its
    /// budget: the schedules not read are reported unread. (Paused tokio
    /// time: the budget passes without waiting.)
    #[tokio::test(start_paused = true)]
    async fn an_unresponsive_storage_is_bounded_by_the_budget() {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let storage = Arc::new(StallingRetries::default());
        let build = || {
            Config::builder()
                .storage(storage.clone())
                .clock(clock.clone())
                .build()
        };
        build().manage(["slow.test"]).await.unwrap();
        // A second process loads the stored certificate (it is not due, so
        // its retry schedule is not read) and then storage stops answering.
        let config = build();
        config.manage(["slow.test"]).await.unwrap();
        storage
            .stall
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Paused time: the bound is virtual, it only turns a hang into a failure.
        let status = tokio::time::timeout(2 * STATUS_STORAGE_BUDGET, config.status())
            .await
            .expect("the snapshot is bounded by its storage budget");
        let c = &status.certificates[0];
        assert!(c.retry_schedule_unread && c.certificate.is_some(), "{c:?}");
        assert_eq!(
            json(&status)["certificates"][0]["retry_schedule_unread"],
            true
        );

        storage
            .stall
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let status = config.status().await;
        assert!(!status.certificates[0].retry_schedule_unread);
    }

    /// A storage error while reading a retry schedule is not taken for "no
    /// failure": nothing is remembered, each read tries again, and once
    /// storage answers the schedule reads as stored. (The snapshot's
    /// `retry_schedule_unread` for a read that does not finish is checked by
    /// the stalling test above.)
    #[tokio::test]
    async fn a_retry_schedule_read_error_is_not_cached_as_no_failure() {
        let now = at(2_000_000_000);
        let storage = Arc::new(StallingRetries::default());
        let id = Identifier::parse("flaky.test").unwrap();
        let due = now + 16 * DAY;
        let record = format!(
            r#"{{"attempts":5,"next_attempt":{},"failed_at":{},"last_error":"refused"}}"#,
            unix(due),
            unix(now)
        );
        storage
            .inner
            .store(&keys::retry_schedule(&id), record.as_bytes())
            .await
            .unwrap();
        storage
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let config = Config::builder()
            .storage(storage.clone())
            .clock(Arc::new(ManualClock::new(now)))
            .build();
        for _ in 0..2 {
            let err = config.retry_state(&id).await.unwrap_err();
            assert!(
                crate::ErrorChain(&err)
                    .to_string()
                    .contains("injected read failure")
            );
            assert_eq!(config.known_retry_state(&id), None, "nothing remembered");
        }
        storage
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let state = config.retry_state(&id).await.unwrap().unwrap();
        assert_eq!(state.attempts, 5);
        assert_eq!(config.known_retry_state(&id), Some(Some(state)));
    }

    /// A retry schedule that cannot be read does not stop a name from being
    /// obtained (a record the storage keeps refusing would otherwise block
    /// it for good): the attempt goes ahead, and its success is recorded.
    #[tokio::test]
    async fn an_unreadable_retry_schedule_does_not_block_obtaining() {
        let now = at(2_000_000_000);
        let storage = Arc::new(StallingRetries::default());
        let id = Identifier::parse("flaky.test").unwrap();
        let record = format!(
            r#"{{"attempts":5,"next_attempt":{},"failed_at":{},"last_error":"refused"}}"#,
            unix(now + 16 * DAY),
            unix(now)
        );
        storage
            .inner
            .store(&keys::retry_schedule(&id), record.as_bytes())
            .await
            .unwrap();
        storage
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let config = Config::builder()
            .storage(storage.clone())
            .clock(Arc::new(ManualClock::new(now)))
            .build();
        config.manage(["flaky.test"]).await.unwrap();
        assert!(config.cache().get("flaky.test").is_some());
        let status = config.status().await;
        let c = &status.certificates[0];
        assert!(!c.retry_schedule_unread && c.last_error.is_none(), "{c:?}");
        assert!(c.certificate.is_some(), "{c:?}");
        // The success cleared the record.
        assert!(
            storage
                .inner
                .load(&keys::retry_schedule(&id))
                .await
                .unwrap_err()
                .is_not_found()
        );
    }

    /// `next` is the ratio point of `cert`: half way (the short-lived rule).
    fn assert_half_way(next: &NextRenewal, cert: &ServingCertificate) {
        let half = cert.not_before + (cert.not_after.duration_since(cert.not_before).unwrap() / 2);
        let off = next
            .at
            .duration_since(half)
            .unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_millis(1), "{next:?} vs {half:?}");
        assert_eq!(
            next.reason,
            RenewalReason::Ratio {
                ratio: 0.5,
                ari_pending: false
            }
        );
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn times_are_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339::format(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339::format(at(1_700_000_000) + Duration::from_millis(999)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339::parse("2023-11-14T22:13:20Z").unwrap(),
            at(1_700_000_000)
        );
        assert_eq!(
            rfc3339::parse("2023-11-14T23:13:20+01:00").unwrap(),
            at(1_700_000_000)
        );
        assert!(rfc3339::parse("yesterday").is_err());
        // Out of RFC 3339's range: clamped, never a panic.
        assert_eq!(rfc3339::format(UNIX_EPOCH - DAY), "1970-01-01T00:00:00Z");
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339::format(far), "9999-12-31T23:59:59Z");
    }
}
