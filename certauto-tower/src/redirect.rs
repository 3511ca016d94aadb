//! Redirects plain-HTTP requests to HTTPS, except ACME HTTP-01 challenges.
//!
//! [`HttpsRedirectLayer`] belongs on the port-80 service, together with
//! [`AcmeLayer`](crate::AcmeLayer): every request is redirected to
//! `https://{host}{:port}{path}{?query}`, with the host from the request (its
//! port removed), the HTTPS port configured with
//! [`https_port`](HttpsRedirectLayer::https_port) (left out when it is 443),
//! and the path and query exactly as received.
//!
//! - The host comes from the request target's authority when it has one
//!   (HTTP/2 `:authority`, or an absolute-form HTTP/1.1 request target, as
//!   [RFC 9112 §3.2.2] requires), and otherwise from the `Host` header.
//!   A request with no host, several `Host` headers, or a host that is not a
//!   valid `host[:port]` (a DNS name, an IPv4 address, or a bracketed IPv6
//!   address such as `[::1]:80`) gets `400 Bad Request`: nothing else is ever
//!   written into `Location`.
//! - Restricted with [`HttpsRedirectLayer::only_managed`] (or
//!   [`managed_hosts_only`](HttpsRedirectLayer::managed_hosts_only)), a
//!   request for a valid host that is not a name the [`Config`] manages gets
//!   `421 Misdirected Request` (RFC 9110 §15.5.20: this server does not
//!   answer for that host) and no `Location`, so the redirect is not an open
//!   redirect that sends clients to any name an attacker points at it.
//! - `GET` and `HEAD` requests under `/.well-known/acme-challenge/` are never
//!   redirected: they go to the inner service, so that an [`AcmeLayer`](crate::AcmeLayer)
//!   (or the inner service) answers them.
//!
//! ```
//! use certauto_tower::HttpsRedirectLayer;
//! use tower::{ServiceBuilder, service_fn};
//!
//! let service = ServiceBuilder::new()
//!     .layer(HttpsRedirectLayer::permanent().https_port(8443))
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     }));
//! # let _ = service;
//! ```
//!
//! [RFC 9112 §3.2.2]: https://www.rfc-editor.org/rfc/rfc9112#section-3.2.2

use std::fmt;
use std::future::Future;
use std::net::Ipv6Addr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use certauto_core::Config;
use certauto_core::HTTP01_PATH_PREFIX;
use http::header::{HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;

/// The default HTTPS port, left out of redirect URLs.
pub(crate) const DEFAULT_HTTPS_PORT: u16 = 443;

/// Applies [`HttpsRedirect`], which redirects requests to HTTPS, to a service.
///
/// See the [module docs](self) for what it redirects and how.
#[derive(Debug, Clone)]
pub struct HttpsRedirectLayer {
    status: StatusCode,
    https_port: u16,
    hosts: Hosts,
}

/// The hosts a redirect answers for.
#[derive(Debug, Clone)]
enum Hosts {
    /// Any valid host.
    Any,
    /// Only names this config manages; others get 421.
    Managed(Config),
}

impl Hosts {
    /// Whether a request for `authority` (a valid `host[:port]`) is refused.
    fn refuses(&self, authority: &str) -> bool {
        match self {
            Self::Any => false,
            Self::Managed(config) => !is_managed_authority(config, authority),
        }
    }
}

impl HttpsRedirectLayer {
    /// Redirects with `308 Permanent Redirect`, which keeps the method and
    /// body of the request.
    pub fn permanent() -> Self {
        Self {
            status: StatusCode::PERMANENT_REDIRECT,
            https_port: DEFAULT_HTTPS_PORT,
            hosts: Hosts::Any,
        }
    }

    /// Redirects with `308 Permanent Redirect`, but only requests for names
    /// `config` manages (exact, or covered by a managed wildcard; see
    /// [`Config::is_managed`]); any other valid host gets
    /// `421 Misdirected Request`. Names managed later are redirected from
    /// then on: the config is asked on every request.
    pub fn only_managed(config: &Config) -> Self {
        Self::permanent().managed_hosts_only(config)
    }

    /// Redirects with `301 Moved Permanently`, for old clients that do not
    /// know 308 (they may turn a `POST` into a `GET`).
    pub fn moved_permanently() -> Self {
        Self {
            status: StatusCode::MOVED_PERMANENTLY,
            https_port: DEFAULT_HTTPS_PORT,
            hosts: Hosts::Any,
        }
    }

    /// Redirects to HTTPS on `port` (default 443, which is left out of the URL).
    pub fn https_port(mut self, port: u16) -> Self {
        self.https_port = port;
        self
    }

    /// Redirects only requests for names `config` manages, as
    /// [`only_managed`](Self::only_managed) does (for use with
    /// [`moved_permanently`](Self::moved_permanently)).
    pub fn managed_hosts_only(mut self, config: &Config) -> Self {
        self.hosts = Hosts::Managed(config.clone());
        self
    }
}

impl<S> Layer<S> for HttpsRedirectLayer {
    type Service = HttpsRedirect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpsRedirect {
            inner,
            status: self.status,
            https_port: self.https_port,
            hosts: self.hosts.clone(),
        }
    }
}

