//! [`RedisStorage`]: a [`Storage`] backend on a Redis server (feature
//! `redis`) or a Redis Cluster (feature `redis-cluster`). `conn` keeps the (re)connected connection, `lock` the locks,
//! `scripts` the Lua scripts; the struct's docs state the layout and the
//! guarantees.

mod conn;
mod lock;
mod scripts;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisError};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::Notify;

use self::conn::{Connection, Server, Target};
use self::lock::LockTimings;
use self::scripts::Scripts;
use super::redis_defaults::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, KEEPALIVE_DIVISOR, MAX_LISTED, MAX_VALUE,
};
use super::{KeyInfo, LockGuard, Storage, StorageError, validate_key};

/// The default key prefix.
const DEFAULT_PREFIX: &str = "certauto";
/// The longest key prefix accepted.
const MAX_PREFIX: usize = 64;
/// The longest lock name accepted.
const MAX_LOCK_NAME: usize = 1024;
/// The most `HSCAN` round trips one listing makes.
const MAX_SCAN_ROUNDS: usize = 100_000;
/// Entries asked for per `HSCAN`.
const SCAN_COUNT: usize = 1000;
/// Values deleted per pipeline when a directory is deleted.
const DELETE_BATCH: usize = 256;

/// Why a [`RedisStorageBuilder`] could not build (carried by
/// [`StorageError::Backend`]).
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("invalid redis URL")]
    Url(#[source] RedisError),
    #[error("the #insecure fragment (no certificate verification) is not supported")]
    Insecure,
    #[error("invalid redis host name for TLS: {0:?}")]
    ServerName(String),
    #[error("invalid key prefix {0:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    Prefix(String),
    #[error("invalid trust root")]
    TrustRoot(#[source] rustls::Error),
    #[error("TLS setup failed")]
    Tls(#[source] rustls::Error),
    #[error("lock keepalive ({keepalive:?}) must be shorter than the lease ({lease:?})")]
    Timings {
        keepalive: Duration,
        lease: Duration,
    },
    #[cfg(feature = "redis-cluster")]
    #[error(
        "rediss:// is not supported for a Redis Cluster (redis-rs's cluster client cannot be \
         given this crate's rustls configuration); use redis:// on a private network"
    )]
    ClusterTls,
    #[cfg(feature = "redis-cluster")]
    #[error("a Redis Cluster node must be a redis://host:port URL")]
    ClusterAddress,
    #[cfg(feature = "redis-cluster")]
    #[error("a Redis Cluster has database 0 only: {0} names another")]
    ClusterDatabase(String),
    #[cfg(feature = "redis-cluster")]
    #[error("invalid Redis Cluster settings")]
    Cluster(#[source] RedisError),
}

/// What a builder connects to.
#[derive(Clone)]
enum Endpoint {
    /// One server's URL.
    Single(String),
    /// The URLs of some nodes of a cluster.
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Single(url) => f.write_str(&redacted_url(url)),
            #[cfg(feature = "redis-cluster")]
            Endpoint::Cluster(nodes) => f
                .debug_tuple("cluster")
                .field(&nodes.iter().map(|n| redacted_url(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

fn setup(err: SetupError) -> StorageError {
    StorageError::Backend(Box::new(err))
}

/// Builds a [`RedisStorage`]; see [`RedisStorage::builder`].
#[must_use = "a builder does nothing until .build() is called"]
pub struct RedisStorageBuilder {
    endpoint: Endpoint,
    prefix: String,
    lease: Duration,
    keepalive: Option<Duration>,
    poll: Duration,
    wait_timeout: Duration,
    trust_roots: Vec<CertificateDer<'static>>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorageBuilder")
            .field("server", &self.endpoint)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("keepalive", &self.keepalive)
            .field("poll", &self.poll)
            .field("wait_timeout", &self.wait_timeout)
            .field("trust_roots", &self.trust_roots.len())
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

impl RedisStorageBuilder {
    fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            prefix: DEFAULT_PREFIX.to_owned(),
            lease: lock::DEFAULT_LEASE,
            keepalive: None,
            poll: lock::DEFAULT_POLL,
            wait_timeout: lock::DEFAULT_WAIT_TIMEOUT,
            trust_roots: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// The prefix of every Redis key this storage uses (default `certauto`):
    /// 1 to 64 characters of `A-Z a-z 0-9 . _ -`. Deployments sharing a
    /// server with different prefixes see nothing of each other.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// How long a lock lives without being extended (default 10 s): the
    /// longest a crashed holder blocks others.
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often a holder extends its lock (default a third of the lease).
    pub fn lock_keepalive(mut self, keepalive: Duration) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// How often a waiting client tries a held lock again (default 250 ms,
    /// with ±50 % jitter).
    pub fn lock_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The longest [`lock`](Storage::lock) waits before failing with
    /// [`StorageError::LockTimeout`] (default 10 minutes).
    pub fn lock_wait_timeout(mut self, wait_timeout: Duration) -> Self {
        self.wait_timeout = wait_timeout;
        self
    }

    /// Certificates to trust for `rediss://` besides the webpki roots (a
    /// private CA that signed the server's certificate). Not used for a
    /// cluster (reached over `redis://` only).
    pub fn trust_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.trust_roots = roots;
        self
    }

    /// The longest one connection attempt (TCP, TLS and the Redis handshake)
    /// may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest Redis may take to answer one command (default 5 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Checks the settings, connects, and reads one key of the deployment
    /// (on a cluster: from the node that serves the deployment's slot, not
    /// any node).
    ///
    /// Fails with [`StorageError::Backend`] for unusable settings (a bad URL,
    /// key prefix or trust root, a keepalive not shorter than the lease, a
    /// `rediss://` cluster node or one naming a database) and with [`StorageError::Unavailable`] when
    /// the server (or no node of the cluster) cannot be reached.
    /// Logs a warning when the server's `maxmemory-policy` is not
    /// `noeviction` (see [the production advice](RedisStorage#locks-and-fencing)).
    pub async fn build(self) -> Result<RedisStorage, StorageError> {
        let storage = self.configure()?;
        let fence = storage.inner.keys.fence();
        storage
            .inner
            .conn
            .run(|mut c| {
                let fence = &fence;
                async move {
                    redis::cmd("EXISTS")
                        .arg(fence)
                        .query_async::<i64>(&mut c)
                        .await
                }
            })
            .await?;
        storage.check_eviction_policy().await;
        Ok(storage)
    }

    /// Everything [`build`](Self::build) does but connecting.
    fn configure(self) -> Result<RedisStorage, StorageError> {
        if !valid_prefix(&self.prefix) {
            return Err(setup(SetupError::Prefix(self.prefix)));
        }
        let keepalive = self.keepalive.unwrap_or(self.lease / KEEPALIVE_DIVISOR);
        if keepalive >= self.lease || keepalive.is_zero() {
            return Err(setup(SetupError::Timings {
                keepalive,
                lease: self.lease,
            }));
        }
        let (server, description) = match &self.endpoint {
            Endpoint::Single(url) => single_server(url, self.trust_roots)?,
            #[cfg(feature = "redis-cluster")]
            Endpoint::Cluster(nodes) => {
                cluster_server(nodes, self.connect_timeout, self.response_timeout)?
            }
        };
        let conn = Connection::new(server, self.connect_timeout, self.response_timeout);
        Ok(RedisStorage {
            inner: Arc::new(Inner {
                description,
                keys: Keys {
                    prefix: self.prefix,
                },
                timings: LockTimings {
                    lease: self.lease,
                    keepalive,
                    poll: self.poll.max(Duration::from_millis(1)),
                    wait_timeout: self.wait_timeout,
                },
                conn,
                scripts: Scripts::new(),
                held: Mutex::new(HashMap::new()),
                released: Notify::new(),
            }),
        })
    }
}

/// The server at `url`, and its description (the URL without credentials).
fn single_server(
    url: &str,
    trust_roots: Vec<CertificateDer<'static>>,
) -> Result<(Server, String), StorageError> {
    let info = url
        .into_connection_info()
        .map_err(|e| setup(SetupError::Url(e)))?;
    let description = describe(&info);
    let target = match info.addr() {
        ConnectionAddr::Tcp(host, port) => Target::Tcp {
            host: host.clone(),
            port: *port,
        },
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if *insecure {
                return Err(setup(SetupError::Insecure));
            }
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| setup(SetupError::ServerName(host.clone())))?;
            Target::Tls {
                host: host.clone(),
                port: *port,
                server_name,
                config: tls_config(trust_roots)?,
            }
        }
        ConnectionAddr::Unix(path) => Target::Unix(path.clone()),
        _ => {
            return Err(setup(SetupError::Url(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "unsupported connection address",
            )))));
        }
    };
    let server = Server::Single {
        target,
        redis: info.redis_settings().clone(),
    };
    Ok((server, description))
}

/// The cluster reached through `nodes`, and its description.
#[cfg(feature = "redis-cluster")]
fn cluster_server(
    nodes: &[String],
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<(Server, String), StorageError> {
    let mut infos = Vec::with_capacity(nodes.len());
    let mut described = Vec::with_capacity(nodes.len());
    for node in nodes {
        let info = node
            .as_str()
            .into_connection_info()
            .map_err(|e| setup(SetupError::Url(e)))?;
        match info.addr() {
            ConnectionAddr::Tcp(..) => {}
            ConnectionAddr::TcpTls { .. } => return Err(setup(SetupError::ClusterTls)),
            _ => return Err(setup(SetupError::ClusterAddress)),
        }
        // A cluster has database 0 only; redis-rs would ignore another.
        if info.redis_settings().db() != 0 {
            return Err(setup(SetupError::ClusterDatabase(describe(&info))));
        }
        described.push(describe(&info));
        infos.push(info);
    }
    // redis-rs's own retries (after MOVED, ASK, TRYAGAIN, a node's
    // reconnection) are few, and the connection bounds the whole command
    // (see the conn module).
    let client = redis::cluster::ClusterClientBuilder::new(infos)
        .connection_timeout(connect_timeout)
        .response_timeout(response_timeout)
        .retries(conn::CLUSTER_RETRIES)
        .build()
        .map_err(|e| setup(SetupError::Cluster(e)))?;
    let description = format!("redis cluster [{}]", described.join(", "));
    Ok((Server::Cluster(Box::new(client)), description))
}

/// The rustls config for `rediss://`: ring named explicitly, webpki roots
/// plus `extra`.
fn tls_config(
    extra: Vec<CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, StorageError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra {
        roots
            .add(root)
            .map_err(|e| setup(SetupError::TrustRoot(e)))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::acme::http::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(SetupError::Tls(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The server's address as a URL without credentials
/// (`redis://user:***@host:port/db`).
fn describe(info: &redis::ConnectionInfo) -> String {
    let settings = info.redis_settings();
    let user = match (settings.username(), settings.password()) {
        (Some(user), Some(_)) => format!("{user}:***@"),
        (Some(user), None) => format!("{user}@"),
        (None, Some(_)) => ":***@".to_owned(),
        (None, None) => String::new(),
    };
    let db = settings.db();
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("redis://{user}{host}:{port}/{db}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{user}{host}:{port}/{db}"),
        ConnectionAddr::Unix(path) => format!("redis+unix://{user}{}?db={db}", path.display()),
        _ => "redis (unknown address)".to_owned(),
    }
}

/// `url` without its credentials, for `Debug`.
fn redacted_url(url: &str) -> String {
    match url.into_connection_info() {
        Ok(info) => describe(&info),
        Err(_) => "<invalid redis URL>".to_owned(),
    }
}

/// Redis key names under one prefix. Every name starts with the hash tag
/// `{<prefix>}`, so on a cluster all keys of one deployment share one slot
/// (a script may only touch keys of one slot).
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    /// The hash holding the value of `key`.
    fn value(&self, key: &str) -> String {
        format!("{{{}}}:v:{key}", self.prefix)
    }

    /// The index hash of the directory `dir` (`""`: the top).
    fn dir(&self, dir: &str) -> String {
        format!("{{{}}}:d:{dir}", self.prefix)
    }

    /// The lock `name`.
    fn lock(&self, name: &str) -> String {
        format!("{{{}}}:lock:{name}", self.prefix)
    }

    /// The fencing counter of the deployment (one for every lock name).
    fn fence(&self) -> String {
        format!("{{{}}}:fence", self.prefix)
    }

    /// The record of a write or delete with the operation id `op` (see
    /// [the scripts](scripts#sent-twice)).
    fn op(&self, op: &str) -> String {
        format!("{{{}}}:op:{op}", self.prefix)
    }

    /// The last keys and arguments of [`STORE`](scripts) and
    /// [`DELETE_VALUE`](scripts): the lock, fence and token of a fenced
    /// call (empty arguments for an unfenced one), then a new operation id
    /// and how long Redis remembers it.
    fn fence_and_op(
        &self,
        invocation: &mut scripts::Call<'_>,
        fence: Option<&Fence<'_>>,
    ) -> Result<(), StorageError> {
        match fence {
            Some(fence) => {
                invocation
                    .key(self.lock(fence.name))
                    .arg(fence.fence.to_string())
                    .arg(fence.token.as_deref().unwrap_or(""));
            }
            None => {
                invocation.arg("").arg("");
            }
        }
        invocation
            .key(self.op(&lock::token()?))
            .arg(scripts::OP_MEMORY_MS);
        Ok(())
    }
}

/// The components of a (validated) key and its ancestors: for `a/b/c`,
/// `(["a", "b", "c"], ["", "a", "a/b"])`.
fn split_key(key: &str) -> (Vec<&str>, Vec<&str>) {
    let components: Vec<&str> = key.split('/').collect();
    let mut ancestors = Vec::with_capacity(components.len());
    ancestors.push("");
    for (i, _) in key.match_indices('/') {
        ancestors.push(&key[..i]);
    }
    (components, ancestors)
}

/// `child` below `dir` as a full key.
fn join(dir: &str, child: &str) -> String {
    if dir.is_empty() {
        child.to_owned()
    } else {
        format!("{dir}/{child}")
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A [`Storage`] on a Redis server, shared by every instance of a cluster on
/// several machines (behind the cargo feature `redis`), or on a Redis Cluster
/// (feature `redis-cluster`, [`cluster_builder`](RedisStorage::cluster_builder)).
/// Clones share one connection and its locks.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use certauto_core::{Config, RedisStorage};
///
/// let storage = RedisStorage::builder("redis://:password@10.0.0.5:6379/0")
///     .key_prefix("shop")
///     .build()
///     .await?;
/// let config = Config::builder().storage(Arc::new(storage)).build();
/// # let _ = config; Ok(()) }
/// ```
///
/// # URLs
///
/// - `redis://[[user]:password@]host[:port][/db]`: plain TCP (port 6379 by default);
/// - `rediss://...`: TLS through rustls with the ring provider (named
///   explicitly: no process-wide default is needed or installed), verifying
///   the server against the webpki roots plus
///   [`trust_roots`](RedisStorageBuilder::trust_roots) (a private CA). The
///   `#insecure` fragment is refused;
/// - `redis+unix:///path/to/socket?db=N` (or `unix://`): a Unix socket.
///
/// The password never appears in `Debug`, errors or logs.
///
/// # Redis Cluster
///
/// With the feature `redis-cluster`,
/// [`RedisStorage::cluster_builder`] takes the `redis://` URLs of one or more
/// nodes of a Redis Cluster (the rest are discovered; `MOVED` and `ASK`
/// redirects are followed) and builds the same storage, with the same
/// settings, locks, fencing and index. Every key of one deployment carries
/// the hash tag of its prefix, so **one deployment lives on one slot** (and
/// so on one primary): the scripts that write a value with its index, or
/// check a fence while writing, touch several keys, and Redis runs a script
/// only on keys of one slot. Several deployments (several prefixes) spread
/// over the cluster. Clusters are reached over plain TCP only: redis-rs's
/// cluster client builds its own TLS configuration from the process-wide
/// rustls provider, which this crate neither requires nor installs, so a
/// `rediss://` node is refused when building (use a private network, or one
/// server over `rediss://`).
///
/// # Key layout
///
/// Every Redis key starts with the hash tag `{<prefix>}:`
/// ([`key_prefix`](RedisStorageBuilder::key_prefix), default `certauto`), on
/// one server as on a cluster (one layout for both), so several deployments
/// can share one server (or database) without seeing each other's data:
///
/// - `{<prefix>}:v:<key>`: a hash holding one value whole, field `d` (the bytes)
///   and `m` (when it was written, Unix milliseconds);
/// - `{<prefix>}:d:<dir>`: the index, a hash per "directory" (`{<prefix>}:d:` for
///   the top) mapping each child's name to `v` (a value) or `d` (a directory).
///   A Lua script writes the value and every index entry above it in one
///   atomic step, and deletion prunes emptied directories in the same step,
///   so the index cannot drift from the values: `list(prefix, false)` is one
///   read of one hash, `list(prefix, true)` walks the hashes below it, and
///   nothing uses `KEYS` or `SCAN` over the keyspace;
/// - `{<prefix>}:lock:<name>`: a lock, holding `<fence>:<token>` while held
///   (it expires with its lease);
/// - `{<prefix>}:fence`: the deployment's one fencing counter (for every
///   lock name: nothing is kept per name once a lock is released);
/// - `{<prefix>}:op:<id>`: a write's or delete's operation id, kept five
///   minutes (see [When Redis is unreachable](#when-redis-is-unreachable)).
///
/// As in a file system, a key cannot hold a value and have keys below it
/// ([`StorageError::InvalidKey`]). Values larger than 64 MiB are refused, on
/// write and on read.
///
/// # Locks and fencing
///
/// [`lock`](Storage::lock) runs, in one script, when `{<prefix>}:lock:<name>`
/// is free: `INCR {<prefix>}:fence` and `SET {<prefix>}:lock:<name>
/// <fence>:<token> PX <lease>` with a random token. The guard's
/// [`fence`](LockGuard::fence) is that number, higher for every later
/// acquisition (of any name). A missing counter (a new deployment, or a
/// server that lost its data) starts at the current time in microseconds
/// (`SET NX` before the `INCR`), so fences given after a data loss stay above
/// those given before it, as long as the clients' clocks are roughly right. While the guard lives, a task extends the lease every
/// [`lock_keepalive`](RedisStorageBuilder::lock_keepalive) (default a third of
/// the lease) with a script that acts only if the lock still holds the token;
/// release is the same kind of script. The guard reports the lock
/// [lost](LockGuard::is_lost) at once when an extension finds the token gone,
/// and when no extension succeeded for a whole lease (Redis unreachable:
/// others may take the lock once it expires). Extension errors are retried
/// until then; the keepalive never stops silently. Waiting for a held lock
/// polls every [`lock_poll_interval`](RedisStorageBuilder::lock_poll_interval)
/// (with jitter) for at most
/// [`lock_wait_timeout`](RedisStorageBuilder::lock_wait_timeout).
///
/// [`store_fenced`](Storage::store_fenced) and
/// [`delete_fenced`](Storage::delete_fenced) write in one script that first
/// checks that the lock still holds the guard's fence and (for a guard of
/// this client) the guard's token, and refuse with
/// [`StorageError::LockLost`] otherwise. So a holder paused past its lease
/// (a `SIGSTOP`, a long GC pause) cannot overwrite or delete the work of a
/// client that acquired the lock after it.
///
/// What this guarantees, honestly: on one Redis server, exclusion holds while
/// the server keeps its keys. A restart without persistence, a `FLUSHDB` or
/// an eviction loses locks (two clients may then hold one at once: the
/// fences and tokens still refuse the older holder's writes) and, worse,
/// **data**: certificates, account keys and the local CA are gone, and every
/// instance of the cluster obtains its certificates again (CA rate limits).
/// Redis replication is asynchronous, so a failover to a replica that had
/// not yet received a lock can let two clients hold it at once; the fence
/// check then still refuses the older holder's writes when the lock reached
/// the replica, and may not when it did not. The same holds on a Redis
/// Cluster, whose primaries replicate the same way. This backend is tested
/// against a single server and a cluster of three primaries without
/// replicas, not against failovers or Sentinel.
///
/// **For production**, run Redis with persistence (RDB snapshots or AOF) and
/// `maxmemory-policy noeviction`: any other policy lets Redis evict values,
/// the fence counter or held locks under memory pressure. At
/// [`build`](RedisStorageBuilder::build) the storage asks for the policy
/// (`CONFIG GET maxmemory-policy`) and logs a warning when it is not
/// `noeviction` (a server that refuses `CONFIG`, as managed services do, is
/// not checked).
///
/// # When Redis is unreachable
///
/// Operations fail with [`StorageError::Unavailable`] within the connect
/// timeout (default 5 s) or the response timeout (default 5 s); nothing
/// panics. The next operation connects again, so the same `RedisStorage`
/// works again once the server is back, without being rebuilt. An operation
/// that meets a connection that died unnoticed (the server restarted, a
/// firewall cut an idle connection) is sent again once on a new connection,
/// so the first operation after a restart succeeds. The first sending may
/// have run before its reply was lost, so every command this storage sends
/// is safe to run twice: a lock acquisition whose first sending took the
/// lock finds its own token there and keeps it, with its fence; a write or
/// delete carries a random operation id that Redis remembers for five
/// minutes (one small key per write), so a second sending answers as the
/// first did without writing again: it cannot overwrite a value another
/// client stored in between, nor delete one stored since. (A Redis Cluster
/// client also sends a command again after `MOVED`, `ASK`, `TRYAGAIN` or a
/// broken node connection, at most 3 times; the same holds.) Certificates
/// already loaded keep being served from the in-memory cache meanwhile;
/// maintenance fails with that error and retries with its backoff.
#[derive(Clone)]
pub struct RedisStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server's URL without credentials.
    description: String,
    keys: Keys,
    timings: LockTimings,
    conn: Connection,
    scripts: Scripts,
    /// Tokens of the locks this client holds, by acquisition
    /// ([`LockGuard::acquisition`]), for the fenced writes.
    held: Mutex<HashMap<u64, String>>,
    /// Woken when this client releases a lock, so its local waiters need not
    /// wait for their next poll.
    released: Notify,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("server", &self.inner.description)
            .field("key_prefix", &self.inner.keys.prefix)
            .field("lock_lease", &self.inner.timings.lease)
            .field("lock_keepalive", &self.inner.timings.keepalive)
            .field("lock_poll_interval", &self.inner.timings.poll)
            .field("lock_wait_timeout", &self.inner.timings.wait_timeout)
            .finish()
    }
}

impl RedisStorage {
    /// A builder for a storage on the server at `url` (see the
    /// [`RedisStorage`] docs for URL forms), with the default settings.
    pub fn builder(url: &str) -> RedisStorageBuilder {
        RedisStorageBuilder::new(Endpoint::Single(url.to_owned()))
    }

    /// A builder for a storage on the Redis Cluster that `nodes` belong to
    /// (feature `redis-cluster`): `redis://[[user]:password@]host:port` URLs
    /// of one or more of its nodes, all with the same credentials; the
    /// others are discovered. See [Redis Cluster](RedisStorage#redis-cluster):
    /// one deployment (one key prefix) lives on one slot, and `rediss://` is
    /// refused by [`build`](RedisStorageBuilder::build).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), certauto_core::StorageError> {
    /// use certauto_core::RedisStorage;
    ///
    /// let storage = RedisStorage::cluster_builder(&[
    ///     "redis://:password@10.0.0.5:7000",
    ///     "redis://:password@10.0.0.6:7000",
    /// ])
    /// .key_prefix("shop")
    /// .build()
    /// .await?;
    /// # let _ = storage; Ok(()) }
    /// ```
    #[cfg(feature = "redis-cluster")]
    pub fn cluster_builder(nodes: &[&str]) -> RedisStorageBuilder {
        RedisStorageBuilder::new(Endpoint::Cluster(
            nodes.iter().map(|&n| n.to_owned()).collect(),
        ))
    }

    /// Warns when the server may evict keys (its `maxmemory-policy` is not
    /// `noeviction`); says nothing when it cannot tell (`CONFIG` refused).
    async fn check_eviction_policy(&self) {
        let answer: Result<Vec<String>, _> = self
            .inner
            .conn
            .run(|mut c| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(&mut c)
                    .await
            })
            .await;
        match answer {
            Ok(pair) => {
                if let Some(policy) = evicting_policy(&pair) {
                    tracing::warn!(
                        server = %self.inner.description,
                        policy,
                        "redis storage: the server's maxmemory-policy is not noeviction: \
                         Redis may evict certificates, keys, locks or the fence counter \
                         under memory pressure; set maxmemory-policy noeviction"
                    );
                }
            }
            Err(e) => tracing::debug!(
                error = %crate::error::ErrorChain(&e),
                "redis storage: could not read maxmemory-policy (CONFIG refused?); not checked"
            ),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `value` at `key`; with `fence`, only if the lock's fence (and
    /// token, when known) still match.
    async fn write(
        &self,
        key: &str,
        value: &[u8],
        fence: Option<&Fence<'_>>,
    ) -> Result<(), StorageError> {
        validate_key(key)?;
        if value.len() > MAX_VALUE {
            return Err(StorageError::InvalidKey {
                key: key.to_owned(),
                reason: "value larger than 64 MiB",
            });
        }
        let keys = &self.inner.keys;
        let (components, ancestors) = split_key(key);
        let mut invocation = self.inner.scripts.store.prepare_invoke();
        invocation.key(keys.value(key)).key(keys.dir(key));
        for dir in &ancestors {
            invocation.key(keys.dir(dir));
        }
        for dir in ancestors.iter().skip(1) {
            invocation.key(keys.value(dir));
        }
        invocation
            .arg(value)
            .arg(unix_millis(SystemTime::now()))
            .arg(components.len());
        for component in &components {
            invocation.arg(*component);
        }
        keys.fence_and_op(&mut invocation, fence)?;
        let outcome: i64 = self
            .inner
            .conn
            .run(|mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        match outcome {
            scripts::STORED => {
                tracing::debug!(key, len = value.len(), "redis storage: stored");
                Ok(())
            }
            scripts::HAS_CHILDREN => Err(StorageError::InvalidKey {
                key: key.to_owned(),
                reason: "the key has keys below it",
            }),
            scripts::PARENT_IS_VALUE => Err(StorageError::InvalidKey {
                key: key.to_owned(),
                reason: "a parent of the key holds a value",
            }),
            scripts::FENCED_OUT => Err(fenced_out(key, fence)),
            other => Err(StorageError::Backend(
                format!("redis storage: unexpected answer {other} from the store script").into(),
            )),
        }
    }

    /// Deletes the value at `key`: whether it existed (or was deleted by a
    /// first sending of this same delete, see [the scripts](scripts#sent-twice)).
    async fn delete_value(
        &self,
        key: &str,
        fence: Option<&Fence<'_>>,
    ) -> Result<bool, StorageError> {
        // Built once: both sendings carry the same operation id.
        let invocation = self.delete_invocation(key, fence)?;
        let deleted: i64 = self
            .inner
            .conn
            .run(|mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        if deleted == scripts::DELETE_FENCED_OUT {
            return Err(fenced_out(key, fence));
        }
        Ok(deleted == 1)
    }

    fn delete_invocation(
        &self,
        key: &str,
        fence: Option<&Fence<'_>>,
    ) -> Result<scripts::Call<'_>, StorageError> {
        let keys = &self.inner.keys;
        let (components, ancestors) = split_key(key);
        let mut invocation = self.inner.scripts.delete_value.prepare_invoke();
        invocation.key(keys.value(key));
        for dir in &ancestors {
            invocation.key(keys.dir(dir));
        }
        invocation.arg(components.len());
        for component in &components {
            invocation.arg(*component);
        }
        keys.fence_and_op(&mut invocation, fence)?;
        Ok(invocation)
    }

    /// Deletes `key` or everything below it; with `fence`, each value only
    /// while the lock is still the guard's (checked in the script that
    /// deletes it).
    async fn remove(&self, key: &str, fence: Option<&Fence<'_>>) -> Result<(), StorageError> {
        validate_key(key)?;
        if self.delete_value(key, fence).await? {
            tracing::debug!(key, fenced = fence.is_some(), "redis storage: deleted");
            return Ok(());
        }
        let below = self.walk(key).await?;
        if below.is_empty() {
            return Err(StorageError::NotFound(key.to_owned()));
        }
        for batch in below.chunks(DELETE_BATCH) {
            let invocations = batch
                .iter()
                .map(|k| self.delete_invocation(k, fence))
                .collect::<Result<Vec<_>, _>>()?;
            // One script per value; sent together, they share the round trips.
            let results = futures_util::future::join_all(invocations.iter().map(|inv| {
                self.inner
                    .conn
                    .run(move |mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            }))
            .await;
            for result in results {
                if result? == scripts::DELETE_FENCED_OUT {
                    return Err(fenced_out(key, fence));
                }
            }
        }
        tracing::debug!(
            key,
            removed = below.len(),
            fenced = fence.is_some(),
            "redis storage: deleted a directory"
        );
        Ok(())
    }

    /// The fence of `guard` for a fenced write: its fence and, for a guard of
    /// this client, its lock's token. A guard without a fence is not one of a
    /// `RedisStorage`'s.
    fn fence_of<'g>(&self, guard: &'g LockGuard) -> Result<Fence<'g>, StorageError> {
        guard.ensure_held()?;
        let name = guard.name();
        let fence = guard
            .fence()
            .ok_or_else(|| StorageError::LockLost(name.to_owned()))?;
        let token = self.held().get(&guard.acquisition()).cloned();
        Ok(Fence { name, fence, token })
    }

    /// The entries of the directory `dir`: (child name, whether it holds a value).
    async fn read_dir(&self, dir: &str) -> Result<Vec<(String, bool)>, StorageError> {
        let hash = self.inner.keys.dir(dir);
        let mut entries = BTreeSet::new();
        let mut cursor = "0".to_owned();
        for _ in 0..MAX_SCAN_ROUNDS {
            let (next, fields): (String, Vec<IndexEntry>) = self
                .inner
                .conn
                .run(|mut c| {
                    let mut cmd = redis::cmd("HSCAN");
                    cmd.arg(&hash).arg(&cursor).arg("COUNT").arg(SCAN_COUNT);
                    async move { cmd.query_async(&mut c).await }
                })
                .await?;
            for (name, kind) in fields {
                match String::from_utf8(name) {
                    Ok(name) => {
                        entries.insert((name, kind == b"v"));
                    }
                    Err(_) => {
                        tracing::warn!(dir, "redis storage: skipped a non-UTF-8 index entry");
                    }
                }
                if entries.len() > MAX_LISTED {
                    return Err(too_many(dir));
                }
            }
            if next == "0" {
                return Ok(entries.into_iter().collect());
            }
            cursor = next;
        }
        Err(too_many(dir))
    }

    /// Every value key below `dir` (sorted), walking the index.
    async fn walk(&self, dir: &str) -> Result<Vec<String>, StorageError> {
        let mut found = Vec::new();
        let mut pending = VecDeque::from([dir.to_owned()]);
        while let Some(dir) = pending.pop_front() {
            for (child, is_value) in self.read_dir(&dir).await? {
                let key = join(&dir, &child);
                if is_value {
                    found.push(key);
                } else {
                    pending.push_back(key);
                }
                if found.len() + pending.len() > MAX_LISTED {
                    return Err(too_many(&dir));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Whether the value hash of `key` exists.
    async fn value_exists(&self, key: &str) -> Result<bool, StorageError> {
        let hash = &self.inner.keys.value(key);
        self.inner
            .conn
            .run(|mut c| async move {
                redis::cmd("EXISTS")
                    .arg(hash)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|n| n > 0)
    }
}

/// The eviction policy in a `CONFIG GET maxmemory-policy` answer when it
/// is not `noeviction`.
fn evicting_policy(answer: &[String]) -> Option<&str> {
    match answer {
        [name, policy, ..] if name == "maxmemory-policy" && policy != "noeviction" => {
            Some(policy.as_str())
        }
        _ => None,
    }
}

/// What a fenced write checks: the lock `name` still holds `fence` (and
/// `token`, when this client knows it).
struct Fence<'a> {
    name: &'a str,
    fence: u64,
    token: Option<String>,
}

/// The error of a write refused by its fence.
fn fenced_out(key: &str, fence: Option<&Fence<'_>>) -> StorageError {
    let name = fence.map_or("", |f| f.name);
    tracing::warn!(
        lock = name,
        key,
        "redis storage: fenced write refused: the lock was taken over"
    );
    StorageError::LockLost(name.to_owned())
}

/// One field of a directory hash: a child's name and its kind (`v` or `d`).
type IndexEntry = (Vec<u8>, Vec<u8>);

/// A listing beyond the bounds.
fn too_many(dir: &str) -> StorageError {
    StorageError::Backend(
        format!("redis storage: listing {dir:?} exceeds {MAX_LISTED} keys").into(),
    )
}

#[async_trait]
impl Storage for RedisStorage {
    async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.write(key, value, None).await
    }

    async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        validate_key(key)?;
        let hash = self.inner.keys.value(key);
        let value: Option<Vec<u8>> = self
            .inner
            .conn
            .run(|mut c| {
                let mut invocation = self.inner.scripts.load.prepare_invoke();
                invocation.key(&hash).arg(MAX_VALUE);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        value.ok_or_else(|| StorageError::NotFound(key.to_owned()))
    }

    /// Deletes `key`, or everything below it (in batches of at most 256
    /// values, each removed with its index entries): a value stored below
    /// `key` while it is being deleted may survive.
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.remove(key, None).await
    }

    /// Deletes `key`, or everything below it as [`delete`](Storage::delete)
    /// does, only while no client acquired the guard's lock since the guard
    /// did (and the lock still holds this guard's token, for guards of this
    /// client): each value is removed by a script that checks that first.
    /// Refused with [`StorageError::LockLost`] otherwise; a directory whose
    /// lock is taken over part-way keeps the values not yet removed.
    async fn delete_fenced(&self, guard: &LockGuard, key: &str) -> Result<(), StorageError> {
        let fence = self.fence_of(guard)?;
        self.remove(key, Some(&fence)).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        validate_key(key)?;
        let (value, dir) = (&self.inner.keys.value(key), &self.inner.keys.dir(key));
        self.inner
            .conn
            .run(|mut c| async move {
                redis::cmd("EXISTS")
                    .arg(value)
                    .arg(dir)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|n| n > 0)
    }

    /// Lists the keys below `prefix`; an empty `prefix` lists from the top.
    ///
    /// Returns [`StorageError::NotFound`] when `prefix` is neither a value
    /// nor has keys below it, and an empty list when it holds a value.
    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
        if !prefix.is_empty() {
            validate_key(prefix)?;
        }
        let found = if recursive {
            self.walk(prefix).await?
        } else {
            self.read_dir(prefix)
                .await?
                .into_iter()
                .map(|(child, _)| join(prefix, &child))
                .collect()
        };
        if found.is_empty() && !prefix.is_empty() && !self.value_exists(prefix).await? {
            return Err(StorageError::NotFound(prefix.to_owned()));
        }
        Ok(found)
    }

    async fn stat(&self, key: &str) -> Result<KeyInfo, StorageError> {
        validate_key(key)?;
        let (value, dir) = (self.inner.keys.value(key), self.inner.keys.dir(key));
        let facts: Vec<i64> = self
            .inner
            .conn
            .run(|mut c| {
                let mut invocation = self.inner.scripts.stat.prepare_invoke();
                invocation.key(&value).key(&dir);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        match facts.as_slice() {
            [1, size, modified, ..] => {
                let modified = u64::try_from(*modified)
                    .ok()
                    .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
                Ok(KeyInfo::new(
                    key.to_owned(),
                    modified,
                    u64::try_from(*size).unwrap_or(0),
                    true,
                ))
            }
            [2, ..] => Ok(KeyInfo::new(key.to_owned(), None, 0, false)),
            _ => Err(StorageError::NotFound(key.to_owned())),
        }
    }

    /// Acquires the lock `name`; see [Locks and fencing](RedisStorage#locks-and-fencing).
    async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
        self.acquire(name).await
    }

    /// Stores `value` at `key` only if no client acquired the guard's lock
    /// since the guard did, and the lock still holds this guard's token (for
    /// guards of this client), checked in the same script as the write.
    async fn store_fenced(
        &self,
        guard: &LockGuard,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        let fence = self.fence_of(guard)?;
        self.write(key, value, Some(&fence)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_mapping() {
        let keys = Keys { prefix: "p".into() };
        // Every key carries the prefix's hash tag: one slot per deployment.
        assert_eq!(keys.value("a/b"), "{p}:v:a/b");
        assert_eq!(keys.dir(""), "{p}:d:");
        assert_eq!(keys.dir("a"), "{p}:d:a");
        assert_eq!(keys.lock("cert_x"), "{p}:lock:cert_x");
        assert_eq!(keys.fence(), "{p}:fence");
        assert_eq!(split_key("a"), (vec!["a"], vec![""]));
        assert_eq!(
            split_key("a/b:c/d e"),
            (vec!["a", "b:c", "d e"], vec!["", "a", "a/b:c"])
        );
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a/b", "x"), "a/b/x");
    }

    #[test]
    fn eviction_policies() {
        let answer = |policy: &str| vec!["maxmemory-policy".to_owned(), policy.to_owned()];
        assert_eq!(evicting_policy(&answer("noeviction")), None);
        assert_eq!(evicting_policy(&answer("allkeys-lru")), Some("allkeys-lru"));
        assert_eq!(
            evicting_policy(&answer("volatile-ttl")),
            Some("volatile-ttl")
        );
        assert_eq!(evicting_policy(&[]), None);
    }

    #[test]
    fn prefixes() {
        for good in ["certauto", "a", "shop-1.prod_x"] {
            assert!(valid_prefix(good), "{good}");
        }
        let long = "x".repeat(65);
        for bad in ["", "a:b", "a b", "{a}", "é", long.as_str()] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn url_redaction() {
        let cases = [
            ("redis://127.0.0.1:6380/2", "redis://127.0.0.1:6380/2"),
            ("redis://:s3cret@127.0.0.1", "redis://:***@127.0.0.1:6379/0"),
            (
                "rediss://bob:s3cret@cache.example:7000/1",
                "rediss://bob:***@cache.example:7000/1",
            ),
            ("not a url s3cret", "<invalid redis URL>"),
        ];
        for (url, shown) in cases {
            assert_eq!(redacted_url(url), shown);
        }
        let builder = RedisStorage::builder("redis://user:s3cret@127.0.0.1:1/0");
        assert!(!format!("{builder:?}").contains("s3cret"));
        let storage = builder.configure().unwrap();
        let debug = format!("{storage:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("user:***@127.0.0.1:1/0"), "{debug}");
    }

    #[test]
    fn settings_are_checked() {
        let refused = |b: RedisStorageBuilder| {
            let err = b.configure().unwrap_err();
            assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
            assert!(!err.to_string().contains("s3cret"));
        };
        let url = "redis://:s3cret@127.0.0.1:1";
        refused(RedisStorage::builder(url).key_prefix("a:b"));
        refused(RedisStorage::builder(
            "rediss://:s3cret@127.0.0.1:1/#insecure",
        ));
        refused(RedisStorage::builder("http://:s3cret@127.0.0.1:1"));
        refused(
            RedisStorage::builder(url)
                .lock_lease(Duration::from_secs(1))
                .lock_keepalive(Duration::from_secs(1)),
        );
        refused(
            RedisStorage::builder("rediss://127.0.0.1:1")
                .trust_roots(vec![CertificateDer::from(vec![1, 2, 3])]),
        );
        let tls = RedisStorage::builder("rediss://127.0.0.1:1")
            .configure()
            .unwrap();
        assert_eq!(tls.inner.timings.keepalive, tls.inner.timings.lease / 3);
    }

    #[cfg(feature = "redis-cluster")]
    #[test]
    fn cluster_settings_are_checked() {
        let refused = |nodes: &[&str], wanted: &str| {
            let err = RedisStorage::cluster_builder(nodes)
                .configure()
                .unwrap_err();
            let chain = crate::error::ErrorChain(&err).to_string();
            assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
            assert!(chain.contains(wanted), "{chain}");
            assert!(!chain.contains("s3cret"), "{chain}");
        };
        refused(
            &["rediss://:s3cret@127.0.0.1:7000"],
            "rediss:// is not supported",
        );
        refused(
            &[
                "redis://:s3cret@127.0.0.1:7000",
                "rediss://:s3cret@127.0.0.1:7001",
            ],
            "rediss:// is not supported",
        );
        refused(
            &["redis+unix:///tmp/redis.sock"],
            "must be a redis://host:port",
        );
        refused(
            &["redis://:s3cret@127.0.0.1:7000/2"],
            "has database 0 only: redis://:***@127.0.0.1:7000/2",
        );
        refused(&[], "invalid Redis Cluster settings");
        refused(
            &[
                "redis://:s3cret@127.0.0.1:7000",
                "redis://:other@127.0.0.1:7001",
            ],
            "invalid Redis Cluster settings",
        );
        let builder = RedisStorage::cluster_builder(&[
            "redis://:s3cret@127.0.0.1:7000",
            "redis://:s3cret@127.0.0.1:7001",
        ]);
        assert!(!format!("{builder:?}").contains("s3cret"));
        let storage = builder.key_prefix("shop").configure().unwrap();
        let debug = format!("{storage:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(
            debug.contains(
                "redis cluster [redis://:***@127.0.0.1:7000/0, redis://:***@127.0.0.1:7001/0]"
            ),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_typed_error() {
        // Port 1 on loopback: nothing listens there, the connection is refused.
        let err = RedisStorage::builder("redis://127.0.0.1:1")
            .connect_timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    }
}
