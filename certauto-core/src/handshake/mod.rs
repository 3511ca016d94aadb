//! Everything between an accepted TCP connection and a TLS stream ready for
//! HTTP: the [`CertResolver`] that picks certificates from the cache, the
//! [`AcmeAcceptor`] that runs the handshakes (timeout, bound on handshakes in
//! progress, `acme-tls/1` validations closed), and the [`ServerLimits`] both
//! server adapters (certauto-axum, certauto-actix) apply to their clients.
//!
//! Data flows one way: the acceptor reads the ClientHello, picks the
//! `ServerConfig` for it, finishes the handshake with that config (whose
//! resolver reads the cache), and hands the stream on.

pub(crate) mod acceptor;
pub(crate) mod limits;
pub(crate) mod on_demand;
mod resolver;

pub use acceptor::{
    AcmeAcceptor, AcmeAcceptorBuilder, AcmeHandshaker, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PENDING_HANDSHAKES, accept_tcp,
};
pub use limits::ServerLimits;
pub use on_demand::{
    DECISION_TIMEOUT, DEFAULT_ON_DEMAND_MAX_IN_FLIGHT, DEFAULT_REFUSAL_CAPACITY,
    DEFAULT_REFUSAL_TTL, OnDemandConfig, OnDemandRefusal, OnDemandRequest,
};
pub use resolver::{CertResolver, UnknownNameHook};

pub(crate) use acceptor::Hello;

impl crate::Config {
    /// Whether a handshake for `hello` needs [`prepare_handshake`](Self::prepare_handshake):
    /// a TLS-ALPN-01 validation (its challenge certificate may be in shared
    /// storage), or, with on-demand TLS on, a name the cache does not serve.
    /// Synchronous and allocation-free: the hot path of every handshake.
    pub(crate) fn needs_preparation(&self, hello: &rustls::server::ClientHello<'_>) -> bool {
        let validation = hello
            .alpn()
            .into_iter()
            .flatten()
            .any(|p| p == crate::challenge::tls_alpn01::ACME_TLS_ALPN);
        validation
            || (self.on_demand().is_some()
                && hello
                    .server_name()
                    .is_some_and(|sni| self.cache().certified_key(sni).is_none()))
    }

    /// What a handshake for `hello` needs from this config before its
    /// `ServerConfig` can answer it, awaited by an acceptor built with
    /// [`AcmeAcceptor::for_config`], under the handshake deadline.
    ///
    /// Two steps, each a no-op unless it applies: for a TLS-ALPN-01
    /// validation, the challenge certificate another instance presented into
    /// shared storage is loaded ([`DistributedSolver`](crate::DistributedSolver));
    /// for an unknown name, a certificate is obtained on demand if the gate
    /// allows it ([`OnDemandConfig`]; validations never reach it).
    pub(crate) async fn prepare_handshake(&self, hello: &Hello) {
        tracing::trace!(
            sni = ?hello.server_name,
            peer = %hello.peer,
            alpn = hello.alpn.len(),
            validation = hello.is_tls_alpn_validation(),
            "ClientHello"
        );
        self.prepare_shared_challenge(hello).await;
        crate::handshake::on_demand::prepare(self, hello).await;
    }
}
