//! DigitalOcean: DNS-01 records through the DigitalOcean API v2 (Domains and
//! Domain Records).
//!
//! The user documentation is on [`DigitalOcean`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::json;

use super::http::{
    ApiClient, ApiResponse, Secret, TokenApi, TokenApiParts, collect_pages, encode_component,
    normalize_name, relative_name, unquote_txt, zone_candidates,
};
use super::name_lock::NameLocks;
use super::provider::{DnsError, DnsProvider};

const PROVIDER: &str = "digitalocean";
const DEFAULT_API_URL: &str = "https://api.digitalocean.com/v2";
/// The TTL given to new records by default: DigitalOcean's minimum.
pub(crate) const DEFAULT_TTL: u32 = 30;
/// The most pages of 200 records read when looking for a value.
pub(crate) const MAX_PAGES: u32 = 10;
/// Records asked for per page.
const PER_PAGE: u32 = 200;

/// Writes DNS-01 TXT records through the DigitalOcean API v2
/// (`https://api.digitalocean.com/v2`, Domains and Domain Records), one
/// record per value, with a personal access token (scopes `domain` read,
/// create, delete). The domain is found from the record's name, longest
/// candidate first; calls for one name are serialised inside the provider.
///
/// Follows the API v2 at `https://api.digitalocean.com/v2`, as documented at
/// <https://docs.digitalocean.com/reference/api/digitalocean/#tag/Domain-Records>:
///
/// - the domain is found with `GET /v2/domains/{name}` for the record's name
///   and its parents, longest first (404 means "not this one");
/// - a value is added with `POST /v2/domains/{domain}/records` (`type` TXT,
///   `name` relative to the domain, `@` at its apex, `data` the value, `ttl`),
///   unless the value is already there: DigitalOcean keeps one record per
///   value, so other values at the name are untouched;
/// - a value is removed by listing the TXT records at the name
///   (`GET /v2/domains/{domain}/records?type=TXT&name=<fqdn>`, at most
///   10 pages of 200; a longer listing is refused with [`DnsError::Rejected`])
///   and deleting those holding the value
///   (`DELETE /v2/domains/{domain}/records/{id}`); a record already gone
///   (404) counts as success.
///
/// "Add unless already there" is a check then a write, so calls for one name
/// are serialised inside the provider (a lock per name): a value is never
/// added twice by this process. Another process writing the same name can
/// still add a duplicate record, which the next delete removes with it.
///
/// Errors come from DigitalOcean's `{"id": ..., "message": ...}` body, shown
/// in the [`DnsError`].
///
/// **Credentials:** a personal access token (`Authorization: Bearer`). Use a
/// custom-scoped token with only the `domain` read, create and delete scopes
/// (DigitalOcean has no narrower scope than "all domains of the team").
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use certauto::dns::DigitalOcean;
/// use certauto::Dns01Solver;
///
/// # fn main() -> Result<(), certauto::DnsError> {
/// let token = std::env::var("DO_AUTH_TOKEN").unwrap_or_default();
/// let solver = Dns01Solver::new(DigitalOcean::builder(token).build()?);
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DigitalOcean {
    api: ApiClient,
    token: Secret,
    ttl: u32,
    locks: Arc<NameLocks>,
}

impl fmt::Debug for DigitalOcean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOcean")
            .field("api", &self.api)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`DigitalOcean`] provider; from [`DigitalOcean::builder`].
pub struct DigitalOceanBuilder {
    api: TokenApi,
}

impl fmt::Debug for DigitalOceanBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOceanBuilder")
            .field("api", &self.api)
            .finish()
    }
}

impl DigitalOcean {
    /// Settings for a provider using the access token `token`.
    pub fn builder(token: impl Into<String>) -> DigitalOceanBuilder {
        DigitalOceanBuilder {
            api: TokenApi::new(token, DEFAULT_API_URL, DEFAULT_TTL),
        }
    }
}

