//! Account keys, JWK thumbprints and JWS signing (RFC 7515, RFC 7638, RFC 8555 §6.2).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;

use crate::error::KeyError;

/// Encodes bytes as unpadded base64url.
pub(crate) fn b64(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

/// The signature algorithm of an ACME account key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AccountKeyType {
    /// ECDSA P-256 with SHA-256 (`ES256`), the default.
    #[default]
    Es256,
    /// ECDSA P-384 with SHA-384 (`ES384`).
    Es384,
    /// Ed25519 (`EdDSA`, RFC 8037).
    EdDsa,
    /// RSA PKCS#1 v1.5 with SHA-256 (`RS256`), 2048-bit when generated.
    /// Generation needs the `rsa` cargo feature; existing keys load without it.
    Rs256,
}

enum Signer {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A JSON Web Key holding only public members, as sent in JWS headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kty")]
pub enum Jwk {
    /// An elliptic-curve key.
    #[serde(rename = "EC")]
    Ec {
        /// `P-256` or `P-384`.
        crv: &'static str,
        /// base64url X coordinate.
        x: String,
        /// base64url Y coordinate.
        y: String,
    },
    /// An octet key pair (Ed25519).
    #[serde(rename = "OKP")]
    Okp {
        /// `Ed25519`.
        crv: &'static str,
        /// base64url public key.
        x: String,
    },
    /// An RSA key.
    #[serde(rename = "RSA")]
    Rsa {
        /// base64url modulus.
        n: String,
        /// base64url public exponent.
        e: String,
    },
}

impl Jwk {
    /// The RFC 7638 thumbprint: base64url(SHA-256(required members in lexicographic order)).
    pub fn thumbprint(&self) -> String {
        // Built by hand so the member order and absence of whitespace are exact.
        let canonical = match self {
            Jwk::Ec { crv, x, y } => {
                format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            Jwk::Okp { crv, x } => format!(r#"{{"crv":"{crv}","kty":"OKP","x":"{x}"}}"#),
            Jwk::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        b64(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }
}

/// An ACME account key pair.
///
/// The private key never appears in `Debug` output or logs.
pub struct AccountKey {
    signer: Signer,
    alg: &'static str,
    pkcs8: Vec<u8>,
    jwk: Jwk,
    thumbprint: String,
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl AccountKey {
    /// Generates a new key of the given type.
    pub fn generate(kind: AccountKeyType) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match kind {
            AccountKeyType::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyError::Generation("ECDSA P-256"))?
                    .as_ref()
                    .to_vec()
            }
            AccountKeyType::Es384 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyError::Generation("ECDSA P-384"))?
                    .as_ref()
                    .to_vec()
            }
            AccountKeyType::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| KeyError::Generation("Ed25519"))?
                .as_ref()
                .to_vec(),
            AccountKeyType::Rs256 => crate::keys::generate_rsa_pkcs8(2048)?,
        };
        Self::from_pkcs8_der(&pkcs8)
    }

