//! [`OcspResponder`]: OpenSSL's OCSP responder for the certificates Pebble issues.
//!
//! Pebble has no OCSP responder of its own: its `ocspResponderURL` setting
//! ([`PebbleBuilder::ocsp_responder_url`](crate::PebbleBuilder::ocsp_responder_url)) only
//! puts a URL into the certificates it issues. At that URL this harness answers with
//! `openssl ocsp`, signing with Pebble's own intermediate key (from the management port):
//! each request is handed to
//! `openssl ocsp -index index.txt -CA <intermediate> -rsigner <signer> -rkey <key> -nmin <n> -reqin <req> -respout <resp>`,
//! and the status of each serial comes from an OpenSSL CA index file that the test edits
//! ([`OcspResponder::set_good`], [`OcspResponder::set_revoked`]; a serial not in it is
//! `unknown`).
//!
//! Why not `openssl ocsp -port`: OpenSSL 3.0's built-in HTTP server listens on every
//! interface (`[::]:<port>`, the address cannot be chosen) and re-reads a changed index only
//! before accepting the connection *after* the next one, so the first answer after a change
//! still carries the old status (checked on this machine with OpenSSL 3.0). Here a small
//! loopback-only HTTP listener hands each request body to a fresh `openssl ocsp` process,
//! which reads the current index every time. The HTTP layer only carries bytes (bodies
//! bounded to 64 KiB); every response is built and signed by OpenSSL.
//!
//! [`OcspResponder::forge`] switches to a forger: a self-signed certificate copying the
//! intermediate's names and extensions, with a key of its own, so responses look right but
//! are not signed by the issuer.
//!
//! ```no_run
//! # async fn demo() {
//! use certauto_tests::{OcspResponder, Pebble};
//!
//! let responder = OcspResponder::bind();
//! let pebble = Pebble::builder().ocsp_responder_url(responder.url()).start().await;
//! responder.start(&pebble).await;
//! responder.set_good("0a1b2c3d4e5f");
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::task::{JoinHandle, JoinSet};

use crate::Pebble;
use crate::util::find_on_path;

/// The largest OCSP request accepted.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Bound on one `openssl` run.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one HTTP connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The revocation time [`OcspResponder::set_revoked`] writes (UTCTime): 2024-01-01T00:00:00Z.
pub const OCSP_REVOKED_AT: &str = "240101000000Z";
/// The default `-nmin`: responses are valid for an hour.
const DEFAULT_VALIDITY_MINUTES: u32 = 60;

const OPENSSL_MISSING: &str =
    "openssl not found on PATH: install the Debian package `openssl` (apt-get install -y openssl)";

/// Who signs the responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    /// Pebble's intermediate, the issuer of every certificate.
    Issuer,
    /// A self-made certificate and key posing as the issuer.
    Forger,
}

#[derive(Debug)]
struct State {
    /// Serial (canonical OpenSSL form) to index line.
    rows: BTreeMap<String, String>,
    signer: Signer,
    validity_minutes: u32,
}

