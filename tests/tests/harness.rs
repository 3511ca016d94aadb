//! Smoke tests of the Pebble harness itself: it starts, serves its directory and roots over
//! the generated HTTPS CA, configures the mock DNS, and cleans up after itself.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use certauto_tests::{
    DEFAULT_PROFILE, HARNESS_USER_AGENT, Pebble, init_tracing, normalize_serial, serial_hex,
    webpki_verify_chain,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_serves_directory_and_roots() {
    init_tracing();
    let pebble = Pebble::builder().nonce_reject_percent(0).start().await;

    assert!(pebble.directory_url().starts_with("https://127.0.0.1:"));
    assert!(pebble.directory_url().ends_with("/dir"));
    assert!(
        pebble
            .https_ca_pem()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_ne!(pebble.http_port(), pebble.tls_port());
    assert!(pebble.dns_addr().ip().is_loopback());

    // The directory over a client trusting only the generated CA. Pebble requires a
    // User-Agent (RFC 8555 §6.1) and refuses requests without one.
    let anonymous = reqwest::Client::builder()
        .tls_backend_preconfigured(pebble.rustls_client_config())
        .no_proxy()
        .build()
        .unwrap();
    let response = anonymous.get(pebble.directory_url()).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    let problem = response.text().await.unwrap();
    assert!(problem.contains("User-Agent"), "{problem}");
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(pebble.rustls_client_config())
        .user_agent(HARNESS_USER_AGENT)
        .no_proxy()
        .build()
        .unwrap();
    let response = client.get(pebble.directory_url()).send().await.unwrap();
    assert!(response.status().is_success());
    let directory: serde_json::Value =
        serde_json::from_str(&response.text().await.unwrap()).unwrap();
    for key in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
        "renewalInfo",
    ] {
        let url = directory[key]
            .as_str()
            .unwrap_or_else(|| panic!("directory lacks {key}: {directory}"));
        assert!(url.starts_with("https://127.0.0.1:"), "{key}: {url}");
    }
    assert_eq!(directory["meta"]["externalAccountRequired"], false);
    // Exactly one profile unless a test adds more, so orders naming none are deterministic.
    let profiles = directory["meta"]["profiles"].as_object().unwrap();
    assert_eq!(
        profiles.keys().collect::<Vec<_>>(),
        [DEFAULT_PROFILE],
        "{directory}"
    );

    // Roots, intermediates and keys from the management interface.
    let root_pem = pebble.root_pem(0).await;
    assert!(root_pem.contains("BEGIN CERTIFICATE"), "{root_pem}");
    let root_der = pebble.root_der(0).await;
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    assert!(
        root.subject().to_string().contains("Pebble Root CA"),
        "{}",
        root.subject()
    );
    let intermediate_der = pebble.intermediate_der(0).await;
    let (_, intermediate) = x509_parser::parse_x509_certificate(&intermediate_der).unwrap();
    assert_eq!(intermediate.issuer(), root.subject());
    assert!(pebble.root_key_pem(0).await.contains("PRIVATE KEY"));
    assert!(pebble.intermediate_key_pem(0).await.contains("PRIVATE KEY"));

    // Unknown serials are a 404.
    assert!(pebble.try_cert_status("00:DE:AD:BE:EF").await.is_none());

    // A second instance runs side by side on other ports.
    let other = Pebble::builder().start().await;
    assert_ne!(other.directory_url(), pebble.directory_url());
    assert_ne!(other.root_der(0).await, root_der);
}

