//! Hetzner: DNS-01 records through the Hetzner Cloud API's DNS (zones and
//! RRsets), the API of Hetzner DNS in the Hetzner Console.
//!
//! The user documentation is on [`Hetzner`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::json;

use super::http::{
    ApiClient, ApiResponse, Secret, TokenApi, TokenApiParts, encode_component, is_path_segment,
    normalize_name, quote_txt, relative_name, unquote_txt, zone_candidates,
};
use super::name_lock::NameLocks;
use super::provider::{DnsError, DnsProvider};

const PROVIDER: &str = "hetzner";
const DEFAULT_API_URL: &str = "https://api.hetzner.cloud/v1";
/// The TTL given to new RRsets by default: Hetzner's minimum.
pub(crate) const DEFAULT_TTL: u32 = 60;
/// How many times a running action is polled before giving up.
pub(crate) const MAX_ACTION_POLLS: u32 = 30;
/// The wait between two polls of a running action.
pub(crate) const ACTION_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Writes DNS-01 TXT records through Hetzner DNS's API, part of the Hetzner
/// Cloud API (`https://api.hetzner.cloud/v1`, zones and RRsets), with a
/// Cloud API token (*Read & Write*) of the project holding the zones.
///
/// Values are added and removed with the RRset actions `add_records` and
/// `remove_records`, which touch only the given values; zones still in the
/// old DNS Console (`dns.hetzner.com`) must be migrated to the Hetzner
/// Console first.
///
/// **Which API, and why.** Hetzner moved its DNS hosting from the DNS Console
/// (`dns.hetzner.com`, API `https://dns.hetzner.com/api/v1` with an
/// `Auth-API-Token` header) into the Hetzner Console, whose DNS API is part
/// of the Cloud API. Hetzner's migration guide
/// (<https://docs.hetzner.com/networking/dns/migration-to-hetzner-console/process>)
/// says that Hetzner DNS "comes with a new API, integrated in the Cloud API"
/// and that the old DNS API can no longer be used for a zone once it is
/// migrated; the old console is being retired. So this provider follows the
/// Cloud API at `https://api.hetzner.cloud/v1`
/// (<https://docs.hetzner.cloud/reference/cloud#zones>), with a Cloud API
/// token of the project holding the zones (`Authorization: Bearer`). Zones
/// still in the old DNS Console must be migrated first.
///
/// - the zone is found with `GET /zones/{name}` (the API takes a zone's ID
///   or name) for the record's name and its parents, longest first;
/// - the RRset is read with `GET /zones/{zone}/rrsets/{name}/TXT` (`name`
///   relative to the zone, `@` at its apex; 404 when absent);
/// - a value is added with
///   `POST /zones/{zone}/rrsets/{name}/TXT/actions/add_records` and removed
///   with `POST .../actions/remove_records`: these actions add or remove the
///   given records only, creating the RRset when needed and deleting it when
///   emptied, so the exact-value contract holds without rewriting the set.
///   TXT values are sent as quoted character strings, as the API requires. A
///   `ttl` is sent only when the RRset is new (the API refuses one that
///   differs from an existing RRset's);
/// - both answer an *action*; while it is `running` it is polled with
///   `GET /zones/actions/{id}` (at most 30 times, a second
///   apart), and an action ending in `error` fails the call with its message.
///
/// The RRset is read first so that adding a value already there, or removing
/// one that is not, does nothing (idempotence); that check-then-act is done
/// under a per-name lock inside the provider. Another process changing the
/// same RRset between the read and the action can still make an action fail;
/// the action's error is then reported, and no value of others is lost.
///
/// Errors come from the `{"error": {"code", "message"}}` body, shown in the
/// [`DnsError`]. Hetzner's rate limit answers 429 (without `Retry-After`;
/// its `RateLimit-Reset` header is not read).
///
/// **Credentials:** a Cloud API token with *Read & Write* permission, created
/// in the project that holds the zones (tokens are per project: a project of
/// its own for DNS limits what the token can touch).
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use certauto::dns::Hetzner;
/// use certauto::Dns01Solver;
///
/// # fn main() -> Result<(), certauto::DnsError> {
/// let token = std::env::var("HCLOUD_TOKEN").unwrap_or_default();
/// let solver = Dns01Solver::new(Hetzner::builder(token).ttl(60).build()?);
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Hetzner {
    api: ApiClient,
    token: Secret,
    ttl: u32,
    locks: Arc<NameLocks>,
    poll_interval: Duration,
}

