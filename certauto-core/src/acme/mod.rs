//! The ACME protocol alone ([RFC 8555](https://www.rfc-editor.org/rfc/rfc8555)):
//! directory, nonces, JWS, accounts, orders, authorizations, challenges,
//! certificates and revocation. Policy (retries, scheduling, storage) lives
//! elsewhere.

pub mod chain;
pub mod client;
pub(crate) mod http;
pub mod jws;
pub mod problem;
pub mod types;

pub use chain::{ChainPreference, PemChain, select_chain};
pub use client::{
    Account, AcmeClient, AcmeClientBuilder, ClientLimits, NewAccountOptions, Order, RenewalInfo,
};
pub use http::{crypto_provider, parse_pem_roots};
pub use jws::{AccountKey, AccountKeyType, ExternalAccountKey, Jwk};
pub use problem::{Problem, ProblemType, Subproblem};
pub use types::*;
