//! `AcmeLayer` and `HttpsRedirectLayer` on axum: as router layers, wrapping a
//! whole router, and served over real TCP connections by `axum::serve`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Router, ServiceExt as _};
use certauto_core::{ChallengeTokens, MemoryStorage, Storage};
use certauto_tower::{AcmeLayer, HttpsRedirectLayer};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt as _};

const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const KEY_AUTHORIZATION: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

fn challenge_path(token: &str) -> String {
    format!("/.well-known/acme-challenge/{token}")
}

async fn tokens() -> ChallengeTokens {
    let tokens = ChallengeTokens::new();
    tokens.present(TOKEN, KEY_AUTHORIZATION).await.unwrap();
    tokens
}

/// An application with a route that echoes what it received.
fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "home" }))
        .route(
            "/echo",
            post(|headers: HeaderMap, body: String| async move {
                let x_test = headers["x-test"].to_str().unwrap().to_owned();
                ([("x-app", "1")], format!("x-test={x_test} body={body}"))
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "app fallback") })
}

/// Sends a request to `service` and returns the status, headers and body.
async fn call<S>(service: S, request: Request<Body>) -> (StatusCode, HeaderMap, String)
where
    S: tower::Service<Request<Body>, Response = axum::response::Response>,
    S::Error: std::fmt::Debug,
{
    let response = service.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn request(method: Method, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn router_layer_answers_challenges_and_leaves_routes_alone() {
    let router = app().layer(AcmeLayer::new(tokens().await));

    // No route matches the challenge path: the fallback is wrapped too.
    let (status, headers, body) =
        call(router.clone(), request(Method::GET, &challenge_path(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(body, KEY_AUTHORIZATION);

    let (status, headers, body) = call(
        router.clone(),
        request(Method::HEAD, &challenge_path(TOKEN)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-length"],
        KEY_AUTHORIZATION.len().to_string()
    );
    assert_eq!(body, "");

    let (status, _, body) = call(
        router.clone(),
        request(Method::GET, &challenge_path("unknown")),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, ""));
    let (status, _, body) = call(
        router.clone(),
        request(Method::GET, &challenge_path("bad!")),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, ""));

    // POST to a challenge path and other paths reach the app.
    let (status, _, body) = call(
        router.clone(),
        request(Method::POST, &challenge_path(TOKEN)),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "app fallback")
    );
    let (status, _, body) = call(router.clone(), request(Method::GET, "/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "home"));
    let echo = Request::post("/echo")
        .header("x-test", "kept")
        .body(Body::from("payload"))
        .unwrap();
    let (status, headers, body) = call(router, echo).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-app"], "1");
    assert_eq!(body, "x-test=kept body=payload");
}

#[tokio::test]
async fn router_layer_answers_tokens_shared_through_storage() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let presenter = ChallengeTokens::new().with_storage(storage.clone());
    let answerer = ChallengeTokens::new().with_storage(storage);
    presenter.present(TOKEN, KEY_AUTHORIZATION).await.unwrap();

    let router = app().layer(AcmeLayer::new(answerer));
    let (status, _, body) =
        call(router.clone(), request(Method::GET, &challenge_path(TOKEN))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, KEY_AUTHORIZATION));
    let (status, _, _) = call(router, request(Method::GET, &challenge_path("unknown"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn port_80_router_answers_challenges_and_redirects_the_rest() {
    // The recommended composition: AcmeLayer added last, so it is outermost.
    let recommended = Router::new()
        .layer(HttpsRedirectLayer::permanent().https_port(8443))
        .layer(AcmeLayer::new(tokens().await));
    // The reverse order gives the same answers.
    let reversed = Router::new()
        .layer(AcmeLayer::new(tokens().await))
        .layer(HttpsRedirectLayer::permanent().https_port(8443));
    // tower's ServiceBuilder: the first layer is the outermost.
    let builder = ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(AcmeLayer::new(tokens().await))
        .layer(HttpsRedirectLayer::permanent().https_port(8443))
        .service(Router::new());

    for (name, service) in [
        ("recommended", recommended.boxed_clone()),
        ("reversed", reversed.boxed_clone()),
        ("builder", builder.boxed_clone()),
    ] {
        let (status, _, body) = call(
            service.clone(),
            request(Method::GET, &challenge_path(TOKEN)),
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, KEY_AUTHORIZATION),
            "{name}"
        );
        let (status, _, _) = call(
            service.clone(),
            request(Method::GET, &challenge_path("unknown")),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}");
        let (status, headers, _) = call(service.clone(), request(Method::GET, "/a/b?c=d")).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT, "{name}");
        assert_eq!(
            headers["location"], "https://example.com:8443/a/b?c=d",
            "{name}"
        );
        let (status, headers, _) = call(
            service.clone(),
            request(Method::POST, &challenge_path(TOKEN)),
        )
        .await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT, "{name}");
        assert_eq!(
            headers["location"],
            format!("https://example.com:8443{}", challenge_path(TOKEN)),
            "{name}"
        );
        let no_host = Request::get("/").body(Body::empty()).unwrap();
        let (status, _, _) = call(service, no_host).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
    }
}

/// Serves `service` on 127.0.0.1 and returns its address.
async fn serve<S>(service: S) -> SocketAddr
where
    S: tower::Service<
            Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, service.into_make_service()).await });
    addr
}

