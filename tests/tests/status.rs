//! `Config::status()` end to end against a real Pebble: the snapshot through
//! an ARI window (with its explanation URL) and the renewal inside it, and
//! through failures with their backoff (the last error, its attempt number and
//! the retry time), and through the OCSP staple's states (good, unknown,
//! revoked with a failed renewal, fetch failing), serialised to JSON as an
//! admin endpoint would.
//!
//! ARI windows and outages come from [`AriProxy`] in front of Pebble (it
//! answers a chosen window with an `explanationURL`, and can make the CA
//! unavailable). Time is a [`ManualClock`]: decisions are driven by
//! [`Config::check_renewals`], never by waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certauto::status::{CertificateStatus, NextRenewal, RenewalReason, StapleState, Status};
use certauto::{AcmeIssuer, Clock, Config, Event, FileStorage, Http01Solver, ManualClock};
use certauto_tests::{AriAnswer, AriProxy, OcspResponder, Outage, Pebble, init_tracing};
use rustls_pki_types::CertificateDer;
use serde_json::Value;

/// Upper bound on one issuance or renewal check against Pebble. Never a
/// timed assertion: only there so that a hang fails the test.
const ISSUE_BOUND: Duration = Duration::from_secs(180);
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);
/// The first retry delay (`certauto::MIN_RETRY_BACKOFF`).
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const EXPLANATION: &str = "https://ca.certauto.example/incidents/42";

async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(ISSUE_BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {ISSUE_BOUND:?}"))
}

/// One Pebble behind the ARI proxy, a clock and a storage folder.
struct Env {
    pebble: Pebble,
    proxy: AriProxy,
    /// An `openssl ocsp` responder Pebble's certificates name, when started
    /// with one; every newly obtained serial is marked `good` there.
    responder: Option<Arc<OcspResponder>>,
    clock: Arc<ManualClock>,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Self {
        init_tracing();
        let pebble = Pebble::builder().start().await;
        Self::around(pebble, None).await
    }

    async fn with_ocsp() -> Self {
        init_tracing();
        let responder = Arc::new(OcspResponder::bind());
        let pebble = Pebble::builder()
            .ocsp_responder_url(responder.url())
            .start()
            .await;
        responder.start(&pebble).await;
        Self::around(pebble, Some(responder)).await
    }

