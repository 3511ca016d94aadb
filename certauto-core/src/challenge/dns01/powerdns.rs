//! A [`DnsProvider`] for [PowerDNS Authoritative] servers, through their
//! [HTTP API](https://doc.powerdns.com/authoritative/http-api/).
//!
//! The user documentation is on [`PowerDns`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::HeaderValue;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::http::{
    ApiClient, ApiResponse, Secret, encode_except, normalize_name, path_id, sensitive_header,
    zone_candidates,
};
use super::name_lock::NameLocks;
use super::provider::{DnsError, DnsProvider};

/// The provider's name in errors.
const PROVIDER: &str = "powerdns";
/// The TTL of RRsets this provider creates, by default.
pub(crate) const DEFAULT_TTL: u32 = 60;
/// The server id of a single PowerDNS server.
const DEFAULT_SERVER_ID: &str = "localhost";

/// Adds and removes DNS-01 TXT values through a PowerDNS Authoritative
/// server's HTTP API.
///
/// assumes. Clones share the connection pool and the per-name locks.
///
/// For self-hosted DNS run with PowerDNS: the records are written with
/// `PATCH /api/v1/servers/{server_id}/zones/{zone_id}`, authenticated by the
/// `X-API-Key` header. The zone of a name is found by asking
/// `GET /api/v1/servers/{server_id}/zones?zone=<candidate>` for the name and
/// each of its parents, longest first.
///
/// # Credentials
///
/// The server's `api-key` (PowerDNS 4.7 has a single key for the whole API,
/// so no narrower credential exists there; keep the webserver reachable only
/// from the hosts that need it with `webserver-allow-from`, and serve it
/// behind TLS when it is not on loopback: plain `http` is refused except for
/// loopback addresses).
///
/// # How values are added and removed
///
/// The API replaces whole RRsets: a `REPLACE` sets all the values at a name,
/// `DELETE` removes them all. So adding one value reads the TXT RRset and
/// replaces it with the old values plus the new one (its TTL and the other
/// values' `disabled` flags kept), and removing one replaces it with the rest,
/// or deletes it when nothing is left. Other tools' values at the same name
/// survive.
///
/// That read-modify-write is serialised per record name **inside one
/// `PowerDns` value** (and its clones): a wildcard and its apex presented at
/// once both keep their values. **Writers in other processes** (another
/// CertAuto instance, another ACME client, an operator) are not covered: if
/// one of them rewrites the same RRset between our read and our write, one of
/// the two changes is lost. Run one writer per name, or give each its own name
/// through a CNAME at `_acme-challenge`. PowerDNS 4.7 (Debian 12's) offers no
/// single-value operation: the `EXTEND`/`PRUNE` change types that would make
/// the change atomic on the server only arrived in 4.9.12 and 5.0.2.
///
/// # Serials and secondaries
///
/// A change made through the API bumps the zone's SOA serial only when the
/// zone's `SOA-EDIT-API` metadata says so (`DEFAULT`, which PowerDNS sets on
/// zones created through the API; not on zones created with `pdnsutil` or
/// loaded otherwise). Secondaries fed by AXFR see the change only once the
/// serial moved, and the solver's propagation check waits for every
/// authoritative server: set `SOA-EDIT-API` on zones served by secondaries.
/// Native replication (a shared database) needs nothing.
///
/// # Example
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use certauto::Dns01Solver;
/// use certauto::dns::PowerDns;
///
/// # fn demo() -> Result<(), certauto::DnsError> {
/// let pdns = PowerDns::builder("https://pdns.example.com:8081", "the api-key")
///     .ttl(60)
///     .build()?;
/// let solver = Dns01Solver::new(pdns);
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
///
/// [PowerDNS Authoritative]: https://doc.powerdns.com/authoritative/
#[derive(Clone)]
pub struct PowerDns {
    api: ApiClient,
    key: Secret,
    server_id: String,
    ttl: u32,
    locks: Arc<NameLocks>,
}

