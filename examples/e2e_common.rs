//! End-to-end scenarios shared by `examples/example-axum/tests/e2e.rs` and
//! `examples/example-actix/tests/e2e.rs` (each includes this file with
//! `#[path = "../../e2e_common.rs"] mod e2e_common;`).
//!
//! A scenario spawns the example binary as a child process, configured only
//! through `CERTAUTO_*` variables, waits (bounded polling) until it serves
//! HTTPS, and then checks it from the outside like a user would: reqwest,
//! a raw TLS handshake, `curl`, and raw HTTP on the redirect port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certauto_tests::{Balancer, Bind, Pebble, RedisServer, init_tracing, webpki_verify_chain};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The public-looking name the Pebble scenarios manage (not a local-CA name).
const DOMAIN: &str = "app1.example";
/// What `GET /` of both examples answers.
const BODY: &str = "Hello from CertAuto over HTTPS\n";
/// Bound on waiting for the example to reach a state (certificate served,
/// local CA root written).
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two polls while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Timeout of one request or handshake.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a scenario is started afresh when the example could not bind a
/// port (another process took it between choosing and binding).
const MAX_ATTEMPTS: u32 = 3;
/// Lines of each log shown when a test fails.
const LOG_TAIL_LINES: usize = 80;
/// An HTTP-01 token nobody presented.
const UNKNOWN_CHALLENGE: &str = "/.well-known/acme-challenge/unknownToken_0123456789-abcdef";

const CURL_MISSING: &str = "curl not found on PATH: install the Debian package curl \
                            (apt-get install -y curl)";

const PROXY_ENV_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

// ----- scenarios -----

/// The example obtains a certificate for [`DOMAIN`] from a fresh Pebble with
/// `challenge` (`http-01` or `tls-alpn-01`), answered on its own ports, and
/// then serves it.
pub(crate) async fn pebble_scenario(bin: &str, challenge: &str) {
    init_tracing();
    let curl = curl_path();
    for attempt in 1..=MAX_ATTEMPTS {
        let pebble = Pebble::builder().start().await;
        let mut app = App::new(bin);
        let https_ca = app.write("pebble-https-ca.pem", &pebble.https_ca_pem());
        let root_pem = pebble.root_pem(0).await;
        let root_der = pebble.root_der(0).await;
        let root_file = app.write("pebble-root.pem", &root_pem);
        let http_addr = loopback(pebble.http_port());
        let https_addr = loopback(pebble.tls_port());
        let admin_addr = loopback(free_ports()[0]);
        let storage = app.storage();
        app.spawn(&[
            ("CERTAUTO_DOMAINS", DOMAIN.to_owned()),
            ("CERTAUTO_DIRECTORY", pebble.directory_url()),
            ("CERTAUTO_CA_ROOTS", path_str(&https_ca)),
            ("CERTAUTO_STORAGE", path_str(&storage)),
            ("CERTAUTO_HTTP_ADDR", http_addr.to_string()),
            ("CERTAUTO_HTTPS_ADDR", https_addr.to_string()),
            ("CERTAUTO_CHALLENGE", challenge.to_owned()),
            ("CERTAUTO_ON_DEMAND", format!("*.{DOMAIN}")),
            ("CERTAUTO_ADMIN_ADDR", admin_addr.to_string()),
        ]);

        let client = https_client(&root_der, DOMAIN, https_addr);
        let url = format!("https://{DOMAIN}:{}/", https_addr.port());
        match wait_https(&mut app, &client, &url).await {
            Wait::Ready => {}
            Wait::PortTaken if attempt < MAX_ATTEMPTS => {
                eprintln!("attempt {attempt}: the example could not bind its ports; retrying");
                continue;
            }
            Wait::PortTaken => panic!("the example could not bind its ports {MAX_ATTEMPTS} times"),
        }

        check_https(&client, &url).await;
        check_served_chain(&root_der, DOMAIN, https_addr).await;
        check_curl(&curl, &root_file, DOMAIN, https_addr).await;
        // On-demand TLS (`CERTAUTO_ON_DEMAND`): curl's first request for a
        // new allowed name gets a trusted certificate.
        check_curl(
            &curl,
            &root_file,
            &format!("on-demand.{DOMAIN}"),
            https_addr,
        )
        .await;
        check_http_port(http_addr, DOMAIN, https_addr.port()).await;
        check_admin(&root_der, admin_addr, http_addr, https_addr).await;
        app.assert_running();
        return;
    }
}