/// Middleware that redirects requests to HTTPS, passing ACME HTTP-01
/// challenge requests to the inner service `S`.
///
/// Built by [`HttpsRedirectLayer`], or by the same named constructors here;
/// see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HttpsRedirect<S> {
    inner: S,
    status: StatusCode,
    https_port: u16,
    hosts: Hosts,
}

impl<S> HttpsRedirect<S> {
    /// Wraps `inner`, redirecting with `308 Permanent Redirect`.
    pub fn permanent(inner: S) -> Self {
        HttpsRedirectLayer::permanent().layer(inner)
    }

    /// Wraps `inner`, redirecting with `301 Moved Permanently`.
    pub fn moved_permanently(inner: S) -> Self {
        HttpsRedirectLayer::moved_permanently().layer(inner)
    }

    /// Wraps `inner`, redirecting with `308 Permanent Redirect` only the
    /// names `config` manages (others get 421); see
    /// [`HttpsRedirectLayer::only_managed`].
    pub fn only_managed(inner: S, config: &Config) -> Self {
        HttpsRedirectLayer::only_managed(config).layer(inner)
    }

    /// Redirects to HTTPS on `port` (default 443, which is left out of the URL).
    pub fn https_port(mut self, port: u16) -> Self {
        self.https_port = port;
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpsRedirect<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if is_challenge_request(&req) {
            return ResponseFuture::Inner {
                fut: self.inner.call(req),
            };
        }
        let response = match self.location(&req) {
            Some(Err(Refused)) => {
                tracing::debug!(
                    uri = %req.uri(),
                    host = ?req.headers().get(HOST),
                    "not a managed name: refusing to redirect"
                );
                let mut response = Response::new(Bytes::new());
                *response.status_mut() = StatusCode::MISDIRECTED_REQUEST;
                response
            }
            Some(Ok(location)) => {
                let mut response = Response::new(Bytes::new());
                *response.status_mut() = self.status;
                response.headers_mut().insert(LOCATION, location);
                response
            }
            None => {
                tracing::debug!(
                    uri = %req.uri(),
                    host = ?req.headers().get(HOST),
                    "no valid host to redirect to HTTPS"
                );
                let mut response = Response::new(Bytes::new());
                *response.status_mut() = StatusCode::BAD_REQUEST;
                response
            }
        };
        ResponseFuture::Ready {
            response: Some(response),
        }
    }
}

impl<S> HttpsRedirect<S> {
    /// The HTTPS URL of `req`; `None` without a valid host, `Some(Err)` for
    /// a valid host this redirect does not answer for.
    fn location<B>(&self, req: &Request<B>) -> Option<Result<HeaderValue, Refused>> {
        let authority = request_authority(req)?;
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location =
            HeaderValue::try_from(https_location(authority, path_and_query, self.https_port)?)
                .ok()?;
        Some(if self.hosts.refuses(authority) {
            Err(Refused)
        } else {
            Ok(location)
        })
    }
}