impl fmt::Debug for PowerDns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerDns")
            .field("api", &self.api)
            .field("server_id", &self.server_id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PowerDns`] provider.
#[derive(Debug)]
pub struct PowerDnsBuilder {
    api_url: String,
    key: Secret,
    server_id: String,
    ttl: u32,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl PowerDns {
    /// A builder for the server whose webserver is at `api_url`
    /// (`https://pdns.example.com:8081`; a trailing `/api/v1` is accepted)
    /// with its `api-key`.
    pub fn builder(api_url: impl Into<String>, api_key: impl Into<String>) -> PowerDnsBuilder {
        PowerDnsBuilder {
            api_url: api_url.into(),
            key: Secret::new(api_key),
            server_id: DEFAULT_SERVER_ID.to_owned(),
            ttl: DEFAULT_TTL,
            extra_roots: Vec::new(),
        }
    }
}

impl PowerDnsBuilder {
    /// The server id in API paths (default `localhost`, the id of a single
    /// PowerDNS server).
    pub fn server_id(mut self, server_id: impl Into<String>) -> Self {
        self.server_id = server_id.into();
        self
    }

    /// The TTL of the TXT RRsets this provider creates (default 60 seconds).
    /// An RRset that already exists keeps its TTL.
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// Root certificates trusted for the API's HTTPS besides the Mozilla
    /// roots (for a server behind a private CA).
    pub fn extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.extra_roots = roots;
        self
    }

    /// The provider; [`DnsError::Config`] when the URL, key, server id or
    /// TTL is unusable.
    pub fn build(self) -> Result<PowerDns, DnsError> {
        if self.key.is_empty() {
            return Err(DnsError::config(PROVIDER, "the API key is empty"));
        }
        sensitive_header(PROVIDER, "the API key", self.key.expose())?;
        if self.server_id.is_empty() {
            return Err(DnsError::config(PROVIDER, "the server id is empty"));
        }
        if self.ttl == 0 {
            return Err(DnsError::config(PROVIDER, "the TTL must be at least 1"));
        }
        let base = self.api_url.trim_end_matches('/');
        let base = base.strip_suffix("/api/v1").unwrap_or(base);
        let api = ApiClient::new(PROVIDER, base, &self.extra_roots)?;
        Ok(PowerDns {
            api,
            key: self.key,
            server_id: self.server_id,
            ttl: self.ttl,
            locks: Arc::new(NameLocks::default()),
        })
    }
}

/// A zone as the zone list shows it.
#[derive(Debug, Deserialize)]
struct ZoneEntry {
    id: String,
    name: String,
}

/// A zone with (some of) its RRsets.
#[derive(Debug, Deserialize)]
struct ZoneRrsets {
    #[serde(default)]
    rrsets: Vec<RrSet>,
}

#[derive(Debug, Deserialize)]
struct RrSet {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    #[serde(default)]
    ttl: Option<u32>,
    #[serde(default)]
    records: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    content: String,
    #[serde(default)]
    disabled: bool,
}

/// The body of a zone `PATCH`: one RRset change.
#[derive(Debug, Serialize)]
struct Patch<'a> {
    rrsets: [RrSetChange<'a>; 1],
}

#[derive(Debug, Serialize)]
struct RrSetChange<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    rtype: &'static str,
    /// Absent for `DELETE`, as the API requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
    changetype: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    records: Vec<Record>,
}

/// PowerDNS's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
}

/// What went wrong is worded by the API as `{"error": "..."}`; some answers
/// (401, 404, 400) are plain text.
fn error_detail(resp: &ApiResponse) -> Option<String> {
    resp.detail(|b: ErrorBody| Some(b.error))
}

/// The zone at hand for a record: its API id and name (with trailing dot).
#[derive(Debug)]
struct Zone {
    id: String,
    name: String,
}

impl PowerDns {
    fn server_path(&self) -> String {
        format!("/api/v1/servers/{}", encode(&self.server_id))
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        // Checked by `build`: an empty value cannot happen.
        let key = sensitive_header(PROVIDER, "the API key", self.key.expose())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        self.api.request(method, path).header("X-API-Key", key)
    }

