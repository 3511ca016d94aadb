//! actix-web integration for CertAuto: HTTPS with certificates CertAuto
//! obtains and swaps live, with bounded clients.
//!
//! - [`serve`] (or [`serve_with`], for a rustls config of your own) runs an
//!   actix-web app over HTTPS with its handshakes in certauto-core's
//!   acceptor, as certauto-axum does: each handshake under a 10 s deadline,
//!   at most 4096 in progress, TLS-ALPN-01 validations answered and closed
//!   right after their handshake. Certificates come from the config's
//!   [`CertResolver`](certauto_core::CertResolver), so a renewed certificate
//!   is served to the next handshake with no restart. It returns an
//!   [`AcmeServer`]; its [`run`](AcmeServer::run) gives actix's own
//!   [`Server`](actix_web::dev::Server) (await it, stop it through its
//!   handle), as `HttpServer::run` does.
//! - [`HttpServerAcmeExt::bind_acme`] binds an `HttpServer` instead, with
//!   actix-tls running the handshakes (see
//!   [below](#two-tls-accept-paths)).
//! - Both bound their clients with CertAuto's [`ServerLimits`] (10 s to send
//!   the request head, 60 s idle keep-alive, 10,000 connections per worker,
//!   a 10 s TLS handshake): [`AcmeServer::limits`] and
//!   [`HttpServerAcmeExt::server_limits`] change them.
//! - [`acme_http01`] answers ACME HTTP-01 challenges in an `App`, and
//!   [`https_redirect`] (or [`https_redirect_only_managed`], which refuses
//!   hosts that are not managed names) redirects everything else to HTTPS:
//!   together they make the port-80 app, bound with
//!   [`HttpServerAcmeExt::bind_http`].
//!
//! ```no_run
//! use std::time::Duration;
//! use actix_web::{App, HttpServer, web};
//! use certauto_actix::{HttpServerAcmeExt, acme_http01, https_redirect_only_managed};
//! use certauto_core::{Config, ServerLimits};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let config = Config::builder().build(); // the local CA: works offline
//! config.manage(["localhost"]).await.expect("certificate");
//! let tokens = config.challenge_tokens().clone();
//!
//! let listener = std::net::TcpListener::bind(("0.0.0.0", 443))?;
//! let https = certauto_actix::serve(listener, &config, || {
//!     App::new().route("/", web::get().to(|| async { "hello" }))
//! })?
//! // Tighter than the defaults.
//! .limits(ServerLimits::default().header_read_timeout(Duration::from_secs(5)))
//! .run();
//! let port80 = config.clone();
//! let http = HttpServer::new(move || {
//!     App::new()
//!         .configure(acme_http01(tokens.clone()))
//!         .default_service(https_redirect_only_managed(443, &port80))
//! })
//! .bind_http(("0.0.0.0", 80))?
//! .run();
//! futures_join(https, http).await
//! # }
//! # async fn futures_join(a: actix_web::dev::Server, b: actix_web::dev::Server) -> std::io::Result<()> {
//! #     let (a, b) = tokio::join!(a, b); a?; b
//! # }
//! ```
//!
//! # Two TLS accept paths
//!
//! actix-web's `HttpServer` accepts TCP in actix-server and runs the TLS
//! handshake in actix-tls itself; it takes no connection whose handshake ran
//! elsewhere. So [`serve`] does not extend `HttpServer`: it builds the
//! actix-server `Server` as `HttpServer` does, with certauto-core's
//! [`AcmeHandshaker`](certauto_core::AcmeHandshaker) (the handshake step of
//! [`AcmeAcceptor`]) in place of actix-tls and
//! actix-http's `HttpService` serving the TLS stream. What it does not have
//! of `HttpServer`: several listeners on one server (run one `Server` per
//! listener), `on_connect`, and the HTTP/2 window and HTTP/1 buffer settings
//! (actix's defaults apply). actix-server has accepted a connection before
//! its handshake waits for a slot, so past the bound on handshakes in
//! progress connections wait open (counted in the per-worker connection cap)
//! rather than in the kernel's accept queue.
//!
//! [`bind_acme`](HttpServerAcmeExt::bind_acme) keeps `HttpServer` and
//! configures actix's own equivalents from the same [`ServerLimits`], with
//! the certificates from the same resolver:
//!
//! - handshake timeout: `HttpServer::tls_handshake_timeout`;
//! - header-read timeout: `client_request_timeout` (a client that sends no
//!   complete request head in time gets `408` and the connection closes);
//! - idle timeout: `keep_alive`;
//! - connection cap: `max_connections` (per worker, as actix counts it);
//! - handshakes in progress: actix's own bound, `max_connection_rate`
//!   (256 per worker by default). It is process-wide state in actix-tls, so
//!   this crate leaves it to the application.
//! - `acme-tls/1`: the validation is answered in the handshake, as with
//!   [`serve`]. actix then hands the connection to its HTTP/1 dispatcher
//!   instead of closing it at once; validators close it themselves (RFC 8737
//!   §3), and one that does not is closed by the header-read timeout like
//!   any silent client.