#[tokio::test]
async fn mock_dns_records() {
    init_tracing();
    let pebble = Pebble::start().await;

    assert_eq!(
        pebble.lookup_a("anything.example.test").await,
        vec![Ipv4Addr::LOCALHOST]
    );
    pebble
        .add_a_record("other.example.test", Ipv4Addr::new(127, 0, 0, 2))
        .await;
    assert_eq!(
        pebble.lookup_a("other.example.test").await,
        vec![Ipv4Addr::new(127, 0, 0, 2)]
    );
    pebble.clear_a_record("other.example.test").await;
    assert_eq!(
        pebble.lookup_a("other.example.test").await,
        vec![Ipv4Addr::LOCALHOST]
    );

    let name = "_acme-challenge.example.test";
    assert!(pebble.lookup_txt(name).await.is_empty());
    pebble.add_txt_record(name, "first").await;
    pebble.add_txt_record(name, "second").await;
    let mut txt = pebble.lookup_txt(name).await;
    txt.sort();
    assert_eq!(txt, ["first", "second"]);
    pebble.clear_txt_record(name).await;
    assert!(pebble.lookup_txt(name).await.is_empty());
}

#[tokio::test]
async fn options_are_applied() {
    init_tracing();
    let eab = vec![(
        "kid-1".to_owned(),
        certauto_tests::PEBBLE_EXAMPLE_EAB_KEYS[0].1.to_owned(),
    )];
    let pebble = Pebble::builder()
        .nonce_reject_percent(0)
        .alternate_roots(1)
        .chain_length(2)
        .authz_reuse_percent(0)
        .eab_keys(eab)
        .eab_required(true)
        .certificate_validity_secs(3600)
        .profile("shortlived", "Short-lived certificates", 600)
        .retry_after(3, 5)
        .ocsp_responder_url("http://127.0.0.1:1/ocsp")
        .http_port(18080)
        .tls_port(18443)
        .start()
        .await;
    assert_eq!((pebble.http_port(), pebble.tls_port()), (18080, 18443));

    let directory: serde_json::Value = serde_json::from_str(
        &pebble
            .http_client()
            .get(pebble.directory_url())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(directory["meta"]["externalAccountRequired"], true);
    assert_eq!(
        directory["meta"]["profiles"]["shortlived"], "Short-lived certificates",
        "{directory}"
    );
    assert_ne!(pebble.root_der(0).await, pebble.root_der(1).await);

    let log = pebble.pebble_log();
    assert!(
        log.contains(
            r#"Loaded profile "default" with certificate validity period of 3600 seconds"#
        ),
        "{log}"
    );
    assert!(
        log.contains(
            r#"Loaded profile "shortlived" with certificate validity period of 600 seconds"#
        ),
        "{log}"
    );
    assert!(log.contains("reject 0% of good nonces"), "{log}");
}

#[tokio::test]
async fn children_are_killed_on_drop() {
    let pebble = Pebble::start().await;
    let acme_addr = pebble
        .directory_url()
        .trim_start_matches("https://")
        .trim_end_matches("/dir")
        .to_owned();
    let cts_addr = pebble
        .challtestsrv_management_url()
        .trim_start_matches("http://")
        .to_owned();
    let dir = pebble.temp_dir().to_owned();
    drop(pebble);
    assert!(
        tokio::net::TcpStream::connect(&acme_addr).await.is_err(),
        "pebble still listening"
    );
    assert!(
        tokio::net::TcpStream::connect(&cts_addr).await.is_err(),
        "challtestsrv still listening"
    );
    assert!(!dir.exists(), "temp dir not removed");
}

#[test]
fn webpki_chain_helper() {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["example.test".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &*ca)
        .unwrap();
    let chain = vec![leaf.der().to_vec()];
    let root = ca.der().to_vec();

    webpki_verify_chain(&chain, &root, "example.test").unwrap();
    webpki_verify_chain(&chain, &root, "127.0.0.1").unwrap();
    assert!(webpki_verify_chain(&chain, &root, "other.test").is_err());
    assert!(webpki_verify_chain(&[], &root, "example.test").is_err());
    let other_root = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()])
        .unwrap()
        .cert
        .der()
        .to_vec();
    assert!(webpki_verify_chain(&chain, &other_root, "example.test").is_err());

    assert_eq!(normalize_serial("00:0A:bC"), "abc");
    assert_eq!(normalize_serial("0x0000"), "0");
    let serial = serial_hex(leaf.der());
    assert!(
        !serial.starts_with('0')
            && serial
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
}
