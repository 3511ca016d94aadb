//! Challenge solvers: how CertAuto proves control of a name to the CA.
//!
//! A [`Solver`] makes a challenge answerable ([`present`](Solver::present)),
//! optionally waits until the answer is visible to the CA
//! ([`wait`](Solver::wait), for DNS propagation), and removes it afterwards
//! ([`cleanup`](Solver::cleanup)). [`Http01Solver`] answers HTTP-01 on a
//! listener of its own.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::acme::jws::b64;
use crate::acme::types::ChallengeType;
use crate::error::SolverError;
use crate::identifier::Identifier;
use crate::storage::Storage;

mod http01;
pub(crate) mod tls_alpn01;

pub use http01::Http01Solver;
pub use tls_alpn01::{TlsAlpn01Solver, TlsAlpnChallenges};

/// The path prefix of HTTP-01 challenges (RFC 8555 §8.3).
pub const HTTP01_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// One challenge to solve, with everything a solver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Challenge {
    /// The identifier being validated (without `*.` for wildcards).
    pub identifier: Identifier,
    /// The challenge type.
    pub challenge_type: ChallengeType,
    /// The CA's token.
    pub token: String,
    /// `token.thumbprint` (RFC 8555 §8.1).
    pub key_authorization: String,
    /// The challenge URL at the CA.
    pub url: String,
}

impl Challenge {
    /// Creates a challenge description.
    pub fn new(
        identifier: Identifier,
        challenge_type: ChallengeType,
        token: String,
        key_authorization: String,
        url: String,
    ) -> Self {
        Self {
            identifier,
            challenge_type,
            token,
            key_authorization,
            url,
        }
    }

    /// The path an HTTP-01 validator requests.
    pub fn http01_path(&self) -> String {
        format!("{HTTP01_PATH_PREFIX}{}", self.token)
    }

    /// The TXT record value for DNS-01: base64url(SHA-256(key authorization)).
    pub fn dns01_value(&self) -> String {
        b64(ring::digest::digest(
            &ring::digest::SHA256,
            self.key_authorization.as_bytes(),
        ))
    }

    /// The TXT record name for DNS-01: `_acme-challenge.<name>`.
    pub fn dns01_record_name(&self) -> String {
        format!("_acme-challenge.{}", self.identifier)
    }
}

/// Solves one kind of challenge.
///
/// # Contract
/// - `present` MUST make the challenge answerable before it returns (or before
///   `wait` returns), and MAY be called concurrently for many challenges.
/// - `cleanup` is called once for every successful `present`, whether the
///   validation succeeded or not, and MUST NOT fail because the challenge was
///   already gone.
#[async_trait]
pub trait Solver: Send + Sync + Debug {
    /// Makes the challenge answerable.
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError>;

    /// Waits until the answer is visible to the CA (DNS propagation). The default returns at once.
    async fn wait(&self, _challenge: &Challenge) -> Result<(), SolverError> {
        Ok(())
    }

    /// Removes the answer.
    async fn cleanup(&self, challenge: &Challenge) -> Result<(), SolverError>;
}

/// HTTP-01 key authorizations by token, shared between solvers and the HTTP
/// handlers that answer challenges (such as certauto-tower's `AcmeLayer`).
///
/// With [`with_storage`](Self::with_storage), presented tokens are also
/// written to the shared [`Storage`], so any instance of a cluster answers a
/// challenge another instance presented (the CA may reach either one).
#[derive(Debug, Clone, Default)]
pub struct ChallengeTokens {
    local: Arc<RwLock<HashMap<String, String>>>,
    storage: Option<Arc<dyn Storage>>,
}

use crate::storage::keys::challenge_token as token_key;

/// What the HTTP-01 responder answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http01Answer {
    /// Not an HTTP-01 request (another method or path): the application's.
    NotChallenge,
    /// A challenge request for an unknown or malformed token: 404, no body.
    NotFound,
    /// 200 with `Content-Type:` [`HTTP01_CONTENT_TYPE`] and this body (none
    /// for `HEAD`).
    KeyAuthorization(String),
}

/// The content type of an HTTP-01 answer.
pub const HTTP01_CONTENT_TYPE: &str = "application/octet-stream";

