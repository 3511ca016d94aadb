//! The storage layout: every key CertAuto reads or writes is built here.
//!
//! ```text
//! certificates/<issuer>/<name>/<name>.pem   the certificate record: PEM key, then chain
//! maintenance/retry/<name>.json              the retry schedule of a failed renewal
//! ocsp/<name>-<hash>                         cached OCSP responses
//! acme/<issuer>/users/<email>/<email>.json   ACME account
//! acme/<issuer>/users/<email>/<email>.key    ACME account key
//! acme/<issuer>/eab/<who>.json               EAB credentials fetched for an API key or e-mail (ZeroSSL)
//! locks/<name>.lock                          lock files with their acquisition's fence (FileStorage)
//! locks/.fences                              the last fence given in this root (FileStorage)
//! local_ca/root.crt, local_ca/root.key       the local CA (see LocalCa)
//! challenges/<type>/<name>/<token>.json      a challenge in progress (DistributedSolver)
//! maintenance/storage_clean.json             when the cluster's next storage cleaning is due
//! ```
//!
//! CertAuto 0.1 stored a certificate as three keys, still read when no
//! record exists (and removed when one replaces them):
//!
//! ```text
//! certificates/<issuer>/<name>/<name>.crt, .key, .json
//! ```
//!
//! `<issuer>` is an [`Issuer::issuer_key`](crate::Issuer::issuer_key), `<name>` an
//! [`Identifier::storage_key`], `<email>` a sanitised e-mail address (or
//! `default` when none is configured).

use crate::identifier::{Identifier, safe_key_component};

/// Prefix of all certificate keys.
pub const CERTIFICATES_PREFIX: &str = "certificates";
/// Prefix of all ACME account keys.
pub const ACME_PREFIX: &str = "acme";
/// Prefix of all OCSP staple keys.
pub const OCSP_PREFIX: &str = "ocsp";
/// Maintenance state (retry schedules).
pub const MAINTENANCE_PREFIX: &str = "maintenance";

/// The folder of one certificate from one issuer.
pub fn cert_dir(issuer_key: &str, name: &Identifier) -> String {
    format!(
        "{CERTIFICATES_PREFIX}/{}/{}",
        safe_key_component(issuer_key),
        name.storage_key()
    )
}

/// The certificate record of `name` from `issuer_key` (one atomic PEM bundle).
pub fn cert_record(issuer_key: &str, name: &Identifier) -> String {
    let n = name.storage_key();
    format!("{}/{n}.pem", cert_dir(issuer_key, name))
}

/// The chain key of the 0.1 layout.
pub(crate) fn legacy_cert_chain(issuer_key: &str, name: &Identifier) -> String {
    let n = name.storage_key();
    format!("{}/{n}.crt", cert_dir(issuer_key, name))
}

/// The private key key of the 0.1 layout.
pub(crate) fn legacy_cert_key(issuer_key: &str, name: &Identifier) -> String {
    let n = name.storage_key();
    format!("{}/{n}.key", cert_dir(issuer_key, name))
}

/// Every key of the 0.1 layout, chain first.
pub(crate) fn legacy_cert_keys(issuer_key: &str, name: &Identifier) -> [String; 3] {
    let n = name.storage_key();
    [
        legacy_cert_chain(issuer_key, name),
        legacy_cert_key(issuer_key, name),
        format!("{}/{n}.json", cert_dir(issuer_key, name)),
    ]
}

/// The key authorization of an HTTP-01 `token` shared through storage (the
/// token is checked to be base64url by the caller).
pub fn challenge_token(token: &str) -> String {
    format!("{CHALLENGE_TOKENS_PREFIX}/{token}")
}

/// Prefix of the challenges in progress kept by
/// [`DistributedSolver`](crate::DistributedSolver).
pub const CHALLENGES_PREFIX: &str = "challenges";

/// The folder of the challenge records of one type for one name: `<name>` is
/// the SNI a TLS-ALPN-01 validator sends, or the identifier's
/// [`Identifier::storage_key`] for other types. `challenge_type` and `name`
/// are made safe as key components.
pub fn challenge_records(challenge_type: &str, name: &str) -> String {
    format!(
        "{CHALLENGES_PREFIX}/{}/{}",
        safe_key_component(challenge_type),
        safe_key_component(name)
    )
}

/// The record of one challenge in progress (the token is checked to be
/// base64url by the caller).
pub fn challenge_record(challenge_type: &str, name: &str, token: &str) -> String {
    format!("{}/{token}.json", challenge_records(challenge_type, name))
}

/// The lock held while stale challenge records are cleaned up.
pub const CHALLENGES_CLEANUP_LOCK: &str = "challenges_cleanup";

/// Prefix of the HTTP-01 key authorizations shared through storage
/// ([`challenge_token`]).
pub const CHALLENGE_TOKENS_PREFIX: &str = "acme/challenge_tokens";

/// The lock held by a storage cleaning pass ([`Config::clean_storage`](crate::Config::clean_storage)).
pub const STORAGE_CLEAN_LOCK: &str = "storage_clean";
/// When the cluster's last storage cleaning ran and the next is due (JSON),
/// written under [`STORAGE_CLEAN_LOCK`].
pub const STORAGE_CLEAN_STATE: &str = "maintenance/storage_clean.json";

