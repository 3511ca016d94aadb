//! `RedisStorage` against a real `redis-server` (Debian's 7.0, started per test on a free
//! loopback port with persistence off by [`RedisServer`]): the storage conformance suite
//! (cross-process checks included, through the `storage-child` binary), key-prefix
//! isolation, `rediss://` with a generated CA, a password kept out of `Debug` and errors,
//! a server stopped and started again under one `RedisStorage`, the first operation after a
//! restart (of each kind) succeeding, a lock holder whose keepalive cannot reach Redis, and
//! large and binary values. Through a fault injector ([`FaultProxy`]: a loopback proxy
//! that cuts a connection after Redis ran a command, or delays a command in flight): a
//! write, a delete and a lock attempt sent twice (the first ran, its reply was lost) leave
//! the state a single sending leaves, and a fenced write delayed past its lease is refused
//! by Redis. On a Redis Cluster of three primaries ([`RedisCluster`]): the
//! conformance suite for two deployments on two nodes, and a deployment whose slot moves
//! to another node while it holds a lock (clients follow the `MOVED` answers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use certauto::storage::conformance::{self, ConformanceBackend, LockTimings};
use certauto::{RedisStorage, Storage, StorageError};
use certauto_tests::{FaultProxy, RedisCluster, RedisServer, init_tracing};

/// Bound on any single wait in these tests; only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG:?}"))
}

/// Where a [`RedisBackend`] keeps its data.
enum Deployment<'a> {
    Server(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

/// The conformance suite's view of one Redis server (or cluster) and key prefix.
struct RedisBackend<'a> {
    at: Deployment<'a>,
    prefix: String,
}

impl RedisBackend<'_> {
    fn builder(&self) -> certauto::RedisStorageBuilder {
        match &self.at {
            Deployment::Server(server) => RedisStorage::builder(&server.url()),
            Deployment::Cluster(cluster) => {
                let nodes = cluster.node_urls();
                let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
                RedisStorage::cluster_builder(&nodes)
            }
        }
    }
}

#[async_trait]
impl ConformanceBackend for RedisBackend<'_> {
    async fn client(&self, t: LockTimings) -> Result<Arc<dyn Storage>, StorageError> {
        let storage = self
            .builder()
            .key_prefix(&self.prefix)
            .lock_lease(t.lease)
            .lock_keepalive(t.keepalive)
            .lock_poll_interval(t.poll)
            .lock_wait_timeout(t.wait_timeout)
            .build()
            .await?;
        Ok(Arc::new(storage))
    }

    async fn expire_lock(&self, name: &str) -> Result<(), StorageError> {
        // The lease running out is the key vanishing: delete it now.
        let key = format!("{{{}}}:lock:{name}", self.prefix);
        let answer = match &self.at {
            Deployment::Server(server) => server.command(&["DEL", &key]).await,
            Deployment::Cluster(cluster) => cluster.command(&["DEL", &key]).await,
        };
        assert!(answer.starts_with(':'), "DEL {key}: {answer}");
        Ok(())
    }

    fn child_command(&self) -> Option<std::process::Command> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_storage-child"));
        match &self.at {
            Deployment::Server(server) => {
                command.args(["redis", &server.url(), &self.prefix]);
            }
            Deployment::Cluster(cluster) => {
                command.args(["redis-cluster", &self.prefix]);
                command.args(cluster.node_urls());
            }
        }
        Some(command)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let server = RedisServer::builder().start().await;
    let backend = RedisBackend {
        at: Deployment::Server(&server),
        prefix: "conformance".into(),
    };
    conformance::run(&backend).await;
    // Run again on the same server and prefix: each run uses its own keys.
    conformance::run(&backend).await;
}