/// A valid host the redirect does not answer for.
struct Refused;

/// Whether `authority` (`host[:port]`, from the request target or the `Host`
/// header) is a valid authority whose host `config` manages
/// ([`Config::is_managed`]). A restricted redirect answers other valid hosts
/// with `421 Misdirected Request`; other servers (certauto-actix) use this to
/// decide the same way.
///
/// ```no_run
/// # fn demo(config: &certauto_core::Config) {
/// use certauto_tower::redirect::is_managed_authority;
/// // With "example.com" managed:
/// assert!(is_managed_authority(config, "Example.com:80"));
/// assert!(!is_managed_authority(config, "evil.example:80"));
/// # }
/// ```
pub fn is_managed_authority(config: &Config, authority: &str) -> bool {
    host_without_port(authority).is_some_and(|host| config.is_managed(host))
}

/// The `https://` URL for a request sent to `authority` (`host[:port]`, from
/// the request target or the `Host` header) for `path_and_query`: the host
/// without its port, `https_port` unless it is 443, and the path and query
/// unchanged (`/` when they do not start with `/`, as for `OPTIONS *`).
///
/// `None` when `authority` is not a valid `host[:port]`: the location is never
/// built from anything else, so nothing a client sends is reflected into it.
/// Other servers (certauto-actix) use this to redirect the same way.
///
/// ```
/// use certauto_tower::redirect::https_location;
/// assert_eq!(
///     https_location("example.com:80", "/a?b=1", 443).as_deref(),
///     Some("https://example.com/a?b=1")
/// );
/// assert_eq!(
///     https_location("[::1]:8080", "/", 8443).as_deref(),
///     Some("https://[::1]:8443/")
/// );
/// assert_eq!(https_location("evil.com/x@y", "/", 443), None);
/// ```
pub fn https_location(authority: &str, path_and_query: &str, https_port: u16) -> Option<String> {
    let host = host_without_port(authority)?;
    let path_and_query = Some(path_and_query)
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    Some(if https_port == DEFAULT_HTTPS_PORT {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{https_port}{path_and_query}")
    })
}

/// Whether `req` is an ACME HTTP-01 validation (which is never redirected).
fn is_challenge_request<B>(req: &Request<B>) -> bool {
    is_challenge(req.method().as_str(), req.uri().path())
}

/// Whether a request with `method` and `path` is an ACME HTTP-01 challenge
/// (`GET` or `HEAD` under `/.well-known/acme-challenge/`): never redirected.
/// Other servers (certauto-actix) use this to decide the same way.
pub fn is_challenge(method: &str, path: &str) -> bool {
    matches!(method, "GET" | "HEAD") && path.starts_with(HTTP01_PATH_PREFIX)
}

/// The authority `req` was sent to: the request target's if it has one, or
/// else the one `Host` header.
fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    request_target_authority(
        req.uri().authority().map(|a| a.as_str()),
        req.headers()
            .get_all(HOST)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// The authority a request was sent to: `target`, the request target's
/// authority, if it has one; or else the value of its one `Host` header
/// (`None` for none, several, or one that is not text). Other servers
/// (certauto-actix) use this to pick the same authority.
pub fn request_target_authority<'a>(
    target: Option<&'a str>,
    hosts: impl IntoIterator<Item = &'a [u8]>,
) -> Option<&'a str> {
    if target.is_some() {
        return target;
    }
    let mut hosts = hosts.into_iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return None; // RFC 9112 §3.2: several Host headers are a bad request
    }
    std::str::from_utf8(host).ok()
}