#[derive(Debug)]
struct Shared {
    dir: TempDir,
    openssl: PathBuf,
    state: Mutex<State>,
    requests: AtomicUsize,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Rewrites `index.txt` atomically (write, then rename), so `openssl` reads either
    /// the old index or the new one.
    fn write_index(&self, state: &State) {
        let text: String = state.rows.values().map(|l| format!("{l}\n")).collect();
        let tmp = self.path("index.txt.tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, self.path("index.txt")).expect("replace index.txt");
    }
}

/// OpenSSL's OCSP responder for Pebble's certificates, on `127.0.0.1`: each POSTed request
/// is answered by a fresh `openssl ocsp` process signing with Pebble's intermediate key, with
/// statuses from an index the test edits. Every method takes `&self`, so it can be shared
/// (`Arc`) with an event handler that marks new serials good. Stops when dropped.
#[derive(Debug)]
pub struct OcspResponder {
    port: u16,
    shared: Arc<Shared>,
    listener: Mutex<Option<std::net::TcpListener>>,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// The serial as OpenSSL's index writes it: upper-case hex, two digits per byte, no
/// leading zero bytes.
fn index_serial(serial_hex: &str) -> String {
    let mut s = crate::normalize_serial(serial_hex).to_ascii_uppercase();
    if s.is_empty() {
        s.push('0');
    }
    if s.len() % 2 == 1 {
        s.insert(0, '0');
    }
    s
}

fn run_openssl(openssl: &Path, dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run openssl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OcspResponder {
    /// Reserves a free port on 127.0.0.1 (the listener is bound at once, so the port can
    /// go into Pebble's config) without answering yet; see [`start`](Self::start).
    ///
    /// # Panics
    ///
    /// If `openssl` is not on `PATH`.
    pub fn bind() -> Self {
        let openssl = find_on_path("openssl").unwrap_or_else(|| panic!("{OPENSSL_MISSING}"));
        let listener = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("bind 127.0.0.1:0 for the OCSP responder");
        let port = listener.local_addr().expect("local address").port();
        let dir = tempfile::Builder::new()
            .prefix("certauto-ocsp-")
            .tempdir()
            .expect("create a temporary directory for the OCSP responder");
        let shared = Arc::new(Shared {
            dir,
            openssl,
            state: Mutex::new(State {
                rows: BTreeMap::new(),
                signer: Signer::Issuer,
                validity_minutes: DEFAULT_VALIDITY_MINUTES,
            }),
            requests: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
        });
        Self {
            port,
            shared,
            listener: Mutex::new(Some(listener)),
            server: Mutex::new(None),
        }
    }

    /// The responder URL to put into certificates, `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Starts answering, signing as `pebble`'s intermediate of chain 0 (the issuer of its
    /// certificates). Also prepares the forger ([`forge`](Self::forge)).
    ///
    /// # Panics
    ///
    /// If called twice, after [`stop`](Self::stop), or if `openssl` fails.
    pub async fn start(&self, pebble: &Pebble) {
        let listener = lock(&self.listener)
            .take()
            .expect("OcspResponder::start called twice or after stop");
        let shared = &self.shared;
        std::fs::write(shared.path("issuer.pem"), pebble.intermediate_pem(0).await)
            .expect("write issuer.pem");
        std::fs::write(
            shared.path("issuer.key"),
            pebble.intermediate_key_pem(0).await,
        )
        .expect("write issuer.key");
        std::fs::write(shared.path("index.txt.attr"), "unique_subject = no\n")
            .expect("write index.txt.attr");
        shared.write_index(&shared.state());
        // The forger: the intermediate's names and extensions, self-signed with a new key.
        let dir = shared.dir.path();
        run_openssl(
            &shared.openssl,
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "forger.key",
            ],
        );
        run_openssl(
            &shared.openssl,
            dir,
            &[
                "x509",
                "-in",
                "issuer.pem",
                "-signkey",
                "forger.key",
                "-days",
                "30",
                "-out",
                "forger.pem",
            ],
        );

        listener
            .set_nonblocking(true)
            .expect("make the OCSP listener non-blocking");
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("register the OCSP listener");
        let shared = self.shared.clone();
        *lock(&self.server) = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "OCSP responder accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                while connections.try_join_next().is_some() {}
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&shared, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                });
            }
        }));
    }

    /// Stops answering: the listener is closed, so requests are refused.
    pub fn stop(&self) {
        lock(&self.listener).take();
        if let Some(server) = lock(&self.server).take() {
            server.abort();
        }
    }

    /// Marks `serial_hex` (any case, leading zeros allowed) `good`.
    pub fn set_good(&self, serial_hex: &str) {
        let serial = index_serial(serial_hex);
        let line = format!("V\t491231235959Z\t\t{serial}\tunknown\t/CN={serial}");
        self.set_row(serial, Some(line));
    }

    /// Marks `serial_hex` `revoked` at [`OCSP_REVOKED_AT`] for `keyCompromise`.
    pub fn set_revoked(&self, serial_hex: &str) {
        let serial = index_serial(serial_hex);
        let line = format!(
            "R\t491231235959Z\t{OCSP_REVOKED_AT},keyCompromise\t{serial}\tunknown\t/CN={serial}"
        );
        self.set_row(serial, Some(line));
    }

    /// Removes `serial_hex` from the index: its status becomes `unknown`.
    pub fn forget(&self, serial_hex: &str) {
        self.set_row(index_serial(serial_hex), None);
    }

    fn set_row(&self, serial: String, line: Option<String>) {
        let mut state = self.shared.state();
        match line {
            Some(line) => state.rows.insert(serial, line),
            None => state.rows.remove(&serial),
        };
        self.shared.write_index(&state);
    }

    /// From now on, responses are signed by the forger (not by the issuer).
    pub fn forge(&self) {
        self.shared.state().signer = Signer::Forger;
    }

    /// From now on, responses are signed by the issuer again.
    pub fn sign_as_issuer(&self) {
        self.shared.state().signer = Signer::Issuer;
    }

    /// How long responses are valid (`openssl ocsp -nmin`, default 60 minutes).
    pub fn set_validity_minutes(&self, minutes: u32) {
        self.shared.state().validity_minutes = minutes;
    }

    /// How many OCSP requests were answered (or attempted) so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The path of the issuer certificate (PEM) the responder signs for.
    pub fn issuer_pem_path(&self) -> PathBuf {
        self.shared.path("issuer.pem")
    }
}