#[cfg(test)]
mod defaults_table;
mod serve;

use std::fmt;
use std::io;
use std::net::ToSocketAddrs;
use std::sync::Arc;

use actix_http::{Request, Response};
use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Service, ServiceFactory};
use actix_web::http::KeepAlive;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpServer, Route, web};
use certauto_core::{AcmeAcceptor, ChallengeTokens, Config};
use certauto_core::{HTTP01_CONTENT_TYPE, Http01Answer};

pub use certauto_core::ServerLimits;
pub use serve::AcmeServer;

/// Serves the app `factory` builds (once per worker, as with `HttpServer::new`)
/// over HTTPS on `listener` with the certificates of `config`: handshakes in
/// certauto-core's acceptor, bounded clients ([`ServerLimits::default`];
/// change them with [`AcmeServer::limits`]). Call [`AcmeServer::run`] to
/// start it.
pub fn serve<F, I, S, B>(
    listener: std::net::TcpListener,
    config: &Config,
    factory: F,
) -> io::Result<AcmeServer>
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
    AcmeServer::new(listener, AcmeAcceptor::for_config(config), factory)
}

/// Like [`serve`] with a rustls config of your own, which should resolve
/// through a [`CertResolver`](certauto_core::CertResolver) and list
/// `acme-tls/1` in ALPN to answer TLS-ALPN-01, and `h2` to offer HTTP/2 (as
/// [`Config::server_config`] does).
pub fn serve_with<F, I, S, B>(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    factory: F,
) -> io::Result<AcmeServer>
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
    AcmeServer::new(listener, AcmeAcceptor::builder(tls), factory)
}

/// `bind_acme`, `listen_acme` and `bind_http` for actix-web's `HttpServer`,
/// each bounding clients with CertAuto's [`ServerLimits`].
///
/// The limits are server-wide settings of the `HttpServer` (actix reads them
/// when the server starts): the last [`server_limits`](Self::server_limits)
/// call, or actix setter such as `keep_alive`, made before `run()` wins. The
/// `bind_*`/`listen_*` methods here apply [`ServerLimits::default`], so call
/// `server_limits` (or actix's setters) after them to change it.
pub trait HttpServerAcmeExt: Sized {
    /// Binds `addrs` with TLS from `config` (certificates swapped live) and
    /// the default [`ServerLimits`].
    ///
    /// On-demand TLS ([`Config`]'s `on_demand`) runs in the background here:
    /// actix-tls cannot await inside its handshake, so the first handshake
    /// for an allowed new name fails and a later one succeeds. [`serve`]
    /// holds the first handshake until the certificate is there.
    fn bind_acme<A: ToSocketAddrs>(self, addrs: A, config: &Config) -> io::Result<Self>;

    /// Listens on an already bound `listener` with TLS from `config` and the
    /// default [`ServerLimits`].
    fn listen_acme(self, listener: std::net::TcpListener, config: &Config) -> io::Result<Self>;

    /// Binds `addrs` for plain HTTP (the port-80 app of [`acme_http01`] and
    /// [`https_redirect`]) with the default [`ServerLimits`].
    fn bind_http<A: ToSocketAddrs>(self, addrs: A) -> io::Result<Self>;

    /// Listens on an already bound `listener` for plain HTTP with the
    /// default [`ServerLimits`].
    fn listen_http(self, listener: std::net::TcpListener) -> io::Result<Self>;

    /// Bounds clients with `limits`: `client_request_timeout` (header read),
    /// `keep_alive` (idle), `max_connections` (per worker) and
    /// `tls_handshake_timeout`. `max_pending_handshakes` does not apply:
    /// see the [crate docs](crate#two-tls-accept-paths).
    fn server_limits(self, limits: &ServerLimits) -> Self;
}

