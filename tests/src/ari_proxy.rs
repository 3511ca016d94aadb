//! [`AriProxy`]: a **fault injector** in front of Pebble's ACME endpoint.
//!
//! Pebble 2.10 has a real ARI (RFC 9773 `renewalInfo`) endpoint, and tests of the normal
//! path use it directly ([`Pebble::set_renewal_window`]). What Pebble cannot do is answer
//! badly or go away, so the tests of those paths put this small HTTPS reverse proxy between
//! the client and Pebble. It
//!
//! - replaces the directory's `renewalInfo` with `"https://<proxy>/renewal-info"` and answers
//!   `GET /renewal-info/<certID>` itself, as configured per test ([`AriAnswer`]: a window,
//!   optionally with `Retry-After` and an `explanationURL`, malformed JSON or 404),
//!   recording every request;
//! - records every `POST /order-plz` (newOrder) with its decoded JWS payload and Pebble's
//!   status, so tests count orders and read `replaces`;
//! - can stop answering ([`Outage`]), at once or right after the next created order, to
//!   simulate the CA going away in the middle of a renewal;
//! - forwards everything else to Pebble byte for byte (bodies bounded to
//!   1 MiB).
//!
//! Pebble builds every URL it returns from the request's `Host` header and checks that a
//! JWS `url` equals `https://<Host><path>`. The proxy forwards the client's `Host` (its own
//! `127.0.0.1:<port>`) unchanged, so every URL Pebble hands out points back at the proxy and
//! every signed request stays valid. The proxy serves TLS with its own throw-away CA
//! ([`AriProxy::https_ca_der`]); trust it with `AcmeIssuerBuilder::trust_roots`.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::{Duration, SystemTime};
//! use certauto_tests::{AriAnswer, AriProxy, Pebble};
//!
//! let pebble = Pebble::start().await;
//! let proxy = AriProxy::start(&pebble).await;
//! let now = SystemTime::now();
//! proxy.set_ari(AriAnswer::window(now - Duration::from_secs(60), now).retry_after(3600));
//! let directory = proxy.directory_url(); // use instead of pebble.directory_url()
//! # let _ = directory;
//! # }
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::Pebble;
use crate::pki;

/// The largest request or response body the proxy passes on.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Pebble's directory path.
const DIRECTORY_PATH: &str = "/dir";
/// Pebble's newOrder path.
const NEW_ORDER_PATH: &str = "/order-plz";
/// The `renewalInfo` path the proxy adds and serves.
const RENEWAL_INFO_PATH: &str = "/renewal-info";
/// Bound on one TLS handshake with a client.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one request forwarded to Pebble.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// How the proxy answers `GET /renewal-info/<certID>`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AriAnswer {
    /// 200 with `suggestedWindow` = `[start, end]` (RFC 3339), and a `Retry-After`
    /// header (seconds) when given.
    Window {
        /// `suggestedWindow.start`.
        start: SystemTime,
        /// `suggestedWindow.end`.
        end: SystemTime,
        /// `Retry-After` in seconds, if any.
        retry_after: Option<u64>,
        /// `explanationURL`, if any.
        explanation_url: Option<String>,
    },
    /// 200 with a body that is not valid JSON.
    Malformed,
    /// 404 with an ACME problem document (`malformed`), as for an unknown certificate.
    NotFound,
}

impl AriAnswer {
    /// A window from `start` to `end`, without `Retry-After`.
    pub fn window(start: SystemTime, end: SystemTime) -> Self {
        AriAnswer::Window {
            start,
            end,
            retry_after: None,
            explanation_url: None,
        }
    }

    /// The same answer with `Retry-After: <secs>` (only windows carry it).
    pub fn retry_after(self, secs: u64) -> Self {
        match self {
            AriAnswer::Window {
                start,
                end,
                explanation_url,
                ..
            } => AriAnswer::Window {
                start,
                end,
                retry_after: Some(secs),
                explanation_url,
            },
            other => other,
        }
    }

