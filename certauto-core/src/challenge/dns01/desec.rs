//! deSEC: DNS-01 records through the deSEC DNS API (`desec.io`, also serving
//! `dedyn.io` names).
//!
//! The user documentation is on [`Desec`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::json;

use super::http::{
    ApiClient, ApiResponse, Secret, TokenApi, TokenApiParts, encode_component, normalize_name,
    quote_txt, relative_name, unquote_txt,
};
use super::name_lock::NameLocks;
use super::provider::{DnsError, DnsProvider};

const PROVIDER: &str = "desec";
const DEFAULT_API_URL: &str = "https://desec.io/api/v1";
/// deSEC's usual minimum TTL, the default for new RRsets.
pub(crate) const DEFAULT_TTL: u32 = 3600;

/// Writes DNS-01 TXT records through the deSEC API
/// (`https://desec.io/api/v1`) with an API token (`Authorization: Token`).
///
/// deSEC stores whole RRsets, so a value is added or removed by reading the
/// TXT RRset and writing it back; calls for one name are serialised inside
/// the provider (and its clones), but another process writing the same RRset
/// at the same time can still race. New RRsets get at least the domain's
/// minimum TTL (usually 3600 s); rate limits (429) carry `Retry-After`.
///
/// Follows the API v1 at `https://desec.io/api/v1`, as documented at
/// <https://desec.readthedocs.io/en/latest/dns/domains.html> and
/// <https://desec.readthedocs.io/en/latest/dns/rrsets.html>:
///
/// - the domain is found with `GET /api/v1/domains/?owns_qname=<fqdn>`,
///   which answers the account's domain responsible for the name (if any);
/// - deSEC stores record *sets*: a value is added by reading the TXT RRset
///   (`GET /api/v1/domains/{domain}/rrsets/{subname}/TXT/`, 404 when absent)
///   and writing it back with the value added, with
///   `PATCH /api/v1/domains/{domain}/rrsets/{subname}/TXT/` (`records` only,
///   so the TTL set by others stays) or, for a new RRset,
///   `POST /api/v1/domains/{domain}/rrsets/` (`subname`, `type`, `ttl`,
///   `records`); a value is removed the same way, and an empty `records`
///   list deletes the RRset. TXT values are quoted character strings;
/// - new RRsets get the configured TTL, raised to the domain's
///   `minimum_ttl` (3600 for most accounts, deSEC's default).
///
/// Because of that read-modify-write, calls for one name are serialised
/// inside the provider (and its clones) with a lock per name, so a wildcard
/// and its apex written at once keep both values. **Another process or tool
/// writing the same RRset at the same time can still race** and lose a
/// value: give each its own name (CNAME delegation) if that can happen.
///
/// deSEC rate-limits writes (per domain, per minute and per day) with
/// `429 Too Many Requests` and `Retry-After`, which becomes
/// [`DnsError::RateLimited`]; error bodies (`{"detail": ...}` and field
/// errors) are shown in the [`DnsError`].
///
/// **Credentials:** an API token (`Authorization: Token ...`). deSEC tokens
/// can be restricted by token policies: allow writing only the `TXT` RRsets of
/// the `_acme-challenge` subnames of the domains concerned.
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use certauto::dns::Desec;
/// use certauto::Dns01Solver;
///
/// # fn main() -> Result<(), certauto::DnsError> {
/// let token = std::env::var("DESEC_TOKEN").unwrap_or_default();
/// let solver = Dns01Solver::new(Desec::builder(token).build()?);
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Desec {
    api: ApiClient,
    token: Secret,
    ttl: u32,
    locks: Arc<NameLocks>,
}