/// The local CA's root certificate (PEM).
pub const LOCAL_CA_ROOT_CERT: &str = "local_ca/root.crt";
/// The local CA's root private key (PEM).
pub const LOCAL_CA_ROOT_KEY: &str = "local_ca/root.key";
/// The lock serialising creation of the local CA's root.
pub const LOCAL_CA_ROOT_LOCK: &str = "local_ca";

/// The persisted retry schedule of the certificate whose primary name is `primary`.
pub fn retry_schedule(primary: &Identifier) -> String {
    format!("{MAINTENANCE_PREFIX}/retry/{}.json", primary.storage_key())
}

/// The stored OCSP response of one certificate: `ocsp/<name>-<hash>`, where
/// `<name>` is the certificate's first name and `<hash>` the first 8 bytes of
/// the SHA-256 of its DER (in hex), so each certificate has its own.
pub fn ocsp_staple(name: &Identifier, leaf_der: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, leaf_der);
    let hex: String = hash
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{OCSP_PREFIX}/{}-{hex}", name.storage_key())
}

/// The folder of one ACME account at one CA.
pub fn account_dir(issuer_key: &str, email: Option<&str>) -> String {
    let user = email
        .filter(|e| !e.trim().is_empty())
        .map_or_else(|| "default".to_owned(), safe_key_component);
    format!(
        "{ACME_PREFIX}/{}/users/{user}",
        safe_key_component(issuer_key)
    )
}

/// The JSON record of an ACME account.
pub fn account_record(issuer_key: &str, email: Option<&str>) -> String {
    let dir = account_dir(issuer_key, email);
    let leaf = dir.rsplit('/').next().unwrap_or("default").to_owned();
    format!("{dir}/{leaf}.json")
}

/// The PEM private key of an ACME account.
pub fn account_key(issuer_key: &str, email: Option<&str>) -> String {
    let dir = account_dir(issuer_key, email);
    let leaf = dir.rsplit('/').next().unwrap_or("default").to_owned();
    format!("{dir}/{leaf}.key")
}

/// The EAB credentials an issuer fetched from its CA's API (ZeroSSL) for
/// `who`: `key-<hash of the API key>` or `email-<e-mail>`, never the API key
/// itself. A secret, like every file [`FileStorage`](crate::FileStorage)
/// writes it is private to its owner (0600).
pub fn eab_credentials(issuer_key: &str, who: &str) -> String {
    format!(
        "{ACME_PREFIX}/{}/eab/{}.json",
        safe_key_component(issuer_key),
        safe_key_component(who)
    )
}

/// The name of the lock that serialises work on the certificate for `name`.
pub fn cert_lock(name: &Identifier) -> String {
    format!("cert_{}", name.storage_key())
}

/// The name of the lock that serialises creating an ACME account.
pub fn account_lock(issuer_key: &str, email: Option<&str>) -> String {
    let user = email
        .filter(|e| !e.trim().is_empty())
        .map_or_else(|| "default".to_owned(), safe_key_component);
    format!("account_{}_{user}", safe_key_component(issuer_key))
}

/// Turns a CA directory URL into an issuer key: host, port and path, with every
/// character outside `[a-z0-9._-]` replaced (as certmagic does), for example
/// `acme-v02.api.letsencrypt.org-directory`.
pub fn issuer_key_from_url(url: &str) -> String {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    let key: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    safe_key_component(&key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::validate_key;

    #[test]
    fn ocsp_staple_key() {
        let id = Identifier::parse("*.Example.com").unwrap();
        let key = ocsp_staple(&id, b"leaf");
        assert!(key.starts_with("ocsp/wildcard_.example.com-"), "{key}");
        assert_eq!(key.len(), "ocsp/wildcard_.example.com-".len() + 16);
        assert_ne!(key, ocsp_staple(&id, b"other leaf"));
    }

    #[test]
    fn layout() {
        let id = Identifier::parse("*.Example.com").unwrap();
        let issuer = issuer_key_from_url("https://acme-v02.api.letsencrypt.org/directory");
        assert_eq!(issuer, "acme-v02.api.letsencrypt.org-directory");
        assert_eq!(
            cert_record(&issuer, &id),
            "certificates/acme-v02.api.letsencrypt.org-directory/wildcard_.example.com/wildcard_.example.com.pem"
        );
        assert_eq!(
            account_key(&issuer, Some("Me@Example.com")),
            "acme/acme-v02.api.letsencrypt.org-directory/users/me@example.com/me@example.com.key"
        );
        assert_eq!(
            challenge_record("dns-01", "wildcard_.example.com", "abc"),
            "challenges/dns-01/wildcard_.example.com/abc.json"
        );
        assert_eq!(
            account_record("127.0.0.1-14000-dir", None),
            "acme/127.0.0.1-14000-dir/users/default/default.json"
        );
        for key in [
            cert_record(&issuer, &id),
            retry_schedule(&id),
            account_key(&issuer, Some("../../etc/passwd")),
            account_record(&issuer_key_from_url("https://x/../../y"), Some("/")),
            ocsp_staple(&id, b"der"),
            challenge_record("tls-alpn-01", "A.Example.com", "tok-_1"),
            challenge_record("x/../y", "..", "t"),
        ] {
            validate_key(&key).unwrap();
        }
    }
}
