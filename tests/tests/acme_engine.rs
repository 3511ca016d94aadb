//! The ACME engine end to end against a real Pebble: obtain, key types, chains,
//! accounts, EAB, revocation, nonce rejection, alternate roots, two engines on
//! one storage, CA refusals as typed errors, certificate profiles, and a
//! renewal of a certificate that was already replaced (`alreadyReplaced`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use certauto::acme::NewAccountOptions;
use certauto::acme::{AccountStatus, ChallengeType};
use certauto::{
    AccountKey, AccountKeyType, AcmeClient, AcmeError, AcmeIssuer, Certificate, ChainPreference,
    Config, ConfigError, Error, Event, ExternalAccountKey, FileStorage, Http01Solver, Identifier,
    KeyType, MemoryStorage, NameError, ProblemType, RevocationReason, Storage,
};
use certauto_tests::{
    DEFAULT_PROFILE, PEBBLE_DEFAULT_VALIDITY_SECS, Pebble, PebbleBuilder, init_tracing,
    webpki_verify_chain,
};
use rustls_pki_types::CertificateDer;

fn http01(pebble: &Pebble) -> Http01Solver {
    Http01Solver::bind(SocketAddr::from(([127, 0, 0, 1], pebble.http_port())))
}

fn issuer_for(pebble: &Pebble, storage: Arc<dyn Storage>) -> certauto::AcmeIssuerBuilder {
    AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email("test@certauto.example")
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .http01_solver(http01(pebble))
        .storage(storage)
}

fn config_for(pebble: &Pebble, storage: Arc<dyn Storage>) -> Config {
    Config::builder()
        .storage(storage.clone())
        .issuer(issuer_for(pebble, storage).build())
        .build()
}

async fn start(builder: PebbleBuilder) -> Pebble {
    init_tracing();
    builder.start().await
}

fn der_chain(cert: &Certificate) -> Vec<Vec<u8>> {
    cert.chain().iter().map(|c| c.as_ref().to_vec()).collect()
}

