//! Cloudflare: DNS-01 records through the Cloudflare API v4.
//!
//! The user documentation is on [`Cloudflare`].

use std::fmt;

use async_trait::async_trait;
use reqwest::Method;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::json;

use super::http::{
    ApiClient, ApiResponse, Secret, TokenApi, TokenApiParts, collect_pages, encode_component,
    is_path_segment, path_id, quote_txt, unquote_txt, zone_candidates,
};
use super::provider::{DnsError, DnsProvider};

const PROVIDER: &str = "cloudflare";
const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";
/// The TTL given to new records by default (seconds).
pub(crate) const DEFAULT_TTL: u32 = 120;
/// The most pages of 100 records read when looking for a value.
pub(crate) const MAX_PAGES: u32 = 20;
/// Records asked for per page.
const PER_PAGE: u32 = 100;
/// Cloudflare's code for "An identical record already exists."
const IDENTICAL_RECORD: i64 = 81058;

/// Writes DNS-01 TXT records through the Cloudflare API v4
/// (`https://api.cloudflare.com/client/v4`), one record per value, with an
/// API token allowed *Zone / DNS / Edit* (and *Zone / Zone / Read* unless a
/// [`zone_id`](CloudflareBuilder::zone_id) is given). The zone is found from
/// the record's name, longest candidate first; duplicate values count as
/// written and records already gone as deleted.
///
/// Follows the API v4 at `https://api.cloudflare.com/client/v4`, as
/// documented at <https://developers.cloudflare.com/api/resources/dns/subresources/records/>
/// and <https://developers.cloudflare.com/api/resources/zones/>:
///
/// - the zone is a configured [`zone_id`](CloudflareBuilder::zone_id), or
///   found with `GET /zones?name=<candidate>`, trying the record's name and
///   its parents, longest first;
/// - a value is added with `POST /zones/{zone_id}/dns_records` (`type` TXT,
///   the full `name`, `content` as a quoted character string, as Cloudflare
///   asks of TXT content, and `ttl`); Cloudflare keeps one record per value,
///   so other values at the name are untouched, and its answer "An identical
///   record already exists" (code 81058) counts as success;
/// - a value is removed by listing the TXT records at the name
///   (`GET /zones/{zone_id}/dns_records?type=TXT&name=<fqdn>`, at most
///   20 pages of 100; a longer listing is refused with [`DnsError::Rejected`])
///   and deleting the ones whose content is that
///   value (`DELETE /zones/{zone_id}/dns_records/{id}`); a record already
///   gone (404) counts as success.
///
/// No call reads and rewrites a record set, so no lock is needed: concurrent
/// calls for one name each touch only their own record.
///
/// Errors come from Cloudflare's `{"success":false,"errors":[{"code","message"}]}`
/// body, whose codes and messages are shown in the [`DnsError`].
///
/// **Credentials:** an API token (`Authorization: Bearer`), created in the
/// dashboard with the least privilege that works: *Zone / DNS / Edit* for the
/// zone(s) holding the records, plus *Zone / Zone / Read* unless
/// [`zone_id`](CloudflareBuilder::zone_id) is given. Global API keys are not
/// supported.
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use certauto::dns::Cloudflare;
/// use certauto::Dns01Solver;
///
/// # fn main() -> Result<(), certauto::DnsError> {
/// let token = std::env::var("CLOUDFLARE_API_TOKEN").unwrap_or_default();
/// let dns = Cloudflare::builder(token).ttl(120).build()?;
/// let solver = Dns01Solver::new(dns);
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cloudflare {
    api: ApiClient,
    token: Secret,
    ttl: u32,
    zone_id: Option<String>,
}

impl fmt::Debug for Cloudflare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cloudflare")
            .field("api", &self.api)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .field("zone_id", &self.zone_id)
            .finish()
    }
}

/// Settings of a [`Cloudflare`] provider; from [`Cloudflare::builder`].
pub struct CloudflareBuilder {
    api: TokenApi,
    zone_id: Option<String>,
}

impl fmt::Debug for CloudflareBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflareBuilder")
            .field("api", &self.api)
            .field("zone_id", &self.zone_id)
            .finish()
    }
}

