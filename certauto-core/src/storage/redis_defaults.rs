//! The default numbers of `RedisStorage` (feature `redis`). They live outside
//! the feature gate so that the crate's table of defaults is checked against
//! them in every build, with or without the feature.

#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::time::Duration;

/// The default lock lease: how long a lock lives without being extended.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The default keepalive, as a divisor of the lease (a third of it).
pub(crate) const KEEPALIVE_DIVISOR: u32 = 3;
/// The default wait before a held lock is tried again.
pub(crate) const DEFAULT_POLL: Duration = Duration::from_millis(250);
/// The default longest wait for a held lock.
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The default longest time a connection (TCP, TLS, `AUTH`, `SELECT`) may take.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default longest time Redis may take to answer one command.
pub(crate) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest value stored or read.
pub(crate) const MAX_VALUE: usize = 64 * 1024 * 1024;
/// The most keys a recursive listing (or directory delete) walks.
pub(crate) const MAX_LISTED: usize = 1_000_000;
/// How many times redis-rs's cluster client may send one command again
/// (after `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN` or a broken node
/// connection).
pub(crate) const CLUSTER_RETRIES: u32 = 3;
/// How long a write's operation id is remembered (ms): far longer than a
/// command can be in flight (the connect and response timeouts, a cluster
/// client's retries).
pub(crate) const OP_MEMORY_MS: u64 = 5 * 60 * 1000;
