//! Starting a real PowerDNS Authoritative server for the DNS-01 tests.
//!
//! [`PowerDnsServer::builder`] runs `pdns_server` (Debian's `pdns-server`, 4.7) in the
//! foreground with its own configuration, control socket and SQLite database
//! (`pdns-backend-sqlite3`, schema loaded with the `sqlite3` CLI) in a temporary directory,
//! serving DNS (UDP and TCP) and its HTTP API on free 127.0.0.1 ports. The zones are created
//! through that API, as an operator would, each with an SOA, an NS and the NS's address, and
//! the seeded TXT values. The process is killed and reaped when the value is dropped.
//!
//! ```no_run
//! # async fn demo() {
//! use certauto_tests::PowerDnsServer;
//!
//! let pdns = PowerDnsServer::builder()
//!     .zone("example.test")
//!     .txt("_acme-challenge.example.test", "foreign-value")
//!     .start()
//!     .await;
//! let (api, key, dns) = (pdns.api_url(), pdns.api_key(), pdns.dns_addr());
//! assert_eq!(pdns.lookup_txt("_acme-challenge.example.test").await, ["foreign-value"]);
//! # let _ = (api, key, dns);
//! # }
//! ```
//!
//! Nothing reaches beyond loopback: the security-status poll (a DNS query PowerDNS sends
//! to the Internet at start) is switched off, and its caches are off too, so an answer
//! always shows the database as it is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::dns::{self, Transport};
use crate::pebble::kill_and_reap;
use crate::util::{PortReservation, find_on_path, is_executable, log_tail, read_log};

/// Where Debian's `pdns-backend-sqlite3` puts the schema of the `gsqlite3` backend.
const SQLITE_SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";
/// What to install when a piece is missing.
const INSTALL_HINT: &str = "install it with `apt-get install pdns-server pdns-backend-sqlite3 \
                            sqlite3` (scripts/test.sh does)";
/// The zone created when the builder names none.
const DEFAULT_ZONE: &str = "example.test";
/// How often the whole start is attempted when `pdns_server` exits early (a port taken
/// in the meantime).
const MAX_START_ATTEMPTS: u32 = 3;
/// Total time one start attempt may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Upper bound on readiness polls per attempt.
const READY_MAX_POLLS: u32 = 200;
/// Pause between readiness polls.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one probe, DNS query or API request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of the harness's own API requests (zone creation).
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the server's log shown in panic messages.
const LOG_TAIL_LINES: usize = 60;

/// Options for a [`PowerDnsServer`]; create it with [`PowerDnsServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct PowerDnsServerBuilder {
    zones: Vec<String>,
    txt: Vec<(String, String)>,
}

impl PowerDnsServerBuilder {
    /// A zone to create (`example.test`); without any, `example.test` is created.
    pub fn zone(mut self, name: impl Into<String>) -> Self {
        self.zones.push(trim(&name.into()));
        self
    }

    /// A TXT value to seed at `name` (in one of the zones); several values at one name
    /// form one RRset.
    pub fn txt(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.txt.push((trim(&name.into()), value.into()));
        self
    }

    /// Starts `pdns_server`, creates the zones and waits until it answers for them over
    /// UDP and TCP.
    ///
    /// # Panics
    ///
    /// If `pdns_server`, the SQLite backend or the `sqlite3` CLI is missing (the message
    /// says what to install), a seeded name is in no zone, or the server does not become
    /// ready (the message then holds the tail of its log).
    pub async fn start(self) -> PowerDnsServer {
        let tools = Tools::find();
        let zones = if self.zones.is_empty() {
            vec![DEFAULT_ZONE.to_owned()]
        } else {
            self.zones.clone()
        };
        let mut failures = String::new();
        for attempt in 1..=MAX_START_ATTEMPTS {
            match self.try_start(&tools, &zones).await {
                Ok(server) => {
                    tracing::info!(dns = %server.dns_addr, api = %server.api_url(), "PowerDNS is ready");
                    return server;
                }
                Err(StartFailure::Retry(report)) => {
                    tracing::warn!(
                        attempt,
                        "PowerDNS start attempt failed, retrying:\n{report}"
                    );
                    let _ = writeln!(failures, "--- attempt {attempt} ---\n{report}");
                }
                Err(StartFailure::Fatal(report)) => {
                    panic!("PowerDNS did not start (attempt {attempt}):\n{failures}{report}")
                }
            }
        }
        panic!("PowerDNS did not start after {MAX_START_ATTEMPTS} attempts:\n{failures}");
    }

