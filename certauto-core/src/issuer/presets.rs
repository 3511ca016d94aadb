//! [`CaPreset`]: what CertAuto knows about the public ACME CAs (documented on the type).

use std::time::Duration;

use crate::ratelimit::RateLimits;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: use it while developing.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// ZeroSSL's ACME directory.
pub const ZEROSSL_DIRECTORY: &str = "https://acme.zerossl.com/v2/DV90";
/// Google Trust Services' production directory.
pub const GOOGLE_TRUST_SERVICES_PRODUCTION: &str = "https://dv.acme-v02.api.pki.goog/directory";
/// Google Trust Services' staging directory.
pub const GOOGLE_TRUST_SERVICES_STAGING: &str = "https://dv.acme-v02.test-api.pki.goog/directory";

const HOUR: u64 = 3600;
const WEEK: u64 = 7 * 24 * HOUR;

/// Whether a CA issues certificates for IP addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpCertificates {
    /// It does not.
    No,
    /// It does, whatever the profile.
    Yes,
    /// Only for orders naming this profile (Let's Encrypt: `shortlived`).
    WithProfile(&'static str),
}

/// [`CaPreset`]: what CertAuto knows about the public ACME CAs.
///
/// A preset names a CA's directory (and its staging directory), whether it
/// requires External Account Binding, whether it issues certificates for IP
/// addresses (and under which profile), and its published rate limits.
/// [`AcmeIssuerBuilder::preset`](crate::AcmeIssuerBuilder::preset) applies
/// one: the directory, the rate limits the issuer's limiter follows, and
/// refusals before any request (an EAB CA without EAB credentials, an IP
/// address the CA or profile cannot certify), as typed
/// [`ConfigError`](crate::ConfigError)s.
///
/// ```no_run
/// use certauto_core::{AcmeIssuer, CaPreset};
///
/// let issuer = AcmeIssuer::builder()
///     .preset(&CaPreset::LETS_ENCRYPT)
///     .email("admin@example.com")
///     .agreed(true)
///     .build();
/// assert_eq!(issuer.ca(), CaPreset::LETS_ENCRYPT.directory);
/// ```
///
/// **Buypass** has no preset: Buypass ended its Go SSL ACME service (no new
/// orders after 15 October 2025, last issuance 31 October 2025; see
/// <https://www.buypass.com/products/tls-ssl-certificates/go-ssl>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaPreset {
    /// A short name for logs and errors (`"Let's Encrypt"`).
    pub name: &'static str,
    /// The ACME directory URL.
    pub directory: &'static str,
    /// The CA's staging (test) directory, if it has one and this is not it.
    pub staging_directory: Option<&'static str>,
    /// Whether new accounts need External Account Binding credentials.
    pub eab_required: bool,
    /// Whether it issues certificates for IP addresses.
    pub ip_certificates: IpCertificates,
    /// Its published rate limits, where it publishes them (`None`: the
    /// limiter uses [`DEFAULT_RATE_LIMIT_EVENTS`](crate::DEFAULT_RATE_LIMIT_EVENTS)
    /// per [`DEFAULT_RATE_LIMIT_WINDOW`](crate::DEFAULT_RATE_LIMIT_WINDOW)).
    pub rate_limits: Option<RateLimits>,
}

/// Let's Encrypt's published limits (<https://letsencrypt.org/docs/rate-limits/>):
/// 300 new orders per account per 3 hours, 50 certificates per registered
/// domain per week, 10 new accounts per IP address per 3 hours; all refilling
/// buckets.
pub(crate) const LETS_ENCRYPT_LIMITS: RateLimits =
    RateLimits::new_orders(300, Duration::from_secs(3 * HOUR))
        .with_certificates_per_domain(50, Duration::from_secs(WEEK))
        .with_accounts_per_ip(10, Duration::from_secs(3 * HOUR));

impl CaPreset {
    /// Let's Encrypt, production: no EAB; IP-address certificates only with
    /// the `shortlived` profile (about 6 days); limits from
    /// <https://letsencrypt.org/docs/rate-limits/> (300 new orders per account
    /// per 3 hours, 50 certificates per registered domain per week).
    pub const LETS_ENCRYPT: CaPreset = CaPreset {
        name: "Let's Encrypt",
        directory: LETS_ENCRYPT_PRODUCTION,
        staging_directory: Some(LETS_ENCRYPT_STAGING),
        eab_required: false,
        ip_certificates: IpCertificates::WithProfile("shortlived"),
        rate_limits: Some(LETS_ENCRYPT_LIMITS),
    };