impl Cloudflare {
    /// Settings for a provider using the API token `token`.
    pub fn builder(token: impl Into<String>) -> CloudflareBuilder {
        CloudflareBuilder {
            api: TokenApi::new(token, DEFAULT_API_URL, DEFAULT_TTL),
            zone_id: None,
        }
    }
}

impl CloudflareBuilder {
    /// The API's base URL (default `https://api.cloudflare.com/client/v4`).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api.api_url = url.into();
        self
    }

    /// The TTL of new records in seconds: 1 (Cloudflare's "automatic") or
    /// 60 to 86400 (default 120).
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.api.ttl = ttl;
        self
    }

    /// The zone's identifier (32 hex digits in the dashboard), so no zone
    /// lookup is made and the token needs no *Zone Read* permission. Every
    /// record name must then be inside that zone: for a name outside it
    /// (which Cloudflare would take as relative to the zone, writing
    /// `<name>.<zone>`), the record made is removed again and the call
    /// fails with [`DnsError::ZoneNotFound`].
    pub fn zone_id(mut self, zone_id: impl Into<String>) -> Self {
        self.zone_id = Some(zone_id.into());
        self
    }

    /// More root certificates to trust for the API (a proxy's CA).
    pub fn extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.api.extra_roots = roots;
        self
    }

    /// The provider; [`DnsError::Config`] for an empty token or zone id, a
    /// TTL out of range, or an unusable URL.
    pub fn build(self) -> Result<Cloudflare, DnsError> {
        if self.zone_id.as_deref().is_some_and(str::is_empty) {
            return Err(DnsError::config(PROVIDER, "the zone id is empty"));
        }
        if let Some(id) = self.zone_id.as_deref().filter(|id| !is_path_segment(id)) {
            return Err(DnsError::config(
                PROVIDER,
                format!("the zone id {id:?} is not an identifier"),
            ));
        }
        let TokenApiParts { api, token, ttl } = self.api.check(
            PROVIDER,
            "the API token",
            "Bearer",
            |ttl| ttl == 1 || (60..=86_400).contains(&ttl),
            "1, or 60 to 86400",
        )?;
        Ok(Cloudflare {
            api,
            token,
            ttl,
            zone_id: self.zone_id,
        })
    }
}

/// Cloudflare's answer envelope.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    success: bool,
    #[serde(default)]
    errors: Vec<ApiError>,
    result: T,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

