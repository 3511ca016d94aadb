//! `ZeroSslIssuer` end to end, and the CA presets' refusals and rate limits.
//!
//! ZeroSSL's credentials API cannot be reached from the test machines, so a
//! loopback **stand-in** plays it: it checks each request exactly as ZeroSSL
//! documents it (`POST /acme/eab-credentials?access_key=KEY`, or `POST
//! /acme/eab-credentials-email` with the form field `email`;
//! <https://zerossl.com/documentation/acme/generate-eab-credentials/>) and
//! answers with ZeroSSL's documented JSON, including its failures
//! (`{"success": false, "error": {...}}` at HTTP 200, a 401, a 503;
//! <https://zerossl.com/documentation/acme/error-codes/>). The EAB keys it
//! hands out are the ones a Pebble started with `eab_required(true)` accepts,
//! so the issuer obtains a real certificate from that Pebble.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use certauto::{
    AcmeIssuer, CaPreset, Config, ConfigError, DEFAULT_RATE_LIMIT_EVENTS,
    DEFAULT_RATE_LIMIT_WINDOW, Error, Http01Solver, Identifier, Issuer, MemoryStorage, Storage,
    ZeroSslError, ZeroSslIssuer, ZeroSslIssuerBuilder,
};
use certauto_tests::{PEBBLE_EXAMPLE_EAB_KEYS, Pebble, init_tracing, webpki_verify_chain};
use rustls_pki_types::CertificateDer;

const API_KEY: &str = "sk_test_Zx9SECRETkey";
const EMAIL: &str = "admin@certauto.example";

/// The stand-in for ZeroSSL's EAB credentials API.
struct StandIn {
    url: String,
    requests: Arc<AtomicUsize>,
}

