//! [`ZeroSslIssuer`]: certificates from ZeroSSL, EAB credentials fetched from
//! its API (documented on the type).

use std::sync::Arc;

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::presets::CaPreset;
use super::{AcmeIssuer, AcmeIssuerBuilder, IssueRequest, IssuedCertificate, Issuer};
use crate::acme::jws::ExternalAccountKey;
use crate::acme::types::{ChallengeType, RevocationReason};
use crate::certificate::Certificate;
use crate::challenge::DnsError;
use crate::challenge::Solver;
use crate::challenge::dns01::http::{ApiClient, Secret, encode_component};
use crate::error::{Error, KeyError};
use crate::identifier::Identifier;
use crate::ratelimit::RateLimits;
use crate::storage::{FileStorage, MemoryStorage, Storage, keys};

/// ZeroSSL's REST API.
pub const ZEROSSL_API_URL: &str = "https://api.zerossl.com";
const PROVIDER: &str = "zerossl";
const KEY_PATH: &str = "/acme/eab-credentials";
const EMAIL_PATH: &str = "/acme/eab-credentials-email";

/// Why ZeroSSL's EAB credentials could not be obtained. No variant carries
/// the API key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZeroSslError {
    /// Neither an API key nor an e-mail address was given.
    #[error("ZeroSSL needs an API key or an e-mail address to obtain EAB credentials")]
    MissingCredentials,
    /// The request could not be made or its answer not read (bad API URL,
    /// connection, timeout, an answer over the size bound).
    #[error("ZeroSSL EAB credentials request failed")]
    Request(#[source] DnsError),
    /// ZeroSSL answered with an HTTP error status.
    #[error("ZeroSSL answered HTTP {status}{}", describe(*.code, .kind.as_deref()))]
    HttpStatus {
        /// The HTTP status.
        status: u16,
        /// ZeroSSL's error code, if the body held one.
        code: Option<i64>,
        /// ZeroSSL's error type, if the body held one.
        kind: Option<String>,
    },
    /// ZeroSSL refused (`"success": false`), usually with HTTP 200.
    #[error("ZeroSSL refused{}{}", describe(Some(*.code), Some(.kind)), .info.as_deref().map(|i| format!(": {i}")).unwrap_or_default())]
    Refused {
        /// ZeroSSL's error code (e.g. 2904, too many credentials today).
        code: i64,
        /// ZeroSSL's error type (e.g. `invalid_access_key`).
        kind: String,
        /// ZeroSSL's extra information, if any.
        info: Option<String>,
    },
    /// The answer is not what ZeroSSL documents.
    #[error("malformed ZeroSSL answer: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The EAB MAC key ZeroSSL returned (or storage held) does not decode.
    #[error("ZeroSSL's EAB MAC key is unusable")]
    InvalidEabKey(#[source] KeyError),
}

fn describe(code: Option<i64>, kind: Option<&str>) -> String {
    match (code, kind) {
        (Some(c), Some(k)) => format!(" (error {c}, {k})"),
        (Some(c), None) => format!(" (error {c})"),
        (None, Some(k)) => format!(" ({k})"),
        (None, None) => String::new(),
    }
}

/// The EAB credentials as stored (and as ZeroSSL names them).
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEab {
    eab_kid: String,
    eab_hmac_key: String,
}

impl std::fmt::Debug for StoredEab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredEab")
            .field("eab_kid", &self.eab_kid)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ZeroSslIssuer`] (see there).
#[derive(Debug)]
pub struct ZeroSslIssuerBuilder {
    api_key: Option<Secret>,
    email: Option<String>,
    api_url: String,
    api_roots: Vec<CertificateDer<'static>>,
    ca: String,
    storage: Option<Arc<dyn Storage>>,
    acme: AcmeIssuerBuilder,
}

impl ZeroSslIssuerBuilder {
    /// The ZeroSSL API key (from the developer page of a ZeroSSL account):
    /// EAB credentials are fetched for it. Takes precedence over the e-mail.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Secret::new(key.into().trim())).filter(|k| !k.is_empty());
        self
    }

    /// The ACME account's contact e-mail; without an API key, EAB
    /// credentials are fetched for this address.
    pub fn email(mut self, email: impl Into<String>) -> Self {
        let email = email.into().trim().to_owned();
        if !email.is_empty() {
            self.acme = self.acme.email(email.clone());
            self.email = Some(email);
        }
        self
    }

    /// Where the EAB credentials and the ACME account are kept (default:
    /// [`FileStorage`] in the OS data folder).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The ACME directory (default: [`CaPreset::ZEROSSL`]'s); for tests.
    pub fn ca(mut self, directory_url: impl Into<String>) -> Self {
        self.ca = directory_url.into();
        self
    }

    /// The REST API's base URL (default [`ZEROSSL_API_URL`]); `https`
    /// required except on loopback. For tests.
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = url.into();
        self
    }

    /// Extra roots to trust for the ACME server's and the API's HTTPS.
    pub fn trust_roots(mut self, roots: impl IntoIterator<Item = CertificateDer<'static>>) -> Self {
        let roots: Vec<_> = roots.into_iter().collect();
        self.api_roots.extend(roots.iter().cloned());
        self.acme = self.acme.trust_roots(roots);
        self
    }

    /// Whether you agree to ZeroSSL's terms of service (default: yes, as
    /// building a ZeroSSL issuer asks for an account).
    pub fn agreed(mut self, agreed: bool) -> Self {
        self.acme = self.acme.agreed(agreed);
        self
    }

    /// The HTTP-01 solver.
    pub fn http01_solver(mut self, solver: impl Solver + 'static) -> Self {
        self.acme = self.acme.http01_solver(solver);
        self
    }

    /// The TLS-ALPN-01 solver.
    pub fn tls_alpn01_solver(mut self, solver: impl Solver + 'static) -> Self {
        self.acme = self.acme.tls_alpn01_solver(solver);
        self
    }

    /// The DNS-01 solver.
    pub fn dns01_solver(mut self, solver: impl Solver + 'static) -> Self {
        self.acme = self.acme.dns01_solver(solver);
        self
    }

    /// A solver for any challenge type.
    pub fn solver(mut self, challenge: ChallengeType, solver: Arc<dyn Solver>) -> Self {
        self.acme = self.acme.solver(challenge, solver);
        self
    }

    /// Any other setting of the inner [`AcmeIssuerBuilder`] (profile, chain
    /// preference, client limits...). The directory, storage and EAB
    /// credentials are set by [`build`](Self::build).
    pub fn acme(mut self, f: impl FnOnce(AcmeIssuerBuilder) -> AcmeIssuerBuilder) -> Self {
        self.acme = f(self.acme);
        self
    }

    /// Loads the EAB credentials kept in storage, or fetches them from
    /// ZeroSSL and stores them; then builds the issuer (no ACME request is
    /// made until it is first used).
    pub async fn build(self) -> Result<ZeroSslIssuer, Error> {
        let who = match (&self.api_key, &self.email) {
            (Some(key), _) => format!("key-{}", key_hash(key)),
            (None, Some(email)) => format!("email-{email}"),
            (None, None) => return Err(ZeroSslError::MissingCredentials.into()),
        };
        let storage = self.storage.clone().unwrap_or_else(default_storage);
        let issuer_key = keys::issuer_key_from_url(&self.ca);
        let path = keys::eab_credentials(&issuer_key, &who);
        let stored = match storage.load(&path).await {
            Ok(bytes) => match serde_json::from_slice::<StoredEab>(&bytes) {
                Ok(eab) => Some(eab),
                Err(e) => {
                    tracing::warn!(key = %path, error = %e, "stored ZeroSSL EAB credentials unreadable; fetching new ones");
                    None
                }
            },
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let eab = match stored {
            Some(eab) => {
                tracing::debug!(kid = %eab.eab_kid, "using stored ZeroSSL EAB credentials");
                eab
            }
            None => {
                let eab = self.fetch().await?;
                let json = serde_json::to_vec(&eab).map_err(|e| ZeroSslError::Malformed {
                    reason: e.to_string(),
                })?;
                storage.store(&path, &json).await?;
                tracing::info!(kid = %eab.eab_kid, "obtained ZeroSSL EAB credentials");
                eab
            }
        };
        let key = ExternalAccountKey::new(eab.eab_kid.clone(), &eab.eab_hmac_key)
            .map_err(ZeroSslError::InvalidEabKey)?;
        let acme = self
            .acme
            .ca(self.ca)
            .storage(storage)
            .external_account(key)
            .build();
        Ok(ZeroSslIssuer {
            acme,
            eab_kid: eab.eab_kid,
        })
    }

    /// Asks ZeroSSL's API for EAB credentials.
    async fn fetch(&self) -> Result<StoredEab, ZeroSslError> {
        let client = ApiClient::new(PROVIDER, &self.api_url, &self.api_roots)
            .map_err(ZeroSslError::Request)?;
        let secret = self.api_key.as_ref().map(Secret::expose).unwrap_or("");
        let request = match (&self.api_key, &self.email) {
            (Some(key), _) => {
                let path = format!("{KEY_PATH}?access_key={}", encode_component(key.expose()));
                client.request(reqwest::Method::POST, &path)
            }
            (None, Some(email)) => client
                .request(reqwest::Method::POST, EMAIL_PATH)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(format!("email={}", encode_component(email))),
            (None, None) => return Err(ZeroSslError::MissingCredentials),
        };
        let response = client
            .send(request.header(reqwest::header::ACCEPT, "application/json"))
            .await
            .map_err(ZeroSslError::Request)?;
        parse_answer(response.status, &response.body, secret)
    }
}

fn default_storage() -> Arc<dyn Storage> {
    match FileStorage::with_default_root() {
        Ok(fs) => Arc::new(fs),
        Err(e) => {
            tracing::warn!(error = %e, "no default storage folder; keeping ZeroSSL credentials in memory");
            Arc::new(MemoryStorage::new())
        }
    }
}

/// The first 8 bytes of the API key's SHA-256, in hex: names its stored
/// credentials without revealing it.
fn key_hash(key: &Secret) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.expose().as_bytes())
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `text` from the server with the API key cut out, should it be echoed
/// (as sent, or percent-encoded as in the query), then cut to 300
/// characters (after the scrubbing, so no part of the key survives a cut).
fn scrub(text: &str, secret: &str) -> String {
    let scrubbed = if secret.is_empty() {
        text.to_owned()
    } else {
        let encoded = crate::challenge::dns01::http::encode_component(secret);
        text.replace(secret, "<redacted>")
            .replace(&encoded, "<redacted>")
    };
    scrubbed.chars().take(300).collect()
}

/// Reads ZeroSSL's answer (see the module docs for its shapes).
fn parse_answer(status: u16, body: &[u8], secret: &str) -> Result<StoredEab, ZeroSslError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let error = json.as_ref().and_then(|v| v.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(|c| match c {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| scrub(s, secret))
    };
    let kind = text(error.and_then(|e| e.get("type")));
    if !(200..300).contains(&status) {
        return Err(ZeroSslError::HttpStatus { status, code, kind });
    }
    let Some(json) = json.as_ref() else {
        return Err(ZeroSslError::Malformed {
            reason: "the answer is not JSON".into(),
        });
    };
    let success = match json.get("success") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::Number(n)) => n.as_i64().map(|n| n == 1),
        Some(Value::String(s)) => match s.trim() {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        },
        None if error.is_some() => Some(false),
        _ => None,
    };
    match success {
        Some(true) => {}
        Some(false) => {
            return Err(ZeroSslError::Refused {
                code: code.unwrap_or(0),
                kind: kind.unwrap_or_else(|| "unknown".into()),
                info: text(error.and_then(|e| e.get("info"))),
            });
        }
        None => {
            return Err(ZeroSslError::Malformed {
                reason: "no usable \"success\" field".into(),
            });
        }
    }
    let field = |name: &str| {
        json.get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ZeroSslError::Malformed {
                reason: format!("no {name:?}"),
            })
    };
    Ok(StoredEab {
        eab_kid: field("eab_kid")?,
        eab_hmac_key: field("eab_hmac_key")?,
    })
}

/// Certificates from ZeroSSL, whose ACME server requires
/// External Account Binding.
///
/// ZeroSSL hands out EAB credentials through its REST API: with an API key
/// (`POST https://api.zerossl.com/acme/eab-credentials?access_key=KEY`,
/// <https://zerossl.com/documentation/acme/generate-eab-credentials/>), or,
/// without a ZeroSSL account, for an e-mail address
/// (`POST https://api.zerossl.com/acme/eab-credentials-email` with the form
/// field `email`; the endpoint acme.sh and Caddy use, not listed in ZeroSSL's
/// REST docs). Both answer `{"success": true, "eab_kid": "...",
/// "eab_hmac_key": "..."}`, and failures as `{"success": false, "error":
/// {"code": N, "type": "...", "info": ...}}`, often with HTTP 200
/// (<https://zerossl.com/documentation/acme/error-codes/>); `success` may be
/// `true`, `1` or `"1"`.
///
/// [`ZeroSslIssuerBuilder::build`] fetches the credentials once and keeps
/// them in storage ([`keys::eab_credentials`], a private file with
/// [`FileStorage`]), so a restart does not ask again (ZeroSSL's credentials
/// are reusable; their creation is limited per user and day). It then issues
/// through an inner [`AcmeIssuer`] with the [`CaPreset::ZEROSSL`] preset.
///
/// The API key is a secret: it never appears in logs, errors or `Debug`
/// (it travels only in the request's query string, which errors leave out),
/// and the storage key holds a hash of it, not the key.
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// # async fn demo() -> Result<(), certauto::Error> {
/// use std::sync::Arc;
/// use certauto::{Config, FileStorage, ZeroSslIssuer};
///
/// let storage = Arc::new(FileStorage::new("/var/lib/certauto"));
/// let issuer = ZeroSslIssuer::builder()
///     .api_key(std::env::var("ZEROSSL_API_KEY").unwrap_or_default())
///     .email("admin@example.com")
///     .storage(storage.clone())
///     .build()
///     .await?;
/// let config = Config::builder().storage(storage).issuer(issuer).build();
/// # let _ = config;
/// # Ok(()) }
/// ```
///
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ZeroSslIssuer {
    acme: AcmeIssuer,
    eab_kid: String,
}

impl ZeroSslIssuer {
    /// Starts building an issuer.
    pub fn builder() -> ZeroSslIssuerBuilder {
        ZeroSslIssuerBuilder {
            api_key: None,
            email: None,
            api_url: ZEROSSL_API_URL.to_owned(),
            api_roots: Vec::new(),
            ca: CaPreset::ZEROSSL.directory.to_owned(),
            storage: None,
            acme: AcmeIssuer::builder()
                .preset(&CaPreset::ZEROSSL)
                .agreed(true),
        }
    }

    /// The inner ACME issuer.
    pub fn acme(&self) -> &AcmeIssuer {
        &self.acme
    }

    /// The EAB key identifier in use.
    pub fn eab_kid(&self) -> &str {
        &self.eab_kid
    }
}

#[async_trait]
impl Issuer for ZeroSslIssuer {
    fn issuer_key(&self) -> String {
        self.acme.issuer_key()
    }

    fn precheck(&self, names: &[Identifier]) -> Result<(), Error> {
        self.acme.precheck(names)
    }

    fn rate_limits(&self) -> Option<RateLimits> {
        self.acme.rate_limits()
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedCertificate, Error> {
        self.acme.issue(request).await
    }

    async fn renewal_info(
        &self,
        ari_cert_id: &str,
    ) -> Result<Option<crate::acme::RenewalInfo>, Error> {
        self.acme.renewal_info(ari_cert_id).await
    }

    async fn revoke(
        &self,
        certificate: &Certificate,
        reason: Option<RevocationReason>,
    ) -> Result<(), Error> {
        self.acme.revoke(certificate, reason).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_map_to_credentials_or_typed_errors() {
        let ok = br#"{"success": 1, "eab_kid": "kid", "eab_hmac_key": "bWFj"}"#;
        let eab = parse_answer(200, ok, "k").unwrap();
        assert_eq!(
            (eab.eab_kid.as_str(), eab.eab_hmac_key.as_str()),
            ("kid", "bWFj")
        );
        for success in ["true", "\"1\""] {
            let body = format!(r#"{{"success": {success}, "eab_kid": "a", "eab_hmac_key": "b"}}"#);
            assert!(parse_answer(200, body.as_bytes(), "").is_ok(), "{success}");
        }
        let refused = br#"{"success": false, "error": {"code": 2904, "type": "too_many_eab_credentials_created_today", "info": "key SECRET"}}"#;
        match parse_answer(200, refused, "SECRET").unwrap_err() {
            ZeroSslError::Refused { code, kind, info } => {
                assert_eq!(code, 2904);
                assert_eq!(kind, "too_many_eab_credentials_created_today");
                assert_eq!(info.as_deref(), Some("key <redacted>"));
            }
            other => panic!("{other:?}"),
        }
        let unauthorized =
            br#"{"success": false, "error": {"code": 101, "type": "invalid_access_key"}}"#;
        assert!(matches!(
            parse_answer(401, unauthorized, "").unwrap_err(),
            ZeroSslError::HttpStatus {
                status: 401,
                code: Some(101),
                ..
            }
        ));
        assert!(matches!(
            parse_answer(503, b"<html>", "").unwrap_err(),
            ZeroSslError::HttpStatus {
                status: 503,
                code: None,
                kind: None
            }
        ));
        for bad in [&b"<html>"[..], br#"{"success": 1}"#, br#"{"eab_kid": "a"}"#] {
            assert!(
                matches!(
                    parse_answer(200, bad, "").unwrap_err(),
                    ZeroSslError::Malformed { .. }
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_api_key_stays_out_of_debug_and_storage_keys() {
        let builder = ZeroSslIssuer::builder().api_key("sk_live_SECRET");
        assert!(!format!("{builder:?}").contains("SECRET"));
        let hash = key_hash(&Secret::new("sk_live_SECRET"));
        assert_eq!(hash.len(), 16);
        assert!(!hash.contains("SECRET"));
    }
}
