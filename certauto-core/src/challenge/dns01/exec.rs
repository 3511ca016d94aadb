//! A DNS provider that runs a program of yours, for DNS hosts that have no
//! provider here (a script calling some API, `nsupdate`, a config
//! management hook).
//!
//! The user documentation is on [`Exec`].

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::provider::{DnsError, DnsProvider};

const PROVIDER: &str = "exec";
/// How long the program may run, by default.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of stdout and of stderr kept (the tail).
pub(crate) const MAX_OUTPUT: usize = 4096;
/// The exit code that means "temporary failure" (`EX_TEMPFAIL`).
const EX_TEMPFAIL: i32 = 75;
/// The smallest timeout accepted.
pub(crate) const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// How long stdout and stderr are still read once the program has exited
/// (a process it left in the background may keep them open).
pub(crate) const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Runs a program to add and remove TXT records, as lego's `exec` provider
/// does.
///
/// It follows the argument convention of lego's `exec` provider
/// (<https://go-acme.github.io/lego/dns/exec/>, default mode), so scripts
/// written for lego work unchanged:
///
/// ```text
/// <program> [args...] present _acme-challenge.www.example.com. <value>
/// <program> [args...] cleanup _acme-challenge.www.example.com. <value>
/// ```
///
/// The name is fully qualified, with the trailing dot; `args` are the
/// prefix arguments given with [`Exec::args`]. The program must add exactly
/// that value (keeping other TXT values at the name) on `present`, remove
/// exactly that value on `cleanup`, succeed when there is nothing to do, and
/// cope with two calls for one name at the same time (the
/// [`DnsProvider`] contract). Note that a value may start with `-`.
///
/// - The program runs directly, never through a shell, with the
///   environment of this process and stdin closed.
/// - It must finish within the [timeout](Exec::timeout) (2 minutes by
///   default); otherwise it is killed (the program itself: processes it
///   started in the background are not) and the call fails with
///   [`DnsError::Transient`]. A call that is dropped kills it too. The
///   timeout bounds the program, not its background processes: once it has
///   exited, its output is read for one second more and its exit status
///   counts, even if a background process still holds stdout or stderr.
/// - Exit code 0 is success. Exit code 75 (`EX_TEMPFAIL` from
///   `sysexits.h`) means "try again later": [`DnsError::Transient`], which
///   the solver retries. Any other exit code, or death by a signal, is
///   [`DnsError::Rejected`] with the code and the tail of stderr.
/// - The last few KiB of stdout and stderr are kept, logged at debug level
///   and put in errors; the rest is read and dropped. Prefix arguments are
///   never logged (they may hold a credential).
///
/// ```no_run
/// # extern crate certauto_core as certauto;
/// use std::time::Duration;
/// use certauto::Dns01Solver;
/// use certauto::dns::Exec;
///
/// let hook = Exec::new("/usr/local/bin/acme-dns-hook")
///     .args(["--config", "/etc/acme-hook.conf"])
///     .timeout(Duration::from_secs(60));
/// let solver = Dns01Solver::builder(hook).build();
/// # let _ = solver;
/// ```
#[derive(Clone)]
pub struct Exec {
    program: PathBuf,
    args: Vec<OsString>,
    timeout: Duration,
}

