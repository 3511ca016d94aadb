//! A DNS provider for [Amazon Route 53](https://aws.amazon.com/route53/).
//!
//! The user documentation is on [`Route53`].

mod sigv4;
mod xml;

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;

use self::xml::Element;
use super::http::{
    ApiClient, ApiResponse, Secret, normalize_name, sensitive_header, zone_candidates,
};
use super::name_lock::NameLocks;
use super::provider::{DnsError, DnsProvider};
use crate::clock::{Clock, SystemClock};

const PROVIDER: &str = "route53";
/// The Route 53 API endpoint (global, signed for `us-east-1`).
pub(crate) const DEFAULT_API_URL: &str = "https://route53.amazonaws.com";
const API_VERSION: &str = "/2013-04-01";
const REGION: &str = "us-east-1";
const SERVICE: &str = "route53";
const XMLNS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";
/// The TTL of a record set we create.
pub(crate) const DEFAULT_TTL: u32 = 60;
/// How often `GetChange` is polled, by default.
pub(crate) const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(2);
/// How many times it is polled at most, by default.
pub(crate) const DEFAULT_SYNC_POLLS: u32 = 60;
/// How many times a change that no longer matches the set is re-read and retried.
pub(crate) const CHANGE_ATTEMPTS: u32 = 3;
/// The most zone lookups remembered.
pub(crate) const MAX_CACHED_ZONES: usize = 256;

/// Writes TXT records through the Route 53 API.
///
/// It follows the Route 53 REST API, version 2013-04-01
/// (<https://docs.aws.amazon.com/Route53/latest/APIReference/>), at
/// `https://route53.amazonaws.com/2013-04-01/`, every request signed with
/// AWS Signature Version 4 (service `route53`, region `us-east-1`):
///
/// - the zone is the configured [`hosted_zone_id`](Route53Builder::hosted_zone_id),
///   or found with `ListHostedZonesByName`
///   (`GET /2013-04-01/hostedzonesbyname?dnsname=<candidate>`): the longest
///   public hosted zone whose name ends the record name;
/// - the TXT record set is read with `ListResourceRecordSets`
///   (`GET /2013-04-01/hostedzone/<id>/rrset?name=<fqdn>.&type=TXT&maxitems=1`)
///   and written with `ChangeResourceRecordSets`
///   (`POST /2013-04-01/hostedzone/<id>/rrset/`, an XML
///   `ChangeResourceRecordSetsRequest`).
///
/// **Exact values.** Route 53 replaces whole record sets, so adding a value
/// is read, then `UPSERT` of the set with every value; deleting one is an
/// `UPSERT` of the others, or a `DELETE` of the exact current set when ours
/// is the last. These steps run under a per-name lock inside the provider,
/// so concurrent calls for one name (a wildcard and its apex) keep each
/// other's values. Another program changing the same set at the same moment
/// can still race with us (Route 53 has no conditional writes); a `DELETE`
/// that no longer matches is re-read and retried a bounded number of times.
/// An existing set keeps its TTL; a new one gets [`ttl`](Route53Builder::ttl)
/// (60 s by default). Values are written as Route 53 requires TXT data:
/// in double quotes, `"` and `\` escaped with a backslash, bytes outside
/// printable ASCII as `\ooo`, split into 255-byte strings.
///
/// **Waiting.** After adding a value, the provider polls `GetChange`
/// (`GET /2013-04-01/change/<id>`) until Route 53 reports `INSYNC` (every
/// 2 s, at most 60 times by default, see
/// [`sync_polling`](Route53Builder::sync_polling)); when that bound passes,
/// or `GetChange` fails, it logs a warning and returns, since the solver
/// then checks the authoritative servers itself. Deletions do not wait.
///
/// **Credentials.** An access key of an IAM principal allowed only
/// `route53:ListHostedZonesByName`, `route53:ListResourceRecordSets`,
/// `route53:ChangeResourceRecordSets` (ideally limited to the zone and to
/// `_acme-challenge.*` TXT records with the
/// `route53:ChangeResourceRecordSetsNormalizedRecordNames` and
/// `route53:ChangeResourceRecordSetsRecordTypes` conditions) and
/// `route53:GetChange`; with temporary credentials, also the session token.
/// The secret key and session token never appear in logs, errors or `Debug`
/// output.
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use certauto::Dns01Solver;
/// use certauto::dns::Route53;
///
/// # fn main() -> Result<(), certauto::DnsError> {
/// let route53 = Route53::builder(
///     std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
///     std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
/// )
/// .hosted_zone_id("Z1D633PJN98FT9")
/// .build()?;
/// let solver = Dns01Solver::builder(route53).build();
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Route53 {
    inner: Arc<Inner>,
}

