//! [`AcmeClient`]: the RFC 8555 protocol, request by request.
//!
//! The client knows nothing of storage, solvers or policy: it sends signed
//! requests and parses answers. [`AcmeIssuer`](crate::AcmeIssuer) drives it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::acme::chain::PemChain;
use crate::acme::http::{Response, build_http_client};
use crate::acme::jws::{AccountKey, ExternalAccountKey, KeyId, b64, sign_jws};
use crate::acme::problem::{Problem, ProblemType};
use crate::acme::types::{
    AccountResource, AuthorizationResource, AuthorizationStatus, ChallengeResource, Directory,
    NewOrderRequest, OrderResource, OrderStatus, RevocationReason, WireIdentifier,
};
use crate::error::{AcmeError, ConfigError};
use crate::identifier::Identifier;
use crate::metrics::{self, Endpoint};

/// An ACME account: its URL at the CA, its key and its last known state.
#[derive(Debug, Clone)]
pub struct Account {
    /// The account URL (the `kid` of every request).
    pub url: String,
    /// The account key.
    pub key: Arc<AccountKey>,
    /// The account object as last returned by the CA.
    pub resource: AccountResource,
}

/// A CA's suggested renewal window (ARI, RFC 9773 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenewalInfo {
    /// Renew no earlier than this.
    pub window_start: std::time::SystemTime,
    /// Renew before this.
    pub window_end: std::time::SystemTime,
    /// Why the window is what it is (e.g. an incident), if the CA says.
    pub explanation_url: Option<String>,
    /// When to ask again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// An order: its URL and its last known state.
#[derive(Debug, Clone)]
pub struct Order {
    /// The order URL.
    pub url: String,
    /// The order object as last returned by the CA.
    pub resource: OrderResource,
}

/// Options for creating an account.
#[derive(Debug, Clone, Default)]
pub struct NewAccountOptions {
    /// Contact URLs, such as `mailto:admin@example.com`.
    pub contact: Vec<String>,
    /// Whether the CA's terms of service are agreed.
    pub terms_of_service_agreed: bool,
    /// External Account Binding credentials, for CAs that require them.
    pub external_account: Option<ExternalAccountKey>,
}

/// Limits and timings of an [`AcmeClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientLimits {
    /// The largest response body accepted (default 1 MiB).
    pub max_body_bytes: usize,
    /// How many `badNonce` rejections in a row are retried (default 20).
    pub bad_nonce_retries: u32,
    /// How many times a request that failed in transport (connection
    /// refused or reset, an idle connection closed, a timeout) is sent again,
    /// with a fresh nonce, before the error is returned (default 2).
    pub transport_retries: u32,
    /// The first polling interval (default 50 ms); it doubles up to `poll_max_interval`.
    pub poll_initial_interval: Duration,
    /// The longest polling interval, and the cap on a CA's `Retry-After` (default 10 s).
    pub poll_max_interval: Duration,
    /// How long an authorization or order may take before giving up (default 5 minutes).
    pub poll_timeout: Duration,
    /// The timeout of one HTTP request (default 30 s).
    pub request_timeout: Duration,
}

/// The default [`ClientLimits::max_body_bytes`].
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// The default [`ClientLimits::bad_nonce_retries`].
pub(crate) const DEFAULT_BAD_NONCE_RETRIES: u32 = 20;
/// The default [`ClientLimits::transport_retries`].
pub(crate) const DEFAULT_TRANSPORT_RETRIES: u32 = 2;
/// The default [`ClientLimits::poll_initial_interval`].
pub(crate) const DEFAULT_POLL_INITIAL_INTERVAL: Duration = Duration::from_millis(50);
/// The default [`ClientLimits::poll_max_interval`].
pub(crate) const DEFAULT_POLL_MAX_INTERVAL: Duration = Duration::from_secs(10);
/// The default [`ClientLimits::poll_timeout`].
pub(crate) const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(300);
/// The default [`ClientLimits::request_timeout`].
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            bad_nonce_retries: DEFAULT_BAD_NONCE_RETRIES,
            transport_retries: DEFAULT_TRANSPORT_RETRIES,
            poll_initial_interval: DEFAULT_POLL_INITIAL_INTERVAL,
            poll_max_interval: DEFAULT_POLL_MAX_INTERVAL,
            poll_timeout: DEFAULT_POLL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Builds an [`AcmeClient`].
