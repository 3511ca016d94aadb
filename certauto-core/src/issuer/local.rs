//! [`LocalCa`]: a certificate authority of CertAuto's own, for names no public
//! CA can validate (`localhost`, IP addresses, `.internal`, `.localhost`,
//! `.test`) and for running with no ACME CA configured.
//!
//! Its root certificate and key are generated once and kept in storage
//! (`local_ca/root.crt`, `local_ca/root.key`), so every instance sharing the
//! storage issues under the same root. Trust the root (its path is logged,
//! and [`LocalCa::root_pem`] returns it) to make clients accept the leaves.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{IssueRequest, IssuedCertificate, Issuer};
use crate::acme::types::RevocationReason;
use crate::certificate::Certificate;
use crate::error::{CertificateError, Error, KeyError};
use crate::identifier::Identifier;
use crate::keys::{CertificateKey, KeyType};
use crate::storage::Storage;

/// The issuer key of the local CA.
pub const LOCAL_CA_ISSUER_KEY: &str = "local";
use crate::storage::keys::{
    LOCAL_CA_ROOT_CERT as ROOT_CERT_KEY, LOCAL_CA_ROOT_KEY as ROOT_KEY_KEY,
    LOCAL_CA_ROOT_LOCK as ROOT_LOCK,
};
/// Default lifetime of the leaves the local CA issues.
pub const DEFAULT_LOCAL_LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest local CA leaf lifetime accepted (397 days, the most browsers
/// accept); a longer one is clamped.
pub const MAX_LOCAL_LEAF_LIFETIME: Duration = Duration::from_secs(397 * 24 * 3600);
/// The lifetime of the local CA's root (ten 365-day years).
pub(crate) const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far before now certificates of the local CA start being valid, for
/// clients whose clocks are behind.
pub(crate) const BACKDATE: Duration = Duration::from_secs(3600);
/// The shortest local CA leaf lifetime accepted; a shorter one is raised to it.
pub(crate) const MIN_LOCAL_LEAF_LIFETIME: Duration = Duration::from_secs(60);

/// Whether no public CA can issue for `id` (Caddy's rule): `localhost`, a
/// name under `.localhost`, `.local`, `.internal` or `.home.arpa`, or a
/// loopback, private, link-local or unspecified IP address. With an issuer
/// configured, these names go to the [`LocalCa`].
pub fn is_internal_name(id: &Identifier) -> bool {
    match id {
        Identifier::Ip(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Identifier::Ip(std::net::IpAddr::V6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || ip.to_ipv4_mapped().is_some_and(|v4| {
                    is_internal_name(&Identifier::Ip(std::net::IpAddr::V4(v4)))
                })
        }
        Identifier::Dns(d) => has_suffix(
            d.as_str(),
            &[".localhost", ".local", ".internal", ".home.arpa"],
        ),
    }
}

/// Whether `id` goes to the [`LocalCa`] when no issuer is configured: an
/// [internal name](is_internal_name), or a name under `.test` (RFC 2606).
/// Every other name then goes to Let's Encrypt.
pub fn is_local_name(id: &Identifier) -> bool {
    is_internal_name(id) || matches!(id, Identifier::Dns(d) if has_suffix(d.as_str(), &[".test"]))
}

/// Whether `name` is `localhost`, or one of `suffixes` (with its leading dot
/// stripped), or ends with one of them.
fn has_suffix(name: &str, suffixes: &[&str]) -> bool {
    name == "localhost"
        || suffixes
            .iter()
            .any(|s| name.ends_with(s) || name == &s[1..])
}

struct Root {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

/// Issues certificates from a root kept in storage.
#[derive(Clone)]
pub struct LocalCa {
    storage: Arc<dyn Storage>,
    leaf_lifetime: Duration,
    root: Arc<OnceCell<Arc<Root>>>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("leaf_lifetime", &self.leaf_lifetime)
            .finish_non_exhaustive()
    }
}

fn ca_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    CertificateError::LocalCa(Box::new(e)).into()
}

fn offset(now: time::OffsetDateTime, d: Duration, forward: bool) -> time::OffsetDateTime {
    let d = time::Duration::try_from(d).unwrap_or(time::Duration::DAY);
    let moved = if forward {
        now.checked_add(d)
    } else {
        now.checked_sub(d)
    };
    moved.unwrap_or(now)
}

impl LocalCa {
    /// A local CA keeping its root in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            leaf_lifetime: DEFAULT_LOCAL_LEAF_LIFETIME,
            root: Arc::new(OnceCell::new()),
        }
    }

    /// Sets the lifetime of issued leaves (default 7 days).
    pub fn leaf_lifetime(mut self, lifetime: Duration) -> Self {
        self.leaf_lifetime = lifetime.clamp(MIN_LOCAL_LEAF_LIFETIME, MAX_LOCAL_LEAF_LIFETIME);
        self
    }

    /// The root certificate (PEM) to trust.
    pub async fn root_pem(&self) -> Result<String, Error> {
        Ok(self.root().await?.cert_pem.clone())
    }

    async fn root(&self) -> Result<Arc<Root>, Error> {
        self.root
            .get_or_try_init(|| async {
                let lock = crate::storage::lock::acquire(self.storage.as_ref(), ROOT_LOCK).await?;
                let result = self.load_or_create_root(&lock).await;
                if let Err(e) = lock.release().await {
                    tracing::warn!(error = %crate::ErrorChain(&e), "could not release the local CA lock");
                }
                result.map(Arc::new)
            })
            .await
            .cloned()
    }

    /// Loads the root, or creates it and stores it with writes fenced by
    /// `lock` (the root's lock).
    async fn load_or_create_root(&self, lock: &crate::storage::LockGuard) -> Result<Root, Error> {
        let cert = self.storage.load(ROOT_CERT_KEY).await;
        let key = self.storage.load(ROOT_KEY_KEY).await;
        let root = match (cert, key) {
            (Ok(cert), Ok(key)) => {
                let cert_pem = String::from_utf8(cert).map_err(ca_error)?;
                let key_pem = String::from_utf8(key).map_err(ca_error)?;
                let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|_| KeyError::InvalidPem)?;
                let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, key).map_err(ca_error)?;
                Root { issuer, cert_pem }
            }
            (Err(e), _) | (_, Err(e)) if !e.is_not_found() => return Err(e.into()),
            _ => {
                let key = rcgen::KeyPair::generate().map_err(ca_error)?;
                let mut params =
                    rcgen::CertificateParams::new(Vec::<String>::new()).map_err(ca_error)?;
                let mut dn = rcgen::DistinguishedName::new();
                dn.push(rcgen::DnType::OrganizationName, "CertAuto");
                let suffix: String = crate::acme::jws::b64(random_bytes::<6>());
                dn.push(
                    rcgen::DnType::CommonName,
                    format!("CertAuto Local Root CA {suffix}"),
                );
                params.distinguished_name = dn;
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
                params.key_usages = vec![
                    rcgen::KeyUsagePurpose::KeyCertSign,
                    rcgen::KeyUsagePurpose::CrlSign,
                    rcgen::KeyUsagePurpose::DigitalSignature,
                ];
                let now = time::OffsetDateTime::now_utc();
                params.not_before = offset(now, BACKDATE, false);
                params.not_after = offset(now, ROOT_LIFETIME, true);
                params.serial_number = Some(serial());
                let cert = params.self_signed(&key).map_err(ca_error)?;
                let cert_pem = cert.pem();
                self.storage
                    .store_fenced(lock, ROOT_KEY_KEY, key.serialize_pem().as_bytes())
                    .await?;
                self.storage
                    .store_fenced(lock, ROOT_CERT_KEY, cert_pem.as_bytes())
                    .await?;
                let issuer = rcgen::Issuer::new(params, key);
                Root { issuer, cert_pem }
            }
        };
        match self.storage.local_path(ROOT_CERT_KEY) {
            Some(path) => {
                tracing::info!(path = %path.display(), "local CA root certificate (trust it to accept local certificates)")
            }
            None => tracing::info!(
                key = ROOT_CERT_KEY,
                "local CA root certificate is in storage"
            ),
        }
        Ok(root)
    }

    /// Generates a key and issues a certificate for `names` (a convenience for
    /// tests and tools; [`Config`](crate::Config) normally does this).
    pub async fn issue_for(&self, names: &[Identifier]) -> Result<Certificate, Error> {
        let key = CertificateKey::generate(KeyType::EcdsaP256)?;
        let csr = key.csr(names)?;
        let issued = self.issue(&IssueRequest::new(names, &csr)).await?;
        Ok(Certificate::from_pem(
            &issued.chain_pem,
            &key.to_pem(),
            LOCAL_CA_ISSUER_KEY,
        )?)
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SystemRandom only fails if the OS RNG is unavailable; then fall back to time.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_be_bytes();
        for (o, n) in out.iter_mut().zip(nanos.iter().rev()) {
            *o = *n;
        }
    }
    out
}