    async fn try_start(
        &self,
        tools: &Tools,
        zones: &[String],
    ) -> Result<PowerDnsServer, StartFailure> {
        let dir = tempfile::Builder::new()
            .prefix("certauto-pdns-")
            .tempdir()
            .expect("create a temporary directory for PowerDNS");
        let database = dir.path().join("pdns.sqlite3");
        load_schema(&tools.sqlite3, &database);

        let mut ports = PortReservation::default();
        let dns_port = ports.tcp_and_udp();
        let api_port = ports.tcp();
        drop(ports);
        let dns_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, dns_port));
        let api_key = random_key();

        let config = [
            "launch=gsqlite3".to_owned(),
            format!("gsqlite3-database={}", database.display()),
            format!("local-address={dns_addr}"),
            "api=yes".to_owned(),
            format!("api-key={api_key}"),
            "webserver=yes".to_owned(),
            "webserver-address=127.0.0.1".to_owned(),
            format!("webserver-port={api_port}"),
            "webserver-allow-from=127.0.0.1".to_owned(),
            // No query to the Internet for the security status.
            "security-poll-suffix=".to_owned(),
            // Answers show the database as it is.
            "cache-ttl=0".to_owned(),
            "query-cache-ttl=0".to_owned(),
            "negquery-cache-ttl=0".to_owned(),
            "receiver-threads=1".to_owned(),
            "distributor-threads=1".to_owned(),
            "write-pid=no".to_owned(),
        ]
        .join("\n");
        std::fs::write(dir.path().join("pdns.conf"), config + "\n")
            .unwrap_or_else(|e| panic!("write pdns.conf: {e}"));

        let log = dir.path().join("pdns.log");
        let out =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log file handle");
        let mut cmd = Command::new(&tools.pdns_server);
        cmd.arg(format!("--config-dir={}", dir.path().display()))
            .arg(format!("--socket-dir={}", dir.path().display()))
            .args(["--daemon=no", "--guardian=no", "--disable-syslog"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            StartFailure::Fatal(format!(
                "could not spawn {}: {e}",
                tools.pdns_server.display()
            ))
        })?;

        let mut server = PowerDnsServer {
            child,
            dns_addr,
            api_port,
            api_key,
            client: http_client(),
            log,
            dir,
        };
        server.wait_for_api().await?;
        server.create_zones(zones, &self.txt).await?;
        server.wait_for_dns(&zones[0]).await?;
        Ok(server)
    }
}

/// The binaries and files the harness needs.
struct Tools {
    pdns_server: PathBuf,
    sqlite3: PathBuf,
}

impl Tools {
    fn find() -> Self {
        let pdns_server = find_on_path("pdns_server")
            .or_else(|| {
                let sbin = PathBuf::from("/usr/sbin/pdns_server");
                is_executable(&sbin).then_some(sbin)
            })
            .unwrap_or_else(|| panic!("pdns_server not found (PATH, /usr/sbin): {INSTALL_HINT}"));
        let sqlite3 = find_on_path("sqlite3")
            .unwrap_or_else(|| panic!("sqlite3 (the CLI) not found on PATH: {INSTALL_HINT}"));
        if !Path::new(SQLITE_SCHEMA).is_file() {
            panic!("{SQLITE_SCHEMA} not found (the gsqlite3 backend is missing): {INSTALL_HINT}");
        }
        Self {
            pdns_server,
            sqlite3,
        }
    }
}

