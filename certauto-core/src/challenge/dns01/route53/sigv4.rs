//! AWS Signature Version 4 for request headers
//! (<https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html>),
//! HMAC-SHA256 and SHA-256 from ring.
//!
//! Scope: what Route 53 needs. The canonical URI is the path URI-encoded
//! once per segment (our paths hold unreserved characters only, so it is
//! the path sent); the canonical query sorts the URI-encoded pairs; the
//! signed headers are `host`, `x-amz-date`, `x-amz-security-token` when a
//! session token is used, and any extra ones given.

use std::fmt::Write as _;
use std::time::SystemTime;

use ring::{digest, hmac};

/// The credentials and scope one signature is made with.
pub(crate) struct Credentials<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret_access_key: &'a str,
    pub(crate) session_token: Option<&'a str>,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
}

/// The request parts a signature covers.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    /// The `Host` header as sent (`route53.amazonaws.com`, `127.0.0.1:8080`).
    pub(crate) host: &'a str,
    /// The path, not encoded (`/2013-04-01/hostedzone/Z1/rrset`).
    pub(crate) path: &'a str,
    /// The query parameters, not encoded, in any order.
    pub(crate) query: &'a [(&'a str, &'a str)],
    /// Further headers to sign (name, value), sent as given.
    pub(crate) headers: &'a [(&'a str, &'a str)],
    pub(crate) payload: &'a [u8],
}

/// The headers to add to a request: `X-Amz-Date`, `Authorization` and,
/// with a session token, `X-Amz-Security-Token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signed {
    pub(crate) amz_date: String,
    pub(crate) authorization: String,
    /// For tests: the canonical request that was signed.
    pub(crate) canonical_request: String,
}

/// `YYYYMMDDTHHMMSSZ` for `at` (UTC).
pub(crate) fn amz_date(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters
/// (`A-Za-z0-9-_.~`) kept, every other byte as `%XX` (upper case), `/`
/// kept only when `keep_slash`.
pub(crate) fn uri_encode(input: &str, keep_slash: bool) -> String {
    // The shared encoder follows the same rules.
    crate::challenge::dns01::http::encode_except(input, if keep_slash { b"/" } else { b"" })
}

/// The canonical query string: each name and value encoded, pairs sorted.
/// It is also the query string to send, so both match.
pub(crate) fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// A header value as SigV4 canonicalises it: trimmed, inner runs of spaces
/// made one.
fn canonical_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Signs `request` with `credentials` at time `at`.
pub(crate) fn sign(credentials: &Credentials<'_>, request: &Request<'_>, at: SystemTime) -> Signed {
    let amz_date = amz_date(at);
    let date = amz_date.get(..8).unwrap_or_default();

    let mut headers: Vec<(String, String)> = vec![
        ("host".to_owned(), canonical_value(request.host)),
        ("x-amz-date".to_owned(), amz_date.clone()),
    ];
    if let Some(token) = credentials.session_token {
        headers.push(("x-amz-security-token".to_owned(), canonical_value(token)));
    }
    for (name, value) in request.headers {
        headers.push((name.to_ascii_lowercase(), canonical_value(value)));
    }
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();

    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        uri_encode(request.path, true),
        canonical_query(request.query),
        canonical_headers,
        signed_headers,
        sha256_hex(request.payload)
    );
    let scope = format!(
        "{date}/{}/{}/aws4_request",
        credentials.region, credentials.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_secret = format!("AWS4{}", credentials.secret_access_key);
    let k_date = hmac_sha256(k_secret.as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), credentials.region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), credentials.service.as_bytes());
    let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
    let signature = hex(hmac_sha256(k_signing.as_ref(), string_to_sign.as_bytes()).as_ref());
    Signed {
        authorization: format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id
        ),
        amz_date,
        canonical_request,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    /// The credentials, scope and time of AWS's Signature Version 4 test
    /// suite (<https://docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html>).
    const SUITE: Credentials<'static> = Credentials {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
        region: "us-east-1",
        service: "service",
    };
    const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
    const SCOPE: &str = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";

    /// 2015-08-30T12:36:00Z, the suite's signing time.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn request<'a>(method: &'a str, path: &'a str, query: &'a [(&'a str, &'a str)]) -> Request<'a> {
        Request {
            method,
            host: "example.amazonaws.com",
            path,
            query,
            headers: &[],
            payload: b"",
        }
    }

    fn authz(signed_headers: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    #[test]
    fn aws_test_suite_vectors() {
        assert_eq!(amz_date(suite_time()), "20150830T123600Z");

        // get-vanilla
        let signed = sign(&SUITE, &request("GET", "/", &[]), suite_time());
        assert_eq!(
            signed.canonical_request,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            signed.authorization,
            authz(
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );

        // get-vanilla-query-order-key-case
        let signed = sign(
            &SUITE,
            &request("GET", "/", &[("Param2", "value2"), ("Param1", "value1")]),
            suite_time(),
        );
        assert_eq!(
            signed.authorization,
            authz(
                "host;x-amz-date",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
            )
        );

        // get-unreserved
        let signed = sign(
            &SUITE,
            &request(
                "GET",
                "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                &[],
            ),
            suite_time(),
        );
        assert_eq!(
            signed.authorization,
            authz(
                "host;x-amz-date",
                "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"
            )
        );

        // get-utf8
        let signed = sign(&SUITE, &request("GET", "/\u{1234}", &[]), suite_time());
        assert!(signed.canonical_request.starts_with("GET\n/%E1%88%B4\n"));
        assert_eq!(
            signed.authorization,
            authz(
                "host;x-amz-date",
                "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"
            )
        );

        // post-vanilla
        let signed = sign(&SUITE, &request("POST", "/", &[]), suite_time());
        assert_eq!(
            signed.authorization,
            authz(
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
            )
        );

        // post-x-www-form-urlencoded
        let signed = sign(
            &SUITE,
            &Request {
                headers: &[("Content-Type", "application/x-www-form-urlencoded")],
                payload: b"Param1=value1",
                ..request("POST", "/", &[])
            },
            suite_time(),
        );
        assert_eq!(
            signed.authorization,
            authz(
                "content-type;host;x-amz-date",
                "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
            )
        );

        // post-sts-token/post-sts-header-before
        let with_token = Credentials {
            session_token: Some(SUITE_TOKEN),
            ..SUITE
        };
        let signed = sign(&with_token, &request("POST", "/", &[]), suite_time());
        assert_eq!(
            signed.authorization,
            authz(
                "host;x-amz-date;x-amz-security-token",
                "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
            )
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c~é", false), "a%20b%2Fc~%C3%A9");
        assert_eq!(uri_encode("/x/y z", true), "/x/y%20z");
        assert_eq!(
            canonical_query(&[("type", "TXT"), ("name", "_acme-challenge.example.com.")]),
            "name=_acme-challenge.example.com.&type=TXT"
        );
    }
}
