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
//! # Invariants
//! - At most one connection attempt runs at a time; callers that queued
//!   behind a failed attempt get its error instead of each trying again, so
//!   an unreachable server costs one connect timeout per wave of callers.
//! - Every attempt is bounded by the connect timeout, every command by the
//!   response timeout.
//! - A connection whose command failed with an I/O error, a dropped
//!   connection or a timeout is discarded (only that one: a newer connection
//!   another caller opened meanwhile is kept), and the next command reconnects.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError};
use rustls_pki_types::ServerName;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::storage::StorageError;

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
    current: Option<(u64, MultiplexedConnection)>,
    next_id: u64,
    /// The last failed attempt: when it ended and why.
    failed: Option<(Instant, Arc<ConnectError>)>,
}

/// A lazily (re)connected multiplexed connection.
pub(super) struct Connection {
    target: Target,
    redis: RedisConnectionInfo,
    connect_timeout: Duration,
    response_timeout: Duration,
    state: Mutex<State>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .field("db", &self.redis.db())
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
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

impl Connection {
    pub(super) fn new(
        target: Target,
        redis: RedisConnectionInfo,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            target,
            redis,
            connect_timeout,
            response_timeout,
            state: Mutex::new(State::default()),
        }
    }

    /// The current connection, opening one if there is none.
    async fn get(&self) -> Result<(u64, MultiplexedConnection), StorageError> {
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some((id, conn)) = &state.current {
            return Ok((*id, conn.clone()));
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
            Ok(Ok(conn)) => {
                state.next_id += 1;
                let id = state.next_id;
                state.current = Some((id, conn.clone()));
                state.failed = None;
                tracing::debug!(target = ?self.target, "redis storage: connected");
                Ok((id, conn))
            }
            outcome => {
                let err = Arc::new(match outcome {
                    Ok(Err(err)) => err,
                    _ => ConnectError::Timeout {
                        target: format!("{:?}", self.target),
                        timeout: self.connect_timeout,
                    },
                });
                tracing::warn!(target = ?self.target, error = %crate::error::ErrorChain(&*err), "redis storage: cannot connect");
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
            tracing::debug!(target = ?self.target, "redis storage: connection discarded; the next command reconnects");
        }
    }

    /// Runs `command` on the connection, discarding the connection when the
    /// command failed because of it.
    pub(super) async fn run<T, F, Fut>(&self, command: F) -> Result<T, StorageError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let (id, conn) = self.get().await?;
        match command(conn).await {
            Ok(value) => Ok(value),
            Err(err) => {
                if is_connection_failure(&err) {
                    self.discard(id).await;
                }
                Err(command_error(err))
            }
        }
    }

    /// Opens the stream and does the Redis handshake.
    async fn connect(&self) -> Result<MultiplexedConnection, ConnectError> {
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.response_timeout));
        let target = || format!("{:?}", self.target);
        let io = |source| ConnectError::Io {
            target: target(),
            source,
        };
        let setup = |source| ConnectError::Setup {
            target: target(),
            source,
        };
        let conn = match &self.target {
            Target::Tcp { host, port } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                let _ = tcp.set_nodelay(true);
                MultiplexedConnection::new_with_config(&self.redis, tcp, config)
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
                MultiplexedConnection::new_with_config(&self.redis, stream, config)
                    .await
                    .map_err(setup)
                    .map(spawn_driver)?
            }
            #[cfg(unix)]
            Target::Unix(path) => {
                let unix = tokio::net::UnixStream::connect(path).await.map_err(io)?;
                MultiplexedConnection::new_with_config(&self.redis, unix, config)
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
