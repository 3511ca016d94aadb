//! actix-web integration for CertAuto: HTTPS with certificates CertAuto
//! obtains and swaps live.
//!
//! - [`HttpServerAcmeExt::bind_acme`] binds an `HttpServer` with the config's
//!   rustls setup: every worker shares the [`CertResolver`](certauto_core::CertResolver),
//!   so a renewed certificate is served to the next handshake with no restart.
//!   TLS-ALPN-01 validations are answered by the handshake itself.
//! - [`acme_http01`] answers ACME HTTP-01 challenges in an `App`, and
//!   [`https_redirect`] redirects everything else to HTTPS: together they make
//!   the port-80 app.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use certauto_actix::{HttpServerAcmeExt, acme_http01, https_redirect};
//! use certauto_core::{ChallengeTokens, Config};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let config = Config::builder().build(); // the local CA: works offline
//! config.manage(["localhost"]).await.expect("certificate");
//! let tokens = ChallengeTokens::new();
//!
//! let https = HttpServer::new(|| App::new().route("/", web::get().to(|| async { "hello" })))
//!     .bind_acme(("0.0.0.0", 443), &config)?
//!     .run();
//! let http = HttpServer::new(move || {
//!     App::new()
//!         .configure(acme_http01(tokens.clone()))
//!         .default_service(https_redirect(443))
//! })
//! .bind(("0.0.0.0", 80))?
//! .run();
//! futures_join(https, http).await
//! # }
//! # async fn futures_join(a: actix_web::dev::Server, b: actix_web::dev::Server) -> std::io::Result<()> {
//! #     let (a, b) = tokio::join!(a, b); a?; b
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::ToSocketAddrs;

use actix_http::{Request, Response};
use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Service, ServiceFactory};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpServer, Route, web};
use certauto_core::{ChallengeTokens, Config};

/// `bind_acme` and `listen_acme` for actix-web's `HttpServer`.
pub trait HttpServerAcmeExt: Sized {
    /// Binds `addrs` with TLS from `config` (certificates swapped live).
    fn bind_acme<A: ToSocketAddrs>(self, addrs: A, config: &Config) -> io::Result<Self>;

    /// Listens on an already bound `listener` with TLS from `config`.
    fn listen_acme(self, listener: std::net::TcpListener, config: &Config) -> io::Result<Self>;
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
        self.bind_rustls_0_23(addrs, config.server_config_without_alpn())
    }

    fn listen_acme(self, listener: std::net::TcpListener, config: &Config) -> io::Result<Self> {
        self.listen_rustls_0_23(listener, config.server_config_without_alpn())
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
    let Some(token) = ChallengeTokens::token_from_path(req.path()) else {
        return HttpResponse::NotFound().finish();
    };
    match tokens.get(token).await {
        Some(key_authorization) => {
            tracing::debug!(path = req.path(), "answered HTTP-01 challenge");
            HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(key_authorization)
        }
        None => HttpResponse::NotFound().finish(),
    }
}

/// A `default_service` that redirects to `https://` on `https_port` (308),
/// keeping host (without its port), path and query. Requests without a valid
/// host get 400. Register [`acme_http01`] in the same app so challenges are
/// answered, not redirected.
pub fn https_redirect(https_port: u16) -> Route {
    web::to(move |req: HttpRequest| async move {
        if certauto_tower::redirect::is_challenge(req.method().as_str(), req.path()) {
            // A challenge for a token nobody presented.
            return HttpResponse::NotFound().finish();
        }
        let authority = certauto_tower::redirect::request_target_authority(
            req.uri().authority().map(|a| a.as_str()),
            req.headers().get_all(header::HOST).map(|h| h.as_bytes()),
        );
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = authority
            .and_then(|a| certauto_tower::redirect::https_location(a, path_and_query, https_port));
        match location.and_then(|l| HeaderValue::try_from(l).ok()) {
            Some(location) => HttpResponse::build(StatusCode::PERMANENT_REDIRECT)
                .insert_header((header::LOCATION, location))
                .finish(),
            None => HttpResponse::BadRequest().finish(),
        }
    })
}
