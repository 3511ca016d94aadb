//! The `CERTAUTO_STORAGE*` variables: a folder, or a Redis server shared by a
//! cluster.
//!
//! `CERTAUTO_STORAGE` holding `redis://…` or `rediss://…` selects
//! [`RedisStorage`](crate::RedisStorage) (certauto's cargo feature `redis`;
//! the scheme in any case); any other value without `://` is a folder path,
//! except one that starts like a Redis URL with a typo (`redis:/h`,
//! `redis:h`, `rediss//h`, `valkey:h`), which is an error rather than a
//! folder each instance would keep to itself (`./redis:h` is that folder);
//! any other scheme is an error. `CERTAUTO_STORAGE_PREFIX` sets the Redis key prefix and
//! `CERTAUTO_STORAGE_CA` a PEM file of roots trusted for `rediss://`; both
//! are errors with a folder.
//!
//! A Redis server that cannot be reached when the program starts stops it
//! (after the connect timeout, 5 s) with an error naming `CERTAUTO_STORAGE`:
//! a new instance has nothing cached to serve, and a supervisor restarting
//! it is clearer than a server answering handshakes without certificates.
//! Once started, an instance keeps serving its cached certificates while
//! Redis is away and reconnects on its own.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::{EnvError, bad};
use crate::storage::{FileStorage, Storage};

const VAR: &str = "CERTAUTO_STORAGE";
const PREFIX_VAR: &str = "CERTAUTO_STORAGE_PREFIX";
const CA_VAR: &str = "CERTAUTO_STORAGE_CA";
/// The longest key prefix (as `RedisStorage` accepts).
const MAX_PREFIX: usize = 64;

/// Where certificates, keys and locks live (`CERTAUTO_STORAGE`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StorageSettings {
    /// A folder, opened as a [`FileStorage`].
    Folder(PathBuf),
    /// A Redis server, opened as a `RedisStorage`.
    Redis(RedisSettings),
}

/// A Redis server read from `CERTAUTO_STORAGE*`. Its `Debug` output never
/// shows the URL's credentials.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisSettings {
    url: String,
    /// `CERTAUTO_STORAGE_PREFIX`: the key prefix (unset: certauto's default).
    pub key_prefix: Option<String>,
    /// `CERTAUTO_STORAGE_CA`: extra roots trusted for `rediss://`.
    pub trust_roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("trust_roots", &self.trust_roots.len())
            .finish()
    }
}

impl RedisSettings {
    /// The URL with its user and password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// `url` with anything between `://` and the last `@` replaced by `***`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://***{}", &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Parses `CERTAUTO_STORAGE`, `CERTAUTO_STORAGE_PREFIX` and
/// `CERTAUTO_STORAGE_CA` (already trimmed, empty as unset).
pub(super) fn from_vars(
    var: &impl Fn(&str) -> Option<String>,
) -> Result<StorageSettings, EnvError> {
    let prefix = var(PREFIX_VAR);
    let ca = var(CA_VAR);
    let Some(value) = var(VAR) else {
        only_with_redis(prefix.as_deref(), ca.as_deref())?;
        let root = FileStorage::default_root()
            .ok_or_else(|| bad(VAR, "unset, and no default data folder (HOME) is known"))?;
        return Ok(StorageSettings::Folder(root));
    };
    let Some((scheme, rest)) = value.split_once("://") else {
        if looks_like_a_mistyped_url(&value) {
            return Err(bad(
                VAR,
                format!(
                    "{} looks like a mistyped Redis URL: write redis://host[:port][/db] or \
                     rediss://…; for a folder of that name, start the path with ./",
                    redact_typo(&value)
                ),
            ));
        }
        only_with_redis(prefix.as_deref(), ca.as_deref())?;
        return Ok(StorageSettings::Folder(PathBuf::from(value)));
    };
    // Schemes are case-insensitive (RFC 3986 3.1): `REDIS://` is `redis://`.
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "redis" && scheme != "rediss" {
        return Err(bad(
            VAR,
            format!("unknown scheme {scheme:?}: expected redis://, rediss:// or a folder path"),
        ));
    }
    let value = format!("{scheme}://{rest}");
    check_url(&value)?;
    if let Some(p) = &prefix
        && (p.len() > MAX_PREFIX
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(
            PREFIX_VAR,
            format!("{p:?}: use 1 to {MAX_PREFIX} characters of A-Z a-z 0-9 . _ -"),
        ));
    }
    let trust_roots = match &ca {
        None => Vec::new(),
        Some(_) if scheme == "redis" => {
            return Err(bad(
                CA_VAR,
                "set, but CERTAUTO_STORAGE is not a rediss:// URL",
            ));
        }
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| bad(CA_VAR, format!("{path}: {e}")))?;
            let roots = crate::acme::http::parse_pem_roots(&pem)
                .map_err(|e| bad(CA_VAR, format!("{path}: {e}")))?;
            if roots.is_empty() {
                return Err(bad(CA_VAR, format!("{path}: no PEM certificate in it")));
            }
            roots
        }
    };
    Ok(StorageSettings::Redis(RedisSettings {
        url: value,
        key_prefix: prefix,
        trust_roots,
    }))
}