impl fmt::Debug for Hetzner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hetzner")
            .field("api", &self.api)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Hetzner`] provider; from [`Hetzner::builder`].
pub struct HetznerBuilder {
    api: TokenApi,
}

impl fmt::Debug for HetznerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HetznerBuilder")
            .field("api", &self.api)
            .finish()
    }
}

impl Hetzner {
    /// Settings for a provider using the Cloud API token `token`.
    pub fn builder(token: impl Into<String>) -> HetznerBuilder {
        HetznerBuilder {
            api: TokenApi::new(token, DEFAULT_API_URL, DEFAULT_TTL),
        }
    }
}

impl HetznerBuilder {
    /// The API's base URL (default `https://api.hetzner.cloud/v1`).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api.api_url = url.into();
        self
    }

    /// The TTL of new RRsets in seconds, 60 to 86400 (default 60). An
    /// existing RRset keeps its TTL.
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
    pub fn build(self) -> Result<Hetzner, DnsError> {
        let TokenApiParts { api, token, ttl } = self.api.check(
            PROVIDER,
            "the API token",
            "Bearer",
            |ttl| (60..=86_400).contains(&ttl),
            "60 to 86400",
        )?;
        Ok(Hetzner {
            api,
            token,
            ttl,
            locks: Arc::new(NameLocks::default()),
            poll_interval: ACTION_POLL_INTERVAL,
        })
    }
}

#[derive(Debug, Deserialize)]
struct ZoneAnswer {
    zone: Zone,
}

#[derive(Debug, Deserialize)]
struct Zone {
    id: serde_json::Value,
    name: String,
}

#[derive(Debug, Deserialize)]
struct RrsetAnswer {
    rrset: Rrset,
}

#[derive(Debug, Deserialize)]
struct Rrset {
    records: Vec<RecordValue>,
}

#[derive(Debug, Deserialize)]
struct RecordValue {
    value: String,
}

#[derive(Debug, Deserialize)]
struct ActionAnswer {
    action: Action,
}

#[derive(Debug, Deserialize)]
struct Action {
    id: u64,
    status: String,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    error: ApiError,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn failure(resp: &ApiResponse) -> DnsError {
    resp.error_from_body(PROVIDER, |e: ErrorAnswer| {
        Some(format!("{}: {}", e.error.code, e.error.message))
    })
}

impl Hetzner {
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

    /// The zone holding `fqdn`: its id (as the API shows it) and name.
    async fn zone(&self, fqdn: &str) -> Result<(String, String), DnsError> {
        for candidate in zone_candidates(fqdn) {
            let path = format!("/zones/{}", encode_component(candidate));
            let resp = self.send(Method::GET, &path, None).await?;
            if resp.status == 404 {
                continue;
            }
            if !resp.is_success() {
                return Err(failure(&resp));
            }
            let answer: ZoneAnswer = resp.json(PROVIDER)?;
            let id = match answer.zone.id {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) if is_path_segment(&s) => s,
                other => {
                    return Err(DnsError::rejected(
                        PROVIDER,
                        Some(resp.status),
                        format!("unexpected zone id {other}"),
                    ));
                }
            };
            if answer
                .zone
                .name
                .trim_end_matches('.')
                .eq_ignore_ascii_case(candidate)
            {
                return Ok((id, candidate.to_owned()));
            }
        }
        Err(DnsError::ZoneNotFound {
            provider: PROVIDER,
            name: fqdn.to_owned(),
        })
    }

