//! TLS-ALPN-01 ([RFC 8737](https://www.rfc-editor.org/rfc/rfc8737)): a
//! self-signed certificate with the `acmeIdentifier` extension, served to
//! clients that offer only the `acme-tls/1` protocol.
//!
//! Two ways to answer: inline, on the application's own TLS port, where
//! [`CertResolver`](crate::CertResolver) serves the challenge certificates from
//! a shared [`TlsAlpnChallenges`]; or on a listener of the solver's own.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::{Challenge, Solver};
use crate::acme::http::crypto_provider;
use crate::acme::types::ChallengeType;
use crate::error::SolverError;
use crate::identifier::Identifier;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How long a validation handshake may take on the solver's own listener.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SNI a validator sends for an identifier: the name itself, or for an IP
/// address its reverse-DNS name (RFC 8738 §6).
pub(crate) fn tls_alpn_sni(id: &Identifier) -> String {
    match id {
        Identifier::Dns(d) => d.as_str().to_owned(),
        Identifier::Ip(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Identifier::Ip(IpAddr::V6(v6)) => {
            let mut labels: Vec<String> = Vec::with_capacity(34);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.push("ip6.arpa".to_owned());
            labels.join(".")
        }
    }
}

/// A TLS-ALPN-01 setup failure from a dependency's error.
fn tls_alpn_error(e: impl std::error::Error + Send + Sync + 'static) -> SolverError {
    SolverError::TlsAlpn(Box::new(e))
}

/// Builds the TLS-ALPN-01 challenge certificate for a challenge (RFC 8737 §3).
pub(crate) fn challenge_certificate(challenge: &Challenge) -> Result<CertifiedKey, SolverError> {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        challenge.key_authorization.as_bytes(),
    );
    let key = rcgen::KeyPair::generate().map_err(tls_alpn_error)?;
    let mut params =
        rcgen::CertificateParams::new(vec![challenge.identifier.as_str().into_owned()])
            .map_err(tls_alpn_error)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = params.self_signed(&key).map_err(tls_alpn_error)?;
    let der_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension.
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(der_key)
        .map_err(tls_alpn_error)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// Challenge certificates by SNI, shared by [`TlsAlpn01Solver`] and
/// [`CertResolver`](crate::CertResolver). Cheap to clone (shared).
///
/// Besides the challenges this process presented, it holds those another
/// instance presented into shared storage and this one loaded for a
/// validator (see [`DistributedSolver`](crate::DistributedSolver)): at most
/// 256 of them, each served for a minute after it was loaded.
#[derive(Clone, Default)]
pub struct TlsAlpnChallenges {
    inner: Arc<RwLock<HashMap<String, Arc<CertifiedKey>>>>,
    loaded: Arc<RwLock<HashMap<String, Loaded>>>,
}

/// A challenge certificate loaded from shared storage.
#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The key authorization it was built from.
    key_authorization: String,
    expires: tokio::time::Instant,
}

/// How long a challenge certificate loaded from shared storage is served.
pub(crate) const LOADED_CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// How many challenge certificates loaded from shared storage are kept.
pub(crate) const MAX_LOADED_CHALLENGES: usize = 256;

impl fmt::Debug for TlsAlpnChallenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.inner.read().map(|m| m.len()).unwrap_or(0);
        let loaded = self.loaded.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("TlsAlpnChallenges")
            .field("pending", &n)
            .field("loaded", &loaded)
            .finish()
    }
}

impl TlsAlpnChallenges {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The challenge certificate for an SNI value: one this process
    /// presented, else one loaded from shared storage and not yet expired.
    pub fn get(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        if let Some(key) = self.get_local(sni) {
            return Some(key);
        }
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        loaded
            .get(sni)
            .filter(|l| l.expires > tokio::time::Instant::now())
            .map(|l| l.key.clone())
    }

    /// The challenge certificate this process presented for a lower-case SNI.
    pub(crate) fn get_local(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(sni).cloned()
    }

    /// Whether the loaded certificate for `sni` was built from
    /// `key_authorization`; if so, it is served for another
    /// [`LOADED_CHALLENGE_TTL`].
    pub(crate) fn refresh_loaded(&self, sni: &str, key_authorization: &str) -> bool {
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        match loaded.get_mut(sni) {
            Some(l) if l.key_authorization == key_authorization => {
                l.expires = tokio::time::Instant::now() + LOADED_CHALLENGE_TTL;
                true
            }
            _ => false,
        }
    }

    /// Keeps a challenge certificate loaded from shared storage, for
    /// [`LOADED_CHALLENGE_TTL`]; drops expired entries, and the one expiring
    /// first when [`MAX_LOADED_CHALLENGES`] are kept.
    pub(crate) fn insert_loaded(
        &self,
        sni: String,
        key: Arc<CertifiedKey>,
        key_authorization: String,
    ) {
        let now = tokio::time::Instant::now();
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, l| l.expires > now);
        if loaded.len() >= MAX_LOADED_CHALLENGES
            && !loaded.contains_key(&sni)
            && let Some(first) = loaded
                .iter()
                .min_by_key(|(_, l)| l.expires)
                .map(|(k, _)| k.clone())
        {
            loaded.remove(&first);
        }
        loaded.insert(
            sni,
            Loaded {
                key,
                key_authorization,
                expires: now + LOADED_CHALLENGE_TTL,
            },
        );
    }

    /// Forgets the loaded certificate for `sni` (its record is gone).
    pub(crate) fn remove_loaded(&self, sni: &str) {
        self.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sni);
    }

    /// How many loaded certificates are kept.
    #[cfg(test)]
    pub(crate) fn loaded_len(&self) -> usize {
        self.loaded.read().map(|m| m.len()).unwrap_or(0)
    }

    fn insert(&self, sni: String, key: Arc<CertifiedKey>) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sni, key);
    }

    fn remove(&self, sni: &str) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sni);
    }
}

