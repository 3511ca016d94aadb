//! DNS-01 end to end through BIND: Pebble validates through a real DNS server
//! (its `-dnsserver` is a recursive BIND in front of the authoritative one),
//! and CertAuto writes the records through the RFC 2136 provider.
//!
//! Covered: a wildcard and its apex in one certificate and as two (checking
//! the authoritative servers directly), with updates over TCP and over UDP;
//! a CNAME-delegated `_acme-challenge` (the record lands in the delegated
//! zone); 10 names in parallel on one zone; a TSIG key BIND refuses (a typed
//! auth error, before the CA is asked to validate); an HMAC-SHA512 key; a
//! propagation timeout when the servers checked never see the record;
//! cleanup that leaves a foreign TXT value in place; and the provider alone
//! against BIND (exact values, idempotence, concurrent values at one name,
//! unknown zone and key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certauto::dns::{Rfc2136, Rfc2136Transport, TsigAlgorithm};
use certauto::{Dns01Solver, Dns01SolverBuilder, DnsError, DnsProvider, Error, SolverError};
use certauto_tests::{Bind, Pebble, assert_issued_for, dns01_config, init_tracing};

/// A TXT value of another tool, seeded in the zone before every test.
const FOREIGN: &str = "foreign-value-not-ours";
/// What Pebble logs when it starts validating a challenge.
const PEBBLE_VALIDATES: &str = "Pulled a task from the Tasks queue";

/// The RFC 2136 provider for `bind`'s authoritative server and test key.
fn rfc2136(bind: &Bind) -> Rfc2136 {
    Rfc2136::builder(bind.addr())
        .tsig(bind.key_name(), bind.key_secret(), bind.key_algorithm())
        .build()
        .unwrap()
}

/// A solver checking propagation the default way: SOA and NS through the
/// recursive BIND, then every authoritative server directly, recursion off
/// (the harness's authoritative BIND listens on a test port, not 53).
fn authoritative_check(provider: impl DnsProvider + 'static, bind: &Bind) -> Dns01SolverBuilder {
    Dns01Solver::builder(provider)
        .bootstrap_resolvers([bind.recursive_addr()])
        .nameserver_port(bind.addr().port())
        .propagation_timeout(Duration::from_secs(30))
        .polling_interval(Duration::from_millis(50))
}

async fn bind_with_foreign_value() -> Bind {
    Bind::builder()
        .txt("_acme-challenge.example.test", FOREIGN)
        .cname(
            "_acme-challenge.alias.example.test",
            "_acme-challenge.alias.delegated.test",
        )
        .recursive(true)
        .start()
        .await
}

async fn pebble_through(dns: std::net::SocketAddr) -> Pebble {
    init_tracing();
    Pebble::builder().dns_server(dns).start().await
}

#[tokio::test]
async fn wildcard_and_apex_in_one_certificate_through_rfc2136_on_bind() {
    let bind = bind_with_foreign_value().await;
    let pebble = pebble_through(bind.recursive_addr()).await;
    let config = dns01_config(&pebble, authoritative_check(rfc2136(&bind), &bind).build());
    let cert = config
        .obtain(["example.test", "*.example.test"])
        .await
        .unwrap();
    assert_issued_for(&pebble, &cert, &["example.test", "*.example.test"]).await;
    // Pebble really validated (what the auth-error test checks did not happen there).
    assert!(pebble.pebble_log().contains(PEBBLE_VALIDATES));
    // Both of our values were removed; the foreign one stays.
    assert_eq!(
        bind.lookup_txt("_acme-challenge.example.test").await,
        [FOREIGN]
    );
}

#[tokio::test]
async fn wildcard_and_apex_as_separate_certificates_through_rfc2136() {
    let bind = bind_with_foreign_value().await;
    // Two orders at once write two values at one record name, and either may
    // be validated first: a CA resolver that caches the TXT set (the
    // recursive BIND keeps it a second) can then validate the other against
    // the set it saw before the second value was written. That is the CA's
    // cache, not the client (documented on `Dns01Solver`: ask for both names
    // in one certificate), so here Pebble asks the authoritative server.
    let pebble = pebble_through(bind.addr()).await;
    let config = dns01_config(&pebble, authoritative_check(rfc2136(&bind), &bind).build());
    let (apex, wild) = tokio::join!(
        config.obtain(["example.test"]),
        config.obtain(["*.example.test"])
    );
    assert_issued_for(&pebble, &apex.unwrap(), &["example.test"]).await;
    assert_issued_for(&pebble, &wild.unwrap(), &["*.example.test"]).await;
    assert_eq!(
        bind.lookup_txt("_acme-challenge.example.test").await,
        [FOREIGN]
    );
    // The cache serves the wildcard for a name it covers, the apex for itself.
    let cache = config.cache();
    assert!(cache.get("www.example.test").is_some());
    assert!(cache.get("example.test").is_some());
    assert!(cache.get("a.b.example.test").is_none());
}