/// The host of a `host[:port]` authority, or `None` if it is not a valid one.
///
/// The host is a bracketed IPv6 address (kept in its brackets) or a DNS name
/// or IPv4 address of letters, digits, `-` and `_` in dot-separated labels.
/// The port, if any, is a number up to 65535. Anything else, such as user
/// information, a path, spaces or an unbracketed IPv6 address, is rejected.
fn host_without_port(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        host[1..end].parse::<Ipv6Addr>().ok()?;
        let port = if rest.is_empty() {
            rest
        } else {
            rest.strip_prefix(':')?
        };
        (host, port)
    } else {
        let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
        if !is_dns_name(host) {
            return None;
        }
        (host, port)
    };
    let port_ok = port.bytes().all(|b| b.is_ascii_digit())
        && (port.is_empty() || port.parse::<u16>().is_ok());
    port_ok.then_some(host)
}

/// Whether `host` is a DNS name or IPv4 address (with an optional final dot).
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

pin_project! {
    /// The response future of [`HttpsRedirect`].
    // pin_project_lite takes no attributes on variant fields: each variant
    // documents its fields instead.
    #[allow(missing_docs)]
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<F> {
        /// A challenge request: `fut` is the inner service's future.
        Inner {
            #[pin]
            fut: F,
        },
        /// The redirect (or `400 Bad Request`, or `421 Misdirected Request`):
        /// `response`, taken when polled.
        Ready {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inner { .. } => f.write_str("ResponseFuture::Inner"),
            Self::Ready { response } => f
                .debug_struct("ResponseFuture::Ready")
                .field("response", response)
                .finish(),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this {
            ResponseFutureProj::Inner { fut } => {
                let response = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            ResponseFutureProj::Ready { response } => {
                // Only `None` after this future returned `Ready`, and polling
                // a completed future is a contract violation.
                let response = response.take().expect("future polled after completion");
                Poll::Ready(Ok(response.map(ResponseBody::own)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::convert::Infallible;

    use http::{Method, Uri};
    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// The inner service: answers "inner" (only challenge requests reach it).
    async fn inner(req: Request<String>) -> Result<Response<String>, Infallible> {
        Ok(Response::new(format!(
            "inner {} {}",
            req.method(),
            req.uri()
        )))
    }

    async fn send(
        layer: HttpsRedirectLayer,
        request: Request<String>,
    ) -> (http::response::Parts, Bytes) {
        let response = layer
            .layer(service_fn(inner))
            .oneshot(request)
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    }

    fn get(uri: &str, host: Option<&str>) -> Request<String> {
        let mut builder = Request::get(uri);
        if let Some(host) = host {
            builder = builder.header(HOST, host);
        }
        builder.body(String::new()).unwrap()
    }

    /// The `Location` of a 308 redirect of `uri` sent with `host`.
    async fn location(layer: HttpsRedirectLayer, uri: &str, host: &str) -> String {
        let (response, body) = send(layer, get(uri, Some(host))).await;
        assert_eq!(
            response.status,
            StatusCode::PERMANENT_REDIRECT,
            "{host} {uri}"
        );
        assert!(body.is_empty());
        response.headers[LOCATION].to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn keeps_host_path_and_query_and_strips_the_port() {
        let layer = HttpsRedirectLayer::permanent();
        assert_eq!(
            location(layer.clone(), "/", "example.com").await,
            "https://example.com/"
        );
        assert_eq!(
            location(layer.clone(), "/a/b%20c?x=1&y=%2F#", "example.com:80").await,
            "https://example.com/a/b%20c?x=1&y=%2F"
        );
        assert_eq!(
            location(layer.clone(), "/p?", "Example.COM.:8080").await,
            "https://Example.COM./p?"
        );
        assert_eq!(
            location(layer.clone(), "/x", "192.0.2.1:80").await,
            "https://192.0.2.1/x"
        );
    }

    #[tokio::test]
    async fn uses_the_configured_https_port() {
        let layer = HttpsRedirectLayer::permanent().https_port(8443);
        assert_eq!(
            location(layer.clone(), "/a?b", "example.com:8080").await,
            "https://example.com:8443/a?b"
        );
        let layer = layer.https_port(443);
        assert_eq!(
            location(layer.clone(), "/a?b", "example.com:8080").await,
            "https://example.com/a?b"
        );
    }

    #[tokio::test]
    async fn handles_ipv6_literals() {
        let layer = HttpsRedirectLayer::permanent();
        assert_eq!(
            location(layer.clone(), "/x", "[::1]:80").await,
            "https://[::1]/x"
        );
        assert_eq!(
            location(layer.clone(), "/x", "[::1]").await,
            "https://[::1]/x"
        );
        assert_eq!(
            location(layer.clone().https_port(8443), "/", "[2001:db8::1]").await,
            "https://[2001:db8::1]:8443/"
        );
    }

    #[tokio::test]
    async fn prefers_the_request_target_authority() {
        // HTTP/2 `:authority`, or an absolute-form HTTP/1.1 target.
        let request = get("http://example.org:80/path?q", None);
        let (response, _) = send(HttpsRedirectLayer::permanent(), request).await;
        assert_eq!(response.headers[LOCATION], "https://example.org/path?q");

        let request = get("http://example.org/path", Some("other.example"));
        let (response, _) = send(HttpsRedirectLayer::permanent(), request).await;
        assert_eq!(response.headers[LOCATION], "https://example.org/path");
    }

    #[tokio::test]
    async fn missing_or_invalid_host_is_400() {
        let (response, _) = send(HttpsRedirectLayer::permanent(), get("/", None)).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
        assert!(response.headers.get(LOCATION).is_none());

        for host in [
            "",
            ":80",
            "evil.com/x",
            "evil.com x",
            "user@evil.com",
            "evil.com:80:80",
            "evil.com:99999",
            "evil.com:8a",
            "a..b",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[evil.com]",
            "[::1%25eth0]",
            "évil.com",
            "evil.com\t",
            "\"evil\"",
            "evil.com\\@x",
        ] {
            let value = HeaderValue::from_bytes(host.as_bytes()).unwrap();
            let mut request = get("/", None);
            request.headers_mut().insert(HOST, value);
            let (response, _) = send(HttpsRedirectLayer::permanent(), request).await;
            assert_eq!(response.status, StatusCode::BAD_REQUEST, "{host:?}");
            assert!(response.headers.get(LOCATION).is_none(), "{host:?}");
        }

        let mut request = get("/", Some("a.example"));
        request
            .headers_mut()
            .append(HOST, HeaderValue::from_static("b.example"));
        let (response, _) = send(HttpsRedirectLayer::permanent(), request).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);

        let request = get("http://user@example.org/", None);
        let (response, _) = send(HttpsRedirectLayer::permanent(), request).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn challenge_requests_are_not_redirected() {
        let path = "/.well-known/acme-challenge/abc_DEF-1";
        for method in [Method::GET, Method::HEAD] {
            let mut request = get(path, Some("example.com"));
            *request.method_mut() = method.clone();
            let (response, body) = send(HttpsRedirectLayer::permanent(), request).await;
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(body, format!("inner {method} {path}"));
        }
        // Even malformed tokens: the AcmeLayer or the inner service answers.
        let (response, _) = send(
            HttpsRedirectLayer::permanent(),
            get("/.well-known/acme-challenge/bad!", None),
        )
        .await;
        assert_eq!(response.status, StatusCode::OK);

        // Other methods are redirected like any request.
        let mut request = get(path, Some("example.com"));
        *request.method_mut() = Method::POST;
        let (response, _) = send(HttpsRedirectLayer::permanent(), request).await;
        assert_eq!(response.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers[LOCATION],
            format!("https://example.com{path}")
        );
    }

    #[tokio::test]
    async fn permanent_is_308_and_moved_permanently_is_301() {
        let (response, _) = send(
            HttpsRedirectLayer::permanent(),
            get("/a", Some("example.com")),
        )
        .await;
        assert_eq!(response.status, StatusCode::PERMANENT_REDIRECT);
        let (response, _) = send(
            HttpsRedirectLayer::moved_permanently(),
            get("/a", Some("example.com")),
        )
        .await;
        assert_eq!(response.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(response.headers[LOCATION], "https://example.com/a");

        let svc = HttpsRedirect::moved_permanently(service_fn(inner)).https_port(8443);
        let response = svc.oneshot(get("/b", Some("example.com"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(response.headers()[LOCATION], "https://example.com:8443/b");
    }

    #[tokio::test]
    async fn asterisk_form_redirects_to_the_root() {
        let mut request = get("/", Some("example.com"));
        *request.method_mut() = Method::OPTIONS;
        *request.uri_mut() = Uri::from_static("*");
        let (response, _) = send(HttpsRedirectLayer::permanent(), request).await;
        assert_eq!(response.headers[LOCATION], "https://example.com/");
    }

    /// A config managing `example.test` and `*.wild.test` (local CA, in memory).
    async fn managing() -> Config {
        let config = Config::builder()
            .storage(std::sync::Arc::new(certauto_core::MemoryStorage::new()))
            .build();
        config
            .manage(["example.test", "*.wild.test"])
            .await
            .unwrap();
        config
    }

    #[tokio::test]
    async fn only_managed_refuses_other_hosts_with_421() {
        let config = managing().await;
        let layer = HttpsRedirectLayer::only_managed(&config);
        assert_eq!(
            location(layer.clone(), "/a?b", "Example.TEST.:80").await,
            "https://Example.TEST./a?b"
        );
        assert_eq!(
            location(layer.clone(), "/", "a.wild.test").await,
            "https://a.wild.test/"
        );
        for host in [
            "evil.example",
            "wild.test",
            "a.b.wild.test",
            "[::1]:80",
            "127.0.0.1",
        ] {
            let (response, body) = send(layer.clone(), get("/x", Some(host))).await;
            assert_eq!(response.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
            assert!(response.headers.get(LOCATION).is_none(), "{host}");
            assert!(body.is_empty());
        }
        // The request target's authority is what is checked.
        let (response, _) = send(
            layer.clone(),
            get("http://evil.example/", Some("example.test")),
        )
        .await;
        assert_eq!(response.status, StatusCode::MISDIRECTED_REQUEST);
        // Invalid hosts are still 400, challenges still pass through.
        let (response, _) = send(layer.clone(), get("/", Some("evil.com/x"))).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
        let challenge = "/.well-known/acme-challenge/abc";
        let (response, _) = send(layer.clone(), get(challenge, Some("evil.example"))).await;
        assert_eq!(response.status, StatusCode::OK);
        // 301 with the same restriction, and names managed later.
        let layer = HttpsRedirectLayer::moved_permanently().managed_hosts_only(&config);
        let (response, _) = send(layer.clone(), get("/", Some("late.test"))).await;
        assert_eq!(response.status, StatusCode::MISDIRECTED_REQUEST);
        config.manage(["late.test"]).await.unwrap();
        let (response, _) = send(layer, get("/", Some("late.test"))).await;
        assert_eq!(response.status, StatusCode::MOVED_PERMANENTLY);
        assert!(is_managed_authority(&config, "late.test:8080"));
        assert!(!is_managed_authority(&config, "late.test:x"));
    }

    #[test]
    fn host_without_port_accepts_only_valid_authorities() {
        assert_eq!(host_without_port("example.com"), Some("example.com"));
        assert_eq!(host_without_port("example.com:"), Some("example.com"));
        assert_eq!(host_without_port("example.com:65535"), Some("example.com"));
        assert_eq!(host_without_port("_acme.example:1"), Some("_acme.example"));
        assert_eq!(
            host_without_port("[::ffff:192.0.2.1]:1"),
            Some("[::ffff:192.0.2.1]")
        );
        assert_eq!(host_without_port("example.com:65536"), None);
        assert_eq!(host_without_port(&"a".repeat(64)), None);
        assert_eq!(
            host_without_port(&format!("{}.com", "a.".repeat(130))),
            None
        );
        assert_eq!(host_without_port("."), None);
        assert_eq!(host_without_port("[]"), None);
    }
}