    /// Loads a PKCS#8 DER private key (ECDSA P-256/P-384, Ed25519 or RSA).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        if let Ok(kp) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            let jwk = ec_jwk("P-256", kp.public_key().as_ref(), 32)?;
            return Self::assemble(Signer::Ecdsa(kp), "ES256", der, jwk);
        }
        if let Ok(kp) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng)
        {
            let jwk = ec_jwk("P-384", kp.public_key().as_ref(), 48)?;
            return Self::assemble(Signer::Ecdsa(kp), "ES384", der, jwk);
        }
        if let Ok(kp) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let jwk = Jwk::Okp {
                crv: "Ed25519",
                x: b64(kp.public_key().as_ref()),
            };
            return Self::assemble(Signer::Ed25519(kp), "EdDSA", der, jwk);
        }
        if let Ok(kp) = RsaKeyPair::from_pkcs8(der) {
            let parts: ring::rsa::PublicKeyComponents<Vec<u8>> = kp.public().into();
            let jwk = Jwk::Rsa {
                n: b64(strip_leading_zeros(&parts.n)),
                e: b64(strip_leading_zeros(&parts.e)),
            };
            return Self::assemble(Signer::Rsa(kp), "RS256", der, jwk);
        }
        Err(KeyError::Unsupported)
    }

    /// Loads a PEM `PRIVATE KEY` (PKCS#8).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(der)) => Self::from_pkcs8_der(der.secret_pkcs8_der()),
            Ok(_) => Err(KeyError::Unsupported),
            Err(_) => Err(KeyError::InvalidPem),
        }
    }

    fn assemble(signer: Signer, alg: &'static str, der: &[u8], jwk: Jwk) -> Result<Self, KeyError> {
        let thumbprint = jwk.thumbprint();
        let key = Self {
            signer,
            alg,
            pkcs8: der.to_vec(),
            jwk,
            thumbprint,
        };
        key.check_signs()?;
        Ok(key)
    }

    /// Signs a test message and verifies it with the public key: a key read
    /// from storage may parse and still be unable to sign (ring checks an
    /// RSA key's CRT values only when it signs), and an account whose key
    /// cannot sign can do nothing at the CA.
    fn check_signs(&self) -> Result<(), KeyError> {
        use ring::signature::KeyPair as _;
        const MESSAGE: &[u8] = b"certauto: does this key sign?";
        let sig = self.sign(MESSAGE).map_err(|_| KeyError::Inconsistent)?;
        let (algorithm, public): (&dyn signature::VerificationAlgorithm, &[u8]) = match &self.signer
        {
            Signer::Ecdsa(kp) if self.alg == "ES384" => (
                &signature::ECDSA_P384_SHA384_FIXED,
                kp.public_key().as_ref(),
            ),
            Signer::Ecdsa(kp) => (
                &signature::ECDSA_P256_SHA256_FIXED,
                kp.public_key().as_ref(),
            ),
            Signer::Ed25519(kp) => (&signature::ED25519, kp.public_key().as_ref()),
            Signer::Rsa(kp) => (
                &signature::RSA_PKCS1_2048_8192_SHA256,
                kp.public_key().as_ref(),
            ),
        };
        signature::UnparsedPublicKey::new(algorithm, public)
            .verify(MESSAGE, &sig)
            .map_err(|_| KeyError::Inconsistent)
    }

    /// The private key as PKCS#8 PEM. Handle with care: store with mode 0600.
    pub fn to_pem(&self) -> String {
        crate::keys::pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The JWS `alg` value.
    pub fn alg(&self) -> &'static str {
        self.alg
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The RFC 7638 thumbprint of the public key.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The key authorization for a challenge token, RFC 8555 §8.1.
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint)
    }

    /// Signs `message` with this key in JWS form (fixed-size r‖s for ECDSA).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ecdsa(kp) => kp
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Signing),
            Signer::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            Signer::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| KeyError::Signing)?;
                Ok(sig)
            }
        }
    }
}

/// JWK integers are unsigned big-endian without leading zero octets (RFC 7518 §6.3.1).
fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|x| *x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[start..]
}

fn ec_jwk(crv: &'static str, point: &[u8], coord_len: usize) -> Result<Jwk, KeyError> {
    if point.len() != 1 + 2 * coord_len || point[0] != 0x04 {
        return Err(KeyError::Unsupported);
    }
    Ok(Jwk::Ec {
        crv,
        x: b64(&point[1..=coord_len]),
        y: b64(&point[1 + coord_len..]),
    })
}

/// How the JWS identifies its key (RFC 8555 §6.2).
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyId<'a> {
    /// Embed the public key (newAccount, revocation by certificate key).
    Jwk,
    /// Refer to the account URL.
    Kid(&'a str),
}

#[derive(Serialize)]
struct Protected<'a> {
    alg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwk: Option<&'a Jwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    url: &'a str,
}

/// A flattened JSON JWS.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FlattenedJws {
    pub(crate) protected: String,
    pub(crate) payload: String,
    pub(crate) signature: String,
}

/// Signs `payload` (`None` for POST-as-GET) for `url` with `nonce`.
pub(crate) fn sign_jws(
    key: &AccountKey,
    key_id: KeyId<'_>,
    nonce: Option<&str>,
    url: &str,
    payload: Option<&[u8]>,
) -> Result<FlattenedJws, KeyError> {
    let (jwk, kid) = match key_id {
        KeyId::Jwk => (Some(key.jwk()), None),
        KeyId::Kid(kid) => (None, Some(kid)),
    };
    let header = Protected {
        alg: key.alg(),
        jwk,
        kid,
        nonce,
        url,
    };
    let protected = b64(serde_json::to_vec(&header).map_err(|_| KeyError::Signing)?);
    let payload = payload.map(b64).unwrap_or_default();
    let signing_input = format!("{protected}.{payload}");
    let signature = b64(key.sign(signing_input.as_bytes())?);
    Ok(FlattenedJws {
        protected,
        payload,
        signature,
    })
}

/// External Account Binding credentials from the CA (RFC 8555 §7.3.4).
#[derive(Clone)]
pub struct ExternalAccountKey {
    kid: String,
    hmac_key: Vec<u8>,
}