impl Drop for OcspResponder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp
}

/// Answers one HTTP request: POST with a DER OCSP request → `openssl ocsp`'s response.
async fn answer(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an OCSP request\n".into(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => return plain(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
    let (req_file, resp_file) = (format!("req-{seq}.der"), format!("resp-{seq}.der"));
    if let Err(e) = tokio::fs::write(shared.path(&req_file), &body).await {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    }
    let (signer, minutes) = {
        let state = shared.state();
        (state.signer, state.validity_minutes.to_string())
    };
    let (rsigner, rkey) = match signer {
        Signer::Issuer => ("issuer.pem", "issuer.key"),
        Signer::Forger => ("forger.pem", "forger.key"),
    };
    let mut cmd = tokio::process::Command::new(&shared.openssl);
    cmd.args([
        "ocsp",
        "-index",
        "index.txt",
        "-CA",
        "issuer.pem",
        "-rsigner",
        rsigner,
        "-rkey",
        rkey,
        "-nmin",
        &minutes,
        "-reqin",
        &req_file,
        "-respout",
        &resp_file,
    ])
    .current_dir(shared.dir.path())
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let output = tokio::time::timeout(OPENSSL_TIMEOUT, cmd.output()).await;
    let resp = match output {
        Ok(Ok(out)) if out.status.success() => tokio::fs::read(shared.path(&resp_file))
            .await
            .map_err(|e| e.to_string()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("openssl ocsp took longer than {OPENSSL_TIMEOUT:?}")),
    };
    let _ = tokio::fs::remove_file(shared.path(&req_file)).await;
    let _ = tokio::fs::remove_file(shared.path(&resp_file)).await;
    match resp {
        Ok(der) => {
            let mut resp = Response::new(Full::new(Bytes::from(der)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/ocsp-response"),
            );
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "openssl ocsp failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_in_openssl_index_form() {
        assert_eq!(index_serial("0a1b2c"), "0A1B2C");
        assert_eq!(index_serial("a1b2c"), "0A1B2C");
        assert_eq!(index_serial("00:0A:1B"), "0A1B");
        assert_eq!(index_serial("0"), "00");
    }
}
