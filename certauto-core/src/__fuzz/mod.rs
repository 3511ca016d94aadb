//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the
//! regression tests that replay their findings (`tests/fuzz_regressions.rs`).
//!
//! Hidden from the docs and outside any semver promise: each function is a
//! thin door onto a crate-private parser, so the fuzzers exercise the code
//! CertAuto runs rather than a copy of it. See `FUZZING.md` at the
//! repository root.

pub mod targets;

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::acme::client::RenewalInfo;
use crate::certificate::Certificate;
use crate::error::{AcmeError, CertificateError, OcspError};
use crate::identifier::Identifier;
use crate::storage::StorageError;

/// `Retry-After` as the ACME client reads it (delta-seconds or an
/// HTTP-date, capped at one day).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    crate::acme::http::parse_retry_after(value, now)
}

/// One `Link` header value as the ACME client reads it: `(rel, url)` pairs.
pub fn link_header(value: &str) -> Vec<(String, String)> {
    crate::acme::http::parse_link_header(value)
}

/// A `renewalInfo` (ARI) response body.
pub fn renewal_info(body: &[u8]) -> Result<RenewalInfo, AcmeError> {
    crate::acme::client::parse_renewal_info(body, "fuzz:renewal-info", None)
}

/// A stored certificate record (key PEM, then chain PEM), as loading reads it.
pub fn cert_record(bytes: &[u8], issuer_key: &str) -> Result<Certificate, CertificateError> {
    crate::storage::certs::parse_record(bytes, issuer_key)
}

/// The record text CertAuto stores for `cert`.
pub fn cert_record_text(cert: &Certificate) -> String {
    crate::storage::certs::bundle(cert)
}

/// The identifier whose storage key is `key`, as storage cleaning recovers it.
pub fn identifier_from_storage_key(key: &str) -> Option<Identifier> {
    crate::maintain::clean::identifier_from_storage_key(key)
}

/// The name part of an OCSP staple key, as storage cleaning reads it.
pub fn staple_name(key: &str) -> Option<&str> {
    crate::maintain::clean::staple_name(key)
}

/// A string made safe as one storage key component (e-mail addresses, CA URLs).
pub fn safe_key_component(input: &str) -> String {
    crate::identifier::safe_key_component(input)
}

/// The lock file name [`FileStorage`](crate::FileStorage) uses for a lock name.
pub fn lock_file_stem(name: &str) -> Result<String, StorageError> {
    crate::storage::file::lock::lock_file_stem(name)
}

/// Parses an `OCSPResponse` down to its basic response, without checking
/// its signature; returns the number of single responses.
pub fn ocsp_response(der: &[u8]) -> Result<usize, OcspError> {
    crate::ocsp::verify::parse_response_count(der)
}

/// The JSON records CertAuto keeps in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoredRecord {
    /// `acme/<issuer>/users/<email>/<email>.json`.
    Account,
    /// `acme/<issuer>/eab/<who>.json` (ZeroSSL).
    Eab,
    /// `challenges/<type>/<name>/<token>.json` (DistributedSolver).
    Challenge,
    /// `locks/<name>.lock` (FileStorage).
    Lock,
    /// `maintenance/retry/<name>.json`.
    Retry,
    /// `maintenance/storage_clean.json`.
    StorageClean,
    /// `certificates/<issuer>/<name>/<name>.json` (the 0.1 layout).
    CertificateMetadata,
}

impl StoredRecord {
    /// Every record type.
    pub const ALL: [StoredRecord; 7] = [
        StoredRecord::Account,
        StoredRecord::Eab,
        StoredRecord::Challenge,
        StoredRecord::Lock,
        StoredRecord::Retry,
        StoredRecord::StorageClean,
        StoredRecord::CertificateMetadata,
    ];
}

/// Parses `bytes` as the stored record `kind` with the type CertAuto reads
/// it with, then checks that writing it back and reading that gives the
/// same record. `Ok(false)`: refused (as CertAuto would refuse it);
/// `Ok(true)`: accepted and round-tripped; `Err`: the round trip changed it.
pub fn stored_record(kind: StoredRecord, bytes: &[u8]) -> Result<bool, String> {
    match kind {
        StoredRecord::Account => round_trip::<crate::issuer::acme::AccountRecord>(bytes),
        StoredRecord::Eab => round_trip::<crate::issuer::zerossl::StoredEab>(bytes),
        StoredRecord::Challenge => round_trip::<crate::challenge::distributed::Record>(bytes),
        StoredRecord::Lock => round_trip::<crate::storage::file::lock::LockMeta>(bytes),
        StoredRecord::Retry => {
            let accepted = round_trip::<crate::config::retry::RetryState>(bytes)?;
            if let Ok(state) = serde_json::from_slice::<crate::config::retry::RetryState>(bytes) {
                // Whatever the stored time, reading it never panics.
                let _ = state.due_at();
                let _ = state.is_due(SystemTime::UNIX_EPOCH);
            }
            Ok(accepted)
        }
        StoredRecord::StorageClean => round_trip::<crate::maintain::clean::CleanState>(bytes),
        StoredRecord::CertificateMetadata => {
            round_trip::<crate::certificate::CertificateMetadata>(bytes)
        }
    }
}

/// Parse, write, parse, write: both writings must be the same JSON value.
fn round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<bool, String> {
    let Ok(first) = serde_json::from_slice::<T>(bytes) else {
        return Ok(false);
    };
    let written = serde_json::to_vec(&first).map_err(|e| format!("cannot write back: {e}"))?;
    let second: T =
        serde_json::from_slice(&written).map_err(|e| format!("cannot read back: {e}"))?;
    let a = serde_json::to_value(&first).map_err(|e| e.to_string())?;
    let b = serde_json::to_value(&second).map_err(|e| e.to_string())?;
    if a != b {
        return Err(format!("round trip changed the record: {a} became {b}"));
    }
    Ok(true)
}