struct Inner {
    api: ApiClient,
    /// The `Host` header the client sends, for the signature.
    host: String,
    /// The API URL's path (empty for the real endpoint).
    base_path: String,
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
    /// `session_token` as the `x-amz-security-token` header, marked sensitive.
    session_header: Option<reqwest::header::HeaderValue>,
    hosted_zone_id: Option<String>,
    ttl: u32,
    clock: Arc<dyn Clock>,
    sync_interval: Duration,
    sync_polls: u32,
    locks: NameLocks,
    /// Record name -> hosted zone id, found by `ListHostedZonesByName`.
    zones: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for Route53 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Route53")
            .field("api", &inner.api)
            .field("access_key_id", &inner.access_key_id)
            .field("secret_access_key", &inner.secret_access_key)
            .field("session_token", &inner.session_token)
            .field("hosted_zone_id", &inner.hosted_zone_id)
            .field("ttl", &inner.ttl)
            .finish_non_exhaustive()
    }
}

/// Settings for [`Route53`].
pub struct Route53Builder {
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
    hosted_zone_id: Option<String>,
    api_url: String,
    ttl: u32,
    extra_roots: Vec<CertificateDer<'static>>,
    clock: Arc<dyn Clock>,
    sync_interval: Duration,
    sync_polls: u32,
}

