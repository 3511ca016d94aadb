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