/// The example obtains `example.test` and `*.example.test` from a fresh
/// Pebble with DNS-01, writing its TXT records to a real BIND9 through the
/// RFC 2136 provider (TSIG), all configured by `CERTAUTO_DNS_*` variables;
/// Pebble validates against that BIND. Then the apex and a name under the
/// wildcard are served.
pub(crate) async fn pebble_dns01_scenario(bin: &str) {
    const APEX: &str = "example.test";
    const UNDER_WILDCARD: &str = "www.example.test";
    init_tracing();
    let curl = curl_path();
    for attempt in 1..=MAX_ATTEMPTS {
        let bind = Bind::builder().start().await;
        // The example orders the two names as two certificates at once: Pebble
        // asks the authoritative server, since a caching resolver may validate
        // one order against the TXT set it saw before the other's value was
        // written (see `Dns01Solver`'s docs).
        let pebble = Pebble::builder().dns_server(bind.addr()).start().await;
        let mut app = App::new(bin);
        let https_ca = app.write("pebble-https-ca.pem", &pebble.https_ca_pem());
        let root_der = pebble.root_der(0).await;
        let root_file = app.write("pebble-root.pem", &pebble.root_pem(0).await);
        let [http_port, https_port] = free_ports();
        let https_addr = loopback(https_port);
        let storage = app.storage();
        app.spawn(&[
            ("CERTAUTO_DOMAINS", format!("{APEX},*.{APEX}")),
            ("CERTAUTO_DIRECTORY", pebble.directory_url()),
            ("CERTAUTO_CA_ROOTS", path_str(&https_ca)),
            ("CERTAUTO_STORAGE", path_str(&storage)),
            ("CERTAUTO_HTTP_ADDR", loopback(http_port).to_string()),
            ("CERTAUTO_HTTPS_ADDR", https_addr.to_string()),
            ("CERTAUTO_CHALLENGE", "dns-01".to_owned()),
            ("CERTAUTO_DNS_PROVIDER", "rfc2136".to_owned()),
            ("CERTAUTO_DNS_SERVER", bind.addr().to_string()),
            ("CERTAUTO_DNS_TSIG_NAME", bind.key_name().to_owned()),
            ("CERTAUTO_DNS_TSIG_SECRET", bind.key_secret().to_owned()),
            (
                "CERTAUTO_DNS_TSIG_ALG",
                bind.key_algorithm().as_str().to_owned(),
            ),
            // The authoritative server is on a test port, not 53.
            ("CERTAUTO_DNS_RESOLVERS", bind.addr().to_string()),
            ("CERTAUTO_DNS_PROPAGATION_TIMEOUT", "30s".to_owned()),
        ]);

        let mut ready = true;
        for (name, cert_name) in [
            (APEX, APEX.to_owned()),
            (UNDER_WILDCARD, format!("*.{APEX}")),
        ] {
            let client = https_client(&root_der, name, https_addr);
            let url = format!("https://{name}:{}/", https_addr.port());
            match wait_https(&mut app, &client, &url).await {
                Wait::Ready => {}
                Wait::PortTaken if attempt < MAX_ATTEMPTS => {
                    eprintln!("attempt {attempt}: the example could not bind its ports; retrying");
                    ready = false;
                    break;
                }
                Wait::PortTaken => {
                    panic!("the example could not bind its ports {MAX_ATTEMPTS} times")
                }
            }
            check_https(&client, &url).await;
            check_served_names(&root_der, name, &[cert_name.as_str()], https_addr).await;
            check_curl(&curl, &root_file, name, https_addr).await;
        }
        if !ready {
            continue;
        }
        // Our TXT values are gone from the zone.
        assert_eq!(
            bind.lookup_txt(&format!("_acme-challenge.{APEX}")).await,
            Vec::<String>::new(),
            "TXT values left at _acme-challenge.{APEX}"
        );
        app.assert_running();
        return;
    }
}

