//! One multiplexed connection to Redis, opened on first use and opened again
//! after it failed: the reconnecting part of [`RedisStorage`](super::RedisStorage).
//!
//! redis-rs's own `ConnectionManager` reconnects too, but its TLS path builds
//! its rustls config with `ClientConfig::builder()`, which needs (or installs)
//! a process-wide default crypto provider, and loads the OS trust store. So
//! the stream is opened here (TCP, Unix socket, or TLS through
//! `tokio-rustls` with a config naming ring explicitly) and handed to
//! [`MultiplexedConnection::new_with_config`], which does the Redis
//! handshake (`AUTH`, `SELECT`).
//!
//! On a Redis Cluster (feature `redis-cluster`) the connection is redis-rs's
//! `ClusterConnection`, which follows `MOVED` / `ASK` redirects and keeps one
//! connection per node itself; it is opened and discarded here the same way.
//! Its TLS path cannot be given a rustls config (it builds its own with the
//! process-wide default provider), so clusters are reached over plain TCP
//! only: the builder refuses `rediss://` nodes.
//!
//! # Invariants
//! - At most one connection attempt runs at a time; callers that queued
//!   behind a failed attempt get its error instead of each trying again, so
//!   an unreachable server costs one connect timeout per wave of callers.
//! - Every attempt is bounded by the connect timeout, every command by the
//!   response timeout.
//! - A connection whose command failed with an I/O error, a dropped
//!   connection or a timeout is discarded (only that one: a newer connection
//!   another caller opened meanwhile is kept), and the next command reconnects.
//! - A command that failed because a connection opened earlier turned out to
//!   be dead (the server restarted, an idle connection was cut: an I/O error
//!   or a dropped connection; not a timeout, and not a reply that could not
//!   be parsed, which the server did answer) is sent once more, on a fresh
//!   connection. The first sending may have run before the connection broke,
//!   so every command this storage sends is safe to run twice: reads, lock
//!   scripts that compare the caller's token, and writes and deletes that
//!   carry an operation id (see [the scripts](super::scripts#sent-twice)). A
//!   timeout is not repeated: the first command may still be waiting on the
//!   server, and a repetition would only queue behind it.
//! - On a cluster, redis-rs's client follows `MOVED` / `ASK` and waits out
//!   `TRYAGAIN` / `CLUSTERDOWN` itself, at most [`CLUSTER_RETRIES`] times,
//!   and also sends a command again after a node's connection broke (safe
//!   for the same reason). The whole command, its retries included, is
//!   bounded by [`CLUSTER_RETRIES`] + 1 response timeouts.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisConnectionInfo, RedisError, RedisFuture, Value,
};
use rustls_pki_types::ServerName;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::storage::StorageError;

/// What to connect to: one server, or a cluster.
pub(super) enum Server {
    /// One server, reached through `target`, with `redis` for the handshake.
    Single {
        target: Target,
        redis: RedisConnectionInfo,
    },
    /// A Redis Cluster, through redis-rs's cluster client (plain TCP).
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Server::Single { target, redis } => write!(f, "{target:?} db {}", redis.db()),
            #[cfg(feature = "redis-cluster")]
            Server::Cluster(_) => f.write_str("cluster"),
        }
    }
}

