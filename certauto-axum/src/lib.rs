//! axum integration for CertAuto.
//!
//! This crate will serve an axum `Router` over TLS with certificates that
//! CertAuto obtains and swaps live. The ACME engine it builds on is
//! [`certauto_core`].

pub use certauto_core;
