//! OCSP stapling end to end: Pebble issues certificates naming an OCSP URL
//! (`ocspResponderURL`), `openssl ocsp` answers there signing with Pebble's
//! intermediate key, and a real TLS client sees the staple. Good responses are
//! stapled and persisted, a staple survives a restart, `revoked` triggers a
//! renewal, forged and stale responses are refused, and certificates without
//! an OCSP URL are normal. Time moves with a `ManualClock`, never by sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use certauto::ocsp::{self, CrlReason, OcspStatus};
use certauto::storage::keys;
use certauto::{
    AcmeIssuer, Clock, Config, Event, FileStorage, Http01Solver, Identifier, ManualClock,
    OcspError, Storage, start_maintenance,
};
use certauto_tests::{OcspResponder, Pebble, init_tracing, webpki_verify_chain};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Upper bound on one network step. Never a timed assertion: only there so
/// that a hang fails the test instead of blocking it.
const STEP_BOUND: Duration = Duration::from_secs(60);
/// Upper bound on an issuance (or renewal) against Pebble.
const ISSUE_BOUND: Duration = Duration::from_secs(180);
/// Past half of the responder's one-hour validity: a refresh is due.
const PAST_HALF: Duration = Duration::from_secs(31 * 60);
/// Past `nextUpdate` of the responder's one-hour validity: responses are stale.
const PAST_NEXT_UPDATE: Duration = Duration::from_secs(61 * 60);

async fn bounded<F: Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {bound:?}"))
}

/// A running responder and a Pebble whose certificates name it.
async fn start() -> (Arc<OcspResponder>, Pebble) {
    init_tracing();
    let responder = Arc::new(OcspResponder::bind());
    let pebble = Pebble::builder()
        .ocsp_responder_url(responder.url())
        .start()
        .await;
    responder.start(&pebble).await;
    (responder, pebble)
}

/// Events seen by a config, and a channel that receives them too.
#[derive(Clone)]
struct Events {
    seen: Arc<Mutex<Vec<Event>>>,
}

impl Events {
    fn all(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    fn named(&self, name: &str) -> Vec<Event> {
        self.all()
            .into_iter()
            .filter(|e| e.name() == name)
            .collect()
    }
}

struct Setup {
    config: Config,
    events: Events,
    rx: mpsc::UnboundedReceiver<Event>,
}

/// A config issuing from `pebble` into `storage`, at `clock`. Every newly
/// obtained serial is marked `good` at `responder` (if any) as soon as the
/// `cert_obtained` event fires, before stapling.
fn setup(
    pebble: &Pebble,
    storage: Arc<dyn Storage>,
    clock: Arc<ManualClock>,
    responder: Option<Arc<OcspResponder>>,
) -> Setup {
    let issuer = AcmeIssuer::builder()
        .ca(pebble.directory_url())
        .email("ocsp@certauto.example")
        .agreed(true)
        .trust_roots([CertificateDer::from(pebble.https_ca_der())])
        .only_trusted_roots()
        .http01_solver(Http01Solver::bind(SocketAddr::from((
            [127, 0, 0, 1],
            pebble.http_port(),
        ))))
        .storage(storage.clone())
        .build();
    let events = Events {
        seen: Arc::default(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = events.seen.clone();
    let config = Config::builder()
        .storage(storage)
        .issuer(issuer)
        .clock(clock)
        .on_event(move |event| {
            if let (Event::CertObtained { serial, .. }, Some(responder)) = (event, &responder) {
                responder.set_good(serial);
            }
            seen.lock().unwrap().push(event.clone());
            let _ = tx.send(event.clone());
        })
        .build();
    Setup { config, events, rx }
}

fn clock_now() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemTime::now()))
}

async fn manage(config: &Config, name: &str) {
    bounded(ISSUE_BOUND, "manage", config.manage([name]))
        .await
        .unwrap_or_else(|e| panic!("manage({name}) failed: {e}"));
}

/// The leaf and issuer DER of the certificate cached for `name`, and its staple.
fn cached(config: &Config, name: &str) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    let entry = config.cache().get(name).expect("certificate cached");
    let ck = entry.certified_key();
    (ck.cert[0].to_vec(), ck.cert[1].to_vec(), ck.ocsp.clone())
}

fn staple_key(name: &str, leaf: &[u8]) -> String {
    keys::ocsp_staple(&Identifier::parse(name).unwrap(), leaf)
}

async fn stored_staple(storage: &dyn Storage, name: &str, leaf: &[u8]) -> Option<Vec<u8>> {
    match storage.load(&staple_key(name, leaf)).await {
        Ok(der) => Some(der),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("loading the stored staple failed: {e}"),
    }
}