#[tokio::test]
async fn cname_delegated_challenge_lands_in_the_delegated_zone() {
    let bind = bind_with_foreign_value().await;
    let pebble = pebble_through(bind.recursive_addr()).await;
    // A provider that may only write the delegated zone, as such setups are.
    let provider = Rfc2136::builder(bind.addr())
        .tsig(bind.key_name(), bind.key_secret(), bind.key_algorithm())
        .zone("delegated.test")
        .build()
        .unwrap();
    let writes = Arc::new(Recording::new(provider));
    let config = dns01_config(&pebble, authoritative_check(writes.clone(), &bind).build());
    let cert = config.obtain(["alias.example.test"]).await.unwrap();
    assert_issued_for(&pebble, &cert, &["alias.example.test"]).await;
    let created = writes.created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0], "_acme-challenge.alias.delegated.test");
    assert!(
        bind.lookup_txt("_acme-challenge.alias.delegated.test")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn ten_names_in_parallel_on_one_zone() {
    let bind = bind_with_foreign_value().await;
    let pebble = pebble_through(bind.recursive_addr()).await;
    let config = dns01_config(&pebble, authoritative_check(rfc2136(&bind), &bind).build());
    let names: Vec<String> = (0..10).map(|i| format!("n{i}.example.test")).collect();
    let tasks = names.iter().map(|name| {
        let config = config.clone();
        let name = name.clone();
        async move { config.obtain([name.as_str()]).await }
    });
    let results = futures_join_all(tasks).await;
    for (name, result) in names.iter().zip(results) {
        let cert = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_issued_for(&pebble, &cert, &[name.as_str()]).await;
        assert!(
            bind.lookup_txt(&format!("_acme-challenge.{name}"))
                .await
                .is_empty()
        );
    }
    assert_eq!(
        bind.lookup_txt("_acme-challenge.example.test").await,
        [FOREIGN]
    );
}

#[tokio::test]
async fn a_key_bind_refuses_is_an_auth_error_before_the_ca_validates() {
    let bind = bind_with_foreign_value().await;
    let pebble = pebble_through(bind.recursive_addr()).await;
    let provider = Rfc2136::builder(bind.addr())
        .tsig(
            bind.key_name(),
            "d3JvbmctZ3Vlc3Mtb2YtYS1zZWNyZXQ=",
            TsigAlgorithm::HmacSha256,
        )
        .build()
        .unwrap();
    let config = dns01_config(&pebble, authoritative_check(provider, &bind).build());
    let err = config.obtain(["example.test"]).await.unwrap_err();
    let dns = find_dns_error(&err).unwrap_or_else(|| panic!("not a DNS error: {err}"));
    assert!(matches!(dns, DnsError::AuthRefused { .. }), "{dns}");
    // Pebble was never asked to validate anything.
    assert!(
        !pebble.pebble_log().contains(PEBBLE_VALIDATES),
        "Pebble validated a challenge"
    );
}

#[tokio::test]
async fn propagation_times_out_when_the_checked_servers_never_see_the_record() {
    let bind = bind_with_foreign_value().await;
    // A second server with the same zone that never receives the update (a
    // secondary that has not caught up): the check asks only it.
    let stale = Bind::builder().start().await;
    let pebble = pebble_through(bind.recursive_addr()).await;
    let solver = Dns01Solver::builder(rfc2136(&bind))
        .resolvers([stale.addr()])
        .propagation_timeout(Duration::from_millis(500))
        .polling_interval(Duration::from_millis(50))
        .build();
    let config = dns01_config(&pebble, solver);
    let err = config.obtain(["example.test"]).await.unwrap_err();
    let timeout = find_solver_error(&err).unwrap_or_else(|| panic!("{err}"));
    assert!(
        matches!(timeout, SolverError::PropagationTimeout { record, .. } if record == "_acme-challenge.example.test"),
        "{timeout}"
    );
    // The value written was cleaned up all the same.
    assert_eq!(
        bind.lookup_txt("_acme-challenge.example.test").await,
        [FOREIGN]
    );
}

#[tokio::test]
async fn wildcard_and_apex_with_updates_over_udp() {
    let bind = bind_with_foreign_value().await;
    let pebble = pebble_through(bind.recursive_addr()).await;
    let provider = Rfc2136::builder(bind.addr())
        .tsig(bind.key_name(), bind.key_secret(), bind.key_algorithm())
        .transport(Rfc2136Transport::Udp)
        .build()
        .unwrap();
    let config = dns01_config(&pebble, authoritative_check(provider, &bind).build());
    let cert = config
        .obtain(["example.test", "*.example.test"])
        .await
        .unwrap();
    assert_issued_for(&pebble, &cert, &["example.test", "*.example.test"]).await;
    assert_eq!(
        bind.lookup_txt("_acme-challenge.example.test").await,
        [FOREIGN]
    );
}

#[tokio::test]
async fn an_hmac_sha512_key() {
    let bind = Bind::builder()
        .key_algorithm(TsigAlgorithm::HmacSha512)
        .recursive(true)
        .start()
        .await;
    assert_eq!(bind.key_algorithm(), TsigAlgorithm::HmacSha512);
    // The same secret under another algorithm is another key to BIND.
    let wrong_algorithm = Rfc2136::builder(bind.addr())
        .tsig(
            bind.key_name(),
            bind.key_secret(),
            TsigAlgorithm::HmacSha256,
        )
        .build()
        .unwrap();
    let err = wrong_algorithm
        .create_txt_record("_acme-challenge.www.example.test", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::AuthRefused { .. }), "{err}");

    let pebble = pebble_through(bind.recursive_addr()).await;
    let config = dns01_config(&pebble, authoritative_check(rfc2136(&bind), &bind).build());
    let cert = config.obtain(["www.example.test"]).await.unwrap();
    assert_issued_for(&pebble, &cert, &["www.example.test"]).await;
    assert!(
        bind.lookup_txt("_acme-challenge.www.example.test")
            .await
            .is_empty()
    );
}

