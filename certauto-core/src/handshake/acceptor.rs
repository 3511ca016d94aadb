//! [`AcmeAcceptor`]: the TLS accept loop both server adapters use, and its
//! handshake step alone ([`AcmeHandshaker`]) for servers that accept TCP
//! themselves.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{Acceptor, ClientHello};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::challenge::tls_alpn01::ACME_TLS_ALPN;

/// The default TLS handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bound on handshakes in progress at once.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 4096;

/// How long the accept loop pauses after a failed `accept` (out of file
/// descriptors and the like) before it tries again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A finished handshake waiting to be taken, with the slot it holds.
type Accepted = (TlsStream<TcpStream>, SocketAddr, OwnedSemaphorePermit);

/// Accepts TLS connections in the background; [`accept`](Self::accept) takes
/// the finished ones.
///
/// One background task accepts TCP connections; each handshake runs in a task
/// of its own, so a slow or broken client never holds up the others.
///
/// - **Accept errors back off, never stop**: out of file descriptors and the
///   like is logged, and accepting resumes after a short pause.
/// - **One deadline per handshake** ([`handshake_timeout`](AcmeAcceptorBuilder::handshake_timeout),
///   default 10 s) covers everything from the first byte read, through
///   choosing the `ServerConfig` for the ClientHello, to the finished
///   handshake.
/// - **Handshakes in progress are bounded** ([`max_pending_handshakes`](AcmeAcceptorBuilder::max_pending_handshakes),
///   default 4096): past the bound, connections wait in the kernel's accept
///   queue. A finished stream keeps its slot until [`AcmeAcceptor::accept`]
///   takes it, so a server that stops taking streams stops the handshakes too.
/// - **TLS-ALPN-01 validations are closed after the handshake**: a connection
///   that negotiated `acme-tls/1` has had its answer (the challenge
///   certificate, from the [`CertResolver`](super::CertResolver)); it is shut
///   down and never handed on.
///
/// It is built on [`tokio_rustls::LazyConfigAcceptor`]: the ClientHello is read
/// first, then the `ServerConfig` for it is chosen (built with
/// [`for_config`](Self::for_config), after awaiting what the ClientHello
/// needs from the [`Config`](crate::Config), under the same deadline), and
/// the handshake finishes with `into_stream(config)`.
///
/// ```no_run
/// # async fn demo(config: certauto_core::Config) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use certauto_core::AcmeAcceptor;
///
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
/// let mut acceptor = AcmeAcceptor::builder(Arc::new(config.server_config())).listen(tcp)?;
/// loop {
///     let (tls, peer) = acceptor.accept().await;
///     // serve HTTP over `tls`...
///     # let _ = (tls, peer);
/// }
/// # }
/// ```
///
/// Dropping it stops accepting (handshakes in progress are dropped).
#[derive(Debug)]
pub struct AcmeAcceptor {
    rx: mpsc::Receiver<Accepted>,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Builds an [`AcmeAcceptor`].
#[derive(Debug, Clone)]
pub struct AcmeAcceptorBuilder {
    configs: ConfigSource,
    handshake_timeout: Duration,
    max_pending: usize,
}

/// The handshake step of an [`AcmeAcceptor`] alone, for servers that accept
/// TCP connections themselves and hand each one over (certauto-actix:
/// actix-server accepts in its own thread and serves each connection in a
/// worker). Built by [`AcmeAcceptorBuilder::handshaker`]; clones share the
/// bound on handshakes in progress.
///
/// The same handshake as the acceptor's, with the same guarantees: one
/// deadline from the first byte read to the finished handshake,
/// TLS-ALPN-01 validations answered and shut down, never handed on. The
/// difference is where connections wait past the bound: here they are
/// already accepted, and wait (holding their socket, not yet read) for a
/// slot in [`handshake`](Self::handshake); bound the connections the server
/// accepts (actix-server: `max_concurrent_connections`) to bound them too.
///
/// ```no_run
/// # async fn demo(config: certauto_core::Config, stream: tokio::net::TcpStream) {
/// use std::sync::Arc;
/// use certauto_core::AcmeAcceptor;
///
/// let handshaker = AcmeAcceptor::builder(Arc::new(config.server_config())).handshaker();
/// // For each accepted connection:
/// let peer = stream.peer_addr().expect("a connected socket");
/// if let Some(tls) = handshaker.handshake(stream, peer).await {
///     // serve HTTP over `tls`...
///     # let _ = tls;
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AcmeHandshaker {
    configs: ConfigSource,
    timeout: Duration,
    /// Handshakes in progress: one permit each, held for the handshake.
    slots: Arc<Semaphore>,
}

impl AcmeHandshaker {
    /// Runs the TLS handshake of `stream` from `peer` once a slot is free:
    /// the finished stream, or `None` when the handshake failed, timed out or
    /// was a TLS-ALPN-01 validation (answered, and the connection shut down).
    /// The deadline starts when the slot is taken. Dropping the future drops
    /// the connection and frees its slot.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        // Never closed (this type holds a handle and closes nothing), so this
        // returns a permit; the `else` only guards the contract.
        let Ok(_slot) = self.slots.acquire().await else {
            return None;
        };
        finish(stream, peer, &self.configs, self.timeout).await
    }
}

