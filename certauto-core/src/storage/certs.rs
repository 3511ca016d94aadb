//! The certificate store: each certificate is one atomic record.
//!
//! A certificate and its private key are stored as a single PEM bundle at
//! [`keys::cert_record`] (the key, then the chain, leaf first: the layout
//! HAProxy and others read), written by one [`Storage::store`]. Since
//! `store` is atomic, after any crash the record is the old certificate or
//! the new one, whole: a new key can never be paired with an old chain. It is
//! written under the name's storage lock, through
//! [`Storage::store_fenced`], so a holder that lost the lock (paused past its
//! lease) cannot overwrite the next holder's certificate.
//! Everything else about the certificate (names, validity, issuer) is parsed
//! from the chain when it loads.
//!
//! Storage written by CertAuto 0.1 kept three keys (`.crt`, `.key`, `.json`);
//! they are still read when no record exists, and removed when a record
//! replaces them.

use super::{LockGuard, Storage, StorageError, keys};
use crate::certificate::Certificate;
use crate::error::{CertificateError, Error};
use crate::identifier::Identifier;

/// The PEM label of a private key block contains this.
const PRIVATE_KEY: &str = "PRIVATE KEY";

/// The stored certificate of `primary` from `issuer_key`, if any.
///
/// A record that does not parse, or whose key does not match its leaf, is a
/// [`CertificateError`]: the caller decides to replace it.
pub(crate) async fn load(
    storage: &dyn Storage,
    issuer_key: &str,
    primary: &Identifier,
) -> Result<Option<Certificate>, Error> {
    match storage.load(&keys::cert_record(issuer_key, primary)).await {
        Ok(bundle) => Ok(Some(parse_record(&bundle, issuer_key)?)),
        Err(e) if e.is_not_found() => load_legacy(storage, issuer_key, primary).await,
        Err(e) => Err(e.into()),
    }
}

/// Parses a stored record: UTF-8 PEM, the key then the chain (see [`bundle`]).
pub(crate) fn parse_record(
    bundle: &[u8],
    issuer_key: &str,
) -> Result<Certificate, CertificateError> {
    let bundle = std::str::from_utf8(bundle)
        .map_err(|_| CertificateError::Record("the record is not UTF-8 PEM"))?;
    let (key, chain) = split_bundle(bundle)?;
    Certificate::from_pem(&chain, &key, issuer_key)
}

/// The three-key layout of CertAuto 0.1.
async fn load_legacy(
    storage: &dyn Storage,
    issuer_key: &str,
    primary: &Identifier,
) -> Result<Option<Certificate>, Error> {
    let Some(chain) = load_optional(storage, &keys::legacy_cert_chain(issuer_key, primary)).await?
    else {
        return Ok(None);
    };
    let Some(key) = load_optional(storage, &keys::legacy_cert_key(issuer_key, primary)).await?
    else {
        return Ok(None);
    };
    let chain = String::from_utf8(chain)
        .map_err(|_| CertificateError::Record("the chain is not UTF-8 PEM"))?;
    let key =
        String::from_utf8(key).map_err(|_| CertificateError::Record("the key is not UTF-8 PEM"))?;
    Ok(Some(Certificate::from_pem(&chain, &key, issuer_key)?))
}

