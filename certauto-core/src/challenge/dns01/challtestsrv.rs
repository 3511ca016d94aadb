//! A DNS provider for `pebble-challtestsrv`, the mock DNS server that comes
//! with Pebble, for tests and local development against Pebble; never for
//! production.
//!
//! The user documentation is on [`ChallTestSrv`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;

use super::http::{ApiClient, normalize_name};
use super::name_lock::NameLocks;
use super::provider::{DnsError, DnsProvider};

const PROVIDER: &str = "challtestsrv";

/// Writes TXT records into `pebble-challtestsrv`.
///
/// It follows challtestsrv's management API
/// (<https://github.com/letsencrypt/pebble/tree/main/cmd/pebble-challtestsrv>):
/// `POST /set-txt {"host": "<fqdn>.", "value": "<value>"}` adds a value and
/// `POST /clear-txt {"host": "<fqdn>."}` removes **every** value at the
/// host. There is no way to remove one value, so this provider remembers the
/// values it set per host, in memory, and deletes one by clearing the host
/// and setting the others again, holding a per-host lock meanwhile so
/// concurrent calls for one host (a wildcard and its apex) keep each other's
/// values. Values set at a host by anyone else (another process, another
/// provider instance) are removed by that clear. No credentials.
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use certauto::Dns01Solver;
/// use certauto::dns::ChallTestSrv;
///
/// # fn main() -> Result<(), certauto::DnsError> {
/// let mock = ChallTestSrv::builder("http://127.0.0.1:8055").build()?;
/// let solver = Dns01Solver::builder(mock).build();
/// # let _ = solver;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ChallTestSrv {
    inner: Arc<Inner>,
}

struct Inner {
    api: ApiClient,
    /// The values this provider has set, per host (`<fqdn>.`).
    values: Mutex<HashMap<String, Vec<String>>>,
    locks: NameLocks,
}

impl fmt::Debug for ChallTestSrv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallTestSrv")
            .field("api", &self.inner.api)
            .finish_non_exhaustive()
    }
}