/// The provider against BIND without a CA: exact values, idempotence, two
/// values written at once at one name, typed errors.
#[tokio::test]
async fn the_provider_against_bind() {
    let bind = bind_with_foreign_value().await;
    let name = "_acme-challenge.example.test";
    for transport in [Rfc2136Transport::Tcp, Rfc2136Transport::Udp] {
        let dns = Rfc2136::builder(bind.addr())
            .tsig(bind.key_name(), bind.key_secret(), bind.key_algorithm())
            .transport(transport)
            .build()
            .unwrap();
        // Two values at once (a wildcard and its apex), each added twice.
        let (a, b) = tokio::join!(
            dns.create_txt_record(name, "value-a"),
            dns.create_txt_record(name, "value-b")
        );
        a.unwrap();
        b.unwrap();
        dns.create_txt_record(name, "value-a").await.unwrap();
        let mut values = bind.lookup_txt(name).await;
        values.sort();
        assert_eq!(values, [FOREIGN, "value-a", "value-b"], "{transport:?}");
        // Deleting removes exactly that value, and deleting it again succeeds.
        dns.delete_txt_record(name, "value-a").await.unwrap();
        dns.delete_txt_record(name, "value-a").await.unwrap();
        let mut values = bind.lookup_txt(name).await;
        values.sort();
        assert_eq!(values, [FOREIGN, "value-b"], "{transport:?}");
        dns.delete_txt_record(name, "value-b").await.unwrap();
        assert_eq!(bind.lookup_txt(name).await, [FOREIGN], "{transport:?}");
        // A name in no zone of the server.
        let err = dns
            .create_txt_record("_acme-challenge.elsewhere.invalid", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
    }
    // A fixed zone that the server does not hold: BIND answers NOTAUTH.
    let dns = Rfc2136::builder(bind.addr())
        .tsig(bind.key_name(), bind.key_secret(), bind.key_algorithm())
        .zone("elsewhere.invalid")
        .build()
        .unwrap();
    let err = dns
        .create_txt_record("_acme-challenge.elsewhere.invalid", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::AuthRefused { .. }), "{err}");
    // An unknown key name: BADKEY.
    let dns = Rfc2136::builder(bind.addr())
        .tsig("no-such-key", bind.key_secret(), bind.key_algorithm())
        .build()
        .unwrap();
    let err = dns.create_txt_record(name, "v").await.unwrap_err();
    assert!(
        matches!(&err, DnsError::AuthRefused { detail, .. } if detail.contains("BADKEY")),
        "{err}"
    );
    assert!(!err.to_string().contains(bind.key_secret()));
}

/// A provider wrapper recording the names it was asked to write.
#[derive(Debug)]
struct Recording<P> {
    inner: P,
    created: std::sync::Mutex<Vec<String>>,
}

impl<P> Recording<P> {
    fn new(inner: P) -> Self {
        Self {
            inner,
            created: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn created(&self) -> Vec<String> {
        self.created.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl<P: DnsProvider> DnsProvider for Recording<P> {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.created.lock().unwrap().push(fqdn.to_owned());
        self.inner.create_txt_record(fqdn, value).await
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.inner.delete_txt_record(fqdn, value).await
    }
}

/// The [`SolverError`] inside `err`. `Error::Solver` is `#[error(transparent)]`, so its
/// `source()` is the solver error's own source: the variant is matched, not walked to.
fn find_solver_error(err: &Error) -> Option<&SolverError> {
    match err {
        Error::Solver(s) => return Some(s),
        Error::AllIssuersFailed(errors) => {
            return errors.iter().find_map(|(_, e)| find_solver_error(e));
        }
        _ => {}
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<SolverError>() {
            return Some(s);
        }
        cur = e.source();
    }
    None
}

fn find_dns_error(err: &Error) -> Option<&DnsError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<DnsError>() {
            return Some(s);
        }
        cur = e.source();
    }
    None
}

/// Runs every future as its own task (in parallel on the runtime's threads) and
/// collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
