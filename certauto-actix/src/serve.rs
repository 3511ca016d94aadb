//! [`AcmeServer`]: an actix-web app over TLS from certauto-core's acceptor,
//! with bounded clients.
//!
//! actix-web's `HttpServer` runs its TLS handshakes in actix-tls and takes
//! no stream whose handshake ran elsewhere. This builds the actix-server
//! `Server` itself, as `HttpServer` does, with one difference in the pipeline
//! of each connection: actix-server accepts the TCP connection and hands it
//! to a worker; certauto-core's [`AcmeHandshaker`] (the handshake step of
//! [`AcmeAcceptor`](certauto_core::AcmeAcceptor)) runs the TLS handshake; and
//! actix-http's `HttpService` serves the TLS stream, HTTP/2 when ALPN chose
//! `h2` and HTTP/1.1 otherwise, to the app.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use actix_http::{HttpService, Protocol, Request, Response};
use actix_server::{GracefulShutdownSignal, Server, ServerBuilder};
use actix_service::{IntoServiceFactory, ServiceFactoryExt as _, fn_service, map_config};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Service, ServiceFactory};
use actix_web::http::KeepAlive;
use certauto_core::{AcmeAcceptorBuilder, AcmeHandshaker, ServerLimits};
use tokio::net::TcpStream;

/// The most workers actix-server runs.
pub(crate) const MAX_WORKERS: usize = 512;

/// An actix-web server over HTTPS whose handshakes run in certauto-core, not
/// yet running: set its [`limits`](Self::limits) and actix settings, then
/// [`run`](Self::run) it. Built by [`serve`](crate::serve) and
/// [`serve_with`](crate::serve_with).
///
/// - **Handshakes**: each under the
///   [`handshake_timeout`](ServerLimits::handshake_timeout) deadline, at
///   most [`max_pending_handshakes`](ServerLimits::max_pending_handshakes)
///   in progress across all workers (connections past the bound wait,
///   accepted and unread, for a slot); a connection that negotiated
///   `acme-tls/1` is closed right after its handshake, which answered the
///   TLS-ALPN-01 validation.
/// - **Certificates**: from the TLS config's resolver, read at each
///   handshake, so a renewed certificate is served to the next connection
///   with no restart; open connections keep their session.
/// - **HTTP**: actix-http's `HttpService` per connection, HTTP/2 when ALPN
///   chose `h2`, HTTP/1.1 otherwise, with
///   [`header_read_timeout`](ServerLimits::header_read_timeout) as actix's
///   `client_request_timeout` (a client that sends no complete request head
///   in time gets `408` and is closed), [`idle_timeout`](ServerLimits::idle_timeout)
///   as its keep-alive, and [`max_connections`](ServerLimits::max_connections)
///   per worker (connections in their handshake included), as actix-web
///   counts them.
/// - **Shutdown**: [`Server`]'s own: `ServerHandle::stop(true)` (or an OS
///   signal, or [`shutdown_signal`](Self::shutdown_signal)) stops accepting,
///   closes idle keep-alive connections, and waits up to
///   [`shutdown_timeout`](Self::shutdown_timeout) for requests in progress.
///
/// Requests see `https` as their scheme (`ConnectionInfo`) and the listener's
/// address as the host when they name none.
#[must_use = "an AcmeServer does nothing until it is run"]
pub struct AcmeServer {
    builder: ServerBuilder,
    /// Set once by [`run`](Self::run); read by each worker as it starts.
    started: Arc<OnceLock<Started>>,
    acceptor: AcmeAcceptorBuilder,
    limits: ServerLimits,
    local_addr: SocketAddr,
}

impl fmt::Debug for AcmeServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeServer")
            .field("local_addr", &self.local_addr)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What every worker shares once the server runs.
#[derive(Debug, Clone)]
struct Started {
    limits: ServerLimits,
    /// One for the whole server: its bound on handshakes is server-wide.
    handshaker: AcmeHandshaker,
}

impl Started {
    fn new(acceptor: AcmeAcceptorBuilder, limits: ServerLimits) -> Self {
        Self {
            limits,
            handshaker: acceptor.limits(&limits).handshaker(),
        }
    }
}