/// Settings for [`ChallTestSrv`].
#[derive(Debug)]
pub struct ChallTestSrvBuilder {
    url: String,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl ChallTestSrv {
    /// Settings for the management API at `url` (`http://127.0.0.1:8055`).
    pub fn builder(url: impl Into<String>) -> ChallTestSrvBuilder {
        ChallTestSrvBuilder {
            url: url.into(),
            extra_roots: Vec::new(),
        }
    }

    fn values_at(&self, host: &str) -> Vec<String> {
        let values = self.inner.values.lock().unwrap_or_else(|e| e.into_inner());
        values.get(host).cloned().unwrap_or_default()
    }

    fn set_values_at(&self, host: &str, now: Vec<String>) {
        let mut values = self.inner.values.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_empty() {
            values.remove(host);
        } else {
            values.insert(host.to_owned(), now);
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<(), DnsError> {
        let api = &self.inner.api;
        let resp = api
            .send(
                api.request(reqwest::Method::POST, path)
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .await?;
        if resp.is_success() {
            Ok(())
        } else {
            Err(resp.error(PROVIDER, None))
        }
    }
}

impl ChallTestSrvBuilder {
    /// More CA certificates to trust when the management API is served
    /// over HTTPS.
    pub fn extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.extra_roots = roots;
        self
    }

    /// Checks the URL (`http` only on loopback) and builds the provider.
    pub fn build(self) -> Result<ChallTestSrv, DnsError> {
        Ok(ChallTestSrv {
            inner: Arc::new(Inner {
                api: ApiClient::new(PROVIDER, &self.url, &self.extra_roots)?,
                values: Mutex::new(HashMap::new()),
                locks: NameLocks::default(),
            }),
        })
    }
}

/// challtestsrv's host form: fully qualified, with the trailing dot.
fn host_of(fqdn: &str) -> String {
    format!("{}.", normalize_name(fqdn))
}

#[async_trait]
impl DnsProvider for ChallTestSrv {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let host = host_of(fqdn);
        let _guard = self.inner.locks.lock(&host).await;
        let mut now = self.values_at(&host);
        if now.iter().any(|v| v == value) {
            return Ok(());
        }
        self.post(
            "/set-txt",
            serde_json::json!({"host": host, "value": value}),
        )
        .await?;
        now.push(value.to_owned());
        self.set_values_at(&host, now);
        Ok(())
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let host = host_of(fqdn);
        let _guard = self.inner.locks.lock(&host).await;
        let before = self.values_at(&host);
        if !before.iter().any(|v| v == value) {
            return Ok(());
        }
        self.post("/clear-txt", serde_json::json!({"host": host}))
            .await?;
        // The host is empty now, and so is its record here: if this call
        // fails or is dropped from here on, a later create must not take
        // a value that is gone for one still there. Each value put back is
        // recorded as soon as it is back.
        self.set_values_at(&host, Vec::new());
        let mut back = Vec::new();
        for other in before.iter().filter(|v| *v != value) {
            self.post(
                "/set-txt",
                serde_json::json!({"host": host, "value": other}),
            )
            .await?;
            back.push(other.clone());
            self.set_values_at(&host, back.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::challenge::dns01::query::ask;

    /// `$CERTAUTO_PEBBLE_DIR`, else `<workspace>/.tools/bin`, as the tests
    /// crate looks for Pebble.
    fn pebble_bin_dir() -> PathBuf {
        match std::env::var_os("CERTAUTO_PEBBLE_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".tools")
                .join("bin"),
        }
    }

    /// A free loopback port for both TCP and UDP, other than `not`.
    fn free_port(not: u16) -> u16 {
        for _ in 0..50 {
            let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let port = tcp.local_addr().unwrap().port();
            if port != not && std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
        panic!("no free loopback port for both TCP and UDP");
    }

    /// A real `pebble-challtestsrv` on free loopback ports, killed on drop.
    struct Server {
        child: Child,
        management: String,
        dns: SocketAddr,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Server {
        async fn start() -> Server {
            let bin = pebble_bin_dir().join("pebble-challtestsrv");
            assert!(
                bin.is_file(),
                "pebble-challtestsrv not found at {}: install it with ./scripts/install-pebble.sh \
                 (or `GOBIN=<dir> go install github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@<version>`) \
                 and point CERTAUTO_PEBBLE_DIR at its directory",
                bin.display()
            );
            let management_port = free_port(0);
            let dns_port = free_port(management_port);
            let child = Command::new(&bin)
                .arg("-management")
                .arg(format!("127.0.0.1:{management_port}"))
                .arg("-dnsserver")
                .arg(format!("127.0.0.1:{dns_port}"))
                .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let server = Server {
                child,
                management: format!("http://127.0.0.1:{management_port}"),
                dns: SocketAddr::from((Ipv4Addr::LOCALHOST, dns_port)),
            };
            // Ready when the management port accepts (bounded: 10 s).
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(("127.0.0.1", management_port))
                    .await
                    .is_ok()
                {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("pebble-challtestsrv did not open its management port within 10 s");
        }

        async fn txt(&self, fqdn: &str) -> Vec<String> {
            let name = Name::from_ascii(format!("{fqdn}.")).unwrap();
            let mut values = ask(
                self.dns,
                &name,
                RecordType::TXT,
                false,
                Duration::from_secs(5),
            )
            .await
            .unwrap()
            .txt_values();
            values.sort();
            values
        }
    }

    #[tokio::test]
    async fn exact_values_against_the_real_challtestsrv() {
        let server = Server::start().await;
        let dns = ChallTestSrv::builder(&server.management).build().unwrap();
        let name = "_acme-challenge.example.com";
        // A wildcard and its apex at once.
        let (a, b) = tokio::join!(
            dns.create_txt_record(name, "apex-value"),
            dns.create_txt_record(name, "wildcard-value")
        );
        a.unwrap();
        b.unwrap();
        // Idempotent.
        dns.create_txt_record(name, "apex-value").await.unwrap();
        assert_eq!(server.txt(name).await, ["apex-value", "wildcard-value"]);

        dns.delete_txt_record(name, "apex-value").await.unwrap();
        dns.delete_txt_record(name, "apex-value").await.unwrap();
        assert_eq!(server.txt(name).await, ["wildcard-value"]);

        // Concurrent deletes and creates at one name keep each other.
        dns.create_txt_record(name, "third").await.unwrap();
        let (x, y) = tokio::join!(
            dns.delete_txt_record(name, "wildcard-value"),
            dns.create_txt_record(name, "fourth")
        );
        x.unwrap();
        y.unwrap();
        assert_eq!(server.txt(name).await, ["fourth", "third"]);

        dns.delete_txt_record(name, "third").await.unwrap();
        dns.delete_txt_record(name, "fourth").await.unwrap();
        assert!(server.txt(name).await.is_empty());
        assert_eq!(dns.inner.locks.live(), 0);
    }

    /// A stand-in for challtestsrv's management API (`POST /set-txt` and
    /// `POST /clear-txt` with JSON bodies, answered by an empty 200, as
    /// its README documents) whose `/set-txt` can be held until released,
    /// so that a delete is dropped between its clear and its re-adds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn a_delete_dropped_after_its_clear_forgets_the_cleared_values() {
        use std::sync::atomic::{AtomicBool, Ordering};

        use crate::challenge::dns01::standin::{Reply, StandIn};

        let hold = Arc::new(AtomicBool::new(false));
        // Values set, counted as they arrive (a held request is recorded
        // by the stand-in only once it is answered).
        let sets = Arc::new(Mutex::new(Vec::<String>::new()));
        let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let api = StandIn::start({
            let hold = hold.clone();
            let sets = sets.clone();
            move |req| {
                let body = req.json();
                let host_ok = body["host"] == "_acme-challenge.example.com.";
                let documented = req.method == "POST"
                    && req.header("content-type") == "application/json"
                    && host_ok;
                match req.path() {
                    "/set-txt" if documented && body["value"].is_string() => {
                        sets.lock()
                            .unwrap()
                            .push(body["value"].as_str().unwrap_or("").to_owned());
                        if hold.load(Ordering::SeqCst) {
                            let _ = reached_tx.send(());
                            // Held (on this stand-in's thread) until the
                            // test releases it; bounded by the test.
                            let _ = released
                                .lock()
                                .unwrap()
                                .recv_timeout(Duration::from_secs(30));
                        }
                        Reply::text(200, "text/plain", "")
                    }
                    "/clear-txt" if documented => Reply::text(200, "text/plain", ""),
                    _ => Reply::text(400, "text/plain", "bad request"),
                }
            }
        })
        .await;
        let dns = ChallTestSrv::builder(api.url()).build().unwrap();
        let name = "_acme-challenge.example.com";
        dns.create_txt_record(name, "a").await.unwrap();
        dns.create_txt_record(name, "b").await.unwrap();

        hold.store(true, Ordering::SeqCst);
        let delete = tokio::spawn({
            let dns = dns.clone();
            async move { dns.delete_txt_record(name, "a").await }
        });
        // The clear went through and "b" is being put back: drop the delete.
        reached.recv().await.unwrap();
        delete.abort();
        assert!(delete.await.unwrap_err().is_cancelled());
        hold.store(false, Ordering::SeqCst);
        release.send(()).unwrap();

        // "b" is gone from the server: creating it again must set it.
        assert_eq!(*sets.lock().unwrap(), ["a", "b", "b"]);
        dns.create_txt_record(name, "b").await.unwrap();
        assert_eq!(*sets.lock().unwrap(), ["a", "b", "b", "b"]);
        assert_eq!(dns.values_at("_acme-challenge.example.com."), ["b"]);
    }

    #[tokio::test]
    async fn a_stopped_server_is_a_transient_error() {
        let server = Server::start().await;
        let dns = ChallTestSrv::builder(&server.management).build().unwrap();
        drop(server);
        let err = dns
            .create_txt_record("_acme-challenge.example.com", "v")
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(matches!(
            ChallTestSrv::builder("http://challtestsrv.example.com:8055").build(),
            Err(DnsError::Config { .. })
        ));
    }
}