/// The envelope of an error answer (`result` absent or null).
#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    errors: Vec<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct ResultInfo {
    #[serde(default)]
    total_pages: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Zone {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Record {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    content: String,
}

/// The codes and messages of an error answer, if it has any.
fn error_detail(errors: &[ApiError]) -> Option<String> {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("code {}: {}", e.code, e.message))
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn failure(resp: &ApiResponse) -> DnsError {
    resp.error_from_body(PROVIDER, |e: ErrorEnvelope| error_detail(&e.errors))
}

/// The envelope of a success answer; `success: false` is refused.
fn success<T: serde::de::DeserializeOwned>(resp: &ApiResponse) -> Result<Envelope<T>, DnsError> {
    let envelope: Envelope<T> = resp.json(PROVIDER)?;
    if !envelope.success {
        let detail = error_detail(&envelope.errors).unwrap_or_else(|| resp.snippet());
        return Err(DnsError::rejected(PROVIDER, Some(resp.status), detail));
    }
    Ok(envelope)
}

/// Whether the record name Cloudflare shows is `fqdn`.
fn same_name(shown: &str, fqdn: &str) -> bool {
    shown
        .trim_end_matches('.')
        .eq_ignore_ascii_case(fqdn.trim_end_matches('.'))
}

impl Cloudflare {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<ApiResponse, DnsError> {
        let authorization = format!("Bearer {}", self.token.expose());
        self.api
            .send_json(method, path, &authorization, body.as_ref())
            .await
    }

    /// The zone holding `fqdn`: the configured one, or the longest candidate
    /// the account has.
    async fn zone_id(&self, fqdn: &str) -> Result<String, DnsError> {
        if let Some(id) = &self.zone_id {
            return Ok(id.clone());
        }
        for candidate in zone_candidates(fqdn) {
            let path = format!("/zones?name={}", encode_component(candidate));
            let resp = self.send(Method::GET, &path, None).await?;
            if !resp.is_success() {
                return Err(failure(&resp));
            }
            let zones: Envelope<Vec<Zone>> = success(&resp)?;
            if let Some(zone) = zones
                .result
                .into_iter()
                .find(|z| z.name.trim_end_matches('.').eq_ignore_ascii_case(candidate))
            {
                return path_id(PROVIDER, "zone", zone.id);
            }
        }
        Err(DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        })
    }

    /// Deletes the record `id`; one already gone counts as deleted.
    async fn delete_record(&self, zone: &str, id: &str) -> Result<(), DnsError> {
        let path = format!(
            "/zones/{}/dns_records/{}",
            encode_component(zone),
            encode_component(id)
        );
        let resp = self.send(Method::DELETE, &path, None).await?;
        if resp.is_success() {
            let _: Envelope<serde_json::Value> = success(&resp)?;
        } else if resp.status != 404 {
            return Err(failure(&resp));
        }
        Ok(())
    }

    /// `fqdn` is not inside the configured zone.
    fn outside_zone(&self, fqdn: &str) -> DnsError {
        tracing::debug!(fqdn, zone = ?self.zone_id, "cloudflare: name outside the configured zone");
        DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        }
    }

    /// The ids of the TXT records at `fqdn` whose content is `value`.
    async fn find(&self, zone: &str, fqdn: &str, value: &str) -> Result<Vec<String>, DnsError> {
        collect_pages(PROVIDER, fqdn, MAX_PAGES, PER_PAGE, |page| async move {
            let path = format!(
                "/zones/{}/dns_records?type=TXT&name={}&per_page={PER_PAGE}&page={page}",
                encode_component(zone),
                encode_component(fqdn),
            );
            let resp = self.send(Method::GET, &path, None).await?;
            if !resp.is_success() {
                return Err(failure(&resp));
            }
            let records: Envelope<Vec<Record>> = success(&resp)?;
            let last = records.result.is_empty()
                || records
                    .result_info
                    .and_then(|i| i.total_pages)
                    .is_none_or(|total| page >= total);
            let ids = records
                .result
                .into_iter()
                .filter(|r| {
                    r.kind == "TXT" && same_name(&r.name, fqdn) && unquote_txt(&r.content) == value
                })
                .map(|r| path_id(PROVIDER, "record", r.id))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((ids, last))
        })
        .await
    }
}

#[async_trait]
impl DnsProvider for Cloudflare {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let zone = self.zone_id(fqdn).await?;
        let body = json!({
            "type": "TXT",
            "name": fqdn,
            "content": quote_txt(value),
            "ttl": self.ttl,
        });
        let path = format!("/zones/{}/dns_records", encode_component(&zone));
        let resp = self.send(Method::POST, &path, Some(body)).await?;
        if resp.is_success() {
            let created: Envelope<Record> = success(&resp)?;
            let created_id = path_id(PROVIDER, "record", created.result.id)?;
            if !same_name(&created.result.name, fqdn) {
                // Only with a configured zone id: `fqdn` is outside that
                // zone and Cloudflare took it as relative to the zone
                // (`<fqdn>.<zone>`). That record is of no use: remove it.
                self.delete_record(&zone, &created_id).await?;
                return Err(self.outside_zone(fqdn));
            }
            tracing::debug!(fqdn, record = %created_id, "cloudflare: TXT record created");
            return Ok(());
        }
        let duplicate = serde_json::from_slice::<ErrorEnvelope>(&resp.body)
            .is_ok_and(|e| e.errors.iter().any(|e| e.code == IDENTICAL_RECORD));
        if resp.status == 400 && duplicate {
            // With a configured zone, the identical record may be one at
            // `<fqdn>.<zone>` (left by an earlier call whose clean-up
            // failed): it counts only if it is at `fqdn` itself.
            if self.zone_id.is_some() && self.find(&zone, fqdn, value).await?.is_empty() {
                return Err(self.outside_zone(fqdn));
            }
            tracing::debug!(fqdn, "cloudflare: TXT record already there");
            return Ok(());
        }
        Err(failure(&resp))
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let zone = self.zone_id(fqdn).await?;
        for id in self.find(&zone, fqdn, value).await? {
            self.delete_record(&zone, &id).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;
    use crate::challenge::dns01::provider_checks::{self, OTHER, V1};
    use crate::challenge::dns01::standin::{Reply, Seen, StandIn};

    const TOKEN: &str = "cf-token-6fA9kQ";
    const BASE: &str = "/client/v4";

    #[derive(Default)]
    struct State {
        /// (id, name)
        zones: Vec<(String, String)>,
        /// (id, zone id, name, content as stored, ttl)
        records: Vec<(String, String, String, String, u64)>,
        next_id: u64,
        answer_all: Option<Reply>,
        violations: Vec<String>,
    }

    /// A stand-in for the Cloudflare API v4 (zones and DNS records), checking
    /// each request as the API documentation specifies.
    struct CloudflareStandIn {
        state: Arc<Mutex<State>>,
        server: StandIn,
    }

    fn cf_error(status: u16, code: i64, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
        )
    }