/// An open connection: to one server, or to a cluster. Cheap to clone (a
/// handle on a multiplexed connection).
#[derive(Clone)]
pub(super) enum Handle {
    Single(MultiplexedConnection),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Single(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Single(c) => c.get_db(),
            #[cfg(feature = "redis-cluster")]
            Handle::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the server is.
#[derive(Clone)]
pub(super) enum Target {
    /// Plain TCP.
    Tcp { host: String, port: u16 },
    /// TLS over TCP, with the config to use and the name to verify.
    Tls {
        host: String,
        port: u16,
        server_name: ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    },
    /// A Unix socket.
    Unix(PathBuf),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "tcp {host}:{port}"),
            Target::Tls { host, port, .. } => write!(f, "tls {host}:{port}"),
            Target::Unix(path) => write!(f, "unix {}", path.display()),
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("could not connect to redis at {target}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to redis at {target} took longer than {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("redis at {target} refused the connection setup")]
    Setup {
        target: String,
        #[source]
        source: RedisError,
    },
}

/// The current connection, with an id telling reconnections apart.
#[derive(Default)]
struct State {
    current: Option<(u64, Handle)>,
    next_id: u64,
    /// The last failed attempt: when it ended and why.
    failed: Option<(Instant, Arc<ConnectError>)>,
}

/// A lazily (re)connected multiplexed connection.
pub(super) struct Connection {
    server: Server,
    connect_timeout: Duration,
    response_timeout: Duration,
    state: Mutex<State>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The longest Redis may take to answer one command.
    pub(super) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }
}

/// Whether `err` means the connection is unusable (rather than the command
/// being refused by a working server).
fn is_connection_failure(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}

/// Whether `err` says the connection was dead when the command was sent on
/// it, so that sending the command again on a new connection cannot race
/// the first (a timeout can: the first may still be on its way). A reply
/// that could not be parsed is not: the server answered.
fn is_dead_connection(err: &RedisError) -> bool {
    (err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal())
        && !err.is_timeout()
}

#[cfg(feature = "redis-cluster")]
pub(super) use crate::storage::redis_defaults::CLUSTER_RETRIES;

/// Maps a failed command to a [`StorageError`].
pub(super) fn command_error(err: RedisError) -> StorageError {
    if is_connection_failure(&err) {
        StorageError::Unavailable {
            source: Box::new(err),
        }
    } else {
        StorageError::Backend(Box::new(err))
    }
}

/// A connection from [`Connection::get`].
struct Got {
    id: u64,
    handle: Handle,
    /// Opened by this call (so not one that may have died unnoticed).
    fresh: bool,
}

impl Connection {
    pub(super) fn new(
        server: Server,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            server,
            connect_timeout,
            response_timeout,
            state: Mutex::new(State::default()),
        }
    }

    /// The current connection, opening one if there is none.
    async fn get(&self) -> Result<Got, StorageError> {
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some((id, handle)) = &state.current {
            return Ok(Got {
                id: *id,
                handle: handle.clone(),
                fresh: false,
            });
        }
        // An attempt that failed while we queued for it answers for us too.
        if let Some((at, err)) = &state.failed
            && *at >= asked
        {
            return Err(StorageError::Unavailable {
                source: Box::new(err.clone()),
            });
        }
        match tokio::time::timeout(self.connect_timeout, self.connect()).await {
            Ok(Ok(handle)) => {
                state.next_id += 1;
                let id = state.next_id;
                state.current = Some((id, handle.clone()));
                state.failed = None;
                tracing::debug!(server = ?self.server, "redis storage: connected");
                Ok(Got {
                    id,
                    handle,
                    fresh: true,
                })
            }
            outcome => {
                let err = Arc::new(match outcome {
                    Ok(Err(err)) => err,
                    _ => ConnectError::Timeout {
                        target: format!("{:?}", self.server),
                        timeout: self.connect_timeout,
                    },
                });
                tracing::warn!(server = ?self.server, error = %crate::error::ErrorChain(&*err), "redis storage: cannot connect");
                state.failed = Some((Instant::now(), err.clone()));
                Err(StorageError::Unavailable {
                    source: Box::new(err),
                })
            }
        }
    }

