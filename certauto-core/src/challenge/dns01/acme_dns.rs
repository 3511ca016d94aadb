//! A DNS provider for [acme-dns](https://github.com/joohoi/acme-dns): a
//! small DNS server whose only job is to answer DNS-01 TXT records, so the
//! credentials on this machine can change nothing but one challenge name.
//!
//! The user documentation is on [`AcmeDns`].

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;

use reqwest::header::HeaderValue;

use super::http::{ApiClient, ApiResponse, normalize_name, sensitive_header};
use super::provider::{DnsError, DnsProvider};

const PROVIDER: &str = "acme-dns";
/// The length acme-dns requires of a TXT value (a base64url SHA-256 digest).
const VALUE_LEN: usize = 43;
/// The largest accounts file read.
pub(crate) const MAX_ACCOUNTS_FILE: u64 = 1 << 20;

/// One acme-dns account, as `POST /register` returns it and lego stores it.
///
/// Its `Debug` output hides the password.
#[derive(Clone, serde::Deserialize)]
pub struct AcmeDnsAccount {
    /// The account's user name (`X-Api-User`).
    pub username: String,
    /// The account's password (`X-Api-Key`).
    pub password: String,
    /// The name acme-dns answers for this account
    /// (`<subdomain>.<acme-dns zone>`): the CNAME target of
    /// `_acme-challenge.<domain>`.
    pub fulldomain: String,
    /// The account's subdomain (the first label of `fulldomain`).
    pub subdomain: String,
    /// The acme-dns server of this account, when not the builder's URL.
    #[serde(default)]
    pub server_url: Option<String>,
}

impl fmt::Debug for AcmeDnsAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeDnsAccount")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("fulldomain", &self.fulldomain)
            .field("subdomain", &self.subdomain)
            .field("server_url", &self.server_url)
            .finish()
    }
}

/// Writes DNS-01 values through acme-dns.
///
/// It follows acme-dns's update API (the README's "Update endpoint"):
/// `POST <api_url>/update` with the headers `X-Api-User` and `X-Api-Key` and
/// the JSON body `{"subdomain": "<subdomain>", "txt": "<value>"}`, answered
/// by `200 {"txt": "<value>"}`.
///
/// **Setup.** Register one account per domain (`POST /register` on your
/// acme-dns server), then point `_acme-challenge.<domain>` at the account's
/// `fulldomain` with a CNAME. [`Dns01Solver`](crate::Dns01Solver) follows
/// that CNAME and asks this provider to write at the `fulldomain`; the
/// provider finds the account by its `fulldomain`, or by
/// `_acme-challenge.<domain>` for its domain (when the solver was told not
/// to follow CNAMEs). A name with no account is
/// [`DnsError::ZoneNotFound`].
///
/// **Accounts** are given one by one ([`AcmeDnsBuilder::account`]) or as
/// the JSON file lego (and cert-manager) store them in
/// ([`AcmeDnsBuilder::accounts_file`]): an object mapping each domain to
/// `{"username", "password", "fulldomain", "subdomain", "server_url"?}`
/// (other fields, such as `allowfrom`, are ignored; `server_url`, when
/// present, overrides the API URL for that account). The password never
/// appears in logs, errors or `Debug` output.
///
/// **Values and deletion.** acme-dns accepts only 43-character values (a
/// DNS-01 digest) and keeps the two latest values of each subdomain itself,
/// so a wildcard and its apex, validated at one name, both work; a third
/// concurrent value for one subdomain pushes out the oldest. acme-dns has no
/// delete: [`delete_txt_record`](DnsProvider::delete_txt_record) does
/// nothing and succeeds, and old values are replaced by later ones.
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use certauto::Dns01Solver;
/// use certauto::dns::AcmeDns;
///
/// # fn main() -> Result<(), certauto::DnsError> {
/// let acme_dns = AcmeDns::builder("https://auth.acme-dns.io")
///     .accounts_file("/etc/certauto/acme-dns.json")
///     .build()?;
/// let solver = Dns01Solver::builder(acme_dns).build();
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AcmeDns {
    accounts: Arc<[Account]>,
}

