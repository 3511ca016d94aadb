//! OCSP stapling ([RFC 6960](https://www.rfc-editor.org/rfc/rfc6960)).
//!
//! For every managed certificate whose Authority Information Access names an
//! OCSP responder, CertAuto fetches a response, verifies it, staples it into
//! the certificate served in handshakes and persists it under `ocsp/` (see
//! [`keys::ocsp_staple`](crate::storage::keys::ocsp_staple)), so a restarted
//! process staples at once. A certificate without an OCSP URL (Let's Encrypt's
//! since 2025) is normal: nothing is fetched and nothing is reported.
//!
//! A response is used only if it verifies ([`verify`]):
//! - `responseStatus` is `successful` and the type is `id-pkix-ocsp-basic`;
//! - it is signed by the issuer, or by a delegated responder whose certificate
//!   the issuer signed, carrying `id-kp-OCSPSigning` and valid now (RSA
//!   PKCS#1 with SHA-256/384/512, ECDSA P-256/P-384);
//! - it holds a `SingleResponse` for this certificate's serial and issuer;
//! - `thisUpdate` is not in the future (5 minutes of skew allowed) and
//!   `nextUpdate` is present and still ahead.
//!
//! Only `good` responses are stapled. A staple is refreshed once half its
//! validity (`thisUpdate` to `nextUpdate`) has passed, by
//! [`Config::check_ocsp`](crate::Config::check_ocsp), which [`start_maintenance`](crate::start_maintenance)
//! runs every [`ocsp_check_interval`](crate::ConfigBuilder::ocsp_check_interval)
//! (default hourly). A `revoked` answer removes the staple, emits
//! [`Event::CertOcspRevoked`](crate::Event::CertOcspRevoked) and reports the certificate to maintenance,
//! which renews it at once (through the normal renewal path, with its lock
//! and retry backoff): [`Config::check_ocsp`](crate::Config::check_ocsp)
//! renews what its pass found, and the task of
//! [`start_maintenance`](crate::start_maintenance) what background fetches find. When no fresh
//! response can be had, a staple that is still valid keeps being served; a
//! stale one is removed. Stapling failures are logged, never fatal.
//!
//! Time comes from the config's [`Clock`](crate::Clock).
//!
//! Stapling needs nothing from this module; the report of a check,
//! [`OcspReport`](crate::OcspReport), is at the crate root. This module holds
//! the protocol pieces for users who check or staple OCSP responses
//! themselves: [`request`] builds an `OCSPRequest`, [`fetch`] sends it,
//! [`verify`] checks the answer as above into an [`OcspResponse`], and
//! [`query`] does all three.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use certauto_core::Config;
//!
//! let config = Config::builder()
//!     .ocsp_check_interval(Duration::from_secs(30 * 60))
//!     .build();
//! config.manage(["example.com"]).await.ok(); // staples at once when it can
//! // What `start_maintenance` runs every `ocsp_check_interval`:
//! let report = config.check_ocsp().await;
//! println!("refreshed {:?}, revoked {:?}", report.refreshed, report.revoked);
//! # }
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::OcspError;

pub(crate) mod staple;
pub(crate) mod verify;

pub use verify::{request, verify};
/// The largest OCSP response accepted, from a responder or from storage.
pub const OCSP_RESPONSE_LIMIT: usize = 64 * 1024;
/// How far in the future `thisUpdate` may be (clock skew between us and the responder).
pub const OCSP_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// The time bound of one request to a responder.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A staple is refreshed once this fraction of its validity has passed (a half).
pub(crate) const REFRESH_DIVISOR: u32 = 2;
const USER_AGENT: &str = concat!("certauto/", env!("CARGO_PKG_VERSION"));

/// Why a certificate was revoked (RFC 5280 §5.3.1 `CRLReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrlReason {
    /// 0
    Unspecified,
    /// 1
    KeyCompromise,
    /// 2
    CaCompromise,
    /// 3
    AffiliationChanged,
    /// 4
    Superseded,
    /// 5
    CessationOfOperation,
    /// 6
    CertificateHold,
    /// 8
    RemoveFromCrl,
    /// 9
    PrivilegeWithdrawn,
    /// 10
    AaCompromise,
}

impl CrlReason {
    /// The reason for an RFC 5280 code (7 is unused).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Unspecified,
            1 => Self::KeyCompromise,
            2 => Self::CaCompromise,
            3 => Self::AffiliationChanged,
            4 => Self::Superseded,
            5 => Self::CessationOfOperation,
            6 => Self::CertificateHold,
            8 => Self::RemoveFromCrl,
            9 => Self::PrivilegeWithdrawn,
            10 => Self::AaCompromise,
            _ => return None,
        })
    }

    /// The RFC 5280 code.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::CertificateHold => 6,
            Self::RemoveFromCrl => 8,
            Self::PrivilegeWithdrawn => 9,
            Self::AaCompromise => 10,
        }
    }
}