/// With no ACME directory, the example issues for `localhost` from its local
/// CA, offline; clients trusting `<storage>/local_ca/root.crt` connect.
pub(crate) async fn local_ca_scenario(bin: &str) {
    const NAME: &str = "localhost";
    init_tracing();
    let curl = curl_path();
    for attempt in 1..=MAX_ATTEMPTS {
        let mut app = App::new(bin);
        let [http_port, https_port] = free_ports();
        let http_addr = loopback(http_port);
        let https_addr = loopback(https_port);
        let storage = app.storage();
        app.spawn(&[
            ("CERTAUTO_DOMAINS", NAME.to_owned()),
            ("CERTAUTO_STORAGE", path_str(&storage)),
            ("CERTAUTO_HTTP_ADDR", http_addr.to_string()),
            ("CERTAUTO_HTTPS_ADDR", https_addr.to_string()),
        ]);

        let root_file = storage.join("local_ca").join("root.crt");
        let root_der = match wait_for(&mut app, "the local CA root", || {
            let root_file = root_file.clone();
            async move { read_root(&root_file) }
        })
        .await
        {
            Ok(root) => root,
            Err(Exited::PortTaken) if attempt < MAX_ATTEMPTS => {
                eprintln!("attempt {attempt}: the example could not bind its ports; retrying");
                continue;
            }
            Err(Exited::PortTaken) => {
                panic!("the example could not bind its ports {MAX_ATTEMPTS} times")
            }
        };

        let client = https_client(&root_der, NAME, https_addr);
        let url = format!("https://{NAME}:{}/", https_addr.port());
        match wait_https(&mut app, &client, &url).await {
            Wait::Ready => {}
            // The ports were bound once the root was written.
            Wait::PortTaken => panic!("the example exited after writing its root"),
        }

        check_https(&client, &url).await;
        check_served_chain(&root_der, NAME, https_addr).await;
        check_curl(&curl, &root_file, NAME, https_addr).await;
        check_http_port(http_addr, NAME, https_addr.port()).await;
        app.assert_running();
        return;
    }
}

// ----- the checks -----

/// `GET /` answers 200 with the example's body.
async fn check_https(client: &reqwest::Client, url: &str) {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = response.status();
    let body = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e:?}"));
    assert_eq!(status, reqwest::StatusCode::OK, "GET {url}: body {body:?}");
    assert_eq!(body, BODY, "GET {url}");
}

/// The chain served for `name` verifies against `root_der` alone, and its
/// leaf names exactly `name`.
async fn check_served_chain(root_der: &[u8], name: &str, addr: SocketAddr) {
    check_served_names(root_der, name, &[name], addr).await;
}

/// The chain served for the SNI `name` verifies against `root_der` alone for
/// `name`, and its leaf's DNS names are exactly `names`.
async fn check_served_names(root_der: &[u8], name: &str, names: &[&str], addr: SocketAddr) {
    let chain = served_chain(root_der, name, addr).await;
    assert!(!chain.is_empty(), "no certificates served for {name}");
    webpki_verify_chain(&chain, root_der, name)
        .unwrap_or_else(|e| panic!("the chain served for {name} does not verify: {e}"));
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .unwrap_or_else(|e| panic!("the leaf served for {name} does not parse: {e}"));
    let san = leaf
        .subject_alternative_name()
        .unwrap_or_else(|e| panic!("the leaf's subjectAltName does not parse: {e}"))
        .unwrap_or_else(|| panic!("the leaf served for {name} has no subjectAltName"));
    let dns_names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(dns_names, names, "DNS names of the leaf served for {name}");
}

