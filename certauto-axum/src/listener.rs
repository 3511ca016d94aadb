//! [`AcmeTlsListener`]: `axum::serve`'s [`Listener`] over certauto-core's
//! [`AcmeAcceptor`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use certauto_core::{AcmeAcceptor, AcmeAcceptorBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// A TLS listener for `axum::serve`, with concurrent handshakes: the
/// handshakes run in certauto-core's [`AcmeAcceptor`] (handshake timeout,
/// bound on handshakes in progress, TLS-ALPN-01 validations answered and
/// closed), and finished TLS streams are handed to `axum::serve`.
///
/// `axum::serve` sets no header-read or idle timeout and no connection cap;
/// [`serve`](crate::serve) does.
#[derive(Debug)]
pub struct AcmeTlsListener {
    acceptor: AcmeAcceptor,
}

/// Builds an [`AcmeTlsListener`].
#[derive(Debug)]
pub struct AcmeTlsListenerBuilder {
    inner: AcmeAcceptorBuilder,
}

impl AcmeTlsListenerBuilder {
    /// How long a TLS handshake may take (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.handshake_timeout(timeout);
        self
    }

    /// How many handshakes may be in progress at once (default 4096); further
    /// connections wait in the kernel's accept queue.
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.inner = self.inner.max_pending_handshakes(max);
        self
    }

    /// Starts accepting on `tcp`.
    pub fn listen(self, tcp: TcpListener) -> io::Result<AcmeTlsListener> {
        Ok(AcmeTlsListener {
            acceptor: self.inner.listen(tcp)?,
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
            inner: AcmeAcceptor::builder(tls),
        }
    }

    /// A listener over an acceptor built with certauto-core directly.
    pub fn from_acceptor(acceptor: AcmeAcceptor) -> Self {
        Self { acceptor }
    }
}

impl Listener for AcmeTlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.acceptor.accept().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.acceptor.local_addr())
    }
}

/// Connection facts for handlers: `ConnectInfo<TlsConnectInfo>`. Handlers
/// served by [`serve`](crate::serve) always have it; with `axum::serve` over
/// an [`AcmeTlsListener`], use
/// `router.into_make_service_with_connect_info::<TlsConnectInfo>()`.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The SNI the client sent.
    pub server_name: Option<String>,
}

impl TlsConnectInfo {
    /// The facts of a finished TLS connection from `remote_addr`.
    pub(crate) fn of(tls: &TlsStream<TcpStream>, remote_addr: SocketAddr) -> Self {
        Self {
            remote_addr,
            server_name: tls.get_ref().1.server_name().map(str::to_owned),
        }
    }
}

impl Connected<IncomingStream<'_, AcmeTlsListener>> for TlsConnectInfo {
    fn connect_info(stream: IncomingStream<'_, AcmeTlsListener>) -> Self {
        Self::of(stream.io(), *stream.remote_addr())
    }
}
