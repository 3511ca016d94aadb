//! Starting a real Redis (`redis-server`) for the storage tests: persistence off, on a free
//! loopback port, optionally with a password and a TLS port whose certificate a generated CA
//! signed; [`RedisServer::stop`] and [`RedisServer::start`] stop it and start it again on
//! the same ports (with an empty data set: persistence is off); [`RedisServer::pause`] and
//! [`RedisServer::resume`] hang it (`SIGSTOP`) and let it go on with its data.
//!
//! ```no_run
//! # async fn demo() {
//! use certauto_tests::RedisServer;
//!
//! let mut redis = RedisServer::builder().password("s3cret").tls(true).start().await;
//! let url = redis.url();              // redis://:s3cret@127.0.0.1:<port>/0
//! let tls_url = redis.tls_url();      // rediss://:s3cret@localhost:<tls port>/0
//! let ca = redis.ca_der();            // trust this for rediss://
//! redis.stop().await;                 // connections now fail
//! redis.start().await;                // same ports again
//! # let _ = (url, tls_url, ca);
//! # }
//! ```
//!
//! [`RedisCluster`] starts three such servers as the primaries of a Redis Cluster (no
//! replicas), creates the cluster with `redis-cli --cluster create` and waits until every
//! node reports `cluster_state:ok`:
//!
//! ```no_run
//! # async fn demo() {
//! use certauto_tests::RedisCluster;
//!
//! let cluster = RedisCluster::start().await;
//! let nodes = cluster.node_urls();    // redis://127.0.0.1:<port>/0, one per primary
//! let answer = cluster.command(&["DEL", "{prefix}:lock:x"]).await; // follows MOVED
//! # let _ = (nodes, answer);
//! # }
//! ```
//!
//! The server is Debian's `redis-server` package (`/usr/bin/redis-server`, built with TLS),
//! run as the current user in a temporary directory with `--save "" --appendonly no`,
//! bound to 127.0.0.1 only. It is killed and reaped when the [`RedisServer`] is dropped;
//! during a panic its log is printed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::pebble::kill_and_reap;
use crate::pki::{self, HttpsPki};
use crate::util::{PortReservation, is_executable, log_tail};

/// Where Debian's `redis-server` package installs the server.
const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// Where Debian's `redis-tools` package (a dependency of `redis-server`) installs the CLI.
const REDIS_CLI: &str = "/usr/bin/redis-cli";
/// Primaries of a [`RedisCluster`].
const CLUSTER_NODES: usize = 3;
/// Total time allowed for a cluster to be created and report `cluster_state:ok` everywhere.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound on `CLUSTER INFO` polls while waiting for a cluster.
const CLUSTER_MAX_POLLS: u32 = 600;
/// Upper bound on redirects one [`RedisCluster::command`] follows.
const MAX_REDIRECTS: usize = 5;
/// Total time allowed for the server to answer `PING` after a start.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Upper bound on readiness polls per start.
const READY_MAX_POLLS: u32 = 400;
/// Pause between readiness polls.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of the log shown in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// Options for a [`RedisServer`]; create it with [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    password: Option<String>,
    tls: bool,
    cluster: bool,
}