    /// The error for a failed answer about `fqdn`: the shared mapping, with
    /// PowerDNS's words for a missing zone turned into
    /// [`DnsError::ZoneNotFound`].
    fn error(&self, resp: &ApiResponse, fqdn: &str, zone_request: bool) -> DnsError {
        let detail = error_detail(resp);
        let missing_zone = match resp.status {
            // A zone URL that names no zone (or no server) is a bare 404.
            404 => zone_request,
            422 => detail
                .as_deref()
                .is_some_and(|d| d.contains("Could not find domain")),
            _ => false,
        };
        if missing_zone {
            return DnsError::ZoneNotFound {
                provider: PROVIDER,
                name: fqdn.to_owned(),
            };
        }
        resp.error(PROVIDER, detail)
    }

    /// The zone holding `fqdn`: the longest of its candidates the server hosts.
    async fn find_zone(&self, fqdn: &str) -> Result<Zone, DnsError> {
        for candidate in zone_candidates(fqdn) {
            let name = format!("{candidate}.");
            let path = format!("{}/zones?zone={}", self.server_path(), encode(&name));
            let resp = self.api.send(self.request(Method::GET, &path)).await?;
            if resp.status == 404 {
                // The zone list itself is missing: a wrong server id (or URL).
                return Err(DnsError::config(
                    PROVIDER,
                    format!(
                        "no server {:?} at the API URL (HTTP 404 for the zone list)",
                        self.server_id
                    ),
                ));
            }
            if !resp.is_success() {
                return Err(self.error(&resp, fqdn, false));
            }
            let zones: Vec<ZoneEntry> = resp.json(PROVIDER)?;
            // Servers that ignore `zone=` list every zone: match by name.
            if let Some(zone) = zones
                .into_iter()
                .find(|z| z.name.eq_ignore_ascii_case(&name))
            {
                return Ok(Zone {
                    id: path_id(PROVIDER, "zone", zone.id)?,
                    name: zone.name,
                });
            }
        }
        Err(DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        })
    }

    fn zone_path(&self, zone: &Zone) -> String {
        format!("{}/zones/{}", self.server_path(), encode(&zone.id))
    }

    /// The TXT RRset at `name` (with trailing dot), if there is one.
    async fn txt_rrset(
        &self,
        zone: &Zone,
        fqdn: &str,
        name: &str,
    ) -> Result<Option<RrSet>, DnsError> {
        let path = format!(
            "{}?rrsets=true&rrset_name={}&rrset_type=TXT",
            self.zone_path(zone),
            encode(name)
        );
        let resp = self.api.send(self.request(Method::GET, &path)).await?;
        if !resp.is_success() {
            return Err(self.error(&resp, fqdn, true));
        }
        let body: ZoneRrsets = resp.json(PROVIDER)?;
        // Filtered here too: servers before the `rrset_name` filter send every RRset.
        Ok(body
            .rrsets
            .into_iter()
            .find(|r| r.rtype == "TXT" && r.name.eq_ignore_ascii_case(name)))
    }

    async fn patch(
        &self,
        zone: &Zone,
        fqdn: &str,
        change: RrSetChange<'_>,
    ) -> Result<(), DnsError> {
        let body = serde_json::to_vec(&Patch { rrsets: [change] })
            .map_err(|e| DnsError::rejected(PROVIDER, None, format!("encoding the change: {e}")))?;
        let request = self
            .request(Method::PATCH, &self.zone_path(zone))
            .header("content-type", "application/json")
            .body(body);
        let resp = self.api.send(request).await?;
        if !resp.is_success() {
            return Err(self.error(&resp, fqdn, true));
        }
        Ok(())
    }
}