/// Sends a raw HTTP/1.1 request and returns the status line, the headers
/// (lowercased names) and the body.
async fn raw(addr: SocketAddr, request: &str) -> (String, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn whole_router_wrapped_and_served_over_tcp() {
    let app = ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(AcmeLayer::new(tokens().await))
        .service(app());
    let addr = serve(app).await;

    let (status, headers, body) = raw(
        addr,
        &format!(
            "GET {} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
            challenge_path(TOKEN)
        ),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        header(&headers, "content-length"),
        Some(KEY_AUTHORIZATION.len().to_string().as_str())
    );
    assert_eq!(body, KEY_AUTHORIZATION);

    let (status, headers, body) = raw(
        addr,
        &format!(
            "HEAD {} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
            challenge_path(TOKEN)
        ),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(&headers, "content-length"),
        Some(KEY_AUTHORIZATION.len().to_string().as_str())
    );
    assert_eq!(body, "");

    let (status, _, _) = raw(
        addr,
        &format!(
            "GET {} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
            challenge_path("unknown")
        ),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let (status, headers, body) = raw(
        addr,
        "POST /echo HTTP/1.1\r\nHost: example.com\r\nX-Test: kept\r\nContent-Length: 7\r\nConnection: close\r\n\r\npayload",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "x-app"), Some("1"));
    assert_eq!(body, "x-test=kept body=payload");

    let (status, _, body) = raw(
        addr,
        "GET /nowhere HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 404 Not Found", "app fallback")
    );
}

#[tokio::test]
async fn port_80_router_served_over_tcp() {
    let http = Router::new()
        .layer(HttpsRedirectLayer::permanent())
        .layer(AcmeLayer::new(tokens().await));
    let addr = serve(http).await;

    let (status, _, body) = raw(
        addr,
        &format!(
            "GET {} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
            challenge_path(TOKEN)
        ),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, KEY_AUTHORIZATION);

    let (status, headers, _) = raw(
        addr,
        "GET /a%20b?x=1&y HTTP/1.1\r\nHost: example.com:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 308 Permanent Redirect");
    assert_eq!(
        header(&headers, "location"),
        Some("https://example.com/a%20b?x=1&y")
    );

    let (status, headers, _) = raw(
        addr,
        "GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 308 Permanent Redirect");
    assert_eq!(header(&headers, "location"), Some("https://[::1]/"));

    let (status, headers, _) = raw(
        addr,
        "GET http://example.org/abs HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 308 Permanent Redirect");
    assert_eq!(
        header(&headers, "location"),
        Some("https://example.org/abs")
    );

    for bad in [
        "",
        "Host: evil.com@x\r\n",
        "Host: a/b\r\n",
        "Host: a\r\nHost: b\r\n",
    ] {
        let (status, headers, _) = raw(
            addr,
            &format!("GET / HTTP/1.1\r\n{bad}Connection: close\r\n\r\n"),
        )
        .await;
        assert!(status == "HTTP/1.1 400 Bad Request", "{bad:?}: {status}");
        assert_eq!(header(&headers, "location"), None, "{bad:?}");
    }
}