impl RedisServerBuilder {
    /// Requires this password (`--requirepass`); the URLs carry it.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Also listens for TLS on a second port, with a certificate for `localhost` and
    /// `127.0.0.1` from a generated CA ([`RedisServer::ca_der`]).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Starts the server and waits until it answers.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed (the message says how to install it) or does not
    /// become ready (with its log).
    pub async fn start(self) -> RedisServer {
        if !is_executable(Path::new(REDIS_SERVER)) {
            panic!(
                "{REDIS_SERVER} not found: the Redis storage tests need Redis; install it \
                 (apt-get install redis-server)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("certauto-redis-")
            .tempdir()
            .expect("temporary directory for redis-server");
        let pki = self.tls.then(|| {
            let pki = pki::generate();
            std::fs::write(dir.path().join("server.crt"), &pki.leaf_cert_pem)
                .expect("write the Redis TLS certificate");
            std::fs::write(dir.path().join("server.key"), &pki.leaf_key_pem)
                .expect("write the Redis TLS key");
            std::fs::write(dir.path().join("ca.crt"), &pki.ca_pem).expect("write the test CA");
            pki
        });
        // The password goes in a private config file, not on the command line (`ps`).
        let config = dir.path().join("redis.conf");
        let config_text = self
            .password
            .as_ref()
            .map_or_else(String::new, |p| format!("requirepass \"{p}\"\n"));
        std::fs::write(&config, config_text).expect("write the redis-server config file");
        let mut server = RedisServer {
            log: dir.path().join("redis.log"),
            config,
            dir,
            port: 0,
            tls_port: None,
            cluster_port: None,
            password: self.password,
            pki,
            child: None,
        };
        // The ports are free when reserved but released before redis-server binds them:
        // another process may take one in between. Then pick new ones (a bounded number
        // of times).
        for attempt in 1..=START_ATTEMPTS {
            let mut ports = PortReservation::default();
            server.port = ports.tcp();
            server.tls_port = self.tls.then(|| ports.tcp());
            // The cluster bus port is set explicitly: the default (port + 10000) may not exist.
            server.cluster_port = self.cluster.then(|| ports.tcp());
            drop(ports);
            match server.try_start().await {
                Ok(()) => return server,
                Err(report) if report.address_in_use && attempt < START_ATTEMPTS => {
                    tracing::warn!(
                        port = server.port,
                        "redis-server: a port was taken; new ports"
                    );
                }
                Err(report) => server.fail_start(&report.message),
            }
        }
        unreachable!("the last attempt returns or panics")
    }
}

/// How many times a server is started before giving up when its port was taken.
const START_ATTEMPTS: u32 = 3;

/// Why a start failed.
struct StartFailure {
    message: String,
    /// The log says a port was in use (another process took it).
    address_in_use: bool,
}

/// A running `redis-server`, killed and reaped on drop.
pub struct RedisServer {
    /// The config file (holding the password, if any).
    config: PathBuf,
    dir: TempDir,
    log: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    /// The cluster bus port, for a cluster node.
    cluster_port: Option<u16>,
    password: Option<String>,
    pki: Option<HttpsPki>,
    child: Option<Child>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("tls_port", &self.tls_port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("running", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisServer {
    /// Options for a server; `RedisServer::builder().start().await` starts a plain one.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The plain TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:password@]127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}127.0.0.1:{}/0", self.userinfo(), self.port)
    }

    /// `rediss://[:password@]localhost:<tls port>/0`.
    ///
    /// # Panics
    ///
    /// If the server was built without [`RedisServerBuilder::tls`].
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("RedisServer built without tls(true)");
        format!("rediss://{}localhost:{port}/0", self.userinfo())
    }

    /// The CA certificate (DER) that signed the TLS port's certificate.
    ///
    /// # Panics
    ///
    /// If the server was built without [`RedisServerBuilder::tls`].
    pub fn ca_der(&self) -> CertificateDer<'static> {
        let pki = self
            .pki
            .as_ref()
            .expect("RedisServer built without tls(true)");
        CertificateDer::from(pki.ca_der.clone())
    }

    fn userinfo(&self) -> String {
        self.password
            .as_ref()
            .map_or_else(String::new, |p| format!(":{p}@"))
    }

    /// Stops the server (SIGKILL) and reaps it; its ports are then closed.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// Pauses the server (`SIGSTOP`): it keeps its data and its sockets, the kernel still
    /// accepts connections, but nothing is answered until [`resume`](Self::resume): a hung
    /// Redis rather than a gone one.
    ///
    /// # Panics
    ///
    /// If the server is not running or `kill` (procps) cannot signal it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a server [`pause`](Self::pause)d (`SIGCONT`); it answers what was sent
    /// meanwhile.
    ///
    /// # Panics
    ///
    /// If the server is not running or `kill` (procps) cannot signal it.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server is not running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("could not run kill (install procps): {e}"));
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    /// Starts the server (again) on the same ports and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If it is already running, or does not become ready (with its log).
    pub async fn start(&mut self) {
        // Another process may hold one of the ports for a moment (it was free when
        // reserved): try again a bounded number of times.
        for attempt in 1..=START_ATTEMPTS {
            match self.try_start().await {
                Ok(()) => return,
                Err(report) if report.address_in_use && attempt < START_ATTEMPTS => {
                    tracing::warn!(
                        port = self.port,
                        "redis-server: a port is in use; trying again"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(report) => self.fail_start(&report.message),
            }
        }
    }

    /// Panics with `message` and the log's tail.
    fn fail_start(&self, message: &str) -> ! {
        panic!(
            "redis-server did not become ready: {message}\n--- log ---\n{}",
            log_tail(&self.log, LOG_TAIL_LINES)
        );
    }

    /// Starts the server once and waits until it answers `PING`; stopped again on failure.
    async fn try_start(&mut self) -> Result<(), StartFailure> {
        assert!(self.child.is_none(), "redis-server is already running");
        let log_before = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let mut args: Vec<String> = vec![
            self.config.display().to_string(),
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--logfile".into(),
            self.log.display().to_string(),
        ];
        if let Some(cluster_port) = self.cluster_port {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                self.dir.path().join("nodes.conf").display().to_string(),
                "--cluster-port".into(),
                cluster_port.to_string(),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ]);
        }
        if let Some(tls_port) = self.tls_port {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            args.extend([
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                file("server.crt"),
                "--tls-key-file".into(),
                file("server.key"),
                "--tls-ca-cert-file".into(),
                file("ca.crt"),
                "--tls-auth-clients".into(),
                "no".into(),
            ]);
        }
        let child = Command::new(REDIS_SERVER)
            .args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not spawn {REDIS_SERVER}: {e}"));
        self.child = Some(child);
        if let Err(message) = self.wait_ready().await {
            self.stop().await;
            let log = std::fs::read(&self.log).unwrap_or_default();
            let new = log
                .get(usize::try_from(log_before).unwrap_or(0)..)
                .unwrap_or(&[]);
            let address_in_use = String::from_utf8_lossy(new).contains("Address already in use");
            return Err(StartFailure {
                message,
                address_in_use,
            });
        }
        tracing::info!(port = self.port, tls_port = ?self.tls_port, "redis-server is ready");
        Ok(())
    }

    /// Polls with `PING` until the plain port answers (`+PONG`, or `-NOAUTH` with a password).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        let mut last = String::new();
        for _ in 0..READY_MAX_POLLS {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("redis-server exited with {status}"));
            }
            match ping(self.port).await {
                Ok(answer) if answer.starts_with("+PONG") || answer.starts_with("-NOAUTH") => {
                    return Ok(());
                }
                Ok(answer) => last = format!("answered {answer:?}"),
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        let mut report = String::new();
        let _ = write!(report, "no PONG within {READY_DEADLINE:?} (last: {last})");
        Err(report)
    }
}

impl RedisServer {
    /// Runs one command on the plain port (authenticating first when there is a password)
    /// and returns the first line of its answer, e.g. `:1` for a `DEL` that removed a key.
    ///
    /// # Panics
    ///
    /// If the server does not answer within 5 s.
    pub async fn command(&self, args: &[&str]) -> String {
        self.exchange(args, false).await
    }