    /// Forgets connection `id` (if it is still the current one).
    async fn discard(&self, id: u64) {
        let mut state = self.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|(current, _)| *current == id)
        {
            state.current = None;
            tracing::debug!(server = ?self.server, "redis storage: connection discarded; the next command reconnects");
        }
    }

    /// Runs `command` on the connection, discarding the connection when the
    /// command failed because of it; a command that met a connection that
    /// had died unnoticed runs once more on a fresh one (see the module docs:
    /// `command` must be safe to run twice).
    pub(super) async fn run<T, F, Fut>(&self, command: F) -> Result<T, StorageError>
    where
        F: Fn(Handle) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let got = self.get().await?;
        let err = match self.bounded(command(got.handle)).await {
            Ok(value) => return Ok(value),
            Err(err) if !is_connection_failure(&err) => return Err(command_error(err)),
            Err(err) => err,
        };
        self.discard(got.id).await;
        if got.fresh || !is_dead_connection(&err) {
            return Err(command_error(err));
        }
        tracing::debug!(server = ?self.server, error = %crate::error::ErrorChain(&err),
            "redis storage: the connection had died; sending the command again on a new one");
        let again = self.get().await?;
        match self.bounded(command(again.handle)).await {
            Ok(value) => Ok(value),
            Err(err) => {
                if is_connection_failure(&err) {
                    self.discard(again.id).await;
                }
                Err(command_error(err))
            }
        }
    }

    /// `command`, bounded as a whole: by the response timeout (which the
    /// connection enforces too) on one server, by a response timeout per
    /// send on a cluster, whose client may send it again.
    async fn bounded<T>(
        &self,
        command: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        let limit = match &self.server {
            Server::Single { .. } => self.response_timeout,
            #[cfg(feature = "redis-cluster")]
            Server::Cluster(_) => self.response_timeout.saturating_mul(CLUSTER_RETRIES + 1),
        };
        // A little slack so that the connection's own timeout, when it
        // fires, is the one reported.
        match tokio::time::timeout(limit + Duration::from_millis(100), command).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("redis did not answer within {limit:?}"),
            ))),
        }
    }

    /// Opens a connection (the stream and the Redis handshake, or the
    /// cluster's connections and its slot map).
    async fn connect(&self) -> Result<Handle, ConnectError> {
        match &self.server {
            Server::Single { target, redis } => {
                self.connect_single(target, redis).await.map(Handle::Single)
            }
            #[cfg(feature = "redis-cluster")]
            Server::Cluster(client) => client
                .get_async_connection()
                .await
                .map(Handle::Cluster)
                .map_err(|source| ConnectError::Setup {
                    target: format!("{:?}", self.server),
                    source,
                }),
        }
    }

    /// Opens the stream to one server and does the Redis handshake.
    async fn connect_single(
        &self,
        target: &Target,
        redis: &RedisConnectionInfo,
    ) -> Result<MultiplexedConnection, ConnectError> {
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.response_timeout));
        let describe = || format!("{target:?}");
        let io = |source| ConnectError::Io {
            target: describe(),
            source,
        };
        let setup = |source| ConnectError::Setup {
            target: describe(),
            source,
        };
        let conn = match target {
            Target::Tcp { host, port } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                let _ = tcp.set_nodelay(true);
                MultiplexedConnection::new_with_config(redis, tcp, config)
                    .await
                    .map_err(setup)
                    .map(spawn_driver)?
            }
            Target::Tls {
                host,
                port,
                server_name,
                config: tls,
            } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                let _ = tcp.set_nodelay(true);
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(io)?;
                MultiplexedConnection::new_with_config(redis, stream, config)
                    .await
                    .map_err(setup)
                    .map(spawn_driver)?
            }
            #[cfg(unix)]
            Target::Unix(path) => {
                let unix = tokio::net::UnixStream::connect(path).await.map_err(io)?;
                MultiplexedConnection::new_with_config(redis, unix, config)
                    .await
                    .map_err(setup)
                    .map(spawn_driver)?
            }
            #[cfg(not(unix))]
            Target::Unix(_) => {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "Unix sockets are not available on this platform",
                )));
            }
        };
        Ok(conn)
    }
}

/// Runs a new connection's driver (it reads replies and ends with the
/// connection) and returns the connection.
fn spawn_driver<D>((conn, driver): (MultiplexedConnection, D)) -> MultiplexedConnection
where
    D: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(driver);
    conn
}
