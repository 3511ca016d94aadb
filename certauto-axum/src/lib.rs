//! Serve an axum [`Router`] over TLS with certificates CertAuto obtains and
//! swaps live.
//!
//! [`AcmeTlsListener`] implements [`axum::serve::Listener`]: it accepts TCP
//! connections in a background task, runs each TLS handshake concurrently
//! (with a timeout, so a slow or broken client never holds up the others),
//! answers TLS-ALPN-01 validations and closes them, and hands finished TLS
//! streams to `axum::serve`. Certificates come from the config's
//! [`CertResolver`](certauto_core::CertResolver), so a renewal is served to
//! the next handshake with no restart; open connections keep their session.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use certauto_core::Config;
//!
//! # async fn demo() -> std::io::Result<()> {
//! let config = Config::builder().build(); // the local CA: works offline
//! config.manage(["localhost"]).await.expect("certificate");
//! let app = Router::new().route("/", get(|| async { "hello over TLS" }));
//!
//! // Port 80: ACME HTTP-01 challenges, everything else redirected to HTTPS.
//! let http = tokio::net::TcpListener::bind("0.0.0.0:80").await?;
//! tokio::spawn(certauto_axum::serve_http(http, Default::default(), 443));
//!
//! let https = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! certauto_axum::serve(https, app, &config)?
//!     .with_graceful_shutdown(std::future::pending::<()>())
//!     .await
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener, Serve};
use certauto_core::challenge::tls_alpn01::ACME_TLS_ALPN;
use certauto_core::{ChallengeTokens, Config};
use certauto_tower::{AcmeLayer, HttpsRedirectLayer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The default TLS handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bound on handshakes in progress at once.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 4096;

/// A TLS listener for `axum::serve`, with concurrent handshakes.
#[derive(Debug)]
pub struct AcmeTlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Builds an [`AcmeTlsListener`].
#[derive(Debug)]
pub struct AcmeTlsListenerBuilder {
    tls: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    max_pending: usize,
}

impl AcmeTlsListenerBuilder {
    /// How long a TLS handshake may take (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many handshakes may be in progress at once (default 4096); further
    /// connections wait in the kernel's accept queue.
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Starts accepting on `tcp`.
    pub fn listen(self, tcp: TcpListener) -> io::Result<AcmeTlsListener> {
        let local_addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(self.max_pending);
        let acceptor = TlsAcceptor::from(self.tls);
        let permits = Arc::new(Semaphore::new(self.max_pending));
        let timeout = self.handshake_timeout;
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, never stop.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = stream.set_nodelay(true);
                    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let (_, conn) = tls.get_ref();
                    if conn.alpn_protocol() == Some(ACME_TLS_ALPN) {
                        // A TLS-ALPN-01 validation: the handshake was the answer.
                        let mut tls = tls;
                        let _ = tls.shutdown().await;
                        tracing::debug!(%peer, "answered a TLS-ALPN-01 validation");
                        return;
                    }
                    let _ = tx.send((tls, peer)).await;
                });
            }
        });
        Ok(AcmeTlsListener {
            rx,
            local_addr,
            task,
        })
    }
}

impl AcmeTlsListener {
    /// Starts accepting TLS on `tcp` with `tls` and default settings.
    pub fn new(tcp: TcpListener, tls: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        Self::builder(tls).listen(tcp)
    }

    /// Starts building a listener.
    pub fn builder(tls: Arc<rustls::ServerConfig>) -> AcmeTlsListenerBuilder {
        AcmeTlsListenerBuilder {
            tls,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }
}

impl Drop for AcmeTlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener for AcmeTlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (it only does when aborted): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Connection facts for handlers: `ConnectInfo<TlsConnectInfo>` with
/// `router.into_make_service_with_connect_info::<TlsConnectInfo>()`.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The SNI the client sent.
    pub server_name: Option<String>,
}

impl Connected<IncomingStream<'_, AcmeTlsListener>> for TlsConnectInfo {
    fn connect_info(stream: IncomingStream<'_, AcmeTlsListener>) -> Self {
        Self {
            remote_addr: *stream.remote_addr(),
            server_name: stream.io().get_ref().1.server_name().map(str::to_owned),
        }
    }
}

/// Serves `router` over TLS on `tcp` with the certificates of `config`.
/// Await it, or add `.with_graceful_shutdown(signal)` first.
pub fn serve(
    tcp: TcpListener,
    router: Router,
    config: &Config,
) -> io::Result<Serve<AcmeTlsListener, Router, Router>> {
    serve_with(tcp, router, Arc::new(config.server_config()))
}

/// Serves `router` over TLS on `tcp` with a rustls config of your own (which
/// should resolve through a [`CertResolver`](certauto_core::CertResolver) and
/// list `acme-tls/1` in ALPN to answer TLS-ALPN-01).
pub fn serve_with(
    tcp: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
) -> io::Result<Serve<AcmeTlsListener, Router, Router>> {
    Ok(axum::serve(AcmeTlsListener::new(tcp, tls)?, router))
}

/// The port-80 side: answers ACME HTTP-01 challenges presented in `tokens`
/// and redirects everything else to `https://` on `https_port` (308).
pub fn http_router(tokens: ChallengeTokens, https_port: u16) -> Router {
    Router::new()
        .layer(HttpsRedirectLayer::permanent().https_port(https_port))
        .layer(AcmeLayer::new(tokens))
}

/// Runs [`http_router`] on `tcp` until the process ends.
pub async fn serve_http(
    tcp: TcpListener,
    tokens: ChallengeTokens,
    https_port: u16,
) -> io::Result<()> {
    axum::serve(tcp, http_router(tokens, https_port)).await
}