impl AcmeServer {
    pub(crate) fn new<F, I, S, B>(
        listener: std::net::TcpListener,
        acceptor: AcmeAcceptorBuilder,
        factory: F,
    ) -> io::Result<Self>
    where
        F: Fn() -> I + Send + Clone + 'static,
        I: IntoServiceFactory<S, Request>,
        S: ServiceFactory<Request, Config = AppConfig> + 'static,
        S::Error: Into<actix_web::Error> + 'static,
        S::InitError: fmt::Debug,
        S::Response: Into<Response<B>> + 'static,
        <S::Service as Service<Request>>::Future: 'static,
        S::Service: 'static,
        B: MessageBody + 'static,
    {
        let local_addr = listener.local_addr()?;
        let started = Arc::new(OnceLock::new());
        let builder = Server::build();
        let shutdown = builder.graceful_shutdown_signal();
        let worker = {
            let started = started.clone();
            let acceptor = acceptor.clone();
            move || {
                // `run` sets it before any worker starts; the default only
                // keeps this free of a panic path.
                let started = started
                    .get()
                    .cloned()
                    .unwrap_or_else(|| Started::new(acceptor.clone(), ServerLimits::default()));
                connection_service(factory(), started, shutdown.clone(), local_addr)
            }
        };
        let builder = builder.listen(format!("certauto-https-{local_addr}"), listener, worker)?;
        Ok(Self {
            builder,
            started,
            acceptor,
            limits: ServerLimits::default(),
            local_addr,
        })
    }

    /// The bounds on clients (default [`ServerLimits::default`]: 10 s to
    /// send the request head, 60 s keep-alive, 10,000 connections per
    /// worker, a 10 s handshake, 4096 handshakes in progress).
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The number of worker threads (default: the available parallelism).
    /// Clamped to 1..=512, actix-server's range.
    pub fn workers(mut self, workers: usize) -> Self {
        self.builder = self.builder.workers(workers.clamp(1, MAX_WORKERS));
        self
    }

    /// How long, in seconds, a graceful stop waits for requests in progress
    /// before the workers are dropped (default 30), as actix-web's
    /// `HttpServer::shutdown_timeout`.
    pub fn shutdown_timeout(mut self, seconds: u64) -> Self {
        self.builder = self.builder.shutdown_timeout(seconds);
        self
    }

    /// Stops the server gracefully when `signal` completes (and no longer on
    /// OS signals).
    pub fn shutdown_signal<Fut>(mut self, signal: Fut) -> Self
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.builder = self.builder.shutdown_signal(signal);
        self
    }

    /// Does not stop on OS signals (SIGINT, SIGTERM, SIGQUIT).
    pub fn disable_signals(mut self) -> Self {
        self.builder = self.builder.disable_signals();
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the workers and returns the running [`Server`]: await it, and
    /// stop it through its `handle()`, as with `HttpServer::run`.
    pub fn run(self) -> Server {
        let Self {
            builder,
            started,
            acceptor,
            limits,
            ..
        } = self;
        // Only `run` sets it, and `run` takes `self`: it is empty here.
        let _ = started.set(Started::new(acceptor, limits));
        builder
            .max_concurrent_connections(limits.max_connections_value())
            .run()
    }
}

/// One worker's service: the handshake in certauto-core, then the app over
/// actix-http.
fn connection_service<I, S, B>(
    app: I,
    started: Started,
    shutdown: GracefulShutdownSignal,
    local_addr: SocketAddr,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = (), InitError = ()>
where
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let app = app
        .into_factory()
        .map_err(|err| err.into().error_response());
    let host = local_addr.to_string();
    // actix-web builds its `AppConfig` with a crate-private constructor; this
    // is its public (documented as semver-exempt) twin, the one actix-test
    // uses. Pinned by the workspace's actix-web version.
    let app = map_config(app, move |()| {
        AppConfig::__priv_test_new(true, host.clone(), local_addr)
    });
    let http = HttpService::build()
        .graceful_shutdown_signal(move || {
            let shutdown = shutdown.clone();
            async move { shutdown.notified().await }
        })
        .keep_alive(KeepAlive::Timeout(started.limits.idle_timeout_value()))
        .client_request_timeout(started.limits.header_read_timeout_value())
        .local_addr(local_addr)
        .secure()
        .finish(app)
        .map_err(|e| tracing::debug!(error = %e, "HTTPS connection ended with an error"));
    let handshaker = started.handshaker;
    fn_service(move |stream: TcpStream| {
        let handshaker = handshaker.clone();
        async move {
            let peer = stream
                .peer_addr()
                .map_err(|e| tracing::debug!(error = %e, "no peer address; dropped"))?;
            // `None`: failed, timed out, or an answered TLS-ALPN-01
            // validation, already closed. Nothing to serve.
            let tls = handshaker.handshake(stream, peer).await.ok_or(())?;
            let protocol = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            Ok((tls, protocol, Some(peer)))
        }
    })
    .and_then(http)
}