async fn load_optional(storage: &dyn Storage, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
    match storage.load(key).await {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stores `cert` as the record of `primary`, in one atomic write fenced by
/// `lock` (the name's storage lock), then removes any legacy keys it
/// replaces while the lock is still held.
pub(crate) async fn store(
    storage: &dyn Storage,
    lock: &LockGuard,
    cert: &Certificate,
    primary: &Identifier,
) -> Result<(), Error> {
    let issuer_key = cert.issuer_key();
    storage
        .store_fenced(
            lock,
            &keys::cert_record(issuer_key, primary),
            bundle(cert).as_bytes(),
        )
        .await?;
    for key in keys::legacy_cert_keys(issuer_key, primary) {
        lock.ensure_held()?;
        delete_if_present(storage, &key).await?;
    }
    Ok(())
}

/// Deletes the stored certificate of `primary` from `issuer_key` (record and
/// legacy keys); a missing one is not an error.
pub(crate) async fn delete(
    storage: &dyn Storage,
    issuer_key: &str,
    primary: &Identifier,
) -> Result<(), Error> {
    delete_if_present(storage, &keys::cert_record(issuer_key, primary)).await?;
    for key in keys::legacy_cert_keys(issuer_key, primary) {
        delete_if_present(storage, &key).await?;
    }
    Ok(())
}

async fn delete_if_present(storage: &dyn Storage, key: &str) -> Result<(), StorageError> {
    match storage.delete(key).await {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// The record's text: the key PEM, then the chain PEM.
pub(crate) fn bundle(cert: &Certificate) -> String {
    let key = cert.key_pem().trim_end();
    let chain = cert.chain_pem().trim_end();
    format!("{key}\n{chain}\n")
}

/// Splits a record into its key PEM and its chain PEM (every other block, in
/// order). Text outside blocks is ignored.
fn split_bundle(bundle: &str) -> Result<(String, String), CertificateError> {
    let mut key = String::new();
    let mut chain = String::new();
    let mut current: Option<&mut String> = None;
    for line in bundle.lines() {
        let line = line.trim_end();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if current.is_some() {
                return Err(CertificateError::Record("a PEM block is not closed"));
            }
            current = Some(if label.contains(PRIVATE_KEY) {
                if !key.is_empty() {
                    return Err(CertificateError::Record("more than one private key"));
                }
                &mut key
            } else {
                &mut chain
            });
        }
        if let Some(out) = current.as_mut() {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END ") {
            current = None;
        }
    }
    if current.is_some() {
        return Err(CertificateError::Record("a PEM block is not closed"));
    }
    if key.is_empty() {
        return Err(CertificateError::Record("no private key"));
    }
    if chain.is_empty() {
        return Err(CertificateError::Record("no certificate"));
    }
    Ok((key, chain))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::issuer::{IssueRequest, Issuer, LocalCa};
    use crate::keys::{CertificateKey, KeyType};
    use crate::storage::MemoryStorage;

    async fn local_cert(storage: &Arc<MemoryStorage>, name: &str) -> Certificate {
        let ca = LocalCa::new(storage.clone());
        let ids = vec![Identifier::parse(name).unwrap()];
        let key = CertificateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr = key.csr(&ids).unwrap();
        let issued = ca.issue(&IssueRequest::new(&ids, &csr)).await.unwrap();
        Certificate::from_pem(&issued.chain_pem, &key.to_pem(), &ca.issuer_key()).unwrap()
    }

    #[tokio::test]
    async fn record_round_trips_in_one_key() {
        let storage = Arc::new(MemoryStorage::new());
        let cert = local_cert(&storage, "a.test").await;
        let id = Identifier::parse("a.test").unwrap();
        let lock = storage.lock("a.test").await.unwrap();
        store(storage.as_ref(), &lock, &cert, &id).await.unwrap();
        let record = storage
            .load(&keys::cert_record(cert.issuer_key(), &id))
            .await
            .unwrap();
        let text = String::from_utf8(record).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        assert_eq!(
            text.matches("-----BEGIN CERTIFICATE-----").count(),
            cert.chain().len()
        );
        let loaded = load(storage.as_ref(), cert.issuer_key(), &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded.serial_hex(), cert.serial_hex());
        assert_eq!(loaded.key_pem().trim(), cert.key_pem().trim());
        delete(storage.as_ref(), cert.issuer_key(), &id)
            .await
            .unwrap();
        assert!(
            load(storage.as_ref(), cert.issuer_key(), &id)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// Storage from CertAuto 0.1 loads, and the first store replaces it.
    #[tokio::test]
    async fn legacy_layout_loads_and_is_replaced() {
        let storage = Arc::new(MemoryStorage::new());
        let cert = local_cert(&storage, "b.test").await;
        let id = Identifier::parse("b.test").unwrap();
        let issuer = cert.issuer_key().to_owned();
        storage
            .store(
                &keys::legacy_cert_chain(&issuer, &id),
                cert.chain_pem().as_bytes(),
            )
            .await
            .unwrap();
        storage
            .store(
                &keys::legacy_cert_key(&issuer, &id),
                cert.key_pem().as_bytes(),
            )
            .await
            .unwrap();
        let loaded = load(storage.as_ref(), &issuer, &id).await.unwrap().unwrap();
        assert_eq!(loaded.serial_hex(), cert.serial_hex());
        let lock = storage.lock("b.test").await.unwrap();
        store(storage.as_ref(), &lock, &loaded, &id).await.unwrap();
        for key in keys::legacy_cert_keys(&issuer, &id) {
            assert!(!storage.exists(&key).await.unwrap(), "{key}");
        }
        assert!(
            load(storage.as_ref(), &issuer, &id)
                .await
                .unwrap()
                .is_some()
        );
    }

    /// A holder that lost the name's lock (paused past its lease, the lock
    /// taken over) cannot overwrite the new holder's record.
    #[tokio::test]
    async fn store_is_fenced_by_the_name_lock() {
        let storage = Arc::new(MemoryStorage::new());
        let stale_cert = local_cert(&storage, "d.test").await;
        let new_cert = local_cert(&storage, "d.test").await;
        let id = Identifier::parse("d.test").unwrap();
        let stale = storage.lock("d.test").await.unwrap();
        storage.expire_lock("d.test");
        let current = storage.lock("d.test").await.unwrap();
        store(storage.as_ref(), &current, &new_cert, &id)
            .await
            .unwrap();
        assert!(matches!(
            store(storage.as_ref(), &stale, &stale_cert, &id).await,
            Err(Error::Storage(StorageError::LockLost(_)))
        ));
        let loaded = load(storage.as_ref(), new_cert.issuer_key(), &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded.serial_hex(), new_cert.serial_hex());
    }

    /// A key that does not match the chain is refused, not served.
    #[tokio::test]
    async fn mismatched_record_is_an_error() {
        let storage = Arc::new(MemoryStorage::new());
        let a = local_cert(&storage, "c.test").await;
        let b = local_cert(&storage, "c.test").await;
        let id = Identifier::parse("c.test").unwrap();
        let mixed = format!("{}\n{}", b.key_pem().trim_end(), a.chain_pem());
        storage
            .store(&keys::cert_record(a.issuer_key(), &id), mixed.as_bytes())
            .await
            .unwrap();
        assert!(matches!(
            load(storage.as_ref(), a.issuer_key(), &id).await,
            Err(Error::Certificate(_))
        ));
    }

    #[test]
    fn bundles_are_split_strictly() {
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let cert = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        let (k, c) = split_bundle(&format!("{key}{cert}{cert}")).unwrap();
        assert_eq!(k, key);
        assert_eq!(c, format!("{cert}{cert}"));
        for bad in [
            cert.to_owned(),
            key.to_owned(),
            format!("{key}{key}{cert}"),
            "-----BEGIN CERTIFICATE-----\nBBBB\n".to_owned(),
            format!("-----BEGIN CERTIFICATE-----\n{key}"),
        ] {
            assert!(split_bundle(&bad).is_err(), "{bad}");
        }
    }
}