impl fmt::Debug for Exec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The prefix arguments may hold a credential: only their number.
        f.debug_struct("Exec")
            .field("program", &self.program)
            .field("args", &format_args!("[{} hidden]", self.args.len()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Exec {
    /// Runs `program` (a path, or a name looked up in `PATH`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Arguments put before `present`/`cleanup` (replacing earlier ones).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How long one run may take before the program is killed (2 minutes
    /// by default; at least 10 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(MIN_TIMEOUT);
        self
    }

    async fn run(&self, action: &str, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let name = format!("{}.", fqdn.trim_end_matches('.'));
        if name.contains('\0') || value.contains('\0') {
            return Err(DnsError::rejected(
                PROVIDER,
                None,
                "name or value contains a NUL byte",
            ));
        }
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .arg(action)
            .arg(&name)
            .arg(value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let program = self.program.display().to_string();
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                DnsError::config(PROVIDER, format!("cannot run {program}: {e}"))
            }
            _ => DnsError::transient(PROVIDER, format!("cannot run {program}: {e}")),
        })?;
        // The readers run on their own, so that the timeout bounds the
        // program only: a background process it started may hold the pipes
        // open long after it exited. Dropping the set stops them.
        let out = Arc::new(Mutex::new(Tail::default()));
        let err = Arc::new(Mutex::new(Tail::default()));
        let mut readers = tokio::task::JoinSet::new();
        readers.spawn(read_tail(child.stdout.take(), out.clone()));
        readers.spawn(read_tail(child.stderr.take(), err.clone()));
        let Ok(status) = tokio::time::timeout(self.timeout, child.wait()).await else {
            let _ = child.kill().await;
            tracing::debug!(%program, action, fqdn = %name, "DNS hook timed out and was killed");
            return Err(DnsError::transient(
                PROVIDER,
                format!(
                    "{program} {action} {name} did not finish within {:?} and was killed",
                    self.timeout
                ),
            ));
        };
        // The program has exited: its output is read for a short while
        // more, then whatever was read is kept (two readers, so two rounds).
        let _ = tokio::time::timeout(OUTPUT_GRACE, async {
            for _ in 0..2 {
                if readers.join_next().await.is_none() {
                    break;
                }
            }
        })
        .await;
        drop(readers);
        let out = Tail::text_of(&out);
        let err = Tail::text_of(&err);
        let status =
            status.map_err(|e| DnsError::transient(PROVIDER, format!("{program}: {e}")))?;
        tracing::debug!(
            %program, action, fqdn = %name, %status,
            stdout = %out, stderr = %err,
            "DNS hook finished"
        );
        outcome(&program, action, &name, status, &err)
    }
}

/// Maps the exit status to the provider's result.
fn outcome(
    program: &str,
    action: &str,
    name: &str,
    status: ExitStatus,
    stderr: &str,
) -> Result<(), DnsError> {
    if status.success() {
        return Ok(());
    }
    let stderr = stderr.trim();
    let said = if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    };
    match status.code() {
        Some(EX_TEMPFAIL) => Err(DnsError::transient(
            PROVIDER,
            format!("{program} {action} {name}: temporary failure (exit code 75){said}"),
        )),
        Some(code) => Err(DnsError::rejected(
            PROVIDER,
            None,
            format!("{program} {action} {name}: exit code {code}{said}"),
        )),
        None => Err(DnsError::rejected(
            PROVIDER,
            None,
            format!("{program} {action} {name}: killed by a signal ({status}){said}"),
        )),
    }
}

/// The last [`MAX_OUTPUT`] bytes of a stream read so far.
#[derive(Debug, Default)]
struct Tail {
    kept: Vec<u8>,
    dropped: bool,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        if self.kept.len() > MAX_OUTPUT {
            let cut = self.kept.len() - MAX_OUTPUT;
            self.kept.drain(..cut);
            self.dropped = true;
        }
    }

    /// What was kept, as text (with `…` in front when some was dropped).
    fn text_of(tail: &Mutex<Self>) -> String {
        let Ok(tail) = tail.lock() else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&tail.kept);
        if tail.dropped {
            format!("…{text}")
        } else {
            text.into_owned()
        }
    }
}

/// Reads `stream` to its end into `tail`.
async fn read_tail(stream: Option<impl AsyncRead + Unpin>, tail: Arc<Mutex<Tail>>) {
    let Some(mut stream) = stream else {
        return;
    };
    let mut buf = [0u8; 2048];
    // Bounded by the caller, which stops waiting for it (the run's timeout,
    // then OUTPUT_GRACE); each round reads at least one byte.
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(buf.get(..n).unwrap_or_default());
                }
            }
        }
    }
}