/// The keys of the form body or query `text` (`a=b&c=d`), percent-decoded.
fn pairs(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn json(status: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// ZeroSSL's documented failure shape.
fn zerossl_error(status: StatusCode, code: i64, kind: &str) -> axum::response::Response {
    json(
        status,
        serde_json::json!({"success": false, "error": {"code": code, "type": kind, "info": null}}),
    )
}

impl StandIn {
    async fn start() -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let (kid1, hmac1) = PEBBLE_EXAMPLE_EAB_KEYS[0];
        let (kid2, hmac2) = PEBBLE_EXAMPLE_EAB_KEYS[1];
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if method != Method::POST {
                    return zerossl_error(StatusCode::METHOD_NOT_ALLOWED, 0, "method_not_allowed");
                }
                match uri.path() {
                    "/acme/eab-credentials" => {
                        let query = pairs(uri.query().unwrap_or(""));
                        let key = match query.as_slice() {
                            [(k, v)] if k == "access_key" => v.clone(),
                            _ => return zerossl_error(StatusCode::OK, 101, "missing_access_key"),
                        };
                        match key.as_str() {
                            API_KEY => json(
                                StatusCode::OK,
                                // ZeroSSL's own example answers `"success": 1`.
                                serde_json::json!({"success": 1, "eab_kid": kid1, "eab_hmac_key": hmac1}),
                            ),
                            "sk_unauthorized" => {
                                zerossl_error(StatusCode::UNAUTHORIZED, 101, "invalid_access_key")
                            }
                            "sk_outage" => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                [("content-type", "text/html")],
                                "<html>maintenance</html>",
                            )
                                .into_response(),
                            "sk_garbage" => json(StatusCode::OK, serde_json::json!({"success": 1})),
                            "sk_too_many" => zerossl_error(
                                StatusCode::OK,
                                2904,
                                "too_many_eab_credentials_created_today",
                            ),
                            _ => zerossl_error(StatusCode::OK, 101, "invalid_access_key"),
                        }
                    }
                    "/acme/eab-credentials-email" => {
                        let content_type = headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if !content_type.starts_with("application/x-www-form-urlencoded") {
                            return zerossl_error(StatusCode::OK, 2900, "missing_email");
                        }
                        let form = pairs(std::str::from_utf8(&body).unwrap_or(""));
                        match form.as_slice() {
                            [(k, v)] if k == "email" && v == EMAIL => json(
                                StatusCode::OK,
                                serde_json::json!({"success": true, "eab_kid": kid2, "eab_hmac_key": hmac2}),
                            ),
                            _ => zerossl_error(StatusCode::OK, 2900, "missing_email"),
                        }
                    }
                    _ => zerossl_error(StatusCode::NOT_FOUND, 404, "invalid_api_function"),
                }
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn zerossl_for(pebble: &Pebble, api: &StandIn, storage: Arc<dyn Storage>) -> ZeroSslIssuerBuilder {
    ZeroSslIssuer::builder()
        .ca(pebble.directory_url())
        .api_url(&api.url)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            pebble.http_port(),
        ))))
        .storage(storage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_with_credentials_from_the_api_and_keeps_them() {
    init_tracing();
    let pebble = Pebble::builder()
        .eab_required(true)
        .eab_keys(
            PEBBLE_EXAMPLE_EAB_KEYS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .start()
        .await;
    let api = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(certauto::FileStorage::new(dir.path()));

    let builder = zerossl_for(&pebble, &api, storage.clone())
        .api_key(API_KEY)
        .email(EMAIL);
    assert!(!format!("{builder:?}").contains(API_KEY));
    let issuer = builder.build().await.unwrap();
    assert_eq!(api.requests(), 1);
    assert_eq!(issuer.eab_kid(), PEBBLE_EXAMPLE_EAB_KEYS[0].0);
    assert!(!format!("{issuer:?}").contains(API_KEY));

    let config = Config::builder()
        .storage(storage.clone())
        .issuer(issuer)
        .build();
    assert!(!format!("{config:?}").contains(API_KEY));
    let cert = config.obtain(["zerossl.certauto.example"]).await.unwrap();
    let chain: Vec<Vec<u8>> = cert.chain().iter().map(|c| c.as_ref().to_vec()).collect();
    webpki_verify_chain(
        &chain,
        &pebble.root_der(0).await,
        "zerossl.certauto.example",
    )
    .unwrap();

    // A restart on the same storage uses the stored credentials: no request.
    let again = zerossl_for(&pebble, &api, storage.clone())
        .api_key(API_KEY)
        .email(EMAIL)
        .build()
        .await
        .unwrap();
    assert_eq!(api.requests(), 1);
    assert_eq!(again.eab_kid(), PEBBLE_EXAMPLE_EAB_KEYS[0].0);
    // The stored record is keyed by a hash of the API key, never the key.
    let stored = storage.list("acme", true).await.unwrap();
    assert!(stored.iter().any(|k| k.contains("/eab/key-")), "{stored:?}");
    assert!(stored.iter().all(|k| !k.contains(API_KEY)), "{stored:?}");
    // A secret on disk: private to its owner.
    let eab_file = stored.iter().find(|k| k.contains("/eab/")).unwrap();
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(dir.path().join(eab_file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600);

    // With only an e-mail: the e-mail endpoint, its own credentials, and an
    // account bound with them.
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let by_email = zerossl_for(&pebble, &api, storage.clone())
        .email(EMAIL)
        .build()
        .await
        .unwrap();
    assert_eq!(api.requests(), 2);
    assert_eq!(by_email.eab_kid(), PEBBLE_EXAMPLE_EAB_KEYS[1].0);
    by_email.acme().account().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zerossl_failures_are_typed_and_never_show_the_key() {
    init_tracing();
    let api = StandIn::start().await;
    let build = |key: &'static str| {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        ZeroSslIssuer::builder()
            .ca("http://127.0.0.1:1/directory")
            .api_url(&api.url)
            .api_key(key)
            .storage(storage)
            .build()
    };
    let zerossl_err = |e: Error| match e {
        Error::ZeroSsl(z) => z,
        other => panic!("expected a ZeroSslError, got {other:?}"),
    };
    let check_hidden = |key: &str, e: &ZeroSslError| {
        let shown = format!("{e} {e:?} {}", certauto::ErrorChain(e));
        assert!(!shown.contains(key), "{shown}");
    };

    let wrong = "sk_wrong_SECRET";
    let e = zerossl_err(build(wrong).await.unwrap_err());
    check_hidden(wrong, &e);
    match &e {
        ZeroSslError::Refused { code, kind, .. } => {
            assert_eq!((*code, kind.as_str()), (101, "invalid_access_key"));
        }
        other => panic!("{other:?}"),
    }
    let e = zerossl_err(build("sk_too_many").await.unwrap_err());
    assert!(
        matches!(e, ZeroSslError::Refused { code: 2904, .. }),
        "{e:?}"
    );
    let e = zerossl_err(build("sk_unauthorized").await.unwrap_err());
    check_hidden("sk_unauthorized", &e);
    assert!(
        matches!(
            e,
            ZeroSslError::HttpStatus {
                status: 401,
                code: Some(101),
                ..
            }
        ),
        "{e:?}"
    );
    let e = zerossl_err(build("sk_outage").await.unwrap_err());
    assert!(
        matches!(e, ZeroSslError::HttpStatus { status: 503, .. }),
        "{e:?}"
    );
    let e = zerossl_err(build("sk_garbage").await.unwrap_err());
    assert!(matches!(e, ZeroSslError::Malformed { .. }), "{e:?}");

    // A refused connection: the transport error does not show the key either
    // (it travels in the query string).
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let e = zerossl_err(
        ZeroSslIssuer::builder()
            .api_url("http://127.0.0.1:1")
            .api_key(wrong)
            .storage(storage)
            .build()
            .await
            .unwrap_err(),
    );
    check_hidden(wrong, &e);
    assert!(matches!(e, ZeroSslError::Request(_)), "{e:?}");

    // Neither key nor e-mail: refused before any request.
    let before = api.requests();
    let e = zerossl_err(
        ZeroSslIssuer::builder()
            .api_url(&api.url)
            .build()
            .await
            .unwrap_err(),
    );
    assert!(matches!(e, ZeroSslError::MissingCredentials), "{e:?}");
    assert_eq!(api.requests(), before);
}

#[test]
fn presets_refuse_what_their_ca_cannot_issue_before_any_request() {
    let names = |list: &[&str]| -> Vec<Identifier> {
        list.iter().map(|n| Identifier::parse(n).unwrap()).collect()
    };
    // Nothing listens on port 1: any request would fail differently.
    let unreachable = "http://127.0.0.1:1/directory";

    // An EAB CA without EAB credentials.
    for preset in [CaPreset::GOOGLE_TRUST_SERVICES, CaPreset::ZEROSSL] {
        let issuer = AcmeIssuer::builder()
            .preset(&preset)
            .ca(unreachable)
            .build();
        match issuer.precheck(&names(&["a.example"])) {
            Err(Error::Config(ConfigError::ExternalAccountRequired { ca })) => {
                assert_eq!(ca, preset.name);
            }
            other => panic!("{other:?}"),
        }
    }
    // With EAB credentials, DNS names pass; IP addresses do not (no IP certificates).
    let eab = certauto::ExternalAccountKey::new("kid", PEBBLE_EXAMPLE_EAB_KEYS[0].1).unwrap();
    let gts = AcmeIssuer::builder()
        .preset(&CaPreset::GOOGLE_TRUST_SERVICES)
        .external_account(eab)
        .build();
    gts.precheck(&names(&["a.example"])).unwrap();
    match gts.precheck(&names(&["a.example", "192.0.2.7"])) {
        Err(Error::Config(ConfigError::IpCertificatesNotIssued {
            name,
            profile_needed: None,
            ..
        })) => assert_eq!(name, "192.0.2.7"),
        other => panic!("{other:?}"),
    }
    // Let's Encrypt certifies IP addresses only under `shortlived`.
    let le = AcmeIssuer::builder()
        .preset(&CaPreset::LETS_ENCRYPT)
        .build();
    assert_eq!(le.staging_directory(), Some(certauto::LETS_ENCRYPT_STAGING));
    match le.precheck(&names(&["2001:db8::1"])) {
        Err(Error::Config(e @ ConfigError::IpCertificatesNotIssued { .. })) => {
            assert!(e.to_string().contains("shortlived"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let le_short = AcmeIssuer::builder()
        .preset(&CaPreset::LETS_ENCRYPT)
        .profile("shortlived")
        .build();
    le_short.precheck(&names(&["2001:db8::1"])).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_preset_makes_no_request_through_config() {
    // The whole path: Config refuses before contacting the (unreachable) CA,
    // with the typed error rather than a connection error.
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let issuer = AcmeIssuer::builder()
        .preset(&CaPreset::ZEROSSL)
        .ca("http://127.0.0.1:1/directory")
        .storage(storage.clone())
        .build();
    let config = Config::builder().storage(storage).issuer(issuer).build();
    let err = config.obtain(["eab.example"]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config(ConfigError::ExternalAccountRequired { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn each_issuer_limiter_follows_its_ca_and_the_default_allows_a_burst() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let le = AcmeIssuer::builder()
        .preset(&CaPreset::LETS_ENCRYPT)
        .storage(storage.clone())
        .build();
    let private = AcmeIssuer::builder()
        .ca("https://ca.internal.test/directory")
        .storage(storage.clone())
        .build();
    let (le_key, private_key) = (le.issuer_key(), private.issuer_key());
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(le)
        .issuer(private)
        .build();
    let le_limiter = config.rate_limiter(&le_key);
    assert_eq!(
        (le_limiter.max(), le_limiter.window()),
        (300, Duration::from_secs(3 * 3600))
    );
    // An unknown CA: the default, which lets a fresh server with 100 names
    // order them all at once (no waiting: every acquire succeeds now).
    let limiter = config.rate_limiter(&private_key);
    assert_eq!(
        (limiter.max(), limiter.window()),
        (DEFAULT_RATE_LIMIT_EVENTS, DEFAULT_RATE_LIMIT_WINDOW)
    );
    assert!((0..100).all(|_| limiter.try_acquire()));
    assert_eq!(limiter.available(), DEFAULT_RATE_LIMIT_EVENTS - 100);
    // One limiter per issuer: the same one is handed out again.
    assert!(Arc::ptr_eq(&limiter, &config.rate_limiter(&private_key)));

    // issuance_rate_limit overrides every issuer's.
    let config = Config::builder()
        .storage(storage.clone())
        .issuer(
            AcmeIssuer::builder()
                .preset(&CaPreset::LETS_ENCRYPT)
                .storage(storage)
                .build(),
        )
        .issuance_rate_limit(5, Duration::from_secs(60))
        .build();
    assert_eq!(config.rate_limiter(&le_key).max(), 5);
}