impl fmt::Debug for ExternalAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ExternalAccountKey {
    /// Creates EAB credentials from the key identifier and the MAC key the CA
    /// handed out, in base64url (RFC 4648 §5, what RFC 8555 specifies) or in
    /// standard base64 (§4, `+` and `/`, which some CA consoles show), with
    /// or without `=` padding; surrounding whitespace is ignored. A key mixing
    /// both alphabets, with characters of neither, or empty, is
    /// [`KeyError::InvalidEabKey`].
    ///
    /// ```
    /// use certauto_core::ExternalAccountKey;
    ///
    /// for key in ["-_8", "-_8=", "+/8", "+/8="] {
    ///     assert!(ExternalAccountKey::new("kid", key).is_ok(), "{key}");
    /// }
    /// assert!(ExternalAccountKey::new("kid", "-/8").is_err());
    /// ```
    pub fn new(kid: impl Into<String>, hmac_key: &str) -> Result<Self, KeyError> {
        use base64::engine::general_purpose::STANDARD_NO_PAD;
        let trimmed = hmac_key.trim().trim_end_matches('=');
        let url_safe = trimmed.contains(['-', '_']);
        let standard = trimmed.contains(['+', '/']);
        let decoded = match (url_safe, standard) {
            (true, true) => return Err(KeyError::InvalidEabKey),
            (false, true) => STANDARD_NO_PAD.decode(trimmed),
            _ => B64.decode(trimmed),
        };
        let hmac_key = decoded.map_err(|_| KeyError::InvalidEabKey)?;
        if hmac_key.is_empty() {
            return Err(KeyError::InvalidEabKey);
        }
        Ok(Self {
            kid: kid.into(),
            hmac_key,
        })
    }

