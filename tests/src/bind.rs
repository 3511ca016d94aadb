//! Starting a real BIND9 (`named`) for the DNS-01 tests: an authoritative server for the
//! zones `example.test` and `delegated.test` that accepts RFC 2136 updates signed with a
//! generated TSIG key, and, on request, a recursive server in front of it for Pebble to
//! validate through.
//!
//! ```no_run
//! # async fn demo() {
//! use certauto_tests::Bind;
//!
//! let bind = Bind::builder()
//!     .txt("_acme-challenge.example.test", "some other tool's value")
//!     .cname("_acme-challenge.alias.example.test", "_acme-challenge.alias.delegated.test")
//!     .recursive(true)
//!     .start()
//!     .await;
//! let primary = bind.addr();                 // send updates here (UDP and TCP)
//! let resolver = bind.recursive_addr();      // point Pebble's -dnsserver here
//! let key = (bind.key_name(), bind.key_secret(), bind.key_algorithm());
//! let values = bind.lookup_txt("_acme-challenge.example.test").await;
//! # let _ = (primary, resolver, key, values);
//! # }
//! ```
//!
//! Each server is one `named -g` process of Debian's `bind9` package (`/usr/sbin/named`),
//! run as the current user with its configuration, zone files and journals in a temporary
//! directory, listening on a free 127.0.0.1 port (UDP and TCP). Both are killed and reaped
//! when the [`Bind`] value is dropped; during a panic their logs are printed.
//!
//! The recursive server forwards every question to the authoritative one (`forward only`;
//! its root hints point at 127.0.0.1, so nothing leaves loopback) and caches for at most a
//! second (`max-cache-ttl 1`, `max-ncache-ttl 0`; the zones' TTLs and SOA minimum are one
//! second too), because the solver's CNAME lookup asks it for `_acme-challenge.<name>`
//! before the record exists, and Pebble then validates through it.
//!
//! `max-ncache-ttl 0` does not quite mean "not cached": BIND's cache counts whole seconds,
//! and a negative answer with TTL 0 is still served until the clock's second changes.
//! Pebble's TXT query usually comes within that second (the solver sees the record on the
//! authoritative server at its first check), and an NXDOMAIN covers every type at the
//! name. So each zone has a wildcard `* IN A 127.0.0.1`: every name in the zones exists,
//! a lookup before the record is written gets NODATA for its own type only (CNAME, SOA),
//! and Pebble's TXT question is never answered from a negative entry. With a public CA
//! this does not arise: its resolvers are not the ones the solver asks.

use std::fmt;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use certauto::dns::TsigAlgorithm;
use ring::rand::{SecureRandom, SystemRandom};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::dns::{self, Transport};
use crate::pebble::kill_and_reap;
use crate::util::{PortReservation, is_executable, log_tail, read_log};

/// Where Debian's `bind9` package installs the server.
const NAMED: &str = "/usr/sbin/named";
/// The zones the authoritative server holds.
pub const BIND_ZONES: [&str; 2] = ["example.test", "delegated.test"];
/// The name of the TSIG key allowed to update both zones.
const KEY_NAME: &str = "certauto-test-key";
/// How often the whole start is attempted when a server dies early or cannot bind.
const MAX_START_ATTEMPTS: u32 = 3;
/// Total time allowed for one start attempt to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Upper bound on readiness polls per attempt.
const READY_MAX_POLLS: u32 = 400;
/// Pause between readiness polls.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of a single query (readiness probe or lookup).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of each server's log shown in panic messages.
const LOG_TAIL_LINES: usize = 60;

/// Options for a [`Bind`] instance; create it with [`Bind::builder`].
#[derive(Debug, Clone)]
pub struct BindBuilder {
    txt: Vec<(String, String)>,
    cname: Vec<(String, String)>,
    recursive: bool,
    key_algorithm: TsigAlgorithm,
}

impl Default for BindBuilder {
    fn default() -> Self {
        Self {
            txt: Vec::new(),
            cname: Vec::new(),
            recursive: false,
            key_algorithm: TsigAlgorithm::HmacSha256,
        }
    }
}

impl BindBuilder {
    /// A TXT record in the zone files (the name must be in one of [`BIND_ZONES`]); several
    /// values at one name accumulate.
    pub fn txt(mut self, name: &str, value: &str) -> Self {
        self.txt.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A CNAME from `name` (in one of [`BIND_ZONES`]) to `target`.
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        self.cname.push((name.to_owned(), target.to_owned()));
        self
    }

    /// Whether to start the recursive server too (default no); see
    /// [`Bind::recursive_addr`].
    pub fn recursive(mut self, recursive: bool) -> Self {
        self.recursive = recursive;
        self
    }