// ----- a real TLS client that reports the staple ----------------------------

/// Verifies the chain with webpki (Pebble's root only) and records the OCSP
/// response the server stapled.
#[derive(Debug)]
struct StapleRecorder {
    inner: Arc<WebPkiServerVerifier>,
    staple: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for StapleRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.staple.lock().unwrap() = Some(ocsp_response.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One TLS handshake with `config`'s server config for `name`, by a rustls
/// client trusting only Pebble's root. Returns the stapled OCSP response
/// (empty when none was stapled).
async fn handshake_staple(config: &Config, name: &str, root_der: &[u8]) -> Vec<u8> {
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config.server_config()));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // The handshake's outcome is checked on the client side.
        let _ = acceptor.accept(tcp).await;
    });
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).unwrap();
    let recorder = Arc::new(StapleRecorder {
        inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), ring.clone())
            .build()
            .unwrap(),
        staple: Mutex::new(None),
    });
    let client = ClientConfig::builder_with_provider(ring)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tls = bounded(STEP_BOUND, "TLS handshake", async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await
    })
    .await
    .unwrap_or_else(|e| panic!("handshake for {name} failed: {e}"));
    let chain: Vec<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    webpki_verify_chain(&chain, root_der, name).unwrap();
    drop(tls);
    bounded(STEP_BOUND, "TLS server task", server)
        .await
        .unwrap();
    let staple = recorder.staple.lock().unwrap().take();
    staple.expect("the verifier saw the server certificate")
}

/// `openssl ocsp -respin` verifies `staple` for `leaf` independently of
/// CertAuto; returns its report (stdout and stderr).
fn openssl_verify_staple(staple: &[u8], leaf: &[u8], issuer: &[u8], root_pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pem = |der: &[u8]| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    };
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("staple.der"), staple).unwrap();
    std::fs::write(path("leaf.pem"), pem(leaf)).unwrap();
    std::fs::write(path("issuer.pem"), pem(issuer)).unwrap();
    std::fs::write(path("root.pem"), root_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "ocsp",
            "-respin",
            "staple.der",
            "-issuer",
            "issuer.pem",
            "-cert",
            "leaf.pem",
            "-CAfile",
            "root.pem",
            "-verify_other",
            "issuer.pem",
            "-no_nonce",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run openssl (install the Debian package `openssl`)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "openssl ocsp -respin failed: {report}"
    );
    report
}

fn assert_good(staple: &[u8], leaf: &[u8], issuer: &[u8], at: SystemTime) -> ocsp::OcspResponse {
    let resp = ocsp::verify(staple, leaf, issuer, at).unwrap();
    assert_eq!(resp.status(), OcspStatus::Good);
    resp
}

