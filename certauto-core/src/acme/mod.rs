//! The ACME protocol alone ([RFC 8555](https://www.rfc-editor.org/rfc/rfc8555)),
//! for users who drive a CA themselves: directory, nonces, JWS, accounts,
//! orders, authorizations, challenges, certificates and revocation. Policy
//! (retries, scheduling, storage) lives elsewhere: most applications want
//! [`Config`](crate::Config) and [`AcmeIssuer`](crate::AcmeIssuer) instead.
//!
//! The entry points are at the crate root: [`AcmeClient`](crate::AcmeClient)
//! (built with [`AcmeClientBuilder`](crate::AcmeClientBuilder)),
//! [`AccountKey`](crate::AccountKey), [`Problem`](crate::Problem) and
//! [`ProblemType`](crate::ProblemType), [`ChainPreference`](crate::ChainPreference),
//! [`RevocationReason`](crate::RevocationReason). This module holds the rest
//! of the protocol layer, each item once: the RFC's resources and their
//! statuses, account options, orders, ARI windows and chain selection.
//!
//! ```no_run
//! # extern crate certauto_core as certauto;
//! # async fn demo() -> Result<(), certauto::Error> {
//! use std::sync::Arc;
//! use certauto::acme::{NewAccountOptions, OrderStatus};
//! use certauto::{AccountKey, AccountKeyType, AcmeClient, Identifier, LETS_ENCRYPT_STAGING};
//!
//! let client = AcmeClient::builder(LETS_ENCRYPT_STAGING).build().await?;
//! let key = Arc::new(AccountKey::generate(AccountKeyType::Es256)?);
//! let options = NewAccountOptions {
//!     contact: vec!["mailto:admin@example.com".into()],
//!     terms_of_service_agreed: true,
//!     ..Default::default()
//! };
//! let account = client.new_account(key, &options).await?;
//! let names = [Identifier::parse("example.com")?];
//! let order = client.new_order(&account, &names, None).await?;
//! assert_eq!(order.resource.status, OrderStatus::Pending);
//! # Ok(()) }
//! ```

pub(crate) mod chain;
pub(crate) mod client;
pub(crate) mod http;
pub(crate) mod jws;
pub(crate) mod problem;
pub(crate) mod types;

// The items at the crate root are re-exported there from their defining
// submodule (their one public path); the crate itself names them by that
// path too (`crate::acme::client::AcmeClient`).

// Public only here.
pub use chain::{PemChain, select_chain};
pub use client::{Account, ClientLimits, NewAccountOptions, Order, RenewalInfo};
pub use jws::Jwk;
pub use problem::{ACME_ERROR_NS, Subproblem};
pub use types::{
    AccountResource, AccountStatus, AuthorizationResource, AuthorizationStatus, ChallengeResource,
    ChallengeStatus, ChallengeType, Directory, DirectoryMeta, OrderResource, OrderStatus,
    WireIdentifier,
};