/// What the acceptor knows of a handshake when it chooses its config: the
/// ClientHello's SNI and ALPN protocols, and the client's address. Owned, so
/// choosing may await (a certificate obtained on demand, a challenge
/// certificate loaded from shared storage) under the handshake deadline.
#[derive(Debug, Clone)]
pub(crate) struct Hello {
    /// The SNI, as rustls validated it (a DNS name, lower case not assured).
    pub(crate) server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub(crate) alpn: Vec<Vec<u8>>,
    /// The client.
    pub(crate) peer: SocketAddr,
}

impl Hello {
    fn new(hello: &ClientHello<'_>, peer: SocketAddr) -> Self {
        Self {
            server_name: hello.server_name().map(str::to_owned),
            alpn: hello
                .alpn()
                .into_iter()
                .flatten()
                .map(<[u8]>::to_vec)
                .collect(),
            peer,
        }
    }

    /// Whether this is a TLS-ALPN-01 validation (ALPN `acme-tls/1`).
    pub(crate) fn is_tls_alpn_validation(&self) -> bool {
        self.alpn.iter().any(|p| p == ACME_TLS_ALPN)
    }
}

/// Where the `ServerConfig` of a handshake comes from.
#[derive(Debug, Clone)]
enum ConfigSource {
    /// Every handshake uses this config (its resolver reads the cache).
    Fixed(Arc<ServerConfig>),
    /// The config of a [`Config`](crate::Config): its server config, chosen
    /// after whatever the ClientHello needs first (on-demand issuance,
    /// challenge state kept in shared storage) was awaited.
    Managed {
        config: crate::Config,
        tls: Arc<ServerConfig>,
    },
}

impl ConfigSource {
    /// The config to finish the handshake of `hello` from `peer` with;
    /// `None` refuses it. Only a handshake that needs something awaited (a
    /// TLS-ALPN-01 validation, an unknown name with on-demand TLS on) copies
    /// the ClientHello's data and awaits; every other one costs nothing more
    /// than with a fixed config.
    async fn for_hello(
        &self,
        hello: &ClientHello<'_>,
        peer: SocketAddr,
    ) -> Option<Arc<ServerConfig>> {
        match self {
            Self::Fixed(tls) => Some(tls.clone()),
            Self::Managed { config, tls } => {
                if config.needs_preparation(hello) {
                    let hello = Hello::new(hello, peer);
                    config.prepare_handshake(&hello).await;
                }
                Some(tls.clone())
            }
        }
    }
}

impl AcmeAcceptorBuilder {
    /// How long a TLS handshake may take (default 10 s), ClientHello and
    /// config selection included. Zero is raised to 1 ms.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many handshakes may be in progress, or finished and not yet taken
    /// by [`AcmeAcceptor::accept`], at once (default 4096; at least 1);
    /// further connections wait in the kernel's accept queue.
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Applies the TLS settings of `limits` (handshake timeout and bound).
    pub fn limits(self, limits: &super::ServerLimits) -> Self {
        self.handshake_timeout(limits.handshake_timeout_value())
            .max_pending_handshakes(limits.max_pending_handshakes_value())
    }