    /// The algorithm of the generated TSIG key (default HMAC-SHA256).
    pub fn key_algorithm(mut self, algorithm: TsigAlgorithm) -> Self {
        self.key_algorithm = algorithm;
        self
    }

    /// Starts the server(s) and waits until each answers an SOA query for `example.test`.
    ///
    /// # Panics
    ///
    /// If `named` is not installed (the message says how to install it), a name is outside
    /// [`BIND_ZONES`], or a server does not become ready (with the servers' logs).
    pub async fn start(self) -> Bind {
        let named = Path::new(NAMED);
        if !is_executable(named) {
            panic!(
                "{NAMED} not found: the DNS-01 tests need BIND9; install bind9 \
                 (apt-get install bind9)"
            );
        }
        let (key_secret, zones) = self.prepare();
        let mut failures = String::new();
        for attempt in 1..=MAX_START_ATTEMPTS {
            match self.try_start(named, &key_secret, &zones).await {
                Ok(bind) => {
                    tracing::info!(
                        authoritative = %bind.addr(),
                        recursive = ?bind.recursive.as_ref().map(|r| r.addr),
                        "BIND is ready"
                    );
                    return bind;
                }
                Err(report) => {
                    tracing::warn!(attempt, "BIND start attempt failed:\n{report}");
                    let _ = writeln!(failures, "--- attempt {attempt} ---\n{report}");
                }
            }
        }
        panic!("BIND did not start after {MAX_START_ATTEMPTS} attempts:\n{failures}");
    }

    /// The key's secret and the text of each zone file.
    fn prepare(&self) -> (String, Vec<(String, String)>) {
        let key_len = match self.key_algorithm {
            TsigAlgorithm::HmacSha256 => 32,
            TsigAlgorithm::HmacSha384 => 48,
            TsigAlgorithm::HmacSha512 => 64,
        };
        let mut key = vec![0u8; key_len];
        SystemRandom::new()
            .fill(&mut key)
            .expect("system RNG for the TSIG key");
        let secret = base64::engine::general_purpose::STANDARD.encode(&key);

        let mut zones: Vec<(String, String)> = BIND_ZONES
            .iter()
            .map(|zone| {
                // TTLs and the negative TTL are one second: nothing stays cached for long.
                // The wildcard makes every name in the zone exist (see the module docs).
                let text = format!(
                    "$TTL 1\n\
                     @ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 1\n\
                     @ IN NS ns.{zone}.\n\
                     ns IN A 127.0.0.1\n\
                     * IN A 127.0.0.1\n"
                );
                ((*zone).to_owned(), text)
            })
            .collect();
        let mut add = |name: &str, record: String| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let Some((_, text)) = zones
                .iter_mut()
                .find(|(zone, _)| name == *zone || name.ends_with(&format!(".{zone}")))
            else {
                panic!("{name} is in none of the harness's zones {BIND_ZONES:?}");
            };
            let _ = writeln!(text, "{name}. IN {record}");
        };
        for (name, value) in &self.txt {
            let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
            add(name, format!("TXT \"{quoted}\""));
        }
        for (name, target) in &self.cname {
            add(name, format!("CNAME {}.", target.trim_end_matches('.')));
        }
        (secret, zones)
    }

    async fn try_start(
        &self,
        named: &Path,
        key_secret: &str,
        zones: &[(String, String)],
    ) -> Result<Bind, String> {
        let dir = tempfile::Builder::new()
            .prefix("certauto-bind-")
            .tempdir()
            .expect("create a temporary directory for BIND");
        let mut ports = PortReservation::default();
        let auth_port = ports.tcp_and_udp();
        let recursive_port = self.recursive.then(|| ports.tcp_and_udp());
        drop(ports);

        let auth_dir = dir.path().join("authoritative");
        std::fs::create_dir(&auth_dir).expect("create the authoritative server's directory");
        let mut conf = common_options(&auth_dir, auth_port);
        let algorithm = self.key_algorithm.as_str();
        let _ = write!(
            conf,
            "    recursion no;\n\
             }};\n\
             key \"{KEY_NAME}\" {{ algorithm {algorithm}; secret \"{key_secret}\"; }};\n"
        );
        for (zone, text) in zones {
            let file = auth_dir.join(format!("{zone}.zone"));
            write_file(&file, text);
            let _ = write!(
                conf,
                "zone \"{zone}\" {{\n\
                 \x20   type primary;\n\
                 \x20   file \"{file}\";\n\
                 \x20   notify no;\n\
                 \x20   update-policy {{ grant {KEY_NAME} zonesub TXT; }};\n\
                 }};\n",
                file = file.display()
            );
        }
        let auth_conf = auth_dir.join("named.conf");
        write_file(&auth_conf, &conf);
        let auth_log = dir.path().join("authoritative.log");
        let authoritative = spawn(named, &auth_conf, &auth_dir, &auth_log)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, auth_port));

        let mut bind = Bind {
            authoritative: Server {
                child: authoritative,
                addr,
                log: auth_log,
            },
            recursive: None,
            key_secret: key_secret.to_owned(),
            key_algorithm: self.key_algorithm,
            dir,
        };

        if let Some(port) = recursive_port {
            let rec_dir = bind.dir.path().join("recursive");
            std::fs::create_dir(&rec_dir).expect("create the recursive server's directory");
            let mut conf = common_options(&rec_dir, port);
            // Everything is forwarded to the authoritative server; the root hints point
            // at loopback so that even a priming query stays on this machine.
            let _ = write!(
                conf,
                "    recursion yes;\n\
                 \x20   allow-recursion {{ 127.0.0.0/8; }};\n\
                 \x20   forward only;\n\
                 \x20   forwarders {{ 127.0.0.1 port {auth_port}; }};\n\
                 \x20   max-ncache-ttl 0;\n\
                 \x20   max-cache-ttl 1;\n\
                 \x20   qname-minimization off;\n\
                 }};\n\
                 zone \".\" {{ type hint; file \"{hints}\"; }};\n",
                hints = rec_dir.join("root.hints").display()
            );
            write_file(
                &rec_dir.join("root.hints"),
                ". 3600000 NS a.root.certauto-tests.\n\
                 a.root.certauto-tests. 3600000 A 127.0.0.1\n",
            );
            let rec_conf = rec_dir.join("named.conf");
            write_file(&rec_conf, &conf);
            let rec_log = bind.dir.path().join("recursive.log");
            let child = spawn(named, &rec_conf, &rec_dir, &rec_log)?;
            bind.recursive = Some(Server {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                log: rec_log,
            });
        }

        bind.wait_ready().await?;
        Ok(bind)
    }
}

