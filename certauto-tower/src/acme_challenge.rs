//! Answers ACME HTTP-01 challenges ([RFC 8555 §8.3]) in front of any service.
//!
//! [`AcmeLayer`] wraps a service so that `GET` and `HEAD` requests for
//! `/.well-known/acme-challenge/<token>` are answered from
//! [`ChallengeTokens`], the map CertAuto's solvers present tokens into:
//!
//! - a token presented by this process: `200 OK`,
//!   `Content-Type: application/octet-stream`, the key authorization as the
//!   body (for `HEAD`: no body, the same `Content-Length`);
//! - a token presented by another instance of a cluster, when the tokens are
//!   [shared through storage](ChallengeTokens::with_storage): the same, after
//!   a storage lookup;
//! - an unknown or malformed token: `404 Not Found`.
//!
//! Every other request, including other methods on a challenge path, goes to
//! the inner service untouched.
//!
//! ```
//! use certauto_core::ChallengeTokens;
//! use certauto_tower::AcmeLayer;
//! use tower::{ServiceBuilder, service_fn};
//!
//! let tokens = ChallengeTokens::new(); // shared with the HTTP-01 solver
//! let service = ServiceBuilder::new()
//!     .layer(AcmeLayer::new(tokens))
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("app")))
//!     }));
//! # let _ = service;
//! ```
//!
//! [RFC 8555 §8.3]: https://www.rfc-editor.org/rfc/rfc8555#section-8.3

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use certauto_core::ChallengeTokens;
use certauto_core::{HTTP01_CONTENT_TYPE, Http01Answer};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;

/// Applies [`AcmeService`], which answers ACME HTTP-01 challenges, to a service.
///
/// See the [module docs](self) for what it answers.
#[derive(Debug, Clone)]
pub struct AcmeLayer {
    tokens: ChallengeTokens,
}

impl AcmeLayer {
    /// Answers the challenges presented in `tokens`.
    ///
    /// Pass the same [`ChallengeTokens`] (it is a cheap, shared handle) to the
    /// HTTP-01 solver, so that the tokens it presents are answered here.
    pub fn new(tokens: ChallengeTokens) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AcmeLayer {
    type Service = AcmeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AcmeService::new(inner, self.tokens.clone())
    }
}

/// Middleware that answers ACME HTTP-01 challenges and passes every other
/// request to the inner service `S`.
///
/// Built by [`AcmeLayer`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AcmeService<S> {
    inner: S,
    tokens: ChallengeTokens,
}

impl<S> AcmeService<S> {
    /// Wraps `inner`, answering the challenges presented in `tokens`.
    pub fn new(inner: S, tokens: ChallengeTokens) -> Self {
        Self { inner, tokens }
    }

    /// An [`AcmeLayer`] answering the challenges presented in `tokens`.
    pub fn layer(tokens: ChallengeTokens) -> AcmeLayer {
        AcmeLayer::new(tokens)
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AcmeService<S>
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
        let head = req.method() == Method::HEAD;
        match self.tokens.answer_now(req.method(), req.uri().path()) {
            Some(Http01Answer::NotChallenge) => ResponseFuture::inner(self.inner.call(req)),
            Some(Http01Answer::NotFound) => ResponseFuture::ready(challenge_response(None, head)),
            Some(Http01Answer::KeyAuthorization(key_authorization)) => {
                ResponseFuture::ready(challenge_response(Some(key_authorization), head))
            }
            // In another instance's storage: looked up without blocking the service.
            None => {
                let tokens = self.tokens.clone();
                let method = req.method().clone();
                let path = req.uri().path().to_owned();
                ResponseFuture::Lookup {
                    fut: Box::pin(async move {
                        match tokens.answer(&method, &path).await {
                            Http01Answer::KeyAuthorization(k) => Some(k),
                            Http01Answer::NotChallenge | Http01Answer::NotFound => None,
                        }
                    }),
                    head,
                }
            }
        }
    }
}

/// The response to a challenge request: the key authorization, or 404.
fn challenge_response(key_authorization: Option<String>, head: bool) -> Response<Bytes> {
    let Some(key_authorization) = key_authorization else {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let len = HeaderValue::from(key_authorization.len());
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(key_authorization)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(HTTP01_CONTENT_TYPE));
    headers.insert(CONTENT_LENGTH, len);
    response
}

