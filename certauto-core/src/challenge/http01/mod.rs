//! HTTP-01 (RFC 8555 §8.3): the solver with a listener of its own, and
//! the tokens and responder it shares with the application's HTTP servers.

use std::convert::Infallible;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::{Challenge, Solver};

mod tokens;

use crate::acme::types::ChallengeType;
use crate::error::SolverError;
pub(crate) use tokens::is_token;
pub use tokens::{ChallengeTokens, HTTP01_CONTENT_TYPE, HTTP01_PATH_PREFIX, Http01Answer};

/// How long one connection to the challenge listener may live.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long a client of the challenge listener may take to send its request headers.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers HTTP-01 challenges on its own HTTP listener.
///
/// The listener starts when the first challenge is presented and stops when
/// the last one is cleaned up, so port 80 is held only while validating. The
/// tokens it answers are in a [`ChallengeTokens`] that can be shared with an
/// application's own HTTP handler (then the listener is not needed: see
/// [`Http01Solver::without_listener`]).
///
/// ```
/// use certauto_core::Http01Solver;
/// let solver = Http01Solver::new(8080); // 0.0.0.0:8080
/// let default = Http01Solver::default(); // 0.0.0.0:80
/// # let _ = (solver, default);
/// ```
pub struct Http01Solver {
    addr: Option<SocketAddr>,
    tokens: ChallengeTokens,
    state: Mutex<ListenerState>,
}

#[derive(Default)]
struct ListenerState {
    active: usize,
    running: Option<Running>,
}

struct Running {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Http01Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http01Solver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Default for Http01Solver {
    fn default() -> Self {
        Self::new(80)
    }
}

impl Http01Solver {
    /// Listens on `0.0.0.0:port` while challenges are pending.
    pub fn new(port: u16) -> Self {
        Self::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    }

    /// Listens on `addr` while challenges are pending.
    pub fn bind(addr: SocketAddr) -> Self {
        Self {
            addr: Some(addr),
            tokens: ChallengeTokens::new(),
            state: Mutex::new(ListenerState::default()),
        }
    }

    /// Records tokens in `tokens` only, for an application whose own HTTP
    /// server answers `/.well-known/acme-challenge/` (e.g. with `AcmeLayer`).
    pub fn without_listener(tokens: ChallengeTokens) -> Self {
        Self {
            addr: None,
            tokens,
            state: Mutex::new(ListenerState::default()),
        }
    }

    /// Shares `tokens` with other handlers.
    pub fn with_tokens(mut self, tokens: ChallengeTokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// The tokens this solver presents.
    pub fn tokens(&self) -> &ChallengeTokens {
        &self.tokens
    }

    /// The address the listener is bound to while running.
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        self.state
            .lock()
            .await
            .running
            .as_ref()
            .map(|r| r.local_addr)
    }

    async fn start_listener(&self, addr: SocketAddr) -> Result<Running, SolverError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SolverError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| SolverError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let (stop, mut stopped) = watch::channel(false);
        let tokens = self.tokens.clone();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP-01 accept failed");
                        continue;
                    }
                };
                let tokens = tokens.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let tokens = tokens.clone();
                        async move { Ok::<_, Infallible>(answer(&tokens, &req, peer).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                });
            }
        });
        tracing::debug!(%local_addr, "HTTP-01 listener started");
        Ok(Running {
            local_addr,
            stop,
            task,
        })
    }
}

async fn answer(
    tokens: &ChallengeTokens,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let response = match tokens.answer(req.method(), req.uri().path()).await {
        super::Http01Answer::KeyAuthorization(key_authorization) => {
            tracing::debug!(%peer, path = req.uri().path(), "answered HTTP-01 challenge");
            let body = if req.method() == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(key_authorization)
            };
            Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, super::HTTP01_CONTENT_TYPE)
                .body(Full::new(body))
        }
        super::Http01Answer::NotChallenge | super::Http01Answer::NotFound => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new())),
    };
    // The builder only fails on invalid header values; ours are static.
    response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[async_trait]
impl Solver for Http01Solver {
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
        if challenge.challenge_type != ChallengeType::Http01 {
            return Err(SolverError::Unsupported(challenge.challenge_type.clone()));
        }
        let mut state = self.state.lock().await;
        if let Some(addr) = self.addr
            && state.running.is_none()
        {
            state.running = Some(self.start_listener(addr).await?);
        }
        state.active += 1;
        drop(state);
        if let Err(e) = self
            .tokens
            .present(&challenge.token, &challenge.key_authorization)
            .await
        {
            self.cleanup(challenge).await?;
            return Err(e);
        }
        Ok(())
    }

    async fn cleanup(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.tokens.remove(&challenge.token).await;
        let mut state = self.state.lock().await;
        state.active = state.active.saturating_sub(1);
        if state.active == 0
            && let Some(running) = state.running.take()
        {
            let _ = running.stop.send(true);
            let _ = running.task.await;
            tracing::debug!(local_addr = %running.local_addr, "HTTP-01 listener stopped");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identifier::Identifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn raw_get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_presented_tokens_only_while_present() {
        let solver = Http01Solver::bind("127.0.0.1:0".parse().unwrap());
        let chal = Challenge::new(
            Identifier::parse("a.test").unwrap(),
            ChallengeType::Http01,
            "tok_1".into(),
            "tok_1.thumb".into(),
            "https://ca/c/1".into(),
        );
        assert!(solver.local_addr().await.is_none());
        solver.present(&chal).await.unwrap();
        let addr = solver.local_addr().await.unwrap();
        let ok = raw_get(addr, "/.well-known/acme-challenge/tok_1").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("tok_1.thumb"));
        let missing = raw_get(addr, "/.well-known/acme-challenge/other").await;
        assert!(missing.starts_with("HTTP/1.1 404"));
        solver.cleanup(&chal).await.unwrap();
        assert!(solver.local_addr().await.is_none());
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        // cleanup twice is harmless
        solver.cleanup(&chal).await.unwrap();
    }

    #[tokio::test]
    async fn refuses_other_challenge_types() {
        let solver = Http01Solver::without_listener(ChallengeTokens::new());
        let chal = Challenge::new(
            Identifier::parse("a.test").unwrap(),
            ChallengeType::Dns01,
            "t".into(),
            "t.k".into(),
            "u".into(),
        );
        assert!(matches!(
            solver.present(&chal).await,
            Err(SolverError::Unsupported(ChallengeType::Dns01))
        ));
    }
}
