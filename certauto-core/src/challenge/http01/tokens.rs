//! HTTP-01 tokens and the one responder every HTTP front end uses.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::error::SolverError;
use crate::storage::Storage;

/// The path prefix of HTTP-01 challenges (RFC 8555 §8.3).
pub const HTTP01_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

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
pub(crate) fn is_token(token: &str) -> bool {
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
    /// [`Http01Solver`](super::Http01Solver)'s own listener.
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
