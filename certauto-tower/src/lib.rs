//! Tower middleware for CertAuto.
//!
//! This crate will hold `AcmeLayer`, which answers
//! `/.well-known/acme-challenge/<token>` in front of any tower service, and the
//! HTTP to HTTPS redirect middleware. Until then, HTTP-01 challenges are
//! answered by [`certauto_core::Http01Solver`] on its own listener.

pub use certauto_core;