/// `curl --cacert <root>` fetches `/` over HTTPS.
async fn check_curl(curl: &Path, root_file: &Path, name: &str, addr: SocketAddr) {
    let port = addr.port();
    let url = format!("https://{name}:{port}/");
    let out = run_curl(
        curl,
        &[
            "--cacert".to_owned(),
            path_str(root_file),
            "--resolve".to_owned(),
            format!("{name}:{port}:{}", addr.ip()),
            url.clone(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl {url} failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, BODY, "curl {url}");
}

/// The HTTP port redirects (308) to HTTPS on `https_port`, keeping path and
/// query, and answers an unknown challenge token with 404, not a redirect.
async fn check_http_port(http_addr: SocketAddr, host: &str, https_port: u16) {
    let target = "/some/path?q=1";
    let response = raw_http_get(http_addr, host, target).await;
    assert_eq!(response.status, 308, "GET {target}: {response:?}");
    assert_eq!(
        response.header("location"),
        Some(format!("https://{host}:{https_port}{target}").as_str()),
        "GET {target}: {response:?}"
    );

    let response = raw_http_get(http_addr, host, UNKNOWN_CHALLENGE).await;
    assert_eq!(
        response.status, 404,
        "GET {UNKNOWN_CHALLENGE}: {response:?}"
    );
    assert_eq!(
        response.header("location"),
        None,
        "GET {UNKNOWN_CHALLENGE}: {response:?}"
    );
}

// ----- waiting -----

enum Wait {
    Ready,
    PortTaken,
}

/// Waits until `url` answers over HTTPS (any status) with the client's
/// roots, i.e. the certificate is being served.
async fn wait_https(app: &mut App, client: &reqwest::Client, url: &str) -> Wait {
    let what = format!("GET {url} to succeed over HTTPS");
    let ready = wait_for(app, &what, || async move {
        client
            .get(url)
            .send()
            .await
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    match ready {
        Ok(()) => Wait::Ready,
        Err(Exited::PortTaken) => Wait::PortTaken,
    }
}

/// The example exited because a port was taken (worth retrying).
enum Exited {
    PortTaken,
}

/// Polls `probe` every [`POLL_INTERVAL`] until it succeeds, for at most
/// [`READY_DEADLINE`]. Panics when the deadline passes or the example exits
/// for any reason but a taken port.
async fn wait_for<T, F, Fut>(app: &mut App, what: &str, mut probe: F) -> Result<T, Exited>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    let mut polls = 0u32;
    loop {
        if let Some(status) = app.exited() {
            if app.stderr().contains("Address already in use") {
                return Err(Exited::PortTaken);
            }
            panic!("{} exited ({status}) while waiting for {what}", app.name());
        }
        polls += 1;
        let last = match probe().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{} did not reach the state within {READY_DEADLINE:?} ({polls} polls): waiting \
                 for {what}; last error: {last}",
                app.name()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn read_root(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| format!("{}: no certificate yet", path.display()))?
        .map_err(|e| format!("{}: {e:?}", path.display()))?;
    Ok(cert.to_vec())
}

/// What the instances of [`distributed_scenario`] share.
#[allow(dead_code)] // Not every e2e test file uses both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedStorage {
    /// One storage folder (`CERTAUTO_STORAGE=<path>`).
    Folder,
    /// One real `redis-server` (persistence off, with a password):
    /// `CERTAUTO_STORAGE=redis://:<password>@127.0.0.1:<port>/0` and a key
    /// prefix.
    Redis,
}

/// The password of the scenario's Redis: it must not appear in any log.
const REDIS_PASSWORD: &str = "e2e-redis-pw-5d1c";

/// Three instances of the example share one storage (a folder or a Redis
/// server) and one Pebble,
/// behind a round-robin TCP balancer on Pebble's validation ports, and
/// manage the same [`CLUSTER_NAMES`] names with `challenge` (`http-01` or
/// `tls-alpn-01`): every validation succeeds although many reach an
/// instance other than the one that ordered (each instance got some), the
/// storage lock makes one order per name (Pebble's log shows exactly one
/// order created and one certificate issued per name; the same certificate
/// served by every instance, its chain verified against Pebble's root), and
/// every instance serves every name.
pub(crate) async fn distributed_scenario(bin: &str, challenge: &str, shared: SharedStorage) {
    const INSTANCES: usize = 3;
    init_tracing();
    let names: Vec<String> = (0..CLUSTER_NAMES)
        .map(|i| format!("n{i}.cluster.example"))
        .collect();
    'attempt: for attempt in 1..=MAX_ATTEMPTS {
        let mut apps: Vec<App> = (0..INSTANCES).map(|_| App::new(bin)).collect();
        let ports: Vec<[u16; 2]> = (0..INSTANCES).map(|_| free_ports()).collect();
        let http_balancer = Balancer::start(0, ports.iter().map(|p| loopback(p[0])).collect())
            .await
            .expect("start the HTTP balancer");
        let tls_balancer = Balancer::start(0, ports.iter().map(|p| loopback(p[1])).collect())
            .await
            .expect("start the TLS balancer");
        let pebble = Pebble::builder()
            .http_port(http_balancer.port())
            .tls_port(tls_balancer.port())
            .start()
            .await;
        let https_ca = apps[0].write("pebble-https-ca.pem", &pebble.https_ca_pem());
        let root_der = pebble.root_der(0).await;
        // Kept until the end of the attempt: the instances use it.
        let redis = match shared {
            SharedStorage::Folder => None,
            SharedStorage::Redis => Some(
                RedisServer::builder()
                    .password(REDIS_PASSWORD)
                    .start()
                    .await,
            ),
        };
        let mut storage_vars = match &redis {
            None => vec![("CERTAUTO_STORAGE", path_str(&apps[0].storage()))],
            Some(redis) => vec![
                ("CERTAUTO_STORAGE", redis.url()),
                ("CERTAUTO_STORAGE_PREFIX", "e2e-cluster".to_owned()),
            ],
        };
        for (app, [http_port, https_port]) in apps.iter_mut().zip(&ports) {
            let mut vars = vec![
                ("CERTAUTO_DOMAINS", names.join(",")),
                ("CERTAUTO_DIRECTORY", pebble.directory_url()),
                ("CERTAUTO_CA_ROOTS", path_str(&https_ca)),
                ("CERTAUTO_HTTP_ADDR", loopback(*http_port).to_string()),
                ("CERTAUTO_HTTPS_ADDR", loopback(*https_port).to_string()),
                ("CERTAUTO_CHALLENGE", challenge.to_owned()),
            ];
            vars.append(&mut storage_vars.clone());
            app.spawn(&vars);
        }
        storage_vars.clear();
        // Every instance serves every name, the same certificate.
        let mut leaves: Vec<Vec<u8>> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut leaf_of_name: Option<Vec<u8>> = None;
            for (app, [_, https_port]) in apps.iter_mut().zip(&ports) {
                let addr = loopback(*https_port);
                let client = https_client(&root_der, name, addr);
                let url = format!("https://{name}:{https_port}/");
                match wait_https(app, &client, &url).await {
                    Wait::Ready => {}
                    Wait::PortTaken if attempt < MAX_ATTEMPTS && i == 0 => {
                        eprintln!(
                            "attempt {attempt}: an instance could not bind its ports; retrying"
                        );
                        continue 'attempt;
                    }
                    Wait::PortTaken => panic!("an instance could not bind its ports"),
                }
                let chain = served_chain(&root_der, name, addr).await;
                webpki_verify_chain(&chain, &root_der, name).unwrap_or_else(|e| {
                    panic!("the chain served for {name} by {addr} does not verify: {e}")
                });
                let leaf = chain.into_iter().next().expect("a served chain has a leaf");
                match &leaf_of_name {
                    None => leaf_of_name = Some(leaf),
                    Some(first) => assert_eq!(
                        first, &leaf,
                        "{name}: the instances serve different certificates (two orders)"
                    ),
                }
            }
            leaves.extend(leaf_of_name);
        }
        leaves.sort();
        leaves.dedup();
        assert_eq!(leaves.len(), CLUSTER_NAMES, "one certificate per name");
        let log = pebble.pebble_log();
        let issued = log.matches(PEBBLE_ISSUED).count();
        assert_eq!(
            issued, CLUSTER_NAMES,
            "Pebble issued {issued} certificates for {CLUSTER_NAMES} names"
        );
        // Orders, not only certificates: an instance that ordered a name
        // another one was already ordering (no shared lock) would leave an
        // extra order behind even if it never finalized it.
        let orders = log.matches(PEBBLE_ORDER_ADDED).count();
        assert_eq!(
            orders, CLUSTER_NAMES,
            "Pebble created {orders} orders for {CLUSTER_NAMES} names"
        );
        let balancer = match challenge {
            "tls-alpn-01" => &tls_balancer,
            _ => &http_balancer,
        };
        let served = balancer.connections();
        eprintln!("{challenge} validations per instance: {served:?}");
        assert!(
            served.iter().all(|n| *n > 0),
            "every instance answers validations: {served:?}"
        );
        assert_eq!(balancer.failed(), 0, "every validation reached an instance");
        for app in &mut apps {
            app.assert_running();
            if redis.is_some() {
                // The examples log their storage: its URL without the password.
                let logs =
                    std::fs::read_to_string(app.stdout_path()).unwrap_or_default() + &app.stderr();
                assert!(
                    logs.contains("redis://***@127.0.0.1"),
                    "no redacted Redis URL in the log"
                );
                assert!(
                    !logs.contains(REDIS_PASSWORD),
                    "an instance logged the Redis password"
                );
            }
        }
        return;
    }
}

/// How many names [`distributed_scenario`] manages.
const CLUSTER_NAMES: usize = 30;
/// What Pebble logs once per certificate it issues.
const PEBBLE_ISSUED: &str = "Issued certificate serial";
/// Pebble logs this for every order it creates.
const PEBBLE_ORDER_ADDED: &str = "Added order";

// ----- the example process -----

/// The example binary as a child process, with its own temporary folder for
/// storage and logs. Killed when dropped; its log tails are printed then if
/// the test is failing.
struct App {
    bin: String,
    child: Option<Child>,
    // Dropped after `Drop::drop` has killed the child.
    dir: TempDir,
}

impl App {
    fn new(bin: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("certauto-e2e-")
            .tempdir()
            .expect("create a temporary folder for the example");
        std::fs::create_dir(dir.path().join("storage")).expect("create the storage folder");
        Self {
            bin: bin.to_owned(),
            child: None,
            dir,
        }
    }

    fn name(&self) -> String {
        Path::new(&self.bin)
            .file_name()
            .map_or_else(|| self.bin.clone(), |n| n.to_string_lossy().into_owned())
    }

    fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Starts the binary with `vars` (and `RUST_LOG=info`), no other
    /// `CERTAUTO_*` or proxy variables.
    fn spawn(&mut self, vars: &[(&str, String)]) {
        assert!(self.child.is_none(), "spawned twice");
        let create = |path: PathBuf| {
            std::fs::File::create(&path)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CERTAUTO_") {
                cmd.env_remove(&key);
            }
        }
        for var in PROXY_ENV_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(create(self.stdout_path())))
            .stderr(Stdio::from(create(self.stderr_path())))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin));
        self.child = Some(child);
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited ({status}) during the checks", self.name());
        }
    }

    fn log_report(&self) -> String {
        let mut report = String::new();
        for (what, path) in [
            ("stdout", self.stdout_path()),
            ("stderr", self.stderr_path()),
        ] {
            let _ = writeln!(
                report,
                "--- {} {what} (last {LOG_TAIL_LINES} lines) ---\n{}",
                self.name(),
                tail(&path, LOG_TAIL_LINES)
            );
        }
        report
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            // Reap it (bounded), so its ports are free for the next attempt.
            for _ in 0..400 {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Ok(Some(_)) | Err(_) => break,
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "e2e: the example's output (the test failed):\n{}",
                self.log_report()
            );
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>\n"));
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

// ----- clients -----

/// A rustls client config (ring provider, ALPN `http/1.1`) trusting only `root_der`.
fn client_config(root_der: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der.to_vec()))
        .expect("add the root to a root store");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A reqwest client trusting only `root_der` that resolves `name` to `addr`.