    /// Runs one command like [`command`](Self::command), but returns the whole payload of
    /// a bulk-string answer (e.g. the lines of `CLUSTER INFO`), or the first line of any
    /// other answer.
    ///
    /// # Panics
    ///
    /// If the server does not answer within 5 s.
    pub async fn bulk_command(&self, args: &[&str]) -> String {
        self.exchange(args, true).await
    }

    async fn exchange(&self, args: &[&str], bulk: bool) -> String {
        let mut request = Vec::new();
        let mut push = |args: &[&str]| {
            request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for arg in args {
                request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
            }
        };
        let auth = self.password.is_some();
        if let Some(password) = &self.password {
            push(&["AUTH", password]);
        }
        push(args);
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let mut stream = tokio::io::BufReader::new(stream);
            stream.get_mut().write_all(&request).await?;
            let mut line = String::new();
            if auth {
                tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut line).await?;
                line.clear();
            }
            tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut line).await?;
            let line = line.trim_end().to_owned();
            if bulk && let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
            {
                let mut payload = vec![0; len + 2];
                stream.read_exact(&mut payload).await?;
                payload.truncate(len);
                return std::io::Result::Ok(String::from_utf8_lossy(&payload).into_owned());
            }
            std::io::Result::Ok(line)
        };
        match tokio::time::timeout(Duration::from_secs(5), exchange).await {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("redis command {:?} failed: {e}", args.first()),
            Err(_) => panic!("redis command {:?} timed out", args.first()),
        }
    }
}

