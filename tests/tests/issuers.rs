//! Several issuers against real Pebbles: failover from a CA that refuses
//! connections and back when it recovers, per-issuer backoff, a rate-limited
//! issuer not blocking failover, the `Random` policy, an issuer change
//! (caddy #6732) and the staging CA tried first on retries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use certauto::storage::keys;
use certauto::{
    AcmeError, AcmeIssuer, AcmeIssuerBuilder, CertificateKey, Config, Error, Http01Solver,
    Identifier, IssueRequest, Issuer, IssuerPolicy, KeyType, ManualClock, MemoryStorage, Storage,
};
use certauto_tests::{AriProxy, Pebble, assert_issued_for, init_tracing};
use rustls_pki_types::CertificateDer;

/// A bound on awaiting one obtain or renewal against a local Pebble.
const BOUND: Duration = Duration::from_secs(120);

async fn start(builder: certauto_tests::PebbleBuilder) -> Pebble {
    init_tracing();
    builder.start().await
}

/// An ACME issuer for the directory at `url`, trusting `https_ca` for its
/// HTTPS only, answering HTTP-01 on `http_port`.
fn issuer(
    url: &str,
    https_ca: Vec<u8>,
    http_port: u16,
    storage: &Arc<dyn Storage>,
) -> AcmeIssuerBuilder {
    AcmeIssuer::builder()
        .ca(url)
        .email("issuers@certauto.example")
        .agreed(true)
        .trust_roots([CertificateDer::from(https_ca)])
        .only_trusted_roots()
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            http_port,
        ))))
        .storage(storage.clone())
}

fn for_pebble(pebble: &Pebble, storage: &Arc<dyn Storage>) -> AcmeIssuerBuilder {
    issuer(
        &pebble.directory_url(),
        pebble.https_ca_der(),
        pebble.http_port(),
        storage,
    )
}

/// A loopback port nothing listens on (bound, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn directory_at(port: u16) -> String {
    format!("https://127.0.0.1:{port}/dir")
}

fn key_of(url: &str) -> String {
    keys::issuer_key_from_url(url)
}

fn memory() -> Arc<dyn Storage> {
    Arc::new(MemoryStorage::new())
}

/// The first issuer's directory refuses connections: the certificate comes
/// from the second, and so does its renewal; once a Pebble answers on the
/// first's port, a new name comes from the first again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_second_and_returns_to_the_first_when_it_recovers() {
    let second = start(Pebble::builder()).await;
    let storage = memory();
    let first_port = free_port();
    let first_http_port = free_port();
    let first_url = directory_at(first_port);
    // The first will be a Pebble serving the second's HTTPS identity.
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer(&first_url, second.https_ca_der(), first_http_port, &storage).build())
        .issuer(for_pebble(&second, &storage).build())
        .build();

    let name = "failover.certauto.example";
    let cert = tokio::time::timeout(BOUND, config.obtain([name]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cert.issuer_key(), key_of(&second.directory_url()));
    assert_issued_for(&second, &cert, &[name]).await;
    let renewed = tokio::time::timeout(BOUND, config.force_renew([name]))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(renewed.serial_hex(), cert.serial_hex());
    assert_eq!(renewed.issuer_key(), key_of(&second.directory_url()));
    assert_issued_for(&second, &renewed, &[name]).await;

    let first = start(
        Pebble::builder()
            .acme_port(first_port)
            .http_port(first_http_port)
            .same_https_ca_as(&second),
    )
    .await;
    assert_eq!(first.directory_url(), first_url);
    let name = "recovered.certauto.example";
    let cert = tokio::time::timeout(BOUND, config.obtain([name]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cert.issuer_key(), key_of(&first_url));
    assert_issued_for(&first, &cert, &[name]).await;
}

/// A loopback listener that accepts connections and closes them at once,
/// counting them: an ACME directory that always fails.
async fn closing_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, accepted)
}