async fn assert_verifies(pebble: &Pebble, cert: &Certificate, name: &str) {
    let root = pebble.root_der(0).await;
    webpki_verify_chain(&der_chain(cert), &root, name).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_a_single_name_and_the_chain_verifies() {
    let pebble = start(Pebble::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()));
    let config = config_for(&pebble, storage.clone());

    let cert = config.obtain(["single.certauto.example"]).await.unwrap();
    assert_eq!(cert.names().len(), 1);
    assert_eq!(cert.names()[0].as_str(), "single.certauto.example");
    assert!(cert.chain().len() >= 2, "leaf and intermediate");
    assert_eq!(cert.key_type(), KeyType::EcdsaP256);
    assert_verifies(&pebble, &cert, "single.certauto.example").await;

    // Stored in the documented layout, one record private to its owner.
    let issuer = certauto::storage::keys::issuer_key_from_url(&pebble.directory_url());
    let record_path = dir.path().join(format!(
        "certificates/{issuer}/single.certauto.example/single.certauto.example.pem"
    ));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&record_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let record = std::fs::read_to_string(&record_path).unwrap();
    assert!(record.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        record.matches("-----BEGIN CERTIFICATE-----").count(),
        cert.chain().len()
    );

    // A second obtain reuses what storage holds.
    let again = config.obtain(["SINGLE.certauto.example."]).await.unwrap();
    assert_eq!(again.serial(), cert.serial());
    let loaded = config
        .load(["single.certauto.example"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.serial(), cert.serial());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_many_sans_including_an_ip_address() {
    let pebble = start(Pebble::builder()).await;
    let config = config_for(&pebble, Arc::new(MemoryStorage::new()));
    let mut names: Vec<String> = (0..12)
        .map(|i| format!("san{i}.certauto.example"))
        .collect();
    names.push("127.0.0.1".to_owned());
    let cert = config.obtain(&names).await.unwrap();
    assert_eq!(cert.names().len(), names.len());
    for name in &names {
        assert!(
            cert.names().iter().any(|n| n.as_str() == name.as_str()),
            "{name} missing from {:?}",
            cert.names()
        );
        assert_verifies(&pebble, &cert, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_key_type() {
    let pebble = start(Pebble::builder()).await;
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let issuer = issuer_for(&pebble, storage.clone()).build();
    let config_with = |kt| {
        Config::builder()
            .storage(storage.clone())
            .issuer(issuer.clone())
            .key_type(kt)
            .build()
    };
    for (i, kt) in [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Rsa4096,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("kt{i}.certauto.example");
        let cert = config_with(kt)
            .obtain([name.as_str()])
            .await
            .unwrap_or_else(|e| panic!("{kt}: {e}"));
        assert_eq!(cert.key_type(), kt);
        assert_verifies(&pebble, &cert, &name).await;
    }
    // Pebble 2.10, like Let's Encrypt, refuses Ed25519 CSRs at finalize: a typed `badCSR`.
    let err = config_with(KeyType::Ed25519)
        .obtain(["kt-ed25519.certauto.example"])
        .await
        .unwrap_err();
    assert_eq!(
        err.problem().map(|p| p.kind()),
        Some(ProblemType::BadCsr),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_key_type() {
    let pebble = start(Pebble::builder()).await;
    // Pebble 2.10 accepts ES256, ES384 and RS256 account keys; EdDSA (RFC 8037)
    // is signed correctly (see the RFC 8037 vector in certauto-core's unit
    // tests) but Pebble refuses the algorithm: that refusal must be typed.
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let eddsa = issuer_for(&pebble, storage)
        .account_key_type(AccountKeyType::EdDsa)
        .build();
    let err = eddsa.account().await.unwrap_err();
    assert_eq!(
        err.problem().unwrap().kind(),
        ProblemType::BadSignatureAlgorithm,
        "{err}"
    );

    for (i, kind) in [
        AccountKeyType::Es256,
        AccountKeyType::Es384,
        AccountKeyType::Rs256,
    ]
    .into_iter()
    .enumerate()
    {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let issuer = issuer_for(&pebble, storage.clone())
            .account_key_type(kind)
            .build();
        let config = Config::builder().storage(storage).issuer(issuer).build();
        let name = format!("acct{i}.certauto.example");
        config
            .obtain([name.as_str()])
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_is_reused_after_a_restart() {
    let pebble = start(Pebble::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let first = issuer_for(&pebble, Arc::new(FileStorage::new(dir.path()))).build();
    let account = first.account().await.unwrap();
    drop(first);
    // A new process: new storage handle, new issuer, same folder.
    let second = issuer_for(&pebble, Arc::new(FileStorage::new(dir.path()))).build();
    let again = second.account().await.unwrap();
    assert_eq!(again.url, account.url);
    assert_eq!(again.key.thumbprint(), account.key.thumbprint());
    // The stored account is also the one the CA knows for that key.
    let client = second.client().await.unwrap();
    let found = client.find_account(again.key.clone()).await.unwrap();
    assert_eq!(found.url, account.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_lifecycle_find_update_rollover_deactivate() {
    let pebble = start(Pebble::builder()).await;
    let client = AcmeClient::builder(pebble.directory_url())
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .build()
        .await
        .unwrap();
    let key = Arc::new(AccountKey::generate(AccountKeyType::Es256).unwrap());
    // Unknown key: a typed "does not exist".
    assert!(matches!(
        client.find_account(key.clone()).await,
        Err(AcmeError::AccountDoesNotExist)
    ));
    let opts = NewAccountOptions {
        contact: vec!["mailto:a@certauto.example".into()],
        terms_of_service_agreed: true,
        external_account: None,
    };
    let account = client.new_account(key.clone(), &opts).await.unwrap();
    assert_eq!(account.resource.status, AccountStatus::Valid);
    // Creating again with the same key returns the same account.
    let same = client.new_account(key.clone(), &opts).await.unwrap();
    assert_eq!(same.url, account.url);

    let updated = client
        .update_contacts(&account, &["mailto:b@certauto.example".into()])
        .await
        .unwrap();
    assert_eq!(
        updated.contact,
        vec!["mailto:b@certauto.example".to_owned()]
    );

    let new_key = Arc::new(AccountKey::generate(AccountKeyType::Es384).unwrap());
    let rolled = client.change_key(&account, new_key.clone()).await.unwrap();
    assert_eq!(rolled.url, account.url);
    assert_eq!(client.find_account(new_key).await.unwrap().url, account.url);
    assert!(matches!(
        client.find_account(key).await,
        Err(AcmeError::AccountDoesNotExist)
    ));

    let deactivated = client.deactivate_account(&rolled).await.unwrap();
    assert_eq!(deactivated.status, AccountStatus::Deactivated);
    let err = client.get_account(&rolled).await.unwrap_err();
    assert_eq!(err.problem().unwrap().kind(), ProblemType::Unauthorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_account_key_and_by_certificate_key() {
    let pebble = start(Pebble::builder()).await;
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let issuer = issuer_for(&pebble, storage.clone()).build();
    let revoked = Arc::new(AtomicUsize::new(0));
    let seen = revoked.clone();
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer.clone())
        .on_event(move |e| {
            if let Event::CertRevoked { .. } = e {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();

    let cert = config.obtain(["revoke1.certauto.example"]).await.unwrap();
    let status = pebble.cert_status(&cert.serial_hex()).await;
    assert_eq!(status["Status"], "Valid", "{status}");
    config
        .revoke(
            "revoke1.certauto.example",
            Some(RevocationReason::KeyCompromise),
        )
        .await
        .unwrap();
    let status = pebble.cert_status(&cert.serial_hex()).await;
    assert_eq!(status["Status"], "Revoked", "{status}");
    assert_eq!(revoked.load(Ordering::SeqCst), 1);
    assert!(
        config
            .load(["revoke1.certauto.example"])
            .await
            .unwrap()
            .is_none()
    );
    // Revoking something not managed is a clear error.
    assert!(matches!(
        config.revoke("revoke1.certauto.example", None).await,
        Err(Error::Config(ConfigError::NotManaged(_)))
    ));

    let cert2 = config.obtain(["revoke2.certauto.example"]).await.unwrap();
    issuer
        .revoke_with_certificate_key(&cert2, Some(RevocationReason::Superseded))
        .await
        .unwrap();
    let status = pebble.cert_status(&cert2.serial_hex()).await;
    assert_eq!(status["Status"], "Revoked", "{status}");
    // Revoking twice: the CA's typed refusal.
    let err = issuer
        .revoke_with_certificate_key(&cert2, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.problem().unwrap().kind(),
        ProblemType::AlreadyRevoked,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding() {
    let pebble = start(
        Pebble::builder().eab_required(true).eab_keys(
            certauto_tests::PEBBLE_EXAMPLE_EAB_KEYS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
    )
    .await;
    // Without EAB: refused before sending, with a typed error.
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let config = config_for(&pebble, storage);
    let err = config.obtain(["eab.certauto.example"]).await.unwrap_err();
    assert!(
        matches!(err, Error::Acme(AcmeError::ExternalAccountRequired)),
        "{err}"
    );

    // With Pebble's sample EAB key: works.
    let (kid, hmac) = pebble.eab_keys()[0].clone();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let issuer = issuer_for(&pebble, storage.clone())
        .external_account(ExternalAccountKey::new(kid, &hmac).unwrap())
        .build();
    let config = Config::builder().storage(storage).issuer(issuer).build();
    let cert = config.obtain(["eab.certauto.example"]).await.unwrap();
    assert_verifies(&pebble, &cert, "eab.certauto.example").await;

    // A wrong MAC key is the CA's refusal, carried as a problem document.
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let wrong = ExternalAccountKey::new(
        pebble.eab_keys()[0].0.clone(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .unwrap();
    let issuer = issuer_for(&pebble, storage.clone())
        .external_account(wrong)
        .build();
    let err = issuer.account().await.unwrap_err();
    assert!(err.problem().is_some(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeds_when_half_the_nonces_are_rejected() {
    let pebble = start(Pebble::builder().nonce_reject_percent(50)).await;
    let config = config_for(&pebble, Arc::new(MemoryStorage::new()));
    for i in 0..3 {
        let name = format!("nonce{i}.certauto.example");
        let cert = config.obtain([name.as_str()]).await.unwrap();
        assert_verifies(&pebble, &cert, &name).await;
    }
}

fn root_cn(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_chain_by_root_common_name() {
    let pebble = start(Pebble::builder().alternate_roots(2)).await;
    for want in [1usize, 2] {
        let root = pebble.root_der(want).await;
        let cn = root_cn(&root);
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let issuer = issuer_for(&pebble, storage.clone())
            .chain_preference(ChainPreference::RootCommonName(cn.clone()))
            .build();
        let config = Config::builder().storage(storage).issuer(issuer).build();
        let name = format!("alt{want}.certauto.example");
        let cert = config.obtain([name.as_str()]).await.unwrap();
        webpki_verify_chain(&der_chain(&cert), &root, &name)
            .unwrap_or_else(|e| panic!("chain for root {want} ({cn}): {e}"));
        // And it is not the default chain.
        let default_root = pebble.root_der(0).await;
        assert!(webpki_verify_chain(&der_chain(&cert), &default_root, &name).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_storage_obtain_one_certificate() {
    let pebble = start(Pebble::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let obtained = Arc::new(AtomicUsize::new(0));
    let make = |pebble: &Pebble| {
        // Separate storage handles, issuers and configs: like two processes.
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()));
        let counter = obtained.clone();
        // Only one engine holds the HTTP-01 port at a time: the storage lock
        // serialises them, and the solver only listens while presenting.
        Config::builder()
            .storage(storage.clone())
            .issuer(issuer_for(pebble, storage).build())
            .on_event(move |e| {
                if let Event::CertObtained { .. } = e {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build()
    };
    let a = make(&pebble);
    let b = make(&pebble);
    let (ca, cb) = tokio::join!(
        a.obtain(["shared.certauto.example"]),
        b.obtain(["shared.certauto.example"])
    );
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(ca.serial(), cb.serial());
    assert_eq!(obtained.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_renewal_replaces_the_stored_certificate() {
    let pebble = start(Pebble::builder()).await;
    let renewed = Arc::new(AtomicUsize::new(0));
    let seen = renewed.clone();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer_for(&pebble, storage).build())
        .on_event(move |e| {
            if let Event::CertRenewed { .. } = e {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    let first = config.obtain(["renew.certauto.example"]).await.unwrap();
    // Not due: renew returns the same certificate.
    let same = config.renew(["renew.certauto.example"]).await.unwrap();
    assert_eq!(same.serial(), first.serial());
    let second = config
        .force_renew(["renew.certauto.example"])
        .await
        .unwrap();
    assert_ne!(second.serial(), first.serial());
    assert_eq!(renewed.load(Ordering::SeqCst), 1);
    let loaded = config
        .load(["renew.certauto.example"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.serial(), second.serial());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_refusals_are_typed_errors_with_the_problem_document() {
    let pebble = start(Pebble::builder()).await;
    let failed = Arc::new(AtomicUsize::new(0));
    let seen = failed.clone();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    // No one answers HTTP-01 on this port: the CA's validation fails.
    let issuer = AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .solver(
            ChallengeType::Http01,
            Arc::new(Http01Solver::without_listener(Default::default())),
        )
        .storage(storage.clone())
        .build();
    let config = Config::builder()
        .storage(storage)
        .issuer(issuer)
        .on_event(move |e| {
            if let Event::CertFailed { .. } = e {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    let err = config
        .obtain(["refused.certauto.example"])
        .await
        .unwrap_err();
    match &err {
        Error::Acme(AcmeError::AuthorizationFailed {
            identifier,
            challenge,
            problem,
        }) => {
            assert_eq!(identifier, "refused.certauto.example");
            assert_eq!(challenge.as_ref(), Some(&ChallengeType::Http01));
            let problem = problem.as_ref().expect("the CA says why");
            assert!(
                matches!(
                    problem.kind(),
                    ProblemType::Connection
                        | ProblemType::Unauthorized
                        | ProblemType::IncorrectResponse
                ),
                "{problem}"
            );
            assert!(problem.detail.is_some());
        }
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(failed.load(Ordering::SeqCst), 1);
    assert!(err.to_string().contains("refused.certauto.example"));
}

#[tokio::test]
async fn bad_input_is_refused_before_any_request() {
    // The directory URL points nowhere: any request would fail with a transport error.
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let issuer = AcmeIssuer::builder()
        .ca("https://127.0.0.1:9/dir")
        .agreed(true)
        .http01_solver(Http01Solver::bind("127.0.0.1:0".parse().unwrap()))
        .storage(storage.clone())
        .build();
    let config = Config::builder().storage(storage).issuer(issuer).build();
    for bad in [
        "",
        "a..b.example",
        "-x.example",
        "x_y.example",
        "exa mple.example",
        "foo.*.example",
        "a/../b",
    ] {
        let err = config.obtain([bad]).await.unwrap_err();
        assert!(matches!(err, Error::Name(_)), "{bad:?}: {err}");
    }
    let long = format!("{}.example", "a".repeat(64));
    assert!(matches!(
        config.obtain([long.as_str()]).await.unwrap_err(),
        Error::Name(NameError::LabelTooLong { .. })
    ));
    let err = config.obtain(["*.wild.example"]).await.unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::WildcardNeedsDns01 { .. })),
        "{err}"
    );
    // A config with no issuer uses the local CA for local names (.test
    // among them): works offline. Public names would go to Let's Encrypt.
    let none = Config::builder()
        .storage(Arc::new(MemoryStorage::new()))
        .build();
    let cert = none.obtain(["a.test"]).await.unwrap();
    assert_eq!(cert.issuer_key(), "local");
    // Names no public CA can issue go to the local CA even when an ACME
    // issuer is configured (.test then goes to the issuer).
    let local = config.obtain(["app.internal"]).await.unwrap();
    assert_eq!(local.issuer_key(), "local");
    let root = config.local_ca().root_pem().await.unwrap();
    let root_der = rustls_pki_types::pem::PemObject::from_pem_slice(root.as_bytes())
        .map(|c: CertificateDer<'static>| c.as_ref().to_vec())
        .unwrap();
    webpki_verify_chain(&der_chain(&local), &root_der, "app.internal").unwrap();
}

/// How many times Pebble's log mentions `needle` so far.
fn log_count(pebble: &Pebble, needle: &str) -> usize {
    pebble.pebble_log().matches(needle).count()
}

/// Pebble logs this for every newOrder it accepts as a replacement (RFC 9773 `replaces`).
const REPLACEMENT_ACCEPTED: &str = "is a replacement of";
/// Pebble logs this once a replacement order is finalized and its predecessor marked.
const PREDECESSOR_MARKED: &str = "has been marked as replaced";
/// Pebble logs this for every newOrder request, refused ones (such as a `badNonce`
/// retry) included.
const NEW_ORDER_REQUEST: &str = "POST /order-plz";
/// Pebble logs this for every order it creates.
const ORDER_CREATED: &str = "Added order";
/// Pebble logs this for every newAccount request.
const NEW_ACCOUNT_REQUEST: &str = "POST /sign-me-up";

/// Waits (bounded) until Pebble's log mentions `needle` `count` times: Pebble marks a
/// replaced certificate in a goroutine of its own after finalizing the order.
async fn await_log_count(pebble: &Pebble, needle: &str, count: usize) {
    for _ in 0..200 {
        if log_count(pebble, needle) >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "Pebble's log does not mention {needle:?} {count} times:\n{}",
        pebble.pebble_log()
    );
}

/// A plain recursive copy (files and folders only), as a second machine restored from a
/// backup would have it.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_renewal_of_a_replaced_certificate_orders_again_without_replaces() {
    const NAME: &str = "replaced-twice.certauto.example";
    let pebble = start(Pebble::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = config_for(&pebble, Arc::new(FileStorage::new(&dir_a)));
    let first = a.obtain([NAME]).await.unwrap();
    let first_id = first
        .ari_cert_id()
        .expect("Pebble's certificates carry an AKI");
    // Instance B: the same account and certificate, but it will not see A's renewal.
    copy_dir(&dir_a, &dir_b);

    // A renews: the order says it replaces `first`, and Pebble accepts that.
    let second = a.force_renew([NAME]).await.unwrap();
    assert_ne!(second.serial(), first.serial());
    assert_eq!(log_count(&pebble, REPLACEMENT_ACCEPTED), 1);
    await_log_count(&pebble, PREDECESSOR_MARKED, 1).await;

    // A second order replacing `first` is refused with a typed `alreadyReplaced`.
    let issuer = issuer_for(&pebble, Arc::new(FileStorage::new(&dir_a))).build();
    let client = issuer.client().await.unwrap();
    let account = issuer.account().await.unwrap();
    let err = client
        .new_order(
            &account,
            &[Identifier::parse(NAME).unwrap()],
            Some(&first_id),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.problem().map(|p| p.kind()),
        Some(ProblemType::AlreadyReplaced),
        "{err}"
    );

    // B still holds `first` and renews it: the engine gets the same refusal and orders
    // once more without `replaces`, so B ends up with a certificate of its own (without
    // the retry, the refusal would fail the renewal).
    let b = config_for(&pebble, Arc::new(FileStorage::new(&dir_b)));
    let (requests_before, created_before) = (
        log_count(&pebble, NEW_ORDER_REQUEST),
        log_count(&pebble, ORDER_CREATED),
    );
    let third = b.force_renew([NAME]).await.unwrap();
    assert_ne!(third.serial(), first.serial());
    assert_ne!(third.serial(), second.serial());
    assert_verifies(&pebble, &third, NAME).await;
    // At least two newOrder requests (the refused one and the retry, plus any `badNonce`
    // retries), one order created, and no further replacement accepted.
    assert!(log_count(&pebble, NEW_ORDER_REQUEST) - requests_before >= 2);
    assert_eq!(log_count(&pebble, ORDER_CREATED) - created_before, 1);
    assert_eq!(log_count(&pebble, REPLACEMENT_ACCEPTED), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_sets_the_certificate_lifetime_and_an_unknown_one_is_refused_before_ordering() {
    const SHORT_SECS: u64 = 6 * 3600;
    let pebble =
        start(Pebble::builder().profile("shortlived", "Six-hour certificates", SHORT_SECS)).await;
    let config_with = |profile: &str| {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let issuer = issuer_for(&pebble, storage.clone())
            .profile(profile)
            .build();
        assert_eq!(issuer.profile(), Some(profile));
        Config::builder().storage(storage).issuer(issuer).build()
    };
    // Pebble makes certificates valid for the profile's period minus one second.
    let lifetime = |cert: &Certificate| cert.not_after().duration_since(cert.not_before()).unwrap();

    let short = config_with("shortlived")
        .obtain(["short.certauto.example"])
        .await
        .unwrap();
    assert_eq!(lifetime(&short), Duration::from_secs(SHORT_SECS - 1));
    assert_verifies(&pebble, &short, "short.certauto.example").await;
    // Short-lived: due at half its life, not with a third left (the default ratio).
    let ratio = config_with("shortlived").renewal_ratio();
    assert_eq!(ratio, certauto::DEFAULT_RENEWAL_RATIO);
    assert_eq!(
        short.renewal_time(ratio),
        short.not_before() + lifetime(&short) / 2
    );
    assert!(!short.needs_renewal(
        short.not_before() + lifetime(&short) / 2 - Duration::from_secs(1),
        ratio
    ));
    assert!(short.needs_renewal(short.not_before() + lifetime(&short) / 2, ratio));

    // Naming the default profile gets its lifetime (without a name Pebble would pick one
    // of the two at random).
    let long = config_with(DEFAULT_PROFILE)
        .obtain(["long.certauto.example"])
        .await
        .unwrap();
    assert_eq!(
        lifetime(&long),
        Duration::from_secs(PEBBLE_DEFAULT_VALIDITY_SECS - 1)
    );
    // A 90-day certificate keeps the configured ratio: due with a third left.
    let due = long.renewal_time(ratio);
    let expected = long.not_before() + lifetime(&long).mul_f64(1.0 - ratio);
    let gap = due
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(gap < Duration::from_millis(1), "{due:?} vs {expected:?}");

    // A profile the directory does not list: a typed error, and neither an account nor an
    // order was asked for.
    let (accounts, orders) = (
        log_count(&pebble, NEW_ACCOUNT_REQUEST),
        log_count(&pebble, NEW_ORDER_REQUEST),
    );
    let err = config_with("tlsserver")
        .obtain(["unknown-profile.certauto.example"])
        .await
        .unwrap_err();
    match &err {
        Error::Acme(AcmeError::ProfileNotOffered {
            profile, offered, ..
        }) => {
            assert_eq!(profile, "tlsserver");
            assert_eq!(offered, &[DEFAULT_PROFILE, "shortlived"]);
        }
        other => panic!("expected ProfileNotOffered, got {other:?}"),
    }
    assert_eq!(log_count(&pebble, NEW_ACCOUNT_REQUEST), accounts);
    assert_eq!(log_count(&pebble, NEW_ORDER_REQUEST), orders);
}
