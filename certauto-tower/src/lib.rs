//! Tower middleware for CertAuto: answer ACME HTTP-01 challenges and
//! redirect plain HTTP to HTTPS, in front of any tower service (axum,
//! hyper, tonic, ...).
//!
//! - [`AcmeLayer`] answers `GET`/`HEAD /.well-known/acme-challenge/<token>`
//!   from [`ChallengeTokens`](certauto_core::ChallengeTokens), the map the
//!   HTTP-01 solver presents tokens into (give the solver the same tokens with
//!   [`Http01Solver::without_listener`](certauto_core::Http01Solver::without_listener)).
//!   Every other request reaches the inner service untouched.
//! - [`HttpsRedirectLayer`] redirects every request to `https://`, except
//!   those challenge requests.
//!
//! Both work for any inner service `S: Service<http::Request<ReqBody>,
//! Response = http::Response<ResBody>>` whatever its body type, pass its
//! errors through, and answer with a [`ResponseBody<ResBody>`](ResponseBody).
//!
//! # On an axum `Router`
//!
//! ```
//! use axum::{Router, body::Body, http::Request, routing::get};
//! use certauto_core::ChallengeTokens;
//! use certauto_tower::AcmeLayer;
//! use tower::ServiceExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = ChallengeTokens::new();
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(AcmeLayer::new(tokens.clone()));
//!
//! // The HTTP-01 solver presents a token while the CA validates the order...
//! tokens.present("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA", "evaG...-oA.thumbprint").await?;
//!
//! // ...and the CA's request is answered, even though no route matches it.
//! let request = Request::get("/.well-known/acme-challenge/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA")
//!     .body(Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["content-type"], "application/octet-stream");
//! # Ok(())
//! # }
//! ```
//!
//! [`Router::layer`](https://docs.rs/axum/0.8/axum/struct.Router.html#method.layer)
//! also wraps the fallback, so challenge paths are answered without a route.
//!
//! # Wrapping a whole router from outside
//!
//! `axum::serve` wants a service whose response is `axum::response::Response`.
//! Wrapping the router from outside (so that the middleware runs before
//! routing) therefore needs one more step, `map_response(IntoResponse::into_response)`:
//!
//! ```no_run
//! use axum::{Router, ServiceExt, extract::Request, response::IntoResponse, routing::get};
//! use certauto_core::ChallengeTokens;
//! use certauto_tower::AcmeLayer;
//! use tower::ServiceBuilder;
//!
//! # async fn demo(tokens: ChallengeTokens) -> std::io::Result<()> {
//! let router = Router::new().route("/", get(|| async { "hello" }));
//! let app = ServiceBuilder::new()
//!     .map_response(IntoResponse::into_response)
//!     .layer(AcmeLayer::new(tokens))
//!     .service(router);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:80").await?;
//! axum::serve(listener, ServiceExt::<Request>::into_make_service(app)).await
//! # }
//! ```
//!
//! # The port-80 service
//!
//! On port 80, put [`HttpsRedirectLayer`] together with [`AcmeLayer`]: the
//! challenges are answered and everything else goes to HTTPS.
//!
//! ```
//! use axum::Router;
//! use certauto_core::ChallengeTokens;
//! use certauto_tower::{AcmeLayer, HttpsRedirectLayer};
//!
//! # fn demo(tokens: ChallengeTokens) -> Router {
//! Router::new()
//!     .layer(HttpsRedirectLayer::permanent())
//!     .layer(AcmeLayer::new(tokens))
//! # }
//! ```
//!
//! The outer layer sees requests first. With axum's `Router::layer` (and
//! tower's `Layer::layer`) the *last* layer added is the outer one, while
//! with `tower::ServiceBuilder` the *first* one is. Either way, put
//! [`AcmeLayer`] outside, as above or as in
//! `ServiceBuilder::new().layer(AcmeLayer::new(tokens)).layer(HttpsRedirectLayer::permanent())`:
//! challenges are then answered before the redirect sees them. (The other
//! order gives the same answers, because [`HttpsRedirect`] passes challenge
//! requests through, but it makes every challenge cross one more layer.)

pub mod acme_challenge;
mod body;
#[cfg(test)]
mod defaults_table;
pub mod redirect;

pub use acme_challenge::{AcmeLayer, AcmeService};
pub use body::ResponseBody;
pub use redirect::{HttpsRedirect, HttpsRedirectLayer};