    /// The handshake step alone, for a server that accepts TCP connections
    /// itself: see [`AcmeHandshaker`].
    pub fn handshaker(self) -> AcmeHandshaker {
        AcmeHandshaker {
            slots: Arc::new(Semaphore::new(self.max_pending)),
            configs: self.configs,
            timeout: self.handshake_timeout,
        }
    }

    /// Starts accepting on `tcp` (in a task on the current tokio runtime).
    pub fn listen(self, tcp: TcpListener) -> io::Result<AcmeAcceptor> {
        let local_addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(self.max_pending);
        let slots = Arc::new(Semaphore::new(self.max_pending));
        let task = tokio::spawn(accept_loop(
            tcp,
            self.configs,
            self.handshake_timeout,
            slots,
            tx,
        ));
        Ok(AcmeAcceptor {
            rx,
            local_addr,
            task,
        })
    }
}

/// The next TCP connection on `tcp`. A failed `accept` (out of file
/// descriptors and the like) is logged and retried after a short pause: the
/// loop never stops. Cancel safe. Plain-HTTP servers (certauto-axum's port-80
/// server) accept with this too.
pub async fn accept_tcp(tcp: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match tcp.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Accepts until the receiving [`AcmeAcceptor`] is gone.
async fn accept_loop(
    tcp: TcpListener,
    configs: ConfigSource,
    timeout: Duration,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Accepted>,
) {
    loop {
        // Never closed (this task holds the only handle but one), so this
        // returns a permit; the `else` only guards the contract.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = accept_tcp(&tcp).await;
        if tx.is_closed() {
            return;
        }
        let configs = configs.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(tls) = finish(stream, peer, &configs, timeout).await {
                let _ = tx.send((tls, peer, slot)).await;
            }
        });
    }
}

/// Runs the handshake of `stream` under `timeout`: the finished stream, or
/// `None` when it failed, timed out, or was a TLS-ALPN-01 validation (whose
/// connection has been shut down: the handshake was the answer).
async fn finish(
    stream: TcpStream,
    peer: SocketAddr,
    configs: &ConfigSource,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let mut tls = match tokio::time::timeout(timeout, handshake(stream, peer, configs)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
            return None;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
        let _ = tokio::time::timeout(timeout, tls.shutdown()).await;
        tracing::debug!(%peer, "answered a TLS-ALPN-01 validation");
        return None;
    }
    Some(tls)
}

/// Reads the ClientHello, picks its config, and finishes the handshake.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    configs: &ConfigSource,
) -> io::Result<TlsStream<TcpStream>> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
    let config = configs
        .for_hello(&start.client_hello(), peer)
        .await
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "no certificate for this ClientHello",
            )
        })?;
    start.into_stream(config).await
}

impl AcmeAcceptor {
    /// Starts accepting TLS on `tcp` with `tls` and default settings.
    pub fn new(tcp: TcpListener, tls: Arc<ServerConfig>) -> io::Result<Self> {
        Self::builder(tls).listen(tcp)
    }

    /// Starts building an acceptor whose handshakes use `tls` (which should
    /// resolve through a [`CertResolver`](super::CertResolver) and list
    /// `acme-tls/1` in ALPN to answer TLS-ALPN-01, as
    /// [`Config::server_config`](crate::Config::server_config) does).
    pub fn builder(tls: Arc<ServerConfig>) -> AcmeAcceptorBuilder {
        AcmeAcceptorBuilder {
            configs: ConfigSource::Fixed(tls),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }

    /// Starts building an acceptor serving the certificates of `config`
    /// ([`Config::server_config`](crate::Config::server_config)) that, before
    /// it finishes a handshake, awaits what the ClientHello needs from
    /// `config`: a certificate obtained on demand, a challenge certificate
    /// another instance presented into shared storage. What the server
    /// adapters' `serve(.., &config)` use.
    pub fn for_config(config: &crate::Config) -> AcmeAcceptorBuilder {
        AcmeAcceptorBuilder {
            configs: ConfigSource::Managed {
                config: config.clone(),
                tls: Arc::new(super::on_demand::awaited_server_config(config)),
            },
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }

    /// The next finished TLS connection and its peer address. Cancel safe.
    ///
    /// Never returns if the accept task is gone (it only ends when this
    /// acceptor is dropped or its runtime shuts down).
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        match self.rx.recv().await {
            // The slot is freed here: the stream is the caller's now.
            Some((tls, peer, _slot)) => (tls, peer),
            None => std::future::pending().await,
        }
    }

    /// The address this acceptor listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AcmeAcceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use rcgen::{CertifiedKey, generate_simple_self_signed};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::AsyncReadExt as _;

    /// A server config with a self-signed `localhost` certificate.
    fn server_config(alpn: &[&[u8]]) -> (Arc<ServerConfig>, CertificateDer<'static>) {
        let CertifiedKey { cert, signing_key } =
            generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(config), cert.der().clone())
    }