struct Account {
    /// The domain the account is for (lower case, no trailing dot).
    domain: String,
    /// Its `fulldomain` (lower case, no trailing dot).
    fulldomain: String,
    subdomain: String,
    /// `X-Api-User` and `X-Api-Key`, checked and marked sensitive.
    username: HeaderValue,
    password: HeaderValue,
    api: ApiClient,
}

impl fmt::Debug for AcmeDns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domains: Vec<&str> = self.accounts.iter().map(|a| a.domain.as_str()).collect();
        f.debug_struct("AcmeDns")
            .field("domains", &domains)
            .finish_non_exhaustive()
    }
}

/// Settings for [`AcmeDns`].
pub struct AcmeDnsBuilder {
    api_url: String,
    accounts: Vec<(String, AcmeDnsAccount)>,
    files: Vec<PathBuf>,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for AcmeDnsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeDnsBuilder")
            .field("api_url", &self.api_url)
            .field("accounts", &self.accounts)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl AcmeDns {
    /// Settings for the acme-dns server at `api_url` (`https://auth.example.com`).
    pub fn builder(api_url: impl Into<String>) -> AcmeDnsBuilder {
        AcmeDnsBuilder {
            api_url: api_url.into(),
            accounts: Vec::new(),
            files: Vec::new(),
            extra_roots: Vec::new(),
        }
    }

    /// The account for `fqdn`: the one whose `fulldomain` it is, else the
    /// one whose domain it is the `_acme-challenge` name of.
    fn account_for(&self, fqdn: &str) -> Option<&Account> {
        let fqdn = normalize_name(fqdn);
        self.accounts
            .iter()
            .find(|a| a.fulldomain == fqdn)
            .or_else(|| {
                let domain = fqdn.strip_prefix("_acme-challenge.")?;
                self.accounts.iter().find(|a| a.domain == domain)
            })
    }
}

impl AcmeDnsBuilder {
    /// Adds the account for `domain` (`example.com`; `*.example.com` means
    /// the same), replacing an earlier one for it.
    pub fn account(mut self, domain: impl Into<String>, account: AcmeDnsAccount) -> Self {
        self.accounts.push((domain.into(), account));
        self
    }

    /// Adds the accounts of a lego-style JSON file (read by
    /// [`build`](Self::build)): `{"<domain>": {"username": .., "password": ..,
    /// "fulldomain": .., "subdomain": .., "server_url": ..}, ...}`.
    pub fn accounts_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// More CA certificates to trust for the acme-dns server's HTTPS (a
    /// private CA), besides the Mozilla roots.
    pub fn extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.extra_roots = roots;
        self
    }

    /// Checks the settings and reads the account files: an unreadable or
    /// malformed file, an account with an empty field, a bad URL or no
    /// account at all is [`DnsError::Config`].
    pub fn build(self) -> Result<AcmeDns, DnsError> {
        let mut all = Vec::new();
        for path in &self.files {
            all.extend(read_accounts_file(path)?);
        }
        all.extend(self.accounts);
        if all.is_empty() {
            return Err(DnsError::config(PROVIDER, "no acme-dns account given"));
        }
        let default_api = ApiClient::new(PROVIDER, &self.api_url, &self.extra_roots)?;
        let mut clients: HashMap<String, ApiClient> = HashMap::new();
        // Later accounts for a domain replace earlier ones.
        let mut by_domain: Vec<Account> = Vec::new();
        for (domain, account) in all {
            let domain = normalize_name(domain.trim_start_matches("*."));
            let field_missing = [
                ("username", &account.username),
                ("password", &account.password),
                ("fulldomain", &account.fulldomain),
                ("subdomain", &account.subdomain),
            ]
            .into_iter()
            .find(|(_, v)| v.trim().is_empty());
            if let Some((field, _)) = field_missing {
                return Err(DnsError::config(
                    PROVIDER,
                    format!("the account for {domain:?} has no {field}"),
                ));
            }
            if domain.is_empty() {
                return Err(DnsError::config(PROVIDER, "an account has an empty domain"));
            }
            let api = match account.server_url.as_deref().map(str::trim) {
                Some(url) if !url.is_empty() => match clients.get(url) {
                    Some(api) => api.clone(),
                    None => {
                        let api = ApiClient::new(PROVIDER, url, &self.extra_roots)?;
                        clients.insert(url.to_owned(), api.clone());
                        api
                    }
                },
                _ => default_api.clone(),
            };
            let username = sensitive_header(
                PROVIDER,
                &format!("the user name of the account for {domain:?}"),
                account.username.trim(),
            )?;
            let password = sensitive_header(
                PROVIDER,
                &format!("the password of the account for {domain:?}"),
                &account.password,
            )?;
            by_domain.retain(|a| a.domain != domain);
            by_domain.push(Account {
                domain,
                fulldomain: normalize_name(&account.fulldomain),
                subdomain: account.subdomain.trim().to_owned(),
                username,
                password,
                api,
            });
        }
        Ok(AcmeDns {
            accounts: by_domain.into(),
        })
    }
}

