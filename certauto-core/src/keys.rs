//! Certificate keys and certificate signing requests.
//!
//! ```
//! use certauto_core::{CertificateKey, Identifier, KeyType};
//!
//! let key = CertificateKey::generate(KeyType::EcdsaP256).unwrap();
//! let names = Identifier::parse_all(["example.com", "www.example.com"]).unwrap();
//! let csr_der = key.csr(&names).unwrap();
//! assert!(!csr_der.is_empty());
//! ```

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::der::{INTEGER, OCTET_STRING, SEQUENCE, tlv};
use crate::error::KeyError;
use crate::identifier::Identifier;

/// The type of a certificate's private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on P-256 (the default; accepted by every public CA).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// Ed25519. Only for CAs that accept it (Pebble does; Let's Encrypt does not).
    Ed25519,
    /// RSA 2048 (needs the `rsa` cargo feature to generate).
    Rsa2048,
    /// RSA 4096 (needs the `rsa` cargo feature to generate).
    Rsa4096,
}

impl KeyType {
    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::Rsa2048 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa4096 => "rsa4096",
        })
    }
}

/// A certificate's private key.
///
/// The private key never appears in `Debug` output or logs.
pub struct CertificateKey {
    key_pair: rcgen::KeyPair,
    key_type: KeyType,
}

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateKey")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl CertificateKey {
    /// Generates a new key.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let key_pair = match key_type {
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                let bits = if key_type == KeyType::Rsa2048 {
                    2048
                } else {
                    4096
                };
                let der = generate_rsa_pkcs8(bits)?;
                rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
                    &rustls_pki_types::PrivatePkcs8KeyDer::from(der),
                    &rcgen::PKCS_RSA_SHA256,
                )
                .map_err(|_| KeyError::Generation("RSA"))?
            }
            other => rcgen::KeyPair::generate_for(other.algorithm())
                .map_err(|_| KeyError::Generation("certificate"))?,
        };
        Ok(Self { key_pair, key_type })
    }

    /// Loads a PEM private key: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE
    /// KEY`, as OpenSSL and lego write) or PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject as _;
        let der =
            PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError::InvalidPem)?;
        let candidates: Vec<Vec<u8>> = match &der {
            PrivateKeyDer::Pkcs8(k) => vec![k.secret_pkcs8_der().to_vec()],
            PrivateKeyDer::Sec1(k) => [OID_P256, OID_P384]
                .iter()
                .map(|curve| pkcs8_wrap(&[OID_EC_PUBLIC_KEY, curve].concat(), k.secret_sec1_der()))
                .collect(),
            PrivateKeyDer::Pkcs1(k) => vec![pkcs8_wrap(
                &[OID_RSA_ENCRYPTION, DER_NULL].concat(),
                k.secret_pkcs1_der(),
            )],
            _ => return Err(KeyError::Unsupported),
        };
        let key_pair = candidates
            .iter()
            .find_map(|pkcs8| rcgen::KeyPair::try_from(pkcs8.as_slice()).ok())
            .ok_or(KeyError::Unsupported)?;
        let alg = key_pair.algorithm();
        let key_type = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            KeyType::EcdsaP256
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            KeyType::EcdsaP384
        } else if alg == &rcgen::PKCS_ED25519 {
            KeyType::Ed25519
        } else if alg == &rcgen::PKCS_RSA_SHA256 {
            // The modulus length tells 2048 from 4096.
            if key_pair.public_key_raw().len() > 400 {
                KeyType::Rsa4096
            } else {
                KeyType::Rsa2048
            }
        } else {
            return Err(KeyError::Unsupported);
        };
        check_signs(&key_pair, key_type)?;
        Ok(Self { key_pair, key_type })
    }

    /// The key as PKCS#8 PEM. Handle with care: store with mode 0600.
    pub fn to_pem(&self) -> String {
        self.key_pair.serialize_pem()
    }

    /// The key as PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.key_pair.serialize_der()
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData as _;
        self.key_pair.subject_public_key_info()
    }

    /// A DER certificate signing request for `names` (every name a SAN; the
    /// subject CN is the first DNS name when it fits in 64 characters).
    pub fn csr(&self, names: &[Identifier]) -> Result<Vec<u8>, KeyError> {
        let sans: Vec<String> = names.iter().map(|n| n.as_str().into_owned()).collect();
        let mut params =
            rcgen::CertificateParams::new(sans).map_err(|e| KeyError::Csr(e.to_string()))?;
        let mut dn = rcgen::DistinguishedName::new();
        if let Some(Identifier::Dns(first)) = names.first()
            && first.as_str().len() <= 64
        {
            dn.push(rcgen::DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.key_pair)
            .map_err(|e| KeyError::Csr(e.to_string()))?;
        Ok(csr.der().to_vec())
    }

    pub(crate) fn key_pair(&self) -> &rcgen::KeyPair {
        &self.key_pair
    }
}

