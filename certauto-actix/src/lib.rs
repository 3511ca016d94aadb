//! actix-web integration for CertAuto.
//!
//! This crate will provide `bind_acme` on actix-web's `HttpServer`, with
//! certificates that CertAuto obtains and swaps live. The ACME engine it
//! builds on is [`certauto_core`].

pub use certauto_core;
