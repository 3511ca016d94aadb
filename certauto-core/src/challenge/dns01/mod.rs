//! DNS-01 (RFC 8555 §8.4): proving control of a name with a TXT record at
//! `_acme-challenge.<name>`, the only challenge that validates wildcards.
//!
//! [`Dns01Solver`] writes the record through a [`DnsProvider`], follows a
//! CNAME at `_acme-challenge.<name>` to the zone it delegates to, waits until
//! every authoritative name server of that zone answers the value, and removes
//! exactly its own value afterwards.

// Used by the providers, which land next.
#[allow(dead_code)]
mod http;
mod provider;

pub use provider::{DnsError, DnsProvider};