/// Signs a test message and verifies it with the public key: a key read
/// from storage or a file may parse and still be unable to sign (ring
/// checks an RSA key's CRT values only when it signs), and such a key would
/// fail every TLS handshake instead of being replaced.
fn check_signs(key_pair: &rcgen::KeyPair, key_type: KeyType) -> Result<(), KeyError> {
    use rcgen::SigningKey as _;
    use ring::signature;
    const MESSAGE: &[u8] = b"certauto: does this key sign?";
    let algorithm: &dyn signature::VerificationAlgorithm = match key_type {
        KeyType::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyType::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyType::Ed25519 => &signature::ED25519,
        KeyType::Rsa2048 | KeyType::Rsa4096 => &signature::RSA_PKCS1_2048_8192_SHA256,
    };
    let sig = key_pair.sign(MESSAGE).map_err(|_| KeyError::Inconsistent)?;
    signature::UnparsedPublicKey::new(algorithm, key_pair.public_key_raw())
        .verify(MESSAGE, &sig)
        .map_err(|_| KeyError::Inconsistent)
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const DER_NULL: &[u8] = &[0x05, 0x00];

/// Wraps a SEC1 or PKCS#1 private key in PKCS#8 (RFC 5208) with the given
/// AlgorithmIdentifier contents.
fn pkcs8_wrap(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
    let body = [
        tlv(INTEGER, &[0x00]),
        tlv(SEQUENCE, algorithm),
        tlv(OCTET_STRING, private_key),
    ]
    .concat();
    tlv(SEQUENCE, &body)
}

/// Encodes DER as PEM with the given label.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Generates an RSA key as PKCS#8 DER (needs the `rsa` feature).
#[cfg(feature = "rsa")]
pub(crate) fn generate_rsa_pkcs8(bits: usize) -> Result<Vec<u8>, KeyError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::PrivateKey::new(&mut crypto_common::getrandom::SysRng, bits)
        .map_err(|_| KeyError::Generation("RSA"))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|_| KeyError::Generation("RSA"))?;
    Ok(der.as_bytes().to_vec())
}