    async fn around(pebble: Pebble, responder: Option<Arc<OcspResponder>>) -> Self {
        let proxy = AriProxy::start(&pebble).await;
        Env {
            pebble,
            proxy,
            responder,
            clock: Arc::new(ManualClock::new(SystemTime::now())),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> Config {
        let storage = Arc::new(FileStorage::new(self.dir.path().join("storage")));
        let issuer = AcmeIssuer::builder()
            .ca(self.proxy.directory_url())
            .email("status@certauto.example")
            .agreed(true)
            .trust_roots([CertificateDer::from(self.proxy.https_ca_der())])
            .only_trusted_roots()
            .http01_solver(Http01Solver::bind(SocketAddr::from((
                [127, 0, 0, 1],
                self.pebble.http_port(),
            ))))
            .storage(storage.clone())
            .build();
        let responder = self.responder.clone();
        Config::builder()
            .storage(storage)
            .issuer(issuer)
            .clock(self.clock.clone())
            .on_event(move |event| {
                if let (Event::CertObtained { serial, .. }, Some(responder)) = (event, &responder) {
                    responder.set_good(serial);
                }
            })
            .build()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The snapshot's entry for `name`, and the same entry in its JSON form.
async fn snapshot(config: &Config, name: &str) -> (CertificateStatus, Value) {
    let status: Status = config.status().await;
    let json = serde_json::to_value(&status).unwrap();
    // The JSON reads back into the same snapshot form.
    let back: Status = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    let i = status
        .certificates
        .iter()
        .position(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} is not in the snapshot: {status:?}"));
    (
        status.certificates[i].clone(),
        json["certificates"][i].clone(),
    )
}

fn next(c: &CertificateStatus) -> NextRenewal {
    c.next_renewal.clone()
}

fn serial(c: &CertificateStatus) -> String {
    c.certificate
        .as_ref()
        .unwrap_or_else(|| panic!("no certificate: {c:?}"))
        .serial
        .clone()
}

/// `at` is `backoff` (±10 % jitter, ±1 s for rounding) after `from`.
fn assert_backoff(at: SystemTime, from: SystemTime, backoff: Duration) {
    let delay = at.duration_since(from).unwrap().as_secs_f64();
    let base = backoff.as_secs_f64();
    assert!(
        delay >= base * 0.9 - 1.0 && delay <= base * 1.1 + 1.0,
        "retry {delay:.1}s after the failure, expected {base}s ±10 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_follows_an_ari_window_and_the_renewal_in_it() {
    const NAME: &str = "status-ari.certauto.example";
    let env = Env::start().await;
    let config = env.config();
    bounded("manage", config.manage([NAME])).await.unwrap();
    let old = config.cache().get(NAME).unwrap();
    let old_id = old.ari_cert_id().unwrap().to_owned();

    // Before any check: the ratio, the CA not asked yet.
    let (c, json) = snapshot(&config, NAME).await;
    assert_eq!(serial(&c), old.serial());
    let cert = c.certificate.clone().unwrap();
    assert_eq!(cert.issuer_key, old.issuer_key());
    assert!(cert.issuer.contains("Pebble"), "{}", cert.issuer);
    assert_eq!(
        (cert.not_before, cert.not_after),
        (old.not_before(), old.not_after())
    );
    assert!(matches!(
        next(&c).reason,
        RenewalReason::Ratio {
            ari_pending: true,
            ..
        }
    ));
    assert!(!c.on_demand && c.last_error.is_none());
    assert_eq!(json["next_renewal"]["reason"]["ari_pending"], true);
    // Pebble names an OCSP responder only when configured to; either way
    // nothing was fetched that failed.
    assert!(
        matches!(
            c.ocsp,
            StapleState::None | StapleState::Pending | StapleState::Good { .. }
        ),
        "{:?}",
        c.ocsp
    );

    // The CA gives a window with an explanation; a check reads it.
    let t0 = env.clock.now();
    let (start, end) = (t0 + 10 * DAY, t0 + 12 * DAY);
    env.proxy.set_ari_for(
        &old_id,
        AriAnswer::window(start, end)
            .retry_after(3600)
            .explanation_url(EXPLANATION),
    );
    let report = bounded("check", config.check_renewals()).await;
    assert!(report.due.is_empty(), "{report:?}");
    let (c, json) = snapshot(&config, NAME).await;
    let planned = next(&c);
    let RenewalReason::AriWindow {
        window_start,
        window_end,
        explanation_url,
        next_check,
    } = planned.reason.clone()
    else {
        panic!("expected the ARI window: {planned:?}");
    };
    assert_eq!(
        (unix(window_start), unix(window_end)),
        (unix(start), unix(end))
    );
    assert_eq!(explanation_url.as_deref(), Some(EXPLANATION));
    assert_eq!(unix(next_check), unix(t0 + HOUR));
    assert!(
        planned.at >= window_start && planned.at < window_end,
        "{planned:?}"
    );
    let reason = &json["next_renewal"]["reason"];
    assert_eq!(reason["kind"], "ari_window");
    assert_eq!(reason["explanation_url"], EXPLANATION);
    assert!(reason["window_start"].as_str().unwrap().ends_with('Z'));
    assert!(json["next_renewal"]["at"].as_str().unwrap().ends_with('Z'));

    // Just before the chosen time nothing happens and the plan stands (the
    // CA is asked again, and the same window keeps its time).
    env.clock.set(planned.at - Duration::from_secs(1));
    let report = bounded("check", config.check_renewals()).await;
    assert!(report.due.is_empty(), "{report:?}");
    assert_eq!(next(&snapshot(&config, NAME).await.0).at, planned.at);

    // At the chosen time, the pass renews: the snapshot shows the new serial,
    // whose own ARI window is asked for at the next check.
    env.clock.set(planned.at);
    let report = bounded("check", config.check_renewals()).await;
    assert_eq!(report.renewed, vec![NAME.to_owned()], "{report:?}");
    let (c, json) = snapshot(&config, NAME).await;
    let new_serial = serial(&c);
    assert_ne!(new_serial, old.serial());
    assert_eq!(new_serial, config.cache().get(NAME).unwrap().serial());
    assert_eq!(json["certificate"]["serial"], new_serial.as_str());
    assert!(matches!(
        next(&c).reason,
        RenewalReason::Ratio {
            ari_pending: true,
            ..
        }
    ));
    assert!(c.last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_reports_failures_with_their_attempt_and_backoff() {
    const NAME: &str = "status-fail.certauto.example";
    const NEW: &str = "status-new.certauto.example";
    let env = Env::start().await;
    let config = env.config();
    bounded("manage", config.manage([NAME])).await.unwrap();
    let old = config.cache().get(NAME).unwrap();

    // Due by the ratio (the proxy answers ARI with 404), and the CA is down.
    let lifetime = old.not_after().duration_since(old.not_before()).unwrap();
    env.clock.set(old.not_before() + lifetime.mul_f64(0.75));
    env.proxy.set_outage(Some(Outage::ServiceUnavailable));
    let failed_at = env.clock.now();
    let report = bounded("check", config.check_renewals()).await;
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");

    let (c, json) = snapshot(&config, NAME).await;
    assert_eq!(serial(&c), old.serial(), "the old certificate still serves");
    let error = c.last_error.clone().expect("the failure is reported");
    assert_eq!(error.attempt, 1);
    assert_eq!(error.at.map(unix), Some(unix(failed_at)));
    let message = error.message.clone().expect("the error is kept");
    assert!(message.contains("503"), "{message}");
    let retry = next(&c);
    let RenewalReason::Retry {
        attempt,
        backoff_secs,
    } = retry.reason
    else {
        panic!("expected a retry: {retry:?}");
    };
    assert_eq!(attempt, 2);
    assert_backoff(retry.at, failed_at, FIRST_BACKOFF);
    assert_eq!(backoff_secs, Some(unix(retry.at) - unix(failed_at)));
    assert_eq!(json["last_error"]["attempt"], 1);
    assert_eq!(json["last_error"]["message"], message.as_str());
    assert_eq!(json["next_renewal"]["reason"]["kind"], "retry");
    assert_eq!(json["next_renewal"]["reason"]["attempt"], 2);

    // A new name whose first obtain fails is listed without a certificate.
    let managed = bounded("manage", config.manage([NEW])).await;
    assert!(managed.is_err());
    let (n, json) = snapshot(&config, NEW).await;
    assert!(n.certificate.is_none() && json["certificate"].is_null());
    assert_eq!(n.last_error.as_ref().map(|e| e.attempt), Some(1));
    assert!(matches!(
        next(&n).reason,
        RenewalReason::Retry { attempt: 2, .. }
    ));

    // Past the retry time, still down: attempt 2, the backoff doubled.
    env.clock.set(retry.at + Duration::from_secs(1));
    let second_at = env.clock.now();
    let report = bounded("check", config.check_renewals()).await;
    assert!(report.failed.contains(&NAME.to_owned()), "{report:?}");
    let (c, _) = snapshot(&config, NAME).await;
    assert_eq!(c.last_error.as_ref().map(|e| e.attempt), Some(2));
    let retry = next(&c);
    assert!(
        matches!(retry.reason, RenewalReason::Retry { attempt: 3, .. }),
        "{retry:?}"
    );
    assert_backoff(retry.at, second_at, 2 * FIRST_BACKOFF);

    // The CA is back: renewed and obtained, the errors gone (past both retry times).
    env.proxy.set_outage(None);
    let new_retry = next(&snapshot(&config, NEW).await.0).at;
    env.clock
        .set(retry.at.max(new_retry) + Duration::from_secs(1));
    let report = bounded("check", config.check_renewals()).await;
    assert!(report.renewed.contains(&NAME.to_owned()), "{report:?}");
    assert!(report.renewed.contains(&NEW.to_owned()), "{report:?}");
    for name in [NAME, NEW] {
        let (c, json) = snapshot(&config, name).await;
        assert!(c.certificate.is_some(), "{c:?}");
        assert!(
            c.last_error.is_none() && json["last_error"].is_null(),
            "{c:?}"
        );
    }
    let (c, _) = snapshot(&config, NAME).await;
    assert_ne!(serial(&c), old.serial());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_follows_the_ocsp_staple() {
    /// Past half of the responder's one-hour validity: a refresh is due.
    const PAST_HALF: Duration = Duration::from_secs(31 * 60);
    const NAME: &str = "status-ocsp.certauto.example";
    let env = Env::with_ocsp().await;
    let responder = env.responder.clone().unwrap();
    let config = env.config();
    bounded("manage", config.manage([NAME])).await.unwrap();
    let cert = config.cache().get(NAME).unwrap();
    let t0 = env.clock.now();

    // Stapled at once: good until its nextUpdate, refreshed half way.
    let (c, json) = snapshot(&config, NAME).await;
    let StapleState::Good {
        next_update,
        refresh_at,
    } = c.ocsp.clone()
    else {
        panic!("expected a good staple: {:?}", c.ocsp);
    };
    assert!(next_update > t0 && refresh_at > t0 && refresh_at < next_update);
    assert_eq!(json["ocsp"]["state"], "good");
    assert!(json["ocsp"]["next_update"].as_str().unwrap().ends_with('Z'));

    // The responder forgets the certificate: `unknown`, the good staple
    // still served until its nextUpdate.
    responder.forget(cert.serial());
    env.clock.set(t0 + PAST_HALF);
    bounded("check_ocsp", config.check_ocsp()).await;
    let (c, json) = snapshot(&config, NAME).await;
    assert_eq!(
        c.ocsp,
        StapleState::Unknown {
            at: env.clock.now(),
            serving_until: Some(next_update),
        }
    );
    assert_eq!(json["ocsp"]["state"], "unknown");

    // Revoked while the CA is down: the staple says so, the renewal failed
    // and is retried.
    responder.set_revoked(cert.serial());
    env.proxy.set_outage(Some(Outage::ServiceUnavailable));
    env.clock.advance(Duration::from_secs(60));
    let report = bounded("check_ocsp", config.check_ocsp()).await;
    assert_eq!(report.revoked, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");
    let (c, json) = snapshot(&config, NAME).await;
    let StapleState::Revoked { revoked_at } = c.ocsp else {
        panic!("expected revoked: {:?}", c.ocsp);
    };
    // certauto_tests::OCSP_REVOKED_AT, 2024-01-01T00:00:00Z.
    assert_eq!(unix(revoked_at), 1_704_067_200);
    assert_eq!(json["ocsp"]["revoked_at"], "2024-01-01T00:00:00Z");
    assert_eq!(serial(&c), cert.serial());
    assert_eq!(c.last_error.as_ref().map(|e| e.attempt), Some(1));
    assert!(
        matches!(next(&c).reason, RenewalReason::Retry { attempt: 2, .. }),
        "{c:?}"
    );

    // The responder goes away: fetching fails, nothing is served.
    responder.stop();
    env.clock.advance(Duration::from_secs(60));
    bounded("check_ocsp", config.check_ocsp()).await;
    let (c, json) = snapshot(&config, NAME).await;
    let StapleState::FetchFailing {
        error,
        at,
        serving_until,
    } = c.ocsp.clone()
    else {
        panic!("expected a failing fetch: {:?}", c.ocsp);
    };
    assert!(!error.is_empty());
    assert_eq!((at, serving_until), (env.clock.now(), None));
    assert_eq!(json["ocsp"]["state"], "fetch_failing");
    assert!(json["ocsp"]["serving_until"].is_null());
    // The revocation is not forgotten with the failed fetch: still retried
    // (or renewed at once), not a ratio renewal far away.
    let retry = next(&c);
    assert!(
        matches!(
            retry.reason,
            RenewalReason::Retry { .. } | RenewalReason::Revoked
        ),
        "{retry:?}"
    );

    // The CA is back: a renewal check (not an OCSP check) past the retry
    // time replaces the revoked certificate.
    env.proxy.set_outage(None);
    env.clock
        .set(retry.at.max(env.clock.now()) + Duration::from_secs(1));
    let report = bounded("check", config.check_renewals()).await;
    assert!(report.renewed.contains(&NAME.to_owned()), "{report:?}");
    let (c, _) = snapshot(&config, NAME).await;
    assert_ne!(serial(&c), cert.serial());
    assert!(c.last_error.is_none(), "{c:?}");
    assert!(
        !matches!(
            next(&c).reason,
            RenewalReason::Retry { .. } | RenewalReason::Revoked
        ),
        "{c:?}"
    );
}
