//! What the HTTP API providers share: one ring-configured reqwest client with
//! bounded time and body size, the mapping of HTTP answers to [`DnsError`],
//! a redacting wrapper for credentials, and zone candidates for a name.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use super::provider::DnsError;
use crate::acme::http::{build_http_client_with_redirects, parse_retry_after};

/// The time one API request may take, connection included.
pub(crate) const API_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an API answer read.
pub(crate) const MAX_API_BODY: usize = 1 << 20;

/// A credential: kept out of `Debug`, `Display` and logs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, to put on the wire.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `value`, a credential, as a header value marked sensitive (kept out of
/// reqwest's and hyper's `Debug` output and HTTP/2 header compression);
/// [`DnsError::Config`] naming `what` (never the value) when a header
/// cannot carry it.
pub(crate) fn sensitive_header(
    provider: &'static str,
    what: &str,
    value: &str,
) -> Result<reqwest::header::HeaderValue, DnsError> {
    let mut header = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
        DnsError::config(
            provider,
            format!("{what} holds characters an HTTP header cannot carry"),
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// An API's base URL and the client that talks to it.
#[derive(Clone)]
pub(crate) struct ApiClient {
    provider: &'static str,
    base: String,
    client: reqwest::Client,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("provider", &self.provider)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// An API answer, its body read (bounded).
#[derive(Debug)]
pub(crate) struct ApiResponse {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Vec<u8>,
}

impl ApiResponse {
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body, shortened and printable, for error messages.
    pub(crate) fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            s.push('…');
        }
        s
    }

    /// The body as JSON.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        provider: &'static str,
    ) -> Result<T, DnsError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            DnsError::rejected(
                provider,
                Some(self.status),
                format!("unexpected answer ({e}): {}", self.snippet()),
            )
        })
    }

    /// [`error`](Self::error) with the detail `extract` finds in the body
    /// read as a `T` (the provider's JSON error shape); the body's start
    /// when it is not one.
    pub(crate) fn error_from_body<T: serde::de::DeserializeOwned>(
        &self,
        provider: &'static str,
        extract: impl FnOnce(T) -> Option<String>,
    ) -> DnsError {
        self.error(provider, self.detail(extract))
    }

    /// What `extract` finds in the body read as a `T`, if it is one.
    pub(crate) fn detail<T: serde::de::DeserializeOwned>(
        &self,
        extract: impl FnOnce(T) -> Option<String>,
    ) -> Option<String> {
        serde_json::from_slice::<T>(&self.body)
            .ok()
            .and_then(extract)
    }

    /// The error for a non-success answer: 401/403 refuse the credentials,
    /// 429 rate-limits, 5xx (and 408) may pass, other codes (redirects
    /// included: they are not followed) refuse the request.
    /// `detail` is what the provider's error body says, if it was parsed.
    pub(crate) fn error(&self, provider: &'static str, detail: Option<String>) -> DnsError {
        let detail = detail.unwrap_or_else(|| self.snippet());
        match self.status {
            401 | 403 => DnsError::AuthRefused { provider, detail },
            429 => DnsError::RateLimited {
                provider,
                retry_after: self.retry_after,
            },
            408 | 500..=599 => {
                DnsError::transient(provider, format!("HTTP {}: {detail}", self.status))
            }
            status => DnsError::rejected(provider, Some(status), detail),
        }
    }
}

