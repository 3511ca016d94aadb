//! Everything between an accepted TCP connection and a TLS stream ready for
//! HTTP: the [`CertResolver`] that picks certificates from the cache, the
//! [`AcmeAcceptor`] that runs the handshakes (timeout, bound on handshakes in
//! progress, `acme-tls/1` validations closed), and the [`ServerLimits`] both
//! server adapters (certauto-axum, certauto-actix) apply to their clients.
//!
//! Data flows one way: the acceptor reads the ClientHello, picks the
//! `ServerConfig` for it, finishes the handshake with that config (whose
//! resolver reads the cache), and hands the stream on.

mod acceptor;
mod limits;
mod resolver;

pub use acceptor::{
    AcmeAcceptor, AcmeAcceptorBuilder, AcmeHandshaker, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PENDING_HANDSHAKES, accept_tcp,
};
pub use limits::ServerLimits;
pub use resolver::{CertResolver, UnknownNameHook};

pub(crate) use acceptor::Hello;

impl crate::Config {
    /// What a handshake for `hello` needs from this config before its
    /// `ServerConfig` can answer it, awaited by an acceptor built with
    /// [`AcmeAcceptor::for_config`], under the handshake deadline.
    ///
    /// Today nothing: the cache and the TLS-ALPN-01 challenge set answer
    /// from memory. This is where a TLS-ALPN-01 challenge certificate
    /// another instance presented into shared storage is loaded, and where a
    /// certificate is obtained on demand for an allowed unknown name.
    pub(crate) async fn prepare_handshake(&self, hello: &Hello) {
        tracing::trace!(
            sni = ?hello.server_name,
            peer = %hello.peer,
            alpn = hello.alpn.len(),
            validation = hello.is_tls_alpn_validation(),
            "ClientHello"
        );
        self.prepare_shared_challenge(hello).await;
    }
}
