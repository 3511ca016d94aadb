//! DNS-01 through a real PowerDNS Authoritative server: Pebble validates by asking
//! PowerDNS (its `-dnsserver`), and CertAuto writes the records through the PowerDNS
//! provider's HTTP API calls.
//!
//! Covered: a wildcard and its apex in one certificate (two values at one name, written
//! at once), a foreign TXT value at that name left in place by cleanup, the two values
//! coexisting and removed one at a time, a wrong API key (a typed auth error) and a name
//! in no zone of the server (a typed zone error).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use certauto::dns::PowerDns;
use certauto::{Dns01Solver, DnsError, DnsProvider};
use certauto_tests::{Pebble, PowerDnsServer, assert_issued_for, dns01_config, init_tracing};

/// A TXT value of another tool, seeded at `_acme-challenge.example.test`.
const FOREIGN: &str = "foreign-value-not-ours";
/// Where the apex and the wildcard of `example.test` are both validated.
const CHALLENGE_NAME: &str = "_acme-challenge.example.test";

async fn powerdns_with_foreign_value() -> PowerDnsServer {
    init_tracing();
    PowerDnsServer::builder()
        .zone("example.test")
        .txt(CHALLENGE_NAME, FOREIGN)
        .start()
        .await
}

fn provider(pdns: &PowerDnsServer) -> PowerDns {
    PowerDns::builder(pdns.api_url(), pdns.api_key())
        .build()
        .unwrap()
}

#[tokio::test]
async fn wildcard_and_apex_in_one_certificate_through_powerdns() {
    let pdns = powerdns_with_foreign_value().await;
    // PowerDNS answers Pebble itself: it is authoritative for the names, no
    // recursion needed.
    let pebble = Pebble::builder().dns_server(pdns.dns_addr()).start().await;
    let solver = Dns01Solver::builder(provider(&pdns))
        .resolvers([pdns.dns_addr()])
        .propagation_timeout(Duration::from_secs(30))
        .polling_interval(Duration::from_millis(50))
        .build();
    let config = dns01_config(&pebble, solver);
    let cert = config
        .obtain(["example.test", "*.example.test"])
        .await
        .unwrap();
    assert_issued_for(&pebble, &cert, &["example.test", "*.example.test"]).await;
    // Both of our values were removed; the foreign one stays.
    assert_eq!(pdns.lookup_txt(CHALLENGE_NAME).await, [FOREIGN]);
}

#[tokio::test]
async fn two_values_at_one_name_coexist_and_go_one_at_a_time() {
    let pdns = powerdns_with_foreign_value().await;
    let dns = provider(&pdns);
    // Written at once, as the apex's and the wildcard's challenges are.
    let (apex, wild) = tokio::join!(
        dns.create_txt_record(CHALLENGE_NAME, "apex-value"),
        dns.create_txt_record(CHALLENGE_NAME, "wildcard-value"),
    );
    apex.unwrap();
    wild.unwrap();
    assert_eq!(
        pdns.lookup_txt(CHALLENGE_NAME).await,
        ["apex-value", FOREIGN, "wildcard-value"]
    );
    // Idempotent: writing a value again changes nothing.
    dns.create_txt_record(CHALLENGE_NAME, "apex-value")
        .await
        .unwrap();
    assert_eq!(pdns.lookup_txt(CHALLENGE_NAME).await.len(), 3);

    dns.delete_txt_record(CHALLENGE_NAME, "apex-value")
        .await
        .unwrap();
    assert_eq!(
        pdns.lookup_txt(CHALLENGE_NAME).await,
        [FOREIGN, "wildcard-value"]
    );
    // Deleting a value that is gone succeeds.
    dns.delete_txt_record(CHALLENGE_NAME, "apex-value")
        .await
        .unwrap();
    dns.delete_txt_record(CHALLENGE_NAME, "wildcard-value")
        .await
        .unwrap();
    assert_eq!(pdns.lookup_txt(CHALLENGE_NAME).await, [FOREIGN]);

    // At a name of ours alone, the last value takes the RRset with it.
    let own = "_acme-challenge.www.example.test";
    dns.create_txt_record(own, "only-value").await.unwrap();
    assert_eq!(pdns.lookup_txt(own).await, ["only-value"]);
    dns.delete_txt_record(own, "only-value").await.unwrap();
    assert!(pdns.lookup_txt(own).await.is_empty());
}

#[tokio::test]
async fn a_wrong_api_key_is_refused() {
    let pdns = powerdns_with_foreign_value().await;
    let dns = PowerDns::builder(pdns.api_url(), "not-the-api-key")
        .build()
        .unwrap();
    let err = dns
        .create_txt_record(CHALLENGE_NAME, "value")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::AuthRefused { .. }), "{err}");
    assert!(!err.to_string().contains("not-the-api-key"), "{err}");
    assert_eq!(pdns.lookup_txt(CHALLENGE_NAME).await, [FOREIGN]);
}

#[tokio::test]
async fn a_name_in_no_zone_of_the_server_is_zone_not_found() {
    let pdns = powerdns_with_foreign_value().await;
    let dns = provider(&pdns);
    let err = dns
        .create_txt_record("_acme-challenge.www.unknown.test", "value")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::ZoneNotFound { name, .. } if name == "_acme-challenge.www.unknown.test"),
        "{err}"
    );
    // A name that only ends like a hosted zone is not in it.
    let err = dns
        .delete_txt_record("_acme-challenge.badexample.test", "value")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
}