    /// The same answer with `explanationURL` (only windows carry it).
    pub fn explanation_url(self, url: impl Into<String>) -> Self {
        match self {
            AriAnswer::Window {
                start,
                end,
                retry_after,
                ..
            } => AriAnswer::Window {
                start,
                end,
                retry_after,
                explanation_url: Some(url.into()),
            },
            other => other,
        }
    }
}

/// How the proxy behaves while the CA is "unreachable".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outage {
    /// New connections are closed right after accept and requests on open connections are
    /// dropped without an answer (the connection is closed): a CA that is gone.
    CloseConnections,
    /// Every request is answered `503 Service Unavailable` (no problem document): a CA
    /// that is down for maintenance.
    ServiceUnavailable,
}

/// One `POST /order-plz` seen by the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrderRecord {
    /// The decoded JWS payload (`identifiers`, `replaces`, ...); `Value::Null` if the body
    /// was not a JWS with a JSON payload.
    pub payload: Value,
    /// Pebble's status code (201 when the order was created).
    pub status: u16,
}

impl NewOrderRecord {
    /// The `replaces` field of the payload (RFC 9773 §5), if present.
    pub fn replaces(&self) -> Option<&str> {
        self.payload.get("replaces").and_then(Value::as_str)
    }

    /// Whether Pebble created the order.
    pub fn created(&self) -> bool {
        self.status == 201
    }
}

#[derive(Debug)]
struct State {
    default_answer: AriAnswer,
    answers: HashMap<String, AriAnswer>,
    renewal_info_requests: Vec<String>,
    new_orders: Vec<NewOrderRecord>,
    outage: Option<Outage>,
    outage_after_next_order: Option<Outage>,
}

#[derive(Debug)]
struct Shared {
    /// `127.0.0.1:<port>` of the proxy.
    authority: String,
    /// `https://127.0.0.1:<pebble port>` (no trailing slash).
    upstream: String,
    client: reqwest::Client,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An HTTPS fault-injecting reverse proxy in front of one [`Pebble`]: it adds
/// `renewalInfo` to the directory, answers ARI windows, counts new orders and
/// can make the CA unreachable. Listens on `127.0.0.1`; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct AriProxy {
    addr: SocketAddr,
    ca_pem: String,
    ca_der: Vec<u8>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for AriProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request was dropped on purpose (an [`Outage::CloseConnections`]); hyper then closes
/// the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request dropped by the fault injector (CA unreachable)")
    }
}

impl std::error::Error for Dropped {}