impl fmt::Debug for Route53Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route53Builder")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("hosted_zone_id", &self.hosted_zone_id)
            .field("api_url", &self.api_url)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Route53 {
    /// Settings for the access key `access_key_id` with its secret.
    pub fn builder(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Route53Builder {
        Route53Builder {
            access_key_id: access_key_id.into(),
            secret_access_key: Secret::new(secret_access_key),
            session_token: None,
            hosted_zone_id: None,
            api_url: DEFAULT_API_URL.to_owned(),
            ttl: DEFAULT_TTL,
            extra_roots: Vec::new(),
            clock: Arc::new(SystemClock),
            sync_interval: DEFAULT_SYNC_INTERVAL,
            sync_polls: DEFAULT_SYNC_POLLS,
        }
    }
}

impl Route53Builder {
    /// The session token of temporary credentials (STS), sent as
    /// `X-Amz-Security-Token`.
    pub fn session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(Secret::new(token));
        self
    }

    /// The hosted zone to write in (`Z1D633PJN98FT9`, with or without
    /// `/hostedzone/`), instead of looking it up by name.
    pub fn hosted_zone_id(mut self, id: impl Into<String>) -> Self {
        self.hosted_zone_id = Some(id.into());
        self
    }

    /// The API endpoint (default `https://route53.amazonaws.com`).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = url.into();
        self
    }

    /// The TTL, in seconds, of a TXT record set this provider creates
    /// (default 60).
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    /// More CA certificates to trust for the endpoint's HTTPS.
    pub fn extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.extra_roots = roots;
        self
    }

    /// The clock that dates the signatures (the system clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often, and how many times at most, `GetChange` is polled after
    /// adding a value until Route 53 reports `INSYNC` (default every 2 s, 60
    /// times); `max_polls` 0 does not wait.
    pub fn sync_polling(mut self, interval: Duration, max_polls: u32) -> Self {
        self.sync_interval = interval;
        self.sync_polls = max_polls;
        self
    }

    /// Checks the settings: empty credentials, a malformed zone id or a bad
    /// URL are [`DnsError::Config`].
    pub fn build(self) -> Result<Route53, DnsError> {
        let access_key_id = self.access_key_id.trim().to_owned();
        if access_key_id.is_empty() || !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(DnsError::config(
                PROVIDER,
                "the access key id is empty or not alphanumeric",
            ));
        }
        if self.secret_access_key.is_empty() {
            return Err(DnsError::config(PROVIDER, "the secret access key is empty"));
        }
        if self.session_token.as_ref().is_some_and(Secret::is_empty) {
            return Err(DnsError::config(PROVIDER, "the session token is empty"));
        }
        let session_header = self
            .session_token
            .as_ref()
            .map(|token| sensitive_header(PROVIDER, "the session token", token.expose()))
            .transpose()?;
        let hosted_zone_id = match self.hosted_zone_id {
            None => None,
            Some(id) => Some(zone_id(&id).ok_or_else(|| {
                DnsError::config(PROVIDER, format!("hosted zone id {id:?} is malformed"))
            })?),
        };
        let api = ApiClient::new(PROVIDER, &self.api_url, &self.extra_roots)?;
        let url = reqwest::Url::parse(self.api_url.trim_end_matches('/'))
            .map_err(|e| DnsError::config(PROVIDER, format!("API URL: {e}")))?;
        let Some(host) = url.host_str() else {
            return Err(DnsError::config(PROVIDER, "the API URL has no host"));
        };
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let base_path = url.path().trim_end_matches('/').to_owned();
        Ok(Route53 {
            inner: Arc::new(Inner {
                api,
                host,
                base_path,
                access_key_id,
                secret_access_key: self.secret_access_key,
                session_token: self.session_token,
                session_header,
                hosted_zone_id,
                ttl: self.ttl,
                clock: self.clock,
                sync_interval: self.sync_interval.max(Duration::from_millis(1)),
                sync_polls: self.sync_polls,
                locks: NameLocks::default(),
                zones: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A hosted zone id without its `/hostedzone/` prefix, if well formed.
fn zone_id(id: &str) -> Option<String> {
    let id = id.trim();
    let id = id.strip_prefix("/hostedzone/").unwrap_or(id);
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_owned())
}

/// A change id without its `/change/` prefix, if well formed.
fn change_id(id: &str) -> Option<&str> {
    let id = id.trim();
    let id = id.strip_prefix("/change/").unwrap_or(id);
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(id)
}

/// A TXT record set as Route 53 holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordSet {
    ttl: u32,
    /// The values as Route 53 gives them (quoted, escaped).
    values: Vec<String>,
}

/// A failed change: the set may have changed under us (retry), or not.
enum ChangeError {
    Conflict(DnsError),
    Failed(DnsError),
}

/// `value` as Route 53 TXT data: quoted 255-byte strings, `"` and `\`
/// escaped, bytes outside printable ASCII as `\ooo`.
pub(crate) fn quote_txt(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(bytes.len() + 2);
    let mut chunks = bytes.chunks(255).peekable();
    if chunks.peek().is_none() {
        return "\"\"".to_owned();
    }
    let mut first = true;
    for chunk in chunks {
        if !first {
            out.push(' ');
        }
        first = false;
        out.push('"');
        for &b in chunk {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                0x20..=0x7e => out.push(char::from(b)),
                _ => {
                    let _ = write!(out, "\\{b:03o}");
                }
            }
        }
        out.push('"');
    }
    out
}

/// The text of Route 53 TXT data: its quoted strings (or bare words)
/// joined, escapes decoded.
pub(crate) fn unquote_txt(data: &str) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(data.len());
    let bytes = data.trim().as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => quoted = !quoted,
            b'\\' => {
                let digits = bytes
                    .get(i + 1..i + 4)
                    .filter(|d| d.iter().all(u8::is_ascii_digit));
                if let Some(d) = digits {
                    let code = d.iter().fold(0u32, |acc, &x| acc * 8 + u32::from(x - b'0'));
                    out.push(u8::try_from(code).unwrap_or(b'?'));
                    i += 3;
                } else if let Some(&next) = bytes.get(i + 1) {
                    out.push(next);
                    i += 1;
                }
            }
            b' ' | b'\t' if !quoted => {}
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A name as Route 53 writes it (`\ooo` escapes, trailing dot) made
/// comparable: decoded, lower case, no trailing dot.
fn plain_name(name: &str) -> String {
    normalize_name(&unquote_txt(name.trim()))
}

/// The code, message and error for an answer that is not a success.
fn api_error(resp: &ApiResponse, fqdn: &str) -> (Option<String>, DnsError) {
    let root = xml::parse(&resp.body).ok();
    let (code, message) = match &root {
        Some(root) if root.name == "ErrorResponse" => (
            root.text_at(&["Error", "Code"]).map(str::to_owned),
            root.text_at(&["Error", "Message"])
                .unwrap_or_default()
                .to_owned(),
        ),
        Some(root) if root.name == "InvalidChangeBatch" => (
            Some("InvalidChangeBatch".to_owned()),
            root.child("Messages")
                .map(|m| {
                    m.children("Message")
                        .map(|m| m.text.trim())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
        ),
        _ => (None, String::new()),
    };
    let detail = code.as_ref().map(|c| format!("{c}: {message}"));
    let error = match code.as_deref() {
        Some(
            "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "AccessDenied"
            | "AccessDeniedException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "ExpiredToken"
            | "UnrecognizedClientException",
        ) => DnsError::AuthRefused {
            provider: PROVIDER,
            detail: detail.unwrap_or_default(),
        },
        Some("Throttling" | "ThrottlingException") => DnsError::RateLimited {
            provider: PROVIDER,
            retry_after: resp.retry_after,
        },
        Some("PriorRequestNotComplete") => DnsError::transient(
            PROVIDER,
            format!("HTTP {}: {}", resp.status, detail.unwrap_or_default()),
        ),
        Some("NoSuchHostedZone") => DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        },
        _ => resp.error(PROVIDER, detail),
    };
    (code, error)
}

/// The root element of a success answer, or a typed error.
fn parse_answer(resp: &ApiResponse, expected_root: &str) -> Result<Element, DnsError> {
    match xml::parse(&resp.body) {
        Ok(root) if root.name == expected_root => Ok(root),
        Ok(root) => Err(DnsError::rejected(
            PROVIDER,
            Some(resp.status),
            format!("unexpected answer <{}>: {}", root.name, resp.snippet()),
        )),
        Err(e) => Err(DnsError::rejected(
            PROVIDER,
            Some(resp.status),
            format!("unexpected answer ({e}): {}", resp.snippet()),
        )),
    }
}

fn malformed(resp: &ApiResponse, what: &str) -> DnsError {
    DnsError::rejected(
        PROVIDER,
        Some(resp.status),
        format!(
            "{what} missing or malformed in the answer: {}",
            resp.snippet()
        ),
    )
}

impl Route53 {
    /// Sends one signed request; `path` starts with `/2013-04-01`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<ApiResponse, DnsError> {
        let inner = &self.inner;
        let full_path = format!("{}{path}", inner.base_path);
        let payload = body.as_deref().unwrap_or_default();
        let signed = sigv4::sign(
            &sigv4::Credentials {
                access_key_id: &inner.access_key_id,
                secret_access_key: inner.secret_access_key.expose(),
                session_token: inner.session_token.as_ref().map(Secret::expose),
                region: REGION,
                service: SERVICE,
            },
            &sigv4::Request {
                method: method.as_str(),
                host: &inner.host,
                path: &full_path,
                query,
                headers: &[],
                payload: payload.as_bytes(),
            },
            inner.clock.now(),
        );
        let query = sigv4::canonical_query(query);
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut request = inner
            .api
            .request(method, &target)
            .header("x-amz-date", signed.amz_date)
            .header("authorization", signed.authorization);
        if let Some(token) = &inner.session_header {
            request = request.header("x-amz-security-token", token.clone());
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/xml").body(body);
        }
        inner.api.send(request).await
    }

    /// The hosted zone holding `fqdn`.
    async fn zone_for(&self, fqdn: &str) -> Result<String, DnsError> {
        if let Some(id) = &self.inner.hosted_zone_id {
            return Ok(id.clone());
        }
        if let Some(id) = self
            .inner
            .zones
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(fqdn)
        {
            return Ok(id.clone());
        }
        let path = format!("{API_VERSION}/hostedzonesbyname");
        for candidate in zone_candidates(fqdn) {
            let resp = self
                .call(
                    reqwest::Method::GET,
                    &path,
                    &[("dnsname", candidate), ("maxitems", "100")],
                    None,
                )
                .await?;
            if !resp.is_success() {
                return Err(api_error(&resp, fqdn).1);
            }
            let root = parse_answer(&resp, "ListHostedZonesByNameResponse")?;
            let Some(zones) = root.child("HostedZones") else {
                return Err(malformed(&resp, "HostedZones"));
            };
            for zone in zones.children("HostedZone") {
                let name = zone.text_at(&["Name"]).map(plain_name);
                let private = zone.text_at(&["Config", "PrivateZone"]) == Some("true");
                if name.as_deref() != Some(candidate) || private {
                    continue;
                }
                let Some(id) = zone.text_at(&["Id"]).and_then(zone_id) else {
                    return Err(malformed(&resp, "HostedZone/Id"));
                };
                let mut cache = self.inner.zones.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED_ZONES {
                    cache.clear();
                }
                cache.insert(fqdn.to_owned(), id.clone());
                return Ok(id);
            }
        }
        Err(DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        })
    }

    /// `error`, after forgetting the zone found for `fqdn` when the error
    /// says that zone is gone (`NoSuchHostedZone`), so the next call looks
    /// it up again.
    fn forget_zone_on(&self, fqdn: &str, error: DnsError) -> DnsError {
        if matches!(error, DnsError::ZoneNotFound { .. }) {
            self.inner
                .zones
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(fqdn);
        }
        error
    }

    /// The TXT record set at `fqdn`, if there is one.
    async fn read_set(&self, zone: &str, fqdn: &str) -> Result<Option<RecordSet>, DnsError> {
        let name = format!("{fqdn}.");
        let resp = self
            .call(
                reqwest::Method::GET,
                &format!("{API_VERSION}/hostedzone/{zone}/rrset"),
                &[("name", &name), ("type", "TXT"), ("maxitems", "1")],
                None,
            )
            .await?;
        if !resp.is_success() {
            return Err(api_error(&resp, fqdn).1);
        }
        let root = parse_answer(&resp, "ListResourceRecordSetsResponse")?;
        let Some(sets) = root.child("ResourceRecordSets") else {
            return Err(malformed(&resp, "ResourceRecordSets"));
        };
        // The list starts at (name, type): the first set is ours only if
        // both match.
        let Some(set) = sets.children("ResourceRecordSet").find(|set| {
            set.text_at(&["Name"]).map(plain_name).as_deref() == Some(fqdn)
                && set.text_at(&["Type"]) == Some("TXT")
        }) else {
            return Ok(None);
        };
        let ttl = match set.text_at(&["TTL"]) {
            Some(ttl) => ttl.parse().map_err(|_| malformed(&resp, "TTL"))?,
            None => self.inner.ttl,
        };
        let values = set
            .child("ResourceRecords")
            .map(|records| {
                records
                    .children("ResourceRecord")
                    .filter_map(|r| r.text_at(&["Value"]))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(RecordSet { ttl, values }))
    }

    /// Sends one change of the TXT set at `fqdn`; returns the change id.
    async fn change(
        &self,
        zone: &str,
        action: &str,
        fqdn: &str,
        set: &RecordSet,
    ) -> Result<String, ChangeError> {
        let records: String = set
            .values
            .iter()
            .map(|v| {
                format!(
                    "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                    xml::escape(v)
                )
            })
            .collect();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <ChangeResourceRecordSetsRequest xmlns=\"{XMLNS}\">\
             <ChangeBatch><Comment>certauto DNS-01</Comment><Changes><Change>\
             <Action>{action}</Action><ResourceRecordSet>\
             <Name>{}.</Name><Type>TXT</Type><TTL>{}</TTL>\
             <ResourceRecords>{records}</ResourceRecords>\
             </ResourceRecordSet></Change></Changes></ChangeBatch>\
             </ChangeResourceRecordSetsRequest>",
            xml::escape(fqdn),
            set.ttl
        );
        let resp = self
            .call(
                reqwest::Method::POST,
                &format!("{API_VERSION}/hostedzone/{zone}/rrset/"),
                &[],
                Some(body),
            )
            .await
            .map_err(ChangeError::Failed)?;
        if !resp.is_success() {
            let (code, error) = api_error(&resp, fqdn);
            return Err(if code.as_deref() == Some("InvalidChangeBatch") {
                ChangeError::Conflict(error)
            } else {
                ChangeError::Failed(error)
            });
        }
        let root =
            parse_answer(&resp, "ChangeResourceRecordSetsResponse").map_err(ChangeError::Failed)?;
        root.text_at(&["ChangeInfo", "Id"])
            .and_then(change_id)
            .map(str::to_owned)
            .ok_or_else(|| ChangeError::Failed(malformed(&resp, "ChangeInfo/Id")))
    }

    /// Polls `GetChange` until `INSYNC`, within the configured bound; a
    /// failure or the bound passing is logged, not returned.
    async fn wait_in_sync(&self, fqdn: &str, id: &str) {
        let path = format!("{API_VERSION}/change/{id}");
        for poll in 0..self.inner.sync_polls {
            if poll > 0 {
                tokio::time::sleep(self.inner.sync_interval).await;
            }
            let status = match self.call(reqwest::Method::GET, &path, &[], None).await {
                Ok(resp) if resp.is_success() => parse_answer(&resp, "GetChangeResponse")
                    .ok()
                    .and_then(|root| root.text_at(&["ChangeInfo", "Status"]).map(str::to_owned)),
                Ok(resp) => {
                    let error = api_error(&resp, fqdn).1;
                    tracing::warn!(fqdn, change = id, error = %error, "Route 53 GetChange failed; not waiting for INSYNC");
                    return;
                }
                Err(error) => {
                    tracing::warn!(fqdn, change = id, error = %error, "Route 53 GetChange failed; not waiting for INSYNC");
                    return;
                }
            };
            match status.as_deref() {
                Some("INSYNC") => return,
                Some("PENDING") => {}
                other => {
                    tracing::warn!(fqdn, change = id, status = ?other, "unexpected Route 53 change status; not waiting");
                    return;
                }
            }
        }
        if self.inner.sync_polls > 0 {
            tracing::warn!(
                fqdn,
                change = id,
                polls = self.inner.sync_polls,
                "Route 53 change not INSYNC yet; going on"
            );
        }
    }
}