/// Whether `token` is a well-formed ACME token (base64url characters).
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ChallengeTokens {
    /// An empty, process-local set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also keeps tokens in `storage`, shared by the cluster.
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Records the key authorization for `token` (locally, and in storage if configured).
    pub async fn present(&self, token: &str, key_authorization: &str) -> Result<(), SolverError> {
        if !is_token(token) {
            return Err(SolverError::MalformedToken(
                token.chars().take(64).collect(),
            ));
        }
        self.local
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
        if let Some(storage) = &self.storage {
            storage
                .store(&token_key(token), key_authorization.as_bytes())
                .await
                .map_err(SolverError::Storage)?;
        }
        Ok(())
    }

    /// Forgets `token`.
    pub async fn remove(&self, token: &str) {
        self.local
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
        if let Some(storage) = &self.storage
            && is_token(token)
            && let Err(e) = storage.delete(&token_key(token)).await
            && !e.is_not_found()
        {
            tracing::warn!(error = %e, "could not remove a challenge token from storage");
        }
    }

    /// The key authorization for `token` if this process presented it.
    pub fn get_local(&self, token: &str) -> Option<String> {
        self.local
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// The key authorization for `token`, from this process or from storage.
    pub async fn get(&self, token: &str) -> Option<String> {
        if let Some(found) = self.get_local(token) {
            return Some(found);
        }
        let storage = self.storage.as_ref()?;
        if !is_token(token) {
            return None;
        }
        let bytes = storage.load(&token_key(token)).await.ok()?;
        String::from_utf8(bytes).ok()
    }

    /// Whether tokens are shared through storage.
    pub fn is_shared(&self) -> bool {
        self.storage.is_some()
    }

    /// The one HTTP-01 responder (RFC 8555 §8.3), without waiting when it
    /// can: `None` means the token must be looked up in storage
    /// ([`answer`](Self::answer)). Every HTTP front end decides through this:
    /// certauto-tower's `AcmeLayer`, certauto-actix's challenge route and
    /// [`Http01Solver`]'s own listener.
    pub fn answer_now(&self, method: &http::Method, path: &str) -> Option<Http01Answer> {
        if !(method == http::Method::GET || method == http::Method::HEAD)
            || !path.starts_with(HTTP01_PATH_PREFIX)
        {
            return Some(Http01Answer::NotChallenge);
        }
        let Some(token) = Self::token_from_path(path) else {
            tracing::debug!(path, "malformed ACME HTTP-01 challenge path");
            return Some(Http01Answer::NotFound);
        };
        if let Some(key_authorization) = self.get_local(token) {
            tracing::debug!(token, "answering an ACME HTTP-01 challenge");
            return Some(Http01Answer::KeyAuthorization(key_authorization));
        }
        if self.is_shared() {
            return None;
        }
        tracing::debug!(token, "unknown ACME HTTP-01 challenge token");
        Some(Http01Answer::NotFound)
    }

    /// The HTTP-01 responder's answer to `method` `path`, reading storage
    /// when the token is not in this process (see [`answer_now`](Self::answer_now)).
    pub async fn answer(&self, method: &http::Method, path: &str) -> Http01Answer {
        if let Some(answer) = self.answer_now(method, path) {
            return answer;
        }
        let found = match Self::token_from_path(path) {
            Some(token) => self.get(token).await,
            None => None,
        };
        match found {
            Some(key_authorization) => {
                tracing::debug!(path, "answering an ACME HTTP-01 challenge from storage");
                Http01Answer::KeyAuthorization(key_authorization)
            }
            None => {
                tracing::debug!(path, "unknown ACME HTTP-01 challenge token");
                Http01Answer::NotFound
            }
        }
    }

    /// The token of an HTTP-01 request path, if it is one.
    pub fn token_from_path(path: &str) -> Option<&str> {
        path.strip_prefix(HTTP01_PATH_PREFIX)
            .filter(|t| is_token(t))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dns01_value_is_sha256_of_key_authorization() {
        // RFC 8555 §8.4 example key authorization shape; the value is deterministic.
        let c = Challenge::new(
            Identifier::parse("www.example.org").unwrap(),
            ChallengeType::Dns01,
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA".into(),
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.thumb".into(),
            "https://ca/chall/1".into(),
        );
        assert_eq!(c.dns01_record_name(), "_acme-challenge.www.example.org");
        assert_eq!(c.dns01_value().len(), 43);
        assert_eq!(
            c.http01_path(),
            "/.well-known/acme-challenge/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
        );
    }

    #[tokio::test]
    async fn tokens_by_path_locally_and_through_storage() {
        assert_eq!(
            ChallengeTokens::token_from_path("/.well-known/acme-challenge/abc-_1"),
            Some("abc-_1")
        );
        assert_eq!(
            ChallengeTokens::token_from_path("/.well-known/acme-challenge/"),
            None
        );
        assert_eq!(
            ChallengeTokens::token_from_path("/.well-known/acme-challenge/../x"),
            None
        );
        assert_eq!(ChallengeTokens::token_from_path("/other"), None);

        let storage: Arc<dyn Storage> = Arc::new(crate::MemoryStorage::new());
        let a = ChallengeTokens::new().with_storage(storage.clone());
        let b = ChallengeTokens::new().with_storage(storage);
        a.present("abc-_1", "abc-_1.x").await.unwrap();
        assert_eq!(a.get_local("abc-_1").as_deref(), Some("abc-_1.x"));
        assert_eq!(b.get_local("abc-_1"), None);
        assert_eq!(b.get("abc-_1").await.as_deref(), Some("abc-_1.x"));
        assert!(a.present("../x", "k").await.is_err());
        a.remove("abc-_1").await;
        assert_eq!(b.get("abc-_1").await, None);
        assert_eq!(ChallengeTokens::new().get("nope").await, None);
    }
}