#[async_trait]
impl DnsProvider for PowerDns {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let fqdn = normalize_name(fqdn);
        let _lock = self.locks.lock(&fqdn).await;
        let zone = self.find_zone(&fqdn).await?;
        let name = format!("{fqdn}.");
        let existing = self.txt_rrset(&zone, &fqdn, &name).await?;
        let (ttl, mut records) = match existing {
            Some(rrset) => (rrset.ttl.unwrap_or(self.ttl), rrset.records),
            None => (self.ttl, Vec::new()),
        };
        match records.iter_mut().find(|r| txt_matches(&r.content, value)) {
            Some(record) if !record.disabled => {
                tracing::debug!(record = %fqdn, zone = %zone.name, "PowerDNS: TXT value already there");
                return Ok(());
            }
            Some(record) => record.disabled = false,
            None => records.push(Record {
                content: quote_txt(value),
                disabled: false,
            }),
        }
        tracing::debug!(record = %fqdn, zone = %zone.name, values = records.len(), "PowerDNS: adding TXT value");
        self.patch(
            &zone,
            &fqdn,
            RrSetChange {
                name: &name,
                rtype: "TXT",
                ttl: Some(ttl),
                changetype: "REPLACE",
                records,
            },
        )
        .await
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let fqdn = normalize_name(fqdn);
        let _lock = self.locks.lock(&fqdn).await;
        let zone = self.find_zone(&fqdn).await?;
        let name = format!("{fqdn}.");
        let Some(rrset) = self.txt_rrset(&zone, &fqdn, &name).await? else {
            return Ok(());
        };
        let ttl = rrset.ttl.unwrap_or(self.ttl);
        let before = rrset.records.len();
        let rest: Vec<Record> = rrset
            .records
            .into_iter()
            .filter(|r| !txt_matches(&r.content, value))
            .collect();
        if rest.len() == before {
            return Ok(());
        }
        tracing::debug!(record = %fqdn, zone = %zone.name, left = rest.len(), "PowerDNS: removing TXT value");
        let change = if rest.is_empty() {
            RrSetChange {
                name: &name,
                rtype: "TXT",
                ttl: None,
                changetype: "DELETE",
                records: Vec::new(),
            }
        } else {
            RrSetChange {
                name: &name,
                rtype: "TXT",
                ttl: Some(ttl),
                changetype: "REPLACE",
                records: rest,
            }
        };
        self.patch(&zone, &fqdn, change).await
    }
}

/// Percent-encodes everything but unreserved characters and `=` (which
/// PowerDNS uses to escape zone ids), for a path segment or query value.
fn encode(s: &str) -> String {
    encode_except(s, b"=")
}

/// TXT content in the zone-file form PowerDNS requires: quoted, `"` and `\`
/// escaped, split into strings of at most 255 bytes.
fn quote_txt(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    let mut in_string = 0usize;
    out.push('"');
    for c in value.chars() {
        if in_string + c.len_utf8() > 255 {
            out.push_str("\" \"");
            in_string = 0;
        }
        in_string += c.len_utf8();
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The text of TXT content (its strings joined, escapes resolved), or `None`
/// when it is not in the quoted form.
fn unquote_txt(content: &str) -> Option<Vec<u8>> {
    let bytes = content.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut strings = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' => i += 1,
            b'"' => {
                strings += 1;
                i += 1;
                loop {
                    match *bytes.get(i)? {
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\' => {
                            let next = *bytes.get(i + 1)?;
                            if next.is_ascii_digit() {
                                let digits = bytes.get(i + 1..i + 4)?;
                                let text = std::str::from_utf8(digits).ok()?;
                                out.push(text.parse::<u8>().ok()?);
                                i += 4;
                            } else {
                                out.push(next);
                                i += 2;
                            }
                        }
                        b => {
                            out.push(b);
                            i += 1;
                        }
                    }
                }
            }
            _ => return None,
        }
    }
    (strings > 0).then_some(out)
}

