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

mod http01;

pub use http01::Http01Solver;

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

/// HTTP-01 key authorizations by token, shared between solvers and HTTP handlers
/// (such as certauto-tower's `AcmeLayer`) that answer challenges.
#[derive(Debug, Clone, Default)]
pub struct ChallengeTokens {
    inner: Arc<RwLock<HashMap<String, String>>>,
}

impl ChallengeTokens {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the key authorization for `token`.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Forgets `token`.
    pub fn remove(&self, token: &str) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// The key authorization for `token`, if presented.
    pub fn get(&self, token: &str) -> Option<String> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// The key authorization for an HTTP-01 request path, if it is a challenge path
    /// for a presented token.
    pub fn for_path(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PATH_PREFIX)?;
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        self.get(token)
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

    #[test]
    fn tokens_by_path() {
        let t = ChallengeTokens::new();
        t.insert("abc-_1", "abc-_1.x");
        assert_eq!(
            t.for_path("/.well-known/acme-challenge/abc-_1").as_deref(),
            Some("abc-_1.x")
        );
        assert_eq!(t.for_path("/.well-known/acme-challenge/"), None);
        assert_eq!(t.for_path("/.well-known/acme-challenge/../x"), None);
        assert_eq!(t.for_path("/other"), None);
        t.remove("abc-_1");
        assert_eq!(t.get("abc-_1"), None);
    }
}