    /// The key identifier.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The inner JWS binding `account_jwk` to this external account, for `url` (newAccount).
    pub(crate) fn bind(&self, account_jwk: &Jwk, url: &str) -> Result<FlattenedJws, KeyError> {
        #[derive(Serialize)]
        struct EabHeader<'a> {
            alg: &'static str,
            kid: &'a str,
            url: &'a str,
        }
        let protected = b64(serde_json::to_vec(&EabHeader {
            alg: "HS256",
            kid: &self.kid,
            url,
        })
        .map_err(|_| KeyError::Signing)?);
        let payload = b64(serde_json::to_vec(account_jwk).map_err(|_| KeyError::Signing)?);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.hmac_key);
        let tag = ring::hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
        Ok(FlattenedJws {
            protected,
            payload,
            signature: b64(tag.as_ref()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn d(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 7638 §3.1.
    #[test]
    fn rfc7638_thumbprint() {
        let jwk = Jwk::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// RFC 7515 Appendix A.3: the ES256 example verifies under our JWK
    /// encoding of its key, and a signature we make over the same input verifies too.
    #[test]
    fn rfc7515_es256_example() {
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        let dd = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
        let mut point = vec![4u8];
        point.extend(d(x));
        point.extend(d(y));
        let kp = EcdsaKeyPair::from_private_key_and_public_key(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &d(dd),
            &point,
            &SystemRandom::new(),
        )
        .unwrap();
        let jwk = ec_jwk("P-256", kp.public_key().as_ref(), 32).unwrap();
        assert_eq!(
            jwk,
            Jwk::Ec {
                crv: "P-256",
                x: x.into(),
                y: y.into()
            }
        );
        let signing_input = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let rfc_sig = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
        let public = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point);
        public
            .verify(signing_input.as_bytes(), &d(rfc_sig))
            .unwrap();
        let ours = kp
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        assert_eq!(ours.as_ref().len(), 64);
        public
            .verify(signing_input.as_bytes(), ours.as_ref())
            .unwrap();
    }

    /// RFC 8037 Appendix A.3 and A.4: the Ed25519 thumbprint and the
    /// (deterministic) EdDSA signature, byte for byte.
    #[test]
    fn rfc8037_ed25519_example() {
        let seed = d("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let kp = Ed25519KeyPair::from_seed_and_public_key(&seed, &d(x)).unwrap();
        let jwk = Jwk::Okp {
            crv: "Ed25519",
            x: b64(kp.public_key().as_ref()),
        };
        assert_eq!(
            jwk.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        assert_eq!(
            b64(kp.sign(input.as_bytes())),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    fn verify_jws(key: &AccountKey, jws: &FlattenedJws) {
        let input = format!("{}.{}", jws.protected, jws.payload);
        let sig = d(&jws.signature);
        let (alg, public): (&dyn signature::VerificationAlgorithm, Vec<u8>) = match key.jwk() {
            Jwk::Ec { crv: "P-256", x, y } => {
                let mut p = vec![4];
                p.extend(d(x));
                p.extend(d(y));
                (&signature::ECDSA_P256_SHA256_FIXED, p)
            }
            Jwk::Ec { x, y, .. } => {
                let mut p = vec![4];
                p.extend(d(x));
                p.extend(d(y));
                (&signature::ECDSA_P384_SHA384_FIXED, p)
            }
            Jwk::Okp { x, .. } => (&signature::ED25519, d(x)),
            Jwk::Rsa { .. } => unreachable!("not generated in this test"),
        };
        signature::UnparsedPublicKey::new(alg, public)
            .verify(input.as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn every_key_type_signs_verifiable_jws() {
        for kind in [
            AccountKeyType::Es256,
            AccountKeyType::Es384,
            AccountKeyType::EdDsa,
        ] {
            let key = AccountKey::generate(kind).unwrap();
            let jws = sign_jws(
                &key,
                KeyId::Kid("https://ca/acct/1"),
                Some("nonce1"),
                "https://ca/new-order",
                Some(b"{}"),
            )
            .unwrap();
            verify_jws(&key, &jws);
            let header: serde_json::Value = serde_json::from_slice(&d(&jws.protected)).unwrap();
            assert_eq!(header["alg"], key.alg());
            assert_eq!(header["kid"], "https://ca/acct/1");
            assert_eq!(header["nonce"], "nonce1");
            assert_eq!(header["url"], "https://ca/new-order");
            assert!(header.get("jwk").is_none());
            // POST-as-GET has an empty payload.
            let get = sign_jws(&key, KeyId::Jwk, Some("n"), "https://ca/x", None).unwrap();
            assert_eq!(get.payload, "");
            let header: serde_json::Value = serde_json::from_slice(&d(&get.protected)).unwrap();
            assert!(header["jwk"].is_object());
            verify_jws(&key, &get);
            // PEM round trip keeps the same public key.
            let again = AccountKey::from_pem(&key.to_pem()).unwrap();
            assert_eq!(again.thumbprint(), key.thumbprint());
            assert_eq!(again.alg(), key.alg());
            assert!(!format!("{key:?}").contains(&key.to_pem()[30..60]));
        }
    }

    #[test]
    fn eab_binding_is_hs256_over_the_jwk() {
        let key = AccountKey::generate(AccountKeyType::Es256).unwrap();
        let eab = ExternalAccountKey::new(
            "kid-1",
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
        )
        .unwrap();
        let jws = eab.bind(key.jwk(), "https://ca/new-acct").unwrap();
        let header: serde_json::Value = serde_json::from_slice(&d(&jws.protected)).unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["kid"], "kid-1");
        assert_eq!(header["url"], "https://ca/new-acct");
        let payload: serde_json::Value = serde_json::from_slice(&d(&jws.payload)).unwrap();
        assert_eq!(payload, serde_json::to_value(key.jwk()).unwrap());
        let mac = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &d("zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"),
        );
        ring::hmac::verify(
            &mac,
            format!("{}.{}", jws.protected, jws.payload).as_bytes(),
            &d(&jws.signature),
        )
        .unwrap();
        assert!(ExternalAccountKey::new("k", "!!").is_err());
        assert!(ExternalAccountKey::new("k", "").is_err());
    }

    #[test]
    fn eab_mac_keys_in_every_base64_form_decode_to_the_same_bytes() {
        // 0xfb 0xff 0xbf 0x01 encodes with both alphabet-specific characters.
        let bytes = [0xfb_u8, 0xff, 0xbf, 0x01];
        let forms = [
            "-_-_AQ",    // base64url, no padding
            "-_-_AQ==",  // base64url, padded
            "+/+/AQ",    // standard, no padding
            "+/+/AQ==",  // standard, padded
            " -_-_AQ\n", // whitespace around
        ];
        for form in forms {
            let key = ExternalAccountKey::new("k", form).unwrap();
            assert_eq!(key.hmac_key, bytes, "{form}");
        }
        // Garbage is refused: mixed alphabets, foreign characters, only padding,
        // padding in the middle, an impossible length.
        for bad in ["-/-_AQ", "+_+/AQ", "ab*d", "====", "ab=cd", "A", " "] {
            assert!(ExternalAccountKey::new("k", bad).is_err(), "{bad:?}");
        }
    }

    /// Found by the `account_key` fuzz target: a PKCS#8 RSA key with a
    /// damaged value parses but cannot sign; it is refused on load.
    #[test]
    fn a_key_that_cannot_sign_is_refused() {
        let input = include_bytes!(
            "../../../fuzz/regressions/account_key/crash-912874e54c3941bbc02666fae4f2abfd7861c305"
        );
        // The first byte is the target's mode (1: PKCS#8 DER).
        assert!(matches!(
            AccountKey::from_pkcs8_der(&input[1..]),
            Err(KeyError::Inconsistent)
        ));
    }

    #[test]
    fn key_authorization_is_token_dot_thumbprint() {
        let key = AccountKey::generate(AccountKeyType::Es256).unwrap();
        let ka = key.key_authorization("tok");
        assert_eq!(ka, format!("tok.{}", key.thumbprint()));
        assert_eq!(key.thumbprint().len(), 43);
    }
}