    /// Let's Encrypt, staging (untrusted certificates, for testing). Its page
    /// (<https://letsencrypt.org/docs/staging-environment/>) says it uses the
    /// production limits with higher values; the production values are used
    /// here, a safe floor.
    pub const LETS_ENCRYPT_STAGING: CaPreset = CaPreset {
        name: "Let's Encrypt (staging)",
        directory: LETS_ENCRYPT_STAGING,
        staging_directory: None,
        eab_required: false,
        ip_certificates: IpCertificates::WithProfile("shortlived"),
        rate_limits: Some(LETS_ENCRYPT_LIMITS),
    };

    /// ZeroSSL: EAB required ([`ZeroSslIssuer`](crate::ZeroSslIssuer) fetches
    /// the credentials with an API key or an e-mail); no IP-address
    /// certificates over ACME; no staging directory. ZeroSSL publishes no ACME
    /// order limits (<https://zerossl.com/documentation/acme/>; only EAB
    /// credential creation is limited per user and day,
    /// <https://zerossl.com/documentation/acme/generate-eab-credentials/>), so
    /// the default limiter applies.
    pub const ZEROSSL: CaPreset = CaPreset {
        name: "ZeroSSL",
        directory: ZEROSSL_DIRECTORY,
        staging_directory: None,
        eab_required: true,
        ip_certificates: IpCertificates::No,
        rate_limits: None,
    };

    /// Google Trust Services (Google Public CA), production: EAB required
    /// (keys from Google Cloud's Public CA API, to be used within 7 days); no
    /// IP-address certificates
    /// (<https://pki.goog/updates/september2025-acme-best-practices.html>).
    /// Google publishes no per-account order numbers (it asks clients to
    /// honour `429` and `Retry-After`, which CertAuto does), so the default
    /// limiter applies.
    pub const GOOGLE_TRUST_SERVICES: CaPreset = CaPreset {
        name: "Google Trust Services",
        directory: GOOGLE_TRUST_SERVICES_PRODUCTION,
        staging_directory: Some(GOOGLE_TRUST_SERVICES_STAGING),
        eab_required: true,
        ip_certificates: IpCertificates::No,
        rate_limits: None,
    };

    /// Google Trust Services, staging: as production, with EAB keys made for
    /// the staging environment.
    pub const GOOGLE_TRUST_SERVICES_STAGING: CaPreset = CaPreset {
        name: "Google Trust Services (staging)",
        directory: GOOGLE_TRUST_SERVICES_STAGING,
        staging_directory: None,
        eab_required: true,
        ip_certificates: IpCertificates::No,
        rate_limits: None,
    };

    /// Every preset, production ones first.
    pub const ALL: [CaPreset; 5] = [
        Self::LETS_ENCRYPT,
        Self::ZEROSSL,
        Self::GOOGLE_TRUST_SERVICES,
        Self::LETS_ENCRYPT_STAGING,
        Self::GOOGLE_TRUST_SERVICES_STAGING,
    ];

    /// The preset whose directory is `url` (trailing `/` ignored), if any.
    pub fn for_directory(url: &str) -> Option<CaPreset> {
        let url = url.trim_end_matches('/');
        Self::ALL
            .into_iter()
            .find(|p| p.directory.eq_ignore_ascii_case(url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_found_by_directory() {
        assert_eq!(
            CaPreset::for_directory(LETS_ENCRYPT_STAGING),
            Some(CaPreset::LETS_ENCRYPT_STAGING)
        );
        assert_eq!(
            CaPreset::for_directory("https://acme.zerossl.com/v2/DV90/"),
            Some(CaPreset::ZEROSSL)
        );
        assert_eq!(CaPreset::for_directory("https://ca.example/dir"), None);
        for p in CaPreset::ALL {
            assert!(p.directory.starts_with("https://"));
            if let Some(s) = p.staging_directory {
                assert!(CaPreset::for_directory(s).is_some(), "{}", p.name);
            }
        }
        let le = CaPreset::LETS_ENCRYPT.rate_limits.map(|l| l.new_orders);
        assert_eq!(le, Some(300));
    }
}