#[async_trait]
impl DnsProvider for Route53 {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let fqdn = normalize_name(fqdn);
        let zone = self.zone_for(&fqdn).await?;
        let guard = self.inner.locks.lock(&fqdn).await;
        let current = self
            .read_set(&zone, &fqdn)
            .await
            .map_err(|e| self.forget_zone_on(&fqdn, e))?;
        let mut set = current.unwrap_or(RecordSet {
            ttl: self.inner.ttl,
            values: Vec::new(),
        });
        if set.values.iter().any(|v| unquote_txt(v) == value) {
            return Ok(());
        }
        set.values.push(quote_txt(value));
        let id = match self.change(&zone, "UPSERT", &fqdn, &set).await {
            Ok(id) => id,
            Err(ChangeError::Conflict(e) | ChangeError::Failed(e)) => {
                return Err(self.forget_zone_on(&fqdn, e));
            }
        };
        tracing::debug!(fqdn, zone, change = %id, "Route 53 TXT value added");
        // The set is written: other calls for this name need not wait for
        // its propagation.
        drop(guard);
        self.wait_in_sync(&fqdn, &id).await;
        Ok(())
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let fqdn = normalize_name(fqdn);
        let zone = self.zone_for(&fqdn).await?;
        let _guard = self.inner.locks.lock(&fqdn).await;
        let mut last_conflict = None;
        for _ in 0..CHANGE_ATTEMPTS {
            let Some(current) = self
                .read_set(&zone, &fqdn)
                .await
                .map_err(|e| self.forget_zone_on(&fqdn, e))?
            else {
                return Ok(());
            };
            if !current.values.iter().any(|v| unquote_txt(v) == value) {
                return Ok(());
            }
            let rest: Vec<String> = current
                .values
                .iter()
                .filter(|v| unquote_txt(v) != value)
                .cloned()
                .collect();
            let result = if rest.is_empty() {
                // DELETE must name the set exactly as it is.
                self.change(&zone, "DELETE", &fqdn, &current).await
            } else {
                let set = RecordSet {
                    ttl: current.ttl,
                    values: rest,
                };
                self.change(&zone, "UPSERT", &fqdn, &set).await
            };
            match result {
                Ok(id) => {
                    tracing::debug!(fqdn, zone, change = %id, "Route 53 TXT value removed");
                    return Ok(());
                }
                // The set changed between our read and our write: read again.
                Err(ChangeError::Conflict(e)) => last_conflict = Some(e),
                Err(ChangeError::Failed(e)) => return Err(self.forget_zone_on(&fqdn, e)),
            }
        }
        Err(last_conflict
            .unwrap_or_else(|| DnsError::rejected(PROVIDER, None, "the record set kept changing")))
    }
}

#[cfg(test)]
mod tests;