/// Whether TXT `content` (as the API shows it) holds `value`.
fn txt_matches(content: &str, value: &str) -> bool {
    match unquote_txt(content) {
        Some(text) => text == value.as_bytes(),
        None => content == value,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use serde_json::{Value, json};

    use super::*;
    use crate::challenge::dns01::standin::{Reply, Seen, StandIn};

    const KEY: &str = "test-api-key-0123";
    const ZONES: &str = "/api/v1/servers/localhost/zones";

    /// State of the PowerDNS stand-in: zones, and TXT RRsets as
    /// `name -> (ttl, records)`.
    #[derive(Debug, Default)]
    struct Zones {
        zones: Vec<&'static str>,
        rrsets: BTreeMap<String, (u32, Vec<Value>)>,
    }

    /// Answers as the PowerDNS 4.7 API documents (and as a real 4.7.3 was
    /// seen to): plain-text 401 for a wrong `X-API-Key`, a bare 404 for an
    /// unknown zone, `{"error": ...}` with 422 for a malformed change.
    fn pdns_standin(state: &Mutex<Zones>, req: &Seen) -> Reply {
        if req.header("x-api-key") != KEY {
            return Reply::text(401, "text/plain; charset=utf-8", "Unauthorized")
                .header("www-authenticate", "X-API-Key realm=\"PowerDNS\"");
        }
        let mut state = state.lock().unwrap();
        let not_found = || Reply::text(404, "text/plain; charset=utf-8", "Not Found");
        let query: BTreeMap<&str, &str> = req
            .query()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        match (req.method.as_str(), req.path()) {
            ("GET", ZONES) => {
                let wanted = query.get("zone").copied();
                let list: Vec<Value> = state
                    .zones
                    .iter()
                    .filter(|z| wanted.is_none_or(|w| w == **z))
                    .map(|z| json!({"id": z, "name": z, "kind": "Native", "url": format!("{ZONES}/{z}")}))
                    .collect();
                Reply::json(200, Value::Array(list))
            }
            (method, path) => {
                let Some(zone) = path
                    .strip_prefix(ZONES)
                    .and_then(|p| p.strip_prefix('/'))
                    .and_then(|z| state.zones.iter().copied().find(|known| *known == z))
                else {
                    return not_found();
                };
                match method {
                    "GET" => {
                        assert_eq!(query.get("rrsets"), Some(&"true"));
                        assert_eq!(query.get("rrset_type"), Some(&"TXT"));
                        let name = query["rrset_name"];
                        let rrsets: Vec<Value> = state
                            .rrsets
                            .get(name)
                            .map(|(ttl, records)| {
                                json!({"name": name, "type": "TXT", "ttl": ttl, "records": records, "comments": []})
                            })
                            .into_iter()
                            .collect();
                        Reply::json(200, json!({"id": zone, "name": zone, "rrsets": rrsets}))
                    }
                    "PATCH" => {
                        assert_eq!(req.header("content-type"), "application/json");
                        let body = req.json();
                        let rrsets = body["rrsets"].as_array().unwrap();
                        assert_eq!(rrsets.len(), 1);
                        let rrset = &rrsets[0];
                        let name = rrset["name"].as_str().unwrap().to_owned();
                        assert_eq!(rrset["type"], "TXT");
                        if !name.ends_with(&format!(".{zone}")) && name != zone {
                            return Reply::json(
                                422,
                                json!({"error": format!("RRset {name} IN TXT: Name is out of zone")}),
                            );
                        }
                        match rrset["changetype"].as_str().unwrap() {
                            "REPLACE" => {
                                let ttl = rrset["ttl"].as_u64().unwrap() as u32;
                                let records = rrset["records"].as_array().unwrap().clone();
                                assert!(!records.is_empty());
                                for r in &records {
                                    let content = r["content"].as_str().unwrap();
                                    if !content.starts_with('"') {
                                        return Reply::json(
                                            422,
                                            json!({"error": format!("Record {name}/TXT '{content}': Not in expected format (parsed as '\"{content}\"')")}),
                                        );
                                    }
                                    assert!(r["disabled"].is_boolean());
                                }
                                state.rrsets.insert(name, (ttl, records));
                            }
                            "DELETE" => {
                                assert!(rrset.get("ttl").is_none(), "DELETE must carry no ttl");
                                assert!(rrset.get("records").is_none());
                                state.rrsets.remove(&name);
                            }
                            other => panic!("unknown changetype {other}"),
                        }
                        Reply::text(204, "text/plain", "")
                    }
                    _ => not_found(),
                }
            }
        }
    }

    async fn standin(zones: &[&'static str]) -> (StandIn, Arc<Mutex<Zones>>) {
        let state = Arc::new(Mutex::new(Zones {
            zones: zones.to_vec(),
            ..Zones::default()
        }));
        let s = state.clone();
        (
            StandIn::start(move |req| pdns_standin(&s, req)).await,
            state,
        )
    }

    fn provider(url: &str) -> PowerDns {
        PowerDns::builder(url, KEY).build().unwrap()
    }

    fn contents(state: &Mutex<Zones>, name: &str) -> Vec<String> {
        let state = state.lock().unwrap();
        let mut v: Vec<String> = state
            .rrsets
            .get(name)
            .map(|(_, r)| {
                r.iter()
                    .map(|r| r["content"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[tokio::test]
    async fn create_finds_the_longest_zone_and_replaces_with_old_plus_new() {
        let (api, state) = standin(&["example.test.", "sub.example.test."]).await;
        state.lock().unwrap().rrsets.insert(
            "_acme-challenge.www.example.test.".into(),
            (
                300,
                vec![json!({"content": "\"foreign\"", "disabled": false})],
            ),
        );
        let pdns = provider(&api.url());
        pdns.create_txt_record("_acme-challenge.www.example.test", "v1")
            .await
            .unwrap();
        let seen = api.seen();
        let targets: Vec<(&str, &str)> = seen
            .iter()
            .map(|s| (s.method.as_str(), s.target.as_str()))
            .collect();
        assert_eq!(
            targets,
            [
                (
                    "GET",
                    "/api/v1/servers/localhost/zones?zone=_acme-challenge.www.example.test."
                ),
                (
                    "GET",
                    "/api/v1/servers/localhost/zones?zone=www.example.test."
                ),
                ("GET", "/api/v1/servers/localhost/zones?zone=example.test."),
                (
                    "GET",
                    "/api/v1/servers/localhost/zones/example.test.?rrsets=true&rrset_name=_acme-challenge.www.example.test.&rrset_type=TXT"
                ),
                ("PATCH", "/api/v1/servers/localhost/zones/example.test."),
            ]
        );
        assert_eq!(
            seen[4].json(),
            json!({"rrsets": [{
                "name": "_acme-challenge.www.example.test.",
                "type": "TXT",
                "ttl": 300,
                "changetype": "REPLACE",
                "records": [
                    {"content": "\"foreign\"", "disabled": false},
                    {"content": "\"v1\"", "disabled": false},
                ],
            }]})
        );
        // The deeper zone wins for its names; a new RRset gets the configured TTL.
        let pdns = PowerDns::builder(format!("{}/api/v1/", api.url()), KEY)
            .ttl(120)
            .build()
            .unwrap();
        pdns.create_txt_record("_acme-challenge.sub.example.test", "v2")
            .await
            .unwrap();
        let last = api.seen().pop().unwrap();
        assert_eq!(
            last.path(),
            "/api/v1/servers/localhost/zones/sub.example.test."
        );
        assert_eq!(last.json()["rrsets"][0]["ttl"], 120);
        assert_eq!(
            contents(&state, "_acme-challenge.sub.example.test."),
            ["\"v2\""]
        );
    }

    #[tokio::test]
    async fn create_is_idempotent_and_delete_keeps_the_others() {
        let (api, state) = standin(&["example.test."]).await;
        let name = "_acme-challenge.example.test.";
        state.lock().unwrap().rrsets.insert(
            name.into(),
            (
                60,
                vec![json!({"content": "\"foreign\"", "disabled": false})],
            ),
        );
        let pdns = provider(&api.url());
        let fqdn = "_acme-challenge.example.test";
        pdns.create_txt_record(fqdn, "apex").await.unwrap();
        pdns.create_txt_record(fqdn, "wild").await.unwrap();
        let patches = |api: &StandIn| api.seen().iter().filter(|s| s.method == "PATCH").count();
        assert_eq!(patches(&api), 2);
        pdns.create_txt_record(fqdn, "apex").await.unwrap();
        assert_eq!(patches(&api), 2, "an existing value is not written again");
        assert_eq!(
            contents(&state, name),
            ["\"apex\"", "\"foreign\"", "\"wild\""]
        );

        pdns.delete_txt_record(fqdn, "apex").await.unwrap();
        assert_eq!(contents(&state, name), ["\"foreign\"", "\"wild\""]);
        pdns.delete_txt_record(fqdn, "apex").await.unwrap();
        assert_eq!(patches(&api), 3, "an absent value needs no write");
        pdns.delete_txt_record(fqdn, "wild").await.unwrap();
        assert_eq!(contents(&state, name), ["\"foreign\""]);

        // The last value goes with a DELETE of the RRset.
        pdns.delete_txt_record(fqdn, "foreign").await.unwrap();
        let last = api.seen().pop().unwrap();
        assert_eq!(
            last.json(),
            json!({"rrsets": [{"name": name, "type": "TXT", "changetype": "DELETE"}]})
        );
        assert!(contents(&state, name).is_empty());
        // Deleting from a name with no RRset at all succeeds without a write.
        pdns.delete_txt_record(fqdn, "foreign").await.unwrap();
        assert_eq!(patches(&api), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_at_one_name_keep_every_value() {
        let (api, state) = standin(&["example.test."]).await;
        let pdns = provider(&api.url());
        let fqdn = "_acme-challenge.example.test";
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let pdns = pdns.clone();
                tokio::spawn(
                    async move { pdns.create_txt_record(fqdn, &format!("value-{i:02}")).await },
                )
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let want: Vec<String> = (0..12).map(|i| format!("\"value-{i:02}\"")).collect();
        assert_eq!(contents(&state, "_acme-challenge.example.test."), want);
        let tasks: Vec<_> = (0..11)
            .map(|i| {
                let pdns = pdns.clone();
                tokio::spawn(
                    async move { pdns.delete_txt_record(fqdn, &format!("value-{i:02}")).await },
                )
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            contents(&state, "_acme-challenge.example.test."),
            ["\"value-11\""]
        );
        assert_eq!(pdns.locks.live(), 0, "unused locks are removed");
    }

    #[tokio::test]
    async fn disabled_value_is_enabled_and_quoted_values_compare_by_text() {
        let (api, state) = standin(&["example.test."]).await;
        let name = "_acme-challenge.example.test.";
        state.lock().unwrap().rrsets.insert(
            name.into(),
            (
                60,
                vec![
                    json!({"content": "\"ours\"", "disabled": true}),
                    json!({"content": "\"sp\" \"lit\"", "disabled": false}),
                ],
            ),
        );
        let pdns = provider(&api.url());
        pdns.create_txt_record("_acme-challenge.example.test", "ours")
            .await
            .unwrap();
        let last = api.seen().pop().unwrap();
        assert_eq!(
            last.json()["rrsets"][0]["records"],
            json!([
                {"content": "\"ours\"", "disabled": false},
                {"content": "\"sp\" \"lit\"", "disabled": false},
            ])
        );
        pdns.delete_txt_record("_acme-challenge.example.test", "split")
            .await
            .unwrap();
        assert_eq!(contents(&state, name), ["\"ours\""]);
    }

    #[tokio::test]
    async fn errors_are_typed() {
        let (api, _state) = standin(&["example.test."]).await;
        // A wrong key: PowerDNS's plain-text 401.
        let wrong = PowerDns::builder(api.url(), "not-the-key").build().unwrap();
        let err = wrong
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::AuthRefused { .. }), "{err}");
        assert!(!err.to_string().contains("not-the-key"));
        assert!(!format!("{err:?} {wrong:?}").contains("not-the-key"));

        // No zone among the candidates.
        let pdns = provider(&api.url());
        let err = pdns
            .create_txt_record("_acme-challenge.other.test", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DnsError::ZoneNotFound { name, .. } if name == "_acme-challenge.other.test"),
            "{err}"
        );
        assert!(!format!("{pdns:?}").contains(KEY));

        // A server id the API does not know: its zone list is a 404.
        let other = PowerDns::builder(api.url(), KEY)
            .server_id("other")
            .build()
            .unwrap();
        let err = other
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err}");
    }

    /// A stand-in answering every request with a 307 towards a second
    /// stand-in: `X-API-Key` must not reach it (reqwest would carry it on),
    /// and the 3xx is refused.
    #[tokio::test]
    async fn redirects_do_not_carry_the_api_key_away() {
        let thief = StandIn::start(|_| Reply::json(200, json!([]))).await;
        let target = format!("{}{ZONES}", thief.url());
        let api =
            StandIn::start(move |_| Reply::text(307, "text/plain", "").header("location", &target))
                .await;
        let err = provider(&api.url())
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                DnsError::Rejected {
                    status: Some(307),
                    ..
                }
            ),
            "{err}"
        );
        assert!(thief.seen().is_empty(), "the key followed the redirect");
    }

    /// A stand-in whose zone list gives an id that would move the request
    /// path (`..`): refused, and no request goes to that path.
    #[tokio::test]
    async fn a_zone_id_that_would_move_the_path_is_refused() {
        let api = StandIn::start(|req| {
            if req.header("x-api-key") != KEY {
                return Reply::text(401, "text/plain; charset=utf-8", "Unauthorized");
            }
            Reply::json(200, json!([{"id": "%2E%2E", "name": "example.test."}]))
        })
        .await;
        let err = provider(&api.url())
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
        assert!(
            api.seen().iter().all(|s| s.path() == ZONES),
            "{:?}",
            api.seen()
        );
    }

    #[tokio::test]
    async fn api_errors_carry_powerdns_words() {
        // A stand-in whose zone list names a zone its zone URL does not know
        // (deleted in between), then answers 422s and 500s.
        let api = StandIn::start(|req| {
            if req.path() == ZONES {
                return Reply::json(
                    200,
                    json!([{"id": "example.test.", "name": "example.test."}]),
                );
            }
            match req.header("x-test") {
                _ if req.method == "GET"
                    && req.query().contains("rrset_name=_acme-challenge.gone.") =>
                {
                    Reply::text(404, "text/plain; charset=utf-8", "Not Found")
                }
                _ if req.query().contains("rrset_name=_acme-challenge.missing.") => Reply::json(
                    422,
                    json!({"error": "Could not find domain 'example.test.'"}),
                ),
                _ if req.query().contains("rrset_name=_acme-challenge.broken.") => {
                    Reply::json(500, json!({"error": "database unavailable"}))
                }
                _ if req.method == "GET" => Reply::json(200, json!({"rrsets": []})),
                _ => Reply::json(422, json!({"error": "RRset x. IN TXT: bad things"})),
            }
        })
        .await;
        let pdns = provider(&api.url());
        let err = pdns
            .create_txt_record("_acme-challenge.gone.example.test", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
        let err = pdns
            .create_txt_record("_acme-challenge.missing.example.test", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
        let err = pdns
            .create_txt_record("_acme-challenge.broken.example.test", "v")
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("database unavailable"), "{err}");
        let err = pdns
            .create_txt_record("_acme-challenge.example.test", "v")
            .await
            .unwrap_err();
        match err {
            DnsError::Rejected { status, detail, .. } => {
                assert_eq!(status, Some(422));
                assert_eq!(detail, "RRset x. IN TXT: bad things");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn builder_refuses_unusable_settings() {
        let config = |b: PowerDnsBuilder| matches!(b.build(), Err(DnsError::Config { .. }));
        assert!(config(PowerDns::builder("http://127.0.0.1:8081", "")));
        assert!(config(PowerDns::builder("http://127.0.0.1:8081", "a\nb")));
        assert!(config(PowerDns::builder(
            "http://pdns.example.com:8081",
            "k"
        )));
        assert!(config(PowerDns::builder("not a url", "k")));
        assert!(config(
            PowerDns::builder("http://127.0.0.1:8081", "k").server_id("")
        ));
        assert!(config(
            PowerDns::builder("http://127.0.0.1:8081", "k").ttl(0)
        ));
        let pdns = PowerDns::builder("https://pdns.example.com:8081/", "k")
            .server_id("a b/c")
            .build()
            .unwrap();
        assert_eq!(pdns.server_path(), "/api/v1/servers/a%20b%2Fc");
    }

    #[test]
    fn txt_quoting_round_trips() {
        for value in ["abc", "with \"quotes\" and \\", &"x".repeat(600), "ünï"] {
            let quoted = quote_txt(value);
            assert!(quoted.starts_with('"') && quoted.ends_with('"'));
            assert_eq!(unquote_txt(&quoted).unwrap(), value.as_bytes(), "{quoted}");
            assert!(txt_matches(&quoted, value));
        }
        assert_eq!(quote_txt(&"y".repeat(256)).matches("\" \"").count(), 1);
        assert_eq!(unquote_txt("\"a\\065b\"").unwrap(), b"aAb");
        assert_eq!(unquote_txt("unquoted"), None);
        assert_eq!(unquote_txt("\"open"), None);
        assert!(txt_matches("unquoted", "unquoted"));
        assert!(!txt_matches("\"other\"", "value"));
    }
}
