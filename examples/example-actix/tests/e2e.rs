//! End to end: the example-actix binary, configured only through `CERTAUTO_*`
//! variables, obtains certificates from a real Pebble (HTTP-01 and
//! TLS-ALPN-01 answered on its own ports; DNS-01 for a wildcard and its apex
//! through a real BIND9) or from its local CA (offline), and serves them to
//! reqwest, a raw TLS handshake and curl; its HTTP port redirects; three
//! instances share a real Redis (`CERTAUTO_STORAGE=redis://…`). The
//! scenarios live in `examples/e2e_common.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../e2e_common.rs"]
mod e2e_common;

use e2e_common::SharedStorage;

const BIN: &str = env!("CARGO_BIN_EXE_example-actix");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_http01() {
    e2e_common::pebble_scenario(BIN, "http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_tls_alpn01() {
    e2e_common::pebble_scenario(BIN, "tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_dns01_wildcard_through_bind() {
    e2e_common::pebble_dns01_scenario(BIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ca_localhost_offline() {
    e2e_common::local_ca_scenario(BIN).await;
}

/// Three instances on one real Redis (`CERTAUTO_STORAGE=redis://…`) obtain
/// 30 names through HTTP-01 behind the round-robin balancer: exactly 30
/// orders, every instance answers validations and serves every name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_of_three_http01_on_redis() {
    e2e_common::distributed_scenario(BIN, "http-01", SharedStorage::Redis).await;
}
