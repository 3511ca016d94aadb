//! Serve an axum [`Router`] over TLS with certificates CertAuto obtains and
//! swaps live, with bounded clients.
//!
//! - [`serve`] runs the router over TLS: handshakes run in certauto-core's
//!   [`AcmeAcceptor`] (concurrently, each under
//!   a 10 s deadline, at most 4096 in progress; TLS-ALPN-01 validations are
//!   answered and closed), and every connection is served by hyper with a
//!   header-read timeout, an idle timeout and a cap on connections
//!   ([`ServerLimits`], set with [`Serve::limits`]). Certificates come from
//!   the config's [`CertResolver`](certauto_core::CertResolver), so a renewal
//!   is served to the next handshake with no restart; open connections keep
//!   their session.
//! - [`serve_http`] runs the port-80 side ([`http_router`]: ACME HTTP-01
//!   challenges, everything else redirected to HTTPS) with the same bounds;
//!   [`serve_plain`] runs any router on plain HTTP that way.
//! - [`AcmeTlsListener`] is the TLS side alone, as an `axum::serve`
//!   [`Listener`](axum::serve::Listener), for code that wants `axum::serve`
//!   itself (which bounds no client).
//!
//! ```no_run
//! use std::future::IntoFuture as _;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use certauto_core::{Config, ServerLimits};
//! use certauto_tower::{AcmeLayer, HttpsRedirectLayer};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let config = Config::builder().build(); // localhost: the local CA, works offline
//! config.manage(["localhost"]).await.expect("certificate");
//! // The tokens the config's HTTP-01 solvers present into.
//! let tokens = config.challenge_tokens().clone();
//! let app = Router::new().route("/", get(|| async { "hello over TLS" }));
//!
//! // Port 80: ACME HTTP-01 challenges; other requests for managed names are
//! // redirected to HTTPS, and any other host gets 421 (no open redirect).
//! let port80 = Router::new()
//!     .layer(HttpsRedirectLayer::only_managed(&config))
//!     .layer(AcmeLayer::new(tokens));
//! let http = tokio::net::TcpListener::bind("0.0.0.0:80").await?;
//! tokio::spawn(certauto_axum::serve_plain(http, port80)?.into_future());
//!
//! // Port 443, with bounds tighter than the defaults.
//! let limits = ServerLimits::default()
//!     .header_read_timeout(Duration::from_secs(5))
//!     .idle_timeout(Duration::from_secs(30))
//!     .max_connections(2_000);
//! let https = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! certauto_axum::serve(https, app, &config)?
//!     .limits(limits)
//!     .with_graceful_shutdown(std::future::pending::<()>())
//!     .await
//! # }
//! ```

mod idle;
mod listener;
mod serve;

use std::io;
use std::sync::Arc;

use axum::Router;
use certauto_core::{AcmeAcceptor, ChallengeTokens, Config};
use certauto_tower::{AcmeLayer, HttpsRedirectLayer};
use tokio::net::TcpListener;

pub use certauto_core::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_PENDING_HANDSHAKES, ServerLimits};
pub use listener::{AcmeTlsListener, AcmeTlsListenerBuilder, TlsConnectInfo};
pub use serve::{Serve, ServeFuture, WithGracefulShutdown};

/// Serves `router` over TLS on `tcp` with the certificates of `config`, with
/// bounded clients ([`ServerLimits::default`]; change them with
/// [`Serve::limits`]). Await it, or add `.with_graceful_shutdown(signal)`
/// first.
pub fn serve(tcp: TcpListener, router: Router, config: &Config) -> io::Result<Serve> {
    Serve::tls(tcp, router, AcmeAcceptor::for_config(config))
}

/// Serves `router` over TLS on `tcp` with a rustls config of your own (which
/// should resolve through a [`CertResolver`](certauto_core::CertResolver) and
/// list `acme-tls/1` in ALPN to answer TLS-ALPN-01, and `h2` to offer
/// HTTP/2), with bounded clients like [`serve`].
pub fn serve_with(
    tcp: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
) -> io::Result<Serve> {
    Serve::tls(tcp, router, AcmeAcceptor::builder(tls))
}

/// Serves `router` over plain HTTP/1.1 on `tcp` (the port-80 side), with
/// bounded clients like [`serve`] (the TLS settings do not apply).
pub fn serve_plain(tcp: TcpListener, router: Router) -> io::Result<Serve> {
    Serve::plain(tcp, router)
}

/// The port-80 side: answers ACME HTTP-01 challenges presented in `tokens`
/// and redirects everything else to `https://` on `https_port` (308).
/// For a redirect that refuses hosts that are not managed names, build the
/// router with [`HttpsRedirectLayer::only_managed`] instead.
pub fn http_router(tokens: ChallengeTokens, https_port: u16) -> Router {
    Router::new()
        .layer(HttpsRedirectLayer::permanent().https_port(https_port))
        .layer(AcmeLayer::new(tokens))
}

/// Runs [`http_router`] on `tcp` until the process ends, with bounded
/// clients ([`ServerLimits::default`]; for others, use [`serve_plain`] with
/// [`Serve::limits`]).
pub async fn serve_http(
    tcp: TcpListener,
    tokens: ChallengeTokens,
    https_port: u16,
) -> io::Result<()> {
    serve_plain(tcp, http_router(tokens, https_port))?.await
}