/// Three `redis-server`s (persistence off, loopback) made the primaries of one Redis
/// Cluster without replicas; every node is killed and reaped on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .finish()
    }
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, creates the cluster over them
    /// (`redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`) and waits
    /// (bounded) until `CLUSTER INFO` says `cluster_state:ok` on every node, with all
    /// 16384 slots served and every node known.
    ///
    /// # Panics
    ///
    /// If `redis-server` or `redis-cli` is not installed (the message says how to install
    /// them), or the cluster does not form in time (with the nodes' logs).
    pub async fn start() -> RedisCluster {
        if !is_executable(Path::new(REDIS_CLI)) {
            panic!(
                "{REDIS_CLI} not found: the Redis Cluster tests need redis-cli; install it \
                 (apt-get install redis-server, which brings redis-tools)"
            );
        }
        let builder = RedisServerBuilder {
            cluster: true,
            ..RedisServerBuilder::default()
        };
        let mut nodes = Vec::with_capacity(CLUSTER_NODES);
        for _ in 0..CLUSTER_NODES {
            nodes.push(builder.clone().start().await);
        }
        let cluster = RedisCluster { nodes };
        let mut create = Command::new(REDIS_CLI);
        create.arg("--cluster").arg("create");
        for port in cluster.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(CLUSTER_DEADLINE, create.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("could not run {REDIS_CLI}: {e}"),
            Err(_) => cluster.fail("redis-cli --cluster create did not finish"),
        };
        if !output.status.success() {
            cluster.fail(&format!(
                "redis-cli --cluster create failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        cluster.wait_ok().await;
        tracing::info!(ports = ?cluster.ports(), "redis cluster is ready");
        cluster
    }

    /// The client ports of the primaries, on 127.0.0.1.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis://127.0.0.1:<port>/0` for every primary.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node listening on `port`.
    ///
    /// # Panics
    ///
    /// If no node of this cluster listens there.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on port {port}"))
    }

    /// The port of the primary that serves `key`'s slot (asked of the first node, which
    /// answers `-MOVED <slot> <host>:<port>` for a slot it does not serve).
    pub async fn owner_of(&self, key: &str) -> u16 {
        let first = &self.nodes[0];
        let answer = first.command(&["EXISTS", key]).await;
        match moved_to(&answer) {
            Some(port) => port,
            None => first.port(),
        }
    }

    /// Runs one command on the node that serves its key (starting at the first node and
    /// following `MOVED` redirects) and returns the first line of the answer.
    ///
    /// # Panics
    ///
    /// If a node does not answer within 5 s, or the redirects do not end.
    pub async fn command(&self, args: &[&str]) -> String {
        let mut port = self.nodes[0].port();
        for _ in 0..MAX_REDIRECTS {
            let answer = self.node(port).command(args).await;
            match moved_to(&answer) {
                Some(next) => port = next,
                None => return answer,
            }
        }
        panic!(
            "redis command {:?}: more than {MAX_REDIRECTS} redirects",
            args.first()
        )
    }

    /// Moves every slot of the primary on `from` to the primary on `to`, keys included
    /// (`redis-cli --cluster reshard`), and waits until every node agrees again; clients
    /// that knew the old layout then meet `MOVED` answers.
    ///
    /// # Panics
    ///
    /// If `redis-cli` fails or the cluster does not settle in time.
    pub async fn move_all_slots(&self, from: u16, to: u16) {
        let id = |port: u16| async move {
            let id = self.node(port).bulk_command(&["CLUSTER", "MYID"]).await;
            assert!(
                id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "CLUSTER MYID on {port}: {id:?}"
            );
            id
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let mut reshard = Command::new(REDIS_CLI);
        reshard
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", "16384", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(CLUSTER_DEADLINE, reshard.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("could not run {REDIS_CLI}: {e}"),
            Err(_) => self.fail("redis-cli --cluster reshard did not finish"),
        };
        if !output.status.success() {
            self.fail(&format!(
                "redis-cli --cluster reshard failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        self.wait_ok().await;
    }

    /// Polls `CLUSTER INFO` on every node until all say `cluster_state:ok`.
    async fn wait_ok(&self) {
        let deadline = tokio::time::Instant::now() + CLUSTER_DEADLINE;
        let mut last = String::new();
        for _ in 0..CLUSTER_MAX_POLLS {
            let mut all_ok = true;
            for node in &self.nodes {
                let info = node.bulk_command(&["CLUSTER", "INFO"]).await;
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    all_ok = false;
                    last = format!("node {}: {}", node.port(), info.replace("\r\n", " "));
                    break;
                }
                // Its view has every slot served and every node known:
                // `cluster_state:ok` alone can come before a node has learnt
                // every other node.
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                        .and_then(|v| v.parse::<usize>().ok())
                };
                if field("cluster_slots_ok") != Some(16384)
                    || field("cluster_known_nodes") != Some(self.nodes.len())
                {
                    all_ok = false;
                    last = format!("node {}: {}", node.port(), info.replace("\r\n", " "));
                    break;
                }
            }
            if all_ok {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        self.fail(&format!(
            "the cluster did not reach cluster_state:ok within {CLUSTER_DEADLINE:?} (last: {last})"
        ));
    }

    /// Panics with `what` and every node's log.
    fn fail(&self, what: &str) -> ! {
        let mut logs = String::new();
        for node in &self.nodes {
            let _ = write!(
                logs,
                "\n--- redis-server log (port {}) ---\n{}",
                node.port(),
                log_tail(&node.log, LOG_TAIL_LINES)
            );
        }
        panic!("{what}{logs}");
    }
}

/// The port of a `-MOVED <slot> <host>:<port>` answer.
fn moved_to(answer: &str) -> Option<u16> {
    let target = answer.strip_prefix("-MOVED ")?.split(' ').nth(1)?;
    target.rsplit(':').next()?.parse().ok()
}

/// Sends `PING` to 127.0.0.1:`port` and returns the first line of the answer.
async fn ping(port: u16) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 128];
        let n = stream.read(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("PING timed out")))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if std::thread::panicking() {
                eprintln!(
                    "--- redis-server log (port {}) ---\n{}",
                    self.port,
                    log_tail(&self.log, LOG_TAIL_LINES)
                );
            }
            kill_and_reap(&mut [child]);
        }
    }
}
