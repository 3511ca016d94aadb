//! HTTP plumbing for the ACME client: TLS setup, bounded bodies, headers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use crate::error::{AcmeError, ConfigError};

/// The longest a connection to a CA (or an OCSP responder, a DNS API) may
/// take to open; a shorter request timeout lowers it.
pub(crate) const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured; longer ones are capped to it.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The rustls crypto provider used everywhere in CertAuto: ring, never the process default.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the reqwest client that talks to the CA: Mozilla's roots (unless
/// disabled) plus `extra_roots`, ALPN `http/1.1`, bounded timeouts, at most
/// three redirects.
pub(crate) fn build_http_client(
    extra_roots: &[CertificateDer<'static>],
    mozilla_roots: bool,
    timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::Client, ConfigError> {
    build_http_client_with_redirects(
        extra_roots,
        mozilla_roots,
        timeout,
        user_agent,
        reqwest::redirect::Policy::limited(3),
    )
}

/// [`build_http_client`] with the given redirect policy. Clients that send
/// credentials in headers reqwest does not strip on a cross-host redirect
/// (anything but `Authorization`, `Cookie`, `Proxy-Authorization`) use
/// [`reqwest::redirect::Policy::none`].
pub(crate) fn build_http_client_with_redirects(
    extra_roots: &[CertificateDer<'static>],
    mozilla_roots: bool,
    timeout: Duration,
    user_agent: &str,
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    if mozilla_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for root in extra_roots {
        roots
            .add(root.clone())
            .map_err(|e| ConfigError::InvalidRoots(e.to_string()))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::InvalidRoots(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(user_agent)
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .redirect(redirects)
        .build()
        .map_err(|e| ConfigError::InvalidRoots(format!("HTTP client: {e}")))
}

/// Parses PEM data holding one or more CA certificates.
pub fn parse_pem_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    use rustls_pki_types::pem::PemObject as _;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| ConfigError::InvalidRoots(e.to_string()))?;
    if certs.is_empty() {
        return Err(ConfigError::InvalidRoots(
            "no CERTIFICATE block found".into(),
        ));
    }
    Ok(certs)
}

/// A response with its body read (bounded) and the headers ACME cares about.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) url: String,
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
    pub(crate) location: Option<String>,
    pub(crate) nonce: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) links: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) async fn read(
        url: &str,
        mut resp: reqwest::Response,
        limit: usize,
    ) -> Result<Self, AcmeError> {
        let headers = resp.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type");
        let location = header("location");
        let nonce = header("replay-nonce").filter(|n| is_valid_nonce(n));
        let retry_after =
            header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let links = headers
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_link_header)
            .collect();
        let status = resp.status().as_u16();
        if resp.content_length().is_some_and(|len| len > limit as u64) {
            return Err(AcmeError::BodyTooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        let mut body = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| AcmeError::Transport {
                url: url.to_owned(),
                source: Box::new(e),
            })?;
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > limit {
                return Err(AcmeError::BodyTooLarge {
                    url: url.to_owned(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Self {
            url: url.to_owned(),
            status,
            content_type,
            location,
            nonce,
            retry_after,
            links,
            body,
        })
    }

    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub(crate) fn is_problem(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|ct| ct.trim_start().starts_with("application/problem+json"))
    }

    /// The body, shortened and made printable, for error messages.
    pub(crate) fn body_snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(200).collect();
        if text.chars().count() > 200 {
            s.push('…');
        }
        s
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, AcmeError> {
        serde_json::from_slice(&self.body).map_err(|e| AcmeError::InvalidResponse {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn require_location(&self) -> Result<String, AcmeError> {
        self.location.clone().ok_or(AcmeError::MissingHeader {
            url: self.url.clone(),
            header: "Location",
        })
    }
}

/// RFC 8555 §6.5.1: a nonce is a non-empty base64url string.
fn is_valid_nonce(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 512
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
/// A date in the past gives zero; absurd values are capped at one day.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Parses one `Link` header value into `(rel, url)` pairs (RFC 8288 §3, the
/// subset ACME uses): each link is `<url>` followed by `;`-separated
/// parameters up to the next `,`; separators inside a quoted string (and
/// `\`-escaped characters in it) are part of the parameter's value, so a
/// `title="a, b; rel=x"` neither ends the link nor adds a relation.
pub(crate) fn parse_link_header(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let after_open = &rest[start + 1..];
        let Some(end) = after_open.find('>') else {
            break;
        };
        let url = after_open[..end].trim();
        let (params, next) = link_params(&after_open[end + 1..]);
        for (name, value) in params {
            if name.eq_ignore_ascii_case("rel") {
                for rel in value.split_whitespace() {
                    out.push((rel.to_ascii_lowercase(), url.to_owned()));
                }
            }
        }
        rest = next;
    }
    out
}

/// The parameters of one link (`; name=value` pairs, values unquoted) and
/// the text after the `,` that ends it.
fn link_params(text: &str) -> (Vec<(String, String)>, &str) {
    let mut params = Vec::new();
    let mut name = String::new();
    let mut value = String::new();
    let mut in_value = false;
    let mut quoted = false;
    let mut chars = text.char_indices();
    let mut next = "";
    while let Some((i, c)) = chars.next() {
        if quoted {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => quoted = false,
                _ => value.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                next = &text[i + 1..];
                break;
            }
            ';' => {
                push_param(&mut params, &mut name, &mut value);
                in_value = false;
            }
            '=' if !in_value => in_value = true,
            '"' if in_value && value.trim().is_empty() => {
                value.clear();
                quoted = true;
            }
            _ if in_value => value.push(c),
            _ => name.push(c),
        }
    }
    push_param(&mut params, &mut name, &mut value);
    (params, next)
}

fn push_param(params: &mut Vec<(String, String)>, name: &mut String, value: &mut String) {
    let n = name.trim();
    if !n.is_empty() {
        params.push((n.to_owned(), value.trim().to_owned()));
    }
    name.clear();
    value.clear();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn link_headers() {
        let links = parse_link_header(
            r#"<https://ca/cert/1/1>;rel="alternate", <https://ca/dir>; rel="index""#,
        );
        assert_eq!(
            links,
            vec![
                ("alternate".into(), "https://ca/cert/1/1".into()),
                ("index".into(), "https://ca/dir".into())
            ]
        );
        assert_eq!(
            parse_link_header("<https://a/b,c>;rel=up"),
            vec![("up".into(), "https://a/b,c".into())]
        );
        assert!(parse_link_header("garbage").is_empty());
        assert!(parse_link_header("<unterminated").is_empty());
    }

    /// Found by the `link_header` fuzz target: `;` and `,` inside a quoted
    /// parameter value split it, so a title could add a relation or end
    /// the link early.
    #[test]
    fn quoted_parameters_hold_separators() {
        assert_eq!(
            parse_link_header(r#"<https://ca/a>; rel="x"; title="nr; rel=up""#),
            vec![("x".into(), "https://ca/a".into())]
        );
        assert_eq!(
            parse_link_header(
                r#"<https://ca/a>; title="a, b"; rel="alternate", <https://ca/d>; rel=index"#
            ),
            vec![
                ("alternate".into(), "https://ca/a".into()),
                ("index".into(), "https://ca/d".into())
            ]
        );
        assert_eq!(
            parse_link_header(r#"<https://ca/a>; title="q\"; rel=up"; rel="UP next""#),
            vec![
                ("up".into(), "https://ca/a".into()),
                ("next".into(), "https://ca/a".into())
            ]
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("999999999", now),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn nonce_validation() {
        assert!(is_valid_nonce("oFvnlFP1wIhRlYS2jTaXbA"));
        assert!(!is_valid_nonce(""));
        assert!(!is_valid_nonce("a b"));
    }
}