    /// Waits for `action` to finish (bounded); its error fails the call.
    async fn finish(&self, mut action: Action) -> Result<(), DnsError> {
        for _ in 0..MAX_ACTION_POLLS {
            match action.status.as_str() {
                "success" => return Ok(()),
                "error" => {
                    let detail = action
                        .error
                        .map(|e| format!("{}: {}", e.code, e.message))
                        .unwrap_or_else(|| "the action failed".to_owned());
                    return Err(DnsError::rejected(PROVIDER, None, detail));
                }
                _ => {}
            }
            tokio::time::sleep(self.poll_interval).await;
            let resp = self
                .send(Method::GET, &format!("/zones/actions/{}", action.id), None)
                .await?;
            if !resp.is_success() {
                return Err(failure(&resp));
            }
            action = resp.json::<ActionAnswer>(PROVIDER)?.action;
        }
        Err(DnsError::transient(
            PROVIDER,
            format!(
                "action {} still {:?} after {MAX_ACTION_POLLS} checks",
                action.id, action.status
            ),
        ))
    }

    /// Adds (`add`) or removes `value` at `fqdn`, under the name's lock.
    async fn change(&self, fqdn: &str, value: &str, add: bool) -> Result<(), DnsError> {
        let (zone_id, zone) = self.zone(fqdn).await?;
        let name = relative_name(fqdn, &zone)
            .ok_or_else(|| DnsError::ZoneNotFound {
                provider: PROVIDER,
                name: fqdn.to_owned(),
            })?
            .to_ascii_lowercase();
        let rrset = format!(
            "/zones/{}/rrsets/{}/TXT",
            encode_component(&zone_id),
            if name == "@" {
                name.clone()
            } else {
                encode_component(&name)
            }
        );
        let _guard = self.locks.lock(&normalize_name(fqdn)).await;

        let resp = self.send(Method::GET, &rrset, None).await?;
        let current = match resp.status {
            404 => None,
            _ if resp.is_success() => Some(resp.json::<RrsetAnswer>(PROVIDER)?.rrset.records),
            _ => return Err(failure(&resp)),
        };
        let present = current
            .as_ref()
            .is_some_and(|records| records.iter().any(|r| unquote_txt(&r.value) == value));
        if present == add {
            return Ok(()); // already as wanted
        }
        let records = json!([{ "value": quote_txt(value) }]);
        let (path, body) = if add {
            let body = if current.is_none() {
                json!({ "records": records, "ttl": self.ttl })
            } else {
                json!({ "records": records })
            };
            (format!("{rrset}/actions/add_records"), body)
        } else {
            (
                format!("{rrset}/actions/remove_records"),
                json!({ "records": records }),
            )
        };
        let resp = self.send(Method::POST, &path, Some(body)).await?;
        if !resp.is_success() {
            return Err(failure(&resp));
        }
        let action = resp.json::<ActionAnswer>(PROVIDER)?.action;
        self.finish(action).await
    }
}

#[async_trait]
impl DnsProvider for Hetzner {
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

    const TOKEN: &str = "hcloud-tok-Zq81";

    #[derive(Default)]
    struct State {
        /// (id, name)
        zones: Vec<(u64, String)>,
        /// (zone id, rrset name) -> (ttl, quoted values)
        rrsets: BTreeMap<(u64, String), (Option<u64>, Vec<String>)>,
        next_action: u64,
        /// How many polls an action stays `running` (0: finished at once).
        running_polls: u32,
        /// action id -> polls left while running
        actions: BTreeMap<u64, u32>,
        answer_all: Option<Reply>,
        violations: Vec<String>,
    }

    /// A stand-in for the Hetzner Cloud API's zones, RRsets and their
    /// actions, checking each request as the API documentation specifies.
    struct HetznerStandIn {
        state: Arc<Mutex<State>>,
        server: StandIn,
    }

