//! Starting a real Redis (`redis-server`) for the storage tests: persistence off, on a free
//! loopback port, optionally with a password and a TLS port whose certificate a generated CA
//! signed; [`RedisServer::stop`] and [`RedisServer::start`] stop it and start it again on
//! the same ports (with an empty data set: persistence is off).
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
        let mut ports = PortReservation::default();
        let port = ports.tcp();
        let tls_port = self.tls.then(|| ports.tcp());
        drop(ports);
        let pki = self.tls.then(|| {
            let pki = pki::generate();
            std::fs::write(dir.path().join("server.crt"), &pki.leaf_cert_pem)
                .expect("write the Redis TLS certificate");
            std::fs::write(dir.path().join("server.key"), &pki.leaf_key_pem)
                .expect("write the Redis TLS key");
            std::fs::write(dir.path().join("ca.crt"), &pki.ca_pem).expect("write the test CA");
            pki
        });
        let mut server = RedisServer {
            log: dir.path().join("redis.log"),
            dir,
            port,
            tls_port,
            password: self.password,
            pki,
            child: None,
        };
        server.start().await;
        server
    }
}

/// A running `redis-server`, killed and reaped on drop.
pub struct RedisServer {
    dir: TempDir,
    log: PathBuf,
    port: u16,
    tls_port: Option<u16>,
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

    /// Starts the server (again) on the same ports and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If it is already running, or does not become ready (with its log).
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut args: Vec<String> = vec![
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
        if let Some(password) = &self.password {
            args.extend(["--requirepass".into(), password.clone()]);
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
        if let Err(report) = self.wait_ready().await {
            self.stop().await;
            panic!(
                "redis-server did not become ready: {report}\n--- log ---\n{}",
                log_tail(&self.log, LOG_TAIL_LINES)
            );
        }
        tracing::info!(port = self.port, tls_port = ?self.tls_port, "redis-server is ready");
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
            std::io::Result::Ok(line.trim_end().to_owned())
        };
        match tokio::time::timeout(Duration::from_secs(5), exchange).await {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("redis command {:?} failed: {e}", args.first()),
            Err(_) => panic!("redis command {:?} timed out", args.first()),
        }
    }
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