/// Generates an RSA key as PKCS#8 DER (needs the `rsa` feature).
#[cfg(not(feature = "rsa"))]
pub(crate) fn generate_rsa_pkcs8(_bits: usize) -> Result<Vec<u8>, KeyError> {
    Err(KeyError::RsaFeatureDisabled)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn csr_carries_every_san_and_a_cn() {
        let key = CertificateKey::generate(KeyType::EcdsaP256).unwrap();
        let names = Identifier::parse_all([
            "example.com",
            "*.example.org",
            "www.example.com",
            "127.0.0.1",
        ])
        .unwrap();
        let der = key.csr(&names).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        let info = &csr.certification_request_info;
        let cn: Vec<_> = info
            .subject
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(cn, vec!["example.com"]);
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for ext in csr.requested_extensions().unwrap() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => dns.push(d.to_string()),
                        GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(dns, vec!["example.com", "*.example.org", "www.example.com"]);
        assert_eq!(ips, vec![vec![127, 0, 0, 1]]);
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            key.key_pair().public_key_raw()
        );
    }

    #[test]
    fn ip_only_csr_has_empty_subject() {
        let key = CertificateKey::generate(KeyType::EcdsaP384).unwrap();
        let der = key.csr(&Identifier::parse_all(["::1"]).unwrap()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
    }

    #[test]
    fn pem_round_trip_keeps_type() {
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519] {
            let key = CertificateKey::generate(kt).unwrap();
            let again = CertificateKey::from_pem(&key.to_pem()).unwrap();
            assert_eq!(again.key_type(), kt);
            assert_eq!(again.public_key_der(), key.public_key_der());
            assert!(!format!("{key:?}").contains("PRIVATE"));
        }
        assert!(CertificateKey::from_pem("garbage").is_err());
    }

    #[cfg(feature = "rsa")]
    #[test]
    fn rsa_keys_generate_and_round_trip() {
        let key = CertificateKey::generate(KeyType::Rsa2048).unwrap();
        assert_eq!(
            CertificateKey::from_pem(&key.to_pem()).unwrap().key_type(),
            KeyType::Rsa2048
        );
    }

    #[cfg(not(feature = "rsa"))]
    #[test]
    fn rsa_without_feature_is_a_clear_error() {
        assert!(matches!(
            CertificateKey::generate(KeyType::Rsa2048),
            Err(KeyError::RsaFeatureDisabled)
        ));
    }

    #[test]
    fn sec1_and_pkcs1_keys_load() {
        // SEC1 "EC PRIVATE KEY" as OpenSSL and lego write it, for P-256 and P-384.
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384] {
            let key = CertificateKey::generate(kt).unwrap();
            let pkcs8 = key.to_pkcs8_der();
            // The SEC1 key is the OCTET STRING inside the PKCS#8 structure: find it
            // by re-wrapping candidates until one round-trips.
            let sec1 = extract_sec1(&pkcs8);
            let pem = pem_encode("EC PRIVATE KEY", &sec1);
            let loaded = CertificateKey::from_pem(&pem).unwrap();
            assert_eq!(loaded.key_type(), kt);
            assert_eq!(loaded.public_key_der(), key.public_key_der());
        }
        assert!(matches!(
            CertificateKey::from_pem(
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
            ),
            Err(KeyError::Unsupported | KeyError::InvalidPem)
        ));
    }

    /// The privateKey OCTET STRING of a PKCS#8 key:
    /// SEQUENCE { INTEGER, SEQUENCE algorithm, OCTET STRING key }.
    fn extract_sec1(pkcs8: &[u8]) -> Vec<u8> {
        let (body, _) = read_tlv(pkcs8);
        let (_, rest) = read_tlv(body);
        let (_, rest) = read_tlv(rest);
        let (key, _) = read_tlv(rest);
        key.to_vec()
    }

    /// Splits a DER TLV into its content and what follows.
    fn read_tlv(b: &[u8]) -> (&[u8], &[u8]) {
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            let len = b[2..2 + n]
                .iter()
                .fold(0usize, |a, x| a * 256 + *x as usize);
            (len, 2 + n)
        };
        (&b[hdr..hdr + len], &b[hdr + len..])
    }

    /// Found by the `certificate_key` fuzz target: an RSA key with a
    /// damaged CRT value parses but cannot sign; it is refused on load.
    #[test]
    fn a_key_that_cannot_sign_is_refused() {
        let pem = include_str!(
            "../../fuzz/regressions/certificate_key/crash-97351902c796f54c86935797f1d7560c10987000"
        );
        assert!(matches!(
            CertificateKey::from_pem(pem),
            Err(KeyError::Inconsistent)
        ));
    }

    #[test]
    fn pem_encoding_wraps_at_64() {
        let pem = pem_encode("TEST", &[0u8; 100]);
        assert!(pem.starts_with("-----BEGIN TEST-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
    }
}