    fn cf_ok(result: Value) -> Reply {
        Reply::json(
            200,
            json!({"success": true, "errors": [], "messages": [], "result": result}),
        )
    }

    fn record_json(r: &(String, String, String, String, u64)) -> Value {
        json!({"id": r.0, "zone_id": r.1, "name": r.2, "type": "TXT", "content": r.3, "ttl": r.4, "proxied": false})
    }

    fn handle(state: &Mutex<State>, req: &Seen) -> Reply {
        let mut st = state.lock().unwrap();
        match answer(&mut st, req) {
            Ok(reply) => reply,
            Err(violation) => {
                st.violations.push(violation.clone());
                cf_error(400, 0, &format!("stand-in: {violation}"))
            }
        }
    }

    fn answer(st: &mut State, req: &Seen) -> Result<Reply, String> {
        let auth = req.header("authorization");
        if !auth.starts_with("Bearer ") {
            return Err(format!("no bearer token: {auth:?}"));
        }
        if auth != format!("Bearer {TOKEN}") {
            return Ok(cf_error(403, 10000, "Authentication error"));
        }
        if let Some(reply) = &st.answer_all {
            return Ok(reply.clone());
        }
        let path = req
            .path()
            .strip_prefix(BASE)
            .ok_or_else(|| format!("path outside {BASE}: {}", req.path()))?;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let query = req.query_pairs();
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["zones"]) => {
                let [(k, name)] = query.as_slice() else {
                    return Err(format!("zone query {query:?}"));
                };
                if k != "name" || !req.body.is_empty() {
                    return Err(format!("zone query {query:?}"));
                }
                let zones: Vec<Value> = st
                    .zones
                    .iter()
                    .filter(|z| &z.1 == name)
                    .map(|z| json!({"id": z.0, "name": z.1, "status": "active"}))
                    .collect();
                let count = zones.len();
                let mut reply = cf_ok(Value::Array(zones));
                let mut body: Value = serde_json::from_slice(&reply.body).unwrap();
                body["result_info"] = json!({"page": 1, "per_page": 20, "count": count, "total_count": count, "total_pages": 1});
                reply.body = body.to_string().into_bytes();
                Ok(reply)
            }
            ("GET", ["zones", zone, "dns_records"]) => {
                let get = |k: &str| {
                    query
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                if query.len() != 4
                    || get("type").as_deref() != Some("TXT")
                    || get("per_page").as_deref() != Some("100")
                {
                    return Err(format!("record query {query:?}"));
                }
                let name = get("name").ok_or("no name")?;
                let page: usize = get("page")
                    .and_then(|p| p.parse().ok())
                    .filter(|p| *p >= 1)
                    .ok_or("bad page")?;
                // Pages of 2 here (the stand-in's own cap), so paging is exercised.
                let all: Vec<Value> = st
                    .records
                    .iter()
                    .filter(|r| r.1 == *zone && r.2 == name)
                    .map(record_json)
                    .collect();
                let per_page = 2;
                let total_pages = all.len().div_ceil(per_page).max(1);
                let result: Vec<Value> = all
                    .iter()
                    .skip((page - 1) * per_page)
                    .take(per_page)
                    .cloned()
                    .collect();
                Ok(Reply::json(
                    200,
                    json!({"success": true, "errors": [], "messages": [], "result": result,
                        "result_info": {"page": page, "per_page": per_page, "count": result.len(),
                            "total_count": all.len(), "total_pages": total_pages}}),
                ))
            }
            ("POST", ["zones", zone, "dns_records"]) => {
                if req.header("content-type") != "application/json" || !query.is_empty() {
                    return Err("POST without JSON content type".into());
                }
                let body = req.json();
                let fields: Vec<&String> = body.as_object().ok_or("body")?.keys().collect();
                if fields != ["content", "name", "ttl", "type"] || body["type"] != "TXT" {
                    return Err(format!("record body {body}"));
                }
                let (Some(name), Some(content), Some(ttl)) = (
                    body["name"].as_str(),
                    body["content"].as_str(),
                    body["ttl"].as_u64(),
                ) else {
                    return Err(format!("record body {body}"));
                };
                // TXT content is a quoted character string.
                if !(content.len() >= 2 && content.starts_with('"') && content.ends_with('"')) {
                    return Err(format!("unquoted TXT content {content}"));
                }
                let Some(zone_name) = st.zones.iter().find(|z| z.0 == *zone).map(|z| z.1.clone())
                else {
                    return Ok(cf_error(
                        400,
                        7003,
                        "Could not route to /zones, perhaps your object identifier is invalid?",
                    ));
                };
                // Cloudflare takes a name that does not end in the zone's
                // name as relative to the zone.
                let name = if name == zone_name || name.ends_with(&format!(".{zone_name}")) {
                    name.to_owned()
                } else {
                    format!("{name}.{zone_name}")
                };
                let name = name.as_str();
                if st
                    .records
                    .iter()
                    .any(|r| r.1 == *zone && r.2 == name && r.3 == content)
                {
                    return Ok(cf_error(
                        400,
                        IDENTICAL_RECORD,
                        "An identical record already exists.",
                    ));
                }
                st.next_id += 1;
                let record = (
                    format!("rec{}", st.next_id),
                    (*zone).to_owned(),
                    name.to_owned(),
                    content.to_owned(),
                    ttl,
                );
                let json = record_json(&record);
                st.records.push(record);
                Ok(cf_ok(json))
            }
            ("DELETE", ["zones", zone, "dns_records", id]) => {
                if !req.body.is_empty() || !query.is_empty() {
                    return Err("DELETE with a body or query".into());
                }
                let before = st.records.len();
                st.records.retain(|r| !(r.1 == *zone && r.0 == *id));
                if st.records.len() == before {
                    return Ok(cf_error(404, 81044, "Record does not exist."));
                }
                Ok(cf_ok(json!({"id": id})))
            }
            _ => Err(format!("unexpected {} {}", req.method, req.target)),
        }
    }

    impl CloudflareStandIn {
        async fn start(zones: &[(&str, &str)]) -> Self {
            let state = Arc::new(Mutex::new(State {
                zones: zones
                    .iter()
                    .map(|(id, name)| ((*id).to_owned(), (*name).to_owned()))
                    .collect(),
                ..State::default()
            }));
            let server = StandIn::start({
                let state = state.clone();
                move |req| handle(&state, req)
            })
            .await;
            Self { state, server }
        }

        fn builder(&self, token: &str) -> CloudflareBuilder {
            Cloudflare::builder(token).api_url(format!("{}{BASE}", self.server.url()))
        }

        fn provider(&self) -> Cloudflare {
            self.builder(TOKEN).build().unwrap()
        }

        /// Seeds a record as another tool (or the dashboard) writes it: unquoted.
        fn seed(&self, zone: &str, name: &str, content: &str) {
            let mut st = self.state.lock().unwrap();
            st.next_id += 1;
            let id = format!("rec{}", st.next_id);
            st.records
                .push((id, zone.into(), name.into(), content.into(), 300));
        }

        fn values(&self, name: &str) -> Vec<String> {
            let st = self.state.lock().unwrap();
            st.records
                .iter()
                .filter(|r| r.2 == name)
                .map(|r| unquote_txt(&r.3))
                .collect()
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
        let cf = CloudflareStandIn::start(&[("z1", "example.com")]).await;
        let fqdn = "_acme-challenge.example.com";
        cf.seed("z1", fqdn, OTHER);
        let provider = cf.provider();
        provider_checks::exact_values(&provider, fqdn, || cf.values(fqdn)).await;
        cf.assert_no_violations();
        // Records are written with the configured TTL and quoted content.
        let st = cf.state.lock().unwrap();
        assert!(
            st.records
                .iter()
                .all(|r| r.3 == OTHER || r.3.starts_with('"'))
        );
    }

    #[tokio::test]
    async fn finds_the_zone_of_a_deeper_name_and_uses_a_configured_one() {
        let cf = CloudflareStandIn::start(&[("z1", "example.com"), ("z2", "other.org")]).await;
        let fqdn = "_acme-challenge.a.b.example.com";
        cf.provider().create_txt_record(fqdn, V1).await.unwrap();
        let asked: Vec<String> = cf
            .server
            .seen()
            .iter()
            .filter(|s| s.path() == format!("{BASE}/zones"))
            .map(|s| s.query_pairs()[0].1.clone())
            .collect();
        assert_eq!(
            asked,
            [fqdn, "a.b.example.com", "b.example.com", "example.com"]
        );
        assert_eq!(cf.values(fqdn), [V1]);
        assert_eq!(cf.state.lock().unwrap().records[0].4, 120);

        // A configured zone id: no lookup.
        let provider = cf.builder(TOKEN).zone_id("z1").ttl(60).build().unwrap();
        let before = cf.server.seen().len();
        provider.delete_txt_record(fqdn, V1).await.unwrap();
        let seen = cf.server.seen();
        assert!(
            seen[before..]
                .iter()
                .all(|s| s.path() != format!("{BASE}/zones"))
        );
        assert!(cf.values(fqdn).is_empty());
        cf.assert_no_violations();
    }

    /// A configured zone id and a name outside that zone: the record
    /// Cloudflare made at `<name>.<zone>` is removed, and the name's zone
    /// is not found; a later identical create is not taken for success.
    #[tokio::test]
    async fn a_name_outside_the_configured_zone_is_zone_not_found() {
        let cf = CloudflareStandIn::start(&[("z1", "example.com")]).await;
        let provider = cf.builder(TOKEN).zone_id("z1").build().unwrap();
        let fqdn = "_acme-challenge.other.org";
        for _ in 0..2 {
            let err = provider.create_txt_record(fqdn, V1).await.unwrap_err();
            assert!(
                matches!(&err, DnsError::ZoneNotFound { name, .. } if name == fqdn),
                "{err:?}"
            );
            assert!(cf.state.lock().unwrap().records.is_empty());
        }
        // A record left at `<name>.<zone>` (a failed clean-up) does not
        // make the duplicate answer a success.
        cf.seed(
            "z1",
            "_acme-challenge.other.org.example.com",
            &quote_txt(V1),
        );
        let err = provider.create_txt_record(fqdn, V1).await.unwrap_err();
        assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err:?}");
        provider.delete_txt_record(fqdn, V1).await.unwrap();
        // Inside the zone, all is as before.
        let inside = "_acme-challenge.www.example.com";
        provider.create_txt_record(inside, V1).await.unwrap();
        provider.create_txt_record(inside, V1).await.unwrap();
        assert_eq!(cf.values(inside), [V1]);
        cf.assert_no_violations();
    }

    /// More TXT records at the name than MAX_PAGES pages hold (the
    /// stand-in pages by 2): the delete fails instead of reporting a
    /// success it cannot know.
    #[tokio::test]
    async fn a_listing_longer_than_the_page_bound_is_refused() {
        let cf = CloudflareStandIn::start(&[("z1", "example.com")]).await;
        let fqdn = "_acme-challenge.example.com";
        for i in 0..=(2 * MAX_PAGES) {
            cf.seed("z1", fqdn, &format!("other-{i}"));
        }
        let err = cf.provider().delete_txt_record(fqdn, V1).await.unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
        assert!(err.to_string().contains("not read to its end"), "{err}");
        cf.assert_no_violations();
    }

    /// Zone and record ids that would move the request path (`..`, `a/b`)
    /// are refused; no request goes to such a path.
    #[tokio::test]
    async fn ids_that_would_move_the_path_are_refused() {
        let cf = CloudflareStandIn::start(&[("..", "example.com"), ("z2", "example.org")]).await;
        let err = cf
            .provider()
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
        let fqdn = "_acme-challenge.example.org";
        cf.seed("z2", fqdn, V1);
        cf.state.lock().unwrap().records[0].0 = "../../zones".into();
        let err = cf.provider().delete_txt_record(fqdn, V1).await.unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
        assert!(
            cf.server.seen().iter().all(|s| s.method == "GET"),
            "{:?}",
            cf.server.seen()
        );
        cf.assert_no_violations();
    }

    #[tokio::test]
    async fn unknown_zone_is_zone_not_found() {
        let cf = CloudflareStandIn::start(&[("z2", "other.org")]).await;
        let err = cf
            .provider()
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DnsError::ZoneNotFound { name, .. } if name == "_acme-challenge.example.com"),
            "{err:?}"
        );
        cf.assert_no_violations();
    }

    #[tokio::test]
    async fn refused_token_is_auth_refused_and_never_shown() {
        let cf = CloudflareStandIn::start(&[("z1", "example.com")]).await;
        let provider = cf.builder("wrong-token-X1").build().unwrap();
        let err = provider
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::AuthRefused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("Authentication error"), "{text}");
        assert!(!text.contains("wrong-token-X1"));
    }

    #[tokio::test]
    async fn error_body_text_is_shown() {
        let cf = CloudflareStandIn::start(&[("z1", "example.com")]).await;
        cf.answer_all(Some(cf_error(
            400,
            9005,
            "Content for TXT record is invalid.",
        )));
        let err = cf
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
            err.to_string()
                .contains("code 9005: Content for TXT record is invalid."),
            "{err}"
        );
    }

    #[tokio::test]
    async fn http_failures_are_typed() {
        let cf = CloudflareStandIn::start(&[("z1", "example.com")]).await;
        let provider = cf.provider();
        provider_checks::http_failures(
            &provider,
            "_acme-challenge.example.com",
            |r| cf.answer_all(r),
            cf_error(
                429,
                971,
                "Please wait and consider throttling your request speed",
            )
            .header("retry-after", "7"),
            cf_error(502, 0, "Bad gateway"),
        )
        .await;
        cf.assert_no_violations();
    }

    #[test]
    fn debug_hides_the_token_and_settings_are_checked() {
        let builder = Cloudflare::builder(TOKEN).zone_id("z1");
        assert!(!format!("{builder:?}").contains(TOKEN));
        let provider = builder.api_url("http://127.0.0.1:1").build().unwrap();
        let debug = format!("{provider:?}");
        assert!(
            !debug.contains(TOKEN) && debug.contains("redacted"),
            "{debug}"
        );

        for builder in [
            Cloudflare::builder(""),
            Cloudflare::builder(TOKEN).ttl(30),
            Cloudflare::builder(TOKEN).zone_id(""),
            Cloudflare::builder(TOKEN).zone_id(".."),
            Cloudflare::builder(TOKEN).zone_id("z1/dns_records"),
            Cloudflare::builder(TOKEN).api_url("http://api.example.com"),
        ] {
            assert!(matches!(builder.build(), Err(DnsError::Config { .. })));
        }
        assert!(Cloudflare::builder(TOKEN).ttl(1).build().is_ok());
    }
}