/// Creates the database at `database` from the backend's schema.
fn load_schema(sqlite3: &Path, database: &Path) {
    let schema =
        std::fs::File::open(SQLITE_SCHEMA).unwrap_or_else(|e| panic!("open {SQLITE_SCHEMA}: {e}"));
    let output = std::process::Command::new(sqlite3)
        .arg(database)
        .stdin(Stdio::from(schema))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", sqlite3.display()));
    assert!(
        output.status.success(),
        "loading {SQLITE_SCHEMA} into {} failed ({}): {}",
        database.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// 32 random hex digits.
fn random_key() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system RNG works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plain-HTTP client (reqwest needs a rustls config even so: ring, no roots).
fn http_client() -> reqwest::Client {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .timeout(API_TIMEOUT)
        .build()
        .expect("build the reqwest client for PowerDNS")
}

fn trim(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Why a start attempt failed, with the log.
enum StartFailure {
    /// `pdns_server` exited: worth trying again with new ports.
    Retry(String),
    /// Anything else.
    Fatal(String),
}

/// A running PowerDNS Authoritative server with its zones.
///
/// Everything listens on 127.0.0.1; the process is killed and reaped when this value is
/// dropped, and its temporary directory (configuration, database, log) removed.
#[derive(Debug)]
pub struct PowerDnsServer {
    child: Child,
    dns_addr: SocketAddr,
    api_port: u16,
    api_key: String,
    client: reqwest::Client,
    log: PathBuf,
    // Dropped last, after `Drop::drop` has killed the process.
    dir: TempDir,
}

impl PowerDnsServer {
    /// A builder with no zone yet (see [`PowerDnsServerBuilder::zone`]).
    pub fn builder() -> PowerDnsServerBuilder {
        PowerDnsServerBuilder::default()
    }

    /// The DNS address (UDP and TCP) on 127.0.0.1.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// The base URL of the HTTP API, `http://127.0.0.1:<port>` (the API is under `/api/v1`).
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The API key (`X-API-Key`), random per server.
    pub fn api_key(&self) -> String {
        self.api_key.clone()
    }

    /// Everything `pdns_server` has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// The per-instance temporary directory (configuration, database, log).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TXT values at `name`, sorted, asked of the server's DNS port directly over TCP
    /// (as Pebble asks); empty when there are none.
    ///
    /// # Panics
    ///
    /// If the server does not answer, or answers with an error code other than NXDOMAIN.
    pub async fn lookup_txt(&self, name: &str) -> Vec<String> {
        let answers = dns::query(
            self.dns_addr,
            name,
            dns::TYPE_TXT,
            Transport::Tcp,
            PROBE_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "DNS TXT lookup of {name} at PowerDNS: {e}\n{}",
                self.log_report()
            )
        });
        let mut values = dns::txt_records(&answers);
        values.sort();
        values
    }

    fn log_report(&self) -> String {
        format!(
            "--- pdns_server output (last {LOG_TAIL_LINES} lines) ---\n{}",
            log_tail(&self.log, LOG_TAIL_LINES)
        )
    }

    fn exited(&mut self) -> Option<StartFailure> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(StartFailure::Retry(format!(
                "pdns_server exited early ({status}).\n{}",
                self.log_report()
            ))),
            _ => None,
        }
    }

    /// Polls `GET /api/v1/servers/localhost` until it answers 200.
    async fn wait_for_api(&mut self) -> Result<(), StartFailure> {
        let url = format!("{}/api/v1/servers/localhost", self.api_url());
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        let mut last = String::from("not polled yet");
        for _ in 0..READY_MAX_POLLS {
            if let Some(failure) = self.exited() {
                return Err(failure);
            }
            match self
                .client
                .get(&url)
                .header("X-API-Key", &self.api_key)
                .timeout(PROBE_TIMEOUT)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => last = format!("GET {url}: {}", resp.status()),
                Err(e) => last = format!("GET {url}: {e:?}"),
            }
            if tokio::time::Instant::now() + READY_POLL_INTERVAL >= deadline {
                break;
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        Err(StartFailure::Fatal(format!(
            "API not ready within {READY_DEADLINE:?}; last problem: {last}\n{}",
            self.log_report()
        )))
    }

    /// Creates each zone through the API with its SOA, NS (and the NS's A record) and the
    /// seeded TXT values that fall in it.
    async fn create_zones(
        &self,
        zones: &[String],
        txt: &[(String, String)],
    ) -> Result<(), StartFailure> {
        let mut by_zone: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
        for (name, value) in txt {
            let zone = zones
                .iter()
                .filter(|z| name == *z || name.ends_with(&format!(".{z}")))
                .max_by_key(|z| z.len())
                .unwrap_or_else(|| {
                    panic!("seeded TXT name {name} is in none of the zones {zones:?}")
                });
            by_zone
                .entry(zone)
                .or_default()
                .entry(name)
                .or_default()
                .push(value);
        }
        let url = format!("{}/api/v1/servers/localhost/zones", self.api_url());
        for zone in zones {
            let mut rrsets = vec![
                json!({
                    "name": format!("{zone}."), "type": "SOA", "ttl": 60,
                    "records": [{"content": format!("ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60"), "disabled": false}],
                }),
                json!({
                    "name": format!("ns1.{zone}."), "type": "A", "ttl": 60,
                    "records": [{"content": "127.0.0.1", "disabled": false}],
                }),
            ];
            for (name, values) in by_zone.get(zone.as_str()).into_iter().flatten() {
                let records: Vec<Value> = values
                    .iter()
                    .map(|v| json!({"content": format!("\"{v}\""), "disabled": false}))
                    .collect();
                rrsets.push(json!({"name": format!("{name}."), "type": "TXT", "ttl": 60, "records": records}));
            }
            let body = json!({
                "name": format!("{zone}."),
                "kind": "Native",
                "nameservers": [format!("ns1.{zone}.")],
                "soa_edit_api": "DEFAULT",
                "rrsets": rrsets,
            });
            let resp = self
                .client
                .post(&url)
                .header("X-API-Key", &self.api_key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| {
                    StartFailure::Fatal(format!(
                        "POST {url} ({zone}): {e:?}\n{}",
                        self.log_report()
                    ))
                })?;
            let status = resp.status();
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                return Err(StartFailure::Fatal(format!(
                    "creating zone {zone}: POST {url} answered {status}: {text}\n{}",
                    self.log_report()
                )));
            }
        }
        Ok(())
    }

    /// Polls until the SOA of `zone` is answered over UDP and TCP.
    async fn wait_for_dns(&mut self, zone: &str) -> Result<(), StartFailure> {
        const TYPE_SOA: u16 = 6;
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        let mut last = String::from("not polled yet");
        'poll: for _ in 0..READY_MAX_POLLS {
            if let Some(failure) = self.exited() {
                return Err(failure);
            }
            let mut ready = true;
            for transport in [Transport::Udp, Transport::Tcp] {
                match dns::query(self.dns_addr, zone, TYPE_SOA, transport, PROBE_TIMEOUT).await {
                    Ok(answers) if answers.iter().any(|(t, _)| *t == TYPE_SOA) => {}
                    Ok(_) => {
                        last = format!("no SOA for {zone} over {transport:?}");
                        ready = false;
                    }
                    Err(e) => {
                        last = format!("SOA {zone} over {transport:?}: {e}");
                        ready = false;
                    }
                }
            }
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() + READY_POLL_INTERVAL >= deadline {
                break 'poll;
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        Err(StartFailure::Fatal(format!(
            "DNS not ready within {READY_DEADLINE:?}; last problem: {last}\n{}",
            self.log_report()
        )))
    }
}

impl Drop for PowerDnsServer {
    fn drop(&mut self) {
        // Reaped (bounded wait), so no zombie outlives the test.
        kill_and_reap(&mut [&mut self.child]);
        if std::thread::panicking() {
            eprintln!(
                "certauto-tests: PowerDNS server dropped during a panic.\n{}",
                self.log_report()
            );
        }
    }
}