/// Whether `value` (without `://`) starts like a Redis URL with a typo in
/// its `://` (`redis:/h`, `redis:h`, `rediss//h`, `valkey:h`), which would
/// otherwise become a relative folder: each instance would then keep its own
/// storage, with no shared lock.
fn looks_like_a_mistyped_url(value: &str) -> bool {
    ["redis", "rediss", "valkey", "valkeys"]
        .iter()
        .any(|scheme| {
            value
                .get(..scheme.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
                && value
                    .get(scheme.len()..)
                    .is_some_and(|tail| tail.starts_with(':') || tail.starts_with("//"))
        })
}

/// A mistyped URL with anything up to its last `@` replaced by `***` (it
/// may hold a password).
fn redact_typo(value: &str) -> String {
    match value.rfind('@') {
        Some(at) => format!("***{}", &value[at..]),
        None => value.to_owned(),
    }
}

/// The Redis-only variables are unset.
fn only_with_redis(prefix: Option<&str>, ca: Option<&str>) -> Result<(), EnvError> {
    let reason = "set, but CERTAUTO_STORAGE is a folder, not a redis:// or rediss:// URL";
    if prefix.is_some() {
        return Err(bad(PREFIX_VAR, reason));
    }
    if ca.is_some() {
        return Err(bad(CA_VAR, reason));
    }
    Ok(())
}

/// A Redis URL the `redis` crate accepts (without the feature: refused).
/// The message never shows the URL's credentials.
fn check_url(url: &str) -> Result<(), EnvError> {
    #[cfg(feature = "redis")]
    {
        use redis::IntoConnectionInfo as _;
        if url.contains(char::is_whitespace) || url.into_connection_info().is_err() {
            return Err(bad(
                VAR,
                format!(
                    "{} is not a Redis URL such as redis://[:password@]host[:port][/db]",
                    redact(url)
                ),
            ));
        }
        Ok(())
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = url;
        Err(bad(
            VAR,
            "a Redis URL, but this program was built without certauto's `redis` feature",
        ))
    }
}

impl StorageSettings {
    /// Opens the storage: a folder at once; a Redis server connected and
    /// pinged (bounded by the connect timeout), failing with an error
    /// naming `CERTAUTO_STORAGE` (credentials hidden) when it cannot be
    /// reached.
    pub async fn open(&self) -> Result<Arc<dyn Storage>, EnvError> {
        match self {
            Self::Folder(root) => Ok(Arc::new(FileStorage::new(root))),
            #[cfg(feature = "redis")]
            Self::Redis(redis) => {
                let mut builder =
                    crate::RedisStorage::builder(&redis.url).trust_roots(redis.trust_roots.clone());
                if let Some(prefix) = &redis.key_prefix {
                    builder = builder.key_prefix(prefix);
                }
                let storage = builder.build().await.map_err(|e| {
                    bad(
                        VAR,
                        format!(
                            "Redis at {}: {}",
                            redis.redacted_url(),
                            crate::ErrorChain(&e)
                        ),
                    )
                })?;
                Ok(Arc::new(storage))
            }
            #[cfg(not(feature = "redis"))]
            Self::Redis(_) => Err(bad(
                VAR,
                "a Redis URL, but this program was built without certauto's `redis` feature",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<StorageSettings, EnvError> {
        let map: HashMap<&str, String> = pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        from_vars(&|k: &str| map.get(k).cloned())
    }

    #[test]
    fn folders_and_urls() {
        match parse(&[(VAR, "/var/lib/certauto")]).unwrap() {
            StorageSettings::Folder(p) => assert_eq!(p, PathBuf::from("/var/lib/certauto")),
            other => panic!("{other:?}"),
        }
        #[cfg(feature = "redis")]
        {
            let s = parse(&[
                (VAR, "redis://:s3cret@127.0.0.1:6379/0"),
                (PREFIX_VAR, "shop-1"),
            ])
            .unwrap();
            let StorageSettings::Redis(r) = &s else {
                panic!("{s:?}")
            };
            assert_eq!(r.key_prefix.as_deref(), Some("shop-1"));
            assert_eq!(r.redacted_url(), "redis://***@127.0.0.1:6379/0");
            let debug = format!("{s:?}");
            assert!(!debug.contains("s3cret"), "{debug}");
            assert!(matches!(
                parse(&[(VAR, "rediss://redis.internal:6380")]).unwrap(),
                StorageSettings::Redis(_)
            ));
        }
    }

    /// Without the `redis` feature a Redis URL is refused, naming the
    /// variable and the feature, never taken for a folder.
    #[cfg(not(feature = "redis"))]
    #[test]
    fn redis_urls_need_the_feature() {
        let err = parse(&[(VAR, "redis://:s3cret@127.0.0.1:6379/0")]).unwrap_err();
        assert_eq!(err.var, VAR);
        assert!(err.to_string().contains("`redis` feature"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn bad_values_name_the_variable_and_hide_the_password() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), "not a certificate").unwrap();
        let ca_path = ca.path().to_str().unwrap();
        for (pairs, var) in [
            (vec![(VAR, "redis+foo://:s3cret@h/0")], VAR),
            (vec![(VAR, "http://:s3cret@h/0")], VAR),
            (vec![(VAR, "redis://:s3cret@h:notaport/0")], VAR),
            (
                vec![(VAR, "redis://:s3cret@h/0"), (PREFIX_VAR, "a b")],
                PREFIX_VAR,
            ),
            (
                vec![(VAR, "redis://:s3cret@h/0"), (PREFIX_VAR, "a:b")],
                PREFIX_VAR,
            ),
            (
                vec![(VAR, "redis://:s3cret@h/0"), (PREFIX_VAR, &"x".repeat(65))],
                PREFIX_VAR,
            ),
            (vec![(VAR, "/srv/certs"), (PREFIX_VAR, "p")], PREFIX_VAR),
            (vec![(VAR, "/srv/certs"), (CA_VAR, ca_path)], CA_VAR),
            (
                vec![(VAR, "redis://:s3cret@h/0"), (CA_VAR, ca_path)],
                CA_VAR,
            ),
            (
                vec![
                    (VAR, "rediss://:s3cret@h/0"),
                    (CA_VAR, "/nonexistent/ca.pem"),
                ],
                CA_VAR,
            ),
            (
                vec![(VAR, "rediss://:s3cret@h/0"), (CA_VAR, ca_path)],
                CA_VAR,
            ),
        ] {
            let err = parse(&pairs).unwrap_err();
            assert_eq!(err.var, var, "{pairs:?}: {err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    /// A Redis URL with a typo in its `://` is refused, naming the
    /// variable, rather than silently becoming a relative folder each
    /// instance keeps to itself; folders that merely start with `redis` stay
    /// folders.
    #[test]
    fn mistyped_redis_urls_are_refused_not_folders() {
        for typo in [
            "redis:/127.0.0.1:6379",
            "redis:127.0.0.1",
            "redis:",
            "rediss//h",
            "redis//h:6379/0",
            "rediss:/h",
            "REDIS:/h",
            "Rediss//h",
            "valkey:h",
            "valkeys:/h",
            "VALKEY//h",
            "redis:/:s3cret@h:6379/0",
        ] {
            let err = parse(&[(VAR, typo)]).unwrap_err();
            assert_eq!(err.var, VAR, "{typo}: {err}");
            let message = err.to_string();
            assert!(message.contains("mistyped Redis URL"), "{typo}: {message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
        for folder in [
            "redis",
            "redis-data",
            "redis/certs",
            "rediscerts:x",
            "./redis:h",
            "/srv/redis:/h",
            "valkey-folder",
        ] {
            match parse(&[(VAR, folder)]) {
                Ok(StorageSettings::Folder(p)) => assert_eq!(p, PathBuf::from(folder)),
                other => panic!("{folder}: {other:?}"),
            }
        }
    }

    /// Schemes are case-insensitive: `REDIS://` and `Rediss://` select Redis,
    /// with the scheme written in lower case.
    #[cfg(feature = "redis")]
    #[test]
    fn schemes_in_any_case() {
        for (value, want) in [
            ("REDIS://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("Redis://:s3cret@h/1", "redis://***@h/1"),
            ("RediSS://h:6380", "rediss://h:6380"),
        ] {
            match parse(&[(VAR, value)]).unwrap() {
                StorageSettings::Redis(r) => assert_eq!(r.redacted_url(), want, "{value}"),
                other => panic!("{value}: {other:?}"),
            }
        }
        // A CA file is for rediss:// in any case, and refused for REDIS://.
        let err = parse(&[(VAR, "REDIS://h/0"), (CA_VAR, "/nonexistent/ca.pem")]).unwrap_err();
        assert_eq!(err.var, CA_VAR, "{err}");
        let err = parse(&[(VAR, "VALKEY://h/0")]).unwrap_err();
        assert_eq!(err.var, VAR, "{err}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact("rediss://:p@ss@h/0"), "rediss://***@h/0");
    }

    /// An unreachable server stops the program at start, naming the
    /// variable, without the password.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn unreachable_redis_names_the_variable() {
        // A port nothing listens on: bind, note it, release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://:s3cret@127.0.0.1:{port}/0");
        let settings = parse(&[(VAR, url.as_str())]).unwrap();
        let err = settings.open().await.err().unwrap();
        assert_eq!(err.var, VAR);
        let message = err.to_string();
        assert!(message.contains("127.0.0.1"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}