impl DigitalOceanBuilder {
    /// The API's base URL (default `https://api.digitalocean.com/v2`).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api.api_url = url.into();
        self
    }

    /// The TTL of new records in seconds, 30 to 86400 (default 30).
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.api.ttl = ttl;
        self
    }

    /// More root certificates to trust for the API (a proxy's CA).
    pub fn extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.api.extra_roots = roots;
        self
    }

    /// The provider; [`DnsError::Config`] for an empty token, a TTL out of
    /// range or an unusable URL.
    pub fn build(self) -> Result<DigitalOcean, DnsError> {
        let TokenApiParts { api, token, ttl } = self.api.check(
            PROVIDER,
            "the access token",
            "Bearer",
            |ttl| (30..=86_400).contains(&ttl),
            "30 to 86400",
        )?;
        Ok(DigitalOcean {
            api,
            token,
            ttl,
            locks: Arc::new(NameLocks::default()),
        })
    }
}

#[derive(Debug, Deserialize)]
struct DomainAnswer {
    domain: Domain,
}

#[derive(Debug, Deserialize)]
struct Domain {
    name: String,
}

#[derive(Debug, Deserialize)]
struct RecordAnswer {
    domain_record: Record,
}

#[derive(Debug, Deserialize)]
struct RecordsAnswer {
    domain_records: Vec<Record>,
    #[serde(default)]
    links: Option<Links>,
}

#[derive(Debug, Default, Deserialize)]
struct Links {
    #[serde(default)]
    pages: Option<Pages>,
}

#[derive(Debug, Default, Deserialize)]
struct Pages {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Record {
    id: u64,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: String,
}

fn failure(resp: &ApiResponse) -> DnsError {
    resp.error_from_body(PROVIDER, |e: ApiError| {
        (!e.id.is_empty() || !e.message.is_empty()).then(|| format!("{}: {}", e.id, e.message))
    })
}

impl DigitalOcean {
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

    /// The domain holding `fqdn`: the longest candidate the account has.
    async fn domain(&self, fqdn: &str) -> Result<String, DnsError> {
        for candidate in zone_candidates(fqdn) {
            let path = format!("/domains/{}", encode_component(candidate));
            let resp = self.send(Method::GET, &path, None).await?;
            if resp.status == 404 {
                continue;
            }
            if !resp.is_success() {
                return Err(failure(&resp));
            }
            let answer: DomainAnswer = resp.json(PROVIDER)?;
            if answer
                .domain
                .name
                .trim_end_matches('.')
                .eq_ignore_ascii_case(candidate)
            {
                return Ok(candidate.to_owned());
            }
        }
        Err(DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        })
    }

    /// The ids of the TXT records at `fqdn` holding `value`.
    async fn find(&self, domain: &str, fqdn: &str, value: &str) -> Result<Vec<u64>, DnsError> {
        collect_pages(PROVIDER, fqdn, MAX_PAGES, PER_PAGE, |page| async move {
            let path = format!(
                "/domains/{}/records?type=TXT&name={}&per_page={PER_PAGE}&page={page}",
                encode_component(domain),
                encode_component(fqdn),
            );
            let resp = self.send(Method::GET, &path, None).await?;
            if !resp.is_success() {
                return Err(failure(&resp));
            }
            let answer: RecordsAnswer = resp.json(PROVIDER)?;
            let last = answer.domain_records.is_empty()
                || answer
                    .links
                    .unwrap_or_default()
                    .pages
                    .unwrap_or_default()
                    .next
                    .is_none();
            let ids = answer
                .domain_records
                .iter()
                .filter(|r| {
                    r.kind == "TXT" && r.data.as_deref().map(unquote_txt).as_deref() == Some(value)
                })
                .map(|r| r.id)
                .collect();
            Ok((ids, last))
        })
        .await
    }
}