    fn hc_error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"error": {"code": code, "message": message, "details": {}}}),
        )
    }

    fn action_json(id: u64, status: &str, command: &str) -> Value {
        json!({"id": id, "command": command, "status": status, "progress": if status == "running" { 50 } else { 100 },
            "started": "2026-01-01T00:00:00Z", "finished": null, "resources": [], "error": null})
    }

    fn quoted(v: &str) -> bool {
        v.len() >= 2 && v.starts_with('"') && v.ends_with('"')
    }

    fn handle(state: &Mutex<State>, req: &Seen) -> Reply {
        let mut st = state.lock().unwrap();
        match answer(&mut st, req) {
            Ok(reply) => reply,
            Err(violation) => {
                st.violations.push(violation.clone());
                hc_error(400, "invalid_input", &format!("stand-in: {violation}"))
            }
        }
    }

    fn new_action(st: &mut State, command: &str) -> Reply {
        st.next_action += 1;
        let id = st.next_action;
        let status = if st.running_polls > 0 {
            st.actions.insert(id, st.running_polls);
            "running"
        } else {
            "success"
        };
        Reply::json(201, json!({ "action": action_json(id, status, command) }))
    }

    fn answer(st: &mut State, req: &Seen) -> Result<Reply, String> {
        let auth = req.header("authorization");
        if !auth.starts_with("Bearer ") {
            return Err(format!("no bearer token: {auth:?}"));
        }
        if auth != format!("Bearer {TOKEN}") {
            return Ok(hc_error(401, "unauthorized", "unable to authenticate"));
        }
        if let Some(reply) = &st.answer_all {
            return Ok(reply.clone());
        }
        if !req.query().is_empty() {
            return Err(format!("unexpected query {}", req.target));
        }
        let path = req
            .path()
            .strip_prefix("/v1/")
            .ok_or_else(|| format!("path outside /v1: {}", req.path()))?;
        let segments: Vec<String> = path.split('/').map(percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let not_found = || hc_error(404, "not_found", "resource not found");
        let zone_id = |st: &State, key: &str| {
            st.zones
                .iter()
                .find(|(id, name)| id.to_string() == key || name == key)
                .map(|z| z.0)
        };
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["zones", "actions", id]) => {
                let id: u64 = id.parse().map_err(|_| "action id")?;
                let Some(left) = st.actions.get_mut(&id) else {
                    return Ok(not_found());
                };
                *left = left.saturating_sub(1);
                let status = if *left == 0 { "success" } else { "running" };
                Ok(Reply::json(
                    200,
                    json!({ "action": action_json(id, status, "add_rrset_records") }),
                ))
            }
            ("GET", ["zones", key]) => {
                if !req.body.is_empty() {
                    return Err("GET with a body".into());
                }
                Ok(
                    match st
                        .zones
                        .iter()
                        .find(|z| z.1 == *key || z.0.to_string() == *key)
                    {
                        Some((id, name)) => Reply::json(
                            200,
                            json!({"zone": {"id": id, "name": name, "mode": "primary", "ttl": 3600, "status": "ok"}}),
                        ),
                        None => not_found(),
                    },
                )
            }
            (method, ["zones", key, "rrsets", name, "TXT", rest @ ..]) => {
                let Some(zone) = zone_id(st, key) else {
                    return Ok(not_found());
                };
                if *name != name.to_ascii_lowercase() || name.ends_with('.') {
                    return Err(format!("RRset name {name}"));
                }
                let k = (zone, (*name).to_owned());
                match (method, rest) {
                    ("GET", []) => Ok(match st.rrsets.get(&k) {
                        Some((ttl, values)) => Reply::json(
                            200,
                            json!({"rrset": {"id": format!("{name}/TXT"), "name": name, "type": "TXT",
                                "ttl": ttl, "labels": {}, "protection": {"change": false}, "zone": zone,
                                "records": values.iter().map(|v| json!({"value": v, "comment": ""})).collect::<Vec<_>>()}}),
                        ),
                        None => not_found(),
                    }),
                    ("POST", ["actions", action]) => {
                        if req.header("content-type") != "application/json" {
                            return Err("action without JSON content type".into());
                        }
                        let body = req.json();
                        let fields: Vec<&String> = body.as_object().ok_or("body")?.keys().collect();
                        let values: Vec<String> = body["records"]
                            .as_array()
                            .ok_or("records")?
                            .iter()
                            .map(|r| r["value"].as_str().map(str::to_owned).ok_or("value"))
                            .collect::<Result<_, _>>()?;
                        if values.is_empty() || !values.iter().all(|v| quoted(v)) {
                            return Err(format!("records {values:?}"));
                        }
                        match *action {
                            "add_records" => {
                                let ttl = body.get("ttl").and_then(Value::as_u64);
                                if !(fields == ["records"] || fields == ["records", "ttl"]) {
                                    return Err(format!("add_records body {body}"));
                                }
                                let entry = st.rrsets.entry(k).or_insert((ttl, Vec::new()));
                                if ttl.is_some() && entry.0 != ttl {
                                    return Ok(hc_error(
                                        422,
                                        "invalid_input",
                                        "ttl does not match the RRset's TTL",
                                    ));
                                }
                                for v in values {
                                    if !entry.1.contains(&v) {
                                        entry.1.push(v);
                                    }
                                }
                                Ok(new_action(st, "add_rrset_records"))
                            }
                            "remove_records" => {
                                if fields != ["records"] {
                                    return Err(format!("remove_records body {body}"));
                                }
                                let Some(entry) = st.rrsets.get_mut(&k) else {
                                    return Ok(not_found());
                                };
                                entry.1.retain(|v| !values.contains(v));
                                if entry.1.is_empty() {
                                    st.rrsets.remove(&k);
                                }
                                Ok(new_action(st, "remove_rrset_records"))
                            }
                            _ => Err(format!("unexpected action {action}")),
                        }
                    }
                    _ => Err(format!("unexpected {} {}", req.method, req.target)),
                }
            }
            _ => Err(format!("unexpected {} {}", req.method, req.target)),
        }
    }

    impl HetznerStandIn {
        async fn start(zones: &[(u64, &str)]) -> Self {
            let state = Arc::new(Mutex::new(State {
                zones: zones.iter().map(|(id, n)| (*id, (*n).to_owned())).collect(),
                ..State::default()
            }));
            let server = StandIn::start({
                let state = state.clone();
                move |req| handle(&state, req)
            })
            .await;
            Self { state, server }
        }

        fn builder(&self, token: &str) -> HetznerBuilder {
            Hetzner::builder(token).api_url(format!("{}/v1", self.server.url()))
        }

        fn provider(&self) -> Hetzner {
            self.builder(TOKEN).build().unwrap()
        }

        fn seed(&self, zone: u64, name: &str, value: &str) {
            self.state
                .lock()
                .unwrap()
                .rrsets
                .insert((zone, name.into()), (Some(3600), vec![quote_txt(value)]));
        }

        fn values(&self, zone: u64, name: &str) -> Vec<String> {
            let st = self.state.lock().unwrap();
            st.rrsets
                .get(&(zone, name.into()))
                .map(|(_, v)| v.iter().map(|v| unquote_txt(v)).collect())
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
        let api = HetznerStandIn::start(&[(17, "example.com")]).await;
        api.seed(17, "_acme-challenge", OTHER);
        let provider = api.provider();
        provider_checks::exact_values(&provider, "_acme-challenge.example.com", || {
            api.values(17, "_acme-challenge")
        })
        .await;
        api.assert_no_violations();
        assert_eq!(provider.locks.live(), 0);
    }

    #[tokio::test]
    async fn deeper_name_new_rrset_ttl_and_running_actions() {
        let api = HetznerStandIn::start(&[(17, "example.com"), (18, "other.org")]).await;
        api.state.lock().unwrap().running_polls = 2;
        let mut provider = api.builder(TOKEN).ttl(120).build().unwrap();
        provider.poll_interval = Duration::from_millis(1);
        let fqdn = "_acme-challenge.a.b.example.com";
        provider.create_txt_record(fqdn, V1).await.unwrap();
        assert_eq!(api.values(17, "_acme-challenge.a.b"), [V1]);
        let seen = api.server.seen();
        let zones: Vec<&str> = seen
            .iter()
            .filter_map(|s| s.path().strip_prefix("/v1/zones/"))
            .filter(|p| !p.contains('/'))
            .collect();
        assert_eq!(
            zones,
            [fqdn, "a.b.example.com", "b.example.com", "example.com"]
        );
        // The running action was polled until it succeeded.
        assert_eq!(
            seen.iter()
                .filter(|s| s.path() == "/v1/zones/actions/1")
                .count(),
            2
        );
        assert_eq!(
            api.state.lock().unwrap().rrsets[&(17, "_acme-challenge.a.b".to_owned())].0,
            Some(120)
        );
        // Emptied RRsets are deleted by the API.
        provider.delete_txt_record(fqdn, V1).await.unwrap();
        assert!(api.state.lock().unwrap().rrsets.is_empty());
        // At a zone's apex.
        provider.create_txt_record("example.com", V1).await.unwrap();
        assert!(seen.len() < api.server.seen().len());
        assert!(
            api.server
                .seen()
                .iter()
                .any(|s| s.path() == "/v1/zones/17/rrsets/@/TXT")
        );
        api.assert_no_violations();
    }

    #[tokio::test]
    async fn failed_and_endless_actions_are_errors() {
        let api = HetznerStandIn::start(&[(17, "example.com")]).await;
        let mut provider = api.provider();
        provider.poll_interval = Duration::from_millis(1);
        api.state.lock().unwrap().running_polls = MAX_ACTION_POLLS + 5;
        let err = provider
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");

        let failed = Action {
            id: 9,
            status: "error".into(),
            error: Some(ApiError {
                code: "action_failed".into(),
                message: "record could not be added".into(),
            }),
        };
        let err = provider.finish(failed).await.unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("action_failed: record could not be added")
        );
        api.assert_no_violations();
    }

    #[tokio::test]
    async fn unknown_zone_is_zone_not_found() {
        let api = HetznerStandIn::start(&[(18, "other.org")]).await;
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
        let api = HetznerStandIn::start(&[(17, "example.com")]).await;
        let provider = api.builder("hcloud-wrong-3").build().unwrap();
        let err = provider
            .delete_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::AuthRefused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("unauthorized: unable to authenticate"),
            "{text}"
        );
        assert!(!text.contains("hcloud-wrong-3"));
    }

    #[tokio::test]
    async fn error_body_text_is_shown() {
        let api = HetznerStandIn::start(&[(17, "example.com")]).await;
        api.answer_all(Some(hc_error(
            422,
            "incorrect_zone_mode",
            "This operation is not supported for this Zone's mode.",
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
                .contains("incorrect_zone_mode: This operation is not supported"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn http_failures_are_typed() {
        let api = HetznerStandIn::start(&[(17, "example.com")]).await;
        let provider = api.provider();
        provider_checks::http_failures(
            &provider,
            "_acme-challenge.example.com",
            |r| api.answer_all(r),
            hc_error(
                429,
                "rate_limit_exceeded",
                "limit of 3600 requests per hour reached",
            )
            .header("retry-after", "7"),
            hc_error(503, "unavailable", "service unavailable"),
        )
        .await;
        api.assert_no_violations();
    }

    /// A stand-in whose zone answer carries an id that would move the
    /// request path (`..`): refused, and no request goes to that path.
    #[tokio::test]
    async fn a_zone_id_that_would_move_the_path_is_refused() {
        let api = StandIn::start(|req| {
            if req.header("authorization") != format!("Bearer {TOKEN}") {
                return Reply::json(401, json!({"error": {"code": "unauthorized", "message": "x"}}));
            }
            Reply::json(
                200,
                json!({"zone": {"id": "..", "name": "example.com", "mode": "primary", "ttl": 3600, "status": "ok"}}),
            )
        })
        .await;
        let provider = Hetzner::builder(TOKEN)
            .api_url(format!("{}/v1", api.url()))
            .build()
            .unwrap();
        let err = provider
            .create_txt_record("_acme-challenge.example.com", V1)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
        assert_eq!(api.seen().len(), 1, "{:?}", api.seen());
    }

    #[test]
    fn debug_hides_the_token_and_settings_are_checked() {
        let builder = Hetzner::builder(TOKEN);
        assert!(!format!("{builder:?}").contains(TOKEN));
        let provider = builder.api_url("http://127.0.0.1:1").build().unwrap();
        let debug = format!("{provider:?}");
        assert!(
            !debug.contains(TOKEN) && debug.contains("redacted"),
            "{debug}"
        );
        for builder in [
            Hetzner::builder(""),
            Hetzner::builder(TOKEN).ttl(59),
            Hetzner::builder(TOKEN).api_url("not a url"),
        ] {
            assert!(matches!(builder.build(), Err(DnsError::Config { .. })));
        }
    }
}