/// The `options` block both servers share, left open for more options; plus no control
/// channel (named would otherwise read /etc/bind/rndc.key and listen on port 953).
fn common_options(dir: &Path, port: u16) -> String {
    format!(
        "controls {{ }};\n\
         options {{\n\
         \x20   directory \"{dir}\";\n\
         \x20   pid-file none;\n\
         \x20   session-keyfile none;\n\
         \x20   managed-keys-directory \"{dir}\";\n\
         \x20   listen-on port {port} {{ 127.0.0.1; }};\n\
         \x20   listen-on-v6 {{ none; }};\n\
         \x20   allow-query {{ 127.0.0.0/8; }};\n\
         \x20   allow-transfer {{ none; }};\n\
         \x20   dnssec-validation no;\n\
         \x20   notify no;\n",
        dir = dir.display()
    )
}

/// One running `named`.
#[derive(Debug)]
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// A running BIND9: the authoritative server for [`BIND_ZONES`] and, if asked for, a
/// recursive one in front of it. Both are killed and reaped on drop.
pub struct Bind {
    authoritative: Server,
    recursive: Option<Server>,
    key_secret: String,
    key_algorithm: TsigAlgorithm,
    // Dropped last (fields drop after `Drop::drop` has killed the children).
    dir: TempDir,
}