#[tokio::test]
async fn key_prefixes_isolate_deployments() {
    let server = RedisServer::builder().start().await;
    let a = RedisStorage::builder(&server.url())
        .key_prefix("a")
        .build()
        .await
        .unwrap();
    let b = RedisStorage::builder(&server.url())
        .key_prefix("b")
        .build()
        .await
        .unwrap();
    a.store("certificates/x/one", b"from a").await.unwrap();
    b.store("certificates/y/two", b"from b").await.unwrap();
    assert_eq!(a.list("", true).await.unwrap(), vec!["certificates/x/one"]);
    assert_eq!(b.list("", true).await.unwrap(), vec!["certificates/y/two"]);
    assert!(
        a.load("certificates/y/two")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(!b.exists("certificates/x").await.unwrap());
    // Same lock name, different deployments: no exclusion between them.
    let held_a = a.lock("cert_x").await.unwrap();
    let held_b = bounded("lock in the other prefix", b.lock("cert_x"))
        .await
        .unwrap();
    b.delete("certificates").await.unwrap();
    assert_eq!(a.load("certificates/x/one").await.unwrap(), b"from a");
    held_a.release().await.unwrap();
    held_b.release().await.unwrap();
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let server = RedisServer::builder().tls(true).start().await;
    let storage = RedisStorage::builder(&server.tls_url())
        .trust_roots(vec![server.ca_der()])
        .build()
        .await
        .unwrap();
    storage
        .store("over/tls", b"secret key material")
        .await
        .unwrap();
    assert_eq!(
        storage.load("over/tls").await.unwrap(),
        b"secret key material"
    );
    let guard = storage.lock("tls-lock").await.unwrap();
    assert!(guard.fence().is_some());
    guard.release().await.unwrap();

    // Without the CA the server's certificate is not trusted.
    let err = RedisStorage::builder(&server.tls_url())
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    let chain = certauto::ErrorChain(&err).to_string();
    assert!(chain.contains("certificate"), "{chain}");
}

#[tokio::test]
async fn the_password_is_never_shown() {
    const PASSWORD: &str = "pa55-w0rd-XYZ";
    let mut server = RedisServer::builder().password(PASSWORD).start().await;
    let url = server.url();
    assert!(url.contains(PASSWORD));
    let storage = RedisStorage::builder(&url).build().await.unwrap();
    storage.store("k", b"v").await.unwrap();
    let debug = format!("{storage:?} {:?}", RedisStorage::builder(&url));
    assert!(!debug.contains(PASSWORD), "{debug}");

    // A wrong password: refused, and neither password appears.
    let wrong = url.replace(PASSWORD, "not-the-Password-1");
    let err = RedisStorage::builder(&wrong).build().await.unwrap_err();
    let text = format!("{err:?} {}", certauto::ErrorChain(&err));
    assert!(
        !text.contains(PASSWORD) && !text.contains("not-the-Password-1"),
        "{text}"
    );

    // Errors of an unreachable server do not show it either.
    server.stop().await;
    let err = bounded("load from a stopped server", storage.load("k"))
        .await
        .unwrap_err();
    let text = format!("{err:?} {}", certauto::ErrorChain(&err));
    assert!(!text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn a_stopped_server_fails_typed_and_a_restarted_one_works_again() {
    let mut server = RedisServer::builder().start().await;
    let storage = RedisStorage::builder(&server.url())
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    storage.store("before", b"1").await.unwrap();
    server.stop().await;
    // Every operation fails with the typed error (and nothing panics), bounded by the
    // connect and response timeouts.
    for round in 0..3 {
        let load = bounded("load while stopped", storage.load("before")).await;
        assert!(
            matches!(load, Err(StorageError::Unavailable { .. })),
            "round {round}: {load:?}"
        );
        let store = bounded("store while stopped", storage.store("during", b"2")).await;
        assert!(
            matches!(store, Err(StorageError::Unavailable { .. })),
            "{store:?}"
        );
        let list = bounded("list while stopped", storage.list("", true)).await;
        assert!(
            matches!(list, Err(StorageError::Unavailable { .. })),
            "{list:?}"
        );
        let lock = bounded("lock while stopped", storage.lock("l")).await;
        assert!(
            matches!(lock, Err(StorageError::Unavailable { .. })),
            "{lock:?}"
        );
    }
    server.start().await;
    // The same storage, not rebuilt, works again (the restarted server is empty:
    // persistence is off).
    storage.store("after", b"3").await.unwrap();
    assert_eq!(storage.load("after").await.unwrap(), b"3");
    assert!(storage.load("before").await.unwrap_err().is_not_found());
    let guard = storage.lock("l").await.unwrap();
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_holder_that_cannot_reach_redis_for_a_lease_reports_the_loss() {
    let mut server = RedisServer::builder().start().await;
    let storage = RedisStorage::builder(&server.url())
        .lock_lease(Duration::from_millis(1500))
        .lock_keepalive(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let guard = storage.lock("cert_example.com").await.unwrap();
    guard.ensure_held().unwrap();
    server.stop().await;
    bounded("the loss report", guard.lost()).await;
    assert!(matches!(
        guard.ensure_held(),
        Err(StorageError::LockLost(_))
    ));
    // A fenced write is refused at once (the guard knows), even with Redis back.
    server.start().await;
    let refused = storage
        .store_fenced(&guard, "certificates/x", b"late")
        .await;
    assert!(
        matches!(refused, Err(StorageError::LockLost(_))),
        "{refused:?}"
    );
    // The lock is free again for others.
    let other = RedisStorage::builder(&server.url()).build().await.unwrap();
    let next = bounded("lock after the loss", other.lock("cert_example.com"))
        .await
        .unwrap();
    assert!(next.fence().is_some());
    next.release().await.unwrap();
    drop(guard);
}

/// The server loses its data (as a restart with persistence off would,
/// here `FLUSHDB`) while a holder is paused: the next acquisition, by the same
/// client, gets a higher fence (the counter starts again above the old
/// ones), the paused holder's fenced writes and deletes are refused, and its
/// release leaves the new holder's token in place (review 3).
#[tokio::test]
async fn fences_survive_a_data_loss() {
    let server = RedisServer::builder().start().await;
    let s = RedisStorage::builder(&server.url())
        .key_prefix("loss")
        .lock_lease(Duration::from_secs(3600))
        .lock_keepalive(Duration::from_secs(3000))
        .build()
        .await
        .unwrap();
    let key = "certificates/x/x.json";
    let old = s.lock("cert_x").await.unwrap();
    s.store_fenced(&old, key, b"A1").await.unwrap();
    let flushed = server.command(&["FLUSHDB"]).await;
    assert!(flushed.starts_with('+'), "FLUSHDB: {flushed}");
    let new = bounded("lock after the data loss", s.lock("cert_x"))
        .await
        .unwrap();
    assert!(
        new.fence().unwrap() > old.fence().unwrap(),
        "fences repeat after a data loss: {:?} then {:?}",
        old.fence(),
        new.fence()
    );
    s.store_fenced(&new, key, b"B").await.unwrap();
    assert!(matches!(
        s.store_fenced(&old, key, b"A2").await,
        Err(StorageError::LockLost(_))
    ));
    assert!(matches!(
        s.delete_fenced(&old, key).await,
        Err(StorageError::LockLost(_))
    ));
    assert!(matches!(
        s.delete_fenced(&old, "certificates").await,
        Err(StorageError::LockLost(_))
    ));
    assert_eq!(s.load(key).await.unwrap(), b"B");
    // The old holder's release frees nothing of the new holder's.
    let _ = old.release().await;
    s.store_fenced(&new, key, b"B2").await.unwrap();
    let lock = server.command(&["GET", "{loss}:lock:cert_x"]).await;
    assert!(
        !lock.starts_with("$-1"),
        "the new holder's lock was released"
    );
    s.delete_fenced(&new, "certificates").await.unwrap();
    assert!(!s.exists("certificates").await.unwrap());
    new.release().await.unwrap();
    // One fence counter for the deployment; nothing is kept per lock name (review 6).
    assert_eq!(server.command(&["EXISTS", "{loss}:fence"]).await, ":1");
    assert_eq!(
        server
            .command(&["EXISTS", "{loss}:fence:cert_x", "{loss}:lock:cert_x"])
            .await,
        ":0"
    );
}

#[tokio::test]
async fn binary_and_large_values_round_trip() {
    let server = RedisServer::builder().start().await;
    let storage = RedisStorage::builder(&server.url()).build().await.unwrap();
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, b'\r', b'\n', 0xff]).collect();
    storage.store("bin/all-bytes", &binary).await.unwrap();
    assert_eq!(storage.load("bin/all-bytes").await.unwrap(), binary);
    let large: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    storage.store("bin/one-mib", &large).await.unwrap();
    assert_eq!(storage.load("bin/one-mib").await.unwrap(), large);
    let info = storage.stat("bin/one-mib").await.unwrap();
    assert_eq!(info.size, 1024 * 1024);
    assert!(info.is_terminal && info.modified.is_some());
    storage.delete("bin").await.unwrap();
    assert!(!storage.exists("bin").await.unwrap());
    assert_eq!(storage.list("", true).await.unwrap(), Vec::<String>::new());
}

/// Stops the server and starts it again on the same port (empty: persistence is off).
async fn restart(server: &mut RedisServer) {
    server.stop().await;
    server.start().await;
}

#[tokio::test]
async fn the_first_operation_after_a_restart_succeeds() {
    let mut server = RedisServer::builder().start().await;
    // One storage kept across every restart: its connection dies unnoticed each time.
    let storage = RedisStorage::builder(&server.url()).build().await.unwrap();
    // A storage connected after the restart, to put data in place.
    let url = server.url();
    let seed = || async { RedisStorage::builder(&url).build().await.unwrap() };
    storage.store("warm", b"up").await.unwrap();

    restart(&mut server).await;
    storage.store("certificates/a/crt", b"1").await.unwrap();

    restart(&mut server).await;
    seed()
        .await
        .store("certificates/b/crt", b"2")
        .await
        .unwrap();
    assert_eq!(storage.load("certificates/b/crt").await.unwrap(), b"2");

    restart(&mut server).await;
    seed()
        .await
        .store("certificates/c/crt", b"3")
        .await
        .unwrap();
    assert_eq!(
        storage.list("certificates", true).await.unwrap(),
        vec!["certificates/c/crt"]
    );

    restart(&mut server).await;
    seed()
        .await
        .store("certificates/d/crt", b"44")
        .await
        .unwrap();
    assert!(storage.exists("certificates/d").await.unwrap());

    restart(&mut server).await;
    seed()
        .await
        .store("certificates/e/crt", b"555")
        .await
        .unwrap();
    assert_eq!(storage.stat("certificates/e/crt").await.unwrap().size, 3);

    restart(&mut server).await;
    seed()
        .await
        .store("certificates/f/crt", b"6")
        .await
        .unwrap();
    storage.delete("certificates/f/crt").await.unwrap();
    assert!(!seed().await.exists("certificates/f").await.unwrap());

    restart(&mut server).await;
    let guard = storage.lock("cert_example.com").await.unwrap();
    // A fresh server's counter starts at the time in microseconds.
    assert!(
        guard.fence().unwrap() > 1_000_000_000_000_000,
        "a fresh server's first acquisition: {:?}",
        guard.fence()
    );
    storage
        .store_fenced(&guard, "certificates/g/crt", b"7")
        .await
        .unwrap();
    // Exclusion holds after the retry-capable acquisition: another client waits.
    let other = RedisStorage::builder(&server.url())
        .lock_wait_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    assert!(matches!(
        other.lock("cert_example.com").await,
        Err(StorageError::LockTimeout(_))
    ));

    // A release as the first command after a restart: the lock went with the data, and the
    // release still completes without an error.
    restart(&mut server).await;
    guard.release().await.unwrap();
    let again = bounded("lock after the restart", storage.lock("cert_example.com"))
        .await
        .unwrap();
    again.release().await.unwrap();
}

// ----- commands sent twice, commands delayed (the fault proxy) ----------------

/// A storage through `proxy` (fault injector) and one straight to `server`, both under
/// `prefix`; the first has sent commands already, so its connection is not a fresh one
/// (a failure on a fresh connection is not sent again).
async fn through_proxy(
    server: &RedisServer,
    proxy: &FaultProxy,
    prefix: &str,
) -> (RedisStorage, RedisStorage) {
    let proxied = RedisStorage::builder(&proxy.redis_url())
        .key_prefix(prefix)
        .build()
        .await
        .unwrap();
    let direct = RedisStorage::builder(&server.url())
        .key_prefix(prefix)
        .build()
        .await
        .unwrap();
    // Also so that the server knows every script already: the command the proxy cuts
    // is then the script's run, not an `EVALSHA` answered `NOSCRIPT`.
    proxied.store("warm", b"up").await.unwrap();
    proxied.delete("warm").await.unwrap();
    proxied.lock("warm").await.unwrap().release().await.unwrap();
    (proxied, direct)
}

/// A write whose connection broke after Redis ran it (the reply lost) is sent again; by
/// then another client stored a newer value, which the repetition must not overwrite
/// (the write's operation id tells Redis it ran already).
#[tokio::test]
async fn a_write_sent_again_does_not_overwrite_a_newer_one() {
    init_tracing();
    let server = RedisServer::builder().start().await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let (proxied, direct) = through_proxy(&server, &proxy, "twice-store").await;

    let mut fault = proxy.cut_after_reply(b"sent/twice");
    let write = tokio::spawn({
        let proxied = proxied.clone();
        async move { proxied.store("sent/twice", b"first").await }
    });
    bounded("the first sending to run", fault.ran()).await;
    assert_eq!(direct.load("sent/twice").await.unwrap(), b"first");
    direct.store("sent/twice", b"newer").await.unwrap();
    fault.cut();
    bounded("the write", write).await.unwrap().unwrap();
    assert_eq!(direct.load("sent/twice").await.unwrap(), b"newer");
    assert_eq!(proxied.load("sent/twice").await.unwrap(), b"newer");
    // An unrelated write afterwards goes through as usual.
    proxied.store("sent/twice", b"latest").await.unwrap();
    assert_eq!(direct.load("sent/twice").await.unwrap(), b"latest");
}

/// A delete whose connection broke after Redis ran it is sent again; by then another
/// client stored the key anew, which the repetition must not delete.
#[tokio::test]
async fn a_delete_sent_again_does_not_delete_a_newer_value() {
    init_tracing();
    let server = RedisServer::builder().start().await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let (proxied, direct) = through_proxy(&server, &proxy, "twice-delete").await;
    direct.store("gone/twice", b"old").await.unwrap();

    let mut fault = proxy.cut_after_reply(b"gone/twice");
    let delete = tokio::spawn({
        let proxied = proxied.clone();
        async move { proxied.delete("gone/twice").await }
    });
    bounded("the first sending to run", fault.ran()).await;
    assert!(!direct.exists("gone/twice").await.unwrap());
    direct.store("gone/twice", b"new").await.unwrap();
    fault.cut();
    // The delete reports success (its first sending deleted the value), not NotFound.
    bounded("the delete", delete).await.unwrap().unwrap();
    assert_eq!(direct.load("gone/twice").await.unwrap(), b"new");
    assert_eq!(
        direct.list("gone", false).await.unwrap(),
        vec!["gone/twice"]
    );
}

/// A lock attempt whose connection broke after Redis gave it the lock is sent again: it
/// gets the lock it was given (same fence), rather than waiting for its own lease to run
/// out; and the lock stays exclusive.
#[tokio::test]
async fn a_lock_attempt_sent_again_gets_the_lock_it_was_given() {
    init_tracing();
    let server = RedisServer::builder().start().await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let (proxied, _direct) = through_proxy(&server, &proxy, "twice-lock").await;

    let mut fault = proxy.cut_after_reply(b":lock:twice");
    let lock = tokio::spawn({
        let proxied = proxied.clone();
        async move { proxied.lock("twice").await }
    });
    bounded("the first sending to run", fault.ran()).await;
    let held = server
        .bulk_command(&["GET", "{twice-lock}:lock:twice"])
        .await;
    let (fence, _token) = held
        .split_once(':')
        .expect("the lock holds <fence>:<token>");
    let fence: u64 = fence.parse().unwrap();
    fault.cut();
    let guard = bounded("the lock", lock).await.unwrap().unwrap();
    assert_eq!(
        guard.fence(),
        Some(fence),
        "the fence the first sending got"
    );
    let other = RedisStorage::builder(&server.url())
        .key_prefix("twice-lock")
        .lock_wait_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    assert!(matches!(
        other.lock("twice").await,
        Err(StorageError::LockTimeout(_))
    ));
    guard.release().await.unwrap();
    bounded("the lock once released", other.lock("twice"))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// The fence is checked by Redis, not only by the holder: a fenced write that passed the
/// holder's own check and was then delayed in flight (held by the proxy: a paused process,
/// a slow network) until the lease ran out and another client took the lock and wrote,
/// is refused when it reaches Redis.
#[tokio::test]
async fn redis_refuses_a_fenced_write_delayed_past_the_lease() {
    init_tracing();
    let server = RedisServer::builder().start().await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let lease = Duration::from_millis(900);
    let holder = RedisStorage::builder(&proxy.redis_url())
        .key_prefix("delayed")
        .lock_lease(lease)
        .response_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let guard = holder.lock("delayed").await.unwrap();

    let mut fault = proxy.hold(b"delayed/record");
    let write = tokio::spawn({
        let holder = holder.clone();
        async move {
            let result = holder
                .store_fenced(&guard, "delayed/record", b"stale")
                .await;
            (result, guard)
        }
    });
    // Sent: the holder's own check passed. Its keepalive queues behind it.
    bounded("the write to be sent", fault.held()).await;
    let next = RedisStorage::builder(&server.url())
        .key_prefix("delayed")
        .lock_poll_interval(Duration::from_millis(20))
        .lock_wait_timeout(HANG)
        .build()
        .await
        .unwrap();
    let next_guard = bounded("the lease to run out", next.lock("delayed"))
        .await
        .unwrap();
    next.store_fenced(&next_guard, "delayed/record", b"fresh")
        .await
        .unwrap();
    fault.release();
    let (result, guard) = bounded("the delayed write", write).await.unwrap();
    assert!(
        matches!(result, Err(StorageError::LockLost(ref name)) if name == "delayed"),
        "{result:?}"
    );
    assert_eq!(next.load("delayed/record").await.unwrap(), b"fresh");
    drop(guard);
    next_guard.release().await.unwrap();
}

/// Two key prefixes whose slots are served by two different primaries (the cluster splits
/// the 16384 slots evenly, so a few candidates suffice).
async fn prefixes_on_two_nodes(cluster: &RedisCluster) -> [(String, u16); 2] {
    let first = (
        "cluster-0".to_owned(),
        cluster.owner_of("{cluster-0}").await,
    );
    for i in 1..64 {
        let prefix = format!("cluster-{i}");
        let owner = cluster.owner_of(&format!("{{{prefix}}}")).await;
        if owner != first.1 {
            return [first, (prefix, owner)];
        }
    }
    panic!("64 prefixes all hash to the slots of one node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_conformance_suite() {
    let cluster = RedisCluster::start().await;
    let [(a, node_a), (b, node_b)] = prefixes_on_two_nodes(&cluster).await;
    assert_ne!(node_a, node_b);
    for prefix in [a, b] {
        let backend = RedisBackend {
            at: Deployment::Cluster(&cluster),
            prefix,
        };
        conformance::run(&backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_slot_moves_keeps_working() {
    let cluster = RedisCluster::start().await;
    let [(prefix, owner), (other_prefix, _)] = prefixes_on_two_nodes(&cluster).await;
    let nodes = cluster.node_urls();
    // Only one node given: the rest of the cluster is discovered.
    let storage = RedisStorage::cluster_builder(&[nodes[0].as_str()])
        .key_prefix(&prefix)
        .build()
        .await
        .unwrap();
    let neighbour = RedisStorage::cluster_builder(&[nodes[1].as_str()])
        .key_prefix(&other_prefix)
        .build()
        .await
        .unwrap();
    storage
        .store("certificates/x/crt", b"before")
        .await
        .unwrap();
    neighbour
        .store("certificates/y/crt", b"next door")
        .await
        .unwrap();
    let guard = storage.lock("cert_x").await.unwrap();
    let guard_fence = guard.fence();
    // Every key of the deployment is on its prefix's node.
    let key = format!("{{{prefix}}}:v:certificates/x/crt");
    assert_eq!(cluster.node(owner).command(&["EXISTS", &key]).await, ":1");

    let to = *cluster.ports().iter().find(|&&p| p != owner).unwrap();
    cluster.move_all_slots(owner, to).await;
    assert_eq!(cluster.node(to).command(&["EXISTS", &key]).await, ":1");
    assert!(
        cluster
            .node(owner)
            .command(&["EXISTS", &key])
            .await
            .starts_with("-MOVED")
    );

    // The client still addresses the old node first: it follows the MOVED answers.
    assert_eq!(storage.load("certificates/x/crt").await.unwrap(), b"before");
    storage
        .store_fenced(&guard, "certificates/x/crt", b"after")
        .await
        .unwrap();
    assert_eq!(
        storage.list("", true).await.unwrap(),
        vec!["certificates/x/crt"]
    );
    guard.ensure_held().unwrap();
    guard.release().await.unwrap();
    let next = bounded("lock after the move", storage.lock("cert_x"))
        .await
        .unwrap();
    assert_eq!(next.fence(), guard_fence.map(|f| f + 1));
    next.release().await.unwrap();
    assert_eq!(storage.load("certificates/x/crt").await.unwrap(), b"after");
    assert_eq!(
        neighbour.load("certificates/y/crt").await.unwrap(),
        b"next door"
    );
}

#[tokio::test]
async fn a_cluster_over_tls_is_refused_with_a_clear_error() {
    let err = RedisStorage::cluster_builder(&["rediss://127.0.0.1:7000"])
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
    let chain = certauto::ErrorChain(&err).to_string();
    assert!(chain.contains("rediss:// is not supported"), "{chain}");
}
