//! `DistributedSolver`'s crash cleanup against a real DNS server: a DNS-01
//! challenge presented into BIND (RFC 2136) by an instance that never cleaned
//! it up (it "died": its solver is dropped without `cleanup`, and its record
//! is dated by an injected clock more than `STALE_CHALLENGE_AGE` ago) is
//! removed by a fresh `Config` sharing the storage: its stale-challenge pass
//! (what maintenance runs at its start) deletes exactly that TXT value
//! through its own DNS-01 solver, leaves a foreign value at the same name,
//! and deletes the record.
//!
//! The cluster tests (three example processes behind a round-robin balancer
//! on Pebble's validation ports) are in `examples/example-axum/tests/e2e.rs`,
//! where the example binary is built for them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certauto::dns::Rfc2136;
use certauto::storage::keys;
use certauto::{
    AcmeIssuer, Challenge, Config, DistributedSolver, Dns01Solver, Identifier, ManualClock,
    MemoryStorage, STALE_CHALLENGE_AGE, Solver, Storage,
};
use certauto_tests::{Bind, init_tracing};

/// A TXT value of another tool at the challenge's name.
const FOREIGN: &str = "foreign-value-not-ours";
/// The CA of the issuer whose solver presented the challenge (never contacted).
const CA: &str = "https://127.0.0.1:1/dir";

fn dns01_solver(bind: &Bind) -> Dns01Solver {
    let provider = Rfc2136::builder(bind.addr())
        .tsig(bind.key_name(), bind.key_secret(), bind.key_algorithm())
        .build()
        .unwrap();
    Dns01Solver::builder(provider)
        .check_propagation(false)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_challenge_of_a_dead_instance_is_cleaned_up_by_the_next() {
    init_tracing();
    let bind = Bind::builder()
        .txt("_acme-challenge.crash.example.test", FOREIGN)
        .start()
        .await;
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let challenge = Challenge::new(
        Identifier::parse("crash.example.test").unwrap(),
        certauto::acme::ChallengeType::Dns01,
        "crashToken_0123456789".to_owned(),
        "crashToken_0123456789.thumbprint".to_owned(),
        "https://127.0.0.1:1/chall/1".to_owned(),
    );
    let value = challenge.dns01_value();

    // The instance that dies: its solver is the one `Config::builder().acme(..)`
    // wraps for this CA (named "<issuer key> dns-01"), its clock two hours back.
    {
        let presented_at = SystemTime::now() - STALE_CHALLENGE_AGE - Duration::from_secs(3600);
        let dying = DistributedSolver::new(dns01_solver(&bind), storage.clone())
            .solver_id(format!("{} dns-01", keys::issuer_key_from_url(CA)))
            .clock(Arc::new(ManualClock::new(presented_at)));
        dying.present(&challenge).await.unwrap();
        // Dropped without cleanup.
    }
    let mut txt = bind.lookup_txt("_acme-challenge.crash.example.test").await;
    txt.sort();
    let mut both = vec![FOREIGN.to_owned(), value.clone()];
    both.sort();
    assert_eq!(txt, both);
    let records = storage.list(keys::CHALLENGES_PREFIX, true).await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");

    // The next instance: same storage, same issuer, its own DNS-01 solver.
    let config = Config::builder()
        .storage(storage.clone())
        .acme(
            AcmeIssuer::builder()
                .ca(CA)
                .agreed(true)
                .dns01_solver(dns01_solver(&bind)),
        )
        .build();
    let report = config.clean_stale_challenges().await;
    assert_eq!(report.cleaned, ["dns-01 crash.example.test"]);
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        bind.lookup_txt("_acme-challenge.crash.example.test").await,
        [FOREIGN]
    );
    assert!(
        storage
            .list(keys::CHALLENGES_PREFIX, true)
            .await
            .unwrap_or_default()
            .is_empty()
    );
    // Nothing left for the next pass.
    assert!(config.clean_stale_challenges().await.cleaned.is_empty());
}
