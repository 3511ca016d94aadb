//! Challenge solvers: how CertAuto proves control of a name to the CA.
//!
//! A [`Solver`] makes a challenge answerable ([`present`](Solver::present)),
//! optionally waits until the answer is visible to the CA
//! ([`wait`](Solver::wait), for DNS propagation), and removes it afterwards
//! ([`cleanup`](Solver::cleanup)). [`Http01Solver`] answers HTTP-01 on a
//! listener of its own.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::acme::jws::b64;
use crate::acme::types::ChallengeType;
use crate::error::SolverError;
use crate::identifier::Identifier;

pub(crate) mod distributed;
pub(crate) mod dns01;
pub(crate) mod http01;
pub(crate) mod tls_alpn01;

pub use distributed::{
    CHALLENGE_CLEANUP_INTERVAL, DistributedSolver, STALE_CHALLENGE_AGE, StaleChallenges,
};
pub use dns01::{
    DEFAULT_POLLING_INTERVAL, DEFAULT_PROPAGATION_TIMEOUT, Dns01Solver, Dns01SolverBuilder,
    DnsError, DnsProvider,
};
pub use http01::{
    ChallengeTokens, HTTP01_CONTENT_TYPE, HTTP01_PATH_PREFIX, Http01Answer, Http01Solver,
};
pub use tls_alpn01::{TlsAlpn01Solver, TlsAlpnChallenges};

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
/// - `cleanup` is called once for every `present` that was started, whether
///   it or the validation succeeded or not, and also when the order was
///   cancelled (then from a background task); it MUST NOT fail because the
///   challenge was never presented or is already gone.
/// - Both MUST be cancel-safe: a dropped `present` is followed by `cleanup`.
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

    /// Removes the answer of a challenge another instance of this solver
    /// presented (one that died before its cleanup), from the challenge
    /// alone: called by [`DistributedSolver`]'s stale cleanup. The default
    /// calls [`cleanup`](Self::cleanup); a solver that only removes what it
    /// remembers presenting (as [`Dns01Solver`] does) overrides it. Same
    /// contract as `cleanup`: it MUST NOT fail because the answer is gone.
    async fn cleanup_stale(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.cleanup(challenge).await
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
}