impl ApiClient {
    /// A client for `base` (no trailing `/`). `https` is required except for
    /// loopback hosts (local stand-ins and development servers).
    pub(crate) fn new(
        provider: &'static str,
        base: &str,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, DnsError> {
        let base = base.trim_end_matches('/').to_owned();
        // Errors show the URL without any `user:password@`.
        let shown = without_userinfo(&base);
        let url = reqwest::Url::parse(&base)
            .map_err(|e| DnsError::config(provider, format!("API URL {shown:?}: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DnsError::config(
                provider,
                format!(
                    "API URL {shown:?}: credentials in the URL (user:password@) are not \
                     accepted; give them to the provider's builder"
                ),
            ));
        }
        let loopback = url.host_str().is_some_and(|host| {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            other => {
                return Err(DnsError::config(
                    provider,
                    format!(
                        "API URL {shown:?}: scheme {other:?} (https required except on loopback)"
                    ),
                ));
            }
        }
        // No redirects: the credentials travel in headers (`X-API-Key`,
        // `X-Api-User`, `x-amz-security-token`, ...) that reqwest would send
        // on to any target, plain http included. A 3xx is refused instead.
        let client = build_http_client_with_redirects(
            extra_roots,
            true,
            API_TIMEOUT,
            concat!("certauto/", env!("CARGO_PKG_VERSION")),
            reqwest::redirect::Policy::none(),
        )
        .map_err(|e| DnsError::config(provider, e.to_string()))?;
        Ok(Self {
            provider,
            base,
            client,
        })
    }

    /// The provider's name.
    pub(crate) fn provider(&self) -> &'static str {
        self.provider
    }

    /// `base` + `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `base` + `path`.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a JSON API request: `Authorization: <authorization>` (marked
    /// sensitive; [`DnsError::Config`] when a header cannot carry it),
    /// `Accept: application/json`, and `body` as JSON when given. The
    /// answer as [`send`](Self::send) reads it.
    pub(crate) async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<ApiResponse, DnsError> {
        let auth = sensitive_header(self.provider, "the API token", authorization)?;
        let mut request = self
            .request(method, path)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        self.send(request).await
    }

    /// Sends `request` and reads its answer; network errors and timeouts are
    /// [`DnsError::Transient`], an oversized body is refused.
    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<ApiResponse, DnsError> {
        let provider = self.provider;
        let mut resp = request
            .send()
            .await
            .map_err(|e| DnsError::transient(provider, e.without_url()))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        if resp
            .content_length()
            .is_some_and(|len| len > MAX_API_BODY as u64)
        {
            return Err(DnsError::rejected(
                provider,
                Some(status),
                format!("answer larger than {MAX_API_BODY} bytes"),
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DnsError::transient(provider, e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_API_BODY {
                return Err(DnsError::rejected(
                    provider,
                    Some(status),
                    format!("answer larger than {MAX_API_BODY} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(ApiResponse {
            status,
            retry_after,
            body,
        })
    }
}

/// `url` with what may be `user:password@` after the scheme cut out, for
/// error messages (the URL may not even parse).
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://{}{path}", authority.get(at + 1..).unwrap_or("")),
        None => url.to_owned(),
    }
}

/// What the builders of the token-authenticated HTTP providers (Cloudflare,
/// DigitalOcean, Hetzner, deSEC) hold, and the checks they share.
#[derive(Clone)]
pub(crate) struct TokenApi {
    pub(crate) token: Secret,
    pub(crate) api_url: String,
    pub(crate) ttl: u32,
    pub(crate) extra_roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TokenApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenApi")
            .field("token", &self.token)
            .field("api_url", &self.api_url)
            .field("ttl", &self.ttl)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

/// A checked [`TokenApi`]: the client, the token, the TTL.
pub(crate) struct TokenApiParts {
    pub(crate) api: ApiClient,
    pub(crate) token: Secret,
    pub(crate) ttl: u32,
}

impl TokenApi {
    /// The token, the provider's default API URL and TTL.
    pub(crate) fn new(token: impl Into<String>, api_url: &str, ttl: u32) -> Self {
        Self {
            token: Secret::new(token),
            api_url: api_url.to_owned(),
            ttl,
            extra_roots: Vec::new(),
        }
    }

    /// Checks the settings and builds the client: the token (`what` names it
    /// in errors) must be non-empty and fit a header as `"<scheme> <token>"`,
    /// the TTL must pass `ttl_ok` (`ttl_rule` says which are), the URL must
    /// be usable. Each failure is [`DnsError::Config`].
    pub(crate) fn check(
        self,
        provider: &'static str,
        what: &str,
        scheme: &str,
        ttl_ok: fn(u32) -> bool,
        ttl_rule: &str,
    ) -> Result<TokenApiParts, DnsError> {
        if self.token.is_empty() {
            return Err(DnsError::config(provider, format!("{what} is empty")));
        }
        sensitive_header(provider, what, &format!("{scheme} {}", self.token.expose()))?;
        if !ttl_ok(self.ttl) {
            return Err(DnsError::config(
                provider,
                format!("TTL {} ({ttl_rule})", self.ttl),
            ));
        }
        let api = ApiClient::new(provider, &self.api_url, &self.extra_roots)?;
        Ok(TokenApiParts {
            api,
            token: self.token,
            ttl: self.ttl,
        })
    }
}

/// A paged listing of the TXT records at `fqdn`, read to its end: `page(n)`
/// fetches page `n` (from 1) and returns the records it matched and whether
/// it was the last page. A listing longer than `max_pages` pages of
/// `per_page` is [`DnsError::Rejected`]: a value may be on a page not read,
/// so nothing is concluded from the pages that were.
pub(crate) async fn collect_pages<T, F, Fut>(
    provider: &'static str,
    fqdn: &str,
    max_pages: u32,
    per_page: u32,
    mut page: F,
) -> Result<Vec<T>, DnsError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, bool), DnsError>>,
{
    let mut found = Vec::new();
    for n in 1..=max_pages {
        let (matched, last) = page(n).await?;
        found.extend(matched);
        if last {
            return Ok(found);
        }
    }
    Err(DnsError::rejected(
        provider,
        None,
        format!(
            "more than {max_pages} pages of {per_page} TXT records at {fqdn}: \
             the listing was not read to its end"
        ),
    ))
}

/// The names that may be the zone of `fqdn`, longest first, down to the
/// last two labels (`a.b.example.com` gives `a.b.example.com`,
/// `b.example.com`, `example.com`).
pub(crate) fn zone_candidates(fqdn: &str) -> impl Iterator<Item = &str> {
    let fqdn = fqdn.trim_end_matches('.');
    let labels = fqdn.split('.').count();
    let mut rest = Some(fqdn);
    (0..labels.saturating_sub(1)).filter_map(move |_| {
        let current = rest?;
        rest = current.split_once('.').map(|(_, r)| r);
        Some(current)
    })
}

/// `fqdn` relative to `zone` (`_acme-challenge.www` in `example.com`), or
/// `@` for the apex; `None` when `fqdn` is not inside `zone`.
pub(crate) fn relative_name<'a>(fqdn: &'a str, zone: &str) -> Option<&'a str> {
    let fqdn = fqdn.trim_end_matches('.');
    let zone = zone.trim_end_matches('.');
    if fqdn.eq_ignore_ascii_case(zone) {
        return Some("@");
    }
    let cut = fqdn.len().checked_sub(zone.len() + 1)?;
    // `get` rather than slicing: names from APIs may hold non-ASCII
    // characters, and `cut` need not fall on a character boundary.
    let head = fqdn.get(..cut)?;
    let tail = fqdn.get(cut..)?.strip_prefix('.')?;
    tail.eq_ignore_ascii_case(zone).then_some(head)
}

/// Whether `id` (from an API answer, or configured) may become one URL
/// path segment: not empty, `.` or `..`, and no `/` or `\`, once
/// percent-decoded too (`%2e%2e` is `..` to a URL parser or a server).
pub(crate) fn is_path_segment(id: &str) -> bool {
    let decoded = percent_decode(id);
    [id.as_bytes(), &decoded].iter().all(|form| {
        !matches!(*form, b"" | b"." | b"..") && !form.iter().any(|b| matches!(b, b'/' | b'\\'))
    })
}

/// `id`, a zone or record id from an API answer, if it is usable as a URL
/// path segment (see [`is_path_segment`]); else [`DnsError::Rejected`].
pub(crate) fn path_id(provider: &'static str, what: &str, id: String) -> Result<String, DnsError> {
    if is_path_segment(&id) {
        Ok(id)
    } else {
        Err(DnsError::rejected(
            provider,
            None,
            format!("the API gave an unusable {what} id {id:?}"),
        ))
    }
}

/// `%XX` sequences decoded; anything else (invalid sequences included)
/// kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `value` percent-encoded for a URL path segment or query component:
/// everything but the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`).
pub(crate) fn encode_component(value: &str) -> String {
    encode_except(value, b"")
}

/// [`encode_component`] that also keeps the bytes in `keep` as they are
/// (PowerDNS's `=` escapes in zone ids, SigV4's `/` in paths). Upper-case
/// hex digits, as RFC 3986 recommends and SigV4 requires.
pub(crate) fn encode_except(value: &str, keep: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || keep.contains(&byte)
        {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A DNS name in the form providers compare and lock names in: no
/// surrounding space, no trailing dot, ASCII lower case.
pub(crate) fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A TXT value in zone-file presentation form: one quoted character string,
/// `"` and `\` escaped (`abc` gives `"abc"`). ACME values are base64url and
/// need no escaping; other values are quoted all the same.
///
/// This pair serves the APIs that take one quoted string (Cloudflare,
/// deSEC, Hetzner) or show values quoted or bare (DigitalOcean). PowerDNS
/// and Route 53 keep their own on purpose: both require values longer than
/// 255 bytes split into several strings, PowerDNS answers with `\DDD`
/// decimal escapes (decoded to bytes), and Route 53 requires bytes outside
/// printable ASCII as `\ooo` octal escapes.
pub(crate) fn quote_txt(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The text of a TXT value as an API shows it: quoted character strings
/// (`"abc"`, `"ab" "c"`) are unescaped and joined; anything else is taken as
/// it is (some APIs show the value unquoted).
pub(crate) fn unquote_txt(shown: &str) -> String {
    let shown = shown.trim();
    if !(shown.len() >= 2 && shown.starts_with('"') && shown.ends_with('"')) {
        return shown.to_owned();
    }
    let mut out = String::with_capacity(shown.len());
    let mut quoted = false;
    let mut chars = shown.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            c if quoted => out.push(c),
            _ => {} // whitespace between strings
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn candidates_and_relative_names() {
        let c: Vec<_> = zone_candidates("_acme-challenge.www.example.com").collect();
        assert_eq!(
            c,
            [
                "_acme-challenge.www.example.com",
                "www.example.com",
                "example.com"
            ]
        );
        assert_eq!(
            relative_name("_acme-challenge.www.example.com", "example.com"),
            Some("_acme-challenge.www")
        );
        assert_eq!(relative_name("example.com", "example.com."), Some("@"));
        assert_eq!(relative_name("badexample.com", "example.com"), None);
        assert_eq!(relative_name("com", "example.com"), None);
        // Non-ASCII names (from an API's answer) must not panic, whatever
        // byte the cut falls on.
        assert_eq!(relative_name("é.example.com", "example.com"), Some("é"));
        assert_eq!(relative_name("xé.example.com", "éexample.com"), None);
        assert_eq!(relative_name("ééé", "é"), None);
        assert_eq!(relative_name("a.é", "é"), Some("a"));
    }

    #[test]
    fn txt_quoting_and_encoding() {
        assert_eq!(quote_txt("abc-_1"), "\"abc-_1\"");
        assert_eq!(quote_txt(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(unquote_txt("\"abc\""), "abc");
        assert_eq!(unquote_txt("abc"), "abc");
        assert_eq!(unquote_txt(r#""ab" "c""#), "abc");
        assert_eq!(unquote_txt(&quote_txt(r#"a"b\c"#)), r#"a"b\c"#);
        assert_eq!(
            encode_component("_acme-challenge.a.b"),
            "_acme-challenge.a.b"
        );
        assert_eq!(encode_component("a b/*?&="), "a%20b%2F%2A%3F%26%3D");
        assert_eq!(encode_except("a=2Fb/c", b"="), "a=2Fb%2Fc");
        assert_eq!(encode_except("/a b/", b"/"), "/a%20b/");
        assert_eq!(
            normalize_name(" _ACME-Challenge.Example.COM. "),
            "_acme-challenge.example.com"
        );
    }

    #[test]
    fn ids_that_would_move_the_path_are_refused() {
        for good in [
            "023e105f4ecef8ad9ca31a8372d0c353",
            "example.com.",
            "a=2Fb",
            "1234",
            "%41",
        ] {
            assert!(is_path_segment(good), "{good}");
            assert_eq!(path_id("p", "zone", good.into()).unwrap(), good);
        }
        for bad in [
            "", ".", "..", "%2e%2E", "%2E", "a/b", "a\\b", "a%2Fb", "a%5cb", "../x",
        ] {
            assert!(!is_path_segment(bad), "{bad}");
            assert!(matches!(
                path_id("p", "zone", bad.into()),
                Err(DnsError::Rejected { .. })
            ));
        }
    }

    #[test]
    fn secrets_are_redacted_and_http_only_on_loopback() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
        assert!(ApiClient::new("test", "http://127.0.0.1:1/api", &[]).is_ok());
        assert!(ApiClient::new("test", "https://api.example.com/v1/", &[]).is_ok());
        assert!(matches!(
            ApiClient::new("test", "http://api.example.com", &[]),
            Err(DnsError::Config { .. })
        ));
    }

    #[test]
    fn urls_with_credentials_are_refused_without_showing_them() {
        for url in [
            "https://admin:hunter2@api.example.com/v1",
            "https://hunter2@api.example.com",
            "http://admin:hunter2@127.0.0.1:8081",
            "https://admin:hun ter2@api.example.com/v1",
        ] {
            let err = ApiClient::new("test", url, &[]).unwrap_err();
            assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("hun ter2"),
                "{shown}"
            );
        }
        assert_eq!(
            without_userinfo("https://u:p@h/a@b?c@d"),
            "https://h/a@b?c@d"
        );
        assert_eq!(without_userinfo("not a url"), "not a url");
    }

    /// A stand-in answering 307 towards a second stand-in that records
    /// whether the API key reached it: the redirect is not followed and is
    /// refused (`Rejected`).
    #[tokio::test]
    async fn redirects_are_not_followed_so_keys_stay_home() {
        use crate::challenge::dns01::standin::{Reply, StandIn};
        let elsewhere = StandIn::start(|_| Reply::json(200, serde_json::json!({}))).await;
        let target = format!("{}/stolen", elsewhere.url());
        let api = StandIn::start(move |_| {
            Reply::text(307, "text/plain", "moved").header("location", &target)
        })
        .await;
        let client = ApiClient::new("test", &api.url(), &[]).unwrap();
        let resp = client
            .send(
                client
                    .request(reqwest::Method::GET, "/zones")
                    .header("x-api-key", "hunter2"),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 307);
        assert!(!resp.is_success());
        assert!(matches!(
            resp.error("test", None),
            DnsError::Rejected {
                status: Some(307),
                ..
            }
        ));
        assert_eq!(api.seen().len(), 1);
        assert!(elsewhere.seen().is_empty(), "the redirect was followed");
    }

    #[test]
    fn sensitive_headers() {
        let header = sensitive_header("p", "the key", "k3y").unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header, "k3y");
        let err = sensitive_header("p", "the key", "bad\nk3y").unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("k3y"));
    }

    #[test]
    fn status_mapping() {
        let resp = |status| ApiResponse {
            status,
            retry_after: Some(Duration::from_secs(3)),
            body: b"{}".to_vec(),
        };
        assert!(matches!(
            resp(403).error("p", None),
            DnsError::AuthRefused { .. }
        ));
        assert!(matches!(
            resp(429).error("p", None),
            DnsError::RateLimited {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(resp(503).error("p", None).is_retryable());
        assert!(matches!(
            resp(422).error("p", None),
            DnsError::Rejected {
                status: Some(422),
                ..
            }
        ));
    }
}
