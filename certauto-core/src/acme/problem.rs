//! ACME problem documents (RFC 8555 §6.7, RFC 7807).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::acme::types::WireIdentifier;

/// The URN prefix of ACME problem types.
pub const ACME_ERROR_NS: &str = "urn:ietf:params:acme:error:";

/// The type of an ACME problem, [RFC 8555 §6.7](https://www.rfc-editor.org/rfc/rfc8555#section-6.7)
/// plus `alreadyReplaced` from RFC 9773.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemType {
    /// The request specified an account that does not exist.
    AccountDoesNotExist,
    /// The certificate was already revoked.
    AlreadyRevoked,
    /// The certificate named in `replaces` was already replaced (RFC 9773).
    AlreadyReplaced,
    /// The CSR is unacceptable.
    BadCsr,
    /// The client sent an unacceptable anti-replay nonce.
    BadNonce,
    /// The JWS was signed by a public key the server does not support.
    BadPublicKey,
    /// The revocation reason provided is not allowed by the server.
    BadRevocationReason,
    /// The JWS was signed with an algorithm the server does not support.
    BadSignatureAlgorithm,
    /// CAA records forbid the CA from issuing.
    Caa,
    /// Specific error conditions are indicated in the subproblems.
    Compound,
    /// The server could not connect to the validation target.
    Connection,
    /// There was a problem with a DNS query during validation.
    Dns,
    /// The request must include a value for the `externalAccountBinding` field.
    ExternalAccountRequired,
    /// The response received did not match the challenge's requirements.
    IncorrectResponse,
    /// A contact URL for an account was invalid.
    InvalidContact,
    /// The order named a certificate profile the server does not offer
    /// (draft-ietf-acme-profiles).
    InvalidProfile,
    /// The request message was malformed.
    Malformed,
    /// The request attempted to finalize an order that is not ready.
    OrderNotReady,
    /// The request exceeds a rate limit.
    RateLimited,
    /// The server will not issue certificates for the identifier.
    RejectedIdentifier,
    /// The server experienced an internal error.
    ServerInternal,
    /// The server received a TLS error during validation.
    Tls,
    /// The client lacks sufficient authorization.
    Unauthorized,
    /// A contact URL for an account used an unsupported protocol scheme.
    UnsupportedContact,
    /// An identifier is of an unsupported type.
    UnsupportedIdentifier,
    /// Visit the `instance` URL and take the actions specified there.
    UserActionRequired,
    /// Any other type URI, kept verbatim.
    Other(String),
}

impl ProblemType {
    /// Maps a problem type URI to its variant.
    pub fn from_uri(uri: &str) -> Self {
        let Some(short) = uri.strip_prefix(ACME_ERROR_NS) else {
            return ProblemType::Other(uri.to_owned());
        };
        match short {
            "accountDoesNotExist" => Self::AccountDoesNotExist,
            "alreadyRevoked" => Self::AlreadyRevoked,
            "alreadyReplaced" => Self::AlreadyReplaced,
            "badCSR" => Self::BadCsr,
            "badNonce" => Self::BadNonce,
            "badPublicKey" => Self::BadPublicKey,
            "badRevocationReason" => Self::BadRevocationReason,
            "badSignatureAlgorithm" => Self::BadSignatureAlgorithm,
            "caa" => Self::Caa,
            "compound" => Self::Compound,
            "connection" => Self::Connection,
            "dns" => Self::Dns,
            "externalAccountRequired" => Self::ExternalAccountRequired,
            "incorrectResponse" => Self::IncorrectResponse,
            "invalidContact" => Self::InvalidContact,
            "invalidProfile" => Self::InvalidProfile,
            "malformed" => Self::Malformed,
            "orderNotReady" => Self::OrderNotReady,
            "rateLimited" => Self::RateLimited,
            "rejectedIdentifier" => Self::RejectedIdentifier,
            "serverInternal" => Self::ServerInternal,
            "tls" => Self::Tls,
            "unauthorized" => Self::Unauthorized,
            "unsupportedContact" => Self::UnsupportedContact,
            "unsupportedIdentifier" => Self::UnsupportedIdentifier,
            "userActionRequired" => Self::UserActionRequired,
            _ => ProblemType::Other(uri.to_owned()),
        }
    }
}

/// A problem document returned by the CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Problem {
    /// The problem type URI as sent (see [`Problem::kind`]).
    #[serde(rename = "type", default)]
    pub type_uri: String,
    /// Human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// HTTP status the server used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A URL identifying this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Problems about individual identifiers (§6.7.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<Subproblem>,
}

impl Problem {
    /// The typed problem kind.
    pub fn kind(&self) -> ProblemType {
        ProblemType::from_uri(&self.type_uri)
    }

    /// Whether retrying the same request with a fresh nonce may succeed.
    pub fn is_bad_nonce(&self) -> bool {
        self.kind() == ProblemType::BadNonce
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self
            .type_uri
            .strip_prefix(ACME_ERROR_NS)
            .unwrap_or(&self.type_uri);
        write!(f, "{short}")?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        for sub in &self.subproblems {
            write!(f, "; {sub}")?;
        }
        Ok(())
    }
}

/// A problem about one identifier, inside a compound problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Subproblem {
    /// The problem type URI.
    #[serde(rename = "type", default)]
    pub type_uri: String,
    /// Human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The identifier this is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<WireIdentifier>,
}

impl Subproblem {
    /// The typed problem kind.
    pub fn kind(&self) -> ProblemType {
        ProblemType::from_uri(&self.type_uri)
    }
}

impl fmt::Display for Subproblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.identifier {
            write!(f, "{}: ", id.value)?;
        }
        let short = self
            .type_uri
            .strip_prefix(ACME_ERROR_NS)
            .unwrap_or(&self.type_uri);
        write!(f, "{short}")?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example from RFC 8555 §6.7.1.
    #[test]
    fn parses_rfc_compound_example() {
        let json = r#"{
            "type": "urn:ietf:params:acme:error:malformed",
            "detail": "Some of the identifiers requested were rejected",
            "subproblems": [
                {
                    "type": "urn:ietf:params:acme:error:malformed",
                    "detail": "Invalid underscore in DNS name \"_example.org\"",
                    "identifier": {
                        "type": "dns",
                        "value": "_example.org"
                    }
                },
                {
                    "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                    "detail": "This CA will not issue for \"example.net\"",
                    "identifier": {
                        "type": "dns",
                        "value": "example.net"
                    }
                }
            ]
        }"#;
        let p: Problem = serde_json::from_str(json).unwrap();
        assert_eq!(p.kind(), ProblemType::Malformed);
        assert_eq!(p.subproblems.len(), 2);
        assert_eq!(p.subproblems[1].kind(), ProblemType::RejectedIdentifier);
        assert_eq!(
            p.subproblems[1].identifier.as_ref().unwrap().value,
            "example.net"
        );
        let shown = p.to_string();
        assert!(shown.starts_with("malformed: Some of the identifiers"));
        assert!(shown.contains("example.net: rejectedIdentifier"));
    }

    #[test]
    fn unknown_types_are_kept() {
        assert_eq!(
            ProblemType::from_uri("urn:example:x"),
            ProblemType::Other("urn:example:x".into())
        );
        assert_eq!(
            ProblemType::from_uri("urn:ietf:params:acme:error:badNonce"),
            ProblemType::BadNonce
        );
    }
}