impl fmt::Debug for Desec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Desec")
            .field("api", &self.api)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Desec`] provider; from [`Desec::builder`].
pub struct DesecBuilder {
    api: TokenApi,
}

impl fmt::Debug for DesecBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesecBuilder")
            .field("api", &self.api)
            .finish()
    }
}

impl Desec {
    /// Settings for a provider using the API token `token`.
    pub fn builder(token: impl Into<String>) -> DesecBuilder {
        DesecBuilder {
            api: TokenApi::new(token, DEFAULT_API_URL, DEFAULT_TTL),
        }
    }
}

impl DesecBuilder {
    /// The API's base URL (default `https://desec.io/api/v1`).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api.api_url = url.into();
        self
    }

    /// The TTL of new RRsets in seconds, at most 86400 (default 3600); raised
    /// to the domain's minimum TTL when lower.
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.api.ttl = ttl;
        self
    }

    /// More root certificates to trust for the API (a proxy's CA).
    pub fn extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.api.extra_roots = roots;
        self
    }

    /// The provider; [`DnsError::Config`] for an empty or unprintable token,
    /// a TTL out of range or an unusable URL.
    pub fn build(self) -> Result<Desec, DnsError> {
        let TokenApiParts { api, token, ttl } = self.api.check(
            PROVIDER,
            "the API token",
            "Token",
            |ttl| (1..=86_400).contains(&ttl),
            "1 to 86400",
        )?;
        Ok(Desec {
            api,
            token,
            ttl,
            locks: Arc::new(NameLocks::default()),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Domain {
    name: String,
    #[serde(default)]
    minimum_ttl: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Rrset {
    records: Vec<String>,
}

/// deSEC's error body: `{"detail": ...}`, or field errors.
fn failure(resp: &ApiResponse) -> DnsError {
    resp.error_from_body(PROVIDER, |v: serde_json::Value| {
        v.get("detail").and_then(|d| d.as_str()).map(str::to_owned)
    })
}

impl Desec {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<ApiResponse, DnsError> {
        let authorization = format!("Token {}", self.token.expose());
        self.api
            .send_json(method, path, &authorization, body.as_ref())
            .await
    }

    /// The domain responsible for `fqdn`.
    async fn domain(&self, fqdn: &str) -> Result<Domain, DnsError> {
        let path = format!("/domains/?owns_qname={}", encode_component(fqdn));
        let resp = self.send(Method::GET, &path, None).await?;
        if !resp.is_success() {
            return Err(failure(&resp));
        }
        let domains: Vec<Domain> = resp.json(PROVIDER)?;
        domains
            .into_iter()
            .find(|d| relative_name(fqdn, &d.name).is_some())
            .ok_or_else(|| DnsError::ZoneNotFound {
                provider: PROVIDER,
                name: fqdn.to_owned(),
            })
    }

    /// The RRset's path; `@` names the apex.
    fn rrset_path(domain: &str, subname: &str) -> String {
        let subname = if subname.is_empty() {
            "@".to_owned()
        } else {
            encode_component(subname)
        };
        format!(
            "/domains/{}/rrsets/{subname}/TXT/",
            encode_component(domain)
        )
    }

    /// The TXT values (as stored: quoted) at `subname`, `None` when there is
    /// no RRset.
    async fn read(&self, domain: &str, subname: &str) -> Result<Option<Vec<String>>, DnsError> {
        let resp = self
            .send(Method::GET, &Self::rrset_path(domain, subname), None)
            .await?;
        if resp.status == 404 {
            return Ok(None);
        }
        if !resp.is_success() {
            return Err(failure(&resp));
        }
        let rrset: Rrset = resp.json(PROVIDER)?;
        Ok(Some(rrset.records))
    }

    /// Adds (`add`) or removes `value` at `fqdn`, under the name's lock.
    async fn change(&self, fqdn: &str, value: &str, add: bool) -> Result<(), DnsError> {
        let domain = self.domain(fqdn).await?;
        let subname = match relative_name(fqdn, &domain.name) {
            Some("@") => String::new(),
            Some(sub) => sub.to_ascii_lowercase(),
            None => {
                return Err(DnsError::ZoneNotFound {
                    provider: PROVIDER,
                    name: fqdn.to_owned(),
                });
            }
        };
        let _guard = self.locks.lock(&normalize_name(fqdn)).await;
        let current = self.read(&domain.name, &subname).await?;
        let present = current
            .as_ref()
            .is_some_and(|records| records.iter().any(|r| unquote_txt(r) == value));
        if present == add {
            return Ok(()); // already as wanted
        }
        let resp = match current {
            Some(records) => {
                let mut records: Vec<String> = records
                    .into_iter()
                    .filter(|r| unquote_txt(r) != value)
                    .collect();
                if add {
                    records.push(quote_txt(value));
                }
                let path = Self::rrset_path(&domain.name, &subname);
                self.send(Method::PATCH, &path, Some(json!({ "records": records })))
                    .await?
            }
            None => {
                // `add` here: removing from an absent RRset returned above.
                let ttl = self.ttl.max(domain.minimum_ttl.unwrap_or(0));
                let body = json!({
                    "subname": subname,
                    "type": "TXT",
                    "ttl": ttl,
                    "records": [quote_txt(value)],
                });
                let path = format!("/domains/{}/rrsets/", encode_component(&domain.name));
                self.send(Method::POST, &path, Some(body)).await?
            }
        };
        if !resp.is_success() {
            return Err(failure(&resp));
        }
        if !resp.body.is_empty() {
            // The RRset as written (204 No Content when it was deleted).
            let _: Rrset = resp.json(PROVIDER)?;
        }
        Ok(())
    }
}

#[async_trait]
impl DnsProvider for Desec {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.change(fqdn, value, true).await
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.change(fqdn, value, false).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;
    use crate::challenge::dns01::provider_checks::{self, OTHER, V1};
    use crate::challenge::dns01::standin::{Reply, Seen, StandIn, percent_decode};

    const TOKEN: &str = "desec-tok-u7Yx";
    const BASE: &str = "/api/v1";

    #[derive(Default)]
    struct State {
        /// domain name -> minimum TTL
        domains: Vec<(String, u32)>,
        /// (domain, subname) -> (ttl, records)
        rrsets: BTreeMap<(String, String), (u64, Vec<String>)>,
        answer_all: Option<Reply>,
        violations: Vec<String>,
    }

    /// A stand-in for the deSEC API v1 (domains, TXT RRsets), checking each
    /// request as the API documentation specifies.
    struct DesecStandIn {
        state: Arc<Mutex<State>>,
        server: StandIn,
    }

    fn detail(status: u16, text: &str) -> Reply {
        Reply::json(status, json!({ "detail": text }))
    }

    fn rrset_json(domain: &str, subname: &str, ttl: u64, records: &[String]) -> Value {
        let name = if subname.is_empty() {
            format!("{domain}.")
        } else {
            format!("{subname}.{domain}.")
        };
        json!({"domain": domain, "subname": subname, "name": name, "type": "TXT",
            "records": records, "ttl": ttl, "created": "2026-01-01T00:00:00Z", "touched": "2026-01-01T00:00:00Z"})
    }

    fn quoted(records: &[String]) -> bool {
        records
            .iter()
            .all(|r| r.len() >= 2 && r.starts_with('"') && r.ends_with('"'))
    }

    fn handle(state: &Mutex<State>, req: &Seen) -> Reply {
        let mut st = state.lock().unwrap();
        match answer(&mut st, req) {
            Ok(reply) => reply,
            Err(violation) => {
                st.violations.push(violation.clone());
                detail(400, &format!("stand-in: {violation}: {}", req.text()))
            }
        }
    }

    fn answer(st: &mut State, req: &Seen) -> Result<Reply, String> {
        let auth = req.header("authorization");
        if !auth.starts_with("Token ") {
            return Err(format!("no token: {auth:?}"));
        }
        if auth != format!("Token {TOKEN}") {
            return Ok(detail(401, "Invalid token."));
        }
        if let Some(reply) = &st.answer_all {
            return Ok(reply.clone());
        }
        let path = req
            .path()
            .strip_prefix(BASE)
            .ok_or_else(|| format!("path outside {BASE}: {}", req.path()))?;
        // deSEC's URLs end with a slash.
        let inner = path
            .strip_prefix('/')
            .and_then(|p| p.strip_suffix('/'))
            .ok_or_else(|| format!("path without a trailing slash: {path}"))?;
        let segments: Vec<String> = inner.split('/').map(percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let query = req.query_pairs();
        let json_body = req.header("content-type") == "application/json";
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["domains"]) => {
                let [(k, qname)] = query.as_slice() else {
                    return Err(format!("domains query {query:?}"));
                };
                if k != "owns_qname" {
                    return Err(format!("domains query {query:?}"));
                }
                // The longest domain of the account that is the name or a parent.
                let best = st
                    .domains
                    .iter()
                    .filter(|(d, _)| qname == d || qname.ends_with(&format!(".{d}")))
                    .max_by_key(|(d, _)| d.len());
                let list: Vec<Value> = best
                    .iter()
                    .map(|(d, min)| json!({"name": d, "minimum_ttl": min, "created": "2026-01-01T00:00:00Z"}))
                    .collect();
                Ok(Reply::json(200, Value::Array(list)))
            }
            (method, ["domains", domain, "rrsets", subname, "TXT"]) => {
                if !st.domains.iter().any(|(d, _)| d == domain) {
                    return Ok(detail(404, "Not found."));
                }
                let subname = if *subname == "@" { "" } else { *subname };
                let key = ((*domain).to_owned(), subname.to_owned());
                match method {
                    "GET" => Ok(match st.rrsets.get(&key) {
                        Some((ttl, records)) => {
                            Reply::json(200, rrset_json(domain, subname, *ttl, records))
                        }
                        None => detail(404, "Not found."),
                    }),
                    "PATCH" => {
                        let body = req.json();
                        let fields: Vec<&String> = body.as_object().ok_or("body")?.keys().collect();
                        if !json_body || fields != ["records"] {
                            return Err(format!("PATCH body {body}"));
                        }
                        let records: Vec<String> = serde_json::from_value(body["records"].clone())
                            .map_err(|e| e.to_string())?;
                        if !quoted(&records) {
                            return Err(format!("unquoted TXT records {records:?}"));
                        }
                        let Some(entry) = st.rrsets.get_mut(&key) else {
                            return Ok(detail(404, "Not found."));
                        };
                        if records.is_empty() {
                            st.rrsets.remove(&key);
                            return Ok(Reply::text(204, "application/json", ""));
                        }
                        entry.1 = records;
                        let (ttl, records) = entry.clone();
                        Ok(Reply::json(200, rrset_json(domain, subname, ttl, &records)))
                    }
                    _ => Err(format!("unexpected {method} on an RRset")),
                }
            }
            ("POST", ["domains", domain, "rrsets"]) => {
                let body = req.json();
                let fields: Vec<&String> = body.as_object().ok_or("body")?.keys().collect();
                if !json_body
                    || fields != ["records", "subname", "ttl", "type"]
                    || body["type"] != "TXT"
                {
                    return Err(format!("POST body {body}"));
                }
                let Some(&(_, minimum_ttl)) = st.domains.iter().find(|(d, _)| d == domain) else {
                    return Ok(detail(404, "Not found."));
                };
                let (Some(subname), Some(ttl)) = (body["subname"].as_str(), body["ttl"].as_u64())
                else {
                    return Err(format!("POST body {body}"));
                };
                let records: Vec<String> =
                    serde_json::from_value(body["records"].clone()).map_err(|e| e.to_string())?;
                if !quoted(&records) || records.is_empty() {
                    return Err(format!("POST records {records:?}"));
                }
                if ttl < u64::from(minimum_ttl) {
                    return Ok(Reply::json(
                        400,
                        json!({"ttl": [format!("Ensure this value is greater than or equal to {minimum_ttl}.")]}),
                    ));
                }
                let key = ((*domain).to_owned(), subname.to_owned());
                if st.rrsets.contains_key(&key) {
                    return Ok(Reply::json(
                        400,
                        json!({"non_field_errors": ["Another RRset with the same subdomain and type exists for this domain."]}),
                    ));
                }
                st.rrsets.insert(key, (ttl, records.clone()));
                Ok(Reply::json(201, rrset_json(domain, subname, ttl, &records)))
            }
            _ => Err(format!("unexpected {} {}", req.method, req.target)),
        }
    }

    impl DesecStandIn {
        async fn start(domains: &[(&str, u32)]) -> Self {
            let state = Arc::new(Mutex::new(State {
                domains: domains.iter().map(|(d, t)| ((*d).to_owned(), *t)).collect(),
                ..State::default()
            }));
            let server = StandIn::start({
                let state = state.clone();
                move |req| handle(&state, req)
            })
            .await;
            Self { state, server }
        }

        fn builder(&self, token: &str) -> DesecBuilder {
            Desec::builder(token).api_url(format!("{}{BASE}", self.server.url()))
        }

        fn provider(&self) -> Desec {
            self.builder(TOKEN).build().unwrap()
        }

        fn seed(&self, domain: &str, subname: &str, value: &str) {
            self.state.lock().unwrap().rrsets.insert(
                (domain.into(), subname.into()),
                (7200, vec![quote_txt(value)]),
            );
        }

        fn values(&self, domain: &str, subname: &str) -> Vec<String> {
            let st = self.state.lock().unwrap();
            st.rrsets
                .get(&(domain.into(), subname.into()))
                .map(|(_, r)| r.iter().map(|v| unquote_txt(v)).collect())
                .unwrap_or_default()
        }

        fn answer_all(&self, reply: Option<Reply>) {
            self.state.lock().unwrap().answer_all = reply;
        }

        fn assert_no_violations(&self) {
            let st = self.state.lock().unwrap();
            assert!(st.violations.is_empty(), "{:?}", st.violations);
        }
    }

    #[tokio::test]
    async fn exact_values_with_another_value_kept() {
        let api = DesecStandIn::start(&[("example.com", 3600)]).await;
        api.seed("example.com", "_acme-challenge", OTHER);
        let provider = api.provider();
        provider_checks::exact_values(&provider, "_acme-challenge.example.com", || {
            api.values("example.com", "_acme-challenge")
        })
        .await;
        api.assert_no_violations();
        assert_eq!(provider.locks.live(), 0);
        // The other tool's TTL was kept.
        let st = api.state.lock().unwrap();
        assert_eq!(st.rrsets.values().next().unwrap().0, 7200);
    }

    #[tokio::test]
    async fn new_rrsets_empty_ones_deleted_and_minimum_ttl() {
        let api = DesecStandIn::start(&[("example.com", 3600), ("sub.example.com", 60)]).await;
        let provider = api.builder(TOKEN).ttl(300).build().unwrap();
        // A deeper name in the longest domain, with a low minimum TTL.
        let fqdn = "_acme-challenge.a.sub.example.com";
        provider.create_txt_record(fqdn, V1).await.unwrap();
        assert_eq!(api.values("sub.example.com", "_acme-challenge.a"), [V1]);
        // The configured TTL is raised to the domain's minimum.
        provider
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap();
        {
            let st = api.state.lock().unwrap();
            let ttl = |d: &str, s: &str| st.rrsets[&(d.to_owned(), s.to_owned())].0;
            assert_eq!(ttl("sub.example.com", "_acme-challenge.a"), 300);
            assert_eq!(ttl("example.com", "_acme-challenge"), 3600);
        }
        // The last value removed deletes the RRset (empty records list).
        provider.delete_txt_record(fqdn, V1).await.unwrap();
        assert!(
            !api.state
                .lock()
                .unwrap()
                .rrsets
                .contains_key(&("sub.example.com".into(), "_acme-challenge.a".into()))
        );
        // At a domain's apex (a CNAME-delegated validation zone).
        provider
            .create_txt_record("sub.example.com", V1)
            .await
            .unwrap();
        assert_eq!(api.values("sub.example.com", ""), [V1]);
        assert!(
            api.server
                .seen()
                .iter()
                .any(|s| s.path() == "/api/v1/domains/sub.example.com/rrsets/@/TXT/")
        );
        provider
            .delete_txt_record("sub.example.com", V1)
            .await
            .unwrap();
        api.assert_no_violations();
    }

    #[tokio::test]
    async fn unknown_domain_is_zone_not_found() {
        let api = DesecStandIn::start(&[("other.org", 3600)]).await;
        let err = api
            .provider()
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err:?}");
        api.assert_no_violations();
    }

    #[tokio::test]
    async fn refused_token_is_auth_refused_and_never_shown() {
        let api = DesecStandIn::start(&[("example.com", 3600)]).await;
        let provider = api.builder("desec-wrong-9").build().unwrap();
        let err = provider
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::AuthRefused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("Invalid token."), "{text}");
        assert!(!text.contains("desec-wrong-9"));
    }

    #[tokio::test]
    async fn error_body_text_is_shown() {
        let api = DesecStandIn::start(&[("example.com", 3600)]).await;
        api.answer_all(Some(detail(403, "Insufficient token permissions.")));
        let err = api
            .provider()
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("Insufficient token permissions."),
            "{err}"
        );
        // Field errors are shown as sent.
        api.answer_all(Some(Reply::json(
            400,
            json!({"records": ["Invalid TXT record content."]}),
        )));
        let err = api
            .provider()
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                DnsError::Rejected {
                    status: Some(400),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("Invalid TXT record content."),
            "{err}"
        );
    }

    #[tokio::test]
    async fn http_failures_are_typed() {
        let api = DesecStandIn::start(&[("example.com", 3600)]).await;
        let provider = api.provider();
        provider_checks::http_failures(
            &provider,
            "_acme-challenge.example.com",
            |r| api.answer_all(r),
            detail(
                429,
                "Request was throttled. Expected available in 7 seconds.",
            )
            .header("retry-after", "7"),
            detail(503, "Service unavailable."),
        )
        .await;
        api.assert_no_violations();
    }

    #[test]
    fn debug_hides_the_token_and_settings_are_checked() {
        let builder = Desec::builder(TOKEN);
        assert!(!format!("{builder:?}").contains(TOKEN));
        let provider = builder.api_url("http://127.0.0.1:1").build().unwrap();
        let debug = format!("{provider:?}");
        assert!(
            !debug.contains(TOKEN) && debug.contains("redacted"),
            "{debug}"
        );
        for builder in [
            Desec::builder(""),
            Desec::builder("line\nbreak"),
            Desec::builder(TOKEN).ttl(0),
            Desec::builder(TOKEN).api_url("http://desec.example"),
        ] {
            assert!(matches!(builder.build(), Err(DnsError::Config { .. })));
        }
    }
}