pin_project! {
    /// The response future of [`AcmeService`].
    // pin_project_lite takes no attributes on variant fields: each variant
    // documents its fields instead.
    #[allow(missing_docs)]
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<F> {
        /// Not a challenge request: `fut` is the inner service's future.
        Inner {
            #[pin]
            fut: F,
        },
        /// A challenge answered without waiting: `response`, taken when polled.
        Ready {
            response: Option<Response<Bytes>>,
        },
        /// A token looked up in shared storage: `fut` yields its key
        /// authorization if another instance presented it; `head` is whether
        /// the request is `HEAD` (answered without a body).
        Lookup {
            fut: Pin<Box<dyn Future<Output = Option<String>> + Send>>,
            head: bool,
        },
    }
}

impl<F> ResponseFuture<F> {
    fn inner(fut: F) -> Self {
        Self::Inner { fut }
    }

    fn ready(response: Response<Bytes>) -> Self {
        Self::Ready {
            response: Some(response),
        }
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
            Self::Lookup { head, .. } => f
                .debug_struct("ResponseFuture::Lookup")
                .field("head", head)
                .finish_non_exhaustive(),
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
            ResponseFutureProj::Lookup { fut, head } => {
                let found = ready!(fut.as_mut().poll(cx));
                Poll::Ready(Ok(challenge_response(found, *head).map(ResponseBody::own)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::convert::Infallible;
    use std::sync::Arc;

    use certauto_core::{MemoryStorage, Storage};
    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use certauto_core::HTTP01_PATH_PREFIX;

    const TOKEN: &str = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
    const KEY_AUTHORIZATION: &str = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.thumbprint";

    /// A body type that is not `Full`: the inner service's own.
    #[derive(Debug)]
    struct AppBody(Option<Bytes>);

    impl http_body::Body for AppBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.take().map(|d| Ok(http_body::Frame::data(d))))
        }
    }

    /// An inner service that echoes the method, path and a request header.
    fn app() -> impl Service<
        Request<String>,
        Response = Response<AppBody>,
        Error = Infallible,
        Future = impl Future + Send,
    > + Clone {
        service_fn(|req: Request<String>| async move {
            let seen = format!(
                "app {} {} x-test={:?} body={}",
                req.method(),
                req.uri(),
                req.headers().get("x-test"),
                req.body()
            );
            let mut response = Response::new(AppBody(Some(Bytes::from(seen))));
            response
                .headers_mut()
                .insert("x-app", HeaderValue::from_static("1"));
            Ok::<_, Infallible>(response)
        })
    }

    async fn tokens() -> ChallengeTokens {
        let tokens = ChallengeTokens::new();
        tokens.present(TOKEN, KEY_AUTHORIZATION).await.unwrap();
        tokens
    }

    async fn send(
        tokens: ChallengeTokens,
        method: Method,
        uri: &str,
    ) -> (http::response::Parts, Bytes) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-test", "kept")
            .body(String::from("request body"))
            .unwrap();
        let response = AcmeLayer::new(tokens)
            .layer(app())
            .oneshot(request)
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts, bytes)
    }

    fn challenge_path(token: &str) -> String {
        format!("{HTTP01_PATH_PREFIX}{token}")
    }

    #[tokio::test]
    async fn get_answers_a_local_token() {
        let (response, body) = send(tokens().await, Method::GET, &challenge_path(TOKEN)).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.headers[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(
            response.headers[CONTENT_LENGTH],
            KEY_AUTHORIZATION.len().to_string()
        );
        assert!(response.headers.get("x-app").is_none());
        assert_eq!(body, KEY_AUTHORIZATION);
    }

    #[tokio::test]
    async fn head_answers_with_length_and_no_body() {
        let (response, body) = send(tokens().await, Method::HEAD, &challenge_path(TOKEN)).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.headers[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(
            response.headers[CONTENT_LENGTH],
            KEY_AUTHORIZATION.len().to_string()
        );
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn unknown_token_is_404() {
        for method in [Method::GET, Method::HEAD] {
            let (response, body) =
                send(tokens().await, method, &challenge_path("unknown-token")).await;
            assert_eq!(response.status, StatusCode::NOT_FOUND);
            assert!(response.headers.get("x-app").is_none());
            assert!(body.is_empty());
        }
    }

    #[tokio::test]
    async fn malformed_token_is_404() {
        for path in [
            HTTP01_PATH_PREFIX.to_owned(),
            challenge_path("a.b"),
            challenge_path("a/b"),
            challenge_path("%2e%2e"),
            challenge_path(&"a".repeat(300)),
            format!("{}?x=1", challenge_path("bad!")),
        ] {
            let (response, _) = send(tokens().await, Method::GET, &path).await;
            assert_eq!(response.status, StatusCode::NOT_FOUND, "{path}");
            assert!(response.headers.get("x-app").is_none(), "{path}");
        }
    }

    #[tokio::test]
    async fn query_string_does_not_change_the_answer() {
        let uri = format!("{}?cache=bust", challenge_path(TOKEN));
        let (response, body) = send(tokens().await, Method::GET, &uri).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(body, KEY_AUTHORIZATION);
    }

    #[tokio::test]
    async fn other_methods_on_a_challenge_path_pass_through() {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let path = challenge_path(TOKEN);
            let (response, body) = send(tokens().await, method.clone(), &path).await;
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.headers["x-app"], "1");
            assert_eq!(
                body,
                format!("app {method} {path} x-test=Some(\"kept\") body=request body")
            );
        }
    }

    #[tokio::test]
    async fn other_paths_pass_through_untouched() {
        for path in [
            "/",
            "/index.html?q=1",
            "/.well-known/acme-challenge",
            "/.well-known/other/x",
            "/x/.well-known/acme-challenge/abc",
        ] {
            let (response, body) = send(tokens().await, Method::GET, path).await;
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.headers["x-app"], "1");
            assert_eq!(
                body,
                format!("app GET {path} x-test=Some(\"kept\") body=request body")
            );
        }
    }

    #[tokio::test]
    async fn token_presented_by_another_instance_is_answered_from_storage() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let presenter = ChallengeTokens::new().with_storage(storage.clone());
        let answerer = ChallengeTokens::new().with_storage(storage);
        presenter.present(TOKEN, KEY_AUTHORIZATION).await.unwrap();
        assert_eq!(answerer.get_local(TOKEN), None);

        let (response, body) = send(answerer.clone(), Method::GET, &challenge_path(TOKEN)).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.headers[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(body, KEY_AUTHORIZATION);

        let (response, body) = send(answerer.clone(), Method::HEAD, &challenge_path(TOKEN)).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(
            response.headers[CONTENT_LENGTH],
            KEY_AUTHORIZATION.len().to_string()
        );
        assert!(body.is_empty());

        let (response, _) = send(answerer.clone(), Method::GET, &challenge_path("other")).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND);

        presenter.remove(TOKEN).await;
        let (response, _) = send(answerer, Method::GET, &challenge_path(TOKEN)).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn only_shared_misses_are_boxed() {
        let local = AcmeLayer::new(tokens().await).layer(app());
        let request = |uri: &str| Request::get(uri.to_owned()).body(String::new()).unwrap();
        let mut svc = local.clone();
        let fut = svc.call(request(&challenge_path(TOKEN)));
        assert!(matches!(fut, ResponseFuture::Ready { .. }));
        let fut = svc.call(request(&challenge_path("unknown")));
        assert!(matches!(fut, ResponseFuture::Ready { .. }));
        let fut = svc.call(request("/"));
        assert!(matches!(fut, ResponseFuture::Inner { .. }));

        let shared = ChallengeTokens::new().with_storage(Arc::new(MemoryStorage::new()));
        let mut svc = AcmeLayer::new(shared).layer(app());
        let fut = svc.call(request(&challenge_path("unknown")));
        assert!(matches!(fut, ResponseFuture::Lookup { head: false, .. }));
        let fut = svc.call(request(&challenge_path("bad!")));
        assert!(matches!(fut, ResponseFuture::Ready { .. }));
    }

    #[test]
    fn futures_are_send_and_services_sync() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        let mut svc = AcmeLayer::new(ChallengeTokens::new()).layer(app());
        assert_send_sync(&svc);
        let fut = svc.call(Request::new(String::new()));
        assert_send(&fut);
    }

    #[tokio::test]
    async fn errors_pass_through() {
        let failing = service_fn(|_req: Request<String>| async {
            Err::<Response<AppBody>, _>("inner failed")
        });
        let result = AcmeLayer::new(tokens().await)
            .layer(failing)
            .oneshot(Request::new(String::new()))
            .await;
        assert_eq!(result.unwrap_err(), "inner failed");
    }
}