fn https_client(root_der: &[u8], name: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(root_der))
        .resolve(name, addr)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build the reqwest client")
}

/// The certificates `addr` serves for SNI `name` (handshake trusting only `root_der`).
async fn served_chain(root_der: &[u8], name: &str, addr: SocketAddr) -> Vec<Vec<u8>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(root_der)));
    let server_name =
        ServerName::try_from(name.to_owned()).unwrap_or_else(|e| panic!("server name {name}: {e}"));
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        connector.connect(server_name, tcp).await
    };
    let tls = tokio::time::timeout(REQUEST_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| panic!("TLS handshake with {addr} ({name}) timed out"))
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} ({name}): {e}"));
    tls.get_ref()
        .1
        .peer_certificates()
        .unwrap_or_else(|| panic!("{addr} sent no certificates"))
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// An HTTP/1.1 response: status, headers (names lower-cased) and body.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET target` with `Host: host` over a plain TCP connection to `addr`.
async fn raw_http_get(addr: SocketAddr, host: &str, target: &str) -> RawResponse {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET http://{addr}{target} timed out"))
        .unwrap_or_else(|e| panic!("GET http://{addr}{target}: {e}"));
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = body.to_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET http://{addr}{target}: bad response {text:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body,
    }
}

/// The admin listener (`CERTAUTO_ADMIN_ADDR`): `GET /metrics` is Prometheus
/// text with CertAuto's metrics of the obtain, handshakes and on-demand
/// decisions just made; `GET /status` is JSON naming the certificate
/// served right now (its serial) and its next renewal; other paths are 404.
/// Neither is reachable on the public ports.
async fn check_admin(root_der: &[u8], admin: SocketAddr, http: SocketAddr, https: SocketAddr) {
    let metrics = raw_http_get(admin, "127.0.0.1", "/metrics").await;
    assert_eq!(metrics.status, 200, "GET /metrics: {metrics:?}");
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{metrics:?}"
    );
    let text = &metrics.body;
    // One series, found by its name and some of its labels; its value.
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        prometheus_series(text, name)
            .into_iter()
            .find(|(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, value)| value)
            .unwrap_or_else(|| panic!("GET /metrics has no {name} {labels:?}:\n{text}"))
    };
    let obtained = value(
        "certauto_obtains_total",
        &[("result", "success"), ("reason", "new")],
    );
    assert!(obtained >= 1.0, "obtains: {obtained}");
    assert!(value("certauto_handshake_lookups_total", &[("result", "hit")]) >= 1.0);
    // The on-demand name curl asked for above.
    assert!(
        value(
            "certauto_on_demand_decisions_total",
            &[("decision", "allowed")]
        ) >= 1.0
    );
    for (endpoint, code) in [
        ("new_order", "201"),
        ("finalize", "200"),
        ("certificate", "200"),
    ] {
        let requests = value(
            "certauto_acme_requests_total",
            &[("endpoint", endpoint), ("status", code)],
        );
        assert!(requests >= 1.0, "{endpoint}: {requests}");
    }
    // A histogram (buckets), not a summary.
    assert!(
        value(
            "certauto_issuance_duration_seconds_count",
            &[("result", "success")]
        ) >= 1.0
    );
    assert!(
        value(
            "certauto_issuance_duration_seconds_bucket",
            &[("result", "success"), ("le", "+Inf")]
        ) >= 1.0
    );
    let expiry = value("certauto_certificate_expiry_seconds", &[("name", DOMAIN)]);
    assert!(expiry > 0.0, "seconds until expiry: {expiry}");

    let status = raw_http_get(admin, "127.0.0.1", "/status").await;
    assert_eq!(status.status, 200, "GET /status: {status:?}");
    assert_eq!(status.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&status.body)
        .unwrap_or_else(|e| panic!("GET /status is not JSON ({e}): {}", status.body));
    let entry = json["certificates"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == DOMAIN))
        .unwrap_or_else(|| panic!("GET /status has no entry for {DOMAIN}: {json}"));
    let served = served_chain(root_der, DOMAIN, https).await;
    let (_, leaf) = x509_parser::parse_x509_certificate(&served[0]).expect("served leaf");
    let normalise = |s: &str| {
        s.replace(':', "")
            .to_ascii_lowercase()
            .trim_start_matches('0')
            .to_owned()
    };
    assert_eq!(
        entry["certificate"]["serial"].as_str().map(normalise),
        Some(normalise(&leaf.raw_serial_as_string())),
        "GET /status names the served certificate: {entry}"
    );
    let reason = entry["next_renewal"]["reason"]["kind"].as_str();
    assert!(
        matches!(reason, Some("ratio" | "ari_window")),
        "GET /status: next renewal of a fresh certificate: {entry}"
    );
    assert!(entry["last_error"].is_null(), "{entry}");
    assert_eq!(raw_http_get(admin, "127.0.0.1", "/").await.status, 404);

    // Not on the public ports: HTTP redirects everything, HTTPS has no such routes.
    for target in ["/metrics", "/status"] {
        let plain = raw_http_get(http, DOMAIN, target).await;
        assert_eq!(plain.status, 308, "http {target}: {plain:?}");
        assert_eq!(
            plain.header("location"),
            Some(format!("https://{DOMAIN}:{}{target}", https.port()).as_str()),
            "http {target}: {plain:?}"
        );
        assert!(
            !plain.body.contains("certauto_"),
            "http {target}: {plain:?}"
        );
        let client = https_client(root_der, DOMAIN, https);
        let url = format!("https://{DOMAIN}:{}{target}", https.port());
        let response = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
        assert_eq!(response.status(), 404, "GET {url}");
        let body = response.text().await.unwrap_or_default();
        assert!(!body.contains("certauto_"), "GET {url}: {body}");
    }
}

/// The series of the metric `name` in Prometheus text: labels and value.
fn prometheus_series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, labels) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        found.push((labels, value.parse().unwrap_or(f64::NAN)));
    }
    found
}

/// Where `curl` is; a missing curl fails the test.
fn curl_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("curl"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{CURL_MISSING}"))
}

/// Runs curl (quiet, no proxy, bounded time) with `args`.
async fn run_curl(curl: &Path, args: &[String]) -> Output {
    let mut cmd = Command::new(curl);
    for var in PROXY_ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.args([
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        "20",
    ])
    .args(args)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd.output()
        .await
        .unwrap_or_else(|e| panic!("run {} ({CURL_MISSING}): {e}", curl.display()))
}

// ----- ports and paths -----

/// Ports this test binary has handed out already: the kernel may hand a
/// just-released port out again.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Two distinct free ports on 127.0.0.1 (bound together, then released).
fn free_ports() -> [u16; 2] {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..64 {
        if ports.len() == 2 {
            break;
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        held.push(listener);
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            ports.push(port);
        }
    }
    drop(held);
    match ports[..] {
        [a, b] => [a, b],
        _ => panic!("could not find two free ports on 127.0.0.1"),
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn path_str(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", path.display()))
        .to_owned()
}