/// The first issuer fails for a name: it backs off for that name only
/// (skipped on its renewal, tried again after its backoff on the config's
/// clock), and another name is still obtained at once from the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_issuer_backs_off_without_delaying_the_second() {
    let pebble = start(Pebble::builder()).await;
    let storage = memory();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let (bad_port, bad_connections) = closing_listener().await;
    let config = Config::builder()
        .storage(storage.clone())
        .clock(clock.clone())
        .issuer(
            issuer(
                &directory_at(bad_port),
                pebble.https_ca_der(),
                free_port(),
                &storage,
            )
            .build(),
        )
        .issuer(for_pebble(&pebble, &storage).build())
        .build();
    let good = key_of(&pebble.directory_url());

    let x = tokio::time::timeout(BOUND, config.obtain(["x.certauto.example"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(x.issuer_key(), good);
    let after_x = bad_connections.load(Ordering::SeqCst);
    assert!(after_x > 0, "the first issuer was tried first");

    // Another name: the first is tried (its backoff is x's only), the
    // second issues, with no retry schedule in the way.
    config.manage(["y.certauto.example"]).await.unwrap();
    assert_eq!(
        config
            .load(["y.certauto.example"])
            .await
            .unwrap()
            .unwrap()
            .issuer_key(),
        good
    );
    let after_y = bad_connections.load(Ordering::SeqCst);
    assert!(after_y > after_x, "y tried the first issuer");

    // x's renewal while the first backs off for x: it is not contacted.
    let renewed = tokio::time::timeout(BOUND, config.force_renew(["x.certauto.example"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.issuer_key(), good);
    assert_eq!(bad_connections.load(Ordering::SeqCst), after_y);

    // After its backoff on the config's clock, it is tried again for x.
    clock.advance(Duration::from_secs(3600));
    tokio::time::timeout(BOUND, config.force_renew(["x.certauto.example"]))
        .await
        .unwrap()
        .unwrap();
    assert!(bad_connections.load(Ordering::SeqCst) > after_y);
}

/// `Random` spreads 20 names over two Pebbles; and with one order per hour
/// per issuer, a first issuer whose limiter is used up does not make the
/// next name wait: the second, whose limiter allows, takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_names_and_a_rate_limited_issuer_does_not_block() {
    let a = start(Pebble::builder()).await;
    let b = start(Pebble::builder()).await;
    let storage = memory();
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(for_pebble(&a, &storage).build())
        .issuer(for_pebble(&b, &storage).build())
        .issuer_policy(IssuerPolicy::Random)
        .issuance_rate_limit(100, Duration::from_secs(60))
        .build();
    let names: Vec<String> = (0..20)
        .map(|i| format!("spread{i}.certauto.example"))
        .collect();
    tokio::time::timeout(BOUND * 2, config.manage(&names))
        .await
        .unwrap()
        .unwrap();
    let (key_a, key_b) = (key_of(&a.directory_url()), key_of(&b.directory_url()));
    let (mut from_a, mut from_b) = (0, 0);
    for name in &names {
        let cert = config.load([name]).await.unwrap().unwrap();
        if cert.issuer_key() == key_a {
            assert_issued_for(&a, &cert, &[name]).await;
            from_a += 1;
        } else {
            assert_eq!(cert.issuer_key(), key_b);
            assert_issued_for(&b, &cert, &[name]).await;
            from_b += 1;
        }
    }
    assert!(from_a > 0 && from_b > 0, "a: {from_a}, b: {from_b}");

    // One order per hour per issuer, in order: the first name uses a's
    // only order; the second would wait an hour for a, so b issues it.
    let storage = memory();
    let limited = Config::builder()
        .storage(storage.clone())
        .issuer(for_pebble(&a, &storage).build())
        .issuer(for_pebble(&b, &storage).build())
        .issuance_rate_limit(1, Duration::from_secs(3600))
        .build();
    let first = tokio::time::timeout(BOUND, limited.obtain(["limited1.certauto.example"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.issuer_key(), key_a);
    let second = tokio::time::timeout(BOUND, limited.obtain(["limited2.certauto.example"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.issuer_key(), key_b);
    assert_issued_for(&b, &second, &["limited2.certauto.example"]).await;
}

/// caddy #6732: a certificate from Pebble A, then only Pebble B configured
/// on the same storage: `manage` serves A's certificate without ordering at
/// B, a forced renewal goes to B and is stored under B's key, and a restart
/// serves B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_change_serves_the_old_certificate_and_renews_at_the_new_issuer() {
    let a = start(Pebble::builder()).await;
    let b = start(Pebble::builder()).await;
    let proxy = AriProxy::start(&b).await; // counts B's orders
    let storage = memory();
    let name = "moved.certauto.example";
    let from_a = Config::builder()
        .storage(storage.clone())
        .issuer(for_pebble(&a, &storage).build())
        .build();
    let old = tokio::time::timeout(BOUND, from_a.obtain([name]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.issuer_key(), key_of(&a.directory_url()));

    let to_b = || {
        Config::builder()
            .storage(storage.clone())
            .issuer(
                issuer(
                    &proxy.directory_url(),
                    proxy.https_ca_der(),
                    b.http_port(),
                    &storage,
                )
                .build(),
            )
            .build()
    };
    let changed = to_b();
    tokio::time::timeout(BOUND, changed.manage([name]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        changed.cache().get(name).unwrap().serial(),
        old.serial_hex()
    );
    assert!(proxy.created_orders().is_empty(), "no order at B");

    let renewed = tokio::time::timeout(BOUND, changed.force_renew([name]))
        .await
        .unwrap()
        .unwrap();
    let key_b = key_of(&proxy.directory_url());
    assert_eq!(renewed.issuer_key(), key_b);
    assert_issued_for(&b, &renewed, &[name]).await;
    assert_eq!(proxy.created_orders().len(), 1);
    let id = Identifier::parse(name).unwrap();
    assert!(
        storage
            .exists(&keys::cert_record(&key_b, &id))
            .await
            .unwrap()
    );
    assert_eq!(
        changed.cache().get(name).unwrap().serial(),
        renewed.serial_hex()
    );

    let restarted = to_b();
    tokio::time::timeout(BOUND, restarted.manage([name]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        restarted.cache().get(name).unwrap().serial(),
        renewed.serial_hex()
    );
    assert_eq!(
        proxy.created_orders().len(),
        1,
        "the restart ordered nothing"
    );
}

/// With `staging_on_retry`, a retry (attempt 2) orders from the staging CA
/// first: when staging fails (its VA reaches no solver), production sees no
/// order and the error says so; a first attempt goes to production
/// directly; with a working staging, production issues after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_through_the_staging_ca_first() {
    let production = start(Pebble::builder()).await;
    let proxy = AriProxy::start(&production).await; // counts production's orders
    // Validates on a port no solver listens on.
    let broken_staging = start(Pebble::builder()).await;
    // Validates on production's HTTP-01 port, where the solver listens.
    let staging = start(Pebble::builder().http_port(production.http_port())).await;
    let storage = memory();
    let with_staging = |staging: &Pebble| {
        issuer(
            &proxy.directory_url(),
            proxy.https_ca_der(),
            production.http_port(),
            &storage,
        )
        .trust_roots([CertificateDer::from(staging.https_ca_der())])
        .staging_on_retry(staging.directory_url())
        .build()
    };
    let ids = vec![Identifier::parse("staged.certauto.example").unwrap()];
    let key = CertificateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = key.csr(&ids).unwrap();

    let broken = with_staging(&broken_staging);
    assert_eq!(
        broken.staging_ca(),
        Some(broken_staging.directory_url().as_str())
    );
    let retry = IssueRequest::new(&ids, &csr).attempt(2);
    let err = tokio::time::timeout(BOUND, broken.issue(&retry))
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        Error::Acme(AcmeError::StagingFailed { directory_url, .. }) => {
            assert_eq!(directory_url, &broken_staging.directory_url());
        }
        other => panic!("expected StagingFailed, got {other}"),
    }
    assert!(err.to_string().contains("staging"), "{err}");
    assert!(
        proxy.created_orders().is_empty(),
        "production was not asked"
    );

    // A first attempt does not go through staging.
    tokio::time::timeout(BOUND, broken.issue(&IssueRequest::new(&ids, &csr)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(proxy.created_orders().len(), 1);

    // A working staging: production issues after it.
    let working = with_staging(&staging);
    let issued = tokio::time::timeout(BOUND, working.issue(&retry))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(proxy.created_orders().len(), 2);
    let cert =
        certauto::Certificate::from_pem(&issued.chain_pem, &key.to_pem(), &working.issuer_key())
            .unwrap();
    assert_issued_for(&production, &cert, &["staged.certauto.example"]).await;
    // The staging CA's account is its own, kept under its issuer key.
    let staging_accounts = storage
        .list(&format!("acme/{}", key_of(&staging.directory_url())), true)
        .await
        .unwrap();
    assert!(!staging_accounts.is_empty());
}