// ----- tests ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_response_is_stapled_persisted_and_refreshed_at_half_validity() {
    const NAME: &str = "staple.ocsp.example";
    let (responder, pebble) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()));
    let clock = clock_now();
    let s = setup(
        &pebble,
        storage.clone(),
        clock.clone(),
        Some(responder.clone()),
    );
    manage(&s.config, NAME).await;

    // Stapled at once, from the responder, and persisted under ocsp/.
    let (leaf, issuer, staple) = cached(&s.config, NAME);
    let staple = staple.expect("a staple after obtaining");
    assert_eq!(responder.requests(), 1);
    let first = assert_good(&staple, &leaf, &issuer, clock.now());
    assert_eq!(
        stored_staple(&*storage, NAME, &leaf).await.as_deref(),
        Some(&staple[..])
    );
    assert!(dir.path().join(staple_key(NAME, &leaf)).is_file());
    let stapled = s.events.named("cert_ocsp_stapled");
    assert_eq!(stapled.len(), 1, "{stapled:?}");

    // A real client receives it, and OpenSSL accepts it for this certificate.
    let root = pebble.root_der(0).await;
    assert_eq!(handshake_staple(&s.config, NAME, &root).await, staple);
    let report = openssl_verify_staple(&staple, &leaf, &issuer, &pebble.root_pem(0).await);
    assert!(report.contains("Response verify OK"), "{report}");
    assert!(report.contains("leaf.pem: good"), "{report}");

    // Before half its validity, a check keeps it without asking the responder.
    let report = s.config.check_ocsp().await;
    assert_eq!(report.checked, 1);
    assert!(
        report.refreshed.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert_eq!(responder.requests(), 1);

    // Past half its validity, the check fetches a new one, staples and persists it.
    clock.advance(PAST_HALF);
    let report = s.config.check_ocsp().await;
    assert_eq!(report.refreshed, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(responder.requests(), 2);
    let (_, _, refreshed) = cached(&s.config, NAME);
    let refreshed = refreshed.expect("still stapled");
    let second = assert_good(&refreshed, &leaf, &issuer, clock.now());
    assert!(second.this_update() >= first.this_update());
    assert_eq!(
        stored_staple(&*storage, NAME, &leaf).await.as_deref(),
        Some(&refreshed[..])
    );
    assert_eq!(handshake_staple(&s.config, NAME, &root).await, refreshed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staple_survives_a_restart_without_the_responder() {
    const NAME: &str = "restart.ocsp.example";
    let (responder, pebble) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_now();
    let staple = {
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()));
        let s = setup(&pebble, storage, clock.clone(), Some(responder.clone()));
        manage(&s.config, NAME).await;
        cached(&s.config, NAME)
            .2
            .expect("stapled before the restart")
    };
    responder.stop();
    let asked = responder.requests();

    // A new process: new storage handle, new cache, same folder, no responder.
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()));
    let s = setup(&pebble, storage, clock.clone(), None);
    manage(&s.config, NAME).await;
    let (leaf, issuer, restored) = cached(&s.config, NAME);
    assert_eq!(
        restored.as_deref(),
        Some(&staple[..]),
        "stapled from storage"
    );
    assert_good(&staple, &leaf, &issuer, clock.now());
    assert_eq!(responder.requests(), asked, "nothing was fetched");
    assert_eq!(
        s.events.named("cert_obtained").len(),
        0,
        "loaded, not issued"
    );
    assert_eq!(s.events.named("cert_ocsp_stapled").len(), 1);
    let root = pebble.root_der(0).await;
    assert_eq!(handshake_staple(&s.config, NAME, &root).await, staple);
    // Checking again changes nothing: the staple is current.
    let report = s.config.check_ocsp().await;
    assert!(
        report.refreshed.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificate_is_renewed_at_once() {
    const NAME: &str = "revoked.ocsp.example";
    let (responder, pebble) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()));
    let clock = clock_now();
    let s = setup(
        &pebble,
        storage.clone(),
        clock.clone(),
        Some(responder.clone()),
    );
    manage(&s.config, NAME).await;
    let old = s.config.cache().get(NAME).unwrap();
    let (old_leaf, _, staple) = cached(&s.config, NAME);
    assert!(staple.is_some());

    responder.set_revoked(old.serial());
    clock.advance(PAST_HALF);
    let report = bounded(ISSUE_BOUND, "check_ocsp", s.config.check_ocsp()).await;
    assert_eq!(report.revoked, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(report.renewed, vec![NAME.to_owned()], "{report:?}");

    let revoked = s.events.named("cert_ocsp_revoked");
    let [
        Event::CertOcspRevoked {
            serial,
            reason,
            revoked_at,
            ..
        },
    ] = &revoked[..]
    else {
        panic!("one cert_ocsp_revoked event expected: {revoked:?}")
    };
    assert_eq!(serial, old.serial());
    assert_eq!(*reason, Some(CrlReason::KeyCompromise));
    assert_eq!(
        *revoked_at,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
    );
    let renewed = s.events.named("cert_renewed");
    assert_eq!(renewed.len(), 1, "{:?}", s.events.all());

    // The new certificate serves, with its own good staple; the revoked one's
    // stored staple is gone.
    let new = s.config.cache().get(NAME).unwrap();
    assert_ne!(new.serial(), old.serial());
    let (leaf, issuer, staple) = cached(&s.config, NAME);
    assert_good(
        &staple.expect("the new certificate is stapled"),
        &leaf,
        &issuer,
        clock.now(),
    );
    assert!(stored_staple(&*storage, NAME, &old_leaf).await.is_none());
    assert!(stored_staple(&*storage, NAME, &leaf).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_loop_renews_a_revoked_certificate() {
    const NAME: &str = "loop.ocsp.example";
    let (responder, pebble) = start().await;
    let storage: Arc<dyn Storage> = Arc::new(certauto::MemoryStorage::new());
    let clock = clock_now();
    let mut s = setup(&pebble, storage, clock.clone(), Some(responder.clone()));
    manage(&s.config, NAME).await;
    let old = s.config.cache().get(NAME).unwrap();
    responder.set_revoked(old.serial());
    clock.advance(PAST_HALF);
    while s.rx.try_recv().is_ok() {}

    // The OCSP loop runs a check as soon as maintenance starts.
    let handle = start_maintenance(&s.config);
    let renewed = bounded(ISSUE_BOUND, "renewal after revocation", async {
        let mut saw_revoked = false;
        loop {
            match s.rx.recv().await.expect("event channel open") {
                Event::CertOcspRevoked { .. } => saw_revoked = true,
                Event::CertRenewed { serial, .. } => break (saw_revoked, serial),
                _ => {}
            }
        }
    })
    .await;
    assert!(renewed.0, "cert_ocsp_revoked came first");
    assert_ne!(renewed.1, old.serial());
    s.config.cache().stop();
    bounded(STEP_BOUND, "maintenance stop", handle).await;
    assert_eq!(s.config.ocsp_check_interval(), Duration::from_secs(3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_response_is_rejected_and_not_stapled() {
    const NAME: &str = "forged.ocsp.example";
    let (responder, pebble) = start().await;
    let storage: Arc<dyn Storage> = Arc::new(certauto::MemoryStorage::new());
    let clock = clock_now();
    let s = setup(
        &pebble,
        storage.clone(),
        clock.clone(),
        Some(responder.clone()),
    );
    // The forger copies the intermediate's name but signs with its own key.
    responder.forge();
    manage(&s.config, NAME).await;
    let (leaf, issuer, staple) = cached(&s.config, NAME);
    assert!(staple.is_none(), "a forged response was stapled");
    assert!(stored_staple(&*storage, NAME, &leaf).await.is_none());
    let entry = s.config.cache().get(NAME).unwrap();
    let err = ocsp::query(entry.ocsp_urls(), &leaf, &issuer, clock.now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OcspError::BadSignature | OcspError::UntrustedResponder),
        "{err:?}"
    );
    let report = s.config.check_ocsp().await;
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");
    assert!(cached(&s.config, NAME).2.is_none());
    let root = pebble.root_der(0).await;
    assert!(handshake_staple(&s.config, NAME, &root).await.is_empty());

    // Once the issuer signs again, the next check staples.
    responder.sign_as_issuer();
    let report = s.config.check_ocsp().await;
    assert_eq!(report.refreshed, vec![NAME.to_owned()], "{report:?}");
    assert!(cached(&s.config, NAME).2.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_response_is_refused_and_removed() {
    const NAME: &str = "stale.ocsp.example";
    let (responder, pebble) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()));
    let clock = clock_now();
    let s = setup(
        &pebble,
        storage.clone(),
        clock.clone(),
        Some(responder.clone()),
    );
    manage(&s.config, NAME).await;
    let (leaf, issuer, staple) = cached(&s.config, NAME);
    let staple = staple.expect("stapled");
    let root = pebble.root_der(0).await;

    // Past nextUpdate the served and stored response is refused and a new one
    // is fetched; the responder's clock is an hour behind ours, so its answer
    // is stale for us as well and is refused too. The stale staple is removed.
    clock.advance(PAST_NEXT_UPDATE);
    let err = ocsp::verify(&staple, &leaf, &issuer, clock.now()).unwrap_err();
    assert!(matches!(err, OcspError::Stale { .. }), "{err:?}");
    let asked = responder.requests();
    let report = s.config.check_ocsp().await;
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");
    assert_eq!(
        responder.requests(),
        asked + 1,
        "a new response was fetched"
    );
    assert!(cached(&s.config, NAME).2.is_none(), "stale staple removed");
    assert!(handshake_staple(&s.config, NAME, &root).await.is_empty());

    // With the responder down, a restarted process does not staple the stale
    // response from storage either.
    responder.stop();
    let s2 = setup(
        &pebble,
        Arc::new(FileStorage::new(dir.path())),
        clock.clone(),
        None,
    );
    manage(&s2.config, NAME).await;
    assert!(
        cached(&s2.config, NAME).2.is_none(),
        "stale staple not served"
    );
    assert!(handshake_staple(&s2.config, NAME, &root).await.is_empty());
    let report = s2.config.check_ocsp().await;
    assert_eq!(report.failed, vec![NAME.to_owned()], "{report:?}");
    assert!(s2.events.named("cert_ocsp_stapled").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_without_an_ocsp_url_are_normal() {
    const NAME: &str = "no-url.ocsp.example";
    init_tracing();
    // Like Let's Encrypt since 2025: no OCSP URL in the certificates.
    let pebble = Pebble::builder().start().await;
    let storage: Arc<dyn Storage> = Arc::new(certauto::MemoryStorage::new());
    let s = setup(&pebble, storage, clock_now(), None);
    manage(&s.config, NAME).await;
    let entry = s.config.cache().get(NAME).unwrap();
    assert!(entry.ocsp_urls().is_empty());
    assert!(entry.certified_key().ocsp.is_none());
    let report = s.config.check_ocsp().await;
    assert_eq!(report, certauto::OcspReport::default());
    assert!(s.events.named("cert_ocsp_stapled").is_empty());
    let root = pebble.root_der(0).await;
    assert!(handshake_staple(&s.config, NAME, &root).await.is_empty());
}