/// Answers TLS-ALPN-01 challenges.
///
/// ```
/// use certauto_core::{TlsAlpn01Solver, TlsAlpnChallenges};
///
/// // On the application's own TLS port (give the same set to the Config):
/// let challenges = TlsAlpnChallenges::new();
/// let inline = TlsAlpn01Solver::inline(challenges.clone());
/// // Or on a listener of its own, while challenges are pending:
/// let own = TlsAlpn01Solver::new(443);
/// # let _ = (inline, own);
/// ```
pub struct TlsAlpn01Solver {
    addr: Option<SocketAddr>,
    challenges: TlsAlpnChallenges,
    state: Mutex<ListenerState>,
}

#[derive(Default)]
struct ListenerState {
    active: usize,
    running: Option<(SocketAddr, watch::Sender<bool>, JoinHandle<()>)>,
}

impl fmt::Debug for TlsAlpn01Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAlpn01Solver")
            .field("addr", &self.addr)
            .field("challenges", &self.challenges)
            .finish_non_exhaustive()
    }
}

impl Default for TlsAlpn01Solver {
    fn default() -> Self {
        Self::new(443)
    }
}

impl TlsAlpn01Solver {
    /// Serves challenges from `challenges`, answered by the application's TLS
    /// listener through [`CertResolver`](crate::CertResolver).
    pub fn inline(challenges: TlsAlpnChallenges) -> Self {
        Self {
            addr: None,
            challenges,
            state: Mutex::new(ListenerState::default()),
        }
    }

    /// Listens on `0.0.0.0:port` while challenges are pending.
    pub fn new(port: u16) -> Self {
        Self::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    }

    /// Listens on `addr` while challenges are pending.
    pub fn bind(addr: SocketAddr) -> Self {
        Self {
            addr: Some(addr),
            challenges: TlsAlpnChallenges::new(),
            state: Mutex::new(ListenerState::default()),
        }
    }

    /// The challenge certificates this solver presents.
    pub fn challenges(&self) -> &TlsAlpnChallenges {
        &self.challenges
    }

    /// The listener's address while it runs.
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        self.state.lock().await.running.as_ref().map(|r| r.0)
    }

    async fn start_listener(
        &self,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, watch::Sender<bool>, JoinHandle<()>), SolverError> {
        let bind_err = |source| SolverError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SolverError::TlsAlpn(Box::new(e)))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ChallengeOnly(self.challenges.clone())));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.changed() => break,
                    a = listener.accept() => a,
                };
                let Ok((tcp, peer)) = accepted else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(mut tls)) => {
                            tracing::debug!(%peer, "answered TLS-ALPN-01 challenge");
                            let _ = tls.shutdown().await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS-ALPN-01 handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS-ALPN-01 handshake timed out"),
                    }
                });
            }
        });
        Ok((local, stop, task))
    }
}

/// A resolver that serves challenge certificates only.
#[derive(Debug)]
struct ChallengeOnly(TlsAlpnChallenges);

impl ResolvesServerCert for ChallengeOnly {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.get(hello.server_name()?)
    }
}

#[async_trait]
impl Solver for TlsAlpn01Solver {
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
        if challenge.challenge_type != ChallengeType::TlsAlpn01 {
            return Err(SolverError::Unsupported(challenge.challenge_type.clone()));
        }
        let key = Arc::new(challenge_certificate(challenge)?);
        let mut state = self.state.lock().await;
        if let Some(addr) = self.addr
            && state.running.is_none()
        {
            state.running = Some(self.start_listener(addr).await?);
        }
        state.active += 1;
        self.challenges
            .insert(tls_alpn_sni(&challenge.identifier), key);
        Ok(())
    }

    async fn cleanup(&self, challenge: &Challenge) -> Result<(), SolverError> {
        self.challenges.remove(&tls_alpn_sni(&challenge.identifier));
        let mut state = self.state.lock().await;
        state.active = state.active.saturating_sub(1);
        if state.active == 0
            && let Some((_, stop, task)) = state.running.take()
        {
            let _ = stop.send(true);
            let _ = task.await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn reverse_names_for_ip_identifiers() {
        let v4 = Identifier::parse("192.0.2.1").unwrap();
        assert_eq!(tls_alpn_sni(&v4), "1.2.0.192.in-addr.arpa");
        let v6 = Identifier::parse("2001:db8::1").unwrap();
        assert_eq!(
            tls_alpn_sni(&v6),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn challenge_certificate_has_the_critical_acme_identifier() {
        let chal = Challenge::new(
            Identifier::parse("a.test").unwrap(),
            ChallengeType::TlsAlpn01,
            "tok".into(),
            "tok.thumb".into(),
            "u".into(),
        );
        let ck = challenge_certificate(&chal).unwrap();
        let (_, cert) = X509Certificate::from_der(ck.cert[0].as_ref()).unwrap();
        let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.31);
        let ext = cert.extensions().iter().find(|e| e.oid == oid).unwrap();
        assert!(ext.critical);
        let digest = ring::digest::digest(&ring::digest::SHA256, b"tok.thumb");
        let mut want = vec![0x04, 0x20];
        want.extend_from_slice(digest.as_ref());
        assert_eq!(ext.value, &want[..]);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
    }
}