#[async_trait]
impl DnsProvider for DigitalOcean {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let domain = self.domain(fqdn).await?;
        let name = relative_name(fqdn, &domain).ok_or_else(|| DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        })?;
        let _guard = self.locks.lock(&normalize_name(fqdn)).await;
        if !self.find(&domain, fqdn, value).await?.is_empty() {
            tracing::debug!(fqdn, "digitalocean: TXT record already there");
            return Ok(());
        }
        let body = json!({"type": "TXT", "name": name, "data": value, "ttl": self.ttl});
        let path = format!("/domains/{}/records", encode_component(&domain));
        let resp = self.send(Method::POST, &path, Some(body)).await?;
        if !resp.is_success() {
            return Err(failure(&resp));
        }
        let created: RecordAnswer = resp.json(PROVIDER)?;
        tracing::debug!(
            fqdn,
            record = created.domain_record.id,
            "digitalocean: TXT record created"
        );
        Ok(())
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let domain = self.domain(fqdn).await?;
        let _guard = self.locks.lock(&normalize_name(fqdn)).await;
        for id in self.find(&domain, fqdn, value).await? {
            let path = format!("/domains/{}/records/{id}", encode_component(&domain));
            let resp = self.send(Method::DELETE, &path, None).await?;
            if !resp.is_success() && resp.status != 404 {
                return Err(failure(&resp));
            }
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

    const TOKEN: &str = "dop_v1_3f9c2b";
    const BASE: &str = "/v2";

    /// (id, domain, relative name, data, ttl)
    type Rec = (u64, String, String, String, u64);

    #[derive(Default)]
    struct State {
        domains: Vec<String>,
        records: Vec<Rec>,
        next_id: u64,
        answer_all: Option<Reply>,
        violations: Vec<String>,
    }

    /// A stand-in for the DigitalOcean API v2 (Domains, Domain Records),
    /// checking each request as the API documentation specifies.
    struct DigitalOceanStandIn {
        state: Arc<Mutex<State>>,
        server: StandIn,
    }

    fn do_error(status: u16, id: &str, message: &str) -> Reply {
        Reply::json(status, json!({"id": id, "message": message}))
    }

    fn record_json(r: &Rec) -> Value {
        json!({"id": r.0, "type": "TXT", "name": r.2, "data": r.3, "priority": null,
            "port": null, "ttl": r.4, "weight": null, "flags": null, "tag": null})
    }

    fn fqdn_of(r: &Rec) -> String {
        if r.2 == "@" {
            r.1.clone()
        } else {
            format!("{}.{}", r.2, r.1)
        }
    }

    fn handle(state: &Mutex<State>, req: &Seen) -> Reply {
        let mut st = state.lock().unwrap();
        match answer(&mut st, req) {
            Ok(reply) => reply,
            Err(violation) => {
                st.violations.push(violation.clone());
                do_error(400, "bad_request", &format!("stand-in: {violation}"))
            }
        }
    }

    fn answer(st: &mut State, req: &Seen) -> Result<Reply, String> {
        let auth = req.header("authorization");
        if !auth.starts_with("Bearer ") {
            return Err(format!("no bearer token: {auth:?}"));
        }
        if auth != format!("Bearer {TOKEN}") {
            return Ok(do_error(401, "unauthorized", "Unable to authenticate you"));
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
        let not_found = || {
            do_error(
                404,
                "not_found",
                "The resource you were accessing could not be found.",
            )
        };
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["domains", name]) => {
                if !query.is_empty() || !req.body.is_empty() {
                    return Err("GET domain with a query or body".into());
                }
                if !st.domains.iter().any(|d| d == name) {
                    return Ok(not_found());
                }
                Ok(Reply::json(
                    200,
                    json!({"domain": {"name": name, "ttl": 1800, "zone_file": ""}}),
                ))
            }
            ("GET", ["domains", domain, "records"]) => {
                let get = |k: &str| {
                    query
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                if query.len() != 4
                    || get("type").as_deref() != Some("TXT")
                    || get("per_page").as_deref() != Some("200")
                {
                    return Err(format!("records query {query:?}"));
                }
                // `name` is the fully qualified record name.
                let name = get("name").ok_or("no name")?;
                if !name.ends_with(&format!(".{domain}")) && name != *domain {
                    return Err(format!("records name {name} is not fully qualified"));
                }
                let page: usize = get("page")
                    .and_then(|p| p.parse().ok())
                    .filter(|p| *p >= 1)
                    .ok_or("bad page")?;
                if !st.domains.iter().any(|d| d == domain) {
                    return Ok(not_found());
                }
                let all: Vec<Value> = st
                    .records
                    .iter()
                    .filter(|r| r.1 == *domain && fqdn_of(r) == name)
                    .map(record_json)
                    .collect();
                // Pages of 2 here (the stand-in's own cap), so paging is exercised.
                let per_page = 2;
                let result: Vec<Value> = all
                    .iter()
                    .skip((page - 1) * per_page)
                    .take(per_page)
                    .cloned()
                    .collect();
                let mut pages = json!({});
                if page * per_page < all.len() {
                    pages["next"] = json!(format!(
                        "https://api.digitalocean.com/v2/domains/{domain}/records?page={}",
                        page + 1
                    ));
                }
                Ok(Reply::json(
                    200,
                    json!({"domain_records": result, "links": {"pages": pages}, "meta": {"total": all.len()}}),
                ))
            }
            ("POST", ["domains", domain, "records"]) => {
                if req.header("content-type") != "application/json" || !query.is_empty() {
                    return Err("POST without JSON content type".into());
                }
                let body = req.json();
                let fields: Vec<&String> = body.as_object().ok_or("body")?.keys().collect();
                if fields != ["data", "name", "ttl", "type"] || body["type"] != "TXT" {
                    return Err(format!("record body {body}"));
                }
                let (Some(name), Some(data), Some(ttl)) = (
                    body["name"].as_str(),
                    body["data"].as_str(),
                    body["ttl"].as_u64(),
                ) else {
                    return Err(format!("record body {body}"));
                };
                if name.ends_with(&format!(".{domain}")) || ttl < 30 {
                    return Err(format!("record body {body}"));
                }
                if !st.domains.iter().any(|d| d == domain) {
                    return Ok(not_found());
                }
                st.next_id += 1;
                let record = (
                    st.next_id,
                    (*domain).to_owned(),
                    name.to_owned(),
                    data.to_owned(),
                    ttl,
                );
                let json = record_json(&record);
                st.records.push(record);
                Ok(Reply::json(201, json!({"domain_record": json})))
            }
            ("DELETE", ["domains", domain, "records", id]) => {
                if !req.body.is_empty() || !query.is_empty() {
                    return Err("DELETE with a body or query".into());
                }
                let before = st.records.len();
                st.records
                    .retain(|r| !(r.1 == *domain && r.0.to_string() == *id));
                if st.records.len() == before {
                    return Ok(not_found());
                }
                Ok(Reply::text(204, "application/json", ""))
            }
            _ => Err(format!("unexpected {} {}", req.method, req.target)),
        }
    }

    impl DigitalOceanStandIn {
        async fn start(domains: &[&str]) -> Self {
            let state = Arc::new(Mutex::new(State {
                domains: domains.iter().map(|d| (*d).to_owned()).collect(),
                ..State::default()
            }));
            let server = StandIn::start({
                let state = state.clone();
                move |req| handle(&state, req)
            })
            .await;
            Self { state, server }
        }

        fn builder(&self, token: &str) -> DigitalOceanBuilder {
            DigitalOcean::builder(token).api_url(format!("{}{BASE}", self.server.url()))
        }

        fn provider(&self) -> DigitalOcean {
            self.builder(TOKEN).build().unwrap()
        }

        fn seed(&self, domain: &str, name: &str, data: &str) {
            let mut st = self.state.lock().unwrap();
            st.next_id += 1;
            let id = st.next_id;
            st.records
                .push((id, domain.into(), name.into(), data.into(), 3600));
        }

        fn values(&self, fqdn: &str) -> Vec<String> {
            let st = self.state.lock().unwrap();
            st.records
                .iter()
                .filter(|r| fqdn_of(r) == fqdn)
                .map(|r| r.3.clone())
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
        let api = DigitalOceanStandIn::start(&["example.com"]).await;
        let fqdn = "_acme-challenge.example.com";
        api.seed("example.com", "_acme-challenge", OTHER);
        let provider = api.provider();
        provider_checks::exact_values(&provider, fqdn, || api.values(fqdn)).await;
        api.assert_no_violations();
        assert_eq!(provider.locks.live(), 0);
    }

    /// More TXT records at the name than MAX_PAGES pages hold (the
    /// stand-in pages by 2): the value might be on a page not read, so the
    /// call fails instead of reporting a success it cannot know.
    #[tokio::test]
    async fn a_listing_longer_than_the_page_bound_is_refused() {
        let api = DigitalOceanStandIn::start(&["example.com"]).await;
        let fqdn = "_acme-challenge.example.com";
        for i in 0..=(2 * MAX_PAGES) {
            api.seed("example.com", "_acme-challenge", &format!("other-{i}"));
        }
        let provider = api.provider();
        for result in [
            provider.delete_txt_record(fqdn, V1).await,
            provider.create_txt_record(fqdn, V1).await,
        ] {
            let err = result.unwrap_err();
            assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
            assert!(err.to_string().contains("not read to its end"), "{err}");
        }
        api.assert_no_violations();
    }

    #[tokio::test]
    async fn finds_the_domain_of_a_deeper_name() {
        let api = DigitalOceanStandIn::start(&["example.com", "other.org"]).await;
        let fqdn = "_acme-challenge.a.b.example.com";
        api.provider().create_txt_record(fqdn, V1).await.unwrap();
        let asked: Vec<String> = api
            .server
            .seen()
            .iter()
            .filter(|s| s.method == "GET" && !s.path().ends_with("/records"))
            .map(|s| s.path().trim_start_matches("/v2/domains/").to_owned())
            .collect();
        assert_eq!(
            asked,
            [fqdn, "a.b.example.com", "b.example.com", "example.com"]
        );
        let st = api.state.lock().unwrap();
        assert_eq!(st.records[0].2, "_acme-challenge.a.b");
        assert_eq!(st.records[0].4, 30);
        drop(st);
        api.assert_no_violations();
    }

    #[tokio::test]
    async fn unknown_domain_is_zone_not_found() {
        let api = DigitalOceanStandIn::start(&["other.org"]).await;
        let err = api
            .provider()
            .delete_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err:?}");
        api.assert_no_violations();
    }

    #[tokio::test]
    async fn refused_token_is_auth_refused_and_never_shown() {
        let api = DigitalOceanStandIn::start(&["example.com"]).await;
        let provider = api.builder("dop_v1_wrong").build().unwrap();
        let err = provider
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::AuthRefused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("unauthorized: Unable to authenticate you"),
            "{text}"
        );
        assert!(!text.contains("dop_v1_wrong"));
    }

    #[tokio::test]
    async fn error_body_text_is_shown() {
        let api = DigitalOceanStandIn::start(&["example.com"]).await;
        api.answer_all(Some(do_error(
            422,
            "unprocessable_entity",
            "Data needs to be a valid TXT record",
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
                    status: Some(422),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("unprocessable_entity: Data needs to be a valid TXT record"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn http_failures_are_typed() {
        let api = DigitalOceanStandIn::start(&["example.com"]).await;
        let provider = api.provider();
        provider_checks::http_failures(
            &provider,
            "_acme-challenge.example.com",
            |r| api.answer_all(r),
            do_error(429, "too_many_requests", "API Rate limit exceeded.")
                .header("retry-after", "7"),
            do_error(500, "server_error", "Unexpected server-side error"),
        )
        .await;
        api.assert_no_violations();
    }

    #[test]
    fn debug_hides_the_token_and_settings_are_checked() {
        let builder = DigitalOcean::builder(TOKEN);
        assert!(!format!("{builder:?}").contains(TOKEN));
        let provider = builder.api_url("http://127.0.0.1:1").build().unwrap();
        let debug = format!("{provider:?}");
        assert!(
            !debug.contains(TOKEN) && debug.contains("redacted"),
            "{debug}"
        );
        for builder in [
            DigitalOcean::builder(""),
            DigitalOcean::builder(TOKEN).ttl(29),
            DigitalOcean::builder(TOKEN).api_url("ftp://127.0.0.1"),
        ] {
            assert!(matches!(builder.build(), Err(DnsError::Config { .. })));
        }
    }
}