impl AriProxy {
    /// Starts the proxy in front of `pebble`'s ACME endpoint. Every certificate gets
    /// [`AriAnswer::NotFound`] until [`set_ari`](Self::set_ari) says otherwise.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound or the TLS setup fails.
    pub async fn start(pebble: &Pebble) -> AriProxy {
        let pki = pki::generate();
        let chain = vec![
            CertificateDer::from_pem_slice(pki.leaf_cert_pem.as_bytes())
                .expect("parse the proxy's leaf certificate"),
        ];
        let key = PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes())
            .expect("parse the proxy's leaf key");
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the proxy's certificate and key match");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the ARI proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("local_addr of the ARI proxy");
        let upstream = pebble
            .directory_url()
            .strip_suffix(DIRECTORY_PATH)
            .expect("Pebble's directory URL ends with /dir")
            .to_owned();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(pebble.rustls_client_config())
            // The client's own User-Agent is forwarded; this one is only a fallback.
            .user_agent(crate::HARNESS_USER_AGENT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(UPSTREAM_TIMEOUT)
            .build()
            .expect("build the proxy's upstream client");
        let shared = Arc::new(Shared {
            authority: addr.to_string(),
            upstream,
            client,
            state: Mutex::new(State {
                default_answer: AriAnswer::NotFound,
                answers: HashMap::new(),
                renewal_info_requests: Vec::new(),
                new_orders: Vec::new(),
                outage: None,
                outage_after_next_order: None,
            }),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        tracing::info!(%addr, upstream = %shared.upstream, "ARI fault-injecting proxy started");
        AriProxy {
            addr,
            ca_pem: pki.ca_pem,
            ca_der: pki.ca_der,
            shared,
            task,
        }
    }

    /// The directory URL to give the client: `https://127.0.0.1:<proxy port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}{DIRECTORY_PATH}", self.addr)
    }

    /// The `renewalInfo` base URL the proxy adds to the directory.
    pub fn renewal_info_url(&self) -> String {
        format!("https://{}{RENEWAL_INFO_PATH}", self.addr)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// DER of the CA to trust for the proxy's HTTPS.
    pub fn https_ca_der(&self) -> Vec<u8> {
        self.ca_der.clone()
    }

    /// PEM of the CA to trust for the proxy's HTTPS.
    pub fn https_ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The answer for every certificate without a specific one.
    pub fn set_ari(&self, answer: AriAnswer) {
        self.shared.state().default_answer = answer;
    }

    /// The answer for one ARI CertID (`base64url(AKI).base64url(serial)`).
    pub fn set_ari_for(&self, cert_id: &str, answer: AriAnswer) {
        self.shared
            .state()
            .answers
            .insert(cert_id.to_owned(), answer);
    }

    /// The CertIDs of every `renewalInfo` request so far, in order.
    pub fn renewal_info_requests(&self) -> Vec<String> {
        self.shared.state().renewal_info_requests.clone()
    }

    /// Every newOrder request so far (including ones Pebble refused, e.g. `badNonce`).
    pub fn new_orders(&self) -> Vec<NewOrderRecord> {
        self.shared.state().new_orders.clone()
    }

    /// The newOrder requests Pebble answered with 201 (orders created), in order.
    pub fn created_orders(&self) -> Vec<NewOrderRecord> {
        self.shared
            .state()
            .new_orders
            .iter()
            .filter(|o| o.created())
            .cloned()
            .collect()
    }

    /// Starts (`Some`) or ends (`None`) an outage now.
    pub fn set_outage(&self, outage: Option<Outage>) {
        let mut state = self.shared.state();
        state.outage = outage;
        state.outage_after_next_order = None;
    }

    /// Starts `outage` right after the next order Pebble creates (the client still receives
    /// that order): the CA goes away in the middle of an issuance.
    pub fn outage_after_next_order(&self, outage: Outage) {
        self.shared.state().outage_after_next_order = Some(outage);
    }

    /// The outage in force, if any.
    pub fn outage(&self) -> Option<Outage> {
        self.shared.state().outage
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    // Owned here: aborting this task (on drop) drops the set, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "ARI proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.state().outage == Some(Outage::CloseConnections) {
            tracing::debug!(%peer, "ARI proxy: outage, closing the new connection");
            drop(tcp);
            continue;
        }
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "ARI proxy: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "ARI proxy: TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { handle(req, &shared).await }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "ARI proxy: connection ended");
            }
        });
    }
}

fn plain(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Result<Response<Full<Bytes>>, Dropped> {
    match shared.state().outage {
        Some(Outage::CloseConnections) => return Err(Dropped),
        Some(Outage::ServiceUnavailable) => {
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "CA unavailable (fault injector)",
            ));
        }
        None => {}
    }
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET
        && let Some(cert_id) = path
            .strip_prefix(RENEWAL_INFO_PATH)
            .and_then(|rest| rest.strip_prefix('/'))
    {
        return Ok(renewal_info(shared, cert_id));
    }
    Ok(forward(req, shared).await)
}