#[async_trait]
impl DnsProvider for Exec {
    async fn create_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.run("present", fqdn, value).await
    }

    async fn delete_txt_record(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.run("cleanup", fqdn, value).await
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    /// Writes a shell script into `dir`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        path
    }

    /// A script that appends its arguments, one per line, to `calls.txt`.
    const RECORD_ARGS: &str = r#"for a in "$@"; do printf '%s\n' "$a" >> "$(dirname "$0")/calls.txt"; done; echo --- >> "$(dirname "$0")/calls.txt""#;

    fn calls(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("calls.txt")).unwrap_or_default()
    }

    #[tokio::test]
    async fn passes_lego_arguments_and_prefix_args() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "hook.sh", RECORD_ARGS);
        // Through /bin/sh, so the prefix arguments are exercised too.
        let exec = Exec::new("/bin/sh").args([hook.as_os_str()]);
        exec.create_txt_record("_acme-challenge.www.example.com", "-value-1")
            .await
            .unwrap();
        exec.delete_txt_record("_acme-challenge.www.example.com", "-value-1")
            .await
            .unwrap();
        assert_eq!(
            calls(dir.path()),
            "present\n_acme-challenge.www.example.com.\n-value-1\n---\n\
             cleanup\n_acme-challenge.www.example.com.\n-value-1\n---\n"
        );
    }

    #[tokio::test]
    async fn runs_an_executable_directly_with_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(
            dir.path(),
            "direct.sh",
            r#"printf '%s %s %s %s\n' "$1" "$2" "$3" "${PATH:+has-path}" > "$(dirname "$0")/calls.txt""#,
        );
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec = Exec::new(&hook);
        exec.create_txt_record("_acme-challenge.example.com", "v")
            .await
            .unwrap();
        assert_eq!(
            calls(dir.path()),
            "present _acme-challenge.example.com. v has-path\n"
        );
    }

    #[tokio::test]
    async fn failure_carries_exit_code_and_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(
            dir.path(),
            "fail.sh",
            "echo 'some output'; i=0; while [ $i -lt 500 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done; echo 'zone example.com: refused' >&2; exit 3",
        );
        let err = Exec::new("/bin/sh")
            .args([hook])
            .create_txt_record("_acme-challenge.example.com", "v")
            .await
            .unwrap_err();
        let DnsError::Rejected { detail, .. } = &err else {
            panic!("expected Rejected, got {err:?}");
        };
        assert!(detail.contains("exit code 3"), "{detail}");
        assert!(detail.contains("zone example.com: refused"), "{detail}");
        // Bounded: the early noise was dropped.
        assert!(!detail.contains("noise line 0\n"), "{detail}");
        assert!(detail.len() < MAX_OUTPUT + 300, "{}", detail.len());
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn exit_75_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "busy.sh", "echo 'API busy' >&2; exit 75");
        let err = Exec::new("/bin/sh")
            .args([hook])
            .delete_txt_record("_acme-challenge.example.com", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Transient { .. }), "{err:?}");
        assert!(err.to_string().contains("API busy"), "{err}");
    }

    #[tokio::test]
    async fn a_program_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        // `exec` so the sleeping process is the one killed.
        let hook = script(dir.path(), "slow.sh", "exec sleep 30");
        let err = Exec::new("/bin/sh")
            .args([hook])
            .timeout(Duration::from_millis(200))
            .create_txt_record("_acme-challenge.example.com", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Transient { .. }), "{err:?}");
        assert!(err.to_string().contains("killed"), "{err}");
    }

    /// A hook that leaves a process in the background holding its stdout
    /// and stderr: its exit status counts (and what it wrote is kept), it
    /// is not taken for a timeout.
    #[tokio::test]
    async fn a_background_process_holding_the_pipes_does_not_hide_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let hook = script(
            dir.path(),
            "bg.sh",
            &format!(
                "sleep 30 & echo $! >> {pids}; echo \"said $1\" >&2; [ \"$1\" = present ]",
                pids = pids.display()
            ),
        );
        let exec = Exec::new("/bin/sh")
            .args([&hook])
            .timeout(Duration::from_secs(20));
        let created = exec
            .create_txt_record("_acme-challenge.example.com", "v")
            .await;
        let deleted = exec
            .delete_txt_record("_acme-challenge.example.com", "v")
            .await;
        for pid in std::fs::read_to_string(&pids).unwrap().lines() {
            let _ = std::process::Command::new("kill").arg(pid).status();
        }
        created.unwrap();
        let err = deleted.unwrap_err();
        assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
        assert!(err.to_string().contains("said cleanup"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_config_error_and_debug_hides_args() {
        let exec = Exec::new("/nonexistent/certauto-hook").args(["--token", "hunter2"]);
        assert!(!format!("{exec:?}").contains("hunter2"));
        let err = exec
            .create_txt_record("_acme-challenge.example.com", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
    }
}
