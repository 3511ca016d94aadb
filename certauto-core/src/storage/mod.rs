//! Persistent storage for certificates, keys, ACME accounts, OCSP staples and locks.
//!
//! Everything CertAuto keeps goes through the [`Storage`]
//! trait (its docs state the contract, locks included), so a cluster of
//! instances that share one storage backend share certificates, accounts and
//! locks. [`FileStorage`] is the default;
//! [`MemoryStorage`] is for tests and single-process use.
//! Those, the errors and the lock guard are at the crate root.
//!
//! This module holds the storage *layout*, for people who write a backend or
//! a tool that reads what CertAuto stored: keys are `/`-separated paths of
//! non-empty components such as
//! `certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.pem`;
//! [`keys`] builds every key CertAuto uses from validated
//! [`Identifier`](crate::Identifier)s, so user input never becomes a path
//! directly, and [`validate_key`] is the check a backend runs first.
//! With the `conformance` feature, `conformance` is the suite a backend runs
//! to show it meets the [`Storage`] contract.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use certauto_core::storage::{keys, validate_key};
//! use certauto_core::{Identifier, MemoryStorage, Storage};
//!
//! let storage = MemoryStorage::new();
//! let key = keys::cert_record("local", &Identifier::parse("example.com")?);
//! validate_key(&key)?;
//! storage.store(&key, b"a PEM bundle: key, then chain").await?;
//! assert_eq!(storage.list("certificates", true).await?, vec![key]);
//! # Ok(()) }
//! ```

pub(crate) mod certs;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub(crate) mod contract;
pub(crate) mod file;
pub mod keys;
pub(crate) mod lock;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod redis_defaults;

// Re-exported at the crate root (their one public path); here for the
// crate's own `crate::storage::…` paths.
pub(crate) use contract::{KeyInfo, Storage, StorageError, TemporariesSweep};
pub(crate) use file::FileStorage;
pub(crate) use lock::{LockGuard, LockLoss};
pub(crate) use memory::MemoryStorage;

/// Checks that a key is a relative `/`-separated path of ordinary components.
///
/// Every backend that maps keys to paths or URLs should call this first.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let invalid = |reason| StorageError::InvalidKey {
        key: key.chars().take(300).collect(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("empty key"));
    }
    if key.len() > 1024 {
        return Err(invalid("key longer than 1024 bytes"));
    }
    if key.contains('\\') || key.contains('\0') {
        return Err(invalid("backslash or NUL in key"));
    }
    for component in key.split('/') {
        match component {
            "" => return Err(invalid("empty component (leading, trailing or double '/')")),
            "." | ".." => return Err(invalid("'.' or '..' component")),
            c if c.chars().any(|ch| ch.is_control()) => {
                return Err(invalid("control character in key"));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_validation() {
        for good in ["a", "a/b", "certificates/x/wildcard_.example.com/y.crt"] {
            validate_key(good).unwrap();
        }
        for bad in [
            "", "/a", "a/", "a//b", "../a", "a/../b", "a/.", "a\\b", "a\0", "a/\nb",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
