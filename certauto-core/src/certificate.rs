//! A managed certificate: its chain, its key and the facts parsed from it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;

use crate::acme::jws::b64;
use crate::error::CertificateError;
use crate::identifier::Identifier;
use crate::keys::{CertificateKey, KeyType};

/// A certificate with its private key, as obtained and stored.
///
/// The private key never appears in `Debug` output.
#[derive(Clone)]
pub struct Certificate {
    chain_pem: String,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    names: Vec<Identifier>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: Vec<u8>,
    authority_key_id: Option<Vec<u8>>,
    ocsp_urls: Vec<String>,
    key_type: KeyType,
    issuer_key: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("serial", &self.serial_hex())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("issuer_key", &self.issuer_key)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

fn to_system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl Certificate {
    /// Parses a PEM chain (leaf first) and its PEM private key, checking that
    /// the key belongs to the leaf. `issuer_key` names the issuer it came from.
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        issuer_key: &str,
    ) -> Result<Self, CertificateError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| CertificateError::Parse(format!("PEM: {e:?}").into()))?;
        let leaf_der = chain.first().ok_or(CertificateError::Empty)?;
        let (_, leaf) = X509Certificate::from_der(leaf_der)
            .map_err(|e| CertificateError::Parse(Box::new(e)))?;
        let key = CertificateKey::from_pem(key_pem).map_err(CertificateError::InvalidKey)?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.key_pair().public_key_raw() {
            return Err(CertificateError::KeyMismatch);
        }
        let mut names = Vec::new();
        let mut authority_key_id = None;
        let mut ocsp_urls = Vec::new();
        for ext in leaf.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for gn in &san.general_names {
                        let id = match gn {
                            GeneralName::DNSName(d) => Identifier::parse(d).ok(),
                            GeneralName::IPAddress(ip) => ip_from_bytes(ip).map(Identifier::Ip),
                            _ => None,
                        };
                        if let Some(id) = id
                            && !names.contains(&id)
                        {
                            names.push(id);
                        }
                    }
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                ParsedExtension::AuthorityInfoAccess(aia) => {
                    for desc in &aia.accessdescs {
                        if desc.access_method
                            == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP
                            && let GeneralName::URI(uri) = desc.access_location
                        {
                            ocsp_urls.push(uri.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            chain_pem: chain_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            names,
            not_before: to_system_time(leaf.validity().not_before),
            not_after: to_system_time(leaf.validity().not_after),
            serial: leaf.raw_serial().to_vec(),
            authority_key_id,
            ocsp_urls,
            key_type: key.key_type(),
            issuer_key: issuer_key.to_owned(),
            chain,
        })
    }

    /// The PEM chain, leaf first.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The PEM private key. Handle with care.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The DER chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `from_pem` refuses an empty chain.
        &self.chain[0]
    }

    /// The names (SANs) the certificate covers.
    pub fn names(&self) -> &[Identifier] {
        &self.names
    }

    /// Whether the certificate covers `id` (exactly or through a wildcard SAN).
    pub fn covers(&self, id: &Identifier) -> bool {
        self.names.iter().any(|n| match (n, id) {
            (Identifier::Dns(have), Identifier::Dns(want)) => have.matches(want),
            (a, b) => a == b,
        })
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The serial number's DER content octets.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// The serial number in lower-case hex, without leading zero bytes.
    pub fn serial_hex(&self) -> String {
        let trimmed: &[u8] = match self.serial.iter().position(|b| *b != 0) {
            Some(i) => &self.serial[i..],
            None => &self.serial[self.serial.len().saturating_sub(1)..],
        };
        trimmed.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The ARI CertID (RFC 9773 §4.1), when the certificate has an Authority Key Identifier.
    pub fn ari_cert_id(&self) -> Option<String> {
        let aki = self.authority_key_id.as_ref()?;
        Some(format!("{}.{}", b64(aki), b64(&self.serial)))
    }

    /// OCSP responder URLs from the AIA extension.
    pub fn ocsp_urls(&self) -> &[String] {
        &self.ocsp_urls
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The issuer this certificate came from.
    pub fn issuer_key(&self) -> &str {
        &self.issuer_key
    }

    /// The lifetime (not_after - not_before).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether the certificate is due for renewal at `now` by the renewal
    /// ratio: less than [`renewal_ratio_for`]`(lifetime, ratio)` of its
    /// lifetime remains (the default is 1/3; a short-lived certificate
    /// renews at half its life). See [`renewal_time`](Self::renewal_time).
    pub fn needs_renewal(&self, now: SystemTime, ratio: f64) -> bool {
        now >= self.renewal_time(ratio)
    }

    /// When the certificate is due for renewal by the renewal ratio: when
    /// less than [`renewal_ratio_for`]`(lifetime, ratio)` of its lifetime
    /// remains. Maintenance uses the same rule when the CA gives no ARI
    /// window.
    pub fn renewal_time(&self, ratio: f64) -> SystemTime {
        renewal_time(self.not_before, self.not_after, ratio)
    }

    /// Whether the certificate has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// The metadata stored beside the certificate.
    pub fn metadata(&self) -> CertificateMetadata {
        CertificateMetadata {
            names: self.names.iter().map(|n| n.as_str().into_owned()).collect(),
            issuer_key: self.issuer_key.clone(),
            key_type: self.key_type,
            serial: self.serial_hex(),
            not_before: unix(self.not_before),
            not_after: unix(self.not_after),
            ari_cert_id: self.ari_cert_id(),
        }
    }
}

/// Certificates living at most this long are short-lived (Let's Encrypt's
/// `shortlived` profile gives about 6 days): they renew at
/// [`SHORT_LIVED_RENEWAL_RATIO`] of their life rather than at the configured
/// ratio, leaving time to retry before they expire.
pub const SHORT_LIVED_MAX_LIFETIME: Duration = Duration::from_secs(10 * 24 * 3600);

/// The renewal ratio of short-lived certificates: renew when half the
/// lifetime remains.
pub const SHORT_LIVED_RENEWAL_RATIO: f64 = 0.5;

/// The renewal ratio for a certificate living `lifetime`, given the
/// configured `ratio` ([`ConfigBuilder::renewal_window_ratio`](crate::ConfigBuilder::renewal_window_ratio)):
/// at least [`SHORT_LIVED_RENEWAL_RATIO`] for a lifetime of at most
/// [`SHORT_LIVED_MAX_LIFETIME`], the configured ratio otherwise.
///
/// This is the one place the decision is made: [`Certificate::needs_renewal`],
/// [`Certificate::renewal_time`] and maintenance's fallback when the CA gives
/// no ARI window all use it.
///
/// ```
/// use std::time::Duration;
/// use certauto_core::{DEFAULT_RENEWAL_RATIO, renewal_ratio_for};
///
/// let six_days = Duration::from_secs(6 * 24 * 3600);
/// let ninety_days = Duration::from_secs(90 * 24 * 3600);
/// assert_eq!(renewal_ratio_for(six_days, DEFAULT_RENEWAL_RATIO), 0.5);
/// assert_eq!(renewal_ratio_for(ninety_days, DEFAULT_RENEWAL_RATIO), DEFAULT_RENEWAL_RATIO);
/// ```
pub fn renewal_ratio_for(lifetime: Duration, ratio: f64) -> f64 {
    if lifetime <= SHORT_LIVED_MAX_LIFETIME {
        ratio.max(SHORT_LIVED_RENEWAL_RATIO)
    } else {
        ratio
    }
}

/// When a certificate valid over `[not_before, not_after]` is due by the
/// ratio (see [`renewal_ratio_for`]).
pub(crate) fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    ratio: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let ratio = renewal_ratio_for(lifetime, ratio);
    let ratio = if ratio.is_finite() {
        ratio.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // not_before + (1 - ratio) * lifetime.
    not_before
        .checked_add(lifetime.mul_f64(1.0 - ratio))
        .unwrap_or(not_after)
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The JSON metadata stored beside a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CertificateMetadata {
    /// The SANs.
    pub names: Vec<String>,
    /// The issuer key.
    pub issuer_key: String,
    /// The key type.
    pub key_type: KeyType,
    /// The serial number (hex).
    pub serial: String,
    /// Not before (Unix seconds).
    pub not_before: i64,
    /// Not after (Unix seconds).
    pub not_after: i64,
    /// The ARI CertID, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_cert_id: Option<String>,
}