fn read_accounts_file(path: &std::path::Path) -> Result<Vec<(String, AcmeDnsAccount)>, DnsError> {
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| DnsError::config(PROVIDER, format!("accounts file {shown}: {e}")))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_ACCOUNTS_FILE + 1),
        &mut text,
    )
    .map_err(|e| DnsError::config(PROVIDER, format!("accounts file {shown}: {e}")))?;
    if text.len() as u64 > MAX_ACCOUNTS_FILE {
        return Err(DnsError::config(
            PROVIDER,
            format!("accounts file {shown}: larger than {MAX_ACCOUNTS_FILE} bytes"),
        ));
    }
    let map: HashMap<String, AcmeDnsAccount> = serde_json::from_slice(&text).map_err(|e| {
        // Only the kind and position of the fault: serde_json's message
        // quotes the value of a wrong type (`invalid type: string "..."`),
        // which may be a password.
        let fault = match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Eof => "cut short",
            serde_json::error::Category::Data => "a field is missing or of the wrong type",
        };
        DnsError::config(
            PROVIDER,
            format!(
                "accounts file {shown}: not a map of domains to acme-dns accounts \
                 ({fault} at line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let mut accounts: Vec<_> = map.into_iter().collect();
    accounts.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(accounts)
}

#[derive(serde::Serialize)]
struct UpdateRequest<'a> {
    subdomain: &'a str,
    txt: &'a str,
}

#[derive(serde::Deserialize)]
struct UpdateAnswer {
    txt: String,
}

#[derive(serde::Deserialize)]
struct ErrorAnswer {
    error: String,
}

fn api_error(resp: &ApiResponse) -> DnsError {
    resp.error_from_body(PROVIDER, |e: ErrorAnswer| Some(e.error))
}

#[async_trait]
impl DnsProvider for AcmeDns {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let Some(account) = self.account_for(fqdn) else {
            return Err(DnsError::ZoneNotFound {
                provider: PROVIDER,
                name: fqdn.to_owned(),
            });
        };
        if value.len() != VALUE_LEN {
            return Err(DnsError::rejected(
                PROVIDER,
                None,
                format!(
                    "acme-dns accepts only {VALUE_LEN}-character values, not {}",
                    value.len()
                ),
            ));
        }
        let request = account
            .api
            .request(reqwest::Method::POST, "/update")
            .header("X-Api-User", account.username.clone())
            .header("X-Api-Key", account.password.clone())
            .header("content-type", "application/json")
            .body(
                serde_json::to_vec(&UpdateRequest {
                    subdomain: &account.subdomain,
                    txt: value,
                })
                .map_err(|e| DnsError::rejected(PROVIDER, None, e.to_string()))?,
            );
        let resp = account.api.send(request).await?;
        if !resp.is_success() {
            return Err(api_error(&resp));
        }
        let answer: UpdateAnswer = resp.json(PROVIDER)?;
        if answer.txt != value {
            return Err(DnsError::rejected(
                PROVIDER,
                Some(resp.status),
                format!("acme-dns stored {:?} instead of the value sent", answer.txt),
            ));
        }
        tracing::debug!(fqdn, fulldomain = %account.fulldomain, "acme-dns value set");
        Ok(())
    }

    /// acme-dns has no delete; its two latest values per subdomain are kept
    /// until replaced. Succeeds without a request.
    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let _ = value;
        tracing::debug!(
            fqdn,
            "acme-dns has no delete; the value stays until replaced"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::challenge::dns01::standin::{Reply, Seen, StandIn};

    const USER: &str = "c36f50e8-4632-44f0-83fe-e070fef28a10";
    const KEY: &str = "htB9mR9DYgcu9bX_afHF62erXaH2TS7bg9KW3F7Z";
    const SUB: &str = "8e5700ea-a4bf-41c7-8a77-e990661dcc6a";
    const FULL: &str = "8e5700ea-a4bf-41c7-8a77-e990661dcc6a.auth.example.org";

    fn value(c: char) -> String {
        std::iter::repeat_n(c, VALUE_LEN).collect()
    }

    fn account() -> AcmeDnsAccount {
        AcmeDnsAccount {
            username: USER.into(),
            password: KEY.into(),
            fulldomain: FULL.into(),
            subdomain: SUB.into(),
            server_url: None,
        }
    }

    /// A stand-in for an acme-dns server: checks `POST /update` as the
    /// README documents it and keeps the two latest values per subdomain,
    /// as acme-dns does; answers 401 `{"error":"forbidden"}` to wrong
    /// credentials and 400 `{"error":"bad_txt"}` to a bad value.
    fn acme_dns_standin(store: Arc<Mutex<Vec<String>>>) -> impl Fn(&Seen) -> Reply {
        move |seen: &Seen| {
            if seen.method != "POST" || seen.target != "/update" {
                return Reply::json(404, serde_json::json!({"error": "not found"}));
            }
            if seen.header("x-api-user") != USER || seen.header("x-api-key") != KEY {
                return Reply::json(401, serde_json::json!({"error": "forbidden"}));
            }
            assert!(
                seen.header("content-type").starts_with("application/json"),
                "content type {:?}",
                seen.header("content-type")
            );
            let body = seen.json();
            let (Some(sub), Some(txt)) = (body["subdomain"].as_str(), body["txt"].as_str()) else {
                return Reply::json(400, serde_json::json!({"error": "malformed_json_payload"}));
            };
            if sub != SUB {
                return Reply::json(401, serde_json::json!({"error": "forbidden"}));
            }
            if txt.len() != VALUE_LEN {
                return Reply::json(400, serde_json::json!({"error": "bad_txt"}));
            }
            let mut values = store.lock().unwrap();
            values.push(txt.to_owned());
            if values.len() > 2 {
                values.remove(0);
            }
            Reply::json(200, serde_json::json!({"txt": txt}))
        }
    }

    #[tokio::test]
    async fn updates_by_fulldomain_or_challenge_name_and_keeps_two_values() {
        let store = Arc::new(Mutex::new(Vec::new()));
        let server = StandIn::start(acme_dns_standin(store.clone())).await;
        let dns = AcmeDns::builder(server.url())
            .account("*.Example.com.", account())
            .build()
            .unwrap();
        let (a, b) = (value('a'), value('b'));
        // A wildcard and its apex at once, through the CNAME target.
        let (ra, rb) = tokio::join!(
            dns.create_txt_record(FULL, &a),
            dns.create_txt_record("_acme-challenge.example.com", &b)
        );
        ra.unwrap();
        rb.unwrap();
        let mut values = store.lock().unwrap().clone();
        values.sort();
        assert_eq!(values, [a.clone(), b.clone()]);
        // Delete is a no-op: no request, success.
        dns.delete_txt_record(FULL, &a).await.unwrap();
        assert_eq!(server.seen().len(), 2);
        let seen = &server.seen()[0];
        assert_eq!(seen.json()["subdomain"], SUB);
    }

    #[tokio::test]
    async fn unknown_name_bad_value_and_refused_credentials() {
        let store = Arc::new(Mutex::new(Vec::new()));
        let server = StandIn::start(acme_dns_standin(store)).await;
        let dns = AcmeDns::builder(server.url())
            .account("example.com", account())
            .build()
            .unwrap();
        assert!(matches!(
            dns.create_txt_record("_acme-challenge.other.org", &value('a'))
                .await,
            Err(DnsError::ZoneNotFound { .. })
        ));
        assert!(matches!(
            dns.create_txt_record(FULL, "short").await,
            Err(DnsError::Rejected { .. })
        ));
        let wrong = AcmeDns::builder(server.url())
            .account(
                "example.com",
                AcmeDnsAccount {
                    password: "wrong-password".into(),
                    ..account()
                },
            )
            .build()
            .unwrap();
        let err = wrong
            .create_txt_record(FULL, &value('a'))
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::AuthRefused { .. }), "{err:?}");
        assert!(err.to_string().contains("forbidden"), "{err}");
        assert!(!err.to_string().contains("wrong-password"));
    }

    #[tokio::test]
    async fn server_errors_and_malformed_answers_are_typed() {
        let calls = Arc::new(Mutex::new(0u32));
        let server = StandIn::start({
            let calls = calls.clone();
            move |_seen: &Seen| {
                let mut n = calls.lock().unwrap();
                *n += 1;
                match *n {
                    1 => Reply::json(500, serde_json::json!({"error": "db_error"})),
                    2 => Reply::json(429, serde_json::json!({})).header("retry-after", "7"),
                    3 => Reply::text(200, "text/html", "<html>proxy</html>"),
                    _ => Reply::json(200, serde_json::json!({"txt": "something else"})),
                }
            }
        })
        .await;
        let dns = AcmeDns::builder(server.url())
            .account("example.com", account())
            .build()
            .unwrap();
        let v = value('a');
        let err = dns.create_txt_record(FULL, &v).await.unwrap_err();
        assert!(matches!(err, DnsError::Transient { .. }), "{err:?}");
        let err = dns.create_txt_record(FULL, &v).await.unwrap_err();
        assert!(
            matches!(err, DnsError::RateLimited { retry_after: Some(d), .. } if d.as_secs() == 7),
            "{err:?}"
        );
        let err = dns.create_txt_record(FULL, &v).await.unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
        let err = dns.create_txt_record(FULL, &v).await.unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
    }

    #[test]
    fn accounts_file_as_lego_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme-dns.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"example.com": {{"username": "{USER}", "password": "{KEY}",
                "fulldomain": "{FULL}", "subdomain": "{SUB}", "allowfrom": []}},
                "other.org": {{"username": "u2", "password": "p2",
                "fulldomain": "x.auth.other.org", "subdomain": "x",
                "server_url": "https://acme-dns.other.org"}}}}"#
            ),
        )
        .unwrap();
        let dns = AcmeDns::builder("https://auth.example.org")
            .accounts_file(&path)
            .build()
            .unwrap();
        assert!(dns.account_for("x.auth.other.org.").is_some());
        assert_eq!(
            dns.account_for("_acme-challenge.example.com")
                .map(|a| a.subdomain.as_str()),
            Some(SUB)
        );
        let shown = format!("{dns:?} {:?}", account());
        assert!(!shown.contains(KEY), "{shown}");
        assert!(!shown.contains("p2"), "{shown}");

        std::fs::write(&path, r#"{"example.com": {"username": "u"}}"#).unwrap();
        let err = AcmeDns::builder("https://auth.example.org")
            .accounts_file(&path)
            .build()
            .unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
        // A value of the wrong type: serde_json would quote it.
        for text in [
            r#"{"example.com": "s3cret-pass"}"#,
            r#"{"example.com": {"username": "u", "password": 987654321,
                "fulldomain": "x.auth.example.org", "subdomain": "x"}}"#,
            r#"{"example.com": {"username": "u", "password": "s3cret-pass""#,
        ] {
            std::fs::write(&path, text).unwrap();
            let err = AcmeDns::builder("https://auth.example.org")
                .accounts_file(&path)
                .build()
                .unwrap_err();
            assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(!shown.contains("987654321"), "{shown}");
            assert!(shown.contains("line "), "{shown}");
        }
        // Credentials a header cannot carry are refused at build, unshown.
        for (user, password) in [("u\nx", "s3cret-pass"), ("u", "s3cret-pass\r\n")] {
            let err = AcmeDns::builder("https://auth.example.org")
                .account(
                    "example.com",
                    AcmeDnsAccount {
                        username: user.into(),
                        password: password.into(),
                        ..account()
                    },
                )
                .build()
                .unwrap_err();
            assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
            assert!(!format!("{err} {err:?}").contains("s3cret"), "{err}");
        }
        let err = AcmeDns::builder("https://auth.example.org")
            .accounts_file(dir.path().join("missing.json"))
            .build()
            .unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
        let err = AcmeDns::builder("https://auth.example.org")
            .build()
            .unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
    }
}