#[derive(Debug, Clone)]
pub struct AcmeClientBuilder {
    directory_url: String,
    extra_roots: Vec<CertificateDer<'static>>,
    mozilla_roots: bool,
    user_agent: String,
    limits: ClientLimits,
}

impl AcmeClientBuilder {
    /// Trusts these roots, in addition to Mozilla's, for the CA's own HTTPS
    /// (for a private CA or a test CA such as Pebble).
    pub fn trust_roots(mut self, roots: impl IntoIterator<Item = CertificateDer<'static>>) -> Self {
        self.extra_roots.extend(roots);
        self
    }

    /// Trusts only the roots given with [`trust_roots`](Self::trust_roots), not Mozilla's.
    pub fn only_trusted_roots(mut self) -> Self {
        self.mozilla_roots = false;
        self
    }

    /// Sets the User-Agent (RFC 8555 §6.1 asks clients to send one).
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// Sets limits and timings.
    pub fn limits(mut self, limits: ClientLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Fetches the directory and returns the client.
    pub async fn build(self) -> Result<AcmeClient, crate::Error> {
        let url = self.directory_url.trim().to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::InvalidUrl {
                url,
                reason: "the ACME directory URL must be http(s)",
            }
            .into());
        }
        let http = build_http_client(
            &self.extra_roots,
            self.mozilla_roots,
            self.limits.request_timeout,
            &self.user_agent,
        )?;
        let mut client = AcmeClient {
            http,
            directory_url: url.clone(),
            directory: placeholder_directory(),
            nonces: Mutex::new(Vec::new()),
            limits: self.limits,
        };
        let resp = client.get(&url, Endpoint::Directory).await?;
        if !resp.is_success() {
            return Err(client.error_from(resp).into());
        }
        client.directory = resp.json()?;
        Ok(client)
    }
}

fn placeholder_directory() -> Directory {
    serde_json::from_value(json!({
        "newNonce": "", "newAccount": "", "newOrder": "", "revokeCert": "", "keyChange": ""
    }))
    .unwrap_or_else(|_| unreachable!("static JSON matches Directory"))
}

pub(crate) const MAX_POOLED_NONCES: usize = 32;

/// A client for one ACME CA (RFC 8555).
///
/// Cheap to share behind an `Arc`; every method takes `&self`. Nonces from
/// every response are pooled and reused; `badNonce` rejections are retried
/// transparently with the fresh nonce the CA sends along.
#[derive(Debug)]
pub struct AcmeClient {
    http: reqwest::Client,
    directory_url: String,
    directory: Directory,
    nonces: Mutex<Vec<String>>,
    limits: ClientLimits,
}

impl AcmeClient {
    /// Starts building a client for the CA whose directory is at `directory_url`.
    pub fn builder(directory_url: impl Into<String>) -> AcmeClientBuilder {
        AcmeClientBuilder {
            directory_url: directory_url.into(),
            extra_roots: Vec::new(),
            mozilla_roots: true,
            user_agent: concat!("certauto/", env!("CARGO_PKG_VERSION")).to_owned(),
            limits: ClientLimits::default(),
        }
    }