impl fmt::Debug for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bind")
            .field("addr", &self.authoritative.addr)
            .field("recursive_addr", &self.recursive.as_ref().map(|r| r.addr))
            .field("key_name", &KEY_NAME)
            .field("key_algorithm", &self.key_algorithm)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Bind {
    /// A builder: no records besides SOA, NS and the name server's address, no recursive
    /// server, an HMAC-SHA256 key.
    pub fn builder() -> BindBuilder {
        BindBuilder::default()
    }

    /// The authoritative server (UDP and TCP): send updates here.
    pub fn addr(&self) -> SocketAddr {
        self.authoritative.addr
    }

    /// The recursive server (UDP and TCP), which forwards to the authoritative one.
    ///
    /// # Panics
    ///
    /// If the builder did not ask for it with [`BindBuilder::recursive`].
    pub fn recursive_addr(&self) -> SocketAddr {
        self.recursive
            .as_ref()
            .map(|r| r.addr)
            .expect("Bind::recursive_addr: start with Bind::builder().recursive(true)")
    }

    /// The name of the TSIG key allowed to update TXT records in both zones.
    pub fn key_name(&self) -> &str {
        KEY_NAME
    }

    /// The key's secret, in base64.
    pub fn key_secret(&self) -> &str {
        &self.key_secret
    }

    /// The key's algorithm.
    pub fn key_algorithm(&self) -> TsigAlgorithm {
        self.key_algorithm
    }

    /// The TXT values at `name` as the authoritative server holds them (asked over TCP,
    /// recursion off).
    ///
    /// # Panics
    ///
    /// If the server does not answer, or answers with an error other than NXDOMAIN.
    pub async fn lookup_txt(&self, name: &str) -> Vec<String> {
        let answers = dns::query_with(
            self.authoritative.addr,
            name,
            dns::TYPE_TXT,
            Transport::Tcp,
            QUERY_TIMEOUT,
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("TXT lookup of {name} at BIND: {e}\n{}", self.log_report()));
        dns::txt_records(&answers)
    }

    /// Everything the authoritative server has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.authoritative.log)
    }

    fn servers(&self) -> impl Iterator<Item = (&'static str, &Server)> {
        std::iter::once(("authoritative", &self.authoritative))
            .chain(self.recursive.iter().map(|r| ("recursive", r)))
    }

    fn log_report(&self) -> String {
        let mut out = String::new();
        for (what, server) in self.servers() {
            let _ = write!(
                out,
                "--- {what} named on {} (last {LOG_TAIL_LINES} lines) ---\n{}",
                server.addr,
                log_tail(&server.log, LOG_TAIL_LINES)
            );
        }
        out
    }

    /// Polls until each server answers an SOA query for `example.test` (the
    /// authoritative one over UDP and TCP, recursion off; the recursive one through
    /// forwarding).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        let mut last_problem = String::from("not polled yet");
        for _ in 0..READY_MAX_POLLS {
            let mut exited = None;
            if let Ok(Some(status)) = self.authoritative.child.try_wait() {
                exited = Some(("authoritative", status));
            }
            if let Some(r) = self.recursive.as_mut()
                && let Ok(Some(status)) = r.child.try_wait()
            {
                exited = Some(("recursive", status));
            }
            if let Some((what, status)) = exited {
                return Err(format!(
                    "the {what} named exited early ({status}).\n{}",
                    self.log_report()
                ));
            }
            let busy = self
                .servers()
                .any(|(_, s)| read_log(&s.log).contains("address in use"));
            if busy {
                return Err(format!(
                    "named could not bind its port.\n{}",
                    self.log_report()
                ));
            }
            match self.probe().await {
                Ok(()) => return Ok(()),
                Err(problem) => last_problem = problem,
            }
            if tokio::time::Instant::now() + READY_POLL_INTERVAL >= deadline {
                break;
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        Err(format!(
            "not ready within {READY_DEADLINE:?} ({READY_MAX_POLLS} polls max); last problem: \
             {last_problem}\n{}",
            self.log_report()
        ))
    }

    async fn probe(&self) -> Result<(), String> {
        for transport in [Transport::Udp, Transport::Tcp] {
            let answers = dns::query_with(
                self.authoritative.addr,
                "example.test",
                dns::TYPE_SOA,
                transport,
                QUERY_TIMEOUT,
                false,
            )
            .await
            .map_err(|e| format!("authoritative SOA over {transport:?}: {e}"))?;
            if !answers.iter().any(|(t, _)| *t == dns::TYPE_SOA) {
                return Err("authoritative server has no SOA for example.test yet".to_owned());
            }
        }
        if let Some(r) = &self.recursive {
            let answers = dns::query(
                r.addr,
                "example.test",
                dns::TYPE_SOA,
                Transport::Tcp,
                QUERY_TIMEOUT,
            )
            .await
            .map_err(|e| format!("recursive SOA: {e}"))?;
            if !answers.iter().any(|(t, _)| *t == dns::TYPE_SOA) {
                return Err("recursive server gives no SOA for example.test yet".to_owned());
            }
        }
        Ok(())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        match self.recursive.as_mut() {
            Some(r) => kill_and_reap(&mut [&mut self.authoritative.child, &mut r.child]),
            None => kill_and_reap(&mut [&mut self.authoritative.child]),
        }
        if std::thread::panicking() {
            eprintln!(
                "certauto-tests: BIND dropped during a panic.\n{}",
                self.log_report()
            );
        }
    }
}

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Starts `named` in the foreground (`-g`: logs to stderr), IPv4 only, one worker thread.
fn spawn(named: &Path, conf: &Path, cwd: &Path, log: &Path) -> Result<Child, String> {
    let out =
        std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log file handle");
    let mut cmd = Command::new(named);
    cmd.args(["-g", "-4", "-n", "1", "-c"])
        .arg(conf)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| format!("could not spawn {} ({cmd:?}): {e}", named.display()))
}