/// A certificate's status in a verified OCSP response (RFC 6960 §4.2.1 `CertStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OcspStatus {
    /// Not revoked.
    Good,
    /// Revoked at `time`, for `reason` if the responder gave one.
    Revoked {
        /// The revocation time.
        time: SystemTime,
        /// The reason, if given.
        reason: Option<CrlReason>,
    },
    /// The responder does not know the certificate.
    Unknown,
}

/// A verified OCSP response for one certificate: its DER (what is stapled)
/// and the facts read from it.
#[derive(Clone, PartialEq, Eq)]
pub struct OcspResponse {
    der: Vec<u8>,
    status: OcspStatus,
    produced_at: SystemTime,
    this_update: SystemTime,
    next_update: SystemTime,
}

impl fmt::Debug for OcspResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OcspResponse")
            .field("status", &self.status)
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .field("len", &self.der.len())
            .finish_non_exhaustive()
    }
}

impl OcspResponse {
    /// The DER `OCSPResponse`, as stapled.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate's status.
    pub fn status(&self) -> OcspStatus {
        self.status
    }

    /// When the responder signed the response.
    pub fn produced_at(&self) -> SystemTime {
        self.produced_at
    }

    /// The time at which the status is known to be correct.
    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    /// The time by which newer information will be available; the response
    /// is stale from then on.
    pub fn next_update(&self) -> SystemTime {
        self.next_update
    }

    /// When to fetch a new response: half way from `thisUpdate` to `nextUpdate`.
    pub fn refresh_at(&self) -> SystemTime {
        let validity = self
            .next_update
            .duration_since(self.this_update)
            .unwrap_or(Duration::ZERO);
        self.this_update + validity / REFRESH_DIVISOR
    }
}

// ----- fetching -------------------------------------------------------------

/// Sends `request` (a DER `OCSPRequest`) to the responder at `url` by HTTP
/// POST and returns the DER response body, at most [`OCSP_RESPONSE_LIMIT`]
/// bytes, within a 10 s bound. The response is not verified: see [`verify`].
pub async fn fetch(url: &str, request: &[u8]) -> Result<Vec<u8>, OcspError> {
    let client = crate::acme::http::build_http_client(&[], true, FETCH_TIMEOUT, USER_AGENT)
        .map_err(|e| OcspError::Transport {
            url: url.to_owned(),
            source: Box::new(e),
        })?;
    let transport = |e: reqwest::Error| OcspError::Transport {
        url: url.to_owned(),
        source: Box::new(e),
    };
    let mut resp = client
        .post(url)
        .header("content-type", "application/ocsp-request")
        .header("accept", "application/ocsp-response")
        .body(request.to_vec())
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(OcspError::HttpStatus {
            url: url.to_owned(),
            status,
        });
    }
    let too_large = || OcspError::BodyTooLarge {
        url: url.to_owned(),
        limit: OCSP_RESPONSE_LIMIT,
    };
    if resp
        .content_length()
        .is_some_and(|len| len > OCSP_RESPONSE_LIMIT as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > OCSP_RESPONSE_LIMIT {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Asks each of `urls` in turn for the status of `leaf_der` (issued by
/// `issuer_der`) and returns the first response that verifies at `now`, or
/// the last error.
pub async fn query(
    urls: &[String],
    leaf_der: &[u8],
    issuer_der: &[u8],
    now: SystemTime,
) -> Result<OcspResponse, OcspError> {
    let req = request(leaf_der, issuer_der)?;
    let mut last = OcspError::NoResponder;
    for url in urls {
        match fetch(url, &req).await {
            Ok(body) => match verify(&body, leaf_der, issuer_der, now) {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    tracing::debug!(url = %url, error = %e, "OCSP response rejected");
                    last = e;
                }
            },
            Err(e) => {
                tracing::debug!(url = %url, error = %e, "OCSP request failed");
                last = e;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_reasons() {
        for code in 0..=10u8 {
            match CrlReason::from_code(code) {
                Some(r) => assert_eq!(r.code(), code),
                None => assert_eq!(code, 7),
            }
        }
        assert_eq!(CrlReason::from_code(11), None);
    }

    #[test]
    fn unsuccessful_status_is_typed() {
        // OCSPResponse { responseStatus tryLater(3) }
        let err = verify(&[0x30, 0x03, 0x0a, 0x01, 0x03], b"", b"", SystemTime::now());
        assert!(
            matches!(err, Err(OcspError::Unsuccessful { status: 3 })),
            "{err:?}"
        );
    }
}