    /// The directory URL.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// The CA's directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The limits in force.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Sends one request to `endpoint` and reads the answer; every request
    /// to the CA goes through here (and is counted here).
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
        endpoint: Endpoint,
    ) -> Result<Response, AcmeError> {
        let resp = req.send().await.map_err(|e| {
            metrics::acme_request(endpoint, None);
            AcmeError::Transport {
                url: url.to_owned(),
                source: Box::new(e),
            }
        })?;
        metrics::acme_request(endpoint, Some(resp.status().as_u16()));
        let resp = Response::read(url, resp, self.limits.max_body_bytes).await?;
        if let Some(nonce) = &resp.nonce {
            self.pool_nonce(nonce.clone());
        }
        Ok(resp)
    }

    async fn get(&self, url: &str, endpoint: Endpoint) -> Result<Response, AcmeError> {
        let mut transport_failures = 0;
        loop {
            match self.send(self.http.get(url), url, endpoint).await {
                Err(e) if self.retry_transport(&e, url, &mut transport_failures).await => {}
                other => return other,
            }
        }
    }

    /// Whether `err` is a transport failure to retry (at most
    /// [`ClientLimits::transport_retries`] times per request, counted in
    /// `failures`); waits a short, growing delay first.
    async fn retry_transport(&self, err: &AcmeError, url: &str, failures: &mut u32) -> bool {
        if !matches!(err, AcmeError::Transport { .. }) || *failures >= self.limits.transport_retries
        {
            return false;
        }
        *failures += 1;
        let delay = TRANSPORT_RETRY_DELAY.saturating_mul(*failures);
        tracing::warn!(url, attempt = *failures, error = %crate::ErrorChain(err), ?delay,
            "ACME request failed in transport; retrying");
        tokio::time::sleep(delay).await;
        true
    }

    fn pool_nonce(&self, nonce: String) {
        let mut pool = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() >= MAX_POOLED_NONCES {
            pool.remove(0);
        }
        pool.push(nonce);
    }

    async fn nonce(&self) -> Result<String, AcmeError> {
        if let Some(n) = self.nonces.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(n);
        }
        let url = self.directory.new_nonce.clone();
        let resp = self
            .send(self.http.head(&url), &url, Endpoint::NewNonce)
            .await?;
        if !resp.is_success() {
            return Err(self.error_from(resp));
        }
        // `send` pooled it; take it back out.
        let nonce = resp.nonce.ok_or(AcmeError::MissingHeader {
            url,
            header: "Replay-Nonce",
        })?;
        let mut pool = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = pool.iter().position(|n| *n == nonce) {
            pool.remove(pos);
        }
        Ok(nonce)
    }

    fn error_from(&self, resp: Response) -> AcmeError {
        if resp.is_problem()
            && let Ok(problem) = resp.json::<Problem>()
        {
            return AcmeError::Problem {
                url: resp.url,
                status: resp.status,
                problem: Box::new(problem),
            };
        }
        AcmeError::UnexpectedStatus {
            status: resp.status,
            body: resp.body_snippet(),
            url: resp.url,
        }
    }

    /// Signs and POSTs, retrying `badNonce` with fresh nonces. Returns only
    /// successful responses; anything else becomes an error carrying the problem.
    async fn post(
        &self,
        key: &AccountKey,
        key_id: KeyId<'_>,
        url: &str,
        payload: Option<&[u8]>,
        accept: Option<&str>,
        endpoint: Endpoint,
    ) -> Result<Response, AcmeError> {
        let attempts = self.limits.bad_nonce_retries.saturating_add(1);
        let mut transport_failures = 0;
        let mut attempt = 0;
        while attempt < attempts {
            attempt += 1;
            let nonce = match self.nonce().await {
                Err(e) if self.retry_transport(&e, url, &mut transport_failures).await => {
                    attempt -= 1;
                    continue;
                }
                other => other?,
            };
            let jws = sign_jws(key, key_id, Some(&nonce), url, payload)?;
            let body = serde_json::to_vec(&jws).map_err(|e| AcmeError::InvalidResponse {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
            let mut req = self
                .http
                .post(url)
                .header(http::header::CONTENT_TYPE, "application/jose+json")
                .body(body);
            if let Some(accept) = accept {
                req = req.header(http::header::ACCEPT, accept);
            }
            let resp = match self.send(req, url, endpoint).await {
                // Sent again with a fresh nonce: the one used may have been consumed.
                Err(e) if self.retry_transport(&e, url, &mut transport_failures).await => {
                    attempt -= 1;
                    continue;
                }
                other => other?,
            };
            if resp.is_success() {
                return Ok(resp);
            }
            let err = self.error_from(resp);
            match &err {
                AcmeError::Problem { problem, .. } if problem.is_bad_nonce() => {
                    tracing::debug!(url, attempt, "badNonce, retrying with a fresh nonce");
                    continue;
                }
                _ => return Err(err),
            }
        }
        Err(AcmeError::NonceRetriesExhausted {
            url: url.to_owned(),
            attempts,
        })
    }

    async fn post_json<T: Serialize>(
        &self,
        account: &Account,
        url: &str,
        payload: &T,
        endpoint: Endpoint,
    ) -> Result<Response, AcmeError> {
        let body = serde_json::to_vec(payload).map_err(|e| AcmeError::InvalidResponse {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        self.post(
            &account.key,
            KeyId::Kid(&account.url),
            url,
            Some(&body),
            None,
            endpoint,
        )
        .await
    }

    /// POST-as-GET (§6.3).
    async fn post_as_get(
        &self,
        account: &Account,
        url: &str,
        accept: Option<&str>,
        endpoint: Endpoint,
    ) -> Result<Response, AcmeError> {
        self.post(
            &account.key,
            KeyId::Kid(&account.url),
            url,
            None,
            accept,
            endpoint,
        )
        .await
    }

    // ---- accounts (§7.3) ----

    /// Creates an account, or returns the existing one for this key (§7.3).
    pub async fn new_account(
        &self,
        key: Arc<AccountKey>,
        opts: &NewAccountOptions,
    ) -> Result<Account, AcmeError> {
        if self.directory.meta.external_account_required && opts.external_account.is_none() {
            return Err(AcmeError::ExternalAccountRequired);
        }
        if self.directory.meta.terms_of_service.is_some() && !opts.terms_of_service_agreed {
            return Err(AcmeError::TermsNotAgreed);
        }
        let url = self.directory.new_account.clone();
        let mut payload = json!({
            "termsOfServiceAgreed": opts.terms_of_service_agreed,
        });
        if !opts.contact.is_empty() {
            payload["contact"] = json!(opts.contact);
        }
        if let Some(eab) = &opts.external_account {
            payload["externalAccountBinding"] = serde_json::to_value(eab.bind(key.jwk(), &url)?)
                .map_err(|e| AcmeError::InvalidResponse {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        }
        let body = payload.to_string();
        let resp = self
            .post(
                &key,
                KeyId::Jwk,
                &url,
                Some(body.as_bytes()),
                None,
                Endpoint::NewAccount,
            )
            .await
            .map_err(map_account_errors)?;
        Ok(Account {
            url: resp.require_location()?,
            resource: resp.json()?,
            key,
        })
    }

    /// Finds the existing account for `key` (`onlyReturnExisting`, §7.3.1).
    pub async fn find_account(&self, key: Arc<AccountKey>) -> Result<Account, AcmeError> {
        let url = self.directory.new_account.clone();
        let body = br#"{"onlyReturnExisting":true}"#;
        let resp = self
            .post(
                &key,
                KeyId::Jwk,
                &url,
                Some(body),
                None,
                Endpoint::NewAccount,
            )
            .await
            .map_err(map_account_errors)?;
        Ok(Account {
            url: resp.require_location()?,
            resource: resp.json()?,
            key,
        })
    }

    /// Fetches the account object.
    pub async fn get_account(&self, account: &Account) -> Result<AccountResource, AcmeError> {
        self.post_json(account, &account.url, &json!({}), Endpoint::Other)
            .await?
            .json()
    }

    /// Replaces the account's contact URLs (§7.3.2).
    pub async fn update_contacts(
        &self,
        account: &Account,
        contact: &[String],
    ) -> Result<AccountResource, AcmeError> {
        self.post_json(
            account,
            &account.url,
            &json!({ "contact": contact }),
            Endpoint::Other,
        )
        .await?
        .json()
    }

    /// Deactivates the account (§7.3.6). It cannot be used afterwards.
    pub async fn deactivate_account(
        &self,
        account: &Account,
    ) -> Result<AccountResource, AcmeError> {
        self.post_json(
            account,
            &account.url,
            &json!({ "status": "deactivated" }),
            Endpoint::Other,
        )
        .await?
        .json()
    }

    /// Replaces the account key with `new_key` (§7.3.5). Returns the account with the new key.
    pub async fn change_key(
        &self,
        account: &Account,
        new_key: Arc<AccountKey>,
    ) -> Result<Account, AcmeError> {
        let url = self.directory.key_change.clone();
        let inner_payload = serde_json::to_vec(&json!({
            "account": account.url,
            "oldKey": account.key.jwk(),
        }))
        .map_err(|e| AcmeError::InvalidResponse {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let inner = sign_jws(&new_key, KeyId::Jwk, None, &url, Some(&inner_payload))?;
        let outer = serde_json::to_vec(&inner).map_err(|e| AcmeError::InvalidResponse {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        self.post(
            &account.key,
            KeyId::Kid(&account.url),
            &url,
            Some(&outer),
            None,
            Endpoint::KeyChange,
        )
        .await?;
        Ok(Account {
            url: account.url.clone(),
            key: new_key,
            resource: account.resource.clone(),
        })
    }

    // ---- orders (§7.4) ----

    /// Creates an order for `identifiers`; `replaces` is the ARI CertID of the
    /// certificate it replaces (RFC 9773), if any.
    pub async fn new_order(
        &self,
        account: &Account,
        identifiers: &[Identifier],
        replaces: Option<&str>,
    ) -> Result<Order, AcmeError> {
        self.new_order_with_profile(account, identifiers, replaces, None)
            .await
    }

    /// Like [`new_order`](Self::new_order), asking for the certificate profile
    /// `profile` (draft-ietf-acme-profiles), one of the names in the directory's
    /// [`meta.profiles`](crate::acme::DirectoryMeta::profiles). `None` leaves the
    /// choice to the CA. The client does not check the name: a CA refuses one it
    /// does not offer (`invalidProfile`).
    pub async fn new_order_with_profile(
        &self,
        account: &Account,
        identifiers: &[Identifier],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<Order, AcmeError> {
        let url = self.directory.new_order.clone();
        let req = NewOrderRequest {
            identifiers: identifiers.iter().map(WireIdentifier::from).collect(),
            replaces,
            profile,
        };
        let resp = self
            .post_json(account, &url, &req, Endpoint::NewOrder)
            .await?;
        Ok(Order {
            url: resp.require_location()?,
            resource: resp.json()?,
        })
    }

    /// Fetches an order.
    pub async fn get_order(&self, account: &Account, url: &str) -> Result<Order, AcmeError> {
        let resource = self
            .post_as_get(account, url, None, Endpoint::Order)
            .await?
            .json()?;
        Ok(Order {
            url: url.to_owned(),
            resource,
        })
    }

    /// Fetches an authorization.
    pub async fn get_authorization(
        &self,
        account: &Account,
        url: &str,
    ) -> Result<AuthorizationResource, AcmeError> {
        self.post_as_get(account, url, None, Endpoint::Authorization)
            .await?
            .json()
    }

    /// Tells the CA the challenge is ready to be validated (§7.5.1).
    pub async fn respond_to_challenge(
        &self,
        account: &Account,
        url: &str,
    ) -> Result<ChallengeResource, AcmeError> {
        self.post_json(account, url, &json!({}), Endpoint::Challenge)
            .await?
            .json()
    }

    /// Deactivates an authorization (§7.5.2), e.g. after a failed attempt.
    pub async fn deactivate_authorization(
        &self,
        account: &Account,
        url: &str,
    ) -> Result<AuthorizationResource, AcmeError> {
        self.post_json(
            account,
            url,
            &json!({ "status": "deactivated" }),
            Endpoint::Authorization,
        )
        .await?
        .json()
    }

    /// Polls an authorization until it leaves `pending`, within the poll timeout.
    pub async fn poll_authorization(
        &self,
        account: &Account,
        url: &str,
    ) -> Result<AuthorizationResource, AcmeError> {
        let mut poller = Poller::new(&self.limits, format!("authorization {url}"));
        loop {
            let resp = self
                .post_as_get(account, url, None, Endpoint::Authorization)
                .await?;
            let authz: AuthorizationResource = resp.json()?;
            if authz.status != AuthorizationStatus::Pending {
                return Ok(authz);
            }
            poller.wait(resp.retry_after).await?;
        }
    }

    /// Sends the CSR (DER) to finalize the order (§7.4).
    pub async fn finalize(
        &self,
        account: &Account,
        order: &Order,
        csr_der: &[u8],
    ) -> Result<Order, AcmeError> {
        let resp = self
            .post_json(
                account,
                &order.resource.finalize,
                &json!({ "csr": b64(csr_der) }),
                Endpoint::Finalize,
            )
            .await?;
        Ok(Order {
            url: order.url.clone(),
            resource: resp.json()?,
        })
    }

    /// Polls an order until it is `valid` or `invalid` (or, with
    /// `until_ready`, until it is `ready`), within the poll timeout.
    pub async fn poll_order(
        &self,
        account: &Account,
        url: &str,
        until_ready: bool,
    ) -> Result<Order, AcmeError> {
        let mut poller = Poller::new(&self.limits, format!("order {url}"));
        loop {
            let resp = self
                .post_as_get(account, url, None, Endpoint::Order)
                .await?;
            let resource: OrderResource = resp.json()?;
            match resource.status {
                OrderStatus::Valid | OrderStatus::Invalid => {
                    return Ok(Order {
                        url: url.to_owned(),
                        resource,
                    });
                }
                OrderStatus::Ready if until_ready => {
                    return Ok(Order {
                        url: url.to_owned(),
                        resource,
                    });
                }
                _ => poller.wait(resp.retry_after).await?,
            }
        }
    }

    /// Downloads the certificate chain, and with `alternates` every alternate
    /// chain the CA links to (§7.4.2). The default chain comes first.
    pub async fn download_certificate(
        &self,
        account: &Account,
        url: &str,
        alternates: bool,
    ) -> Result<Vec<PemChain>, AcmeError> {
        const PEM_CHAIN: &str = "application/pem-certificate-chain";
        let resp = self
            .post_as_get(account, url, Some(PEM_CHAIN), Endpoint::Certificate)
            .await?;
        let mut chains = vec![pem_chain(&resp)?];
        if alternates {
            let links: Vec<String> = resp
                .links
                .iter()
                .filter(|(rel, _)| rel == "alternate")
                .map(|(_, u)| u.clone())
                .take(8)
                .collect();
            for link in links {
                let alt = self
                    .post_as_get(account, &link, Some(PEM_CHAIN), Endpoint::Certificate)
                    .await?;
                chains.push(pem_chain(&alt)?);
            }
        }
        Ok(chains)
    }

    /// Fetches the CA's suggested renewal window for a certificate (ARI,
    /// [RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)). `Ok(None)` when the
    /// CA offers no `renewalInfo`.
    pub async fn renewal_info(&self, cert_id: &str) -> Result<Option<RenewalInfo>, AcmeError> {
        let Some(base) = &self.directory.renewal_info else {
            return Ok(None);
        };
        let url = format!("{}/{cert_id}", base.trim_end_matches('/'));
        let resp = self.get(&url, Endpoint::RenewalInfo).await?;
        if !resp.is_success() {
            return Err(self.error_from(resp));
        }
        parse_renewal_info(&resp.body, &url, resp.retry_after).map(Some)
    }

    /// Revokes a certificate (DER), signing with the account key (§7.6).
    pub async fn revoke_with_account(
        &self,
        account: &Account,
        cert_der: &[u8],
        reason: Option<RevocationReason>,
    ) -> Result<(), AcmeError> {
        let url = self.directory.revoke_cert.clone();
        let payload = revocation_payload(cert_der, reason);
        self.post(
            &account.key,
            KeyId::Kid(&account.url),
            &url,
            Some(&payload),
            None,
            Endpoint::Revoke,
        )
        .await?;
        Ok(())
    }

    /// Revokes a certificate (DER), signing with the certificate's own key (§7.6).
    pub async fn revoke_with_certificate_key(
        &self,
        cert_key: &AccountKey,
        cert_der: &[u8],
        reason: Option<RevocationReason>,
    ) -> Result<(), AcmeError> {
        let url = self.directory.revoke_cert.clone();
        let payload = revocation_payload(cert_der, reason);
        self.post(
            cert_key,
            KeyId::Jwk,
            &url,
            Some(&payload),
            None,
            Endpoint::Revoke,
        )
        .await?;
        Ok(())
    }
}

fn map_account_errors(e: AcmeError) -> AcmeError {
    match &e {
        AcmeError::Problem { problem, .. } => match problem.kind() {
            ProblemType::AccountDoesNotExist => AcmeError::AccountDoesNotExist,
            _ => e,
        },
        _ => e,
    }
}

fn revocation_payload(cert_der: &[u8], reason: Option<RevocationReason>) -> Vec<u8> {
    let mut payload = json!({ "certificate": b64(cert_der) });
    if let Some(reason) = reason {
        payload["reason"] = json!(reason.code());
    }
    payload.to_string().into_bytes()
}

fn pem_chain(resp: &Response) -> Result<PemChain, AcmeError> {
    let pem = String::from_utf8(resp.body.clone()).map_err(|_| AcmeError::InvalidResponse {
        url: resp.url.clone(),
        reason: "certificate chain is not UTF-8 PEM".into(),
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(AcmeError::InvalidResponse {
            url: resp.url.clone(),
            reason: "no PEM certificate in the response".into(),
        });
    }
    Ok(PemChain {
        url: resp.url.clone(),
        pem,
    })
}

/// Bounded exponential polling that honours `Retry-After`.
struct Poller {
    what: String,
    interval: Duration,
    max: Duration,
    deadline: Instant,
    timeout: Duration,
}

/// The first delay before a request that failed in transport is sent again.
pub(crate) const TRANSPORT_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The longest poll interval or timeout accepted from [`ClientLimits`] (a
/// day); longer values are clamped, so no arithmetic on them overflows.
pub(crate) const MAX_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Now plus `d` (clamped to [`MAX_LIMIT`]).
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(MAX_LIMIT)).unwrap_or(now)
}

impl Poller {
    fn new(limits: &ClientLimits, what: String) -> Self {
        Self {
            what,
            interval: limits.poll_initial_interval.min(MAX_LIMIT),
            max: limits.poll_max_interval.min(MAX_LIMIT),
            deadline: deadline_after(limits.poll_timeout),
            timeout: limits.poll_timeout.min(MAX_LIMIT),
        }
    }

    async fn wait(&mut self, retry_after: Option<Duration>) -> Result<(), AcmeError> {
        let delay = retry_after.unwrap_or(self.interval).min(self.max);
        self.interval = self.interval.saturating_mul(2).min(self.max);
        if deadline_after(delay) > self.deadline {
            return Err(AcmeError::Timeout {
                what: self.what.clone(),
                secs: self.timeout.as_secs(),
            });
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Parses a `renewalInfo` response body (RFC 9773 §4.2): the suggested
/// window, which must end after it starts, and its explanation URL.
pub(crate) fn parse_renewal_info(
    body: &[u8],
    url: &str,
    retry_after: Option<Duration>,
) -> Result<RenewalInfo, AcmeError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        suggested_window: WireWindow,
        #[serde(rename = "explanationURL", default)]
        explanation_url: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct WireWindow {
        start: String,
        end: String,
    }
    let invalid = |reason: String| AcmeError::InvalidResponse {
        url: url.to_owned(),
        reason,
    };
    let wire: Wire = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(std::time::SystemTime::from)
            .map_err(|e| invalid(format!("bad time {s:?}: {e}")))
    };
    let start = parse(&wire.suggested_window.start)?;
    let end = parse(&wire.suggested_window.end)?;
    if end <= start {
        return Err(invalid("suggested window ends before it starts".into()));
    }
    Ok(RenewalInfo {
        window_start: start,
        window_end: end,
        explanation_url: wire.explanation_url,
        retry_after,
    })
}