    fn client_config(root: CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    async fn connect(
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    const BOUND: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn hands_on_finished_handshakes_and_closes_acme_tls_1() {
        let (server, root) = server_config(&[b"http/1.1", ACME_TLS_ALPN]);
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut acceptor = AcmeAcceptor::new(tcp, server).unwrap();
        let addr = acceptor.local_addr();

        // acme-tls/1: the handshake succeeds, then the server closes.
        let mut validation = connect(addr, client_config(root.clone(), &[ACME_TLS_ALPN]))
            .await
            .unwrap();
        let mut buf = [0; 1];
        let read = tokio::time::timeout(BOUND, validation.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // An ordinary client is handed on (and the validation never was).
        let mut client = connect(addr, client_config(root, &[b"http/1.1"]))
            .await
            .unwrap();
        let (mut tls, peer) = tokio::time::timeout(BOUND, acceptor.accept())
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(peer, client.get_ref().0.local_addr().unwrap());
        tls.write_all(b"x").await.unwrap();
        tls.flush().await.unwrap();
        let mut got = [0; 1];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
    }

    #[tokio::test]
    async fn the_handshaker_closes_acme_tls_1_and_hands_on_the_rest() {
        let (server, root) = server_config(&[b"http/1.1", ACME_TLS_ALPN]);
        let handshaker = AcmeAcceptor::builder(server).handshaker();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();

        let validation = tokio::spawn(connect(addr, client_config(root.clone(), &[ACME_TLS_ALPN])));
        let (stream, peer) = tcp.accept().await.unwrap();
        let closed = tokio::time::timeout(BOUND, handshaker.handshake(stream, peer))
            .await
            .unwrap();
        assert!(
            closed.is_none(),
            "an acme-tls/1 connection is not handed on"
        );
        let mut validation = validation.await.unwrap().unwrap();
        let mut buf = [0; 1];
        let read = tokio::time::timeout(BOUND, validation.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0)), "{read:?}");

        let client = tokio::spawn(connect(addr, client_config(root, &[b"http/1.1"])));
        let (stream, peer) = tcp.accept().await.unwrap();
        let tls = tokio::time::timeout(BOUND, handshaker.handshake(stream, peer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        client.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_silent_client_times_out_and_others_still_get_through() {
        let (server, root) = server_config(&[b"http/1.1"]);
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut acceptor = AcmeAcceptor::builder(server)
            .handshake_timeout(Duration::from_millis(200))
            .max_pending_handshakes(2)
            .listen(tcp)
            .unwrap();
        let addr = acceptor.local_addr();

        // Two silent clients hold both slots until their deadline.
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // The server closes them when the handshake deadline passes.
        for stream in &mut silent {
            let mut buf = [0; 1];
            let read = tokio::time::timeout(BOUND, stream.read(&mut buf))
                .await
                .unwrap();
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        // Their slots are free again: a real client gets through.
        let _client = connect(addr, client_config(root, &[b"http/1.1"]))
            .await
            .unwrap();
        tokio::time::timeout(BOUND, acceptor.accept())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_refused_handshake_is_not_handed_on() {
        let (server, root) = server_config(&[b"http/1.1"]);
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut acceptor = AcmeAcceptor::new(tcp, server).unwrap();
        let addr = acceptor.local_addr();
        // Garbage instead of a ClientHello.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(BOUND, garbage.read_to_end(&mut buf))
            .await
            .unwrap();
        // The next real client is the first one handed on.
        let client = connect(addr, client_config(root, &[b"http/1.1"]))
            .await
            .unwrap();
        let (_, peer) = tokio::time::timeout(BOUND, acceptor.accept())
            .await
            .unwrap();
        assert_eq!(peer, client.get_ref().0.local_addr().unwrap());
    }
}