/// Answers `GET /renewal-info/<cert_id>` as configured.
fn renewal_info(shared: &Shared, cert_id: &str) -> Response<Full<Bytes>> {
    let answer = {
        let mut state = shared.state();
        state.renewal_info_requests.push(cert_id.to_owned());
        state
            .answers
            .get(cert_id)
            .unwrap_or(&state.default_answer)
            .clone()
    };
    tracing::debug!(cert_id, ?answer, "ARI proxy: renewalInfo");
    match answer {
        AriAnswer::Window {
            start,
            end,
            retry_after,
            explanation_url,
        } => {
            let mut body = json!({
                "suggestedWindow": { "start": rfc3339(start), "end": rfc3339(end) },
            });
            if let Some(url) = explanation_url {
                body["explanationURL"] = Value::String(url);
            }
            let mut resp = plain(StatusCode::OK, "application/json", body.to_string());
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            resp
        }
        AriAnswer::Malformed => plain(
            StatusCode::OK,
            "application/json",
            r#"{"suggestedWindow": {"start": "yesterday", "end": "#,
        ),
        AriAnswer::NotFound => plain(
            StatusCode::NOT_FOUND,
            "application/problem+json",
            json!({
                "type": "urn:ietf:params:acme:error:malformed",
                "detail": "no certificate with this CertID (fault injector)",
                "status": 404,
            })
            .to_string(),
        ),
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("format {t:?} as RFC 3339: {e}"))
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus the
/// framing ones the sender recomputes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !is_hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The JSON payload of a flattened JWS body, or `Null`.
fn jws_payload(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|jws| {
            let payload = jws.get("payload")?.as_str()?.to_owned();
            let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
            serde_json::from_slice(&bytes).ok()
        })
        .unwrap_or(Value::Null)
}

async fn forward(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("request body refused by the proxy: {e}"),
            );
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let url = format!("{}{path_and_query}", shared.upstream);
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    // Pebble builds its URLs from Host and checks JWS `url`s against it: keep the proxy's.
    if !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(&shared.authority)
    {
        headers.insert(header::HOST, host);
    }
    let is_new_order = parts.method == Method::POST && parts.uri.path() == NEW_ORDER_PATH;
    let new_order_payload = is_new_order.then(|| jws_payload(&body));
    let upstream = shared
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match upstream {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(%url, error = %e, "ARI proxy: Pebble did not answer");
            return plain(
                StatusCode::BAD_GATEWAY,
                "text/plain",
                format!("upstream error: {e}"),
            );
        }
    };
    let status = upstream.status();
    let upstream_headers = upstream.headers().clone();
    let body = match read_bounded(upstream).await {
        Ok(body) => body,
        Err(reason) => return plain(StatusCode::BAD_GATEWAY, "text/plain", reason),
    };
    if let Some(payload) = new_order_payload {
        let mut state = shared.state();
        state.new_orders.push(NewOrderRecord {
            payload,
            status: status.as_u16(),
        });
        if status == StatusCode::CREATED
            && let Some(outage) = state.outage_after_next_order.take()
        {
            tracing::info!(?outage, "ARI proxy: order created, the CA goes away now");
            state.outage = Some(outage);
        }
    }
    let body = if parts.method == Method::GET
        && parts.uri.path() == DIRECTORY_PATH
        && status == StatusCode::OK
    {
        add_renewal_info(&body, shared)
    } else {
        body
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    copy_headers(&upstream_headers, resp.headers_mut());
    resp
}

/// The directory with `renewalInfo` pointing at the proxy, replacing Pebble's own (unchanged if
/// it is not a JSON object).
fn add_renewal_info(body: &Bytes, shared: &Shared) -> Bytes {
    let Ok(Value::Object(mut directory)) = serde_json::from_slice::<Value>(body) else {
        tracing::warn!("ARI proxy: Pebble's directory is not a JSON object; left unchanged");
        return body.clone();
    };
    directory.insert(
        "renewalInfo".to_owned(),
        Value::from(format!("https://{}{RENEWAL_INFO_PATH}", shared.authority)),
    );
    match serde_json::to_vec(&Value::Object(directory)) {
        Ok(bytes) => Bytes::from(bytes),
        Err(_) => body.clone(),
    }
}

/// Reads a response body, at most [`MAX_BODY_BYTES`].
async fn read_bounded(mut resp: reqwest::Response) -> Result<Bytes, String> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(format!(
                        "Pebble's response is larger than {MAX_BODY_BYTES} bytes"
                    ));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(out)),
            Err(e) => return Err(format!("reading Pebble's response failed: {e}")),
        }
    }
}