fn serial() -> rcgen::SerialNumber {
    let mut bytes = random_bytes::<16>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

#[async_trait]
impl Issuer for LocalCa {
    fn issuer_key(&self) -> String {
        LOCAL_CA_ISSUER_KEY.to_owned()
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedCertificate, Error> {
        let root = self.root().await?;
        let csr_der = rustls_pki_types::CertificateSigningRequestDer::from(request.csr_der);
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der)
            .map_err(|e| KeyError::Csr(e.to_string()))?;
        let mut params = csr.params;
        // The names come from the request, validated; the CSR's are ignored.
        params.subject_alt_names = request
            .names
            .iter()
            .map(|id| match id {
                Identifier::Ip(ip) => Ok(rcgen::SanType::IpAddress(*ip)),
                Identifier::Dns(d) => d
                    .as_str()
                    .to_owned()
                    .try_into()
                    .map(rcgen::SanType::DnsName)
                    .map_err(ca_error),
            })
            .collect::<Result<_, _>>()?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = offset(now, BACKDATE, false);
        params.not_after = offset(now, self.leaf_lifetime, true);
        params.serial_number = Some(serial());
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&root.issuer)
        .map_err(ca_error)?;
        Ok(IssuedCertificate::new(
            format!("{}{}", cert.pem(), root.cert_pem),
            None,
        ))
    }

    async fn revoke(
        &self,
        certificate: &Certificate,
        _reason: Option<RevocationReason>,
    ) -> Result<(), Error> {
        // The local CA publishes no revocation lists: removing the certificate
        // from storage (which Config does) is all revocation means here.
        tracing::info!(serial = %certificate.serial_hex(), "local certificate withdrawn");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn local_names() {
        for local in [
            "localhost",
            "a.localhost",
            "db.internal",
            "x.test",
            "127.0.0.1",
            "::1",
        ] {
            assert!(is_local_name(&Identifier::parse(local).unwrap()), "{local}");
        }
        for public in ["example.com", "testing.com", "internal.example"] {
            assert!(
                !is_local_name(&Identifier::parse(public).unwrap()),
                "{public}"
            );
        }
    }

    #[tokio::test]
    async fn issues_under_a_persistent_root() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let ca = LocalCa::new(storage.clone());
        let cert = ca
            .issue_for(&Identifier::parse_all(["localhost", "127.0.0.1"]).unwrap())
            .await
            .unwrap();
        assert_eq!(cert.names().len(), 2);
        assert_eq!(cert.chain().len(), 2, "leaf and root");
        assert!(cert.ari_cert_id().is_some(), "leaves carry an AKI");
        // A second LocalCa on the same storage uses the same root.
        let again = LocalCa::new(storage);
        assert_eq!(
            again.root_pem().await.unwrap(),
            ca.root_pem().await.unwrap()
        );
        assert!(cert.lifetime() > Duration::from_secs(6 * 24 * 3600));
    }
}
