//! [`Serve`]: axum over hyper with bounded clients (header-read and idle
//! timeouts, a connection cap), over TLS from certauto-core's
//! [`AcmeAcceptor`] or over plain TCP for port 80.
//!
//! `axum::serve` sets no hyper timer, so a client that never sends its
//! headers holds a connection forever. This serves each connection with
//! hyper's own builders instead: HTTP/1.1 with a timer and
//! `header_read_timeout`, HTTP/2 (chosen by ALPN `h2`) with a timer, and
//! around both an idle timer and a semaphore of
//! [`max_connections`](ServerLimits::max_connections) permits.

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use certauto_core::{AcmeAcceptor, AcmeAcceptorBuilder, ServerLimits, accept_tcp};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::server::TlsStream;

use crate::TlsConnectInfo;
use crate::idle::{Activity, IdleIo};

/// The future of a [`Serve`] or [`WithGracefulShutdown`].
pub type ServeFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A server with bounded clients, not yet running: set its
/// [`limits`](Self::limits), optionally
/// [`with_graceful_shutdown`](Self::with_graceful_shutdown), and `.await` it.
/// It runs until the process ends (or its shutdown signal completes and the
/// open connections have closed); accept errors never stop it.
///
/// Built by [`serve`](crate::serve), [`serve_with`](crate::serve_with) (TLS)
/// and [`serve_plain`](crate::serve_plain) (port 80).
///
/// Handlers can extract `ConnectInfo<SocketAddr>`, and over TLS
/// `ConnectInfo<TlsConnectInfo>`, with no `into_make_service_with_connect_info`.
#[derive(Debug)]
#[must_use = "a Serve does nothing until it is awaited"]
pub struct Serve {
    source: Source,
    router: Router,
    limits: ServerLimits,
    local_addr: SocketAddr,
}

#[derive(Debug)]
enum Source {
    Tls {
        tcp: TcpListener,
        acceptor: AcmeAcceptorBuilder,
    },
    Plain(TcpListener),
}

impl Serve {
    pub(crate) fn tls(
        tcp: TcpListener,
        router: Router,
        acceptor: AcmeAcceptorBuilder,
    ) -> io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        Ok(Self {
            source: Source::Tls { tcp, acceptor },
            router,
            limits: ServerLimits::default(),
            local_addr,
        })
    }

    pub(crate) fn plain(tcp: TcpListener, router: Router) -> io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        Ok(Self {
            source: Source::Plain(tcp),
            router,
            limits: ServerLimits::default(),
            local_addr,
        })
    }

    /// The bounds on clients (default [`ServerLimits::default`]: 10 s to send
    /// headers, 60 s idle, 10,000 connections, and over TLS a 10 s handshake
    /// and 4096 handshakes in progress).
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting when `signal` completes, asks every open connection
    /// to finish (HTTP/1.1: after its response in progress; HTTP/2: GOAWAY),
    /// and completes when they have closed. A connection that stays silent
    /// for the idle timeout after the signal is dropped.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> WithGracefulShutdown<F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        WithGracefulShutdown {
            serve: self,
            signal,
        }
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = ServeFuture;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self, std::future::pending()))
    }
}

/// A [`Serve`] that shuts down gracefully when its signal completes.
#[derive(Debug)]
#[must_use = "a WithGracefulShutdown does nothing until it is awaited"]
pub struct WithGracefulShutdown<F> {
    serve: Serve,
    signal: F,
}

impl<F> IntoFuture for WithGracefulShutdown<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    type Output = io::Result<()>;
    type IntoFuture = ServeFuture;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self.serve, self.signal))
    }
}

/// Where accepted connections come from once the server runs.
enum Accepting {
    Tls(AcmeAcceptor),
    Plain(TcpListener),
}

/// One accepted connection.
enum Conn {
    /// Boxed: a TLS stream is large, and it moves into the connection task.
    Tls(Box<TlsStream<TcpStream>>, SocketAddr),
    Plain(TcpStream, SocketAddr),
}