impl<F, I, S, B> HttpServerAcmeExt for HttpServer<F, I, S, B>
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
    fn bind_acme<A: ToSocketAddrs>(self, addrs: A, config: &Config) -> io::Result<Self> {
        // actix prepends h2 and http/1.1 itself: give it only acme-tls/1.
        self.server_limits(&ServerLimits::default())
            .bind_rustls_0_23(addrs, config.server_config_without_alpn())
    }

    fn listen_acme(self, listener: std::net::TcpListener, config: &Config) -> io::Result<Self> {
        self.server_limits(&ServerLimits::default())
            .listen_rustls_0_23(listener, config.server_config_without_alpn())
    }

    fn bind_http<A: ToSocketAddrs>(self, addrs: A) -> io::Result<Self> {
        self.server_limits(&ServerLimits::default()).bind(addrs)
    }

    fn listen_http(self, listener: std::net::TcpListener) -> io::Result<Self> {
        self.server_limits(&ServerLimits::default())
            .listen(listener)
    }

    fn server_limits(self, limits: &ServerLimits) -> Self {
        self.client_request_timeout(limits.header_read_timeout_value())
            .keep_alive(KeepAlive::Timeout(limits.idle_timeout_value()))
            .max_connections(limits.max_connections_value())
            .tls_handshake_timeout(limits.handshake_timeout_value())
    }
}

/// Routes `GET`/`HEAD /.well-known/acme-challenge/{token}` to the key
/// authorizations presented in `tokens` (this process's, or through shared
/// storage any instance's). Use with `App::configure`.
pub fn acme_http01(tokens: ChallengeTokens) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(tokens))
            .route("/.well-known/acme-challenge/{token}", challenge_route());
    }
}

fn challenge_route() -> Route {
    web::route()
        .guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
        .to(answer_challenge)
}

async fn answer_challenge(req: HttpRequest, tokens: web::Data<ChallengeTokens>) -> HttpResponse {
    // actix-web 4 uses http 0.2: the method is matched by the route guard.
    let method = if req.method() == actix_web::http::Method::HEAD {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    match tokens.answer(&method, req.path()).await {
        Http01Answer::KeyAuthorization(key_authorization) => HttpResponse::Ok()
            .content_type(HTTP01_CONTENT_TYPE)
            .body(key_authorization),
        Http01Answer::NotChallenge | Http01Answer::NotFound => HttpResponse::NotFound().finish(),
    }
}

/// A `default_service` that redirects to `https://` on `https_port` (308),
/// keeping host (without its port), path and query. Requests without a valid
/// host get 400. Register [`acme_http01`] in the same app so challenges are
/// answered, not redirected.
pub fn https_redirect(https_port: u16) -> Route {
    redirect(https_port, None)
}

/// Like [`https_redirect`], but only for names `config` manages (exact, or
/// covered by a managed wildcard; see [`Config::is_managed`]): a request for
/// any other valid host gets `421 Misdirected Request` and no `Location`, so
/// the redirect is not an open redirect. The same rule as certauto-tower's
/// `HttpsRedirectLayer::only_managed`, through its exported helpers.
pub fn https_redirect_only_managed(https_port: u16, config: &Config) -> Route {
    redirect(https_port, Some(config.clone()))
}

fn redirect(https_port: u16, managed: Option<Config>) -> Route {
    web::to(move |req: HttpRequest| {
        let managed = managed.clone();
        async move {
            if certauto_tower::redirect::is_challenge(req.method().as_str(), req.path()) {
                // A challenge for a token nobody presented.
                return HttpResponse::NotFound().finish();
            }
            let authority = certauto_tower::redirect::request_target_authority(
                req.uri().authority().map(|a| a.as_str()),
                req.headers().get_all(header::HOST).map(|h| h.as_bytes()),
            );
            let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let location = authority.and_then(|a| {
                certauto_tower::redirect::https_location(a, path_and_query, https_port)
            });
            let Some(location) = location.and_then(|l| HeaderValue::try_from(l).ok()) else {
                return HttpResponse::BadRequest().finish();
            };
            if let (Some(config), Some(authority)) = (&managed, authority)
                && !certauto_tower::redirect::is_managed_authority(config, authority)
            {
                tracing::debug!(authority, "not a managed name: refusing to redirect");
                return HttpResponse::build(StatusCode::MISDIRECTED_REQUEST).finish();
            }
            HttpResponse::build(StatusCode::PERMANENT_REDIRECT)
                .insert_header((header::LOCATION, location))
                .finish()
        }
    })
}