impl Accepting {
    async fn next(&mut self) -> Conn {
        match self {
            Self::Tls(acceptor) => {
                let (tls, peer) = acceptor.accept().await;
                Conn::Tls(Box::new(tls), peer)
            }
            Self::Plain(tcp) => {
                let (stream, peer) = accept_tcp(tcp).await;
                let _ = stream.set_nodelay(true);
                Conn::Plain(stream, peer)
            }
        }
    }
}

async fn run(serve: Serve, signal: impl Future<Output = ()> + Send) -> io::Result<()> {
    let Serve {
        source,
        router,
        limits,
        ..
    } = serve;
    let mut incoming = match source {
        Source::Tls { tcp, acceptor } => Accepting::Tls(acceptor.limits(&limits).listen(tcp)?),
        Source::Plain(tcp) => Accepting::Plain(tcp),
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections_value()));
    // `true` once the signal completed: every connection starts to close.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Every connection holds a receiver: `closed()` means all have ended.
    let (close_tx, close_rx) = watch::channel(());
    let mut signal = pin!(signal);
    loop {
        let next = async {
            // Never closed, so this returns a permit.
            let slot = slots.clone().acquire_owned().await.ok();
            (slot, incoming.next().await)
        };
        let (slot, conn) = tokio::select! {
            biased;
            () = &mut signal => break,
            accepted = next => accepted,
        };
        tokio::spawn(serve_connection(
            conn,
            slot,
            router.clone(),
            limits,
            shutdown_rx.clone(),
            close_rx.clone(),
        ));
    }
    drop(incoming);
    shutdown_tx.send_replace(true);
    drop(close_rx);
    close_tx.closed().await;
    Ok(())
}

async fn serve_connection(
    conn: Conn,
    _slot: Option<OwnedSemaphorePermit>,
    router: Router,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
    _close: watch::Receiver<()>,
) {
    let activity = Activity::new();
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout_value())
        .keep_alive(true);
    let idle = limits.idle_timeout_value();
    match conn {
        Conn::Tls(tls, peer) => {
            let info = TlsConnectInfo::of(&tls, peer);
            let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = service(router, peer, Some(info));
            let io = TokioIo::new(IdleIo::new(tls, activity.clone()));
            if is_h2 {
                let mut h2 = http2::Builder::new(TokioExecutor::new());
                h2.timer(TokioTimer::new());
                let conn = h2.serve_connection(io, service);
                drive(conn, &activity, idle, &mut shutdown, peer).await;
            } else {
                let conn = h1.serve_connection(io, service).with_upgrades();
                drive(conn, &activity, idle, &mut shutdown, peer).await;
            }
        }
        Conn::Plain(tcp, peer) => {
            let service = service(router, peer, None);
            let io = TokioIo::new(IdleIo::new(tcp, activity.clone()));
            let conn = h1.serve_connection(io, service).with_upgrades();
            drive(conn, &activity, idle, &mut shutdown, peer).await;
        }
    }
}

/// `router` as a hyper service for one connection, adding its connect info.
fn service(
    router: Router,
    peer: SocketAddr,
    tls: Option<TlsConnectInfo>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(info) = &tls {
            request.extensions_mut().insert(ConnectInfo(info.clone()));
        }
        let mut router = router.clone();
        // A Router is always ready (its `poll_ready` returns `Ready(Ok)`),
        // as `axum::serve` relies on too: call it without polling.
        tower_service::Service::call(&mut router, request)
    })
}

/// A hyper connection that can be asked to finish.
trait GracefulConnection: Future<Output = Result<(), hyper::Error>> {
    fn start_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn start_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> GracefulConnection for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn start_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `conn` to its end. After `idle` with no traffic, or when the server
/// shuts down, it is asked to finish; if it then stays silent for another
/// `idle`, it is dropped.
async fn drive<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    shutdown: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) {
    let mut conn = pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.idle_for(idle) => {
                if closing {
                    tracing::debug!(%peer, "connection silent while closing; dropped");
                    return;
                }
                tracing::debug!(%peer, ?idle, "connection idle; closing");
                closing = true;
                activity.touch();
                conn.as_mut().start_shutdown();
            }
            // A closed channel (the server future was dropped) also closes.
            _ = shutdown.wait_for(|down| *down), if !closing => {
                closing = true;
                activity.touch();
                conn.as_mut().start_shutdown();
            }
        }
    }
}
